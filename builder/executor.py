"""Running a RUN step: a throwaway container over the stage's snapshots, its output streamed, its upper kept.

``run_container`` writes the sandbox spec and the files bind-mounted over ``/etc/hosts``, ``/etc/resolv.conf``
and ``/etc/hostname`` into the step's scratch directory, starts ``python -m builder.sandbox`` (see that module
for what happens inside), hands every chunk of the command's merged standard output and error to ``on_output``
as it arrives, and returns the command's exit status. The step's changes are left in ``scratch/upper`` for the
differ. Whatever happens — the command fails, the engine is interrupted, reading the output raises — the sandbox
is killed and reaped before this function returns, and with it every process the command started (they live in
its PID namespace) and every mount it used (they live in its mount namespace).

``RUN --mount``s arrive as ``MountPoint``s (``builder.mounts`` makes them). What must never touch a disk — a
secret file's bytes, a secret variable — goes to the sandbox through a pipe, not the spec file. The mount points
the sandbox had to create (the mount stubs) are listed in ``scratch/stubs.json``; once the sandbox is gone they
are removed from the upper directory again if still empty, so that a mount leaves nothing in the layer.

A build passes ``SandboxServers``: then each sandbox is forked by a server started once per thread (see
``builder.sandbox``) rather than started as a new interpreter, which costs more than the rest of a trivial step.
The sandbox is the same either way, and so is the guarantee: killed and waited for through a pidfd, it is gone,
with everything under it, when ``run_container`` returns.
"""

from __future__ import annotations

import base64
import json
import os
import select
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from builder import copysnap
from builder.errors import BuildError
from builder.plan import DEFAULT_HOSTNAME

__all__ = [
    "DEFAULT_HOSTNAME",
    "MountPoint",
    "RunSpec",
    "SandboxError",
    "SandboxServers",
    "remove_stubs",
    "run_container",
]

_SETUP_FAILED = 125
_PACKAGE_PARENT = str(Path(__file__).resolve().parent.parent)
#: The sandbox needs only the standard library and this package (on PYTHONPATH): no site (its .pth files, an
#: editable install's import hooks, cost more than the rest of the start), and no module from the working directory.
_PYTHON_FLAGS = ("-S", "-P")
_LOOPBACK_NAMESERVERS = ("127.", "::1")
_IDLE = 0.25  # seconds without output before on_idle is called
_REAP_TIMEOUT = 10.0  # seconds to wait for a killed container's init to finish tearing its namespaces down


class SandboxError(BuildError):
    """The container could not be set up (not the command's own failure)."""


@dataclass(frozen=True)
class MountPoint:
    """A ``RUN --mount`` as the sandbox makes it, at ``target`` (absolute, inside the container): a bind of a host
    path (a directory, a file or a socket: cache, bind and ssh mounts), a fresh tmpfs, or a file the sandbox makes
    in a private tmpfs of its own (secrets: their bytes never touch a disk). Everything else about a mount (where its
    source comes from, what it means for the cache key) is the builder's business.

    A bind's source is ``source`` itself (a path pybuild made) when ``lowers`` is empty; otherwise ``source`` is a
    path inside the tree that the overlay of ``lowers`` (top first; one directory is bound as it is) makes, resolved
    by the sandbox with every symlink kept inside that tree. ``copy_on_write``: writes go to a throwaway upper
    directory (``rw`` binds of the context, a stage or an image), so the tree itself is never changed."""

    kind: str  # "bind", "tmpfs" or "file"
    target: str
    source: str = ""  # bind: the host path, or the path inside ``lowers``
    readonly: bool = False
    size: int = 0  # tmpfs: its size limit in bytes (0: the kernel's default)
    mode: int | None = None  # tmpfs: the mode of its root directory; file: the file's (default 0400)
    lowers: tuple[str, ...] = ()  # bind: the directories whose merged tree holds ``source``
    copy_on_write: bool = False
    uid: int = 0  # file: its owner
    gid: int = 0
    data: bytes = field(default=b"", repr=False)  # file: its content, passed through a pipe, never written to disk


