"""The portable step cache: ``--cache-to`` writes one, ``--cache-from`` reads it, in a directory or a registry.

The local step cache (``builder.cache``) lives in one store and cannot leave it; CI machines start empty. A cache
carries chosen entries of it to another machine, as BuildKit's local and registry cache exporters and importers
do, with their options: ``type=local,dest=DIR``/``src=DIR`` with ``tag=`` (``latest`` by default, so several
caches can share one directory), or ``type=registry,ref=REPO:TAG`` (buildx's bare ``--cache-from REPO:TAG`` is
the same); ``mode=min|max`` (which entries to export: the caller's choice), ``compression=`` (``gzip`` by default,
``zstd``, ``uncompressed``) and ``ignore-error=true`` (a failed export only warns: the caller's to honour).

The format. One artifact: an OCI image manifest with

- ``artifactType`` ``application/vnd.pybuild.cache.v1+json``, so no tool mistakes it for a runnable image;
- ``config``: a blob of media type ``application/vnd.pybuild.cache.config.v1+json``, the canonical JSON
  ``{"version": 1, "entries": [...]}``, one object per cache entry, sorted by key: ``key``, ``record`` (the key's
  record, so a miss against an imported entry can be explained), ``layer`` (an index into the manifest's layers,
  or null for a step that changed no file), ``diff_id``, ``size`` (the layer's uncompressed size), ``history``,
  ``step``, ``stage``, ``line``, ``dockerfile``, ``image``, ``about``, ``created`` (seconds since the epoch) and
  ``parents`` (``[[descriptor, diff_id], ...]``, the layers under the step's, bottom first: a layer the cache
  holds is described as it is stored there, any other as the exporting store held it);
- ``layers``: each distinct layer once, compressed as asked and annotated ``dev.pybuild.diff_id``.

``cache_artifact`` makes it (the layers compressed into the store, the config and the manifest as bytes);
``export_cache`` writes it into a directory, an OCI image layout whose ``index.json`` names one manifest per tag
(``org.opencontainers.image.ref.name``; any OCI tool can copy, inspect or validate it, and ``skopeo copy`` can move
it to a registry); ``push_cache`` pushes the same bytes to a registry: the blobs first (those the repository has
are skipped, those known to live in another repository of the registry are mounted), the manifest last, under the
reference's tag, so a reader never sees a manifest whose blobs are missing.

Why this shape: the store keeps layers uncompressed (``builder.compressed``), but a cache travels, so its layers
are compressed once, through the same memo that ``--output`` uses. The diff_id annotation ties each compressed
blob to the uncompressed digest the local store names it by, so importing a layer is one streamed pass: read the
compressed blob (verified by its digest), decompress, and write it into the store verified against its diff_id.
An imported entry is then exactly what the local index would hold.

Writing a directory is atomic piece by piece and serialised: blobs go through the layout's content store, the
whole export runs under the layout's lock, ``index.json`` is replaced atomically, and only then are the blobs that
``index.json`` no longer reaches deleted, so a re-exported directory does not grow without bound and a reader sees
either the old cache or the new one. A reader that loaded the old one just before it was replaced may find a blob
gone; it reports that blob as missing. (A registry keeps what a replaced tag named until its own garbage
collection.)

Importing is lazy: loading reads the manifest and the config (the records), nothing else; a layer is read only
when ``fetch`` asks for it, which the solver does only when a build needs that layer's content. Both kinds of
cache are read through one small interface (``_Source``: read a document, open a layer, tell whether a layer is
there), so the checks are the same. From a registry, a blob goes through the store's content store (verified
against its digest as it is written, with the registry client's retries) and is removed once read, unless the
store already held it (a layer stored uncompressed is the layer itself: it goes straight into the store).

Importing is forgiving only where BuildKit is: a directory, tag or registry reference that is not there (or a
registry that cannot be reached) gives an empty cache with a warning. Anything that is there but wrong (a malformed
or unverifiable document, a foreign artifact, an entry pointing at a layer that does not exist) is refused, naming
the ``--cache-from`` value.
"""

from __future__ import annotations

import io
import re
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from builder.attrs import csv_fields, go_bool, key_values, suggest
from builder.cache import CacheEntry
from builder.compressed import CompressedLayers
from builder.errors import BuildError, UsageError
from builder.limits import DEFAULT_LIMITS, limit_hint
from builder.root import Store
from builder.snapshot import remove_dir
from oci import mediatypes as mt
from oci.apply import ApplyLimits
from oci.canonical import MAX_DOCUMENT_SIZE, canonical_json, load_json_object
from oci.compression import Compression, decompress_stream
from oci.descriptor import Descriptor
from oci.digest import Digest, Hasher
from oci.errors import (
    BlobNotFound,
    CompressionError,
    InvalidDigest,
    InvalidDocument,
    LayoutError,
    LimitExceeded,
    OCIError,
    VerificationError,
)
from oci.layout import INDEX_FILE, LAYOUT_FILE, ImageLayout
from oci.manifest import Index, Manifest, parse_manifest
from oci.reference import Reference
from oci.store import ContentStore, atomic_file

if TYPE_CHECKING:
    from builder.remote import Remote
    from oci.registry import RegistryClient

__all__ = [
    "CACHE_ARTIFACT_TYPE",
    "CACHE_CONFIG_TYPE",
    "DIFF_ID_ANNOTATION",
    "CacheArtifact",
    "CacheSpec",
    "ImportedCache",
    "cache_artifact",
    "check_cache_destination",
    "export_cache",
    "parse_cache_option",
    "push_cache",
    "write_cache",
]

