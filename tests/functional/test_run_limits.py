"""RUN's resource limits (``--memory``, ``--pids-limit``) in real builds, and the end of a step being the end of
everything it started: background processes, daemons and mounts do not outlive the RUN, with or without limits."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CLIResult, run_pybuild, step_states, write_context

from builder.cgroups import PREFIX

# Allocates ~200 MB of anonymous memory with busybox alone: tail holds the one 200 MB line it reads.
HOG = "head -c 200000000 /dev/zero | tr '\\0' a | tail -n1 > /dev/null"
FORKS = "for i in $(seq 50); do sleep 1 & done; wait"


def _step_cgroups() -> set[str]:
    return {
        os.path.join(top, name)
        for top, dirs, _ in os.walk("/sys/fs/cgroup")
        for name in dirs
        if name.startswith(PREFIX)
    }


@pytest.fixture(autouse=True)
def no_cgroup_is_left() -> Iterator[None]:
    before = _step_cgroups()
    yield
    assert _step_cgroups() <= before, "a step cgroup was left behind"


def build(ctx: Path, *options: str) -> CLIResult:
    return run_pybuild("build", "--progress", "plain", *options, str(ctx))


# ---------------------------------------------------------------------------------------------- the limits


def test_a_run_over_its_memory_limit_fails_saying_so(tmp_path: Path, busybox: str) -> None:
    ctx = write_context(tmp_path / "ctx", f"FROM busybox\nRUN echo small\nRUN {HOG}\n")
    limited = build(ctx, "--memory", "32m")
    assert limited.code == 1, limited
    (line,) = [line for line in limited.err.splitlines() if line.startswith("pybuild:")]
    assert line.startswith("pybuild: ") and "Dockerfile:3: process " in line
    assert line.endswith("did not complete successfully: exit code: 137: killed: out of memory (--memory 32m)")
    unlimited = build(ctx)
    assert unlimited.code == 0, unlimited


def test_limits_are_not_in_the_cache_key(tmp_path: Path, busybox: str) -> None:
    """As in docker: a step built without a limit is reused under one (and the other way round)."""
    ctx = write_context(tmp_path / "ctx", f"FROM busybox\nRUN {HOG}\n")
    assert build(ctx).code == 0
    again = build(ctx, "--memory", "32m", "--pids-limit", "5")
    assert again.code == 0, again
    assert step_states(again.err) == {f"RUN {HOG}": "CACHED"}


def test_a_run_over_its_pids_limit_cannot_fork(tmp_path: Path, busybox: str) -> None:
    ctx = write_context(tmp_path / "ctx", f"FROM busybox\nRUN {FORKS}\n")
    limited = build(ctx, "--pids-limit", "20")
    assert limited.code == 1, limited
    assert "can't fork" in limited.err and "Dockerfile:2: process " in limited.err
    assert build(ctx).code == 0


def test_a_pids_limit_counts_the_commands_processes_only(tmp_path: Path, busybox: str) -> None:
    """--pids-limit 1: the shell alone may run (the sandbox's own processes do not count), a fork is refused."""
    ctx = write_context(tmp_path / "ctx", "FROM busybox\nRUN echo alone > /alone\nRUN cat /alone | cat\n")
    result = build(ctx, "--pids-limit", "1")
    assert result.code == 1, result
    assert "can't fork" in result.err and "Dockerfile:3:" in result.err and "Dockerfile:2:" not in result.err


def test_pybuild_run_takes_the_same_limits(busybox: str) -> None:
    oom = run_pybuild("run", "--memory", "32m", "busybox", "sh", "-c", HOG)
    assert oom.code == 137, oom
    assert oom.err.strip().splitlines()[-1] == "pybuild: killed: out of memory (--memory 32m)"
    forks = run_pybuild("run", "--pids-limit", "20", "busybox", "sh", "-c", FORKS)
    assert forks.code != 0 and "can't fork" in forks.err
    assert run_pybuild("run", "--pids-limit", "-1", "busybox", "sh", "-c", FORKS).code == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--memory", "1k"), "argument --memory: Minimum memory limit allowed is 6MB"),
        (("--memory", "lots"), "argument --memory: invalid size: 'lots'"),
        (("--pids-limit", "many"), "argument --pids-limit: invalid pids limit: 'many'"),
        (("--pids-limit", "-5"), "argument --pids-limit: invalid pids limit: '-5'"),
    ],
)
def test_bad_limits_are_usage_errors(tmp_path: Path, options: tuple[str, ...], message: str) -> None:
    ctx = write_context(tmp_path / "ctx", "FROM scratch\n")
    for verb in (("build", *options, str(ctx)), ("run", *options, "busybox")):
        result = run_pybuild(*verb)
        assert result.code == 2, result
        (line,) = result.err.strip().splitlines()
        assert line.startswith(f"pybuild: {message}") and line.endswith(f"(see 'pybuild {verb[0]} --help')")


# --------------------------------------------------------------------------------- nothing outlives a RUN


def _running_with(marker: str) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(name))
        except OSError:
            continue
    return found


@pytest.mark.parametrize("options", [(), ("--pids-limit", "100", "--memory", "256m")], ids=["plain", "limited"])
def test_background_processes_die_with_their_run(tmp_path: Path, busybox: str, options: tuple[str, ...]) -> None:
    """A RUN that leaves a background job, a setsid daemon and a double-forked orphan behind ends when its command
    does (the build does not wait for them) and none of them is left on the host."""
    marker = f"pybuild-marker-{secrets.token_hex(8)}"
    started = (
        "i=0; until [ -e /s1 ] && [ -e /s2 ] && [ -e /s3 ]; do i=$((i+1)); [ $i -lt 200 ] || exit 9; sleep 0.05; done"
    )
    dockerfile = (
        "FROM busybox\n"
        f"RUN sh -c 'touch /s1; sleep 1000; : {marker}' & "
        f"setsid sh -c 'touch /s2; sleep 1000; : {marker}' > /dev/null 2>&1 & "
        f"( sh -c 'touch /s3; sleep 1000; : {marker}' & ) ; "
        f"{started}; echo all three started\n"
    )
    ctx = write_context(tmp_path / "ctx", dockerfile)
    result = build(ctx, *options)
    assert result.code == 0, result
    assert "all three started" in result.err
    assert _running_with(marker) == []


def _host_mounts() -> str:
    return Path("/proc/self/mountinfo").read_text()


def test_mounts_made_in_a_run_do_not_outlive_it(tmp_path: Path, busybox: str) -> None:
    """RUN cannot mount (no CAP_SYS_ADMIN); RUN --security=insecure can, in its own mount namespace, which goes
    with the step, even with a process still holding the mount."""
    refused, made = f"pybuild-refused-{secrets.token_hex(6)}", f"pybuild-mounted-{secrets.token_hex(6)}"
    dockerfile = (
        "FROM busybox\n"
        f"RUN mkdir -p /mnt/a && ! mount -t tmpfs {refused} /mnt/a 2>/dev/null && ! grep -q {refused} /proc/mounts\n"
        f"RUN --security=insecure mkdir -p /mnt/b && mount -t tmpfs {made} /mnt/b && grep {made} /proc/mounts "
        "&& cd /mnt/b && (sleep 1000 &)\n"
    )
    ctx = write_context(tmp_path / "ctx", dockerfile)
    result = build(ctx, "--allow", "security.insecure", "--pids-limit", "50")
    assert result.code == 0, result
    assert f"{made} /mnt/b tmpfs" in result.err  # it was mounted, inside
    mounts = _host_mounts()
    assert refused not in mounts and made not in mounts
