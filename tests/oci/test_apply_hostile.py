"""Hostile layers against the confined applier (``oci.apply``), and the layer semantics it must keep.

Every hostile case works in an *arena*: ``tmp_path/outside`` holds a sentinel tree (``victim``, ``dir/keep``)
and ``tmp_path/root`` is the target root, sometimes pre-populated as a lower layer would leave it (honest layers,
or ``os.symlink``/``os.link`` straight into the root). A crafted archive is applied and then either

* refused with a specific ``LayerError`` subclass and a message that names the problem, or
* neutralised: the content lands *inside* the root, where a chroot would put it;

and in both cases the outside tree must be byte-for-byte, mode-for-mode and mtime-for-mtime as it was, and
nothing new may appear next to the root, in the pytest base directory, in ``/`` or in the working directory.

The attack classes are those of ../shared/research/security.md items 1-5: path traversal (``..``, absolute
names, PAX/GNU/ustar-prefix names), symlink then write-through (including a symlink named ``.``), hardlinks to
outside inodes, whiteout abuse, and parse/decompression bombs. Legit images whose relative links climb above
``/`` must still apply (clamp, don't reject).

A second part covers semantics: whiteouts and opaque markers, type changes across layers, duplicate entries,
the diff_id check, gzip/zstd input, and ``remove_tree`` on deep trees and trees holding links to outside.
"""

from __future__ import annotations

import contextlib
import io
import os
import resource
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import require_root
from tartools import BLOCK, Member, archive, compress, directory, file, hardlink, pax_member, snapshot, symlink

from oci.apply import ApplyLimits, ApplyResult, apply_layer, remove_tree
from oci.compression import Compression, compressor
from oci.digest import Digest
from oci.errors import (
    DigestMismatch,
    InvalidArchive,
    LayerError,
    LimitExceeded,
    OCIError,
    UnsafeEntry,
)

VICTIM = b"precious content that lives outside the root\n"
KEEP = b"keep me\n"
NEW = b"written by the layer\n"

# ---------------------------------------------------------------------------------------------------- helpers


def octal(value: int, width: int) -> bytes:
    """A tar numeric field, as an honest writer fills it."""
    return b"%0*o\0" % (width - 1, value)


def padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def with_prefix(member: Member, prefix: bytes) -> bytes:
    """``member`` encoded with the ustar ``prefix`` field (bytes 345..500) set, checksum recomputed."""
    block = bytearray(member.header())
    block[345 : 345 + len(prefix)] = prefix
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block) + member.data + padding(len(member.data))


def dir_(name: str, mode: int = 0o755, **kw: object) -> Member:
    """A directory entry with a chosen mode (``tartools.directory`` fixes it at 0o755)."""
    return Member(name.encode(), b"5", mode=mode, **kw)  # type: ignore[arg-type]


def long_name(name: bytes, typeflag: bytes = b"L") -> Member:
    """A GNU long-name (``L``) or long-link (``K``) member; it applies to the member that follows."""
    return Member(b"././@LongLink", typeflag, data=name + b"\0", magic=b"ustar  \0")


def zero_file_bomb(kind: Compression, size: int) -> bytes:
    """A compressed tar holding one ``size``-byte file of zeros, built without ever holding it in memory."""
    out = io.BytesIO()
    sink = compressor(kind, out)
    sink.write(Member(b"zeros", b"0", size_field=octal(size, 12)).header())
    chunk = bytes(1 << 20)
    left = size
    while left:
        n = min(left, len(chunk))
        sink.write(chunk[:n])
        left -= n
    sink.write(padding(size) + bytes(2 * BLOCK))
    sink.finish()
    return out.getvalue()


def make_deep_dirs(parent: Path, name: str, depth: int) -> None:
    """``parent/name/name/...`` ``depth`` levels deep, made through directory descriptors (paths would exceed
    PATH_MAX long before 2000 levels)."""
    here = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir(name, dir_fd=here)
            below = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=here)
            os.close(here)
            here = below
        fd = os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=here)
        os.close(fd)
    finally:
        os.close(here)


@contextlib.contextmanager
def soft_fd_limit(limit: int) -> Iterator[None]:
    """Run with at most ``limit`` open files, as under the common default soft limit of 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowered = limit if soft == resource.RLIM_INFINITY or soft > limit else soft
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _tree_state(top: Path) -> dict[str, tuple]:
    """``snapshot`` plus what it leaves out and an escape would change: inode numbers and mtimes (of the top
    directory too, so that a file created in it or a utime through a symlink shows)."""
    state: dict[str, tuple] = {rel: value for rel, value in snapshot(top).items()}
    for rel in [".", *state]:
        st = os.lstat(top / rel)
        state[f"stat:{rel}"] = (st.st_ino, st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns)
    return state


@dataclass
class Arena:
    """A root to apply into and an outside tree that must never change."""

    tmp: Path
    root: Path
    outside: Path
    _before: dict[str, tuple] = field(default_factory=dict)
    _listings: dict[str, list[str]] = field(default_factory=dict)

    @property
    def victim(self) -> Path:
        return self.outside / "victim"

    @property
    def outside_abs(self) -> str:
        return str(self.outside)

    def inside(self, absolute: str | Path) -> Path:
        """Where an absolute path lands when it is taken relative to the root (as a chroot would)."""
        return self.root / str(absolute).lstrip("/")

    def lower(self, *members: Member) -> None:
        """Apply an honest layer first, as a lower layer of the image."""
        apply_layer(io.BytesIO(archive(*members)), self.root)

    def apply(self, data: bytes, **kw: object) -> ApplyResult:
        return apply_layer(io.BytesIO(data), self.root, **kw)  # type: ignore[arg-type]

    def _watched(self) -> dict[str, list[str]]:
        return {str(d): sorted(os.listdir(d)) for d in {self.tmp, self.tmp.parent, Path("/"), Path.cwd()}}

    def seal(self) -> None:
        self._before = _tree_state(self.outside)
        self._listings = self._watched()

    def assert_untouched(self) -> None:
        """Nothing outside the root changed: the outside tree, and no stray names next to the root or above."""
        assert _tree_state(self.outside) == self._before
        assert self.victim.read_bytes() == VICTIM
        assert (self.outside / "dir" / "keep").read_bytes() == KEEP
        assert sorted(os.listdir(self.tmp)) == ["outside", "root"]
        assert self._watched() == self._listings

    def assert_no_outside_inodes(self) -> None:
        """No object inside the root shares an inode with the outside tree (a hardlink out of the root)."""
        outside = {os.lstat(p).st_ino for p in [self.outside, *self.outside.rglob("*")]}
        for p in self.root.rglob("*"):
            assert os.lstat(p).st_ino not in outside, f"{p} is a hardlink to an outside inode"


@pytest.fixture
def arena(tmp_path: Path) -> Arena:
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "victim").write_bytes(VICTIM)
    (outside / "dir" / "keep").write_bytes(KEEP)
    root = tmp_path / "root"
    root.mkdir()
    a = Arena(tmp_path, root, outside)
    a.seal()
    return a


@pytest.fixture
def deep_cleanup(tmp_path: Path) -> Iterator[None]:
    """Remove whatever a deep-tree test leaves behind with ``rm -rf``: pytest's own clean-up of old base
    directories recurses (shutil.rmtree) and fails on trees deeper than Python's recursion limit."""
    yield
    for child in os.listdir(tmp_path):
        subprocess.run(["rm", "-rf", "--", str(tmp_path / child)], check=True)


