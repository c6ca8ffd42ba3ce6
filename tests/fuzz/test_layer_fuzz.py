"""Fuzzing the layer reader: whatever the bytes, only ``OCIError`` comes out, and nothing outside the root changes.

Inputs start from small valid layers (written by ``oci.tarformat.TarWriter``, and crafted GNU/PAX/v7 members from
``tests/tartools``, some of them aimed at a sentinel directory beside the root), then have bytes flipped, set,
inserted, deleted or cut off, before or after gzip or zstd compression; plain arbitrary bytes go in too. Each
goes through ``TarReader`` (every member's data read to the end) and through ``apply_layer`` into a fresh root,
after which the sentinel directory beside the root must be exactly as it was, with nothing new beside them.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st
from tartools import Member, archive, directory, file, hardlink, pax_member, snapshot, symlink

from oci.apply import ApplyLimits, apply_layer, remove_tree
from oci.compression import decompress_stream
from oci.errors import OCIError
from oci.frozen import FrozenMap
from oci.layer import opaque, whiteout
from oci.tarformat import EntryType, TarEntry, TarReader, TarWriter

#: Small enough that a mutated zstd frame cannot fill the disk, large enough for every seed.
LIMITS = ApplyLimits(max_bytes=8 << 20, max_entries=2000)


def written(entries: list[tuple[TarEntry, bytes]]) -> bytes:
    out = io.BytesIO()
    writer = TarWriter(out)
    for entry, data in entries:
        writer.add(entry, io.BytesIO(data))
    writer.close()
    return out.getvalue()


def seeds(sentinel: str) -> list[bytes]:
    """Valid (or nearly valid) layers to mutate; ``sentinel`` is the absolute path that must never change."""
    name = "n" * 120 + "/é"
    plain = written(
        [
            (TarEntry("a/", EntryType.DIR, mode=0o755), b""),
            (TarEntry("a/f", EntryType.FILE, size=5, mode=0o600, uid=1000, gid=1000, mtime=1), b"hello"),
            (TarEntry("a/l", EntryType.SYMLINK, linkname="f"), b""),
            (TarEntry("a/h", EntryType.HARDLINK, linkname="a/f"), b""),
            (TarEntry("fifo", EntryType.FIFO), b""),
            (TarEntry("null", EntryType.CHAR, devmajor=1, devminor=3), b""),
        ]
    )
    extended = written(
        [
            (TarEntry(name, EntryType.FILE, size=3, xattrs=FrozenMap({"user.k": b"\xff\x00v"})), b"abc"),
            (TarEntry("long", EntryType.SYMLINK, linkname="t" * 150), b""),
            (whiteout("a/f"), b""),
            (opaque("a"), b""),
        ]
    )
    crafted = archive(
        Member(b"././@LongLink", b"L", data=b"x" * 130 + b"\0"),
        file("short", b"data"),
        pax_member({b"path": b"p/q", b"mtime": b"1.5", b"uid": b"7"}),
        file("ignored", b"z"),
        pax_member({b"comment": b"global"}, typeflag=b"g"),
        directory("d/"),
        Member(b"v7file", b"\0", data=b"v7", magic=b"\0" * 8),
    )
    hostile = [  # one archive each, so that the first refusal does not hide the others
        archive(symlink("out", sentinel), file("out/planted", b"x")),
        archive(symlink("up", "../sentinel"), file("up/planted", b"x")),
        archive(file("../sentinel/planted", b"x")),
        archive(file("a", b"x"), hardlink("hl", sentinel + "/keep"), file("hl", b"overwritten")),
        archive(symlink("s", sentinel + "/keep"), hardlink("h", "s"), file("h", b"overwritten")),
        archive(file(sentinel.lstrip("/") + "/keep", b"overwritten")),
        archive(directory("d/"), symlink("d/x", "/"), file("d/x/planted", b"x"), file(".wh..wh..opq", b"")),
        archive(file("a/.wh...", b""), file(".wh.", b"")),
    ]
    return [plain, extended, crafted, *hostile, b"\0" * 1024, b""]


@dataclass(frozen=True)
class Flip:
    at: int
    mask: int

    def __call__(self, data: bytearray) -> None:
        if data:
            data[self.at % len(data)] ^= self.mask


@dataclass(frozen=True)
class Put:
    at: int
    value: bytes

    def __call__(self, data: bytearray) -> None:
        if data:
            at = self.at % len(data)
            data[at : at + len(self.value)] = self.value


@dataclass(frozen=True)
class Insert:
    at: int
    value: bytes

    def __call__(self, data: bytearray) -> None:
        at = self.at % (len(data) + 1)
        data[at:at] = self.value


@dataclass(frozen=True)
class Delete:
    at: int
    length: int

    def __call__(self, data: bytearray) -> None:
        if data:
            at = self.at % len(data)
            del data[at : at + self.length]


@dataclass(frozen=True)
class Truncate:
    at: int

    def __call__(self, data: bytearray) -> None:
        del data[self.at % (len(data) + 1) :]


POSITION = st.integers(0, 1 << 16)
# Header fields are where the interesting bytes are: size, mode, uid, checksum, typeflag, magic, numbers in base 256.
FIELD_BYTES = st.sampled_from(
    [b"\x80", b"\xff", b"\x00", b" ", b"7", b"9", b"x", b"L", b"K", b"S", b"g", b"1", b"2", b"ustar\x00", b"-1"]
) | st.binary(min_size=1, max_size=12)
MUTATION = st.one_of(
    st.builds(Flip, POSITION, st.integers(1, 255)),
    st.builds(Put, POSITION, FIELD_BYTES),
    st.builds(Put, st.integers(0, 40).map(lambda block: block * 512 + 124), st.sampled_from([b"77777777777\0"])),
    st.builds(Insert, POSITION, st.binary(min_size=1, max_size=600)),
    st.builds(Delete, POSITION, st.integers(1, 600)),
    st.builds(Truncate, POSITION),
)
WRAP = st.sampled_from(["none", "gzip", "zstd"])


def compress(kind: str, data: bytes) -> bytes:
    if kind == "gzip":
        return gzip.compress(data, mtime=0)
    if kind == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    return data


HUGE = b"9" * 5000  # more digits than int() converts
NUMBERS = [
    b"0",
    b"0" * 5000 + b"7",
    b"7",
    b"-1",
    b"1.5",
    b"4294967295",
    b"4294967296",
    b"99999999999999999999",
    HUGE,
    b"",
    b"x",
    b"\xff",
]


@st.composite
def members(draw: st.DrawFn, sentinel: str) -> Member:
    """One member with chosen header fields and PAX records: where mutation alone rarely reaches."""
    names = [b"f", b"d/", b"a/b", b"./x", b"/abs", b"..", b"../up", b".wh.f", b".wh..wh..opq", b"n" * 300, b"x\xff"]
    links = [b"f", b"/", b"..", b"../../x", sentinel.encode(), sentinel.encode() + b"/keep", b"l" * 300]
    pax_keys = ["path", "linkpath", "uid", "gid", "mtime", "size", "uname", "comment", "GNU.sparse.size"]
    pax_keys += ["SCHILY.xattr.user.k", "SCHILY.xattr.", "SCHILY.xattr.user.a\0b", "SCHILY.xattr.trusted.x"]
    records = draw(
        st.dictionaries(
            st.sampled_from(pax_keys).map(str.encode),
            st.sampled_from(NUMBERS + names + links) | st.binary(max_size=20),
            max_size=3,
        )
    )
    return Member(
        name=draw(st.sampled_from(names)),
        typeflag=draw(st.sampled_from([b"0", b"\0", b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"S", b"V", b"L"])),
        data=draw(st.sampled_from([b"", b"x", b"y" * 600])),
        linkname=draw(st.sampled_from(links)),
        mode=draw(st.sampled_from([0, 0o644, 0o7777, 0o4755])),
        uid=draw(st.integers(0, 8**7 - 1)),
        gid=draw(st.integers(0, 8**7 - 1)),
        mtime=draw(st.integers(0, 8**11 - 1)),
        devmajor=draw(st.integers(0, 8**7 - 1)),
        devminor=draw(st.integers(0, 8**7 - 1)),
        pax=records,
    )


@st.composite
def layers(draw: st.DrawFn, sentinel: str) -> bytes:
    choice = draw(st.integers(0, 9))
    if choice == 0:
        return draw(st.binary(max_size=2048))
    if choice <= 3:
        data = bytearray(archive(*draw(st.lists(members(sentinel), min_size=1, max_size=4))))
    else:
        data = bytearray(draw(st.sampled_from(seeds(sentinel))))
    before, after = draw(st.lists(MUTATION, max_size=4)), draw(st.lists(MUTATION, max_size=2))
    for mutate in before:
        mutate(data)
    data = bytearray(compress(draw(WRAP), bytes(data)))
    for mutate in after:  # damage to the compressed stream itself
        mutate(data)
    return bytes(data)


def read_all(data: bytes) -> None:
    _, plain = decompress_stream(io.BytesIO(data))
    for _entry, content in TarReader(plain):
        while content.read(1 << 16):
            pass


@dataclass
class Arena:
    base: Path

    @property
    def root(self) -> Path:
        return self.base / "root"

    @property
    def sentinel(self) -> Path:
        return self.base / "sentinel"

    def reset(self) -> None:
        if self.root.exists() or self.root.is_symlink():
            fd = os.open(self.base, os.O_RDONLY | os.O_DIRECTORY)
            try:
                remove_tree(fd, "root")
            finally:
                os.close(fd)
        self.root.mkdir()


@pytest.fixture(scope="module")
def arena(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Arena]:
    base = tmp_path_factory.mktemp("layer-fuzz")
    found = Arena(base)
    found.sentinel.mkdir()
    (found.sentinel / "keep").write_bytes(b"keep")
    (found.sentinel / "sub").mkdir()
    yield found
    shutil.rmtree(base, ignore_errors=True)


def check_reader(layer: bytes) -> None:
    try:
        read_all(layer)
    except OCIError:
        pass


def check_apply(arena: Arena, layer: bytes) -> None:
    before = snapshot(arena.sentinel)
    arena.reset()
    try:
        apply_layer(io.BytesIO(layer), arena.root, limits=LIMITS)
    except OCIError:
        pass
    assert snapshot(arena.sentinel) == before
    assert sorted(os.listdir(arena.base)) == ["root", "sentinel"]


def _header_number(member: Member, start: int, value: bytes) -> bytes:
    """``member`` with the header field at ``start`` replaced by ``value`` (base-256 numbers), checksum redone."""
    block = bytearray(member.header())
    block[start : start + len(value)] = value
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block) + member.data + b"\0" * (-len(member.data) % 512) + b"\0" * 1024


# Layers fuzzing found that raised something other than OCIError (ValueError past int()'s 4300 digits,
# OverflowError for a uid or time the system cannot take, ValueError for a NUL in an xattr name, OSError for a
# name over 255 bytes or an impossible device number). Each must now be refused as a layer error.
FOUND = {
    "pax-length-digits": archive(Member(b"PaxHeader", b"x", data=HUGE + b" path=x\n"), file("f")),
    "pax-uid-digits": archive(pax_member({b"uid": HUGE}), file("f")),
    "pax-size-digits": archive(pax_member({b"size": HUGE}), file("f")),
    "pax-mtime-digits": archive(pax_member({b"mtime": HUGE}), file("f")),
    "pax-mtime-beyond-int64": archive(pax_member({b"mtime": b"99999999999999999999"}), file("f")),
    "pax-gid-beyond-32-bits": archive(pax_member({b"gid": b"4294967296"}), file("f")),
    "base256-uid": _header_number(file("f"), 108, b"\x80" + b"\xff" * 7),
    "base256-mtime": _header_number(file("f"), 136, b"\x80" + b"\xff" * 11),
    "xattr-name-with-nul": archive(pax_member({b"SCHILY.xattr.user.a\0b": b"v"}), file("f")),
    "name-component-over-255": archive(pax_member({b"path": b"a" * 300}), file("f")),
    "symlink-target-over-4k": archive(pax_member({b"linkpath": b"a" * 5000}), symlink("s", "t")),
    "device-number-too-big": archive(Member(b"d", b"3", devmajor=8**7 - 1, devminor=8**7 - 1)),
}


def _zero_padded_pax(body: bytes, zeros: int) -> Member:
    """A PAX header whose one record's length field has ``zeros`` leading zeros (and is right)."""
    total = zeros + len(body)
    while zeros + len(str(total)) + len(body) != total:
        total = zeros + len(str(total)) + len(body)
    return Member(b"PaxHeader", b"x", data=b"0" * zeros + str(total).encode() + body)


