"""The build orchestrator: a plan in, every step executed, the target stage committed as an image.

Stages run in plan order (a stage's dependencies always come first). Each stage starts from its base — nothing
(``scratch``), an image in the store, an earlier stage's result, or a named build context (an OCI layout, whose
blobs are copied into the store, or a directory, which becomes a one-layer root filesystem) — and each step
either changes only the config (the plan already says how) or makes a layer:

- RUN runs in a throwaway container over the stage's snapshots (``executor``); its upper directory is diffed
  (``snapshot.upper_items``) into the layer and then kept as that layer's snapshot. Its ``--mount``s come from
  ``mounts`` (what each reads, what it adds to the key, the secrets and agents it holds while it runs), and the
  step's output and errors pass through its ``Redactor``, so no secret value reaches a log;
- COPY, ADD and WORKDIR compute their layer's entries from their sources and a read-only view of the stage
  (``copy``); nothing runs and nothing is mounted.

Each of those steps goes through the step cache first (docs/cache.md): its key is the digest of a record of its
parent state, its expanded instruction and every input that can change its layer (``cachekey``, with
``checksum`` for what a COPY selects); a hit in the index (``cache``, or a ``--cache-from`` directory or
registry) adds the recorded layer without running anything (an imported layer is fetched only once a step, the
image or a cache export needs its content); the first miss of a stage is explained, runs, is recorded, and makes
the rest of the stage run. History times come from the entries, so a fully cached rebuild gives the same image.

A layer is stored uncompressed (its digest is its diff_id) so that no step waits for a compressor: outputs and
pushes compress once, later. A step whose diff is empty adds its history entry with ``empty_layer`` and no
layer, as BuildKit does. A step that runs dates what it makes (created directories, its history entry) with the
build's start time; ``SOURCE_DATE_EPOCH`` replaces every such time and clamps every mtime written into a layer.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from builder import cachekey, cgroups, mounts
from builder import copy as copying
from builder.cache import CacheEntry, CacheIndex
from builder.cachekey import Files, Record
from builder.checksum import Checksums, StatCache, checksum_source
from builder.commit import rfc3339, store_image
from builder.context import load_ignore_rules
from builder.errors import BuildError, DockerfileError, ImageNotFound
from builder.frontend import instructions as ins
from builder.frontend.gitref import parse_git_ref
from builder.images import image_by_name
from builder.limits import limit_hint
from builder.mounts import BindRoot, Secrets
from builder.plan import DEFAULT_HOSTNAME, DEFAULT_PATH, HISTORY_COMMENT, BuildPlan, PlannedStage, Source, Step
from builder.progress import Progress, StepProgress
from builder.root import Store
from builder.rootfs import Rootfs, ensure_skeleton
from builder.snapshot import RootView, SnapshotStore, remove_dir, upper_items
from oci import mediatypes as mt
from oci.compression import Compression
from oci.config import History, ImageConfig
from oci.descriptor import Descriptor, Platform
from oci.digest import Digest
from oci.errors import OCIError
from oci.frozen import FrozenMap
from oci.image import Image, load_image
from oci.layer import LayerItem, tree_items, write_layer
from oci.layout import ImageLayout

# A fully cached build runs nothing, downloads nothing and shares no cache: what only a step that runs (the
# sandbox, cache mounts), an ADD of a URL or a git repository, --cache-from/--cache-to or parallel stages need is
# imported where it is used (tests/builder/test_startup.py keeps it so). Names only annotations use come from this
# block, which only type checkers read.
if TYPE_CHECKING:
    import concurrent.futures

    from builder.cachemounts import CacheMountStore
    from builder.cacheshare import CacheSpec, ImportedCache
    from builder.compressed import Precompressor
    from builder.executor import SandboxServers
    from builder.fetch import Downloaded
    from builder.frontend.gitref import GitRef
    from builder.gitsource import Resolved
    from builder.remote import Remote

__all__ = ["BuildOptions", "BuildResult", "solve"]

_OCI_LAYOUT = "oci-layout://"


@dataclass(frozen=True)
class BuildOptions:
    context: Path | None  # None: no build context (the Dockerfile came from standard input)
    dockerfile: Path | None = None  # selects <Dockerfile>.dockerignore
    contexts: FrozenMap[str, str] = field(default_factory=FrozenMap)  # --build-context NAME=VALUE
    network: str = "default"
    epoch: int | None = None  # SOURCE_DATE_EPOCH (or --reproducible)
    build_args: FrozenMap[str, str] = field(default_factory=FrozenMap)
    no_cache: bool = False  # run every step (results are still recorded)
    no_cache_filter: frozenset[str] = frozenset()  # run every step of these stages
    names: tuple[str, ...] = ()  # the image's names, recorded with the cache entries
    cache_from: tuple[CacheSpec, ...] = ()  # --cache-from: portable caches consulted after the store's
    cache_to: tuple[CacheSpec, ...] = ()  # --cache-to: where this build's entries are exported
    remote: Remote | None = None  # registries: FROM pulls what the store lacks (None: the store only)
    jobs: int = 0  # stages built at once (0: one per CPU)
    secrets: Secrets = field(default_factory=Secrets)  # --secret values by id (their repr shows no value)
    ssh: FrozenMap[str, str] = field(default_factory=FrozenMap)  # --ssh: agent sockets by id
    allow: frozenset[str] = frozenset()  # --allow: entitlements (security.insecure, network.host)
    run_limits: cgroups.Limits = cgroups.Limits()  # --memory, --pids-limit: every RUN's (not in any cache key)
    # The outputs need compressed layers: the image's layers are handed to it as soon as they are known.
    precompressor: Precompressor | None = None


@dataclass(frozen=True)
class StageResult:
    rootfs: Rootfs
    config: ImageConfig
    state: Record  # the parent of the next step (cachekey's parents)
    about: FrozenMap[str, str] = field(default_factory=FrozenMap)  # the base's name, for explanations


@dataclass(frozen=True)
class StepReport:
    """What happened to one step, for the progress display and ``pybuild cache explain``."""

    stage: str
    line: int
    step: str
    status: str  # "cached", "built" or "failed"
    key: str
    reason: str = ""

    def to_json(self) -> dict[str, object]:
        return {k: v for k, v in vars(self).items()}


@dataclass
class _Inputs:
    """What a step's key was computed from that the step itself needs again on a miss."""

    record: Record
    checksums: list[Checksums | None] = field(default_factory=list)  # COPY/ADD: per source, from the context
    downloads: dict[str, Downloaded] = field(default_factory=dict)  # ADD URL: fetched to compute the key
    gits: dict[str, tuple[GitRef, Resolved]] = field(default_factory=dict)  # ADD git: the commit the key holds
    scratch: list[Path] = field(default_factory=list)  # removed when the step ends

    @property
    def files(self) -> Files | None:
        """Per-file summaries of the sources, for explaining a miss (made only when one needs them)."""
        files = [sums.files if sums is not None else {} for sums in self.checksums]
        return files if any(files) else None


