"""The step cache, through real builds: each input of a key misses when it changes and hits when anything outside
the key changes, the miss explanations name what changed, and the cache stays consistent under --no-cache,
concurrent builds and killed builds.

Every test reads the plain progress: ``#N CACHED`` for a hit, ``#N cache miss: REASON`` for the first missed step
of a stage, ``#N DONE`` for a step that ran.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO, CLIResult, HTTPFiles, run_pybuild, step_states, write_context

BUSYBOX = "docker.io/library/busybox:latest"


@dataclass
class Outcome:
    result: CLIResult
    steps: dict[str, str]  # step as shown (without the [stage i/n] label) -> "CACHED", "DONE" or "miss: REASON"

    def __getitem__(self, prefix: str) -> str:
        found = [state for title, state in self.steps.items() if title.startswith(prefix)]
        assert len(found) == 1, f"{prefix!r} is not one step of {list(self.steps)}"
        return found[0]

    @property
    def image(self) -> str:
        return re.findall(r"image (sha256:[0-9a-f]{64})", self.result.err)[-1]


def build(ctx: Path, *args: str, env: dict[str, str] | None = None) -> Outcome:
    result = run_pybuild("build", "--progress", "plain", *args, str(ctx), env=env)
    assert result.code == 0, result
    return Outcome(result, step_states(result.err))


def first_miss(outcome: Outcome) -> str:
    """The reason of the one explained miss (the first missed step; the stage has one)."""
    misses = [state for state in outcome.steps.values() if state.startswith("miss: ")]
    assert len(misses) == 1, outcome.steps
    return misses[0][len("miss: ") :]


def assert_all_cached(outcome: Outcome) -> None:
    assert outcome.steps and all(s == "CACHED" for s in outcome.steps.values()), outcome.steps


RUN_FILE = """\
FROM busybox
ARG VERSION=1.0
ENV MODE=fast
USER 0:0
WORKDIR /work
RUN echo "$VERSION $MODE $(id -u) $(pwd)" > /out.txt
"""


# ------------------------------------------------------------------------------------------------ RUN inputs


def test_a_full_rebuild_hits_every_step_and_gives_the_same_image(tmp_path: Path, busybox: str) -> None:
    ctx = write_context(tmp_path / "ctx", RUN_FILE + "COPY a.txt /a.txt\n", {"a.txt": "a"})
    first = build(ctx, "-t", "app")
    assert first_miss(first) == "no earlier build of this step is in the cache"
    second = build(ctx, "-t", "app")
    assert_all_cached(second)
    assert second.image == first.image


@pytest.mark.parametrize(
    ("args", "edit", "reason"),
    [
        (("--build-arg", "VERSION=1.1"), None, "build arg VERSION changed (1.0 -> 1.1)"),
        ((), ("ENV MODE=fast", "ENV MODE=slow"), "ENV MODE changed (fast -> slow)"),
        ((), ("USER 0:0", "USER root"), "USER changed (0:0 -> root)"),
        ((), ("WORKDIR /work", "WORKDIR /elsewhere"), "instruction changed (was: WORKDIR /work)"),
        ((), ("> /out.txt", "> /out2.txt"), "instruction changed (was: RUN echo"),
        (("--network", "none"), None, "network changed (default -> none)"),
    ],
)
def test_each_run_input_misses_and_says_why(
    tmp_path: Path, busybox: str, args: tuple[str, ...], edit: tuple[str, str] | None, reason: str
) -> None:
    ctx = write_context(tmp_path / "ctx", RUN_FILE)
    build(ctx)
    if edit is not None:
        (ctx / "Dockerfile").write_text(RUN_FILE.replace(edit[0], edit[1]))
    changed = build(ctx, *args)
    assert reason in first_miss(changed), changed.steps
    assert changed["RUN"] != "CACHED"


def test_shell_change_misses(tmp_path: Path, busybox: str) -> None:
    ctx = write_context(tmp_path / "ctx", 'FROM busybox\nSHELL ["/bin/sh", "-c"]\nRUN echo hi > /x\n')
    build(ctx)
    (ctx / "Dockerfile").write_text('FROM busybox\nSHELL ["/bin/sh", "-e", "-c"]\nRUN echo hi > /x\n')
    assert "SHELL changed" in build(ctx)["RUN"]


def test_what_is_outside_the_key_hits(tmp_path: Path, busybox: str) -> None:
    """A build arg nothing declares, a proxy variable, a label, a comment, a file nothing copies: all hit."""
    ctx = write_context(tmp_path / "ctx", RUN_FILE, {"unused.txt": "x"})
    build(ctx)
    (ctx / "unused.txt").write_text("y")
    text = "# a comment\n" + RUN_FILE + "LABEL version=2\n"
    (ctx / "Dockerfile").write_text(text)
    assert_all_cached(build(ctx, "--build-arg", "UNDECLARED=1", "--build-arg", "HTTP_PROXY=http://proxy:3128"))


def test_a_build_arg_used_only_in_a_later_stage_leaves_earlier_stages_cached(tmp_path: Path, busybox: str) -> None:
    text = """\
