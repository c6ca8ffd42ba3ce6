"""Layer compression: gzip and zstd, written deterministically, read by their magic bytes.

Writers never close the stream they write into. gzip output has no file name and mtime 0, so the same tar
gives the same bytes. Readers sniff the first bytes rather than trusting a media type, accept multi-member
gzip and multi-frame zstd, and treat NUL padding after the last gzip member as the end of the stream.
"""

from __future__ import annotations

import enum
import io
import zlib
from typing import BinaryIO, Protocol

import zstandard

from oci import mediatypes as mt
from oci.errors import CompressionError

__all__ = ["Compression", "Compressor", "compressor", "decompress_stream", "sniff"]

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 20


class Compression(enum.Enum):
    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"

    @property
    def layer_media_type(self) -> str:
        return {
            Compression.NONE: mt.OCI_LAYER,
            Compression.GZIP: mt.OCI_LAYER_GZIP,
            Compression.ZSTD: mt.OCI_LAYER_ZSTD,
        }[self]

    @classmethod
    def parse(cls, text: str) -> Compression:
        try:
            return cls(text.lower())
        except ValueError:
            raise ValueError(f"unknown compression {text!r} (expected gzip, zstd or none)") from None


def sniff(prefix: bytes) -> Compression:
    if prefix.startswith(_GZIP_MAGIC):
        return Compression.GZIP
    if prefix.startswith(_ZSTD_MAGIC):
        return Compression.ZSTD
    return Compression.NONE


class Compressor(Protocol):
    def write(self, data: bytes | bytearray | memoryview) -> int: ...

    def finish(self) -> None:
        """Flush everything to the underlying stream (which stays open)."""


class _Passthrough:
    def __init__(self, out: BinaryIO) -> None:
        self._out = out

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._out.write(data)
        return len(data)

    def finish(self) -> None:
        pass


class _GzipWriter:
    # zlib's own gzip wrapper (wbits 31) writes mtime 0 and no name: a fixed header.
    def __init__(self, out: BinaryIO, level: int) -> None:
        self._out = out
        self._z = zlib.compressobj(level, zlib.DEFLATED, 31, 9)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        chunk = self._z.compress(data)
        if chunk:
            self._out.write(chunk)
        return len(data)

    def finish(self) -> None:
        self._out.write(self._z.flush(zlib.Z_FINISH))


class _ZstdWriter:
    def __init__(self, out: BinaryIO, level: int) -> None:
        self._out = out
        # threads=0: single-threaded frames are the same bytes on every machine. The checksum lets a reader
        # detect corruption inside a block.
        self._z = zstandard.ZstdCompressor(level=level, threads=0, write_checksum=True).compressobj()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        chunk = self._z.compress(bytes(data))
        if chunk:
            self._out.write(chunk)
        return len(data)

    def finish(self) -> None:
        self._out.write(self._z.flush())


def compressor(kind: Compression, out: BinaryIO, level: int | None = None) -> Compressor:
    if kind is Compression.GZIP:
        return _GzipWriter(out, 6 if level is None else level)
    if kind is Compression.ZSTD:
        return _ZstdWriter(out, 3 if level is None else level)
    return _Passthrough(out)


class _GzipReader(io.RawIOBase):
    """Multi-member gzip; NUL bytes after a complete member end the stream."""

    def __init__(self, raw: BinaryIO) -> None:
        super().__init__()
        self._raw = raw
        self._z = zlib.decompressobj(31)
        self._pending = b""
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        while not self._pending and not self._eof:
            self._fill(len(view))
        n = min(len(view), len(self._pending))
        view[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def _fill(self, want: int) -> None:
        if self._z.eof:
            rest = self._z.unused_data
            if not rest:
                rest = self._raw.read(_CHUNK)
            if not rest or not rest.strip(b"\0"):
                self._drain_padding()
                return
            self._z = zlib.decompressobj(31)
            data = rest
        else:
            data = self._z.unconsumed_tail or self._raw.read(_CHUNK)
            if not data:
                raise CompressionError("gzip stream is truncated")
        try:
            self._pending = self._z.decompress(data, max(want, _CHUNK))
        except zlib.error as err:
            raise CompressionError(f"gzip stream is corrupt: {err}") from None

    def _drain_padding(self) -> None:
        while chunk := self._raw.read(_CHUNK):
            if chunk.strip(b"\0"):
                raise CompressionError("gzip stream has trailing data")
        self._eof = True


class _ZstdReader(io.RawIOBase):
    """Multi-frame zstd; a frame cut short is an error (zstandard's stream reader would end quietly)."""

    def __init__(self, raw: BinaryIO) -> None:
        super().__init__()
        self._raw = raw
        self._z = zstandard.ZstdDecompressor().decompressobj()
        self._pending = b""
        self._started = False  # bytes of the current frame have been fed
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        while not self._pending and not self._eof:
            self._fill()
        n = min(len(view), len(self._pending))
        view[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def _fill(self) -> None:
        data = b""
        if self._z.eof:
            data = self._z.unused_data
            self._z = zstandard.ZstdDecompressor().decompressobj()
            self._started = False
        if not data:
            data = self._raw.read(_CHUNK)
        if not data:
            if self._started:
                raise CompressionError("zstd stream is truncated")
            self._eof = True
            return
        self._started = True
        try:
            self._pending = self._z.decompress(data)
        except zstandard.ZstdError as err:
            raise CompressionError(f"zstd stream is corrupt: {err}") from None


def decompress_stream(raw: BinaryIO) -> tuple[Compression, BinaryIO]:
    """Detect the compression of ``raw`` and return a stream of its uncompressed bytes."""
    buffered = raw if isinstance(raw, io.BufferedReader) else io.BufferedReader(_RawAdapter(raw), _CHUNK)
    kind = sniff(buffered.peek(4)[:4])
    if kind is Compression.GZIP:
        return kind, io.BufferedReader(_GzipReader(buffered), _CHUNK)  # type: ignore[arg-type]
    if kind is Compression.ZSTD:
        return kind, io.BufferedReader(_ZstdReader(buffered), _CHUNK)  # type: ignore[arg-type]
    return kind, buffered


class _RawAdapter(io.RawIOBase):
    def __init__(self, stream: BinaryIO) -> None:
        super().__init__()
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        if hasattr(self._stream, "readinto"):
            return self._stream.readinto(view) or 0
        data = self._stream.read(len(view))
        view[: len(data)] = data
        return len(data)
