"""Registries for the builder: pulling into the store (``pybuild pull``, FROM), pushing from it (``pybuild push``,
``--push``), and the memory of which repository holds which blob (so a push can mount instead of upload).

One ``Remote`` per command: it opens the registry client on first use (``requests`` is imported only then, so a
build that never touches a registry does not pay for it), and remembers what it resolved, so the planner (which
reads a base image's config) and the solver (which needs its layers) resolve a tag once and see the same image.

Blob sources live in ``ROOT/sources.db`` (SQLite): ``(digest, registry, repository)`` rows written when a blob is
pulled from or pushed to a repository. They are hints: a mount the registry refuses falls back to an upload.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from builder.cache import store_guard
from builder.root import Store
from oci.compression import Compression
from oci.config import ImageConfig, parse_config
from oci.descriptor import Descriptor, Platform
from oci.digest import Digest
from oci.errors import OCIError
from oci.image import Image
from oci.reference import Reference

if TYPE_CHECKING:
    from oci.credentials import DockerConfig
    from oci.registry import RegistryClient
    from oci.transfer import Resolved

__all__ = ["BlobSources", "PushResult", "Remote", "RegistrySettings"]

_SYSTEM_CERTS = (Path("/etc/docker/certs.d"), Path("/etc/containers/certs.d"))


@dataclass(frozen=True, slots=True)
class RegistrySettings:
    insecure: frozenset[str] = frozenset()  # --insecure-registry HOST
    chunk_size: int = 0  # --chunk-size: 0 uploads each blob in one request
    retries: int = 4
    backoff: float = 0.5


@dataclass(frozen=True, slots=True)
class PushResult:
    ref: Reference
    digest: Digest
    size: int
    uploaded: int


class BlobSources:
    """Which repositories are known to hold a blob (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.path = root / "sources.db"

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30)
        try:
            db.execute(
                "CREATE TABLE IF NOT EXISTS sources (digest TEXT, registry TEXT, repository TEXT,"
                " PRIMARY KEY (digest, registry, repository)) WITHOUT ROWID"
            )
            with db:
                yield db
        finally:
            db.close()

    def add(self, registry: str, repository: str, digests: Sequence[Digest]) -> None:
        with self._db() as db:
            db.executemany(
                "INSERT OR IGNORE INTO sources VALUES (?, ?, ?)", [(str(d), registry, repository) for d in digests]
            )

    def repositories(self, registry: str, digests: Sequence[Digest]) -> dict[Digest, list[str]]:
        found: dict[Digest, list[str]] = {}
        with self._db() as db:
            for digest in digests:
                rows = db.execute(
                    "SELECT repository FROM sources WHERE digest = ? AND registry = ? ORDER BY repository",
                    (str(digest), registry),
                )
                found[digest] = [row[0] for row in rows]
        return found


