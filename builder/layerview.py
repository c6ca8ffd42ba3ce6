"""Layer browsing (``pybuild diff`` and ``pybuild layers``): what each layer of an image or of a cached step's chain
adds, changes and deletes, and which stored bytes the final filesystem never shows.

Layers are read as tar streams from the store (uncompressed, gzip or zstd), headers only: nothing is extracted
and no file content is kept, only per-path metadata (type, stored size, the stored copy it shows). Paths are
normalised to absolute ones (``./etc/x`` and ``etc/x`` are ``/etc/x``). Whiteouts follow the OCI image spec
(layer.md): ``DIR/.wh.NAME`` deletes ``DIR/NAME`` and everything under it, ``DIR/.wh..wh..opq`` deletes everything
lower layers put under ``DIR`` (not ``DIR`` itself), and both apply to lower layers only, wherever they sit in the
archive. AUFS bookkeeping (``.wh..wh.plnk`` and the like) is not part of the image and is skipped.

**Changes.** Each layer's paths, compared with the layers under it: ``A`` added, ``C`` changed (the path existed
below, even if this layer's own whiteout or opaque marker removed it first), ``D`` deleted: the target of each
whiteout and every path under it, everything lower layers had under an opaque directory, and what a non-directory
replaces when it lands on a directory. A whiteout of a path no lower layer has is listed as a ``D`` of type
``whiteout``. Directories the archive only implies (a member ``a/b/c`` without ``a/b/``) are created silently;
a non-directory in their way becomes a directory (a ``C``).
A change's ``size`` is always the bytes a tar member stores: the new content for ``A``/``C``, the deleted path's
stored content for ``D``; hardlinks, symlinks, directories and devices store none.

**Waste.** A layer's *size* is the content bytes of its regular files; the image size is their sum over the
layers. *Wasted bytes* are the stored copies the final filesystem does not show: a file's content that a later
layer overwrites (a ``C``) or deletes (a whiteout, an opaque directory, a directory replaced by a file), or that
its own layer writes twice. Hardlinked paths share one copy, which is wasted only when no path to it is left.
That is exactly what squashing the layers would save. The *efficiency* is ``1 - wasted / image size`` (1 for an
image with no file bytes), the share of stored bytes the final filesystem shows.

dive's score is close but not the same: it counts every version of a path that appears in more than one layer as
"wasted", the one still shown included, and scores ``sum(smallest version of each path) / sum(all versions)``.
Counting the live copy as waste overstates it (a config file rewritten once "wastes" both copies), and the
smallest version is not the one the image needs (a file that grows would need its last version). pybuild keeps
dive's idea (paths written more than once or deleted cost their earlier versions) and counts bytes exactly.
Like dive's "Inefficient files", ``inefficient`` lists the paths whose stored copies are wasted, each with the
number of layers that wrote or deleted it and the wasted bytes, largest first.

A layer that is not in the store (or cannot be read) is reported with its error and contributes nothing: the
layers above it are then compared without it. ``analyse`` is the pure core (per-layer member lists in, the
changes and the waste out); the functions at the end read layers and resolve what the user named: an image,
or a cache key (or a unique prefix of one) whose chain is the entry's ``parents`` and its own layer.
``builder.cacheops`` reads and stacks layers with ``read_layer`` and ``Stack`` for ``pybuild cache inspect``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from builder.cache import INDEX_FILE, CacheEntry, CacheIndex
from builder.errors import BuildError, ImageNotFound
from builder.images import find_image, list_images
from builder.limits import DEFAULT_LIMITS
from builder.root import Store
from oci.apply import ApplyLimits
from oci.compression import decompress_stream
from oci.descriptor import Descriptor, Platform
from oci.digest import Digest
from oci.errors import LimitExceeded, OCIError
from oci.image import Image
from oci.layer import OPAQUE, WHITEOUT_PREFIX
from oci.store import ContentStore
from oci.tarformat import EntryType, TarReader

__all__ = [
    "Analysis",
    "Browse",
    "Change",
    "LayerDiff",
    "LayerSource",
    "Member",
    "Stack",
    "Target",
    "Waste",
    "analyse",
    "browse",
    "entry_sources",
    "find_entry",
    "find_target",
    "image_sources",
    "members",
    "normalise",
    "read_layer",
    "whiteout_target",
]

_AUFS_META = ".wh..wh."  # AUFS bookkeeping (.wh..wh.plnk and the like): not part of the image
_CHUNK = 1 << 20

# ------------------------------------------------------------------------------------------------ members


@dataclass(frozen=True, slots=True)
class Member:
    """What a layer's tar header says about one path. Whiteouts keep their names (``/etc/.wh.old``)."""

    path: str  # normalised, absolute
    type: str  # file, dir, symlink, hardlink, char, block, fifo
    size: int = 0  # content bytes stored (regular files only)
    link: str = ""  # a symlink's target as stored; a hardlink's target, normalised