@dataclass(frozen=True)
class BuildResult:
    image: Image
    stage: PlannedStage
    report: tuple[StepReport, ...] = ()
    release: Callable[[], None] = lambda: None  # ends the build: until then its cache entries are leased


def _works(step: Step) -> bool:
    """Whether a step does work (and shows in the progress), rather than only changing the config."""
    return isinstance(step.instruction, ins.Run | ins.Copy | ins.Add | ins.Workdir) and not step.empty_layer


def _display(instruction: ins.Instruction) -> str:
    return " ".join(instruction.original.split())


def _named_context_tree(directory: Path) -> copying.ContextTree:
    """``--build-context NAME=DIR``: the directory seen through its own ``.dockerignore``, as BuildKit's dockerui
    loads a named local context (an ignored file is not sent, so no step can read it)."""
    _, rules = load_ignore_rules(directory, named=True)
    return copying.ContextTree(directory, rules)


def _single_id_hint() -> str:
    """Rootless with one id, what fails in a step is most often a chown or a user that does not exist there."""
    from builder import userns

    if userns.current_mode() != userns.SINGLE:
        return ""
    return "rootless with one id: only id 0 exists here; give your user subordinate ids in /etc/subuid and /etc/subgid"


def _linked(step: Step) -> bool:
    """COPY/ADD --link: the layer is made on an empty tree and placed on the stage (BuildKit's merge op). With
    --chmod, BuildKit's front end makes a plain copy instead, and so does pybuild."""
    instruction = step.instruction
    return isinstance(instruction, ins.Copy | ins.Add) and instruction.link and not instruction.chmod


_T = TypeVar("_T")


def _serialized(method: Callable[..., _T]) -> Callable[..., _T]:
    """Run a ``_Solver`` method holding its lock: it reads or fills state that parallel stages share."""

    @functools.wraps(method)
    def wrapper(self: _Solver, *args: Any, **kwargs: Any) -> _T:
        with self._lock:
            return method(self, *args, **kwargs)

    return wrapper


class Cancelled(BuildError):
    """Another stage failed, or the build was interrupted: this stage stops at its next step."""


