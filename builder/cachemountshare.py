"""Portable cache mounts: ``pybuild cache mounts export`` and ``import``, through a directory or a registry.

BuildKit's cache mounts never leave the builder that made them, and CI runners start empty: a package manager's
downloads are fetched again on every run. pybuild moves them, as CI caches move directories, in two forms that
hold the same bytes:

- **a directory**: ``cachemounts.json`` and one ``<sha256 hex>.tar.zst`` per mount, named by its digest. The index
  is the canonical JSON ``{"version": 1, "mounts": [...]}``, one object per mount, sorted by id: ``id``, ``blob``
  (the tarball's descriptor: zstd layer media type, digest, size), ``diff_id`` and ``size`` (the tar's, uncompressed),
  ``content`` (bytes of its files), ``uid``, ``gid``, ``mode`` and ``mtime`` (the mount's top directory: a layer has
  no entry for its root), ``created`` and ``last_used`` (seconds since the epoch);
- **a registry** (``type=registry,ref=REPO:TAG``): an OCI artifact, a manifest with ``artifactType``
  ``application/vnd.pybuild.cachemounts.v1+json`` whose config (``application/vnd.pybuild.cachemounts.config.v1+json``)
  is that same index and whose layers are the same tarballs, in the index's order, each annotated with its id
  (``dev.pybuild.cachemount.id``). It is pushed as ``--cache-to type=registry`` pushes the step cache
  (``builder.cacheshare``): blobs first through ``oci.transfer.push_blobs`` (those the repository has are skipped,
  those known in a sibling repository mounted), the manifest last, under the tag.

Tarballs are written by ``CacheMountStore.write_archive`` (pybuild's deterministic layer writer, zstd), so an
unchanged mount gives the same blob and a second export or push of it writes or uploads nothing new. Exporting a
directory replaces what it held: the tarballs first, the index last (atomically), then the tarballs it no longer
names are deleted; a directory that holds other things is refused rather than filled.

Importing verifies each tarball against the index (digest and diff_id), refuses what pybuild's writer never makes
(an absolute name, ``..``, an entry below a symlink, a dangling hard link: ``CacheMountStore.restore``) before
writing anything, and unpacks with the confined applier, owners, modes, times and extended attributes kept. An
imported mount replaces the local one with the same id whole (never merged), unless a running build is using it:
then it is skipped and reported, and the others are imported.
"""

from __future__ import annotations

import fcntl
import io
import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from builder.attrs import csv_fields, key_values
from builder.cachemounts import CacheMountError, CacheMountInUse, CacheMountStore, MountArchive
from builder.errors import BuildError, UsageError
from oci import mediatypes as mt
from oci.canonical import MAX_DOCUMENT_SIZE, canonical_json, load_json_object
from oci.descriptor import Descriptor
from oci.digest import Digest, Hasher, VerifyingReader
from oci.errors import InvalidDigest, InvalidDocument, InvalidReference, OCIError
from oci.manifest import Manifest, parse_manifest
from oci.reference import Reference
from oci.store import ContentStore, atomic_file, pid_alive

if TYPE_CHECKING:
    from builder.remote import Remote

__all__ = [
    "ARTIFACT_TYPE",
    "CONFIG_TYPE",
    "ID_ANNOTATION",
    "INDEX_FILE",
    "Exported",
    "Imported",
    "Location",
    "export_mounts",
    "import_mounts",
    "parse_location",
]

ARTIFACT_TYPE = "application/vnd.pybuild.cachemounts.v1+json"
CONFIG_TYPE = "application/vnd.pybuild.cachemounts.config.v1+json"
ID_ANNOTATION = "dev.pybuild.cachemount.id"
INDEX_FILE = "cachemounts.json"
FORMAT_VERSION = 1
_TARBALL = re.compile(r"[0-9a-f]{64}\.tar\.zst")
_MAX_INDEX = 16 * 1024 * 1024
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Location:
    """Where mounts go or come from: a directory (``path``) or a registry reference (``ref``)."""

    path: Path | None = None
    ref: Reference | None = None

    def __str__(self) -> str:
        return str(self.ref) if self.ref is not None else str(self.path)


