"""``pybuild import``: a one-layer image from a root filesystem tarball, like ``docker import``.

The tarball (plain, gzip or zstd; a file or standard input) is unpacked through the confined applier into a
scratch tree, so hostile entries are refused exactly as in a base image, and the tree is written back as a
deterministic layer: the same files give the same digest whatever order or format the tarball had.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from builder.cache import store_guard
from builder.changes import apply_changes
from builder.commit import rfc3339, store_image
from builder.errors import RootfsImportError
from builder.limits import limit_hint
from builder.progress import Progress
from builder.root import Store
from oci.apply import apply_layer, remove_tree
from oci.compression import Compression
from oci.config import History, ImageConfig, RuntimeConfig
from oci.descriptor import Descriptor, Platform
from oci.errors import OCIError
from oci.image import Image
from oci.layer import tree_items, write_layer
from oci.reference import Reference

__all__ = ["ImportRequest", "import_rootfs"]


@dataclass(frozen=True)
class ImportRequest:
    source: str  # a path, or "-" for standard input
    tags: tuple[Reference, ...]
    platform: Platform
    changes: tuple[str, ...] = ()
    message: str = ""
    compression: Compression = Compression.NONE
    epoch: int | None = None  # SOURCE_DATE_EPOCH


def import_rootfs(store: Store, request: ImportRequest, progress: Progress) -> Image:
    with store_guard(store.root):  # no prune between writing the layer and the tag naming it
        return _import(store, request, progress)


def _import(store: Store, request: ImportRequest, progress: Progress) -> Image:
    runtime = apply_changes(RuntimeConfig(), request.changes)
    label = "-" if request.source == "-" else os.path.basename(request.source)
    scratch = store.scratch_dir("import")
    try:
        progress.status(f"unpacking {label}")
        try:
            if request.source == "-":
                apply_layer(sys.stdin.buffer, scratch, limits=store.limits, what="tarball")
            else:
                with open(request.source, "rb") as source:
                    apply_layer(source, scratch, limits=store.limits, what="tarball")
        except OCIError as err:
            raise RootfsImportError(f"import {label}: {err}", hint=limit_hint(err)) from err
        except FileNotFoundError:
            raise RootfsImportError(f"import {label}: no such file") from None
        except IsADirectoryError:
            raise RootfsImportError(f"import {label}: is a directory, not a tarball") from None
        progress.status("writing layer")
        with store.layout.store.writer() as blob:
            info = write_layer(tree_items(scratch, clamp_mtime=request.epoch), blob, request.compression)
            layer_digest = blob.commit()
            layer = Descriptor(request.compression.layer_media_type, layer_digest, blob.size)
    finally:
        parent = os.open(scratch.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            remove_tree(parent, scratch.name)
        finally:
            os.close(parent)
    created = rfc3339(request.epoch)
    config = ImageConfig(
        architecture=request.platform.architecture,
        os=request.platform.os,
        variant=request.platform.variant,
        config=runtime,
        diff_ids=(info.diff_id,),
        history=(
            History(
                created=created,
                created_by="pybuild import",
                comment=request.message or f"Imported from {label}",
            ),
        ),
        created=created,
    )
    image = store_image(store.layout, config, [layer])
    for ref in request.tags:
        store.layout.tag(str(ref), image.descriptor)
    if not request.tags:
        store.layout.add_untagged(image.descriptor)  # as docker import without a name: a <none> image
    return image