@dataclass(frozen=True)
class RunSpec:
    argv: tuple[str, ...]
    env: tuple[str, ...]  # "K=V", exactly the command's environment (HOME is added from passwd when absent)
    user: str = ""  # USER as written: name or id, optionally ":group"
    cwd: str = "/"
    network: str = "default"  # "default" and "host" share the host's network; "none" has only loopback
    hostname: str = DEFAULT_HOSTNAME
    scripts: tuple[tuple[str, str], ...] = ()  # RUN heredocs with a #! line: (name, content) in /dev/pipes
    mounts: tuple[MountPoint, ...] = ()  # RUN --mount, made in this order (parents before what they hold)
    secret_env: tuple[str, ...] = field(default=(), repr=False)  # "K=V" secrets, passed like a file mount's data
    insecure: bool = False  # RUN --security=insecure: every capability, /proc and /sys unmasked and writable


def _hosts(hostname: str) -> str:
    return f"127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n"


def _resolv_conf() -> bytes:
    """The host's resolver configuration; behind systemd-resolved, the upstream servers it uses (as BuildKit)."""
    for candidate in ("/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"):
        try:
            with open(candidate, "rb") as f:
                data = f.read(1 << 16)
        except OSError:
            continue
        lines = [line.split() for line in data.decode(errors="replace").splitlines()]
        servers = [words[1] for words in lines if len(words) > 1 and words[0] == "nameserver"]
        if servers and all(s.startswith(_LOOPBACK_NAMESERVERS) for s in servers):
            continue  # a resolver on the host's loopback is unreachable from the container's view
        return data
    return b""


def _write(path: Path, data: bytes) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return str(path)


def _mount_json(mount: MountPoint) -> dict[str, object]:
    """A mount as the spec file holds it: everything but a file's content."""
    out: dict[str, object] = {"kind": mount.kind, "target": mount.target, "readonly": mount.readonly}
    if mount.kind == "bind":
        out.update(source=mount.source, lowers=list(mount.lowers), copy_on_write=mount.copy_on_write)
    elif mount.kind == "tmpfs":
        out.update(size=mount.size, mode=mount.mode)
    else:
        out.update(mode=0o400 if mount.mode is None else mount.mode, uid=mount.uid, gid=mount.gid)
    return out


def _copied_mount(mount: MountPoint, index: int, scratch: Path) -> MountPoint:
    """With the copy snapshotter, a bind of several trees or with throwaway writes (an overlay otherwise) binds a
    copy of their merged tree instead (a copy of the scratch directory's own: writes to it go nowhere)."""
    if mount.kind != "bind" or not mount.lowers or (len(mount.lowers) == 1 and not mount.copy_on_write):
        return mount
    tree = scratch / "copies" / str(index)
    tree.mkdir(parents=True)
    copysnap.materialize([Path(p) for p in mount.lowers], tree)
    return replace(mount, lowers=(os.fspath(tree),), copy_on_write=False)


def _private_payload(spec: RunSpec) -> bytes | None:
    """The file mounts' contents and the secret variables, in mount order, for the sandbox's private pipe."""
    files = [base64.b64encode(m.data).decode() for m in spec.mounts if m.kind == "file"]
    if not files and not spec.secret_env:
        return None
    return json.dumps({"files": files, "env": list(spec.secret_env)}).encode()


def _send(fd: int, payload: bytes) -> None:
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view) :]
    except OSError:
        pass  # the sandbox is gone: it reports why on its own
    finally:
        os.close(fd)


def _read_stubs(path: Path) -> list[str]:
    try:
        stubs = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return []
    return [s for s in stubs if isinstance(s, str)] if isinstance(stubs, list) else []


def remove_stubs(upper: Path, stubs: Sequence[str]) -> None:
    """Remove from ``upper`` the mount points the sandbox created for mounts (``stubs``: relative paths, parents
    first), as BuildKit's MountStubsCleaner does: each one that is still an empty directory or an empty regular
    file, children before parents, the parent's times kept. Nothing here follows a symlink: the command may have
    replaced any directory on the way with one."""
    for rel in reversed(stubs):
        *parents, name = [p for p in rel.split("/") if p]
        if name in (".", ".."):
            continue
        fds: list[int] = []
        try:
            fds.append(os.open(upper, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC))
            for part in parents:
                if part in (".", ".."):
                    raise FileNotFoundError(part)
                flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
                fds.append(os.open(part, flags, dir_fd=fds[-1]))
            parent = fds[-1]
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            times = os.fstat(parent)
            if stat.S_ISDIR(st.st_mode):
                os.rmdir(name, dir_fd=parent)  # fails unless empty
            elif stat.S_ISREG(st.st_mode) and st.st_size == 0:
                os.unlink(name, dir_fd=parent)
            else:
                continue
            os.utime(parent, ns=(times.st_atime_ns, times.st_mtime_ns))
        except OSError:
            continue  # gone, no longer empty, or not a directory any more: the command's doing, kept
        finally:
            for fd in fds:
                os.close(fd)


