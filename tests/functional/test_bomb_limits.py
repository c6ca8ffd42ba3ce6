"""Decompression bombs, as a user meets them: ``--max-layer-size`` and ``--max-layer-entries`` (and their
``PYBUILD_MAX_LAYER_*`` variables) stop a layer or archive that expands too far, while it streams, with one line
naming what was expanded, the limit and the option that raises it; nothing half-extracted is left behind.

Every bomb here is a few KiB that expands to 20 MiB, refused at a 1 MiB limit: the cost of a test is the limit,
not the bomb. The default limits (32 GiB, 10 million entries) are checked by value in tests/builder/test_limits.py.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard
from conftest import CLIResult, require_root, run_pybuild, write_context
from tartools import archive, file

BOMB_SIZE = 20 << 20
HINT_SIZE = "(raise it with --max-layer-size)"
HINT_ENTRIES = "(raise it with --max-layer-entries)"

COMPRESSORS: dict[str, tuple[str, Callable[[bytes], bytes]]] = {
    "gzip": ("tar.gz", gzip.compress),
    "zstd": ("tar.zst", lambda data: zstandard.ZstdCompressor().compress(data)),
    "bzip2": ("tar.bz2", bz2.compress),
    "xz": ("tar.xz", lambda data: lzma.compress(data, preset=1)),
}


def bomb_tar() -> bytes:
    """A tar of one 20 MiB file of zeros."""
    return archive(file("zeros", b"\0" * BOMB_SIZE))


def bomb(kind: str = "gzip") -> tuple[str, bytes]:
    suffix, compress = COMPRESSORS[kind]
    data = compress(bomb_tar())
    assert len(data) < 64 << 10, "a bomb: a few KiB that expand to 20 MiB"
    return f"bomb.{suffix}", data


def error_line(result: CLIResult) -> str:
    """The one line of the failure: the last of standard error, with no traceback before it."""
    assert result.code == 1, result
    assert "Traceback" not in result.err, result
    return result.err.strip().splitlines()[-1]


def assert_nothing_left(root: Path) -> None:
    """No scratch tree, no half-written blob, no half-extracted snapshot."""
    for sub in ("tmp", "ingest"):
        assert not (root / sub).exists() or os.listdir(root / sub) == [], sub
    snapshots = root / "snapshots"
    if snapshots.exists():
        assert [name for name in os.listdir(snapshots) if name.startswith(".")] == []


def import_gzip_bomb(store_root: Path, tmp_path: Path) -> None:
    """An image ``bomb`` whose one layer is stored gzip-compressed (as pulled and loaded images keep them)."""
    name, data = bomb("gzip")
    (tmp_path / name).write_bytes(data)
    result = run_pybuild("import", "-q", "--compression", "gzip", str(tmp_path / name), "bomb")
    assert result.code == 0, result


# ------------------------------------------------------------------------------------------------------- ADD


@pytest.mark.parametrize("kind", sorted(COMPRESSORS))
def test_an_added_archive_bomb_is_refused_at_the_limit(kind: str, tmp_path: Path, store_root: Path) -> None:
    require_root()
    name, data = bomb(kind)
    ctx = write_context(tmp_path / "ctx", f"FROM scratch\nADD {name} /\n")
    (ctx / name).write_bytes(data)
    result = run_pybuild("--max-layer-size", "1m", "build", "--progress", "plain", str(ctx))
    line = error_line(result)
    assert line == (
        f"pybuild: {ctx}/Dockerfile:2: ADD {name}: archive expands to more than the 1 MiB limit {HINT_SIZE}"
    )
    assert_nothing_left(store_root)


def test_the_limit_may_follow_the_verb_and_comes_from_the_environment(tmp_path: Path, store_root: Path) -> None:
    require_root()
    name, data = bomb("zstd")
    ctx = write_context(tmp_path / "ctx", f"FROM scratch\nADD {name} /\n")
    (ctx / name).write_bytes(data)
    after = run_pybuild("build", "--max-layer-size=1m", "-q", str(ctx))
    assert "archive expands to more than the 1 MiB limit" in error_line(after)
    from_env = run_pybuild("build", "-q", str(ctx), env={"PYBUILD_MAX_LAYER_SIZE": "1m"})
    assert "archive expands to more than the 1 MiB limit" in error_line(from_env)
    # The option wins over the environment (here before the default verb); 0 lifts the bound.
    lifted = run_pybuild("--max-layer-size", "0", "-q", "-t", "big", str(ctx), env={"PYBUILD_MAX_LAYER_SIZE": "1m"})
    assert lifted.code == 0, lifted
    assert_nothing_left(store_root)


def test_an_entries_bomb_in_an_added_archive_is_refused(tmp_path: Path, store_root: Path) -> None:
    require_root()
    many = gzip.compress(archive(*(file(f"f{i}", b"") for i in range(2000))))
    ctx = write_context(tmp_path / "ctx", "FROM scratch\nADD many.tar.gz /d/\n")
    (ctx / "many.tar.gz").write_bytes(many)
    result = run_pybuild("build", "-q", str(ctx), env={"PYBUILD_MAX_LAYER_ENTRIES": "1000"})
    line = error_line(result)
    assert line == (
        f"pybuild: {ctx}/Dockerfile:2: ADD many.tar.gz: archive has more than the 1000-entry limit {HINT_ENTRIES}"
    )
    assert_nothing_left(store_root)
    assert run_pybuild("--max-layer-entries", "2001", "build", "-q", str(ctx)).code == 0


# ------------------------------------------------------------------------------------------------ base images


def test_a_bomb_layer_of_a_base_image_is_refused_when_it_is_extracted(tmp_path: Path, store_root: Path) -> None:
    require_root()
    import_gzip_bomb(store_root, tmp_path)
    ctx = write_context(tmp_path / "ctx", "FROM bomb\nCOPY Dockerfile /copied\n")
    result = run_pybuild("--max-layer-size", "1m", "build", "-q", str(ctx))
    line = error_line(result)
    assert line.startswith(f"pybuild: {ctx}/Dockerfile:2: layer sha256:")
    assert line.endswith(f" expands to more than the 1 MiB limit {HINT_SIZE}")
    assert_nothing_left(store_root)
    assert not (store_root / "snapshots").exists() or os.listdir(store_root / "snapshots") == []
    # Within the default limit, the same image is an ordinary base.
    assert run_pybuild("build", "-q", str(ctx)).code == 0


def test_export_and_run_of_a_bomb_image_are_refused(tmp_path: Path, store_root: Path) -> None:
    require_root()
    import_gzip_bomb(store_root, tmp_path)
    out = tmp_path / "rootfs.tar"
    exported = run_pybuild("--max-layer-size", "1m", "export", "bomb", "-o", str(out))
    assert error_line(exported).endswith(f" expands to more than the 1 MiB limit {HINT_SIZE}")
    assert not out.exists()
    ran = run_pybuild("run", "--rm", "bomb", "true", env={"PYBUILD_MAX_LAYER_SIZE": "1m"})
    assert error_line(ran).endswith(f" expands to more than the 1 MiB limit {HINT_SIZE}")
    assert_nothing_left(store_root)


def test_layer_browsing_reports_a_bomb_layer_without_reading_it_through(tmp_path: Path, store_root: Path) -> None:
    require_root()
    import_gzip_bomb(store_root, tmp_path)
    result = run_pybuild("--max-layer-size", "1m", "diff", "bomb")
    assert result.code == 0, result
    assert "expands to more than the 1 MiB limit" in result.out
    assert "WARNING: layer 1: layer sha256:" in result.err


# ----------------------------------------------------------------------------------------------- import, load


def test_importing_a_bomb_is_refused(tmp_path: Path, store_root: Path) -> None:
    require_root()
    name, data = bomb("zstd")
    (tmp_path / name).write_bytes(data)
    result = run_pybuild("--max-layer-size", "1m", "import", str(tmp_path / name), "bomb")
    assert error_line(result) == f"pybuild: import {name}: tarball expands to more than the 1 MiB limit {HINT_SIZE}"
    assert_nothing_left(store_root)
    assert run_pybuild("images", "-q").out == ""
    from_stdin = run_pybuild("import", "-", "bomb", input=data, env={"PYBUILD_MAX_LAYER_SIZE": "1m"})
    assert error_line(from_stdin) == f"pybuild: import -: tarball expands to more than the 1 MiB limit {HINT_SIZE}"


def test_importing_an_entries_bomb_is_refused(tmp_path: Path, store_root: Path) -> None:
    require_root()
    (tmp_path / "many.tar").write_bytes(archive(*(file(f"f{i}", b"") for i in range(2000))))
    result = run_pybuild("--max-layer-entries", "1000", "import", str(tmp_path / "many.tar"), "many")
    assert error_line(result) == f"pybuild: import many.tar: tarball has more than the 1000-entry limit {HINT_ENTRIES}"
    assert_nothing_left(store_root)
    assert run_pybuild("--max-layer-entries", "0", "import", str(tmp_path / "many.tar"), "many").code == 0


def test_loading_an_archive_with_a_bomb_layer_is_refused(tmp_path: Path, store_root: Path) -> None:
    require_root()
    import_gzip_bomb(store_root, tmp_path)
    saved = tmp_path / "saved.tar"
    assert run_pybuild("save", "bomb", "-o", str(saved)).code == 0
    other = tmp_path / "other"
    result = run_pybuild("--root", str(other), "--max-layer-size", "1m", "load", "-i", str(saved))
    line = error_line(result)
    assert line.startswith("pybuild: manifest.json entry 0 layer ")
    assert line.endswith(f" expands to more than the 1 MiB limit {HINT_SIZE}")
    assert_nothing_left(other)
    blobs = other / "blobs" / "sha256"
    assert not blobs.exists() or list(blobs.iterdir()) == []  # the layer was refused before its config went in
    # A compressed archive is decompressed to disk first: that too stops at the bound.
    packed = tmp_path / "saved.tar.gz"
    packed.write_bytes(gzip.compress(saved.read_bytes()))
    result = run_pybuild("--root", str(other), "--max-layer-size", "16k", "load", "-i", str(packed))
    assert error_line(result) == f"pybuild: {packed} expands to more than the 16 KiB limit {HINT_SIZE}"
    assert_nothing_left(other)
    assert run_pybuild("--root", str(other), "load", "-i", str(packed)).code == 0


# ---------------------------------------------------------------------------------------------------- usage


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--max-layer-size", "lots"], {}, "argument --max-layer-size: invalid size 'lots'"),
        (["--max-layer-entries", "-1"], {}, "argument --max-layer-entries: expected a whole number"),
        (["--max-layer-entries", "1.5"], {}, "argument --max-layer-entries: expected a whole number"),
        ([], {"PYBUILD_MAX_LAYER_SIZE": "huge"}, "$PYBUILD_MAX_LAYER_SIZE: invalid size 'huge'"),
        ([], {"PYBUILD_MAX_LAYER_ENTRIES": "many"}, "$PYBUILD_MAX_LAYER_ENTRIES: expected a whole number"),
    ],
)
def test_bad_limits_are_bad_usage(args: list[str], env: dict[str, str], message: str) -> None:
    result = run_pybuild(*args, "images", env=env)
    assert result.code == 2, result
    (line,) = result.err.strip().splitlines()
    assert line.startswith(f"pybuild: {message}")
