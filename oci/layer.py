"""Writing layers: from a directory tree or a change list to a tar stream, compressed, in one pass.

``tree_items`` walks a directory (never following symlinks) and yields entries in tree order: a directory
before its contents, siblings sorted by their bytes, hardlinked files written once and linked after. Owner names
are blank and mtimes are whole seconds, clamped to ``clamp_mtime`` (SOURCE_DATE_EPOCH) when given, so the same
tree gives the same bytes wherever it lives. ``write_layer`` streams items through the tar writer, a diff_id
hasher and a compressor into ``out`` and returns the diff_id; the caller's sink (the content store) hashes the
compressed bytes. Whiteouts for deleted paths are ordinary entries made by ``whiteout`` and ``opaque``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from oci.compression import Compression, compressor
from oci.digest import SHA256, Digest, Hasher
from oci.errors import LayerError, UnsafeEntry
from oci.frozen import FrozenMap
from oci.tarformat import EntryType, TarEntry, TarWriter, decode_name

__all__ = [
    "LayerInfo",
    "LayerItem",
    "OPAQUE",
    "WHITEOUT_PREFIX",
    "entry_for_stat",
    "object_item",
    "opaque",
    "read_xattrs",
    "sort_key",
    "tree_items",
    "whiteout",
    "write_layer",
]

WHITEOUT_PREFIX = ".wh."
OPAQUE = ".wh..wh..opq"

#: xattrs that describe the host, not the image: SELinux labels and overlayfs' own bookkeeping.
_HOST_XATTRS = ("security.selinux", "trusted.overlay.", "user.overlay.")


@dataclass(frozen=True, slots=True)
class LayerItem:
    """An entry to write, with a way to open its content if it is a regular file."""

    entry: TarEntry
    open: Callable[[], BinaryIO] | None = None


@dataclass(frozen=True, slots=True)
class LayerInfo:
    diff_id: Digest
    size: int  # bytes of the uncompressed tar


def whiteout(path: str, mtime: int = 0) -> TarEntry:
    """The entry that deletes ``path`` from lower layers."""
    parent, _, name = path.rpartition("/")
    marker = f"{parent}/{WHITEOUT_PREFIX}{name}" if parent else f"{WHITEOUT_PREFIX}{name}"
    return TarEntry(marker, EntryType.FILE, mode=0o644, mtime=mtime)


def opaque(directory: str, mtime: int = 0) -> TarEntry:
    """The entry that hides everything lower layers put in ``directory`` ("" for the root)."""
    return TarEntry(f"{directory}/{OPAQUE}" if directory else OPAQUE, EntryType.FILE, mode=0o644, mtime=mtime)


def sort_key(path: str) -> tuple[bytes, ...]:
    """Tree order: parents first, siblings by bytes, an opaque marker first among its siblings."""
    return tuple(b"" if part == OPAQUE else os.fsencode(part) for part in path.split("/"))


def read_xattrs(path: str | int, is_link: bool) -> FrozenMap[str, bytes]:
    """The extended attributes a layer keeps for ``path`` (not the host's SELinux labels or overlayfs' own)."""
    try:
        names = os.listxattr(path, follow_symlinks=not is_link)
    except OSError:
        return FrozenMap()
    values = {}
    for name in sorted(names):
        if name.startswith(_HOST_XATTRS):
            continue
        try:
            values[name] = os.getxattr(path, name, follow_symlinks=not is_link)
        except OSError:
            continue
    return FrozenMap(values)


def entry_for_stat(
    rel: str, full: str, st: os.stat_result, *, clamp_mtime: int | None = None, xattrs: bool = True
) -> TarEntry | None:
    """The entry for one filesystem object; None for what a layer cannot hold (sockets)."""
    mode = st.st_mode
    mtime = int(st.st_mtime)
    if clamp_mtime is not None and mtime > clamp_mtime:
        mtime = clamp_mtime
    mtime = max(mtime, 0)
    common = {"mode": stat.S_IMODE(mode), "uid": st.st_uid, "gid": st.st_gid, "mtime": mtime}
    is_link = stat.S_ISLNK(mode)
    attrs = read_xattrs(full, is_link) if xattrs else FrozenMap()
    if stat.S_ISREG(mode):
        return TarEntry(rel, EntryType.FILE, size=st.st_size, xattrs=attrs, **common)
    if stat.S_ISDIR(mode):
        return TarEntry(rel, EntryType.DIR, xattrs=attrs, **common)
    if is_link:
        return TarEntry(
            rel, EntryType.SYMLINK, linkname=decode_name(os.readlink(os.fsencode(full))), xattrs=attrs, **common
        )
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        kind = EntryType.CHAR if stat.S_ISCHR(mode) else EntryType.BLOCKDEV
        return TarEntry(rel, kind, devmajor=os.major(st.st_rdev), devminor=os.minor(st.st_rdev), xattrs=attrs, **common)
    if stat.S_ISFIFO(mode):
        return TarEntry(rel, EntryType.FIFO, xattrs=attrs, **common)
    return None


def _opener(full: str) -> Callable[[], BinaryIO]:
    def open_file() -> BinaryIO:
        fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        return os.fdopen(fd, "rb", buffering=0)

    return open_file


def object_item(entry: TarEntry, full: str, st: os.stat_result, links: dict[tuple[int, int], str]) -> LayerItem:
    """The item for a non-directory ``entry`` read from ``full``: a hardlink to the first path written with the
    same inode (``links`` remembers them across calls), else the entry, with a way to open a file's content."""
    if st.st_nlink > 1:
        key = (st.st_dev, st.st_ino)
        first = links.get(key)
        if first is not None:
            link = TarEntry(
                entry.path,
                EntryType.HARDLINK,
                mode=entry.mode,
                uid=entry.uid,
                gid=entry.gid,
                mtime=entry.mtime,
                linkname=first,
                xattrs=entry.xattrs,
            )
            return LayerItem(link)
        links[key] = entry.path
    if entry.type is EntryType.FILE:
        return LayerItem(entry, _opener(full))
    return LayerItem(entry)


