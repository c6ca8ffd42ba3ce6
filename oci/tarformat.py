"""The tar format, both ways: a deterministic writer and a bounded, streaming reader.

The writer emits POSIX ustar headers, with a PAX extended header (records sorted by key) only when a field
does not fit: names or link targets over 100 bytes or not ASCII, sizes from 8 GiB, large ids, xattrs
(``SCHILY.xattr.NAME``, binary values kept byte for byte). Directories end in ``/``. Nothing varies between runs.

The reader accepts what real layers contain (ustar, GNU and v7 headers, PAX local and global headers, GNU long
names) and refuses what it cannot represent faithfully or safely: bad checksums, negative numbers, sparse
files, unknown entry types, oversized special headers, truncated data. It does not interpret paths: that is
the applier's job. Names are ``str`` decoded with ``surrogateescape``, so any byte string round-trips.
"""

from __future__ import annotations

import enum
import io
import os
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from oci.errors import InvalidArchive, LayerError
from oci.frozen import FrozenMap

__all__ = ["BLOCK", "EntryType", "TarEntry", "TarReader", "TarWriter", "decode_name", "encode_name", "plain_file"]

BLOCK = 512
_CHUNK = 1 << 20
#: Upper bound on PAX headers and GNU long names (Go's archive/tar uses 1 MiB too).
MAX_SPECIAL_HEADER = 1 << 20
_XATTR = "SCHILY.xattr."


class EntryType(enum.Enum):
    FILE = b"0"
    HARDLINK = b"1"
    SYMLINK = b"2"
    CHAR = b"3"
    BLOCKDEV = b"4"
    DIR = b"5"
    FIFO = b"6"


_HEADER_ONLY = {
    EntryType.HARDLINK,
    EntryType.SYMLINK,
    EntryType.CHAR,
    EntryType.BLOCKDEV,
    EntryType.DIR,
    EntryType.FIFO,
}
_TYPEFLAGS = {t.value: t for t in EntryType} | {b"\0": EntryType.FILE, b"7": EntryType.FILE}


