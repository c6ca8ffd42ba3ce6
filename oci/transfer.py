"""Moving images between a registry and the content store: pull (documents, config, layers) and push.

Pull resolves a reference to one image manifest (choosing the platform from an index), then fetches what the store
lacks; each blob is verified on the way in, so a store never holds a blob that does not match its name. Push sends
what the registry lacks: blobs it has are skipped (HEAD), blobs known to live in another repository of the same
registry are mounted, the rest are uploaded; the manifest goes last, so a reader never sees a manifest whose blobs
are missing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from oci import mediatypes as mt
from oci.descriptor import Descriptor, Platform
from oci.digest import Digest
from oci.errors import InvalidDocument, OCIError
from oci.image import Image, select_platform
from oci.manifest import Manifest, parse_index, parse_manifest
from oci.reference import Reference
from oci.registry import RegistryClient, RegistryError
from oci.store import ContentStore

__all__ = ["Pulled", "pull_image", "push_blobs", "push_image", "resolve_image"]

_MAX_NESTING = 4


@dataclass(frozen=True, slots=True)
class Resolved:
    """What a reference names in the registry, narrowed to one platform's image manifest."""

    named: Descriptor  # what the reference names: an index or a manifest
    manifest: Descriptor  # the platform's image manifest
    raw_manifest: bytes


@dataclass(frozen=True, slots=True)
class Pulled:
    named: Descriptor
    manifest: Descriptor
    downloaded: int  # blob bytes fetched; 0 when the store already held everything


def resolve_image(client: RegistryClient, ref: Reference, platform: Platform) -> Resolved:
    """The image manifest ``ref`` names for ``platform``, fetched and verified (not yet stored)."""
    named, raw = client.get_manifest(ref)
    descriptor = named
    for _ in range(_MAX_NESTING):
        if not mt.is_index(descriptor.media_type):
            break
        index = parse_index(raw, descriptor.media_type, f"index {ref}")
        try:
            chosen = select_platform(index, platform)
        except InvalidDocument as err:
            raise RegistryError(str(err), registry=ref.registry, repository=ref.repository) from None
        descriptor, raw = client.get_manifest(Reference(ref.registry, ref.repository, "", chosen.digest))
        if descriptor.size != chosen.size:
            raise RegistryError(
                f"manifest {chosen.digest} is {descriptor.size} bytes, the index says {chosen.size}",
                registry=ref.registry,
                repository=ref.repository,
            )
        descriptor = Descriptor(chosen.media_type, descriptor.digest, descriptor.size)
    else:
        raise RegistryError(f"{ref}: indexes nested too deeply", registry=ref.registry, repository=ref.repository)
    if not mt.is_manifest(descriptor.media_type):
        raise RegistryError(f"{ref} is {descriptor.media_type}, not an image", registry=ref.registry)
    return Resolved(named, descriptor, raw)


def pull_image(
    client: RegistryClient,
    ref: Reference,
    store: ContentStore,
    platform: Platform,
    *,
    resolved: Resolved | None = None,
    on_status: Callable[[str], None] | None = None,
) -> Pulled:
    """Fetch ``ref``'s image for ``platform`` into ``store``: config and layers first, the manifest last."""
    resolved = resolved or resolve_image(client, ref, platform)
    manifest = parse_manifest(resolved.raw_manifest, resolved.manifest.media_type, f"manifest {ref}")
    downloaded = 0
    repository = Reference(ref.registry, ref.repository)
    for blob in (manifest.config, *manifest.layers):
        if blob.media_type == mt.DOCKER_FOREIGN_LAYER or blob.urls:
            raise RegistryError(
                f"layer {blob.digest} is a foreign layer ({', '.join(blob.urls) or 'no URL'}); pybuild does not fetch "
                "those",
                registry=ref.registry,
                repository=ref.repository,
            )
        if store.has(blob.digest):
            continue
        if on_status:
            kind = "config" if blob is manifest.config else "layer"
            on_status(f"pulling {kind} {blob.digest.short} ({blob.size} bytes)")
        client.fetch_blob(repository, blob, store)
        downloaded += blob.size
    store.put_bytes(resolved.raw_manifest, resolved.manifest.digest)
    try:
        Image(store, resolved.manifest).layer_pairs()  # the config's diff_ids and the manifest's layers agree
    except OCIError as err:
        raise RegistryError(f"{ref}: {err}", registry=ref.registry, repository=ref.repository) from None
    return Pulled(resolved.named, resolved.manifest, downloaded)


def push_blobs(
    client: RegistryClient,
    ref: Reference,
    blobs: Sequence[Descriptor],
    open_blob: Callable[[Descriptor], BinaryIO],
    *,
    sources: Mapping[Digest, Sequence[str]] | None = None,
    on_status: Callable[[str], None] | None = None,
) -> int:
    """Make every blob present in ``ref``'s repository; returns the bytes uploaded.

    ``open_blob`` returns a seekable stream (a chunked upload resumes by seeking); ``sources`` lists, per digest,
    other repositories of the same registry that hold it, to mount from.
    """
    uploaded = 0
    repository = Reference(ref.registry, ref.repository)
    seen: set[Digest] = set()
    for blob in blobs:
        if blob.digest in seen:
            continue
        seen.add(blob.digest)
        if client.blob_exists(repository, blob.digest):
            if on_status:
                on_status(f"{blob.digest.short}: already in {ref.repository}")
            continue
        mounted = False
        for source in (sources or {}).get(blob.digest, ()):
            if source != ref.repository and client.mount_blob(repository, blob.digest, source):
                mounted = True
                if on_status:
                    on_status(f"{blob.digest.short}: mounted from {source}")
                break
        if mounted:
            continue
        if on_status:
            on_status(f"{blob.digest.short}: uploading {blob.size} bytes")
        client.upload_blob(repository, blob, lambda blob=blob: open_blob(blob))  # type: ignore[misc]
        uploaded += blob.size
    return uploaded


def push_image(
    client: RegistryClient,
    ref: Reference,
    manifest: Descriptor,
    raw_manifest: bytes,
    open_blob: Callable[[Descriptor], BinaryIO],
    *,
    sources: Mapping[Digest, Sequence[str]] | None = None,
    on_status: Callable[[str], None] | None = None,
) -> int:
    """Push an image manifest and its blobs under ``ref`` (a tag, or none: by digest); returns bytes uploaded."""
    parsed: Manifest = parse_manifest(raw_manifest, manifest.media_type, f"manifest {manifest.digest}")
    uploaded = push_blobs(client, ref, (parsed.config, *parsed.layers), open_blob, sources=sources, on_status=on_status)
    if ref.tag:
        target = Reference(ref.registry, ref.repository, ref.tag)
    else:
        target = Reference(ref.registry, ref.repository, "", manifest.digest)
    client.put_manifest(target, raw_manifest, manifest.media_type)
    return uploaded
