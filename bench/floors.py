"""The floors of ``bench/run.py``: the work a build of each workload cannot avoid, done by the fastest tools here.

- Copy floors, on the bytes a workload's big COPY reads: ``tar -c`` of them into a file, ``sha256sum`` of that tar,
  and ``gzip -1`` and ``zstd -T0`` of it. A builder's store keeps a layer as a hashed tar (pybuild's is
  uncompressed), so the store floor is tar + sha256; an OCI layout's layers are gzip, so its floor adds gzip -1.
- Run floors: the workload's RUN commands run natively (``chroot`` into the base's root filesystem, with ``/proc``
  and ``/dev`` bound, the app copied in), in order; independent stages run one per CPU.

``builder overhead = build time - floor``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.builders import measure
from bench.workloads import Workload


def copy_floor(context: Path, paths: tuple[str, ...], scratch: Path) -> dict[str, float | int]:
    tar = scratch / "floor.tar"
    try:
        result: dict[str, float | int] = {
            "tar": measure(["tar", "-cf", str(tar), "-C", str(context), *paths]).seconds,
            "sha256sum": measure(["sha256sum", str(tar)]).seconds,
            "gzip_1": measure(["sh", "-c", f"gzip -1 -c {tar} > {tar}.gz"]).seconds,
            "zstd_T0": measure(["zstd", "-q", "-f", "-T0", str(tar), "-o", f"{tar}.zst"]).seconds,
            "tar_bytes": tar.stat().st_size,
            "gzip_bytes": Path(f"{tar}.gz").stat().st_size,
            "zstd_bytes": Path(f"{tar}.zst").stat().st_size,
        }
    finally:
        for path in (tar, Path(f"{tar}.gz"), Path(f"{tar}.zst")):
            path.unlink(missing_ok=True)
    result["store"] = result["tar"] + result["sha256sum"]
    result["layout"] = result["store"] + result["gzip_1"]
    return result


def run_floor(workload: Workload, context: Path, base_rootfs: Path, scratch: Path) -> float:
    """Seconds the workload's RUN commands take natively, in a chroot of a fresh copy of the base."""
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        subprocess.run(["tar", "-xf", str(base_rootfs), "-C", str(root)], check=True)
        shutil.copytree(context / "app", root / "app")
        resolv = root / "etc" / "resolv.conf"
        resolv.unlink(missing_ok=True)
        shutil.copyfile("/etc/resolv.conf", resolv)
        mounts = []
        try:
            for name in ("proc", "dev"):
                (root / name).mkdir(exist_ok=True)
                subprocess.run(["mount", "--rbind", f"/{name}", str(root / name)], check=True)
                mounts.append(root / name)

            def one(command: str) -> float:
                return measure(["chroot", str(root), "/bin/sh", "-c", command], _RUN_ENV).seconds

            started = time.perf_counter()
            if workload.parallel_runs:
                with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
                    list(pool.map(one, workload.runs))
            else:
                for command in workload.runs:
                    one(command)
            return time.perf_counter() - started
        finally:
            for mount in reversed(mounts):
                subprocess.run(["umount", "-R", "-l", str(mount)], check=False)


_RUN_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
}
