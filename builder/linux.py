"""The Linux system calls the sandbox needs and Python 3.11 does not expose: unshare, mount, umount2,
pivot_root, sethostname, capset, prctl (PR_SET_PDEATHSIG, the capability bounding and ambient sets) and statx (a
file's birth time), through ctypes, each raising OSError with errno on failure.

The sandbox imports this module once per RUN step, so it imports nothing slow: libc is loaded by its soname
(``ctypes.util.find_library`` would run ``ldconfig -p``), and the machine comes from ``os.uname``.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import sys

__all__ = [
    "CLONE_NEWIPC",
    "CLONE_NEWNET",
    "CLONE_NEWNS",
    "CLONE_NEWPID",
    "CLONE_NEWUTS",
    "MNT_DETACH",
    "MS_BIND",
    "MS_NODEV",
    "MS_NOEXEC",
    "MS_NOSUID",
    "MS_PRIVATE",
    "MS_RDONLY",
    "MS_REC",
    "MS_REMOUNT",
    "birth_time",
    "held_capabilities",
    "id_ranges",
    "in_host_user_namespace",
    "is_mapped",
    "keep_capabilities",
    "mount",
    "mount_overlay",
    "pivot_root",
    "set_parent_death_signal",
    "sethostname",
    "umount",
    "unshare",
]

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
_FULL_RANGE = 4294967295  # the host's own id map: every id is itself

_PR_SET_PDEATHSIG = 1
_PR_CAPBSET_DROP = 24
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_CAPABILITY_VERSION_3 = 0x20080522
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "ppc64le": 203, "s390x": 217, "riscv64": 41}


def _load_libc() -> ctypes.CDLL:
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)  # glibc's soname on every architecture above
    except OSError:  # another libc (musl): the symbols the interpreter itself was linked with
        return ctypes.CDLL(None, use_errno=True)


_libc = _load_libc()


def _check(result: int, what: str, path: str | None = None) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}", path)


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    def b(value: str | None) -> bytes | None:
        return os.fsencode(value) if value is not None else None

    result = _libc.mount(b(source), b(target), b(fstype), ctypes.c_ulong(flags), b(data))
    _check(result, f"mount {fstype or 'bind'} on {target}", target)


#: Options tried in order: the differ needs plain copy-ups (no redirects, no metadata-only copies), and the upper
#: is thrown away or turned into a layer, so sync-on-close is wasted work (volatile, Linux 5.10+).
_OVERLAY_EXTRAS = (",redirect_dir=off,index=off,metacopy=off,volatile", ",redirect_dir=off,index=off,metacopy=off", "")
#: Mount data is one page: each lower is passed as a short /proc/self/fd/N path, which bounds the stack here.
MAX_LOWERS = 200


def mount_overlay(
    target: str, lowers: list[str], upper: str | None = None, work: str | None = None, flags: int = 0
) -> None:
    """Mount an overlay of ``lowers`` (top first) on ``target``; read-only unless ``upper`` and ``work`` are given.

    Each lower is opened and named by its descriptor, so long store paths do not overflow the mount data.
    """
    if len(lowers) < (1 if upper is not None else 2):
        raise ValueError("an overlay needs a lower directory, and a read-only one needs two")
    if len(lowers) > MAX_LOWERS:
        raise OSError(errno.E2BIG, f"an overlay of {len(lowers)} layers is more than the {MAX_LOWERS} supported")
    fds = []
    try:
        for lower in lowers:
            fds.append(os.open(lower, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
        data = "lowerdir=" + ":".join(f"/proc/self/fd/{fd}" for fd in fds)
        if upper is not None:
            data += f",upperdir={upper},workdir={work}"
        if not in_host_user_namespace():
            data += ",userxattr"  # trusted.* xattrs are the host's; overlayfs keeps its own in user.overlay.*
        last: OSError | None = None
        for extra in _OVERLAY_EXTRAS:
            try:
                mount("overlay", target, "overlay", flags, data + extra)
                return
            except OSError as err:
                last = err
        assert last is not None
        raise OSError(last.errno, f"cannot mount an overlay on {target}: {os.strerror(last.errno or 0)}", target)
    finally:
        for fd in fds:
            os.close(fd)


@functools.cache
def id_ranges(kind: str = "uid") -> tuple[tuple[int, int, int], ...]:
    """This process's ``kind`` ("uid" or "gid") map: ``(inside, outside, count)`` ranges. Read once: a process
    never changes user namespace after pybuild has entered its own."""
    try:
        with open(f"/proc/self/{kind}_map", encoding="ascii") as f:
            fields = [line.split() for line in f.read().splitlines() if line.strip()]
    except OSError:
        return ((0, 0, _FULL_RANGE),)
    return tuple((int(a), int(b), int(c)) for a, b, c in fields)


def is_mapped(id_: int, kind: str = "uid") -> bool:
    """Whether the ``kind`` id ``id_`` exists in this process's user namespace."""
    return any(inside <= id_ < inside + count for inside, _, count in id_ranges(kind))


