"""``pybuild fsck [--repair] [--format json]`` as users run it, on stores that builds made.

The acceptance: a store straight after a build is clean (exit 0, ``0 problems``); a flipped byte in a layer is a
corrupt blob and the image that needs it a dangling entry (exit 1); ``--repair`` removes both (exit 0), a second
check is clean, and the next build of the same Dockerfile makes the layer again. A deleted blob, leftovers of dead
processes (which the check sees: it does not sweep the store on opening) and a broken cache record are found and
repaired the same way.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from conftest import CLIResult, run_pybuild, step_states, write_context

APP = "docker.io/library/app:latest"
DEAD = 1 << 30  # above any pid_max: no such process
DOCKERFILE = "FROM scratch\nCOPY a.txt /a.txt\nCOPY b.txt /b.txt\n"


def ok(*args: str) -> str:
    result = run_pybuild(*args)
    assert result.code == 0, result
    return result.out


def fsck(*args: str, code: int) -> CLIResult:
    result = run_pybuild("fsck", *args)
    assert result.code == code, result
    assert result.err == "", result
    return result


def build(ctx: Path) -> dict[str, str]:
    result = run_pybuild("build", "--progress", "plain", "-t", "app", str(ctx))
    assert result.code == 0, result
    return step_states(result.err)


def layers(store_root: Path) -> list[str]:
    """The layer digests of ``app``, bottom first."""
    index = json.loads((store_root / "index.json").read_text())
    (entry,) = [
        m for m in index["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == APP
    ]
    manifest = json.loads(blob(store_root, entry["digest"]).read_bytes())
    return [layer["digest"] for layer in manifest["layers"]]


def blob(store_root: Path, digest: str) -> Path:
    return store_root / "blobs" / "sha256" / digest.removeprefix("sha256:")


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    context = write_context(tmp_path / "ctx", DOCKERFILE, {"a.txt": "a\n", "b.txt": "b\n"})
    build(context)
    return context


def test_a_store_after_a_build_is_clean(ctx: Path) -> None:
    out = fsck(code=0).out
    assert out.splitlines()[-1] == "0 problems"
    assert out.splitlines()[0].startswith("checked 4 blobs (")  # two layers, a config and a manifest
    assert "1 image, 2 cache records" in out
    assert fsck("--repair", code=0).out.splitlines()[-1] == "0 problems (0 repaired)"


def test_a_flipped_byte_is_found_repaired_and_rebuilt(ctx: Path, store_root: Path) -> None:
    top = layers(store_root)[-1]
    path = blob(store_root, top)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x20
    path.write_bytes(bytes(data))

    lines = fsck(code=1).out.splitlines()
    assert lines[0].startswith(f"corrupt blob {top}: content has digest sha256:")
    assert f"dangling entry {APP}: layer {top} is corrupt" in lines
    assert any(line.startswith("dangling cache record sha256:") and "COPY b.txt /b.txt" in line for line in lines)
    assert lines[-1] == "3 problems (3 repairable with --repair)"
    assert path.exists()  # checking changes nothing

    repaired = fsck("--repair", code=0).out.splitlines()
    assert repaired[0].endswith("(repaired)") and repaired[-1].endswith("repaired)")
    assert all(line.endswith("(repaired)") for line in repaired[:-2])
    assert not path.exists()
    assert ok("images", "-q") == ""
    assert fsck(code=0).out.splitlines()[-1] == "0 problems"

    steps = build(ctx)
    assert steps["COPY a.txt /a.txt"] == "CACHED"
    assert steps["COPY b.txt /b.txt"].startswith("miss: ")
    assert path.is_file()  # the same layer, made again
    assert fsck(code=0).out.splitlines()[-1] == "0 problems"


def test_a_deleted_blob_leaves_a_dangling_entry(ctx: Path, store_root: Path) -> None:
    bottom = layers(store_root)[0]
    blob(store_root, bottom).unlink()
    out = fsck(code=1).out
    assert f"dangling entry {APP}: layer {bottom} is missing\n" in out
    assert "dangling cache record sha256:" in out and "'COPY a.txt /a.txt': layer" in out
    # Unrepaired, the step cache takes the record for a miss, and the build makes the layer again.
    assert build(ctx)["COPY a.txt /a.txt"] == "miss: the cached layer is no longer in the store"
    assert blob(store_root, bottom).is_file()  # the same bytes: COPY layers are deterministic
    fsck(code=0)
    blob(store_root, bottom).unlink()
    fsck("--repair", code=0)
    assert ok("images", "-q") == ""  # both images needed the layer: the new one, and the old one untagged
    fsck(code=0)


def test_the_json_report(ctx: Path, store_root: Path) -> None:
    bottom = layers(store_root)[0]
    blob(store_root, bottom).unlink()
    report = json.loads(fsck("--format", "json", code=1).out)
    assert set(report) == {"findings", "problems", "leftovers", "repaired", "remaining", "checked"}
    assert report["problems"] == report["remaining"] == len(report["findings"]) and report["repaired"] == 0
    assert report["leftovers"] == 0
    assert set(report["checked"]) == {"blobs", "bytes", "images", "cache_records", "snapshots", "cache_mounts", "memos"}
    entry = next(f for f in report["findings"] if f["kind"] == "dangling entry")
    assert entry == {
        "kind": "dangling entry",
        "subject": APP,
        "detail": f"layer {bottom} is missing",
        "leftover": False,
        "repairable": True,
        "repaired": False,
    }
    repaired = json.loads(fsck("--repair", "--format", "json", code=0).out)
    assert repaired["repaired"] == repaired["problems"] + repaired["leftovers"] and repaired["remaining"] == 0
    assert all(f["repaired"] for f in repaired["findings"])
    assert json.loads(fsck("--format", "json", code=0).out)["findings"] == []


def test_leftovers_of_dead_processes(ctx: Path, store_root: Path) -> None:
    snapshot = store_root / "snapshots" / f".{DEAD}-half"
    (snapshot / "usr").mkdir(parents=True)
    ingest = store_root / "ingest" / f"{DEAD}-0123456789abcdef.part"
    ingest.write_bytes(b"half a blob")
    scratch = store_root / "tmp" / f"{DEAD}-run-abc"
    (scratch / "upper").mkdir(parents=True)
    lines = fsck(code=0).out.splitlines()  # leftovers break nothing: they do not fail the check
    for path in (snapshot, ingest, scratch):
        assert any(line.startswith(f"temp leftover {path.relative_to(store_root)}: ") for line in lines), lines
    assert lines[-1] == "0 problems, 3 leftovers (3 repairable with --repair)"
    assert fsck("--repair", code=0).out.splitlines()[-1] == "0 problems, 3 leftovers (3 repaired)"
    assert not snapshot.exists() and not ingest.exists() and not scratch.exists()
    fsck(code=0)


def test_a_broken_cache_record(ctx: Path, store_root: Path) -> None:
    with sqlite3.connect(store_root / "cache.db") as db:
        (key,) = db.execute("SELECT key FROM entries WHERE step = 'COPY b.txt /b.txt'").fetchone()
        db.execute('UPDATE entries SET layer = \'{"not": "a descriptor"}\' WHERE key = ?', (key,))
    db.close()
    lines = fsck(code=1).out.splitlines()
    assert any(line.startswith(f"invalid cache record {key}: unreadable (") for line in lines), lines
    fsck("--repair", code=0)
    fsck(code=0)
    assert build(ctx)["COPY b.txt /b.txt"].startswith("miss: ")
    fsck(code=0)


def test_usage_and_a_missing_store(tmp_path: Path) -> None:
    result = run_pybuild("--root", str(tmp_path / "none"), "fsck")
    assert result.code == 1 and result.out == ""
    assert result.err.strip() == f"pybuild: {tmp_path / 'none'}: no store here (no oci-layout file)"
    assert not (tmp_path / "none").exists()
    assert run_pybuild("fsck", "--bogus").code == 2
    assert run_pybuild("fsck", "--format", "yaml").code == 2
    help_text = run_pybuild("fsck", "--help").out
    assert "--repair" in help_text and "pybuild fsck --repair" in help_text


def test_a_store_after_run_steps_cache_mounts_rmi_and_prunes_is_clean(tmp_path: Path, busybox: str) -> None:
    context = write_context(
        tmp_path / "run", "FROM busybox\nRUN --mount=type=cache,target=/cache echo 1 >> /cache/n && echo hi > /hi\n"
    )
    ok("build", "-q", "-t", "app", str(context))
    out = fsck(code=0).out
    assert "1 cache mount," in out and "0 snapshots" not in out
    ok("tag", "app", "other")
    ok("rmi", "app")
    ok("build", "-q", "--no-cache", "-t", "app", str(context))  # moves nothing: 'other' holds the first image
    ok("rmi", "other")
    ok("prune", "-f")
    fsck(code=0)
    ok("rmi", "app")
    ok("cache", "prune", "--all", "--force")
    ok("prune", "-f")
    out = fsck(code=0).out
    assert "0 cache records" in out and "0 cache mounts" in out