def parse_location(text: str, direction: str) -> Location:
    """``DIR``, ``type=local,dest=DIR`` (``src=`` for import) or ``type=registry,ref=REPO:TAG``; ``direction`` is
    ``export`` or ``import``."""
    where = f"cache mounts {direction}"
    if not text.startswith("type="):
        if not text:
            raise UsageError(f"{where}: an empty destination")
        return Location(path=Path(text).absolute())
    attrs = key_values(csv_fields(text, where), where)
    kind = attrs.pop("type")
    path_key = "dest" if direction == "export" else "src"
    if kind == "local":
        path = attrs.pop(path_key, "")
        if attrs or not path:
            raise UsageError(f"{where}: type=local takes {path_key}=DIR and nothing else")
        return Location(path=Path(path).absolute())
    if kind == "registry":
        ref_text = attrs.pop("ref", "")
        if attrs or not ref_text:
            raise UsageError(f"{where}: type=registry takes ref=REPO:TAG and nothing else")
        try:
            ref = Reference.parse(ref_text)
        except InvalidReference as err:
            raise UsageError(f"{where}: {err}") from None
        if direction == "export" and (ref.digest is not None or not ref.tag):
            raise UsageError(f"{where}: cache mounts are pushed under a tag (ref=REPO:TAG)")
        return Location(ref=ref)
    raise UsageError(f"{where}: unknown type {kind!r} (expected local or registry)")


@dataclass(frozen=True, slots=True)
class _Packed:
    """One mount as it travels: its archive's metadata and the tarball's descriptor."""

    archive: MountArchive
    blob: Descriptor

    def to_json(self) -> dict[str, Any]:
        a = self.archive
        return {
            "id": a.id,
            "blob": self.blob.to_json(),
            "diff_id": str(a.diff_id),
            "size": a.size,
            "content": a.content,
            "uid": a.uid,
            "gid": a.gid,
            "mode": a.mode,
            "mtime": a.mtime,
            "created": a.created,
            "last_used": a.last_used,
        }


@dataclass(frozen=True, slots=True)
class Exported:
    location: str
    mounts: tuple[tuple[str, int], ...]  # (id, bytes of the compressed tarball)
    manifest: Digest | None = None  # the artifact's manifest, for a registry


@dataclass(frozen=True, slots=True)
class Imported:
    location: str
    mounts: tuple[tuple[str, int], ...] = ()  # (id, bytes of its files)
    in_use: tuple[str, ...] = ()  # skipped: a running build was using the local mount


# ---------------------------------------------------------------------------------------------------- export


