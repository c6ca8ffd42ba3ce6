"""The operations behind ``pybuild cache``: list, inspect, measure, prune and explain the step cache.

Plain functions over a store and its cache index (``builder.cache``) that return values; ``builder.cli`` prints
them. Nothing here prints.

- ``inspect_entries`` adds to each entry its key record and the files its layer changes, read from the layer's
  tar headers alone (nothing is extracted and no root is needed): a whiteout ``.wh.NAME`` is a deletion of NAME,
  an opaque marker a deletion of everything lower layers put in its directory (``DIR/*``), and any other member
  is a change (``C``) when the layers under the step (the entry's ``parents``) leave that path, else an addition.
  Layers are read and stacked by ``builder.layerview`` (which ``pybuild diff`` and ``layers`` use too); it also
  resolves key prefixes (``find_entry``).
- ``disk_usage`` measures the distinct layers the entries hold, and how much of that an image in the store also
  uses (``ImageLayout.reachable``): only the rest is what pruning every entry would free.
- ``prune`` runs under the cache guard held exclusively, so no build is between storing or finding a layer and
  leasing its entry; it never touches an entry a running build leased. It deletes entries, then each removed
  entry's layer blob when no remaining entry holds it and no image reaches it, with that layer's snapshot
  (``ROOT/snapshots/<diff_id hex>``) and its compressed copies' memos (``ROOT/compressed/``) and blobs, under the
  same conditions. An unbounded ``--all`` (no ``keep_storage``, no ``until``) also forgets the contexts' stat
  caches, so the next build hashes its context afresh, as a first build does. Nothing else is ever deleted.
- ``last_build`` is the report of the last finished build, each miss tied to the miss it followed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from builder.cache import CacheEntry, CacheIndex
from builder.commit import rfc3339
from builder.compressed import MEMO_DIR
from builder.errors import BuildError
from builder.layerview import Stack, find_entry, read_layer, whiteout_target
from builder.root import Store
from builder.snapshot import SnapshotStore, remove_dir
from oci.canonical import load_json_object
from oci.compression import Compression
from oci.digest import Digest
from oci.errors import InvalidDigest, InvalidDocument, OCIError
from oci.store import ContentStore

__all__ = [
    "Change",
    "DiskUsage",
    "ExplainedStep",
    "LastBuild",
    "PruneOptions",
    "PruneResult",
    "disk_usage",
    "find_entry",
    "inspect_entries",
    "last_build",
    "layer_changes",
    "list_entries",
    "plan_prune",
    "prune",
    "prune_candidates",
]

_MAX_MEMO = 4096

# ------------------------------------------------------------------------------------------------ listing


def list_entries(index: CacheIndex) -> list[CacheEntry]:
    """Every entry, most recently used first."""
    return index.entries()


# ------------------------------------------------------------------------------------------------ inspect


@dataclass(frozen=True)
class Change:
    """One path a layer changes: ``A`` added, ``C`` changed (it existed below), ``D`` deleted."""

    op: str
    path: str  # absolute; "DIR/*" for an opaque directory (what lower layers put there is gone)
    type: str  # file, dir, symlink, hardlink, char, block, fifo; for a deletion, what was deleted (or whiteout)
    size: int  # bytes the layer stores for it

    def to_json(self) -> dict[str, Any]:
        return {"op": self.op, "path": self.path, "type": self.type, "size": self.size}


def layer_changes(blobs: ContentStore, entry: CacheEntry) -> list[Change]:
    """The file changes of ``entry``'s layer, in archive order; none for an entry without a layer.

    Raises ``OCIError`` when the layer or a layer under it is no longer in the store or cannot be read.
    """
    if entry.layer is None:
        return []
    below = Stack()
    for layer, _diff_id in entry.parents:
        below.apply(read_layer(blobs, layer))
    changes: list[Change] = []
    for member in read_layer(blobs, entry.layer):
        target = whiteout_target(member.path)
        if target is None:
            op = "C" if below.type_of(member.path) is not None else "A"
            changes.append(Change(op, member.path, member.type, member.size))
        elif target[1]:
            changes.append(Change("D", target[0].rstrip("/") + "/*", "opaque", 0))
        else:
            changes.append(Change("D", target[0], below.type_of(target[0]) or "whiteout", 0))
    return changes


def inspect_entry(blobs: ContentStore, entry: CacheEntry) -> dict[str, Any]:
    """``entry`` as JSON with its record, what explanations keep about it, the layers under it and its changes."""
    data = entry.to_json()
    data["record"] = dict(entry.record)
    data["about"] = dict(entry.about)
    data["parents"] = [{"layer": layer.to_json(), "diff_id": str(diff_id)} for layer, diff_id in entry.parents]
    try:
        data["changes"] = [change.to_json() for change in layer_changes(blobs, entry)]
    except OCIError as err:
        data["changes"] = None
        data["changes_error"] = str(err)
    return data


def inspect_entries(store: Store, index: CacheIndex, texts: Sequence[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """One object per key prefix that names exactly one entry, and one error message per prefix that does not."""
    found: list[dict[str, Any]] = []
    errors: list[str] = []
    for text in texts:
        try:
            entry = find_entry(index, text)
        except BuildError as err:
            errors.append(err.message)
            continue
        found.append(inspect_entry(store.layout.store, entry))
    return found, errors


# ----------------------------------------------------------------------------------------------------- du


@dataclass(frozen=True)
class UsageRecord:
    entry: CacheEntry
    shared: bool  # an image in the store uses its layer too

    def to_json(self) -> dict[str, Any]:
        assert self.entry.layer is not None
        return {
            "key": str(self.entry.key),
            "step": self.entry.step,
            "stage": self.entry.stage,
            "layer": str(self.entry.layer.digest),
            "size": self.entry.size,
            "shared": self.shared,
            "last_used": rfc3339(self.entry.last_used),
        }


@dataclass(frozen=True)
class DiskUsage:
    entries: int
    total: int  # bytes of the distinct layers the entries hold
    shared: int  # of those, bytes an image in the store also uses
    records: tuple[UsageRecord, ...]  # the entries with a layer, largest first

    @property
    def reclaimable(self) -> int:
        return self.total - self.shared

    def to_json(self, verbose: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "entries": self.entries,
            "total": self.total,
            "shared": self.shared,
            "reclaimable": self.reclaimable,
        }
        if verbose:
            data["records"] = [record.to_json() for record in self.records]
        return data


def disk_usage(store: Store, index: CacheIndex) -> DiskUsage:
    """What the cache holds (layers whose blob is still in the store), and how much of it images share."""
    entries = index.entries()
    reachable = store.layout.reachable()
    blobs = store.layout.store
    layers = {e.layer.digest: e.layer.size for e in entries if e.layer is not None and blobs.has(e.layer.digest)}
    records = [UsageRecord(e, e.layer.digest in reachable) for e in entries if e.layer is not None]
    records.sort(key=lambda r: (-r.entry.size, -r.entry.last_used, str(r.entry.key)))
    return DiskUsage(
        entries=len(entries),
        total=sum(layers.values()),
        shared=sum(size for digest, size in layers.items() if digest in reachable),
        records=tuple(records),
    )


# -------------------------------------------------------------------------------------------------- prune


@dataclass(frozen=True)
class PruneOptions:
    all: bool = False  # also entries whose layer an image uses, and entries without a layer
    keep_storage: int | None = None  # stop once the layers the remaining entries hold fit in this many bytes
    until: float | None = None  # only entries last used longer ago than this many seconds


@dataclass(frozen=True)
class PruneResult:
    deleted: tuple[str, ...]  # the keys of the deleted entries
    reclaimed: int  # bytes of the blobs deleted with them

    def to_json(self) -> dict[str, Any]:
        return {"deleted": list(self.deleted), "reclaimed": self.reclaimed}


def prune_candidates(
    entries: Sequence[CacheEntry], leased: set[str], reachable: set[Digest], options: PruneOptions, now: float
) -> list[CacheEntry]:
    """The entries ``options`` select for deletion, least recently used first. Pure."""
    pool = [e for e in entries if str(e.key) not in leased]
    if not options.all:
        pool = [e for e in pool if e.layer is not None and e.layer.digest not in reachable]
    if options.until is not None:
        limit = options.until
        pool = [e for e in pool if now - e.last_used > limit]
    pool.sort(key=lambda e: (e.last_used, str(e.key)))
    if options.keep_storage is None:
        return pool
    holders: dict[Digest, int] = {}
    sizes: dict[Digest, int] = {}
    for e in entries:
        if e.layer is not None:
            holders[e.layer.digest] = holders.get(e.layer.digest, 0) + 1
            sizes[e.layer.digest] = e.layer.size
    held = sum(sizes.values())
    chosen: list[CacheEntry] = []
    for e in pool:
        if held <= options.keep_storage:
            break
        chosen.append(e)
        if e.layer is not None:
            holders[e.layer.digest] -= 1
            if not holders[e.layer.digest]:
                held -= sizes[e.layer.digest]
    return chosen


def plan_prune(store: Store, index: CacheIndex, options: PruneOptions, now: float | None = None) -> list[CacheEntry]:
    """What ``prune`` would delete now (to ask the user); ``prune`` decides again, under the guard."""
    moment = time.time() if now is None else now
    return prune_candidates(index.entries(), index.leased(), store.layout.reachable(), options, moment)


def prune(
    store: Store,
    index: CacheIndex,
    options: PruneOptions,
    *,
    only: set[str] | None = None,
    now: float | None = None,
) -> PruneResult:
    """Delete the entries ``options`` select (of ``only``, when given: the keys the user agreed to) and what only
    they held. See the module docstring for what goes and what stays."""
    moment = time.time() if now is None else now
    with index.guard(exclusive=True):
        leased = index.leased()
        reachable = store.layout.reachable()
        chosen = prune_candidates(index.entries(), leased, reachable, options, moment)
        if only is not None:
            chosen = [e for e in chosen if str(e.key) in only]
        index.delete([str(e.key) for e in chosen])
        remaining = index.entries()
        held = {e.layer.digest for e in remaining if e.layer is not None}
        held_diff_ids = {e.diff_id for e in remaining if e.diff_id is not None}
        reclaimed = 0
        done: set[Digest] = set()
        for entry in chosen:
            if entry.layer is None or entry.layer.digest in done:
                continue
            digest = entry.layer.digest
            done.add(digest)
            if digest in held or digest in reachable:
                continue
            reclaimed += _delete_blob(store.layout.store, digest)
            if entry.diff_id is not None and entry.diff_id not in held_diff_ids:
                remove_dir(SnapshotStore(store.root / "snapshots").path(entry.diff_id))
            reclaimed += _delete_compressed(store, digest, held | reachable)
        if options.all and options.keep_storage is None and options.until is None:
            index.forget_stats()
    return PruneResult(tuple(str(e.key) for e in chosen), reclaimed)


def _delete_blob(blobs: ContentStore, digest: Digest) -> int:
    try:
        size = blobs.size(digest)
    except OCIError:
        return 0  # already gone
    blobs.delete(digest)
    return size


def _delete_compressed(store: Store, source: Digest, keep: set[Digest]) -> int:
    """Remove the compressed copies' memos of ``source``, and the blobs they name unless ``keep`` has them."""
    reclaimed = 0
    for kind in Compression:
        memo = store.root / MEMO_DIR / kind.value / source.algorithm / source.encoded
        try:
            with open(memo, "rb") as f:
                raw = f.read(_MAX_MEMO + 1)
        except (FileNotFoundError, NotADirectoryError):
            continue
        copy = _memo_target(raw, source)
        if copy is not None and copy != source and copy not in keep:
            reclaimed += _delete_blob(store.layout.store, copy)
        memo.unlink(missing_ok=True)
    return reclaimed


