"""Docker archives: the tarballs ``docker save`` writes and ``docker load`` reads, both ways.

Writing follows Docker 25's ``docker save``: an OCI image layout (``oci-layout``, ``index.json``,
``blobs/<alg>/<hex>``) plus the legacy ``manifest.json`` and ``repositories``, whose paths point into ``blobs/``.
Docker before 25 and skopeo read ``manifest.json``; containerd and OCI tools read ``index.json``. Unlike Docker 25,
``manifest.json`` carries no ``LayerSources`` for ordinary layers (go-containerregistry took those for foreign
layers: google/go-containerregistry#1870), and an untagged image still gets an ``index.json`` entry. Layers go out
as stored when they are plain tar or gzip; a zstd layer, which Docker before 25 cannot load, is decompressed (or
re-encoded with ``compress``) in two streamed passes, one to learn its size and digest for the tar header and one
to write it, so no layer is ever held in memory or on disk. The archive is deterministic: sorted members, mtime 0,
owner 0, modes 0644 and 0755.

Reading indexes the archive in one pass with the bounded ``TarReader`` (every member name checked, offsets
recorded), then copies what ``manifest.json`` names (or, without one, what ``index.json`` names) into a content
store by ``pread``: every blob is verified by the digest its name or descriptor gives, every layer by the
diff_id its config gives, before the store publishes it. Both Docker's layouts are read: the legacy one
(``<id>.json`` and ``<id>/layer.tar``, symlinks included) and the OCI one of Docker 25 and later.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

from oci import mediatypes as mt
from oci.canonical import MAX_DOCUMENT_SIZE, canonical_json, load_json_object
from oci.compression import Compression, Compressor, compressor, decompress_stream, sniff
from oci.config import parse_config
from oci.descriptor import REF_NAME, Descriptor, Platform
from oci.digest import Digest, Hasher, VerifyingReader
from oci.errors import (
    BlobNotFound,
    CompressionError,
    DigestMismatch,
    InvalidArchive,
    InvalidDigest,
    InvalidDocument,
    InvalidReference,
    LayoutError,
    SizeMismatch,
    UnsafeEntry,
    UnsupportedMediaType,
)
from oci.image import Image, load_image
from oci.manifest import Manifest, parse_index
from oci.reference import Reference
from oci.store import ContentStore
from oci.tarformat import EntryType, TarEntry, TarReader, TarWriter

__all__ = [
    "CONTAINERD_IMAGE_NAME",
    "INDEX_FILE",
    "LAYOUT_FILE",
    "LoadedImage",
    "MANIFEST_FILE",
    "REPOSITORIES_FILE",
    "Recompress",
    "read_docker_archive",
    "write_docker_archive",
]

MANIFEST_FILE = "manifest.json"
REPOSITORIES_FILE = "repositories"
INDEX_FILE = "index.json"
LAYOUT_FILE = "oci-layout"
#: The index.json annotation containerd (and Docker 25) use for an image's full name; ref.name holds the tag.
CONTAINERD_IMAGE_NAME = "io.containerd.image.name"

#: Makes the encoder for a layer that must be re-encoded: called with the stream to write into.
Recompress = Callable[[BinaryIO], Compressor]

_CHUNK = 1 << 20
_MAX_LINK_HOPS = 16
_LEGACY_CONFIG = re.compile(r"([a-f0-9]{64})\.json")


# ---------------------------------------------------------------------------------------------------- writing


class _Buffer:
    """Where a compressor writes while a layer is being re-encoded: drained by the reader that owns it."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.data += data
        return len(data)


