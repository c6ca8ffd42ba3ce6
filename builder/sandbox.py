"""The RUN sandbox: one throwaway container per step, run as its own process (``python -m builder.sandbox``).

The engine starts this program as ``python -m builder.sandbox SPEC.json`` with the step's output pipe as standard
output and error. It:

1. makes itself die with the engine (PR_SET_PDEATHSIG), joins the spec's cgroups (``--memory``, ``--pids-limit``:
   every process forked from here on is in them), unshares a PID namespace and forks the container's init;
2. in the init (PID 1): unshares mount, UTS and IPC namespaces (and the network one for ``--network=none``),
   makes every mount private, mounts the overlay (the image's snapshots as lower directories, a fresh upper),
   ``/proc``, a minimal ``/dev`` on tmpfs (null, zero, full, random, urandom, tty, ptmx, pts, shm, mqueue), ``/sys``
   read-only, and binds ``/etc/hosts``, ``/etc/resolv.conf`` and ``/etc/hostname`` from files outside the tree,
   so they never enter the layer; makes the ``RUN --mount``s in the order given (binds, tmpfs, and secret files
   in a tmpfs of this namespace's own, their bytes read from a pipe); then ``pivot_root`` into the overlay and
   detaches the old root;
3. resolves USER through the image's own ``/etc/passwd`` and ``/etc/group`` (supplementary groups too), creates the
   working directory if it is missing, and forks the command, which runs with only the spec's environment;
4. when the command exits, init exits with its status, and the kernel kills whatever the command left running in
   the PID namespace; the mount namespace, and every mount in it, goes with the last process.

Mount points the image lacks (``/proc``, ``/etc/hosts``, ...) come from a skeleton directory stacked *under* the
image's layers, so they exist in the container without ever being written to the upper directory. A ``--mount``
target the image lacks is created (a stub) and listed in the spec's ``stubs_file``, for the engine to remove from
the upper directory afterwards. ``insecure`` (``RUN --security=insecure``) keeps every capability this process
has, leaves ``/proc`` unmasked and mounts ``/sys`` writable.
Exit status: the command's, or 128 + the signal that killed it; 125 means the sandbox itself failed (the reason is
written to the spec's ``error_file``).

A build runs many steps, and a fresh interpreter costs more than a trivial step's container, so the engine starts
this program once per thread as a server instead: ``python -m builder.sandbox --server FD ENGINE_PID SCRATCH``.
The server dies with the engine (PR_SET_PDEATHSIG), has imported everything a sandbox needs, and on the socket
``FD`` it receives a spec's path (under ``SCRATCH``, the store's scratch directory) with the step's output pipe and
the secrets pipe, if any. It forks a sandbox for it, which starts as the program above would (its output pipe as
standard output and error, the secrets pipe if any, no other descriptor; it dies with the server), and
answers with the sandbox's pid and a pidfd of it, through which the engine can kill it without a race; when the
sandbox has exited, the server sends its wait status. The sandbox does nothing until its pidfd has been sent, so
no sandbox runs that the engine cannot find (it reads what a dead server sent). The server exits when the engine
closes the socket.
"""

from __future__ import annotations

import binascii
import fcntl
import json
import os
import select
import signal
import stat
import struct
import sys

from builder import linux

# A sandbox program may start once per RUN step, so it imports only what every step needs: typing only for the type
# checker (the annotations are never evaluated), socket only for --network=none and the server.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

__all__ = ["SETUP_FAILED", "main"]