CACHE_ARTIFACT_TYPE = "application/vnd.pybuild.cache.v1+json"
CACHE_CONFIG_TYPE = "application/vnd.pybuild.cache.config.v1+json"
#: The annotation on each layer of a cache manifest: the digest of the layer uncompressed.
DIFF_ID_ANNOTATION = "dev.pybuild.diff_id"
FORMAT_VERSION = 1
#: A cache config larger than this is refused (records of COPY steps with many files make it much larger than an
#: image config, but it is still read into memory).
MAX_CONFIG_SIZE = 64 * 1024 * 1024

CACHE_TO = "--cache-to"
CACHE_FROM = "--cache-from"
_MODES = ("min", "max")
_TYPES = ("local", "registry")
#: BuildKit's other cache backends: known, not available yet.
_LATER_TYPES = ("inline", "gha", "s3", "azblob")
#: The attributes of each flag and type; the first says where the cache is.
_KEYS = {
    (CACHE_TO, "local"): ("dest", "mode", "compression", "tag", "ignore-error"),
    (CACHE_FROM, "local"): ("src", "tag"),
    (CACHE_TO, "registry"): ("ref", "mode", "compression", "ignore-error"),
    (CACHE_FROM, "registry"): ("ref",),
}
_EXAMPLES = {"local": "DIR", "registry": "REGISTRY/REPOSITORY:TAG"}
#: BuildKit attributes whose only value pybuild's format can honour is true: accepted then, refused otherwise.
_ALWAYS_TRUE = {
    CACHE_TO: {
        "oci-mediatypes": "the cache is always written with OCI media types",
        "image-manifest": "the cache is always one OCI image manifest",
    },
    CACHE_FROM: {},
}
#: BuildKit attributes that change nothing here: every layer is compressed as asked anyway.
_NO_OPS = {CACHE_TO: {"force-compression"}, CACHE_FROM: set()}
#: BuildKit attributes pybuild does not implement, with the reason it gives.
_REFUSED = {
    CACHE_TO: {"compression-level": "layers are compressed once at a fixed level (gzip 4, zstd 3) and reused"},
    CACHE_FROM: {"digest": "a cache is chosen by tag= (type=local) or by ref= (type=registry, which takes @DIGEST)"},
}
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class CacheSpec:
    """One ``--cache-to`` or ``--cache-from``. ``type=local``: ``path`` is ``dest`` for the one, ``src`` for the
    other, and ``tag`` the tag in it; ``type=registry``: ``ref``. ``mode``, ``compression`` and ``ignore_error``
    matter only when exporting."""

    type: str
    path: Path | None = None
    mode: str = "min"
    compression: Compression = Compression.GZIP
    tag: str = "latest"
    ref: Reference | None = None
    ignore_error: bool = False

    @property
    def location(self) -> str:
        """Where the cache is, as the user would write it: the directory or the reference."""
        return str(self.ref) if self.ref is not None else str(self.path)


# ---------------------------------------------------------------------------------------------------- parsing


def _not_yet(flag: str, kind: str) -> BuildError:
    return BuildError(
        f"{flag} type={kind} is not supported yet",
        hint=f"use {flag} type=local,{'dest' if flag == CACHE_TO else 'src'}=DIR or type=registry,ref=REPO:TAG",
    )


