"""Operations behind the image verbs (``images``, ``inspect``, ``history``, ``tag``): plain functions over the store.

An image is named as Docker users name it: a reference (``busybox``, ``docker.io/library/busybox:latest``), an
image ID (the config digest, or a unique prefix of its hex), or a manifest digest. An ``index.json`` entry without
a name is an untagged ("dangling") image, listed as ``<none>`` (see ``oci.layout``).

``images --filter`` takes Docker's filters: ``dangling=true|false``, ``reference=PATTERN``, ``label=KEY[=VALUE]``,
``before=IMAGE`` and ``since=IMAGE``. As in Docker, several values of one filter match when any does (two
``reference`` patterns list both), except ``label``, where every one must match; different filters must all match.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from builder.errors import ImageNotFound, UsageError
from oci import mediatypes as mt
from oci.compression import decompress_stream
from oci.config import ImageConfig
from oci.descriptor import Descriptor, Platform
from oci.digest import Digest
from oci.errors import InvalidReference, OCIError
from oci.image import Image
from oci.layout import ImageLayout
from oci.reference import Reference
from oci.store import ContentStore

__all__ = [
    "HistoryRow",
    "ImageFilters",
    "ImageSummary",
    "Resolved",
    "base_config",
    "filter_images",
    "find_image",
    "image_by_name",
    "image_history",
    "inspect_image",
    "list_images",
    "matches_reference",
    "parse_image_filters",
    "resolve_image",
    "tag_image",
    "uncompressed_size",
]

_ID_PREFIX = r"(?:sha256:)?([a-f0-9]{1,64})"  # compiled (by re, once) when an image is named by its ID
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ImageSummary:
    reference: Reference | None
    image: Image
    entry: Descriptor | None = None  # the index.json entry (an index, for a multi-platform image)

    @property
    def dangling(self) -> bool:
        """Untagged: the entry carries no name at all (an entry whose name is not a Docker reference is named)."""
        return self.entry is not None and not self.entry.ref_name

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
    """One row per tag and per untagged image, newest first; images whose content is missing or broken are left
    out."""
    rows = [ImageSummary(ref, image, desc) for ref, desc, image in _loaded(layout, platform) if image is not None]
    rows.sort(key=lambda row: (row.image.config.created, str(row.reference)), reverse=True)
    return rows


_Loaded = tuple[Reference | None, Descriptor, Image | None]


def _loaded(layout: ImageLayout, platform: Platform) -> list[_Loaded]:
    """Every index entry with its image view (None where its content is missing or broken)."""
    return [(ref, desc, _load(layout, desc, platform)) for ref, desc in _named_entries(layout)]


def _load(layout: ImageLayout, desc: Descriptor, platform: Platform) -> Image | None:
    """The image of an index entry, its config loaded and checked once, here (None if missing or broken)."""
    try:
        image = layout.image(desc, platform)
        image.config  # noqa: B018
    except OCIError:
        return None
    return image


@dataclass(frozen=True)
class Resolved:
    """What a name given on the command line resolves to."""

    image: Image
    entries: tuple[Descriptor, ...]  # the index.json entries that hold it (names and untagged)
    names: tuple[Reference, ...]  # every reference that points at it
    by_name: Reference | None = None  # the reference the user gave, when the image was named by one

    @property
    def entry(self) -> Descriptor:
        """The entry to point a new name at (an index stays an index), without its name."""
        return self.entries[0].with_ref_name(None)


def resolve_image(layout: ImageLayout, name: str, platform: Platform) -> Resolved:
    """The image ``name`` refers to: a reference in the store, else an image ID, ID prefix or manifest digest."""
    loaded = _loaded(layout, platform)
    try:
        wanted: Reference | None = Reference.parse(name)
    except InvalidReference:
        wanted = None
    found = next(((desc, image) for ref, desc, image in loaded if wanted is not None and ref == wanted), None)
    by_name = wanted if found is not None else None
    if found is not None and found[1] is None:
        raise ImageNotFound(f"{name}: the image's content is missing or broken")
    chosen = found[1] if found is not None else _by_id(loaded, name)
    assert chosen is not None
    entries = tuple(desc for _, desc, image in loaded if image is not None and image.id == chosen.id)
    if found is not None:
        entries = (found[0], *(d for d in entries if d != found[0]))
    names = tuple(ref for ref, _, image in loaded if ref is not None and image is not None and image.id == chosen.id)
    return Resolved(chosen, entries, names, by_name)


def find_image(layout: ImageLayout, name: str, platform: Platform) -> tuple[Image, list[Reference]]:
    """The image ``name`` refers to, and every reference that points at it."""
    resolved = resolve_image(layout, name, platform)
    return resolved.image, list(resolved.names)


def image_by_name(layout: ImageLayout, name: str, platform: Platform) -> Image:
    """The image ``name`` refers to, as ``find_image`` finds it. A reference the store holds (a base image, in a
    build) loads that image alone, not every image of the store as finding its other names or an ID does: a store
    gains an untagged image each time a tag moves."""
    try:
        wanted: Reference | None = Reference.parse(name)
    except InvalidReference:
        wanted = None
    if wanted is not None:
        desc = next((desc for ref, desc in _named_entries(layout) if ref == wanted), None)
        if desc is not None:
            image = _load(layout, desc, platform)
            if image is None:
                raise ImageNotFound(f"{name}: the image's content is missing or broken")
            return image
    if re.fullmatch(_ID_PREFIX, name) is None:
        raise ImageNotFound(f"no such image: {name}")  # what resolve_image says, without loading every image
    return resolve_image(layout, name, platform).image


def _by_id(entries: list[_Loaded], name: str) -> Image:
    match = re.fullmatch(_ID_PREFIX, name)
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


# ------------------------------------------------------------------------------------------------- filters


@dataclass(frozen=True)
class ImageFilters:
    dangling: bool | None = None
    references: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()  # KEY or KEY=VALUE; every one must match
    before: tuple[str, ...] = ()  # images: only rows created before each
    since: tuple[str, ...] = ()  # images: only rows created after each


_FILTER_KEYS = ("before", "dangling", "label", "reference", "since")


def parse_image_filters(texts: Iterable[str]) -> ImageFilters:
    """``--filter KEY=VALUE`` options as Docker reads them; ``UsageError`` for an unknown key or a bad value."""
    values: dict[str, list[str]] = {}
    for text in texts:
        key, eq, value = text.partition("=")
        key = key.strip().lower()
        if not eq or key not in _FILTER_KEYS:
            raise UsageError(f"invalid filter {text!r} (supported: {', '.join(k + '=...' for k in _FILTER_KEYS)})")
        if not value and key != "label":
            raise UsageError(f"invalid filter {text!r}: {key} needs a value")
        values.setdefault(key, []).append(value)
    dangling = None
    if "dangling" in values:
        flags = [v.lower() for v in values["dangling"]]
        bad = [v for v in flags if v not in ("true", "false", "1", "0")]
        if bad:
            raise UsageError(f"invalid filter 'dangling={bad[0]}' (expected true or false)")
        dangling = any(v in ("true", "1") for v in flags)  # as Docker: any true wins
    return ImageFilters(
        dangling=dangling,
        references=tuple(values.get("reference", ())),
        labels=tuple(values.get("label", ())),
        before=tuple(values.get("before", ())),
        since=tuple(values.get("since", ())),
    )


def matches_reference(ref: Reference, pattern: str) -> bool:
    """Whether ``ref`` matches a ``reference=`` glob, in any of the spellings users write."""
    candidates = {str(ref), ref.name, ref.familiar(), f"{ref.familiar()}:{ref.tag}"}
    return any(fnmatch.fnmatchcase(c, pattern) for c in candidates)


def _label_matches(config: ImageConfig, wanted: str) -> bool:
    labels = config.config.labels or {}
    key, eq, value = wanted.partition("=")
    return key in labels and (not eq or labels[key] == value)


def filter_images(
    layout: ImageLayout, rows: Sequence[ImageSummary], filters: ImageFilters, platform: Platform
) -> list[ImageSummary]:
    """The rows every filter lets through (``before``/``since`` name images of the store)."""
    before = [resolve_image(layout, name, platform).image.config.created for name in filters.before]
    since = [resolve_image(layout, name, platform).image.config.created for name in filters.since]
    kept = []
    for row in rows:
        created = row.image.config.created
        if filters.dangling is not None and row.dangling != filters.dangling:
            continue
        if filters.references and not (
            row.reference is not None and any(matches_reference(row.reference, p) for p in filters.references)
        ):
            continue
        if not all(_label_matches(row.image.config, label) for label in filters.labels):
            continue
        if any(created >= moment for moment in before) or any(created <= moment for moment in since):
            continue
        kept.append(row)
    return kept


# ------------------------------------------------------------------------------------------------- inspect


def inspect_image(layout: ImageLayout, name: str, platform: Platform) -> dict[str, Any]:
    resolved = resolve_image(layout, name, platform)
    image, refs = resolved.image, resolved.names
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
        "Layers": [
            {"Digest": str(layer.digest), "DiffID": str(diff_id), "MediaType": layer.media_type, "Size": layer.size}
            for layer, diff_id in zip(image.layers, config.diff_ids, strict=False)
        ],
    }


def base_config(layout: ImageLayout, ref: str, platform: Platform) -> ImageConfig | None:
    """The config of a base image the store holds (by reference), or None if it holds none."""
    try:
        return image_by_name(layout, ref, platform).config
    except (ImageNotFound, OCIError):
        return None


# ------------------------------------------------------------------------------------------------- history


@dataclass(frozen=True)
class HistoryRow:
    """One history entry of an image, as ``docker history`` shows it."""

    id: str  # the image ID on the top row; "<missing>" below it, as Docker shows images it has no record of
    created: str
    created_by: str
    size: int  # the layer's uncompressed size; 0 for an empty_layer entry
    comment: str
    empty_layer: bool
    layer: Descriptor | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "ID": self.id,
            "CreatedAt": self.created,
            "CreatedBy": self.created_by,
            "Size": self.size,
            "Comment": self.comment,
            "EmptyLayer": self.empty_layer,
            "Layer": str(self.layer.digest) if self.layer is not None else None,
        }


def uncompressed_size(blobs: ContentStore, layer: Descriptor) -> int:
    """The size of the layer's tar: the blob's own for an uncompressed layer, else counted by decompressing it."""
    if mt.layer_compression(layer.media_type) == "uncompressed":
        return layer.size
    total = 0
    with blobs.open(layer.digest, layer.size) as raw:
        _, plain = decompress_stream(raw)
        while chunk := plain.read(_CHUNK):
            total += len(chunk)
    return total


def image_history(layout: ImageLayout, name: str, platform: Platform) -> list[HistoryRow]:
    """The history of the image ``name`` refers to, newest first, each non-empty entry with its layer's size."""
    image = resolve_image(layout, name, platform).image
    config = image.config
    layers = list(image.layers)
    entries = [(h.created, h.created_by, h.comment, h.empty_layer) for h in config.history]
    if not entries:  # an image made without history: one anonymous row per layer
        entries = [("", "", "", False)] * len(layers)
    rows: list[HistoryRow] = []
    position = 0
    for created, created_by, comment, empty in entries:
        layer = None
        if not empty and position < len(layers):
            layer, position = layers[position], position + 1
        size = uncompressed_size(layout.store, layer) if layer is not None else 0
        rows.append(HistoryRow("<missing>", created, created_by, size, comment, empty, layer))
    rows.reverse()
    if rows:
        top = rows[0]
        rows[0] = HistoryRow(
            str(image.id), top.created, top.created_by, top.size, top.comment, top.empty_layer, top.layer
        )
    return rows


# ------------------------------------------------------------------------------------------------- tag


def tag_image(layout: ImageLayout, source: str, target: str, platform: Platform) -> Reference:
    """``pybuild tag SOURCE TARGET``: point the name ``target`` at the image ``source`` refers to, as ``docker tag``
    does. The image ``target`` named before stays as an untagged image unless another name holds it."""
    try:
        ref = Reference.parse(target)
    except InvalidReference as err:
        raise UsageError(str(err)) from None
    if ref.digest is not None:
        raise UsageError(f"{target}: refusing to create a tag with a digest reference")
    with layout.locked():  # resolved and named in one step: no prune or rmi in between
        resolved = resolve_image(layout, source, platform)
        layout.tag(str(ref), resolved.entry)
    return ref
