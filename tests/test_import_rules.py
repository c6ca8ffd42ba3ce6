"""The shape of the code, enforced: who may import whom, which modules stay pure, who may print."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# oci/ levels: a module imports only from strictly lower levels. A new module must be placed here.
OCI_LEVELS = {
    "errors": 0,
    "frozen": 0,
    "mediatypes": 0,
    "digest": 1,
    "canonical": 1,
    "descriptor": 2,
    "reference": 2,
    "manifest": 3,
    "config": 3,
    "compression": 4,
    "tarformat": 4,
    "kernelcopy": 4,
    "layer": 5,
    "apply": 6,
    "store": 7,
    "image": 7,
    "layout": 8,
    "docker_archive": 8,
    "auth": 3,
    "sigstore": 4,
    "credentials": 8,
    "registry": 9,
    "transfer": 10,
}
PURE_LEVEL = 3  # levels 0..3 do no I/O
IMPURE_STDLIB = {"os", "pathlib", "shutil", "subprocess", "socket", "tempfile", "fcntl", "sqlite3", "urllib", "http"}
# requests: registries (oci/registry.py) and ADD's downloads (builder/fetch.py) are the only HTTP clients.
THIRD_PARTY_HOME = {"requests": {"oci/registry.py", "builder/fetch.py"}, "zstandard": {"oci/compression.py"}}
# Only these modules write to the terminal or end the process.
# The sandbox is its own program (python -m builder.sandbox): its standard error is the step's output.
PRINTERS = {"builder/cli.py", "builder/progress.py", "builder/sandbox.py"}
EXITERS = {"builder/cli.py", "builder/__main__.py", "builder/sandbox.py"}


def _modules(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{_rel(path)}: use absolute imports"
            assert node.module is not None
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _calls(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            found.add(node.func.id)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "sys":
            found.add(f"sys.{node.attr}")
    return found


ALL = _modules("oci") + _modules("builder")


def test_every_oci_module_has_a_level() -> None:
    names = {p.stem for p in _modules("oci") if p.stem != "__init__"}
    assert names <= OCI_LEVELS.keys(), f"place these in OCI_LEVELS: {sorted(names - OCI_LEVELS.keys())}"


@pytest.mark.parametrize("path", _modules("oci"), ids=_rel)
def test_oci_never_imports_builder(path: Path) -> None:
    assert not {n for n in _imports(path) if n == "builder" or n.startswith("builder.")}


@pytest.mark.parametrize("path", [p for p in _modules("oci") if p.stem != "__init__"], ids=_rel)
def test_oci_imports_only_go_down(path: Path) -> None:
    level = OCI_LEVELS[path.stem]
    for name in _imports(path):
        parts = name.split(".")
        if parts[0] != "oci" or len(parts) < 2 or parts[1] not in OCI_LEVELS:
            continue
        assert OCI_LEVELS[parts[1]] < level, f"{_rel(path)} (level {level}) imports {name}"


@pytest.mark.parametrize("path", [p for p in _modules("oci") if OCI_LEVELS.get(p.stem, 99) <= PURE_LEVEL], ids=_rel)
def test_pure_modules_do_no_io(path: Path) -> None:
    roots = {name.split(".")[0] for name in _imports(path)}
    assert not roots & IMPURE_STDLIB, f"{_rel(path)} imports {sorted(roots & IMPURE_STDLIB)}"
    assert not roots & THIRD_PARTY_HOME.keys()
    assert "open" not in _calls(path)


@pytest.mark.parametrize("path", ALL, ids=_rel)
def test_third_party_libraries_stay_in_their_module(path: Path) -> None:
    roots = {name.split(".")[0] for name in _imports(path)}
    for library, homes in THIRD_PARTY_HOME.items():
        if library in roots:
            assert _rel(path) in homes, f"{_rel(path)} imports {library}; only {sorted(homes)} may"


FRONTEND = [p for p in _modules("builder") if "frontend" in p.parts] + [REPO / "builder" / "plan.py"]


@pytest.mark.parametrize("path", FRONTEND, ids=_rel)
def test_the_front_end_and_the_plan_are_pure(path: Path) -> None:
    """Bytes in, plan out: the front end reads no files, runs nothing, and knows no store or registry."""
    for name in _imports(path):
        parts = name.split(".")
        if parts[0] == "builder":
            assert parts[1] in ("errors", "frontend"), f"{_rel(path)} imports {name}"
        elif parts[0] == "oci" and len(parts) > 1 and parts[1] in OCI_LEVELS:
            assert OCI_LEVELS[parts[1]] <= PURE_LEVEL, f"{_rel(path)} imports {name}"
        else:
            assert parts[0] not in IMPURE_STDLIB | {"requests", "zstandard"}, f"{_rel(path)} imports {name}"
    assert "open" not in _calls(path)


def test_the_front_end_exists() -> None:
    assert len(FRONTEND) >= 6


@pytest.mark.parametrize("path", ALL, ids=_rel)
def test_only_the_cli_prints_or_exits(path: Path) -> None:
    calls = _calls(path)
    if _rel(path) not in PRINTERS:
        assert "print" not in calls, f"{_rel(path)} prints"
        assert "sys.stdout" not in calls and "sys.stderr" not in calls
    if _rel(path) not in EXITERS:
        assert "sys.exit" not in calls and "sys.argv" not in calls, f"{_rel(path)} exits or reads argv"


@pytest.mark.parametrize("path", ALL, ids=_rel)
def test_every_module_says_what_it_is_for(path: Path) -> None:
    tree = ast.parse(path.read_text())
    assert ast.get_docstring(tree), f"{_rel(path)} has no module docstring"


def test_the_rules_see_the_real_tree() -> None:
    # Guard against the tests above passing vacuously on an empty or moved tree.
    assert len(_modules("oci")) >= len(OCI_LEVELS)
    assert (REPO / "builder" / "cli.py").exists()
    assert sys.version_info >= (3, 11)
