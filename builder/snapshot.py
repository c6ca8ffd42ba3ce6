"""Snapshots: each layer extracted once, as an overlayfs lower directory, and an upper directory turned back
into a layer.

``SnapshotStore`` keeps ``ROOT/snapshots/<diff_id hex>/``: a layer applied alone into an empty directory with its
whiteouts kept as overlayfs markers, so that any stack of snapshots is a valid ``lowerdir`` list. Snapshots are
published by rename (a half-extracted one is never seen) and reused by every later build; an upper directory
that became a layer is adopted as that layer's snapshot rather than extracted again.

``upper_items`` is the snapshot differ: it walks only the upper directory of a step (never the whole root
filesystem). A 0/0 character device is a deleted path, an opaque directory hides the lower contents, and a
directory that is in the upper only because something below it changed is left out when its own metadata is
what the lower layers already had.
"""

from __future__ import annotations

import copy
import os
import stat
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from builder.limits import DEFAULT_LIMITS
from oci.apply import ApplyLimits, apply_layer, opaque_xattr, remove_tree
from oci.digest import Digest
from oci.errors import OCIError, UnsafeEntry
from oci.layer import WHITEOUT_PREFIX, LayerItem, entry_for_stat, object_item, opaque, whiteout
from oci.store import pid_alive
from oci.tarformat import TarEntry

__all__ = ["RootView", "SnapshotStore", "remove_dir", "upper_items"]


def remove_dir(path: Path) -> None:
    """Remove a directory tree we made (an upper, a scratch area), never following symlinks inside it."""
    try:
        parent = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        remove_tree(parent, path.name)
    except FileNotFoundError:
        pass
    finally:
        os.close(parent)


def named(err: OCIError, what: str) -> OCIError:
    """``err`` (same type, same attributes) with its message prefixed by ``what`` unless it names it already: a
    refused entry deep in a base image says which layer it is in."""
    if str(err).startswith(what):
        return err
    renamed = copy.copy(err)
    renamed.args = (f"{what}: {err}",)
    return renamed


class SnapshotStore:
    def __init__(self, root: Path, limits: ApplyLimits = DEFAULT_LIMITS) -> None:
        self.root = Path(root)
        self.limits = limits  # checked while a layer is extracted: a bomb stops at the bound
        self._written: set[Digest] = set()

    def vouch(self, diff_id: Digest) -> None:
        """This process has just written ``diff_id``'s blob and hashed it while writing: extracting it later in
        this build need not hash it again (its big files are then copied by the kernel)."""
        self._written.add(diff_id)

    def path(self, diff_id: Digest) -> Path:
        return self.root / diff_id.encoded

    def has(self, diff_id: Digest) -> bool:
        return self.path(diff_id).is_dir()

    def ensure(self, diff_id: Digest, open_layer: Callable[[], BinaryIO]) -> Path:
        """The snapshot of ``diff_id``, extracting it from ``open_layer()`` if it is not there yet."""
        target = self.path(diff_id)
        if target.is_dir():
            return target
        self.root.mkdir(parents=True, exist_ok=True)
        temp = Path(tempfile.mkdtemp(prefix=f".{os.getpid()}-", dir=self.root))
        what = f"layer {diff_id}"
        try:
            os.chmod(temp, 0o755)
            with open_layer() as stream:
                apply_layer(
                    stream,
                    temp,
                    expected_diff_id=diff_id,
                    overlay=True,
                    limits=self.limits,
                    what=what,
                    trusted=diff_id in self._written,
                )
            self._publish(temp, target)
        except OCIError as err:
            remove_dir(temp)
            raise named(err, what) from None
        except BaseException:
            remove_dir(temp)
            raise
        return target

    def adopt(self, diff_id: Digest, upper: Path) -> Path:
        """Make ``upper`` (the directory a step wrote) the snapshot of the layer made from it."""
        target = self.path(diff_id)
        self.root.mkdir(parents=True, exist_ok=True)
        self._publish(upper, target)
        return target

    def _publish(self, source: Path, target: Path) -> None:
        try:
            os.rename(source, target)
        except OSError:
            if not target.is_dir():
                raise
            remove_dir(source)  # another build published the same layer first

    def sweep(self) -> None:
        """Remove snapshots half-extracted by processes that died."""
        if not self.root.is_dir():
            return
        for entry in self.root.iterdir():
            name = entry.name
            if name.startswith("."):
                pid = name[1:].split("-", 1)[0]
                if pid.isdigit() and not pid_alive(int(pid)):
                    remove_dir(entry)


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


