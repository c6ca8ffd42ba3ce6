"""The build outputs (``--output``): one exporter per output type, over an image the store holds.

``parse_output`` reads buildx's syntax: CSV ``key=value`` fields (``type=oci,dest=out.tar``; a field holding a
comma is quoted, ``"name=a,b"``), or a bare ``DIR`` for ``type=local,dest=DIR``, or ``-`` for a tar of the root
filesystem on standard output. Keys are lowercased as buildx does. Unknown types and attributes are usage errors;
attributes BuildKit knows but pybuild does not implement are refused by name rather than ignored.

The image is given as stored: pybuild's store keeps layers UNCOMPRESSED (``application/vnd.oci.image.layer.v1.tar``)
so that compression never sits on the build's critical path; an output compresses each layer once, as
``--compression`` (or the output's ``compression=``) asks, through ``builder.compressed.CompressedLayers``, which
remembers the result for the next export. The exporters:

``type=oci`` (``tar=true``, the default)
    An OCI image layout as one tar: ``oci-layout``, ``index.json`` and ``blobs/sha256/…`` holding the config (the
    same blob, so the same image ID), the compressed layers and a manifest rewritten to point at them (so its
    digest differs from the stored one unless the layers are uncompressed). Members are sorted, with mtime 0 (or
    ``SOURCE_DATE_EPOCH``), owner 0, no owner names, modes 0644/0755: the same image gives the same bytes.
``type=oci,tar=false``
    The same layout as a directory. ``dest`` is created if missing; an empty directory or an existing OCI image
    layout is written into (blobs added, ``index.json`` entries of the same names replaced, as BuildKit's client
    does). buildx would also scatter ``blobs/`` and ``index.json`` into any other directory; pybuild refuses a
    directory that is neither empty nor a layout, and refuses its own store.
``type=docker``
    ``docker load``'s archive (``oci.docker_archive``), the names as RepoTags. ``docker load`` reads plain and gzip
    layers only, so zstd is refused here. pybuild has no daemon to load into: ``dest`` is required.
``type=local``
    The flattened root filesystem in ``dest``, layer by layer through ``oci.apply`` (confined to ``dest``, owners
    kept when running as root). Into a missing or empty directory the layers are applied directly; into a
    directory that already holds files, as buildx copies into it, the tree is first flattened in a private scratch
    directory and then applied onto ``dest`` as one layer without whiteouts, so that nothing the image deleted can
    delete the user's files. With ``SOURCE_DATE_EPOCH`` every exported file's mtime is set to it, as BuildKit does.
``type=tar``
    The same tree as one tar, with the final tree only (whiteouts resolved: no ``.wh.`` entries): the layers are
    applied into a private scratch directory under the store root and written back with ``oci.layer.tree_items``
    and ``write_layer`` (uncompressed), so the tar is in tree order with blank owner names, and its mtimes are set
    to ``SOURCE_DATE_EPOCH`` when given. Owners survive when running as root; without root they come out as the
    invoking user's and device nodes cannot be made, as with buildx's local exporter run by a user.
``type=image`` (``push=false``)
    The image is already in the store: its names are tagged there.
``type=registry`` (``type=image,push=true``, ``--push``)
    Tagged in the store, then pushed under each name (``builder.remote``): layers compressed as ``--compression``
    asks (the same compressed blobs an OCI output would carry), the manifest last.
``type=cacheonly``
    Nothing.

Tar-shaped outputs (oci tar, docker, tar) go to standard output with ``dest=-`` (and, as in buildx, when ``dest``
is not given for oci and tar), never to a terminal. A file is written to a temporary file beside it and renamed
into place once complete, so a failed export leaves no half file.

The index.json entry is annotated as BuildKit's OCI exporter does: for each name, ``io.containerd.image.name`` =
the full name (``docker.io/library/app:latest``) and ``org.opencontainers.image.ref.name`` = the tag (``latest``);
with no name, the tar has a bare entry and the directory form names it ``latest``, as BuildKit's client does. Each
entry carries ``org.opencontainers.image.created``: ``SOURCE_DATE_EPOCH`` if given, else the image's creation time
from its config (BuildKit writes the export's wall-clock time; the config's time keeps two exports of one image
byte-identical), and the image's platform.
"""

from __future__ import annotations

