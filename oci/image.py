"""Read-only image views over any blob source, platform selection, and the invariant checker.

An ``Image`` is a manifest descriptor plus a ``BlobSource``; its manifest and config are read (and verified) on
first use and kept. Changing an image means writing a new one; nothing here writes. ``validate_image`` checks
everything a consumer such as umoci checks: every blob hashes to its name and has its declared size, media
types are what they should be, each layer decompresses as its type says and hashes to its diff_id.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import BinaryIO, Protocol

from oci import mediatypes as mt
from oci.canonical import MAX_DOCUMENT_SIZE
from oci.compression import Compression, decompress_stream
from oci.config import ImageConfig, parse_config
from oci.descriptor import Descriptor, Platform
from oci.digest import Digest, Hasher
from oci.errors import DigestMismatch, InvalidDocument, SizeMismatch, UnsupportedMediaType
from oci.manifest import Index, Manifest, parse_index, parse_manifest

__all__ = ["BlobSource", "Image", "load_image", "select_platform", "validate_image"]

_CHUNK = 1 << 20


class BlobSource(Protocol):
    def open(self, digest: Digest, size: int | None = None) -> BinaryIO: ...

    def read(self, digest: Digest, max_size: int | None = None) -> bytes: ...

    def has(self, digest: Digest) -> bool: ...


@dataclass(frozen=True, eq=False)
class Image:
    source: BlobSource
    descriptor: Descriptor

    @property
    def digest(self) -> Digest:
        """The manifest digest (what a registry and ``name@sha256:…`` refer to)."""
        return self.descriptor.digest

    @cached_property
    def raw_manifest(self) -> bytes:
        raw = self.source.read(self.descriptor.digest, MAX_DOCUMENT_SIZE)
        if len(raw) != self.descriptor.size:
            raise SizeMismatch(f"manifest {self.digest}: {len(raw)} bytes, descriptor says {self.descriptor.size}")
        return raw

    @cached_property
    def manifest(self) -> Manifest:
        return parse_manifest(self.raw_manifest, self.descriptor.media_type, f"manifest {self.digest}")

    @property
    def id(self) -> Digest:
        """The config digest: Docker's image ID."""
        return self.manifest.config.digest

    @cached_property
    def raw_config(self) -> bytes:
        desc = self.manifest.config
        raw = self.source.read(desc.digest, MAX_DOCUMENT_SIZE)
        if len(raw) != desc.size:
            raise SizeMismatch(f"config {desc.digest}: {len(raw)} bytes, descriptor says {desc.size}")
        return raw

    @cached_property
    def config(self) -> ImageConfig:
        if not mt.is_config(self.manifest.config.media_type):
            raise UnsupportedMediaType(
                f"manifest {self.digest}: config has media type {self.manifest.config.media_type}"
            )
        return parse_config(self.raw_config, f"config {self.manifest.config.digest}")

    @property
    def layers(self) -> tuple[Descriptor, ...]:
        return self.manifest.layers

    def layer_pairs(self) -> list[tuple[Descriptor, Digest]]:
        """Each layer descriptor with its diff_id; the manifest and config must agree on the count."""
        layers, diff_ids = self.manifest.layers, self.config.diff_ids
        if len(layers) != len(diff_ids):
            raise InvalidDocument(
                f"image {self.digest}: manifest has {len(layers)} layers but config has {len(diff_ids)} diff_ids"
            )
        return list(zip(layers, diff_ids, strict=True))

    def size(self) -> int:
        """Bytes of manifest, config and layers as stored."""
        return self.descriptor.size + self.manifest.config.size + sum(layer.size for layer in self.layers)


def select_platform(index: Index, platform: Platform) -> Descriptor:
    """The entry of ``index`` for ``platform``; attestation manifests (platform unknown/unknown) are skipped."""
    candidates = [d for d in index.manifests if mt.is_manifest(d.media_type) or mt.is_index(d.media_type)]
    for desc in candidates:
        if desc.platform is not None and platform.matches(desc.platform):
            return desc
    available = sorted({str(d.platform) for d in candidates if d.platform and d.platform.os != "unknown"})
    raise InvalidDocument(
        f"no image for platform {platform} (available: {', '.join(available) or 'none with a platform'})"
    )


def load_image(source: BlobSource, descriptor: Descriptor, platform: Platform, *, depth: int = 0) -> Image:
    """The image ``descriptor`` names, choosing ``platform`` from an index."""
    if mt.is_manifest(descriptor.media_type):
        return Image(source, descriptor)
    if not mt.is_index(descriptor.media_type):
        raise UnsupportedMediaType(f"{descriptor.digest}: {descriptor.media_type} is not an image or an index")
    if depth > 4:
        raise InvalidDocument(f"{descriptor.digest}: indexes nested too deeply")
    raw = source.read(descriptor.digest, MAX_DOCUMENT_SIZE)
    index = parse_index(raw, descriptor.media_type, f"index {descriptor.digest}")
    return load_image(source, select_platform(index, platform), platform, depth=depth + 1)


def validate_image(image: Image) -> None:
    """Check every invariant of ``image``; raise the first ``OCIError`` found."""
    manifest = image.manifest
    if not mt.is_config(manifest.config.media_type):
        raise UnsupportedMediaType(f"config has media type {manifest.config.media_type}")
    for layer, diff_id in image.layer_pairs():
        declared = mt.layer_compression(layer.media_type)
        if declared is None:
            raise UnsupportedMediaType(f"layer {layer.digest} has media type {layer.media_type}")
        with image.source.open(layer.digest, layer.size) as stream:
            kind, plain = decompress_stream(stream)
            if kind is not Compression(declared):
                raise InvalidDocument(f"layer {layer.digest} is {kind.value} but its media type says {declared}")
            hasher = Hasher()
            while chunk := plain.read(_CHUNK):
                hasher.update(chunk)
            while stream.read(_CHUNK):  # whatever the decompressor left unread is still verified
                pass
        if hasher.digest() != diff_id:
            raise DigestMismatch(f"layer {layer.digest} has diff_id {hasher.digest()}, config says {diff_id}")
