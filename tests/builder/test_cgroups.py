"""``builder.cgroups``: parsing the limits, finding the hierarchies, and step cgroups on this machine's cgroupfs
(made, limited, emptied of every process, removed, swept)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_root

from builder import cgroups
from builder.cgroups import CgroupError, Hierarchy, Limits, StepCgroup

MiB = 1 << 20

# --------------------------------------------------------------------------------------------- the values


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512m", 512 * MiB),
        ("1g", 1 << 30),
        ("1G", 1 << 30),
        ("1gb", 1 << 30),
        ("1GiB", 1 << 30),
        ("1.5g", 3 << 29),
        ("1073741824", 1 << 30),
        ("8192k", 8 * MiB),
        ("6m", 6 * MiB),
    ],
)
def test_memory_sizes_are_read_as_docker_reads_them(text: str, size: int) -> None:
    assert cgroups.parse_memory(text) == size


@pytest.mark.parametrize("text", ["64k", "5m", "6291455", "1b"])
def test_memory_below_dockers_minimum_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="^Minimum memory limit allowed is 6MB$"):
        cgroups.parse_memory(text)


@pytest.mark.parametrize("text", ["", "abc", "-1m", "1x", "m", "1 g b", "0x10m"])
def test_memory_that_is_no_size_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="invalid size"):
        cgroups.parse_memory(text)


def test_pids_limits() -> None:
    assert cgroups.parse_pids("20") == 20
    assert cgroups.parse_pids("1") == 1
    assert cgroups.parse_pids("0") is None and cgroups.parse_pids("-1") is None
    for text in ("-2", "x", "1.5", ""):
        with pytest.raises(ValueError, match="invalid pids limit"):
            cgroups.parse_pids(text)


def test_limits_and_sizes() -> None:
    assert not Limits() and Limits(memory=32 * MiB) and Limits(pids=3)
    assert Limits(memory=32 * MiB, pids=3).controllers() == ("memory", "pids")
    assert Limits(pids=3).controllers() == ("pids",)
    assert [cgroups.format_size(n) for n in (32 * MiB, 1 << 30, 3 << 29, 6 * MiB + 1)] == [
        "32m",
        "1g",
        "1536m",
        "6291457",
    ]


# --------------------------------------------------------------------------------------- the hierarchies

HYBRID_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
90 31 0:32 / /mnt/again rw,relatime - cgroup cgroup rw,memory
"""
HYBRID_CGROUP = """\
9:name=systemd:/
8:pids:/
4:memory:/process_api/abc
1:cpu,cpuacct:/
0::/
"""


def test_a_hybrid_machine() -> None:
    found = {h.mount: h for h in cgroups.hierarchies(HYBRID_MOUNTINFO, HYBRID_CGROUP)}
    assert set(found) == {
        "/sys/fs/cgroup/cpu,cpuacct",
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup/pids",
        "/sys/fs/cgroup/systemd",
        "/sys/fs/cgroup/unified",
    }  # the memory hierarchy mounted again is the same one
    memory = found["/sys/fs/cgroup/memory"]
    assert (memory.version, memory.controllers) == (1, frozenset({"memory"}))
    assert memory.parents() == ["/sys/fs/cgroup/memory/process_api/abc", "/sys/fs/cgroup/memory"]
    assert found["/sys/fs/cgroup/pids"].parents() == ["/sys/fs/cgroup/pids"]
    assert found["/sys/fs/cgroup/cpu,cpuacct"].controllers == frozenset({"cpu", "cpuacct"})
    assert found["/sys/fs/cgroup/systemd"].controllers == frozenset()
    assert found["/sys/fs/cgroup/unified"].version == 2


def test_a_pure_v2_machine() -> None:
    mountinfo = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n"
    (only,) = cgroups.hierarchies(mountinfo, "0::/user.slice/user-0.slice/session-1.scope\n")
    assert only == Hierarchy("/sys/fs/cgroup", 2, frozenset(), "/sys/fs/cgroup/user.slice/user-0.slice/session-1.scope")
    assert only.parents()[-1] == "/sys/fs/cgroup"


def test_a_mount_of_part_of_a_hierarchy() -> None:
    """In a container the mount may show a subtree: this process's cgroup is found inside it, or not at all."""
    mountinfo = (
        r"35 31 0:32 /docker/c1 /sys/fs/cgroup/mem\040ory rw - cgroup cgroup rw,memory" + "\n"
        "39 31 0:36 /docker/c1 /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n"
    )
    found = cgroups.hierarchies(mountinfo, "4:memory:/docker/c1/build\n8:pids:/elsewhere\n")
    assert found[0].own == "/sys/fs/cgroup/mem ory/build"
    assert found[1].own is None and found[1].parents() == ["/sys/fs/cgroup/pids"]


def test_a_controller_the_machine_lacks_is_named() -> None:
    with pytest.raises(CgroupError, match=r"^--memory needs cgroups, and no cgroup file system is mounted$"):
        StepCgroup(Limits(memory=32 * MiB), found=[]).__enter__()
    cpu_only = [Hierarchy("/nonexistent/cpu", 1, frozenset({"cpu"}))]
    with pytest.raises(CgroupError, match=r"^--pids-limit needs the cgroup pids controller, which this machine"):
        StepCgroup(Limits(pids=5), found=cpu_only).__enter__()
    cgroups.check_available(Limits())  # no limit: nothing to check


