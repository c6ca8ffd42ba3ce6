"""The OCI image layout: ``oci-layout``, ``index.json`` and ``blobs/``, with tags as index entries.

A tag is an ``index.json`` entry whose ``org.opencontainers.image.ref.name`` annotation holds the name. An entry
without that annotation is an untagged ("dangling") image, as Docker shows ``<none>``: when a name moves to another
image, or is removed, and no other entry holds the image it named, the image stays in the index without a name
(so it is still listed, and its blobs stay reachable) until it is deleted on purpose (``remove``). An image has at
most one untagged entry, and none while a name holds it.

Every change to ``index.json`` is a read-modify-write under an exclusive ``flock`` on the layout directory,
written to a temporary file, fsynced and renamed over the old one, so concurrent writers lose no update and a
reader (or a writer killed half way) never sees a partial index. ``locked()`` may be held across several reads
and changes (it is re-entrant within the process), so that deciding and changing are one step. Blobs go through
the layout's ``ContentStore``.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from oci import mediatypes as mt
from oci.canonical import MAX_DOCUMENT_SIZE, canonical_json, load_json_object
from oci.descriptor import Descriptor, Platform
from oci.digest import Digest
from oci.errors import InvalidDocument, LayoutError, OCIError
from oci.image import Image, load_image
from oci.manifest import Index, parse_document, parse_index
from oci.store import ContentStore, atomic_file

__all__ = ["ImageLayout", "INDEX_FILE", "LAYOUT_FILE", "LAYOUT_VERSION"]

LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
LAYOUT_VERSION = "1.0.0"
INGEST_DIR = "ingest"


class ImageLayout:
    """An OCI image layout directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.store = ContentStore(self.root / "blobs", self.root / INGEST_DIR)
        self._mutex = threading.RLock()
        self._depth = 0  # how deeply this process holds the lock (flock itself would deadlock on a second fd)

    @classmethod
    def open(cls, root: str | Path, *, create: bool = False) -> ImageLayout:
        layout = cls(Path(root))
        marker = layout.root / LAYOUT_FILE
        if not marker.exists():
            if not create:
                raise LayoutError(f"{layout.root} is not an OCI image layout (no {LAYOUT_FILE} file)")
            layout._initialise()
        layout._check_marker()
        return layout

    def _initialise(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        with self.locked():
            if not (self.root / INDEX_FILE).exists():
                self._write_atomically(INDEX_FILE, Index().encode())
            if not (self.root / LAYOUT_FILE).exists():
                self._write_atomically(LAYOUT_FILE, canonical_json({"imageLayoutVersion": LAYOUT_VERSION}))

    def _check_marker(self) -> None:
        try:
            data = load_json_object((self.root / LAYOUT_FILE).read_bytes(), f"{self.root / LAYOUT_FILE}")
        except (OSError, InvalidDocument) as err:
            raise LayoutError(f"{self.root}: unreadable {LAYOUT_FILE}: {err}") from None
        version = data.get("imageLayoutVersion")
        if not isinstance(version, str) or not version.startswith("1."):
            raise LayoutError(f"{self.root}: unsupported image layout version {version!r}")

    # --- index.json

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the layout's writer lock (an exclusive flock on the layout directory itself); re-entrant."""
        with self._mutex:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._depth = 1
                yield
            finally:
                self._depth = 0
                os.close(fd)  # closing releases the lock

    def index(self) -> Index:
        path = self.root / INDEX_FILE
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_DOCUMENT_SIZE + 1)
        except FileNotFoundError:
            raise LayoutError(f"{self.root}: missing {INDEX_FILE}") from None
        try:
            return parse_index(raw, what=str(path))
        except InvalidDocument as err:
            raise LayoutError(str(err)) from None

    def update_index(self, change: Callable[[Index], Index]) -> Index:
        """Apply ``change`` to the current index and store the result, atomically and under the lock."""
        with self.locked():
            new = change(self.index())
            self._write_atomically(INDEX_FILE, new.encode())
            return new

    def _write_atomically(self, name: str, data: bytes) -> None:
        ingest = self.root / INGEST_DIR
        ingest.mkdir(exist_ok=True)
        with atomic_file(self.root / name, ingest) as f:
            f.write(data)

    # --- tags

    def tags(self) -> list[Descriptor]:
        """The index entries that carry a ref name, in index order."""
        return [d for d in self.index().manifests if d.ref_name]

    def resolve(self, name: str) -> Descriptor | None:
        for desc in self.index().manifests:
            if desc.ref_name == name:
                return desc
        return None

    def dangling(self) -> list[Descriptor]:
        """The untagged entries (no ref name), in index order."""
        return [d for d in self.index().manifests if not d.ref_name]

    def tag(self, name: str, descriptor: Descriptor) -> None:
        """Point ``name`` at ``descriptor``. The image it pointed at before stays, untagged, unless another entry
        holds it; an untagged entry of ``descriptor``'s image is replaced by the name."""
        entry = descriptor.with_ref_name(name)

        def change(index: Index) -> Index:
            kept = [d for d in index.manifests if d.ref_name != name and not _untagged_of(d, entry.digest)]
            moved = [d for d in index.manifests if d.ref_name == name and d.digest != entry.digest]
            return replace(index, manifests=_keep_untagged(tuple(kept + [entry]), moved))

        self.update_index(change)

    def untag(self, name: str) -> bool:
        """Remove ``name``; the image it named stays, untagged, unless another entry holds it."""
        found = False

        def change(index: Index) -> Index:
            nonlocal found
            removed = [d for d in index.manifests if d.ref_name == name]
            found = bool(removed)
            kept = tuple(d for d in index.manifests if d.ref_name != name)
            return replace(index, manifests=_keep_untagged(kept, removed))

        self.update_index(change)
        return found

    def add_untagged(self, descriptor: Descriptor) -> bool:
        """Keep ``descriptor``'s image in the index without a name, unless an entry holds it already."""
        added = False

        def change(index: Index) -> Index:
            nonlocal added
            manifests = _keep_untagged(index.manifests, [descriptor])
            added = len(manifests) != len(index.manifests)
            return replace(index, manifests=manifests)

        self.update_index(change)
        return added

    def remove(self, digests: Iterable[Digest]) -> list[Descriptor]:
        """Drop every entry of the images ``digests`` name, tagged or not (their blobs are left for a sweep)."""
        removed: list[Descriptor] = []
        gone = set(digests)

        def change(index: Index) -> Index:
            removed[:] = [d for d in index.manifests if d.digest in gone]
            return replace(index, manifests=tuple(d for d in index.manifests if d.digest not in gone))

        self.update_index(change)
        return removed

    def image(self, descriptor: Descriptor, platform: Platform) -> Image:
        return load_image(self.store, descriptor.with_ref_name(None), platform)

    def reachable(self, roots: Iterable[Descriptor] = ()) -> set[Digest]:
        """Every blob that ``index.json`` (and ``roots``, images in use that it may not name) reaches: manifests,
        indexes, configs and layers (missing ones too)."""
        seen: set[Digest] = set()
        pending = [*self.index().manifests, *roots]
        while pending:
            desc = pending.pop()
            if desc.digest in seen:
                continue
            seen.add(desc.digest)
            if not (mt.is_index(desc.media_type) or mt.is_manifest(desc.media_type)):
                continue
            try:
                document = parse_document(self.store.read(desc.digest, MAX_DOCUMENT_SIZE), desc.media_type)
            except (OSError, OCIError):
                continue  # a missing or damaged document reaches nothing more (fsck's business)
            if isinstance(document, Index):
                pending.extend(document.manifests)
            else:
                pending.append(document.config)
                pending.extend(document.layers)
        return seen

    def sweep(self) -> int:
        """Remove what killed writers left in ``ingest/``."""
        return self.store.sweep()


def _untagged_of(entry: Descriptor, digest: Digest) -> bool:
    return not entry.ref_name and entry.digest == digest


def _keep_untagged(manifests: tuple[Descriptor, ...], released: Iterable[Descriptor]) -> tuple[Descriptor, ...]:
    """``manifests`` plus an untagged entry for each image of ``released`` that no entry of ``manifests`` holds."""
    result = list(manifests)
    held = {d.digest for d in manifests}
    for old in released:
        if old.digest not in held:
            held.add(old.digest)
            result.append(old.with_ref_name(None))
    return tuple(result)
