"""The operations behind the store verbs that delete, measure and move images: ``rmi``, ``prune``, ``system df``,
``save``, ``load`` and ``export``. Plain functions over a store that return values; ``builder.cli`` prints them.

What the store keeps. A blob stays while something needs it: an image ``index.json`` names (tagged, or untagged:
a dangling image is kept until pruned), an image a running build leased (its bases, and the image it committed
and has not tagged yet: ``CacheIndex.lease_image``), an image a running ``pybuild run`` container uses
(``builder.container.running_images``), the layer of a step-cache entry, or the compressed copy of a kept layer
(a memo under ``ROOT/compressed/``). A snapshot (``ROOT/snapshots/<diff_id hex>``) stays while a kept image has
its layer or a cache entry made it. Nothing else is needed, and only that is what ``prune`` and ``rmi`` sweep.

- ``remove_image`` (``rmi``) follows ``docker rmi``: a name is untagged; the image goes (its index entries, then
  the blobs and snapshots only it needed) when no other name holds it. Named by ID, an image with several names
  needs ``force`` ("image is referenced in multiple repositories"); an image a running container uses is kept.
- ``prune`` removes the dangling images (``until``: only those created longer ago), then every blob and snapshot
  nothing needs (``until``: only those written longer ago), and the memos of compressed copies whose source went.
  It never removes a name, so it never removes anything a name needs, and never a cache entry's layer: after a
  prune, every tagged image is whole and a rebuild is fully cached. (``docker image prune -a`` also deletes the
  tagged images no container uses; pybuild leaves names to ``rmi``, so ``-a`` removes the same as without it:
  pybuild keeps no intermediate images, so every untagged image is dangling.)
- Both run under the store's guard held exclusively (``builder.cache.store_guard``) and the layout's lock, and
  decide what is needed only once they hold them: a build holds the guard shared from writing or finding a blob
  until the cache entry or lease that keeps it is recorded, and a pull, import or load until its tag is written,
  so none of them can lose a blob it is about to reference; and no tag can move between the decision and the
  deletion.
- ``system_df`` measures images, blobs, snapshots, the step cache and cache mounts, with what ``prune`` (for the
  cache and the cache mounts: ``cache prune --all``) would reclaim. ``prune`` never removes a cache mount (as
  ``docker image prune`` leaves the build cache alone).
- ``save_images`` writes ``docker save``'s archive (``oci.docker_archive``) or an OCI layout tar
  (``builder.export.write_oci_archive``), layers as stored unless a compression is asked for; ``load_images``
  reads either (``oci.docker_archive.read_docker_archive`` verifies every blob and layer on the way in) and names
  the images as the archive does; ``export_rootfs`` writes the flattened root filesystem, as ``docker export``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from builder.cache import CacheEntry, CacheIndex, store_guard
from builder.cachemounts import CacheMountStore, tree_size
from builder.cacheops import DiskUsage, disk_usage
from builder.compressed import MEMO_DIR
from builder.container import running_images
from builder.errors import BuildError, UsageError
from builder.export import (
    Exported,
    exported_as_stored,
    exported_view,
    prepare_export,
    write_oci_archive,
    write_rootfs_tar,
)
from builder.images import ImageSummary, list_images, resolve_image
from builder.root import Store
from builder.snapshot import remove_dir
from oci import mediatypes as mt
from oci.canonical import MAX_DOCUMENT_SIZE, load_json_object
from oci.compression import Compression, decompress_stream
from oci.config import parse_config
from oci.descriptor import Descriptor, Platform
from oci.digest import Digest
from oci.docker_archive import read_docker_archive, write_docker_archive
from oci.errors import InvalidDigest, InvalidDocument, InvalidReference, LimitExceeded, OCIError
from oci.frozen import FrozenMap
from oci.image import Image, load_image
from oci.manifest import Index, parse_document
from oci.reference import Reference
from oci.store import atomic_file

__all__ = [
    "ImageUsage",
    "Loaded",
    "PruneOptions",
    "PruneResult",
    "Removed",
    "SystemUsage",
    "UsageRow",
    "archive_output",
    "export_rootfs",
    "load_images",
    "needed_snapshots",
    "plan_prune",
    "prune",
    "remove_image",
    "save_images",
    "system_df",
]

SNAPSHOTS_DIR = "snapshots"
_MAX_MEMO = 4096
_CHUNK = 1 << 20

# ----------------------------------------------------------------------------------------- what is needed


@dataclass(frozen=True)
class _Memo:
    path: Path
    source: Digest
    copy: Digest | None  # None: unreadable, or names another source


def _memos(root: Path) -> list[_Memo]:
    """Every memo of a compressed copy (``builder.compressed``): ``compressed/<kind>/<algorithm>/<hex>``."""
    found: list[_Memo] = []
    base = root / MEMO_DIR
    for kind in Compression:
        try:
            algorithms = sorted((base / kind.value).iterdir())
        except (FileNotFoundError, NotADirectoryError):
            continue
        for algorithm in algorithms:
            if not algorithm.is_dir():
                continue
            for path in sorted(algorithm.iterdir()):
                try:
                    source = Digest(algorithm.name, path.name)
                except InvalidDigest:
                    continue
                found.append(_Memo(path, source, _memo_copy(path, source)))
    return found


def _memo_copy(path: Path, source: Digest) -> Digest | None:
    try:
        with open(path, "rb") as f:
            raw = f.read(_MAX_MEMO + 1)
        data = load_json_object(raw, "memo")
        if len(raw) > _MAX_MEMO or data.get("source") != str(source):
            return None
        return Digest.parse(data["digest"])
    except (OSError, InvalidDocument, InvalidDigest, KeyError, TypeError):
        return None


def _snapshots(root: Path) -> dict[Digest, Path]:
    """The published snapshots by diff_id (half-extracted ones, ``.PID-…``, belong to their writers)."""
    found: dict[Digest, Path] = {}
    try:
        children = sorted((root / SNAPSHOTS_DIR).iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return found
    for path in children:
        if path.name.startswith("."):
            continue
        try:
            found[Digest("sha256", path.name)] = path  # SnapshotStore names them by the sha256 hex alone
        except InvalidDigest:
            continue
    return found


@dataclass(frozen=True)
class _Reach:
    blobs: frozenset[Digest]
    diff_ids: frozenset[Digest]
    config: Digest | None = None  # the image ID (the first platform's, for an index)
    created: str = ""  # the config's time


class _Walker:
    """What each image reaches, read once: its manifests, configs and layers, and its layers' diff_ids. A missing
    or damaged document reaches nothing more (that is ``fsck``'s business, not a reason to delete anything)."""

    def __init__(self, store: Store) -> None:
        self._blobs = store.layout.store
        self._seen: dict[Digest, _Reach] = {}

    def reach(self, descriptor: Descriptor, *, sniff: bool = False) -> _Reach:
        digest = descriptor.digest
        if digest in self._seen:
            return self._seen[digest]
        self._seen[digest] = _Reach(frozenset({digest}), frozenset())  # what it reaches if it cannot be read
        media_type = None if sniff else descriptor.media_type
        if not sniff and not (mt.is_index(media_type or "") or mt.is_manifest(media_type or "")):
            return self._seen[digest]
        blobs, diff_ids = {digest}, set()
        config: Digest | None = None
        created = ""
        try:
            document = parse_document(self._blobs.read(digest, MAX_DOCUMENT_SIZE), media_type)
            if isinstance(document, Index):
                for child in document.manifests:
                    reached = self.reach(child)
                    blobs |= reached.blobs
                    diff_ids |= reached.diff_ids
                    config, created = config or reached.config, created or reached.created
            else:
                config = document.config.digest
                blobs.add(config)
                blobs.update(layer.digest for layer in document.layers)
                parsed = parse_config(self._blobs.read(config, MAX_DOCUMENT_SIZE))
                diff_ids.update(parsed.diff_ids)
                created = parsed.created
        except (OSError, OCIError):
            pass
        reached = _Reach(frozenset(blobs), frozenset(diff_ids), config, created)
        self._seen[digest] = reached
        return reached


@dataclass
class _Needed:
    blobs: set[Digest] = field(default_factory=set)
    diff_ids: set[Digest] = field(default_factory=set)


@dataclass(frozen=True)
class _State:
    """What the store holds and who uses it, read at one moment (under the guard, for a deleter)."""

    entries: tuple[Descriptor, ...]  # index.json
    in_use: tuple[Descriptor, ...]  # leased by running builds, used by running containers (sniffed)
    running: frozenset[Digest]  # the images running containers use
    cache: tuple[CacheEntry, ...]
    memos: tuple[_Memo, ...]
    layers: tuple[tuple[Descriptor, Digest | None], ...] = ()  # leased by running builds (their own steps' layers)

    def needed(self, walker: _Walker, *, without: Collection[Digest] = ()) -> _Needed:
        """What must stay if the images ``without`` names were gone from the index."""
        needed = _Needed()
        roots = [(d, False) for d in self.entries if d.digest not in without] + [(d, True) for d in self.in_use]
        for descriptor, sniff in roots:
            reached = walker.reach(descriptor, sniff=sniff)
            needed.blobs |= reached.blobs
            needed.diff_ids |= reached.diff_ids
        layers = [(entry.layer, entry.diff_id) for entry in self.cache] + list(self.layers)
        for layer, diff_id in layers:
            if layer is not None:
                needed.blobs.add(layer.digest)
            if diff_id is not None:
                needed.diff_ids.add(diff_id)
        for memo in self.memos:  # a kept layer keeps its compressed copies (outputs and pushes reuse them)
            if memo.source in needed.blobs and memo.copy is not None:
                needed.blobs.add(memo.copy)
        return needed

    def in_use_by_running(self, walker: _Walker, descriptor: Descriptor) -> bool:
        return descriptor.digest in self.running or bool(walker.reach(descriptor).blobs & self.running)


def _read_state(store: Store, cache: CacheIndex) -> _State:
    running = frozenset(running_images(store.root))
    in_use = [*cache.leased_images(), *(Descriptor(mt.OCI_MANIFEST, d, 0) for d in sorted(running, key=str))]
    return _State(
        entries=tuple(store.layout.index().manifests),
        in_use=tuple(in_use),
        running=running,
        cache=tuple(cache.entries()),
        memos=tuple(_memos(store.root)),
        layers=tuple(cache.leased_layers()),
    )


def needed_snapshots(
    store: Store,
    in_use: Iterable[Descriptor],
    cache: Iterable[CacheEntry],
    layers: Iterable[tuple[Descriptor, Digest | None]] = (),
) -> frozenset[Digest]:
    """The diff_ids whose snapshots ``prune`` keeps, given ``index.json``, the images in use (leased by running
    builds, used by running containers), the step-cache entries and the layers running builds leased. ``fsck`` asks,
    with what it read itself (reading the state here would also drop dead builds' leases and containers' records,
    which ``fsck`` reports first)."""
    state = _State(tuple(store.layout.index().manifests), tuple(in_use), frozenset(), tuple(cache), (), tuple(layers))
    return frozenset(state.needed(_Walker(store)).diff_ids)


@contextmanager
def _cache_index(store: Store) -> Iterator[CacheIndex]:
    index = CacheIndex(store.root)
    try:
        yield index
    finally:
        index.close()


@contextmanager
def _deleting(store: Store) -> Iterator[CacheIndex]:
    """Everything a deleter holds: the guard exclusively, the layout's lock, and the cache index."""
    with store_guard(store.root, exclusive=True), store.layout.locked(), _cache_index(store) as cache:
        yield cache


# --------------------------------------------------------------------------------------------------- sweep


@dataclass(frozen=True)
class Swept:
    blobs: tuple[tuple[Digest, int], ...] = ()
    snapshots: tuple[tuple[Digest, int], ...] = ()

    @property
    def reclaimed(self) -> int:
        return sum(size for _, size in self.blobs) + sum(size for _, size in self.snapshots)


def _sweep(
    store: Store,
    state: _State,
    needed: _Needed,
    *,
    blobs: Iterable[Digest],
    snapshots: Collection[Digest] | None,
    cutoff: float | None = None,
    dry_run: bool = False,
) -> Swept:
    """Delete the blobs of ``blobs`` and the snapshots (of ``snapshots``, or all) that ``needed`` lacks and that
    were written before ``cutoff`` (a time), then the memos whose source or copy is gone."""
    content = store.layout.store
    deleted: list[tuple[Digest, int]] = []
    for digest in dict.fromkeys(blobs):
        if digest in needed.blobs:
            continue
        try:
            st = content.path(digest).stat()
        except FileNotFoundError:
            continue
        if cutoff is not None and st.st_mtime > cutoff:
            continue
        if not dry_run:
            content.delete(digest)
        deleted.append((digest, st.st_size))
    removed: list[tuple[Digest, int]] = []
    for diff_id, path in _snapshots(store.root).items():
        if diff_id in needed.diff_ids or (snapshots is not None and diff_id not in snapshots):
            continue
        try:
            if cutoff is not None and path.stat().st_mtime > cutoff:
                continue
        except FileNotFoundError:
            continue
        removed.append((diff_id, tree_size(path)))
        if not dry_run:
            remove_dir(path)
    if not dry_run:
        for memo in state.memos:
            if not content.has(memo.source) or memo.copy is None or not content.has(memo.copy):
                memo.path.unlink(missing_ok=True)  # a memo is only a hint: one about nothing is clutter
    return Swept(tuple(deleted), tuple(removed))


# ----------------------------------------------------------------------------------------------------- rmi


@dataclass(frozen=True)
class Removed:
    """What ``rmi NAME`` did: the names it removed and, when the image went, its ID and the blobs deleted."""

    untagged: tuple[Reference | str, ...] = ()
    image: Digest | None = None  # the deleted image's ID (its manifest digest if its config cannot be read)
    swept: Swept = field(default_factory=Swept)


def _short(digest: Digest) -> str:
    return digest.encoded[:12]


def _entry_image_id(store: Store, entry: Descriptor, platform: Platform) -> Digest | None:
    try:
        return store.layout.image(entry, platform).id
    except OCIError:
        return None


def remove_image(store: Store, name: str, *, force: bool, platform: Platform) -> Removed:
    """``docker rmi NAME`` (see the module docstring). ``ImageNotFound`` when ``NAME`` names nothing; a
    ``BuildError`` for a conflict."""
    with _deleting(store) as cache:
        layout = store.layout
        entries = layout.index().manifests
        try:
            ref: Reference | None = Reference.parse(name)
        except InvalidReference:
            ref = None
        named = next((e for e in entries if ref is not None and e.ref_name == str(ref)), None)
        state = _read_state(store, cache)
        walker = _Walker(store)
        if named is not None:
            assert ref is not None
            if any(e.digest == named.digest and e.ref_name and e != named for e in entries):
                layout.untag(str(ref))  # another name holds the image: only this name goes
                return Removed((ref,))
            if state.in_use_by_running(walker, named):
                if not force:
                    raise BuildError(
                        f'conflict: unable to remove repository reference "{name}" (must force) - a running '
                        f"container is using its referenced image {_short(named.digest)}"
                    )
                layout.untag(str(ref))  # kept, untagged, while the container runs
                return Removed((ref,))
            targets = [named]
            untagged: list[Reference | str] = [ref]
            image_id = walker.reach(named).config
        else:
            resolved = resolve_image(layout, name, platform)  # an ID, ID prefix or manifest digest
            targets = list(resolved.entries)
            untagged = [_familiar(d.ref_name) for d in targets if d.ref_name]
            image_id = resolved.image.id
            if len(untagged) > 1 and not force:
                raise BuildError(
                    f"conflict: unable to delete {_short(image_id)} (must be forced) - image is referenced in "
                    "multiple repositories"
                )
            if any(state.in_use_by_running(walker, d) for d in targets):
                raise BuildError(
                    f"conflict: unable to delete {_short(image_id)} (cannot be forced) - image is being used by a "
                    "running container"
                )
        digests = {d.digest for d in targets}
        candidates: set[Digest] = set()
        diff_ids: set[Digest] = set()
        for descriptor in targets:
            reached = walker.reach(descriptor)
            candidates |= reached.blobs
            diff_ids |= reached.diff_ids
        candidates |= {m.copy for m in state.memos if m.source in candidates and m.copy is not None}
        layout.remove(digests)
        state = _read_state(store, cache)
        swept = _sweep(store, state, state.needed(walker), blobs=sorted(candidates, key=str), snapshots=diff_ids)
        return Removed(tuple(untagged), image_id or targets[0].digest, swept)


def _familiar(name: str) -> Reference | str:
    try:
        return Reference.parse(name)
    except InvalidReference:
        return name


# --------------------------------------------------------------------------------------------------- prune


@dataclass(frozen=True)
class PruneOptions:
    until: float | None = None  # seconds: only images created, and blobs and snapshots written, longer ago


@dataclass(frozen=True)
class PrunedImage:
    digest: Digest  # the manifest (or index) digest of the untagged entry
    id: Digest | None  # the image ID, when its config can be read


@dataclass(frozen=True)
class PruneResult:
    images: tuple[PrunedImage, ...]
    swept: Swept

    @property
    def reclaimed(self) -> int:
        return self.swept.reclaimed

    def to_json(self) -> dict[str, Any]:
        return {
            "ImagesDeleted": [
                {"Deleted": str(image.id or image.digest), "Digest": str(image.digest)} for image in self.images
            ],
            "BlobsDeleted": [{"Digest": str(d), "Size": size} for d, size in self.swept.blobs],
            "SnapshotsDeleted": [{"DiffID": str(d), "Size": size} for d, size in self.swept.snapshots],
            "SpaceReclaimed": self.reclaimed,
        }


_FRACTION = re.compile(r"(\.\d{6})\d+")


def _timestamp(created: str) -> float | None:
    """Seconds since the epoch of an RFC 3339 time (nanoseconds and ``Z`` allowed), None if unreadable."""
    try:
        return datetime.fromisoformat(_FRACTION.sub(r"\1", created).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _prunable(state: _State, walker: _Walker, options: PruneOptions, now: float) -> list[PrunedImage]:
    chosen: dict[Digest, PrunedImage] = {}
    for entry in state.entries:
        if entry.ref_name or entry.digest in chosen:
            continue
        if any(e.digest == entry.digest and e.ref_name for e in state.entries):
            continue  # never the case in a layout pybuild wrote; a name needs it anyway
        if state.in_use_by_running(walker, entry) or any(d.digest == entry.digest for d in state.in_use):
            continue
        reached = walker.reach(entry)
        if options.until is not None:
            moment = _timestamp(reached.created)
            if moment is not None and now - moment <= options.until:
                continue
        chosen[entry.digest] = PrunedImage(entry.digest, reached.config)
    return list(chosen.values())


def _prune(
    store: Store, cache: CacheIndex, options: PruneOptions, only: set[Digest] | None, now: float, *, dry_run: bool
) -> PruneResult:
    state = _read_state(store, cache)
    walker = _Walker(store)
    images = _prunable(state, walker, options, now)
    if only is not None:
        images = [image for image in images if image.digest in only]
    gone = {image.digest for image in images}
    if not dry_run and gone:
        store.layout.remove(gone)
        state = _read_state(store, cache)
    needed = state.needed(walker, without=gone if dry_run else ())
    cutoff = now - options.until if options.until is not None else None
    swept = _sweep(store, state, needed, blobs=list(store.layout.store), snapshots=None, cutoff=cutoff, dry_run=dry_run)
    return PruneResult(tuple(images), swept)


def plan_prune(store: Store, options: PruneOptions, now: float | None = None) -> PruneResult:
    """What ``prune`` would delete now (to ask the user); ``prune`` decides again, under the guard."""
    with _cache_index(store) as cache:
        return _prune(store, cache, options, None, time.time() if now is None else now, dry_run=True)


def prune(
    store: Store, options: PruneOptions, *, only: set[Digest] | None = None, now: float | None = None
) -> PruneResult:
    """Remove the dangling images (of ``only``, when given: the ones the user agreed to), then every blob and
    snapshot nothing needs. See the module docstring."""
    with _deleting(store) as cache:
        return _prune(store, cache, options, only, time.time() if now is None else now, dry_run=False)


# ----------------------------------------------------------------------------------------------- system df


@dataclass(frozen=True)
class UsageRow:
    type: str
    total: int
    active: int
    size: int
    reclaimable: int

    def to_json(self) -> dict[str, Any]:
        return {
            "Type": self.type,
            "TotalCount": self.total,
            "Active": self.active,
            "Size": self.size,
            "Reclaimable": self.reclaimable,
        }


@dataclass(frozen=True)
class ImageUsage:
    summary: ImageSummary
    size: int  # bytes of every blob the image reaches
    shared: int  # of those, bytes another image reaches too
    containers: int  # running containers using it

    @property
    def unique(self) -> int:
        return self.size - self.shared

    def to_json(self) -> dict[str, Any]:
        return {
            **self.summary.to_json(),
            "Size": self.size,
            "SharedSize": self.shared,
            "UniqueSize": self.unique,
            "Containers": self.containers,
        }


@dataclass(frozen=True)
class SystemUsage:
    rows: tuple[UsageRow, ...]
    images: tuple[ImageUsage, ...]
    cache: DiskUsage  # the step cache's, with its entries for -v

    def to_json(self, verbose: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {"Types": [row.to_json() for row in self.rows]}
        if verbose:
            data["Images"] = [image.to_json() for image in self.images]
            data["BuildCache"] = [record.to_json() for record in self.cache.records]
        return data


def _blob_sizes(store: Store) -> dict[Digest, int]:
    sizes: dict[Digest, int] = {}
    content = store.layout.store
    for digest in content:
        try:
            sizes[digest] = content.path(digest).stat().st_size
        except FileNotFoundError:
            continue
    return sizes


def system_df(store: Store, platform: Platform, now: float | None = None) -> SystemUsage:
    """``docker system df``: what images, blobs, snapshots and the step cache hold, and what ``prune`` (for the
    cache and the cache mounts, ``cache prune --all``) would reclaim."""
    moment = time.time() if now is None else now
    with _cache_index(store) as cache:
        state = _read_state(store, cache)
        leased_keys = cache.leased()
        usage = disk_usage(store, cache)
        walker = _Walker(store)
        dry = _prune(store, cache, PruneOptions(), None, moment, dry_run=True)
    sizes = _blob_sizes(store)
    mounts = CacheMountStore(store.root).list()
    needed_now = state.needed(walker)
    image_digests = list(dict.fromkeys(d.digest for d in state.entries))
    reach = {d.digest: walker.reach(d) for d in state.entries}
    image_blobs: set[Digest] = set().union(*(r.blobs for r in reach.values())) if reach else set()
    swept_blobs = {d for d, _ in dry.swept.blobs}
    snapshots = _snapshots(store.root)
    snapshot_sizes = {diff_id: tree_size(path) for diff_id, path in snapshots.items()}
    swept_snapshots = {d for d, _ in dry.swept.snapshots}
    active_images = sum(state.in_use_by_running(walker, d) for d in {d.digest: d for d in state.entries}.values())
    rows = (
        UsageRow(
            "Images",
            len(image_digests),
            active_images,
            sum(sizes.get(d, 0) for d in image_blobs),
            sum(sizes.get(d, 0) for d in image_blobs & swept_blobs),
        ),
        UsageRow(
            "Blobs",
            len(sizes),
            len(needed_now.blobs & sizes.keys()),
            sum(sizes.values()),
            sum(sizes.get(d, 0) for d in swept_blobs),
        ),
        UsageRow(
            "Snapshots",
            len(snapshots),
            len(needed_now.diff_ids & snapshots.keys()),
            sum(snapshot_sizes.values()),
            sum(snapshot_sizes[d] for d in swept_snapshots if d in snapshot_sizes),
        ),
        UsageRow(
            "Build Cache",
            usage.entries,
            len({str(e.key) for e in state.cache} & leased_keys),
            usage.total,
            usage.reclaimable,
        ),
        UsageRow(
            "Cache Mounts",
            len(mounts),
            sum(m.in_use for m in mounts),
            sum(m.size or 0 for m in mounts),
            sum(m.size or 0 for m in mounts if not m.in_use),
        ),
    )
    images = []
    for summary in list_images(store.layout, platform):
        entry = summary.entry
        assert entry is not None
        mine = reach[entry.digest].blobs
        others: set[Digest] = set()
        for digest, reached in reach.items():
            if digest != entry.digest:
                others |= reached.blobs
        images.append(
            ImageUsage(
                summary,
                sum(sizes.get(d, 0) for d in mine),
                sum(sizes.get(d, 0) for d in mine & others),
                int(state.in_use_by_running(walker, entry)),
            )
        )
    return SystemUsage(rows, tuple(images), usage)


# ------------------------------------------------------------------------------------------- save and load


@contextmanager
def archive_output(dest: str | None, stdout: BinaryIO) -> Iterator[BinaryIO]:
    """Where an archive goes: standard output (``-`` or no ``-o``; never a terminal), or a file made whole or not
    at all."""
    if not dest or dest == "-":
        isatty = getattr(stdout, "isatty", None)
        if isatty is not None and isatty():
            raise UsageError("cowardly refusing to write an archive to a terminal", hint="use -o FILE or redirect")
        yield stdout
        stdout.flush()
        return
    target = Path(dest).absolute()
    if target.is_dir():
        raise UsageError(f"{dest} is a directory")
    if not target.parent.is_dir():
        raise UsageError(f"cannot write {dest}: its directory does not exist")
    with atomic_file(target, mode=0o666) as f:  # the umask applies
        yield f


def _repository_only(text: str) -> Reference | None:
    """``busybox`` (a repository without tag or digest) as ``docker save`` reads it: every tag of it."""
    if "@" in text or ":" in text.rsplit("/", 1)[-1]:
        return None
    try:
        return Reference.parse(text)
    except InvalidReference:
        return None


def _images_to_save(store: Store, names: Sequence[str], platform: Platform) -> list[tuple[Image, list[Reference]]]:
    """Each image the names give, once, with the names it is saved under (none for one given by ID)."""
    chosen: dict[Digest, tuple[Image, list[Reference]]] = {}
    tagged = [
        (ref, desc)
        for desc in store.layout.tags()
        if (ref := _familiar(desc.ref_name or "")) and isinstance(ref, Reference)
    ]
    for name in names:
        picks: list[tuple[Image, Reference | None]] = []
        repository = _repository_only(name)
        if repository is not None:
            for ref, desc in tagged:
                if ref.name == repository.name and ref.tag and ref.digest is None:
                    picks.append((store.layout.image(desc, platform), ref))
        if not picks:
            resolved = resolve_image(store.layout, name, platform)
            by_name = resolved.by_name
            picks.append((resolved.image, by_name if by_name is not None and by_name.digest is None else None))
        for image, ref in picks:
            held = chosen.setdefault(image.digest, (image, []))
            if ref is not None and ref not in held[1]:
                held[1].append(ref)
    return list(chosen.values())


def save_images(
    store: Store,
    names: Sequence[str],
    out: BinaryIO,
    *,
    format: str,
    platform: Platform,
    compression: Compression | None = None,
    on_status: Callable[[str], None] | None = None,
) -> None:
    """``docker save``: the images ``names`` give, as a docker archive (``format="docker"``) or an OCI layout tar
    (``"oci"``); layers as stored, or compressed as ``compression`` asks (once, remembered)."""
    say = on_status or (lambda _message: None)
    if format not in ("docker", "oci"):
        raise UsageError(f"unknown archive format {format!r} (expected docker or oci)")
    if format == "docker" and compression is Compression.ZSTD:
        raise UsageError("a docker archive cannot carry zstd layers (docker load reads plain and gzip ones)")
    with store_guard(store.root):  # a concurrent prune or rmi waits until every blob is written out
        images = _images_to_save(store, names, platform)
        exported: list[tuple[Exported, list[Reference]]] = []
        for image, refs in images:
            if compression is None:
                exported.append((exported_as_stored(image), refs))
            else:
                exported.append((prepare_export(image, store, compression, FrozenMap(), say), refs))
        if format == "oci":
            write_oci_archive(exported, store, None, out, say)
        else:
            say("writing docker archive")
            views = [(exported_view(e, store) if compression is not None else e.image, refs) for e, refs in exported]
            write_docker_archive(views, out)


@dataclass(frozen=True)
class Loaded:
    """An image ``load`` stored: its ID and manifest digest, the names it got, and what those names held before."""

    id: Digest
    digest: Digest
    names: tuple[Reference, ...]
    replaced: tuple[tuple[Reference, Digest], ...] = ()  # a name that held another image (now untagged): its ID


@contextmanager
def _archive_file(store: Store, source: str, stdin: BinaryIO) -> Iterator[Path]:
    """A plain tar file of the archive: ``source`` itself when it is one, else a scratch copy (of standard input,
    or decompressed from gzip or zstd, as ``docker load`` reads them, within the store's size limit)."""
    if source != "-":
        path = Path(source)
        try:
            with open(path, "rb") as f:
                kind, _ = decompress_stream(f)
        except FileNotFoundError:
            raise BuildError(f"open {source}: no such file or directory") from None
        except IsADirectoryError:
            raise BuildError(f"{source} is a directory, not an archive") from None
        if kind is Compression.NONE:
            yield path
            return
    elif getattr(stdin, "isatty", lambda: False)():
        raise UsageError("requested load from stdin, but stdin is a terminal", hint="use -i FILE or redirect")
    scratch = store.scratch_dir("load")
    try:
        target = scratch / "archive.tar"
        with open(path, "rb") if source != "-" else _unclosed(stdin) as raw, open(target, "wb") as copy:
            kind, plain = decompress_stream(raw)
            # A compressed archive may be a bomb: it may expand as far as one layer may (a plain one costs its sender
            # as much as it costs us).
            limit = store.limits.max_bytes if kind is not Compression.NONE else None
            while chunk := plain.read(_CHUNK):
                if limit is not None and copy.tell() + len(chunk) > limit:
                    raise LimitExceeded.too_large("standard input" if source == "-" else source, limit)
                copy.write(chunk)
        yield target
    finally:
        remove_dir(scratch)


@contextmanager
def _unclosed(stream: BinaryIO) -> Iterator[BinaryIO]:
    yield stream


def load_images(
    store: Store, source: str, stdin: BinaryIO, platform: Platform, on_status: Callable[[str], None] | None = None
) -> list[Loaded]:
    """``docker load``: the images of a docker archive or an OCI layout tar (``source`` a path, or ``-`` for
    ``stdin``), every blob verified into the store, named as the archive names them (untagged otherwise)."""
    say = on_status or (lambda _message: None)
    with _archive_file(store, source, stdin) as path, store_guard(store.root):
        say(f"loading {source}")
        found = read_docker_archive(path, store.layout.store, platform=platform, max_layer_bytes=store.limits.max_bytes)
        layout = store.layout
        loaded = []
        for item in found:
            image = load_image(layout.store, item.descriptor, platform)
            replaced = []
            with layout.locked():
                for ref in item.tags:
                    before = layout.resolve(str(ref))
                    if before is not None and before.digest != item.descriptor.digest:
                        old = _entry_image_id(store, before, platform)
                        replaced.append((ref, old or before.digest))
                    layout.tag(str(ref), item.descriptor)
                if not item.tags:
                    layout.add_untagged(item.descriptor)
            loaded.append(Loaded(image.id, image.digest, item.tags, tuple(replaced)))
    return loaded


def export_rootfs(
    store: Store, name: str, out: BinaryIO, platform: Platform, on_status: Callable[[str], None] | None = None
) -> None:
    """``docker export``, of an image: its flattened root filesystem (whiteouts applied) as one tar."""
    with store_guard(store.root):
        image = resolve_image(store.layout, name, platform).image
        write_rootfs_tar(image, store, None, out, on_status or (lambda _message: None))