def parse_cache_option(text: str, flag: str) -> CacheSpec:
    """Parse one ``--cache-to`` or ``--cache-from`` value (``flag`` says which) as buildx does: CSV ``key=value``
    fields, keys lowercased, and a value without ``=`` is ``type=registry,ref=VALUE``. Wrong values are
    ``UsageError``; BuildKit's other cache types are a ``BuildError`` saying they are not supported yet."""
    if flag not in (CACHE_TO, CACHE_FROM):
        raise ValueError(f"flag must be {CACHE_TO} or {CACHE_FROM}, not {flag!r}")
    if not text.strip():
        raise UsageError(f"{flag}: empty value")
    fields = csv_fields(text, flag)
    if "=" not in text:
        if len(fields) != 1:  # buildx makes one cache of each; pybuild takes one value per flag
            raise UsageError(f"{flag} {text!r}: one registry reference per {flag} (repeat the flag for more)")
        fields = ["type=registry", f"ref={fields[0].strip()}"]
    attrs = key_values(fields, flag)
    kind = attrs.pop("type", "")
    if not kind:
        example = "type=registry,ref=REPO:TAG" if "ref" in attrs else f"type=local,{_KEYS[flag, 'local'][0]}=DIR"
        raise UsageError(f"{flag} {text!r}: type is required (e.g. {example})")
    if kind in _LATER_TYPES:
        raise _not_yet(flag, kind)
    if kind not in _TYPES:
        raise UsageError(f"{flag}: unknown cache type {kind!r}{suggest(kind, _TYPES + _LATER_TYPES)}")
    where = f"{flag} type={kind}"
    keys = _KEYS[flag, kind]
    other = CACHE_FROM if flag == CACHE_TO else CACHE_TO
    for key, value in attrs.items():
        if key in keys:
            continue
        if key in _NO_OPS[flag]:
            go_bool(where, key, value)
        elif key in _ALWAYS_TRUE[flag]:
            if not go_bool(where, key, value):
                raise UsageError(f"{where}: {key}=false is not supported ({_ALWAYS_TRUE[flag][key]})")
        elif key in _REFUSED[flag]:
            raise UsageError(f"{where}: {key} is not supported by pybuild: {_REFUSED[flag][key]}")
        elif key in _KEYS[other, kind] or any(key in table[other] for table in (_NO_OPS, _ALWAYS_TRUE, _REFUSED)):
            raise UsageError(f"{where}: {key} is an attribute of {other}, not {flag}")
        elif owner := next((t for t in _TYPES if key in _KEYS[flag, t]), None):
            hint = "a registry cache's tag is part of ref (ref=REPO:TAG)" if key == "tag" else ""
            raise UsageError(f"{where}: {key} is an attribute of type={owner}, not type={kind}", hint=hint)
        else:
            raise UsageError(f"{where}: unknown attribute {key!r}{suggest(key, keys)}")

    location_key = keys[0]
    location = attrs.get(location_key, "")
    if not location:
        raise UsageError(f"{where}: {location_key} is required (e.g. {where},{location_key}={_EXAMPLES[kind]})")
    mode = attrs.get("mode", "min")
    if mode not in _MODES:
        raise UsageError(f"{where}: mode={mode!r} is not min or max")
    compression = Compression.GZIP
    if "compression" in attrs:
        try:
            compression = Compression.parse(attrs["compression"])
        except ValueError as err:
            raise UsageError(f"{where}: {err}") from None
    ignore_error = go_bool(where, "ignore-error", attrs["ignore-error"]) if "ignore-error" in attrs else False
    if kind == "registry":
        ref = _parse_ref(location, flag, where)
        return CacheSpec(kind, mode=mode, compression=compression, ref=ref, ignore_error=ignore_error)
    tag = attrs.get("tag", "latest")
    if not _TAG.fullmatch(tag):
        raise UsageError(f"{where}: tag={tag!r} is not a valid tag (letters, digits, _ . -; at most 128)")
    return CacheSpec(kind, Path(location), mode, compression, tag, ignore_error=ignore_error)


def _parse_ref(text: str, flag: str, where: str) -> Reference:
    """A cache's registry reference, normalised as Docker does (no tag means ``latest``, as in BuildKit)."""
    try:
        ref = Reference.parse(text)
    except OCIError as err:
        raise UsageError(f"{where}: {err}") from None
    if flag == CACHE_TO and ref.digest is not None:
        raise UsageError(f"{where}: ref={text!r} names a digest; a cache is pushed under a tag (ref=REPO:TAG)")
    return ref


# ---------------------------------------------------------------------------------------------------- export


def _to_where(dest: Path) -> str:
    return f"{CACHE_TO} type=local,dest={dest}"


def _from_where(src: Path) -> str:
    return f"{CACHE_FROM} type=local,src={src}"


def _registry_where(flag: str, ref: Reference) -> str:
    return f"{flag} type=registry,ref={ref}"


def check_cache_destination(dest: Path | None, store: Store | None = None) -> None:
    """Refuse, before any work, a ``--cache-to`` directory that could not be written: a file, pybuild's own store
    (whose untagged blobs the clean-up would delete), or a directory that is neither empty nor an OCI image layout.
    A missing directory is fine: it is created. ``None`` (a registry's ``CacheSpec.path``) has nothing to check."""
    if dest is None:
        return
    where = _to_where(dest)
    if not dest.exists():
        return
    if not dest.is_dir():
        raise UsageError(f"{where}: {dest} is not a directory")
    if store is not None and dest.resolve() == store.root.resolve():
        raise UsageError(f"{where}: {dest} is pybuild's own store")
    if not (dest / LAYOUT_FILE).exists() and any(dest.iterdir()):
        raise UsageError(f"{where}: {dest} is neither empty nor an OCI image layout; refusing to write into it")


@dataclass(frozen=True, slots=True)
class _Layer:
    """A layer as the cache holds it, and how big it is uncompressed."""

    packed: Descriptor  # compressed as asked, annotated with its diff_id
    diff_id: Digest
    size: int


@dataclass(frozen=True, slots=True)
class CacheArtifact:
    """A cache ready to be written anywhere: the manifest (``raw``, described by ``manifest``), the config
    (``raw_config``, described by ``config``) and the compressed layers, whose blobs are in the store."""

    manifest: Descriptor
    raw: bytes
    config: Descriptor
    raw_config: bytes
    layers: tuple[Descriptor, ...]

    @property
    def blobs(self) -> tuple[Descriptor, ...]:
        """What the manifest refers to: the layers, then the config."""
        return (*self.layers, self.config)


def cache_artifact(
    entries: Sequence[CacheEntry],
    store: Store,
    *,
    compression: Compression,
    where: str,
    on_status: Callable[[str], None] | None = None,
) -> CacheArtifact:
    """The cache of ``entries`` (the first of two with one key wins): each distinct layer compressed as
    ``compression`` into the store (once, memoised), the config and the manifest. ``where`` names the export in
    errors."""
    chosen = sorted({str(e.key): e for e in reversed(entries)}.values(), key=lambda e: str(e.key))  # first wins
    layers = _compress_layers(chosen, store, compression, where, on_status)
    positions = {diff_id: i for i, diff_id in enumerate(layers)}
    config = canonical_json({"version": FORMAT_VERSION, "entries": [_entry_json(e, layers, positions) for e in chosen]})
    if len(config) > MAX_CONFIG_SIZE:
        raise BuildError(f"{where}: the cache config would be {len(config)} bytes, more than {MAX_CONFIG_SIZE}")
    manifest = Manifest(
        config=Descriptor(CACHE_CONFIG_TYPE, Digest.of_bytes(config), len(config)),
        layers=tuple(layer.packed for layer in layers.values()),
        artifact_type=CACHE_ARTIFACT_TYPE,
    )
    raw = manifest.encode()
    descriptor = Descriptor(mt.OCI_MANIFEST, Digest.of_bytes(raw), len(raw), artifact_type=CACHE_ARTIFACT_TYPE)
    return CacheArtifact(descriptor, raw, manifest.config, config, manifest.layers)