def refuse(arena: Arena, data: bytes, error: type[LayerError], match: str, **kw: object) -> LayerError:
    """Apply ``data``, expect exactly ``error`` with a message matching ``match``, and nothing touched."""
    with pytest.raises(error, match=match) as caught:
        arena.apply(data, **kw)
    assert type(caught.value) is error, caught.value
    arena.assert_untouched()
    return caught.value


# ---------------------------------------------------------------------------------------------------- refused
#
# Each case builds its archive from the arena (so that it can name the outside tree's real absolute path and
# pre-populate the root as a lower layer would) and is expected to be refused with the given error.

Build = Callable[[Arena], bytes]


def _lower_symlink(name: str, target: Callable[[Arena], str]) -> Callable[[Arena], None]:
    def setup(a: Arena) -> None:
        os.symlink(target(a), a.root / name)

    return setup


def _case(build: Build, error: type[LayerError], match: str, id: str) -> object:
    return pytest.param(build, error, match, id=id)


def _symlink_chain(length: int) -> bytes:
    # l0 -> l1 -> ... -> l<length>, a real directory; then a file through l0.
    links = [symlink(f"l{i}", f"l{i + 1}") for i in range(length)]
    return archive(directory(f"l{length}"), *links, file("l0/x"))


def _hardlink_via_symlinked_parent(a: Arena) -> bytes:
    return archive(symlink("s", a.outside_abs), hardlink("h", "s/victim"))