SETUP_FAILED = 125
_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
_DEV_LINKS = (
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
    ("core", "/proc/kcore"),
)
#: Docker's default capabilities (moby's oci/caps/defaults.go, BuildKit's too): no CAP_SYS_ADMIN, CAP_NET_ADMIN,
#: CAP_SYS_MODULE, CAP_SYS_PTRACE, ...: a RUN can neither mount, nor reconfigure the host's network it shares,
#: nor load modules. CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP NET_BIND_SERVICE NET_RAW
#: SYS_CHROOT MKNOD AUDIT_WRITE SETFCAP:
DEFAULT_CAPABILITIES = frozenset({0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31})
#: runc's default masked and read-only /proc and /sys paths.
_MASKED = (
    "proc/acpi",
    "proc/asound",
    "proc/interrupts",
    "proc/kcore",
    "proc/keys",
    "proc/latency_stats",
    "proc/timer_list",
    "proc/timer_stats",
    "proc/sched_debug",
    "proc/scsi",
    "sys/firmware",
    "sys/devices/virtual/powercap",
)
_READ_ONLY = ("proc/bus", "proc/fs", "proc/irq", "proc/sys", "proc/sysrq-trigger")
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


class SetupError(Exception):
    pass


_error_fd = -1  # opened before pivot_root, where the error file's path is still visible


def _fail(message: str) -> NoReturn:
    try:
        os.write(_error_fd, message.encode(errors="replace"))
    except OSError:
        pass
    os._exit(SETUP_FAILED)


# ---------------------------------------------------------------------------------------------- the rootfs


def _mount_dev(root: str) -> None:
    """A fresh /dev, mounted nodev: the device files are the host's own bound in one by one, so a device node a
    RUN makes (root may mknod) can be created but never opened, and the host's disks stay out of reach."""
    dev = os.path.join(root, "dev")
    linux.mount("tmpfs", dev, "tmpfs", linux.MS_NOSUID | linux.MS_NOEXEC | linux.MS_NODEV, "mode=755,size=65536k")
    for name in _DEVICES:
        path = os.path.join(dev, name)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        linux.mount(f"/dev/{name}", path, None, linux.MS_BIND)
        linux.mount(None, path, None, linux.MS_BIND | linux.MS_REMOUNT | linux.MS_NOSUID | linux.MS_NOEXEC)
    for name, target in _DEV_LINKS:
        os.symlink(target, os.path.join(dev, name))
    os.mkdir(os.path.join(dev, "pts"), 0o755)
    # Terminals belong to group 5 (tty), unless it does not exist here (rootless with one id): then to their opener's.
    tty = ",gid=5" if linux.is_mapped(5, "gid") else ""
    options = "newinstance,ptmxmode=0666,mode=0620" + tty
    linux.mount("devpts", os.path.join(dev, "pts"), "devpts", linux.MS_NOSUID | linux.MS_NOEXEC, options)
    os.mkdir(os.path.join(dev, "mqueue"), 0o755)
    linux.mount("mqueue", os.path.join(dev, "mqueue"), "mqueue", linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC)
    os.mkdir(os.path.join(dev, "shm"), 0o1777)
    linux.mount(
        "shm",
        os.path.join(dev, "shm"),
        "tmpfs",
        linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC,
        "mode=1777,size=65536k",
    )


def _mount_sys(root: str, writable: bool = False) -> None:
    target = os.path.join(root, "sys")
    flags = (0 if writable else linux.MS_RDONLY) | linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC
    try:
        linux.mount("sysfs", target, "sysfs", flags)
    except OSError:
        linux.mount("/sys", target, None, linux.MS_BIND | linux.MS_REC)
        linux.mount(None, target, None, linux.MS_BIND | linux.MS_REMOUNT | flags)


def _mask(root: str) -> None:
    """runc's defaults: what in /proc and /sys could read or change the host is hidden or read-only."""
    for rel in _MASKED:
        path = os.path.join(root, rel)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            linux.mount("tmpfs", path, "tmpfs", linux.MS_RDONLY, "size=0")
        else:
            linux.mount("/dev/null", path, None, linux.MS_BIND)
    for rel in _READ_ONLY:
        path = os.path.join(root, rel)
        if not os.path.lexists(path):
            continue
        linux.mount(path, path, None, linux.MS_BIND | linux.MS_REC)
        linux.mount(None, path, None, linux.MS_BIND | linux.MS_REMOUNT | linux.MS_RDONLY | linux.MS_REC)


