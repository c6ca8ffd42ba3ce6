"""A full disk: the store lives on a small tmpfs, and a filler file leaves the build less room each time.

Wherever the space runs out (the cache index, a snapshot, a step's upper directory, a blob, index.json) the build
ends with one clear line and exit 1, leaves none of its working files, and damages nothing: ``pybuild fsck`` is
clean, the images already there are intact, and once there is room again the same build succeeds.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_root, run_pybuild, write_context
from tests.functional.test_faults import leftovers, mount_points

SIZE = 24 << 20
DOCKERFILE = """\
FROM busybox
RUN mkdir /data && echo made > /data/made
COPY big.bin /data/
RUN cp /data/big.bin /data/copy.bin
"""


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    require_root()
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(disk: Path, leave: int) -> Path:
    """A file taking all the free space of ``disk`` but ``leave`` bytes."""
    filler = disk / "filler"
    with open(filler, "wb") as f:
        want = max(0, free_bytes(disk) - leave)
        chunk = b"\0" * (1 << 20)
        while want > 0:
            try:
                want -= f.write(chunk[: min(want, len(chunk))])
            except OSError:
                break
    return filler


def test_a_full_disk_ends_the_build_cleanly_wherever_it_strikes(
    tmp_path: Path, small_disk: Path, busybox_tar: Path
) -> None:
    root = small_disk / "store"
    env = {"PYBUILD_ROOT": str(root), "SOURCE_DATE_EPOCH": "1700000000"}  # each attempt writes the same layers
    assert run_pybuild("import", "-q", str(busybox_tar), "busybox", env=env).code == 0
    context = write_context(tmp_path / "context", DOCKERFILE)
    (context / "big.bin").write_bytes(os.urandom(3 << 20))
    index_before = json.loads((root / "index.json").read_text())
    mounts_before = mount_points()
    failures = []
    for leave in (0, 8 << 10, 64 << 10, 512 << 10, 2 << 20, 4 << 20, 6 << 20, 8 << 20, 11 << 20):
        filler = fill(small_disk, leave)
        result = run_pybuild("build", "--no-cache", "--progress", "plain", "-t", "app", str(context), env=env)
        filler.unlink()
        if result.code != 0:
            failures.append(leave)
            last = result.err.splitlines()[-1]
            assert result.code == 1, (leave, result)
            if "did not complete successfully" in last:  # a RUN's own command hit the full disk and said so
                assert "No space left on device" in result.err, (leave, result)
            else:
                assert "no space left on device" in last.lower(), (leave, result)
            assert "internal error" not in result.err and "Traceback" not in result.err, (leave, result)
        assert leftovers(root) == [], leave
        assert mount_points() == mounts_before, leave
        checked = run_pybuild("fsck", env=env)
        assert checked.code == 0, (leave, checked)
        index = json.loads((root / "index.json").read_text())
        assert all(entry in index["manifests"] for entry in index_before["manifests"]), leave
    assert failures, "the disk never filled: the test's sizes no longer fit the build"
    result = run_pybuild("build", "-q", "-t", "app", str(context), env=env)
    assert result.code == 0, result
    exported = run_pybuild("run", "--rm", "app", "cat", "/data/made", env=env)
    assert exported.out == "made\n", exported