def write_cache(
    spec: CacheSpec,
    entries: Sequence[CacheEntry],
    store: Store,
    *,
    remote: Remote | None = None,
    on_status: Callable[[str], None] | None = None,
) -> Descriptor:
    """``--cache-to``: export ``entries`` as ``spec`` says (``remote`` is the registry access a registry cache
    needs); return the descriptor of the cache manifest. ``spec.ignore_error`` is the caller's to honour."""
    if spec.type == "registry":
        assert spec.ref is not None
        if remote is None:
            raise BuildError(f"{_registry_where(CACHE_TO, spec.ref)}: this build has no registry access")
        return push_cache(spec.ref, entries, store, remote, compression=spec.compression, on_status=on_status)
    assert spec.path is not None
    return export_cache(spec.path, entries, store, compression=spec.compression, tag=spec.tag, on_status=on_status)


def export_cache(
    dest: Path,
    entries: Sequence[CacheEntry],
    store: Store,
    *,
    compression: Compression,
    tag: str = "latest",
    on_status: Callable[[str], None] | None = None,
) -> Descriptor:
    """Write ``entries`` into the cache directory ``dest`` under ``tag`` (see the module docstring) and delete the
    blobs ``dest`` no longer reaches; return the descriptor of the cache manifest."""
    dest = Path(dest)
    where = _to_where(dest)
    check_cache_destination(dest, store)
    artifact = cache_artifact(entries, store, compression=compression, where=where, on_status=on_status)
    descriptor = artifact.manifest
    created = not dest.exists()
    try:
        layout = ImageLayout.open(dest, create=True)
        layout.sweep()
        if on_status is not None:
            on_status(f"writing cache {descriptor.digest} into {dest}")
        with layout.locked():  # one exporter at a time: the clean-up must not delete another's new blobs
            _copy_blobs(layout.store, store.layout.store, artifact.layers)
            layout.store.put_bytes(artifact.raw_config)
            layout.store.put_bytes(artifact.raw)
            index = layout.index()
            kept = tuple(d for d in index.manifests if d.ref_name != tag)
            _write_index(layout, replace(index, manifests=(*kept, descriptor.with_ref_name(tag))))
            _remove_unreachable(layout)
    except OCIError as err:
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        raise BuildError(f"{where}: {err}") from None
    except BaseException:
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        raise
    try:
        (dest / "ingest").rmdir()  # the content store's working directory: not part of a layout
    except OSError:
        pass
    return descriptor


def push_cache(
    ref: Reference,
    entries: Sequence[CacheEntry],
    store: Store,
    remote: Remote,
    *,
    compression: Compression,
    on_status: Callable[[str], None] | None = None,
) -> Descriptor:
    """Push the cache of ``entries`` to ``ref``'s repository under its tag: the blobs the repository lacks
    (mounted when another repository of the registry is known to hold them, else uploaded), then the manifest.
    Returns the descriptor of the cache manifest."""
    from oci.transfer import push_blobs  # imports the registry client (and requests) only when a cache is pushed

    where = _registry_where(CACHE_TO, ref)
    if ref.digest is not None or not ref.tag:
        raise UsageError(f"{where}: a cache is pushed under a tag (ref=REPO:TAG)")
    artifact = cache_artifact(entries, store, compression=compression, where=where, on_status=on_status)
    blobs = store.layout.store

    def open_blob(desc: Descriptor) -> BinaryIO:
        if desc.digest == artifact.config.digest:
            return io.BytesIO(artifact.raw_config)
        return open(blobs.path(desc.digest), "rb")  # seekable, for resumed chunks; the registry checks the digest

    digests = [desc.digest for desc in artifact.blobs]
    if on_status is not None:
        on_status(f"pushing cache {artifact.manifest.digest} to {ref}")
    try:
        sources = remote.sources.repositories(ref.registry, digests)
        push_blobs(remote.client, ref, artifact.blobs, open_blob, sources=sources, on_status=on_status)
        remote.client.put_manifest(ref, artifact.raw, artifact.manifest.media_type)
    except OCIError as err:
        raise BuildError(f"{where}: {err}") from None
    remote.sources.add(ref.registry, ref.repository, digests)
    return artifact.manifest


