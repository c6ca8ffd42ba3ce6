"""``builder.fsck`` over a real store (no root needed): a whole store is clean; each kind of damage is found (a
corrupt or missing blob, an image that needs one, cache records, leases of builds that died, snapshots nothing
needs, memos and cache mounts that point at nothing, leftovers of dead processes); a repair removes what it can,
never what a running build or container holds, and a second check is clean."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from conftest import layer, put_entry

from builder import fsck, storeops
from builder.cache import CacheEntry, CacheIndex, store_guard
from builder.cachemounts import CacheMountStore
from builder.commit import store_image
from builder.compressed import CompressedLayers
from builder.container import CONTAINERS_DIR
from builder.errors import BuildError
from builder.fsck import Finding, Report, check_store, open_for_check
from builder.remote import BlobSources
from builder.root import Store, open_store
from oci import mediatypes as mt
from oci.canonical import canonical_json
from oci.compression import Compression
from oci.config import ImageConfig
from oci.descriptor import Descriptor
from oci.digest import Digest
from oci.image import Image
from oci.manifest import Manifest

APP = "docker.io/library/app:latest"
DEAD = 1 << 30  # above any pid_max: no such process


# ------------------------------------------------------------------------------------------------ helpers


def pretend_hashed(monkeypatch: pytest.MonkeyPatch, digest: Digest, kind: str, detail: str) -> None:
    """Make the first, unguarded hashing pass find ``digest`` to be ``kind`` (the others are hashed for real)."""
    hash_one = fsck._Check.hash_one

    def hashed(self: fsck._Check, blob: Digest) -> tuple[Digest, str, str] | None:
        return (blob, kind, detail) if blob == digest else hash_one(self, blob)

    monkeypatch.setattr(fsck._Check, "hash_one", hashed)


def image(store: Store, *layers: tuple[Descriptor, Digest], name: str | None = APP) -> Image:
    config = ImageConfig(architecture="amd64", os="linux", diff_ids=tuple(diff_id for _, diff_id in layers))
    made = store_image(store.layout, config, [desc for desc, _ in layers])
    if name is not None:
        store.layout.tag(name, made.descriptor)
    return made


def snapshot(store: Store, diff_id: Digest) -> Path:
    path = store.root / "snapshots" / diff_id.encoded
    path.mkdir(parents=True, exist_ok=True)
    (path / "file").write_bytes(b"x")
    return path


def corrupt(store: Store, digest: Digest) -> None:
    path = store.layout.store.path(digest)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))


def waiting_for(lock: Path) -> bool:
    """Whether a process waits for a flock on ``lock`` (a blocked request: ``->`` in /proc/locks)."""
    inode = f":{os.stat(lock).st_ino} "
    return any(
        "->" in line and " FLOCK " in line and inode in line for line in Path("/proc/locks").read_text().splitlines()
    )


def kinds(report: Report) -> list[tuple[str, str]]:
    return [(f.kind, f.subject) for f in report.findings]


def whole(store: Store) -> tuple[Image, tuple[Descriptor, Digest], CacheEntry]:
    """A tagged image of two layers, each with a snapshot, the top one a cached step's."""
    index = CacheIndex(store.root)
    try:
        base, top = layer(store, "a", b"base"), layer(store, "b", b"top")
        img = image(store, base, top)
        entry = put_entry(index, top)
        snapshot(store, base[1])
        snapshot(store, top[1])
    finally:
        index.close()
    return img, top, entry


# ------------------------------------------------------------------------------------------------ clean


def test_a_whole_store_is_clean(store: Store) -> None:
    whole(store)
    report = check_store(store)
    assert report.findings == () and report.clean
    assert report.summary() == "0 problems"
    checked = report.checked
    assert (checked.blobs, checked.images, checked.cache_records, checked.snapshots) == (4, 1, 1, 2)
    assert checked.bytes == sum(store.layout.store.size(d) for d in store.layout.store)
    data = report.to_json()
    assert data["findings"] == [] and data["problems"] == data["leftovers"] == data["remaining"] == 0
    assert check_store(store, repair=True).summary() == "0 problems (0 repaired)"


