"""Trees written to a layer and applied again come back identical; the same tree gives the same bytes anywhere."""

from __future__ import annotations

import hashlib
import io
import os
import random
import subprocess
from pathlib import Path

import pytest
from conftest import require_root, require_tool
from tartools import snapshot

from oci.apply import apply_layer
from oci.compression import Compression
from oci.digest import Digest
from oci.layer import tree_items, write_layer
from oci.tarformat import EntryType, TarReader

MTIME = 1_700_000_000


def _make_rich_tree(root: Path, order: int = 0) -> None:
    """Every kind of object a layer must carry. ``order`` changes the creation order, not the result."""
    require_root()
    root.mkdir()
    long_dir = "d" * 120
    steps = [
        lambda: (root / "empty").mkdir(),
        lambda: (root / "nested" / "empty" / "deeper").mkdir(parents=True),
        lambda: (root / "setuid").write_bytes(b"#!/bin/sh\n"),
        lambda: (root / "sticky").mkdir(),
        lambda: (root / "owned").write_bytes(b"owned by 1000:1001"),
        lambda: (root / "bigid").write_bytes(b"uid beyond ustar's octal field"),
        lambda: (root / "random.bin").write_bytes(random.Random(7).randbytes(3_000_000)),
        lambda: (root / "zero").write_bytes(b""),
        lambda: (root / ("x" * 150)).write_bytes(b"a name over 100 bytes"),
        lambda: (root / long_dir / long_dir).mkdir(parents=True),
        lambda: (root / long_dir / long_dir / ("f" * 100)).write_bytes(b"a path over 255 bytes"),
        lambda: (root / "grüße-日本語").write_bytes(b"non-ASCII name"),
        lambda: Path(os.fsdecode(bytes(root) + b"/bad-\xff\xfe-utf8")).write_bytes(b"undecodable name"),
        lambda: (root / "with space\nand newline").write_bytes(b"odd characters"),
        lambda: (root / "xattrs").write_bytes(b"has xattrs"),
        lambda: os.symlink("setuid", root / "rel-link"),
        lambda: os.symlink("/etc/passwd", root / "abs-link"),
        lambda: os.symlink("does/not/exist", root / "dangling"),
        lambda: os.symlink("nested", root / "dir-link"),
        lambda: os.symlink("t" * 200, root / "long-target"),
        lambda: os.mkfifo(root / "fifo"),
        lambda: os.mknod(root / "null", 0o666 | 0o020000, os.makedev(1, 3)),
        lambda: os.mknod(root / "loop", 0o660 | 0o060000, os.makedev(7, 0)),
        lambda: (root / "links").mkdir(),
        lambda: (root / "links" / "original").write_bytes(b"one inode, three names"),
    ]
    if order:
        # Creation order must not matter; parents before children is all that is kept.
        steps = list(reversed(steps[:9])) + steps[9:]
    for step in steps:
        step()
    os.link(root / "links" / "original", root / "links" / "second")
    os.link(root / "links" / "original", root / "hardlink-elsewhere")
    os.chmod(root / "setuid", 0o4755)
    os.chmod(root / "sticky", 0o1777)
    os.chmod(root / "links", 0o2775)
    (root / "unreadable").write_bytes(b"mode 000")
    os.chmod(root / "unreadable", 0o000)
    os.chown(root / "owned", 1000, 1001)
    os.chown(root / "bigid", 3_000_000, 3_000_001)
    os.chown(root / "rel-link", 42, 43, follow_symlinks=False)
    os.setxattr(root / "xattrs", "user.binary", b"\x00\xff\x01value")
    os.setxattr(root / "xattrs", "user.text", "grüße".encode())
    os.setxattr(root / "xattrs", "trusted.k", b"trusted value")
    os.setxattr(root / "sticky", "user.on-a-dir", b"dir xattr")
    _set_times(root)