import io
import os
import re
import stat
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from builder.attrs import csv_fields, go_bool, key_values, suggest
from builder.compressed import CompressedLayers
from builder.errors import UsageError
from builder.root import Store

if TYPE_CHECKING:
    from builder.remote import Remote
from oci import mediatypes as mt
from oci.apply import apply_layer, remove_tree
from oci.canonical import canonical_json
from oci.compression import Compression
from oci.descriptor import Descriptor
from oci.digest import Digest
from oci.docker_archive import CONTAINERD_IMAGE_NAME, write_docker_archive
from oci.errors import InvalidReference, SizeMismatch
from oci.frozen import FrozenMap
from oci.image import Image
from oci.layer import LayerItem, tree_items, write_layer
from oci.layout import LAYOUT_FILE, LAYOUT_VERSION, ImageLayout
from oci.manifest import Index
from oci.reference import Reference
from oci.store import ContentStore, atomic_file
from oci.tarformat import EntryType, TarEntry, TarWriter

__all__ = [
    "CREATED",
    "Exported",
    "OutputSpec",
    "check_compression",
    "check_destination",
    "export_image",
    "exported_as_stored",
    "exported_view",
    "parse_output",
    "prepare_export",
    "write_oci_archive",
    "write_rootfs_tar",
]

#: The annotation of the index.json entry that says when the image was made.
CREATED = "org.opencontainers.image.created"

_CHUNK = 1 << 20
_TYPES = ("local", "tar", "oci", "docker", "image", "registry", "cacheonly")
_IMAGE_KEYS = {"name", "compression", "force-compression", "oci-mediatypes"}
_KEYS = {
    "local": {"dest", "platform-split", "mode"},
    "tar": {"dest", "platform-split"},
    "oci": {"dest", "tar"} | _IMAGE_KEYS,
    "docker": {"dest", "tar"} | _IMAGE_KEYS,
    "image": {"push"} | _IMAGE_KEYS,
    "cacheonly": set(),
}
#: Attributes BuildKit knows that pybuild does not implement, with the reason it gives.
_REFUSED = {
    "compression-level": "layers are compressed once at a fixed level (gzip 4, zstd 3) and reused",
    "rewrite-timestamp": "layer timestamps are not rewritten yet (SOURCE_DATE_EPOCH already clamps new files)",
    "oci-artifact": "attestations are not made",
    "attest": "attestations are not made",
    "buildinfo": "build info is not recorded",
    "buildinfo-attrs": "build info is not recorded",
    "context": "there is no Docker daemon to load into (give dest=FILE and run docker load)",
    "push-by-digest": "images are pushed by name (give -t NAME)",
    "registry.insecure": "give --insecure-registry HOST instead",
    "name-canonical": "canonical names are not made",
    "dangling-name-prefix": "untagged images are not named",
    "unpack": "the store keeps no unpacked images",
    "store": "the image is always kept in the store",
}
# BuildKit's annotation attribute: annotation[-LEVEL][[PLATFORM]].KEY (keys arrive lowercased, as buildx makes them).
_ANNOTATION = re.compile(r"annotation(?:-([a-z-]+))?(?:\[([^\]]*)\])?\.(.+)")


@dataclass(frozen=True, slots=True)
class OutputSpec:
    """One ``--output``. ``dest`` is a path, ``-`` for standard output, or empty when not given."""

    type: str  # local, tar, oci, docker, image, cacheonly ("registry" is image with push)
    dest: str = ""
    tar: bool = True  # oci: a tar (True) or a layout directory (False)
    push: bool = False
    names: tuple[Reference, ...] = ()  # name=; the build's -t names win over these, as in buildx
    compression: Compression | None = None  # compression=; overrides --compression for this output
    annotations: FrozenMap[str, str] = field(default_factory=FrozenMap)  # added to the manifest

    @property
    def to_stdout(self) -> bool:
        return self.dest == "-"

    @property
    def is_directory(self) -> bool:
        return self.type == "local" or (self.type == "oci" and not self.tar)


# ---------------------------------------------------------------------------------------------------- parsing


