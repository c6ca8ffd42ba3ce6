"""Copy snapshots: RUN without overlayfs, for kernels that mount none in a user namespace (before Linux 5.11; a
user namespace may make the 0/0 character devices that stand for deletions only from Linux 5.8 on).

The ``copy`` snapshotter (BuildKit's ``native``, containers/storage's ``vfs``) gives a step a plain directory
instead of an overlay: ``materialize`` copies the merged tree of its lower directories into ``scratch/merged``
and notes who each copied entry is; the command runs there; ``to_upper`` then compares what the command left with
those notes and moves every change into ``scratch/upper`` as overlayfs would have written it (changed and new
entries, a 0/0 character device for each deletion, a replaced directory marked opaque). From there a step goes on
exactly as over an overlay (the same differ, the same layer, the upper adopted as the layer's snapshot), so the
two snapshotters give identical layers.

An entry is unchanged while it is the same inode with the same birth, change time, size, mode and owner as when
copied (the copy waits until the clock has moved past the last change time it made, so a write always moves
it, even on kernels whose file times are coarse). Directories are compared by
identity (inode and birth time) and ownership only: a directory removed and made again is a new one, whose
contents are all new, as overlayfs sees it. Hardlinks in the image are copied as separate files, so that writing
through one name leaves the others as they were, as an overlay's copy-up does; a directory of the image moved
elsewhere gets its untouched hardlinks back, as the copying ``mv`` overlayfs forces on a directory leaves them.
One difference stays: a copy the step makes of an image's hardlinked files (``cp -a``) has no links, where over
overlayfs it has them.

``snapshotter`` chooses: ``PYBUILD_SNAPSHOTTER=overlay|copy`` if set, else overlay in the host's user namespace,
and in another one overlay if it mounts (tried once per process), else copy.
"""

from __future__ import annotations

import functools
import os
import stat
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from builder import linux
from builder.errors import UsageError
from builder.snapshot import RootView, remove_dir
from oci.apply import OVERLAY_OPAQUE, USER_OVERLAY_OPAQUE, opaque_xattr

__all__ = ["ENV", "Copy", "Identity", "choose", "chosen", "materialize", "overlay_failure", "snapshotter", "to_upper"]

ENV = "PYBUILD_SNAPSHOTTER"
SNAPSHOTTERS = ("overlay", "copy")
#: Who an entry of the copy is: (inode, birth time, change time, size, mode, uid, gid).
Identity = tuple[int, int | None, int, int, int, int, int]
_OVERLAY_XATTRS = (OVERLAY_OPAQUE, USER_OVERLAY_OPAQUE, "trusted.overlay.", "user.overlay.")
_CHUNK = 1 << 20


_chosen = ""  # PYBUILD_SNAPSHOTTER, as the command line found it (``choose``)


def choose(name: str) -> None:
    """Use snapshotter ``name`` (``PYBUILD_SNAPSHOTTER``) for every RUN step of this process ("": choose)."""
    global _chosen
    if name and name not in SNAPSHOTTERS:
        raise UsageError(f"{ENV}={name!r}: expected one of {', '.join(SNAPSHOTTERS)}")
    _chosen = name


def chosen() -> str:
    """The snapshotter ``PYBUILD_SNAPSHOTTER`` asked for, or ""."""
    return _chosen


def snapshotter(scratch: Path) -> str:
    """``overlay`` or ``copy`` for this process's RUN steps (see the module docstring); ``scratch`` is a private
    directory the overlay may be tried in."""
    if _chosen:
        return _chosen
    if linux.in_host_user_namespace():
        return "overlay"
    return "overlay" if overlay_failure(scratch) is None else "copy"


def overlay_failure(scratch: Path) -> str | None:
    """Why overlayfs does not mount here (tried once per process and directory, in ``scratch``, a private one), or
    None."""
    with _probing:  # stages run their steps in threads
        return _overlay_failure(scratch)


_probing = threading.Lock()


@functools.cache
def _overlay_failure(scratch: Path) -> str | None:
    base = scratch / f".overlay-probe-{os.getpid()}"
    try:
        for name in ("lower", "upper", "work", "merged"):
            (base / name).mkdir(parents=True, exist_ok=True)
        try:
            linux.mount_overlay(
                os.fspath(base / "merged"),
                [os.fspath(base / "lower")],
                os.fspath(base / "upper"),
                os.fspath(base / "work"),
            )
        except OSError as err:
            return err.strerror or str(err)
        try:
            linux.umount(os.fspath(base / "merged"), linux.MNT_DETACH)
        except OSError as err:
            return f"cannot unmount a test overlay: {err.strerror or err}"
        return None
    finally:
        remove_dir(base)


