"""Flatten an image's layers into file records, and say what a build changed relative to its base image.

This is what the conformance suite compares: the regeneration script runs it on images Docker's BuildKit built
(``docker save`` tarballs), the CI check on images pybuild built (OCI image layouts). Both go through the same
functions here, so a difference in the results is a difference in the builders.

Flattening reads each layer tar in order with ``oci.tarformat.TarReader`` and applies it to an in-memory tree,
never to disk: whiteouts (``.wh.NAME``) and opaque markers (``.wh..wh..opq``) apply to the layers below, so they
are applied first; then entries in archive order, where a directory over a directory updates its metadata and
keeps its children, anything else replaces what was there (a non-directory takes a whole subtree with it), and a
hardlink shares the inode of its target as it stands at that point. Files are hashed as they stream past.

A record describes one path: type, permission bits (``"0755"``, set-id and sticky bits included), owner, and
for files size and sha256 digest (plus, for UTF-8 text of at most 256 bytes, the text itself, so that a failure
shows what differs), for symlinks the target, for devices ``major:minor``. Hardlinks are normalised so that tar
order does not matter: within a group of paths sharing an inode, the smallest path (by code point) carries the
inode's record and every other member is ``{"type": "hardlink", "link": <that path>}``. The root directory and
mtimes are never recorded.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from oci.compression import decompress_stream
from oci.descriptor import Descriptor, Platform
from oci.image import Image, load_image
from oci.layout import ImageLayout
from oci.tarformat import EntryType, TarReader

__all__ = [
    "FlattenError",
    "ImageData",
    "Node",
    "Tree",
    "delta",
    "flatten",
    "normalize_config",
    "read_docker_save",
    "read_oci_layout",
    "summarize",
]

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
#: Config fields compared; anything else in the runtime config (Hostname, Image, ...) is Docker's noise.
CONFIG_FIELDS = (
    "User",
    "Env",
    "Entrypoint",
    "Cmd",
    "WorkingDir",
    "Labels",
    "ExposedPorts",
    "Volumes",
    "StopSignal",
    "Healthcheck",
    "OnBuild",
    "Shell",
    "ArgsEscaped",
)
#: Cmd and Entrypoint keep ``[]`` apart from absent (a container runs differently); other empties are absent.
_LIST_KEEPS_EMPTY = {"Cmd", "Entrypoint"}
#: Files up to this size that are UTF-8 text also carry their content in the record.
TEXT_LIMIT = 256

_TYPES = {
    EntryType.FILE: "file",
    EntryType.DIR: "dir",
    EntryType.SYMLINK: "symlink",
    EntryType.CHAR: "char",
    EntryType.BLOCKDEV: "block",
    EntryType.FIFO: "fifo",
}


class FlattenError(Exception):
    """A layer that cannot be applied faithfully (a hardlink to nothing, a path under a file, ``..``)."""


@dataclass(frozen=True, slots=True)
class Node:
    """One inode: what every path linked to it shares."""

    type: str
    mode: int
    uid: int
    gid: int
    size: int = 0
    digest: str = ""
    link: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: tuple[tuple[str, str], ...] = ()
    text: str | None = None


@dataclass
class Tree:
    """A flattened root filesystem: each path (absolute, normalised) names an inode number."""

    paths: dict[str, int] = field(default_factory=dict)
    nodes: dict[int, Node] = field(default_factory=dict)
    _next: int = 0

    def new_node(self, node: Node) -> int:
        self._next += 1
        self.nodes[self._next] = node
        return self._next

    def node(self, path: str) -> Node | None:
        number = self.paths.get(path)
        return None if number is None else self.nodes[number]

    def remove(self, path: str) -> None:
        """Remove ``path`` and, if it is a directory, everything under it."""
        if self.paths.pop(path, None) is None:
            return
        prefix = path.rstrip("/") + "/"
        for other in [p for p in self.paths if p.startswith(prefix)]:
            del self.paths[other]

    def children_removed(self, directory: str) -> None:
        prefix = directory.rstrip("/") + "/"
        for other in [p for p in self.paths if p.startswith(prefix)]:
            del self.paths[other]

    def records(self) -> dict[str, dict[str, Any]]:
        """Every path's record (see the module docstring), keyed by path."""
        groups: dict[int, list[str]] = {}
        for path, number in self.paths.items():
            groups.setdefault(number, []).append(path)
        out: dict[str, dict[str, Any]] = {}
        for number, members in groups.items():
            node = self.nodes[number]
            members.sort()
            first, *others = members
            out[first] = _record(first, node)
            for other in others:
                out[other] = {"path": other, "type": "hardlink", "link": first}
        return dict(sorted(out.items()))