class _Transcoder(io.RawIOBase):
    """A layer blob decompressed and passed through ``compress``, as a stream; ``plain`` hashes the tar."""

    def __init__(self, blob: BinaryIO, compress: Recompress) -> None:
        super().__init__()
        self._blob = blob
        _, self._source = decompress_stream(blob)
        self._buffer = _Buffer()
        self._encoder = compress(self._buffer)  # type: ignore[arg-type]
        self.plain = Hasher()
        self._finished = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        pending = self._buffer.data
        while not pending and not self._finished:
            chunk = self._source.read(_CHUNK)
            if chunk:
                self.plain.update(chunk)
                self._encoder.write(chunk)
            else:
                while self._blob.read(_CHUNK):  # the rest of the blob is verified too
                    pass
                self._encoder.finish()
                self._finished = True
        n = min(len(buffer), len(pending))
        memoryview(buffer).cast("B")[:n] = pending[:n]
        del pending[:n]
        return n

    def close(self) -> None:
        try:
            self._blob.close()
        finally:
            super().close()


class _Hashing(io.RawIOBase):
    """Hashes what is read through it."""

    def __init__(self, source: BinaryIO) -> None:
        super().__init__()
        self._source = source
        self.hasher = Hasher()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._source.read(len(buffer))
        memoryview(buffer).cast("B")[: len(data)] = data
        self.hasher.update(data)
        return len(data)


@dataclass(frozen=True, slots=True)
class _Member:
    """A file to write: its size and digest are known before its bytes are read."""

    digest: Digest
    size: int
    open: Callable[[], BinaryIO]
    check: Callable[[BinaryIO], None] | None = None  # after the copy: what else the stream must satisfy


@dataclass(frozen=True, slots=True)
class _Converted:
    descriptor: Descriptor
    member: _Member


def _blob_path(digest: Digest) -> str:
    return f"blobs/{digest.algorithm}/{digest.encoded}"


def _document(data: bytes) -> _Member:
    return _Member(Digest.of_bytes(data), len(data), lambda: io.BytesIO(data))


def _sniff_blob(image: Image, layer: Descriptor) -> Compression:
    stream = image.source.open(layer.digest, layer.size)
    try:
        return sniff(stream.read(4))
    finally:
        stream.close()


def _convert(image: Image, layer: Descriptor, diff_id: Digest, compress: Recompress) -> _Converted:
    """Measure a re-encoded zstd layer (first pass), and say how to write it (second pass)."""

    def open_encoded() -> _Transcoder:
        return _Transcoder(image.source.open(layer.digest, layer.size), compress)

    with open_encoded() as stream:
        head = stream.read(4)
        hasher, size = Hasher(), len(head)
        hasher.update(head)
        while chunk := stream.read(_CHUNK):
            hasher.update(chunk)
            size += len(chunk)
        plain = stream.plain.digest()
    if plain != diff_id:
        raise DigestMismatch(f"layer {layer.digest} has diff_id {plain}, config says {diff_id}")
    kind = sniff(head)
    if kind is Compression.ZSTD:
        raise CompressionError(f"layer {layer.digest}: a docker archive cannot carry zstd layers")

    def check(stream: BinaryIO) -> None:
        if isinstance(stream, _Transcoder) and stream.plain.digest() != diff_id:
            raise DigestMismatch(f"layer {layer.digest} changed while it was being written")

    digest = hasher.digest()
    descriptor = replace(layer, media_type=kind.layer_media_type, digest=digest, size=size)
    return _Converted(descriptor, _Member(digest, size, open_encoded, check))


@dataclass(frozen=True, slots=True)
class _Planned:
    image: Image
    refs: list[Reference]
    manifest: Descriptor
    config_path: str
    layer_paths: list[str]


def _repo_tag(ref: Reference) -> str:
    if not ref.tag or ref.digest is not None:
        raise InvalidReference(f"{ref}: a docker archive names images by name:tag only")
    return f"{ref.familiar()}:{ref.tag}"