class RootView:
    """A read-only view of a stack of snapshot directories (top first), merged with overlayfs' rules.

    Paths are relative to the root, ``/``-separated, with no ``.`` or ``..`` ("" is the root itself); nothing
    here follows a symlink. It lets COPY and WORKDIR look into an image without mounting it.
    """

    def __init__(self, lowers: Sequence[Path]) -> None:
        self.lowers = [os.fsencode(p) for p in lowers]

    def _probe(self, lower: bytes, parts: list[bytes]) -> tuple[str, bytes, os.stat_result | None, bool]:
        """One layer's say on a path: "present" (with its real path and status), "absent" (ask the layers below)
        or "blocked" (deleted, or under a non-directory or an opaque directory: the layers below are hidden). The
        last value says whether an ancestor is opaque in this layer, which hides the layers below too.
        """
        prefix = lower
        opaque_above = False
        for i, part in enumerate(parts):
            prefix = os.path.join(prefix, part)
            try:
                st = os.lstat(prefix)
            except (FileNotFoundError, NotADirectoryError):
                return ("blocked" if opaque_above else "absent"), prefix, None, opaque_above
            if _is_whiteout(st):
                return "blocked", prefix, None, opaque_above
            if i == len(parts) - 1:
                return "present", prefix, st, opaque_above
            if not stat.S_ISDIR(st.st_mode):
                return "blocked", prefix, None, opaque_above
            if _opaque(prefix):
                opaque_above = True
        return "present", prefix, None, opaque_above

    def find(self, rel: str) -> tuple[bytes, os.stat_result] | None:
        """Where ``rel`` comes from (its real path and status), or None if the merged view has no such path."""
        parts = os.fsencode(rel).split(b"/")
        for lower in self.lowers:
            state, path, st, _ = self._probe(lower, parts)
            if state == "present" and st is not None:
                return path, st
            if state == "blocked":
                return None
        return None

    def lstat(self, rel: str) -> os.stat_result | None:
        if not rel:
            return os.lstat(self.lowers[0]) if self.lowers else None
        found = self.find(rel)
        return found[1] if found is not None else None

    def readlink(self, rel: str) -> str:
        found = self.find(rel)
        if found is None:
            raise FileNotFoundError(rel)
        return os.fsdecode(os.readlink(found[0]))

    def open(self, rel: str) -> BinaryIO:
        found = self.find(rel)
        if found is None:
            raise FileNotFoundError(rel)
        fd = os.open(found[0], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        return os.fdopen(fd, "rb")

    def real_path(self, rel: str) -> bytes | None:
        found = self.find(rel)
        return found[0] if found is not None else None

    def listdir(self, rel: str) -> list[str]:
        """The names in directory ``rel``, merged across the layers, sorted by their bytes."""
        return [os.fsdecode(name) for name in sorted(self.names(rel))]

    def names(self, rel: str) -> set[bytes]:
        """The names in directory ``rel``, merged across the layers (unordered)."""
        parts = os.fsencode(rel).split(b"/") if rel else []
        names: dict[bytes, bool] = {}  # name -> visible (False: a whiteout hides it below)
        for lower in self.lowers:
            opaque_above = False
            if parts:
                state, path, st, opaque_above = self._probe(lower, parts)
                if state == "blocked":
                    break
                if state == "absent":
                    continue
                if st is None or not stat.S_ISDIR(st.st_mode):
                    break
            else:
                path = lower
            with os.scandir(path) as entries:
                for child in entries:
                    if child.name in names:
                        continue
                    # Only a character device can be a whiteout: the directory entry's type spares the others a stat.
                    plain = child.is_dir(follow_symlinks=False) or child.is_file(follow_symlinks=False)
                    names[child.name] = (
                        plain or child.is_symlink() or not _is_whiteout(child.stat(follow_symlinks=False))
                    )
            if opaque_above or _opaque(path):
                break
        return {name for name, visible in names.items() if visible}


def _opaque(path: bytes) -> bool:
    try:
        return os.getxattr(path, opaque_xattr(), follow_symlinks=False) == b"y"
    except OSError:
        return False


def _capability(path: bytes | str) -> bytes | None:
    try:
        return os.getxattr(path, "security.capability", follow_symlinks=False)
    except OSError:
        return None


def _same_content(a: bytes, b: str) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            ca, cb = fa.read(1 << 16), fb.read(1 << 16)
            if ca != cb:
                return False
            if not ca:
                return True


def _unchanged(st: os.stat_result, full: str, base: tuple[bytes, os.stat_result] | None) -> bool:
    """BuildKit's sameDirent: whether an upper entry is only a copy-up of what the lower layers hold.

    Directories compare by type, permissions, owner and capabilities (a directory is in the upper whenever
    something below it changed, and its mtime then always differs); other files also by size and mtime, and by
    content when both mtimes are whole seconds (unpacked from a tar, so a copy-up may have kept them).
    """
    if base is None:
        return False
    base_path, below = base
    if (st.st_mode, st.st_uid, st.st_gid, st.st_rdev) != (below.st_mode, below.st_uid, below.st_gid, below.st_rdev):
        return False
    if _capability(full) != _capability(base_path):
        return False
    if stat.S_ISDIR(st.st_mode):
        return True
    if st.st_size != below.st_size or st.st_mtime_ns // 10**9 != below.st_mtime_ns // 10**9:
        return False
    upper_ns, lower_ns = st.st_mtime_ns % 10**9, below.st_mtime_ns % 10**9
    if upper_ns or lower_ns:
        return upper_ns == lower_ns
    if stat.S_ISLNK(st.st_mode):
        return os.readlink(base_path) == os.readlink(os.fsencode(full))
    if stat.S_ISREG(st.st_mode) and st.st_size:
        return _same_content(base_path, full)
    return True


class _Frame:
    __slots__ = ("children", "pending", "rel")

    def __init__(self, rel: str, children: list[str], pending: TarEntry | None) -> None:
        self.rel = rel
        self.children = children
        self.pending = pending  # an unchanged directory, written only if something under it is


def upper_items(upper: Path, lower: RootView, *, clamp_mtime: int | None = None) -> Iterator[LayerItem]:
    """The layer entries a step's upper directory stands for, in tree order (BuildKit's overlay differ).

    A whiteout device becomes a whiteout, an opaque directory a directory and its opaque marker, and an entry
    that is only a copy-up of the lower one is left out; the parent directories of every change are included,
    as containerd's change writer includes them.
    """
    top = os.fsdecode(upper)
    seen_inodes: dict[tuple[int, int], str] = {}
    below: dict[str, set[bytes]] = {}  # directory -> the names the lower layers show in it (for whiteouts)

    def shown_below(parent: str, name: str) -> bool:
        # A directory of many deletions (rm -rf of a tree) lists the lowers once rather than probing each path.
        if parent not in below:
            try:
                below[parent] = lower.names(parent) if lower.find(parent) is not None or not parent else set()
            except (FileNotFoundError, NotADirectoryError):
                below[parent] = set()
        return os.fsencode(name) in below[parent]

    stack = [_Frame("", _children(top), None)]
    pending = False  # some frame on the stack holds a directory not written yet (a cheap test per change)

    def parents() -> Iterator[LayerItem]:
        nonlocal pending
        for frame in stack:
            if frame.pending is not None:
                yield LayerItem(frame.pending)
                frame.pending = None
        pending = False

    while stack:
        frame = stack[-1]
        if not frame.children:
            stack.pop()
            continue
        name = frame.children.pop()
        rel = f"{frame.rel}/{name}" if frame.rel else name
        full = f"{top}/{rel}"
        st = os.lstat(full)
        if _is_whiteout(st):
            if shown_below(frame.rel, name):
                if pending:
                    yield from parents()
                yield LayerItem(whiteout(rel, mtime=0))
            continue
        if name.startswith(WHITEOUT_PREFIX):
            raise UnsafeEntry(f"/{rel}: a file named .wh.* cannot be stored in a layer (it would delete a path)")
        base = lower.find(rel)
        entry = entry_for_stat(rel, full, st, clamp_mtime=clamp_mtime)
        if stat.S_ISDIR(st.st_mode):
            assert entry is not None
            opaque_dir = base is not None and _opaque(os.fsencode(full))
            if opaque_dir or not _unchanged(st, full, base):
                yield from parents()
                yield LayerItem(entry)
                if opaque_dir:
                    yield LayerItem(opaque(rel, mtime=0))
                stack.append(_Frame(rel, _children(full), None))
            else:
                stack.append(_Frame(rel, _children(full), entry))
                pending = True
            continue
        # A file with another name in the upper was linked in this step (index=off: all its names are here), so
        # it is kept even if unchanged, for its links to have a target in the layer.
        if entry is None or (st.st_nlink == 1 and _unchanged(st, full, base)):
            continue
        yield from parents()
        yield object_item(entry, full, st, seen_inodes)


def _children(directory: str) -> list[str]:
    # Reversed, so that pop() takes them in ascending byte order.
    return [os.fsdecode(name) for name in sorted(os.listdir(os.fsencode(directory)), reverse=True)]
