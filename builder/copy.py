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
  the archive's owners and times (an http(s) URL is fetched by ``builder.fetch`` and copied as a file, or extracted
  with ``--unpack``; a git repository is checked out by ``builder.gitsource`` and copied as a tree);
- ``--exclude`` patterns and ``COPY --parents``' include pattern (the source's path below the context root or a
  ``/./`` pivot, kept under the destination) filter what is copied below each source, as fsutil's include and
  exclude patterns do (``select`` and ``SourceFilter``, which the checksums share).

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

from builder.context import IgnoreRules, parse_patterns, walk_context
from builder.errors import BuildError
from builder.frontend.gostyle import has_wildcards, path_match
from builder.limits import DEFAULT_LIMITS, limit_hint
from builder.snapshot import RootView
from oci.apply import ApplyLimits, apply_layer
from oci.compression import decompress_stream
from oci.errors import LimitExceeded, OCIError
from oci.layer import WHITEOUT_PREFIX, LayerItem, entry_for_stat, sort_key, tree_items
from oci.tarformat import EntryType, TarEntry, TarReader

__all__ = [
    "ContextTree",
    "CopyError",
    "CopyOptions",
    "CopySource",
    "MemoryTree",
    "Selected",
    "SourceFilter",
    "SourceTree",
    "check_inside",
    "chown_ids",
    "copy_items",
    "directory_items",
    "lookup_user",
    "match_wildcards",
    "parts",
    "resolve",
    "select",
    "split_parents",
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
        names = map(os.fsdecode, sorted(os.listdir(self.real_path(rel))))  # in the order of the names' bytes
        if self.rules is None:
            return list(names)
        prefix = f"{rel}/" if rel else ""
        return [name for name in names if self._visible(prefix + name)]

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
    excludes: tuple[str, ...] = ()  # --exclude patterns, relative to each match
    parents: bool = False  # COPY --parents: the path below the root (or the /./ pivot) is kept under the destination
    whole_tree: bool = False  # a git checkout: the path is literal, a missing destination is made from it


@dataclass(frozen=True)
class CopyOptions:
    now: int  # mtime of created directories
    chown: str = ""
    chmod: str = ""
    clamp: int | None = None  # SOURCE_DATE_EPOCH: no mtime in the layer is later
    scratch: Path | None = None  # where ADD extracts archives (kept until the layer is written)
    limits: ApplyLimits = DEFAULT_LIMITS  # how far an ADDed archive may expand (checked while it is extracted)


# ----------------------------------------------------------------------------------------------- owners


def _read_db(view: RootView, name: str) -> list[list[str]]:
    try:
        rel = resolve(ImageTree(view), f"/etc/{name}")
        with view.open(rel) as f:
            text = f.read(4 << 20).decode("utf-8", errors="replace")
    except (OSError, CopyError):
        return []
    return [line.split(":") for line in text.splitlines() if line.strip() and not line.startswith("#")]


def chown_ids(spec: str) -> tuple[int, int] | None:
    """``--chown`` that needs no lookup: numeric ids, or ``root`` (BuildKit's llb.WithUser takes it as 0); None when
    a name must be looked up in the image's files. A user alone is also the group."""
    user, _, group = spec.partition(":")
    ids = [0 if name == "root" else int(name) if name.isdigit() else None for name in (user, group or user)]
    if ids[0] is None or ids[1] is None:
        return None
    return ids[0], ids[1]


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

_SYMBOLIC = r"([ugoa]*)([-+=])([rwxXst]*|[ugo])"  # compiled (by re, once) when a --chmod is symbolic


def parse_chmod(text: str) -> Callable[[int, bool], int] | None:
    """``--chmod``: octal, or symbolic clauses (``u+x,go-w``) applied to each entry's own mode."""
    if not text:
        return None
    if re.fullmatch(r"[0-7]{1,4}", text):
        value = int(text, 8)
        return lambda mode, is_dir: value
    clauses = []
    for clause in text.split(","):
        match = re.fullmatch(_SYMBOLIC, clause)
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


def check_inside(tree: object, path: str) -> None:
    """Refuse a source path that climbs above its root with ``..`` (a leading ``/`` is the root), as Docker's
    classic builder does ("forbidden path outside the build context"): BuildKit cleans ``COPY ../x`` into the
    context's own ``x`` (docker/docs#19500), which copies something else than what was written. Symlinks are not
    looked at here: ``resolve`` follows them inside the root."""
    depth = 0
    for part in path.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                where = "the build context" if isinstance(tree, ContextTree) else "the root of the --from source"
                raise CopyError(f"forbidden path outside {where}: {path}")
        elif part not in ("", "."):
            depth += 1


def match_wildcards(tree: SourceTree, path: str) -> list[str]:
    """fsutil's ResolveWildcards: the literal prefix resolved, then the rest matched below it in walk order."""
    return [match for match, _ in _wildcard_matches(tree, path)]


def _wildcard_matches(tree: SourceTree, path: str) -> list[tuple[str, str]]:
    """``match_wildcards``, each match with what the wildcard part matched ("" for a literal path)."""
    names = parts(path)
    split = next((i for i, p in enumerate(names) if has_wildcards(p)), len(names))
    if split == len(names):
        return [("/".join(names), "")]
    base = resolve(tree, "/".join(names[:split]))
    pattern = "/".join(names[split:])
    st = tree.lstat(base)
    if st is None or not stat.S_ISDIR(st.st_mode):
        return []
    matches: list[tuple[str, str]] = []

    def walk(directory: str, rel: str) -> None:
        for name in tree.listdir(directory):
            child = f"{directory}/{name}" if directory else name
            child_rel = f"{rel}/{name}" if rel else name
            if path_match(pattern, child_rel):
                matches.append((child, child_rel))
                continue  # a matching directory is not walked further (SkipDir); a file needs no walk
            child_st = tree.lstat(child)
            if child_st is not None and stat.S_ISDIR(child_st.st_mode) and child_rel.count("/") < pattern.count("/"):
                walk(child, child_rel)

    walk(base, "")
    return matches


# ------------------------------------------------------------------------------ --exclude and --parents


def split_parents(path: str) -> tuple[str, str]:
    """``COPY --parents``: (the root the path is kept below, the include pattern under it). The root is the part
    before a ``/./`` pivot, else the tree's root (BuildKit's dispatchCopy)."""
    root, pivot, pattern = path.partition("/./")
    if not pivot:
        root, pattern = "", path
    return root, "/".join(p for p in _clean(pattern).split("/") if p)


def _clean(path: str) -> str:
    """A path cleaned as Go's path.Clean("/" + path): ``..`` stops at the root."""
    out: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if out:
                out.pop()
            continue
        out.append(part)
    return "/".join(out)


@dataclass(frozen=True)
class SourceFilter:
    """What fsutil's copier leaves out below a copied source: ``--exclude`` patterns and ``--parents``' include
    pattern, both matched as .dockerignore's (a match of a directory covers what is in it), relative to the
    source. An entry that is not copied itself may still be the parent of one that is: then it is created with
    its own metadata when that one is copied (fsutil's createParentDirs)."""

    excludes: IgnoreRules | None = None
    includes: IgnoreRules | None = None

    def decide(self, rel: str, is_dir: bool) -> tuple[bool, bool]:
        """(copied, looked into): whether the entry ``rel`` is copied, and whether a directory's contents are
        walked."""
        copied = walk = True
        if self.includes is not None and self.includes.decide(rel, is_dir).included:  # no include pattern matches
            copied = False
            walk = is_dir and self._may_contain(rel)
        if self.excludes is not None:
            decision = self.excludes.decide(rel, is_dir)
            if not decision.included:
                copied = False
                walk = walk and not decision.prune
        return copied, walk and is_dir

    def _may_contain(self, directory: str) -> bool:
        """Whether an include pattern may match something below ``directory`` (else it need not be walked)."""
        assert self.includes is not None
        names = directory.split("/")
        for rule in self.includes.rules:
            pattern = rule.pattern.split("/")
            for i, name in enumerate(names):
                if i >= len(pattern):
                    break
                if "**" in pattern[i]:
                    return True
                if not path_match(pattern[i], name):
                    break
            else:
                if len(pattern) > len(names):
                    return True
        return False


@dataclass(frozen=True)
class Selected:
    """One match of a source: its path as matched, resolved, and its status."""

    match: str
    src: str
    st: os.stat_result


def select(source: CopySource) -> tuple[list[Selected], SourceFilter | None]:
    """The matches a source copies (a wildcard may match nothing; a missing literal path is "not found") and the
    filter that applies below each. ``--exclude`` also drops a wildcard match that is not a directory when it
    matches (by what the wildcard matched: ``COPY --exclude=*.txt hom* /dst/`` leaves ``home.txt`` out, as the
    Dockerfile reference says; BuildKit itself still copies it, moby/buildkit#5489). ``--parents`` copies the root
    with the include pattern; without wildcards the path must exist."""
    tree, path = source.tree, source.path
    check_inside(tree, path)
    excludes = parse_patterns(source.excludes, "--exclude") if source.excludes else None
    includes = None
    if source.parents:
        path, pattern = split_parents(path)
        includes = parse_patterns([pattern], "--parents") if pattern else None
        if pattern and not has_wildcards(path) and not has_wildcards(pattern):
            if tree.lstat(resolve(tree, f"{path}/{pattern}" if path else pattern)) is None:
                raise CopyError(f'"/{"/".join(parts(source.path))}": not found')
    selected = []
    for match, rel in [(path, "")] if source.whole_tree else _wildcard_matches(tree, path):
        src = resolve(tree, match)
        st = tree.lstat(src)
        if st is None:
            raise CopyError(f'"/{"/".join(parts(source.path))}": not found')
        if rel and excludes is not None and not stat.S_ISDIR(st.st_mode) and not excludes.decide(rel).included:
            continue
        selected.append(Selected(match, src, st))
    filt = SourceFilter(excludes, includes) if excludes is not None or includes is not None else None
    return selected, filt


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
        selected, filt = select(source)
        if not selected:
            return  # a wildcard that matches nothing is allowed, and then nothing is created (BuildKit's docopy)
        head, tail = posixpath.split(dest)
        ensure = head if tail not in ("", ".") else dest
        if ensure:
            self.mkdir_all(resolve(self, ensure))
        dst = resolve(self, posixpath.normpath(dest) if dest else "/")
        for one in selected:
            if source.unpack and stat.S_ISREG(one.st.st_mode) and _is_archive(tree, one.src):
                self.unpack(tree, one.src, dest)
                continue
            target = self.prepare_target(one.st, one.match, dst, contents=not source.whole_tree)
            self.copy(tree, one.src, target, one.st, overwrite=False, filt=filt)

    def prepare_target(self, src_st: os.stat_result, src_name: str, dst: str, contents: bool = True) -> str:
        """fsutil's prepareTargetDir with CopyDirContents (``contents``; without it, a directory source becomes the
        destination when that is missing, instead of a directory created for it)."""
        dest_kind = _kind(self.lstat(dst)) if dst else "dir"
        is_dir = stat.S_ISDIR(src_st.st_mode)
        if not is_dir and dest_kind == "dir":
            base = posixpath.basename(src_name.rstrip("/")) or src_name
            dst = f"{dst}/{base}" if dst else base
        target = posixpath.dirname(dst)
        if is_dir and dest_kind is None and contents:
            target = dst
        if target:
            self.mkdir_all(target)
        return dst

    def copy(
        self,
        tree: SourceTree,
        src: str,
        target: str,
        st: os.stat_result,
        overwrite: bool,
        filt: SourceFilter | None = None,
        rel: str = "",
        pending: list[tuple[str, str, os.stat_result]] | None = None,
    ) -> None:
        """Copy ``src`` (``rel`` below the source's match) to ``target``. ``pending``: the directories above it that
        ``filt`` did not copy, made when something below them is."""
        mode = st.st_mode
        if filt is not None and rel:
            copied, walk = filt.decide(rel, stat.S_ISDIR(mode))
            if not copied:
                if walk:
                    self._walk(tree, src, target, filt, rel, [*(pending or []), (src, target, st)])
                return
        for parent_src, parent_target, parent_st in pending or ():
            if parent_target not in self.items:
                self._directory(tree, parent_src, parent_target, parent_st, overwrite=True)
        if stat.S_ISDIR(mode):
            self._directory(tree, src, target, st, overwrite)
            self._walk(tree, src, target, filt, rel, [])
            return
        existing = _kind(self.lstat(target)) if target else "dir"
        if existing == "dir":
            raise CopyError(f"cannot replace to directory /{target} with file")
        if stat.S_ISSOCK(mode):
            return
        self._put(tree, src, target, st)

    def _directory(self, tree: SourceTree, src: str, target: str, st: os.stat_result, overwrite: bool) -> None:
        existing = _kind(self.lstat(target)) if target else "dir"
        if existing is None:
            self._put(tree, src, target, st)
        elif existing != "dir":
            raise CopyError(f"cannot copy to non-directory: /{target}")
        elif overwrite:
            self._put(tree, src, target, st)

    def _walk(
        self,
        tree: SourceTree,
        src: str,
        target: str,
        filt: SourceFilter | None,
        rel: str,
        pending: list[tuple[str, str, os.stat_result]],
    ) -> None:
        for name in tree.listdir(src):
            child = f"{src}/{name}" if src else name
            child_st = tree.lstat(child)
            if child_st is None:
                continue  # removed while we read
            child_target = f"{target}/{name}" if target else name
            child_rel = f"{rel}/{name}" if rel else name
            self.copy(tree, child, child_target, child_st, overwrite=True, filt=filt, rel=child_rel, pending=pending)

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
            raise CopyError("ADD of a local archive needs root or a user namespace (to keep the archive's owners)")
        dst = resolve(self, posixpath.normpath(dest) if dest else "/")
        if dst:
            self.mkdir_all(dst)
        scratch = Path(os.fsdecode(self.options.scratch)) / f"unpack-{len(self.items)}-{os.urandom(4).hex()}"
        scratch.mkdir(mode=0o700)
        try:
            with tree.open(src) as raw:
                apply_layer(_decompressed(raw), scratch, same_owner=True, limits=self.options.limits, what="archive")
        except LimitExceeded as err:
            raise CopyError(f"ADD {src}: {err}", hint=limit_hint(err)) from None
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
    owner = (chown_ids(options.chown) or lookup_user(view, options.chown)) if options.chown else None
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
