"""Run the pybuild command line and SIGKILL it at a chosen moment, to prove a killed command never damages the store.

A moment is the Nth operation that changes something on disk or starts a container, counted across all threads:
renames, fsyncs, directory and link creation and removal, writes to the cache index (SQLite statements that
change it), starting a sandbox (a program of its own, or one a sandbox server forks: the engine sends the server
its spec) and starting a sandbox server. ``PYBUILD_FAULT_AT=N`` kills the process just before the Nth such operation
(a started sandbox: once its container is running), with SIGKILL or with the signal
``PYBUILD_FAULT_SIGNAL`` names (``TERM``, ``INT``); ``PYBUILD_FAULT_LOG=FILE``
records every moment's name, one per line, so a test can run a build undisturbed, count its moments and choose
where to strike.

Nothing here is imported by pybuild: the counting is done by wrapping the ``os``, ``socket``, ``subprocess`` and
``sqlite3`` functions in this process only, before the command line runs.

    python tests/faultinject.py [pybuild arguments...]
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_AT = int(os.environ.get("PYBUILD_FAULT_AT", "0") or 0)
_LOG = os.environ.get("PYBUILD_FAULT_LOG", "")
_SIGNAL = signal.Signals[f"SIG{os.environ.get('PYBUILD_FAULT_SIGNAL', 'KILL')}"]
_lock = threading.Lock()
_count = 0
_names: list[str] = []
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE", "BEGIN", "COMMIT", "CREATE", "DROP")
#: A sandbox's moment strikes when its container's init has started, or at the next moment if that was missed.
_pending = threading.Event()
_struck = threading.Event()


def _die() -> None:
    """Strike, once (a SIGTERM is a request the build answers by cleaning up: it is not repeated)."""
    with _lock:
        if _struck.is_set():
            return
        _struck.set()
        _pending.clear()
    os.kill(os.getpid(), _SIGNAL)


def moment(name: str, then: Callable[[], None] | None = None) -> None:
    """Count a moment; at the chosen one, strike now, or given ``then``, once ``then`` returns (and at the latest at
    the next moment: the main flow counts none while a container runs, so that is once the container is over)."""
    global _count
    with _lock:
        _count += 1
        number = _count
        if _LOG:
            _names.append(name)
    if _pending.is_set() or (number == _AT and then is None):
        _die()
    elif number == _AT and then is not None:
        _pending.set()
        threading.Thread(target=lambda: (then(), _die()), daemon=True).start()


def _container_running(spec: str) -> Callable[[], None]:
    """A wait until the sandbox started from ``spec`` has its container's init running (it writes init.pid), or
    the step is over (its scratch directory removed)."""
    init_pid = Path(spec).parent / "init.pid"

    def wait() -> None:
        while not init_pid.exists() and init_pid.parent.exists():
            time.sleep(0.001)

    return wait


def _counted(module: Any, name: str) -> None:
    original: Callable[..., Any] = getattr(module, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        moment(name)
        return original(*args, **kwargs)

    setattr(module, name, wrapper)


def _counting(base: type[sqlite3.Connection]) -> type[sqlite3.Connection]:
    """``base`` (the connection class the caller asked for) with its writing statements counted as moments."""

    class Counting(base):  # type: ignore[valid-type, misc]
        def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
            if sql.lstrip().upper().startswith(_WRITES):
                moment("sqlite")
            return super().execute(sql, *args)

        def executemany(self, sql: str, *args: Any) -> sqlite3.Cursor:
            moment("sqlite")
            return super().executemany(sql, *args)

    return Counting


def _install() -> None:
    for name in ("rename", "replace", "fsync", "mkdir", "rmdir", "unlink", "link", "symlink"):
        _counted(os, name)
    connect = sqlite3.connect

    def counting_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        kwargs["factory"] = _counting(kwargs.get("factory", sqlite3.Connection))
        return connect(*args, **kwargs)

    sqlite3.connect = counting_connect  # type: ignore[assignment]
    popen_init = subprocess.Popen.__init__

    def counting_popen(self: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> None:
        popen_init(self, args, *rest, **kwargs)
        if isinstance(args, list | tuple) and "builder.sandbox" in map(str, args):
            if "--server" in args:
                moment("server")
            else:
                moment("sandbox", then=_container_running(str(args[-1])))

    subprocess.Popen.__init__ = counting_popen  # type: ignore[method-assign]
    sendmsg = socket.socket.sendmsg

    def counting_sendmsg(self: socket.socket, buffers: Any, *rest: Any) -> int:
        sent = sendmsg(self, buffers, *rest)
        data = b"".join(buffers)
        if data.endswith(b"/spec.json"):  # a sandbox server asked to fork a sandbox
            moment("sandbox", then=_container_running(os.fsdecode(data)))
        return sent

    socket.socket.sendmsg = counting_sendmsg  # type: ignore[method-assign]


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    _install()
    from builder.cli import main as pybuild

    try:
        return pybuild(sys.argv[1:])
    finally:
        if _LOG:
            Path(_LOG).write_text("".join(f"{name}\n" for name in _names))


if __name__ == "__main__":
    sys.exit(main())
