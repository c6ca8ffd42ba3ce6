"""Running a RUN step: a throwaway container over the stage's snapshots, its output streamed, its upper kept.

``run_container`` writes the sandbox spec and the files bind-mounted over ``/etc/hosts``, ``/etc/resolv.conf``
and ``/etc/hostname`` into the step's scratch directory, starts ``python -m builder.sandbox`` (see that module
for what happens inside), hands every chunk of the command's merged standard output and error to ``on_output``
as it arrives, and returns the command's exit status. The step's changes are left in ``scratch/upper`` for the
differ. Whatever happens — the command fails, the engine is interrupted, reading the output raises — the sandbox
is killed and reaped before this function returns, and with it every process the command started (they live in
its PID namespace) and every mount it used (they live in its mount namespace).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from builder.errors import BuildError

__all__ = ["DEFAULT_HOSTNAME", "MountPoint", "RunSpec", "SandboxError", "run_container"]

DEFAULT_HOSTNAME = "buildkitsandbox"
_SETUP_FAILED = 125
_PACKAGE_PARENT = str(Path(__file__).resolve().parent.parent)
_LOOPBACK_NAMESERVERS = ("127.", "::1")
_IDLE = 0.25  # seconds without output before on_idle is called
_REAP_TIMEOUT = 10.0  # seconds to wait for a killed container's init to finish tearing its namespaces down


class SandboxError(BuildError):
    """The container could not be set up (not the command's own failure)."""


@dataclass(frozen=True)
class MountPoint:
    """A ``RUN --mount`` as the sandbox makes it, at ``target`` (absolute, inside the container): a bind of a host
    path (a directory, a file or a socket: cache, bind, secret and ssh mounts) or a fresh tmpfs. Everything else about
    a mount (where its source comes from, what it means for the cache key) is the builder's business."""

    kind: str  # "bind" or "tmpfs"
    target: str
    source: str = ""  # bind: the host path
    readonly: bool = False
    size: int = 0  # tmpfs: its size limit in bytes (0: the kernel's default)
    mode: int | None = None  # tmpfs: the mode of its root directory


@dataclass(frozen=True)
class RunSpec:
    argv: tuple[str, ...]
    env: tuple[str, ...]  # "K=V", exactly the command's environment (HOME is added from passwd when absent)
    user: str = ""  # USER as written: name or id, optionally ":group"
    cwd: str = "/"
    network: str = "default"  # "default" and "host" share the host's network; "none" has only loopback
    hostname: str = DEFAULT_HOSTNAME
    scripts: tuple[tuple[str, str], ...] = ()  # RUN heredocs with a #! line: (name, content) in /dev/pipes
    mounts: tuple[MountPoint, ...] = ()  # RUN --mount, in the order written (the sandbox does not make them yet)


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


def run_container(
    scratch: Path,
    lowers: Sequence[Path],
    spec: RunSpec,
    on_output: Callable[[bytes], None],
    on_idle: Callable[[], None] | None = None,
    *,
    interactive: bool = False,
) -> int:
    """Run ``spec`` over ``lowers`` (top first); return its exit status (128 + N when killed by signal N).

    ``scratch`` is an empty private directory; the step's upper directory is ``scratch / "upper"`` afterwards.
    ``on_idle`` is called when the command has been quiet for a moment (a live display moves its clocks).
    ``interactive`` (``pybuild run``): the command gets pybuild's own standard input, output and error instead of
    a pipe to ``on_output``, and a Ctrl-C goes to the command (which shares the terminal's process group) rather
    than ending the wait.
    Raises ``SandboxError`` when the container itself could not start.
    """
    for name in ("upper", "work", "merged", "files"):
        (scratch / name).mkdir(mode=0o755)
    files = scratch / "files"
    error_file = scratch / "error"
    document = {
        "lowers": [os.fspath(p) for p in lowers],
        "upper": os.fspath(scratch / "upper"),
        "work": os.fspath(scratch / "work"),
        "merged": os.fspath(scratch / "merged"),
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
        "engine_pid": os.getpid(),
        "error_file": os.fspath(error_file),
        "init_pid_file": os.fspath(scratch / "init.pid"),
    }
    spec_file = scratch / "spec.json"
    _write(spec_file, json.dumps(document).encode())
    environment = {"PYTHONPATH": _PACKAGE_PARENT, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "builder.sandbox", os.fspath(spec_file)],
        stdin=None if interactive else subprocess.DEVNULL,
        stdout=None if interactive else subprocess.PIPE,
        stderr=None if interactive else subprocess.STDOUT,
        env=environment,
        close_fds=True,
        cwd="/",
    )
    try:
        if interactive:
            status = _wait_through_interrupts(proc)
        else:
            assert proc.stdout is not None
            fd = proc.stdout.fileno()
            while True:
                if on_idle is not None and not select.select([fd], [], [], _IDLE)[0]:
                    on_idle()
                    continue
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                on_output(chunk)
            status = proc.wait()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)  # its init and everything under it die with it
            proc.wait()
            _wait_for_init(scratch / "init.pid")
        if proc.stdout is not None:
            proc.stdout.close()
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
