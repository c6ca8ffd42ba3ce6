"""Independent stages build at the same time (``--jobs``), give the same image as one after another, and the first
failure stops the others."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO, run_pybuild, write_context

EPOCH = {"SOURCE_DATE_EPOCH": "1700000000"}
BUSY = "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done"
STAGES = f"""\
FROM busybox AS a
RUN {BUSY}; echo a > /a
FROM busybox AS b
RUN {BUSY}; echo b > /b
FROM busybox AS unused
RUN exit 1
FROM busybox
COPY --from=a /a /a
COPY --from=b /b /b
"""


def _build(root: Path, context: Path, *args: str) -> tuple[str, str]:
    iidfile = root.parent / f"{root.name}.iid"
    result = run_pybuild(
        "--root", str(root), "build", "--progress", "plain", "--iidfile", str(iidfile), *args, str(context),
        env=EPOCH,
    )  # fmt: skip
    assert result.code == 0, result
    return iidfile.read_text(), result.err


def test_independent_stages_overlap_and_give_the_same_image_as_jobs_1(
    tmp_path: Path, busybox: str, store_root: Path
) -> None:
    context = write_context(tmp_path / "ctx", STAGES)
    # The same base in two fresh stores (imported with the epoch, so the same digest).
    tar = tmp_path / "busybox.tar"
    assert run_pybuild("save", "-o", str(tar), "busybox").code == 0
    for name in ("one", "two"):
        assert run_pybuild("--root", str(tmp_path / name), "load", "-i", str(tar)).code == 0
    sequential, one_log = _build(tmp_path / "one", context, "--jobs", "1")
    parallel, two_log = _build(tmp_path / "two", context, "--jobs", "2")
    assert sequential == parallel
    # One after another, b's first step starts after a's RUN is done; with two jobs, before.
    a_done = r"#2 DONE"
    b_starts = r"#\d+ \[b 1/2\] FROM"
    assert re.search(a_done, one_log).start() < re.search(b_starts, one_log).start()  # type: ignore[union-attr]
    assert re.search(b_starts, two_log).start() < re.search(a_done, two_log).start()  # type: ignore[union-attr]
    assert "unused" not in one_log and "unused" not in two_log  # a stage the target does not need never runs


def test_the_first_failure_stops_the_other_stages(tmp_path: Path, busybox: str) -> None:
    marker = f"{os.getpid() % 1000 + 3000}"  # sleep's argument: this test's own container, not another's
    context = write_context(
        tmp_path / "ctx",
        f"FROM busybox AS slow\nRUN sleep {marker}\nFROM busybox AS broken\nRUN sleep 1; exit 3\n"
        "FROM busybox\nCOPY --from=slow /etc/passwd /a\nCOPY --from=broken /etc/passwd /b\n",
    )
    mounts = Path("/proc/self/mountinfo").read_text()
    proc = subprocess.run(
        [sys.executable, "-m", "builder", "build", "--jobs", "2", "--progress", "plain", str(context)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,  # the slow stage would take an hour: it must be cancelled, its container killed
    )
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert "Dockerfile:4:" in last and "exit code: 3" in last, proc.stderr
    assert Path("/proc/self/mountinfo").read_text() == mounts
    leftover = subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True, text=True)
    assert leftover.stdout == "", leftover.stdout