def in_host_user_namespace() -> bool:
    """Whether this process is in the host's user namespace (not rootless)."""
    return id_ranges() == ((0, 0, _FULL_RANGE),)


_AT_FDCWD = -100
_AT_SYMLINK_NOFOLLOW = 0x100
_STATX_BTIME = 0x800
_STATX_SIZE = 256  # struct statx
_STATX_BTIME_AT = 80  # offsetof(struct statx, stx_btime): an i64 of seconds, then a u32 of nanoseconds


def birth_time(path: str | bytes) -> int | None:
    """When ``path`` itself (not a symlink's target) was created, in nanoseconds; None where the filesystem keeps
    no birth time, or the C library or the kernel has no statx (glibc before 2.28, Linux before 4.11)."""
    statx = getattr(_libc, "statx", None)
    if statx is None:
        return None
    buf = ctypes.create_string_buffer(_STATX_SIZE)
    flags = ctypes.c_int(_AT_SYMLINK_NOFOLLOW)
    if statx(ctypes.c_int(_AT_FDCWD), os.fsencode(path), flags, ctypes.c_uint(_STATX_BTIME), buf) != 0:
        code = ctypes.get_errno()
        if code == errno.ENOSYS:
            return None
        raise OSError(code, f"statx: {os.strerror(code)}", os.fsdecode(path))
    raw, order = buf.raw, sys.byteorder
    if not int.from_bytes(raw[0:4], order) & _STATX_BTIME:
        return None
    seconds = int.from_bytes(raw[_STATX_BTIME_AT : _STATX_BTIME_AT + 8], order, signed=True)
    return seconds * 1_000_000_000 + int.from_bytes(raw[_STATX_BTIME_AT + 8 : _STATX_BTIME_AT + 12], order)


def umount(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(os.fsencode(target), ctypes.c_int(flags)), f"umount {target}", target)


def pivot_root(new_root: str, put_old: str) -> None:
    machine = os.uname().machine
    number = _SYS_PIVOT_ROOT.get(machine)
    if number is None:
        raise OSError(errno.ENOSYS, f"pivot_root: unsupported architecture {machine}")
    result = _libc.syscall(ctypes.c_long(number), os.fsencode(new_root), os.fsencode(put_old))
    _check(result, "pivot_root")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, ctypes.c_size_t(len(raw))), "sethostname")


def set_parent_death_signal(signum: int) -> None:
    """Have the kernel send ``signum`` to this process when its parent dies."""
    _check(_libc.prctl(ctypes.c_int(_PR_SET_PDEATHSIG), ctypes.c_ulong(signum), 0, 0, 0), "prctl")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _last_capability() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 40


def held_capabilities() -> frozenset[int]:
    """The capabilities this process is permitted (RUN --security=insecure keeps them all: a process can keep no
    more than it has, and root in a container may lack some)."""
    try:
        with open("/proc/self/status") as f:
            mask = next(int(line.split()[1], 16) for line in f if line.startswith("CapPrm:"))
    except (OSError, StopIteration, ValueError):
        mask = 0
    return frozenset(cap for cap in range(_last_capability() + 1) if mask >> cap & 1)


def keep_capabilities(keep: frozenset[int]) -> None:
    """Reduce this process to the capabilities in ``keep``: the bounding set (so no later exec, setuid binaries
    included, can gain more), the effective, permitted and inheritable sets, and an empty ambient set."""
    for cap in range(_last_capability() + 1):
        if cap not in keep:
            result = _libc.prctl(ctypes.c_int(_PR_CAPBSET_DROP), ctypes.c_ulong(cap), 0, 0, 0)
            if result != 0 and ctypes.get_errno() != errno.EINVAL:  # EINVAL: the kernel does not know this one
                _check(result, "prctl(PR_CAPBSET_DROP)")
    _libc.prctl(ctypes.c_int(_PR_CAP_AMBIENT), ctypes.c_ulong(_PR_CAP_AMBIENT_CLEAR_ALL), 0, 0, 0)
    mask = [0, 0]
    for cap in keep:
        mask[cap // 32] |= 1 << (cap % 32)
    header = _CapHeader(_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)(*(_CapData(m, m, m) for m in mask))
    _check(_libc.capset(ctypes.byref(header), data), "capset")
