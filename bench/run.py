"""Benchmark: pybuild against buildah, BuildKit and Docker's classic builder, side by side (issue 10).

Every workload of ``bench/workloads.py`` (generated at run time) is built by every builder that runs here, the
builders taking turns run by run (the order rotates, so no builder always goes first). Each turn is, for one
builder: forget its step cache and built images (bases kept; untimed), then

- **cold**: build (nothing cached, base present);
- **cold + layout**: the image as an OCI layout with gzip layers, from cold, the second comparison ("an OCI
  layout with compressed layers written"). The peers: the cold build, then ``skopeo copy --dest-compress``.
  pybuild writes the layout in the build command itself (``build -o type=oci,tar=false``), so its turn ends
  with a second cold build, after a reset, that does so;
- **warm**: build again, nothing changed;
- **incremental**: edit one source file (``app/main.py``), build again; the edit is then undone.

Reported: medians with min-max, ratios to the best peer, layer bytes (gzip, in the layout), peak memory, and the
floors (``bench/floors.py``). Raw results go to ``--json`` (default ``bench/results.json``) and the table to
``--markdown`` (default ``BENCHMARKS.md``); ``--render`` rewrites the table from a JSON file.

Run as root from the repository (RUN needs it; dockerd is started when none runs):

    sudo .venv/bin/python -m bench.run                 # everything, 3 runs (about an hour)
    sudo .venv/bin/python -m bench.run --workloads W3 --builders pybuild,buildkit --runs 1 --scale 0.1
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import sys
import time
from pathlib import Path

from bench.builders import REPO, BenchError, Buildah, Builder, Docker, Dockerd, Pybuild, layout_layer_bytes, quiet
from bench.floors import copy_floor, run_floor
from bench.report import render
from bench.workloads import BUSYBOX, DEBIAN, LOOP, Workload, fresh_context, restore_app, touch_app, workloads

ALL_BUILDERS = ("pybuild", "buildah", "buildkit", "classic")
BASE_LAYERS = 1  # every base is made by ``pybuild import`` (make_bases): one layer, below what a build adds


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def make_bases(work: Path, needed: set[str]) -> tuple[dict[str, Path], dict[str, Path]]:
    """Root filesystem tarballs and OCI archives of the bases: busybox-static's, and a Debian minbase."""
    bases = work / "bases"
    bases.mkdir(parents=True, exist_ok=True)
    rootfs: dict[str, Path] = {}
    if BUSYBOX in needed:
        rootfs[BUSYBOX] = bases / "busybox.tar"
        if not rootfs[BUSYBOX].exists():
            quiet(["sh", str(REPO / "testdata/busybox-rootfs.sh"), str(rootfs[BUSYBOX])])
    if DEBIAN in needed:
        rootfs[DEBIAN] = bases / "debian.tar"
        if not rootfs[DEBIAN].exists():
            say("making the Debian base (mmdebstrap --variant=minbase bookworm)")
            partial = bases / "debian.part.tar"  # mmdebstrap picks its output format from the name
            quiet(["mmdebstrap", "--variant=minbase", "--quiet", "bookworm", str(partial)])
            partial.rename(rootfs[DEBIAN])
    env = {**os.environ, "PYBUILD_ROOT": str(bases / "store"), "PYTHONPATH": str(REPO)}
    archives: dict[str, Path] = {}
    for name, tarball in rootfs.items():
        archives[name] = bases / f"{name}.oci.tar"
        if not archives[name].exists():
            quiet([sys.executable, "-m", "builder", "import", "-q", str(tarball), name, "--change", 'CMD ["sh"]'], env)
            partial = bases / f"{name}.oci.tar.part"
            quiet([sys.executable, "-m", "builder", "save", "--format", "oci", "-o", str(partial), name], env)
            partial.rename(archives[name])
    return rootfs, archives


def calibrate(rootfs: Path, work: Path, seconds: float) -> int:
    """The loop count that keeps one CPU busy for about ``seconds`` in busybox sh here."""
    probe = Workload("calibrate", "", "", BUSYBOX, lambda c, s: None, runs=(LOOP.format(n=200_000),))
    context = work / "ctx-calibrate"
    (context / "app").mkdir(parents=True, exist_ok=True)
    elapsed = min(run_floor(probe, context, rootfs, work) for _ in range(2))
    return max(10_000, int(200_000 * seconds / elapsed))


def machine() -> dict[str, object]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    memory = next(
        line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
    )
    release = (
        dict(line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line)
        .get("PRETTY_NAME", "")
        .strip('"')
    )
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gib": round(int(memory) / (1 << 20), 1),
        "kernel": platform.release(),
        "os": release,
        "python": platform.python_version(),
        "filesystem": quiet(["stat", "-f", "-c", "%T", str(REPO)], check=False).strip(),
    }


def tag_for(workload: Workload, builder: Builder) -> str:
    return "bench-" + re.sub(r"[^a-z0-9]+", "-", f"{workload.key} {builder.name}".lower()).strip("-")