def parse_output(text: str) -> OutputSpec:
    """Parse one ``--output`` value as buildx does (see the module docstring); ``UsageError`` if it is wrong."""
    if text == "-":
        return OutputSpec("tar", "-")
    fields = csv_fields(text, "--output")
    if not fields or not text:
        raise UsageError("--output: empty value")
    if len(fields) == 1 and fields[0] == text and not text.startswith("type="):
        return OutputSpec("local", text)  # buildx's shorthand: -o DIR
    attrs = key_values(fields, "--output")
    kind = attrs.pop("type", "")
    if not kind:
        raise UsageError(f"--output {text!r}: type is required for output")
    if kind not in _TYPES:
        raise UsageError(f"--output: unknown output type {kind!r}{suggest(kind, _TYPES)}")
    return _spec(kind, attrs)


def _annotation_key(kind: str, key: str) -> str:
    """The annotation an ``annotation[-LEVEL][[PLATFORM]].KEY`` attribute sets on the manifest."""
    match = _ANNOTATION.fullmatch(key)
    if match is None:
        raise UsageError(f"--output type={kind}: unknown attribute {key!r} (annotations are annotation.KEY=VALUE)")
    level, platform, name = match.groups()
    if level in ("index", "index-descriptor", "manifest-descriptor"):
        raise UsageError(f"--output type={kind}: {key}: index annotations not supported for single platform export")
    if level not in (None, "manifest"):
        raise UsageError(f"--output type={kind}: {key}: unknown annotation level {level!r}")
    if platform is not None:
        raise UsageError(f"--output type={kind}: {key}: platform-qualified annotations are not supported")
    return name


def _spec(kind: str, attrs: dict[str, str]) -> OutputSpec:
    push = False
    if kind == "registry":
        kind, push = "image", True
    allowed = _KEYS[kind]
    annotations: dict[str, str] = {}
    for key, value in attrs.items():
        if key in allowed:
            continue
        if key.startswith("annotation") and kind in ("oci", "docker", "image"):
            annotations[_annotation_key(kind, key)] = value
            continue
        if key in _REFUSED:
            raise UsageError(f"--output type={kind}: {key} is not supported by pybuild: {_REFUSED[key]}")
        raise UsageError(f"--output type={kind}: unknown attribute {key!r}{suggest(key, sorted(allowed))}")

    dest = attrs.get("dest", "")
    tar = go_bool("--output", "tar", attrs["tar"]) if "tar" in attrs else True
    if "push" in attrs:
        push = go_bool("--output", "push", attrs["push"])
    if attrs.get("platform-split") and go_bool("--output", "platform-split", attrs["platform-split"]):
        raise UsageError(f"--output type={kind}: platform-split=true is not supported (pybuild builds one platform)")
    if attrs.get("mode", "copy") != "copy":
        raise UsageError(f"--output type=local: mode={attrs['mode']} is not supported (only mode=copy)")
    if "oci-mediatypes" in attrs and not go_bool("--output", "oci-mediatypes", attrs["oci-mediatypes"]):
        raise UsageError(
            f"--output type={kind}: oci-mediatypes=false is not supported (pybuild writes OCI media types)"
        )
    if "force-compression" in attrs:
        go_bool(
            "--output", "force-compression", attrs["force-compression"]
        )  # every layer is compressed as asked anyway
    compression = None
    if "compression" in attrs:
        try:
            compression = Compression.parse(attrs["compression"])
        except ValueError as err:
            raise UsageError(f"--output type={kind}: {err}") from None
    names: list[Reference] = []
    for name in filter(None, (n.strip() for n in attrs.get("name", "").split(","))):
        try:
            names.append(Reference.parse(name))
        except InvalidReference as err:
            raise UsageError(f"--output type={kind}: name={name}: {err}") from None

    if kind == "docker" and not tar:
        raise UsageError("--output type=docker: tar=false is not supported (use type=oci,tar=false for a directory)")
    directory = kind == "local" or (kind == "oci" and not tar)
    if directory and not dest:
        raise UsageError(f"--output type={kind}: dest is required for {kind} exporter")
    if directory and dest == "-":
        raise UsageError(f"--output type={kind}: dest cannot be stdout for {kind} exporter")
    if kind == "docker" and not dest:
        raise UsageError(
            "--output type=docker: dest is required (pybuild has no daemon to load into; give dest=FILE, "
            "then docker load -i FILE)"
        )
    if kind in ("oci", "tar") and tar and not dest:
        dest = "-"  # buildx: a tar with no dest goes to standard output
    return OutputSpec(
        type=kind,
        dest=dest,
        tar=tar,
        push=push,
        names=tuple(dict.fromkeys(names)),
        compression=compression,
        annotations=FrozenMap(annotations),
    )