class _Solver:
    def __init__(self, plan: BuildPlan, store: Store, options: BuildOptions, progress: Progress) -> None:
        self.plan = plan
        self.store = store
        self.options = options
        self.progress = progress
        self.blobs = store.layout.store
        self.snapshots = SnapshotStore(store.root / "snapshots", store.limits)
        self.started = time.time()
        self.timestamp = options.epoch if options.epoch is not None else int(self.started)
        self.created = rfc3339(self.timestamp)
        self.results: dict[int, StageResult] = {}
        self._context_tree: copying.SourceTree | None = None
        self._images: dict[tuple[str, str], Image] = {}
        self._skeleton: Path | None = None
        self.hostname = options.build_args.get("BUILDKIT_SANDBOX_HOSTNAME", "") or DEFAULT_HOSTNAME
        # Made by the first RUN that runs (a cached build needs neither): the cache mounts, and the servers that
        # fork the sandboxes (see builder.executor). Not under ``_lock``, which a pull can hold for long.
        self._cache_mounts: CacheMountStore | None = None
        self._sandboxes: SandboxServers | None = None
        self._limits_available = False  # --memory/--pids-limit checked against this machine's cgroups
        self._made = threading.Lock()
        self.redactor = mounts.Redactor(options.secrets.values())  # no secret value reaches a log or an error
        self.dockerfile = str(options.dockerfile.absolute()) if options.dockerfile is not None else plan.path
        self.cache = CacheIndex(store.root)
        self.build_id = ""
        self.stats: dict[bytes, StatCache] = {}
        self.report: list[StepReport] = []
        self.imported: list[ImportedCache] = []
        # Hits in a --cache-from cache whose layer is not in the store: fetched when a step, the image or an export
        # needs the layer's content (``fetch_imported``), so a stage nothing needs costs no download.
        self.deferred: dict[Digest, tuple[ImportedCache, CacheEntry]] = {}
        self.stage_keys: dict[int, list[Digest]] = {}  # the entries each stage used or made, for --cache-to
        # Stages run in parallel threads (``run_stages``): what they share is guarded by one lock (memos of base
        # images, the context tree and its stat caches, deferred imports), and a failure or an interrupt sets
        # ``cancelled``, which every step and running container checks.
        self._lock = threading.RLock()
        self._local = threading.local()
        self.cancelled = threading.Event()
        # The stages whose layers are the image's: the target and the stages it is built FROM.
        self.image_stages = _image_stages(plan)

    @property
    def _held(self) -> contextlib.ExitStack:
        """This thread's hold on the cache guard, from a layer's commit until its entry is recorded."""
        held: contextlib.ExitStack | None = getattr(self._local, "held", None)
        if held is None:
            held = self._local.held = contextlib.ExitStack()
        return held

    # --- errors carry the Dockerfile location

    def located(self, err: BuildError, line: int) -> DockerfileError:
        if isinstance(err, DockerfileError):
            return err.located(self.plan.path, line)
        return DockerfileError(err.message, path=self.plan.path, line=line, hint=err.hint)

    # --- bases and sources

    @_serialized
    def store_image(
        self, ref: str, platform: Platform, line: int, on_status: Callable[[str], None] | None = None
    ) -> Image:
        """A base image: the store's, else pulled from its registry (always asked with ``--pull``)."""
        key = (ref, str(platform))
        if key not in self._images:
            remote = self.options.remote
            try:
                # Found and leased under the guard: a prune cannot take it between the two, even if its tag moves.
                with self.cache.guard():
                    if remote is None:
                        image = image_by_name(self.store.layout, ref, platform)
                    else:
                        image = remote.image(ref, platform, on_status)
                    self.cache.lease_image(self.build_id, image.descriptor)
            except ImageNotFound:
                raise DockerfileError(
                    f"{ref}: no such image in the local store",
                    path=self.plan.path,
                    line=line,
                    hint="add it with 'pybuild import' or 'pybuild pull'",
                ) from None
            except OCIError as err:
                message = str(err) if str(err).startswith(ref) else f"{ref}: {err}"  # registry errors name it
                raise DockerfileError(message, path=self.plan.path, line=line) from None
            self._images[key] = image
        return self._images[key]

    @_serialized
    def context_image(self, name: str, platform: Platform, line: int) -> Image | None:
        """The image of ``--build-context NAME=oci-layout://DIR[:TAG]``, its blobs copied into the store."""
        value = self.options.contexts.get(name, "")
        if not value.startswith(_OCI_LAYOUT):
            return None
        key = (f"context:{name}", str(platform))
        if key in self._images:
            return self._images[key]
        location = value[len(_OCI_LAYOUT) :]
        path, tag, digest = location, "", ""
        if "@" in location:
            path, _, digest = location.rpartition("@")
        elif ":" in os.path.basename(location):
            path, _, tag = location.rpartition(":")
        try:
            layout = ImageLayout.open(path)
            index = layout.index()
            entries = list(index.manifests)
            chosen: Descriptor | None = None
            for desc in entries:
                name_tag = desc.ref_name or ""
                if digest and str(desc.digest) == digest:
                    chosen = desc
                elif not digest and tag and (name_tag == tag or name_tag.rsplit(":", 1)[-1] == tag):
                    chosen = desc
            if chosen is None and not tag and not digest:
                latest = [d for d in entries if (d.ref_name or "latest").rsplit(":", 1)[-1] == "latest"]
                chosen = latest[0] if len(latest) == 1 else (entries[0] if len(entries) == 1 else None)
            if chosen is None:
                wanted = tag or digest or "latest"
                raise DockerfileError(
                    f"--build-context {name}: {path} has no image {wanted!r}", path=self.plan.path, line=line
                )
            image = load_image(layout.store, chosen.with_ref_name(None), platform)
            with self.cache.guard():  # nothing names these blobs in the store: the lease keeps them
                for desc in (image.manifest.config, *image.layers):
                    if not self.blobs.has(desc.digest):
                        with layout.store.open(desc.digest, desc.size) as stream:
                            self.blobs.put(stream, desc.digest, desc.size)
                self.blobs.put_bytes(image.raw_manifest, image.digest)
                stored = Image(self.blobs, image.descriptor)
                self.cache.lease_image(self.build_id, stored.descriptor)
        except OCIError as err:
            raise DockerfileError(f"--build-context {name}: {err}", path=self.plan.path, line=line) from None
        self._images[key] = stored
        return stored

    @_serialized
    def context_tree(self, line: int) -> copying.SourceTree:
        if self._context_tree is None:
            if self.options.context is None:
                raise DockerfileError(
                    "this build has no context (the Dockerfile came from standard input): nothing to copy from",
                    path=self.plan.path,
                    line=line,
                )
            _, rules = load_ignore_rules(self.options.context, self.options.dockerfile)
            self._context_tree = copying.ContextTree(self.options.context, rules)
        return self._context_tree

    def cache_mounts(self) -> CacheMountStore:
        with self._made:
            if self._cache_mounts is None:
                from builder.cachemounts import CacheMountStore

                self._cache_mounts = CacheMountStore(self.store.root)
            return self._cache_mounts

    def sandboxes(self) -> SandboxServers:
        with self._made:
            if self._sandboxes is None:
                from builder.executor import SandboxServers

                self._sandboxes = SandboxServers(self.store.root / "tmp")
            return self._sandboxes

    def view(self, rootfs: Rootfs) -> RootView:
        self.fetch_imported(rootfs)
        return rootfs.view(self.snapshots, self.blobs)

    def unless_cancelled(self, callback: Callable[..., None]) -> Callable[..., None]:
        """``callback``, raising ``Cancelled`` once the build is cancelled: a running container is then killed."""

        def checked(*args: Any) -> None:
            if self.cancelled.is_set():
                raise Cancelled("cancelled")
            callback(*args)

        return checked

    def skeleton(self) -> Path:
        if self._skeleton is None:
            self._skeleton = ensure_skeleton(self.store.root)
        return self._skeleton

    def base(self, stage: PlannedStage, on_status: Callable[[str], None] | None = None) -> StageResult:
        base = stage.base
        platform = stage.platform
        if base.kind == "scratch":
            config = ImageConfig(architecture=platform.architecture, os=platform.os, variant=platform.variant)
            return StageResult(Rootfs(), replace(config, created=self.created), cachekey.scratch_parent())
        if base.kind == "stage":
            return replace(self.results[base.stage], about=FrozenMap({"stage": self.plan.stage(base.stage).display}))
        if base.kind == "context":
            image = self.context_image(base.ref, platform, stage.line)
            if image is None:
                return self.directory_base(stage)
        else:
            image = self.store_image(base.ref, platform, stage.line, on_status)
        try:
            config = image.config
            pairs = image.layer_pairs()
        except OCIError as err:
            raise DockerfileError(f"{base.ref}: {err}", path=self.plan.path, line=stage.line) from None
        if self.options.epoch is not None or not config.created:
            config = replace(config, created=self.created)
        rootfs = Rootfs(tuple(d for d, _ in pairs), tuple(i for _, i in pairs))
        return StageResult(rootfs, config, cachekey.image_parent(image.digest), FrozenMap({"base": base.ref}))

    def directory_base(self, stage: PlannedStage) -> StageResult:
        """``FROM NAME`` where ``--build-context NAME=DIR``: the directory is the root filesystem (one layer,
        cached under the directory's checksum)."""
        name, platform, epoch = stage.base.ref, stage.platform, self.options.epoch
        directory = Path(self.options.contexts[name])
        tree = _named_context_tree(directory)
        sums = checksum_source(tree, "", stats=self.stat_cache(tree.root), epoch=epoch)
        record = cachekey.tree_record(name, sums.matches[0]["tree"], platform=platform, epoch=epoch)
        key = cachekey.key_of(record)
        config = ImageConfig(architecture=platform.architecture, os=platform.os, variant=platform.variant)
        entry = self.lookup(key) if self.may_hit(stage) else None
        if entry is not None:
            rootfs = Rootfs()
            if entry.layer is not None and entry.diff_id is not None:
                rootfs = rootfs.with_layer(entry.layer, entry.diff_id)
            created = self.moment(entry.created)
        else:
            items = (
                replace_owner(item)
                for item in tree_items(directory, clamp_mtime=epoch)
                if tree.lstat(item.entry.path) is not None  # what its .dockerignore leaves out is not sent
            )
            try:
                rootfs, _ = self.write_layer(Rootfs(), items)
                self.remember(key, _Inputs(record), stage, stage.line, f"FROM {name}", "", rootfs)
            finally:
                self._held.close()
            created = self.created
        diff_id = rootfs.diff_ids[-1] if rootfs.diff_ids else None
        state = cachekey.step_parent(key, diff_id)
        self.stage_keys.setdefault(stage.index, []).append(key)
        return StageResult(rootfs, replace(config, created=created), state, FrozenMap({"base": f"context {name}"}))

    def source_tree(self, source: Source, stage: PlannedStage, line: int) -> copying.SourceTree:
        if source.kind == "context":
            return self.context_tree(line)
        if source.kind == "stage":
            return copying.ImageTree(self.view(self.results[source.stage].rootfs))
        if source.kind == "image":
            image = self.store_image(source.ref, stage.platform, line)
        elif source.kind == "named-context":
            found = self.context_image(source.ref, stage.platform, line)
            if found is None:
                return _named_context_tree(Path(self.options.contexts[source.ref]))
            image = found
        else:
            raise DockerfileError(f"cannot copy from a {source.kind} source yet", path=self.plan.path, line=line)
        pairs = image.layer_pairs()
        return copying.ImageTree(self.view(Rootfs(tuple(d for d, _ in pairs), tuple(i for _, i in pairs))))

    # --- layers

    def write_layer(self, rootfs: Rootfs, items: Iterable[LayerItem]) -> tuple[Rootfs, bool]:
        """Store ``items`` as an uncompressed layer on top of ``rootfs``; an empty list adds nothing."""
        iterator = iter(items)
        first = next(iterator, None)
        if first is None:
            return rootfs, False

        def everything() -> Iterable[LayerItem]:
            yield first
            yield from iterator

        # Held until the step's entry is recorded: prune may not delete this blob (if it existed) before then.
        self._held.enter_context(self.cache.guard())
        with self.blobs.writer() as blob:
            info = write_layer(everything(), blob, Compression.NONE)
            digest = blob.commit()
            size = blob.size
        self.snapshots.vouch(info.diff_id)
        return rootfs.with_layer(Descriptor(mt.OCI_LAYER, digest, size), info.diff_id), True

    # --- steps

    def check(self, step: Step) -> None:
        """Refuse what pybuild cannot do yet, before any key is computed or looked up."""
        instruction = step.instruction
        if isinstance(instruction, ins.Run):
            mounts.check_run(step, allow=self.options.allow)
            if not self._limits_available:  # the same for every RUN of the build: read the cgroups once
                cgroups.check_available(self.options.run_limits)
                self._limits_available = True
            if os.geteuid() != 0:
                from builder import userns

                raise BuildError(userns.needs_namespace("RUN"), hint="enable user namespaces, or run pybuild as root")
            if self.network(step) not in ("default", "none", "host"):
                raise BuildError(f"unsupported network mode {self.network(step)!r} (expected default, none or host)")
        elif isinstance(instruction, ins.Copy | ins.Add):
            if _linked(step) and instruction.chown and copying.chown_ids(instruction.chown) is None:
                # The user would be looked up in the image, which a linked layer may not read (BuildKit #7134).
                raise BuildError(
                    f"{instruction.keyword} --link --chown={instruction.chown}: --link needs a numeric user and group",
                    hint="give UID[:GID], or drop --link",
                )

    def network(self, step: Step) -> str:
        assert isinstance(step.instruction, ins.Run)
        return step.instruction.network or self.options.network

    def run(self, stage: PlannedStage, step: Step, rootfs: Rootfs, out: StepProgress) -> Rootfs:
        from builder.executor import RunSpec, run_container

        network = self.network(step)
        env = list(step.env) + list(step.proxy_env)
        if not any(e.split("=", 1)[0] == "PATH" for e in env):
            env.append(f"PATH={DEFAULT_PATH}")
        lowers = self.fetch_imported(rootfs).lowers(self.snapshots, self.blobs, self.skeleton())
        scratch = self.store.scratch_dir("run")
        output = self.redactor.stream(self.unless_cancelled(out.log))
        try:
            roots = lambda source: self.mount_root(source, stage, step.line)  # noqa: E731
            with mounts.prepared(
                step,
                roots=roots,
                scratch=scratch / "mount-sources",
                env=env,
                secrets=self.options.secrets,
                agents=self.options.ssh,
                caches=self.cache_mounts() if any(m.type == "cache" for m in step.mounts) else None,
            ) as ready:
                spec = RunSpec(
                    argv=step.argv,
                    env=(*env, *ready.env),
                    user=step.user,
                    cwd=step.workdir or "/",
                    network=network,
                    hostname=self.hostname,
                    scripts=((step.script.name, step.script.text),) if step.script is not None else (),
                    mounts=ready.mounts,
                    secret_env=ready.secret_env,
                    insecure=getattr(step.instruction, "security", "") == "insecure",
                )
                with cgroups.step_cgroup(self.options.run_limits) as cgroup:
                    status = run_container(
                        scratch,
                        lowers,
                        spec,
                        output,
                        self.unless_cancelled(self.progress.refresh),
                        cgroups=cgroup.procs if cgroup is not None else (),
                        servers=self.sandboxes(),
                    )
                    oom = status != 0 and cgroup is not None and cgroup.oom_killed()
            output.close()
            if status != 0:
                shown = " ".join(step.argv)
                why = f": killed: out of memory (--memory {cgroups.format_size(self.options.run_limits.memory or 0)})"
                raise BuildError(
                    f'process "{shown}" did not complete successfully: exit code: {status}' + (why if oom else ""),
                    hint=_single_id_hint(),
                )
            upper = scratch / "upper"
            items = upper_items(upper, RootView(lowers), clamp_mtime=self.options.epoch)
            new, changed = self.write_layer(rootfs, items)
            if changed:
                self.snapshots.adopt(new.diff_ids[-1], upper)
            return new
        except BuildError as err:
            err.message = self.redactor.text(err.message)  # a setup error may quote what a secret made
            err.args = (err.message,)
            raise
        finally:
            with contextlib.suppress(BuildError):  # the output held back for redaction; cancelled, it can go
                output.close()
            remove_dir(scratch)

    def mount_root(self, source: Source | None, stage: PlannedStage, line: int) -> BindRoot:
        """What a RUN mount's ``from`` reads: the build context when it names none, a named context's directory,
        a stage's result or an image (by its layers, whose snapshots are extracted only when the mount is made)."""
        source = source or Source("context")
        named = self.context_image(source.ref, stage.platform, line) if source.kind == "named-context" else None
        if source.kind == "context" or (source.kind == "named-context" and named is None):
            tree = self.source_tree(source, stage, line)
            assert isinstance(tree, copying.ContextTree)
            return BindRoot({"context": source.ref or "."}, context=tree, stats=self.stat_cache(tree.root))
        if source.kind == "stage":
            rootfs = self.results[source.stage].rootfs
            origin = {"stage": self.plan.stage(source.stage).display}
        else:
            image = named or self.store_image(source.ref, stage.platform, line)
            pairs = image.layer_pairs()
            rootfs = Rootfs(tuple(d for d, _ in pairs), tuple(i for _, i in pairs))
            origin = {"image": source.ref}

        def snapshots() -> list[Path]:
            return self.fetch_imported(rootfs).snapshots(self.snapshots, self.blobs)

        return BindRoot(origin, layers=tuple(str(d) for d in rootfs.diff_ids), snapshots=snapshots)

    def copy(self, stage: PlannedStage, step: Step, rootfs: Rootfs, inputs: _Inputs) -> Rootfs:
        instruction = step.instruction
        assert isinstance(instruction, ins.Copy | ins.Add)
        is_add = isinstance(instruction, ins.Add)
        source = step.source or Source("context")
        scratch = self.store.scratch_dir("copy")
        try:
            sources: list[copying.CopySource] = []
            if source.kind == "url":
                from builder.fetch import download

                assert isinstance(instruction, ins.Add)
                for number, url in enumerate(instruction.sources):
                    got = inputs.downloads.get(url)
                    if got is None:
                        into = scratch / f"url-{number}"
                        into.mkdir()
                        got = download(url, into, checksum=instruction.checksum)
                    tree = copying.MemoryTree(got.name, 0o600, got.mtime, path=got.path)
                    sources.append(copying.CopySource(tree, got.name, unpack=bool(instruction.unpack)))
            elif source.kind == "git":
                from builder.gitsource import checkout

                assert isinstance(instruction, ins.Add)
                for number, text in enumerate(instruction.sources):
                    git, resolved = inputs.gits.get(text) or self.git_source(instruction, text, inputs)
                    into = scratch / f"git-{number}"
                    into.mkdir()
                    keep = self.keeps_git_dir(instruction, git)
                    tree = copying.ContextTree(checkout(git, resolved, into, keep_git_dir=keep).root)
                    subdir = copying.resolve(tree, git.subdir)
                    found = tree.lstat(subdir)
                    if found is None or not stat.S_ISDIR(found.st_mode):
                        raise BuildError(f"{git.shown}: no directory {git.subdir!r} at {resolved.commit}")
                    sources.append(copying.CopySource(tree, subdir, excludes=instruction.excludes, whole_tree=True))
            elif instruction.sources:
                tree = self.source_tree(source, stage, step.line)
                unpack = is_add and (instruction.unpack is None or instruction.unpack)  # type: ignore[union-attr]
                parents = isinstance(instruction, ins.Copy) and instruction.parents
                sources.extend(
                    copying.CopySource(tree, path, unpack=unpack, excludes=instruction.excludes, parents=parents)
                    for path in instruction.sources
                )
            for heredoc in instruction.heredocs:
                tree = copying.MemoryTree(heredoc.name, 0o644, self.timestamp, data=heredoc.content.encode())
                sources.append(copying.CopySource(tree, heredoc.name))
            options = copying.CopyOptions(
                now=self.timestamp,
                chown=instruction.chown,
                chmod=instruction.chmod,
                clamp=self.options.epoch,
                scratch=scratch,
                limits=self.store.limits,
            )
            # --link: made on an empty tree, so nothing of the stage is read (no symlink of it is followed, every
            # directory of the destination path is in the layer), then placed on top of the stage.
            view = RootView([]) if _linked(step) else self.view(rootfs)
            items = copying.copy_items(sources, step.dest, view, options)
            new, _ = self.write_layer(rootfs, items)
            return new
        finally:
            remove_dir(scratch)

    def workdir(self, step: Step, rootfs: Rootfs) -> Rootfs:
        view = self.view(rootfs)
        owner = copying.lookup_user(view, step.user, "USER") if step.user else None
        options = copying.CopyOptions(now=self.timestamp, clamp=self.options.epoch)
        items = copying.directory_items(view, step.dest, options, owner)
        new, _ = self.write_layer(rootfs, items)
        return new

    # --- stages

    def stage(self, stage: PlannedStage) -> StageResult:
        total = sum(_works(s) for s in stage.steps) + 1
        label = stage.display if len(self.plan.stages) > 1 else ""  # BuildKit names stages only when several
        if stage.base.kind != "stage":
            origin = self.progress.step(
                f"FROM {stage.base.ref if stage.base.kind != 'scratch' else 'scratch'}",
                stage=label,
                index=1,
                total=total,
            )
            try:
                base = self.base(stage, origin.note)
            except BuildError as err:
                origin.fail(err.message)
                raise
            origin.finish()
        else:
            base = self.base(stage)
        self.precompress(stage, base.rootfs.layers)
        rootfs, state, about = base.rootfs, base.state, dict(base.about)
        history = list(base.config.history)
        clock = base.config.created or self.created
        may_hit = self.may_hit(stage)
        index = 1
        for step in stage.steps:
            if self.cancelled.is_set():
                raise Cancelled("cancelled")
            changed = False
            if _works(step):
                index += 1
                shown = _display(step.instruction)
                out = self.progress.step(shown, stage=label, index=index, total=total)
                key: Digest | None = None
                inputs = _Inputs({})
                try:
                    self.check(step)
                    inputs = self.inputs(stage, step, state, inputs)
                    key = cachekey.key_of(inputs.record)
                    # A --link step's key does not depend on the steps before it, so it may hit after they missed.
                    entry = self.lookup(key) if may_hit or (_linked(step) and self.may_hit(stage)) else None
                    if entry is not None:
                        new = rootfs
                        if entry.layer is not None and entry.diff_id is not None:
                            new = rootfs.with_layer(entry.layer, entry.diff_id)
                        clock = self.moment(entry.created)
                        out.cached()
                        self.report.append(StepReport(stage.display, step.line, shown, "cached", str(key)))
                    else:
                        reason = ""
                        if may_hit or not self.report_missed(stage):
                            reason = self.explain(stage, step, key, inputs, about)
                            out.note(f"cache miss: {reason}")
                        may_hit = False  # a miss makes every later step of the stage miss
                        new = self.execute(stage, step, rootfs, inputs, out)
                        self.remember(key, inputs, stage, step.line, shown, step.history, new, rootfs, about)
                        clock = self.created
                        out.finish()
                        self.report.append(StepReport(stage.display, step.line, shown, "built", str(key), reason))
                except BuildError as err:
                    located = self.located(err, step.line)
                    self.failed(out, stage, step, shown, key, located.message)
                    raise located from None
                except OCIError as err:
                    located = DockerfileError(str(err), path=self.plan.path, line=step.line, hint=limit_hint(err))
                    self.failed(out, stage, step, shown, key, located.message)
                    raise located from None
                except OSError as err:  # the disk: full, or a file the step needed could not be read or written
                    located = DockerfileError(io_message(err, self.store.root), path=self.plan.path, line=step.line)
                    self.failed(out, stage, step, shown, key, located.message)
                    raise located from err
                except BaseException:
                    self.failed(out, stage, step, shown, key, "interrupted")
                    raise
                finally:
                    self._held.close()
                    for path in inputs.scratch:
                        remove_dir(path)
                changed = len(new.layers) > len(rootfs.layers)
                rootfs = new
                if changed:
                    self.precompress(stage, rootfs.layers[-1:])
                layer = rootfs.diff_ids[-1] if changed else None
                state = cachekey.linked_parent(key, layer, state) if _linked(step) else cachekey.step_parent(key, layer)
                self.stage_keys.setdefault(stage.index, []).append(key)
                about = {}
            if step.history:
                history.append(
                    History(created=clock, created_by=step.history, comment=HISTORY_COMMENT, empty_layer=not changed)
                )
        config = replace(stage.config, diff_ids=rootfs.diff_ids, history=tuple(history), created=clock)
        return StageResult(rootfs, config, state)

    def precompress(self, stage: PlannedStage, layers: tuple[Descriptor, ...]) -> None:
        """Hand the image's layers to the outputs' compression as soon as they are known (``Precompressor``)."""
        if self.options.precompressor is not None and stage.index in self.image_stages:
            self.options.precompressor.add(layers)

    def execute(self, stage: PlannedStage, step: Step, rootfs: Rootfs, inputs: _Inputs, out: StepProgress) -> Rootfs:
        instruction = step.instruction
        if isinstance(instruction, ins.Run):
            return self.run(stage, step, rootfs, out)
        if isinstance(instruction, ins.Workdir):
            return self.workdir(step, rootfs)
        return self.copy(stage, step, rootfs, inputs)

    def failed(
        self, out: StepProgress, stage: PlannedStage, step: Step, shown: str, key: Digest | None, message: str
    ) -> None:
        out.fail(message)
        self.report.append(StepReport(stage.display, step.line, shown, "failed", str(key or ""), message))

    def report_missed(self, stage: PlannedStage) -> bool:
        """Whether this stage already explained a miss (only the first one of a stage needs a reason)."""
        return any(r.stage == stage.display and r.status == "built" and r.reason for r in self.report)

    # --- the cache

    def may_hit(self, stage: PlannedStage) -> bool:
        return not self.options.no_cache and stage.name not in self.options.no_cache_filter

    def moment(self, created: float) -> str:
        """The history time of a step made at ``created`` (by this build or an earlier one)."""
        return self.created if self.options.epoch is not None else rfc3339(created)

    @_serialized
    def stat_cache(self, root: bytes) -> StatCache:
        if root not in self.stats:
            self.stats[root] = StatCache(self.cache.load_stats(root), started_ns=int(self.started * 1e9))
        return self.stats[root]

    def inputs(self, stage: PlannedStage, step: Step, state: Record, inputs: _Inputs) -> _Inputs:
        """The key record of ``step`` over ``state``, with what computing it gathered (checksums, downloads)."""
        platform, epoch = stage.platform, self.options.epoch
        instruction = step.instruction
        if isinstance(instruction, ins.Run):
            network = self.network(step)
            roots = lambda source: self.mount_root(source, stage, step.line)  # noqa: E731
            binds, sums = mounts.key_inputs(step, roots, epoch=epoch)
            inputs.checksums.extend(sums)
            record = cachekey.run_record(
                state, step, platform=platform, network=network, hostname=self.hostname, epoch=epoch, mounts=binds
            )
            inputs.record = record
            return inputs
        if isinstance(instruction, ins.Workdir):
            inputs.record = cachekey.workdir_record(state, step, platform=platform, epoch=epoch)
            return inputs
        assert isinstance(instruction, ins.Copy | ins.Add)
        sources: list[Record] = []
        source = step.source or Source("context")
        if source.kind == "url":
            from builder.fetch import download

            assert isinstance(instruction, ins.Add)
            for url in instruction.sources:
                inputs.checksums.append(None)
                if instruction.checksum:
                    sources.append({"url": url, "checksum": instruction.checksum})
                    continue
                into = self.store.scratch_dir("fetch")
                inputs.scratch.append(into)
                got = download(url, into)
                inputs.downloads[url] = got
                with open(got.path, "rb") as f:
                    content = "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
                fetched: Record = {"url": url, "content": content}
                if epoch is not None:
                    fetched["mtime"] = max(0, min(got.mtime, epoch))
                sources.append(fetched)
        elif source.kind == "git":
            assert isinstance(instruction, ins.Add)
            for text in instruction.sources:
                inputs.checksums.append(None)
                git, resolved = self.git_source(instruction, text, inputs)
                keep = self.keeps_git_dir(instruction, git)
                record: Record = {"git": git.remote, "commit": resolved.sha if keep else resolved.key}
                record.update(subdir=git.subdir, keep_git_dir=keep, submodules=git.submodules is not False)
                sources.append(record)
        elif instruction.sources:
            named = (
                self.context_image(source.ref, stage.platform, step.line) if source.kind == "named-context" else None
            )
            if source.kind == "context" or (source.kind == "named-context" and named is None):
                tree = self.source_tree(source, stage, step.line)
                assert isinstance(tree, copying.ContextTree)
                stats = self.stat_cache(tree.root)
                links: dict[tuple[int, int], str] = {}
                with self._lock:  # the stat cache is one per context, shared by every stage
                    parents = isinstance(instruction, ins.Copy) and instruction.parents
                    for path in instruction.sources:
                        sums = checksum_source(
                            tree,
                            path,
                            stats=stats,
                            epoch=epoch,
                            links=links,
                            excludes=instruction.excludes,
                            parents=parents,
                        )
                        sources.append({"context": source.ref or ".", "path": path, "matches": sums.matches})
                        inputs.checksums.append(sums)
            else:
                if source.kind == "stage":
                    origin = {"stage": self.plan.stage(source.stage).display}
                    diff_ids = self.results[source.stage].rootfs.diff_ids
                else:
                    image = named or self.store_image(source.ref, stage.platform, step.line)
                    origin = {"image": source.ref}
                    diff_ids = tuple(i for _, i in image.layer_pairs())
                layers = [str(d) for d in diff_ids]
                for path in instruction.sources:
                    sources.append({**origin, "layers": layers, "path": path})
                    inputs.checksums.append(None)
        linked = _linked(step)
        inputs.record = cachekey.copy_record(state, step, sources, platform=platform, epoch=epoch, linked=linked)
        return inputs

    def git_source(self, instruction: ins.Add, text: str, inputs: _Inputs) -> tuple[GitRef, Resolved]:
        """An ADD git source and the commit its ref names now (remembered for the checkout on a miss)."""
        from builder.gitsource import resolve

        git = parse_git_ref(text)
        assert git is not None  # the plan made it a git source
        if instruction.checksum:
            if git.checksum and git.checksum != instruction.checksum:
                raise BuildError(f"checksum mismatch {instruction.checksum!r} != {git.checksum!r}")
            git = replace(git, checksum=instruction.checksum)
        if instruction.keep_git_dir and git.keep_git_dir is False:
            raise BuildError("inconsistent keep-git-dir configuration")
        scratch = self.store.scratch_dir("git")
        inputs.scratch.append(scratch)
        resolved = resolve(git, scratch)
        inputs.gits[text] = (git, resolved)
        return git, resolved

    @staticmethod
    def keeps_git_dir(instruction: ins.Add, git: GitRef) -> bool:
        return bool(instruction.keep_git_dir or git.keep_git_dir) and not git.subdir

    @_serialized
    def lookup(self, key: Digest) -> CacheEntry | None:
        """The entry of ``key`` if its layer is in the store, else from a ``--cache-from`` cache (its layer is
        copied into the store, and the entry recorded locally, once something needs the layer: ``fetch_imported``);
        a hit in the store leases it to this build."""
        with self.cache.guard():
            entry = self.cache.get(key)
            if entry is not None and (entry.layer is None or self.blobs.has(entry.layer.digest)):
                self.cache.use(key, self.build_id)
                return entry
            for imported in self.imported:
                found = imported.get(key)
                if found is None:
                    continue
                if not imported.available(found):
                    self.progress.status(f"WARNING: {imported.where}: the layer of {found.step!r} is missing")
                    continue
                if found.layer is None or self.blobs.has(found.layer.digest):
                    self.cache.put(found, None, self.build_id)
                else:
                    self.deferred.setdefault(key, (imported, found))  # recorded once its layer is fetched
                return found
        return None

    @_serialized
    def fetch_imported(self, rootfs: Rootfs) -> Rootfs:
        """Fetch the layers of ``rootfs`` that came from a ``--cache-from`` hit and are not in the store yet, and
        record their entries in the store's index; a layer that cannot be fetched now fails the build."""
        for key, (imported, entry) in list(self.deferred.items()):
            if entry.diff_id not in rootfs.diff_ids:
                continue
            with self.cache.guard():
                self.progress.status(f"importing the layer of {entry.step!r} ({entry.diff_id}) from the cache")
                imported.fetch(entry, self.blobs, self.store.limits)
                self.cache.put(entry, None, self.build_id)
            del self.deferred[key]
        return rootfs

    def remember(
        self,
        key: Digest,
        inputs: _Inputs,
        stage: PlannedStage,
        line: int,
        shown: str,
        history: str,
        new: Rootfs,
        old: Rootfs | None = None,
        about: dict[str, str] | None = None,
    ) -> None:
        changed = len(new.layers) > len(old.layers if old is not None else ())
        entry = CacheEntry(
            key=key,
            record=inputs.record,
            layer=new.layers[-1] if changed else None,
            diff_id=new.diff_ids[-1] if changed else None,
            history=history,
            step=shown,
            stage=stage.display,
            line=line,
            dockerfile=self.dockerfile,
            image=",".join(self.options.names),
            about=about or {},
            created=self.started,
            parents=tuple(zip(old.layers, old.diff_ids, strict=True)) if old is not None else (),
        )
        self.cache.put(entry, inputs.files, self.build_id)

    def explain(self, stage: PlannedStage, step: Step, key: Digest, inputs: _Inputs, about: dict[str, str]) -> str:
        """Why ``step`` missed, from the closest earlier record of the same stage and line."""
        if self.options.no_cache:
            return "--no-cache"
        if stage.name in self.options.no_cache_filter:
            return f"--no-cache-filter {stage.name}"
        if self.cache.get(key) is not None:
            return "the cached layer is no longer in the store"
        candidates = self.cache.candidates(stage.display, step.line)
        for imported in self.imported:
            candidates.extend(imported.candidates(stage.display, step.line))
        same = [c for c in candidates if c.dockerfile == self.dockerfile] or candidates
        if not same:
            return "no earlier build of this step is in the cache"
        record = inputs.record
        best = min(same, key=lambda c: cachekey.score(record, c.record))
        old_files = None
        if any(record.get(name) != best.record.get(name) for name in ("sources", "mounts")):
            old_files = self.cache.files(best.key)
        reasons = cachekey.differences(
            record,
            best.record,
            new_about=about,
            old_about={**best.about, "step": best.step},
            new_files=inputs.files,
            old_files=old_files,
        )
        return "; ".join(reasons) or "no earlier build of this step is in the cache"

    def solve(self) -> BuildResult:
        self.snapshots.sweep()
        cgroups.sweep()  # the step cgroups of engines killed before they could remove them
        self.build_id = self.cache.start_build(self.dockerfile)
        try:
            if self.options.cache_from:
                from builder.cacheshare import ImportedCache

                for spec in self.options.cache_from:
                    imported = ImportedCache.open(spec, self.options.remote)
                    if imported.warning:
                        self.progress.status(f"WARNING: {imported.warning}")
                    self.imported.append(imported)
            working = sum(1 + sum(_works(s) for s in stage.steps) for stage in self.plan.stages)
            self.progress.expect(working)
            try:
                self.run_stages()
            finally:
                if self._sandboxes is not None:
                    self._sandboxes.close()  # every container is over
            target = self.plan.stage(self.plan.target)
            result = self.results[target.index]
            self.progress.status("writing image")
            layers = list(self.fetch_imported(result.rootfs).layers)
            with self.cache.guard():  # leased until release(), which the caller calls once it is tagged
                image = store_image(self.store.layout, result.config, layers)
                self.cache.lease_image(self.build_id, image.descriptor)
            for spec in self.options.cache_to:
                self.export_cache(spec)
        except BaseException:
            self.release()
            raise
        return BuildResult(image, target, tuple(self.report), self.release)

    def run_stages(self) -> None:
        """Build every planned stage, each as soon as the stages it needs are built, up to ``jobs`` at a time.

        Stages run in threads: a RUN waits on its container and a COPY mostly on the disk, so threads overlap the
        work while one process keeps the store, the cache index and the display coherent. The first failure
        cancels the rest (their running containers are killed) and is the one reported."""
        stages = list(self.plan.stages)
        jobs = max(1, self.options.jobs or os.cpu_count() or 1)
        if jobs == 1 or len(stages) == 1:
            for stage in stages:
                self.results[stage.index] = self.stage(stage)
            return
        import concurrent.futures

        pending = {stage.index: stage for stage in stages}
        running: dict[concurrent.futures.Future[StageResult], int] = {}
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="stage") as pool:
            try:
                while pending or running:
                    for index, stage in list(pending.items()):
                        if len(running) >= jobs:
                            break
                        if all(dep in self.results for dep in stage.deps):
                            running[pool.submit(self.stage, stage)] = index
                            del pending[index]
                    if not running:
                        raise BuildError("internal error: stages wait on each other")  # the plan refuses cycles
                    done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
                    for future in done:
                        index = running.pop(future)
                        self.results[index] = future.result()
            except BaseException:
                self.cancelled.set()
                failures = [f.exception() for f in concurrent.futures.wait(running).done]
                real = [e for e in failures if e is not None and not isinstance(e, Cancelled)]
                if real and isinstance(sys.exc_info()[1], Cancelled):
                    raise real[0] from None
                raise

    def export_cache(self, spec: CacheSpec) -> None:
        """``--cache-to``: ``mode=min`` exports the entries of the image's own layers (the target stage and the
        stages it is built FROM), ``mode=max`` every entry this build used or made, as BuildKit's modes do."""
        from builder.cacheshare import write_cache

        stages = [stage.index for stage in self.plan.stages] if spec.mode == "max" else list(self.image_stages)
        try:
            entries = []
            for index in stages:
                for key in self.stage_keys.get(index, []):
                    if key in self.deferred:  # a hit whose layer nothing else needed: the export needs it
                        self.fetch_imported(self.results[index].rootfs)
                    entry = self.cache.get(key)
                    if entry is not None:
                        entries.append(entry)
            self.progress.status(f"exporting cache to {spec.location} ({len(entries)} entries, mode={spec.mode})")
            write_cache(spec, entries, self.store, remote=self.options.remote, on_status=self.progress.status)
        except BuildError as err:
            if not spec.ignore_error:
                raise
            self.progress.status(f"WARNING: {err.message} (ignore-error=true: the build goes on)")

    def release(self) -> None:
        """End the build in the cache: keep what the stat caches learnt and the report, drop the leases. The
        caller calls it once the image is tagged and exported, so that a prune cannot take its layers before."""
        if self.build_id:
            build, self.build_id = self.build_id, ""
            for root, stats in self.stats.items():
                changes = stats.changes()
                if changes is not None:
                    self.cache.save_stats(root, changes, len(stats.rows))
            self.cache.finish_build(build, [r.to_json() for r in self.report])
            self.cache.close()


def _image_stages(plan: BuildPlan) -> tuple[int, ...]:
    """The stages whose layers make the image: the target, the stage it is built FROM, and so on down."""
    stages, index = [], plan.target
    while True:
        stages.append(index)
        base = plan.stage(index).base
        if base.kind != "stage":
            return tuple(stages)
        index = base.stage


def io_message(err: OSError, root: Path) -> str:
    """An I/O error in words, naming the file when it is known (a full disk: else the store it was writing to)."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "no space left on device" if err.errno == errno.ENOSPC else "disk quota exceeded"
        return f"{what} while writing {err.filename or f'to the store at {root}'}"
    return f"{err.strerror or err}: {err.filename}" if err.filename else str(err.strerror or err)


def replace_owner(item: LayerItem) -> LayerItem:
    """Files of a directory context are root's, as BuildKit's file sender sends them."""
    return LayerItem(replace(item.entry, uid=0, gid=0), item.open)


def solve(plan: BuildPlan, store: Store, options: BuildOptions, progress: Progress) -> BuildResult:
    """Execute ``plan`` and store the target stage's image (untagged: tagging is the caller's)."""
    return _Solver(plan, store, options, progress).solve()