def one_turn(builder: Builder, workload: Workload, context: Path, work: Path, run: int, cold_only: bool) -> dict:
    tag = tag_for(workload, builder)
    layout = work / "layout"
    builder.reset()
    restore_app(context)
    turn: dict[str, object] = {}
    cold = builder.build(context, tag)
    turn["cold"], peaks = cold.seconds, [cold.peak_kb]
    if cold_only:
        turn["peak_kb"] = max(peaks)
        return turn
    if not builder.direct_layout:
        shutil.rmtree(layout, ignore_errors=True)
        exported = builder.export(tag, layout)
        turn["export"], turn["layout"] = exported.seconds, cold.seconds + exported.seconds
        turn["layers"], turn["layer_bytes"], turn["media_types"] = layout_layer_bytes(layout, BASE_LAYERS)
        shutil.rmtree(layout, ignore_errors=True)
        peaks.append(exported.peak_kb)
    warm = builder.build(context, tag)
    turn["warm"] = warm.seconds
    touch_app(context, run)
    incremental = builder.build(context, tag)
    restore_app(context)
    turn["incremental"] = incremental.seconds
    peaks += [warm.peak_kb, incremental.peak_kb]
    if builder.direct_layout:  # cold again, the layout written by the build command itself
        builder.reset()
        shutil.rmtree(layout, ignore_errors=True)
        built = builder.build_layout(context, tag, layout)
        turn["layout"] = built.seconds
        turn["layers"], turn["layer_bytes"], turn["media_types"] = layout_layer_bytes(layout, BASE_LAYERS)
        shutil.rmtree(layout, ignore_errors=True)
        peaks.append(built.peak_kb)
    turn["peak_kb"] = max(peaks)
    return turn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workloads", default="W1,W2,W3,W4,W5,W6", help="comma-separated keys (default: all)")
    parser.add_argument("--builders", default=",".join(ALL_BUILDERS), help="comma-separated (default: all)")
    parser.add_argument("--scale", type=float, default=1.0, help="shrink sizes and counts, to try the runner out")
    parser.add_argument("--stage-seconds", type=float, default=3.0, help="CPU seconds of each W5 stage")
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/pybuild-bench"), help="scratch directory")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results.json")
    parser.add_argument("--markdown", type=Path, default=REPO / "BENCHMARKS.md")
    parser.add_argument("--render", type=Path, metavar="JSON", help="only write --markdown from this JSON file")
    args = parser.parse_args(argv)
    if args.render:
        args.markdown.write_text(render(json.loads(args.render.read_text())))
        return 0
    if os.geteuid() != 0:
        parser.error("run as root (RUN steps need it)")
    keys = [k.strip().upper() for k in args.workloads.split(",") if k.strip()]
    names = [b.strip() for b in args.builders.split(",") if b.strip()]
    unknown = [n for n in names if n not in ALL_BUILDERS]
    if unknown:
        parser.error(f"unknown builders: {', '.join(unknown)}")
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()

    chosen_keys = set(keys)
    needed = {BUSYBOX} | ({DEBIAN} if "W6" in chosen_keys else set())
    try:
        rootfs, archives = make_bases(work, needed)
        loops = calibrate(rootfs[BUSYBOX], work, args.stage_seconds) if "W5" in chosen_keys else 0
    except BenchError as err:
        print(f"bench: {err}", file=sys.stderr)
        return 1
    chosen = [w for w in workloads(args.scale, loops) if w.key in chosen_keys]

    dockerd = Dockerd()
    every: dict[str, Builder] = {
        "pybuild": Pybuild(),
        "buildah": Buildah(),
        "buildkit": Docker(True, dockerd),
        "classic": Docker(False, dockerd),
    }
    builders: list[Builder] = []
    skipped: dict[str, str] = {}
    for name in names:
        reason = every[name].unavailable()
        if reason:
            skipped[name] = reason
            say(f"{name}: skipped ({reason})")
        else:
            builders.append(every[name])
    # W5 also runs pybuild --jobs 1, cold only: the sequential run its speedup is measured against.
    sequential: list[Builder] = [Pybuild(jobs=1)] if "W5" in chosen_keys and "pybuild" in names else []
    results: dict[str, object] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "sudo .venv/bin/python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "runs": args.runs,
        "scale": args.scale,
        "stage_loops": loops,
        "skipped": skipped,
        "builders": {},
        "workloads": {},
    }
    try:
        for builder in builders:
            say(f"{builder.name}: loading the bases")
            builder.setup(work, {name: archives[name] for name in needed})
            results["builders"][builder.name] = builder.version()  # type: ignore[index]
        for builder in sequential:
            builder.setup(work, {})
        for workload in chosen:
            say(f"{workload.key} {workload.name}: generating")
            context = fresh_context(workload, work, args.scale)
            entry: dict[str, object] = {"name": workload.name, "summary": workload.summary, "steps": workload.steps}
            floors: dict[str, list] = {}
            per_builder: dict[str, list[dict]] = {b.name: [] for b in builders}
            extra = sequential if workload.key == "W5" else []
            for b in extra:
                per_builder[b.name] = []
            for run in range(args.runs):
                if workload.copied:
                    for k, v in copy_floor(context, workload.copied, work).items():
                        floors.setdefault(k, []).append(v)
                if workload.runs:
                    floors.setdefault("run", []).append(run_floor(workload, context, rootfs[workload.base], work))
                order = builders[run % len(builders) :] + builders[: run % len(builders)] + extra
                for builder in order:
                    say(f"{workload.key} run {run + 1}/{args.runs}: {builder.name}")
                    turn = one_turn(builder, workload, context, work, run, cold_only=builder in extra)
                    per_builder[builder.name].append(turn)
            entry["floors"] = floors
            entry["builders"] = per_builder
            results["workloads"][workload.key] = entry  # type: ignore[index]
            results["seconds"] = round(time.time() - started)
            args.json.write_text(json.dumps(results, indent=1) + "\n")
            args.markdown.write_text(render(results))
    except BenchError as err:
        print(f"bench: {err}", file=sys.stderr)
        return 1
    finally:
        for builder in builders:
            builder.close()
    say(f"done in {time.time() - started:.0f} s: {args.json}, {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
