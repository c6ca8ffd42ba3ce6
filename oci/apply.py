"""Applying a layer onto a root directory, confined to that root, verified against its diff_id.

Every path is resolved from a file descriptor of the root, one component at a time: symlinks met on the way are
followed *inside* the root (absolute targets restart at the root, ``..`` stops at it, as a chroot would), and
the final component is never followed. Existing objects are unlinked before anything is written in their place,
so a write cannot pass through an old symlink or hardlink. Names that climb out with ``..``, bad whiteout names,
a non-directory named as the root, and hardlinks whose target does not exist inside the root are refused with
``UnsafeEntry``. Absolute names are taken as relative to the root, as Docker does.

Whiteouts apply to what lower layers left (not to what this layer created), ``.wh..wh..opq`` hides a directory's
lower contents wherever it appears in the layer, and AUFS' other ``.wh..wh.*`` metadata is skipped.

The stream is decompressed by sniffing, hashed while it is read (trailing padding included), and checked against
``expected_diff_id`` at the end. On any error the tree is left as it is: the caller applies into a fresh
directory and removes it (``remove_tree``) when this raises.

A ``trusted`` layer (one whose bytes this process has just written and hashed) is not hashed again, and when it
is an uncompressed file its big members are copied into place by the kernel rather than read through Python.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import io
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from oci.compression import Compression, decompress_stream, sniff
from oci.digest import Digest, Hasher
from oci.errors import DigestMismatch, InvalidArchive, LayerError, LimitExceeded, OCIError, UnsafeEntry
from oci.kernelcopy import kernel_copy
from oci.layer import OPAQUE, WHITEOUT_PREFIX
from oci.tarformat import EntryType, TarEntry, TarReader, encode_name, plain_file

__all__ = [
    "OVERLAY_OPAQUE",
    "USER_OVERLAY_OPAQUE",
    "ApplyLimits",
    "ApplyResult",
    "apply_layer",
    "opaque_xattr",
    "remove_tree",
]

#: The attribute that marks an overlayfs directory as opaque (it hides what lower directories hold there).
OVERLAY_OPAQUE = "trusted.overlay.opaque"
#: The same inside a user namespace, where trusted.* is the host's alone and overlayfs is mounted ``userxattr``.
USER_OVERLAY_OPAQUE = "user.overlay.opaque"

_CHUNK = 1 << 20
_MAX_SYMLINKS = 40
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_AUFS_META = WHITEOUT_PREFIX + WHITEOUT_PREFIX
# Failures of the machine rather than of the layer: they pass through as the OSError they are.
_MACHINE_ERRNOS = {
    errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EPERM,
    errno.EACCES,
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class ApplyLimits:
    """Bounds on what one layer may do. ``None`` means unbounded.

    The bounds are checked while the layer streams in, so a decompression bomb costs at most ``max_bytes`` of
    disk (and one chunk of memory) before it is refused."""

    max_bytes: int | None = None  # uncompressed tar bytes
    max_entries: int | None = None
    max_path_bytes: int = 4096
    max_depth: int = 1024


@dataclass(frozen=True, slots=True)
class ApplyResult:
    diff_id: Digest
    size: int
    entries: int


class _HashingReader:
    def __init__(self, source: BinaryIO, limits: ApplyLimits, what: str) -> None:
        self._source = source
        self._limit = limits.max_bytes
        self._what = what
        self.hasher = Hasher()

    def readinto(self, view: memoryview) -> int:
        n = self._source.readinto(view) or 0  # type: ignore[attr-defined]
        if n:
            self.hasher.update(view[:n])
            if self._limit is not None and self.hasher.size > self._limit:
                raise LimitExceeded.too_large(self._what, self._limit)
        return n

    def drain(self) -> None:
        buf = memoryview(bytearray(_CHUNK))
        while self.readinto(buf):
            pass


class _FileSource(io.RawIOBase):
    """An uncompressed layer file, read through a buffer of its own by offset, so that a member's content can
    instead be copied from where it lies (``copy_to``, which ``TarReader``'s entries use)."""

    def __init__(self, fd: int, offset: int) -> None:
        super().__init__()
        self._fd = fd
        self._offset = offset  # of the first byte after the buffer
        self._buffer = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        if not self._buffer:
            if len(view) >= _CHUNK:
                n = os.preadv(self._fd, [view], self._offset)
                self._offset += n
                return n
            self._buffer = memoryview(os.pread(self._fd, _CHUNK, self._offset))
            self._offset += len(self._buffer)
        n = min(len(view), len(self._buffer))
        view[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n

    def copy_to(self, fd: int, count: int) -> int:
        """Copy ``count`` bytes (fewer where the file ends) to ``fd``: what is buffered, then the rest by the
        kernel, or read and written where the kernel cannot copy between the two files."""
        done = min(count, len(self._buffer))
        _write_all(fd, self._buffer[:done])
        self._buffer = self._buffer[done:]
        copied = kernel_copy(self._fd, fd, count - done, self._offset)
        if copied is None:
            buf = memoryview(bytearray(_CHUNK))
            copied = 0
            while done + copied < count:
                n = os.preadv(self._fd, [buf[: count - done - copied]], self._offset + copied)
                if n == 0:
                    break
                _write_all(fd, buf[:n])
                copied += n
        self._offset += copied
        return done + copied


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view) :]