def _wait_for_init(pid_file: Path) -> None:
    """Wait until the killed container's init has exited: the kernel has then killed and reaped every other
    process of its PID namespace, and its mount namespace (with the overlay on the scratch directory) is gone.

    init dies of PR_SET_PDEATHSIG a moment after the sandbox; it is then a zombie (its new parent reaps it) or
    gone, and either means its exit, namespace teardown included, is complete."""
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return  # the sandbox died before it forked init
    deadline = time.monotonic() + _REAP_TIMEOUT
    while time.monotonic() < deadline:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return
        if fields[0] in ("Z", "X"):
            return
        time.sleep(0.002)


def _wait_through_interrupts(proc: subprocess.Popen[bytes]) -> int:
    """Wait for the sandbox; a Ctrl-C is the command's to handle (the terminal sent it the same SIGINT)."""
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:
            continue


def _environment() -> dict[str, str]:
    return {"PYTHONPATH": _PACKAGE_PARENT, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}


class _Program:
    """A sandbox started as a program of its own (``python -m builder.sandbox SPEC``)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.output = proc.stdout.fileno() if proc.stdout is not None else -1

    def wait(self) -> int:
        return self.proc.wait()

    def wait_through_interrupts(self) -> int:
        return _wait_through_interrupts(self.proc)

    def running(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)  # its init and everything under it die with it
        self.proc.wait()

    def close(self) -> None:
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _kill(pidfd: int) -> None:
    """SIGKILL the process ``pidfd`` refers to, and wait until it has exited."""
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except ProcessLookupError:
        pass  # already gone
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    poller.poll()  # readable once the process has exited


class _Forked:
    """A sandbox a server forked: the server reports its status; a pidfd kills it and tells when it is gone."""

    def __init__(self, server: _Server, pidfd: int, output: int) -> None:
        self.server = server
        self.pidfd = pidfd
        self.output = output
        self.done = False

    def wait(self) -> int:
        status = self.server.exit_status()
        self.done = True
        return status

    def running(self) -> bool:
        return not self.done

    def kill(self) -> None:
        _kill(self.pidfd)  # its init and everything under it die with it
        self.server.stop()  # its status is still to come: a server out of step is not used again

    def close(self) -> None:
        os.close(self.output)
        os.close(self.pidfd)


class _Server:
    """One ``python -m builder.sandbox --server``: a socket to it, and its process."""

    def __init__(self, scratch: Path) -> None:
        import socket  # here: it costs every command's start a few milliseconds, and only RUN steps need it

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    *_PYTHON_FLAGS,
                    "-m",
                    "builder.sandbox",
                    "--server",
                    str(theirs.fileno()),
                    str(os.getpid()),
                    os.fspath(scratch),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=_environment(),
                close_fds=True,
                pass_fds=(theirs.fileno(),),
                cwd="/",
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.control = ours
        self.usable = True

    def wait_ready(self) -> bool:
        """Whether the server has started and can fork sandboxes here (else it has exited)."""
        try:
            self.usable = self.control.recv(64) == b"ready"
        except OSError:
            self.usable = False
        return self.usable

    def fork(self, spec_file: Path, output: int, private: int | None) -> int | None:
        """Have the server fork a sandbox for ``spec_file``, writing to ``output``; a pidfd of it, or None when the
        server has gone (then no sandbox it may have started is left)."""
        import socket

        init_pid = spec_file.parent / "init.pid"
        try:
            socket.send_fds(self.control, [os.fsencode(spec_file)], [output] if private is None else [output, private])
            reply, fds, _, _ = socket.recv_fds(self.control, 64, 1)
        except BaseException as err:  # the server has gone, or we are interrupted: the sandbox may have started
            self.abandon(init_pid)
            if isinstance(err, OSError):
                return None
            raise
        if reply.startswith(b"started ") and len(fds) == 1:
            return fds[0]
        for fd in fds:
            os.close(fd)
        if reply.startswith(b"failed "):  # fork() failed: no sandbox
            code = int(reply.split()[1])
            raise OSError(code, f"cannot start the sandbox: {os.strerror(code)}")
        if reply == b"refused":
            raise SandboxError(f"cannot start the container: the sandbox server refused {spec_file}")
        self.abandon(init_pid)
        return None

    def exit_status(self) -> int:
        """The wait status of the sandbox forked last, as ``Popen.returncode`` has it (-N: killed by signal N)."""
        try:
            reply = self.control.recv(64)
        except OSError:
            reply = b""
        if not reply.startswith(b"exited "):
            self.stop()
            raise SandboxError("cannot run the container: the sandbox server stopped")
        return os.waitstatus_to_exitcode(int(reply.split()[1]))

    def abandon(self, init_pid: Path) -> None:
        """Stop the server in the middle of a fork, and wait until the sandbox it may have started is gone: the
        sandbox only runs once its pidfd is sent, and what was sent can still be read once the server is dead
        (``init_pid``: where the sandbox writes its container's init's pid)."""
        self._end()
        import socket

        self.control.setblocking(False)
        try:
            _, fds, _, _ = socket.recv_fds(self.control, 64, 1)
        except OSError:
            fds = []
        self.control.close()
        for pidfd in fds:
            _kill(pidfd)
            os.close(pidfd)
            _wait_for_init(init_pid)

    def stop(self) -> None:
        """End the server (a sandbox it runs dies with it) and reap it."""
        self._end()
        self.control.close()

    def _end(self) -> None:
        self.usable = False
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class SandboxServers:
    """The sandbox servers of one build, one per thread that runs containers (the kernel's parent-death signal, which
    ends a server with the engine, is tied to the thread that started it); ``close`` ends them all once the build's
    containers are over. Where a server cannot run (no pidfds), each step starts a sandbox program of its own."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch  # the directory the specs are under
        self._local = threading.local()
        self._lock = threading.Lock()
        self._servers: list[_Server] = []
        self._closed = False
        self._unavailable = False

    def get(self) -> _Server | None:
        """This thread's server, started if need be; None when sandboxes must be started as programs."""
        server: _Server | None = getattr(self._local, "server", None)
        if server is not None and server.usable:
            return server
        with self._lock:
            if self._closed or self._unavailable:
                return None
            server = _Server(self.scratch)
            self._servers.append(server)  # before waiting: an interrupt leaves it to close()
        if not server.wait_ready():
            server.stop()
            self._unavailable = True
            return None
        self._local.server = server
        return server

    def close(self) -> None:
        with self._lock:
            self._closed = True
            servers, self._servers = self._servers, []
        for server in servers:
            server.stop()


