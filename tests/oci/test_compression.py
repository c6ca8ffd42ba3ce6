"""Layer compression: deterministic gzip/zstd writers and a sniffing, strict, multi-member reader."""

from __future__ import annotations

import gzip
import io
import random
import struct
import zlib

import pytest
import zstandard

from oci import mediatypes as mt
from oci.compression import Compression, compressor, decompress_stream, sniff
from oci.errors import CompressionError, LimitExceeded, OCIError

KINDS = [Compression.NONE, Compression.GZIP, Compression.ZSTD]


def _random(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def _compress(kind: Compression, data: bytes, chunk: int = 65536, level: int | None = None) -> bytes:
    out = io.BytesIO()
    writer = compressor(kind, out, level)
    for i in range(0, len(data), chunk):
        assert writer.write(data[i : i + chunk]) == len(data[i : i + chunk])
    writer.finish()
    assert not out.closed
    return out.getvalue()


def _decompress(raw: bytes) -> tuple[Compression, bytes]:
    kind, stream = decompress_stream(io.BytesIO(raw))
    return kind, stream.read()


def _decompress_in_small_reads(raw: bytes, size: int = 777) -> bytes:
    _, stream = decompress_stream(io.BytesIO(raw))
    parts = []
    while chunk := stream.read(size):
        parts.append(chunk)
    return b"".join(parts)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", [0, 1, 511, 3_000_000])
def test_round_trip_random_bytes(kind: Compression, size: int) -> None:
    data = _random(size, seed=size)
    assert _decompress(_compress(kind, data)) == (kind, data)


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_compressible_bytes_in_small_reads(kind: Compression) -> None:
    data = b"".join(b"line %d of a very repetitive file\n" % (i % 100) for i in range(200_000))
    assert _decompress_in_small_reads(_compress(kind, data, chunk=1000)) == data


@pytest.mark.parametrize("kind", [Compression.GZIP, Compression.ZSTD])
def test_compressed_output_is_smaller_for_compressible_data(kind: Compression) -> None:
    data = b"a" * 100_000
    assert len(_compress(kind, data)) < 1000


def test_none_is_passthrough() -> None:
    data = _random(1000)
    assert _compress(Compression.NONE, data) == data


@pytest.mark.parametrize("kind", [Compression.GZIP, Compression.ZSTD])
def test_output_is_readable_by_reference_decompressors(kind: Compression) -> None:
    data = _random(100_000)
    raw = _compress(kind, data)
    if kind is Compression.GZIP:
        assert gzip.decompress(raw) == data
    else:
        assert zstandard.ZstdDecompressor().decompressobj().decompress(raw) == data


@pytest.mark.parametrize("kind", KINDS)
def test_same_input_gives_same_bytes(kind: Compression) -> None:
    data = _random(500_000) + b"z" * 500_000
    assert _compress(kind, data) == _compress(kind, data)
    # How the input is split into writes does not matter either.
    assert _compress(kind, data, chunk=4096) == _compress(kind, data, chunk=1 << 20)


def test_gzip_header_has_mtime_zero_and_no_file_name() -> None:
    raw = _compress(Compression.GZIP, b"hello")
    magic, method, flags, mtime = struct.unpack("<2sBBI", raw[:8])
    assert magic == b"\x1f\x8b"
    assert method == 8
    assert flags & 0x08 == 0  # FNAME
    assert flags & 0x10 == 0  # FCOMMENT
    assert mtime == 0


@pytest.mark.parametrize("kind", [Compression.GZIP, Compression.ZSTD])
def test_level_is_honoured(kind: Compression) -> None:
    data = b"a" * 100_000
    low = 0 if kind is Compression.GZIP else 1  # gzip level 0 stores, zstd level 1 is fastest
    assert len(_compress(kind, data, level=low)) > len(_compress(kind, data, level=9))


@pytest.mark.parametrize(
    ("prefix", "kind"),
    [
        (b"\x1f\x8b\x08\x00", Compression.GZIP),
        (b"\x1f\x8b", Compression.GZIP),
        (b"\x28\xb5\x2f\xfd", Compression.ZSTD),
        (b"\x28\xb5\x2f\xfd\x00\x00", Compression.ZSTD),
        (b"\x28\xb5\x2f", Compression.NONE),
        (b"\x1f", Compression.NONE),
        (b"", Compression.NONE),
        (b"ustar", Compression.NONE),
        (b"BZh9", Compression.NONE),
    ],
)
def test_sniff(prefix: bytes, kind: Compression) -> None:
    assert sniff(prefix) is kind


def test_uncompressed_stream_is_returned_as_is() -> None:
    data = b"plain tar bytes" * 100
    assert _decompress(data) == (Compression.NONE, data)
    assert _decompress(b"") == (Compression.NONE, b"")


def test_decompress_stream_accepts_a_buffered_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = _random(200_000)
    path = tmp_path / "blob"
    path.write_bytes(_compress(Compression.ZSTD, data))
    with open(path, "rb") as f:
        kind, stream = decompress_stream(f)
        assert (kind, stream.read()) == (Compression.ZSTD, data)


def test_multi_member_gzip_decompresses_to_the_concatenation() -> None:
    a, b, c = _random(1000, 1), _random(200_000, 2), b""
    raw = gzip.compress(a) + gzip.compress(b) + gzip.compress(c) + _compress(Compression.GZIP, b"tail")
    assert _decompress(raw) == (Compression.GZIP, a + b + c + b"tail")
    assert _decompress_in_small_reads(raw) == a + b + c + b"tail"


def test_multi_frame_zstd_decompresses_to_the_concatenation() -> None:
    a, b = _random(1000, 1), b"x" * 300_000
    cctx = zstandard.ZstdCompressor()
    raw = cctx.compress(a) + cctx.compress(b) + _compress(Compression.ZSTD, b"tail")
    assert _decompress(raw) == (Compression.ZSTD, a + b + b"tail")


@pytest.mark.parametrize("padding", [1, 511, 10240, 3 << 20])
def test_gzip_followed_by_nul_padding_is_accepted(padding: int) -> None:
    data = _random(5000)
    assert _decompress(gzip.compress(data) + b"\0" * padding) == (Compression.GZIP, data)


@pytest.mark.parametrize("garbage", [b"garbage", b"\x00\x00junk", b"\x1f", b"\x1f\x8b\x08"])
def test_gzip_followed_by_garbage_is_refused(garbage: bytes) -> None:
    with pytest.raises(CompressionError):
        _decompress(gzip.compress(b"data") + garbage)


def test_gzip_followed_by_garbage_after_long_padding_is_refused() -> None:
    with pytest.raises(CompressionError):
        _decompress(gzip.compress(b"data") + b"\0" * (3 << 20) + b"x")


@pytest.mark.parametrize("cut", [1, 4, 8, 100, 5000])
def test_truncated_gzip_is_refused(cut: int) -> None:
    raw = gzip.compress(_random(20_000))
    with pytest.raises(CompressionError):
        _decompress(raw[:-cut])


def test_gzip_with_only_a_header_is_refused() -> None:
    with pytest.raises(CompressionError):
        _decompress(gzip.compress(b"abc")[:10])


def test_gzip_with_bad_crc_is_refused() -> None:
    raw = bytearray(gzip.compress(b"hello world"))
    raw[-8] ^= 0xFF
    with pytest.raises(CompressionError):
        _decompress(bytes(raw))


def test_corrupt_gzip_is_refused() -> None:
    raw = bytearray(zlib.compress(b"x" * 1000))  # zlib, not gzip: wrong wrapper behind a gzip magic
    with pytest.raises(CompressionError):
        _decompress(b"\x1f\x8b" + bytes(raw))


def test_corrupt_zstd_frame_header_is_refused() -> None:
    with pytest.raises(CompressionError):
        _decompress(b"\x28\xb5\x2f\xfd" + b"\xff" * 32)


def test_corrupt_zstd_block_is_refused() -> None:
    raw = bytearray(zstandard.ZstdCompressor().compress(b"abc" * 100_000))
    raw[10] ^= 0xFF
    with pytest.raises(CompressionError):
        _decompress(bytes(raw))


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_zstd_is_refused(keep: float) -> None:
    raw = zstandard.ZstdCompressor().compress(_random(300_000))
    with pytest.raises(CompressionError):
        _decompress(raw[: int(len(raw) * keep)])


def test_zstd_with_trailing_garbage_is_refused() -> None:
    raw = zstandard.ZstdCompressor().compress(b"abc")
    with pytest.raises(CompressionError):
        _decompress(raw + b"\x01\x02\x03\x04 garbage")


def test_compression_error_is_an_oci_error() -> None:
    with pytest.raises(OCIError):
        _decompress(gzip.compress(b"x")[:-1])


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("gzip", Compression.GZIP),
        ("ZSTD", Compression.ZSTD),
        ("none", Compression.NONE),
        ("Gzip", Compression.GZIP),
        ("uncompressed", Compression.NONE),  # buildx's name for it (--output compression=uncompressed)
        ("Uncompressed", Compression.NONE),
    ],
)
def test_compression_parse(text: str, kind: Compression) -> None:
    assert Compression.parse(text) is kind