def opaque_xattr() -> str:
    """The opaque marker overlayfs reads here: ``trusted.overlay.opaque`` in the host's user namespace, and
    ``user.overlay.opaque`` inside another (rootless), where overlayfs is mounted with ``userxattr``."""
    return OVERLAY_OPAQUE if _in_host_user_namespace() else USER_OVERLAY_OPAQUE


@functools.cache
def _in_host_user_namespace() -> bool:
    try:
        with open("/proc/self/uid_map", encoding="ascii") as f:
            return f.read().split() == ["0", "0", "4294967295"]
    except OSError:
        return True


def apply_layer(
    stream: BinaryIO,
    root: str | Path,
    *,
    expected_diff_id: Digest | None = None,
    limits: ApplyLimits = ApplyLimits(),
    same_owner: bool | None = None,
    overlay: bool = False,
    what: str = "layer",
    trusted: bool = False,
) -> ApplyResult:
    """Apply the (possibly compressed) layer in ``stream`` onto the directory ``root``.

    ``same_owner`` sets file owners from the archive; by default only when running as root. With ``overlay``,
    ``root`` is an empty directory that is to hold this layer alone, as an overlayfs lower directory: whiteouts
    become overlayfs whiteouts (a 0/0 character device) and opaque markers the ``trusted.overlay.opaque``
    attribute (``user.overlay.opaque`` in a user namespace), instead of deleting anything; and there, a device
    node the kernel refuses to make (no user namespace may) is left out, as containers/storage and BuildKit leave
    it out of a rootless snapshot: RUN mounts its own ``/dev``, and the layer keeps the node. ``what`` names the
    stream in a ``LimitExceeded`` message.

    ``trusted`` says the caller has itself just written and hashed these bytes as ``expected_diff_id``: when they
    are an uncompressed tar in a plain file, they are not hashed again and big contents are copied by the kernel.
    """
    if same_owner is None:
        same_owner = os.geteuid() == 0
    if trusted and expected_diff_id is not None and (fd := _uncompressed_file(stream)) is not None:
        return _apply_trusted(fd, os.fsencode(root), expected_diff_id, limits, same_owner, overlay, what)
    _, plain = decompress_stream(stream)
    hashing = _HashingReader(plain, limits, what)
    applier = _Applier(os.fsencode(root), limits, same_owner, overlay)
    try:
        reader = TarReader(hashing)  # type: ignore[arg-type]
        for entry, data in reader:
            if limits.max_entries is not None and reader.entries > limits.max_entries:
                raise LimitExceeded.too_many_entries(what, limits.max_entries)
            with _refused(entry.path):
                applier.apply(entry, data)
        with _refused(what):
            applier.finish()
        hashing.drain()
    finally:
        applier.close()
    diff_id = hashing.hasher.digest()
    if expected_diff_id is not None and diff_id != expected_diff_id:
        raise DigestMismatch(f"layer content has diff_id {diff_id}, expected {expected_diff_id}")
    return ApplyResult(diff_id, hashing.hasher.size, reader.entries)


