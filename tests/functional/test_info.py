"""``pybuild info``: version, the store and what it holds, and what this machine lets RUN do."""

from __future__ import annotations

import json
from pathlib import Path

from builder import __version__
from tests.conftest import run_pybuild, write_context


def test_info_describes_the_store_and_the_machine(tmp_path: Path, busybox: str, store_root: Path) -> None:
    empty = json.loads(run_pybuild("info", "--format", "json").out)
    context = write_context(tmp_path / "c", "FROM busybox\nRUN echo hi > /hi\n")
    assert run_pybuild("build", "-q", "-t", "app", str(context)).code == 0
    result = run_pybuild("info", "--format", "json")
    assert result.code == 0, result
    found = json.loads(result.out)
    assert found["version"] == __version__
    assert found["store"]["root"] == str(store_root)
    assert found["store"]["images"] == empty["store"]["images"] + 1 == 2
    assert found["store"]["blobs"] > empty["store"]["blobs"]
    assert found["store"]["cacheEntries"] == empty["store"]["cacheEntries"] + 1
    assert found["store"]["snapshots"] >= 2  # the base's layer and the RUN's
    assert found["host"]["root"] is True and found["host"]["cpus"] >= 1
    assert set(found["features"]) == {"--memory", "--pids-limit", "RUN", "snapshots"}
    assert found["features"]["RUN"] == "yes"
    assert found["features"]["snapshots"] == "overlay"
    chosen = json.loads(run_pybuild("info", "--format", "json", env={"PYBUILD_SNAPSHOTTER": "copy"}).out)
    assert chosen["features"]["snapshots"] == "copy (PYBUILD_SNAPSHOTTER)"
    refused = run_pybuild("info", env={"PYBUILD_SNAPSHOTTER": "vfs"})
    assert refused.code == 2 and "PYBUILD_SNAPSHOTTER='vfs': expected one of overlay, copy" in refused.err

    text = run_pybuild("info")
    assert text.code == 0
    assert f"Root: {store_root}\n" in text.out
    assert "  Images: 2\n" in text.out and "  Cache entries: 1\n" in text.out
    assert "--memory: " in text.out


def test_info_rejects_an_unknown_format() -> None:
    result = run_pybuild("info", "--format", "yaml")
    assert result.code == 2