@pytest.mark.parametrize("text", ["", "gz", "bzip2", "xz", " gzip", "estargz", "uncompress"])
def test_compression_parse_refuses_unknown_names(text: str) -> None:
    with pytest.raises(ValueError, match="unknown compression"):
        Compression.parse(text)


def test_layer_media_types() -> None:
    assert Compression.NONE.layer_media_type == mt.OCI_LAYER
    assert Compression.GZIP.layer_media_type == mt.OCI_LAYER_GZIP
    assert Compression.ZSTD.layer_media_type == mt.OCI_LAYER_ZSTD


def test_zstd_skippable_frames_are_passed_over() -> None:
    payload = b"after the skippable frame" * 100
    skippable = b"\x50\x2a\x4d\x18" + (5).to_bytes(4, "little") + b"12345"
    stream = skippable + zstandard.ZstdCompressor().compress(payload)
    kind, plain = decompress_stream(io.BytesIO(stream))
    assert kind is Compression.ZSTD and plain.read() == payload
    with pytest.raises(CompressionError, match="truncated"):
        decompress_stream(io.BytesIO(stream[:10]))[1].read()


@pytest.mark.parametrize("checksum", [True, False])
@pytest.mark.parametrize("content_size", [True, False])
def test_zstd_frames_of_every_header_shape_end_cleanly(checksum: bool, content_size: bool) -> None:
    payload = random.Random(3).randbytes(300_000) + bytes(300_000)
    compressor = zstandard.ZstdCompressor(write_checksum=checksum, write_content_size=content_size)
    frames = compressor.compress(payload) + compressor.compress(b"second frame")
    assert decompress_stream(io.BytesIO(frames))[1].read() == payload + b"second frame"
    with pytest.raises(CompressionError, match="truncated"):
        decompress_stream(io.BytesIO(frames[:-3]))[1].read()