def encode_name(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def decode_name(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


@dataclass(frozen=True, slots=True)
class TarEntry:
    """One archive member. ``path`` is as stored (the writer wants it clean and relative, without ``./``)."""

    path: str
    type: EntryType
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime: int = 0
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: FrozenMap[str, bytes] = field(default_factory=FrozenMap)
    uname: str = ""
    gname: str = ""


# ---------------------------------------------------------------------------------------------------- writing


_OCTAL_7 = 8**7
_OCTAL_11 = 8**11


def _fits_octal(value: int, width: int) -> bool:
    return 0 <= value < 8 ** (width - 1)


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length = len(str(length)) + len(body)
    return str(length).encode() + body


def _ascii_field(raw: bytes, width: int) -> bool:
    return len(raw) <= width and raw.isascii() and b"\0" not in raw


# name, mode, uid, gid, size, mtime, checksum, typeflag, linkname, magic+version, uname, gname, devmajor, devminor;
# the prefix field and the padding stay NUL.
_USTAR = struct.Struct("100s8s8s8s12s12s8sc100s8s32s32s8s8s167x")


def _header_block(
    name: bytes,
    mode: int,
    uid: int,
    gid: int,
    size: int,
    mtime: int,
    typeflag: bytes,
    linkname: bytes = b"",
    uname: bytes = b"",
    gname: bytes = b"",
    devmajor: int = 0,
    devminor: int = 0,
) -> bytes:
    fields = (
        b"%07o\0" % mode,
        b"%07o\0" % uid,
        b"%07o\0" % gid,
        b"%011o\0" % size,
        b"%011o\0" % mtime,
        b"%07o\0" % devmajor,
        b"%07o\0" % devminor,
    )
    block = _USTAR.pack(name, *fields[:5], b"        ", typeflag, linkname, b"ustar\x0000", uname, gname, *fields[5:])
    # The checksum is the sum of the header's bytes with its own field as spaces. The padding is NULs, so summing
    # the fields themselves (tens of bytes, not 512) gives it.
    checksum = _FIXED_SUM + sum(b"".join((name, *fields, typeflag, linkname, uname, gname)))
    return b"%s%06o\0 %s" % (block[:148], checksum, block[156:])


_FIXED_SUM = sum(b"        ustar\x0000")  # the checksum field as spaces, and the magic and version

# The header of an empty regular file owned by root, mode 0644, mtime 0 (how layers write whiteouts and opaque
# markers), but for its name: what follows the name up to the checksum, the checksum without the name's bytes,
# and what follows the checksum.
_MARKER = _header_block(b"", 0o644, 0, 0, 0, 0, EntryType.FILE.value)
_MARKER_HEAD, _MARKER_SUM, _MARKER_TAIL = _MARKER[100:148], int(_MARKER[148:154], 8), _MARKER[156:]


def encode_header(entry: TarEntry) -> bytes:
    """The header block(s) for ``entry``: a PAX header first if any field needs one."""
    if (
        entry.type is EntryType.FILE
        and entry.mode == 0o644
        and not (entry.size or entry.mtime or entry.uid or entry.gid or entry.linkname or entry.xattrs)
        and not (entry.uname or entry.gname or entry.devmajor or entry.devminor)
    ):
        name = encode_name(entry.path)
        if _ascii_field(name, 100):  # a whiteout or an opaque marker, of which a mass deletion writes thousands
            return b"%s%s%06o\0 %s" % (name.ljust(100, b"\0"), _MARKER_HEAD, _MARKER_SUM + sum(name), _MARKER_TAIL)
    path = entry.path + "/" if entry.type is EntryType.DIR and not entry.path.endswith("/") else entry.path
    name = encode_name(path)
    link = encode_name(entry.linkname)
    size = entry.size if entry.type is EntryType.FILE else 0
    if (
        _ascii_field(name, 100)
        and (not link or _ascii_field(link, 100))
        and not (entry.uname or entry.gname or entry.xattrs or entry.devmajor or entry.devminor)
        and 0 <= entry.uid < _OCTAL_7
        and 0 <= entry.gid < _OCTAL_7
        and 0 <= size < _OCTAL_11
        and 0 <= entry.mtime < _OCTAL_11
        and 0 <= entry.mode <= 0o7777
    ):
        # The common member: every field fits the ustar header as it is.
        return _header_block(name, entry.mode, entry.uid, entry.gid, size, entry.mtime, entry.type.value, link)
    uname, gname = encode_name(entry.uname), encode_name(entry.gname)
    pax: dict[bytes, bytes] = {}
    if not _ascii_field(name, 100):
        pax[b"path"] = name
        name = _ascii_stub(name)
    if not _ascii_field(link, 100):
        pax[b"linkpath"] = link
        link = _ascii_stub(link)
    if not _ascii_field(uname, 32):
        pax[b"uname"], uname = uname, b""
    if not _ascii_field(gname, 32):
        pax[b"gname"], gname = gname, b""
    numbers = {"size": (size, 12), "uid": (entry.uid, 8), "gid": (entry.gid, 8), "mtime": (entry.mtime, 12)}
    fitted: dict[str, int] = {}
    for key, (value, width) in numbers.items():
        if _fits_octal(value, width):
            fitted[key] = value
        else:
            pax[key.encode()] = str(value).encode()
            fitted[key] = 0
    for key, value in entry.xattrs.items():
        pax[(_XATTR + key).encode("utf-8", "surrogateescape")] = value
    if not (_fits_octal(entry.devmajor, 8) and _fits_octal(entry.devminor, 8)):
        raise LayerError(f"{entry.path}: device number too large for a tar header")
    if not 0 <= entry.mode <= 0o7777:
        raise LayerError(f"{entry.path}: mode {entry.mode:o} is not a permission mode")
    header = _header_block(
        name,
        entry.mode,
        fitted["uid"],
        fitted["gid"],
        fitted["size"],
        fitted["mtime"],
        entry.type.value,
        link,
        uname,
        gname,
        entry.devmajor,
        entry.devminor,
    )
    if not pax:
        return header
    data = b"".join(_pax_record(k, pax[k]) for k in sorted(pax))
    pax_header = _header_block(_ascii_stub(b"PaxHeaders/" + name), 0o644, 0, 0, len(data), 0, b"x")
    return pax_header + data + _padding(len(data)) + header


def _ascii_stub(raw: bytes) -> bytes:
    """A readable ASCII stand-in for a field whose real value is in the PAX header."""
    return bytes(b if 32 <= b < 127 else ord("_") for b in raw[:99])


def _padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def plain_file(data: BinaryIO) -> int | None:
    """The descriptor under ``data`` if it is a regular file with nothing read ahead into a buffer (so the
    descriptor's offset is the stream's), else None."""
    try:
        fd = data.fileno()
        unread = data.tell() == os.lseek(fd, 0, os.SEEK_CUR)
    except (AttributeError, OSError, ValueError):
        return None
    return fd if unread and stat.S_ISREG(os.fstat(fd).st_mode) else None


class TarWriter:
    """Writes entries to ``out``; ``close()`` ends the archive (and leaves ``out`` open).

    Small members are gathered into writes of about ``_CHUNK`` bytes (a layer of 30,000 small files is a few
    hundred writes downstream, not 90,000); a big file's content streams through in chunks of that size, or, when
    ``out`` offers ``copy_file(fd, count)`` (an uncompressed layer going into the content store) and the content is
    a plain file, is handed to it whole to be copied by the kernel.
    """

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._buffer = bytearray()
        self._closed = False

    def add(self, entry: TarEntry, data: BinaryIO | None = None) -> None:
        """Write ``entry``; for a regular file, exactly ``entry.size`` bytes are copied from ``data``."""
        self._gather(encode_header(entry))
        if entry.type is not EntryType.FILE or entry.size == 0:
            return
        if data is None:
            raise LayerError(f"{entry.path}: no content given for a {entry.size}-byte file")
        if entry.size >= _CHUNK and self._copy_file(entry, data):
            return
        remaining = entry.size
        while remaining:
            chunk = data.read(min(remaining, _CHUNK))
            if not chunk:
                raise LayerError(f"{entry.path}: file shrank while it was being read")
            remaining -= len(chunk)
            if len(chunk) >= _CHUNK:
                self._flush()
                self._out.write(chunk)
            else:
                self._gather(chunk)
        self._gather(_padding(entry.size))

    def _copy_file(self, entry: TarEntry, data: BinaryIO) -> bool:
        copy = getattr(self._out, "copy_file", None)
        fd = plain_file(data)
        if copy is None or fd is None:
            return False
        self._flush()
        copied = copy(fd, entry.size)
        if copied is None:
            return False
        if copied < entry.size:
            raise LayerError(f"{entry.path}: file shrank while it was being read")
        self._gather(_padding(entry.size))
        return True

    def _gather(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) >= _CHUNK:
            self._flush()

    def _flush(self) -> None:
        if self._buffer:
            self._out.write(self._buffer)
            self._buffer = bytearray()

    def close(self) -> None:
        if not self._closed:
            self._buffer += b"\0" * (2 * BLOCK)
            self._flush()
            self._closed = True


# ---------------------------------------------------------------------------------------------------- reading


def _parse_number(raw: bytes, what: str) -> int:
    if raw and raw[0] & 0x80:
        # GNU base-256: big-endian two's complement in the remaining bits; 0x40 is the sign.
        if raw[0] & 0x40:
            raise InvalidArchive(f"negative {what} in tar header")
        value = raw[0] & 0x7F
        for byte in raw[1:]:
            value = (value << 8) | byte
        return value
    text = raw.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        value = int(text, 8)
    except ValueError:
        raise InvalidArchive(f"invalid {what} {raw!r} in tar header") from None
    if value < 0:
        raise InvalidArchive(f"negative {what} in tar header")
    return value


def _cstring(raw: bytes) -> bytes:
    return raw.split(b"\0", 1)[0]


_HIGH_BYTES = bytes(range(128, 256))


def _checksum_ok(block: bytes) -> bool:
    stored = block[148:156]
    try:
        expected = int(stored.split(b"\0", 1)[0].strip(b" ") or b"-1", 8)
    except ValueError:
        return False
    blanked = block[:148] + b" " * 8 + block[156:]
    unsigned = sum(blanked)
    if expected == unsigned:
        return True
    # Some old writers summed signed chars: every byte above 127 then counts 256 less.
    high = len(blanked) - len(blanked.translate(None, _HIGH_BYTES))
    return expected == unsigned - 256 * high


def _parse_pax(data: bytes) -> dict[str, bytes]:
    records: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            raise InvalidArchive("malformed PAX header")
        digits = data[pos:space]
        if not digits.isdigit():  # bytes.isdigit is ASCII-only; int() would also take "2_0" or " 20"
            raise InvalidArchive("malformed PAX header length")
        significant = digits.lstrip(b"0") or b"0"  # int() refuses more than 4300 digits, leading zeros included
        if len(significant) > len(str(len(data))):
            raise InvalidArchive("malformed PAX record")
        length = int(significant)
        end = pos + length
        if length <= space - pos + 1 or end > len(data) or data[end - 1 : end] != b"\n":
            raise InvalidArchive("malformed PAX record")
        key, eq, value = data[space + 1 : end - 1].partition(b"=")
        if not eq or not key:
            raise InvalidArchive("malformed PAX record")
        records[key.decode("utf-8", "surrogateescape")] = value
        pos = end
    return records


def _pax_int(value: bytes, key: str) -> int:
    text = value.split(b".", 1)[0] if key == "mtime" else value
    # Go's archive/tar reads these with strconv.ParseInt(..., 64): more than an int64 is an invalid header.
    significant = text.lstrip(b"0") or b"0"  # int() refuses more than 4300 digits, leading zeros included
    if not text.isdigit() or len(significant) > 19 or int(significant) >= 1 << 63:
        raise InvalidArchive(f"invalid PAX {key} {value[:40]!r}")
    return int(significant)


class _EntryData(io.RawIOBase):
    def __init__(self, reader: TarReader, size: int, path: str) -> None:
        super().__init__()
        self._reader = reader
        self.size = size
        self.remaining = size
        self._path = path

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self.remaining <= 0:
            return 0
        view = memoryview(buffer).cast("B")[: self.remaining]
        n = self._reader._readinto(view)
        if n == 0:
            raise InvalidArchive(f"{self._path}: archive ends inside the file's data")
        self.remaining -= n
        return n

    def copy_into(self, fd: int) -> bool:
        """Copy the rest of the content to the file ``fd`` inside the kernel, where the archive's stream offers
        ``copy_to(fd, count)``; False, with nothing read, where it does not."""
        copy = getattr(self._reader._stream, "copy_to", None)
        if copy is None or self.remaining <= 0:
            return False
        copied = copy(fd, self.remaining)
        if copied < self.remaining:
            raise InvalidArchive(f"{self._path}: archive ends inside the file's data")
        self.remaining = 0
        return True


class TarReader:
    """Streams the members of a tar archive from ``stream``.

    Iterating yields ``(entry, data)``; ``data`` reads the member's content and is only valid until the next
    iteration. ``entries`` counts headers seen. After the end-of-archive marker, iteration stops; the caller
    may read any trailing bytes from the stream it supplied.
    """

    def __init__(self, stream: BinaryIO, *, max_special_header: int = MAX_SPECIAL_HEADER) -> None:
        self._stream = stream
        self._max_special = max_special_header
        self.entries = 0

    def _readinto(self, view: memoryview) -> int:
        if hasattr(self._stream, "readinto"):
            return self._stream.readinto(view) or 0
        data = self._stream.read(len(view))
        view[: len(data)] = data
        return len(data)

    def _read_exact(self, size: int, what: str) -> bytes:
        buf = bytearray(size)
        view = memoryview(buf)
        got = 0
        while got < size:
            n = self._readinto(view[got:])
            if n == 0:
                if got == 0 and what == "header":
                    return b""
                raise InvalidArchive(f"archive is truncated in a {what}")
            got += n
        return bytes(buf)

    def _skip(self, size: int) -> None:
        buf = bytearray(min(size, _CHUNK) or 1)
        view = memoryview(buf)
        while size:
            n = self._readinto(view[: min(size, len(buf))])
            if n == 0:
                raise InvalidArchive("archive is truncated in a file's data")
            size -= n

    def _special(self, size: int, kind: str) -> bytes:
        if size > self._max_special:
            raise InvalidArchive(f"{kind} of {size} bytes is larger than the {self._max_special}-byte limit")
        data = self._read_exact(size, kind)
        self._skip(-size % BLOCK)
        return data

    def __iter__(self) -> Iterator[tuple[TarEntry, BinaryIO]]:
        global_pax: dict[str, bytes] = {}
        local_pax: dict[str, bytes] = {}
        long_name: bytes | None = None
        long_link: bytes | None = None
        current: _EntryData | None = None
        while True:
            if current is not None:
                self._skip(current.remaining + (-current.size % BLOCK))
                current = None
            block = self._read_exact(BLOCK, "header")
            if not block:
                if local_pax or long_name is not None or long_link is not None:
                    raise InvalidArchive("archive ends after an extended header")
                return  # no end marker: accepted, as Go's reader does
            if block == bytes(BLOCK):
                if local_pax or long_name is not None or long_link is not None:
                    raise InvalidArchive("archive ends after an extended header")
                # End of archive: one zero block, then normally a second one (absent in some writers).
                second = self._read_exact(BLOCK, "header")
                if second and second != bytes(BLOCK):
                    raise InvalidArchive("data after a zero block in the middle of the archive")
                return
            if not _checksum_ok(block):
                raise InvalidArchive(f"bad header checksum at member {self.entries + 1}")
            self.entries += 1
            typeflag = block[156:157]
            size = _parse_number(block[124:136], "size")
            if typeflag in (b"x", b"g"):
                records = _parse_pax(self._special(size, "PAX header"))
                (local_pax if typeflag == b"x" else global_pax).update(records)
                continue
            if typeflag == b"L":
                long_name = _cstring(self._special(size, "GNU long name"))
                continue
            if typeflag == b"K":
                long_link = _cstring(self._special(size, "GNU long link name"))
                continue
            pax = {**global_pax, **local_pax}
            local_pax = {}
            entry = self._entry(block, typeflag, size, pax, long_name, long_link)
            long_name = long_link = None
            data_size = 0 if entry.type in _HEADER_ONLY else entry.size
            current = _EntryData(self, data_size, entry.path)
            yield entry, current  # type: ignore[misc]

    def _entry(
        self,
        block: bytes,
        typeflag: bytes,
        size: int,
        pax: dict[str, bytes],
        long_name: bytes | None,
        long_link: bytes | None,
    ) -> TarEntry:
        if any(key.startswith("GNU.sparse.") for key in pax) or typeflag == b"S":
            raise InvalidArchive("sparse files are not supported")
        entry_type = _TYPEFLAGS.get(typeflag)
        if entry_type is None:
            raise InvalidArchive(f"unsupported tar entry type {typeflag!r}")
        magic = block[257:265]
        name = _cstring(block[0:100])
        if magic[:6] == b"ustar\0":
            prefix = _cstring(block[345:500])
            if prefix:
                name = prefix + b"/" + name
        if long_name is not None:
            name = long_name
        if "path" in pax:
            name = pax["path"]
        link = _cstring(block[157:257])
        if long_link is not None:
            link = long_link
        if "linkpath" in pax:
            link = pax["linkpath"]
        if entry_type is EntryType.FILE and name.endswith(b"/"):
            entry_type = EntryType.DIR  # the v7 convention for directories (GNU tar honours it for '0' too)
        if not name:
            raise InvalidArchive(f"member {self.entries} has an empty name")
        if b"\0" in name or b"\0" in link:
            raise InvalidArchive(f"member {self.entries} has a NUL byte in its name")
        if "size" in pax:
            size = _pax_int(pax["size"], "size")
        uid = _pax_int(pax["uid"], "uid") if "uid" in pax else _parse_number(block[108:116], "uid")
        gid = _pax_int(pax["gid"], "gid") if "gid" in pax else _parse_number(block[116:124], "gid")
        if "mtime" in pax:
            mtime_text = pax["mtime"]
            if mtime_text.startswith(b"-"):
                mtime = 0  # before 1970: clamp rather than refuse, it harms nothing
            else:
                mtime = _pax_int(mtime_text, "mtime")
        else:
            mtime = _parse_number(block[136:148], "mtime")
        xattrs = {k[len(_XATTR) :]: v for k, v in sorted(pax.items()) if k.startswith(_XATTR)}
        if any("\0" in key for key in xattrs):
            raise InvalidArchive(f"member {self.entries} has a NUL byte in an xattr name")
        return TarEntry(
            path=decode_name(name),
            type=entry_type,
            mode=_parse_number(block[100:108], "mode") & 0o7777,
            uid=uid,
            gid=gid,
            size=size,
            mtime=mtime,
            linkname=decode_name(link),
            devmajor=_parse_number(block[329:337], "devmajor") if entry_type in _DEVICES else 0,
            devminor=_parse_number(block[337:345], "devminor") if entry_type in _DEVICES else 0,
            xattrs=FrozenMap(xattrs),
            uname=decode_name(pax.get("uname", _cstring(block[265:297]))),
            gname=decode_name(pax.get("gname", _cstring(block[297:329]))),
        )


_DEVICES = {EntryType.CHAR, EntryType.BLOCKDEV}
