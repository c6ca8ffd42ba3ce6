"""``pybuild cache ls|inspect|du|prune|explain`` as a user runs them, over real builds on a busybox base."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from conftest import CLIResult, require_root, run_pybuild, run_pybuild_on_a_terminal

# Longer than the 48 columns ls shows; its layer follows hello.txt, so a changed hello.txt changes both layers
# even within one second (a layer's mtimes are whole seconds).
RUN = "RUN cat /app/hello.txt > /app/run.txt && rm /bin/vi && echo done"
DOCKERFILE = f"FROM busybox\nCOPY hello.txt /app/\n{RUN}\n"
KEY = re.compile(r"sha256:[0-9a-f]{64}")


@pytest.fixture
def project(tmp_path: Path, busybox_tar: Path) -> Path:
    """busybox in this test's store, and a context whose two-step Dockerfile was built once as ``app``."""
    require_root()
    imported = run_pybuild("import", "-q", str(busybox_tar), "busybox")
    assert imported.code == 0, imported
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(DOCKERFILE)
    (context / "hello.txt").write_text("hello\n")
    build(context, "-t", "app")
    return context


def build(context: Path, *args: str) -> CLIResult:
    result = run_pybuild("build", "--progress", "plain", *args, str(context))
    assert result.code == 0, result
    return result


def ok(*args: str) -> CLIResult:
    result = run_pybuild("cache", *args)
    assert result.code == 0, result
    assert result.err == "", result
    return result


def error(result: CLIResult, code: int) -> str:
    assert result.code == code, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.err, result
    return lines[0]


def entries() -> list[dict]:
    return json.loads(ok("ls", "--format", "json").out)


def blob(digest: str) -> Path:
    return Path(os.environ["PYBUILD_ROOT"]) / "blobs" / "sha256" / digest.removeprefix("sha256:")


# ---------------------------------------------------------------------------------------------------- ls


def test_ls_table_quiet_and_json(project: Path) -> None:
    rows = ok("ls").out.splitlines()
    assert re.split(r"\s{2,}", rows[0]) == ["KEY", "STEP", "STAGE", "CREATED", "LAST USED", "HITS", "SIZE"]
    assert len(rows) == 3
    run_row, copy_row = rows[1], rows[2]  # the RUN was used last
    shown = "RUN cat /app/hello.txt > /app/run.txt && rm /..."  # 48 columns
    assert re.match(rf"[0-9a-f]{{12}}   {re.escape(shown)}   stage-0 ", run_row) and len(shown) == 48
    assert re.match(r"[0-9a-f]{12}   COPY hello\.txt /app/ +stage-0 ", copy_row)
    assert re.search(r"\s0\s+\d[\d.]*kB$", copy_row)

    keys = ok("ls", "-q").out.split()
    assert len(keys) == 2 and all(KEY.fullmatch(k) for k in keys)
    assert run_row.startswith(keys[0].removeprefix("sha256:")[:12])

    wide = ok("ls", "--no-trunc").out
    assert keys[0] in wide and RUN in wide

    listed = entries()
    assert [e["key"] for e in listed] == keys
    assert [e["step"] for e in listed] == [RUN, "COPY hello.txt /app/"]
    assert [e["line"] for e in listed] == [3, 2]
    assert all(e["layer"]["digest"] == e["diff_id"] and e["size"] == e["layer"]["size"] for e in listed)

    # --root after the verb names the store too; an empty one lists nothing.
    other = ok("ls", "--format", "json", "--root", str(project.parent / "other-store"))
    assert json.loads(other.out) == []


# ----------------------------------------------------------------------------------------------- inspect


def test_inspect_shows_the_record_the_parents_and_the_changes(project: Path) -> None:
    run_key, copy_key = ok("ls", "-q").out.split()
    (run,) = json.loads(ok("inspect", run_key.removeprefix("sha256:")[:10]).out)
    assert run["key"] == run_key and run["step"] == RUN
    assert run["record"]["op"] == "run" and run["record"]["parent"]["step"] == copy_key
    assert len(run["parents"]) == 2  # busybox's layer and the COPY's
    changes = {c["path"]: c for c in run["changes"]}
    assert changes["/app/run.txt"] == {"op": "A", "path": "/app/run.txt", "type": "file", "size": 6}
    assert changes["/bin/vi"]["op"] == "D"
    assert changes["/app"]["op"] == "C" and changes["/app"]["type"] == "dir"

    (copy,) = json.loads(ok("inspect", copy_key).out)
    assert {c["path"]: c["op"] for c in copy["changes"]} == {"/app": "A", "/app/hello.txt": "A"}