# ---------------------------------------------------------------------------------------------------- bounds


class _EndlessGzip(io.RawIOBase):
    """gzip members of 1 MiB of zeros, one after another, forever: a stream that expands without bound."""

    MEMBER = gzip.compress(bytes(1 << 20))

    def __init__(self) -> None:
        super().__init__()
        self.consumed = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        offset = self.consumed % len(self.MEMBER)
        n = min(len(view), len(self.MEMBER) - offset)
        view[:n] = self.MEMBER[offset : offset + n]
        self.consumed += n
        return n


def test_an_endless_stream_stops_at_max_bytes_while_it_is_read() -> None:
    raw = _EndlessGzip()
    _, plain = decompress_stream(raw, max_bytes=3 << 20, what="the endless layer")
    with pytest.raises(LimitExceeded, match="^the endless layer expands to more than the 3 MiB limit$") as caught:
        while plain.read(1 << 16):
            pass
    assert caught.value.bound == "bytes"
    # About one read-ahead chunk of compressed input (which would expand to 1 GiB): stopped at the bound.
    assert raw.consumed < 2 << 20


@pytest.mark.parametrize("kind", KINDS)
def test_max_bytes_allows_a_stream_of_exactly_that_size(kind: Compression) -> None:
    data = _random(100_000)
    _, plain = decompress_stream(io.BytesIO(_compress(kind, data)), max_bytes=len(data))
    assert plain.read() == data
    _, plain = decompress_stream(io.BytesIO(_compress(kind, data)), max_bytes=len(data) - 1)
    with pytest.raises(LimitExceeded, match="layer expands to more than the 99999-byte limit"):
        plain.read()


def test_gzip_bytes_do_not_depend_on_write_sizes_or_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """The parallel gzip writer cuts blocks by stream offset, so the same tar gives the same layer digest on a
    machine with one CPU or eight, however the tar writer chunks its output."""
    import oci.compression as compression

    text = b"".join(b"line %d of a file that compresses\n" % (i % 997) for i in range(120_000))
    data = _random(1_500_000) + text + _random(700_000, seed=2)
    reference = _compress(Compression.GZIP, data, chunk=len(data))
    assert _compress(Compression.GZIP, data, chunk=1000) == reference
    monkeypatch.setattr(compression, "_WORKERS", 1)
    assert _compress(Compression.GZIP, data, chunk=65536) == reference
    monkeypatch.setattr(compression, "_WORKERS", 7)
    assert _compress(Compression.GZIP, data, chunk=333_333) == reference
    assert gzip.decompress(reference) == data
    assert len(reference) < len(data) - len(text) // 2


def test_gzip_stores_blocks_that_do_not_shrink() -> None:
    import oci.compression as compression

    assert compression._incompressible(_random(1 << 20))
    assert not compression._incompressible(b"abc" * 400_000)