def _compress_layers(
    entries: Sequence[CacheEntry],
    store: Store,
    kind: Compression,
    where: str,
    on_status: Callable[[str], None] | None,
) -> dict[Digest, _Layer]:
    """Each distinct layer of ``entries``, by diff_id, compressed as ``kind`` into the store (once, memoised)."""
    compressed = CompressedLayers(store, on_status=on_status)
    layers: dict[Digest, _Layer] = {}
    for entry in entries:
        if entry.layer is None or entry.diff_id in layers:
            continue
        if entry.diff_id is None:
            raise BuildError(f"{where}: cache entry {entry.key} has a layer but no diff_id")
        try:
            packed = compressed.get(entry.layer, kind)
            size = _plain_size(store.layout.store, entry.layer, entry.diff_id)
        except OCIError as err:
            raise BuildError(f"{where}: the layer of {entry.step!r} ({entry.key.short}): {err}") from None
        annotated = Descriptor(kind.layer_media_type, packed.digest, packed.size).with_annotations(
            **{DIFF_ID_ANNOTATION: str(entry.diff_id)}
        )
        layers[entry.diff_id] = _Layer(annotated, entry.diff_id, size)
    return layers


def _plain_size(blobs: ContentStore, layer: Descriptor, diff_id: Digest) -> int:
    """The uncompressed size of ``layer``: its own size when it is stored uncompressed (and then its digest must be
    its diff_id), else counted by decompressing it, which checks the diff_id on the way."""
    if mt.layer_compression(layer.media_type) == Compression.NONE.value:
        if layer.digest != diff_id:
            raise InvalidDocument(f"uncompressed layer {layer.digest} is recorded with diff_id {diff_id}")
        return layer.size
    hasher = Hasher(diff_id.algorithm)
    with blobs.open(layer.digest, layer.size) as blob:
        _, plain = decompress_stream(blob)
        while chunk := plain.read(_CHUNK):
            hasher.update(chunk)
        _drain(blob)
    if hasher.digest() != diff_id:
        raise InvalidDocument(f"layer {layer.digest} uncompressed has digest {hasher.digest()}, not {diff_id}")
    return hasher.size


def _entry_json(entry: CacheEntry, layers: Mapping[Digest, _Layer], positions: Mapping[Digest, int]) -> dict[str, Any]:
    def parent(layer: Descriptor, diff_id: Digest) -> list[Any]:
        held = layers.get(diff_id)
        return [(held.packed if held is not None else layer).to_json(), str(diff_id)]

    layer = layers.get(entry.diff_id) if entry.layer is not None and entry.diff_id is not None else None
    return {
        "key": str(entry.key),
        "record": _plain_json(entry.record),
        "layer": positions[layer.diff_id] if layer is not None else None,
        "diff_id": str(layer.diff_id) if layer is not None else None,
        "size": layer.size if layer is not None else 0,
        "history": entry.history,
        "step": entry.step,
        "stage": entry.stage,
        "line": entry.line,
        "dockerfile": entry.dockerfile,
        "image": entry.image,
        "about": dict(entry.about),
        "created": entry.created,
        "parents": [parent(layer, diff_id) for layer, diff_id in entry.parents],
    }


def _plain_json(value: Any) -> Any:
    """``value`` with every mapping a dict and every sequence a list, as JSON encodes them."""
    if isinstance(value, Mapping):
        return {str(k): _plain_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain_json(v) for v in value]
    return value


def _copy_blobs(target: ContentStore, source: ContentStore, blobs: Sequence[Descriptor]) -> None:
    for desc in blobs:
        if target.has(desc.digest) and target.size(desc.digest) == desc.size:
            continue  # the store publishes only verified blobs named by their digest: already there
        with source.open(desc.digest, desc.size) as stream:
            target.put(stream, desc.digest, desc.size)


def _write_index(layout: ImageLayout, index: Index) -> None:
    # The caller holds the layout's lock, so not layout.update_index (which takes it again: flock would deadlock).
    ingest = layout.store.ingest_dir
    ingest.mkdir(parents=True, exist_ok=True)
    with atomic_file(layout.root / INDEX_FILE, ingest) as f:
        f.write(index.encode())


def _remove_unreachable(layout: ImageLayout) -> None:
    """Delete the blobs that ``index.json`` no longer reaches (the caller holds the layout's lock)."""
    reachable = layout.reachable()
    for digest in list(layout.store):
        if digest not in reachable:
            layout.store.delete(digest)


def _drain(stream: BinaryIO) -> None:
    while stream.read(_CHUNK):
        pass


# ---------------------------------------------------------------------------------------------------- import


class _Unreachable(OCIError):
    """A registry that could not deliver a blob (after its client's retries): no cache, rather than a bad one."""


class _Source(Protocol):
    """Where an imported cache's blobs are read from. ``where`` names the ``--cache-from`` value in messages."""

    where: str

    def read(self, desc: Descriptor, limit: int) -> bytes:
        """A document blob, verified against ``desc``; larger than ``limit`` is ``InvalidDocument``."""
        ...

    def open(self, desc: Descriptor) -> AbstractContextManager[BinaryIO]:
        """A blob's bytes: a stream that raises ``VerificationError`` at its end if they are not ``desc``'s;
        ``BlobNotFound`` when the blob is not there."""
        ...

    def copy(self, desc: Descriptor, blobs: ContentStore) -> None:
        """Put the blob into ``blobs``, verified; ``BlobNotFound`` when it is not there."""
        ...

    def has(self, desc: Descriptor) -> bool:
        """Whether the blob is there, as far as can be told without reading it."""
        ...


