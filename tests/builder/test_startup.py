"""Start-up stays cheap: a command imports what it runs, and help imports only the parser.

Each case runs ``builder.cli.main`` in a fresh interpreter and looks at ``sys.modules`` afterwards. No timings here
(they belong in benchmarks): the modules a command imports are what its start-up time is made of.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import REPO, run_pybuild, write_context

# Run in a fresh interpreter: main(argv), its output swallowed, then the modules it left loaded, as JSON.
_PROBE = """
import contextlib, io, sys
from builder.cli import main
err = io.StringIO()
with contextlib.redirect_stdout(io.TextIOWrapper(io.BytesIO())), contextlib.redirect_stderr(err):
    code = main(sys.argv[1:])
loaded = sorted(sys.modules)
import json
print(json.dumps({"code": code, "err": err.getvalue(), "modules": loaded}))
"""

# Registries, signing, zstd, and the operations of other verbs: none of them is needed to start.
HEAVY = {
    "requests",
    "urllib3",
    "cryptography",
    "zstandard",
    "builder.solve",
    "builder.fsck",
    "builder.storeops",
    "builder.cacheops",
    "builder.export",
    "builder.signing",
    "builder.container",
    "oci.registry",
    "oci.sigstore",
    "oci.transfer",
    "oci.docker_archive",
}
# What only a step that runs (the sandbox, cache mounts), ADD of a URL or a git repository, --cache-from/--cache-to
# or stages built in parallel need: a fully cached build imports none of them. Nor uuid, which imports platform.
NOT_CACHED = {
    "builder.executor",
    "builder.cachemounts",
    "builder.cacheshare",
    "builder.compressed",
    "builder.fetch",
    "builder.gitsource",
    "concurrent.futures",
    "uuid",
}
# The front end, the plan and the cache keys: a verb that reads no Dockerfile imports none of them.
FRONT_END = {"builder.plan", "builder.cachekey", "builder.checksum", "builder.frontend.instructions"}
# What printing help may import of pybuild's own modules: the parser and the errors it raises.
HELP_MODULES = {"builder", "builder.cli", "builder.errors", "oci", "oci.errors"}


def _loaded(*args: str, cwd: Path = REPO) -> set[str]:
    proc = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, cwd=cwd, check=True)
    result = json.loads(proc.stdout)
    assert result["code"] == 0, result["err"]
    return set(result["modules"])


def _own(modules: set[str]) -> set[str]:
    return {name for name in modules if name.split(".")[0] in ("builder", "oci")}


@pytest.mark.parametrize(
    "args",
    [("--help",), ("build", "--help"), ("cache", "prune", "--help"), ("push", "--help"), ("--version",)],
    ids=" ".join,
)
def test_help_imports_only_the_parser(args: tuple[str, ...]) -> None:
    loaded = _loaded(*args)
    assert not loaded & HEAVY
    assert _own(loaded) <= HELP_MODULES, f"help imports {sorted(_own(loaded) - HELP_MODULES)}"


def test_images_imports_no_build_and_no_registry() -> None:
    loaded = _loaded("images")
    assert not loaded & HEAVY
    assert "builder.plan" not in loaded and "builder.cache" not in loaded


def test_a_cached_build_imports_no_registry_signing_or_other_verbs(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY a /a\nENV A=1\n")
    (tmp_path / "a").write_text("a\n")
    first = run_pybuild("build", "-q", "-t", "app", str(tmp_path))
    assert first.code == 0, first
    loaded = _loaded("build", "-q", "-t", "app", str(tmp_path))
    assert not (loaded & HEAVY) - {"builder.solve"}
    assert not loaded & NOT_CACHED
    assert "builder.solve" in loaded  # the probe did build


def test_a_cached_run_imports_no_sandbox_and_a_run_no_cache_mounts(busybox: str, tmp_path: Path) -> None:
    context = write_context(
        tmp_path / "ctx", "FROM busybox\nRUN echo one > /one\nCOPY a /a\nRUN cat /a\n", {"a": "1\n"}
    )
    first = run_pybuild("build", "-q", "-t", "app", str(context))
    assert first.code == 0, first
    assert not _loaded("build", "-q", "-t", "app", str(context)) & NOT_CACHED
    (context / "a").write_text("2\n")  # the COPY misses, and the RUN after it runs
    loaded = _loaded("build", "-q", "-t", "app", str(context))
    assert "builder.executor" in loaded
    assert not loaded & {"builder.cachemounts", "builder.cacheshare", "builder.fetch", "builder.gitsource"}


def test_import_imports_no_front_end(tmp_path: Path) -> None:
    (tmp_path / "hello").write_text("hello\n")
    with tarfile.open(tmp_path / "rootfs.tar", "w") as tar:
        tar.add(tmp_path / "hello", "hello")
    loaded = _loaded("import", "-q", str(tmp_path / "rootfs.tar"), "app")
    assert "builder.importer" in loaded  # the probe did import
    assert not loaded & (HEAVY | FRONT_END)


def test_a_build_that_exports_still_imports_the_exporters(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY a /a\n")
    (tmp_path / "a").write_text("a\n")
    loaded = _loaded("build", "-q", "--output", f"type=oci,dest={tmp_path / 'out.tar'}", str(tmp_path))
    assert "builder.export" in loaded
    assert (tmp_path / "out.tar").exists()