def write_docker_archive(
    images: Sequence[tuple[Image, Sequence[Reference]]],
    out: BinaryIO,
    *,
    compress: Recompress | None = None,
) -> None:
    """Write ``images``, each with the tags it is known by, as one ``docker load``-able archive into ``out``.

    ``compress`` makes the encoder for the layers that must be re-encoded (zstd ones): by default they are
    written as plain tar, as Docker itself saves them; ``functools.partial(compressor, Compression.GZIP)`` makes
    them gzip. Every blob is hashed as it is written and checked against its digest. ``out`` is left open.
    """
    encode = compress or (lambda stream: compressor(Compression.NONE, stream))
    members: dict[str, _Member] = {}
    planned: list[_Planned] = []
    by_digest: dict[Digest, _Planned] = {}
    tag_owner: dict[str, Digest] = {}
    conversions: dict[tuple[Digest, Digest], _Converted] = {}
    for image, refs in images:
        for ref in refs:
            owner = tag_owner.setdefault(_repo_tag(ref), image.digest)
            if owner != image.digest:
                raise InvalidReference(f"{ref} is given for two images ({owner} and {image.digest})")
        if image.digest in by_digest:
            known = by_digest[image.digest].refs
            known.extend(r for r in refs if r not in known)
            continue
        plan = _plan_image(image, members, conversions, encode)
        plan.refs.extend(dict.fromkeys(refs))
        planned.append(plan)
        by_digest[image.digest] = plan

    manifest_json: list[dict[str, Any]] = []
    repositories: dict[str, dict[str, str]] = {}
    index_entries: list[dict[str, Any]] = []
    for plan in planned:
        tags = [_repo_tag(ref) for ref in plan.refs]
        manifest_json.append({"Config": plan.config_path, "RepoTags": tags, "Layers": plan.layer_paths})
        for ref in plan.refs:
            if plan.layer_paths:
                repositories.setdefault(ref.familiar(), {})[ref.tag] = plan.layer_paths[-1].rsplit("/", 1)[-1]
        entry = plan.manifest.to_json()
        platform = plan.image.config.platform
        if platform.os and platform.architecture:
            entry["platform"] = platform.to_json()
        if not plan.refs:
            index_entries.append(entry)
        for ref in plan.refs:
            index_entries.append({**entry, "annotations": {CONTAINERD_IMAGE_NAME: str(ref), REF_NAME: ref.tag}})
    index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": index_entries}
    members[MANIFEST_FILE] = _document(canonical_json(manifest_json))
    members[INDEX_FILE] = _document(canonical_json(index))
    members[LAYOUT_FILE] = _document(canonical_json({"imageLayoutVersion": "1.0.0"}))
    if repositories:
        members[REPOSITORIES_FILE] = _document(canonical_json(repositories))
    _write_members(members, out)


def _plan_image(
    image: Image,
    members: dict[str, _Member],
    conversions: dict[tuple[Digest, Digest], _Converted],
    encode: Recompress,
) -> _Planned:
    raw_manifest, raw_config = image.raw_manifest, image.raw_config
    if Digest.of_bytes(raw_manifest, image.digest.algorithm) != image.digest:
        raise DigestMismatch(f"manifest {image.digest} does not hash to its digest")
    config = image.manifest.config
    if Digest.of_bytes(raw_config, config.digest.algorithm) != config.digest:
        raise DigestMismatch(f"config {config.digest} does not hash to its digest")
    members[_blob_path(config.digest)] = _document(raw_config)
    layers: list[Descriptor] = []
    for layer, diff_id in image.layer_pairs():
        if mt.layer_compression(layer.media_type) is None:
            raise UnsupportedMediaType(f"layer {layer.digest} has media type {layer.media_type}")
        if _sniff_blob(image, layer) is Compression.ZSTD:
            key = (layer.digest, diff_id)
            if key not in conversions:
                conversions[key] = _convert(image, layer, diff_id, encode)
            converted = conversions[key]
            members[_blob_path(converted.descriptor.digest)] = converted.member
            layers.append(converted.descriptor)
        else:
            members[_blob_path(layer.digest)] = _Member(
                layer.digest, layer.size, lambda d=layer: image.source.open(d.digest, d.size)
            )
            layers.append(layer)
    if tuple(layers) == image.manifest.layers:
        manifest, raw = image.descriptor, raw_manifest
    else:
        # A changed layer means a new manifest; OCI, since the Docker media types have no plain-tar layer.
        raw = replace(image.manifest, layers=tuple(layers), media_type=mt.OCI_MANIFEST).encode()
        manifest = Descriptor(mt.OCI_MANIFEST, Digest.of_bytes(raw), len(raw))
    manifest = Descriptor(manifest.media_type, manifest.digest, manifest.size)
    members[_blob_path(manifest.digest)] = _document(raw)
    return _Planned(
        image=image,
        refs=[],
        manifest=manifest,
        config_path=_blob_path(config.digest),
        layer_paths=[_blob_path(layer.digest) for layer in layers],
    )


