"""Where the store lives (--root, then PYBUILD_ROOT, then the XDG data home) and what opening it cleans up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from builder.root import open_store, store_root


def test_cli_root_wins_over_the_environment(tmp_path: Path) -> None:
    env = {"PYBUILD_ROOT": "/env/root", "XDG_DATA_HOME": "/xdg", "HOME": "/home/u"}
    assert store_root(str(tmp_path), env) == tmp_path
    assert store_root(None, env) == Path("/env/root")


def test_xdg_data_home_then_home() -> None:
    assert store_root(None, {"XDG_DATA_HOME": "/xdg", "HOME": "/home/u"}) == Path("/xdg/pybuild")
    assert store_root(None, {"HOME": "/home/u"}) == Path("/home/u/.local/share/pybuild")
    # The XDG spec says a relative value is invalid and must be ignored.
    assert store_root(None, {"XDG_DATA_HOME": "rel", "HOME": "/home/u"}) == Path("/home/u/.local/share/pybuild")


def test_opening_sweeps_scratch_left_by_dead_processes(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / "tmp" / f"{dead.stdout.strip()}-import-abc"
    (stale / "deep" / "tree").mkdir(parents=True)
    os.symlink("/", stale / "deep" / "root-link")  # removal must not follow it
    mine = store.scratch_dir("import")
    open_store(tmp_path)
    assert not stale.exists()
    assert mine.exists(), "a live process's scratch dir must survive"
    assert Path("/etc/passwd").exists()
