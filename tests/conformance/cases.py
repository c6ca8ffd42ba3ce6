"""The conformance cases on disk: finding them, preparing a build context, and the build options they ask for.

Shared by the regeneration script (which builds with Docker's BuildKit) and the CI check (which builds with
pybuild), so both builders see byte-for-byte the same context with the same permissions and the same options.
``testdata/conformance/README.md`` describes ``case.json``.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CASES_DIR",
    "Case",
    "CaseError",
    "Difference",
    "all_cases",
    "apply_differences",
    "load_case",
    "load_differences",
]

REPO = Path(__file__).resolve().parents[2]
CASES_DIR = REPO / "testdata" / "conformance"
EXPECTED = "expected.json"
DIFFERENCES = CASES_DIR / "differences.json"

_KEYS = {
    "build_args",
    "target",
    "labels",
    "network",
    "file",
    "modes",
    "owners",
    "empty_dirs",
    "hardlinks",
    "error",
    "pending",
}


class CaseError(Exception):
    """A case directory that does not describe a build (bad case.json, no Dockerfile)."""


@dataclass(frozen=True)
class Case:
    name: str
    directory: Path
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def expected_path(self) -> Path:
        return self.directory / EXPECTED

    @property
    def expects_error(self) -> bool:
        return "error" in self.options

    @property
    def pending(self) -> str:
        """The issue that will make pybuild build this case; until then pybuild must refuse it, saying so."""
        return str(self.options.get("pending", ""))

    def prepare(self, work: Path) -> tuple[Path, Path]:
        """Copy the context into ``work`` with normalised permissions and the case's adjustments applied.

        Git keeps neither modes (beyond the executable bit), owners, empty directories nor hardlinks, and a
        checkout's umask varies; so every copied file becomes 0644 or 0755, every directory 0755, owner root,
        and then ``modes``, ``owners``, ``empty_dirs`` and ``hardlinks`` from case.json are applied.
        Returns (context directory, Dockerfile)."""
        context = work / "context"
        source = self.directory / "context"
        if source.is_dir():
            shutil.copytree(source, context, symlinks=True)
        else:
            context.mkdir(parents=True)
        for directory in self.options.get("empty_dirs", []):
            (context / directory).mkdir(parents=True, exist_ok=True)
        _normalise(context)
        for new, existing in self.options.get("hardlinks", {}).items():
            os.link(context / existing, context / new)
        for path, mode in self.options.get("modes", {}).items():
            os.chmod(context / path, int(mode, 8), follow_symlinks=False)
        for path, owner in self.options.get("owners", {}).items():
            uid, _, gid = owner.partition(":")
            os.chown(context / path, int(uid), int(gid), follow_symlinks=False)
        name = self.options.get("file", "Dockerfile")
        dockerfile = context / name[len("context/") :] if name.startswith("context/") else self.directory / name
        if not dockerfile.is_file():
            raise CaseError(f"{self.name}: no Dockerfile at {name}")
        return context, dockerfile

    def build_options(self) -> list[str]:
        """The options after ``build`` that both builders take in the same spelling (all but -f, -t, output)."""
        args: list[str] = []
        for key, value in self.options.get("build_args", {}).items():
            args += ["--build-arg", f"{key}={value}"]
        if "target" in self.options:
            args += ["--target", self.options["target"]]
        for key, value in self.options.get("labels", {}).items():
            args += ["--label", f"{key}={value}"]
        if "network" in self.options:
            args += ["--network", self.options["network"]]
        return args


def _normalise(context: Path) -> None:
    as_root = os.geteuid() == 0
    for root, dirs, files in os.walk(context):
        for name in dirs + files:
            path = Path(root) / name
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                if as_root:
                    os.lchown(path, 0, 0)
                continue
            if stat.S_ISDIR(info.st_mode):
                mode = 0o755
            else:
                mode = 0o755 if info.st_mode & 0o111 else 0o644
            os.chmod(path, mode)
            if as_root:
                os.chown(path, 0, 0)
    os.chmod(context, 0o755)


def load_case(directory: Path) -> Case:
    options: dict[str, Any] = {}
    config = directory / "case.json"
    if config.exists():
        try:
            options = json.loads(config.read_text())
        except json.JSONDecodeError as err:
            raise CaseError(f"{config}: {err}") from None
        unknown = set(options) - _KEYS
        if unknown:
            raise CaseError(f"{config}: unknown keys {sorted(unknown)} (known: {sorted(_KEYS)})")
    return Case(directory.name, directory, options)


def all_cases() -> list[Case]:
    """Every case directory (one holding a Dockerfile or a case.json), sorted by name."""
    found = []
    for directory in sorted(CASES_DIR.iterdir()):
        if directory.is_dir() and ((directory / "Dockerfile").exists() or (directory / "case.json").exists()):
            found.append(load_case(directory))
    return found


@dataclass(frozen=True)
class Difference:
    """One place where pybuild deliberately differs from the reference in one case.

    ``at`` leads into expected.json: a section (``tree``, ``deleted``, ``config``, ``history``, ``contains``),
    then keys or list indexes, where the tree is keyed by path (``["tree", "/etc/hostname"]``). ``reference`` is
    what the reference produced there and ``pybuild`` what pybuild produces instead; ``null`` means absent."""

    id: str
    reason: str
    case: str
    at: tuple[str | int, ...]
    reference: Any
    pybuild: Any


def load_differences(path: Path = DIFFERENCES) -> list[Difference]:
    """``differences.json``: a list of ``{"id", "reason", "cases": {CASE: [{"at", "reference", "pybuild"}]}}``."""
    if not path.exists():
        return []
    found = []
    for group in json.loads(path.read_text()):
        for case, changes in group["cases"].items():
            for change in changes:
                found.append(
                    Difference(
                        group["id"], group["reason"], case, tuple(change["at"]), change["reference"], change["pybuild"]
                    )
                )
    return found


def apply_differences(expected: dict[str, Any], differences: list[Difference]) -> dict[str, Any]:
    """``expected`` as pybuild should produce it: each difference's ``pybuild`` value in place of the reference's.

    A difference whose ``reference`` value is no longer what expected.json holds is an error: the expectation
    was regenerated, and the difference must be checked again."""
    result = copy.deepcopy(expected)
    if isinstance(result.get("tree"), list):
        result["tree"] = {record["path"]: record for record in result["tree"]}
    for difference in differences:
        parent: Any = result
        for key in difference.at[:-1]:
            parent = parent[key]
        last = difference.at[-1]
        if isinstance(parent, dict):
            current = parent.get(last)  # type: ignore[arg-type]
        else:
            current = parent[last] if isinstance(last, int) and -len(parent) <= last < len(parent) else None
        if current != difference.reference:
            raise CaseError(
                f"{difference.case}: difference {difference.id!r} at {list(difference.at)} expects the reference "
                f"to say {json.dumps(difference.reference)}, but expected.json says {json.dumps(current)}"
            )
        if difference.pybuild is None:
            del parent[last]
        else:
            parent[last] = difference.pybuild
    if isinstance(result.get("tree"), dict):
        result["tree"] = [result["tree"][path] for path in sorted(result["tree"])]
    return result
