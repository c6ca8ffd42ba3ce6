"""Snapshots and the overlay differ: ``RootView`` against the kernel's overlayfs, ``upper_items`` against real
upper directories, ``SnapshotStore`` publishing, and layers from the differ applied back onto a plain tree.

Overlays are mounted in a forked child that first unshares its mount namespace, so nothing is left mounted when
it exits; what the child saw of the merged tree comes back pickled through a pipe.
"""

from __future__ import annotations

import io
import itertools
import os
import pickle
import random
import shutil
import stat
import subprocess
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, cast

import pytest
from conftest import require_root

from builder import linux
from builder.snapshot import RootView, SnapshotStore, upper_items
from oci.apply import OVERLAY_OPAQUE, apply_layer
from oci.compression import Compression
from oci.digest import Digest
from oci.errors import DigestMismatch, UnsafeEntry
from oci.layer import LayerItem, opaque, whiteout, write_layer
from oci.tarformat import EntryType, TarEntry

T = 1_600_000_000  # a whole-second mtime, as a layer unpacked from a tar has


@pytest.fixture(autouse=True)
def _root() -> None:
    require_root()


# ------------------------------------------------------------------------------------------------ helpers


def in_mount_namespace(body: Callable[[], Any]) -> Any:
    """Run ``body`` in a forked child with a private mount namespace; return what it returned."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(read_end)
            os.umask(0o022)
            linux.unshare(linux.CLONE_NEWNS)
            linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
            payload = pickle.dumps(("ok", body()))
            code = 0
        except BaseException:
            payload = pickle.dumps(("error", traceback.format_exc()))
        with os.fdopen(write_end, "wb") as f:
            f.write(payload)
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    kind, value = pickle.loads(data) if data else ("error", f"child died with status {status}")
    if kind == "error":
        pytest.fail(f"in the overlay child:\n{value}")
    return value


def change_overlay(tmp: Path, lowers: list[Path], change: Callable[[Path], None]) -> tuple[Path, dict[str, tuple]]:
    """Mount ``lowers`` (top first) with a fresh upper, run ``change`` on the merged tree, unmount.

    Returns the upper directory and the merged tree as it was after the change.
    """
    upper, work, merged = tmp / "upper", tmp / "work", tmp / "merged"
    for d in (upper, work, merged):
        d.mkdir()

    def body() -> dict[str, tuple]:
        linux.mount_overlay(str(merged), [str(p) for p in lowers], str(upper), str(work))
        change(merged)
        return tree(merged)

    return upper, in_mount_namespace(body)


def kernel_view(tmp: Path, lowers: list[Path]) -> dict[str, tuple]:
    """The merged tree the kernel makes of ``lowers`` (top first), read-only."""
    merged = tmp / "ro-merged"
    merged.mkdir()

    def body() -> dict[str, tuple]:
        linux.mount_overlay(str(merged), [str(p) for p in lowers])
        return tree(merged)

    return in_mount_namespace(body)


def describe(full: str, st: os.stat_result, read: Callable[[], bytes], link: Callable[[], str]) -> tuple:
    if stat.S_ISREG(st.st_mode):
        content: object = read()
    elif stat.S_ISLNK(st.st_mode):
        content = link()
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        content = (os.major(st.st_rdev), os.minor(st.st_rdev))
    else:
        content = None
    return (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, content)


def tree(root: Path) -> dict[str, tuple]:
    """path -> (type, mode, uid, gid, content | link target | device) for everything under ``root``."""
    result: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            result[os.path.relpath(full, root)] = describe(
                full, st, lambda f=full: Path(f).read_bytes(), lambda f=full: os.readlink(f)
            )
    return result


def view_tree(view: RootView) -> dict[str, tuple]:
    """The same description of a ``RootView``, walked through ``listdir`` and ``lstat``."""
    result: dict[str, tuple] = {}

    def read(rel: str) -> bytes:
        with view.open(rel) as f:
            return f.read()

    def walk(rel: str) -> None:
        for name in view.listdir(rel):
            child = f"{rel}/{name}" if rel else name
            st = view.lstat(child)
            assert st is not None, f"listdir({rel!r}) has {name!r} but lstat({child!r}) says it does not exist"
            result[child] = describe(child, st, lambda c=child: read(c), lambda c=child: view.readlink(c))
            if stat.S_ISDIR(st.st_mode):
                walk(child)

    walk("")
    return result


def assert_same_tree(got: dict[str, tuple], want: dict[str, tuple]) -> None:
    differences = {
        path: (got.get(path), want.get(path))
        for path in sorted(got.keys() | want.keys())
        if got.get(path) != want.get(path)
    }
    assert not differences, "path: (got, want)\n" + "\n".join(f"{p}: {g} != {w}" for p, (g, w) in differences.items())


def make(root: Path, spec: dict[str, object]) -> Path:
    """Build a lower directory by hand. Values: bytes (file), "/" (dir), "->target" (symlink), "WHITEOUT",
    "OPAQUE" (an opaque directory), or a (value, mode, uid, gid) tuple. Every mtime is the whole second T."""
    root.mkdir(parents=True)
    for rel in sorted(spec, key=lambda p: p.count("/")):
        value = spec[rel]
        mode, uid, gid = None, 0, 0
        if isinstance(value, tuple):
            value, mode, uid, gid = value
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(value, bytes):
            path.write_bytes(value)
        elif value in ("/", "OPAQUE"):
            path.mkdir()
            if value == "OPAQUE":
                os.setxattr(path, OVERLAY_OPAQUE, b"y")
        elif value == "WHITEOUT":
            os.mknod(path, stat.S_IFCHR, os.makedev(0, 0))
        elif isinstance(value, str) and value.startswith("->"):
            os.symlink(value[2:], path)
        else:
            raise AssertionError(value)
        if mode is not None:
            os.chmod(path, mode)
        os.lchown(path, uid, gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (T, T), follow_symlinks=False)
    return root


def layer_bytes(*items: tuple[TarEntry, bytes | None]) -> bytes:
    out = io.BytesIO()
    write_layer(
        [LayerItem(entry, (lambda d=data: io.BytesIO(d)) if data else None) for entry, data in items],
        out,
        Compression.NONE,
    )
    return out.getvalue()


def d(path: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> tuple[TarEntry, None]:
    return TarEntry(path, EntryType.DIR, mode=mode, uid=uid, gid=gid, mtime=T), None


def f(path: str, data: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0) -> tuple[TarEntry, bytes]:
    return TarEntry(path, EntryType.FILE, mode=mode, uid=uid, gid=gid, size=len(data), mtime=T), data


def s(path: str, target: str) -> tuple[TarEntry, None]:
    return TarEntry(path, EntryType.SYMLINK, mode=0o777, linkname=target, mtime=T), None


def h(path: str, target: str) -> tuple[TarEntry, None]:
    return TarEntry(path, EntryType.HARDLINK, linkname=target, mtime=T), None


def summary(items: list[LayerItem]) -> list[tuple]:
    return [(i.entry.path, i.entry.type, oct(i.entry.mode), i.entry.uid, i.entry.gid, i.entry.linkname) for i in items]


# ----------------------------------------------------------------------------------------------- RootView


@pytest.fixture
def stack(tmp_path: Path) -> list[Path]:
    """Three hand-made lower directories, top first."""
    bottom = make(
        tmp_path / "l1",
        {
            "a/x": b"l1 a/x",
            "a/y": b"l1 a/y",
            "a/sub/z": b"l1 a/sub/z",
            "b/deep/f": b"l1 b/deep/f",
            "c": b"l1 c",
            "d/old": b"l1 d/old",
            "e": (b"l1 e", 0o600, 7, 8),
            "link": "->c",
        },
    )
    middle = make(
        tmp_path / "l2",
        {
            "a/x": b"l2 a/x",
            "b": b"l2 b is a file",
            "c": "WHITEOUT",
            "d": "OPAQUE",
            "d/new": b"l2 d/new",
            "f": b"l2 f",
        },
    )
    top = make(
        tmp_path / "l3",
        {
            "a/w": b"l3 a/w",
            "a/y": "WHITEOUT",
            "d/newer": b"l3 d/newer",
            "e": (b"l3 e", 0o640, 9, 10),
            "g": "OPAQUE",
            "g/h": b"l3 g/h",
            "ghost": "WHITEOUT",
        },
    )
    return [top, middle, bottom]


def test_rootview_top_layer_wins(stack: list[Path]) -> None:
    view = RootView(stack)
    top, middle, bottom = (os.fsencode(p) for p in stack)
    assert view.real_path("a/x") == middle + b"/a/x"
    assert view.real_path("a/sub/z") == bottom + b"/a/sub/z"
    assert view.real_path("e") == top + b"/e"
    with view.open("a/x") as f:
        assert f.read() == b"l2 a/x"
    st = view.lstat("e")
    assert st is not None and (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 9, 10)


def test_rootview_whiteout_hides_lower_paths(stack: list[Path]) -> None:
    view = RootView(stack)
    for hidden in ("a/y", "c", "ghost"):
        assert view.find(hidden) is None
        assert view.lstat(hidden) is None
        assert view.real_path(hidden) is None
        with pytest.raises(FileNotFoundError):
            view.open(hidden)
    assert view.listdir("a") == ["sub", "w", "x"]


def test_rootview_opaque_directory_hides_lower_contents_but_not_its_own(stack: list[Path]) -> None:
    view = RootView(stack)
    assert view.find("d/old") is None
    assert view.listdir("d") == ["new", "newer"]  # its own (l2) and what a layer above added (l3)
    with view.open("d/new") as f:
        assert f.read() == b"l2 d/new"
    assert view.listdir("g") == ["h"]


def test_rootview_non_directory_hides_a_lower_subtree(stack: list[Path]) -> None:
    view = RootView(stack)
    st = view.lstat("b")
    assert st is not None and stat.S_ISREG(st.st_mode)
    assert view.find("b/deep") is None
    assert view.find("b/deep/f") is None


def test_rootview_listdir_merges_and_sorts(stack: list[Path]) -> None:
    view = RootView(stack)
    assert view.listdir("") == ["a", "b", "d", "e", "f", "g", "link"]
    assert view.listdir("a/sub") == ["z"]


def test_rootview_never_follows_symlinks(stack: list[Path]) -> None:
    view = RootView(stack)
    st = view.lstat("link")
    assert st is not None and stat.S_ISLNK(st.st_mode)
    assert view.readlink("link") == "c"  # the target is whited out; the link itself is still there
    with pytest.raises(OSError):
        view.open("link")  # O_NOFOLLOW


def test_rootview_root_is_the_top_layer(stack: list[Path]) -> None:
    view = RootView(stack)
    assert view.lstat("") == os.lstat(stack[0])


def test_rootview_find_lstat_readlink_open_agree(stack: list[Path]) -> None:
    view = RootView(stack)
    walked = view_tree(view)
    assert set(walked) == {
        "a",
        "a/sub",
        "a/sub/z",
        "a/w",
        "a/x",
        "b",
        "d",
        "d/new",
        "d/newer",
        "e",
        "f",
        "g",
        "g/h",
        "link",
    }
    for rel, (kind, mode, uid, gid, content) in walked.items():
        found = view.find(rel)
        assert found is not None
        real, st = found
        assert os.lstat(real) == st == view.lstat(rel)
        assert (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (kind, mode, uid, gid)
        if kind == stat.S_IFREG:
            assert Path(os.fsdecode(real)).read_bytes() == content


def test_rootview_agrees_with_the_kernel(tmp_path: Path, stack: list[Path]) -> None:
    assert_same_tree(view_tree(RootView(stack)), kernel_view(tmp_path, stack))


def test_rootview_listdir_under_an_opaque_ancestor_hides_lower_layers(tmp_path: Path) -> None:
    """An opaque directory hides everything below it in lower layers, at any depth: overlayfs looks up
    ``a/b`` only in the layers that ``a`` was found in. ``find`` knows it; ``listdir`` must too."""
    bottom = make(tmp_path / "l1", {"a/b/old": b"hidden by l2's opaque a"})
    top = make(tmp_path / "l2", {"a": "OPAQUE", "a/b/new": b"visible"})
    view = RootView([top, bottom])
    assert view.find("a/b/old") is None
    assert kernel_view(tmp_path, [top, bottom]) == {
        "a": (stat.S_IFDIR, 0o755, 0, 0, None),
        "a/b": (stat.S_IFDIR, 0o755, 0, 0, None),
        "a/b/new": (stat.S_IFREG, 0o644, 0, 0, b"visible"),
    }
    assert view.listdir("a/b") == ["new"]


# ------------------------------------------------------------------------------------------------ the differ


@pytest.fixture
def lower(tmp_path: Path) -> Path:
    return make(
        tmp_path / "lower",
        {
            "chmodme": b"chmod me",
            "deep/x/y/old": b"old",
            "deep/x/other": b"other",
            "dir": ("/", 0o755, 0, 0),
            "dir/a": b"a",
            "dir/sub": ("/", 0o700, 0, 0),
            "dir/sub/b": b"b",
            "etc/conf": b"old conf",
            "etc/gone": b"to be deleted",
            "etc/keep": b"kept",
            "mvme": b"moved away and back",
            "same": b"12345",
            "sneaky": b"12345",
            "touchme/f": b"f",
        },
    )


def everyday_changes(m: Path) -> None:
    (m / "new").write_bytes(b"n")
    os.chmod(m / "new", 0o640)
    os.chown(m / "new", 1000, 1001)
    os.utime(m / "new", (500, 500))
    (m / "etc/conf").write_bytes(b"new conf")
    os.unlink(m / "etc/gone")
    shutil.rmtree(m / "dir")
    (m / "dir").mkdir(0o750)
    (m / "dir/c").write_bytes(b"c")
    os.chmod(m / "chmodme", 0o600)
    os.utime(m / "touchme", (T + 5, T + 5))
    os.rename(m / "mvme", m / "mvme.tmp")
    os.rename(m / "mvme.tmp", m / "mvme")
    (m / "deep/x/y/new1").write_bytes(b"1")
    (m / "deep/x/y/new2").write_bytes(b"2")
    (m / "h1").write_bytes(b"hard")
    os.link(m / "h1", m / "h2")
    (m / "same").write_bytes(b"12345")
    os.utime(m / "same", (T, T))  # rewritten with the same bytes and second: only a copy-up
    (m / "sneaky").write_bytes(b"54321")
    os.utime(m / "sneaky", (T, T))  # same size and second, different bytes: the content compare must see it
    os.symlink("etc/conf", m / "link")
    (m / "newdir").mkdir()


EVERYDAY = [
    ("chmodme", EntryType.FILE, "0o600", 0, 0, ""),
    ("deep", EntryType.DIR, "0o755", 0, 0, ""),
    ("deep/x", EntryType.DIR, "0o755", 0, 0, ""),
    ("deep/x/y", EntryType.DIR, "0o755", 0, 0, ""),
    ("deep/x/y/new1", EntryType.FILE, "0o644", 0, 0, ""),
    ("deep/x/y/new2", EntryType.FILE, "0o644", 0, 0, ""),
    ("dir", EntryType.DIR, "0o750", 0, 0, ""),
    ("dir/.wh..wh..opq", EntryType.FILE, "0o644", 0, 0, ""),
    ("dir/c", EntryType.FILE, "0o644", 0, 0, ""),
    ("etc", EntryType.DIR, "0o755", 0, 0, ""),
    ("etc/conf", EntryType.FILE, "0o644", 0, 0, ""),
    ("etc/.wh.gone", EntryType.FILE, "0o644", 0, 0, ""),
    ("h1", EntryType.FILE, "0o644", 0, 0, ""),
    ("h2", EntryType.HARDLINK, "0o644", 0, 0, "h1"),
    ("link", EntryType.SYMLINK, "0o777", 0, 0, "etc/conf"),
    ("new", EntryType.FILE, "0o640", 1000, 1001, ""),
    ("newdir", EntryType.DIR, "0o755", 0, 0, ""),
    ("sneaky", EntryType.FILE, "0o644", 0, 0, ""),
]


def read_items(items: list[LayerItem]) -> dict[str, bytes]:
    contents = {}
    for item in items:
        if item.open is not None:
            with item.open() as f:
                contents[item.entry.path] = f.read()
    return contents


def test_upper_items_everyday_changes(tmp_path: Path, lower: Path) -> None:
    upper, _ = change_overlay(tmp_path, [lower], everyday_changes)
    assert (upper / "touchme").is_dir() and (upper / "mvme").is_file()  # copied up, so the differ must judge them
    items = list(upper_items(upper, RootView([lower])))
    assert summary(items) == EVERYDAY
    assert read_items(items) == {
        "chmodme": b"chmod me",
        "deep/x/y/new1": b"1",
        "deep/x/y/new2": b"2",
        "dir/c": b"c",
        "etc/conf": b"new conf",
        "h1": b"hard",
        "new": b"n",
        "sneaky": b"54321",
    }
    by_path = {i.entry.path: i.entry for i in items}
    assert by_path["new"].mtime == 500 and by_path["etc/.wh.gone"].mtime == 0
    assert by_path["sneaky"].mtime == T and by_path["sneaky"].size == 5
    # overlayfs' own attributes (opaque, origin) describe the host, not the image
    assert all(not i.entry.xattrs for i in items), [(i.entry.path, dict(i.entry.xattrs)) for i in items]


def test_upper_items_clamp_mtime(tmp_path: Path, lower: Path) -> None:
    upper, _ = change_overlay(tmp_path, [lower], everyday_changes)
    unclamped = list(upper_items(upper, RootView([lower])))
    assert max(i.entry.mtime for i in unclamped) > 1000  # files written just now
    clamped = list(upper_items(upper, RootView([lower]), clamp_mtime=1000))
    assert summary(clamped) == summary(unclamped)
    for before, after in zip(unclamped, clamped, strict=True):
        assert after.entry.mtime == min(before.entry.mtime, 1000), after.entry.path
    assert {i.entry.path: i.entry.mtime for i in clamped}["new"] == 500  # older than the clamp: kept


def test_upper_items_nothing_changed_gives_nothing(tmp_path: Path, lower: Path) -> None:
    def copy_ups_only(m: Path) -> None:
        os.utime(m / "touchme", (T + 5, T + 5))
        os.utime(m / "deep/x/y", (T + 5, T + 5))
        os.rename(m / "mvme", m / "elsewhere")
        os.rename(m / "elsewhere", m / "mvme")
        (m / "scratch").write_bytes(b"made and removed")
        os.unlink(m / "scratch")

    upper, _ = change_overlay(tmp_path, [lower], copy_ups_only)
    assert sorted(os.listdir(upper)) == ["deep", "mvme", "touchme"]
    assert list(upper_items(upper, RootView([lower]))) == []


def test_upper_items_metadata_changes_of_directories_count(tmp_path: Path, lower: Path) -> None:
    def chmod_and_chown(m: Path) -> None:
        os.chmod(m / "deep/x", 0o711)
        os.chown(m / "touchme", 5, 6)

    upper, _ = change_overlay(tmp_path, [lower], chmod_and_chown)
    assert summary(list(upper_items(upper, RootView([lower])))) == [
        ("deep", EntryType.DIR, "0o755", 0, 0, ""),
        ("deep/x", EntryType.DIR, "0o711", 0, 0, ""),
        ("touchme", EntryType.DIR, "0o755", 5, 6, ""),
    ]


def test_upper_items_refuses_a_user_file_named_like_a_whiteout(tmp_path: Path, lower: Path) -> None:
    upper, merged = change_overlay(tmp_path, [lower], lambda m: (m / "etc/.wh.conf").write_bytes(b"mine"))
    assert merged["etc/.wh.conf"][4] == b"mine" and merged["etc/conf"][4] == b"old conf"
    with pytest.raises(UnsafeEntry, match=r"/etc/\.wh\.conf"):
        list(upper_items(upper, RootView([lower])))


def test_upper_items_leaves_out_a_whiteout_of_nothing(tmp_path: Path, lower: Path) -> None:
    """A 0/0 device for a path no lower layer has (overlayfs may leave one after a rename) deletes nothing."""
    upper = tmp_path / "upper"
    (upper / "etc").mkdir(parents=True)
    for rel in ("never-existed", "etc/gone", "etc/never-existed"):
        os.mknod(upper / rel, stat.S_IFCHR, os.makedev(0, 0))
    os.utime(upper / "etc", (T, T))
    assert summary(list(upper_items(upper, RootView([lower])))) == [
        ("etc", EntryType.DIR, "0o755", 0, 0, ""),
        ("etc/.wh.gone", EntryType.FILE, "0o644", 0, 0, ""),
    ]


def test_upper_items_opaque_marker_only_over_something(tmp_path: Path, lower: Path) -> None:
    """overlayfs marks new directories opaque as an optimisation; with nothing below, no marker is written."""
    upper = make(tmp_path / "upper", {"fresh": "OPAQUE", "fresh/x": b"x", "dir": "OPAQUE"})
    assert summary(list(upper_items(upper, RootView([lower])))) == [
        ("dir", EntryType.DIR, "0o755", 0, 0, ""),
        ("dir/.wh..wh..opq", EntryType.FILE, "0o644", 0, 0, ""),
        ("fresh", EntryType.DIR, "0o755", 0, 0, ""),
        ("fresh/x", EntryType.FILE, "0o644", 0, 0, ""),
    ]


def test_upper_items_a_file_replacing_a_directory_and_back(tmp_path: Path, lower: Path) -> None:
    def swap(m: Path) -> None:
        shutil.rmtree(m / "dir")
        (m / "dir").write_bytes(b"now a file")
        os.unlink(m / "chmodme")
        (m / "chmodme").mkdir()
        (m / "chmodme/inside").write_bytes(b"i")

    upper, _ = change_overlay(tmp_path, [lower], swap)
    assert summary(list(upper_items(upper, RootView([lower])))) == [
        ("chmodme", EntryType.DIR, "0o755", 0, 0, ""),
        ("chmodme/.wh..wh..opq", EntryType.FILE, "0o644", 0, 0, ""),
        ("chmodme/inside", EntryType.FILE, "0o644", 0, 0, ""),
        ("dir", EntryType.FILE, "0o644", 0, 0, ""),
    ]


def test_upper_items_recreating_a_path_a_lower_layer_deleted(tmp_path: Path) -> None:
    """Below a whiteout there is nothing to hide: no opaque marker, and the old children stay gone."""
    bottom = make(tmp_path / "l1", {"gone/child": b"deleted by l2", "file": b"deleted by l2"})
    middle = make(tmp_path / "l2", {"gone": "WHITEOUT", "file": "WHITEOUT"})

    def recreate(m: Path) -> None:
        (m / "gone").mkdir()
        (m / "gone/new").write_bytes(b"new")
        (m / "file").mkdir()

    upper, merged = change_overlay(tmp_path, [middle, bottom], recreate)
    assert sorted(merged) == ["file", "gone", "gone/new"]
    assert summary(list(upper_items(upper, RootView([middle, bottom])))) == [
        ("file", EntryType.DIR, "0o755", 0, 0, ""),
        ("gone", EntryType.DIR, "0o755", 0, 0, ""),
        ("gone/new", EntryType.FILE, "0o644", 0, 0, ""),
    ]


# --------------------------------------------------------------------------------------------- SnapshotStore

MARKED = layer_bytes(
    d("a"),
    (opaque("a"), None),
    f("a/kept", b"kept"),
    d("etc"),
    f("etc/.wh.passwd", b""),
    (whiteout("gone"), None),
    f("file", b"content", mode=0o600, uid=3, gid=4),
    s("link", "file"),
    h("hard", "file"),
)


def test_ensure_keeps_whiteouts_as_overlay_markers(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "snapshots")
    diff_id = Digest.of_bytes(MARKED)
    path = store.ensure(diff_id, lambda: io.BytesIO(MARKED))
    assert path == tmp_path / "snapshots" / diff_id.encoded and store.has(diff_id)
    assert os.getxattr(path / "a", OVERLAY_OPAQUE) == b"y"
    for rel in ("etc/passwd", "gone"):
        st = os.lstat(path / rel)
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0, rel
    assert (path / "a/kept").read_bytes() == b"kept"
    assert os.readlink(path / "link") == "file"
    st = os.lstat(path / "file")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_nlink) == (0o600, 3, 4, 2)
    assert os.lstat(path / "hard").st_ino == st.st_ino
    names = [name for _, dirs, files in os.walk(path) for name in dirs + files]
    assert not [n for n in names if n.startswith(".wh.")]
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o755  # a lower directory is the root of the merged tree
    assert os.listdir(store.root) == [diff_id.encoded]


def test_ensure_reuses_an_existing_snapshot(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "snapshots")
    diff_id = Digest.of_bytes(MARKED)
    first = store.ensure(diff_id, lambda: io.BytesIO(MARKED))

    def must_not_open() -> BinaryIO:
        raise AssertionError("an existing snapshot was extracted again")

    assert store.ensure(diff_id, must_not_open) == first


class Watching(io.RawIOBase):
    """A layer stream that looks at the snapshot store while it is being read, and may fail half way."""

    def __init__(self, data: bytes, look: Callable[[], None], fail_after: int | None = None) -> None:
        self._data = io.BytesIO(data)
        self._look = look
        self._fail_after = fail_after

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self._look()
        if self._fail_after is not None and self._data.tell() >= self._fail_after:
            raise OSError("the blob went away")
        chunk = self._data.read(min(len(buffer), 512))
        buffer[: len(chunk)] = chunk
        return len(chunk)


def watched(data: bytes, look: Callable[[], None], fail_after: int | None = None) -> Callable[[], BinaryIO]:
    """An ``open_layer`` for ``SnapshotStore.ensure`` whose stream is a ``Watching``."""
    return lambda: cast(BinaryIO, io.BufferedReader(Watching(data, look, fail_after)))


def test_ensure_publishes_by_rename(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "snapshots")
    diff_id = Digest.of_bytes(MARKED)
    seen: list[list[str]] = []

    def look() -> None:
        assert not store.has(diff_id)
        seen.append(sorted(os.listdir(store.root)))

    store.ensure(diff_id, watched(MARKED, look))
    assert len(seen) > 3
    assert all(len(names) == 1 and names[0].startswith(f".{os.getpid()}-") for names in seen), seen
    assert os.listdir(store.root) == [diff_id.encoded]


@pytest.mark.parametrize("how", ["wrong diff_id", "stream fails"])
def test_ensure_a_failing_layer_leaves_nothing(tmp_path: Path, how: str) -> None:
    store = SnapshotStore(tmp_path / "snapshots")
    diff_id = Digest.of_bytes(MARKED)
    if how == "wrong diff_id":
        with pytest.raises(DigestMismatch):
            store.ensure(Digest.of_bytes(b"something else"), lambda: io.BytesIO(MARKED))
    else:
        with pytest.raises(OSError, match="went away"):
            store.ensure(diff_id, watched(MARKED, lambda: None, fail_after=2048))
    assert os.listdir(store.root) == []
    assert not store.has(diff_id)


def test_ensure_when_another_build_publishes_first(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "snapshots")
    diff_id = Digest.of_bytes(MARKED)
    theirs = store.path(diff_id)

    def publish_theirs() -> None:
        if not theirs.exists():
            theirs.mkdir()
            (theirs / "theirs").write_bytes(b"")

    assert store.ensure(diff_id, watched(MARKED, publish_theirs)) == theirs
    assert os.listdir(theirs) == ["theirs"]
    assert os.listdir(store.root) == [diff_id.encoded]  # our copy was removed


def test_adopt_moves_the_upper_in(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "snapshots")
    upper = make(tmp_path / "scratch/upper", {"etc/x": b"x", "gone": "WHITEOUT"})
    diff_id = Digest.of_bytes(b"layer")
    path = store.adopt(diff_id, upper)
    assert path == store.path(diff_id) and store.has(diff_id)
    assert not upper.exists()
    assert (path / "etc/x").read_bytes() == b"x" and stat.S_ISCHR(os.lstat(path / "gone").st_mode)

    again = make(tmp_path / "scratch2/upper", {"other": b"o"})
    assert store.adopt(diff_id, again) == path  # already there: the first one stays, the second is dropped
    assert not again.exists()
    assert sorted(os.listdir(path)) == ["etc", "gone"]


def test_sweep_removes_leftovers_of_dead_processes_only(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "snapshots")
    dead = subprocess.Popen(["true"])
    dead.wait()
    alive = subprocess.Popen(["sleep", "30"])
    try:
        names = [f".{dead.pid}-abc", f".{alive.pid}-def", f".{os.getpid()}-ghi", ".notapid-x", "a" * 64]
        for name in names:
            make(store.root / name, {"sub/file": b"half extracted"})
        store.sweep()
        assert sorted(os.listdir(store.root)) == sorted(names[1:])
    finally:
        alive.kill()
        alive.wait()
    SnapshotStore(tmp_path / "missing").sweep()  # no directory yet: nothing to do


# ---------------------------------------------------------------------------------------------- round trip

BASE = layer_bytes(
    d("bin"),
    f("bin/tool", b"#!/bin/sh\necho tool\n", mode=0o755),
    d("etc"),
    f("etc/a.conf", b"a=1\n"),
    f("etc/b.conf", b"b=2\n"),
    d("etc/sub", mode=0o750, uid=5, gid=5),
    f("etc/sub/deep", b"deep"),
    d("home"),
    d("home/u", mode=0o700, uid=1000, gid=1000),
    f("home/u/.profile", b"export X=1\n", uid=1000, gid=1000),
    d("lib"),
    f("lib/libx.so", bytes(range(256)) * 8),
    s("lib/liby.so", "libx.so"),
    h("lib/libz.so", "lib/libx.so"),
    d("opt"),
    d("opt/pkg"),
    f("opt/pkg/one", b"1"),
    f("opt/pkg/two", b"2"),
    d("var"),
    d("var/log"),
    f("var/log/old.log", b"old\n" * 50),
    f("zero", b""),
)
SECOND = layer_bytes(
    d("etc"),
    (whiteout("etc/b.conf"), None),
    d("opt"),
    d("opt/pkg"),
    (opaque("opt/pkg"), None),
    f("opt/pkg/three", b"3"),
    d("usr"),
    d("usr/bin"),
    f("usr/bin/x", b"x", mode=0o755),
    d("var"),
    d("var/log"),
    f("var/log/new.log", b"new\n"),
)


def listing(root: Path) -> list[tuple[str, str]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            kind = "dir" if stat.S_ISDIR(st.st_mode) else "file" if stat.S_ISREG(st.st_mode) else "other"
            out.append((os.path.relpath(full, root), kind))
    return sorted(out)


def random_changes(seed: int) -> Callable[[Path], None]:
    """About fifteen changes of every kind a RUN makes, chosen by ``seed`` from what the tree holds."""

    def change(m: Path) -> None:
        rng = random.Random(seed)
        names = (f"n{i}" for i in itertools.count())

        def data() -> bytes:
            return rng.randbytes(rng.choice([0, 1, 7, 3000]))

        def new(dirs: list[str]) -> Path:
            return m / rng.choice(dirs) / next(names)

        for _ in range(15):
            entries = listing(m)
            dirs = [""] + [p for p, k in entries if k == "dir"]
            files = [p for p, k in entries if k == "file"]
            nondirs = [p for p, k in entries if k != "dir"]
            paths = [p for p, _ in entries]

            op = rng.choice(
                [
                    "new_file",
                    "overwrite",
                    "same_size",
                    "append",
                    "delete",
                    "rmtree",
                    "recreate_dir",
                    "mkdir",
                    "chmod",
                    "chown",
                    "symlink",
                    "hardlink",
                    "rename",
                    "dir_to_file",
                    "file_to_dir",
                    "touch_dir",
                    "fifo",
                ]
            )
            target_dirs = [p for p in dirs if p]
            if op == "new_file":
                p = new(dirs)
                p.write_bytes(data())
                os.chmod(p, rng.choice([0o644, 0o600, 0o755, 0o4755]))
            elif op == "overwrite" and files:
                (m / rng.choice(files)).write_bytes(data())
            elif op == "same_size" and files:
                p = m / rng.choice(files)
                st = os.lstat(p)
                p.write_bytes(bytes((b + 1) % 256 for b in p.read_bytes()))
                os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
            elif op == "append" and files:
                with open(m / rng.choice(files), "ab") as out:
                    out.write(b"appended")
            elif op == "delete" and nondirs:
                os.unlink(m / rng.choice(nondirs))
            elif op == "rmtree" and target_dirs:
                shutil.rmtree(m / rng.choice(target_dirs))
            elif op == "recreate_dir" and target_dirs:
                p = m / rng.choice(target_dirs)
                shutil.rmtree(p)
                p.mkdir(rng.choice([0o755, 0o700]))
                (p / next(names)).write_bytes(data())
            elif op == "mkdir":
                new(dirs).mkdir(rng.choice([0o755, 0o750, 0o1777]))
            elif op == "chmod" and paths:
                p = m / rng.choice(paths)
                if not p.is_symlink():
                    os.chmod(p, rng.choice([0o700, 0o755, 0o640, 0o600, 0o2755]))
            elif op == "chown" and paths:
                os.lchown(m / rng.choice(paths), *rng.choice([(0, 0), (1000, 1000), (7, 8)]))
            elif op == "symlink":
                os.symlink(rng.choice(["../etc", "/bin/tool", "nowhere", "x" * 120]), new(dirs))
            elif op == "hardlink" and files:
                os.link(m / rng.choice(files), new(dirs))
            elif op == "rename" and nondirs:
                source = m / rng.choice(nondirs)
                existing = [p for p in files if m / p != source]
                target = m / rng.choice(existing) if existing and rng.random() < 0.4 else new(dirs)
                os.rename(source, target)
            elif op == "dir_to_file" and target_dirs:
                p = m / rng.choice(target_dirs)
                shutil.rmtree(p)
                p.write_bytes(data())
            elif op == "file_to_dir" and nondirs:
                p = m / rng.choice(nondirs)
                os.unlink(p)
                p.mkdir()
                (p / next(names)).write_bytes(data())
            elif op == "touch_dir" and target_dirs:
                os.utime(m / rng.choice(target_dirs), (T + 9, T + 9))
            elif op == "fifo":
                os.mkfifo(new(dirs))

    return change


@pytest.fixture
def two_layers(tmp_path: Path) -> tuple[list[Path], Path]:
    """The two base layers as snapshots (top first), and the same layers applied plainly onto one directory."""
    store = SnapshotStore(tmp_path / "snapshots")
    lowers = [store.ensure(Digest.of_bytes(data), lambda data=data: io.BytesIO(data)) for data in (SECOND, BASE)]
    plain = tmp_path / "plain"
    plain.mkdir()
    for data in (BASE, SECOND):
        apply_layer(io.BytesIO(data), plain)
    return lowers, plain


def test_snapshots_stack_to_the_plainly_applied_tree(tmp_path: Path, two_layers: tuple[list[Path], Path]) -> None:
    lowers, plain = two_layers
    merged = kernel_view(tmp_path, lowers)
    assert "etc/b.conf" not in merged and "opt/pkg/one" not in merged and merged["opt/pkg/three"][4] == b"3"
    assert_same_tree(merged, tree(plain))
    assert_same_tree(view_tree(RootView(lowers)), merged)


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6])
def test_round_trip_layer_from_the_differ_rebuilds_the_merged_tree(
    tmp_path: Path, two_layers: tuple[list[Path], Path], seed: int
) -> None:
    lowers, plain = two_layers
    before = tree(plain)
    upper, merged = change_overlay(tmp_path, lowers, random_changes(seed))
    assert merged != before, "the changes changed nothing: the test would prove nothing"
    layer = io.BytesIO()
    write_layer(upper_items(upper, RootView(lowers)), layer, Compression.NONE)
    layer.seek(0)
    apply_layer(layer, plain)
    assert_same_tree(tree(plain), merged)
    paths = [i.entry.path for i in upper_items(upper, RootView(lowers))]
    assert len(paths) == len(set(paths)), "an entry was written twice"
    for i, path in enumerate(paths):
        parent = path.rpartition("/")[0]
        assert not parent or parent in paths[:i], f"{path} comes before its directory {parent}"