def identity(st: os.stat_result, path: str | bytes) -> Identity:
    return (st.st_ino, linux.birth_time(path), st.st_ctime_ns, st.st_size, st.st_mode, st.st_uid, st.st_gid)


# ------------------------------------------------------------------------------------------------- the copy


@dataclass
class Copy:
    """What ``materialize`` copied: who each entry is, by path relative to the copy, and for the files that were
    hardlinks in the image, which ones were one file there."""

    identities: dict[str, Identity] = field(default_factory=dict)
    links: dict[str, tuple[int, int]] = field(default_factory=dict)  # path -> (device, inode) in the snapshots
    linked: dict[tuple[int, int | None], str] = field(default_factory=dict)  # (inode, birth) in the copy -> path


def materialize(lowers: Sequence[Path], target: Path) -> Copy:
    """Copy the merged tree of ``lowers`` (top first) into the empty directory ``target``."""
    copier = _Copier(RootView(lowers), os.fsencode(target))
    copier.directory("")
    _after(max((made[2] for made in copier.copy.identities.values()), default=0), target.parent)
    return copier.copy


def _after(moment: int, directory: Path) -> None:
    """Return once a file changed now gets a change time later than ``moment`` (ns): file times are coarse (a
    clock tick) on some kernels, and a write in the same tick as the copy would otherwise go unseen."""
    probe = os.fsencode(directory / f".clock-{threading.get_ident()}")
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        for _ in range(1000):
            os.fchmod(fd, 0o600)
            if os.fstat(fd).st_ctime_ns > moment:
                return
            time.sleep(0.001)
    finally:
        os.close(fd)
        os.unlink(probe)


class _Copier:
    def __init__(self, view: RootView, target: bytes) -> None:
        self.view = view
        self.target = target
        self.copy = Copy()

    def directory(self, rel: str) -> None:
        for name in self.view.listdir(rel):
            child = f"{rel}/{name}" if rel else name
            found = self.view.find(child)
            if found is not None:
                self.entry(child, *found)
        if rel:
            found = self.view.find(rel)
            assert found is not None
            self._finish(rel, *found)

    def entry(self, rel: str, source: bytes, st: os.stat_result) -> None:
        dest = os.path.join(self.target, os.fsencode(rel))
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            os.mkdir(dest, 0o700)
            self.directory(rel)
            return
        if stat.S_ISREG(mode):
            _copy_file(source, dest)
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(source), dest)
        elif stat.S_ISFIFO(mode):
            os.mkfifo(dest, 0o600)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            try:
                os.mknod(dest, stat.S_IFMT(mode) | 0o600, st.st_rdev)
            except PermissionError:
                if linux.in_host_user_namespace():
                    raise
                return  # no user namespace may make one (as in a rootless snapshot: oci.apply)
        else:
            return  # a socket is never in a layer
        self._finish(rel, source, st)

    def _finish(self, rel: str, source: bytes, st: os.stat_result) -> None:
        dest = os.path.join(self.target, os.fsencode(rel))
        os.chown(dest, st.st_uid, st.st_gid, follow_symlinks=False)
        if not stat.S_ISLNK(st.st_mode):
            _copy_xattrs(source, dest)
            os.chmod(dest, stat.S_IMODE(st.st_mode))  # after chown, which clears the setuid and setgid bits
        os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
        made = identity(os.lstat(dest), dest)
        self.copy.identities[rel] = made
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            self.copy.links[rel] = (st.st_dev, st.st_ino)
            self.copy.linked[made[:2]] = rel


def _copy_file(source: bytes, dest: bytes) -> None:
    src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(src).st_size
            done = 0
            while done < size:
                try:
                    n = os.copy_file_range(src, out, min(size - done, 1 << 30))
                except OSError:
                    n = 0
                if n == 0:
                    break
                done += n
            while chunk := os.read(src, _CHUNK):  # what the kernel would not copy (or nothing)
                os.write(out, chunk)
        finally:
            os.close(out)
    finally:
        os.close(src)


def _copy_xattrs(source: bytes, dest: bytes) -> None:
    """The extended attributes a layer can hold (``security.capability``, ``user.*``), never overlayfs' own."""
    for name in _xattr_names(source):
        if name.startswith(_OVERLAY_XATTRS):
            continue
        try:
            os.setxattr(dest, name, os.getxattr(source, name, follow_symlinks=False), follow_symlinks=False)
        except OSError:
            continue  # trusted.* outside the host's user namespace, or a filesystem without them


# -------------------------------------------------------------------------------------- back to an upper


def to_upper(merged: Path, lowers: Sequence[Path], copy: Copy, upper: Path) -> None:
    """Move what a step changed in ``merged`` (made by ``materialize`` from ``lowers``) into the empty directory
    ``upper``, as overlayfs would have written it there."""
    _Differ(os.fsencode(merged), RootView(lowers), copy, os.fsencode(upper)).directory("")