FROM busybox AS base
RUN echo base > /base.txt
FROM base AS app
ARG RELEASE=1
RUN echo $RELEASE > /release.txt
"""
    ctx = write_context(tmp_path / "ctx", text)
    build(ctx)
    changed = build(ctx, "--build-arg", "RELEASE=2")
    assert changed["RUN echo base"] == "CACHED"
    assert changed["RUN echo $RELEASE"] == "miss: build arg RELEASE changed (1 -> 2)"


def test_a_changed_base_image_misses_and_names_it(tmp_path: Path, busybox: str, busybox_tar: Path) -> None:
    ctx = write_context(tmp_path / "ctx", "FROM busybox\nRUN echo hi > /hi\n")
    build(ctx)
    changed = run_pybuild("import", "-q", "--change", "ENV REBUILT=1", str(busybox_tar), "busybox")
    assert changed.code == 0, changed
    outcome = build(ctx)
    assert outcome["RUN"].startswith(f"miss: parent changed: base image {BUSYBOX} now sha256:"), outcome.steps


def test_source_date_epoch_is_in_the_key(tmp_path: Path, busybox: str) -> None:
    ctx = write_context(tmp_path / "ctx", "FROM busybox\nRUN echo hi > /hi\n")
    build(ctx, env={"SOURCE_DATE_EPOCH": "100"})
    assert_all_cached(build(ctx, env={"SOURCE_DATE_EPOCH": "100"}))
    assert "SOURCE_DATE_EPOCH changed (100 -> 200)" in build(ctx, env={"SOURCE_DATE_EPOCH": "200"})["RUN"]


def test_a_hit_does_not_run_the_step(tmp_path: Path, busybox: str) -> None:
    ctx = write_context(tmp_path / "ctx", "FROM busybox\nRUN echo ran-the-step\n")
    assert "ran-the-step" in build(ctx).result.err
    again = build(ctx)
    assert "ran-the-step" not in again.result.err.replace("RUN echo ran-the-step", "")


def test_a_miss_makes_every_later_step_of_the_stage_miss(tmp_path: Path, busybox: str) -> None:
    text = "FROM busybox\nCOPY a.txt /a\nRUN echo one > /1\nRUN echo two > /2\n"
    ctx = write_context(tmp_path / "ctx", text, {"a.txt": "a"})
    build(ctx)
    (ctx / "a.txt").write_text("b")
    outcome = build(ctx)
    assert outcome["COPY"] == "miss: a.txt changed"
    assert outcome["RUN echo one"] == "DONE" and outcome["RUN echo two"] == "DONE"


# ----------------------------------------------------------------------------------------------- COPY inputs

COPY_FILE = "FROM busybox\nCOPY src/ /app/\nRUN ls -la /app > /listing\n"


def test_copy_misses_on_content_mode_and_membership_and_names_the_file(tmp_path: Path, busybox: str) -> None:
    ctx = write_context(tmp_path / "ctx", COPY_FILE, {"src/app.py": "print(1)\n", "src/lib/util.py": "x = 1\n"})
    build(ctx)
    (ctx / "src/app.py").write_text("print(2)\n")
    assert build(ctx)["COPY"] == "miss: src/app.py changed"
    (ctx / "src/lib/new.py").write_text("")
    assert build(ctx)["COPY"] == "miss: src/lib/new.py added"
    (ctx / "src/lib/util.py").unlink()
    assert build(ctx)["COPY"] == "miss: src/lib/util.py removed"
    os.chmod(ctx / "src/app.py", 0o755)
    assert build(ctx)["COPY"] == "miss: src/app.py changed"
    (ctx / "src/link").symlink_to("app.py")
    build(ctx)
    (ctx / "src/link").unlink()
    (ctx / "src/link").symlink_to("lib")
    assert build(ctx)["COPY"] == "miss: src/link changed"


def test_copy_ignores_mtimes_and_ignored_files(tmp_path: Path, busybox: str) -> None:
    files = {"src/app.py": "print(1)\n", "src/secret.env": "A=1\n", ".dockerignore": "src/*.env\n"}
    ctx = write_context(tmp_path / "ctx", COPY_FILE, files)
    first = build(ctx)
    os.utime(ctx / "src/app.py", (1_000_000, 1_000_000))
    (ctx / "src/secret.env").write_text("A=2\n")
    again = build(ctx)
    assert_all_cached(again)
    assert again.image == first.image


def test_mtimes_count_when_source_date_epoch_keeps_them(tmp_path: Path, busybox: str) -> None:
    """With SOURCE_DATE_EPOCH an mtime older than the epoch lands in the layer, so it is in the key."""
    ctx = write_context(tmp_path / "ctx", COPY_FILE, {"src/app.py": "print(1)\n"})
    epoch = {"SOURCE_DATE_EPOCH": "2000000000"}
    os.utime(ctx / "src/app.py", (1_000_000, 1_000_000))
    build(ctx, env=epoch)
    os.utime(ctx / "src/app.py", (1_000_001, 1_000_001))
    assert build(ctx, env=epoch)["COPY"] == "miss: src/app.py changed"


def test_wildcard_sources_miss_when_a_new_file_matches(tmp_path: Path, busybox: str) -> None:
    text = "FROM busybox\nCOPY *.txt /d/\n"
    ctx = write_context(tmp_path / "ctx", text, {"a.txt": "a", "b.txt": "b"})
    build(ctx)
    (ctx / "other.md").write_text("not matched")
    assert_all_cached(build(ctx))
    (ctx / "c.txt").write_text("c")
    assert build(ctx)["COPY"] == "miss: c.txt now matched"
    (ctx / "a.txt").unlink()
    assert build(ctx)["COPY"] == "miss: a.txt no longer matched"


def test_copy_flags_are_in_the_key(tmp_path: Path, busybox: str) -> None:
    ctx = write_context(tmp_path / "ctx", "FROM busybox\nCOPY --chown=1:1 a.txt /a\n", {"a.txt": "a"})
    build(ctx)
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY --chown=2:2 a.txt /a\n")
    assert build(ctx)["COPY"].startswith("miss: instruction changed")
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY --chown=2:2 --chmod=600 a.txt /a\n")
    assert build(ctx)["COPY"].startswith("miss: instruction changed")


def test_a_dependency_stage_changing_misses_its_copy(tmp_path: Path, busybox: str) -> None:
    text = """\