class _HashingFile:
    """A file being written, hashed as it is."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self.hasher = Hasher()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.hasher.update(data)
        self._out.write(data)
        return len(data)


def _pack(store: CacheMountStore, id: str, directory: Path) -> tuple[_Packed, Path]:
    """Write mount ``id`` as a tarball in ``directory``, named by its digest."""
    fd, temp = _temp_file(directory)
    try:
        with os.fdopen(fd, "wb") as f:
            hashing = _HashingFile(f)  # type: ignore[arg-type]
            archive = store.write_archive(id, hashing)  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
        digest = hashing.hasher.digest()
        target = directory / f"{digest.encoded}.tar.zst"
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    blob = Descriptor(mt.OCI_LAYER_ZSTD, digest, hashing.hasher.size)
    return _Packed(archive, blob), target


def _temp_file(directory: Path) -> tuple[int, Path]:
    while True:
        temp = directory / f".{os.getpid()}-{os.urandom(6).hex()}.tar.zst.tmp"
        try:
            return os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644), temp
        except FileExistsError:
            continue


def _chosen(store: CacheMountStore, ids: Sequence[str] | None) -> list[str]:
    """The ids to export: ``ids`` (each must exist), or every mount; sorted."""
    if not ids:
        return sorted(m.id for m in store.list(measure=False))
    missing = [id for id in dict.fromkeys(ids) if store.get(id, measure=False) is None]
    if missing:
        raise CacheMountError(f"no cache mount {', '.join(repr(id) for id in missing)}")
    return sorted(set(ids))


def _index(packed: Sequence[_Packed]) -> bytes:
    return canonical_json({"version": FORMAT_VERSION, "mounts": [p.to_json() for p in packed]})


def export_mounts(
    store: CacheMountStore,
    location: Location,
    ids: Sequence[str] | None = None,
    *,
    remote: Remote | None = None,
    on_status: Callable[[str], None] | None = None,
) -> Exported:
    """Export the mounts ``ids`` (default: all) to ``location``; a registry needs ``remote``."""
    say = on_status or (lambda text: None)
    if location.ref is not None:
        if remote is None:
            raise BuildError(f"{location}: no registry access")
        return _push(store, location.ref, _chosen(store, ids), remote, say)
    assert location.path is not None
    return _write_directory(store, location.path, _chosen(store, ids), say)


@contextmanager
def _locked_directory(path: Path) -> Iterator[None]:
    """One exporter at a time per directory (a flock of the directory itself: nothing is added to it)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_directory(store: CacheMountStore, dest: Path, ids: Sequence[str], say: Callable[[str], None]) -> Exported:
    if dest.exists() and not dest.is_dir():
        raise BuildError(f"{dest}: not a directory")
    if dest.is_dir() and not (dest / INDEX_FILE).is_file():
        if any(name for name in os.listdir(dest) if not name.startswith(".")):
            raise BuildError(
                f"{dest}: not empty and not a cache mounts export (no {INDEX_FILE}); choose a new or empty directory"
            )
    dest.mkdir(parents=True, exist_ok=True)
    with _locked_directory(dest):
        packed = []
        for id in ids:
            say(f"exporting cache mount {id!r}")
            item, _ = _pack(store, id, dest)
            packed.append(item)
        with atomic_file(dest / INDEX_FILE) as f:
            f.write(_index(packed))
        kept = {f"{p.blob.digest.encoded}.tar.zst" for p in packed}
        for name in os.listdir(dest):
            stale = _TARBALL.fullmatch(name) and name not in kept
            dead = name.startswith(".") and name.endswith(".tmp") and _dead(name)
            if stale or dead:
                (dest / name).unlink(missing_ok=True)
    return Exported(str(dest), tuple((p.archive.id, p.blob.size) for p in packed))


def _dead(name: str) -> bool:
    pid = name[1:].split("-", 1)[0]
    return pid.isdigit() and not pid_alive(int(pid))


def _push(
    store: CacheMountStore, ref: Reference, ids: Sequence[str], remote: Remote, say: Callable[[str], None]
) -> Exported:
    from oci.transfer import push_blobs  # the registry client (and requests) only when mounts are pushed

    where = f"cache mounts export {ref}"
    with store.scratch("push") as work:
        packed: list[_Packed] = []
        files: dict[Digest, Path] = {}
        for id in ids:
            say(f"packing cache mount {id!r}")
            item, path = _pack(store, id, work)
            packed.append(item)
            files[item.blob.digest] = path
        config_bytes = _index(packed)
        config = Descriptor(CONFIG_TYPE, Digest.of_bytes(config_bytes), len(config_bytes))
        layers = tuple(p.blob.with_annotations(**{ID_ANNOTATION: p.archive.id}) for p in packed)
        raw = Manifest(config=config, layers=layers, artifact_type=ARTIFACT_TYPE).encode()
        blobs = (*layers, config)

        def open_blob(desc: Descriptor) -> BinaryIO:
            if desc.digest == config.digest:
                return io.BytesIO(config_bytes)
            return open(files[desc.digest], "rb")  # seekable, for resumed chunks

        digests = [desc.digest for desc in blobs]
        say(f"pushing cache mounts to {ref}")
        try:
            sources = remote.sources.repositories(ref.registry, digests)
            push_blobs(remote.client, ref, blobs, open_blob, sources=sources, on_status=say)
            remote.client.put_manifest(ref, raw, mt.OCI_MANIFEST)
        except OCIError as err:
            raise BuildError(f"{where}: {err}") from None
        remote.sources.add(ref.registry, ref.repository, digests)
    return Exported(str(ref), tuple((p.archive.id, p.blob.size) for p in packed), Digest.of_bytes(raw))