def tree_items(
    root: str | Path,
    *,
    clamp_mtime: int | None = None,
    xattrs: bool = True,
    allow_whiteout_names: bool = False,
) -> Iterator[LayerItem]:
    """Every object under ``root`` (not the root itself), in tree order.

    A real file whose name starts with ``.wh.`` would become a whiteout in the layer and delete something
    (podman#3582); it is refused unless ``allow_whiteout_names`` says the tree holds deliberate markers.
    """
    top = os.fsdecode(root)
    seen_inodes: dict[tuple[int, int], str] = {}
    stack: list[tuple[str, list[str]]] = [("", _sorted_children(top))]
    while stack:
        rel_dir, children = stack[-1]
        if not children:
            stack.pop()
            continue
        name = children.pop()
        rel = f"{rel_dir}/{name}" if rel_dir else name
        full = os.path.join(top, rel)
        if name.startswith(WHITEOUT_PREFIX) and not allow_whiteout_names:
            raise UnsafeEntry(f"{rel}: a file named .wh.* cannot be stored in a layer (it means a deletion)")
        st = os.lstat(full)
        entry = entry_for_stat(rel, full, st, clamp_mtime=clamp_mtime, xattrs=xattrs)
        if entry is None:
            continue
        if entry.type is EntryType.DIR:
            yield LayerItem(entry)
            stack.append((rel, _sorted_children(full)))
        else:
            yield object_item(entry, full, st, seen_inodes)


def _sorted_children(directory: str) -> list[str]:
    # Reversed, so that pop() takes them in ascending order.
    return sorted(os.listdir(directory), key=lambda n: (n != OPAQUE, os.fsencode(n)), reverse=True)


class _Pipeline:
    """The tar stream's sink: hashes the uncompressed bytes and hands them to the compressor."""

    def __init__(self, out: BinaryIO, compression: Compression, level: int | None) -> None:
        # An uncompressed layer into a sink that hashes what it is given (a blob being written): its hash is the
        # diff_id, so the bytes are hashed once, not twice.
        shared = getattr(out, "hasher", None) if compression is Compression.NONE else None
        self._own_hash = not (isinstance(shared, Hasher) and shared.size == 0 and shared.algorithm == SHA256)
        self.hasher: Hasher = Hasher() if self._own_hash else shared  # type: ignore[assignment]
        self._compressor = compressor(compression, out, level)
        # Where the bytes go untouched into a sink that hashes them, a big file can be copied by the kernel.
        copy = getattr(out, "copy_file", None) if compression is Compression.NONE and not self._own_hash else None
        self.copy_file: Callable[[int, int], int | None] | None = copy

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._own_hash:
            self.hasher.update(data)
        self._compressor.write(data)
        return len(data)

    def finish(self) -> None:
        self._compressor.finish()


def write_layer(
    items: Iterable[LayerItem],
    out: BinaryIO,
    compression: Compression = Compression.GZIP,
    *,
    level: int | None = None,
) -> LayerInfo:
    """Write ``items`` as a layer into ``out`` and return its diff_id. ``out`` is left open."""
    pipeline = _Pipeline(out, compression, level)
    writer = TarWriter(pipeline)  # type: ignore[arg-type]
    for item in items:
        entry = item.entry
        if entry.type is EntryType.FILE and entry.size:
            if item.open is None:
                raise LayerError(f"{entry.path}: no content for a regular file")
            with item.open() as data:
                writer.add(entry, data)
        else:
            writer.add(entry)
    writer.close()
    pipeline.finish()
    return LayerInfo(pipeline.hasher.digest(), pipeline.hasher.size)
