"""Layer compression: gzip and zstd, written deterministically, read by their magic bytes.

Writers never close the stream they write into. gzip output has no file name and mtime 0, so the same tar
gives the same bytes. Readers sniff the first bytes rather than trusting a media type, accept multi-member
gzip and multi-frame zstd, and treat NUL padding after the last gzip member as the end of the stream.
"""

from __future__ import annotations

import collections
import enum
import io
import os
import struct
import zlib
from typing import TYPE_CHECKING, BinaryIO, Protocol

from oci import mediatypes as mt
from oci.errors import CompressionError, LimitExceeded

if TYPE_CHECKING:
    import concurrent.futures

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
        """``gzip``, ``zstd``, ``none``, or buildx's name for none, ``uncompressed``; any case."""
        name = text.lower()
        try:
            return cls("none" if name == "uncompressed" else name)
        except ValueError:
            raise ValueError(f"unknown compression {text!r} (expected gzip, zstd or uncompressed)") from None


def sniff(prefix: bytes) -> Compression:
    if prefix.startswith(_GZIP_MAGIC):
        return Compression.GZIP
    if prefix.startswith(_ZSTD_MAGIC) or (
        len(prefix) >= 4 and 0x50 <= prefix[0] <= 0x5F and prefix[1:4] == b"\x2a\x4d\x18"
    ):
        return Compression.ZSTD  # a zstd frame, or a zstd skippable frame
    return Compression.NONE


class Compressor(Protocol):
    def write(self, data: bytes | bytearray | memoryview) -> int: ...

    def finish(self) -> None:
        """Flush everything to the underlying stream (which stays open)."""

    def abandon(self) -> None:
        """Stop without finishing (the output is incomplete): threads are let go, nothing more is written."""


class _Passthrough:
    def __init__(self, out: BinaryIO) -> None:
        self._out = out

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._out.write(data)
        return len(data)

    def finish(self) -> None:
        pass

    def abandon(self) -> None:
        pass


