"""``pybuild run``: a throwaway container from an image, in the same sandbox as a RUN step.

The container is the image's layers (as snapshots, read-only) plus a fresh upper directory, run by
``builder.executor`` exactly as a RUN step is run: its own PID, mount, UTS and IPC namespaces (and network, for
``--network none``), Docker's default capabilities, the image's user, environment and working directory. Standard
input, output and error are pybuild's own, so the command's output and exit status pass straight through; Ctrl-C
reaches the command as it would under ``docker run``. ``--memory`` and ``--pids-limit`` put it in a cgroup of its
own (``builder.cgroups``), as a RUN step's.

Like ``docker run --rm``, the container is gone when its command exits (pybuild keeps no stopped containers),
unless ``--commit NAME`` asks for its changes: the upper directory becomes a layer (with the differ RUN uses) on
top of the image, and a new image is stored under NAME, as ``docker commit`` makes one.

While it runs, ``ROOT/containers/ID.json`` records the container and the image it uses, so that ``pybuild
prune`` can keep that image (``running_images``); a record whose process is gone is ignored and swept.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from builder import cgroups
from builder.cache import store_guard
from builder.commit import rfc3339, store_image
from builder.errors import BuildError, UsageError
from builder.executor import RunSpec, run_container
from builder.plan import DEFAULT_PATH
from builder.root import Store
from builder.rootfs import Rootfs, ensure_skeleton
from builder.snapshot import RootView, SnapshotStore, remove_dir, upper_items
from oci import mediatypes as mt
from oci.compression import Compression
from oci.config import History
from oci.descriptor import Descriptor
from oci.digest import Digest
from oci.image import Image
from oci.layer import write_layer
from oci.store import atomic_file, pid_alive

__all__ = ["ContainerRequest", "ContainerResult", "run_image", "running_images"]

CONTAINERS_DIR = "containers"


@dataclass(frozen=True, slots=True)
class ContainerRequest:
    command: tuple[str, ...] = ()  # replaces the image's CMD (after its ENTRYPOINT)
    entrypoint: tuple[str, ...] | None = None  # --entrypoint: replaces the image's ENTRYPOINT (and drops its CMD)
    env: tuple[str, ...] = ()  # K=V, added to (and overriding) the image's (the CLI resolves -e NAME)
    user: str = ""  # -u: else the image's USER
    workdir: str = ""  # -w: else the image's WORKDIR, else /
    network: str = "default"
    hostname: str = ""  # default: the container's ID, as docker does
    commit: str = ""  # --commit NAME: keep the changes as a new image
    limits: cgroups.Limits = cgroups.Limits()  # --memory, --pids-limit


@dataclass(frozen=True, slots=True)
class ContainerResult:
    id: str
    status: int
    committed: Image | None = None
    oom_killed: bool = False  # the OOM killer killed a process of the container (--memory)


def container_spec(image: Image, request: ContainerRequest, hostname: str) -> RunSpec:
    """What the container runs, from the image's config and the request, resolved as ``docker run`` does."""
    runtime = image.config.config
    if request.entrypoint is not None:
        argv = (*request.entrypoint, *request.command)
    else:
        argv = (*(runtime.entrypoint or ()), *(request.command or runtime.cmd or ()))
    if not argv:
        raise UsageError("no command: the image has no CMD or ENTRYPOINT, and none was given")
    env = runtime.env_dict()
    for item in request.env:
        name, eq, value = item.partition("=")
        if not name or not eq:
            raise UsageError(f"invalid environment variable {item!r} (expected NAME=VALUE)")
        env[name] = value
    env.setdefault("PATH", DEFAULT_PATH)
    env.setdefault("HOSTNAME", hostname)
    return RunSpec(
        argv=tuple(argv),
        env=tuple(f"{k}={v}" for k, v in env.items()),
        user=request.user or runtime.user,
        cwd=request.workdir or runtime.working_dir or "/",
        network=request.network,
        hostname=hostname,
    )