def test_an_empty_store_is_clean_and_a_missing_one_is_an_error(tmp_path: Path) -> None:
    assert check_store(open_store(tmp_path / "root")).clean
    with pytest.raises(BuildError, match="no store here"):
        open_for_check(tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()


# ------------------------------------------------------------------------------------------------ blobs


def test_a_corrupt_layer_is_removed_with_what_needed_it(store: Store) -> None:
    img, top, entry = whole(store)
    corrupt(store, top[0].digest)
    report = check_store(store)
    assert kinds(report) == [
        ("corrupt blob", str(top[0].digest)),
        ("dangling entry", APP),
        ("dangling cache record", str(entry.key)),
    ]
    assert report.findings[0].detail.startswith("content has digest sha256:")
    assert f"layer {top[0].digest} is corrupt" in report.findings[1].detail
    assert not report.clean and report.summary() == "3 problems (3 repairable with --repair)"
    assert store.layout.store.has(top[0].digest)  # a check changes nothing

    repaired = check_store(store, repair=True)
    # With the image and the record gone, no one needs either layer's snapshot.
    assert kinds(repaired)[:3] == kinds(report)
    assert sorted(kinds(repaired)[3:]) == sorted(("unreferenced snapshot", str(d)) for d in img.config.diff_ids)
    assert all(f.repaired for f in repaired.findings) and repaired.clean
    assert [f.leftover for f in repaired.findings] == [False, False, False, True, True]
    assert repaired.summary() == "3 problems, 2 leftovers (5 repaired)"
    assert not store.layout.store.has(top[0].digest)
    assert store.layout.index().manifests == ()
    index = CacheIndex(store.root)
    assert index.get(entry.key) is None
    index.close()
    assert not (store.root / "snapshots" / top[1].encoded).exists()
    assert check_store(store).findings == ()
    assert img.digest in set(store.layout.store)  # unreachable blobs are prune's business, not fsck's


def test_a_blob_rewritten_whole_since_it_was_hashed_is_kept(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    _, top, _ = whole(store)
    pretend_hashed(monkeypatch, top[0].digest, "corrupt blob", "content has digest sha256:...")
    report = check_store(store, repair=True)
    # Hashed again under the guard, it is whole: nothing that needs it is dangling.
    assert kinds(report) == [("corrupt blob", str(top[0].digest))] and report.clean
    assert store.layout.store.has(top[0].digest) and store.layout.resolve(APP) is not None


def test_what_needs_an_unreadable_blob_is_reported_not_removed(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    _, top, entry = whole(store)
    pretend_hashed(monkeypatch, top[0].digest, "unreadable blob", "Input/output error")
    report = check_store(store, repair=True)
    assert kinds(report) == [
        ("unreadable blob", str(top[0].digest)),
        ("dangling entry", APP),
        ("dangling cache record", str(entry.key)),
    ]
    assert not any(f.repairable for f in report.findings) and not report.clean
    assert store.layout.resolve(APP) is not None and store.layout.store.has(top[0].digest)


def test_a_missing_blob_leaves_a_dangling_entry(store: Store) -> None:
    img, _, _ = whole(store)
    base = img.config.diff_ids[0]
    store.layout.store.delete(img.id)
    report = check_store(store)
    # Without its config, the image names no diff_ids: the base layer's snapshot is needed by nothing (as prune
    # decides too); the top one's is a cached step's.
    assert kinds(report) == [("dangling entry", APP), ("unreferenced snapshot", str(base))]
    assert report.findings[0].detail == f"config {img.id} is missing"
    assert check_store(store, repair=True).clean
    assert store.layout.resolve(APP) is None
    assert check_store(store).findings == ()


def test_entries_are_reported_by_name_and_untagged_ones_by_digest(store: Store) -> None:
    base = layer(store, "a", b"1")
    img = image(store, base, name=None)
    store.layout.add_untagged(img.descriptor)
    store.layout.store.delete(base[0].digest)
    assert kinds(check_store(store)) == [("dangling entry", f"<none>@{img.digest}")]


def test_an_image_whose_config_and_manifest_disagree_is_invalid(store: Store) -> None:
    content = store.layout.store
    one = layer(store, "a", b"1")
    raw_config = ImageConfig(architecture="amd64", os="linux").encode()  # no diff_ids
    config = Descriptor(mt.OCI_CONFIG, content.put_bytes(raw_config), len(raw_config))
    raw = Manifest(config=config, layers=(one[0],)).encode()
    manifest = Descriptor(mt.OCI_MANIFEST, content.put_bytes(raw), len(raw))
    store.layout.tag(APP, manifest)
    report = check_store(store)
    assert kinds(report) == [("invalid entry", APP)]
    assert "1 layers but its config has 0 diff_ids" in report.findings[0].detail
    # A descriptor of the wrong size is invalid too.
    store.layout.tag(APP, Descriptor(mt.OCI_MANIFEST, manifest.digest, manifest.size + 1))
    assert "its descriptor says" in check_store(store).findings[0].detail


def test_files_in_blobs_that_are_not_blobs(store: Store) -> None:
    whole(store)
    blobs = store.root / "blobs" / "sha256"
    (blobs / "junk").write_bytes(b"x")
    target = Digest.of_bytes(b"elsewhere")
    (blobs / target.encoded).symlink_to(store.root / "oci-layout")
    (store.root / "blobs" / "md5").mkdir()
    report = check_store(store)
    assert sorted(kinds(report)) == [
        ("invalid blob", str(target)),
        ("stray file", "blobs/md5"),
        ("stray file", "blobs/sha256/junk"),
    ]
    assert {f.subject: f.repairable for f in report.findings} == {
        str(target): True,
        "blobs/md5": False,
        "blobs/sha256/junk": True,
    }
    repaired = check_store(store, repair=True)
    assert [f.subject for f in repaired.findings if not f.repaired] == ["blobs/md5"] and not repaired.clean
    assert not (blobs / "junk").exists() and not os.path.lexists(blobs / target.encoded)
    assert (store.root / "oci-layout").exists()


# ---------------------------------------------------------------------------------------------- index.json


def test_a_corrupt_index_is_reported_and_nothing_is_removed_for_it(store: Store) -> None:
    whole(store)
    (store.root / "index.json").write_text("{not json")
    snapshot(store, Digest.of_bytes(b"nobody's"))
    report = check_store(store, repair=True)
    assert kinds(report) == [("corrupt index", "index.json")]
    assert not report.findings[0].repairable and not report.clean
    # Without index.json nothing can say which snapshots are needed: none is removed.
    assert len(list((store.root / "snapshots").iterdir())) == 3


# ------------------------------------------------------------------------------------------------ snapshots


def test_snapshots_nothing_needs_are_unreferenced_as_prune_decides(store: Store, index: CacheIndex) -> None:
    _, top, _ = whole(store)
    stray_layer = layer(store, "c", b"unused")
    orphan = snapshot(store, stray_layer[1])
    report = check_store(store)
    assert kinds(report) == [("unreferenced snapshot", str(stray_layer[1]))]
    planned = storeops.plan_prune(store, storeops.PruneOptions())
    assert {str(d) for d, _ in planned.swept.snapshots} == {str(stray_layer[1])}
    # A running build's leased image keeps its snapshots.
    build = index.start_build("/ctx/Dockerfile")
    index.lease_image(build, image(store, stray_layer, name=None).descriptor)
    assert check_store(store, repair=True).findings == ()
    index.finish_build(build, [])
    repaired = check_store(store, repair=True)
    assert kinds(repaired) == [("unreferenced snapshot", str(stray_layer[1]))] and repaired.clean
    assert not orphan.exists() and (store.root / "snapshots" / top[1].encoded).is_dir()


def test_a_repair_waits_for_a_build_between_a_snapshot_and_its_record(store: Store, index: CacheIndex) -> None:
    whole(store)
    made = layer(store, "new", b"a step's layer")
    with store_guard(store.root):  # as a build holds it, from committing a layer until its entry is recorded
        adopted = snapshot(store, made[1])
        result: list[Report] = []
        repair = threading.Thread(target=lambda: result.append(check_store(store, repair=True)))
        repair.start()
        while repair.is_alive() and not waiting_for(store.root / "cache.lock"):
            time.sleep(0.001)  # until the repair waits for the guard (or, wrongly, has finished without it)
        put_entry(index, made, seed="new")
    repair.join()
    assert result[0].findings == () and adopted.is_dir()


def test_snapshot_names_and_types(store: Store) -> None:
    whole(store)
    base = store.root / "snapshots"
    (base / "not-a-digest").mkdir()
    flat = Digest.of_bytes(b"flat")
    (base / flat.encoded).write_bytes(b"")
    report = check_store(store)
    assert kinds(report) == [("invalid snapshot", str(flat)), ("stray file", "snapshots/not-a-digest")]
    assert check_store(store, repair=True).clean
    assert check_store(store).findings == ()


# ------------------------------------------------------------------------------------------------ leftovers


def test_leftovers_of_dead_processes_are_found_and_removed_and_live_ones_left(store: Store) -> None:
    whole(store)
    me = os.getpid()
    dead = [
        store.root / "ingest" / f"{DEAD}-0123456789abcdef.part",
        store.root / "tmp" / f"{DEAD}-run-abc",
        store.root / "snapshots" / f".{DEAD}-xyz",
        store.root / "cachemounts" / f".{DEAD}-new-abc",
        store.root / f".skeleton-{DEAD}-abc",
    ]
    live = [
        store.root / "ingest" / f"{me}-0123456789abcdef.part",
        store.root / "tmp" / f"{me}-run-abc",
        store.root / "snapshots" / f".{me}-xyz",
        store.root / "cachemounts" / f".{me}-new-abc",
    ]
    for path in dead + live:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".part":
            path.write_bytes(b"half")
        else:
            (path / "upper").mkdir(parents=True)
    report = check_store(store)
    assert sorted(f.subject for f in report.findings) == sorted(p.relative_to(store.root).as_posix() for p in dead)
    assert {f.kind for f in report.findings} == {"temp leftover"}
    # Harmless: what a killed command leaves does not fail the check (the next command would sweep it).
    assert report.clean and report.problems == 0 and report.leftovers == 5
    assert report.summary() == "0 problems, 5 leftovers (5 repairable with --repair)"
    assert check_store(store, repair=True).clean
    assert not any(os.path.lexists(p) for p in dead) and all(p.exists() for p in live)
    assert check_store(store).findings == ()


# ----------------------------------------------------------------------------------------------- the cache


def test_cache_records_invalid_dangling_and_stale_leases(store: Store, index: CacheIndex) -> None:
    _, top, kept = whole(store)
    gone = layer(store, "d", b"gone")
    dangling = put_entry(index, gone, seed="dangling")
    store.layout.store.delete(gone[0].digest)
    broken = put_entry(index, layer(store, "e", b"broken"), seed="broken")
    died = index.start_build("/ctx/Dockerfile")
    leased = put_entry(index, top, seed="leased by the dead", build=died)
    with sqlite3.connect(store.root / "cache.db") as db:
        db.execute("UPDATE entries SET layer = 'garbage' WHERE key = ?", (str(broken.key),))
        db.execute("UPDATE builds SET pid = ? WHERE id = ?", (DEAD, died))
    db.close()
    report = check_store(store)
    found = {(f.kind, f.subject) for f in report.findings}
    assert found == {
        ("stale lease", f"build {died}"),
        ("dangling cache record", str(dangling.key)),
        ("invalid cache record", str(broken.key)),
    }
    assert check_store(store, repair=True).clean
    assert {e.key for e in index.entries()} == {kept.key, leased.key}  # entries() parses every row: none is broken
    assert index.leased() == set()
    assert check_store(store).findings == ()


def test_a_record_a_running_build_leases_is_reported_not_removed(store: Store, index: CacheIndex) -> None:
    gone = layer(store, "d", b"gone")
    build = index.start_build("/ctx/Dockerfile")  # this process: alive
    entry = put_entry(index, gone, build=build)
    store.layout.store.delete(gone[0].digest)
    report = check_store(store, repair=True)
    assert kinds(report) == [("dangling cache record", str(entry.key))]
    assert not report.findings[0].repairable and "leased by a running build" in report.findings[0].detail
    assert index.get(entry.key) is not None
    index.finish_build(build, [])
    assert check_store(store, repair=True).clean
    assert index.get(entry.key) is None


def test_a_corrupt_cache_index_is_reported_not_repaired(store: Store) -> None:
    whole(store)
    for name in ("cache.db", "cache.db-wal", "cache.db-shm"):
        (store.root / name).unlink(missing_ok=True)
    (store.root / "cache.db").write_bytes(b"SQLite format 3\x00" + bytes(4080))
    report = check_store(store, repair=True)
    assert [f.kind for f in report.findings] == ["corrupt cache index"]
    assert not report.findings[0].repairable and not report.clean
    assert len(list((store.root / "snapshots").iterdir())) == 2  # undecidable: none removed


# ------------------------------------------------------------------------------- memos, mounts, containers


def test_memos_of_compressed_copies(store: Store) -> None:
    img, top, _ = whole(store)
    layers = CompressedLayers(store)
    gzipped = layers.get(top[0], Compression.GZIP)
    assert check_store(store).findings == ()
    assert check_store(store).checked.memos == 1
    store.layout.store.delete(gzipped.digest)
    memo = layers.memo_path(top[0].digest, Compression.GZIP)
    other = layers.memo_path(img.layers[0].digest, Compression.ZSTD)
    other.parent.mkdir(parents=True, exist_ok=True)
    other.write_text("{}")
    report = check_store(store)
    rel = lambda p: p.relative_to(store.root).as_posix()  # noqa: E731
    assert kinds(report) == [("dangling memo", rel(memo)), ("invalid memo", rel(other))]
    assert check_store(store, repair=True).clean
    assert not memo.exists() and not other.exists()


def test_cache_mounts_without_data_or_record(store: Store) -> None:
    mounts = CacheMountStore(store.root)
    with mounts.open("good") as data:
        (data / "f").write_text("x")
    with mounts.open("no data"):
        pass
    with mounts.open("no record"):
        pass
    os.rename(mounts.path("no data") / "data", store.root / "elsewhere")
    (mounts.path("no record") / "record.json").unlink()
    (mounts.dir / "junk").write_text("x")
    report = check_store(store)
    rel = lambda id: mounts.path(id).relative_to(store.root).as_posix()  # noqa: E731
    assert sorted(kinds(report)) == sorted(
        [
            ("dangling cache mount", rel("no data")),
            ("invalid cache mount", rel("no record")),
            ("stray file", "cachemounts/junk"),
        ]
    )
    # A mount a step holds (as a shared step holds its lock) is in flux, never touched.
    fd = os.open(mounts.path("no record") / "lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        in_use = check_store(store, repair=True)
        assert ("invalid cache mount", rel("no record")) not in kinds(in_use)
        assert (mounts.path("no record") / "data").is_dir()
    finally:
        os.close(fd)
    assert kinds(check_store(store, repair=True)) == [("invalid cache mount", rel("no record"))]
    assert [m.id for m in mounts.list()] == ["good"]
    assert check_store(store).findings == ()


def test_container_records(store: Store) -> None:
    base = layer(store, "a", b"1")
    img = image(store, base)
    store.layout.store.delete(base[0].digest)
    directory = store.root / CONTAINERS_DIR
    directory.mkdir()
    (directory / "dead.json").write_bytes(canonical_json({"id": "dead", "image": str(img.digest), "pid": DEAD}))
    (directory / "live.json").write_bytes(canonical_json({"id": "live", "image": str(img.digest), "pid": os.getpid()}))
    report = check_store(store, repair=True)
    assert kinds(report) == [("stale container record", "containers/dead.json"), ("dangling entry", APP)]
    assert report.findings[0].repaired and not report.findings[1].repairable  # a running container uses it
    assert store.layout.resolve(APP) is not None
    (directory / "live.json").unlink()
    assert check_store(store, repair=True).clean and store.layout.resolve(APP) is None


def test_sources_with_invalid_digests(store: Store) -> None:
    whole(store)
    sources = BlobSources(store.root)
    sources.add("registry.example.com", "team/app", [Digest.of_bytes(b"not in the store")])
    assert check_store(store).findings == ()  # a hint about a registry, not about this store
    with sqlite3.connect(store.root / "sources.db") as db:
        db.execute("INSERT INTO sources VALUES ('nonsense', 'registry.example.com', 'team/app')")
    db.close()
    report = check_store(store)
    assert report.findings == (
        Finding("invalid source record", "registry.example.com/team/app", "'nonsense' is no digest", True),
    )
    assert check_store(store, repair=True).clean and check_store(store).findings == ()
