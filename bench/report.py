"""BENCHMARKS.md from ``bench/run.py``'s JSON: the tables, the floors, and every target of issue 10, met or not."""

from __future__ import annotations

import statistics
from pathlib import Path

NOTES = Path(__file__).resolve().parent / "notes.md"

PEERS = ("buildah", "buildkit", "classic")
MODES = ("cold", "warm", "incremental", "layout")


def _median(turns: list[dict], key: str) -> float | None:
    values = [t[key] for t in turns if key in t]
    return statistics.median(values) if values else None


def _span(turns: list[dict], key: str) -> str:
    values = [t[key] for t in turns if key in t]
    if not values:
        return "–"
    mid = statistics.median(values)
    if len(values) == 1:
        return _secs(mid)
    return f"{_secs(mid)} ({_secs(min(values), unit=False)}–{_secs(max(values), unit=False)})"


def _secs(value: float, unit: bool = True) -> str:
    text = f"{value:.2f}" if value < 10 else f"{value:.1f}"
    return f"{text} s" if unit else text


def best_peer(builders: dict[str, list[dict]], key: str) -> tuple[str, float] | None:
    found = [(name, _median(turns, key)) for name, turns in builders.items() if name in PEERS]
    found = [(n, v) for n, v in found if v is not None]
    return min(found, key=lambda nv: nv[1]) if found else None


def ratio(builders: dict[str, list[dict]], key: str) -> tuple[float, str] | None:
    ours = _median(builders.get("pybuild", []), key)
    best = best_peer(builders, key)
    if ours is None or best is None:
        return None
    return ours / best[1], best[0]


def _mib(kb: float) -> str:
    return f"{kb / 1024:.0f} MiB"