class _LayoutSource:
    """A cache directory (``--cache-from type=local,src=DIR``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.where = _from_where(root)
        self._blobs = ImageLayout(root).store  # no I/O until a blob is read

    def read(self, desc: Descriptor, limit: int) -> bytes:
        return _read(self._blobs, desc, limit)

    def open(self, desc: Descriptor) -> AbstractContextManager[BinaryIO]:
        return self._blobs.open(desc.digest, desc.size)

    def copy(self, desc: Descriptor, blobs: ContentStore) -> None:
        with self._blobs.open(desc.digest, desc.size) as stream:
            blobs.put(stream, desc.digest, desc.size)

    def has(self, desc: Descriptor) -> bool:
        return self._blobs.has(desc.digest)


class _RegistrySource:
    """A registry repository (``--cache-from type=registry,ref=REF``). A blob is fetched only when read: into a
    private scratch directory of the store (a content store of its own, which verifies it as it is written; the
    client retries a broken download), read from there, and removed with the directory afterwards."""

    def __init__(self, client: RegistryClient, ref: Reference, store: Store) -> None:
        self.ref = ref
        self.where = _registry_where(CACHE_FROM, ref)
        self._client = client
        self._repository = Reference(ref.registry, ref.repository)
        self._store = store

    def read(self, desc: Descriptor, limit: int) -> bytes:
        if desc.size > limit:
            raise InvalidDocument(f"blob {desc.digest} is larger than {limit} bytes")
        with self.open(desc) as stream:
            return stream.read()

    @contextmanager
    def open(self, desc: Descriptor) -> Iterator[BinaryIO]:
        if self._store.layout.store.has(desc.digest):  # the store holds the compressed blob already: read it there
            with self._store.layout.store.open(desc.digest, desc.size) as stream:
                yield stream
            return
        # Fetched into a private directory, never into the store's blobs: removing it afterwards must not race with
        # another command that starts to use (or names) the same blob in the store.
        scratch_dir = self._store.scratch_dir("cache-blob")
        try:
            scratch = ContentStore(scratch_dir / "blobs", scratch_dir / "ingest")
            self.copy(desc, scratch)
            with scratch.open(desc.digest, desc.size) as stream:
                yield stream
        finally:
            remove_dir(scratch_dir)

    def copy(self, desc: Descriptor, blobs: ContentStore) -> None:
        from oci.registry import RegistryError, RegistryNotFound

        try:
            self._client.fetch_blob(self._repository, desc, blobs)
        except RegistryNotFound:
            where = f"{self.ref.registry}/{self.ref.repository}"
            raise BlobNotFound(f"blob {desc.digest} not found in {where}") from None
        except RegistryError as err:
            raise _Unreachable(str(err)) from None

    def has(self, desc: Descriptor) -> bool:
        return True  # a registry takes a manifest only when it holds the blobs the manifest names


class ImportedCache:
    """The entries of one imported cache, as the local index would hold them, and their layers (fetched one by one,
    on demand: see ``fetch``).

    ``warning`` is a one-line message when there was nothing to load (empty otherwise)."""

    def __init__(
        self,
        source: _Source,
        entries: Mapping[Digest, CacheEntry] | None = None,
        layers: Mapping[Digest, _Layer] | None = None,
        *,
        manifest: Descriptor | None = None,
        warning: str = "",
    ) -> None:
        self.source = source
        self.where = source.where
        self.manifest = manifest
        self.warning = warning
        self._entries = dict(entries or {})
        self._layers = dict(layers or {})

    @classmethod
    def open(cls, spec: CacheSpec, remote: Remote | None = None) -> ImportedCache:
        """The cache ``spec`` (a ``--cache-from``) names: ``load`` or ``pull``; ``remote`` is the registry access
        a registry cache needs."""
        if spec.type == "registry":
            assert spec.ref is not None
            if remote is None:
                raise BuildError(f"{_registry_where(CACHE_FROM, spec.ref)}: this build has no registry access")
            return cls.pull(spec.ref, remote)
        assert spec.path is not None
        return cls.load(spec.path, spec.tag)

    @classmethod
    def load(cls, src: Path, tag: str = "latest") -> ImportedCache:
        """Read the cache tagged ``tag`` in the directory ``src``. A missing directory or tag gives an empty cache
        with a warning; a cache that is there but malformed or unverifiable is a ``BuildError``."""
        src = Path(src)
        source = _LayoutSource(src)
        where = source.where
        if not (src / INDEX_FILE).is_file():
            reason = "it does not exist" if not src.exists() else f"it has no {INDEX_FILE}"
            return cls(source, warning=f"{where}: no cache imported ({reason})")
        try:
            layout = ImageLayout.open(src)
            descriptor = layout.resolve(tag)
        except LayoutError as err:
            raise BuildError(f"{where}: {err}") from None
        if descriptor is None:
            return cls(source, warning=f"{where}: no cache imported (no tag {tag!r} in {src})")
        return cls._parse(source, descriptor, None, f"tag {tag!r}")

    @classmethod
    def pull(cls, ref: Reference, remote: Remote) -> ImportedCache:
        """Read the cache ``ref`` names in its registry: the manifest and the config only. A reference the registry
        does not have, or a registry that cannot be reached or refuses access, gives an empty cache with a warning
        (as in BuildKit); a cache that is there but malformed or unverifiable is a ``BuildError``."""
        from oci.registry import RegistryError, RegistryNotFound

        source = _RegistrySource(remote.client, ref, remote.store)
        where = source.where
        try:
            descriptor, raw = remote.client.get_manifest(ref)
        except RegistryNotFound:
            return cls(source, warning=f"{where}: no cache imported ({ref} not found)")
        except RegistryError as err:
            return cls(source, warning=f"{where}: no cache imported ({err})")
        try:
            return cls._parse(source, descriptor, raw, str(ref))
        except _Unreachable as err:  # the config could not be fetched
            return cls(source, warning=f"{where}: no cache imported ({err})")

    @classmethod
    def _parse(cls, source: _Source, descriptor: Descriptor, raw: bytes | None, what: str) -> ImportedCache:
        """The cache whose manifest ``descriptor`` describes (``raw``, or read from ``source``)."""
        try:
            manifest = _read_manifest(source, descriptor, raw)
            layers = _manifest_layers(manifest)
            raws = _parse_config(load_json_object(source.read(manifest.config, MAX_CONFIG_SIZE), "config"), layers)
            sizes = _layer_sizes(raws, layers)
            known = {layer.digest: (layer, diff_id) for layer, diff_id in layers}
            loaded: dict[Digest, CacheEntry] = {}
            for item in raws:
                if item.entry.key in loaded:
                    raise InvalidDocument(f"cache config: key {item.entry.key} appears twice")
                loaded[item.entry.key] = _as_local(item, known, sizes)
        except BlobNotFound as err:
            raise BuildError(f"{source.where}: {what}: {err}") from None
        except _Unreachable:
            raise
        except OCIError as err:
            raise BuildError(f"{source.where}: {what} is not a usable pybuild cache: {err}") from None
        held = {diff_id: _Layer(layer, diff_id, sizes[diff_id]) for layer, diff_id in layers if diff_id in sizes}
        return cls(source, loaded, held, manifest=descriptor)

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[CacheEntry]:
        """Every entry, newest first."""
        return sorted(self._entries.values(), key=lambda e: (-e.created, str(e.key)))

    def get(self, key: Digest) -> CacheEntry | None:
        return self._entries.get(key)

    def candidates(self, stage: str, line: int) -> list[CacheEntry]:
        """The entries made at this stage and line, newest first (to explain a miss)."""
        return [e for e in self.entries() if e.stage == stage and e.line == line]

    def available(self, entry: CacheEntry) -> bool:
        """Whether ``entry``'s layer (if any) can be fetched, as far as can be told without fetching it: a cache
        directory's blob is there; a registry holds every blob its manifest names."""
        if entry.layer is None or entry.diff_id is None:
            return True
        layer = self._layers.get(entry.diff_id)
        return layer is not None and self.source.has(layer.packed)

    def fetch(self, entry: CacheEntry, blobs: ContentStore, limits: ApplyLimits = DEFAULT_LIMITS) -> None:
        """Copy ``entry``'s layer into ``blobs`` uncompressed, as the local store keeps it: the compressed blob is
        verified against its digest as it is read, and the result against the diff_id before it is published; it
        may not expand beyond ``limits.max_bytes``. Nothing to do for an entry without a layer, or when ``blobs``
        already has it."""
        if entry.layer is None or entry.diff_id is None or blobs.has(entry.diff_id):
            return
        layer = self._layers.get(entry.diff_id)
        if layer is None:
            raise BuildError(f"{self.where}: layer {entry.diff_id} is not in this cache")
        packed = layer.packed
        declared = mt.layer_compression(packed.media_type)
        try:
            if packed.digest == layer.diff_id:  # stored uncompressed: the blob is the layer
                self.source.copy(packed, blobs)
                return
            with self.source.open(packed) as blob:
                found, plain = decompress_stream(blob, max_bytes=limits.max_bytes, what=f"layer {layer.diff_id}")
                if found.value != declared:
                    raise CompressionError(f"it is {found.value}, but its media type says {declared}")
                with blobs.writer(layer.diff_id, layer.size) as writer:
                    writer.copy_from(plain)
                    _drain(blob)  # the compressed blob is verified against its digest once all of it is read
                    writer.commit()
        except BlobNotFound:
            raise BuildError(f"{self.where}: blob {packed.digest} is missing") from None
        except LimitExceeded as err:
            raise BuildError(f"{self.where}: {err}", hint=limit_hint(err)) from None
        except (VerificationError, CompressionError) as err:
            raise BuildError(f"{self.where}: blob {packed.digest} is corrupt: {err}") from None
        except OCIError as err:  # a registry that failed (after its retries)
            raise BuildError(f"{self.where}: blob {packed.digest}: {err}") from None


