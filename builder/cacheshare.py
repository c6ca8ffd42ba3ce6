"""The portable step cache: ``--cache-to type=local,dest=DIR`` writes one, ``--cache-from type=local,src=DIR`` reads it.

The local step cache (``builder.cache``) lives in one store and cannot leave it; CI machines start empty. A cache
directory carries chosen entries of it to another machine, as BuildKit's local cache exporter and importer do, with
their options: ``dest``/``src``, ``mode=min|max`` (which entries to export: the caller's choice), ``compression=``
(``gzip`` by default, ``zstd``, ``uncompressed``) and ``tag=`` (``latest`` by default), so several caches can share
one directory.

The format. DIR is an OCI image layout (any OCI tool can copy, inspect or validate it; ``skopeo copy`` can move it
to a registry). ``index.json`` names one OCI image manifest per tag (``org.opencontainers.image.ref.name``), with

- ``artifactType`` ``application/vnd.pybuild.cache.v1+json``, so no tool mistakes it for a runnable image;
- ``config``: a blob of media type ``application/vnd.pybuild.cache.config.v1+json``, the canonical JSON
  ``{"version": 1, "entries": [...]}``, one object per cache entry, sorted by key: ``key``, ``record`` (the key's
  record, so a miss against an imported entry can be explained), ``layer`` (an index into the manifest's layers,
  or null for a step that changed no file), ``diff_id``, ``size`` (the layer's uncompressed size), ``history``,
  ``step``, ``stage``, ``line``, ``dockerfile``, ``image``, ``about``, ``created`` (seconds since the epoch) and
  ``parents`` (``[[descriptor, diff_id], ...]``, the layers under the step's, bottom first: a layer the
  directory holds is described as it is stored there, any other as the exporting store held it);
- ``layers``: each distinct layer once, compressed as asked and annotated ``dev.pybuild.diff_id``.

Why this shape: the store keeps layers uncompressed (``builder.compressed``), but a cache travels, so its layers
are compressed once, through the same memo that ``--output`` uses. The diff_id annotation ties each compressed
blob to the uncompressed digest the local store names it by, so importing a layer is one streamed pass: read the
compressed blob (verified by its digest), decompress, and write it into the store verified against its diff_id.
An imported entry is then exactly what the local index would hold.

Writing is atomic piece by piece and serialised: blobs go through the layout's content store, the whole export
runs under the layout's lock, ``index.json`` is replaced atomically, and only then are the blobs that
``index.json`` no longer reaches deleted, so a re-exported directory does not grow without bound and a reader sees
either the old cache or the new one. A reader that loaded the old one just before it was replaced may find a blob
gone; it reports that blob as missing, which a build treats like a miss.

Importing is forgiving only where BuildKit is: a directory or tag that is not there gives an empty cache with a
warning. Anything that is there but wrong (a malformed or unverifiable document, a foreign artifact, an entry
pointing at a layer that does not exist) is refused, naming ``--cache-from type=local,src=DIR``.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

from builder.attrs import csv_fields, go_bool, key_values, suggest
from builder.cache import CacheEntry
from builder.compressed import CompressedLayers
from builder.errors import BuildError, UsageError
from builder.root import Store
from oci import mediatypes as mt
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
    OCIError,
    VerificationError,
)
from oci.layout import INDEX_FILE, LAYOUT_FILE, ImageLayout
from oci.manifest import Index, Manifest, parse_manifest
from oci.store import ContentStore, atomic_file

__all__ = [
    "CACHE_ARTIFACT_TYPE",
    "CACHE_CONFIG_TYPE",
    "DIFF_ID_ANNOTATION",
    "CacheSpec",
    "ImportedCache",
    "check_cache_destination",
    "export_cache",
    "parse_cache_option",
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
_TYPES = ("local",)
#: BuildKit's other cache backends: known, not available yet.
_LATER_TYPES = ("registry", "inline", "gha", "s3", "azblob")
_KEYS = {CACHE_TO: ("dest", "mode", "compression", "tag"), CACHE_FROM: ("src", "tag")}
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
    CACHE_TO: {
        "compression-level": "layers are compressed once at a fixed level (gzip 6, zstd 3) and reused",
        "ignore-error": "a failed cache export always fails the build",
    },
    CACHE_FROM: {"digest": "a cache is chosen by tag= only"},
}
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class CacheSpec:
    """One ``--cache-to`` or ``--cache-from``: ``path`` is ``dest`` for the one, ``src`` for the other; ``mode`` and
    ``compression`` matter only when exporting."""

    type: str
    path: Path
    mode: str = "min"
    compression: Compression = Compression.GZIP
    tag: str = "latest"


# ---------------------------------------------------------------------------------------------------- parsing


def _not_yet(flag: str, kind: str) -> BuildError:
    return BuildError(
        f"{flag} type={kind} is not supported yet",
        hint=f"use {flag} type=local,{'dest' if flag == CACHE_TO else 'src'}=DIR",
    )


def parse_cache_option(text: str, flag: str) -> CacheSpec:
    """Parse one ``--cache-to`` or ``--cache-from`` value (``flag`` says which) as buildx does: CSV ``key=value``
    fields, keys lowercased. Wrong values are ``UsageError``; BuildKit's other cache types are a ``BuildError``
    saying they are not supported yet."""
    if flag not in _KEYS:
        raise ValueError(f"flag must be {CACHE_TO} or {CACHE_FROM}, not {flag!r}")
    if not text.strip():
        raise UsageError(f"{flag}: empty value")
    fields = csv_fields(text, flag)
    if "=" not in text:
        raise _not_yet(flag, "registry")  # buildx reads a bare value as type=registry,ref=VALUE
    attrs = key_values(fields, flag)
    kind = attrs.pop("type", "")
    if not kind:
        raise UsageError(f"{flag} {text!r}: type is required (e.g. type=local,{_KEYS[flag][0]}=DIR)")
    if kind in _LATER_TYPES:
        raise _not_yet(flag, kind)
    if kind not in _TYPES:
        raise UsageError(f"{flag}: unknown cache type {kind!r}{suggest(kind, _TYPES + _LATER_TYPES)}")
    where = f"{flag} type={kind}"
    other = CACHE_FROM if flag == CACHE_TO else CACHE_TO
    for key, value in attrs.items():
        if key in _KEYS[flag]:
            continue
        if key in _NO_OPS[flag]:
            go_bool(where, key, value)
        elif key in _ALWAYS_TRUE[flag]:
            if not go_bool(where, key, value):
                raise UsageError(f"{where}: {key}=false is not supported ({_ALWAYS_TRUE[flag][key]})")
        elif key in _REFUSED[flag]:
            raise UsageError(f"{where}: {key} is not supported by pybuild: {_REFUSED[flag][key]}")
        elif any(key in table[other] for table in (_KEYS, _NO_OPS, _ALWAYS_TRUE, _REFUSED)):
            raise UsageError(f"{where}: {key} is an attribute of {other}, not {flag}")
        else:
            raise UsageError(f"{where}: unknown attribute {key!r}{suggest(key, _KEYS[flag])}")

    path_key = _KEYS[flag][0]
    path = attrs.get(path_key, "")
    if not path:
        raise UsageError(f"{where}: {path_key} is required (e.g. {where},{path_key}=DIR)")
    mode = attrs.get("mode", "min")
    if mode not in _MODES:
        raise UsageError(f"{where}: mode={mode!r} is not min or max")
    compression = Compression.GZIP
    if "compression" in attrs:
        try:
            compression = Compression.parse(attrs["compression"])
        except ValueError as err:
            raise UsageError(f"{where}: {err}") from None
    tag = attrs.get("tag", "latest")
    if not _TAG.fullmatch(tag):
        raise UsageError(f"{where}: tag={tag!r} is not a valid tag (letters, digits, _ . -; at most 128)")
    return CacheSpec(type=kind, path=Path(path), mode=mode, compression=compression, tag=tag)


# ---------------------------------------------------------------------------------------------------- export


def _to_where(dest: Path) -> str:
    return f"{CACHE_TO} type=local,dest={dest}"


def _from_where(src: Path) -> str:
    return f"{CACHE_FROM} type=local,src={src}"


def check_cache_destination(dest: Path, store: Store | None = None) -> None:
    """Refuse, before any work, a ``--cache-to`` directory that could not be written: a file, pybuild's own store
    (whose untagged blobs the clean-up would delete), or a directory that is neither empty nor an OCI image layout.
    A missing directory is fine: it is created."""
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
    """A layer as the cache directory holds it, and how big it is uncompressed."""

    packed: Descriptor  # compressed as asked, annotated with its diff_id
    diff_id: Digest
    size: int


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
    created = not dest.exists()
    try:
        layout = ImageLayout.open(dest, create=True)
        layout.sweep()
        if on_status is not None:
            on_status(f"writing cache {descriptor.digest} into {dest}")
        with layout.locked():  # one exporter at a time: the clean-up must not delete another's new blobs
            _copy_blobs(layout.store, store.layout.store, [layer.packed for layer in layers.values()])
            layout.store.put_bytes(config)
            layout.store.put_bytes(raw)
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


class ImportedCache:
    """The entries of one cache directory's tag, as the local index would hold them, and their layers.

    ``warning`` is a one-line message when there was nothing to load (empty otherwise)."""

    def __init__(
        self,
        source: Path,
        entries: Mapping[Digest, CacheEntry] | None = None,
        layers: Mapping[Digest, _Layer] | None = None,
        *,
        manifest: Descriptor | None = None,
        warning: str = "",
    ) -> None:
        self.source = Path(source)
        self.manifest = manifest
        self.warning = warning
        self._entries = dict(entries or {})
        self._layers = dict(layers or {})
        self._blobs = ImageLayout(self.source).store  # no I/O until a layer is fetched
        self._where = _from_where(self.source)

    @classmethod
    def load(cls, src: Path, tag: str = "latest") -> ImportedCache:
        """Read the cache tagged ``tag`` in ``src``. A missing directory or tag gives an empty cache with a warning;
        a cache that is there but malformed or unverifiable is a ``BuildError``."""
        src = Path(src)
        where = _from_where(src)
        if not (src / INDEX_FILE).is_file():
            reason = "it does not exist" if not src.exists() else f"it has no {INDEX_FILE}"
            return cls(src, warning=f"{where}: no cache imported ({reason})")
        try:
            layout = ImageLayout.open(src)
            descriptor = layout.resolve(tag)
        except LayoutError as err:
            raise BuildError(f"{where}: {err}") from None
        if descriptor is None:
            return cls(src, warning=f"{where}: no cache imported (no tag {tag!r} in {src})")
        try:
            manifest = _read_manifest(layout.store, descriptor)
            layers = _manifest_layers(manifest)
            raws = _parse_config(
                load_json_object(_read(layout.store, manifest.config, MAX_CONFIG_SIZE), "config"), layers
            )
            sizes = _layer_sizes(raws, layers)
            known = {layer.digest: (layer, diff_id) for layer, diff_id in layers}
            loaded: dict[Digest, CacheEntry] = {}
            for raw in raws:
                if raw.entry.key in loaded:
                    raise InvalidDocument(f"cache config: key {raw.entry.key} appears twice")
                loaded[raw.entry.key] = _as_local(raw, known, sizes)
        except BlobNotFound as err:
            raise BuildError(f"{where}: tag {tag!r}: {err}") from None
        except OCIError as err:
            raise BuildError(f"{where}: tag {tag!r} is not a usable pybuild cache: {err}") from None
        held = {diff_id: _Layer(layer, diff_id, sizes[diff_id]) for layer, diff_id in layers if diff_id in sizes}
        return cls(src, loaded, held, manifest=descriptor)

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

    def fetch(self, entry: CacheEntry, blobs: ContentStore) -> None:
        """Copy ``entry``'s layer into ``blobs`` uncompressed, as the local store keeps it: the compressed blob is
        verified against its digest as it is read, and the result against the diff_id before it is published.
        Nothing to do for an entry without a layer, or when ``blobs`` already has it."""
        if entry.layer is None or entry.diff_id is None or blobs.has(entry.diff_id):
            return
        layer = self._layers.get(entry.diff_id)
        if layer is None:
            raise BuildError(f"{self._where}: layer {entry.diff_id} is not in this cache")
        packed = layer.packed
        declared = mt.layer_compression(packed.media_type)
        try:
            with self._blobs.open(packed.digest, packed.size) as blob:
                found, plain = decompress_stream(blob)
                if found.value != declared:
                    raise CompressionError(f"it is {found.value}, but its media type says {declared}")
                with blobs.writer(layer.diff_id, layer.size) as writer:
                    writer.copy_from(plain)
                    _drain(blob)  # the compressed blob is verified against its digest once all of it is read
                    writer.commit()
        except BlobNotFound:
            raise BuildError(f"{self._where}: blob {packed.digest} is missing") from None
        except (VerificationError, CompressionError) as err:
            raise BuildError(f"{self._where}: blob {packed.digest} is corrupt: {err}") from None


def _read(blobs: ContentStore, desc: Descriptor, limit: int) -> bytes:
    """A document blob, verified against its descriptor's digest and size."""
    if desc.size > limit:
        raise InvalidDocument(f"blob {desc.digest} is larger than {limit} bytes")
    with blobs.open(desc.digest, desc.size) as stream:
        return stream.read()


def _read_manifest(blobs: ContentStore, desc: Descriptor) -> Manifest:
    if desc.media_type != mt.OCI_MANIFEST:
        raise InvalidDocument(f"the tag points at a {desc.media_type}, not an OCI image manifest")
    manifest = parse_manifest(_read(blobs, desc, MAX_DOCUMENT_SIZE), desc.media_type, "cache manifest")
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
