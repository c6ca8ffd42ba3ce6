"""COPY and ADD: the entries of their layer, computed from the sources and a read-only view of the destination.

Nothing is executed and nothing is mounted: the layer is written straight from the sources. The rules are
BuildKit's (its Dockerfile frontend calls tonistiigi/fsutil's ``copy.Copy`` with ``CopyDirContents``,
``FollowLinks``, ``AllowWildcards`` and ``AllowEmptyWildcard``), reproduced over a model of the destination:

- a source path is resolved inside its root, following symlinks (an absolute link is relative to the root, and
  ``..`` stops there), so nothing outside the context is ever read; a source with a wildcard component matches
  with Go's ``filepath.Match`` against one directory level per component, and may match nothing;
- the destination directory (the destination itself when it ends in ``/``, else its parent) and every missing
  parent are created with mode 0755, owned by ``--chown`` (else root), dated now;
- a directory source copies its contents; a file goes into the destination when that is an existing directory,
  else becomes it; a file may not replace a directory, and a directory may not be copied onto a non-directory;
- copied entries keep their mode (or take ``--chmod``), their mtime and their extended attributes; files from the
  build context are owned by root, files from a stage or an image keep their owners, ``--chown`` overrides both;
  symlinks inside a copied tree are copied as symlinks, hardlinks stay hardlinks;
- ADD extracts a local archive (tar, optionally gzip, bzip2, xz or zstd) into the destination directory, keeping
  the archive's owners and times (an http(s) URL is fetched by ``builder.fetch`` and copied as a file).

The layer holds the created and copied entries and, as containerd's change writer does, the existing parent
directories of each of them. Entries are ``LayerItem`` values in tree order, ready for ``write_layer``.
"""

from __future__ import annotations

import bz2
import io
import lzma
import os
import posixpath
import re
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, Protocol

from builder.context import IgnoreRules, walk_context
from builder.errors import BuildError
from builder.frontend.gostyle import has_wildcards, path_match
from builder.snapshot import RootView
from oci.apply import apply_layer
from oci.compression import decompress_stream
from oci.errors import OCIError
from oci.layer import WHITEOUT_PREFIX, LayerItem, entry_for_stat, sort_key, tree_items
from oci.tarformat import EntryType, TarEntry, TarReader

__all__ = [
    "ContextTree",
    "CopyError",
    "CopyOptions",
    "CopySource",
    "MemoryTree",
    "SourceTree",
    "copy_items",
    "directory_items",
    "lookup_user",
    "match_wildcards",
    "parts",
    "resolve",
]

_MAX_LINKS = 255
_CHUNK = 1 << 20


class CopyError(BuildError):
    """A COPY or ADD that cannot be done (a missing source, a file onto a directory, ...)."""


# ------------------------------------------------------------------------------------------------ sources


class SourceTree(Protocol):
    """A read-only tree that COPY reads from. Paths are relative, ``/``-separated, clean; "" is the root."""

    keeps_owners: bool  # False: entries are owned by root (the build context, as BuildKit's file sender sends it)

    def lstat(self, rel: str) -> os.stat_result | None: ...

    def readlink(self, rel: str) -> str: ...

    def listdir(self, rel: str) -> list[str]: ...

    def open(self, rel: str) -> BinaryIO: ...

    def real_path(self, rel: str) -> bytes | None: ...