def test_inspect_of_an_unknown_key_fails_naming_it(project: Path) -> None:
    run_key, _ = ok("ls", "-q").out.split()
    unknown = "0" * 12 if not run_key.startswith("sha256:0") else "f" * 12
    result = run_pybuild("cache", "inspect", run_key, unknown)
    assert error(result, 1) == f"pybuild: no cache entry matches {unknown}"
    assert [e["key"] for e in json.loads(result.out)] == [run_key]  # the ones found are still shown
    assert "not a cache key" in error(run_pybuild("cache", "inspect", "sha256:xyz"), 1)
    assert error(run_pybuild("cache", "inspect"), 2).startswith("pybuild: ")


# ---------------------------------------------------------------------------------------------------- du


def test_du_of_layers_an_image_uses_and_of_layers_it_does_not(project: Path) -> None:
    usage = json.loads(ok("du", "--format", "json").out)
    assert usage["entries"] == 2 and usage["total"] > 0
    assert usage["shared"] == usage["total"] and usage["reclaimable"] == 0  # the image "app" uses both layers
    assert "records" not in usage

    (project / "hello.txt").write_text("changed\n")
    build(project)  # untagged: its two new layers are the cache's alone
    usage = json.loads(ok("du", "--format", "json", "--verbose").out)
    assert usage["entries"] == 4
    assert usage["reclaimable"] == usage["total"] - usage["shared"] > 0
    assert sorted(r["shared"] for r in usage["records"]) == [False, False, True, True]
    sizes = [r["size"] for r in usage["records"]]
    assert sizes == sorted(sizes, reverse=True)

    text = ok("du", "--verbose").out
    table, summary = text.split("\n\n")
    assert re.split(r"\s{2,}", table.splitlines()[0]) == ["KEY", "STEP", "SIZE", "SHARED", "LAST USED"]
    assert sorted(re.split(r"\s{2,}", row)[3] for row in table.splitlines()[1:]) == ["no", "no", "yes", "yes"]
    assert [line.split(":")[0] for line in summary.splitlines()] == ["Entries", "Total", "Shared", "Reclaimable"]
    assert summary.splitlines()[0].split() == ["Entries:", "4"]
    assert "KEY" not in ok("du").out


# ------------------------------------------------------------------------------------------------- prune


def test_prune_deletes_what_no_image_uses_then_everything_with_all(project: Path) -> None:
    tagged = entries()
    assert ok("prune").out == "Deleted 0 cache entries, reclaimed 0B\n"  # the image uses both layers

    (project / "hello.txt").write_text("changed\n")
    build(project)
    fresh = [e for e in entries() if e["key"] not in {t["key"] for t in tagged}]
    assert len(fresh) == 2 and all(blob(e["layer"]["digest"]).exists() for e in fresh)
    result = json.loads(ok("prune", "--format", "json").out)
    assert sorted(result["deleted"]) == sorted(e["key"] for e in fresh)
    assert result["reclaimed"] == sum(e["size"] for e in fresh)
    assert not any(blob(e["layer"]["digest"]).exists() for e in fresh)
    snapshots = Path(os.environ["PYBUILD_ROOT"]) / "snapshots"
    assert not any((snapshots / e["diff_id"].removeprefix("sha256:")).exists() for e in fresh)
    assert [e["key"] for e in entries()] == [e["key"] for e in tagged]

    out = ok("prune", "--all", "-f").out
    assert out == "Deleted 2 cache entries, reclaimed 0B\n"  # the image still holds its layers
    assert entries() == []
    assert all(blob(e["layer"]["digest"]).exists() for e in tagged)
    assert run_pybuild("inspect", "app").code == 0

    # With no entries left, the next build runs every step again and records them anew.
    result = build(project, "-t", "app")
    assert "CACHED" not in result.err
    assert len(entries()) == 2