def _write_members(members: dict[str, _Member], out: BinaryIO) -> None:
    directories = {posixpath.dirname(path) for path in members if "/" in path}
    directories |= {posixpath.dirname(d) for d in directories if "/" in d}
    entries: list[tuple[str, _Member | None]] = [(d, None) for d in directories]
    entries += list(members.items())
    entries.sort(key=lambda item: item[0].encode("utf-8", "surrogateescape"))
    writer = TarWriter(out)
    for path, member in entries:
        if member is None:
            writer.add(TarEntry(path, EntryType.DIR, mode=0o755))
            continue
        with member.open() as stream:
            hashing = _Hashing(stream)
            writer.add(TarEntry(path, EntryType.FILE, mode=0o644, size=member.size), hashing)  # type: ignore[arg-type]
            if hashing.read(1):
                raise SizeMismatch(f"{path}: more than the expected {member.size} bytes")
            if hashing.hasher.digest() != member.digest:
                raise DigestMismatch(f"{path}: content has digest {hashing.hasher.digest()}")
            if member.check is not None:
                member.check(stream)
    writer.close()


# ---------------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True, slots=True)
class LoadedImage:
    """An image read from an archive: its manifest, now in the content store, and the tags it came with."""

    descriptor: Descriptor
    tags: tuple[Reference, ...]


@dataclass(frozen=True, slots=True)
class _Entry:
    path: str
    type: EntryType
    size: int
    offset: int
    linkname: str = ""