def _start(
    servers: SandboxServers | None, spec_file: Path, private_read: int | None, interactive: bool
) -> _Program | _Forked:
    server = servers.get() if servers is not None and not interactive else None
    if server is not None:
        read, write = os.pipe()
        try:
            pidfd = server.fork(spec_file, write, private_read)
        except BaseException:
            os.close(read)
            raise
        finally:
            os.close(write)
        if pidfd is not None:
            return _Forked(server, pidfd, read)
        os.close(read)  # the server has gone before it forked: a program of its own, then
    proc = subprocess.Popen(
        [sys.executable, *_PYTHON_FLAGS, "-m", "builder.sandbox", os.fspath(spec_file)],
        stdin=None if interactive else subprocess.DEVNULL,
        stdout=None if interactive else subprocess.PIPE,
        stderr=None if interactive else subprocess.STDOUT,
        env=_environment(),
        close_fds=True,
        pass_fds=(private_read,) if private_read is not None else (),
        cwd="/",
    )
    return _Program(proc)


def run_container(
    scratch: Path,
    lowers: Sequence[Path],
    spec: RunSpec,
    on_output: Callable[[bytes], None],
    on_idle: Callable[[], None] | None = None,
    *,
    interactive: bool = False,
    cgroups: Sequence[str] = (),
    servers: SandboxServers | None = None,
) -> int:
    """Run ``spec`` over ``lowers`` (top first); return its exit status (128 + N when killed by signal N).

    ``scratch`` is an empty private directory; the step's upper directory is ``scratch / "upper"`` afterwards.
    ``on_idle`` is called when the command has been quiet for a moment (a live display moves its clocks).
    ``interactive`` (``pybuild run``): the command gets pybuild's own standard input, output and error instead of
    a pipe to ``on_output``, and a Ctrl-C goes to the command (which shares the terminal's process group) rather
    than ending the wait.
    ``cgroups``: the ``cgroup.procs`` files (``builder.cgroups``) the sandbox joins before it forks the container, so
    that everything the command starts is in them.
    ``servers``: the build's sandbox servers, which fork the sandbox (unless ``interactive``).
    Raises ``SandboxError`` when the container itself could not start.
    """
    for name in ("upper", "work", "merged", "files"):
        (scratch / name).mkdir(mode=0o755)
    copied: copysnap.Copy | None = None
    if copysnap.snapshotter(scratch.parent) == "copy":
        copied = copysnap.materialize(lowers, scratch / "merged")
        spec = replace(spec, mounts=tuple(_copied_mount(m, i, scratch) for i, m in enumerate(spec.mounts)))
    (scratch / "mounts").mkdir(mode=0o700)
    files = scratch / "files"
    error_file = scratch / "error"
    stubs_file = scratch / "stubs.json"
    document = {
        "lowers": [os.fspath(p) for p in lowers],
        "upper": os.fspath(scratch / "upper"),
        "work": os.fspath(scratch / "work"),
        "merged": os.fspath(scratch / "merged"),
        "copy": copied is not None,
        "files": {
            "hosts": _write(files / "hosts", _hosts(spec.hostname).encode()),
            "resolv.conf": _write(files / "resolv.conf", _resolv_conf()),
            "hostname": _write(files / "hostname", f"{spec.hostname}\n".encode()),
        },
        "scripts": [{"name": name, "content": content} for name, content in spec.scripts],
        "network": spec.network,
        "hostname": spec.hostname,
        "user": spec.user,
        "cwd": spec.cwd,
        "argv": list(spec.argv),
        "env": list(spec.env),
        "mounts": [_mount_json(m) for m in spec.mounts],
        "mount_staging": os.fspath(scratch / "mounts"),
        "stubs_file": os.fspath(stubs_file),
        "insecure": spec.insecure,
        "engine_pid": os.getpid(),
        "cgroups": list(cgroups),
        "error_file": os.fspath(error_file),
        "init_pid_file": os.fspath(scratch / "init.pid"),
    }
    # Secrets never go into the spec file: they reach the sandbox through a pipe, which it reads before anything else.
    private = _private_payload(spec)
    private_read = private_write = -1
    if private is not None:
        private_read, private_write = os.pipe()
        document["private_fd"] = private_read
    spec_file = scratch / "spec.json"
    _write(spec_file, json.dumps(document).encode())
    sender: threading.Thread | None = None
    done = False
    try:
        sandbox = _start(servers, spec_file, private_read if private is not None else None, interactive)
    except BaseException:
        if private is not None:
            os.close(private_write)
        raise
    finally:
        if private is not None:
            os.close(private_read)
    if private is not None:
        # A thread, since the payload may be larger than a pipe holds; it ends when the sandbox has read it all or
        # has gone (then the write fails with EPIPE).
        sender = threading.Thread(target=_send, args=(private_write, private), daemon=True)
        sender.start()
    try:
        if interactive:
            assert isinstance(sandbox, _Program)
            status = sandbox.wait_through_interrupts()
        else:
            fd = sandbox.output
            while True:
                if on_idle is not None and not select.select([fd], [], [], _IDLE)[0]:
                    on_idle()
                    continue
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                on_output(chunk)
            status = sandbox.wait()
        done = True
    finally:
        if sandbox.running():
            sandbox.kill()
            _wait_for_init(scratch / "init.pid")
        sandbox.close()
        if sender is not None:
            sender.join()
        if copied is not None and done:
            copysnap.to_upper(scratch / "merged", lowers, copied, scratch / "upper")
        remove_stubs(scratch / "upper", _read_stubs(stubs_file))
    if status < 0:
        status = 128 - status
    if status == _SETUP_FAILED:
        try:
            reason = error_file.read_text(errors="replace").strip()
        except OSError:
            reason = ""
        if reason:
            raise SandboxError(f"cannot start the container: {reason}")
    return status