REFUSED = [
    # --- item 1: traversal by name
    _case(lambda a: archive(file("../escape")), UnsafeEntry, "outside the root", id="dotdot-file"),
    _case(lambda a: archive(file("a/../../escape")), UnsafeEntry, "outside the root", id="climb-after-descent"),
    _case(lambda a: archive(file("./../escape")), UnsafeEntry, "outside the root", id="dot-then-dotdot"),
    _case(lambda a: archive(file("//..//escape")), UnsafeEntry, "outside the root", id="slashes-then-dotdot"),
    _case(lambda a: archive(directory("../escape")), UnsafeEntry, "outside the root", id="dotdot-directory"),
    _case(lambda a: archive(symlink("../escape", "/")), UnsafeEntry, "outside the root", id="dotdot-symlink"),
    # The name is only complete once the PAX record, the GNU long name or the ustar prefix is applied.
    _case(
        lambda a: archive(file(b"innocent", pax={b"path": b"../escape"})),
        UnsafeEntry,
        "outside the root",
        id="pax-path-dotdot",
    ),
    _case(
        lambda a: archive(pax_member({b"path": b"../../escape"}, typeflag=b"g"), file("innocent")),
        UnsafeEntry,
        "outside the root",
        id="pax-global-path-dotdot",
    ),
    _case(
        lambda a: archive(long_name(b"../../escape"), file("innocent")),
        UnsafeEntry,
        "outside the root",
        id="gnu-longname-dotdot",
    ),
    _case(
        lambda a: with_prefix(file("escape"), b"..") + bytes(2 * BLOCK),
        UnsafeEntry,
        "outside the root",
        id="ustar-prefix-dotdot",
    ),
    # --- item 2: an entry that would replace the root itself (umoci CVE-2021-29136: a symlink named ".")
    _case(lambda a: archive(symlink(".", a.outside_abs)), UnsafeEntry, "cannot replace the root", id="symlink-dot"),
    _case(
        lambda a: archive(symlink("./", a.outside_abs)), UnsafeEntry, "cannot replace the root", id="symlink-dot-slash"
    ),
    _case(lambda a: archive(symlink("a/..", "/")), UnsafeEntry, "cannot replace the root", id="symlink-a-dotdot"),
    _case(lambda a: archive(file(".")), UnsafeEntry, "cannot replace the root", id="file-dot"),
    # Loops and long chains in a parent must end, not spin or recurse.
    _case(
        lambda a: archive(symlink("a", "b"), symlink("b", "a"), file("a/x")),
        UnsafeEntry,
        "too many levels of symbolic links",
        id="symlink-loop-in-parent",
    ),
    _case(lambda a: archive(symlink("a", "a"), file("a/x")), UnsafeEntry, "too many levels", id="self-symlink-parent"),
    _case(lambda a: _symlink_chain(41), UnsafeEntry, "too many levels", id="symlink-chain-41"),
    # --- item 3: hardlinks whose target is not inside the root
    _case(lambda a: archive(hardlink("h", "../outside/victim")), UnsafeEntry, "outside the root", id="hardlink-dotdot"),
    _case(
        lambda a: archive(hardlink("h", a.outside_abs + "/victim")),
        UnsafeEntry,
        "does not exist in the root",
        id="hardlink-absolute-outside",
    ),
    _case(
        _hardlink_via_symlinked_parent,
        UnsafeEntry,
        "does not exist in the root",
        id="hardlink-through-symlinked-parent",
    ),
    _case(
        lambda a: archive(symlink("s", "../outside"), hardlink("h", "s/victim")),
        UnsafeEntry,
        "does not exist in the root",
        id="hardlink-through-relative-symlink",
    ),
    _case(
        lambda a: archive(Member(b"h", b"1", pax={b"linkpath": b"../../outside/victim"})),
        UnsafeEntry,
        "outside the root",
        id="hardlink-pax-linkpath-dotdot",
    ),
    _case(
        lambda a: archive(long_name(a.outside_abs.encode() + b"/victim", b"K"), hardlink("h", "stub")),
        UnsafeEntry,
        "does not exist in the root",
        id="hardlink-gnu-longlink-absolute",
    ),
    _case(
        lambda a: archive(directory("d"), hardlink("h", "d")), UnsafeEntry, "hardlink to a directory", id="hardlink-dir"
    ),
    _case(lambda a: archive(hardlink("h", "/")), UnsafeEntry, "hardlink to the root", id="hardlink-to-root"),
    _case(lambda a: archive(hardlink("h", "")), UnsafeEntry, "hardlink to the root", id="hardlink-empty-target"),
    # --- item 4: whiteout names that would delete a parent, the root, or something above it
    _case(lambda a: archive(file(".wh...")), UnsafeEntry, "invalid whiteout name", id="whiteout-dotdot"),
    _case(lambda a: archive(file(".wh.")), UnsafeEntry, "invalid whiteout name", id="whiteout-bare"),
    _case(lambda a: archive(file("a/.wh...")), UnsafeEntry, "invalid whiteout name", id="whiteout-nested-dotdot"),
    _case(lambda a: archive(file("a/.wh.")), UnsafeEntry, "invalid whiteout name", id="whiteout-nested-bare"),
    _case(lambda a: archive(file(".wh..")), UnsafeEntry, "invalid whiteout name", id="whiteout-dot"),
    _case(lambda a: archive(file("a/../../.wh.outside")), UnsafeEntry, "outside the root", id="whiteout-climbing-path"),
    _case(
        lambda a: archive(symlink(".wh.victim", a.outside_abs + "/victim")),
        UnsafeEntry,
        "whiteout must be a plain file",
        id="whiteout-as-symlink",
    ),
    # --- item 5: malformed headers and bombs
    _case(
        lambda a: archive(Member(b"neg", b"0", size_field=b"\xff" * 12)),
        InvalidArchive,
        "negative size",
        id="negative-size-base256",
    ),
    _case(
        lambda a: archive(Member(b"bad", b"0", size_field=b"0000000001x\0")),
        InvalidArchive,
        "invalid size",
        id="garbage-octal-size",
    ),
    _case(lambda a: archive(file("x", bad_checksum=True)), InvalidArchive, "bad header checksum", id="bad-checksum"),
    _case(
        lambda a: archive(Member(b"PaxHeader", b"x", size_field=octal(2 << 20, 12))),
        InvalidArchive,
        "PAX header of 2097152 bytes is larger than the 1048576-byte limit",
        id="pax-header-2MiB",
    ),
    _case(
        lambda a: archive(Member(b"././@LongLink", b"L", size_field=b"\x80" + b"\0" * 3 + b"\x01" + b"\0" * 7)),
        InvalidArchive,
        "GNU long name of .* bytes is larger than",
        id="gnu-longname-huge-base256",
    ),
    _case(lambda a: archive(Member(b"sparse", b"S", data=b"x")), InvalidArchive, "sparse", id="sparse-old-gnu"),
    _case(
        lambda a: archive(file("sparse", pax={b"GNU.sparse.major": b"1", b"GNU.sparse.minor": b"0"})),
        InvalidArchive,
        "sparse",
        id="sparse-pax",
    ),
    _case(
        lambda a: Member(b"big", b"0", size_field=octal(1000, 12)).header() + b"y" * 10,
        InvalidArchive,
        "archive ends inside the file's data",
        id="truncated-data",
    ),
    _case(
        lambda a: archive(file("a"), end=False) + file("b").header()[:300],
        InvalidArchive,
        "truncated in a header",
        id="truncated-header",
    ),
    _case(
        lambda a: archive(pax_member({b"path": b"x"}), end=False),
        InvalidArchive,
        "ends after an extended header",
        id="dangling-pax-header",
    ),
    _case(
        lambda a: archive(file("a"), end=False) + bytes(BLOCK) + archive(file("b")),
        InvalidArchive,
        "data after a zero block",
        id="data-after-zero-block",
    ),
    _case(lambda a: archive(Member(b"z", b"Z")), InvalidArchive, "unsupported tar entry type", id="typeflag-Z"),
    _case(
        lambda a: archive(file(b"stub", pax={b"path": b"ok\0../../escape"})), InvalidArchive, "NUL", id="pax-path-nul"
    ),
    _case(
        lambda a: archive(symlink("s", "stub", pax={b"linkpath": b"/\0x"})), InvalidArchive, "NUL", id="pax-link-nul"
    ),
    _case(lambda a: archive(Member(b"", b"0")), InvalidArchive, "empty name", id="empty-name"),
    _case(
        lambda a: archive(file("x", pax={b"size": b"-1"})), InvalidArchive, "invalid PAX size", id="pax-size-negative"
    ),
    _case(
        lambda a: archive(Member(b"PaxHeader", b"x", data=b"99999 path=x\n")),
        InvalidArchive,
        "malformed PAX record",
        id="pax-record-length-lie",
    ),
]


@pytest.mark.parametrize("build, error, match", REFUSED)
def test_hostile_archive_is_refused(arena: Arena, build: Build, error: type[LayerError], match: str) -> None:
    refuse(arena, build(arena), error, match)
    arena.assert_no_outside_inodes()


# Cases that need a lower layer in the root before the hostile one arrives.


def test_file_below_a_file_hardlinked_to_outside_is_refused(arena: Arena) -> None:
    # A lower layer left "h" as a hardlink to the outside inode; "h/x" must not treat it as a directory.
    os.link(arena.victim, arena.root / "h")
    refuse(arena, archive(file("h/x", NEW)), LayerError, "h is not a directory")


def test_symlink_loop_left_by_lower_layer_is_refused(arena: Arena) -> None:
    os.symlink("b", arena.root / "a")
    os.symlink("a", arena.root / "b")
    refuse(arena, archive(file("a/x", NEW)), UnsafeEntry, "too many levels of symbolic links")


