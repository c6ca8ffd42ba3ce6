"""Layers compressed once: the store keeps layers uncompressed; outputs and pushes ask here for compressed copies.

Design: pybuild's store keeps the layers it builds UNCOMPRESSED (``application/vnd.oci.image.layer.v1.tar``, a
valid OCI media type), so compression never sits on a build's critical path: gzip -6 of a 300 MB layer takes
about 19 s, and a build that is only run, or exported with ``--output type=local``, never pays it. An output
(``--output``) and, later, a push compress each layer once, as ``--compression gzip|zstd|uncompressed`` asks
(gzip by default: every consumer reads it), and the result is remembered, so that the next export of the same
layer costs nothing.

``CompressedLayers.get(layer, kind)`` returns the layer itself when it already is ``kind``; otherwise it reads the
blob (verified by its digest as it is read), decompresses it if it is compressed differently, compresses it as
``kind`` and streams the result into the store's content store, which hashes it and publishes it atomically.
Compression is deterministic (gzip with mtime 0 and no name, single-threaded zstd; see ``oci.compression``), so
the same layer always gives the same digest, wherever and however often it is compressed.

The memo: ``ROOT/compressed/<kind>/<algorithm>/<hex>``, named by the digest of the source blob, holds the
canonical JSON ``{"digest": "sha256:…", "size": N, "source": "sha256:…", "version": 1}``. It is written to a
temporary file in ``ROOT/ingest/`` (swept, like half-written blobs, when its writer dies), fsynced and renamed
into place, so a reader sees a whole memo or none. A memo is only a hint: one that is unreadable, names another
source, or points at a blob that is gone (pruned) or has another size is ignored and the work is redone. Two
processes compressing the same layer at once write the same blob and the same memo; either rename wins.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from builder.root import Store
from oci import mediatypes as mt
from oci.canonical import canonical_json, load_json_object
from oci.compression import Compression, compressor, decompress_stream
from oci.descriptor import Descriptor
from oci.digest import Digest
from oci.errors import BlobNotFound, InvalidDigest, InvalidDocument, UnsupportedMediaType
from oci.store import atomic_file

__all__ = ["MEMO_DIR", "CompressedLayers"]

#: The directory under the store root that holds the memos.
MEMO_DIR = "compressed"
_MEMO_VERSION = 1
_MAX_MEMO = 4096
_CHUNK = 1 << 20


class CompressedLayers:
    """Compressed copies of the store's layers, made once and remembered (see the module docstring)."""

    def __init__(self, store: Store, *, on_status: Callable[[str], None] | None = None) -> None:
        self._store = store
        self._blobs = store.layout.store
        self._on_status = on_status
        self._known: dict[tuple[Digest, Compression], tuple[Digest, int]] = {}

    def get(self, layer: Descriptor, kind: Compression) -> Descriptor:
        """The descriptor of ``layer``'s content compressed as ``kind``; the blob is in the store when this returns."""
        declared = mt.layer_compression(layer.media_type)
        if declared is None:
            raise UnsupportedMediaType(f"layer {layer.digest} has media type {layer.media_type}, not a layer's")
        source_kind = Compression(declared)
        if source_kind is kind:
            return layer
        key = (layer.digest, kind)
        found = self._known.get(key) or self._read_memo(layer.digest, kind)
        if found is None:
            found = self._compress(layer, source_kind, kind)
            self._write_memo(layer.digest, kind, found)
        self._known[key] = found
        digest, size = found
        return Descriptor(kind.layer_media_type, digest, size, annotations=layer.annotations)

    def memo_path(self, source: Digest, kind: Compression) -> Path:
        """Where the memo for ``source`` compressed as ``kind`` lives (it may not exist)."""
        return self._store.root / MEMO_DIR / kind.value / source.algorithm / source.encoded

    # --- the work

    def _compress(self, layer: Descriptor, source_kind: Compression, kind: Compression) -> tuple[Digest, int]:
        if self._on_status is not None:
            self._on_status(f"compressing layer {layer.digest.short} ({kind.value})")
        with self._blobs.open(layer.digest, layer.size) as blob:
            found, plain = decompress_stream(blob)
            if found is not source_kind:
                raise InvalidDocument(
                    f"layer {layer.digest} is {found.value} but its media type says {source_kind.value}"
                )
            with self._blobs.writer() as writer:
                encoder = compressor(kind, writer)  # type: ignore[arg-type]  # the writer is a byte sink
                while chunk := plain.read(_CHUNK):
                    encoder.write(chunk)
                encoder.finish()
                _drain(blob)  # the source is verified against its digest only once all of it has been read
                return writer.commit(), writer.size

    # --- the memo

    def _read_memo(self, source: Digest, kind: Compression) -> tuple[Digest, int] | None:
        try:
            with open(self.memo_path(source, kind), "rb") as f:
                raw = f.read(_MAX_MEMO + 1)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if len(raw) > _MAX_MEMO:
            return None
        try:
            data = load_json_object(raw, "memo")
            if data.get("version") != _MEMO_VERSION or data.get("source") != str(source):
                return None
            digest, size = Digest.parse(data["digest"]), data["size"]
        except (InvalidDocument, InvalidDigest, KeyError, TypeError):
            return None
        if isinstance(size, bool) or not isinstance(size, int):
            return None
        try:
            if self._blobs.size(digest) != size:
                return None
        except BlobNotFound:  # the compressed copy was pruned
            return None
        return digest, size

    def _write_memo(self, source: Digest, kind: Compression, found: tuple[Digest, int]) -> None:
        digest, size = found
        data = canonical_json({"digest": str(digest), "size": size, "source": str(source), "version": _MEMO_VERSION})
        target = self.memo_path(source, kind)
        target.parent.mkdir(parents=True, exist_ok=True)
        ingest = self._blobs.ingest_dir
        ingest.mkdir(parents=True, exist_ok=True)
        # The temporary file is in the content store's ingest directory, so its sweep removes a dead writer's.
        with atomic_file(target, ingest) as f:
            f.write(data)


def _drain(stream: BinaryIO) -> None:
    while stream.read(_CHUNK):
        pass