def _memo_target(raw: bytes, source: Digest) -> Digest | None:
    if len(raw) > _MAX_MEMO:
        return None
    try:
        data = load_json_object(raw, "memo")
        if data.get("source") != str(source):
            return None
        return Digest.parse(data["digest"])
    except (InvalidDocument, InvalidDigest, KeyError, TypeError):
        return None


# ------------------------------------------------------------------------------------------------ explain


@dataclass(frozen=True)
class ExplainedStep:
    stage: str
    line: int
    step: str
    status: str  # cached, built or failed
    key: str
    reason: str = ""
    after: int | None = None  # a built step without a reason: the line of the miss of its stage it followed

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "line": self.line,
            "step": self.step,
            "status": self.status,
            "key": self.key,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class LastBuild:
    dockerfile: str
    finished: float
    steps: tuple[ExplainedStep, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "dockerfile": self.dockerfile,
            "finished": rfc3339(self.finished),
            "steps": [step.to_json() for step in self.steps],
        }


def last_build(index: CacheIndex) -> LastBuild | None:
    """The report of the build that finished last, or None when none has."""
    found = index.last_report()
    if found is None:
        return None
    dockerfile, finished, report = found
    return LastBuild(dockerfile, finished, tuple(_explained(report)))


def _explained(report: Sequence[Mapping[str, Any]]) -> list[ExplainedStep]:
    # Only the first miss of a stage is explained; the later ones follow from it (their parent changed).
    explained_at: dict[str, int] = {}
    steps = []
    for raw in report:
        stage, line, reason = str(raw.get("stage", "")), int(raw.get("line", 0)), str(raw.get("reason", ""))
        status = str(raw.get("status", ""))
        after = None
        if status == "built":
            if reason:
                explained_at[stage] = line
            else:
                after = explained_at.get(stage)
        steps.append(
            ExplainedStep(stage, line, str(raw.get("step", "")), status, str(raw.get("key", "")), reason, after)
        )
    return steps
