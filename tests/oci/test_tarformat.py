"""The tar format: our writer is read back by tarfile and GNU tar; our reader takes real archives, refuses bad ones."""

from __future__ import annotations

import io
import os
import random
import subprocess
import tarfile

import pytest
from conftest import require_tool
from tartools import Member, archive, directory, file, hardlink, pax_member, pax_record, symlink

from oci.errors import InvalidArchive, LayerError, OCIError
from oci.frozen import FrozenMap
from oci.tarformat import (
    BLOCK,
    EntryType,
    TarEntry,
    TarReader,
    TarWriter,
    _header_block,
    decode_name,
    encode_header,
    encode_name,
)

MTIME = 1_700_000_000


# ------------------------------------------------------------------------------------------------ helpers


def _write(*items: TarEntry | tuple[TarEntry, bytes]) -> bytes:
    out = io.BytesIO()
    writer = TarWriter(out)
    for item in items:
        entry, data = item if isinstance(item, tuple) else (item, b"")
        writer.add(entry, io.BytesIO(data))
    writer.close()
    return out.getvalue()


def _read(raw: bytes, **kw: int) -> list[tuple[TarEntry, bytes]]:
    return [(entry, data.read()) for entry, data in TarReader(io.BytesIO(raw), **kw)]


def _entries(raw: bytes, **kw: int) -> list[TarEntry]:
    return [entry for entry, _ in _read(raw, **kw)]


def _tarfile_members(raw: bytes) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tf:
        result = []
        for info in tf.getmembers():
            f = tf.extractfile(info) if info.isreg() else None
            result.append((info, f.read() if f else None))
        return result


def _tarfile_write(fmt: int, *members: tuple[tarfile.TarInfo, bytes], **kw: object) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt, **kw) as tf:  # type: ignore[call-overload]
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data else None)
    return out.getvalue()