_TYPES = {
    EntryType.FILE: "file",
    EntryType.HARDLINK: "hardlink",
    EntryType.SYMLINK: "symlink",
    EntryType.CHAR: "char",
    EntryType.BLOCKDEV: "block",
    EntryType.DIR: "dir",
    EntryType.FIFO: "fifo",
}


def normalise(name: str) -> str:
    """``name`` as an absolute path without ``.``, ``..``, repeated or trailing slashes (``..`` stops at ``/``)."""
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return "/" + "/".join(parts)


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


def whiteout_target(path: str) -> tuple[str, bool] | None:
    """What a whiteout member deletes: ``(DIR, True)`` for an opaque marker in DIR (its contents), ``(PATH,
    False)`` for ``.wh.NAME`` (PATH itself and everything under it); None when ``path`` is no whiteout."""
    parent, _, name = path.rpartition("/")
    if not name.startswith(WHITEOUT_PREFIX):
        return None
    if name == OPAQUE:
        return parent or "/", True
    return f"{parent}/{name[len(WHITEOUT_PREFIX) :]}", False


def members(entries: Iterable[tuple[str, EntryType, int, str]]) -> list[Member]:
    """Members from raw ``(name, type, size, linkname)`` headers: normalised, AUFS bookkeeping and ``./`` dropped."""
    out: list[Member] = []
    for name, entry_type, size, linkname in entries:
        path = normalise(name)
        if path == "/":
            continue  # "./" itself
        if _AUFS_META in path:
            parts = path.split("/")
            if parts[-1] != OPAQUE and any(part.startswith(_AUFS_META) for part in parts):
                continue
        kind = _TYPES[entry_type]
        if entry_type is EntryType.HARDLINK:
            linkname = normalise(linkname)
        elif entry_type is not EntryType.SYMLINK:
            linkname = ""
        out.append(Member(path, kind, size if entry_type is EntryType.FILE else 0, linkname))
    return out


def read_layer(blobs: ContentStore, layer: Descriptor, limits: ApplyLimits = DEFAULT_LIMITS) -> list[Member]:
    """The members of ``layer``, in archive order, from its headers (content is skipped, never kept).

    Raises ``OCIError`` when the blob is missing, corrupt (its digest is checked to the last byte) or no tar, and
    ``LimitExceeded`` when it expands beyond ``limits`` (checked as it is read).
    """
    with blobs.open(layer.digest, layer.size) as raw:
        _, plain = decompress_stream(raw, max_bytes=limits.max_bytes, what=f"layer {layer.digest}")
        reader = TarReader(plain)  # type: ignore[arg-type]

        def headers() -> Iterator[tuple[str, EntryType, int, str]]:
            for entry, _data in reader:
                if limits.max_entries is not None and reader.entries > limits.max_entries:
                    raise LimitExceeded.too_many_entries(f"layer {layer.digest}", limits.max_entries)
                yield entry.path, entry.type, entry.size, entry.linkname

        found = members(headers())
        while raw.read(_CHUNK):  # what the tar reader left unread is still verified against the digest
            pass
    return found


# ------------------------------------------------------------------------------------------------ changes


@dataclass(frozen=True, slots=True)
class Change:
    """One path a layer changes: ``A`` added, ``C`` changed (it existed below), ``D`` deleted."""

    path: str
    kind: str
    size: int  # bytes the tar member stores: the new content (A, C) or the deleted content (D)
    type: str  # file, dir, symlink, hardlink, char, block, fifo; for D, what was deleted (or "whiteout")
    link: str = ""  # a symlink's target, a hardlink's target path

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "size": self.size, "type": self.type, "link": self.link or None}


class _Node:
    __slots__ = ("type", "size", "copy", "link")

    def __init__(self, type: str, size: int, copy: int, link: str) -> None:
        self.type = type
        self.size = size  # stored bytes of the member that made this path
        self.copy = copy  # the stored copy (a regular file's content) it shows, -1 for none
        self.link = link


class _LayerState:
    """What applying one layer has done so far."""

    __slots__ = ("changes", "lower")

    def __init__(self) -> None:
        self.changes: dict[str, Change] = {}
        self.lower: dict[str, tuple[str, int]] = {}  # type and stored size of each path as it was below


