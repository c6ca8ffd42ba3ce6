"""``pybuild info``: what this pybuild is, where its store is and what it holds, and what the machine lets it do.

The answers a bug report needs and a CI log should start with (as ``docker info`` and ``buildah info``): version,
store root and contents by count (sizes are ``system df``'s, which walks every snapshot), and whether the kernel
features RUN relies on are there: overlayfs, namespaces, and the cgroup controllers behind ``--memory`` and
``--pids-limit``. It says how pybuild runs here: as root, or rootless with subordinate ids or with one id
(``builder.userns``), with the id maps and, rootless, whether overlayfs mounts inside the user namespace (tried,
on a scratch directory of the store), and which snapshotter RUN uses (``builder.copysnap``). Reading it changes
nothing in the store.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder import __version__, cgroups, copysnap, userns
from builder.cache import INDEX_FILE, CacheIndex
from builder.cachemounts import CacheMountStore
from builder.errors import BuildError
from builder.platforms import host_platform
from builder.root import Store

__all__ = ["Info", "collect", "render"]


@dataclass(frozen=True)
class Info:
    version: str
    python: str
    root: str
    images: int
    blobs: int
    snapshots: int
    cache_entries: int
    cache_mounts: int
    platform: str
    kernel: str
    cpus: int
    memory: int  # bytes, from /proc/meminfo (0 if unknown)
    root_user: bool
    overlay: bool
    features: dict[str, str]  # feature -> "yes" or why not
    mode: str = userns.ROOT  # userns.ROOT, SUBIDS or SINGLE
    id_maps: str = ""  # the uid map in force, "inside outside count" lines joined by "; " (rootless)
    why_single: str = ""  # rootless with one id: why subordinate ids are not used

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "python": self.python,
            "store": {
                "root": self.root,
                "images": self.images,
                "blobs": self.blobs,
                "snapshots": self.snapshots,
                "cacheEntries": self.cache_entries,
                "cacheMounts": self.cache_mounts,
            },
            "host": {
                "platform": self.platform,
                "kernel": self.kernel,
                "cpus": self.cpus,
                "memory": self.memory,
                "root": self.root_user,
                "overlay": self.overlay,
            },
            "mode": {"name": self.mode, "idMaps": self.id_maps, "whySingle": self.why_single},
            "features": dict(self.features),
        }


def collect(store: Store) -> Info:
    mode = userns.current_mode()
    index = store.layout.index()
    snapshots = store.root / "snapshots"
    return Info(
        version=__version__,
        python=platform.python_version(),
        root=os.fspath(store.root),
        images=len(index.manifests),
        blobs=sum(1 for _ in store.layout.store),
        snapshots=sum(1 for p in snapshots.iterdir() if not p.name.startswith(".")) if snapshots.is_dir() else 0,
        cache_entries=_cache_entries(store.root),
        cache_mounts=len(CacheMountStore(store.root).list()),
        platform=str(host_platform()),
        kernel=platform.release(),
        cpus=os.cpu_count() or 1,
        memory=_memory_total(),
        root_user=os.geteuid() == 0 and mode == userns.ROOT,
        overlay=_has_filesystem("overlay"),
        features=_features(store, mode),
        mode=mode,
        id_maps=userns.id_maps() if mode != userns.ROOT else "",
        why_single=userns.plan_for_me().why_single if mode == userns.SINGLE else "",
    )


def _cache_entries(root: Path) -> int:
    if not (root / INDEX_FILE).exists():
        return 0
    cache = CacheIndex(root)
    try:
        return len(cache.entries())
    finally:
        cache.close()


def _memory_total() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _has_filesystem(name: str) -> bool:
    try:
        return any(line.split()[-1] == name for line in Path("/proc/filesystems").read_text().splitlines())
    except OSError:
        return False


def _features(store: Store, mode: str) -> dict[str, str]:
    """Each capability a build may ask for: "yes", or the reason it is missing."""
    found: dict[str, str] = {}
    for name, limits in (
        ("--memory", cgroups.Limits(memory=cgroups.MIN_MEMORY)),
        ("--pids-limit", cgroups.Limits(pids=1)),
    ):
        try:
            cgroups.check_available(limits)
            found[name] = "yes"
        except BuildError as err:
            found[name] = f"no: {err.message}"
    if mode == userns.UNPRIVILEGED:
        found["RUN"] = "no: " + userns.needs_namespace("RUN", otherwise="none was made")
        return found
    found["RUN"] = "yes"
    if mode != userns.ROOT:
        failure = copysnap.overlay_failure(store.root / "tmp")
        found["overlay in a user namespace"] = (
            "yes" if failure is None else f"no: {failure} (Linux 5.11 or later mounts overlayfs in a user namespace)"
        )
    chosen = copysnap.snapshotter(store.root / "tmp")
    if copysnap.chosen():
        found["snapshots"] = f"{chosen} ({copysnap.ENV})"
    elif chosen == "copy":
        found["snapshots"] = (
            "copy: overlayfs does not mount in this user namespace, so RUN works in a copy of its image"
        )
    else:
        found["snapshots"] = chosen
    return found


def render(info: Info) -> str:
    gib = info.memory / (1 << 30)
    lines = [
        f"pybuild: {info.version} (Python {info.python})",
        "Store:",
        f"  Root: {info.root}",
        f"  Images: {info.images}",
        f"  Blobs: {info.blobs}",
        f"  Snapshots: {info.snapshots}",
        f"  Cache entries: {info.cache_entries}",
        f"  Cache mounts: {info.cache_mounts}",
        "Host:",
        f"  Platform: {info.platform}",
        f"  Kernel: {info.kernel}",
        f"  CPUs: {info.cpus}",
        f"  Memory: {gib:.1f} GiB",
        f"  Root: {'yes' if info.root_user else 'no'}",
        f"  overlayfs: {'yes' if info.overlay else 'no'}",
        f"Mode: {info.mode}",
        *([f"  Id maps: {info.id_maps}"] if info.id_maps else []),
        *([f"  Why one id: {info.why_single}"] if info.why_single else []),
        "Features:",
        *(f"  {name}: {state}" for name, state in info.features.items()),
    ]
    return "".join(f"{line}\n" for line in lines)