def test_v2_limits_are_written_where_v2_keeps_them(tmp_path: Path) -> None:
    """A v2 hierarchy imitated by a directory: the controllers are handed down, the limits written, no swap."""
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    (tmp_path / "cgroup.subtree_control").write_text("cpu\n")
    step = StepCgroup(Limits(memory=32 * MiB, pids=10), found=[Hierarchy(str(tmp_path), 2)]).__enter__()
    (made,) = (Path(p).parent for p in step.procs)
    assert made.parent == tmp_path and made.name.startswith(f"pybuild-{os.getpid()}-")
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+memory +pids"
    assert (made / "memory.max").read_text() == str(32 * MiB)
    assert (made / "pids.max").read_text() == str(10 + cgroups.SANDBOX_TASKS)
    assert not (made / "memory.swap.max").exists()  # only written where the kernel has it (swap accounting on)
    (made / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert step.oom_killed()


# ------------------------------------------------------------------------------------ the real cgroupfs


def _system() -> list[Hierarchy]:
    return cgroups.hierarchies(Path("/proc/self/mountinfo").read_text(), Path("/proc/self/cgroup").read_text())


def _step_dirs() -> set[str]:
    return {
        os.path.join(top, name)
        for top, dirs, _ in os.walk("/sys/fs/cgroup")
        for name in dirs
        if name.startswith(cgroups.PREFIX)
    }


@pytest.fixture
def cgroupfs() -> Iterator[None]:
    require_root()
    before = _step_dirs()
    yield
    assert _step_dirs() <= before, "a step cgroup was left behind"


def _joined(step: StepCgroup, *argv: str) -> subprocess.Popen[bytes]:
    """A process started inside the step's cgroups, as the sandbox joins them."""

    def join() -> None:
        for procs in step.procs:
            with open(procs, "w") as f:
                f.write(str(os.getpid()))

    return subprocess.Popen(argv, preexec_fn=join, stdout=subprocess.PIPE)


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def test_limits_are_unavailable_where_no_cgroup_may_be_created(cgroupfs: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cgroups.os, "access", lambda path, mode: False)  # rootless, without a delegated cgroup
    with pytest.raises(cgroups.CgroupError, match="--memory needs a cgroup pybuild may create, and .* is not writable"):
        cgroups.check_available(Limits(memory=32 * MiB))


def test_a_step_cgroup_is_limited_and_removed(cgroupfs: None) -> None:
    limits = Limits(memory=32 * MiB, pids=20)
    cgroups.check_available(limits)
    with StepCgroup(limits) as step:
        dirs = [Path(p).parent for p in step.procs]
        assert dirs and all(d.name == dirs[0].name for d in dirs)
        values = {}
        for d in dirs:
            for name in ("memory.max", "memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "pids.max"):
                if (d / name).exists():
                    values[name] = (d / name).read_text().strip()
        assert values.get("memory.max", values.get("memory.limit_in_bytes")) == str(32 * MiB)
        assert values["pids.max"] == str(20 + cgroups.SANDBOX_TASKS)
        assert values.get("memory.memsw.limit_in_bytes", str(32 * MiB)) == str(32 * MiB)
        assert not step.oom_killed()
    assert not any(d.exists() for d in dirs)


def test_nothing_is_made_without_a_limit(cgroupfs: None) -> None:
    before = _step_dirs()
    with cgroups.step_cgroup(Limits()) as step:
        assert step is None and _step_dirs() == before


def test_every_process_left_in_the_cgroup_is_killed(cgroupfs: None) -> None:
    """Whatever is still inside when the step ends dies, an orphan of a double fork too, and the cgroup goes."""
    with StepCgroup(Limits(pids=50)) as step:
        direct = _joined(step, "sleep", "1000")
        forker = _joined(step, "sh", "-c", "sleep 1000 >/dev/null & echo $!")
        assert forker.stdout is not None
        orphan = int(forker.stdout.readline())
        forker.wait()
        assert not _gone(orphan) and direct.poll() is None
    assert direct.wait() == -signal.SIGKILL
    deadline = time.monotonic() + 10  # the orphan's new parent reaps it in its own time; killed, it is a zombie
    while not _gone(orphan) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _gone(orphan)


def test_the_oom_killer_is_noticed(cgroupfs: None) -> None:
    with StepCgroup(Limits(memory=32 * MiB)) as step:
        hog = _joined(step, sys.executable, "-c", "data = b'a' * (200 << 20)")
        assert hog.wait() == -signal.SIGKILL
        assert step.oom_killed()


def test_the_v2_kill_file_empties_a_cgroup(cgroupfs: None) -> None:
    """cgroup v2's ``cgroup.kill`` path (the hybrid machine's unified hierarchy has one with no controllers)."""
    unified = next((h for h in _system() if h.version == 2), None)
    if unified is None:
        pytest.skip("no cgroup v2 hierarchy is mounted")
    path = Path(unified.parents()[0]) / f"{cgroups.PREFIX}{os.getpid()}-0123abcd"
    path.mkdir()
    try:
        sleeper = subprocess.Popen(["sleep", "1000"])
        (path / "cgroup.procs").write_text(str(sleeper.pid))
        cgroups._kill_all(str(path), time.monotonic() + 5)
        assert sleeper.wait() == -signal.SIGKILL
    finally:
        deadline = time.monotonic() + 5
        while path.exists() and time.monotonic() < deadline:
            try:
                path.rmdir()
            except OSError:
                time.sleep(0.01)


def test_a_dead_engines_empty_cgroups_are_swept(cgroupfs: None) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    swept = next(h for h in _system() if h.version == 2 or h.controllers & {"memory", "pids"})
    parent = Path(swept.parents()[0])
    theirs = parent / f"{cgroups.PREFIX}{dead.pid}-deadbeef"
    ours = parent / f"{cgroups.PREFIX}{os.getpid()}-0badcafe"
    theirs.mkdir()
    ours.mkdir()
    try:
        assert str(theirs) in cgroups.sweep()
        assert not theirs.exists() and ours.exists()  # a live engine's cgroup stays
    finally:
        for path in (theirs, ours):
            if path.exists():
                path.rmdir()