def test_prune_filters_and_sizes_are_checked(project: Path) -> None:
    assert json.loads(ok("prune", "--all", "--filter", "until=24h", "--format", "json").out)["deleted"] == []
    assert json.loads(ok("prune", "--all", "--keep-storage", "1GB", "--format", "json").out)["deleted"] == []
    assert "invalid duration" in error(run_pybuild("cache", "prune", "--filter", "until=3x"), 2)
    assert "unsupported filter" in error(run_pybuild("cache", "prune", "--filter", "label=a"), 2)
    assert "invalid size" in error(run_pybuild("cache", "prune", "--keep-storage", "10XB"), 2)
    assert len(entries()) == 2
    result = json.loads(ok("prune", "--all", "--keep-storage", "0", "--format", "json").out)
    assert len(result["deleted"]) == 2


def prune_on_a_terminal(answer: str, *args: str) -> CLIResult:
    return run_pybuild_on_a_terminal(answer, "cache", "prune", *args)


def test_prune_asks_on_a_terminal_unless_forced(project: Path) -> None:
    question = "WARNING! This will remove 2 cache entries. Are you sure you want to continue? [y/N] "
    refused = prune_on_a_terminal("n", "--all")
    assert refused.code == 1, refused
    assert refused.err == question + "pybuild: aborted\n"
    assert len(entries()) == 2

    agreed = prune_on_a_terminal("y", "--all")
    assert agreed.code == 0, agreed
    assert agreed.err == question
    assert agreed.out == "Deleted 2 cache entries, reclaimed 0B\n"

    build(project, "-t", "app", "--no-cache")
    forced = prune_on_a_terminal("n", "--all", "--force")
    assert forced.code == 0 and forced.err == "" and forced.out.startswith("Deleted 2 cache entries")


# ----------------------------------------------------------------------------------------------- explain


def test_explain_after_a_rebuild_names_the_changed_file(project: Path) -> None:
    first = ok("explain").out.splitlines()
    assert re.fullmatch(rf"{re.escape(str(project / 'Dockerfile'))} \(finished .+ ago\)", first[0])
    assert first[1].startswith("MISS    [stage-0] line 2: COPY hello.txt /app/: ")
    assert first[2] == f"MISS    [stage-0] line 3: {RUN}: after the miss at line 2"

    build(project, "-t", "app")
    assert ok("explain").out.splitlines()[1:] == [
        "CACHED  [stage-0] line 2: COPY hello.txt /app/",
        f"CACHED  [stage-0] line 3: {RUN}",
    ]

    (project / "hello.txt").write_text("changed\n")
    build(project, "-t", "app")
    lines = ok("explain").out.splitlines()
    assert lines[1].startswith("MISS    [stage-0] line 2: COPY hello.txt /app/: ") and "hello.txt" in lines[1][44:]
    assert lines[2] == f"MISS    [stage-0] line 3: {RUN}: after the miss at line 2"

    report = json.loads(ok("explain", "--format", "json").out)
    assert report["dockerfile"] == str(project / "Dockerfile")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", report["finished"])
    assert [(s["line"], s["status"], bool(s["reason"])) for s in report["steps"]] == [
        (2, "built", True),
        (3, "built", False),
    ]
    assert {s["key"] for s in report["steps"]} <= {e["key"] for e in entries()}


def test_explain_shows_a_failed_step(project: Path) -> None:
    (project / "Dockerfile").write_text(DOCKERFILE + "RUN exit 3\n")
    result = run_pybuild("build", "--progress", "plain", str(project))
    assert result.code == 1, result
    lines = ok("explain").out.splitlines()
    assert lines[1:3] == ["CACHED  [stage-0] line 2: COPY hello.txt /app/", f"CACHED  [stage-0] line 3: {RUN}"]
    assert lines[3].startswith("FAILED  [stage-0] line 4: RUN exit 3: ") and "3" in lines[3][38:]


def test_explain_before_any_build_and_cache_without_a_subcommand() -> None:
    assert error(run_pybuild("cache", "explain"), 1) == "pybuild: no build has finished yet"
    message = error(run_pybuild("cache"), 2)
    assert all(verb in message for verb in ("ls", "inspect", "du", "prune", "explain"))
    for verb in ("ls", "inspect", "du", "prune", "explain"):
        help_text = run_pybuild("cache", verb, "--help")
        assert help_text.code == 0 and f"examples:\n  pybuild cache {verb}" in help_text.out.replace(
            "pybuild build -t app . && pybuild cache explain", "pybuild cache explain"
        ), help_text