# ---------------------------------------------------------------------------------------------------- checks


def check_destination(spec: OutputSpec, *, store: Store | None = None) -> None:
    """Refuse, before any work, a destination the export could not write (as buildx checks before building)."""
    if spec.to_stdout or not spec.dest or spec.type in ("image", "cacheonly"):
        return
    path = Path(spec.dest)
    if spec.is_directory:
        if path.exists() and not path.is_dir():
            raise UsageError(f"destination directory {spec.dest} is a file")
        if spec.type == "oci" and path.is_dir():
            if store is not None and path.resolve() == store.root.resolve():
                raise UsageError(f"destination directory {spec.dest} is pybuild's own store")
            if not (path / LAYOUT_FILE).exists() and any(path.iterdir()):
                raise UsageError(
                    f"destination directory {spec.dest} is neither empty nor an OCI image layout; refusing to write "
                    "an image layout into it"
                )
        return
    if path.is_dir():
        raise UsageError(f"destination file {spec.dest} is a directory")
    if not path.absolute().parent.is_dir():
        raise UsageError(f"cannot write {spec.dest}: its directory does not exist")


def check_compression(spec: OutputSpec, compression: Compression) -> None:
    """Refuse an output that cannot carry its layers compressed so (``compression`` is ``--compression``), before
    anything is built."""
    if spec.type == "docker" and (spec.compression or compression) is Compression.ZSTD:
        raise UsageError(
            "type=docker cannot carry zstd layers (docker load reads plain and gzip ones)",
            hint="use --compression gzip or uncompressed, or type=oci",
        )


# ---------------------------------------------------------------------------------------------------- exporting


def export_image(
    spec: OutputSpec,
    image: Image,
    *,
    store: Store,
    compression: Compression,
    names: Sequence[Reference],
    epoch: int | None,
    stdout: BinaryIO | None = None,
    on_status: Callable[[str], None] | None = None,
    remote: Remote | None = None,
) -> None:
    """Write ``image`` (as stored: uncompressed layers) to the output ``spec`` describes.

    ``names`` are the build's ``-t`` names; when there are none, the output's ``name=`` attribute names the image.
    ``compression`` is ``--compression``; the output's ``compression=`` wins. ``epoch`` is SOURCE_DATE_EPOCH.
    ``stdout`` is the binary stream ``dest=-`` writes to.
    """
    say = on_status or (lambda _message: None)
    refs = tuple(names) or spec.names
    kind = spec.compression or compression
    if spec.type == "cacheonly":
        return
    if spec.type == "image":
        _export_to_store(spec, image, store, refs, say)
        if spec.push:
            if not refs:
                raise UsageError("pushing needs a name", hint="give -t NAME or --output type=registry,name=NAME")
            if remote is None:
                raise UsageError("pushing needs a registry client")  # the CLI always gives one
            remote.push(image, refs, kind, annotations=spec.annotations, on_status=say)
        return
    check_destination(spec, store=store)
    if spec.type == "local":
        _export_local(Path(spec.dest), image, store, epoch, say)
    elif spec.type == "tar":
        with _output(spec, stdout) as out:
            write_rootfs_tar(image, store, epoch, out, say)
    elif spec.type == "oci" and not spec.tar:
        exported = prepare_export(image, store, kind, spec.annotations, say)
        _write_oci_directory(Path(spec.dest), exported, refs, store, epoch, say)
    elif spec.type == "oci":
        exported = prepare_export(image, store, kind, spec.annotations, say)
        with _output(spec, stdout) as out:
            write_oci_archive([(exported, refs)], store, epoch, out, say)
    elif spec.type == "docker":
        check_compression(spec, kind)
        exported = prepare_export(image, store, kind, spec.annotations, say)
        view = exported_view(exported, store)
        say("writing docker archive")
        with _output(spec, stdout) as out:
            write_docker_archive([(view, refs)], out)
    else:  # parse_output makes no other type
        raise ValueError(f"unknown output type {spec.type!r}")