def _set_times(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            os.utime(os.path.join(dirpath, name), (MTIME, MTIME), follow_symlinks=False)


def _layer(root: Path, compression: Compression, **kw: object) -> tuple[bytes, Digest]:
    out = io.BytesIO()
    info = write_layer(tree_items(root, **kw), out, compression)  # type: ignore[arg-type]
    return out.getvalue(), info.diff_id


def _with_times(root: Path) -> dict[str, tuple]:
    snap = snapshot(root)
    for rel in snap:
        snap[rel] = snap[rel] + (int(os.lstat(root / rel).st_mtime),)
    return snap


def _inode_groups(root: Path) -> list[list[str]]:
    groups: dict[int, list[str]] = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            full = os.path.join(dirpath, name)
            groups.setdefault(os.lstat(full).st_ino, []).append(os.path.relpath(full, root))
    return sorted(sorted(g) for g in groups.values() if len(g) > 1)


@pytest.mark.parametrize("compression", list(Compression), ids=lambda c: c.value)
def test_round_trip_preserves_everything(tmp_path: Path, compression: Compression) -> None:
    source = tmp_path / "source"
    _make_rich_tree(source)
    data, diff_id = _layer(source, compression)
    target = tmp_path / "target"
    target.mkdir()
    result = apply_layer(io.BytesIO(data), target, expected_diff_id=diff_id)
    assert result.diff_id == diff_id
    assert _with_times(target) == _with_times(source)
    assert _inode_groups(target) == _inode_groups(source) == [["hardlink-elsewhere", "links/original", "links/second"]]


def test_round_trip_of_a_layer_stack_applies_whiteouts(tmp_path: Path) -> None:
    source = tmp_path / "source"
    _make_rich_tree(source)
    base, _ = _layer(source, Compression.GZIP)
    upper = tmp_path / "upper"
    (upper / "nested").mkdir(parents=True)
    (upper / ".wh.random.bin").write_bytes(b"")
    (upper / "nested" / ".wh..wh..opq").write_bytes(b"")
    (upper / "nested" / "new").write_bytes(b"only this survives in nested/")
    delta = io.BytesIO()
    write_layer(tree_items(upper, allow_whiteout_names=True), delta, Compression.ZSTD)
    target = tmp_path / "target"
    target.mkdir()
    apply_layer(io.BytesIO(base), target)
    apply_layer(io.BytesIO(delta.getvalue()), target)
    assert not (target / "random.bin").exists()
    assert sorted(os.listdir(target / "nested")) == ["new"]
    assert (target / "setuid").exists()


def test_tree_order_puts_parents_first_and_opaque_markers_first(tmp_path: Path) -> None:
    root = tmp_path / "t"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a-b").write_bytes(b"")
    (root / "a" / "0").write_bytes(b"")
    (root / "a" / ".wh..wh..opq").write_bytes(b"")
    paths = [item.entry.path for item in tree_items(root, allow_whiteout_names=True)]
    assert paths == ["a", "a/.wh..wh..opq", "a/0", "a/b", "a-b"]


def test_a_real_file_named_like_a_whiteout_is_refused(tmp_path: Path) -> None:
    # podman#3582: committing it would delete "victim" from the image.
    (tmp_path / ".wh.victim").write_bytes(b"")
    from oci.errors import UnsafeEntry

    with pytest.raises(UnsafeEntry, match="wh"):
        list(tree_items(tmp_path))


def test_overlay_and_selinux_xattrs_stay_out_of_layers(tmp_path: Path) -> None:
    require_root()
    (tmp_path / "f").write_bytes(b"")
    os.setxattr(tmp_path / "f", "trusted.overlay.opaque", b"y")
    os.setxattr(tmp_path / "f", "user.kept", b"1")
    (item,) = list(tree_items(tmp_path))
    assert dict(item.entry.xattrs) == {"user.kept": b"1"}


def test_gnu_tar_reads_our_layers_the_same_way(tmp_path: Path) -> None:
    """Interoperability: GNU tar extracts our layer to the same tree we do."""
    tar = require_tool("tar")
    source = tmp_path / "source"
    _make_rich_tree(source)
    data, _ = _layer(source, Compression.NONE)
    (tmp_path / "layer.tar").write_bytes(data)
    target = tmp_path / "gnu"
    target.mkdir()
    subprocess.run(
        [tar, "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf", str(tmp_path / "layer.tar"), "-C", target],
        check=True,
    )
    assert _with_times(target) == _with_times(source)


# --------------------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("compression", [Compression.GZIP, Compression.ZSTD], ids=lambda c: c.value)
def test_same_tree_in_two_folders_gives_the_same_digest(tmp_path: Path, compression: Compression) -> None:
    first, second = tmp_path / "one", tmp_path / "elsewhere" / "two"
    second.parent.mkdir()
    _make_rich_tree(first)
    _make_rich_tree(second, order=1)
    data_a, diff_a = _layer(first, compression)
    data_b, diff_b = _layer(second, compression)
    assert diff_a == diff_b
    assert hashlib.sha256(data_a).digest() == hashlib.sha256(data_b).digest()


def test_clamped_mtimes_make_different_times_give_the_same_layer(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for root, when in ((a, 2_000_000_000), (b, 2_100_000_000)):
        (root / "dir").mkdir(parents=True)
        (root / "dir" / "file").write_bytes(b"same bytes")
        for path in (root / "dir" / "file", root / "dir"):
            os.utime(path, (when, when))
    epoch = 1_000_000_000
    assert _layer(a, Compression.GZIP, clamp_mtime=epoch) == _layer(b, Compression.GZIP, clamp_mtime=epoch)
    assert _layer(a, Compression.GZIP)[1] != _layer(b, Compression.GZIP)[1]


def test_layer_headers_are_normalised(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    os.utime(tmp_path / "f", (1234.9, 1234.9))
    data, _ = _layer(tmp_path, Compression.NONE)
    ((entry, _),) = list(TarReader(io.BytesIO(data)))
    assert entry.type is EntryType.FILE
    assert (entry.uname, entry.gname, entry.mtime) == ("", "", 1234)


def test_whiteout_and_opaque_entries_delete_what_lower_layers_left(tmp_path: Path) -> None:
    from oci.layer import LayerItem, opaque, whiteout

    assert whiteout("a/b").path == "a/.wh.b" and whiteout("top").path == ".wh.top"
    assert opaque("a/b").path == "a/b/.wh..wh..opq" and opaque("").path == ".wh..wh..opq"
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "lower").write_bytes(b"")
    (root / "a" / "gone").write_bytes(b"")
    (root / "kept").write_bytes(b"")
    layer = io.BytesIO()
    write_layer([LayerItem(whiteout("a/gone")), LayerItem(opaque("a/b"))], layer, Compression.GZIP)
    apply_layer(io.BytesIO(layer.getvalue()), root)
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == ["a", "a/b", "kept"]