def run_image(
    store: Store,
    image: Image,
    request: ContainerRequest,
    *,
    on_output: Callable[[bytes], None] | None = None,
    name_image: Callable[[Image], None] | None = None,
) -> ContainerResult:
    """Run a container of ``image``; its output goes to pybuild's own standard streams unless ``on_output`` takes
    it (merged, as a RUN step's). With ``request.commit``, ``name_image`` is called with the committed image."""
    if os.geteuid() != 0:
        raise BuildError("pybuild run needs root or a user namespace", hint="enable user namespaces, or run as root")
    if request.network not in ("default", "none", "host"):
        raise UsageError(f"unsupported network mode {request.network!r} (expected default, none or host)")
    cgroups.check_available(request.limits)
    container_id = secrets.token_hex(32)
    spec = container_spec(image, request, request.hostname or container_id[:12])
    snapshots = SnapshotStore(store.root / "snapshots", store.limits)
    pairs = image.layer_pairs()
    rootfs = Rootfs(tuple(d for d, _ in pairs), tuple(i for _, i in pairs))
    lowers = rootfs.lowers(snapshots, store.layout.store, ensure_skeleton(store.root))
    scratch = store.scratch_dir("container")
    try:
        with _recorded(store, container_id, image), cgroups.step_cgroup(request.limits) as cgroup:
            status = run_container(
                scratch,
                lowers,
                spec,
                on_output or (lambda _: None),
                interactive=on_output is None,
                cgroups=cgroup.procs if cgroup is not None else (),
            )
            oom = status != 0 and cgroup is not None and cgroup.oom_killed()
        committed = None
        if request.commit:
            with store_guard(store.root):  # a prune waits until the new layer and image are named
                committed = _commit(store, image, rootfs, scratch / "upper", RootView(lowers), spec)
                if name_image is not None:
                    name_image(committed)
        return ContainerResult(container_id, status, committed, oom)
    finally:
        remove_dir(scratch)


def _commit(store: Store, image: Image, rootfs: Rootfs, upper: Path, lower: RootView, spec: RunSpec) -> Image:
    """The container's changes as a layer on top of ``image`` (an empty history entry when it changed nothing)."""
    config = image.config
    layers = list(rootfs.layers)
    diff_ids = list(config.diff_ids)
    items = upper_items(upper, lower)
    first = next(items, None)
    if first is not None:

        def everything() -> Iterator:  # type: ignore[type-arg]
            yield first
            yield from items

        with store.layout.store.writer() as blob:
            info = write_layer(everything(), blob, Compression.NONE)
            digest = blob.commit()
            size = blob.size
        layers.append(Descriptor(mt.OCI_LAYER, digest, size))
        diff_ids.append(info.diff_id)
        SnapshotStore(store.root / "snapshots").adopt(info.diff_id, upper)
    now = rfc3339()
    history = History(
        created=now, created_by=" ".join(spec.argv), comment="pybuild run --commit", empty_layer=first is None
    )
    new = replace(config, diff_ids=tuple(diff_ids), history=(*config.history, history), created=now)
    return store_image(store.layout, new, layers)


# --- the record of running containers


@contextmanager
def _recorded(store: Store, container_id: str, image: Image) -> Iterator[None]:
    directory = store.root / CONTAINERS_DIR
    directory.mkdir(exist_ok=True)
    path = directory / f"{container_id}.json"
    record = {"id": container_id, "image": str(image.digest), "pid": os.getpid()}
    with atomic_file(path, temp_dir=directory) as out:
        out.write(json.dumps(record).encode())
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def running_images(root: Path) -> set[Digest]:
    """The manifest digests of the images running ``pybuild run`` containers use; dead records are swept."""
    directory = root / CONTAINERS_DIR
    found: set[Digest] = set()
    try:
        paths = list(directory.glob("*.json"))
    except OSError:
        return found
    for path in paths:
        try:
            record = json.loads(path.read_text())
            alive = pid_alive(int(record["pid"]))
            digest = Digest.parse(record["image"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if alive:
            found.add(digest)
        else:
            path.unlink(missing_ok=True)
    return found