class Stack:
    """The filesystem a stack of layers makes, as overlayfs merges them: per path its type, stored size and the
    stored copy it shows; per stored copy its size, how many paths show it and the path that stored it."""

    def __init__(self) -> None:
        self._nodes: dict[str, _Node] = {"/": _Node("dir", 0, -1, "")}
        self._children: dict[str, set[str]] = {}
        self._copy_size: list[int] = []
        self._copy_refs: list[int] = []
        self._copy_owner: list[str] = []
        self.touches: dict[str, int] = {}  # layers that wrote or deleted each path

    def type_of(self, path: str) -> str | None:
        node = self._nodes.get(path)
        return node.type if node is not None else None

    def apply(self, layer: Sequence[Member]) -> list[Change]:
        """Put ``layer`` on top; return its changes, sorted by path. Whiteouts are applied first, to the layers
        below only; then the other members, in archive order (a path written twice keeps the last)."""
        state = _LayerState()
        writes: list[Member] = []
        for member in layer:
            target = whiteout_target(member.path)
            if target is None:
                writes.append(member)
                continue
            path, opaque = target
            node = self._nodes.get(path)
            if opaque:
                if node is not None and node.type == "dir":
                    self._drop_below(path, state)
            elif node is not None:
                self._drop_below(path, state)
                self._drop(path, state)
            elif path not in state.lower and path not in state.changes:
                state.changes[path] = Change(path, "D", 0, "whiteout")
        for member in writes:
            self._write(member, state)
        for path in state.changes:
            self.touches[path] = self.touches.get(path, 0) + 1
        return sorted(state.changes.values(), key=lambda c: c.path.encode("utf-8", "surrogateescape"))

    def waste(self) -> tuple[int, int, dict[str, int]]:
        """Stored bytes, wasted bytes (copies no path shows) and the wasted bytes of each path that stored some."""
        by_path: dict[str, int] = {}
        wasted = 0
        for size, refs, owner in zip(self._copy_size, self._copy_refs, self._copy_owner, strict=True):
            if refs == 0 and size:
                wasted += size
                by_path[owner] = by_path.get(owner, 0) + size
        return sum(self._copy_size), wasted, by_path

    # -------------------------------------------------------------------------------------------- internals

    def _write(self, member: Member, state: _LayerState) -> None:
        path = member.path
        parent = _parent(path)
        above = self._nodes.get(parent)
        if above is None or above.type != "dir":
            self._make_dirs(parent, state)
        copy = -1
        if member.type == "file":
            copy = len(self._copy_size)
            self._copy_size.append(member.size)
            self._copy_refs.append(1)
            self._copy_owner.append(path)
        elif member.type == "hardlink":
            target = self._nodes.get(member.link)
            if target is not None and target.copy >= 0:
                copy = target.copy
                self._copy_refs[copy] += 1
        old = self._nodes.get(path)
        if old is not None:
            if path not in state.changes:
                state.lower[path] = (old.type, old.size)
            if old.type == "dir" and member.type != "dir":
                self._drop_below(path, state)
            self._release(old)
            old.type, old.size, old.copy, old.link = member.type, member.size, copy, member.link
        else:
            self._nodes[path] = _Node(member.type, member.size, copy, member.link)
            self._children.setdefault(parent, set()).add(path)
        kind = "C" if path in state.lower else "A"
        state.changes[path] = Change(path, kind, member.size, member.type, member.link)

    def _make_dirs(self, path: str, state: _LayerState) -> None:
        """Make ``path`` a directory, and its parents: missing ones silently (the archive implies them), a
        non-directory in the way as a change to a directory."""
        missing: list[str] = []
        while True:
            node = self._nodes.get(path)
            if node is not None and node.type == "dir":
                break
            missing.append(path)
            if node is not None:
                break  # a non-directory: its own parents exist
            path = _parent(path)
        for here in reversed(missing):
            if here in self._nodes:
                self._write(Member(here, "dir"), state)
            else:
                self._nodes[here] = _Node("dir", 0, -1, "")
                self._children.setdefault(_parent(here), set()).add(here)

    def _drop_below(self, path: str, state: _LayerState) -> None:
        """Delete everything under ``path`` (not ``path`` itself)."""
        pending = [path]
        while pending:
            here = pending.pop()
            for child in self._children.pop(here, ()):
                pending.append(child)
                self._forget(child, state)

    def _drop(self, path: str, state: _LayerState) -> None:
        self._children.get(_parent(path), set()).discard(path)
        self._forget(path, state)

    def _forget(self, path: str, state: _LayerState) -> None:
        node = self._nodes.pop(path)
        self._release(node)
        if path not in state.changes:
            state.lower[path] = (node.type, node.size)
        if path in state.lower:
            kind, size = state.lower[path]
            state.changes[path] = Change(path, "D", size, kind)
        else:
            del state.changes[path]  # added by this very layer, then removed: no change at all

    def _release(self, node: _Node) -> None:
        if node.copy >= 0:
            self._copy_refs[node.copy] -= 1
            node.copy = -1