def test_hardlink_through_lower_symlink_to_outside_is_refused(arena: Arena) -> None:
    os.symlink(arena.outside_abs, arena.root / "s")
    refuse(arena, archive(hardlink("h", "s/victim")), UnsafeEntry, "does not exist in the root")
    assert not os.path.lexists(arena.root / "h")


# ---------------------------------------------------------------------------------------------------- limits


def test_gzip_bomb_stops_at_max_bytes(arena: Arena) -> None:
    # 50 MB of zeros compresses to ~50 KB: the bound is on the expanded tar, not on the compressed stream.
    bomb = zero_file_bomb(Compression.GZIP, 50_000_000)
    assert len(bomb) < 1_000_000
    refuse(arena, bomb, LimitExceeded, "10000000-byte limit", limits=ApplyLimits(max_bytes=10_000_000))
    zeros = arena.root / "zeros"
    assert not zeros.exists() or zeros.stat().st_size <= 10_000_000 + (1 << 20)


def test_zstd_bomb_stops_at_max_bytes(arena: Arena) -> None:
    bomb = zero_file_bomb(Compression.ZSTD, 50_000_000)
    assert len(bomb) < 1_000_000
    refuse(arena, bomb, LimitExceeded, "10000000-byte limit", limits=ApplyLimits(max_bytes=10_000_000))


def test_limit_errors_name_the_stream_and_the_bound(arena: Arena) -> None:
    bomb = zero_file_bomb(Compression.GZIP, 4 << 20)
    message = "^layer sha256:ab expands to more than the 1 MiB limit$"
    err = refuse(arena, bomb, LimitExceeded, message, limits=ApplyLimits(max_bytes=1 << 20), what="layer sha256:ab")
    assert err.bound == "bytes"  # type: ignore[attr-defined]
    three, message = archive(*(file(f"f{i}") for i in range(3))), "^archive has more than the 2-entry limit$"
    err = refuse(arena, three, LimitExceeded, message, limits=ApplyLimits(max_entries=2), what="archive")
    assert err.bound == "entries"  # type: ignore[attr-defined]


def test_too_many_entries(arena: Arena) -> None:
    data = archive(*(file(f"f{i}") for i in range(11)))
    refuse(arena, data, LimitExceeded, "10-entry limit", limits=ApplyLimits(max_entries=10))
    assert len(os.listdir(arena.root)) <= 10


def test_extended_headers_count_as_entries(arena: Arena) -> None:
    # Headers that carry no file still cost parsing: a flood of PAX headers must hit the entry bound too.
    data = archive(*(pax_member({b"comment": b"x" * 10}) for _ in range(50)), file("f"))
    refuse(arena, data, LimitExceeded, "entry limit", limits=ApplyLimits(max_entries=10))


def test_path_longer_than_max_path_bytes(arena: Arena) -> None:
    name = b"d/" * 2100 + b"f"  # 4201 bytes, over the default 4096
    refuse(arena, archive(file(b"stub", pax={b"path": name})), LimitExceeded, "path longer than 4096 bytes")


def test_path_longer_than_a_lowered_max_path_bytes(arena: Arena) -> None:
    refuse(arena, archive(file("a" * 65)), LimitExceeded, "longer than 64 bytes", limits=ApplyLimits(max_path_bytes=64))


def test_path_deeper_than_max_depth(arena: Arena) -> None:
    name = b"a/" * 1100 + b"f"  # 2201 bytes: under the byte bound, over the 1024-directory one
    refuse(arena, archive(file(b"stub", pax={b"path": name})), LimitExceeded, "deeper than 1024 directories")


def test_hardlink_target_longer_than_max_path_bytes(arena: Arena) -> None:
    target = b"t/" * 2100 + b"f"
    refuse(arena, archive(Member(b"h", b"1", pax={b"linkpath": target})), LimitExceeded, "path longer than")


def test_deep_path_within_limits_under_default_fd_limit(arena: Arena, deep_cleanup: None) -> None:
    # 1020 directories is within max_depth (1024) and max_path_bytes; under the usual soft limit of 1024 open
    # files the applier must either apply it or refuse it as a LayerError, never leak a raw OSError (EMFILE).
    name = "a/" * 1020 + "f"
    data = archive(file(b"stub", NEW, pax={b"path": name.encode()}))
    with soft_fd_limit(1024):
        try:
            arena.apply(data)
        except LayerError:
            pass
        else:
            assert (arena.root / name).read_bytes() == NEW
    arena.assert_untouched()


# ---------------------------------------------------------------------------------------------------- neutralised
#
# These are accepted, but whatever they write lands inside the root.


def test_absolute_name_lands_inside_root(arena: Arena) -> None:
    # Docker takes "/abs/file" as relative to the root; a naive join would write to the host's /abs/file.
    arena.apply(archive(file("/abs/file", NEW)))
    assert (arena.root / "abs" / "file").read_bytes() == NEW
    arena.assert_untouched()


def test_absolute_name_of_the_victim_lands_inside_root(arena: Arena) -> None:
    arena.apply(archive(file(arena.outside_abs + "/victim", NEW)))
    assert arena.inside(arena.victim).read_bytes() == NEW
    arena.assert_untouched()


def test_backslash_dotdot_is_just_a_name(arena: Arena) -> None:
    # On Linux "..\escape" is one component, not a climb.
    arena.apply(archive(file("..\\escape", NEW)))
    assert (arena.root / "..\\escape").read_bytes() == NEW
    arena.assert_untouched()


@pytest.mark.parametrize("where", ["same-archive", "lower-layer"])
def test_write_through_absolute_symlink_to_outside(arena: Arena, where: str) -> None:
    # symlink evil -> /abs/outside, then evil/victim: resolved as in a chroot, so inside root/abs/outside.
    members = [file("evil/victim", NEW)]
    if where == "same-archive":
        members.insert(0, symlink("evil", arena.outside_abs))
    else:
        os.symlink(arena.outside_abs, arena.root / "evil")
    arena.apply(archive(*members))
    assert arena.inside(arena.victim).read_bytes() == NEW
    assert os.readlink(arena.root / "evil") == arena.outside_abs
    arena.assert_untouched()