def _apply_trusted(
    fd: int, root: bytes, diff_id: Digest, limits: ApplyLimits, same_owner: bool, overlay: bool, what: str
) -> ApplyResult:
    start = os.lseek(fd, 0, os.SEEK_CUR)
    applier = _Applier(root, limits, same_owner, overlay)
    try:
        reader = TarReader(_FileSource(fd, start))  # type: ignore[arg-type]
        for entry, data in reader:
            with _refused(entry.path):
                applier.apply(entry, data)
        with _refused(what):
            applier.finish()
    finally:
        applier.close()
    return ApplyResult(diff_id, os.fstat(fd).st_size - start, reader.entries)


def _uncompressed_file(stream: BinaryIO) -> int | None:
    """The descriptor of ``stream`` if it is a plain regular file holding an uncompressed tar."""
    fd = plain_file(stream)
    if fd is None or sniff(os.pread(fd, 4, os.lseek(fd, 0, os.SEEK_CUR))) is not Compression.NONE:
        return None
    return fd


@contextlib.contextmanager
def _refused(what: str) -> Iterator[None]:
    """What the system will not take from an entry (a name over 255 bytes, a uid past 32 bits, a time past 2262, a
    NUL in an attribute name, an impossible device number) is the layer's fault: a ``LayerError`` naming it."""
    try:
        yield
    except OCIError:
        raise
    except (ValueError, OverflowError) as err:
        raise InvalidArchive(f"{what}: {err}") from None
    except OSError as err:
        if err.errno in _MACHINE_ERRNOS:
            raise
        raise LayerError(f"{what}: {err.strerror or err}") from None


def _clean(name: str, limits: ApplyLimits) -> tuple[str, ...]:
    """Split an archive name into components inside the root; refuse a climb above it."""
    if len(encode_name(name)) > limits.max_path_bytes:
        raise LimitExceeded(f"{name[:80]!r}...: path longer than {limits.max_path_bytes} bytes", "path")
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise UnsafeEntry(f"{name!r}: path leads outside the root")
            parts.pop()
        else:
            parts.append(part)
    if len(parts) > limits.max_depth:
        raise LimitExceeded(f"{name[:80]!r}...: deeper than {limits.max_depth} directories", "depth")
    return tuple(parts)