# --------------------------------------------------------------------------------------------------- waste


@dataclass(frozen=True, slots=True)
class LayerDiff:
    """One layer's changes over the layers under it, and what it stores. ``error``: why it could not be read."""

    changes: tuple[Change, ...] = ()
    size: int = 0  # content bytes of its regular files
    files: int = 0  # members that are neither directories nor whiteouts
    error: str = ""

    def count(self, kind: str) -> int:
        return sum(1 for change in self.changes if change.kind == kind)


@dataclass(frozen=True, slots=True)
class Waste:
    """A path whose stored copies the final filesystem does not show."""

    path: str
    count: int  # layers that wrote or deleted it
    wasted: int  # bytes

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "count": self.count, "wasted": self.wasted}


@dataclass(frozen=True)
class Analysis:
    layers: tuple[LayerDiff, ...]
    size: int  # content bytes of every layer's regular files
    wasted: int  # of those, the bytes the final filesystem does not show
    inefficient: tuple[Waste, ...]  # largest first

    @property
    def efficiency(self) -> float:
        return 1.0 - self.wasted / self.size if self.size else 1.0


def analyse(layers: Sequence[Sequence[Member] | str]) -> Analysis:
    """The changes of each layer (bottom first) and the waste of the stack. A layer given as a string could not
    be read (the string says why): it is reported and left out. Pure."""
    stack = Stack()
    diffs: list[LayerDiff] = []
    for layer in layers:
        if isinstance(layer, str):
            diffs.append(LayerDiff(error=layer))
            continue
        changes = stack.apply(layer)
        size = sum(m.size for m in layer if m.type == "file")
        files = sum(1 for m in layer if m.type != "dir" and whiteout_target(m.path) is None)
        diffs.append(LayerDiff(tuple(changes), size, files))
    total, wasted, by_path = stack.waste()
    inefficient = sorted(
        (Waste(path, stack.touches.get(path, 1), size) for path, size in by_path.items()),
        key=lambda w: (-w.wasted, w.path),
    )
    return Analysis(tuple(diffs), total, wasted, tuple(inefficient))


# ------------------------------------------------------------------------------------------------ sources


@dataclass(frozen=True)
class LayerSource:
    """A layer to read, and the history entry that made it."""

    descriptor: Descriptor
    diff_id: Digest | None
    created_by: str = ""
    comment: str = ""


@dataclass(frozen=True)
class Target:
    """What the user named: an image, or a cached step (its own layer on top of its parents')."""

    title: str  # for headings: the image's name and ID, or the entry's key and step
    sources: tuple[LayerSource, ...]
    entry: CacheEntry | None = None


def image_sources(image: Image) -> tuple[LayerSource, ...]:
    """``image``'s layers, each with the ``created_by`` (and comment) of its non-empty history entry, in order."""
    made = [h for h in image.config.history if not h.empty_layer]
    sources = []
    for i, (layer, diff_id) in enumerate(image.layer_pairs()):
        history = made[i] if i < len(made) else None
        sources.append(
            LayerSource(layer, diff_id, history.created_by if history else "", history.comment if history else "")
        )
    return tuple(sources)


def entry_sources(store: Store, index: CacheIndex, entry: CacheEntry, platform: Platform) -> tuple[LayerSource, ...]:
    """The chain of a cached step: the layers under it (its ``parents``), then its own (none if it changed no file).

    The layers under it are named by the cache entries that made them, else by an image in the store that has them.
    """
    names: dict[Digest, tuple[str, str]] = {}
    for other in index.entries():
        if other.diff_id is not None:
            names.setdefault(other.diff_id, (other.history, ""))
    if any(diff_id not in names for _, diff_id in entry.parents):
        for row in list_images(store.layout, platform):
            try:
                for source in image_sources(row.image):
                    if source.diff_id is not None:
                        names.setdefault(source.diff_id, (source.created_by, source.comment))
            except OCIError:
                continue
    sources = [LayerSource(layer, diff_id, *names.get(diff_id, ("", ""))) for layer, diff_id in entry.parents]
    if entry.layer is not None:
        sources.append(LayerSource(entry.layer, entry.diff_id, entry.history))
    return tuple(sources)