def _clean(name: str, what: str) -> str:
    """A member name as a relative path with no ``.``/empty components; ``..`` and absolute paths are refused."""
    if name.startswith("/"):
        raise UnsafeEntry(f"{what} {name[:200]!r} is an absolute path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise UnsafeEntry(f"{what} {name[:200]!r} leaves the archive")
    return "/".join(parts)


def _pread_exact(fd: int, size: int, offset: int, what: str) -> bytes:
    chunks, got = [], 0
    while got < size:
        chunk = os.pread(fd, min(size - got, _CHUNK), offset + got)
        if not chunk:
            raise InvalidArchive(f"{what}: archive ends inside the member")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


class _MemberReader(io.RawIOBase):
    """One member's bytes, read by offset so that readers of different members do not disturb each other."""

    def __init__(self, fd: int, entry: _Entry) -> None:
        super().__init__()
        self._fd = fd
        self._entry = entry
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        want = min(len(buffer), self._entry.size - self._pos)
        if want <= 0:
            return 0
        data = os.pread(self._fd, want, self._entry.offset + self._pos)
        if not data:
            raise InvalidArchive(f"{self._entry.path}: archive ends inside the member")
        memoryview(buffer).cast("B")[: len(data)] = data
        self._pos += len(data)
        return len(data)


class _Archive:
    """The members of an archive on disk, by name: indexed once, then read by offset."""

    def __init__(self, fd: int, entries: dict[str, _Entry]) -> None:
        self.fd = fd
        self.entries = entries

    @classmethod
    def index(cls, stream: BinaryIO, fd: int, name: str) -> _Archive:
        head = os.pread(fd, 4, 0)
        if sniff(head) is not Compression.NONE:
            raise InvalidArchive(f"{name} is {sniff(head).value}-compressed: decompress it first")
        entries: dict[str, _Entry] = {}
        for entry, _data in TarReader(stream):
            path = _clean(entry.path, "archive member")
            if entry.type is EntryType.DIR:
                previous = entries.get(path)
                if previous is not None and previous.type is not EntryType.DIR:
                    raise InvalidArchive(f"archive member {path!r} appears twice")
                entries[path] = _Entry(path, EntryType.DIR, 0, 0)
                continue
            if entry.type not in (EntryType.FILE, EntryType.SYMLINK, EntryType.HARDLINK):
                raise InvalidArchive(f"archive member {path!r} is a {entry.type.name.lower()}, not a file")
            if not path:
                raise InvalidArchive(f"archive member {entry.path!r} has no name")
            if path in entries:
                raise InvalidArchive(f"archive member {path!r} appears twice")
            size = entry.size if entry.type is EntryType.FILE else 0
            # TarReader reads headers exactly: the stream stands at the first byte of the member's data.
            entries[path] = _Entry(path, entry.type, size, stream.tell(), entry.linkname)
        return cls(fd, entries)

    def resolve(self, name: str, what: str) -> _Entry:
        """The regular file ``name`` refers to, following symlinks and hard links within the archive."""
        path = _clean(name, what)
        for _ in range(_MAX_LINK_HOPS):
            entry = self.entries.get(path)
            if entry is None:
                raise InvalidArchive(f"{what} {name!r} is not in the archive")
            if entry.type is EntryType.FILE:
                return entry
            if entry.type is EntryType.DIR:
                raise InvalidArchive(f"{what} {name!r} is a directory, not a file")
            if entry.type is EntryType.HARDLINK:
                path = _clean(entry.linkname, f"hard link {entry.path!r} to")
                continue
            if entry.linkname.startswith("/"):
                raise UnsafeEntry(f"symlink {entry.path!r} points at the absolute path {entry.linkname[:200]!r}")
            target = posixpath.normpath(posixpath.join(posixpath.dirname(entry.path), entry.linkname))
            if target == ".." or target.startswith("../"):
                raise UnsafeEntry(f"symlink {entry.path!r} points outside the archive")
            path = target
        raise InvalidArchive(f"{what} {name!r}: too many links (a loop?)")

    def open(self, entry: _Entry) -> BinaryIO:
        return _MemberReader(self.fd, entry)  # type: ignore[return-value]

    def document(self, name: str, what: str) -> bytes:
        entry = self.resolve(name, what)
        if entry.size > MAX_DOCUMENT_SIZE:
            raise InvalidDocument(f"{what} {name!r} is larger than {MAX_DOCUMENT_SIZE} bytes")
        return _pread_exact(self.fd, entry.size, entry.offset, name)

    def has(self, name: str) -> bool:
        try:
            self.resolve(name, "member")
        except (InvalidArchive, UnsafeEntry):
            return False
        return True


class _ArchiveBlobs:
    """The archive's ``blobs/`` directory as a ``BlobSource``, so that ``oci.image`` can read images from it."""

    def __init__(self, archive: _Archive) -> None:
        self._archive = archive

    def member(self, digest: Digest, size: int | None = None) -> _Entry:
        path = _blob_path(digest)
        if not self._archive.has(path):
            raise BlobNotFound(f"blob {digest} is not in the archive")
        entry = self._archive.resolve(path, "blob")
        if size is not None and entry.size != size:
            raise SizeMismatch(f"blob {digest}: the archive holds {entry.size} bytes, the descriptor says {size}")
        return entry

    def open_unverified(self, entry: _Entry) -> BinaryIO:
        return self._archive.open(entry)

    def open(self, digest: Digest, size: int | None = None) -> BinaryIO:
        entry = self.member(digest, size)
        return VerifyingReader(self._archive.open(entry), digest, entry.size, name=f"blob {digest}")  # type: ignore[return-value]

    def read(self, digest: Digest, max_size: int | None = None) -> bytes:
        entry = self.member(digest)
        if max_size is not None and entry.size > max_size:
            raise SizeMismatch(f"blob {digest} is larger than {max_size} bytes")
        with self.open(digest) as stream:
            return stream.read()

    def has(self, digest: Digest) -> bool:
        return self._archive.has(_blob_path(digest))


class _Tee(io.RawIOBase):
    """Copies what is read through it into the blob being written."""

    def __init__(self, source: BinaryIO, sink: Any) -> None:
        super().__init__()
        self._source = source
        self._sink = sink

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._source.read(len(buffer))
        memoryview(buffer).cast("B")[: len(data)] = data
        if data:
            self._sink.write(data)
        return len(data)


def _store_layer(
    store: ContentStore,
    stream: BinaryIO,
    *,
    expected: Digest | None,
    size: int | None,
    diff_id: Digest,
    declared: Compression | None,
    what: str,
    max_bytes: int | None = None,
) -> Descriptor:
    """Copy a layer into ``store``; publish it only if it decompresses to ``diff_id`` (and hashes to ``expected``)
    without expanding beyond ``max_bytes``."""
    with store.writer(expected, size) as writer:
        tee = _Tee(stream, writer)
        kind, plain = decompress_stream(tee, max_bytes=max_bytes, what=what)  # type: ignore[arg-type]
        if declared is not None and kind is not declared:
            raise InvalidDocument(f"{what} is {kind.value} but its media type says {declared.value}")
        hasher = Hasher(diff_id.algorithm)
        while chunk := plain.read(_CHUNK):
            hasher.update(chunk)
        while tee.read(_CHUNK):  # whatever the decompressor left unread is still stored and hashed
            pass
        if hasher.digest() != diff_id:
            raise DigestMismatch(f"{what} has diff_id {hasher.digest()}, config says {diff_id}")
        digest = writer.commit()
        return Descriptor(kind.layer_media_type, digest, writer.size)


def _named_digest(path: str, *, config: bool = False) -> Digest | None:
    """The digest a member's name promises: ``blobs/<alg>/<hex>`` always; a config's ``<hex>.json`` (Docker's
    image ID) or ``sha256:<hex>`` (go-containerregistry). Other names (``<id>/layer.tar``) promise nothing."""
    parts = path.split("/")
    try:
        if len(parts) == 3 and parts[0] == "blobs":
            return Digest(parts[1], parts[2])
        if config and (match := _LEGACY_CONFIG.fullmatch(path)):
            return Digest("sha256", match.group(1))
        if config and path.startswith("sha256:"):
            return Digest.parse(path)
    except InvalidDigest:
        return None
    return None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise InvalidDocument(f"{MANIFEST_FILE}: repeated key {key!r}")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise InvalidDocument(f"{MANIFEST_FILE}: {name} is not JSON")


def _parse_manifest_json(raw: bytes) -> list[dict[str, Any]]:
    # oci.canonical's reader takes objects only; manifest.json is an array, read just as strictly.
    try:
        value = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except (ValueError, RecursionError) as err:
        if isinstance(err, InvalidDocument):
            raise
        raise InvalidDocument(f"{MANIFEST_FILE} is not valid JSON: {str(err)[:200]}") from None
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise InvalidDocument(f"{MANIFEST_FILE} is not a list of objects")
    return value


def _string_list(item: dict[str, Any], key: str, what: str) -> list[str]:
    value = item.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidDocument(f"{what}: {key} must be a list of strings")
    return value


def _repo_tags(names: list[str], what: str) -> tuple[Reference, ...]:
    refs: list[Reference] = []
    for name in names:
        ref = Reference.parse(name, default_tag="")
        if not ref.tag or ref.digest is not None:
            raise InvalidReference(f"{what}: RepoTags entry {name!r} is not name:tag")
        if ref not in refs:
            refs.append(ref)
    return tuple(refs)


def read_docker_archive(
    path: Path, store: ContentStore, *, platform: Platform | None = None, max_layer_bytes: int | None = None
) -> list[LoadedImage]:
    """Copy the images of the archive at ``path`` into ``store``, verified; return their manifests and tags.

    ``manifest.json`` (any Docker version, skopeo, go-containerregistry) is read if present: config and layers
    are stored as they are and a new OCI manifest is written for each image. Otherwise the archive must be an
    OCI image layout (``index.json``), whose manifests are kept as they are; ``platform`` chooses from a
    multi-platform index entry. A layer that decompresses to more than ``max_layer_bytes`` is refused
    (``LimitExceeded``) as soon as it does. Anything wrong raises an ``OCIError`` and leaves only complete,
    verified blobs.
    """
    with open(path, "rb") as stream:
        archive = _Archive.index(stream, stream.fileno(), str(path))
        if MANIFEST_FILE in archive.entries:
            return _read_manifest_json(archive, store, max_layer_bytes)
        if INDEX_FILE in archive.entries:
            return _read_oci_layout(archive, store, platform, max_layer_bytes)
    raise InvalidArchive(f"{path} has neither {MANIFEST_FILE} nor {INDEX_FILE}: not a docker archive")


@dataclass(frozen=True, slots=True)
class _LegacyImage:
    """One manifest.json entry, checked: its config and the members that hold its layers."""

    config: bytes
    config_digest: Digest | None  # what the config's name promises, if anything
    layers: list[tuple[_Entry, Digest | None, Digest]]  # member, digest its name promises, diff_id
    tags: tuple[Reference, ...]


def _check_item(archive: _Archive, item: dict[str, Any], what: str) -> _LegacyImage:
    config_name = item.get("Config")
    if not isinstance(config_name, str):
        raise InvalidDocument(f"{what}: Config must be a string")
    if not isinstance(item.get("Layers"), list):
        raise InvalidDocument(f"{what}: Layers must be a list of strings")
    layer_names = _string_list(item, "Layers", what)
    tags = _repo_tags(_string_list(item, "RepoTags", what), what)
    config_path = _clean(config_name, f"{what} Config")
    raw_config = archive.document(config_path, f"{what} Config")
    config = parse_config(raw_config, f"{what} config {config_path!r}")
    if len(layer_names) != len(config.diff_ids):
        raise InvalidDocument(f"{what}: {len(layer_names)} layers but the config has {len(config.diff_ids)} diff_ids")
    layers = []
    for name, diff_id in zip(layer_names, config.diff_ids, strict=True):
        entry = archive.resolve(name, f"{what} layer")
        layers.append((entry, _named_digest(_clean(name, "layer")) or _named_digest(entry.path), diff_id))
    return _LegacyImage(raw_config, _named_digest(config_path, config=True), layers, tags)


def _read_manifest_json(archive: _Archive, store: ContentStore, max_layer_bytes: int | None) -> list[LoadedImage]:
    items = _parse_manifest_json(archive.document(MANIFEST_FILE, "file"))
    # Everything that can be checked without reading layers is, before the store sees a byte.
    images = [_check_item(archive, item, f"{MANIFEST_FILE} entry {n}") for n, item in enumerate(items)]
    stored: dict[tuple[str, Digest], Descriptor] = {}
    loaded: list[LoadedImage] = []
    for number, image in enumerate(images):
        layers: list[Descriptor] = []
        for entry, expected, diff_id in image.layers:
            key = (entry.path, diff_id)
            if key not in stored:
                with archive.open(entry) as stream:
                    stored[key] = _store_layer(
                        store,
                        stream,
                        expected=expected,
                        size=entry.size,
                        diff_id=diff_id,
                        declared=None,
                        what=f"{MANIFEST_FILE} entry {number} layer {entry.path!r}",
                        max_bytes=max_layer_bytes,
                    )
            layers.append(stored[key])
        # The config goes in after its layers, so a refused layer leaves no orphaned config behind.
        config_digest = store.put_bytes(image.config, image.config_digest)
        manifest = Manifest(Descriptor(mt.OCI_CONFIG, config_digest, len(image.config)), tuple(layers)).encode()
        descriptor = Descriptor(mt.OCI_MANIFEST, store.put_bytes(manifest), len(manifest))
        loaded.append(LoadedImage(descriptor, image.tags))
    return loaded


def _index_tags(entry: Descriptor) -> tuple[Reference, ...]:
    """The name an index.json entry gives: containerd's full-name annotation, or a ref.name that is a full
    reference (pybuild's own layouts). A bare tag in ref.name (``latest``) names no repository, and ref.name is
    free-form in the OCI spec, so a name that is not ``name:tag`` is passed over rather than refused."""
    name = entry.annotations.get(CONTAINERD_IMAGE_NAME) or entry.ref_name or ""
    if not name or ("/" not in name and ":" not in name):
        return ()
    try:
        return _repo_tags([name], f"{INDEX_FILE} entry {entry.digest}")
    except InvalidReference:
        return ()


def _read_oci_layout(
    archive: _Archive, store: ContentStore, platform: Platform | None, max_layer_bytes: int | None
) -> list[LoadedImage]:
    if archive.has(LAYOUT_FILE):
        marker = load_json_object(archive.document(LAYOUT_FILE, "file"), LAYOUT_FILE)
        version = marker.get("imageLayoutVersion")
        if not isinstance(version, str) or not version.startswith("1."):
            raise LayoutError(f"unsupported image layout version {version!r}")
    index = parse_index(archive.document(INDEX_FILE, "file"), what=INDEX_FILE)
    blobs = _ArchiveBlobs(archive)
    by_manifest: dict[Digest, tuple[Descriptor, list[Reference]]] = {}
    for entry in index.manifests:
        if mt.is_index(entry.media_type) and platform is None:
            raise InvalidDocument(f"{INDEX_FILE} entry {entry.digest} is a multi-platform index: choose a platform")
        if not (mt.is_index(entry.media_type) or mt.is_manifest(entry.media_type)):
            continue  # not an image (an artifact, say): nothing docker load would take
        # A manifest entry needs no platform; an index entry only gets here with one.
        chosen = platform if platform is not None else Platform("", "")
        image = load_image(blobs, Descriptor(entry.media_type, entry.digest, entry.size), chosen)
        if image.digest not in by_manifest:
            by_manifest[image.digest] = (_copy_image(image, blobs, store, max_layer_bytes), [])
        tags = by_manifest[image.digest][1]
        tags.extend(t for t in _index_tags(entry) if t not in tags)
    return [LoadedImage(descriptor, tuple(tags)) for descriptor, tags in by_manifest.values()]


def _copy_image(image: Image, blobs: _ArchiveBlobs, store: ContentStore, max_layer_bytes: int | None) -> Descriptor:
    config = image.manifest.config
    image.config  # noqa: B018  (parses the config and checks its media type before anything is stored)
    for number, (layer, diff_id) in enumerate(image.layer_pairs()):
        declared = mt.layer_compression(layer.media_type)
        if declared is None:
            raise UnsupportedMediaType(f"layer {layer.digest} has media type {layer.media_type}")
        # The store verifies digest and size as it writes; the stream itself need not.
        with blobs.open_unverified(blobs.member(layer.digest, layer.size)) as stream:
            _store_layer(
                store,
                stream,
                expected=layer.digest,
                size=layer.size,
                diff_id=diff_id,
                declared=Compression(declared),
                what=f"image {image.digest} layer {number}",
                max_bytes=max_layer_bytes,
            )
    store.put_bytes(image.raw_config, config.digest)
    store.put_bytes(image.raw_manifest, image.digest)
    return Descriptor(image.descriptor.media_type, image.digest, image.descriptor.size)