class ContextTree:
    """A build context directory as the builder sees it: only what the ignore rules let through."""

    keeps_owners = False

    def __init__(self, root: Path, rules: IgnoreRules | None = None) -> None:
        self.root = os.fsencode(Path(root).absolute())
        self.rules = rules if rules is not None and rules.rules else None
        self._sent: set[str] | None = None

    def _visible(self, rel: str) -> bool:
        if self.rules is None or not rel:
            return True
        if self._sent is None:
            sent: set[str] = set()
            for entry in walk_context(Path(os.fsdecode(self.root)), self.rules):
                if entry.decision.included:
                    path = entry.path
                    while path and path not in sent:
                        sent.add(path)
                        path = posixpath.dirname(path)
            self._sent = sent
        return rel in self._sent

    def real_path(self, rel: str) -> bytes:
        return self.root + b"/" + rel.encode("utf-8", "surrogateescape") if rel else self.root

    def lstat(self, rel: str) -> os.stat_result | None:
        if not self._visible(rel):
            return None
        try:
            return os.lstat(self.real_path(rel))
        except (FileNotFoundError, NotADirectoryError):
            return None

    def readlink(self, rel: str) -> str:
        return os.fsdecode(os.readlink(self.real_path(rel)))

    def listdir(self, rel: str) -> list[str]:
        names = sorted(os.listdir(self.real_path(rel)))
        prefix = f"{rel}/" if rel else ""
        return [name for name in map(os.fsdecode, names) if self._visible(prefix + name)]

    def open(self, rel: str) -> BinaryIO:
        fd = os.open(self.real_path(rel), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        return os.fdopen(fd, "rb")


class ImageTree:
    """A stage's or an image's root filesystem: entries keep their owners."""

    keeps_owners = True

    def __init__(self, view: RootView) -> None:
        self.view = view

    def lstat(self, rel: str) -> os.stat_result | None:
        return self.view.lstat(rel)

    def readlink(self, rel: str) -> str:
        return self.view.readlink(rel)

    def listdir(self, rel: str) -> list[str]:
        return self.view.listdir(rel)

    def open(self, rel: str) -> BinaryIO:
        return self.view.open(rel)

    def real_path(self, rel: str) -> bytes | None:
        return self.view.real_path(rel) if rel else None


@dataclass(frozen=True)
class _MemoryFile:
    data: bytes
    mode: int
    mtime: int


class MemoryTree:
    """One file held by the builder: a heredoc's content, or a downloaded file (then ``path`` holds it)."""

    keeps_owners = False

    def __init__(self, name: str, mode: int, mtime: int, data: bytes = b"", path: Path | None = None) -> None:
        self.name = name
        self.mode = mode
        self.mtime = mtime
        self.data = data
        self.path = path

    def lstat(self, rel: str) -> os.stat_result | None:
        if rel == "":
            return os.stat_result((stat.S_IFDIR | 0o755, 0, 0, 2, 0, 0, 0, 0, 0, 0))
        if rel != self.name:
            return None
        size = self.path.stat().st_size if self.path is not None else len(self.data)
        return os.stat_result((stat.S_IFREG | self.mode, 0, 0, 1, 0, 0, size, self.mtime, self.mtime, self.mtime))

    def readlink(self, rel: str) -> str:
        raise OSError(f"{rel} is not a symlink")

    def listdir(self, rel: str) -> list[str]:
        return [self.name] if rel == "" else []

    def open(self, rel: str) -> BinaryIO:
        if self.path is not None:
            return open(self.path, "rb")
        return io.BytesIO(self.data)

    def real_path(self, rel: str) -> bytes | None:
        return None


@dataclass(frozen=True)
class CopySource:
    tree: SourceTree
    path: str  # as written in the Dockerfile, relative to the tree's root
    unpack: bool = False  # ADD: extract it if it is a local archive


@dataclass(frozen=True)
class CopyOptions:
    now: int  # mtime of created directories
    chown: str = ""
    chmod: str = ""
    clamp: int | None = None  # SOURCE_DATE_EPOCH: no mtime in the layer is later
    scratch: Path | None = None  # where ADD extracts archives (kept until the layer is written)


# ----------------------------------------------------------------------------------------------- owners


def _read_db(view: RootView, name: str) -> list[list[str]]:
    try:
        rel = resolve(ImageTree(view), f"/etc/{name}")
        with view.open(rel) as f:
            text = f.read(4 << 20).decode("utf-8", errors="replace")
    except (OSError, CopyError):
        return []
    return [line.split(":") for line in text.splitlines() if line.strip() and not line.startswith("#")]


def lookup_user(view: RootView, spec: str, what: str = "--chown") -> tuple[int, int]:
    """``user[:group]`` as BuildKit resolves --chown: names through the image's files; an id alone is also the gid."""
    user, _, group = spec.partition(":")
    if user.isdigit():
        uid = gid = int(user)
    else:
        entry = next((e for e in _read_db(view, "passwd") if len(e) >= 4 and e[0] == user), None)
        if entry is None or not entry[2].isdigit() or not entry[3].isdigit():
            raise CopyError(f"{what}: unable to find user {user}: no matching entries in passwd file")
        uid, gid = int(entry[2]), int(entry[3])
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            found = next((e for e in _read_db(view, "group") if len(e) >= 3 and e[0] == group), None)
            if found is None or not found[2].isdigit():
                raise CopyError(f"{what}: unable to find group {group}: no matching entries in group file")
            gid = int(found[2])
    return uid, gid


# -------------------------------------------------------------------------------------------------- modes

_SYMBOLIC = re.compile(r"([ugoa]*)([-+=])([rwxXst]*|[ugo])")


def parse_chmod(text: str) -> Callable[[int, bool], int] | None:
    """``--chmod``: octal, or symbolic clauses (``u+x,go-w``) applied to each entry's own mode."""
    if not text:
        return None
    if re.fullmatch(r"[0-7]{1,4}", text):
        value = int(text, 8)
        return lambda mode, is_dir: value
    clauses = []
    for clause in text.split(","):
        match = _SYMBOLIC.fullmatch(clause)
        if match is None:
            raise CopyError(f"invalid chmod parameter {text!r}")
        clauses.append(match.groups())

    def apply(mode: int, is_dir: bool) -> int:
        for who, op, perms in clauses:
            who = who or "a"
            mask = 0
            if "u" in who or "a" in who:
                mask |= 0o4700
            if "g" in who or "a" in who:
                mask |= 0o2070
            if "o" in who or "a" in who:
                mask |= 0o1007
            bits = 0
            if perms in ("u", "g", "o"):
                shift = {"u": 6, "g": 3, "o": 0}[perms]
                source = (mode >> shift) & 7
                bits = source << 6 | source << 3 | source
            else:
                for p in perms:
                    bits |= {"r": 0o444, "w": 0o222, "x": 0o111, "s": 0o6000, "t": 0o1000}.get(p, 0)
                    if p == "X" and (is_dir or mode & 0o111):
                        bits |= 0o111
            bits &= mask
            if op == "+":
                mode |= bits
            elif op == "-":
                mode &= ~bits
            else:
                mode = (mode & ~mask) | bits
        return mode & 0o7777

    return apply


# ---------------------------------------------------------------------------------------- path resolution


class _Nodes(Protocol):
    def lstat(self, rel: str) -> os.stat_result | None: ...

    def readlink(self, rel: str) -> str: ...


def parts(path: str) -> list[str]:
    """A relative or absolute path's components, without empty ones and ``.``."""
    return [p for p in path.split("/") if p not in ("", ".")]


def resolve(tree: _Nodes, path: str, follow_last: bool = True) -> str:
    """continuity's fs.RootPath: ``path`` with every symlink resolved inside the tree's root (the result need not
    exist; components past a missing one are taken as they are)."""
    pending = parts(path)
    pending.reverse()
    resolved: list[str] = []
    links = 0
    while pending:
        part = pending.pop()
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = "/".join([*resolved, part])
        st = tree.lstat(candidate)
        if st is not None and stat.S_ISLNK(st.st_mode) and (pending or follow_last):
            links += 1
            if links > _MAX_LINKS:
                raise CopyError(f"{path}: too many levels of symbolic links")
            target = tree.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            pending.extend(reversed(parts(target) or []))
            continue
        resolved.append(part)
    return "/".join(resolved)


def match_wildcards(tree: SourceTree, path: str) -> list[str]:
    """fsutil's ResolveWildcards: the literal prefix resolved, then the rest matched below it in walk order."""
    names = parts(path)
    split = next((i for i, p in enumerate(names) if has_wildcards(p)), len(names))
    if split == len(names):
        return ["/".join(names)]
    base = resolve(tree, "/".join(names[:split]))
    pattern = "/".join(names[split:])
    st = tree.lstat(base)
    if st is None or not stat.S_ISDIR(st.st_mode):
        return []
    matches: list[str] = []

    def walk(directory: str, rel: str) -> None:
        for name in tree.listdir(directory):
            child = f"{directory}/{name}" if directory else name
            child_rel = f"{rel}/{name}" if rel else name
            if path_match(pattern, child_rel):
                matches.append(child)
                continue  # a matching directory is not walked further (SkipDir); a file needs no walk
            child_st = tree.lstat(child)
            if child_st is not None and stat.S_ISDIR(child_st.st_mode) and child_rel.count("/") < pattern.count("/"):
                walk(child, child_rel)

    walk(base, "")
    return matches


# ------------------------------------------------------------------------------------------------ archives

_MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)