@pytest.mark.parametrize("where", ["same-archive", "lower-layer"])
def test_write_through_climbing_relative_symlink(arena: Arena, where: str) -> None:
    # evil -> ../../../../.. climbs far above the root; ".." stops at the root, so evil/x is root/x.
    members = [file("evil/x", NEW)]
    if where == "same-archive":
        members.insert(0, symlink("evil", "../../../../.."))
    else:
        os.symlink("../../../../..", arena.root / "evil")
    arena.apply(archive(*members))
    assert (arena.root / "x").read_bytes() == NEW
    arena.assert_untouched()


def test_write_through_symlink_to_proc_self_root(arena: Arena) -> None:
    # /proc/self/root is the host's / from the applier's point of view (the runc CVE-2024-21626 shape).
    target = "/proc/self/root" + arena.outside_abs
    arena.apply(archive(symlink("evil", target), file("evil/victim", NEW)))
    assert arena.inside(target + "/victim").read_bytes() == NEW
    arena.assert_untouched()


def test_symlink_chain_that_leaves_and_reenters(arena: Arena) -> None:
    # a -> /, b -> a/.. : "/.." is "/" inside the root, so b/x is root/x.
    arena.apply(archive(symlink("a", "/"), symlink("b", "a/.."), file("b/x", NEW)))
    assert (arena.root / "x").read_bytes() == NEW
    arena.assert_untouched()


def test_symlink_chain_of_40_is_followed(arena: Arena) -> None:
    # The bound on links must not be so tight that ordinary chains fail.
    arena.apply(_symlink_chain(40))
    assert (arena.root / "l40" / "x").read_bytes() == b"x"
    arena.assert_untouched()


@pytest.mark.parametrize("target", ["absolute", "relative"])
def test_file_replaces_lower_symlink_to_outside(arena: Arena, target: str) -> None:
    # A lower layer left evil -> outside/victim; writing "evil" must replace the link, not write through it
    # (and the setuid mode must not be applied to the victim either).
    link = str(arena.victim) if target == "absolute" else "../outside/victim"
    os.symlink(link, arena.root / "evil")
    arena.apply(archive(file("evil", NEW, mode=0o4777)))
    st = os.lstat(arena.root / "evil")
    assert stat.S_ISREG(st.st_mode)
    assert (arena.root / "evil").read_bytes() == NEW
    arena.assert_untouched()


def test_file_replaces_lower_hardlink_to_outside(arena: Arena) -> None:
    # A lower layer's "h" shares the outside inode (same filesystem): rewriting "h" in place would change it.
    os.link(arena.victim, arena.root / "h")
    arena.apply(archive(file("h", NEW, mode=0o777)))
    assert (arena.root / "h").read_bytes() == NEW
    assert os.stat(arena.root / "h").st_ino != os.stat(arena.victim).st_ino
    arena.assert_untouched()


def test_hardlink_entry_replaces_lower_hardlink_to_outside(arena: Arena) -> None:
    # A hardlink entry over a name sharing the outside inode must relink the name, not touch that inode.
    os.link(arena.victim, arena.root / "h")
    arena.apply(archive(file("real", NEW), hardlink("h", "real")))
    assert os.stat(arena.root / "h").st_ino == os.stat(arena.root / "real").st_ino
    assert os.stat(arena.root / "h").st_ino != os.stat(arena.victim).st_ino
    arena.assert_untouched()


def test_hardlink_to_symlink_to_outside_links_the_symlink(arena: Arena) -> None:
    # Hardlinking a symlink must link the symlink's own inode, not what it points at (cpython#157190).
    arena.apply(archive(symlink("s", str(arena.victim)), hardlink("h", "s")))
    st = os.lstat(arena.root / "h")
    assert stat.S_ISLNK(st.st_mode)
    assert st.st_ino == os.lstat(arena.root / "s").st_ino
    assert st.st_ino != os.stat(arena.victim).st_ino
    arena.assert_untouched()


def test_hardlink_to_absolute_name_resolves_inside_root(arena: Arena) -> None:
    # An absolute link target that exists *inside* the root is fine: it means the root's copy.
    arena.lower(file(arena.outside_abs + "/victim", NEW))
    arena.apply(archive(hardlink("h", arena.outside_abs + "/victim")))
    assert os.stat(arena.root / "h").st_ino == os.stat(arena.inside(arena.victim)).st_ino
    assert os.stat(arena.root / "h").st_ino != os.stat(arena.victim).st_ino
    arena.assert_untouched()


@pytest.mark.parametrize("where", ["same-archive", "lower-layer"])
def test_whiteout_through_symlinked_parent(arena: Arena, where: str) -> None:
    # evil -> /abs/outside, then evil/.wh.victim: deleting through the link would remove the host file.
    members = [file("evil/.wh.victim")]
    if where == "same-archive":
        members.insert(0, symlink("evil", arena.outside_abs))
    else:
        os.symlink(arena.outside_abs, arena.root / "evil")
    arena.apply(archive(*members))
    assert arena.victim.exists()
    arena.assert_untouched()


def test_whiteout_through_relative_symlink_to_outside_dir(arena: Arena) -> None:
    os.symlink("../outside/dir", arena.root / "evil")
    arena.apply(archive(file("evil/.wh.keep")))
    arena.assert_untouched()


@pytest.mark.parametrize("where", ["same-archive", "lower-layer"])
def test_opaque_marker_through_symlink_to_outside(arena: Arena, where: str) -> None:
    # evil -> /abs/outside, then evil/.wh..wh..opq: hiding "lower contents" there would empty the host dir.
    members = [file("evil/.wh..wh..opq")]
    if where == "same-archive":
        members.insert(0, symlink("evil", arena.outside_abs))
    else:
        os.symlink(arena.outside_abs, arena.root / "evil")
    arena.apply(archive(*members))
    arena.assert_untouched()


def test_whiteout_of_lower_symlink_to_outside_removes_only_the_link(arena: Arena) -> None:
    os.symlink(arena.outside_abs, arena.root / "etc")
    arena.apply(archive(file(".wh.etc")))
    assert not os.path.lexists(arena.root / "etc")
    arena.assert_untouched()