def _record(path: str, node: Node) -> dict[str, Any]:
    record: dict[str, Any] = {
        "path": path,
        "type": node.type,
        "mode": f"{node.mode:04o}",
        "uid": node.uid,
        "gid": node.gid,
    }
    if node.type == "file":
        record["size"] = node.size
        record["digest"] = node.digest
        if node.text is not None:
            record["text"] = node.text
    if node.type == "symlink":
        record["link"] = node.link
    if node.type in ("char", "block"):
        record["device"] = f"{node.devmajor}:{node.devminor}"
    if node.xattrs:
        record["xattrs"] = dict(node.xattrs)
    return record


def clean_path(name: str) -> str:
    """``./a/b/``, ``a//b`` and ``/a/b`` all become ``/a/b``; the root is ``/``; ``..`` is refused."""
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise FlattenError(f"{name!r}: a layer path may not contain '..'")
    return "/" + "/".join(parts)


def _text(data: bytes) -> str | None:
    """A small file's content when it is text: redundant with the digest, but it makes a failure readable."""
    try:
        decoded = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if any(ch < " " and ch not in "\n\t" for ch in decoded):
        return None
    return decoded


def _xattr_value(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "hex:" + raw.hex()


def _ensure_parents(tree: Tree, path: str) -> None:
    parent = posixpath.dirname(path)
    missing: list[str] = []
    while parent != "/":
        node = tree.node(parent)
        if node is not None:
            if node.type != "dir":
                raise FlattenError(f"{path}: its parent {parent} is a {node.type}, not a directory")
            break
        missing.append(parent)
        parent = posixpath.dirname(parent)
    for directory in reversed(missing):
        # What Docker's and containerd's appliers do for a parent the layer does not list.
        tree.paths[directory] = tree.new_node(Node("dir", 0o755, 0, 0))


def apply_layer(tree: Tree, layer: BinaryIO) -> None:
    """Apply one uncompressed layer tar to ``tree`` (see the module docstring for the rules)."""
    deletions: list[tuple[str, str]] = []
    additions: list[tuple[str, Node | str]] = []  # a str is a hardlink target
    for entry, data in TarReader(layer):
        path = clean_path(entry.path)
        if path == "/":
            continue  # the root's own metadata is not recorded
        base = posixpath.basename(path)
        parent = posixpath.dirname(path)
        if base == OPAQUE:
            deletions.append(("opaque", parent))
            continue
        if base.startswith(WHITEOUT + WHITEOUT):
            continue  # AUFS metadata (.wh..wh.plnk and friends): not content
        if base.startswith(WHITEOUT):
            deletions.append(("whiteout", posixpath.join(parent, base[len(WHITEOUT) :])))
            continue
        if entry.type is EntryType.HARDLINK:
            additions.append((path, clean_path(entry.linkname)))
            continue
        size, digest, text = 0, "", None
        if entry.type is EntryType.FILE:
            hasher = hashlib.sha256()
            head = b""
            while chunk := data.read(1 << 20):
                hasher.update(chunk)
                if size <= TEXT_LIMIT:
                    head += chunk[: TEXT_LIMIT + 1 - size]
                size += len(chunk)
            digest = "sha256:" + hasher.hexdigest()
            text = _text(head) if size <= TEXT_LIMIT else None
        node = Node(
            type=_TYPES[entry.type],
            mode=entry.mode & 0o7777,
            uid=entry.uid,
            gid=entry.gid,
            size=size,
            digest=digest,
            link=entry.linkname if entry.type is EntryType.SYMLINK else "",
            devmajor=entry.devmajor,
            devminor=entry.devminor,
            xattrs=tuple(sorted((k, _xattr_value(v)) for k, v in entry.xattrs.items())),
            text=text,
        )
        additions.append((path, node))
    for kind, path in deletions:
        if kind == "opaque":
            tree.children_removed(path)
        else:
            tree.remove(path)
    for path, item in additions:
        existing = tree.node(path)
        if isinstance(item, str):
            number = tree.paths.get(item)
            if number is None:
                raise FlattenError(f"{path}: hardlink to {item}, which does not exist")
            if tree.nodes[number].type == "dir":
                raise FlattenError(f"{path}: hardlink to the directory {item}")
            if item == path:
                continue
            tree.remove(path)
            _ensure_parents(tree, path)
            tree.paths[path] = number
            continue
        if item.type == "dir" and existing is not None and existing.type == "dir":
            tree.nodes[tree.paths[path]] = item  # metadata only; the children stay
            continue
        tree.remove(path)
        _ensure_parents(tree, path)
        tree.paths[path] = tree.new_node(item)


def flatten(layers: Iterable[Callable[[], BinaryIO]]) -> Tree:
    """Apply every layer in order; each is opened (and its compression sniffed) only when its turn comes."""
    tree = Tree()
    for open_layer in layers:
        with open_layer() as raw:
            _, plain = decompress_stream(raw)
            apply_layer(tree, plain)
    return tree


# ---------------------------------------------------------------------------------------------------- images


@dataclass
class ImageData:
    """What the suite needs of an image: its config document and a way to open each layer, bottom first."""

    config: dict[str, Any]
    layers: list[Callable[[], BinaryIO]]

    @property
    def diff_ids(self) -> list[str]:
        return list(self.config.get("rootfs", {}).get("diff_ids") or [])

    @property
    def history(self) -> list[dict[str, Any]]:
        return list(self.config.get("history") or [])


def read_docker_save(path: Path) -> ImageData:
    """The single image in a ``docker save`` tarball (legacy layout of Docker < 25, or the OCI one of 25+:
    ``manifest.json`` names the config and layer members in both)."""
    archive = tarfile.open(path)  # noqa: SIM115 - the openers below read from it later
    members = {clean_path(m.name): m for m in archive.getmembers()}

    def member(name: str) -> tarfile.TarInfo:
        seen = 0
        info = members.get(clean_path(name))
        while info is not None and info.issym() and seen < 8:  # Docker links identical layers
            target = posixpath.join(posixpath.dirname(clean_path(info.name)), info.linkname)
            info, seen = members.get(clean_path(posixpath.normpath(target))), seen + 1
        if info is None or not info.isfile():
            raise FlattenError(f"{path}: no member {name}")
        return info

    def read(name: str) -> bytes:
        handle = archive.extractfile(member(name))
        assert handle is not None
        return handle.read()

    (manifest,) = json.loads(read("manifest.json"))
    config = json.loads(read(manifest["Config"]))

    def opener(name: str) -> Callable[[], BinaryIO]:
        info = member(name)

        def open_layer() -> BinaryIO:
            handle = archive.extractfile(info)
            assert handle is not None
            return handle  # type: ignore[return-value]

        return open_layer

    return ImageData(config, [opener(name) for name in manifest["Layers"]])


def read_oci_layout(path: Path, ref: str | None = None, platform: Platform | None = None) -> ImageData:
    """The image of an OCI image layout directory: the one tagged ``ref`` (a full name, as in the
    ``org.opencontainers.image.ref.name`` annotation), or else its only image. An index entry that is itself an
    index is resolved for ``platform`` (default: this machine's)."""
    layout = ImageLayout.open(path)
    entries = list(layout.index().manifests)
    if ref is not None:
        entries = [d for d in entries if d.ref_name == ref]
    if len(entries) != 1:
        wanted = f"tagged {ref}" if ref else "in all"
        raise FlattenError(f"{path}: expected one image {wanted} in index.json, found {len(entries)}")
    platform = platform or Platform("linux", os.uname().machine).normalized()
    image: Image = load_image(layout.store, entries[0].with_ref_name(None), platform)
    config = json.loads(image.raw_config)

    def opener(layer: Descriptor) -> Callable[[], BinaryIO]:
        return lambda: image.source.open(layer.digest, layer.size)

    return ImageData(config, [opener(layer) for layer in image.layers])


# ---------------------------------------------------------------------------------------------------- comparing


def delta(base: dict[str, dict[str, Any]], image: dict[str, dict[str, Any]]) -> tuple[list[dict], list[str]]:
    """The records of ``image`` that are not identical in ``base``, and the base paths the image lost.

    A lost path is listed only where its parent survives as a directory: the contents of a deleted or replaced
    directory are implied, so they do not depend on what exactly the base held there."""
    changed = [record for path, record in image.items() if base.get(path) != record]
    deleted = []
    for path in base:
        if path in image:
            continue
        parent = posixpath.dirname(path)
        if parent == "/" or (parent in image and image[parent]["type"] == "dir"):
            deleted.append(path)
    return changed, sorted(deleted)


def _empty(value: Any) -> bool:
    return value is None or value == "" or value is False or value == [] or value == {}


def normalize_config(config: dict[str, Any]) -> dict[str, Any]:
    """The compared fields of an image config, in one spelling.

    From the runtime ``config`` object: the fields of ``CONFIG_FIELDS``; ExposedPorts and Volumes (sets) become
    sorted lists; Healthcheck loses zero durations and counts. A field that is missing, null, false, ``""``,
    ``[]`` or ``{}`` is left out, except that Cmd and Entrypoint keep ``[]``. From the top level: ``author``
    (MAINTAINER) when set. ``architecture``, ``os`` and times are left out (they are the host's and the clock's).
    """
    runtime = config.get("config") or {}
    out: dict[str, Any] = {}
    for key in CONFIG_FIELDS:
        value = runtime.get(key)
        if key in ("ExposedPorts", "Volumes") and isinstance(value, dict):
            value = sorted(value)
        if key == "Healthcheck" and isinstance(value, dict):
            value = {k: v for k, v in sorted(value.items()) if v not in (0, None)}
        if value is None or (_empty(value) and key not in _LIST_KEEPS_EMPTY):
            continue
        out[key] = value
    if config.get("author"):
        out["author"] = config["author"]
    return out


def summarize(image: ImageData, base: ImageData | None, base_tree: Tree | None = None) -> dict[str, Any]:
    """What ``expected.json`` holds for a successful build of ``image`` over ``base`` (the busybox image).

    The image counts as built on ``base`` when its diff_ids start with the base's (then the base's history
    entries and records are left out); otherwise it is built from scratch and everything is recorded."""
    history = image.history
    layers_in_history = sum(1 for h in history if not h.get("empty_layer"))
    if layers_in_history != len(image.diff_ids) or len(image.layers) != len(image.diff_ids):
        raise FlattenError(
            f"{len(image.diff_ids)} diff_ids, {len(image.layers)} layers, "
            f"{layers_in_history} history entries with a layer"
        )
    on_base = base is not None and bool(base.diff_ids) and image.diff_ids[: len(base.diff_ids)] == base.diff_ids
    if on_base:
        assert base is not None
        base_records = (base_tree or flatten(base.layers)).records()
        added_history = history[len(base.history) :]
    else:
        base_records, added_history = {}, history
    changed, deleted = delta(base_records, flatten(image.layers).records())
    return {
        "base": "busybox" if on_base else "scratch",
        "tree": changed,
        "deleted": deleted,
        "config": normalize_config(image.config),
        "history": [
            {"created_by": h.get("created_by", ""), "empty_layer": bool(h.get("empty_layer"))} for h in added_history
        ],
    }