def _read(blobs: ContentStore, desc: Descriptor, limit: int) -> bytes:
    """A document blob, verified against its descriptor's digest and size."""
    if desc.size > limit:
        raise InvalidDocument(f"blob {desc.digest} is larger than {limit} bytes")
    with blobs.open(desc.digest, desc.size) as stream:
        return stream.read()


def _read_manifest(source: _Source, desc: Descriptor, raw: bytes | None) -> Manifest:
    if desc.media_type != mt.OCI_MANIFEST:
        raise InvalidDocument(f"the tag points at a {desc.media_type}, not an OCI image manifest")
    if raw is None:
        raw = source.read(desc, MAX_DOCUMENT_SIZE)
    manifest = parse_manifest(raw, desc.media_type, "cache manifest")
    if manifest.artifact_type != CACHE_ARTIFACT_TYPE:
        found = manifest.artifact_type or "no artifactType"
        raise InvalidDocument(f"the manifest has {found}, not {CACHE_ARTIFACT_TYPE}")
    if manifest.config.media_type != CACHE_CONFIG_TYPE:
        raise InvalidDocument(f"the config is a {manifest.config.media_type}, not a {CACHE_CONFIG_TYPE}")
    return manifest


def _manifest_layers(manifest: Manifest) -> list[tuple[Descriptor, Digest]]:
    out = []
    for number, layer in enumerate(manifest.layers):
        if mt.layer_compression(layer.media_type) is None:
            raise InvalidDocument(f"layer {number} has media type {layer.media_type}, not a layer's")
        text = layer.annotations.get(DIFF_ID_ANNOTATION)
        if text is None:
            raise InvalidDocument(f"layer {number} has no {DIFF_ID_ANNOTATION} annotation")
        out.append((layer, Digest.parse(text)))
    return out