class Remote:
    def __init__(
        self,
        store: Store,
        settings: RegistrySettings,
        environ: Mapping[str, str],
        *,
        refresh: bool = False,
    ) -> None:
        self.store = store
        self.settings = settings
        self.environ = environ
        self.refresh = refresh  # --pull: ask the registry what a tag names even when the store has it
        self.sources = BlobSources(store.root)
        self._docker_config: DockerConfig | None = None
        self._client: RegistryClient | None = None
        self._resolved: dict[tuple[str, str], Resolved | OCIError] = {}

    @property
    def docker_config(self) -> DockerConfig:
        """Docker's config.json (credentials, certs.d), opened on first use like the client: a build whose images
        are all in the store never reads it."""
        if self._docker_config is None:
            from oci.credentials import DockerConfig, docker_config_dir

            self._docker_config = DockerConfig(docker_config_dir(self.environ))
        return self._docker_config

    @property
    def client(self) -> RegistryClient:
        if self._client is None:
            from oci.registry import RegistryClient, RegistryOptions

            options = RegistryOptions(
                insecure=self.settings.insecure,
                certs_dirs=(self.docker_config.directory / "certs.d", *_SYSTEM_CERTS),
                retries=self.settings.retries,
                backoff=self.settings.backoff,
                chunk_size=self.settings.chunk_size,
            )
            self._client = RegistryClient(None, self.docker_config.lookup, options)
        return self._client

    # --- pulling

    def resolve(self, ref: Reference, platform: Platform) -> Resolved:
        """What ``ref`` names in its registry for ``platform`` (asked once per command)."""
        from oci.transfer import resolve_image

        key = (str(ref), str(platform))
        found = self._resolved.get(key)
        if found is None:
            try:
                found = resolve_image(self.client, ref, platform)
            except OCIError as err:
                found = err
            self._resolved[key] = found
        if isinstance(found, OCIError):
            raise found
        return found

    def local(self, ref: Reference, platform: Platform) -> Image | None:
        from builder.images import ImageNotFound, image_by_name

        try:
            return image_by_name(self.store.layout, str(ref), platform)
        except (ImageNotFound, OCIError):
            return None

    def base_config(self, name: str, platform: Platform) -> ImageConfig | None:
        """A base image's config for the planner: from the store, else from the registry (config blob only).

        A registry failure answers None here; the solver asks again for the image and reports the failure."""
        ref = Reference.parse(name)
        if not self.refresh and (image := self.local(ref, platform)) is not None:
            return image.config
        try:
            resolved = self.resolve(ref, platform)
            from oci.manifest import parse_manifest

            manifest = parse_manifest(resolved.raw_manifest, resolved.manifest.media_type)
            blobs = self.store.layout.store
            if not blobs.has(manifest.config.digest):
                self.client.fetch_blob(ref, manifest.config, blobs)
            return parse_config(blobs.read(manifest.config.digest, manifest.config.size))
        except OCIError:
            return None

    def image(self, name: str, platform: Platform, on_status: Callable[[str], None] | None = None) -> Image:
        """A base image: the store's, or pulled (when the store lacks it, or always with ``--pull``)."""
        ref = Reference.parse(name)
        if not self.refresh and (image := self.local(ref, platform)) is not None:
            return image
        return self.pull(ref, platform, on_status)

    def pull(self, ref: Reference, platform: Platform, on_status: Callable[[str], None] | None = None) -> Image:
        """Pull ``ref`` for ``platform`` into the store and name it there; returns the stored image."""
        from oci.transfer import pull_image

        resolved = self.resolve(ref, platform)
        blobs = self.store.layout.store
        with store_guard(self.store.root):  # no prune between finding or fetching a blob and the tag naming it
            pulled = pull_image(self.client, ref, blobs, platform, resolved=resolved, on_status=on_status)
            manifest = pulled.manifest
            image = Image(blobs, Descriptor(manifest.media_type, manifest.digest, manifest.size))
            self.sources.add(ref.registry, ref.repository, [d.digest for d in (image.manifest.config, *image.layers)])
            self.store.layout.tag(str(ref), Descriptor(manifest.media_type, manifest.digest, manifest.size))
        return image

    # --- pushing

    def push(
        self,
        image: Image,
        refs: Sequence[Reference],
        compression: Compression,
        *,
        annotations: Mapping[str, str] | None = None,
        on_status: Callable[[str], None] | None = None,
    ) -> list[PushResult]:
        """Push ``image`` under each of ``refs``, its layers compressed as ``compression``."""
        from builder.export import prepare_export
        from oci.transfer import push_image

        say = on_status or (lambda text: None)
        exported = prepare_export(image, self.store, compression, annotations or {}, say)
        blobs = self.store.layout.store

        def open_blob(desc: Descriptor) -> BinaryIO:
            return open(blobs.path(desc.digest), "rb")  # seekable, for resumed chunks; the registry checks the digest

        results = []
        digests = [exported.config.digest, *(layer.digest for layer in exported.layers)]
        for ref in refs:
            say(f"pushing {ref}")
            sources = self.sources.repositories(ref.registry, digests)
            uploaded = push_image(
                self.client,
                ref,
                exported.manifest,
                exported.raw_manifest,
                open_blob,
                sources=sources,
                on_status=say,
            )
            self.sources.add(ref.registry, ref.repository, digests)
            say(f"{ref.tag or 'pushed'}: digest: {exported.manifest.digest} size: {exported.manifest.size}")
            results.append(PushResult(ref, exported.manifest.digest, exported.manifest.size, uploaded))
        return results