# Found with them: numbers with thousands of leading zeros, which Go reads as the small numbers they are.
FOUND_ACCEPTED = {
    "pax-uid-leading-zeros": (archive(pax_member({b"uid": b"0" * 5000 + b"7"}), file("f")), "f", 7),
    "pax-length-leading-zeros": (archive(_zero_padded_pax(b" path=p\n", 5000), file("f")), "p", 0),
}


@pytest.mark.parametrize(("layer", "name", "uid"), list(FOUND_ACCEPTED.values()), ids=list(FOUND_ACCEPTED))
def test_found_by_fuzzing_and_accepted(arena: Arena, layer: bytes, name: str, uid: int) -> None:
    read_all(layer)
    arena.reset()
    apply_layer(io.BytesIO(layer), arena.root, limits=LIMITS)
    assert os.listdir(arena.root) == [name]
    if os.geteuid() == 0:  # owners are set only by root
        assert (arena.root / name).stat().st_uid == uid


@pytest.mark.parametrize("layer", list(FOUND.values()), ids=list(FOUND))
def test_found_by_fuzzing(arena: Arena, layer: bytes) -> None:
    check_reader(layer)
    with pytest.raises(OCIError):
        arena.reset()
        apply_layer(io.BytesIO(layer), arena.root, limits=LIMITS)
    check_apply(arena, layer)


def test_the_seeds_unmutated(arena: Arena) -> None:
    for layer in seeds(str(arena.sentinel)):
        for kind in ("none", "gzip", "zstd"):
            check_reader(compress(kind, layer))
            check_apply(arena, compress(kind, layer))


@given(st.data())
def test_tar_reader(arena: Arena, data: st.DataObject) -> None:
    check_reader(data.draw(layers(str(arena.sentinel))))


@given(st.data())
def test_apply_layer_stays_inside_the_root(arena: Arena, data: st.DataObject) -> None:
    check_apply(arena, data.draw(layers(str(arena.sentinel))))