# ---------------------------------------------------------------------------------------------------- import


def _parse_index(raw: bytes, where: str) -> list[_Packed]:
    """The mounts of an index (see the module docstring), every field checked."""
    try:
        data = load_json_object(raw, INDEX_FILE)
        if data.get("version") != FORMAT_VERSION or isinstance(data.get("version"), bool):
            raise InvalidDocument(f"version {data.get('version')!r} is not {FORMAT_VERSION}")
        items = data.get("mounts")
        if not isinstance(items, list):
            raise InvalidDocument("'mounts' must be an array")
        packed = [_parse_mount(item, n) for n, item in enumerate(items)]
    except (InvalidDocument, InvalidDigest) as err:
        raise BuildError(f"{where}: not a usable cache mounts export: {err}") from None
    ids = [p.archive.id for p in packed]
    if len(set(ids)) != len(ids):
        raise BuildError(f"{where}: not a usable cache mounts export: an id appears twice")
    return packed


def _parse_mount(item: Any, number: int) -> _Packed:
    what = f"mount {number}"
    if not isinstance(item, dict):
        raise InvalidDocument(f"{what} is not an object")

    def field(name: str, kind: type | tuple[type, ...]) -> Any:
        value = item.get(name)
        if isinstance(value, bool) or not isinstance(value, kind):
            raise InvalidDocument(f"{what}: {name!r} is missing or of the wrong type")
        return value

    blob = Descriptor.from_json(item.get("blob"), f"{what} blob")
    if blob.media_type != mt.OCI_LAYER_ZSTD:
        raise InvalidDocument(f"{what}: the blob is a {blob.media_type}, not a {mt.OCI_LAYER_ZSTD}")
    ident = field("id", str)
    if not ident:
        raise InvalidDocument(f"{what}: an empty id")
    numbers = {name: field(name, int) for name in ("size", "content", "uid", "gid", "mode", "mtime")}
    if any(value < 0 for value in numbers.values()) or numbers["mode"] > 0o7777:
        raise InvalidDocument(f"{what}: a negative number or a mode that is not one")
    archive = MountArchive(
        id=ident,
        diff_id=Digest.parse(field("diff_id", str)),
        created=float(field("created", (int, float))),
        last_used=float(field("last_used", (int, float))),
        **numbers,
    )
    return _Packed(archive, blob)


def import_mounts(
    store: CacheMountStore,
    location: Location,
    ids: Sequence[str] | None = None,
    *,
    remote: Remote | None = None,
    on_status: Callable[[str], None] | None = None,
) -> Imported:
    """Import the mounts ``ids`` (default: all) that ``location`` holds; a registry needs ``remote``."""
    say = on_status or (lambda text: None)
    if location.ref is not None:
        if remote is None:
            raise BuildError(f"{location}: no registry access")
        return _pull(store, location.ref, ids, remote, say)
    assert location.path is not None
    return _read_directory(store, location.path, ids, say)


def _select(packed: Sequence[_Packed], ids: Sequence[str] | None, where: str) -> list[_Packed]:
    if not ids:
        return list(packed)
    have = {p.archive.id: p for p in packed}
    missing = [id for id in dict.fromkeys(ids) if id not in have]
    if missing:
        raise BuildError(f"{where}: has no cache mount {', '.join(repr(id) for id in missing)}")
    return [have[id] for id in dict.fromkeys(ids)]


def _restore_all(
    store: CacheMountStore,
    chosen: Sequence[_Packed],
    opener: Callable[[_Packed], Callable[[], BinaryIO]],
    where: str,
    say: Callable[[str], None],
) -> Imported:
    done: list[tuple[str, int]] = []
    in_use: list[str] = []
    for item in chosen:
        say(f"importing cache mount {item.archive.id!r}")
        try:
            store.restore(item.archive, opener(item))
        except CacheMountInUse:
            in_use.append(item.archive.id)
            continue
        except CacheMountError as err:
            raise BuildError(f"{where}: {err}") from None
        done.append((item.archive.id, item.archive.content))
    return Imported(where, tuple(done), tuple(in_use))


