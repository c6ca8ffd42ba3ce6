"""The OCI image layout: ``oci-layout``, ``index.json`` and ``blobs/``, with tags as index entries.

A tag is an ``index.json`` entry whose ``org.opencontainers.image.ref.name`` annotation holds the name. Every
change to ``index.json`` is a read-modify-write under an exclusive ``flock`` on the layout directory, written to a
temporary file, fsynced and renamed over the old one, so concurrent writers lose no update and a reader (or a
writer killed half way) never sees a partial index. Blobs go through the layout's ``ContentStore``.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
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
        """Hold the layout's writer lock (an exclusive flock on the layout directory itself)."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
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

    def tag(self, name: str, descriptor: Descriptor) -> None:
        """Point ``name`` at ``descriptor`` (replacing what it pointed at before)."""
        entry = descriptor.with_ref_name(name)

        def change(index: Index) -> Index:
            kept = [d for d in index.manifests if d.ref_name != name]
            return replace(index, manifests=tuple(kept + [entry]))

        self.update_index(change)

    def untag(self, name: str) -> bool:
        found = False

        def change(index: Index) -> Index:
            nonlocal found
            kept = tuple(d for d in index.manifests if d.ref_name != name)
            found = len(kept) != len(index.manifests)
            return replace(index, manifests=kept)

        self.update_index(change)
        return found

    def image(self, descriptor: Descriptor, platform: Platform) -> Image:
        return load_image(self.store, descriptor.with_ref_name(None), platform)

    def reachable(self) -> set[Digest]:
        """Every blob that ``index.json`` reaches: manifests, indexes, configs and layers (missing ones too)."""
        seen: set[Digest] = set()
        pending = list(self.index().manifests)
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