def _decompressed(raw: BinaryIO) -> BinaryIO:
    """``raw`` decompressed as its magic bytes say (gzip, bzip2, xz, zstd), or as it is."""
    head = raw.read(6)
    raw.seek(0)
    kind = next((name for magic, name in _MAGIC if head.startswith(magic)), "")
    if kind == "bzip2":
        return bz2.BZ2File(raw)  # type: ignore[return-value]
    if kind == "xz":
        return lzma.LZMAFile(raw)  # type: ignore[return-value]
    return decompress_stream(raw)[1]


def _is_archive(tree: SourceTree, rel: str) -> bool:
    """Docker's isArchivePath: a regular file whose (decompressed) start is a valid tar header."""
    try:
        with tree.open(rel) as raw:
            plain = _decompressed(raw)
            reader = TarReader(plain)  # type: ignore[arg-type]
            for _entry, _data in reader:
                return True
            return False
    except (OSError, OCIError, EOFError, lzma.LZMAError, ValueError):
        return False


# --------------------------------------------------------------------------------------------- the copier


def _kind(st: os.stat_result | None) -> str | None:
    if st is None:
        return None
    if stat.S_ISDIR(st.st_mode):
        return "dir"
    if stat.S_ISLNK(st.st_mode):
        return "symlink"
    return "file"


