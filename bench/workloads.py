"""The workloads of ``bench/run.py``, generated at run time (nothing large is committed).

Each workload is a build context (a Dockerfile and its sources) on one of two bases, the change that makes its
incremental rebuild (one source file edited), and the work a builder cannot avoid (its floor): the bytes a COPY
must read, hash and compress, and the RUN commands themselves, run natively in a chroot of the same base.

- W1 ``copy-30k``: ``COPY . /app`` of a node_modules-like tree, 30,000 files of 0.1-20 kB (about 300 MB);
- W2 ``copy-1g``: ``COPY`` of one 1 GiB file, half random bytes and half text, then a small app;
- W3 ``run-40``: 40 trivial RUN steps, the app copied after the 20th;
- W4 ``run-20k``: a RUN creating 20,000 files and, after the app, a RUN deleting half of them;
- W5 ``stages-4``: four independent stages, each a CPU-bound RUN of about ``stage_seconds``, copied into a final one;
- W6 ``debian-python``: a Debian base, ``apt-get install python3`` and an app compiled by python3.

``scale`` shrinks the file counts and sizes (for trying the runner out); the published table uses 1.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

BUSYBOX = "bench-busybox"
DEBIAN = "bench-debian"
# A loop that keeps one CPU busy in busybox sh; W5 calibrates n.
LOOP = "i=0; while [ $i -lt {n} ]; do i=$((i+1)); done"
APP_FILE = "app/main.py"
_APP = "import sys\n\n\ndef main():\n    print('hello from the benchmark app')\n\n\nmain()\n"


@dataclass(frozen=True)
class Workload:
    key: str  # W1 ... W6
    name: str
    summary: str
    base: str  # BUSYBOX or DEBIAN
    generate: Callable[[Path, float], None]  # (context, scale): writes the context
    copied: tuple[str, ...] = ()  # context paths the big COPY reads: the copy floor's input
    runs: tuple[str, ...] = ()  # the RUN commands, in order: the run floor
    parallel_runs: bool = False  # the RUN commands are independent stages (the floor runs them one per CPU)
    steps: int = 0  # RUN steps, for the per-step overhead


def _write_app(context: Path) -> None:
    (context / "app").mkdir(parents=True, exist_ok=True)
    (context / APP_FILE).write_text(_APP)


def touch_app(context: Path, run: int) -> None:
    """The incremental change: one source file edited (its content, not just its time)."""
    (context / APP_FILE).write_text(_APP + f"# edit {run}\n")


def restore_app(context: Path) -> None:
    (context / APP_FILE).write_text(_APP)


def _text_pool(rng: random.Random, size: int) -> bytes:
    words = [
        "function",
        "return",
        "const",
        "require",
        "module",
        "exports",
        "undefined",
        "prototype",
        "callback",
        "=>",
        "{",
        "}",
        "(",
        ");",
        "\n",
        "  ",
        "if",
        "else",
        "null",
        "this",
    ] + ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 12))) for _ in range(400)]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words).encode() + b" "
    return bytes(out[:size])


def gen_copy_30k(context: Path, scale: float) -> None:
    """300 packages x 100 files of 0.1-20 kB of JavaScript-like text (compressible, as node_modules is)."""
    rng = random.Random(30_000)
    pool = _text_pool(rng, 1 << 20)
    packages = max(1, round(300 * scale))
    for p in range(packages):
        package = context / "node_modules" / f"pkg-{p:03d}"
        (package / "lib").mkdir(parents=True)
        (package / "package.json").write_text(f'{{"name": "pkg-{p:03d}", "version": "1.0.{p}"}}\n')
        for f in range(99):
            size = rng.randint(100, 20_000)
            start = rng.randrange(0, len(pool) - size)
            (package / "lib" / f"m{f:02d}.js").write_bytes(pool[start : start + size])
    _write_app(context)
    (context / "Dockerfile").write_text(f"FROM {BUSYBOX}\nCOPY . /app\n")


def gen_copy_1g(context: Path, scale: float) -> None:
    """``big.bin``: half random bytes (incompressible), half text; then the app."""
    rng = random.Random(1 << 30)
    half = max(1 << 20, int((512 << 20) * scale))
    pool = _text_pool(rng, 1 << 20)
    with open(context / "big.bin", "wb") as f:
        left = half
        while left:
            n = min(left, 1 << 20)
            f.write(os.urandom(n))
            left -= n
        left = half
        while left:
            n = min(left, len(pool))
            f.write(pool[:n])
            left -= n
    _write_app(context)
    (context / "Dockerfile").write_text(f"FROM {BUSYBOX}\nCOPY big.bin /data/big.bin\nCOPY app /app\n")


def _run_40_commands() -> tuple[str, ...]:
    return tuple(f"echo step {i} > /tmp/step-{i}" for i in range(1, 41))


def gen_run_40(context: Path, scale: float) -> None:
    runs = _run_40_commands()
    lines = [f"FROM {BUSYBOX}"]
    lines += [f"RUN {c}" for c in runs[:20]]
    lines.append("COPY app /app")
    lines += [f"RUN {c}" for c in runs[20:]]
    _write_app(context)
    (context / "Dockerfile").write_text("\n".join(lines) + "\n")


def _run_20k_commands(scale: float) -> tuple[str, str]:
    n = max(100, round(20_000 * scale))
    create = f"mkdir -p /data && cd /data && i=0; while [ $i -lt {n} ]; do echo $i > f$i; i=$((i+1)); done"
    delete = "cd /data && rm -f f*[02468]"
    return create, delete


def gen_run_20k(context: Path, scale: float) -> None:
    create, delete = _run_20k_commands(scale)
    _write_app(context)
    (context / "Dockerfile").write_text(f"FROM {BUSYBOX}\nRUN {create}\nCOPY app /app\nRUN {delete}\n")


def stage_commands(loops: int) -> tuple[str, ...]:
    return tuple(f"{LOOP.format(n=loops)}; echo {s} > /out-{s}" for s in ("one", "two", "three", "four"))


def gen_stages(loops: int) -> Callable[[Path, float], None]:
    def generate(context: Path, scale: float) -> None:
        commands = stage_commands(loops)
        names = ("one", "two", "three", "four")
        text = "".join(f"FROM {BUSYBOX} AS {n}\nRUN {c}\n" for n, c in zip(names, commands, strict=True))
        text += f"FROM {BUSYBOX}\n" + "".join(f"COPY --from={n} /out-{n} /out-{n}\n" for n in names)
        text += "COPY app /app\n"
        _write_app(context)
        (context / "Dockerfile").write_text(text)

    return generate


APT = (
    "apt-get update -q && apt-get install -q -y --no-install-recommends python3 > /dev/null"
    " && rm -rf /var/lib/apt/lists/*"
)
COMPILE = "python3 -m compileall -q /app"


def gen_debian(context: Path, scale: float) -> None:
    _write_app(context)
    (context / "Dockerfile").write_text(f"FROM {DEBIAN}\nRUN {APT}\nCOPY app /app\nRUN {COMPILE}\n")


def workloads(scale: float, stage_loops: int) -> list[Workload]:
    create, delete = _run_20k_commands(scale)
    return [
        Workload("W1", "copy-30k", "COPY of 30,000 small files (~300 MB)", BUSYBOX, gen_copy_30k, copied=(".",)),
        Workload("W2", "copy-1g", "COPY of a 1 GiB file, half incompressible", BUSYBOX, gen_copy_1g, ("big.bin",)),
        Workload("W3", "run-40", "40 trivial RUN steps", BUSYBOX, gen_run_40, runs=_run_40_commands(), steps=40),
        Workload(
            "W4",
            "run-20k",
            "RUN creating 20,000 files, later RUN deleting half",
            BUSYBOX,
            gen_run_20k,
            runs=(create, delete),
            steps=2,
        ),
        Workload(
            "W5",
            "stages-4",
            "four independent CPU-heavy stages",
            BUSYBOX,
            gen_stages(stage_loops),
            runs=stage_commands(stage_loops),
            parallel_runs=True,
            steps=4,
        ),
        Workload(
            "W6",
            "debian-python",
            "Debian base, apt-get install python3, an app",
            DEBIAN,
            gen_debian,
            runs=(APT, COMPILE),
            steps=2,
        ),
    ]


def fresh_context(workload: Workload, root: Path, scale: float) -> Path:
    context = root / f"ctx-{workload.key}"
    if context.exists():
        shutil.rmtree(context)
    context.mkdir(parents=True)
    workload.generate(context, scale)
    return context