def _bind_file(source: str, root: str, target: str) -> None:
    path = os.path.join(root, target.lstrip("/"))
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return  # hidden by a whiteout in the image: nothing to bind over
    if not stat.S_ISREG(st.st_mode):
        return  # a symlink or directory in the image stays as it is
    linux.mount(source, path, None, linux.MS_BIND)
    # Read-only, as BuildKit mounts them: a RUN cannot edit the sandbox's name service files.
    linux.mount(None, path, None, linux.MS_BIND | linux.MS_REMOUNT | linux.MS_RDONLY)


def _loopback_up() -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | _IFF_UP))


def _prepare_root(spec: dict[str, Any]) -> None:
    root = spec["merged"]
    linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
    try:
        # nodev: a device node in the image or made by the RUN cannot be opened (the host's own devices are
        # bound into /dev); setuid binaries keep working, as in Docker.
        if spec.get("copy"):
            _bind_copy(root)
        else:
            linux.mount_overlay(root, spec["lowers"], spec["upper"], spec["work"], linux.MS_NODEV)
    except OSError as err:
        raise SetupError(err.strerror or str(err)) from None
    linux.mount("proc", os.path.join(root, "proc"), "proc", linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC)
    _mount_dev(root)
    _mount_sys(root, writable=spec.get("insecure", False))
    if not spec.get("insecure"):
        _mask(root)
    for name in ("hosts", "resolv.conf", "hostname"):
        _bind_file(spec["files"][name], root, f"/etc/{name}")
    _make_mounts(spec)
    for script in spec.get("scripts", []):
        _write_script(root, script["name"], script["content"])
    linux.sethostname(spec["hostname"])
    if spec["network"] == "none":
        _loopback_up()
    os.chdir(root)
    linux.pivot_root(".", ".")
    linux.umount(".", linux.MNT_DETACH)
    os.chdir("/")


def _bind_copy(root: str) -> None:
    """The copy snapshotter's tree (``builder.copysnap``) as the root: bound onto itself, to be a mount point for
    ``pivot_root``, and nodev as the overlay is."""
    linux.mount(root, root, None, linux.MS_BIND)
    # A user namespace may not drop the flags the host's mount has, so they are repeated (statvfs and mount share
    # the values but for relatime).
    found = os.statvfs(root).f_flag
    kept = (found & _KEPT_FLAGS) | (_MS_RELATIME if found & _ST_RELATIME else 0)
    try:
        linux.mount(None, root, None, linux.MS_BIND | linux.MS_REMOUNT | linux.MS_NODEV | kept)
    except OSError:
        if linux.in_host_user_namespace():
            raise
        # Still refused: in a user namespace no device node can be made to open anyway.


_KEPT_FLAGS = linux.MS_RDONLY | linux.MS_NOSUID | linux.MS_NOEXEC | 1024 | 2048  # and MS_NOATIME, MS_NODIRATIME
_ST_RELATIME = 4096
_MS_RELATIME = 1 << 21