# --- the config, checked field by field


@dataclass(frozen=True, slots=True)
class _Raw:
    """A config entry as written: its layer is an index into the manifest's layers."""

    entry: CacheEntry
    layer: int | None
    size: int
    parents: tuple[tuple[Descriptor, Digest], ...]


def _parse_config(data: dict[str, Any], layers: Sequence[tuple[Descriptor, Digest]]) -> list[_Raw]:
    version = data.get("version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise InvalidDocument(f"cache config version {version!r} is not {FORMAT_VERSION}")
    items = data.get("entries")
    if not isinstance(items, list):
        raise InvalidDocument("cache config: 'entries' must be an array")
    return [_parse_entry(item, number, layers) for number, item in enumerate(items)]


def _field(item: dict[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = item.get(name)
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        value = None  # JSON true is not a number
    if not isinstance(value, kind):
        raise InvalidDocument(f"{what}: {name!r} is missing or of the wrong type")
    return value


def _parse_entry(item: Any, number: int, layers: Sequence[tuple[Descriptor, Digest]]) -> _Raw:
    what = f"cache config entry {number}"
    if not isinstance(item, dict):
        raise InvalidDocument(f"{what} is not an object")
    try:
        key = Digest.parse(_field(item, "key", str, what))
        layer = item.get("layer")
        diff_text = item.get("diff_id")
        size = _field(item, "size", int, what)
        if size < 0:
            raise InvalidDocument(f"{what}: 'size' is negative")
        diff_id = None
        if layer is not None:
            if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < len(layers):
                raise InvalidDocument(f"{what}: layer {layer!r} is not one of the manifest's {len(layers)} layers")
            diff_id = Digest.parse(_field(item, "diff_id", str, what))
            if diff_id != layers[layer][1]:
                raise InvalidDocument(f"{what}: diff_id {diff_id} is not layer {layer}'s ({layers[layer][1]})")
        elif diff_text is not None:
            raise InvalidDocument(f"{what}: a diff_id without a layer")
        about = _field(item, "about", dict, what)
        if not all(isinstance(v, str) for v in about.values()):
            raise InvalidDocument(f"{what}: 'about' must be an object of strings")
        parents = []
        for pair in _field(item, "parents", list, what):
            if not isinstance(pair, list) or len(pair) != 2 or not isinstance(pair[1], str):
                raise InvalidDocument(f"{what}: a parent is not [descriptor, diff_id]")
            parents.append((Descriptor.from_json(pair[0], f"{what} parent"), Digest.parse(pair[1])))
        entry = CacheEntry(
            key=key,
            record=_field(item, "record", dict, what),
            layer=None,  # made local by _as_local
            diff_id=diff_id,
            history=_field(item, "history", str, what),
            step=_field(item, "step", str, what),
            stage=_field(item, "stage", str, what),
            line=_field(item, "line", int, what),
            dockerfile=_field(item, "dockerfile", str, what),
            image=_field(item, "image", str, what),
            about=about,
            created=float(_field(item, "created", (int, float), what)),
        )
    except InvalidDigest as err:
        raise InvalidDocument(f"{what}: {err}") from None
    return _Raw(entry, layer, size, tuple(parents))


def _layer_sizes(entries: Sequence[_Raw], layers: Sequence[tuple[Descriptor, Digest]]) -> dict[Digest, int]:
    """The uncompressed size of each layer an entry uses; entries that disagree make the config malformed."""
    sizes: dict[Digest, int] = {}
    for raw in entries:
        if raw.layer is None:
            continue
        diff_id = layers[raw.layer][1]
        if sizes.setdefault(diff_id, raw.size) != raw.size:
            raise InvalidDocument(f"cache config: layer {raw.layer} is given two uncompressed sizes")
    return sizes


def _as_local(raw: _Raw, known: Mapping[Digest, tuple[Descriptor, Digest]], sizes: Mapping[Digest, int]) -> CacheEntry:
    """The entry as the local index holds it: its layer and the parents the directory holds are uncompressed, named
    by their diff_id (what the local store keeps); other parents stay as the exporting store described them."""
    entry = raw.entry
    layer = None
    if raw.layer is not None and entry.diff_id is not None:
        layer = Descriptor(mt.OCI_LAYER, entry.diff_id, sizes[entry.diff_id])
    parents = []
    for desc, diff_id in raw.parents:
        held = known.get(desc.digest)
        if held is not None:
            if held[1] != diff_id:
                raise InvalidDocument(f"entry {entry.key}: parent {desc.digest} has diff_id {held[1]}, not {diff_id}")
            if diff_id in sizes:
                desc = Descriptor(mt.OCI_LAYER, diff_id, sizes[diff_id])
        parents.append((desc, diff_id))
    return replace(entry, layer=layer, last_used=entry.created, parents=tuple(parents))
