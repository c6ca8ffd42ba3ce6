"""Checksums of what a COPY or ADD selects: each matched source, walked as the copier walks it, digested.

A match's checksum is the sha256 of one line per entry the copier would write from it (its path below the
match, type, permission bits, owner when the tree keeps owners, device numbers, hardlink target, the digest of
its content and extended attributes, and its mtime only when ``SOURCE_DATE_EPOCH`` clamps it, since otherwise a
cache hit keeps the earlier mtimes, as BuildKit's does). Sources are resolved and walked with the copier's own
rules (``copy.select``, ``copy.resolve``, the tree's ``listdir``, which applies .dockerignore, and the
``--exclude``/``--parents`` filter), so the checksum covers exactly the files that would land in the layer.

Reading every file of a large context on each build would cost seconds, so file content digests go through a
``StatCache``: an entry whose size, mtime, ctime and inode are unchanged keeps its digest. An entry changed less
than ``RACY_NS`` before the walk is hashed but not remembered, since a second change within the timestamp
granularity would leave the same stat behind (git's "racy clean" problem).
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from builder.copy import ContextTree, CopySource, SourceFilter, SourceTree, select
from oci.layer import read_xattrs

__all__ = ["Checksums", "StatCache", "StatRow", "checksum_source"]

RACY_NS = 2_000_000_000
_SHORT = 16  # hex digits of a file's content digest kept for explanations

#: size, mtime_ns, inode, ctime_ns, digest
StatRow = tuple[int, int, int, int, str]


@dataclass
class StatCache:
    """Content digests by absolute path, valid while the stat is unchanged; ``updates`` holds what to store."""

    rows: Mapping[bytes, StatRow] = field(default_factory=dict)
    started_ns: int = field(default_factory=time.time_ns)
    updates: dict[bytes, StatRow] = field(default_factory=dict)
    seen: set[bytes] = field(default_factory=set)
    hashed: int = 0  # entries whose content was read (for tests and benchmarks)

    def lookup(self, path: bytes, st: os.stat_result) -> str | None:
        self.seen.add(path)
        row = self.updates.get(path) or self.rows.get(path)
        if row is None:
            return None
        size, mtime_ns, ino, ctime_ns, digest = row
        if (size, mtime_ns, ino, ctime_ns) != (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns):
            return None
        return digest

    def remember(self, path: bytes, st: os.stat_result, digest: str) -> None:
        if max(st.st_mtime_ns, st.st_ctime_ns) >= self.started_ns - RACY_NS:
            return
        self.updates[path] = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, digest)

    def changes(self) -> dict[bytes, StatRow | None] | None:
        """What to keep after this build, or None when nothing was learnt: what was learnt, and None for each
        known path that is gone (a path not looked at this time may still be there)."""
        if not self.updates:
            return None
        gone: dict[bytes, StatRow | None] = {
            p: None for p in self.rows if p not in self.seen and not os.path.lexists(p)
        }
        gone.update(self.updates)
        return gone


@dataclass(frozen=True)
class Checksums:
    """One source's part of a key record, and its per-file summaries for explaining a miss."""

    matches: list[dict[str, str]]  # [{"path": match, "tree": "sha256:..."}], in match order
    lines: dict[str, list[str]]  # match -> the lines its tree digest was computed from

    @property
    def files(self) -> dict[str, dict[str, str]]:
        """match -> relative path -> a summary that changes when the file does (only a miss needs them, so they
        are made from the lines on demand rather than on every walk)."""
        out: dict[str, dict[str, str]] = {}
        for match, lines in self.lines.items():
            summaries = out[match] = {}
            for line in lines:
                rel, content, meta = line[:-1].split("\0", 2)
                summaries[rel] = f"{content[:_SHORT]}\0{meta}"
        return out


_KINDS = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "char",
    stat.S_IFBLK: "block",
    stat.S_IFIFO: "fifo",
}
_HASHED = ("file", "dir", "symlink")  # what has content or extended attributes worth a digest