def _write_script(root: str, name: str, content: str) -> None:
    """A RUN heredoc with a #! line, as BuildKit provides it: an executable file in /dev/pipes."""
    pipes = os.path.join(root, "dev", "pipes")
    if not os.path.isdir(pipes):
        # Its own tmpfs: /dev is noexec, and the script must be executable (BuildKit mounts it on its own too).
        os.mkdir(pipes, 0o755)
        linux.mount("pipes", pipes, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "mode=755,size=16m")
    fd = os.open(os.path.join(pipes, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o755)
    with os.fdopen(fd, "wb") as f:
        f.write(content.encode())
    os.chmod(os.path.join(pipes, name), 0o755)


# -------------------------------------------------------------------------------------------- RUN --mount
#
# Every path below is walked one component at a time from a directory descriptor, with O_NOFOLLOW: a symlink met on
# the way is read and resolved by this code, inside the tree it belongs to ("/" and ".." stop at its root), so that
# neither a mount target in the image nor a bind source in a stage, the context or a cache directory can lead
# outside (buildah's CVE-2024-1753: a bind source that was a symlink to "/" mounted the host's root). Mounts and
# remounts then name their source and target as /proc/self/fd/N, so the kernel resolves nothing by name.


def _fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


class _Walk:
    """A path resolved inside a root: the descriptors of its parent and of itself (O_PATH), and the path from the
    root it came to (symlinks resolved). ``create`` makes what is missing (directories on the way, then the last
    component as a directory or, with ``want_dir`` False, an empty file) and lists what it made in ``created``."""

    def __init__(self, root_fd: int, path: str, *, create: bool, want_dir: bool, created: list[str]) -> None:
        self.fds = [os.dup(root_fd)]
        self.names: list[str] = []
        pending = [p for p in path.split("/") if p not in ("", ".")][::-1]
        links = 0
        try:
            while pending:
                part = pending.pop()
                if part == "..":
                    if len(self.fds) > 1:
                        os.close(self.fds.pop())
                        self.names.pop()
                    continue
                here = self.fds[-1]
                if not stat.S_ISDIR(os.fstat(here).st_mode):
                    raise SetupError(f"{path}: /{'/'.join(self.names)} is not a directory")
                try:
                    st = os.stat(part, dir_fd=here, follow_symlinks=False)
                except FileNotFoundError:
                    if not create:
                        raise SetupError(f"{path}: not found") from None
                    if pending or want_dir:
                        os.mkdir(part, 0o755, dir_fd=here)
                    else:
                        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                        os.close(os.open(part, flags, 0o644, dir_fd=here))
                    created.append("/".join([*self.names, part]))
                    st = os.stat(part, dir_fd=here, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    links += 1
                    if links > 255:
                        raise SetupError(f"{path}: too many levels of symbolic links")
                    link = os.readlink(part, dir_fd=here)
                    if link.startswith("/"):
                        for fd in self.fds[1:]:
                            os.close(fd)
                        del self.fds[1:], self.names[:]
                    pending.extend(p for p in reversed(link.split("/")) if p not in ("", "."))
                    continue
                self.fds.append(os.open(part, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=here))
                self.names.append(part)
        except BaseException:
            self.close()
            raise

    @property
    def fd(self) -> int:
        return self.fds[-1]

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(os.fstat(self.fd).st_mode)

    def reopen(self) -> int:
        """A new descriptor of the path, through whatever is now mounted on it (the caller closes it)."""
        return os.open(self.names[-1], os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fds[-2])

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


def _open_dir(path: str) -> int:
    return os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


class _Mounter:
    """Makes the spec's mounts in the container's tree (before pivot_root), in the order given, and remembers the
    mount points it had to create (the stubs the engine removes from the upper directory afterwards)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.root_fd = _open_dir(spec["merged"])
        self.staging = spec["mount_staging"]
        self.files = spec.get("_private", {}).get("files", [])
        self.secrets_dir = ""
        self.created: list[str] = []

    def target(self, mount: dict[str, Any], want_dir: bool) -> _Walk:
        where = _Walk(self.root_fd, mount["target"], create=True, want_dir=want_dir, created=self.created)
        if len(where.fds) < 2:
            where.close()
            raise SetupError(f"mount target {mount['target']}: cannot mount over the root")
        if where.is_dir != want_dir:
            where.close()
            kind = "a directory" if want_dir else "a file"
            raise SetupError(f"mount target {mount['target']}: not {kind}, as its source is")
        return where

    def attach(self, source: str, mount: dict[str, Any], want_dir: bool, flags: int) -> None:
        """Bind ``source`` (a path the kernel may resolve: /proc/self/fd/N or one pybuild made) at the target,
        then remount it with ``flags``."""
        where = self.target(mount, want_dir)
        try:
            linux.mount(source, _fd_path(where.fd), None, linux.MS_BIND)
            mounted = where.reopen()
            try:
                linux.mount(None, _fd_path(mounted), None, linux.MS_BIND | linux.MS_REMOUNT | flags)
            finally:
                os.close(mounted)
        finally:
            where.close()

    def make(self, index: int, mount: dict[str, Any]) -> None:
        kind = mount["kind"]
        flags = linux.MS_NOSUID | linux.MS_NODEV | (linux.MS_RDONLY if mount.get("readonly") else 0)
        if kind == "tmpfs":
            where = self.target(mount, want_dir=True)
            try:
                options = ",".join(
                    ([f"mode={mount['mode']:o}"] if mount.get("mode") is not None else [])
                    + ([f"size={mount['size']}"] if mount.get("size") else [])
                )
                linux.mount("tmpfs", _fd_path(where.fd), "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, options or None)
            finally:
                where.close()
        elif kind == "file":
            self.attach(self.secret_file(index, mount), mount, False, flags | linux.MS_RDONLY | linux.MS_NOEXEC)
        elif not mount.get("lowers"):
            source = os.open(mount["source"], os.O_PATH | os.O_CLOEXEC)  # a socket or directory pybuild made
            try:
                self.attach(_fd_path(source), mount, stat.S_ISDIR(os.fstat(source).st_mode), flags)
            finally:
                os.close(source)
        else:
            tree = self.tree(index, mount)
            try:
                source = _Walk(tree, mount["source"], create=False, want_dir=True, created=[])
            except SetupError as err:
                raise SetupError(f"bind mount {mount['target']}: source {err}") from None
            finally:
                os.close(tree)
            try:
                self.attach(_fd_path(source.fd), mount, source.is_dir, flags)
            finally:
                source.close()

    def tree(self, index: int, mount: dict[str, Any]) -> int:
        """A descriptor of the root of a bind's source tree: the one directory, or an overlay of them."""
        lowers, copy_on_write = mount["lowers"], mount.get("copy_on_write", False)
        if len(lowers) == 1 and not copy_on_write:
            return _open_dir(lowers[0])
        base = os.path.join(self.staging, str(index))
        os.mkdir(base, 0o700)
        merged = os.path.join(base, "merged")
        os.mkdir(merged, 0o755)
        if copy_on_write:
            upper, work = os.path.join(base, "upper"), os.path.join(base, "work")
            os.mkdir(upper, 0o755)
            os.mkdir(work, 0o700)
            linux.mount_overlay(merged, lowers, upper, work, linux.MS_NODEV)
        else:
            linux.mount_overlay(merged, lowers, flags=linux.MS_NODEV)  # several lowers: a read-only overlay
        return _open_dir(merged)

    def secret_file(self, index: int, mount: dict[str, Any]) -> str:
        """The secret's file, written into a tmpfs that only this mount namespace sees: it is in memory only, and
        gone with the container."""
        if not self.secrets_dir:
            self.secrets_dir = os.path.join(self.staging, "secrets")
            os.mkdir(self.secrets_dir, 0o700)
            linux.mount(
                "secrets", self.secrets_dir, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC, "mode=700"
            )
        data = binascii.a2b_base64(self.files.pop(0))
        path = os.path.join(self.secrets_dir, str(index))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fchown(fd, mount.get("uid", 0), mount.get("gid", 0))
            os.fchmod(fd, mount.get("mode", 0o400))
        finally:
            os.close(fd)
        return path

    def close(self) -> None:
        os.close(self.root_fd)


def _make_mounts(spec: dict[str, Any]) -> None:
    mounter = _Mounter(spec)
    try:
        for index, mount in enumerate(spec.get("mounts", [])):
            try:
                mounter.make(index, mount)
            except OSError as err:
                raise SetupError(f"mount {mount['target']}: {err.strerror or err}") from None
    finally:
        mounter.close()
        # Written even when a mount failed: the engine removes whatever stubs were made (no file: none were).
        if mounter.created:
            with open(spec["stubs_file"], "x") as f:
                json.dump(mounter.created, f)


# ------------------------------------------------------------------------------------------------ the user


def _read_db(path: str) -> list[list[str]]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return [line.rstrip("\n").split(":") for line in f if line.strip() and not line.startswith("#")]
    except FileNotFoundError:
        return []


def resolve_user(user: str) -> tuple[int, int, list[int], str]:
    """(uid, gid, supplementary groups, home) for a Dockerfile USER, as runc resolves it inside the image."""
    name, _, group = user.partition(":")
    passwd = [e for e in _read_db("/etc/passwd") if len(e) >= 7]
    groups = [e for e in _read_db("/etc/group") if len(e) >= 3]
    uid, gid, home, login = 0, 0, "/", "root"
    if name:
        match = next((e for e in passwd if e[0] == name), None)
        if match is None and name.isdigit():
            match = next((e for e in passwd if e[2] == name), None)
            uid, gid, home, login = int(name), 0, "/", ""
        if match is None and not name.isdigit():
            raise SetupError(f"unable to find user {name}: no matching entries in passwd file")
        if match is not None:
            uid, gid, home, login = int(match[2]), int(match[3]), match[5] or "/", match[0]
    else:
        match = next((e for e in passwd if e[2] == "0"), None)
        if match is not None:
            home, login = match[5] or "/", match[0]
    if group:
        entry = next((e for e in groups if e[0] == group), None)
        if entry is None and not group.isdigit():
            raise SetupError(f"unable to find group {group}: no matching entries in group file")
        gid = int(entry[2]) if entry is not None else int(group)
        return uid, gid, [], home
    # runc's rule: without an explicit group, the supplementary groups are those that list the user as a member
    # (in file order); the primary group is not added to them.
    extra = [int(e[2]) for e in groups if login and len(e) > 3 and login in e[3].split(",") and e[2].isdigit()]
    return uid, gid, list(dict.fromkeys(extra)), home


# ---------------------------------------------------------------------------------------------- processes


def _wait_for(pid: int) -> int:
    """Reap every child (init is PID 1 and inherits orphans) until ``pid`` exits; return its shell status."""
    while True:
        try:
            child, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return SETUP_FAILED
        except InterruptedError:
            continue
        if child == pid:
            if os.WIFSIGNALED(status):
                return 128 + os.WTERMSIG(status)
            return os.WEXITSTATUS(status)


def _init(spec: dict[str, Any]) -> NoReturn:
    """PID 1 of the container."""
    try:
        linux.set_parent_death_signal(signal.SIGKILL)
        if select.select([spec["_alive_fd"]], [], [], 0)[0]:
            os._exit(SETUP_FAILED)  # the sandbox died before the death signal was armed (its pipe end closed)
        flags = linux.CLONE_NEWNS | linux.CLONE_NEWUTS | linux.CLONE_NEWIPC
        if spec["network"] == "none":
            flags |= linux.CLONE_NEWNET
        linux.unshare(flags)
        os.umask(0o022)
        _prepare_root(spec)
        uid, gid, groups, home = resolve_user(spec["user"])
        cwd = spec["cwd"]
        os.makedirs(cwd, mode=0o755, exist_ok=True)
    except (OSError, SetupError) as err:
        _fail(str(err))
    env = list(spec["env"])
    if not any(e.startswith("HOME=") for e in env):
        env.append(f"HOME={home}")
    env.extend(spec.get("_private", {}).get("env", []))  # secrets as variables: after the rest, so they win
    try:
        command = os.fork()
    except OSError as err:  # --pids-limit too low for the command
        _fail(f"cannot fork the command: {err.strerror}")
    if command == 0:
        try:
            # No descriptor of ours may be a way out (runc CVE-2024-21626): close them before anything looks up
            # a path such as the working directory, which could name /proc/self/fd/N.
            os.closerange(3, os.sysconf("SC_OPEN_MAX"))
            _become(uid, gid, groups)
            linux.keep_capabilities(linux.held_capabilities() if spec.get("insecure") else DEFAULT_CAPABILITIES)
            os.setuid(uid)
            os.chdir(cwd)
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
                signal.signal(signum, signal.SIG_DFL)
            argv = spec["argv"]
            environment = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
            os.execvpe(argv[0], argv, environment)
        except OSError as err:
            sys.stderr.write(f"{spec['argv'][0]}: {err.strerror}\n")
            os._exit(127 if err.errno == 2 else 126)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda s, f: os.kill(command, s))
    os._exit(_wait_for(command))


def _become(uid: int, gid: int, groups: list[int]) -> None:
    """Take the step's groups and group (its user comes after the capabilities are set). Rootless with one id,
    only id 0 exists and supplementary groups cannot be set: a step asking for others is refused, naming them."""
    try:
        os.setgroups(groups)
    except PermissionError:
        if not _setgroups_denied() or set(groups) - {gid, 0}:
            raise
    if not (linux.is_mapped(uid) and linux.is_mapped(gid, "gid")):
        os.write(
            2,
            f"user {uid}:{gid} does not exist in this rootless build: only id 0 is mapped (give the user "
            "subordinate ids in /etc/subuid and /etc/subgid)\n".encode(),
        )
        os._exit(126)
    os.setgid(gid)


def _setgroups_denied() -> bool:
    try:
        with open("/proc/self/setgroups", encoding="ascii") as f:
            return f.read().strip() == "deny"
    except OSError:
        return False


def _join_cgroups(procs: list[str]) -> None:
    """Move this process into each cgroup (its ``cgroup.procs`` file), before anything is forked."""
    for path in procs:
        try:
            with open(path, "w") as f:
                f.write(str(os.getpid()))
        except OSError as err:
            _fail(f"cannot join the cgroup {os.path.dirname(path)}: {err.strerror or err}")


def _sandbox(argv: list[str], parent: int | None = None, private: int | None = None) -> NoReturn:
    """The sandbox for the spec file ``argv[1]``. A server's sandbox is given the server's pid (its parent, else the
    engine is) and the descriptor of the secrets pipe (else the spec names it)."""
    global _error_fd
    try:
        with open(argv[1], "rb") as f:
            spec = json.loads(f.read())
        _error_fd = os.open(spec["error_file"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        if "private_fd" in spec:  # secrets: read before anything else, so the engine's writer never waits long
            with open(spec["private_fd"] if private is None else private, "rb", closefd=True) as f:
                spec["_private"] = json.loads(f.read())
    except (OSError, ValueError, IndexError, KeyError) as err:
        sys.stderr.write(f"sandbox: cannot read the spec: {err}\n")
        os._exit(SETUP_FAILED)
    try:
        linux.set_parent_death_signal(signal.SIGKILL)
        if os.getppid() != (spec["engine_pid"] if parent is None else parent):
            os._exit(SETUP_FAILED)  # the engine (or the server) died before the death signal was armed
        _join_cgroups(spec.get("cgroups", []))
        linux.unshare(linux.CLONE_NEWPID)
    except OSError as err:
        _fail(str(err))
    alive_read, alive_write = os.pipe()  # init sees EOF on this pipe once we are gone
    spec["_alive_fd"] = alive_read
    try:
        init = os.fork()
    except OSError as err:  # --pids-limit too low for even the container's init
        _fail(f"cannot fork the container's init: {err.strerror}")
    if init == 0:
        os.close(alive_write)
        _init(spec)
    os.close(alive_read)
    try:  # for the engine, which waits for init's end when it has to kill us
        with open(spec["init_pid_file"], "w") as f:
            f.write(str(init))
    except OSError:
        pass
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda s, f: os.kill(init, s))
    os._exit(_wait_for(init))


# ------------------------------------------------------------------------------------------------ the server

_PRIVATE_FD = 3  # where a sandbox forked by the server has the secrets pipe


def _serve(control_fd: int, engine_pid: int, scratch: str) -> NoReturn:
    """Fork a sandbox for each spec the engine sends on ``control_fd``, one at a time (see the module's doc)."""
    import socket

    try:
        linux.set_parent_death_signal(signal.SIGKILL)
        if os.getppid() != engine_pid:
            os._exit(SETUP_FAILED)  # the engine died before the death signal was armed
        # A Ctrl-C reaches the whole process group: it is the engine's to act on (it stops us), and the sandbox's
        # (which passes it to the command), not ours.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        linux.id_ranges()  # read once here, where every step's sandbox is forked from
        linux.id_ranges("gid")
        control = socket.socket(fileno=control_fd)
        os.close(os.pidfd_open(os.getpid()))  # without pidfds (Linux < 5.3), the engine starts a program per step
        control.send(b"ready")
        server = os.getpid()
        within = os.path.join(scratch, "")
        while True:
            message, fds, _, _ = socket.recv_fds(control, 4096, 2)
            if not message:
                os._exit(0)  # the engine is done with us
            path = os.fsdecode(message)
            if len(fds) not in (1, 2) or not path.startswith(within) or ".." in path[len(within) :].split("/"):
                for fd in fds:
                    os.close(fd)
                control.send(b"refused")
                continue
            go_read, go_write = os.pipe()
            try:
                child = os.fork()
            except OSError as err:
                for fd in (*fds, go_read, go_write):
                    os.close(fd)
                control.send(f"failed {err.errno}".encode())
                continue
            if child == 0:
                os.close(go_write)  # so that the read below ends if the server dies
                _forked(server, control_fd, go_read, path, fds[0], fds[1] if len(fds) > 1 else None)
            for fd in (*fds, go_read):
                os.close(fd)
            pidfd = os.pidfd_open(child)
            try:
                socket.send_fds(control, [f"started {child}".encode()], [pidfd])
            finally:
                os.close(pidfd)
            os.write(go_write, b"g")
            os.close(go_write)
            _, status = os.waitpid(child, 0)
            control.send(f"exited {status}".encode())
    except BaseException:  # the engine sees the socket close, and a sandbox running dies with us
        os._exit(SETUP_FAILED)


def _forked(server: int, control_fd: int, go: int, spec_path: str, output: int, private: int | None) -> NoReturn:
    """The sandbox, in the child the server forked: set up as the program started for one spec would be."""
    try:
        os.close(control_fd)
        if os.read(go, 1) != b"g":
            os._exit(SETUP_FAILED)  # the server died before the engine had our pidfd: nothing may run
        os.close(go)
        os.dup2(output, 1)
        os.dup2(output, 2)
        if private is not None:
            os.dup2(private, _PRIVATE_FD)
        # As close_fds would: the container's init must hold no descriptor but these (runc CVE-2024-21626).
        os.closerange(_PRIVATE_FD if private is None else _PRIVATE_FD + 1, os.sysconf("SC_OPEN_MAX"))
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a fresh interpreter
        _sandbox([sys.argv[0], spec_path], server, None if private is None else _PRIVATE_FD)
    finally:
        os._exit(SETUP_FAILED)


def main(argv: list[str]) -> NoReturn:
    if len(argv) == 5 and argv[1] == "--server":
        _serve(int(argv[2]), int(argv[3]), argv[4])
    _sandbox(argv)


if __name__ == "__main__":
    main(sys.argv)
