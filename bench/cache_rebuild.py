"""Benchmark: fully cached rebuilds, the step cache's promise (issue 5).

Workloads, generated at run time in a scratch directory (nothing large is committed):

- ``steps40``: ``FROM busybox`` and 40 RUN steps;
- ``copy30k``: one COPY of a node_modules-like tree of 30,000 files (300 packages x 100 files, 0.1-20 kB each,
  about 300 MB) and a RUN after it;
- ``copy30k-touched``: the same after ``touch`` of every file (new mtimes and ctimes: the stat cache must re-hash,
  the key must not change);

Each is built once cold, then rebuilt ``--runs`` times with nothing changed. Every rebuild runs pybuild in its own
process, as a user does, and reports its wall time (interpreter start, imports and all: pybuild's own time, since
a fully cached build runs nothing) and the bytes the process read through read(2) (``rchar`` of /proc/self/io), to
show that no layer is read. Results go to standard output as a table and to ``--json FILE``.

Run as root (RUN needs it) from the repository: ``sudo .venv/bin/python bench/cache_rebuild.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Runs pybuild's CLI in this process, then reports what the process read (the wrapper adds only its own start).
_WRAPPER = """
import sys
from builder.cli import main
code = main(sys.argv[1:])
io = dict(line.split(": ") for line in open("/proc/self/io").read().splitlines())
print("RCHAR", io["rchar"], file=sys.stderr)
sys.exit(code)
"""


def run(args: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _WRAPPER, *args], env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"pybuild {' '.join(args)} failed:\n{proc.stderr}")
    rchar = int(next(line.split()[1] for line in proc.stderr.splitlines() if line.startswith("RCHAR ")))
    return elapsed, rchar, proc.stderr


def make_tree(root: Path, packages: int = 300, files: int = 100, seed: int = 5) -> int:
    rng = random.Random(seed)
    total = 0
    for p in range(packages):
        directory = root / "node_modules" / f"pkg{p:03d}" / "lib"
        directory.mkdir(parents=True)
        for f in range(files):
            size = rng.randint(100, 20_000)
            (directory / f"f{f:03d}.js").write_bytes(rng.randbytes(size))
            total += size
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="rebuilds per workload (default 5)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: RUN steps need it")
    # Installed packages carry compiled bytecode; compile ours too, or every run would pay for compiling.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "builder"), str(REPO / "oci")], check=True)
    scratch = Path(tempfile.mkdtemp(prefix="pybuild-bench-"))
    env = {**os.environ, "PYBUILD_ROOT": str(scratch / "store"), "PYTHONPATH": str(REPO)}
    env.pop("SOURCE_DATE_EPOCH", None)
    results = []
    try:
        rootfs = scratch / "busybox.tar"
        subprocess.run(["bash", str(REPO / "testdata/busybox-rootfs.sh"), str(rootfs)], check=True, capture_output=True)
        run(["import", "-q", str(rootfs), "busybox"], env)

        steps = scratch / "steps40"
        steps.mkdir()
        (steps / "Dockerfile").write_text("FROM busybox\n" + "".join(f"RUN echo {n} > /f{n}\n" for n in range(40)))

        copy = scratch / "copy30k"
        copy.mkdir()
        size = make_tree(copy)
        (copy / "Dockerfile").write_text("FROM busybox\nCOPY node_modules /app/node_modules\nRUN ls /app | wc -l\n")
        time.sleep(2.1)  # files younger than 2 s are hashed but not remembered (racy-clean): let them age

        workloads = [("steps40", steps, None), ("copy30k", copy, None), ("copy30k-touched", copy, "touch")]
        for name, ctx, change in workloads:
            if change == "touch":
                subprocess.run(["find", str(ctx / "node_modules"), "-exec", "touch", "{}", "+"], check=True)
                time.sleep(2.1)
            cold, cold_read, _ = run(["build", "-q", str(ctx)], env)
            times, reads = [], []
            for _ in range(args.runs):
                elapsed, rchar, err = run(["build", "--progress", "plain", str(ctx)], env)
                steps = set(re.findall(r"^#(\d+) \[[^\]]*\] (?!FROM )", err, re.M))
                if not steps or steps != set(re.findall(r"^#(\d+) CACHED$", err, re.M)):
                    raise SystemExit(f"{name}: a rebuild ran a step:\n{err}")
                times.append(elapsed)
                reads.append(rchar)
            results.append(
                {
                    "workload": name,
                    "first_build_s": round(cold, 3),
                    "first_build_read_bytes": cold_read,
                    "rebuild_median_s": round(statistics.median(times), 3),
                    "rebuild_min_s": round(min(times), 3),
                    "rebuild_max_s": round(max(times), 3),
                    "rebuild_read_bytes_median": int(statistics.median(reads)),
                    "runs": args.runs,
                }
            )
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    machine = {
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
        "copy30k_bytes": size,
    }
    print(f"machine: {machine}")
    print(f"{'workload':18} {'first build':>12} {'rebuild median':>15} {'min-max':>14} {'rebuild reads':>14}")
    for r in results:
        span = f"{r['rebuild_min_s']:.2f}-{r['rebuild_max_s']:.2f}s"
        reads = f"{r['rebuild_read_bytes_median'] / 1e6:.1f} MB"
        print(f"{r['workload']:18} {r['first_build_s']:>11.2f}s {r['rebuild_median_s']:>14.2f}s {span:>14} {reads:>14}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
