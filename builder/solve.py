"""The build orchestrator: a plan in, every step executed, the target stage committed as an image.

Stages run in plan order (a stage's dependencies always come first). Each stage starts from its base — nothing
(``scratch``), an image in the store, an earlier stage's result, or a named build context (an OCI layout, whose
blobs are copied into the store, or a directory, which becomes a one-layer root filesystem) — and each step
either changes only the config (the plan already says how) or makes a layer:

- RUN runs in a throwaway container over the stage's snapshots (``executor``); its upper directory is diffed
  (``snapshot.upper_items``) into the layer and then kept as that layer's snapshot;
- COPY, ADD and WORKDIR compute their layer's entries from their sources and a read-only view of the stage
  (``copy``); nothing runs and nothing is mounted.

A layer is stored uncompressed (its digest is its diff_id) so that no step waits for a compressor: outputs and
pushes compress once, later. A step whose diff is empty adds its history entry with ``empty_layer`` and no
layer, as BuildKit does. Timestamps (the config's and the history's ``created``, mtimes of created directories)
are the build's start time, or ``SOURCE_DATE_EPOCH``, which also clamps every mtime written into a layer.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from builder import copy as copying
from builder.commit import rfc3339, store_image
from builder.context import load_ignore_rules
from builder.errors import BuildError, DockerfileError, ImageNotFound
from builder.executor import DEFAULT_HOSTNAME, RunSpec, run_container
from builder.fetch import download
from builder.frontend import instructions as ins
from builder.images import find_image
from builder.plan import DEFAULT_PATH, HISTORY_COMMENT, BuildPlan, PlannedStage, Source, Step
from builder.progress import Progress, StepProgress
from builder.root import Store
from builder.rootfs import Rootfs, ensure_skeleton
from builder.snapshot import RootView, SnapshotStore, remove_dir, upper_items
from oci import mediatypes as mt
from oci.compression import Compression
from oci.config import History, ImageConfig
from oci.descriptor import Descriptor, Platform
from oci.errors import OCIError
from oci.frozen import FrozenMap
from oci.image import Image, load_image
from oci.layer import LayerItem, tree_items, write_layer
from oci.layout import ImageLayout

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


@dataclass(frozen=True)
class StageResult:
    rootfs: Rootfs
    config: ImageConfig


@dataclass(frozen=True)
class BuildResult:
    image: Image
    stage: PlannedStage


def _works(step: Step) -> bool:
    """Whether a step does work (and shows in the progress), rather than only changing the config."""
    return isinstance(step.instruction, ins.Run | ins.Copy | ins.Add | ins.Workdir) and not step.empty_layer


def _display(instruction: ins.Instruction) -> str:
    return " ".join(instruction.original.split())


class _Solver:
    def __init__(self, plan: BuildPlan, store: Store, options: BuildOptions, progress: Progress) -> None:
        self.plan = plan
        self.store = store
        self.options = options
        self.progress = progress
        self.blobs = store.layout.store
        self.snapshots = SnapshotStore(store.root / "snapshots")
        self.started = time.time()
        self.timestamp = options.epoch if options.epoch is not None else int(self.started)
        self.created = rfc3339(self.timestamp)
        self.results: dict[int, StageResult] = {}
        self._context_tree: copying.SourceTree | None = None
        self._images: dict[tuple[str, str], Image] = {}
        self._skeleton: Path | None = None
        self.hostname = options.build_args.get("BUILDKIT_SANDBOX_HOSTNAME", "") or DEFAULT_HOSTNAME

    # --- errors carry the Dockerfile location

    def located(self, err: BuildError, line: int) -> DockerfileError:
        if isinstance(err, DockerfileError):
            return err.located(self.plan.path, line)
        return DockerfileError(err.message, path=self.plan.path, line=line, hint=err.hint)

    # --- bases and sources

    def store_image(self, ref: str, platform: Platform, line: int) -> Image:
        key = (ref, str(platform))
        if key not in self._images:
            try:
                image, _ = find_image(self.store.layout, ref, platform)
            except ImageNotFound:
                raise DockerfileError(
                    f"{ref}: no such image in the local store",
                    path=self.plan.path,
                    line=line,
                    hint="pulling from registries is not available yet; add it with 'pybuild import'",
                ) from None
            self._images[key] = image
        return self._images[key]

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
            for desc in (image.manifest.config, *image.layers):
                if not self.blobs.has(desc.digest):
                    with layout.store.open(desc.digest, desc.size) as stream:
                        self.blobs.put(stream, desc.digest, desc.size)
            self.blobs.put_bytes(image.raw_manifest, image.digest)
            stored = Image(self.blobs, image.descriptor)
        except OCIError as err:
            raise DockerfileError(f"--build-context {name}: {err}", path=self.plan.path, line=line) from None
        self._images[key] = stored
        return stored

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

    def view(self, rootfs: Rootfs) -> RootView:
        return rootfs.view(self.snapshots, self.blobs)

    def skeleton(self) -> Path:
        if self._skeleton is None:
            self._skeleton = ensure_skeleton(self.store.root)
        return self._skeleton

    def base(self, stage: PlannedStage) -> StageResult:
        base = stage.base
        platform = stage.platform
        if base.kind == "scratch":
            config = ImageConfig(architecture=platform.architecture, os=platform.os, variant=platform.variant)
            return StageResult(Rootfs(), config)
        if base.kind == "stage":
            return self.results[base.stage]
        if base.kind == "context":
            image = self.context_image(base.ref, platform, stage.line)
            if image is None:
                return self.directory_base(base.ref, platform)
        else:
            image = self.store_image(base.ref, platform, stage.line)
        try:
            config = image.config
            pairs = image.layer_pairs()
        except OCIError as err:
            raise DockerfileError(f"{base.ref}: {err}", path=self.plan.path, line=stage.line) from None
        return StageResult(Rootfs(tuple(d for d, _ in pairs), tuple(i for _, i in pairs)), config)

    def directory_base(self, name: str, platform: Platform) -> StageResult:
        """``FROM NAME`` where ``--build-context NAME=DIR``: the directory is the root filesystem."""
        directory = Path(self.options.contexts[name])
        items = tree_items(directory, clamp_mtime=self.options.epoch)
        items = (replace_owner(item) for item in items)
        rootfs, _ = self.write_layer(Rootfs(), items)
        config = ImageConfig(architecture=platform.architecture, os=platform.os, variant=platform.variant)
        return StageResult(rootfs, config)

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
                return copying.ContextTree(Path(self.options.contexts[source.ref]))
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

        with self.blobs.writer() as blob:
            info = write_layer(everything(), blob, Compression.NONE)
            digest = blob.commit()
            size = blob.size
        return rootfs.with_layer(Descriptor(mt.OCI_LAYER, digest, size), info.diff_id), True

    # --- steps

    def run(self, step: Step, rootfs: Rootfs, out: StepProgress) -> Rootfs:
        run = step.instruction
        assert isinstance(run, ins.Run)
        if step.mounts:
            raise BuildError("RUN --mount is not supported yet")
        if run.security and run.security != "sandbox":
            raise BuildError(f"RUN --security={run.security} is not supported")
        if os.geteuid() != 0:
            raise BuildError("RUN needs root for now (rootless builds are planned)", hint="run pybuild as root")
        network = run.network or self.options.network
        if network not in ("default", "none", "host"):
            raise BuildError(f"unsupported network mode {network!r} (expected default, none or host)")
        env = list(step.env) + list(step.proxy_env)
        if not any(e.split("=", 1)[0] == "PATH" for e in env):
            env.append(f"PATH={DEFAULT_PATH}")
        spec = RunSpec(
            argv=step.argv,
            env=tuple(env),
            user=step.user,
            cwd=step.workdir or "/",
            network=network,
            hostname=self.hostname,
            scripts=((step.script.name, step.script.text),) if step.script is not None else (),
        )
        lowers = rootfs.lowers(self.snapshots, self.blobs, self.skeleton())
        scratch = self.store.scratch_dir("run")
        try:
            status = run_container(scratch, lowers, spec, out.log, self.progress.refresh)
            if status != 0:
                shown = " ".join(step.argv)
                raise BuildError(f'process "{shown}" did not complete successfully: exit code: {status}')
            upper = scratch / "upper"
            items = upper_items(upper, RootView(lowers), clamp_mtime=self.options.epoch)
            new, changed = self.write_layer(rootfs, items)
            if changed:
                self.snapshots.adopt(new.diff_ids[-1], upper)
            return new
        finally:
            remove_dir(scratch)

    def copy(self, stage: PlannedStage, step: Step, rootfs: Rootfs) -> Rootfs:
        instruction = step.instruction
        assert isinstance(instruction, ins.Copy | ins.Add)
        is_add = isinstance(instruction, ins.Add)
        name = "ADD" if is_add else "COPY"
        if instruction.link:
            raise BuildError(f"{name} --link is not supported yet")
        if instruction.excludes:
            raise BuildError(f"{name} --exclude is not supported yet")
        if isinstance(instruction, ins.Copy) and instruction.parents:
            raise BuildError("COPY --parents is not supported yet")
        source = step.source or Source("context")
        if source.kind == "git":
            raise BuildError("ADD of a git repository is not supported yet")
        scratch = self.store.scratch_dir("copy")
        try:
            sources: list[copying.CopySource] = []
            if source.kind == "url":
                assert isinstance(instruction, ins.Add)
                for number, url in enumerate(instruction.sources):
                    into = scratch / f"url-{number}"
                    into.mkdir()
                    got = download(url, into, checksum=instruction.checksum)
                    tree = copying.MemoryTree(got.name, 0o600, got.mtime, path=got.path)
                    sources.append(copying.CopySource(tree, got.name, unpack=bool(instruction.unpack)))
            elif instruction.sources:
                tree = self.source_tree(source, stage, step.line)
                unpack = is_add and (instruction.unpack is None or instruction.unpack)  # type: ignore[union-attr]
                sources.extend(copying.CopySource(tree, path, unpack=unpack) for path in instruction.sources)
            for heredoc in instruction.heredocs:
                tree = copying.MemoryTree(heredoc.name, 0o644, self.timestamp, data=heredoc.content.encode())
                sources.append(copying.CopySource(tree, heredoc.name))
            options = copying.CopyOptions(
                now=self.timestamp,
                chown=instruction.chown,
                chmod=instruction.chmod,
                clamp=self.options.epoch,
                scratch=scratch,
            )
            items = copying.copy_items(sources, step.dest, self.view(rootfs), options)
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
        base = self.base(stage)
        rootfs = base.rootfs
        history = list(base.config.history)
        total = sum(_works(s) for s in stage.steps) + 1
        label = stage.display if len(self.plan.stages) > 1 else ""  # BuildKit names stages only when several
        if stage.base.kind != "stage":
            origin = self.progress.step(
                f"FROM {stage.base.ref if stage.base.kind != 'scratch' else 'scratch'}",
                stage=label,
                index=1,
                total=total,
            )
            origin.finish()
        index = 1
        for step in stage.steps:
            instruction = step.instruction
            changed = False
            if _works(step):
                index += 1
                out = self.progress.step(_display(instruction), stage=label, index=index, total=total)
                try:
                    if isinstance(instruction, ins.Run):
                        new = self.run(step, rootfs, out)
                    elif isinstance(instruction, ins.Workdir):
                        new = self.workdir(step, rootfs)
                    else:
                        new = self.copy(stage, step, rootfs)
                except BuildError as err:
                    located = self.located(err, step.line)
                    out.fail(located.message)
                    raise located from None
                except OCIError as err:
                    located = DockerfileError(str(err), path=self.plan.path, line=step.line)
                    out.fail(located.message)
                    raise located from None
                except BaseException:
                    out.fail("interrupted")
                    raise
                out.finish()
                changed = len(new.layers) > len(rootfs.layers)
                rootfs = new
            if step.history:
                history.append(
                    History(
                        created=self.created,
                        created_by=step.history,
                        comment=HISTORY_COMMENT,
                        empty_layer=not changed,
                    )
                )
        config = replace(
            stage.config,
            diff_ids=rootfs.diff_ids,
            history=tuple(history),
            created=self.created,
        )
        return StageResult(rootfs, config)

    def solve(self) -> BuildResult:
        self.snapshots.sweep()
        working = sum(1 + sum(_works(s) for s in stage.steps) for stage in self.plan.stages)
        self.progress.expect(working)
        for stage in self.plan.stages:
            self.results[stage.index] = self.stage(stage)
        target = self.plan.stage(self.plan.target)
        result = self.results[target.index]
        self.progress.status("writing image")
        image = store_image(self.store.layout, result.config, list(result.rootfs.layers))
        return BuildResult(image, target)


def replace_owner(item: LayerItem) -> LayerItem:
    """Files of a directory context are root's, as BuildKit's file sender sends them."""
    return LayerItem(replace(item.entry, uid=0, gid=0), item.open)


def solve(plan: BuildPlan, store: Store, options: BuildOptions, progress: Progress) -> BuildResult:
    """Execute ``plan`` and store the target stage's image (untagged: tagging is the caller's)."""
    return _Solver(plan, store, options, progress).solve()