def _bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def workload_table(key: str, entry: dict) -> list[str]:
    builders: dict[str, list[dict]] = entry["builders"]
    lines = [
        f"### {key} {entry['name']}: {entry['summary']}",
        "",
        "| builder | cold | warm | incremental | cold + OCI layout | layers added (gzip) | peak memory |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, turns in builders.items():
        layers = _median(turns, "layer_bytes")
        count = _median(turns, "layers")
        peak = max((t["peak_kb"] for t in turns), default=0)
        lines.append(
            f"| {name} | {_span(turns, 'cold')} | {_span(turns, 'warm')} | {_span(turns, 'incremental')} "
            f"| {_span(turns, 'layout')} | "
            + (f"{count:.0f}: {_bytes(layers)}" if layers is not None else "–")
            + f" | {_mib(peak)} |"
        )
    cells = []
    for mode in MODES:
        r = ratio(builders, mode)
        cells.append(f"**{r[0]:.2f}×** ({r[1]})" if r else "–")
    lines.append(f"| pybuild ÷ best peer | {' | '.join(cells)} | | |")
    lines.append("")
    floors = entry.get("floors", {})
    parts = []
    if "tar" in floors:
        f = {k: statistics.median(v) for k, v in floors.items()}
        parts.append(
            f"copy floor: `tar -c` {_secs(f['tar'])} + `sha256sum` {_secs(f['sha256sum'])} = {_secs(f['store'])}"
            f" (store); + `gzip -1` {_secs(f['gzip_1'])} = {_secs(f['layout'])} (layout); `zstd -T0`"
            f" {_secs(f['zstd_T0'])}; {_bytes(f['tar_bytes'])} of tar, {_bytes(f['gzip_bytes'])} gzip -1"
        )
    if "run" in floors:
        parts.append(f"RUN commands natively in a chroot: {_secs(statistics.median(floors['run']))}")
    ours = _median(builders.get("pybuild", []), "cold")
    floor = _floor(entry)
    if ours is not None and floor is not None:
        parts.append(f"pybuild's overhead (cold − floor): {_secs(ours - floor)}")
    if parts:
        lines += ["Floors: " + "; ".join(parts) + ".", ""]
    return lines


def _floor(entry: dict) -> float | None:
    floors = entry.get("floors", {})
    medians = [statistics.median(floors[key]) for key in ("store", "run") if key in floors]
    return sum(medians) if medians else None


def targets(results: dict) -> list[tuple[str, str, bool | None]]:
    """(target, what was measured, met) for every target of the issue that this run's data can judge."""
    found: list[tuple[str, str, bool | None]] = []
    workloads: dict[str, dict] = results["workloads"]

    def per_workload(mode: str, limit: float, label: str) -> None:
        for key, entry in workloads.items():
            r = ratio(entry["builders"], mode)
            if r is None:
                continue
            found.append((f"{key} {label} ≤ {limit}× best peer", f"{r[0]:.2f}× ({r[1]})", r[0] <= limit))

    per_workload("cold", 0.8, "cold")
    per_workload("layout", 0.8, "cold + OCI layout")
    per_workload("warm", 0.5, "warm")
    for key in ("W1", "W3"):
        entry = workloads.get(key)
        warm = _median(entry["builders"].get("pybuild", []), "warm") if entry else None
        if warm is not None:
            found.append((f"{key} warm: pybuild's whole run < 0.5 s", _secs(warm), warm < 0.5))
    per_workload("incremental", 0.7, "incremental")
    w3 = workloads.get("W3")
    if w3 and "run" in w3.get("floors", {}):
        cold = _median(w3["builders"].get("pybuild", []), "cold")
        if cold is not None:
            per_step = (cold - statistics.median(w3["floors"]["run"])) / w3["steps"] * 1000
            found.append(("W3 per-step overhead of a trivial RUN ≤ 25 ms", f"{per_step:.0f} ms", per_step <= 25))
    w2 = workloads.get("W2")
    if w2:
        for mode, floor_key, label in (
            ("cold", "store", "W2 COPY ≤ 1.3× its floor (store: tar + sha256)"),
            ("layout", "layout", "W2 COPY + gzip layout ≤ 1.3× its floor (tar + sha256 + gzip -1)"),
        ):
            ours = _median(w2["builders"].get("pybuild", []), mode)
            if ours is None or floor_key not in w2.get("floors", {}):
                continue
            floor = statistics.median(w2["floors"][floor_key])
            found.append((label, f"{ours / floor:.2f}× ({_secs(ours)})", ours <= 1.3 * floor))
    for key, entry in workloads.items():
        turns = entry["builders"].get("pybuild", [])
        if turns:
            peak = max(t["peak_kb"] for t in turns)
            found.append((f"{key} pybuild peak memory < 200 MB", _mib(peak), peak * 1024 < 200e6))
    w5 = workloads.get("W5")
    if w5:
        parallel = _median(w5["builders"].get("pybuild", []), "cold")
        serial = _median(w5["builders"].get("pybuild --jobs 1", []), "cold")
        if parallel and serial:
            speedup = serial / parallel
            found.append(("W5 about 2× faster than a sequential run (--jobs 1)", f"{speedup:.2f}×", speedup >= 1.8))
    return found


def render(results: dict) -> str:
    m = results["machine"]
    lines = [
        "# Benchmarks",
        "",
        "pybuild against buildah (`--isolation chroot --layers`), Docker's BuildKit and Docker's classic builder,",
        "on the same machine in the same run, builders taking turns run by run. Generated by `bench/run.py`",
        "(workloads in `bench/workloads.py`, floors in `bench/floors.py`); raw results in `bench/results.json`.",
        "",
        f"- Run: {results['date']}, {results['runs']} runs per builder and workload, scale {results['scale']},"
        f" {results.get('seconds', 0) // 60} min in all. Repeat with `{results['command'].strip()}`.",
        f"- Machine: {m['cpu']}, {m['cpus']} CPUs, {m['memory_gib']} GiB, {m['os']}, kernel {m['kernel']},"
        f" {m['filesystem']}; Python {m['python']}.",
        "- Builders: "
        + ", ".join(f"{name} {version}" for name, version in results["builders"].items())
        + (
            "; skipped: " + ", ".join(f"{n} ({why})" for n, why in results["skipped"].items())
            if results.get("skipped")
            else ""
        )
        + ".",
        "",
        "Times are medians with (min–max). **cold**: no step cache, base present; **warm**: rebuilt with nothing",
        "changed; **incremental**: one source file edited; **cold + OCI layout**: from cold to an OCI layout with",
        "gzip layers, as each builder's users write one (pybuild: one cold `build -o type=oci,tar=false`, which",
        "compresses layers while later steps run; peers: the cold build, then `skopeo copy --dest-compress`).",
        "Peak memory: the largest resident set of the build's processes; for Docker, dockerd's plus containerd's.",
        "",
        "## Targets",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    for target, measured, met in targets(results):
        lines.append(f"| {target} | {measured} | {'yes' if met else '**no**'} |")
    lines += ["", "## Workloads", ""]
    for key, entry in results["workloads"].items():
        lines += workload_table(key, entry)
    if NOTES.exists():
        lines += [NOTES.read_text().rstrip(), ""]
    return "\n".join(lines)
