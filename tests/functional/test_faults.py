"""Killed and interrupted builds: whatever moment a build dies at, the store stays usable and nothing is left behind.

A multi-step build (parallel stages, RUN, COPY of a MB, COPY --from) is killed with SIGKILL at 20 moments chosen
across everything it does to the disk (tests/faultinject.py counts them). After each kill the next build succeeds
and gives, with SOURCE_DATE_EPOCH, the digest of an undisturbed build; ``pybuild fsck`` finds nothing wrong; no
container process and no mount survives (the commands after a kill run the CLI's ``main`` in this process, to save
a Python start-up each). SIGINT and SIGTERM end a build with 130 and 143 and remove its temporary
files themselves, before any later command has had the chance to sweep them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, interruptible, run_pybuild, run_pybuild_here, write_context

FAULTINJECT = REPO / "tests" / "faultinject.py"
EPOCH = "1700000000"
DOCKERFILE = """\
FROM busybox AS base
RUN mkdir -p /data && echo one > /data/one && sleep 0.1
COPY big.bin small.txt /data/
FROM base AS tool
RUN echo tool > /tool.txt && rm /data/one
FROM base
ENV GREETING=hi
COPY --from=tool /tool.txt /data/
RUN cat /data/small.txt /data/tool.txt > /data/both && ln -s both /data/link
"""
#: How many moments the SIGKILL test strikes at.
MOMENTS = 20


def mount_points() -> list[str]:
    return [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]


def processes_mentioning(text: str) -> list[int]:
    """Processes whose command line contains ``text`` (other than this one)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if text.encode() in cmdline:
            found.append(int(entry.name))
    return found