def _info(
    name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, **attrs: object
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.mtime = MTIME
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, data


def _gnu_tar(raw: bytes, *args: str) -> bytes:
    tar = require_tool("tar")
    proc = subprocess.run(
        [tar, "--quoting-style=literal", "--numeric-owner", *args, "-f", "-"],
        input=raw,
        capture_output=True,
        env={**os.environ, "LC_ALL": "C", "TZ": "UTC"},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b"", proc.stderr
    return proc.stdout


def _restamp(block: bytes, offset: int, value: bytes, *, signed: bool = False) -> bytes:
    """``block`` with ``value`` written at ``offset`` and a correct checksum."""
    b = bytearray(block)
    b[offset : offset + len(value)] = value
    b[148:156] = b" " * 8
    total = sum(x - 256 if signed and x > 127 else x for x in b)
    b[148:156] = b"%06o\0 " % total
    return bytes(b)


def _end() -> bytes:
    return b"\0" * (2 * BLOCK)


def _f(path: str, data: bytes = b"", **kw: object) -> tuple[TarEntry, bytes]:
    return TarEntry(path, EntryType.FILE, size=len(data), mtime=MTIME, **kw), data  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ writer, read by tarfile

LONG_NAME = "deep/" * 25 + "file.txt"  # 133 bytes
LONG_TARGET = "../" * 40 + "target"  # 126 bytes
BAD_UTF8 = decode_name(b"bad-\xff\xfe-name")


def test_writer_basic_fields_read_by_tarfile() -> None:
    raw = _write(
        _f("etc/passwd", b"root:x:0:0\n", mode=0o640, uid=1000, gid=1001, uname="alice", gname="staff"),
    )
    [(info, data)] = _tarfile_members(raw)
    assert info.name == "etc/passwd"
    assert info.isreg()
    assert (info.mode, info.uid, info.gid, info.mtime) == (0o640, 1000, 1001, MTIME)
    assert (info.uname, info.gname) == ("alice", "staff")
    assert info.size == 11 and data == b"root:x:0:0\n"


def test_writer_plain_entry_is_a_single_ustar_header() -> None:
    raw = _write(_f("a", b"x"))
    assert len(raw) == BLOCK + BLOCK + 2 * BLOCK
    assert raw[156:157] == b"0"
    assert raw[257:265] == b"ustar\x0000"
    assert raw[:2] == b"a\0"


def test_writer_name_of_exactly_100_bytes_needs_no_pax() -> None:
    name = "n" * 100
    raw = _write(_f(name, b"x"))
    assert raw[156:157] == b"0"
    [(info, _)] = _tarfile_members(raw)
    assert info.name == name
    assert _entries(raw)[0].path == name


def test_writer_long_name_read_by_tarfile() -> None:
    raw = _write(_f(LONG_NAME, b"data"))
    [(info, data)] = _tarfile_members(raw)
    assert (info.name, data) == (LONG_NAME, b"data")
    assert raw[156:157] == b"x"


def test_writer_non_ascii_name_read_by_tarfile() -> None:
    name = "dir/café-✓.txt"
    [(info, data)] = _tarfile_members(_write(_f(name, b"1")))
    assert (info.name, data) == (name, b"1")


def test_writer_invalid_utf8_name_round_trips() -> None:
    raw = _write(_f(BAD_UTF8, b"1"))
    [(entry, data)] = _read(raw)
    assert entry.path == BAD_UTF8
    assert encode_name(entry.path) == b"bad-\xff\xfe-name"
    [(info, _)] = _tarfile_members(raw)
    assert info.name.encode("utf-8", "surrogateescape") == b"bad-\xff\xfe-name"


def test_writer_long_symlink_target_read_by_tarfile() -> None:
    raw = _write(TarEntry("link", EntryType.SYMLINK, mode=0o777, linkname=LONG_TARGET))
    [(info, _)] = _tarfile_members(raw)
    assert info.issym()
    assert info.linkname == LONG_TARGET


def test_writer_large_ids_read_by_tarfile() -> None:
    raw = _write(_f("f", b"", uid=3_000_000, gid=4_000_000))
    [(info, _)] = _tarfile_members(raw)
    assert (info.uid, info.gid) == (3_000_000, 4_000_000)
    assert raw[156:157] == b"x"


def test_writer_large_mtime_read_by_tarfile() -> None:
    raw = _write(TarEntry("f", EntryType.FILE, mtime=8**11 + 5))
    [(info, _)] = _tarfile_members(raw)
    assert info.mtime == 8**11 + 5
    assert _entries(raw)[0].mtime == 8**11 + 5


def test_writer_empty_file() -> None:
    raw = _write(_f("empty"))
    [(info, data)] = _tarfile_members(raw)
    assert info.isreg() and info.size == 0 and data == b""
    assert len(raw) == BLOCK + 2 * BLOCK


def test_writer_directory_name_ends_with_slash() -> None:
    raw = _write(TarEntry("usr/lib", EntryType.DIR, mode=0o755, mtime=MTIME))
    assert raw[:9] == b"usr/lib/\0"
    [(info, _)] = _tarfile_members(raw)
    assert info.isdir() and info.name == "usr/lib" and info.mode == 0o755
    assert _entries(raw)[0].path == "usr/lib/"


def test_writer_directory_already_ending_in_slash_gets_one_slash() -> None:
    raw = _write(TarEntry("d/", EntryType.DIR))
    assert raw[:3] == b"d/\0"


def test_writer_hardlink_read_by_tarfile() -> None:
    raw = _write(_f("a", b"content"), TarEntry("b", EntryType.HARDLINK, linkname="a"))
    (_, _), (info, _) = _tarfile_members(raw)
    assert info.islnk() and info.linkname == "a" and info.size == 0


def test_writer_hardlink_size_is_not_written() -> None:
    raw = _write(TarEntry("b", EntryType.HARDLINK, linkname="a", size=100))
    assert len(raw) == BLOCK + 2 * BLOCK
    [(info, _)] = _tarfile_members(raw)
    assert info.size == 0


def test_writer_char_device_read_by_tarfile() -> None:
    raw = _write(TarEntry("dev/null", EntryType.CHAR, mode=0o666, devmajor=1, devminor=3))
    [(info, _)] = _tarfile_members(raw)
    assert info.ischr() and (info.devmajor, info.devminor) == (1, 3) and info.mode == 0o666


def test_writer_block_device_read_by_tarfile() -> None:
    raw = _write(TarEntry("dev/sda", EntryType.BLOCKDEV, mode=0o660, devmajor=8, devminor=0))
    [(info, _)] = _tarfile_members(raw)
    assert info.isblk() and (info.devmajor, info.devminor) == (8, 0)


def test_writer_fifo_read_by_tarfile() -> None:
    [(info, _)] = _tarfile_members(_write(TarEntry("run/pipe", EntryType.FIFO, mode=0o600)))
    assert info.isfifo() and info.mode == 0o600


def test_writer_xattrs_read_by_tarfile() -> None:
    xattrs = FrozenMap({"user.comment": b"hello", "security.capability": b"\x01\x00\x00\x02"})
    raw = _write(TarEntry("bin/ping", EntryType.FILE, xattrs=xattrs))
    [(info, _)] = _tarfile_members(raw)
    assert info.pax_headers["SCHILY.xattr.user.comment"] == "hello"
    assert "SCHILY.xattr.security.capability" in info.pax_headers


def test_writer_binary_xattr_round_trips_through_reader() -> None:
    xattrs = FrozenMap({"user.bin": b"\x00\xff", "user.nl": b"a\nb=c", "user.empty": b""})
    [entry] = _entries(_write(TarEntry("f", EntryType.FILE, xattrs=xattrs)))
    assert entry.xattrs == xattrs
    assert entry.xattrs["user.bin"] == b"\x00\xff"


def test_writer_pax_records_are_sorted() -> None:
    raw = _write(TarEntry(LONG_NAME, EntryType.FILE, uid=3_000_000, xattrs=FrozenMap({"user.z": b"1", "user.a": b"2"})))
    size = int(raw[124:135], 8)
    records = raw[BLOCK : BLOCK + size]
    keys = []
    pos = 0
    while pos < len(records):
        length, rest = records[pos:].split(b" ", 1)
        keys.append(rest.split(b"=", 1)[0])
        pos += int(length)
    assert keys == sorted(keys)
    assert set(keys) == {b"path", b"uid", b"SCHILY.xattr.user.a", b"SCHILY.xattr.user.z"}


def test_writer_full_round_trip_through_reader() -> None:
    items = [
        TarEntry("d/", EntryType.DIR, mode=0o755, uid=1, gid=2, mtime=MTIME, uname="u", gname="g"),
        (TarEntry("d/f", EntryType.FILE, mode=0o4755, size=5, mtime=MTIME), b"hello"),
        (TarEntry(LONG_NAME, EntryType.FILE, size=600, uid=3_000_000), b"x" * 600),
        TarEntry("d/l", EntryType.SYMLINK, mode=0o777, linkname=LONG_TARGET),
        TarEntry("d/h", EntryType.HARDLINK, linkname="d/f"),
        TarEntry("d/c", EntryType.CHAR, devmajor=5, devminor=1),
        TarEntry("d/b", EntryType.BLOCKDEV, devmajor=7, devminor=0),
        TarEntry("d/p", EntryType.FIFO),
        TarEntry("d/é", EntryType.FILE, uname="ünï", gname="grøup", xattrs=FrozenMap({"user.x": b"\x00\xff"})),
        TarEntry(BAD_UTF8, EntryType.FILE),
    ]
    got = _read(_write(*items))
    expected = [(i, b"") if isinstance(i, TarEntry) else i for i in items]
    assert got == expected


def test_writer_is_deterministic() -> None:
    items = [
        _f("a", b"1" * 1000, xattrs=FrozenMap({"user.b": b"2", "user.a": b"1"})),
        TarEntry("d", EntryType.DIR),
        _f(LONG_NAME, b"", uid=3_000_000),
    ]
    assert _write(*items) == _write(*items)


def test_writer_refuses_data_shorter_than_size() -> None:
    out = io.BytesIO()
    with pytest.raises(LayerError):
        TarWriter(out).add(TarEntry("f", EntryType.FILE, size=10), io.BytesIO(b"short"))


def test_writer_refuses_missing_data() -> None:
    with pytest.raises(LayerError):
        TarWriter(io.BytesIO()).add(TarEntry("f", EntryType.FILE, size=1), None)


def test_writer_copies_exactly_size_bytes() -> None:
    raw = _write((TarEntry("f", EntryType.FILE, size=3), b"abcdef"))
    [(_, data)] = _read(raw)
    assert data == b"abc"


@pytest.mark.parametrize(
    "entry",
    [
        TarEntry("f", EntryType.FILE, mode=0o10000),
        TarEntry("f", EntryType.FILE, mode=-1),
        TarEntry("c", EntryType.CHAR, devmajor=8**7),
        TarEntry("c", EntryType.CHAR, devminor=-1),
    ],
)
def test_writer_refuses_unrepresentable_fields(entry: TarEntry) -> None:
    with pytest.raises(LayerError):
        TarWriter(io.BytesIO()).add(entry)


def test_writer_close_writes_end_marker_once_and_leaves_stream_open() -> None:
    out = io.BytesIO()
    writer = TarWriter(out)
    writer.close()
    writer.close()
    assert out.getvalue() == _end()
    assert not out.closed


def test_writer_large_size_goes_to_pax() -> None:
    header = encode_header(TarEntry("big", EntryType.FILE, size=8 * 1024**3))
    [entry] = [e for e, _ in _iter_until_truncated(header)]
    assert entry.size == 8 * 1024**3
    assert b"size=8589934592\n" in header


def _iter_until_truncated(raw: bytes) -> list[tuple[TarEntry, object]]:
    out = []
    with pytest.raises(InvalidArchive):
        for item in TarReader(io.BytesIO(raw)):
            out.append(item)
    return out


# ------------------------------------------------------------------------------- writer, read by GNU tar


def test_writer_output_listed_by_gnu_tar() -> None:
    names = [
        "d/",
        "d/f",
        LONG_NAME,
        "d/café",
        "d/l",
        "d/h",
        "d/c",
        "d/p",
        "d/empty",
        "d/ids",
        "d/x",
    ]
    raw = _write(
        TarEntry("d", EntryType.DIR, mode=0o755),
        _f("d/f", b"hello"),
        _f(LONG_NAME, b"x" * 700),
        _f("d/café", b"1"),
        TarEntry("d/l", EntryType.SYMLINK, linkname=LONG_TARGET),
        TarEntry("d/h", EntryType.HARDLINK, linkname="d/f"),
        TarEntry("d/c", EntryType.CHAR, devmajor=1, devminor=3),
        TarEntry("d/p", EntryType.FIFO),
        _f("d/empty"),
        _f("d/ids", b"", uid=3_000_000, gid=3_000_001),
        TarEntry("d/x", EntryType.FILE, xattrs=FrozenMap({"user.bin": b"\x00\xff"})),
    )
    assert _gnu_tar(raw, "-t").decode().splitlines() == names


def test_gnu_tar_sees_long_link_target_large_ids_and_devices() -> None:
    raw = _write(
        TarEntry("l", EntryType.SYMLINK, mode=0o777, linkname=LONG_TARGET),
        TarEntry("h", EntryType.HARDLINK, linkname="l"),
        _f("ids", b"abc", uid=3_000_000, gid=3_000_001),
        TarEntry("c", EntryType.CHAR, mode=0o666, devmajor=1, devminor=3),
        TarEntry("p", EntryType.FIFO, mode=0o644),
        TarEntry("d", EntryType.DIR, mode=0o755),
    )
    lines = _gnu_tar(raw, "-tv").decode().splitlines()
    assert lines[0].startswith("lrwxrwxrwx ") and lines[0].endswith(f" l -> {LONG_TARGET}")
    assert lines[1].startswith("h") and lines[1].endswith(" h link to l")
    assert lines[2].startswith("-rw-r--r-- 3000000/3000001 ") and " 3 " in lines[2]
    assert lines[3].startswith("crw-rw-rw- ") and " 1,3 " in lines[3]
    assert lines[4].startswith("prw-r--r-- ")
    assert lines[5].startswith("drwxr-xr-x ") and lines[5].endswith(" d/")


def test_gnu_tar_reads_invalid_utf8_name_bytes() -> None:
    raw = _write(_f(BAD_UTF8, b"1"))
    assert _gnu_tar(raw, "-t") == b"bad-\xff\xfe-name\n"


def test_gnu_tar_extracts_file_contents(tmp_path) -> None:  # type: ignore[no-untyped-def]
    raw = _write(TarEntry("d", EntryType.DIR, mode=0o755), _f("d/f", b"payload" * 100), _f(LONG_NAME, b"long"))
    _gnu_tar(raw, "-x", "-C", str(tmp_path))
    assert (tmp_path / "d" / "f").read_bytes() == b"payload" * 100
    assert (tmp_path / LONG_NAME).read_bytes() == b"long"


# ------------------------------------------------------------------------ reader, archives from tarfile


def test_reader_gnu_format_long_name_and_link() -> None:
    raw = _tarfile_write(
        tarfile.GNU_FORMAT,
        _info(LONG_NAME, b"data"),
        _info("sym", kind=tarfile.SYMTYPE, linkname=LONG_TARGET),
        _info("hard" * 30, kind=tarfile.LNKTYPE, linkname=LONG_NAME),
    )
    assert b"././@LongLink" in raw
    (f, fdata), (s, _), (h, _) = _read(raw)
    assert (f.path, f.type, fdata) == (LONG_NAME, EntryType.FILE, b"data")
    assert (s.path, s.type, s.linkname) == ("sym", EntryType.SYMLINK, LONG_TARGET)
    assert (h.path, h.type, h.linkname) == ("hard" * 30, EntryType.HARDLINK, LONG_NAME)


def test_reader_gnu_format_base256_numbers() -> None:
    raw = _tarfile_write(tarfile.GNU_FORMAT, _info("big", b"x", uid=10**10, gid=2**40))
    assert raw[108] & 0x80  # tarfile used base-256
    [entry] = _entries(raw)
    assert (entry.uid, entry.gid) == (10**10, 2**40)


def test_reader_pax_format() -> None:
    name = "pax/" + "é" * 80
    raw = _tarfile_write(
        tarfile.PAX_FORMAT,
        _info(name, b"1", uid=3_000_000, uname="ünï", pax_headers={"SCHILY.xattr.user.k": "v"}),
        _info("plain", b"2", mode=0o600),
    )
    (a, adata), (b, bdata) = _read(raw)
    assert (a.path, a.uid, a.uname, adata) == (name, 3_000_000, "ünï", b"1")
    assert a.xattrs == {"user.k": b"v"}
    assert (b.path, b.mode, b.xattrs, bdata) == ("plain", 0o600, {}, b"2")


def test_reader_ustar_prefix_field() -> None:
    name = "p" * 90 + "/" + "n" * 90
    raw = _tarfile_write(tarfile.USTAR_FORMAT, _info(name, b"ok"))
    assert raw[345:355] == b"p" * 10  # tarfile split the name into prefix and name
    [(entry, data)] = _read(raw)
    assert (entry.path, data) == (name, b"ok")


def test_reader_tarfile_directory_and_devices() -> None:
    raw = _tarfile_write(
        tarfile.USTAR_FORMAT,
        _info("dir", kind=tarfile.DIRTYPE, mode=0o755),
        _info("null", kind=tarfile.CHRTYPE, devmajor=1, devminor=3),
        _info("sda", kind=tarfile.BLKTYPE, devmajor=8, devminor=1),
        _info("fifo", kind=tarfile.FIFOTYPE),
    )
    d, c, b, p = _entries(raw)
    assert (d.path, d.type, d.mode) == ("dir/", EntryType.DIR, 0o755)
    assert (c.type, c.devmajor, c.devminor) == (EntryType.CHAR, 1, 3)
    assert (b.type, b.devmajor, b.devminor) == (EntryType.BLOCKDEV, 8, 1)
    assert p.type is EntryType.FIFO


def test_reader_global_pax_header_from_tarfile_applies_to_all_members() -> None:
    raw = _tarfile_write(
        tarfile.PAX_FORMAT,
        _info("a", b"1"),
        _info("b", b"2"),
        pax_headers={"SCHILY.xattr.user.global": "yes"},
    )
    a, b = _entries(raw)
    assert a.xattrs == {"user.global": b"yes"}
    assert b.xattrs == {"user.global": b"yes"}


def test_reader_global_pax_header_applies_to_later_members_and_local_overrides() -> None:
    raw = archive(
        file("before", b"0"),
        pax_member({b"uname": b"global", b"SCHILY.xattr.user.g": b"1"}, typeflag=b"g"),
        file("a", b"1"),
        file("b", b"2", pax={b"uname": b"local"}),
        file("c", b"3"),
    )
    before, a, b, c = _entries(raw)
    assert (before.uname, before.xattrs) == ("", {})
    assert (a.uname, a.xattrs) == ("global", {"user.g": b"1"})
    assert (b.uname, b.xattrs) == ("local", {"user.g": b"1"})
    assert (c.uname, c.xattrs) == ("global", {"user.g": b"1"})


def test_reader_local_pax_header_applies_to_next_member_only() -> None:
    raw = archive(file("a", b"1", pax={b"path": b"renamed", b"uid": b"7"}), file("b", b"2", uid=3))
    a, b = _entries(raw)
    assert (a.path, a.uid) == ("renamed", 7)
    assert (b.path, b.uid) == ("b", 3)


def test_reader_pax_size_overrides_header_size() -> None:
    raw = archive(file("a", b"0123456789", size_field=b"%011o\0" % 3, pax={b"size": b"10"}), file("b", b"x"))
    (a, adata), (b, bdata) = _read(raw)
    assert (a.size, adata) == (10, b"0123456789")
    assert (b.path, bdata) == ("b", b"x")


def test_reader_pax_mtime_fraction_and_negative() -> None:
    raw = archive(file("a", pax={b"mtime": b"1700000000.123456"}), file("b", pax={b"mtime": b"-100.5"}))
    a, b = _entries(raw)
    assert (a.mtime, b.mtime) == (1_700_000_000, 0)


# --------------------------------------------------------------------------------- reader, legacy input


@pytest.mark.parametrize("typeflag", [b"0", b"\0"])
def test_reader_v7_directory_convention(typeflag: bytes) -> None:
    raw = archive(Member(b"olddir/", typeflag, mode=0o755, magic=b"\0" * 8), file("olddir/f", b"x"))
    (d, ddata), (f, fdata) = _read(raw)
    assert (d.path, d.type, ddata) == ("olddir/", EntryType.DIR, b"")
    assert (f.path, f.type, fdata) == ("olddir/f", EntryType.FILE, b"x")


@pytest.mark.parametrize("typeflag", [b"\0", b"7"])
def test_reader_old_regular_file_typeflags(typeflag: bytes) -> None:
    [(entry, data)] = _read(archive(Member(b"f", typeflag, data=b"abc")))
    assert (entry.type, data) == (EntryType.FILE, b"abc")


def test_reader_v7_header_ignores_prefix_area() -> None:
    block = _restamp(Member(b"name", b"0", magic=b"\0" * 8).header(), 345, b"junk")
    [entry] = _entries(block + _end())
    assert entry.path == "name"


def test_reader_gnu_magic_ignores_prefix_area() -> None:
    block = _restamp(Member(b"name", b"0", magic=b"ustar  \0").header(), 345, b"atime-ish")
    [entry] = _entries(block + _end())
    assert entry.path == "name"


def test_reader_accepts_signed_checksum() -> None:
    header = _restamp(Member(b"x", b"0").header(), 0, b"caf\xc3\xa9", signed=True)
    [entry] = _entries(header + _end())
    assert entry.path == "café"


def test_reader_archive_without_end_marker() -> None:
    raw = archive(file("a", b"1"), file("b", b"2"), end=False)
    assert [(e.path, d) for e, d in _read(raw)] == [("a", b"1"), ("b", b"2")]


def test_reader_archive_with_a_single_zero_block() -> None:
    raw = archive(file("a", b"1"), end=False) + b"\0" * BLOCK
    assert [e.path for e in _entries(raw)] == ["a"]


def test_reader_empty_stream_has_no_members() -> None:
    assert _read(b"") == []
    assert _read(_end()) == []


def test_reader_stops_at_end_marker_leaving_trailing_bytes() -> None:
    stream = io.BytesIO(archive(file("a", b"1")) + b"TRAILER")
    assert [e.path for e, _ in TarReader(stream)] == ["a"]
    assert stream.read() == b"TRAILER"


def test_reader_skips_unread_and_partially_read_data() -> None:
    raw = archive(file("a", b"A" * 1500), file("b", b"B" * 10), file("c", b"C"))
    reader = TarReader(io.BytesIO(raw))
    seen = []
    for entry, data in reader:
        if entry.path == "b":
            assert data.read(3) == b"BBB"
        if entry.path == "c":
            assert data.read() == b"C"
        seen.append(entry.path)
    assert seen == ["a", "b", "c"]
    assert reader.entries == 3


def test_reader_counts_special_headers_as_entries() -> None:
    reader = TarReader(io.BytesIO(archive(file("a", pax={b"uid": b"1"}))))
    list(reader)
    assert reader.entries == 2


@pytest.mark.parametrize(
    "member",
    [
        symlink("s", "target"),
        directory("d/"),
        hardlink("h", "target"),
        Member(b"c", b"3", devmajor=1, devminor=3),
        Member(b"p", b"6"),
    ],
)
def test_reader_header_only_types_carry_no_data(member: Member) -> None:
    member.size_field = b"%011o\0" % 1024  # a lie: no data blocks follow
    raw = archive(member, file("next", b"payload"))
    (first, first_data), (nxt, nxt_data) = _read(raw)
    assert first_data == b""
    assert first.type is not EntryType.FILE
    assert (nxt.path, nxt.type, nxt_data) == ("next", EntryType.FILE, b"payload")


def test_reader_masks_mode_to_permission_bits() -> None:
    [entry] = _entries(archive(file("f", mode=0o100755)))
    assert entry.mode == 0o755


def test_reader_ignores_device_numbers_of_non_devices() -> None:
    [entry] = _entries(archive(file("f", devmajor=3, devminor=4)))
    assert (entry.devmajor, entry.devminor) == (0, 0)


# ------------------------------------------------------------------------------------- reader refusals


def test_reader_refuses_bad_checksum() -> None:
    with pytest.raises(InvalidArchive):
        _read(archive(file("a", bad_checksum=True)))


def test_reader_refuses_garbage_header() -> None:
    with pytest.raises(InvalidArchive):
        _read(b"not a tar archive".ljust(BLOCK, b"x") + _end())


def test_reader_refuses_data_after_single_zero_block() -> None:
    with pytest.raises(InvalidArchive):
        _read(archive(file("a"), end=False) + b"\0" * BLOCK + archive(file("b")))


def test_reader_refuses_negative_base256_size() -> None:
    with pytest.raises(InvalidArchive):
        _read(archive(file("a", size_field=b"\xff" * 12)))


@pytest.mark.parametrize("offset", [108, 116])  # uid, gid
def test_reader_refuses_negative_base256_id(offset: int) -> None:
    header = _restamp(file("a", b"").header(), offset, b"\xff" * 8)  # -1
    with pytest.raises(InvalidArchive):
        _read(header + _end())


def test_reader_refuses_negative_base256_mtime_from_tarfile() -> None:
    raw = _tarfile_write(tarfile.GNU_FORMAT, _info("old", b"", mtime=-1))
    assert raw[136] == 0xFF
    with pytest.raises(InvalidArchive):
        _read(raw)


@pytest.mark.parametrize("first", [0xC0, 0xFE])
def test_reader_refuses_large_negative_base256_uid(first: int) -> None:
    # Base-256 is two's complement: any first byte with bit 0x40 set is negative (Go: b[0]&0x40 != 0),
    # not only 0xFF. 0xC0 00 .. 00 in the 8-byte uid field is -2**62.
    header = _restamp(file("a", b"").header(), 108, bytes([first]) + b"\0" * 7)
    with pytest.raises(InvalidArchive):
        _read(header + _end())


def test_reader_refuses_non_octal_number() -> None:
    header = _restamp(file("a", b"").header(), 108, b"0000009\0")
    with pytest.raises(InvalidArchive):
        _read(header + _end())


def test_reader_refuses_sparse_typeflag() -> None:
    with pytest.raises(InvalidArchive, match="sparse"):
        _read(archive(Member(b"sparse", b"S", data=b"x")))


def test_reader_refuses_pax_sparse_files() -> None:
    raw = archive(file("s", b"x", pax={b"GNU.sparse.major": b"1", b"GNU.sparse.minor": b"0"}))
    with pytest.raises(InvalidArchive, match="sparse"):
        _read(raw)


@pytest.mark.parametrize("typeflag", [b"Z", b"V", b"D", b"M", b"N", b"8"])
def test_reader_refuses_unknown_entry_types(typeflag: bytes) -> None:
    with pytest.raises(InvalidArchive):
        _read(archive(Member(b"odd", typeflag)))


@pytest.mark.parametrize(
    "records",
    [
        b"99 path=foo\n",  # length beyond the data
        b"5 path=foo\n",  # length shorter than the record
        b"11 path=foo\n",  # off by one: the record's last byte is not the newline
        b"10 path=foo\n",
        b"11 path=foo",  # no newline
        b"x1 path=foo\n",  # not a number
        b"11 pathfoo\n\n",  # no '='
        b"8 =foo\n",  # empty key
        b"11path=foo\n",  # no space after length
        b"-11 path=foo\n",
    ],
)
def test_reader_refuses_malformed_pax_records(records: bytes) -> None:
    raw = archive(Member(b"PaxHeader", b"x", data=records), file("a"))
    with pytest.raises(InvalidArchive):
        _read(raw)


def test_reader_accepts_well_formed_pax_record() -> None:
    record = pax_record(b"path", b"foo")
    assert record == b"12 path=foo\n"
    [entry] = _entries(archive(Member(b"PaxHeader", b"x", data=record), file("a")))
    assert entry.path == "foo"


def test_reader_refuses_pax_length_with_underscore() -> None:
    # "2_0" is 20 for Python's int(), but not a decimal length for Go (strconv.ParseInt base 10) or GNU tar.
    record = b"2_0 path=abcdefghij\n"
    assert len(record) == 20
    with pytest.raises(InvalidArchive):
        _read(archive(Member(b"PaxHeader", b"x", data=record), file("a")))


@pytest.mark.parametrize("key", [b"uid", b"gid", b"size", b"mtime"])
def test_reader_refuses_non_numeric_pax_numbers(key: bytes) -> None:
    with pytest.raises(InvalidArchive):
        _read(archive(file("a", pax={key: b"12x"})))


def test_reader_refuses_oversized_pax_header() -> None:
    raw = archive(file("a", pax={b"SCHILY.xattr.user.big": b"v" * 2000}))
    with pytest.raises(InvalidArchive):
        _read(raw, max_special_header=1024)
    assert _entries(raw)[0].xattrs["user.big"] == b"v" * 2000  # fine under the default limit


def test_reader_accepts_pax_header_at_the_limit() -> None:
    pax = pax_member({b"comment": b"c" * 1000})
    assert len(pax.data) <= 1024
    assert [e.path for e in _entries(archive(pax, file("a")), max_special_header=len(pax.data))] == ["a"]
    with pytest.raises(InvalidArchive):
        _read(archive(pax, file("a")), max_special_header=len(pax.data) - 1)


def test_reader_refuses_oversized_gnu_long_name() -> None:
    raw = _tarfile_write(tarfile.GNU_FORMAT, _info("x/" * 1000 + "f", b""))
    with pytest.raises(InvalidArchive):
        _read(raw, max_special_header=1024)


def test_reader_refuses_truncated_data_when_read() -> None:
    raw = archive(file("a", b"x" * 1000), end=False)[: BLOCK + 600]
    reader = iter(TarReader(io.BytesIO(raw)))
    _, data = next(reader)
    with pytest.raises(InvalidArchive):
        data.read()


def test_reader_refuses_truncated_data_when_skipped() -> None:
    raw = archive(file("a", b"x" * 1000), end=False)[: BLOCK + 600]
    with pytest.raises(InvalidArchive):
        _entries(raw)


def test_reader_refuses_truncated_padding() -> None:
    raw = archive(file("a", b"x" * 10), end=False)[: BLOCK + 100]
    with pytest.raises(InvalidArchive):
        _entries(raw)


def test_reader_refuses_truncated_header() -> None:
    raw = archive(file("a", b"x"), end=False) + file("b").header()[:300]
    with pytest.raises(InvalidArchive):
        _read(raw)


def test_reader_refuses_archive_ending_after_extended_header() -> None:
    with pytest.raises(InvalidArchive):
        _read(pax_member({b"path": b"x"}).encode())
    with pytest.raises(InvalidArchive):
        _read(Member(b"././@LongLink", b"L", data=b"name\0").encode())


def test_reader_refuses_truncated_pax_header() -> None:
    raw = pax_member({b"path": b"x" * 600}).encode()[: BLOCK + 100]
    with pytest.raises(InvalidArchive):
        _read(raw)


def test_reader_refuses_empty_name() -> None:
    with pytest.raises(InvalidArchive):
        _read(archive(Member(b"", b"0")))


def test_reader_refuses_nul_in_pax_path() -> None:
    with pytest.raises(InvalidArchive):
        _read(archive(file("a", pax={b"path": b"a\0b"})))
    with pytest.raises(InvalidArchive):
        _read(archive(symlink("s", "t", pax={b"linkpath": b"t\0u"})))


def test_invalid_archive_is_a_layer_error_and_oci_error() -> None:
    with pytest.raises(LayerError):
        _read(archive(file("a", bad_checksum=True)))
    with pytest.raises(OCIError):
        _read(archive(file("a", bad_checksum=True)))


def test_header_checksums_are_the_sum_of_the_header_bytes() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        name = "/".join(rng.choice(["a", "bb", "ccc", "é", "x" * 40]) for _ in range(rng.randint(1, 6)))
        entry = TarEntry(
            name,
            rng.choice(list(EntryType)),
            mode=rng.randrange(0o10000),
            uid=rng.randrange(1 << 22),
            gid=rng.randrange(1 << 22),
            size=rng.randrange(1 << 34),
            mtime=rng.randrange(1 << 33),
            linkname=rng.choice(["", "target", "t" * 99]),
            devmajor=rng.randrange(300),
            devminor=rng.randrange(300),
            uname=rng.choice(["", "root", "app"]),
            gname=rng.choice(["", "root", "staff"]),
        )
        header = encode_header(entry)
        for block in (header[i : i + BLOCK] for i in range(0, len(header), BLOCK)):
            if block[257:263] != b"ustar\0":
                continue  # PAX data blocks
            stored = int(block[148:154], 8)
            assert stored == sum(block[:148]) + 32 * 8 + sum(block[156:]), entry


@pytest.mark.parametrize("name", ["a/.wh.b", ".wh..wh..opq", "d/" + "x" * 98, "d/" + "x" * 99, "é/.wh.ü", "x"])
def test_a_whiteout_s_header_is_the_general_header_of_its_entry(name: str) -> None:
    entry = TarEntry(name, EntryType.FILE)  # mode 0644, root's, empty, mtime 0: a whiteout or an opaque marker
    raw = encode_name(name)
    if len(raw) <= 100 and raw.isascii():
        assert encode_header(entry) == _header_block(raw, 0o644, 0, 0, 0, 0, b"0")
    with tarfile.open(fileobj=io.BytesIO(encode_header(entry) + b"\0" * 2 * BLOCK)) as tar:
        (member,) = tar.getmembers()
    assert (member.name, member.mode, member.size, member.mtime, member.uid) == (name, 0o644, 0, 0, 0)
