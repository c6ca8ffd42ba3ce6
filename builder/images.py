"""Operations behind the image verbs (``images``, ``inspect``): plain functions over the store.

An image is named as Docker users name it: a reference (``busybox``, ``docker.io/library/busybox:latest``), an
image ID (the config digest, or a unique prefix of its hex), or a manifest digest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from builder.errors import ImageNotFound
from oci.config import ImageConfig
from oci.descriptor import Descriptor, Platform
from oci.digest import Digest
from oci.errors import InvalidReference, OCIError
from oci.image import Image
from oci.layout import ImageLayout
from oci.reference import Reference

__all__ = ["ImageSummary", "base_config", "find_image", "inspect_image", "list_images"]

_ID_PREFIX = re.compile(r"(?:sha256:)?([a-f0-9]{1,64})")


@dataclass(frozen=True)
class ImageSummary:
    reference: Reference | None
    image: Image

    def to_json(self) -> dict[str, Any]:
        ref = self.reference
        return {
            "Repository": ref.familiar() if ref else "<none>",
            "Tag": ref.tag if ref and ref.tag else "<none>",
            "Name": str(ref) if ref else "",
            "ID": str(self.image.id),
            "Digest": str(self.image.digest),
            "Created": self.image.config.created,
            "Size": self.image.size(),
        }


def _named_entries(layout: ImageLayout) -> list[tuple[Reference | None, Descriptor]]:
    entries = []
    for desc in layout.index().manifests:
        ref: Reference | None = None
        if desc.ref_name:
            try:
                ref = Reference.parse(desc.ref_name)
            except InvalidReference:
                ref = None  # a layout written by another tool may use plain tags such as "latest"
        entries.append((ref, desc))
    return entries


def list_images(layout: ImageLayout, platform: Platform) -> list[ImageSummary]:
    """One row per tag, newest first; images whose content is missing or broken are left out."""
    rows = [ImageSummary(ref, image) for ref, _, image in _loaded(layout, platform) if image is not None]
    rows.sort(key=lambda row: (row.image.config.created, str(row.reference)), reverse=True)
    return rows


def _loaded(layout: ImageLayout, platform: Platform) -> list[tuple[Reference | None, Descriptor, Image | None]]:
    """Every index entry with its image view (None where its content is missing or broken)."""
    result = []
    for ref, desc in _named_entries(layout):
        try:
            image: Image | None = layout.image(desc, platform)
            image.config  # type: ignore[union-attr]  # noqa: B018 - load and check it once, here
        except OCIError:
            image = None
        result.append((ref, desc, image))
    return result


def find_image(layout: ImageLayout, name: str, platform: Platform) -> tuple[Image, list[Reference]]:
    """The image ``name`` refers to, and every reference that points at it."""
    entries = _loaded(layout, platform)
    try:
        wanted: Reference | None = Reference.parse(name)
    except InvalidReference:
        wanted = None
    chosen = next((image for ref, _, image in entries if wanted is not None and ref == wanted), None)
    if chosen is None:
        chosen = _by_id(entries, name)
    names = [ref for ref, _, image in entries if ref is not None and image is not None and image.id == chosen.id]
    return chosen, names


def _by_id(entries: list[tuple[Reference | None, Descriptor, Image | None]], name: str) -> Image:
    match = _ID_PREFIX.fullmatch(name)
    if match is None:
        raise ImageNotFound(f"no such image: {name}")
    prefix = match.group(1)
    found: dict[Digest, Image] = {}
    for _, desc, image in entries:
        if image is None:
            continue
        if any(h.startswith(prefix) for h in (image.id.encoded, image.digest.encoded, desc.digest.encoded)):
            found.setdefault(image.id, image)
    if not found:
        raise ImageNotFound(f"no such image: {name}")
    if len(found) > 1:
        raise ImageNotFound(f"{name} is ambiguous: it matches {len(found)} images")
    return next(iter(found.values()))


def inspect_image(layout: ImageLayout, name: str, platform: Platform) -> dict[str, Any]:
    image, refs = find_image(layout, name, platform)
    config = image.config
    return {
        "Id": str(image.id),
        "RepoTags": [f"{ref.familiar()}:{ref.tag}" for ref in refs if ref.tag],
        "Names": [str(ref) for ref in refs],
        "Digest": str(image.digest),
        "MediaType": image.descriptor.media_type,
        "Created": config.created,
        "Author": config.author,
        "Architecture": config.architecture,
        "Os": config.os,
        **({"Variant": config.variant} if config.variant else {}),
        "Config": config.config.to_json(),
        "RootFS": {"Type": "layers", "Layers": [str(d) for d in config.diff_ids]},
        "History": [h.to_json() for h in config.history],
        "Size": image.size(),
        "Manifest": image.manifest.to_json(),
    }


def base_config(layout: ImageLayout, ref: str, platform: Platform) -> ImageConfig | None:
    """The config of a base image the store holds (by reference), or None if it holds none."""
    try:
        image, _ = find_image(layout, ref, platform)
        return image.config
    except (ImageNotFound, OCIError):
        return None