FROM busybox AS deps
ARG DEPS=1
RUN echo $DEPS > /deps.txt
FROM busybox
COPY --from=deps /deps.txt /deps.txt
RUN cat /deps.txt
"""
    ctx = write_context(tmp_path / "ctx", text)
    epoch = {"SOURCE_DATE_EPOCH": "0"}  # so that a re-run of the dependency gives the same layer
    build(ctx, env=epoch)
    outcome = build(ctx, "--build-arg", "DEPS=2", env=epoch)
    assert outcome["RUN echo $DEPS"] == "miss: build arg DEPS changed (1 -> 2)"
    assert outcome["COPY --from=deps"] == "miss: files from stage deps changed"
    # The dependency re-run with the same result: what copies from it hits again.
    again = build(ctx, "--build-arg", "DEPS=2", "--no-cache-filter", "deps", env=epoch)
    assert again["RUN echo $DEPS"] == "miss: --no-cache-filter deps"
    assert again["COPY --from=deps"] == "CACHED"


def test_workdir_is_cached(tmp_path: Path, busybox: str) -> None:
    ctx = write_context(tmp_path / "ctx", "FROM busybox\nWORKDIR /a/b\n")
    build(ctx)
    assert_all_cached(build(ctx))
    (ctx / "Dockerfile").write_text("FROM busybox\nWORKDIR /a/c\n")
    assert build(ctx)["WORKDIR"].startswith("miss: instruction changed")


# ------------------------------------------------------------------------------------------------ controls


def test_no_cache_runs_everything_and_records_the_new_results(tmp_path: Path, busybox: str) -> None:
    ctx = write_context(tmp_path / "ctx", "FROM busybox\nRUN cat /proc/sys/kernel/random/uuid > /now\nRUN cat /now\n")
    first = build(ctx)
    forced = build(ctx, "--no-cache")
    assert forced["RUN cat /proc"] == "miss: --no-cache" and forced["RUN cat /now"] == "DONE"
    assert forced.image != first.image
    after = build(ctx)
    assert_all_cached(after)
    assert after.image == forced.image  # the newest result won, and its child was built on it


def test_a_layer_missing_from_the_store_is_a_miss(tmp_path: Path, busybox: str, store_root: Path) -> None:
    ctx = write_context(tmp_path / "ctx", "FROM busybox\nRUN echo hi > /hi\n")

    def run_layer() -> Path:
        with sqlite3.connect(store_root / "cache.db") as db:
            (layer,) = db.execute("SELECT layer FROM entries WHERE step LIKE 'RUN%'").fetchone()
        return store_root / "blobs" / "sha256" / json.loads(layer)["digest"].split(":")[1]

    build(ctx)
    run_layer().unlink()
    assert build(ctx)["RUN"] == "miss: the cached layer is no longer in the store"
    assert run_layer().is_file()  # the step ran again and its entry names a layer that is there
    assert_all_cached(build(ctx))


# ---------------------------------------------------------------------------------------------- integrity


def _entries_are_whole(store_root: Path) -> None:
    """Every entry's layer blob exists and has the recorded size."""
    if not (store_root / "cache.db").exists():
        return  # killed before it opened the cache
    with sqlite3.connect(store_root / "cache.db") as db:
        rows = db.execute("SELECT key, layer FROM entries WHERE layer IS NOT NULL").fetchall()
    for key, layer in rows:
        desc = json.loads(layer)
        blob = store_root / "blobs" / "sha256" / desc["digest"].split(":")[1]
        assert blob.is_file() and blob.stat().st_size == desc["size"], key