class _GzipWriter:
    """One gzip member, deflated on every CPU at once and the same bytes on every machine (as pigz does).

    The input is cut into blocks of ``_BLOCK`` bytes, counted from the start of the stream (so how the caller
    chunks its writes does not matter). Each block is deflated on its own, primed with the 32 KiB before it as a
    dictionary, and ends on a byte boundary (a sync flush; the last one finishes the stream), so the pieces
    concatenate into one valid deflate stream. A block whose first 64 KiB does not shrink at level 1 (random or
    already compressed bytes) is stored instead of deflated. None of this depends on the thread count. At most
    ``2 x CPUs`` blocks are in flight, so memory stays a few MiB whatever the layer's size.
    """

    def __init__(self, out: BinaryIO, level: int) -> None:
        self._out = out
        self._level = level
        # Magic, deflate, no flags, mtime 0, no extra flags, OS 3 (Unix): the header zlib's own wrapper writes.
        out.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03")
        self._crc = 0
        self._size = 0
        self._pending = bytearray()
        self._previous = b""
        self._inflight: collections.deque[concurrent.futures.Future[bytes]] = collections.deque()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        n = len(data)
        self._crc = zlib.crc32(data, self._crc)
        self._size += n
        self._pending += data
        while len(self._pending) >= _BLOCK:
            block = bytes(self._pending[:_BLOCK])
            del self._pending[:_BLOCK]
            self._submit(block, final=False)
        return n

    def _submit(self, block: bytes, final: bool) -> None:
        previous, self._previous = self._previous, block[-_WINDOW:]
        if final and self._pool is None:
            self._out.write(_deflate_block(block, previous, self._level, final))  # small: no threads
            return
        if self._pool is None:
            import concurrent.futures  # here: it costs every command that opens the store a few ms

            self._pool = concurrent.futures.ThreadPoolExecutor(_WORKERS, thread_name_prefix="gzip")
        self._inflight.append(self._pool.submit(_deflate_block, block, previous, self._level, final))
        while len(self._inflight) > 2 * _WORKERS or (final and self._inflight):
            self._out.write(self._inflight.popleft().result())

    def finish(self) -> None:
        try:
            self._submit(bytes(self._pending), final=True)
            self._pending = bytearray()
            self._out.write(struct.pack("<II", self._crc & 0xFFFFFFFF, self._size & 0xFFFFFFFF))
        finally:
            self.abandon()

    def abandon(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._inflight.clear()


_BLOCK = 1 << 20
_WINDOW = 32 << 10
_SAMPLE = 64 << 10
_WORKERS = max(1, min(8, os.cpu_count() or 1))


def _deflate_block(block: bytes, previous: bytes, level: int, final: bool) -> bytes:
    """``block`` as raw deflate, primed with ``previous``, ending byte-aligned (or ending the stream)."""
    if level > 0 and _incompressible(block):
        level = 0
    z = zlib.compressobj(level, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, previous)  # b"": no dictionary
    return z.compress(block) + z.flush(zlib.Z_FINISH if final else zlib.Z_SYNC_FLUSH)


def _incompressible(block: bytes) -> bool:
    sample = block[:_SAMPLE]
    if len(sample) < 4096:
        return False
    z = zlib.compressobj(1, zlib.DEFLATED, -15, 9)
    return len(z.compress(sample)) + len(z.flush()) >= len(sample) * 0.98


class _ZstdWriter:
    def __init__(self, out: BinaryIO, level: int) -> None:
        self._out = out
        # threads=0: single-threaded frames are the same bytes on every machine. The checksum lets a reader
        # detect corruption inside a block.
        import zstandard  # here, not at the top: most commands never meet a zstd stream

        self._z = zstandard.ZstdCompressor(level=level, threads=0, write_checksum=True).compressobj()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        chunk = self._z.compress(bytes(data))
        if chunk:
            self._out.write(chunk)
        return len(data)

    def finish(self) -> None:
        self._out.write(self._z.flush())

    def abandon(self) -> None:
        pass


#: gzip's level when none is given. Measured on the benchmark's layers (bench/): zlib's level 4 writes within 1.5%
#: of level 5's bytes at 1.1-1.3x its speed (and level 5 is ~1.5x faster than level 6 for ~0.5% more), and about
#: what the peers' Go deflate at its default writes: 2% more on a tree of JavaScript, 5% less on apt's files.
GZIP_LEVEL = 4


def compressor(kind: Compression, out: BinaryIO, level: int | None = None) -> Compressor:
    if kind is Compression.GZIP:
        return _GzipWriter(out, GZIP_LEVEL if level is None else level)
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


class _ZstdFrames:
    """Follows the frame structure of a zstd stream (headers and block sizes, RFC 8878) without decompressing
    it, to tell whether the stream ended between frames. zstandard's stream reader ends quietly in the middle
    of a frame; its one-shot decompressor would notice, but has no bound on the memory a bomb can take."""

    def __init__(self) -> None:
        self._state = "magic"
        self._need = 4
        self._buf = bytearray()
        self._skip = 0
        self._checksum = False

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        pos, end = 0, len(view)
        while pos < end:
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
                continue
            take = min(self._need - len(self._buf), end - pos)
            self._buf += view[pos : pos + take]
            pos += take
            if len(self._buf) == self._need:
                header = bytes(self._buf)
                self._buf.clear()
                self._advance(header)

    def _expect(self, state: str, need: int) -> None:
        self._state, self._need = state, need

    def _advance(self, header: bytes) -> None:
        state = self._state
        if state == "magic":
            if header == _ZSTD_MAGIC:
                self._expect("descriptor", 1)
            elif header[1:] == b"\x2a\x4d\x18" and 0x50 <= header[0] <= 0x5F:
                self._expect("skippable", 4)
            else:
                raise CompressionError("zstd stream has data that is not a zstd frame")
        elif state == "skippable":
            self._skip = int.from_bytes(header, "little")
            self._expect("magic", 4)
        elif state == "descriptor":
            fhd = header[0]
            single = bool(fhd & 0x20)
            self._checksum = bool(fhd & 0x04)
            rest = (0 if single else 1) + (0, 1, 2, 4)[fhd & 3] + ((1 if single else 0), 2, 4, 8)[fhd >> 6]
            self._expect("frame header", rest) if rest else self._expect("block", 3)
        elif state == "frame header":
            self._expect("block", 3)
        elif state == "block":
            value = int.from_bytes(header, "little")
            kind, size = (value >> 1) & 3, value >> 3
            if kind == 3:
                raise CompressionError("zstd stream has a reserved block type")
            self._skip = 1 if kind == 1 else size  # an RLE block stores one byte
            if not value & 1:
                self._expect("block", 3)
            elif self._checksum:
                self._expect("checksum", 4)
            else:
                self._expect("magic", 4)
        else:  # checksum
            self._expect("magic", 4)

    def at_boundary(self) -> bool:
        return self._state == "magic" and not self._buf and not self._skip


class _Tee(io.RawIOBase):
    def __init__(self, raw: BinaryIO, frames: _ZstdFrames) -> None:
        super().__init__()
        self._raw = raw
        self._frames = frames

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._frames.feed(data)
        return data


class _ZstdReader(io.RawIOBase):
    """Multi-frame zstd with bounded memory; a stream cut in the middle of a frame is an error."""

    def __init__(self, raw: BinaryIO) -> None:
        import zstandard

        super().__init__()
        self._frames = _ZstdFrames()
        self._corrupt = zstandard.ZstdError
        self._reader = zstandard.ZstdDecompressor().stream_reader(
            _Tee(raw, self._frames), read_size=_CHUNK, read_across_frames=True, closefd=False
        )

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        try:
            n = self._reader.readinto(buffer)
        except self._corrupt as err:
            raise CompressionError(f"zstd stream is corrupt: {err}") from None
        if n == 0 and not self._frames.at_boundary():
            raise CompressionError("zstd stream is truncated")
        return n


def decompress_stream(
    raw: BinaryIO, *, max_bytes: int | None = None, what: str = "layer"
) -> tuple[Compression, BinaryIO]:
    """Detect the compression of ``raw`` and return a stream of its uncompressed bytes.

    With ``max_bytes``, reading more than that many uncompressed bytes raises ``LimitExceeded`` (naming ``what``)
    as they come out, so a decompression bomb is stopped at the bound rather than after it."""
    buffered = raw if isinstance(raw, io.BufferedReader) else io.BufferedReader(_RawAdapter(raw), _CHUNK)
    kind = sniff(buffered.peek(4)[:4])
    plain: BinaryIO = buffered
    if kind is Compression.GZIP:
        plain = io.BufferedReader(_GzipReader(buffered), _CHUNK)  # type: ignore[arg-type,assignment]
    elif kind is Compression.ZSTD:
        plain = io.BufferedReader(_ZstdReader(buffered), _CHUNK)  # type: ignore[arg-type,assignment]
    if max_bytes is not None:
        plain = io.BufferedReader(_Bounded(plain, max_bytes, what), _CHUNK)  # type: ignore[arg-type,assignment]
    return kind, plain


class _Bounded(io.RawIOBase):
    def __init__(self, stream: BinaryIO, limit: int, what: str) -> None:
        super().__init__()
        self._stream = stream
        self._left = limit
        self._limit = limit
        self._what = what

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        # One byte more than is left, to tell "exactly at the bound" from "over it".
        n = self._stream.readinto(view[: self._left + 1]) or 0  # type: ignore[attr-defined]
        if n > self._left:
            raise LimitExceeded.too_large(self._what, self._limit)
        self._left -= n
        return n


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
