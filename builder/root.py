"""Where the local store lives, and opening it.

The store is an OCI image layout at ``--root``, else ``$PYBUILD_ROOT``, else ``$XDG_DATA_HOME/pybuild``
(``~/.local/share/pybuild``). pybuild's working state lives beside the layout's own files under the same root:
``ingest/`` (blobs and indexes being written) and ``tmp/`` (scratch trees of running commands).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from builder.limits import DEFAULT_LIMITS
from oci.apply import ApplyLimits, remove_tree
from oci.layout import ImageLayout
from oci.store import pid_alive

__all__ = ["Store", "open_store", "store_root"]


def store_root(cli_root: str | None, environ: Mapping[str, str]) -> Path:
    if cli_root:
        return Path(cli_root).absolute()
    if environ.get("PYBUILD_ROOT"):
        return Path(environ["PYBUILD_ROOT"]).absolute()
    data_home = environ.get("XDG_DATA_HOME", "")
    if not os.path.isabs(data_home):
        home = environ.get("HOME") or os.path.expanduser("~")
        data_home = os.path.join(home, ".local", "share")
    return Path(data_home) / "pybuild"


@dataclass(frozen=True)
class Store:
    root: Path
    layout: ImageLayout
    limits: ApplyLimits = DEFAULT_LIMITS  # how far a layer or archive pybuild unpacks may expand (builder.limits)

    def scratch_dir(self, prefix: str) -> Path:
        """A new private directory under ``tmp/`` (same filesystem as the blobs)."""
        base = self.root / "tmp"
        base.mkdir(mode=0o700, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-{prefix}-", dir=base))


def open_store(root: Path, limits: ApplyLimits = DEFAULT_LIMITS) -> Store:
    """Open (creating if needed) the store at ``root`` and sweep what killed commands left behind."""
    layout = ImageLayout.open(root, create=True)
    layout.sweep()
    _sweep_scratch(root / "tmp")
    return Store(root, layout, limits)


def _sweep_scratch(tmp: Path) -> None:
    """Remove scratch trees whose owning process is gone (their names start with its pid)."""
    if not tmp.is_dir():
        return
    fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in os.listdir(fd):
            pid = name.split("-", 1)[0]
            if pid.isdigit() and not pid_alive(int(pid)):
                try:
                    remove_tree(fd, name)
                except NotADirectoryError:
                    os.unlink(name, dir_fd=fd)
                except FileNotFoundError:
                    pass  # another process swept it first
    finally:
        os.close(fd)
