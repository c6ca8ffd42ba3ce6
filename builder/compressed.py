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

import collections
import contextlib
import os
import threading
from collections.abc import Callable, Iterable
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

__all__ = ["MEMO_DIR", "CompressedLayers", "Precompressor", "Stopped"]

#: The directory under the store root that holds the memos.
MEMO_DIR = "compressed"
_MEMO_VERSION = 2  # 2: gzip at level 4 (a memo of another version names a copy compressed otherwise)
_MAX_MEMO = 4096
_CHUNK = 1 << 20


class CompressedLayers:
    """Compressed copies of the store's layers, made once and remembered (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        *,
        on_status: Callable[[str], None] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self._store = store
        self._blobs = store.layout.store
        self._on_status = on_status
        self._stop = stop  # set: the compression under way is abandoned (Stopped), its blob unwritten
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
                try:
                    while chunk := plain.read(_CHUNK):
                        if self._stop is not None and self._stop.is_set():
                            raise Stopped(f"compressing layer {layer.digest.short} stopped")
                        encoder.write(chunk)
                    encoder.finish()
                except BaseException:
                    encoder.abandon()
                    raise
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


class Stopped(Exception):
    """A background compression was told to stop (the build ended or failed first)."""


class Precompressor:
    """Layers compressed in the background while the build goes on, for the outputs that will need them.

    A build with an output that carries compressed layers (``type=oci``, ``type=docker``, ``--push``) queues each
    layer of its image as soon as it is known: the base layers of each stage the image is made of when the stage
    starts, and each layer a step adds (built or cached) right after. One worker thread compresses them, in
    order, through ``CompressedLayers``, whose memos the export then finds, so a RUN or COPY that follows overlaps
    the compression of the layers before it instead of waiting for all of them at the end. The worker and its gzip
    threads run at the lowest priority (nice 19), so they use the CPU time the build leaves and never slow a step.

    Nothing here is reported: a layer the worker could not compress (a layer fetched only later, a full disk) is
    compressed again by the export, which says what went wrong. Once the build is over, ``wait`` lets the worker
    finish only the layer under way and leaves the rest to the export, at normal priority (on a busy machine,
    nice 19 could starve it). ``close`` stops the worker at its next MiB; an unfinished blob is dropped as any
    interrupted write is.
    """

    def __init__(self, store: Store, kinds: Iterable[Compression]) -> None:
        self._store = store
        self._kinds = tuple(dict.fromkeys(k for k in kinds if k is not Compression.NONE))
        self._queue: collections.deque[Descriptor] = collections.deque()
        self._seen: set[Digest] = set()
        self._current: Descriptor | None = None
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def kinds(self) -> tuple[Compression, ...]:
        return self._kinds

    def add(self, layers: Iterable[Descriptor]) -> None:
        """Queue ``layers`` (each once) to be compressed as every kind asked for."""
        if not self._kinds or self._stop.is_set():
            return
        with self._changed:
            for layer in layers:
                if layer.digest not in self._seen and mt.layer_compression(layer.media_type) is not None:
                    self._seen.add(layer.digest)
                    self._queue.append(layer)
            if self._queue and self._thread is None:
                thread = threading.Thread(target=self._work, name="precompress", daemon=True)
                thread.start()
                self._thread = thread
            self._changed.notify_all()

    def wait(self, on_status: Callable[[str], None] | None = None) -> None:
        """Return once the layer under way is compressed (or given up on); what is still queued is dropped, for
        the export to compress at normal priority."""
        with self._changed:
            self._queue.clear()
            current = self._current
            if current is not None and on_status is not None:
                on_status(f"compressing layer {current.digest.short}")
            while self._current is not None and self._thread is not None and self._thread.is_alive():
                self._changed.wait(1.0)

    def close(self) -> None:
        """Stop the worker (what it was compressing is dropped) and wait for it to end."""
        self._stop.set()
        with self._changed:
            self._queue.clear()
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join()

    def _work(self) -> None:
        with contextlib.suppress(OSError):  # threads this one starts (gzip's) inherit its priority
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        layers = CompressedLayers(self._store, stop=self._stop)
        while True:
            with self._changed:
                while not self._queue and not self._stop.is_set():
                    self._changed.wait()
                if self._stop.is_set():
                    return
                layer = self._current = self._queue.popleft()
            try:
                for kind in self._kinds:
                    layers.get(layer, kind)
            except Exception:  # noqa: BLE001  # only a head start: the export redoes this layer and reports
                pass
            finally:
                with self._changed:
                    self._current = None
                    self._changed.notify_all()


def _drain(stream: BinaryIO) -> None:
    while stream.read(_CHUNK):
        pass
