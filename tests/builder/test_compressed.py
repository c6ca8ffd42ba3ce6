"""Layers compressed once: the right bytes, deterministic, remembered, redone when the memo cannot be trusted."""

from __future__ import annotations

import io
import json
import random
import threading
import time
from collections.abc import Callable

import pytest
from tartools import compress

import builder.compressed
from builder.compressed import CompressedLayers, Precompressor
from builder.root import Store, open_store
from oci import mediatypes as mt
from oci.compression import Compression, decompress_stream
from oci.descriptor import Descriptor
from oci.digest import Digest
from oci.errors import BlobNotFound, DigestMismatch, InvalidDocument, UnsupportedMediaType
from oci.layer import LayerItem, write_layer
from oci.tarformat import EntryType, TarEntry

KINDS = [Compression.NONE, Compression.GZIP, Compression.ZSTD]


def _tar(seed: int = 1, size: int = 300_000) -> bytes:
    content = random.Random(seed).randbytes(size // 2) + b"a" * (size // 2)  # half noise, half compressible
    out = io.BytesIO()
    entry = TarEntry("data.bin", EntryType.FILE, size=len(content), mtime=1_700_000_000)
    write_layer([LayerItem(entry, lambda: io.BytesIO(content))], out, Compression.NONE)
    return out.getvalue()


def _put(store: Store, data: bytes, kind: Compression = Compression.NONE) -> Descriptor:
    blob = compress(kind, data)
    return Descriptor(kind.layer_media_type, store.layout.store.put_bytes(blob), len(blob))


def _plain(store: Store, desc: Descriptor) -> bytes:
    with store.layout.store.open(desc.digest, desc.size) as blob:
        kind, stream = decompress_stream(blob)
        assert kind.layer_media_type == desc.media_type
        return stream.read()


@pytest.fixture
def count_compressions(monkeypatch: pytest.MonkeyPatch) -> list[Compression]:
    calls: list[Compression] = []
    real = builder.compressed.compressor

    def counting(kind: Compression, out: object, level: int | None = None) -> object:
        calls.append(kind)
        return real(kind, out, level)  # type: ignore[arg-type]

    monkeypatch.setattr(builder.compressed, "compressor", counting)
    return calls


@pytest.mark.parametrize("kind", [Compression.GZIP, Compression.ZSTD])
def test_compresses_into_the_store_deterministically(store: Store, kind: Compression) -> None:
    data = _tar()
    layer = _put(store, data)
    got = CompressedLayers(store).get(layer, kind)
    assert got.media_type == kind.layer_media_type
    assert store.layout.store.has(got.digest) and store.layout.store.size(got.digest) == got.size
    assert _plain(store, got) == data
    # The same bytes a fresh compression of the same tar gives: the digest does not depend on when or where.
    assert got.digest == Digest.of_bytes(compress(kind, data))


@pytest.mark.parametrize("kind", KINDS)
def test_a_layer_already_compressed_so_is_returned_as_it_is(store: Store, kind: Compression) -> None:
    layer = _put(store, _tar(), kind)
    assert CompressedLayers(store).get(layer, kind) is layer
    assert not (store.root / "compressed").exists()


@pytest.mark.parametrize(
    ("source", "target"),
    [(Compression.GZIP, Compression.ZSTD), (Compression.ZSTD, Compression.GZIP), (Compression.GZIP, Compression.NONE)],
)
def test_a_layer_compressed_differently_is_decompressed_and_recompressed(
    store: Store, source: Compression, target: Compression
) -> None:
    data = _tar(seed=2)
    got = CompressedLayers(store).get(_put(store, data, source), target)
    assert got.media_type == target.layer_media_type
    assert _plain(store, got) == data
    assert got.digest == Digest.of_bytes(compress(target, data))


def test_the_memo_is_written_atomically_and_names_the_source(store: Store) -> None:
    layer = _put(store, _tar())
    layers = CompressedLayers(store)
    got = layers.get(layer, Compression.GZIP)
    memo = layers.memo_path(layer.digest, Compression.GZIP)
    assert memo == store.root / "compressed" / "gzip" / "sha256" / layer.digest.encoded
    assert json.loads(memo.read_bytes()) == {
        "digest": str(got.digest),
        "size": got.size,
        "source": str(layer.digest),
        "version": 2,
    }
    assert not [p for p in (store.root / "ingest").iterdir() if p.name.endswith(".part")]


def test_a_second_export_does_not_compress_again(store: Store, count_compressions: list[Compression]) -> None:
    layer = _put(store, _tar())
    first = CompressedLayers(store).get(layer, Compression.GZIP)
    assert count_compressions == [Compression.GZIP]
    # A new object (as a new command would make) reads the memo; nothing is compressed.
    again = CompressedLayers(open_store(store.root)).get(layer, Compression.GZIP)
    assert again == first
    assert count_compressions == [Compression.GZIP]
    # Another kind is another memo.
    CompressedLayers(store).get(layer, Compression.ZSTD)
    assert count_compressions == [Compression.GZIP, Compression.ZSTD]


def test_a_pruned_blob_is_compressed_again(store: Store, count_compressions: list[Compression]) -> None:
    layer = _put(store, _tar())
    first = CompressedLayers(store).get(layer, Compression.ZSTD)
    store.layout.store.delete(first.digest)
    again = CompressedLayers(store).get(layer, Compression.ZSTD)
    assert again == first and store.layout.store.has(first.digest)
    assert count_compressions == [Compression.ZSTD, Compression.ZSTD]


@pytest.mark.parametrize(
    "memo",
    [
        b"",
        b"not json",
        b'{"digest": "sha256:00", "size": 1, "source": "x", "version": 2}',
        b"[]",
        b'{"version": 2}',
    ],
)
def test_an_unreadable_memo_is_ignored(store: Store, count_compressions: list[Compression], memo: bytes) -> None:
    layer = _put(store, _tar())
    layers = CompressedLayers(store)
    path = layers.memo_path(layer.digest, Compression.GZIP)
    path.parent.mkdir(parents=True)
    path.write_bytes(memo)
    got = layers.get(layer, Compression.GZIP)
    assert count_compressions == [Compression.GZIP]
    assert _plain(store, got) == _plain(store, layer)
    assert json.loads(path.read_bytes())["digest"] == str(got.digest)


def test_a_memo_whose_blob_has_another_size_is_ignored(store: Store, count_compressions: list[Compression]) -> None:
    layer = _put(store, _tar())
    first = CompressedLayers(store).get(layer, Compression.GZIP)
    path = CompressedLayers(store).memo_path(layer.digest, Compression.GZIP)
    path.write_text(
        json.dumps({"digest": str(first.digest), "size": first.size + 1, "source": str(layer.digest), "version": 2})
    )
    assert CompressedLayers(store).get(layer, Compression.GZIP) == first
    assert count_compressions == [Compression.GZIP, Compression.GZIP]


def test_a_memo_for_another_source_is_ignored(store: Store, count_compressions: list[Compression]) -> None:
    one, two = _put(store, _tar(seed=1)), _put(store, _tar(seed=2))
    layers = CompressedLayers(store)
    compressed_one = layers.get(one, Compression.GZIP)
    # Copy one's memo over two's: it says it was made from another source, so it is not believed.
    path_two = layers.memo_path(two.digest, Compression.GZIP)
    path_two.write_bytes(layers.memo_path(one.digest, Compression.GZIP).read_bytes())
    compressed_two = CompressedLayers(store).get(two, Compression.GZIP)
    assert compressed_two != compressed_one
    assert _plain(store, compressed_two) == _plain(store, two)


def test_a_corrupt_source_fails_and_leaves_neither_blob_nor_memo(store: Store) -> None:
    data = _tar()
    layer = _put(store, data)
    path = store.layout.store.path(layer.digest)
    damaged = bytearray(path.read_bytes())
    damaged[-5000] ^= 0xFF  # in the compressible half, so the output would differ from the real one
    path.write_bytes(bytes(damaged))
    before = set(store.layout.store)
    layers = CompressedLayers(store)
    with pytest.raises(DigestMismatch):
        layers.get(layer, Compression.GZIP)
    assert set(store.layout.store) == before
    assert not layers.memo_path(layer.digest, Compression.GZIP).exists()
    assert not [p for p in (store.root / "ingest").iterdir() if p.name.endswith(".part")]


def test_a_source_that_is_not_what_its_media_type_says_is_refused(store: Store) -> None:
    plain = _put(store, _tar())
    lying = Descriptor(mt.OCI_LAYER_GZIP, plain.digest, plain.size)
    with pytest.raises(InvalidDocument, match="is none but its media type says gzip"):
        CompressedLayers(store).get(lying, Compression.ZSTD)


def test_what_is_not_a_layer_is_refused(store: Store) -> None:
    config = Descriptor(mt.OCI_CONFIG, store.layout.store.put_bytes(b"{}"), 2)
    with pytest.raises(UnsupportedMediaType):
        CompressedLayers(store).get(config, Compression.GZIP)


def test_status_says_what_is_compressed(store: Store) -> None:
    layer = _put(store, _tar())
    said: list[str] = []
    CompressedLayers(store, on_status=said.append).get(layer, Compression.ZSTD)
    CompressedLayers(store, on_status=said.append).get(layer, Compression.ZSTD)
    assert said == [f"compressing layer {layer.digest.short} (zstd)"]


# --- compressed in the background while a build runs


def _until(done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 20
    while not done():
        assert time.monotonic() < deadline, "the background compression did not get there"
        time.sleep(0.01)


def test_the_precompressor_leaves_the_export_nothing_to_compress(
    store: Store, count_compressions: list[Compression]
) -> None:
    layers = [_put(store, _tar(seed)) for seed in (1, 2)]
    config = Descriptor(mt.OCI_CONFIG, store.layout.store.put_bytes(b"{}"), 2)  # not a layer: skipped
    early = Precompressor(store, [Compression.GZIP, Compression.NONE, Compression.ZSTD, Compression.GZIP])
    assert early.kinds == (Compression.GZIP, Compression.ZSTD)  # uncompressed needs nothing; each kind once
    try:
        early.add([layers[0], config])
        early.add([layers[1], layers[0]])  # each layer once
        _until(lambda: len(count_compressions) == 4)  # the build goes on meanwhile
        early.wait()
    finally:
        early.close()
    assert sorted(count_compressions, key=lambda k: k.value) == [Compression.GZIP] * 2 + [Compression.ZSTD] * 2
    for layer in layers:
        for kind in (Compression.GZIP, Compression.ZSTD):
            got = CompressedLayers(open_store(store.root)).get(layer, kind)  # the export, a new object
            assert got.digest == Digest.of_bytes(compress(kind, _plain(store, layer)))
    assert len(count_compressions) == 4  # the export found every one made


def test_a_layer_the_precompressor_cannot_compress_is_left_to_the_export(store: Store) -> None:
    missing = Descriptor(mt.OCI_LAYER, Digest.of_bytes(b"not stored"), 10)  # e.g. a cache hit fetched later
    early = Precompressor(store, [Compression.GZIP])
    try:
        early.add([missing])
        early.wait()  # returns: the failure is not its to report
    finally:
        early.close()
    assert not CompressedLayers(store).memo_path(missing.digest, Compression.GZIP).exists()
    with pytest.raises(BlobNotFound):  # the export says what is wrong
        CompressedLayers(store).get(missing, Compression.GZIP)


def test_nothing_is_started_when_no_output_needs_compression(store: Store) -> None:
    early = Precompressor(store, [Compression.NONE])
    early.add([_put(store, _tar())])
    early.wait()
    early.close()
    assert not (store.root / "compressed").exists()


def test_closing_stops_the_compression_under_way_and_leaves_nothing(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    layer = _put(store, _tar(size=3 << 20))  # three chunks of reading: the stop is seen between them
    started, release = threading.Event(), threading.Event()
    real = builder.compressed.compressor

    class Held:
        def __init__(self, kind: Compression, out: object, level: int | None = None) -> None:
            self.inner = real(kind, out, level)  # type: ignore[arg-type]

        def write(self, data: bytes) -> int:
            started.set()
            release.wait()
            return self.inner.write(data)

        def finish(self) -> None:
            self.inner.finish()

        def abandon(self) -> None:
            self.inner.abandon()

    monkeypatch.setattr(builder.compressed, "compressor", Held)
    blobs = set(store.layout.store)
    early = Precompressor(store, [Compression.GZIP])
    early.add([layer])
    assert started.wait(10)
    closing = threading.Thread(target=early.close)
    closing.start()
    release.set()
    closing.join(10)
    assert not closing.is_alive()
    assert set(store.layout.store) == blobs
    assert not CompressedLayers(store).memo_path(layer.digest, Compression.GZIP).exists()
    assert not [p for p in (store.root / "ingest").iterdir() if p.name.endswith(".part")]


def test_waiting_says_which_layer_is_still_being_compressed(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    layer = _put(store, _tar())
    entered, release = threading.Event(), threading.Event()
    real = CompressedLayers.get

    def slow(self: CompressedLayers, desc: Descriptor, kind: Compression) -> Descriptor:
        entered.set()
        release.wait()
        return real(self, desc, kind)

    monkeypatch.setattr(CompressedLayers, "get", slow)
    said: list[str] = []
    early = Precompressor(store, [Compression.GZIP])
    try:
        early.add([layer])
        assert entered.wait(10)
        threading.Timer(0.2, release.set).start()
        early.wait(said.append)
    finally:
        early.close()
    assert said == [f"compressing layer {layer.digest.short}"]
    assert CompressedLayers(store).memo_path(layer.digest, Compression.GZIP).exists()


def test_once_the_build_is_over_what_is_still_queued_is_left_to_the_export(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = _put(store, _tar(1)), _put(store, _tar(2))
    entered = threading.Event()
    real = CompressedLayers.get

    def slow(self: CompressedLayers, desc: Descriptor, kind: Compression) -> Descriptor:
        entered.set()
        time.sleep(0.3)
        return real(self, desc, kind)

    monkeypatch.setattr(CompressedLayers, "get", slow)
    early = Precompressor(store, [Compression.GZIP])
    try:
        early.add([first, second])
        assert entered.wait(10)
        early.wait()  # the first is under way: it is finished; the second is dropped
    finally:
        early.close()
    memo = CompressedLayers(store).memo_path
    assert memo(first.digest, Compression.GZIP).exists()
    assert not memo(second.digest, Compression.GZIP).exists()