def test_four_concurrent_builds_on_one_store_all_succeed(tmp_path: Path, busybox: str, store_root: Path) -> None:
    contexts = []
    for n in range(4):
        text = f"FROM busybox\nCOPY shared.txt /shared.txt\nRUN echo {n} > /n && sleep 0.2\nRUN cat /n /shared.txt\n"
        contexts.append(write_context(tmp_path / f"ctx{n}", text, {"shared.txt": "same for all"}))
    results: list[CLIResult] = []

    def one(ctx: Path) -> None:
        results.append(run_pybuild("build", "--progress", "plain", str(ctx)))

    threads = [threading.Thread(target=one, args=(ctx,)) for ctx in contexts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.code for r in results] == [0, 0, 0, 0], [r.err[-500:] for r in results]
    _entries_are_whole(store_root)
    for ctx in contexts:
        assert_all_cached(build(ctx))


def test_a_killed_build_leaves_a_usable_cache(tmp_path: Path, busybox: str, store_root: Path) -> None:
    text = "FROM busybox\n" + "".join(f"RUN echo {n} > /{n} && sleep 0.1\n" for n in range(8))
    ctx = write_context(tmp_path / "ctx", text)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for delay in (0.3, 0.6, 0.9, 1.2):
        proc = subprocess.Popen(
            [sys.executable, "-m", "builder", "build", "--no-cache", "--progress", "plain", str(ctx)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _entries_are_whole(store_root)
    build(ctx)
    assert_all_cached(build(ctx))


# ----------------------------------------------------------------------------------- the portable cache


MULTI_STAGE = """\
FROM busybox AS builder
RUN echo built > /artifact
FROM busybox
COPY --from=builder /artifact /artifact
RUN cat /artifact > /copy
"""


def _same_base(busybox_tar: Path, env: dict[str, str] | None = None) -> None:
    """busybox imported with SOURCE_DATE_EPOCH, so every store holds the very same base image."""
    env = {**(env or os.environ), "SOURCE_DATE_EPOCH": "0"}
    result = run_pybuild("import", "-q", str(busybox_tar), "busybox", env=env)
    assert result.code == 0, result


def _other_store(tmp_path: Path, busybox_tar: Path, name: str) -> dict[str, str]:
    env = {**os.environ, "PYBUILD_ROOT": str(tmp_path / name)}
    _same_base(busybox_tar, env)
    return env


def test_a_cache_exported_with_mode_max_makes_another_store_hit_every_step(
    tmp_path: Path, busybox: str, busybox_tar: Path
) -> None:
    ctx = write_context(tmp_path / "ctx", MULTI_STAGE)
    cache = tmp_path / "cache"
    _same_base(busybox_tar)
    first = build(ctx, "--cache-to", f"type=local,dest={cache},mode=max")
    env = _other_store(tmp_path, busybox_tar, "second-machine")
    second = build(ctx, "--cache-from", f"type=local,src={cache}", env=env)
    assert_all_cached(second)
    assert second.image == first.image


def test_mode_min_exports_only_the_image_layers(tmp_path: Path, busybox: str, busybox_tar: Path) -> None:
    ctx = write_context(tmp_path / "ctx", MULTI_STAGE)
    cache = tmp_path / "cache"
    epoch = {"SOURCE_DATE_EPOCH": "0"}
    _same_base(busybox_tar)
    build(ctx, "--cache-to", f"type=local,dest={cache}", env=epoch)
    env = {**_other_store(tmp_path, busybox_tar, "second-machine"), **epoch}
    second = build(ctx, "--cache-from", f"type=local,src={cache}", env=env)
    assert second["RUN echo built"] == "miss: no earlier build of this step is in the cache"
    # The builder stage ran again and gave the same file, so the final stage's steps come from the cache.
    assert second["COPY --from=builder"] == "CACHED" and second["RUN cat"] == "CACHED"


def test_a_missing_cache_from_directory_only_warns(tmp_path: Path, busybox: str) -> None:
    ctx = write_context(tmp_path / "ctx", "FROM busybox\nRUN echo hi > /hi\n")
    outcome = build(ctx, "--cache-from", f"type=local,src={tmp_path / 'nowhere'}")
    assert "WARNING" in outcome.result.err and outcome["RUN"].startswith("miss: ")


# ----------------------------------------------------------------------------------- ADD, named contexts


def test_add_url_is_keyed_by_its_content_or_its_checksum(tmp_path: Path, busybox: str, http_files: HTTPFiles) -> None:
    base, root = http_files.url, http_files.root
    (root / "tool.sh").write_text("v1\n")
    ctx = write_context(tmp_path / "ctx", f"FROM busybox\nADD {base}/tool.sh /opt/\n")
    build(ctx)
    assert_all_cached(build(ctx))
    (root / "tool.sh").write_text("v2\n")
    assert build(ctx)["ADD"] == f"miss: {base}/tool.sh changed"

    digest = "sha256:" + hashlib.sha256(b"v2\n").hexdigest()
    pinned = write_context(tmp_path / "pinned", f"FROM busybox\nADD --checksum={digest} {base}/tool.sh /opt/\n")
    build(pinned)
    http_files.server.shutdown()  # with --checksum, a hit needs no download
    assert_all_cached(build(pinned))


def test_a_directory_context_is_keyed_by_its_content(tmp_path: Path, busybox: str) -> None:
    files = tmp_path / "files"
    files.mkdir()
    (files / "a.txt").write_text("a")
    ctx = write_context(tmp_path / "ctx", "FROM busybox\nCOPY --from=extra a.txt /a.txt\nRUN cat /a.txt\n")
    build(ctx, "--build-context", f"extra={files}")
    assert_all_cached(build(ctx, "--build-context", f"extra={files}"))
    (files / "a.txt").write_text("b")
    assert build(ctx, "--build-context", f"extra={files}")["COPY"] == "miss: a.txt changed"


# ------------------------------------------------------------------------------------------ prune vs build


def test_prune_racing_builds_never_breaks_them(tmp_path: Path, busybox: str, store_root: Path) -> None:
    """``cache prune --all`` in a loop while builds record and hit entries: every build succeeds, and every
    image it makes has all its blobs."""
    text = "FROM busybox\n" + "".join(f"RUN echo {n} > /{n}\n" for n in range(6))
    ctx = write_context(tmp_path / "ctx", text)
    stop = threading.Event()
    prunes: list[CLIResult] = []

    def prune() -> None:
        while not stop.is_set():
            prunes.append(run_pybuild("cache", "prune", "--all", "--force"))

    pruner = threading.Thread(target=prune)
    pruner.start()
    try:
        for n in range(4):
            forced = ["--no-cache"] if n % 2 else []  # alternately record new entries and hit them
            result = run_pybuild("build", "-q", "-t", f"raced:{n}", *forced, str(ctx))
            assert result.code == 0, result
            image = json.loads(run_pybuild("inspect", f"raced:{n}").out)[0]
            for layer in image["Manifest"]["layers"]:
                assert (store_root / "blobs" / "sha256" / layer["digest"].split(":")[1]).is_file()
    finally:
        stop.set()
        pruner.join()
    assert prunes and all(p.code == 0 for p in prunes), [p.err for p in prunes if p.code]
