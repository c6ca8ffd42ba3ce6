"""Step cache keys: the record of everything that can change a step's result, its digest, and why two differ.

Pure: values in, records and sentences out; docs/cache.md is the specification. A record is a JSON object with a
version; a key is the sha256 of the record's canonical JSON. Fields that are empty are left out, so a field added
later (a mount, say) does not change the keys of steps that do not use it.

The parent of a step is the state it starts from: the base (an image's manifest digest, scratch, or the final
state of another stage) for a stage's first step, else the previous step's key *and the layer it produced*. The
layer is there so that a step re-run with ``--no-cache`` (whose entry is then replaced) or raced by a concurrent
build can never be paired, on a later hit, with children that were built on a different result.

A ``COPY --link``/``ADD --link`` step has no parent in its record (its layer is made on an empty tree, so it
does not depend on what is below it), and the step after it names both the linked step and the state it was
placed on (``linked_parent``): a later step still depends on every layer under it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from builder.frontend import instructions as ins
from builder.plan import Step, instruction_json
from oci.canonical import canonical_json
from oci.descriptor import Platform
from oci.digest import Digest

__all__ = [
    "VERSION",
    "Files",
    "differences",
    "image_parent",
    "key_of",
    "copy_record",
    "linked_parent",
    "run_record",
    "scratch_parent",
    "score",
    "step_parent",
    "tree_record",
    "workdir_record",
]

VERSION = 1
SHOWN = 5  # names listed in one explanation before "and N more"

Record = dict[str, Any]
#: For explanations only (never in a key): per source, per match, each file's short digest by relative path.
Files = list[dict[str, dict[str, str]]]


def key_of(record: Mapping[str, Any]) -> Digest:
    return Digest.of_bytes(canonical_json(record))


# ------------------------------------------------------------------------------------------------ parents


def scratch_parent() -> Record:
    return {"scratch": True}


def image_parent(manifest: Digest) -> Record:
    return {"image": str(manifest)}


def step_parent(key: Digest, layer: Digest | None) -> Record:
    return {"step": str(key), "layer": str(layer) if layer is not None else None}


def linked_parent(key: Digest, layer: Digest | None, below: Record) -> Record:
    """The state after a ``--link`` step: its key and layer, and the state it was placed on (whose digest stands
    for it, so that a run of linked steps does not nest records)."""
    return {"step": str(key), "layer": str(layer) if layer is not None else None, "below": str(key_of(below))}


# ------------------------------------------------------------------------------------------------ records


def _base(op: str, parent: Record, platform: Platform, epoch: int | None) -> Record:
    record: Record = {"v": VERSION, "op": op, "parent": parent, "platform": str(platform)}
    if epoch is not None:
        record["epoch"] = epoch
    return record


def _instruction(instruction: ins.Instruction) -> Record:
    return {"keyword": instruction.keyword, **instruction_json(instruction)}


def run_record(
    parent: Record,
    step: Step,
    *,
    platform: Platform,
    network: str,
    hostname: str,
    epoch: int | None,
    mounts: Sequence[Record] = (),
) -> Record:
    """RUN: the command, and everything the process can see that is not in the parent's files. ``mounts``: what
    each bind mount shows (its target and source, and the source's content as COPY's sources record it); only
    present when there are binds, so RUN steps without them keep their keys. Secrets (only their ids, in the
    instruction), SSH agents, tmpfs and cache mounts add nothing."""
    record = _base("run", parent, platform, epoch)
    record["instruction"] = _instruction(step.instruction)
    record["argv"] = list(step.argv)
    if step.script is not None:
        record["script"] = step.script.text
    record["env"] = list(step.env)
    if step.build_args:
        record["build_args"] = {k: v for k, v in step.build_args}
    record["user"] = step.user
    record["workdir"] = step.workdir
    record["shell"] = list(step.shell)
    record["network"] = network
    record["hostname"] = hostname
    if mounts:
        record["mounts"] = list(mounts)
    return record


def copy_record(
    parent: Record,
    step: Step,
    sources: Sequence[Record],
    *,
    platform: Platform,
    epoch: int | None,
    linked: bool = False,
) -> Record:
    """COPY and ADD: the flags (in the instruction), the destination, and each source's identity and content.
    A ``linked`` step (``--link``) leaves its parent out: its layer does not depend on it."""
    op = "add" if isinstance(step.instruction, ins.Add) else "copy"
    record = _base(op, {"linked": True} if linked else parent, platform, epoch)
    record["instruction"] = _instruction(step.instruction)
    record["dest"] = step.dest
    record["sources"] = list(sources)
    return record


def workdir_record(parent: Record, step: Step, *, platform: Platform, epoch: int | None) -> Record:
    """WORKDIR: the directory, and the user who will own it if it is created."""
    record = _base("workdir", parent, platform, epoch)
    record["instruction"] = _instruction(step.instruction)
    record["path"] = step.dest
    record["user"] = step.user
    return record


def tree_record(name: str, tree: str, *, platform: Platform, epoch: int | None) -> Record:
    """``FROM NAME`` where NAME is a ``--build-context`` directory: its content is the one layer."""
    record = _base("context-dir", scratch_parent(), platform, epoch)
    record["context"] = name
    record["tree"] = tree
    return record


# ----------------------------------------------------------------------------------------- explanations


def _listed(names: Sequence[str], what: str) -> str:
    shown = ", ".join(names[:SHOWN])
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return f"{shown}{more} {what}"


def _env_map(entries: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for entry in entries:
        key, _, value = entry.partition("=")
        out[key] = value
    return out


def _mapping_changes(label: str, new: Mapping[str, Any], old: Mapping[str, Any]) -> list[str]:
    out = []
    for name in sorted(set(new) | set(old)):
        if name not in old:
            out.append(f"{label} {name} added ({new[name]})")
        elif name not in new:
            out.append(f"{label} {name} removed (was {old[name]})")
        elif new[name] != old[name]:
            out.append(f"{label} {name} changed ({old[name]} -> {new[name]})")
    return out


def _file_changes(new: Mapping[str, str], old: Mapping[str, str], prefix: str) -> list[str]:
    def show(rel: str) -> str:
        return f"{prefix}/{rel}" if prefix and rel else (prefix or rel or ".")

    changed = [show(r) for r in new if r in old and new[r] != old[r]]
    added = [show(r) for r in new if r not in old]
    removed = [show(r) for r in old if r not in new]
    out = []
    if changed:
        out.append(_listed(changed, "changed"))
    if added:
        out.append(_listed(added, "added"))
    if removed:
        out.append(_listed(removed, "removed"))
    return out


def _source_changes(
    new: Sequence[Record], old: Sequence[Record], new_files: Files | None, old_files: Files | None
) -> list[str]:
    if len(new) != len(old):
        return ["the sources changed"]
    out: list[str] = []
    for index, (a, b) in enumerate(zip(new, old, strict=True)):
        if a == b:
            continue
        if "matches" in a and "matches" in b:
            a_matches = {m["path"]: m for m in a["matches"]}
            b_matches = {m["path"]: m for m in b["matches"]}
            added = [p for p in a_matches if p not in b_matches]
            removed = [p for p in b_matches if p not in a_matches]
            if added:
                out.append(_listed(added, "now matched"))
            if removed:
                out.append(_listed(removed, "no longer matched"))
            fa = new_files[index] if new_files is not None and index < len(new_files) else None
            fb = old_files[index] if old_files is not None and index < len(old_files) else None
            for path, match in a_matches.items():
                if path not in b_matches or b_matches[path] == match:
                    continue
                if fa is not None and fb is not None and path in fa and path in fb:
                    out.extend(_file_changes(fa[path], fb[path], path))
                else:
                    out.append(f"{path or '.'} changed")
        elif "layers" in a and "layers" in b:
            where = f"stage {a['stage']}" if "stage" in a else f"image {a.get('image', '?')}"
            out.append(f"files from {where} changed")
        elif "url" in a:
            out.append(f"{a['url']} changed")
        elif "git" in a:
            out.append(f"{a['git']} now at {a.get('commit', '?')} (was {b.get('commit', '?')})")
        else:
            out.append(f"source {a.get('path', index)} changed")
    return out or ["the sources changed"]


def _mount_changes(
    new: Sequence[Record], old: Sequence[Record], new_files: Files | None, old_files: Files | None
) -> list[str]:
    """RUN bind mounts (``files`` are then per bind): ``bind mount /src: app.py changed``."""
    if [m.get("target") for m in new] != [m.get("target") for m in old]:
        return ["the bind mounts changed"]
    out: list[str] = []
    for index, (a, b) in enumerate(zip(new, old, strict=True)):
        if a == b:
            continue
        fa = [new_files[index]] if new_files is not None and index < len(new_files) else None
        fb = [old_files[index]] if old_files is not None and index < len(old_files) else None
        out.extend(f"bind mount {a.get('target')}: {why}" for why in _source_changes([a], [b], fa, fb))
    return out


def _parent_change(new: Record, old: Record, new_about: Mapping[str, str], old_about: Mapping[str, str]) -> str:
    if "image" in new and "image" in old:
        base = new_about.get("base") or "the base image"
        return f"parent changed: base image {base} now {new['image']}"
    if "step" in new and "step" in old:
        if new_about.get("base"):  # a stage's first step over a --build-context directory
            return f"parent changed: {new_about['base']} changed"
        if new["step"] == old["step"] and new.get("layer") == old.get("layer"):
            return "parent changed: the layers under the previous (--link) step changed"
        if new["step"] == old["step"]:
            return f"parent changed: the previous step's layer is now {new['layer']}"
        return "parent changed: an earlier step changed"
    stage = new_about.get("stage")
    if stage:
        return f"parent changed: stage {stage} changed"
    was = old_about.get("base") or old_about.get("stage") or next(iter(old), "?")
    now = new_about.get("base") or next(iter(new), "?")
    return f"parent changed: the base is now {now} (was {was})"


def differences(
    new: Mapping[str, Any],
    old: Mapping[str, Any],
    *,
    new_about: Mapping[str, str] | None = None,
    old_about: Mapping[str, str] | None = None,
    new_files: Files | None = None,
    old_files: Files | None = None,
) -> list[str]:
    """Why ``new`` is not ``old``, in the user's terms, most telling first ([] when they are equal).

    ``about`` holds what a record does not (the base's name, the stage it comes from, the step as written)."""
    new_about = new_about or {}
    old_about = old_about or {}
    if new.get("v") != old.get("v"):
        return [f"the cache record format changed (version {old.get('v')} -> {new.get('v')})"]
    out: list[str] = []
    if new.get("op") != old.get("op"):
        return [f"instruction changed (was: {old_about.get('step', old.get('op'))})"]
    if new.get("parent") != old.get("parent"):
        out.append(_parent_change(new["parent"], old["parent"], new_about, old_about))
    if new.get("platform") != old.get("platform"):
        out.append(f"platform changed ({old.get('platform')} -> {new.get('platform')})")
    if new.get("epoch") != old.get("epoch"):
        out.append(f"SOURCE_DATE_EPOCH changed ({old.get('epoch', 'unset')} -> {new.get('epoch', 'unset')})")
    instruction_changed = new.get("instruction") != old.get("instruction")
    if instruction_changed:
        out.append(f"instruction changed (was: {old_about.get('step', '?')})")
    args_new, args_old = new.get("build_args", {}), old.get("build_args", {})
    out.extend(_mapping_changes("build arg", args_new, args_old))
    env_new = {k: v for k, v in _env_map(new.get("env", [])).items() if k not in args_new}
    env_old = {k: v for k, v in _env_map(old.get("env", [])).items() if k not in args_old}
    out.extend(_mapping_changes("ENV", env_new, env_old))
    for name, label in (("user", "USER"), ("workdir", "WORKDIR"), ("network", "network"), ("hostname", "hostname")):
        if new.get(name) != old.get(name):
            out.append(f"{label} changed ({old.get(name) or '(none)'} -> {new.get(name) or '(none)'})")
    if new.get("shell") != old.get("shell"):
        out.append("SHELL changed")
    if not instruction_changed:
        for name in ("argv", "script", "dest", "path"):
            if new.get(name) != old.get(name):
                out.append(f"{name} changed")
    if new.get("sources") != old.get("sources"):
        out.extend(_source_changes(new.get("sources", []), old.get("sources", []), new_files, old_files))
    if new.get("tree") != old.get("tree"):
        out.append(f"the files of context {new.get('context')} changed")
    if new.get("mounts") != old.get("mounts"):
        out.extend(_mount_changes(new.get("mounts", []), old.get("mounts", []), new_files, old_files))
    known = {"v", "op", "parent", "platform", "epoch", "instruction", "build_args", "env", "user", "workdir"}
    known |= {"network", "hostname", "shell", "argv", "script", "dest", "path", "sources", "tree", "context"}
    known |= {"mounts"}
    for name in sorted((set(new) | set(old)) - known):
        if new.get(name) != old.get(name):
            out.append(f"{name} changed")
    return out


def score(new: Mapping[str, Any], old: Mapping[str, Any]) -> int:
    """How far apart two records are, to pick the closest earlier one (0: equal)."""
    return sum(1 for name in set(new) | set(old) if new.get(name) != old.get(name))