class _Applier:
    def __init__(self, root: bytes, limits: ApplyLimits, same_owner: bool, overlay: bool = False) -> None:
        self._root_fd = os.open(root, _DIR_FLAGS)
        self._limits = limits
        self._same_owner = same_owner
        self._overlay = overlay
        # Paths this layer wrote, and the directories on the way to them (whiteouts and opaque markers only
        # hide what lower layers left).
        self._created: set[tuple[str, ...]] = set()
        self._ancestors: set[tuple[str, ...]] = set()
        self._dir_times: list[tuple[tuple[str, ...], int]] = []
        # One resolved parent directory, reused while entries stay in the same directory. Callers borrow its
        # descriptor for the entry at hand, so invalidation retires it and it is closed at the next lookup.
        self._cached: tuple[tuple[str, ...], int] | None = None
        self._retired: list[int] = []

    def close(self) -> None:
        self._forget_cached()
        self._close_retired()
        os.close(self._root_fd)

    # --- resolving, confined to the root

    def _forget_cached(self) -> None:
        if self._cached is not None:
            self._retired.append(self._cached[1])
            self._cached = None

    def _close_retired(self) -> None:
        while self._retired:
            os.close(self._retired.pop())

    def _parent(self, parts: tuple[str, ...], create: bool) -> int | None:
        """An O_PATH descriptor of directory ``parts`` (owned by the cache; do not close), or None if absent.

        Valid until the next call: a removal may retire it, but it stays open for the entry being applied.
        """
        self._close_retired()
        if self._cached is not None and self._cached[0] == parts:
            return self._cached[1]
        fd = self._resolve_dir(parts, create)
        if fd is None:
            return None
        self._forget_cached()
        self._cached = (parts, fd)
        return fd

    def _resolve_dir(self, parts: tuple[str, ...], create: bool) -> int | None:
        """Resolve directory ``parts`` inside the root, following symlinks there; return an owned descriptor.

        One descriptor is held at a time, however deep the path: ``..`` is taken from the kernel and checked
        against the identity of the directory we came through, and stops at the root.
        """
        here = os.dup(self._root_fd)
        route = [_identity(here)]  # identities of the directories from the root down to ``here``
        todo = list(reversed(parts))
        links = 0
        try:
            while todo:
                name = todo.pop()
                if name in ("", "."):
                    continue
                if name == "..":
                    if len(route) > 1:
                        up = os.open("..", _DIR_FLAGS, dir_fd=here)
                        os.close(here)
                        here = up
                        route.pop()
                        if _identity(here) != route[-1]:
                            raise LayerError(f"{'/'.join(parts)}: a directory moved while it was being resolved")
                    continue
                try:
                    st = os.stat(name, dir_fd=here, follow_symlinks=False)
                except FileNotFoundError:
                    if not create:
                        return None
                    os.mkdir(name, 0o755, dir_fd=here)
                    st = os.stat(name, dir_fd=here, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    links += 1
                    if links > _MAX_SYMLINKS:
                        raise UnsafeEntry(f"{'/'.join(parts)}: too many levels of symbolic links")
                    target = os.fsdecode(os.readlink(name, dir_fd=here))
                    if target.startswith("/"):
                        os.close(here)
                        here = os.dup(self._root_fd)
                        del route[1:]
                    todo.extend(reversed(target.split("/")))
                    continue
                if not stat.S_ISDIR(st.st_mode):
                    if not create:
                        return None
                    raise LayerError(f"{'/'.join(parts)}: {name} is not a directory")
                down = os.open(name, _DIR_FLAGS, dir_fd=here)
                os.close(here)
                here = down
                route.append(_identity(here))
            result, here = here, -1
            return result
        finally:
            if here >= 0:
                os.close(here)

    # --- applying entries

    def apply(self, entry: TarEntry, data: BinaryIO) -> None:
        parts = _clean(entry.path, self._limits)
        if not parts:
            if entry.type is EntryType.DIR:
                return  # "./" itself: Docker skips it too
            raise UnsafeEntry(f"{entry.path!r}: a {entry.type.name.lower()} cannot replace the root")
        name = parts[-1]
        if name != OPAQUE and any(part.startswith(_AUFS_META) for part in parts):
            return  # AUFS metadata (.wh..wh.plnk/ and the like) and what is in it: not part of the image
        if name.startswith(WHITEOUT_PREFIX):
            self._whiteout(entry, parts)
            return
        for depth in range(len(parts) - 1, 0, -1):
            if parts[:depth] in self._ancestors:
                break
            self._ancestors.add(parts[:depth])
        parent = self._parent(parts[:-1], create=True)
        assert parent is not None
        kind = entry.type
        if kind is EntryType.DIR:
            self._make_dir(parent, name, entry, parts)
        elif kind is EntryType.FILE:
            self._remove(parent, name)
            self._make_file(parent, name, entry, data)
        elif kind is EntryType.SYMLINK:
            self._remove(parent, name)
            os.symlink(encode_name(entry.linkname), name, dir_fd=parent)
            self._finish_link(parent, name, entry)
        elif kind is EntryType.HARDLINK:
            self._make_hardlink(parent, name, entry, parts)
        else:
            self._remove(parent, name)
            self._make_node(parent, name, entry)
        self._created.add(parts)

    def _whiteout(self, entry: TarEntry, parts: tuple[str, ...]) -> None:
        name = parts[-1]
        if entry.type is not EntryType.FILE and entry.type is not EntryType.HARDLINK:
            raise UnsafeEntry(f"{entry.path!r}: a whiteout must be a plain file")
        if name == OPAQUE:
            if self._overlay:
                parent = self._parent(parts[:-1], create=True)
                assert parent is not None
                os.setxattr(f"/proc/self/fd/{parent}", opaque_xattr(), b"y")
                self._ancestors.add(parts[:-1])
            else:
                self._opaque(parts[:-1])
            return
        target = name[len(WHITEOUT_PREFIX) :]
        if target in ("", ".", ".."):
            raise UnsafeEntry(f"{entry.path!r}: invalid whiteout name")
        victim = parts[:-1] + (target,)
        if self._overlay:
            parent = self._parent(parts[:-1], create=True)
            assert parent is not None
            self._remove(parent, target)
            os.mknod(target, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=parent)
            self._created.add(victim)
            return
        if victim in self._created:
            return  # a whiteout only hides what lower layers left
        parent = self._parent(parts[:-1], create=False)
        if parent is not None:
            self._remove(parent, target)

    def _opaque(self, directory: tuple[str, ...]) -> None:
        """Hide what lower layers put under ``directory``. What this layer wrote there stays, even when the
        marker comes after it in the archive (the spec asks for it first, but does not require it)."""
        todo = [directory]
        while todo:
            current = todo.pop()
            fd = self._resolve_dir(current, create=False)
            if fd is None:
                continue
            try:
                for child in _list_dir(fd):
                    path = current + (child,)
                    if path not in self._created and path not in self._ancestors:
                        self._remove(fd, child)
                    elif _is_dir(fd, child):
                        todo.append(path)
            finally:
                os.close(fd)

    def _remove(self, parent: int, name: str, keep_dir: bool = False) -> os.stat_result | None:
        """Remove ``name`` if it exists (a directory only if not ``keep_dir``); return its stat if kept."""
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return st
            self._forget_cached()  # the cached route may have passed through it
            remove_tree(parent, name)
        else:
            if stat.S_ISLNK(st.st_mode):
                self._forget_cached()
            os.unlink(name, dir_fd=parent)
        return None

    def _chown(self, target: int | str, entry: TarEntry, parent: int | None = None) -> None:
        if not self._same_owner:
            return
        if not (0 <= entry.uid < 0xFFFFFFFF and 0 <= entry.gid < 0xFFFFFFFF):  # uid_t is 32 bits; -1 means "keep"
            raise InvalidArchive(f"{entry.path}: owner {entry.uid}:{entry.gid} does not fit in 32 bits")
        try:
            if parent is None:
                os.fchown(target, entry.uid, entry.gid)  # type: ignore[arg-type]
            else:
                os.chown(target, entry.uid, entry.gid, dir_fd=parent, follow_symlinks=False)
        except OSError as err:
            if err.errno != errno.EINVAL or _in_host_user_namespace():
                raise
            raise LayerError(
                f"{entry.path}: owner {entry.uid}:{entry.gid} is not mapped in this user namespace "
                "(rootless: the user's ranges in /etc/subuid and /etc/subgid do not reach it)"
            ) from None

    def _set_xattrs(self, fd: int, entry: TarEntry) -> None:
        for key, value in entry.xattrs.items():
            try:
                os.setxattr(fd, key, value)
            except OSError as err:
                raise LayerError(f"{entry.path}: cannot set xattr {key}: {err.strerror}") from None

    def _make_file(self, parent: int, name: str, entry: TarEntry, data: BinaryIO) -> None:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent)
        try:
            if entry.size < _CHUNK or not data.copy_into(fd):  # type: ignore[attr-defined]
                buf = memoryview(bytearray(min(entry.size, _CHUNK) or 1))
                while n := data.readinto(buf):  # type: ignore[attr-defined]
                    _write_all(fd, buf[:n])
            self._chown(fd, entry)
            os.fchmod(fd, entry.mode)
            self._set_xattrs(fd, entry)
            ns = entry.mtime * 1_000_000_000
            os.utime(fd, ns=(ns, ns))
        finally:
            os.close(fd)

    def _make_dir(self, parent: int, name: str, entry: TarEntry, parts: tuple[str, ...]) -> None:
        if self._remove(parent, name, keep_dir=True) is None:
            os.mkdir(name, 0o700, dir_fd=parent)
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        try:
            self._chown(fd, entry)
            os.fchmod(fd, entry.mode)
            self._set_xattrs(fd, entry)
        finally:
            os.close(fd)
        self._dir_times.append((parts, entry.mtime))

    def _finish_link(self, parent: int, name: str, entry: TarEntry) -> None:
        self._chown(name, entry, parent)
        ns = entry.mtime * 1_000_000_000
        os.utime(name, ns=(ns, ns), dir_fd=parent, follow_symlinks=False)
        for key, value in entry.xattrs.items():
            try:
                os.setxattr(f"/proc/self/fd/{parent}/{name}", key, value, follow_symlinks=False)
            except OSError as err:
                if err.errno not in (errno.EPERM, errno.ENOTSUP):
                    raise LayerError(f"{entry.path}: cannot set xattr {key}: {err.strerror}") from None

    def _make_hardlink(self, parent: int, name: str, entry: TarEntry, parts: tuple[str, ...]) -> None:
        target = _clean(entry.linkname, self._limits)
        if not target:
            raise UnsafeEntry(f"{entry.path!r}: hardlink to the root")
        # Resolve the target without disturbing the cached parent of the new link.
        target_parent = self._resolve_dir(target[:-1], create=False)
        if target_parent is None:
            raise UnsafeEntry(f"{entry.path!r}: hardlink target {entry.linkname!r} does not exist in the root")
        try:
            try:
                st = os.stat(target[-1], dir_fd=target_parent, follow_symlinks=False)
            except FileNotFoundError:
                raise UnsafeEntry(
                    f"{entry.path!r}: hardlink target {entry.linkname!r} does not exist in the root"
                ) from None
            if stat.S_ISDIR(st.st_mode):
                raise UnsafeEntry(f"{entry.path!r}: hardlink to a directory")
            try:
                existing = os.stat(name, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                existing = None
            if existing is not None and (existing.st_dev, existing.st_ino) == (st.st_dev, st.st_ino):
                return
            self._remove(parent, name)
            os.link(target[-1], name, src_dir_fd=target_parent, dst_dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(target_parent)

    def _make_node(self, parent: int, name: str, entry: TarEntry) -> None:
        if entry.type is EntryType.FIFO:
            os.mkfifo(name, 0o600, dir_fd=parent)
        else:
            kind = stat.S_IFCHR if entry.type is EntryType.CHAR else stat.S_IFBLK
            try:
                os.mknod(name, kind | 0o600, os.makedev(entry.devmajor, entry.devminor), dir_fd=parent)
            except PermissionError:
                if not self._overlay or _in_host_user_namespace():
                    raise LayerError(f"{entry.path}: creating a device node needs root") from None
                # A rootless snapshot (see apply_layer). Not a whiteout in its place: overlayfs lists a whiteout
                # that hides nothing below, and RUN would see a name it cannot open.
                return
        self._chown(name, entry, parent)
        os.chmod(name, entry.mode, dir_fd=parent)
        ns = entry.mtime * 1_000_000_000
        os.utime(name, ns=(ns, ns), dir_fd=parent, follow_symlinks=False)

    def finish(self) -> None:
        """Set directory times last: creating their contents changed them."""
        for parts, mtime in self._dir_times:
            parent = self._parent(parts[:-1], create=False)
            if parent is None:
                continue
            ns = mtime * 1_000_000_000
            try:
                st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):
                os.utime(parts[-1], ns=(ns, ns), dir_fd=parent, follow_symlinks=False)


def _list_dir(dir_fd: int) -> list[str]:
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        return os.listdir(fd)
    finally:
        os.close(fd)


def _is_dir(parent: int, name: str) -> bool:
    try:
        return stat.S_ISDIR(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return False


def _identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def remove_tree(parent_fd: int, name: str) -> None:
    """Delete ``name`` under ``parent_fd`` and everything below it, never following a symlink.

    Iterative, with one directory descriptor open at a time whatever the depth; climbing back up checks that
    ``..`` is the directory we came down from.
    """
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    here = os.open(name, flags, dir_fd=parent_fd)
    # (name in its parent, children left to remove, identity of the parent)
    stack: list[tuple[str, list[str], tuple[int, int]]] = [(name, os.listdir(here), _identity(parent_fd))]
    try:
        while stack:
            current, children, parent_identity = stack[-1]
            if children:
                child = children.pop()
                try:
                    os.unlink(child, dir_fd=here)
                except IsADirectoryError:
                    sub = os.open(child, flags, dir_fd=here)
                    stack.append((child, os.listdir(sub), _identity(here)))
                    os.close(here)
                    here = sub
                except FileNotFoundError:
                    pass
                continue
            stack.pop()
            if not stack:
                os.close(here)
                here = -1
                os.rmdir(current, dir_fd=parent_fd)
                break
            up = os.open("..", flags, dir_fd=here)
            os.close(here)
            here = up
            if _identity(here) != parent_identity:
                raise LayerError(f"{name}: a directory moved while it was being removed")
            os.rmdir(current, dir_fd=here)
    finally:
        if here >= 0:
            os.close(here)
