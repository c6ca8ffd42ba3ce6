"""Crafting tar archives byte by byte, including ones no honest writer would produce, and comparing trees."""

from __future__ import annotations

import io
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from oci.compression import Compression, compressor

BLOCK = 512


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


@dataclass
class Member:
    """One raw member. Fields are bytes as they go into the header; nothing is validated."""

    name: bytes
    typeflag: bytes = b"0"
    data: bytes = b""
    linkname: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    devmajor: int = 0
    devminor: int = 0
    size_field: bytes | None = None  # raw 12-byte size field, to lie about the size
    bad_checksum: bool = False
    pax: dict[bytes, bytes] = field(default_factory=dict)
    magic: bytes = b"ustar\x0000"

    def header(self) -> bytes:
        block = bytearray(BLOCK)
        block[0 : len(self.name[:100])] = self.name[:100]
        block[100:108] = _octal(self.mode, 8)
        block[108:116] = _octal(self.uid, 8)
        block[116:124] = _octal(self.gid, 8)
        block[124:136] = self.size_field if self.size_field is not None else _octal(len(self.data), 12)
        block[136:148] = _octal(self.mtime, 12)
        block[148:156] = b" " * 8
        block[156:157] = self.typeflag
        block[157 : 157 + len(self.linkname[:100])] = self.linkname[:100]
        block[257:265] = self.magic
        block[329:337] = _octal(self.devmajor, 8)
        block[337:345] = _octal(self.devminor, 8)
        checksum = sum(block) + (1 if self.bad_checksum else 0)
        block[148:156] = b"%06o\0 " % checksum
        return bytes(block)

    def encode(self) -> bytes:
        out = b""
        if self.pax:
            out += pax_member(self.pax).encode()
        padding = b"\0" * (-len(self.data) % BLOCK)
        return out + self.header() + self.data + padding


def pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length = len(str(length)) + len(body)
    return str(length).encode() + body


def pax_member(records: dict[bytes, bytes], typeflag: bytes = b"x") -> Member:
    return Member(b"PaxHeader", typeflag, data=b"".join(pax_record(k, v) for k, v in records.items()))


def archive(*members: Member, end: bool = True) -> bytes:
    return b"".join(m.encode() for m in members) + (b"\0" * 1024 if end else b"")


def file(name: str | bytes, data: bytes = b"x", **kw: object) -> Member:
    return Member(name.encode() if isinstance(name, str) else name, b"0", data=data, **kw)  # type: ignore[arg-type]


def directory(name: str, **kw: object) -> Member:
    return Member(name.encode(), b"5", mode=0o755, **kw)  # type: ignore[arg-type]


def symlink(name: str, target: str, **kw: object) -> Member:
    return Member(name.encode(), b"2", linkname=target.encode(), mode=0o777, **kw)  # type: ignore[arg-type]


def hardlink(name: str, target: str, **kw: object) -> Member:
    return Member(name.encode(), b"1", linkname=target.encode(), **kw)  # type: ignore[arg-type]


def snapshot(root: Path) -> dict[str, tuple]:
    """Everything observable about a tree (types, modes, owners, sizes, contents, link targets, xattrs)."""
    result: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            kind = stat.S_IFMT(st.st_mode)
            content: object = None
            if stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    content = f.read()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(full)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                content = (os.major(st.st_rdev), os.minor(st.st_rdev))
            try:
                names = sorted(os.listxattr(full, follow_symlinks=False))
                xattrs = tuple((n, os.getxattr(full, n, follow_symlinks=False)) for n in names)
            except OSError:
                xattrs = ()
            result[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, content, xattrs)
    return result


def compress(kind: Compression, data: bytes) -> bytes:
    """``data`` (an archive, say) compressed with ``kind``, as a layer or an ADD source would be."""
    out = io.BytesIO()
    sink = compressor(kind, out)
    sink.write(data)
    sink.finish()
    return out.getvalue()
