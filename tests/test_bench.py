"""bench/: the workloads generate what they promise, and the report judges each target from the numbers."""

from __future__ import annotations

from pathlib import Path

from bench.report import render, targets
from bench.workloads import APP_FILE, fresh_context, restore_app, touch_app, workloads


def _turns(cold: float, warm: float, incremental: float, layout: float, peak_kb: int = 50_000) -> list[dict]:
    return [
        {
            "cold": cold,
            "warm": warm,
            "incremental": incremental,
            "layout": layout,
            "peak_kb": peak_kb,
            "layers": 1,
            "layer_bytes": 1000,
        }
    ]


def _results(**workloads: dict) -> dict:
    return {
        "date": "2026-11-22 12:00 UTC",
        "command": "sudo .venv/bin/python -m bench.run",
        "machine": {
            "cpu": "x",
            "cpus": 2,
            "memory_gib": 24,
            "os": "Debian",
            "kernel": "6",
            "filesystem": "ext4",
            "python": "3.11",
        },
        "runs": 1,
        "scale": 1.0,
        "builders": {"pybuild": "abc", "buildkit": "20.10"},
        "skipped": {},
        "workloads": workloads,
    }


def test_targets_use_the_best_peer_and_the_issue_limits() -> None:
    w3 = {
        "name": "run-40",
        "summary": "",
        "steps": 40,
        "floors": {"run": [0.1]},
        "builders": {
            "pybuild": _turns(1.1, 0.3, 0.6, 1.2),
            "buildkit": _turns(2.0, 0.5, 1.0, 2.0),
            "classic": _turns(1.5, 0.7, 0.8, 1.9),
        },
    }
    found = {t: (m, ok) for t, m, ok in targets(_results(W3=w3))}
    assert found["W3 cold ≤ 0.8× best peer"] == ("0.73× (classic)", True)
    assert found["W3 warm ≤ 0.5× best peer"] == ("0.60× (buildkit)", False)
    assert found["W3 incremental ≤ 0.7× best peer"] == ("0.75× (classic)", False)
    assert found["W3 warm: pybuild's whole run < 0.5 s"] == ("0.30 s", True)
    assert found["W3 per-step overhead of a trivial RUN ≤ 25 ms"] == ("25 ms", True)
    assert found["W3 pybuild peak memory < 200 MB"] == ("49 MiB", True)
    text = render(_results(W3=w3))
    assert "| W3 warm ≤ 0.5× best peer | 0.60× (buildkit) | **no** |" in text
    assert "| pybuild ÷ best peer | **0.73×** (classic) |" in text


def test_w5_speedup_and_w2_floor() -> None:
    w5 = {
        "name": "stages-4",
        "summary": "",
        "steps": 4,
        "floors": {"run": [4.0]},
        "builders": {"pybuild": _turns(4.4, 0.2, 0.2, 4.5), "pybuild --jobs 1": [{"cold": 8.6, "peak_kb": 1}]},
    }
    w2 = {
        "name": "copy-1g",
        "summary": "",
        "steps": 0,
        "floors": {
            "store": [5.0],
            "layout": [20.0],
            "tar": [2.0],
            "sha256sum": [3.0],
            "gzip_1": [15.0],
            "zstd_T0": [2.0],
            "tar_bytes": [1e9],
            "gzip_bytes": [6e8],
            "zstd_bytes": [6e8],
        },
        "builders": {"pybuild": _turns(7.0, 0.2, 0.2, 27.0, peak_kb=300_000)},
    }
    found = {t: (m, ok) for t, m, ok in targets(_results(W5=w5, W2=w2))}
    assert found["W5 about 2× faster than a sequential run (--jobs 1)"] == ("1.95×", True)
    assert found["W2 COPY ≤ 1.3× its floor (store: tar + sha256)"] == ("1.40× (7.00 s)", False)
    assert found["W2 COPY + gzip layout ≤ 1.3× its floor (tar + sha256 + gzip -1)"][1] is False
    assert found["W2 pybuild peak memory < 200 MB"] == ("293 MiB", False)


def test_workloads_generate_their_contexts(tmp_path: Path) -> None:
    made = {w.key: w for w in workloads(0.02, stage_loops=1000)}
    assert sorted(made) == ["W1", "W2", "W3", "W4", "W5", "W6"]
    w1 = fresh_context(made["W1"], tmp_path, 0.02)
    assert len([p for p in w1.rglob("*") if p.is_file()]) == 6 * 100 + 2  # 6 packages, the app, the Dockerfile
    w3 = fresh_context(made["W3"], tmp_path, 0.02)
    assert (w3 / "Dockerfile").read_text().count("\nRUN ") == 40
    before = (w3 / APP_FILE).read_bytes()
    touch_app(w3, 1)
    assert (w3 / APP_FILE).read_bytes() != before
    restore_app(w3)
    assert (w3 / APP_FILE).read_bytes() == before
    w5 = (fresh_context(made["W5"], tmp_path, 0.02) / "Dockerfile").read_text()
    assert w5.count("FROM bench-busybox AS ") == 4 and w5.count("COPY --from=") == 4