def _read_directory(
    store: CacheMountStore, src: Path, ids: Sequence[str] | None, say: Callable[[str], None]
) -> Imported:
    where = str(src)
    try:
        fd = os.open(src / INDEX_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise BuildError(f"{src}: not a cache mounts export (no {INDEX_FILE})") from None
    except OSError as err:
        raise BuildError(f"{src / INDEX_FILE}: {err.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        raw = f.read(_MAX_INDEX + 1)
    if len(raw) > _MAX_INDEX:
        raise BuildError(f"{src / INDEX_FILE}: larger than {_MAX_INDEX} bytes")
    chosen = _select(_parse_index(raw, where), ids, where)

    def opener(item: _Packed) -> Callable[[], BinaryIO]:
        path = src / f"{item.blob.digest.encoded}.tar.zst"  # a name made of hex digits: it cannot leave src

        def open_blob() -> BinaryIO:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError as err:
                raise CacheMountError(f"{path.name}: {err.strerror}") from None
            stream = VerifyingReader(os.fdopen(fd, "rb"), item.blob.digest, item.blob.size, path.name)
            return stream  # type: ignore[return-value]

        return open_blob

    return _restore_all(store, chosen, opener, where, say)


def _pull(
    store: CacheMountStore, ref: Reference, ids: Sequence[str] | None, remote: Remote, say: Callable[[str], None]
) -> Imported:
    from oci.registry import RegistryError, RegistryNotFound

    where = str(ref)
    repository = Reference(ref.registry, ref.repository)
    try:
        descriptor, raw = remote.client.get_manifest(ref)
    except RegistryNotFound:
        raise BuildError(f"{where}: not found") from None
    except RegistryError as err:
        raise BuildError(f"{where}: {err}") from None
    try:
        if descriptor.media_type != mt.OCI_MANIFEST:
            raise InvalidDocument(f"it is a {descriptor.media_type}, not an OCI image manifest")
        manifest = parse_manifest(raw, descriptor.media_type, "manifest")
        if manifest.artifact_type != ARTIFACT_TYPE:
            raise InvalidDocument(f"its artifactType is {manifest.artifact_type or 'missing'}, not {ARTIFACT_TYPE}")
        if manifest.config.media_type != CONFIG_TYPE or manifest.config.size > MAX_DOCUMENT_SIZE:
            raise InvalidDocument(f"its config is not a {CONFIG_TYPE} of at most {MAX_DOCUMENT_SIZE} bytes")
    except OCIError as err:
        raise BuildError(f"{where}: not a pybuild cache mounts artifact: {err}") from None
    with store.scratch("pull") as work:
        blobs = ContentStore(work / "blobs", work / "ingest")
        try:
            remote.client.fetch_blob(repository, manifest.config, blobs)
        except OCIError as err:
            raise BuildError(f"{where}: {err}") from None
        packed = _parse_index(blobs.read(manifest.config.digest), where)
        layers = [(layer.digest, layer.annotations.get(ID_ANNOTATION)) for layer in manifest.layers]
        if layers != [(p.blob.digest, p.archive.id) for p in packed]:
            raise BuildError(f"{where}: not a usable cache mounts artifact: its layers are not its config's mounts")
        chosen = _select(packed, ids, where)

        def opener(item: _Packed) -> Callable[[], BinaryIO]:
            def open_blob() -> BinaryIO:
                if not blobs.has(item.blob.digest):
                    say(f"pulling cache mount {item.archive.id!r} ({item.blob.size} bytes)")
                    try:
                        remote.client.fetch_blob(repository, item.blob, blobs)  # verified as it is written
                    except OCIError as err:
                        raise CacheMountError(str(err)) from None
                return blobs.open(item.blob.digest, item.blob.size)

            return open_blob

        return _restore_all(store, chosen, opener, where, say)