def wait_until_gone(text: str, patience: float = 10.0) -> list[int]:
    """The processes mentioning ``text`` that are still there after ``patience`` seconds (a killed engine's
    containers die of PDEATHSIG a moment after it)."""
    deadline = time.monotonic() + patience
    while (left := processes_mentioning(text)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def leftovers(root: Path) -> list[str]:
    """Working files of commands that are no longer running: scratch trees, blobs being written, half-made
    snapshots."""
    found = []
    for sub in ("tmp", "ingest"):
        if (root / sub).is_dir():
            found += [f"{sub}/{name}" for name in os.listdir(root / sub)]
    if (root / "snapshots").is_dir():
        found += [f"snapshots/{name}" for name in os.listdir(root / "snapshots") if name.startswith(".")]
    return found


def faulted_command(root: Path, args: list[str], *, at: int = 0, log: Path | None = None, signal_name: str = "KILL"):
    """``pybuild ARGS`` on the store at ``root``, struck at moment ``at`` (0: never) with SIG``signal_name``."""
    env = {
        **os.environ,
        "PYBUILD_ROOT": str(root),
        "SOURCE_DATE_EPOCH": EPOCH,
        "PYBUILD_FAULT_AT": str(at),
        "PYBUILD_FAULT_SIGNAL": signal_name,
        "PYTHONPATH": str(REPO),
    }
    if log is not None:
        env["PYBUILD_FAULT_LOG"] = str(log)
    return subprocess.run(
        [sys.executable, str(FAULTINJECT), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        preexec_fn=interruptible,
    )


def faulted_build(root: Path, context: Path, *, at: int = 0, log: Path | None = None, signal_name: str = "KILL"):
    args = ["--progress", "plain", "-t", "app", "--iidfile", str(root / "iid"), str(context)]
    return faulted_command(root, args, at=at, log=log, signal_name=signal_name)


def choose_moments(names: list[str], count: int) -> list[int]:
    """``count`` moments (1-based) spread over every kind of operation: each container start, the middle one of
    every other kind (extracting a snapshot is hundreds of symlinks in a row), then evenly over the whole build."""
    kinds: dict[str, list[int]] = {}
    for number, name in enumerate(names, 1):
        kinds.setdefault(name, []).append(number)
    chosen = set(kinds.get("sandbox", []))
    chosen |= {numbers[len(numbers) // 2] for numbers in kinds.values()}
    evenly = [max(1, round((i + 0.5) * len(names) / count)) for i in range(count)]
    for number in [*evenly, *range(1, len(names) + 1)]:
        if len(chosen) >= count:
            break
        chosen.add(number)
    return sorted(chosen)


@pytest.fixture
def fault_context(tmp_path: Path, busybox: str, store_root: Path) -> tuple[Path, Path]:
    """The context of the multi-step build, and a store holding nothing but the busybox base (to copy per trial)."""
    context = write_context(tmp_path / "context", DOCKERFILE, {"small.txt": "hello\n"})
    (context / "big.bin").write_bytes(os.urandom(1 << 20))
    return context, store_root


def fresh_store(template: Path, root: Path) -> Path:
    subprocess.run(["cp", "-a", str(template), str(root)], check=True)
    return root


def test_a_build_killed_at_any_moment_leaves_a_store_the_next_build_uses(
    tmp_path: Path, fault_context: tuple[Path, Path]
) -> None:
    context, template = fault_context
    mounts_before = mount_points()
    reference = fresh_store(template, tmp_path / "reference")
    log = tmp_path / "moments"
    undisturbed = faulted_build(reference, context, log=log)
    assert undisturbed.returncode == 0, undisturbed.stderr
    digest = (reference / "iid").read_text()
    names = log.read_text().split()
    assert {"rename", "fsync", "sqlite", "sandbox"} <= set(names), names
    moments = choose_moments(names, MOMENTS)
    assert len(moments) == MOMENTS

    for at in moments:
        root = fresh_store(template, tmp_path / f"killed-{at}")
        killed = faulted_build(root, context, at=at)
        what = f"killed at moment {at} ({names[at - 1]})"
        assert killed.returncode == -signal.SIGKILL, (what, killed.stderr[-2000:])
        assert not wait_until_gone(str(root)), f"{what}: a container outlived its build"
        assert mount_points() == mounts_before, f"{what}: a mount outlived its build"

        again = run_pybuild_here(
            "--root", str(root), "build", "-q", "-t", "app", str(context), env={"SOURCE_DATE_EPOCH": EPOCH}
        )
        assert again.code == 0, (what, again)
        assert again.out.strip() == digest, f"{what}: the next build made another image"
        checked = run_pybuild_here("--root", str(root), "fsck")
        assert checked.code == 0, (what, checked)
        assert leftovers(root) == [], what
        shutil.rmtree(root)
    assert mount_points() == mounts_before


@pytest.mark.parametrize("signal_name, code", [("TERM", 143), ("INT", 130)])
def test_a_signal_at_any_moment_ends_the_build_and_removes_its_files(
    tmp_path: Path, fault_context: tuple[Path, Path], signal_name: str, code: int
) -> None:
    """SIGTERM and SIGINT, unlike SIGKILL, are the build's to clean up after: its temporary files are gone when it
    exits, without waiting for the next command's sweep."""
    context, template = fault_context
    reference = fresh_store(template, tmp_path / "reference")
    log = tmp_path / "moments"
    assert faulted_build(reference, context, log=log).returncode == 0
    names = log.read_text().split()
    mounts_before = mount_points()
    for at in choose_moments(names, 5):
        root = fresh_store(template, tmp_path / f"{signal_name}-{at}")
        stopped = faulted_build(root, context, at=at, signal_name=signal_name)
        what = f"SIG{signal_name} at moment {at} ({names[at - 1]})"
        assert stopped.returncode == code, (what, stopped.stderr[-2000:])
        assert stopped.stderr.splitlines()[-1] == "pybuild: interrupted", (what, stopped.stderr[-2000:])
        assert "Traceback" not in stopped.stderr, what
        assert leftovers(root) == [], what
        assert not processes_mentioning(str(root)), what
        assert mount_points() == mounts_before, what
        checked = run_pybuild_here("--root", str(root), "fsck")
        assert checked.code == 0, (what, checked)
        shutil.rmtree(root)


def start_build(context: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "builder", "--progress", "plain", *args, str(context)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=interruptible,
        text=True,
        cwd=REPO,
    )


def wait_for_line(proc: subprocess.Popen[str], text: str) -> list[str]:
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"the build ended before printing {text!r}: {''.join(seen)[-2000:]}")


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.parametrize("stages", ["one stage", "parallel stages"])
def test_a_signal_stops_the_running_containers(
    tmp_path: Path, busybox: str, store_root: Path, signum: int, code: int, stages: str
) -> None:
    marker = f"{7000 + signum}{len(stages)}"  # an argument no other process has: sleep's duration
    dockerfile = f"FROM busybox AS a\nRUN echo started; sleep {marker} & sleep {marker}1\n"
    if stages == "parallel stages":
        dockerfile += f"FROM busybox AS b\nRUN echo started; sleep {marker}2\nFROM a\nCOPY --from=b /etc/passwd /x\n"
    context = write_context(tmp_path / "context", dockerfile)
    mounts_before = mount_points()
    proc = start_build(context, "-t", "stopped")
    try:
        wait_for_line(proc, "started")
        proc.send_signal(signum)
        rest = proc.communicate(timeout=60)[1]
    finally:
        proc.kill()
    assert proc.returncode == code, rest
    assert rest.splitlines()[-1] == "pybuild: interrupted"
    assert not processes_mentioning(f"sleep {marker}")
    assert mount_points() == mounts_before
    assert leftovers(store_root) == []
    after = run_pybuild("build", "-q", "-t", "next", str(write_context(tmp_path / "next", "FROM busybox\nRUN true\n")))
    assert after.code == 0, after
    assert run_pybuild("fsck").code == 0


def test_an_import_or_a_prune_killed_at_any_moment_leaves_a_usable_store(
    tmp_path: Path, fault_context: tuple[Path, Path], busybox_tar: Path
) -> None:
    """Not only builds: ``import`` (unpacking a root filesystem, writing a layer and tagging it) and ``prune``
    (deleting what nothing needs) killed at any moment leave a store the next command uses, and fsck passes."""
    context, template = fault_context
    built = fresh_store(template, tmp_path / "built")
    assert run_pybuild("--root", str(built), "build", "-q", "-t", "app", str(context)).code == 0
    assert run_pybuild("--root", str(built), "rmi", "app").code == 0  # its layers are now the prune's to delete
    commands = {
        "import": (template, ["import", "-q", str(busybox_tar), "again"]),
        "prune": (built, ["prune", "-f"]),
    }
    for verb, (start, args) in commands.items():
        log = tmp_path / f"{verb}-moments"
        reference = fresh_store(start, tmp_path / f"{verb}-reference")
        assert faulted_command(reference, args, log=log).returncode == 0
        names = log.read_text().split()
        for at in choose_moments(names, 4):
            root = fresh_store(start, tmp_path / f"{verb}-{at}")
            killed = faulted_command(root, args, at=at)
            what = f"{verb} killed at moment {at} ({names[at - 1]})"
            assert killed.returncode == -signal.SIGKILL, (what, killed.stderr[-2000:])
            again = run_pybuild_here("--root", str(root), *args)
            assert again.code == 0, (what, again)
            checked = run_pybuild_here("--root", str(root), "fsck")
            assert checked.code == 0, (what, checked)
            assert leftovers(root) == [], what
            rebuilt = run_pybuild_here("--root", str(root), "build", "-q", "-t", "app", str(context))
            assert rebuilt.code == 0, (what, rebuilt)
            shutil.rmtree(root)
