"""Several commands on one store at once: four builds that share steps, with prunes running all the while.

Every build succeeds with the image it should make, nothing a running build needs is pruned from under it, two
builds writing the same layer or the same tag both succeed, and afterwards ``pybuild fsck`` finds nothing wrong.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from tests.conftest import REPO, run_pybuild, write_context
from tests.functional.test_faults import leftovers, mount_points

EPOCH = "1700000000"


def dockerfile(n: int) -> str:
    """Four builds sharing their base and first steps, then each its own (a layer of its own and a COPY)."""
    return (
        "FROM busybox AS shared\n"
        "RUN mkdir /data && echo shared > /data/shared && sleep 0.2\n"
        "COPY common.txt /data/\n"
        "FROM busybox AS side\n"
        f"RUN echo side-{n % 2} > /side\n"
        "FROM shared\n"
        f"RUN echo own-{n} > /data/own && sleep 0.{n}\n"
        "COPY --from=side /side /data/\n"
        f"COPY own.txt /data/own-{n}.txt\n"
    )


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "builder", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    )


def test_four_builds_and_prunes_at_once(tmp_path: Path, busybox: str, store_root: Path) -> None:
    contexts = [
        write_context(tmp_path / f"c{n}", dockerfile(n), {"common.txt": "common\n", "own.txt": f"own {n}\n"})
        for n in range(4)
    ]
    mounts_before = mount_points()
    stop = threading.Event()
    pruned: list[subprocess.CompletedProcess[str]] = []

    def prune_all_the_while() -> None:
        while not stop.is_set():
            pruned.append(
                subprocess.run(
                    [sys.executable, "-m", "builder", "prune", "-f"], capture_output=True, text=True, cwd=REPO
                )
            )

    pruner = threading.Thread(target=prune_all_the_while)
    pruner.start()
    try:
        for round_ in ("cold", "cached"):
            builds = [
                start("build", "-q", "--progress", "plain", "-t", f"app{n}", str(c)) for n, c in enumerate(contexts)
            ]
            results = [(b.communicate(timeout=300), b.returncode) for b in builds]
            for n, ((_, err), code) in enumerate(results):
                assert code == 0, (round_, n, err[-3000:])
    finally:
        stop.set()
        pruner.join()
    assert pruned and all(p.returncode == 0 for p in pruned), [p.stderr for p in pruned if p.returncode]

    for n in range(4):
        shown = run_pybuild("run", "app" + str(n), "cat", "/data/shared", "/data/common.txt", f"/data/own-{n}.txt")
        assert shown.out == f"shared\ncommon\nown {n}\n", shown
        assert run_pybuild("run", f"app{n}", "cat", "/data/own", "/data/side").out == f"own-{n}\nside-{n % 2}\n"
    checked = run_pybuild("fsck")
    assert checked.code == 0, checked
    assert leftovers(store_root) == []
    assert mount_points() == mounts_before


def test_two_builds_of_the_same_image_and_tag_both_succeed(tmp_path: Path, busybox: str) -> None:
    """The same layers written twice at once, and one tag moved by both: content-addressed writes are idempotent
    and the tag ends on the (single) image they both made."""
    context = write_context(tmp_path / "c", dockerfile(1), {"common.txt": "common\n", "own.txt": "own\n"})
    env = {**os.environ, "SOURCE_DATE_EPOCH": EPOCH}
    builds = [start("build", "-q", "-t", "same", str(context), env=env) for _ in range(2)]
    results = [(b.communicate(timeout=300), b.returncode) for b in builds]
    assert [code for _, code in results] == [0, 0], [err for (_, err), _ in results]
    ids = {out.strip() for (out, _), _ in results}
    assert len(ids) == 1
    assert run_pybuild("images", "-q", "same").out.strip() in {i.split(":")[1][:12] for i in ids}
    assert run_pybuild("fsck").code == 0