class _Walker:
    def __init__(
        self,
        tree: SourceTree,
        stats: StatCache | None,
        epoch: int | None,
        links: dict[tuple[int, int], str],
        filt: SourceFilter | None = None,
    ) -> None:
        self.tree = tree
        self.stats = stats
        self.epoch = epoch
        self.links = links
        self.filter = filt
        self.lines: list[str] = []
        self.made: set[str] = set()  # directories written as the parents of a copied entry

    def content(self, rel: str, st: os.stat_result, real: bytes | None) -> str:
        stats = self.stats if real is not None else None
        if stats is not None:
            cached = stats.lookup(real, st)  # type: ignore[arg-type]
            if cached is not None:
                return cached
        h = hashlib.sha256()
        is_link = stat.S_ISLNK(st.st_mode)
        if real is not None:
            for name, value in read_xattrs(os.fsdecode(real), is_link).items():
                h.update(name.encode() + b"\0" + value + b"\0")
        h.update(b"\n")
        if stat.S_ISREG(st.st_mode):
            with self.tree.open(rel) as f:
                h.update(hashlib.file_digest(f, "sha256").digest())  # type: ignore[arg-type]
        elif is_link:
            h.update(os.fsencode(self.tree.readlink(rel)))
        digest = h.hexdigest()
        if stats is not None:
            stats.hashed += 1
            stats.remember(real, st, digest)  # type: ignore[arg-type]
        return digest

    def entry(self, rel: str, src: str, st: os.stat_result, real: bytes | None, label: str) -> None:
        mode = st.st_mode
        kind = _KINDS.get(stat.S_IFMT(mode))
        if kind is None:
            return  # a socket: the copier skips it
        # NUL separates fields: no path or value here can hold one.
        if self.tree.keeps_owners:
            meta = f"{kind}\0{stat.S_IMODE(mode):o}\0{st.st_uid}\0{st.st_gid}"
        else:
            meta = f"{kind}\0{stat.S_IMODE(mode):o}\x000\x000"
        if kind == "char" or kind == "block":
            meta += f"\0{os.major(st.st_rdev)},{os.minor(st.st_rdev)}"
        elif kind == "file" and st.st_nlink > 1 and real is not None:
            me = f"{label}:{rel}"
            first = self.links.setdefault((st.st_dev, st.st_ino), me)
            if first != me:
                meta += f"\0link={first}"
        if self.epoch is not None:
            meta += f"\0mtime={max(0, min(int(st.st_mtime), self.epoch))}"
        content = self.content(src, st, real) if kind in _HASHED else ""
        self.lines.append(f"{rel}\0{content}\0{meta}\n")

    def walk(
        self, src: str, rel: str, st: os.stat_result, label: str, pending: list[tuple[str, str, os.stat_result]]
    ) -> None:
        """One entry and what is below it, as the copier copies them: with a filter, what it leaves out has no
        line, and a directory it does not copy has one only when something below it is copied (and so makes it)."""
        is_dir = stat.S_ISDIR(st.st_mode)
        if self.filter is not None and rel:
            copied, walk = self.filter.decide(rel, is_dir)
            if not copied:
                if walk:
                    self._children(src, rel, label, [*pending, (src, rel, st)])
                return
        for parent_src, parent_rel, parent_st in pending:
            if parent_rel not in self.made:
                self.made.add(parent_rel)
                self.entry(parent_rel, parent_src, parent_st, self.tree.real_path(parent_src), label)
        self.entry(rel, src, st, self.tree.real_path(src), label)
        if not is_dir:
            return
        if isinstance(self.tree, ContextTree) and self.filter is None:
            self._walk_context(self.tree, src, rel, self.tree.real_path(src), label)
            return
        self._children(src, rel, label, [])

    def _children(self, src: str, rel: str, label: str, pending: list[tuple[str, str, os.stat_result]]) -> None:
        for name in self.tree.listdir(src):
            child = f"{src}/{name}" if src else name
            child_st = self.tree.lstat(child)
            if child_st is None:
                continue  # removed while we read (the copier skips it too)
            self.walk(child, f"{rel}/{name}" if rel else name, child_st, label, pending)

    def _walk_context(self, tree: ContextTree, src: str, rel: str, real: bytes, label: str) -> None:
        """``walk`` for a build context, the case that must be fast: the same entries, fewer calls per entry. A
        regular file with one link whose stat the cache knows unchanged gets ``entry``'s line here, without it."""
        stats = self.stats if self.epoch is None and not tree.keeps_owners else None
        for name in tree.listdir(src):
            child = f"{src}/{name}" if src else name
            child_real = real + b"/" + name.encode("utf-8", "surrogateescape")
            try:
                st = os.lstat(child_real)
            except (FileNotFoundError, NotADirectoryError):
                continue  # removed while we read (the copier skips it too)
            child_rel = f"{rel}/{name}" if rel else name
            mode = st.st_mode
            if stats is not None and mode & 0o170000 == stat.S_IFREG and st.st_nlink == 1:
                digest = stats.lookup(child_real, st)
                if digest is not None:
                    self.lines.append(f"{child_rel}\0{digest}\0file\0{mode & 0o7777:o}\x000\x000\n")
                    continue
            self.entry(child_rel, child, st, child_real, label)
            if stat.S_ISDIR(mode):
                self._walk_context(tree, child, child_rel, child_real, label)


def checksum_source(
    tree: SourceTree,
    path: str,
    *,
    stats: StatCache | None = None,
    epoch: int | None = None,
    links: dict[tuple[int, int], str] | None = None,
    excludes: tuple[str, ...] = (),
    parents: bool = False,
) -> Checksums:
    """The checksum of each match of ``path`` in ``tree`` (a wildcard may match nothing; a missing literal path
    is the copier's "not found" error), over what the copier copies with ``--exclude`` patterns and
    ``--parents``: an excluded file changes nothing. ``links`` is shared by the sources of one instruction, as
    the copier shares hardlink detection across them."""
    links = {} if links is None else links
    matches: list[dict[str, str]] = []
    lines: dict[str, list[str]] = {}
    selected, filt = select(CopySource(tree, path, excludes=excludes, parents=parents))
    for one in selected:
        walker = _Walker(tree, stats, epoch, links, filt)
        walker.walk(one.src, "", one.st, one.match, [])
        digest = hashlib.sha256("".join(walker.lines).encode("utf-8", "surrogateescape")).hexdigest()
        matches.append({"path": one.match, "tree": f"sha256:{digest}"})
        lines[one.match] = walker.lines
    return Checksums(matches, lines)