def _export_to_store(
    spec: OutputSpec, image: Image, store: Store, refs: Sequence[Reference], say: Callable[[str], None]
) -> None:
    for ref in refs:
        current = store.layout.resolve(str(ref))
        if current is not None and current.digest == image.digest:
            continue  # already named so (the build tags its -t names before its outputs)
        say(f"naming to {ref}")
        store.layout.tag(str(ref), Descriptor(image.descriptor.media_type, image.digest, image.descriptor.size))


# --- the image with its layers compressed


@dataclass(frozen=True, slots=True)
class Exported:
    """The image as an output carries it: the stored config, compressed layers, and a manifest of its own."""

    image: Image
    manifest: Descriptor
    raw_manifest: bytes
    layers: tuple[Descriptor, ...]

    @property
    def config(self) -> Descriptor:
        return self.image.manifest.config


def prepare_export(
    image: Image, store: Store, kind: Compression, annotations: FrozenMap[str, str], say: Callable[[str], None]
) -> Exported:
    image.layer_pairs()  # the manifest and config agree on the layer count, and the config parses
    say(f"exporting layers ({kind.value if kind is not Compression.NONE else 'uncompressed'})")
    cache = CompressedLayers(store, on_status=say)
    layers = tuple(_as_oci_layer(cache.get(layer, kind)) for layer in image.layers)
    manifest = image.manifest
    if layers == manifest.layers and not annotations and image.descriptor.media_type == mt.OCI_MANIFEST:
        descriptor = Descriptor(mt.OCI_MANIFEST, image.digest, image.descriptor.size)
        return Exported(image, descriptor, image.raw_manifest, layers)
    config = manifest.config
    merged = FrozenMap({**manifest.annotations, **annotations})
    raw = replace(
        manifest,
        media_type=mt.OCI_MANIFEST,
        config=replace(config, media_type=mt.OCI_CONFIG),  # same bytes: a Docker config is an OCI config
        layers=layers,
        annotations=merged,
    ).encode()
    descriptor = Descriptor(mt.OCI_MANIFEST, Digest.of_bytes(raw), len(raw))
    return Exported(image, descriptor, raw, layers)


def exported_as_stored(image: Image) -> Exported:
    """The image exactly as the store keeps it (its own manifest and layers: nothing recompressed)."""
    descriptor = image.descriptor
    manifest = Descriptor(descriptor.media_type, descriptor.digest, descriptor.size)
    return Exported(image, manifest, image.raw_manifest, image.layers)


def exported_view(exported: Exported, store: Store) -> Image:
    """``exported`` as an image whose blobs are the store's plus its own manifest (held in memory)."""
    return Image(
        _WithDocuments(store.layout.store, {exported.manifest.digest: exported.raw_manifest}), exported.manifest
    )


def _as_oci_layer(layer: Descriptor) -> Descriptor:
    """The OCI media type for a layer (a Docker gzip layer is an OCI gzip layer, byte for byte)."""
    declared = mt.layer_compression(layer.media_type)
    assert declared is not None  # CompressedLayers.get refused anything else
    return Descriptor(Compression(declared).layer_media_type, layer.digest, layer.size, annotations=layer.annotations)


class _WithDocuments:
    """The store's blobs plus documents held in memory (the rewritten manifest), as an ``oci.image.BlobSource``."""

    def __init__(self, blobs: ContentStore, documents: dict[Digest, bytes]) -> None:
        self._blobs = blobs
        self._documents = documents

    def open(self, digest: Digest, size: int | None = None) -> BinaryIO:
        if digest in self._documents:
            data = self._documents[digest]
            if size is not None and size != len(data):
                raise SizeMismatch(f"blob {digest}: expected {size} bytes, found {len(data)}")
            return io.BytesIO(data)
        return self._blobs.open(digest, size)

    def read(self, digest: Digest, max_size: int | None = None) -> bytes:
        if digest in self._documents:
            return self._documents[digest]
        return self._blobs.read(digest, max_size)

    def has(self, digest: Digest) -> bool:
        return digest in self._documents or self._blobs.has(digest)


# --- OCI image layouts


def _index_entries(
    exported: Exported, refs: Sequence[Reference], epoch: int | None, *, directory: bool
) -> list[Descriptor]:
    """The index.json entries BuildKit writes for the image: one per name (see the module docstring)."""
    base = exported.manifest
    created = _rfc3339(epoch) if epoch is not None else exported.image.config.created
    if created:
        base = base.with_annotations(**{CREATED: created})
    platform = exported.image.config.platform
    if platform.os and platform.architecture:
        base = replace(base, platform=platform)
    if not refs:
        return [base.with_ref_name("latest")] if directory else [base]
    return [base.with_annotations(**{CONTAINERD_IMAGE_NAME: str(ref)}).with_ref_name(_tag_part(ref)) for ref in refs]