def test_whiteout_of_lower_dir_holding_links_to_outside(arena: Arena) -> None:
    # Deleting a tree must unlink its symlinks and hardlinks, never descend into or empty what they reach.
    (arena.root / "d" / "sub").mkdir(parents=True)
    os.symlink(arena.outside_abs, arena.root / "d" / "sub" / "abs")
    os.symlink("../../../outside", arena.root / "d" / "sub" / "rel")
    os.symlink(str(arena.victim), arena.root / "d" / "to-victim")
    os.link(arena.victim, arena.root / "d" / "hard")
    arena.apply(archive(file(".wh.d")))
    assert not os.path.lexists(arena.root / "d")
    arena.assert_untouched()


def test_opaque_at_root_with_lower_symlinks_to_outside(arena: Arena) -> None:
    os.symlink(arena.outside_abs, arena.root / "abs")
    os.symlink("../outside", arena.root / "rel")
    arena.apply(archive(file(".wh..wh..opq"), file("new", NEW)))
    assert sorted(os.listdir(arena.root)) == ["new"]
    arena.assert_untouched()


@pytest.mark.parametrize("where", ["same-archive", "lower-layer"])
def test_directory_replaces_symlink_to_outside(arena: Arena, where: str) -> None:
    # A directory entry over evil -> /abs/outside must replace the link (not chmod/chown the host dir through
    # it), and a file below it then lands in the new directory.
    members = [dir_("evil", 0o777), file("evil/victim", NEW)]
    if where == "same-archive":
        members.insert(0, symlink("evil", arena.outside_abs))
    else:
        os.symlink(arena.outside_abs, arena.root / "evil")
    arena.apply(archive(*members))
    assert stat.S_ISDIR(os.lstat(arena.root / "evil").st_mode)
    assert stat.S_IMODE(os.lstat(arena.root / "evil").st_mode) == 0o777
    assert (arena.root / "evil" / "victim").read_bytes() == NEW
    arena.assert_untouched()


def test_directory_owner_not_applied_through_symlink(arena: Arena) -> None:
    # containerd CVE-2021-32760: a crafted image chowned/chmodded host files through a link.
    require_root()
    os.symlink(arena.outside_abs, arena.root / "evil")
    arena.apply(archive(dir_("evil", 0o777, uid=4242, gid=4242)), same_owner=True)
    st = os.lstat(arena.root / "evil")
    assert (st.st_uid, st.st_gid) == (4242, 4242)
    arena.assert_untouched()


def test_directory_times_not_set_through_a_later_symlink(arena: Arena) -> None:
    # Directory mtimes are set at the end; if the name became a symlink to outside meanwhile, utime must not
    # follow it.
    arena.apply(archive(directory("d", mtime=12345), symlink("d", arena.outside_abs)))
    assert os.readlink(arena.root / "d") == arena.outside_abs
    arena.assert_untouched()


def test_nested_directory_times_not_set_through_a_symlinked_parent(arena: Arena) -> None:
    arena.apply(archive(directory("a", mtime=1), directory("a/dir", mtime=1), symlink("a", arena.outside_abs)))
    arena.assert_untouched()


def test_fifo_replaces_lower_symlink_to_outside(arena: Arena) -> None:
    # A node entry chmods what it created; over a symlink to the victim that must not reach the victim.
    os.symlink(str(arena.victim), arena.root / "evil")
    arena.apply(archive(Member(b"evil", b"6", mode=0o777)))
    assert stat.S_ISFIFO(os.lstat(arena.root / "evil").st_mode)
    arena.assert_untouched()


def test_symlink_replaces_lower_hardlink_to_outside(arena: Arena) -> None:
    os.link(arena.victim, arena.root / "h")
    arena.apply(archive(symlink("h", "/etc/passwd")))
    assert os.readlink(arena.root / "h") == "/etc/passwd"
    arena.assert_untouched()


# ---------------------------------------------------------------------------------------------------- legit images
#
# security.md item 2: clamp, don't reject. Real images carry links that climb above / or are absolute.


def test_relative_symlink_climbing_above_root_is_clamped(arena: Arena) -> None:
    arena.lower(directory("usr"), symlink("usr/lib64", "../../../lib64"))
    arena.apply(archive(file("usr/lib64/libc.so.6", NEW)))
    assert (arena.root / "lib64" / "libc.so.6").read_bytes() == NEW
    assert os.readlink(arena.root / "usr" / "lib64") == "../../../lib64"
    arena.assert_untouched()


def test_debian_merged_usr(arena: Arena) -> None:
    arena.lower(directory("usr"), directory("usr/lib"), symlink("lib", "usr/lib"))
    arena.apply(archive(directory("lib/x86_64-linux-gnu"), file("lib/x86_64-linux-gnu/libfoo.so", NEW)))
    assert (arena.root / "usr/lib/x86_64-linux-gnu/libfoo.so").read_bytes() == NEW
    assert os.readlink(arena.root / "lib") == "usr/lib"
    arena.assert_untouched()


def test_absolute_symlink_in_lower_layer_is_followed_inside_root(arena: Arena) -> None:
    arena.lower(directory("usr/bin"), symlink("bin", "/usr/bin"))
    arena.apply(archive(file("bin/sh", NEW, mode=0o755)))
    assert (arena.root / "usr/bin/sh").read_bytes() == NEW
    arena.assert_untouched()


def test_dot_slash_names_and_root_entry(arena: Arena) -> None:
    # GNU tar's "./" style: the root's own entry is skipped, names are taken relative to it.
    arena.apply(archive(directory("./"), directory("./etc"), file("./etc/hostname", NEW)))
    assert (arena.root / "etc/hostname").read_bytes() == NEW
    arena.assert_untouched()


def test_hardlink_through_symlink_inside_root(arena: Arena) -> None:
    arena.lower(directory("usr/lib"), file("usr/lib/libfoo.so.1", NEW), symlink("lib", "usr/lib"))
    arena.apply(archive(hardlink("libfoo-copy", "lib/libfoo.so.1")))
    assert os.stat(arena.root / "libfoo-copy").st_ino == os.stat(arena.root / "usr/lib/libfoo.so.1").st_ino
    arena.assert_untouched()


# ---------------------------------------------------------------------------------------------------- semantics


