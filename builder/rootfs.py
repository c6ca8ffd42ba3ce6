"""A stage's root filesystem: its layers as snapshot directories, the skeleton under them, and views of the result.

A ``Rootfs`` is the ordered layers of an image or a stage so far (descriptors in the store, with their
diff_ids). ``lowers`` extracts each layer once into the snapshot store and returns the overlayfs lower
directories, top first, with the skeleton at the bottom: a tiny tree holding the mount points every container
needs (``/proc``, ``/sys``, ``/dev``, ``/etc/hosts``, ``/etc/resolv.conf``, ``/etc/hostname``), so that mounting
over them never writes to a step's upper directory and so never into a layer. ``view`` gives the merged tree
read-only, without mounting, for COPY sources, destinations and user lookups.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from builder.snapshot import RootView, SnapshotStore, remove_dir
from oci.descriptor import Descriptor
from oci.digest import Digest
from oci.store import ContentStore

__all__ = ["Rootfs", "ensure_skeleton"]

SKELETON_DIRS = ("dev", "etc", "proc", "sys")
SKELETON_FILES = ("etc/hostname", "etc/hosts", "etc/resolv.conf")


def ensure_skeleton(root: Path) -> Path:
    """``ROOT/skeleton``, made once and published by rename (its contents never change)."""
    target = root / "skeleton"
    if target.is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".skeleton-{os.getpid()}-", dir=root))
    try:
        os.chmod(temp, 0o755)
        for name in SKELETON_DIRS:
            os.mkdir(temp / name, 0o755)
        for name in SKELETON_FILES:
            fd = os.open(temp / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            os.close(fd)
        for name in (*SKELETON_FILES, *SKELETON_DIRS, "."):
            os.utime(temp / name, (0, 0), follow_symlinks=False)
        try:
            os.rename(temp, target)
        except OSError:
            if not target.is_dir():
                raise
            remove_dir(temp)
    except BaseException:
        remove_dir(temp)
        raise
    return target


@dataclass(frozen=True)
class Rootfs:
    """The layers of a root filesystem, bottom first, as stored blobs and their diff_ids."""

    layers: tuple[Descriptor, ...] = ()
    diff_ids: tuple[Digest, ...] = ()
    _views: dict[str, RootView] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.layers) != len(self.diff_ids):
            raise ValueError(f"{len(self.layers)} layers but {len(self.diff_ids)} diff_ids")

    def with_layer(self, layer: Descriptor, diff_id: Digest) -> Rootfs:
        return Rootfs(self.layers + (layer,), self.diff_ids + (diff_id,))

    def snapshots(self, snapshots: SnapshotStore, blobs: ContentStore) -> list[Path]:
        """Each layer's snapshot directory, top first, extracting those not extracted yet."""
        paths = []
        for layer, diff_id in zip(self.layers, self.diff_ids, strict=True):

            def opener(layer: Descriptor = layer, diff_id: Digest = diff_id) -> BinaryIO:
                # Extraction checks the diff_id; an uncompressed layer's digest is the same hash of the same bytes.
                return blobs.open(layer.digest, layer.size, verify=layer.digest != diff_id)

            paths.append(snapshots.ensure(diff_id, opener))
        return paths[::-1]

    def lowers(self, snapshots: SnapshotStore, blobs: ContentStore, skeleton: Path) -> list[Path]:
        return [*self.snapshots(snapshots, blobs), skeleton]

    def view(self, snapshots: SnapshotStore, blobs: ContentStore) -> RootView:
        """The merged tree, read-only (cached: a rootfs never changes)."""
        key = "view"
        if key not in self._views:
            self._views[key] = RootView(self.snapshots(snapshots, blobs))
        return self._views[key]