def _tag_part(ref: Reference) -> str:
    """What containerd's reference.Parse calls the object: ``tag``, ``tag@digest`` or ``@digest``."""
    return ref.tag + (f"@{ref.digest}" if ref.digest is not None else "")


def _rfc3339(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _blobs(exported: Exported) -> list[Descriptor]:
    """Every blob the layout holds, each once: layers, config, manifest."""
    unique = {d.digest: d for d in (*exported.layers, exported.config, exported.manifest)}
    return list(unique.values())


def _open_any(images: Sequence[Exported], store: Store, desc: Descriptor) -> BinaryIO:
    for exported in images:
        if desc.digest == exported.manifest.digest:
            return io.BytesIO(exported.raw_manifest)
    return store.layout.store.open(desc.digest, desc.size)


def write_oci_archive(
    images: Sequence[tuple[Exported, Sequence[Reference]]],
    store: Store,
    epoch: int | None,
    out: BinaryIO,
    say: Callable[[str], None],
) -> None:
    """An OCI image layout holding ``images`` (each with its names; see the module docstring) as one tar."""
    entries: list[Descriptor] = []
    for exported, refs in images:
        say(f"writing image {exported.manifest.digest}")
        entries += _index_entries(exported, refs, epoch, directory=False)
    index = Index(manifests=tuple(entries))
    documents = {
        LAYOUT_FILE: canonical_json({"imageLayoutVersion": LAYOUT_VERSION}),
        "index.json": index.encode(),
    }
    exported_images = [exported for exported, _ in images]
    blobs = {f"blobs/{d.digest.algorithm}/{d.digest.encoded}": d for e in exported_images for d in _blobs(e)}
    directories = {"blobs"} | {path.rsplit("/", 1)[0] for path in blobs}
    mtime = epoch or 0
    writer = TarWriter(out)
    for path in sorted({*documents, *blobs, *directories}, key=lambda p: p.encode()):
        if path in directories:
            writer.add(TarEntry(path, EntryType.DIR, mode=0o755, mtime=mtime))
        elif path in documents:
            data = documents[path]
            writer.add(TarEntry(path, EntryType.FILE, mode=0o644, size=len(data), mtime=mtime), io.BytesIO(data))
        else:
            desc = blobs[path]
            with _open_any(exported_images, store, desc) as stream:
                writer.add(TarEntry(path, EntryType.FILE, mode=0o644, size=desc.size, mtime=mtime), stream)
                if stream.read(1):  # also where the store's reader checks the digest of what it gave
                    raise SizeMismatch(f"blob {desc.digest}: more than {desc.size} bytes")
    writer.close()


def _write_oci_directory(
    dest: Path,
    exported: Exported,
    refs: Sequence[Reference],
    store: Store,
    epoch: int | None,
    say: Callable[[str], None],
) -> None:
    created = not dest.exists()
    if created:
        dest.mkdir(parents=True)
    try:
        layout = ImageLayout.open(dest, create=True)
        for desc in _blobs(exported):
            if layout.store.has(desc.digest) and layout.store.size(desc.digest) == desc.size:
                continue  # the store publishes only verified blobs named by their digest: already there
            with _open_any([exported], store, desc) as stream:
                layout.store.put(stream, desc.digest, desc.size)
        entries = _index_entries(exported, refs, epoch, directory=True)
        say(f"writing image {exported.manifest.digest} into {dest}")

        def change(index: Index) -> Index:
            manifests = list(index.manifests)
            for entry in entries:
                # BuildKit's ociindex: an entry of the same ref name and image name is replaced.
                same = (entry.ref_name, entry.annotations.get(CONTAINERD_IMAGE_NAME))
                manifests = [m for m in manifests if (m.ref_name, m.annotations.get(CONTAINERD_IMAGE_NAME)) != same]
                manifests.append(entry)
            return replace(index, manifests=tuple(manifests))

        layout.update_index(change)
    except BaseException:
        if created:
            _remove(dest)
        raise
    try:
        (dest / "ingest").rmdir()  # the content store's working directory: not part of a layout
    except OSError:
        pass


# --- the root filesystem


def _flatten(image: Image, store: Store, root: Path, say: Callable[[str], None]) -> None:
    """Apply every layer of ``image``, in order, onto the directory ``root``; each verified by digest and diff_id."""
    pairs = image.layer_pairs()
    for number, (layer, diff_id) in enumerate(pairs, 1):
        say(f"applying layer {number}/{len(pairs)} {layer.digest.short}")
        with store.layout.store.open(layer.digest, layer.size) as blob:
            apply_layer(blob, root, expected_diff_id=diff_id, limits=store.limits, what=f"layer {diff_id}")
            while blob.read(_CHUNK):  # the blob's own digest is checked at its end
                pass


def _items(root: Path, epoch: int | None) -> Iterator[LayerItem]:
    for item in tree_items(root):
        yield item if epoch is None else LayerItem(replace(item.entry, mtime=epoch), item.open)


def _export_local(dest: Path, image: Image, store: Store, epoch: int | None, say: Callable[[str], None]) -> None:
    created = not dest.exists()
    if created or not any(dest.iterdir()):
        dest.mkdir(parents=True, exist_ok=True)
        say(f"copying files to {dest}")
        try:
            _flatten(image, store, dest, say)
            if epoch is not None:
                _set_mtimes(dest, epoch)
        except BaseException:
            _remove(dest) if created else _empty(dest)
            raise
        return
    # dest holds files already: never let the image's deletions (whiteouts) reach them.
    scratch = store.scratch_dir("export")
    try:
        tree = scratch / "rootfs"
        tree.mkdir()
        _flatten(image, store, tree, say)
        flat = scratch / "rootfs.tar"
        with open(flat, "wb") as f:
            write_layer(_items(tree, epoch), f, Compression.NONE)  # type: ignore[arg-type]
        say(f"copying files to {dest}")
        with open(flat, "rb") as f:
            apply_layer(f, dest)
    finally:
        _remove(scratch)


def write_rootfs_tar(image: Image, store: Store, epoch: int | None, out: BinaryIO, say: Callable[[str], None]) -> None:
    """The image's flattened root filesystem (whiteouts applied) as one tar, as ``type=tar`` writes it."""
    scratch = store.scratch_dir("export")
    try:
        _flatten(image, store, scratch, say)
        say("writing the root filesystem tar")
        write_layer(_items(scratch, epoch), out, Compression.NONE)
    finally:
        _remove(scratch)


def _set_mtimes(root: Path, epoch: int) -> None:
    """Set the mtime of everything under ``root`` (not ``root`` itself) to ``epoch``, following no symlink."""
    ns = epoch * 1_000_000_000
    for _dirpath, dirnames, filenames, dir_fd in os.fwalk(root, topdown=False, follow_symlinks=False):
        for name in filenames + dirnames:
            os.utime(name, ns=(ns, ns), dir_fd=dir_fd, follow_symlinks=False)


def _remove(path: Path) -> None:
    """Remove ``path`` and everything under it, following no symlink."""
    parent = os.open(path.absolute().parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        st = os.stat(path.name, dir_fd=parent, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            remove_tree(parent, path.name)
        else:
            os.unlink(path.name, dir_fd=parent)
    except FileNotFoundError:
        pass
    finally:
        os.close(parent)


def _empty(directory: Path) -> None:
    for child in list(directory.iterdir()):
        _remove(child)


# --- files and standard output


@contextmanager
def _output(spec: OutputSpec, stdout: BinaryIO | None) -> Iterator[BinaryIO]:
    """Where a tar-shaped output goes: standard output, or a file made whole or not at all."""
    if spec.to_stdout:
        if stdout is None:
            raise UsageError(f"--output type={spec.type}: standard output is not available here")
        isatty = getattr(stdout, "isatty", None)
        if isatty is not None and isatty():
            raise UsageError(
                f"dest file is required for {spec.type} exporter; refusing to write to a terminal",
                hint="give dest=FILE or redirect standard output",
            )
        yield stdout
        stdout.flush()
        return
    target = Path(spec.dest).absolute()
    if not target.parent.is_dir():
        raise UsageError(f"cannot write {spec.dest}: its directory does not exist")
    with atomic_file(target, mode=0o666) as f:  # the umask applies
        yield f