def _names(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_whiteout_deletes_lower_file(arena: Arena) -> None:
    arena.lower(directory("a"), file("a/b"), file("a/c"))
    arena.apply(archive(file("a/.wh.b")))
    assert _names(arena.root) == ["a", "a/c"]


def test_whiteout_deletes_lower_directory_tree(arena: Arena) -> None:
    arena.lower(directory("a"), directory("a/b"), file("a/b/c"), file("a/keep"))
    arena.apply(archive(file("a/.wh.b")))
    assert _names(arena.root) == ["a", "a/keep"]


def test_whiteout_does_not_delete_what_this_layer_created(arena: Arena) -> None:
    arena.apply(archive(file("a/b", NEW), file("a/.wh.b")))
    assert (arena.root / "a/b").read_bytes() == NEW


def test_whiteout_before_replacement_in_same_layer(arena: Arena) -> None:
    arena.lower(directory("a"), directory("a/b"), file("a/b/old"))
    arena.apply(archive(file("a/.wh.b"), file("a/b", NEW)))
    assert (arena.root / "a/b").read_bytes() == NEW


def test_whiteout_of_missing_name_is_harmless(arena: Arena) -> None:
    arena.apply(archive(file("nowhere/.wh.nothing"), file(".wh.nothing")))
    assert _names(arena.root) == []


def test_whiteout_markers_are_not_materialised(arena: Arena) -> None:
    arena.lower(file("x"), directory("d"), file("d/y"))
    arena.apply(archive(file(".wh.x"), file("d/.wh..wh..opq")))
    assert not any(".wh." in n for n in _names(arena.root))


def test_opaque_first_hides_lower_contents(arena: Arena) -> None:
    arena.lower(directory("d"), file("d/old"), directory("d/sub"), file("d/sub/old"), file("sibling"))
    arena.apply(archive(directory("d"), file("d/.wh..wh..opq"), file("d/new", NEW)))
    assert _names(arena.root) == ["d", "d/new", "sibling"]


def test_opaque_after_entries_keeps_this_layers_entries(arena: Arena) -> None:
    # The spec asks for the marker first but does not require it: what this layer wrote must stay.
    arena.lower(directory("d"), file("d/old"), directory("d/sub"), file("d/sub/old"))
    arena.apply(
        archive(directory("d"), file("d/new", NEW), directory("d/sub"), file("d/sub/new"), file("d/.wh..wh..opq"))
    )
    assert _names(arena.root) == ["d", "d/new", "d/sub", "d/sub/new"]


def test_opaque_after_entries_with_implicit_parent_directories(arena: Arena) -> None:
    # Tar does not require a directory entry before a file in it. "d/sub/new" is this layer's content, so the
    # marker that follows must hide d/sub/old and d/old but keep d/sub/new (as it does when the marker comes
    # first, see test_opaque_first_*).
    arena.lower(directory("d"), file("d/old"), directory("d/sub"), file("d/sub/old"))
    arena.apply(archive(file("d/sub/new", NEW), file("d/.wh..wh..opq")))
    assert _names(arena.root) == ["d", "d/sub", "d/sub/new"]


def test_opaque_marker_order_does_not_matter_with_implicit_parents(arena: Arena) -> None:
    arena.lower(directory("d"), file("d/old"), directory("d/sub"), file("d/sub/old"))
    arena.apply(archive(file("d/.wh..wh..opq"), file("d/sub/new", NEW)))
    assert _names(arena.root) == ["d", "d/sub", "d/sub/new"]


def test_opaque_at_root(arena: Arena) -> None:
    arena.lower(file("a"), directory("b"), file("b/c"))
    arena.apply(archive(file(".wh..wh..opq"), file("new")))
    assert _names(arena.root) == ["new"]


def test_aufs_plnk_file_entry_is_ignored(arena: Arena) -> None:
    arena.lower(file("keep"))
    arena.apply(archive(file(".wh..wh.plnk"), file("a/.wh..wh.aufs"), file("new")))
    names = _names(arena.root)
    assert {"keep", "new"} <= set(names)
    assert not any(".wh." in n for n in names)


def test_aufs_metadata_directories_are_ignored(arena: Arena) -> None:
    # Layers exported by Docker's aufs driver carry these as *directory* entries at the top level; Docker's
    # UnpackLayer skips every name starting with ".wh..wh." (only .wh..wh..opq has a meaning).
    data = archive(
        Member(b".wh..wh.aufs", b"0", mode=0o600),
        Member(b".wh..wh.orph/", b"5", mode=0o700),
        Member(b".wh..wh.plnk/", b"5", mode=0o700),
        file("real", NEW),
    )
    arena.apply(data)
    assert _names(arena.root) == ["real"]


def test_directory_replaced_by_file_across_layers(arena: Arena) -> None:
    arena.lower(directory("x"), directory("x/y"), file("x/y/z"))
    arena.apply(archive(file("x", NEW)))
    assert (arena.root / "x").read_bytes() == NEW


def test_file_replaced_by_directory_across_layers(arena: Arena) -> None:
    arena.lower(file("x"))
    arena.apply(archive(directory("x"), file("x/y", NEW)))
    assert (arena.root / "x/y").read_bytes() == NEW


def test_symlink_replaced_by_directory_across_layers(arena: Arena) -> None:
    arena.lower(directory("real"), file("real/old"), symlink("x", "real"))
    arena.apply(archive(directory("x"), file("x/y", NEW)))
    assert _names(arena.root) == ["real", "real/old", "x", "x/y"]


def test_directory_entry_keeps_existing_contents(arena: Arena) -> None:
    arena.lower(directory("d"), file("d/old"))
    arena.apply(archive(dir_("d", 0o700)))
    assert _names(arena.root) == ["d", "d/old"]
    assert stat.S_IMODE(os.stat(arena.root / "d").st_mode) == 0o700


def test_duplicate_file_later_wins(arena: Arena) -> None:
    arena.apply(archive(file("f", b"first"), file("f", b"second", mode=0o600)))
    assert (arena.root / "f").read_bytes() == b"second"
    assert stat.S_IMODE(os.stat(arena.root / "f").st_mode) == 0o600


def test_duplicate_file_then_directory(arena: Arena) -> None:
    arena.apply(archive(file("x"), directory("x"), file("x/y", NEW)))
    assert (arena.root / "x/y").read_bytes() == NEW


def test_duplicate_directory_then_file(arena: Arena) -> None:
    arena.apply(archive(directory("x"), file("x/y"), file("x", NEW)))
    assert (arena.root / "x").read_bytes() == NEW


def test_duplicate_symlink_then_file(arena: Arena) -> None:
    arena.apply(archive(symlink("x", "/etc/passwd"), file("x", NEW)))
    assert (arena.root / "x").read_bytes() == NEW
    assert not os.path.islink(arena.root / "x")


def test_replacing_a_symlink_a_parent_went_through(arena: Arena) -> None:
    # "a -> ." makes "a/x" mean "x". Then "a/a" (that is: "a" itself) becomes a directory, so "a/y" now means
    # a file *in* that directory. A resolution cached from before the replacement would put it at "y".
    arena.apply(archive(symlink("a", "."), file("a/x", b"x"), directory("a/a"), file("a/y", NEW)))
    assert (arena.root / "x").read_bytes() == b"x"
    assert (arena.root / "a" / "y").read_bytes() == NEW
    assert not (arena.root / "y").exists()
    arena.assert_untouched()


def test_whiteout_of_a_symlink_a_parent_went_through(arena: Arena) -> None:
    # Same shape with a whiteout: once "a" is gone, "a/z" must create a directory "a", not write at the root.
    arena.lower(symlink("a", "."))
    arena.apply(archive(file("a/x", b"x"), file("a/.wh.a"), file("a/z", NEW)))
    assert (arena.root / "a" / "z").read_bytes() == NEW
    assert not (arena.root / "z").exists()
    arena.assert_untouched()


# --- diff_id


def test_diff_id_right_is_accepted(arena: Arena) -> None:
    data = archive(file("f", NEW))
    result = arena.apply(data, expected_diff_id=Digest.of_bytes(data))
    assert result.diff_id == Digest.of_bytes(data)
    assert result.size == len(data)
    assert result.entries == 1


def test_diff_id_wrong_is_refused(arena: Arena) -> None:
    data = archive(file("f", NEW))
    with pytest.raises(DigestMismatch, match="expected sha256:"):
        arena.apply(data, expected_diff_id=Digest.of_bytes(b"something else"))
    assert issubclass(DigestMismatch, OCIError)


def test_diff_id_covers_trailing_padding(arena: Arena) -> None:
    # Writers pad archives to a record size (10240 bytes for GNU tar): the diff_id is of every byte.
    data = archive(file("f", NEW))
    data += bytes(-len(data) % 10240) + bytes(10240)
    result = arena.apply(data)
    assert result.diff_id == Digest.of_bytes(data)
    assert result.size == len(data)
    assert result.diff_id != Digest.of_bytes(archive(file("f", NEW)))


def test_diff_id_with_a_single_end_block(arena: Arena) -> None:
    data = archive(file("f", NEW), end=False) + bytes(BLOCK)
    assert arena.apply(data).diff_id == Digest.of_bytes(data)


def test_diff_id_without_end_blocks(arena: Arena) -> None:
    data = archive(file("f", NEW), end=False)
    assert arena.apply(data).diff_id == Digest.of_bytes(data)
    assert (arena.root / "f").read_bytes() == NEW


# --- compression


@pytest.mark.parametrize("kind", [Compression.GZIP, Compression.ZSTD], ids=["gzip", "zstd"])
def test_compressed_layer(arena: Arena, kind: Compression) -> None:
    plain = archive(directory("etc"), file("etc/os-release", NEW), symlink("lnk", "etc/os-release"))
    packed = compress(kind, plain)
    assert packed[:2] != plain[:2]
    result = arena.apply(packed, expected_diff_id=Digest.of_bytes(plain))
    assert result.diff_id == Digest.of_bytes(plain)
    assert result.size == len(plain)
    assert (arena.root / "etc/os-release").read_bytes() == NEW
    assert os.readlink(arena.root / "lnk") == "etc/os-release"


def test_gzip_with_nul_padding_after_the_member(arena: Arena) -> None:
    plain = archive(file("f", NEW))
    result = arena.apply(compress(Compression.GZIP, plain) + bytes(4096))
    assert result.diff_id == Digest.of_bytes(plain)


def test_hostile_name_inside_gzip_is_still_refused(arena: Arena) -> None:
    refuse(arena, compress(Compression.GZIP, archive(file("../escape"))), UnsafeEntry, "outside the root")


# --- remove_tree


def test_remove_tree_2000_deep(tmp_path: Path, deep_cleanup: None) -> None:
    # Deeper than Python's recursion limit: shutil.rmtree-style recursion would fail.
    assert sys.getrecursionlimit() < 2000
    make_deep_dirs(tmp_path, "d", 2000)
    parent = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        remove_tree(parent, "d")
    finally:
        os.close(parent)
    assert os.listdir(tmp_path) == []


def test_remove_tree_2000_deep_under_default_fd_limit(tmp_path: Path, deep_cleanup: None) -> None:
    # The same tree under the common default soft limit of 1024 open files (systemd, most login shells). A
    # tree this deep is easy to make in a RUN step; cleaning it up must not fail with EMFILE.
    make_deep_dirs(tmp_path, "d", 2000)
    parent = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with soft_fd_limit(1024):
            remove_tree(parent, "d")
    finally:
        os.close(parent)
    assert os.listdir(tmp_path) == []


def test_remove_tree_with_links_to_outside(arena: Arena) -> None:
    doomed = arena.root / "doomed"
    (doomed / "sub").mkdir(parents=True)
    os.symlink(arena.outside_abs, doomed / "sub" / "abs")
    os.symlink("../../../outside", doomed / "sub" / "rel")
    os.symlink(str(arena.victim), doomed / "to-victim")
    os.link(arena.victim, doomed / "hard")
    os.mkfifo(doomed / "fifo")
    parent = os.open(arena.root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        remove_tree(parent, "doomed")
    finally:
        os.close(parent)
    assert os.listdir(arena.root) == []
    arena.assert_untouched()


def test_remove_tree_does_not_follow_a_top_level_symlink(arena: Arena) -> None:
    os.symlink(arena.outside_abs, arena.root / "evil")
    parent = os.open(arena.root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError):
            remove_tree(parent, "evil")
    finally:
        os.close(parent)
    arena.assert_untouched()