class _Copier:
    def __init__(self, view: RootView, options: CopyOptions, owner: tuple[int, int] | None) -> None:
        self.view = view
        self.options = options
        self.owner = owner
        self.chmod = parse_chmod(options.chmod)
        self.items: dict[str, LayerItem] = {}
        self.inodes: dict[tuple[int, int], str] = {}
        self.now = self._clamp(options.now)

    # --- the destination as it will be: this instruction's entries over the image

    def lstat(self, rel: str) -> os.stat_result | None:
        item = self.items.get(rel)
        if item is not None:
            entry = item.entry
            mode = {EntryType.DIR: stat.S_IFDIR, EntryType.SYMLINK: stat.S_IFLNK}.get(entry.type, stat.S_IFREG)
            return os.stat_result((mode | entry.mode, 0, 0, 1, entry.uid, entry.gid, entry.size, 0, 0, 0))
        if not rel:
            return os.stat_result((stat.S_IFDIR | 0o755, 0, 0, 2, 0, 0, 0, 0, 0, 0))
        return self.view.lstat(rel)

    def readlink(self, rel: str) -> str:
        item = self.items.get(rel)
        if item is not None:
            return item.entry.linkname
        return self.view.readlink(rel)

    def _clamp(self, mtime: int) -> int:
        mtime = max(int(mtime), 0)
        clamp = self.options.clamp
        return min(mtime, clamp) if clamp is not None else mtime

    def _owner(self, uid: int, gid: int, keeps: bool) -> tuple[int, int]:
        if self.owner is not None:
            return self.owner
        return (uid, gid) if keeps else (0, 0)

    def mkdir_all(self, rel: str) -> None:
        """fsutil's MkdirAll: create what is missing (0755, the --chown owner, now)."""
        names = parts(rel)
        for i in range(len(names)):
            prefix = "/".join(names[: i + 1])
            kind = _kind(self.lstat(prefix))
            if kind == "dir":
                continue
            if kind is not None:
                raise CopyError(f"cannot create directory /{prefix}: a file is in the way (not a directory)")
            uid, gid = self.owner or (0, 0)
            self.items[prefix] = LayerItem(
                TarEntry(prefix, EntryType.DIR, mode=0o755, uid=uid, gid=gid, mtime=self.now)
            )

    # --- one source

    def copy_source(self, source: CopySource, dest: str) -> None:
        tree = source.tree
        matches = match_wildcards(tree, source.path)
        if not matches:
            return  # a wildcard that matches nothing is allowed, and then nothing is created (BuildKit's docopy)
        head, tail = posixpath.split(dest)
        ensure = head if tail not in ("", ".") else dest
        if ensure:
            self.mkdir_all(resolve(self, ensure))
        dst = resolve(self, posixpath.normpath(dest) if dest else "/")
        for match in matches:
            src = resolve(tree, match)
            st = tree.lstat(src)
            if st is None:
                raise CopyError(f'"/{"/".join(parts(source.path))}": not found')
            if source.unpack and stat.S_ISREG(st.st_mode) and _is_archive(tree, src):
                self.unpack(tree, src, dest)
                continue
            target = self.prepare_target(st, match, dst)
            self.copy(tree, src, target, st, overwrite=False)

    def prepare_target(self, src_st: os.stat_result, src_name: str, dst: str) -> str:
        dest_kind = _kind(self.lstat(dst)) if dst else "dir"
        is_dir = stat.S_ISDIR(src_st.st_mode)
        if not is_dir and dest_kind == "dir":
            base = posixpath.basename(src_name.rstrip("/")) or src_name
            dst = f"{dst}/{base}" if dst else base
        target = posixpath.dirname(dst)
        if is_dir and dest_kind is None:
            target = dst
        if target:
            self.mkdir_all(target)
        return dst

    def copy(self, tree: SourceTree, src: str, target: str, st: os.stat_result, overwrite: bool) -> None:
        mode = st.st_mode
        existing = _kind(self.lstat(target)) if target else "dir"
        if stat.S_ISDIR(mode):
            if existing is None:
                self._put(tree, src, target, st)
            elif existing != "dir":
                raise CopyError(f"cannot copy to non-directory: /{target}")
            elif overwrite:
                self._put(tree, src, target, st)
            for name in tree.listdir(src):
                child = f"{src}/{name}" if src else name
                child_st = tree.lstat(child)
                if child_st is None:
                    continue  # removed while we read
                self.copy(tree, child, f"{target}/{name}" if target else name, child_st, overwrite=True)
            return
        if existing == "dir":
            raise CopyError(f"cannot replace to directory /{target} with file")
        if stat.S_ISSOCK(mode):
            return
        self._put(tree, src, target, st)

    def _put(self, tree: SourceTree, src: str, target: str, st: os.stat_result) -> None:
        if posixpath.basename(target).startswith(WHITEOUT_PREFIX):
            # In a layer it would be a whiteout and delete a path (podman#3582), as RUN's differ refuses too.
            raise CopyError(f"/{target}: a file named .wh.* cannot be stored in a layer (it would delete a path)")
        real = tree.real_path(src)
        full = os.fsdecode(real) if real is not None else ""
        entry = entry_for_stat(target, full, st, xattrs=bool(full))
        if entry is None:
            return
        uid, gid = self._owner(st.st_uid, st.st_gid, tree.keeps_owners)
        mode = entry.mode
        if self.chmod is not None and entry.type is not EntryType.SYMLINK:
            mode = self.chmod(mode, entry.type is EntryType.DIR)
        if entry.type is EntryType.SYMLINK:
            entry = replace(entry, linkname=tree.readlink(src))
        entry = replace(entry, uid=uid, gid=gid, mode=mode, mtime=self._clamp(int(st.st_mtime)))
        if entry.type is EntryType.FILE:
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and real is not None:
                first = self.inodes.get(key)
                if first is not None and first in self.items and first != target:
                    link = TarEntry(target, EntryType.HARDLINK, mode=mode, uid=uid, gid=gid, mtime=entry.mtime)
                    self.items[target] = LayerItem(replace(link, linkname=first))
                    return
                self.inodes[key] = target

            def opener(tree: SourceTree = tree, src: str = src) -> BinaryIO:
                return tree.open(src)

            self.items[target] = LayerItem(entry, opener)
            return
        self.items[target] = LayerItem(entry)

    def unpack(self, tree: SourceTree, src: str, dest: str) -> None:
        """ADD of a local archive: extracted into the destination directory, owners and times kept."""
        if self.options.scratch is None:
            raise CopyError("ADD: no scratch directory to extract an archive")
        if os.geteuid() != 0:
            raise CopyError("ADD of a local archive needs root for now (to keep the archive's owners)")
        dst = resolve(self, posixpath.normpath(dest) if dest else "/")
        if dst:
            self.mkdir_all(dst)
        scratch = Path(os.fsdecode(self.options.scratch)) / f"unpack-{len(self.items)}-{os.urandom(4).hex()}"
        scratch.mkdir(mode=0o700)
        try:
            with tree.open(src) as raw:
                apply_layer(_decompressed(raw), scratch, same_owner=True)
        except OCIError as err:
            raise CopyError(f"ADD {src}: cannot extract the archive: {err}") from None
        for item in tree_items(scratch):
            entry = item.entry
            path = f"{dst}/{entry.path}" if dst else entry.path
            # An existing directory takes the archive's metadata, as Docker's untar leaves it.
            changes: dict[str, object] = {"path": path, "mtime": self._clamp(entry.mtime)}
            if entry.type is EntryType.HARDLINK:
                changes["linkname"] = f"{dst}/{entry.linkname}" if dst else entry.linkname
            self.items[path] = LayerItem(replace(entry, **changes), item.open)  # type: ignore[arg-type]

    # --- the result

    def layer_items(self) -> list[LayerItem]:
        out = dict(self.items)
        for path in list(self.items):
            parent = posixpath.dirname(path)
            while parent and parent not in out:
                st = self.view.lstat(parent)
                if st is None or not stat.S_ISDIR(st.st_mode):
                    break
                real = self.view.real_path(parent)
                entry = entry_for_stat(parent, os.fsdecode(real) if real else "", st, xattrs=real is not None)
                assert entry is not None
                out[parent] = LayerItem(replace(entry, mtime=self.now))
                parent = posixpath.dirname(parent)
        return [out[p] for p in sorted(out, key=sort_key)]


def copy_items(sources: Sequence[CopySource], dest: str, view: RootView, options: CopyOptions) -> list[LayerItem]:
    """The layer of one COPY or ADD: ``sources`` copied to ``dest`` (absolute; a trailing ``/`` means a
    directory) over the image seen through ``view``."""
    owner = lookup_user(view, options.chown) if options.chown else None
    copier = _Copier(view, options, owner)
    for source in sources:
        copier.copy_source(source, dest)
    return copier.layer_items()


def directory_items(
    view: RootView, path: str, options: CopyOptions, owner: tuple[int, int] | None = None
) -> list[LayerItem]:
    """WORKDIR's layer: ``path`` and its missing parents created (0755, ``owner``), symlinks followed."""
    copier = _Copier(view, options, owner)
    copier.mkdir_all(resolve(copier, path))
    return copier.layer_items()
