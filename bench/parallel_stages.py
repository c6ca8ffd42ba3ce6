"""Benchmark: independent stages built at once (issue 8, deliverable 6).

The workload, generated at run time: four independent stages, each ``FROM busybox`` and one RUN that keeps a CPU
busy for about ``--seconds`` (a shell arithmetic loop, calibrated on this machine first), and a final stage that
copies one file from each. It is built with ``--no-cache`` (so every RUN runs) once with ``--jobs 1`` and once
with the default (one job per CPU), alternating, ``--runs`` times each, with ``SOURCE_DATE_EPOCH`` set, and the two
image IDs are compared: parallel stages must not change the result.

On a 2-core machine the promise is about 2T for four stages of T seconds (against 4T one after another).
Results go to standard output and, with ``--json FILE``, to a file (bench/results-parallel.json holds the last run).

Run as root (RUN needs it) from the repository: ``sudo .venv/bin/python bench/parallel_stages.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOOP = "i=0; while [ $i -lt {n} ]; do i=$((i+1)); done"


def pybuild(args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "builder", *args], env=env, capture_output=True, text=True, cwd=REPO)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"pybuild {' '.join(args)} failed:\n{proc.stderr}")
    return elapsed


def calibrate(env: dict[str, str], seconds: float) -> int:
    """The loop count that keeps one CPU busy for about ``seconds`` inside a container."""
    n = 100_000
    timed = _loop_time(env, n)
    return max(10_000, int(n * seconds / timed))


def _loop_time(env: dict[str, str], n: int) -> float:
    """Seconds the loop takes in a container: a run of it minus a run of ``true`` (the container's own cost)."""

    def timed(script: str) -> float:
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "builder", "run", "-q", "busybox", "sh", "-c", script],
            env=env,
            capture_output=True,
            cwd=REPO,
            check=True,
        )
        return time.perf_counter() - started

    return max(0.01, min(timed(LOOP.format(n=n)) for _ in range(2)) - min(timed("true") for _ in range(2)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="CPU seconds per stage (T)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "builder"), str(REPO / "oci")], check=True)
    scratch = Path(tempfile.mkdtemp(prefix="pybuild-bench-"))
    try:
        env = {**os.environ, "PYBUILD_ROOT": str(scratch / "store"), "SOURCE_DATE_EPOCH": "1700000000"}
        rootfs = scratch / "busybox.tar"
        subprocess.run(["bash", str(REPO / "testdata/busybox-rootfs.sh"), str(rootfs)], check=True)
        pybuild(["import", "-q", str(rootfs), "busybox"], env)
        n = calibrate(env, args.seconds)
        context = scratch / "ctx"
        context.mkdir()
        names = ["one", "two", "three", "four"]
        stages = "".join(f"FROM busybox AS {name}\nRUN {LOOP.format(n=n)}; echo {name} > /{name}\n" for name in names)
        final = "FROM busybox\n" + "".join(f"COPY --from={name} /{name} /{name}\n" for name in names)
        (context / "Dockerfile").write_text(stages + final)
        per_stage = _loop_time(env, n)
        times: dict[str, list[float]] = {"jobs=1": [], "default": []}
        ids: dict[str, set[str]] = {"jobs=1": set(), "default": set()}
        for _ in range(args.runs):
            for label, extra in (("jobs=1", ["--jobs", "1"]), ("default", [])):
                iid = scratch / f"{label}.iid"
                times[label].append(
                    pybuild(["build", "--no-cache", "-q", "--iidfile", str(iid), *extra, str(context)], env)
                )
                ids[label].add(iid.read_text())
        same = len(ids["jobs=1"] | ids["default"]) == 1
        sequential, parallel = statistics.median(times["jobs=1"]), statistics.median(times["default"])
        result = {
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "stage_cpu_seconds": round(per_stage, 3),
            "runs": args.runs,
            "jobs_1": {
                "median": round(sequential, 3),
                "min": round(min(times["jobs=1"]), 3),
                "max": round(max(times["jobs=1"]), 3),
            },
            "default": {
                "median": round(parallel, 3),
                "min": round(min(times["default"]), 3),
                "max": round(max(times["default"]), 3),
            },
            "speedup": round(sequential / parallel, 2),
            "parallel_over_T": round(parallel / per_stage, 2),
            "same_image": same,
        }
        print(f"one stage's RUN: {per_stage:.2f} s of CPU (T); {os.cpu_count()} CPUs")
        print(f"--jobs 1: median {sequential:.2f} s ({sequential / per_stage:.1f} T)")
        print(f"default:  median {parallel:.2f} s ({parallel / per_stage:.1f} T), {sequential / parallel:.2f}x faster")
        print(f"same image ID both ways: {same}")
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
        return 0 if same else 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