class _Differ:
    def __init__(self, merged: bytes, view: RootView, copy: Copy, upper: bytes) -> None:
        self.merged = merged
        self.view = view
        self.copy = copy
        self.identities = copy.identities
        self.upper = upper

    def directory(self, rel: str) -> bool:
        """Compare directory ``rel`` (the one that was copied) below; True when anything went into the upper."""
        here = os.path.join(self.merged, os.fsencode(rel))
        names = sorted(os.listdir(here))
        changed = False
        for name in names:
            child = f"{rel}/{os.fsdecode(name)}" if rel else os.fsdecode(name)
            path = os.path.join(here, name)
            st = os.lstat(path)
            was = self.identities.get(child)
            if stat.S_ISDIR(st.st_mode) and was is not None and stat.S_ISDIR(was[4]) and was[:2] == _who(st, path):
                below = self.directory(child)
                if not below and (st.st_mode, st.st_uid, st.st_gid) != (was[4], was[5], was[6]):
                    self._make_parent(child)  # only its own mode or owner changed
                    self._finish(child)
                    below = True
                changed = changed or below
                continue
            if _same(was, st, path):
                continue
            self._make_parent(rel)
            moved = os.path.join(self.upper, os.fsencode(child))
            os.rename(path, moved)
            self._settle(moved, st)
            if stat.S_ISDIR(st.st_mode) and self.view.find(child) is not None:
                os.setxattr(moved, opaque_xattr(), b"y", follow_symlinks=False)
            changed = True
        present = {os.fsdecode(name) for name in names}
        for name in self.view.listdir(rel):
            child = f"{rel}/{name}" if rel else name
            if name not in present and child in self.identities:  # (a node that could not be copied is no loss)
                self._make_parent(rel)
                os.mknod(os.path.join(self.upper, os.fsencode(child)), stat.S_IFCHR, 0)
                changed = True
        if changed and rel:
            self._make_parent(rel)
            self._finish(rel)
        return changed

    def _settle(self, moved: bytes, st: os.stat_result) -> None:
        """What the step moved into the upper (``moved``, ``st`` its status), in one walk: without overlayfs' own
        attributes, which a step may set in the copy (overlayfs refuses to let it); and, where it holds files of
        the image that were hardlinks there, untouched, with them linked again, as overlayfs' ``mv`` (a copy,
        preserving links, for a directory of the image) leaves them."""
        paths = [moved]
        if stat.S_ISDIR(st.st_mode):
            for directory, names, files in os.walk(moved):
                paths += [os.path.join(directory, name) for name in names + files]
        groups: dict[tuple[int, int], list[bytes]] = {}
        for path in paths:
            for name in _xattr_names(path):
                if name.startswith(_OVERLAY_XATTRS):
                    os.removexattr(path, name, follow_symlinks=False)
            if self.copy.links and path != moved:
                found = os.lstat(path)
                origin = self.copy.linked.get(_who(found, path)) if stat.S_ISREG(found.st_mode) else None
                if origin is not None and _same(self.identities[origin], found, path):
                    groups.setdefault(self.copy.links[origin], []).append(path)
        for first, *others in groups.values():
            for other in others:
                os.unlink(other)
                os.link(first, other)

    def _make_parent(self, rel: str) -> None:
        """``upper/rel`` and its parents, as directories (their metadata is set when they are finished)."""
        if rel:
            os.makedirs(os.path.join(self.upper, os.fsencode(rel)), mode=0o700, exist_ok=True)

    def _finish(self, rel: str) -> None:
        source = os.path.join(self.merged, os.fsencode(rel))
        dest = os.path.join(self.upper, os.fsencode(rel))
        st = os.lstat(source)
        os.chown(dest, st.st_uid, st.st_gid)
        _copy_xattrs(source, dest)
        os.chmod(dest, stat.S_IMODE(st.st_mode))
        os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns))


def _xattr_names(path: bytes) -> list[str]:
    try:
        return os.listxattr(path, follow_symlinks=False)
    except OSError:
        return []


def _same(was: Identity | None, st: os.stat_result, path: bytes) -> bool:
    """Whether ``path`` (``st``) is still the entry that was ``was``: the birth time, a system call of its own,
    only asked when the rest agrees."""
    if was is None or (was[0], *was[2:]) != (st.st_ino, st.st_ctime_ns, st.st_size, st.st_mode, st.st_uid, st.st_gid):
        return False
    return was[1] == linux.birth_time(path)


def _who(st: os.stat_result, path: bytes) -> tuple[int, int | None]:
    return st.st_ino, linux.birth_time(path)