_HEX = "0123456789abcdef"


def find_entry(index: CacheIndex, text: str) -> CacheEntry:
    """The one entry whose key starts with ``text`` (hex digits, with or without ``sha256:``)."""
    digits = text.strip().lower().removeprefix("sha256:")
    if not digits or len(digits) > 64 or digits.strip(_HEX):
        raise BuildError(f"{text}: not a cache key (expected hex digits of a sha256 key)")
    found = index.find(f"sha256:{digits}")
    if not found:
        raise BuildError(f"no cache entry matches {text}")
    if len(found) > 1:
        raise BuildError(f"{text} is ambiguous: it matches {len(found)} cache entries")
    return found[0]


def find_target(store: Store, text: str, platform: Platform) -> Target:
    """The image ``text`` names (a name, an image ID or prefix, a manifest digest) or the cache entry whose key it
    starts; a prefix that matches both is refused as ambiguous."""
    errors: list[str] = []
    image: Image | None = None
    try:
        image, _ = find_image(store.layout, text, platform)
    except ImageNotFound as err:
        errors.append(err.message)
    entry: CacheEntry | None = None
    hexlike = not text.strip().lower().removeprefix("sha256:").strip(_HEX)
    if hexlike and (store.root / INDEX_FILE).exists():
        index = CacheIndex(store.root)
        try:
            entry = find_entry(index, text)
            sources = entry_sources(store, index, entry, platform)
        except BuildError as err:
            errors.append(err.message)
        finally:
            index.close()
    if image is not None and entry is not None:
        raise BuildError(
            f"{text} is ambiguous: it names image {image.id.encoded[:12]} and cache entry {entry.key.encoded[:12]}",
            hint="give more digits, or the image's name",
        )
    if image is not None:
        return Target(f"{text} (image {image.id.encoded[:12]})", image_sources(image))
    if entry is not None:
        title = f"cache entry {entry.key.encoded[:12]}: {entry.step}"
        if entry.layer is None:
            title += " (it changed no file: no layer of its own)"
        return Target(title, sources, entry)
    ambiguous = [message for message in errors if "ambiguous" in message]
    if ambiguous:
        raise ImageNotFound(ambiguous[0])
    raise ImageNotFound(f"no image or cache entry matches {text}" if hexlike else errors[0])


# -------------------------------------------------------------------------------------------------- browse


@dataclass(frozen=True)
class Browse:
    """A target's layers (the first ``len(analysis.layers)`` of them) and what they hold."""

    target: Target
    analysis: Analysis

    def layer_json(self, number: int, *, changes: bool) -> dict[str, Any]:
        """Layer ``number`` (from 1) as JSON, with its changes when asked."""
        source, diff = self.target.sources[number - 1], self.analysis.layers[number - 1]
        data: dict[str, Any] = {
            "index": number,
            "digest": str(source.descriptor.digest),
            "diff_id": str(source.diff_id) if source.diff_id is not None else None,
            "size": diff.size if not diff.error else None,
            "blob_size": source.descriptor.size,
            "created_by": source.created_by,
            "comment": source.comment,
            "error": diff.error or None,
        }
        if changes:
            data["changes"] = [change.to_json() for change in diff.changes]
        else:
            data.update(files=diff.files, added=diff.count("A"), changed=diff.count("C"), deleted=diff.count("D"))
        return data

    def summary_json(self) -> dict[str, Any]:
        analysis = self.analysis
        return {
            "target": self.target.title,
            "layers": [self.layer_json(i, changes=False) for i in range(1, len(analysis.layers) + 1)],
            "image_size": analysis.size,
            "wasted_bytes": analysis.wasted,
            "efficiency": analysis.efficiency,
            "inefficient_files": [waste.to_json() for waste in analysis.inefficient],
        }


def browse(
    blobs: ContentStore, target: Target, upto: int | None = None, limits: ApplyLimits = DEFAULT_LIMITS
) -> Browse:
    """Read ``target``'s layers (the first ``upto`` of them: enough to show layer ``upto``) and analyse them; a
    layer that expands beyond ``limits`` is reported as one that cannot be read."""
    read: list[Sequence[Member] | str] = []
    for source in target.sources[:upto]:
        digest = source.descriptor.digest
        if not blobs.has(digest):
            read.append(f"layer {digest} is not in the store")
            continue
        try:
            read.append(read_layer(blobs, source.descriptor, limits))
        except LimitExceeded as err:
            read.append(str(err))  # it names the layer
        except OCIError as err:
            read.append(f"layer {digest} cannot be read: {err}")
    return Browse(target, analyse(read))
