"""``builder.cacheops`` over a real cache index and content store: listing, inspecting (the A/C/D changes of a
layer over its parents), disk usage, pruning (what goes, what a lease, an image or another entry keeps) and the
duration and size syntax."""

from __future__ import annotations

import io
import json
import subprocess
import time

import pytest

from builder import cacheops, units
from builder.cache import CacheEntry, CacheIndex
from builder.commit import store_image
from builder.compressed import CompressedLayers
from builder.errors import BuildError
from builder.root import Store
from oci import mediatypes as mt
from oci.compression import Compression
from oci.config import ImageConfig
from oci.descriptor import Descriptor, Platform
from oci.digest import Digest
from oci.layer import LayerItem, opaque, whiteout, write_layer
from oci.tarformat import EntryType, TarEntry

NOW = time.time()
HOUR = 3600.0


# ------------------------------------------------------------------------------------------------ helpers


def d(path: str) -> LayerItem:
    return LayerItem(TarEntry(path + "/", EntryType.DIR, mode=0o755))


def f(path: str, data: bytes = b"x") -> LayerItem:
    return LayerItem(TarEntry(path, EntryType.FILE, size=len(data)), lambda: io.BytesIO(data))


def s(path: str, target: str) -> LayerItem:
    return LayerItem(TarEntry(path, EntryType.SYMLINK, mode=0o777, linkname=target))


def raw(entry: TarEntry) -> LayerItem:
    return LayerItem(entry)


def layer(store: Store, *items: LayerItem) -> tuple[Descriptor, Digest]:
    """An uncompressed layer of ``items`` written into the store, as a build writes one."""
    with store.layout.store.writer() as blob:
        info = write_layer(items, blob, Compression.NONE)
        digest = blob.commit()
        size = blob.size
    return Descriptor(mt.OCI_LAYER, digest, size), info.diff_id


def sized(store: Store, name: str, size: int) -> tuple[Descriptor, Digest]:
    return layer(store, f(name, bytes(size)))


def put(
    index: CacheIndex,
    seed: str,
    result: tuple[Descriptor, Digest] | None = None,
    *,
    parents: tuple[tuple[Descriptor, Digest], ...] = (),
    last_used: float | None = None,
    step: str = "RUN true",
) -> CacheEntry:
    """Record an entry as a finished build would leave it (unleased), last used at ``last_used``."""
    record = {"v": 1, "op": "run", "seed": seed}
    entry = CacheEntry(
        key=Digest.of_bytes(json.dumps(record).encode()),
        record=record,
        layer=result[0] if result else None,
        diff_id=result[1] if result else None,
        history=step,
        step=step,
        stage="stage-0",
        line=2,
        dockerfile="/ctx/Dockerfile",
        about={"base": "busybox"},
        parents=parents,
    )
    build = index.start_build("/ctx/Dockerfile")
    index.put(entry, None, build)
    index.finish_build(build, [])
    if last_used is not None:
        with index.transaction() as db:
            db.execute(
                "UPDATE entries SET last_used = ?, created = ? WHERE key = ?", (last_used, last_used, str(entry.key))
            )
    found = index.get(entry.key)
    assert found is not None
    return found


def tag_image(store: Store, *layers: tuple[Descriptor, Digest], name: str = "docker.io/library/app:latest") -> None:
    config = ImageConfig(architecture="amd64", os="linux", diff_ids=tuple(diff_id for _, diff_id in layers))
    image = store_image(store.layout, config, [desc for desc, _ in layers])
    store.layout.tag(name, image.descriptor)


def keys(entries: list[CacheEntry]) -> list[str]:
    return [str(e.key) for e in entries]


# ------------------------------------------------------------------------------------------------- ls


def test_ls_lists_the_most_recently_used_first_and_json_has_each_field(store: Store, index: CacheIndex) -> None:
    old = put(index, "old", sized(store, "a", 10), last_used=NOW - 3 * HOUR)
    new = put(index, "new", sized(store, "b", 20), last_used=NOW - HOUR)
    empty = put(index, "empty", None, last_used=NOW - 2 * HOUR)
    listed = cacheops.list_entries(index)
    assert keys(listed) == [str(new.key), str(empty.key), str(old.key)]
    shape = listed[0].to_json()
    assert set(shape) == {
        "key",
        "step",
        "stage",
        "line",
        "dockerfile",
        "image",
        "created",
        "last_used",
        "hits",
        "size",
        "layer",
        "diff_id",
        "history",
    }
    assert shape["layer"]["digest"] == str(new.layer.digest) and shape["size"] == new.layer.size
    assert listed[1].to_json()["layer"] is None and listed[1].to_json()["size"] == 0
    assert shape["last_used"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(NOW - HOUR))


# ---------------------------------------------------------------------------------------------- inspect


def test_find_entry_takes_a_unique_prefix_with_or_without_the_algorithm(store: Store, index: CacheIndex) -> None:
    first = put(index, "first")
    hex_digits = first.key.encoded
    assert cacheops.find_entry(index, hex_digits[:6]).key == first.key
    assert cacheops.find_entry(index, f"sha256:{hex_digits[:6]}").key == first.key
    assert cacheops.find_entry(index, str(first.key)).key == first.key
    assert cacheops.find_entry(index, hex_digits[:6].upper()).key == first.key


def test_find_entry_refuses_an_ambiguous_prefix_and_names_an_unknown_key(store: Store, index: CacheIndex) -> None:
    first = put(index, "first")
    n = 0
    while True:  # another entry whose key starts with the same hex digit
        n += 1
        record = {"v": 1, "op": "run", "seed": f"other{n}"}
        if Digest.of_bytes(json.dumps(record).encode()).encoded[0] == first.key.encoded[0]:
            put(index, f"other{n}")
            break
    with pytest.raises(BuildError, match=rf"^{first.key.encoded[0]} is ambiguous: it matches 2 cache entries$"):
        cacheops.find_entry(index, first.key.encoded[0])
    unknown = "0" * 12 if not first.key.encoded.startswith("0") else "f" * 12
    with pytest.raises(BuildError, match=rf"^no cache entry matches {unknown}$"):
        cacheops.find_entry(index, unknown)
    with pytest.raises(BuildError, match="not a cache key"):
        cacheops.find_entry(index, "sha256:")
    with pytest.raises(BuildError, match="not a cache key"):
        cacheops.find_entry(index, "xyz")


def test_inspect_entries_returns_found_ones_and_errors_for_the_rest(store: Store, index: CacheIndex) -> None:
    entry = put(index, "one", layer(store, f("hello", b"hi")))
    unknown = "0" * 12 if not entry.key.encoded.startswith("0") else "f" * 12
    found, errors = cacheops.inspect_entries(store, index, [entry.key.encoded[:8], unknown, "nothex"])
    assert errors == [
        f"no cache entry matches {unknown}",
        "nothex: not a cache key (expected hex digits of a sha256 key)",
    ]
    (data,) = found
    assert data["key"] == str(entry.key)
    assert data["record"] == {"v": 1, "op": "run", "seed": "one"}
    assert data["about"] == {"base": "busybox"}
    assert data["parents"] == []
    assert data["changes"] == [{"op": "A", "path": "/hello", "type": "file", "size": 2}]


def test_changes_tell_added_changed_and_deleted_over_the_parent_layers(store: Store, index: CacheIndex) -> None:
    base = layer(
        store,
        d("etc"),
        f("etc/a", b"1"),
        f("etc/b", b"2"),
        s("etc/link", "a"),
        d("opt"),
        f("opt/x"),
        f("opt/y"),
        d("usr"),
        d("usr/bin"),
        f("usr/bin/tool"),
        f("var/log/old.log"),  # its directories only implied
    )
    # The second layer deletes usr/bin (so a later tool there is new again) and hides what was in var/.
    middle = layer(store, raw(whiteout("usr/bin")), raw(opaque("var")), d("var"), f("var/kept"))
    top = layer(
        store,
        d("etc"),
        raw(whiteout("etc/b")),
        raw(whiteout("etc/link")),
        raw(whiteout("etc/never")),
        f("etc/a", b"new"),
        f("etc/c", b"abc"),
        d("new"),
        f("new/file", b"12345"),
        raw(opaque("opt")),
        f("opt/z"),
        d("usr/bin"),
        f("usr/bin/tool"),
        f("var/kept"),
        f("var/log/old.log"),
        raw(TarEntry("etc/hard", EntryType.HARDLINK, linkname="etc/a")),
    )
    entry = put(index, "top", top, parents=(base, middle))
    changes = {c.path: (c.op, c.type, c.size) for c in cacheops.layer_changes(store.layout.store, entry)}
    assert changes == {
        "/etc": ("C", "dir", 0),
        "/etc/b": ("D", "file", 0),
        "/etc/link": ("D", "symlink", 0),
        "/etc/never": ("D", "whiteout", 0),
        "/etc/a": ("C", "file", 3),
        "/etc/c": ("A", "file", 3),
        "/new": ("A", "dir", 0),
        "/new/file": ("A", "file", 5),
        "/opt/*": ("D", "opaque", 0),
        "/opt/z": ("A", "file", 1),
        "/usr/bin": ("A", "dir", 0),
        "/usr/bin/tool": ("A", "file", 1),
        "/var/kept": ("C", "file", 1),
        "/var/log/old.log": ("A", "file", 1),
        "/etc/hard": ("A", "hardlink", 0),
    }


def test_changes_of_an_entry_without_a_layer_are_empty_and_a_missing_parent_is_reported(
    store: Store, index: CacheIndex
) -> None:
    empty = put(index, "empty")
    assert cacheops.layer_changes(store.layout.store, empty) == []
    gone = sized(store, "gone", 5)
    store.layout.store.delete(gone[0].digest)
    entry = put(index, "orphan", layer(store, f("x")), parents=(gone,))
    (data, no_layer), errors = cacheops.inspect_entries(store, index, [str(entry.key), str(empty.key)])
    assert errors == []
    assert data["changes"] is None and str(gone[0].digest) in data["changes_error"]
    assert no_layer["changes"] == [] and no_layer["layer"] is None


# --------------------------------------------------------------------------------------------------- du


def test_du_counts_distinct_layers_and_what_images_share(store: Store, index: CacheIndex) -> None:
    shared = sized(store, "shared", 4000)
    private = sized(store, "private", 9000)
    put(index, "a", shared, last_used=NOW - 3 * HOUR)
    put(index, "b", private, last_used=NOW - 2 * HOUR)
    put(index, "c", private, last_used=NOW - HOUR)  # the same layer again: counted once
    put(index, "d", None)
    tag_image(store, shared)
    usage = cacheops.disk_usage(store, index)
    assert usage.entries == 4
    assert usage.total == shared[0].size + private[0].size
    assert usage.shared == shared[0].size
    assert usage.reclaimable == private[0].size
    assert usage.to_json() == {
        "entries": 4,
        "total": usage.total,
        "shared": shared[0].size,
        "reclaimable": private[0].size,
    }
    records = usage.to_json(verbose=True)["records"]
    assert [(r["size"], r["shared"]) for r in records] == [
        (private[0].size, False),
        (private[0].size, False),
        (shared[0].size, True),
    ]
    assert records[0]["step"] == "RUN true" and records[0]["layer"] == str(private[0].digest)


# ------------------------------------------------------------------------------------------------ prune


def test_prune_by_default_deletes_only_entries_whose_layer_no_image_uses(store: Store, index: CacheIndex) -> None:
    used = sized(store, "used", 100)
    unused = sized(store, "unused", 200)
    a = put(index, "a", used)
    b = put(index, "b", unused)
    c = put(index, "c", None)
    tag_image(store, used)
    result = cacheops.prune(store, index, cacheops.PruneOptions())
    assert result.deleted == (str(b.key),)
    assert result.reclaimed == unused[0].size
    assert result.to_json() == {"deleted": [str(b.key)], "reclaimed": unused[0].size}
    assert {str(e.key) for e in index.entries()} == {str(a.key), str(c.key)}
    blobs = store.layout.store
    assert blobs.has(used[0].digest) and not blobs.has(unused[0].digest)


def test_prune_all_deletes_every_entry_but_never_a_blob_an_image_reaches(store: Store, index: CacheIndex) -> None:
    used = sized(store, "used", 100)
    unused = sized(store, "unused", 200)
    put(index, "a", used)
    put(index, "b", unused)
    put(index, "c", None)
    tag_image(store, used)
    result = cacheops.prune(store, index, cacheops.PruneOptions(all=True))
    assert len(result.deleted) == 3 and index.entries() == []
    assert result.reclaimed == unused[0].size
    assert store.layout.store.has(used[0].digest)
    assert not store.layout.store.has(unused[0].digest)
    image = store.layout.image(store.layout.tags()[0], Platform("linux", "amd64"))
    for desc, _ in image.layer_pairs():  # the image is whole
        store.layout.store.verify(desc.digest)


def test_prune_all_forgets_the_context_stat_caches_and_a_bounded_prune_keeps_them(
    store: Store, index: CacheIndex
) -> None:
    rows = {b"/ctx/a": (1, 2, 3, 4, "sha256:" + "0" * 64)}
    index.save_stats(b"/ctx", rows)  # type: ignore[arg-type]
    cacheops.prune(store, index, cacheops.PruneOptions(all=True, until=units.parse_duration("1h")))
    assert index.load_stats(b"/ctx") == rows
    cacheops.prune(store, index, cacheops.PruneOptions(all=True, keep_storage=1))
    assert index.load_stats(b"/ctx") == rows
    cacheops.prune(store, index, cacheops.PruneOptions())
    assert index.load_stats(b"/ctx") == rows
    cacheops.prune(store, index, cacheops.PruneOptions(all=True))
    assert index.load_stats(b"/ctx") == {}


def test_prune_until_keeps_entries_used_recently(store: Store, index: CacheIndex) -> None:
    old = put(index, "old", sized(store, "old", 10), last_used=NOW - 48 * HOUR)
    recent = put(index, "recent", sized(store, "recent", 10), last_used=NOW - 2 * HOUR)
    options = cacheops.PruneOptions(until=units.parse_duration("24h"))
    result = cacheops.prune(store, index, options, now=NOW)
    assert result.deleted == (str(old.key),)
    assert keys(index.entries()) == [str(recent.key)]


def test_prune_keep_storage_removes_least_recently_used_first_until_it_fits(store: Store, index: CacheIndex) -> None:
    oldest = put(index, "oldest", sized(store, "1", 3000), last_used=NOW - 4 * HOUR)
    older = put(index, "older", sized(store, "2", 5000), last_used=NOW - 3 * HOUR)
    newer = put(index, "newer", sized(store, "3", 7000), last_used=NOW - 2 * HOUR)
    newest = put(index, "newest", sized(store, "4", 2000), last_used=NOW - HOUR)
    total = sum(e.size for e in (oldest, older, newer, newest))
    keep = total - oldest.size - older.size  # the two oldest must go, and no more
    result = cacheops.prune(store, index, cacheops.PruneOptions(keep_storage=keep), now=NOW)
    assert result.deleted == (str(oldest.key), str(older.key))
    assert keys(index.entries()) == [str(newest.key), str(newer.key)]
    nothing = cacheops.prune(store, index, cacheops.PruneOptions(keep_storage=total), now=NOW)
    assert nothing.deleted == ()


def test_prune_keep_storage_counts_a_layer_two_entries_hold_once(store: Store, index: CacheIndex) -> None:
    both = sized(store, "both", 6000)
    first = put(index, "first", both, last_used=NOW - 3 * HOUR)
    second = put(index, "second", both, last_used=NOW - 2 * HOUR)
    other = put(index, "other", sized(store, "other", 1000), last_used=NOW - HOUR)
    result = cacheops.prune(store, index, cacheops.PruneOptions(keep_storage=other.size), now=NOW)
    # Deleting the first entry frees nothing (the second still holds its layer): both must go.
    assert result.deleted == (str(first.key), str(second.key))
    assert result.reclaimed == both[0].size


def test_prune_never_deletes_a_leased_entry_nor_a_layer_another_entry_holds(store: Store, index: CacheIndex) -> None:
    one = sized(store, "one", 100)
    leased = put(index, "leased", one)
    twin = put(index, "twin", one)  # the same layer, unleased
    running = index.start_build("/ctx/Dockerfile")  # this process: alive
    index.use(leased.key, running)
    result = cacheops.prune(store, index, cacheops.PruneOptions(all=True))
    assert result.deleted == (str(twin.key),)
    assert keys(index.entries()) == [str(leased.key)]
    assert store.layout.store.has(one[0].digest) and result.reclaimed == 0
    index.finish_build(running, [])
    assert cacheops.prune(store, index, cacheops.PruneOptions(all=True)).deleted == (str(leased.key),)
    assert not store.layout.store.has(one[0].digest)


def test_a_dead_builds_lease_keeps_nothing(store: Store, index: CacheIndex) -> None:
    entry = put(index, "entry", sized(store, "x", 10))
    build = index.start_build("/ctx/Dockerfile")
    index.use(entry.key, build)
    dead = subprocess.Popen(["true"])
    dead.wait()
    with index.transaction() as db:
        db.execute("UPDATE builds SET pid = ? WHERE id = ?", (dead.pid, build))
    assert cacheops.prune(store, index, cacheops.PruneOptions()).deleted == (str(entry.key),)


def test_prune_removes_the_snapshot_and_compressed_copies_of_a_deleted_layer(store: Store, index: CacheIndex) -> None:
    gone = sized(store, "gone", 3000)
    kept = sized(store, "kept", 3000)
    put(index, "gone", gone)
    put(index, "kept", kept)
    tag_image(store, kept)
    snapshots = store.root / "snapshots"
    for _, diff_id in (gone, kept):
        (snapshots / diff_id.encoded).mkdir(parents=True)
        (snapshots / diff_id.encoded / "file").write_text("x")
    compressed = CompressedLayers(store)
    gz_gone = compressed.get(gone[0], Compression.GZIP)
    gz_kept = compressed.get(kept[0], Compression.GZIP)
    memo_gone = compressed.memo_path(gone[0].digest, Compression.GZIP)
    memo_kept = compressed.memo_path(kept[0].digest, Compression.GZIP)
    unrelated = store.layout.store.put_bytes(b"an unrelated blob")
    result = cacheops.prune(store, index, cacheops.PruneOptions(all=True))
    blobs = store.layout.store
    assert len(result.deleted) == 2
    assert result.reclaimed == gone[0].size + gz_gone.size
    assert not blobs.has(gone[0].digest) and not blobs.has(gz_gone.digest) and not memo_gone.exists()
    assert not (snapshots / gone[1].encoded).exists()
    # What an image reaches keeps its snapshot and compressed copy; nothing unrelated is touched.
    assert blobs.has(kept[0].digest) and blobs.has(gz_kept.digest) and memo_kept.exists()
    assert (snapshots / kept[1].encoded / "file").exists()
    assert blobs.has(unrelated)


def test_prune_keeps_a_compressed_copy_an_image_uses(store: Store, index: CacheIndex) -> None:
    plain = sized(store, "plain", 3000)
    put(index, "plain", plain)
    gz = CompressedLayers(store).get(plain[0], Compression.GZIP)
    tag_image(store, (gz, plain[1]))  # an image made of the compressed copy (as an export into the store would)
    result = cacheops.prune(store, index, cacheops.PruneOptions())
    assert len(result.deleted) == 1 and result.reclaimed == plain[0].size
    assert not store.layout.store.has(plain[0].digest) and store.layout.store.has(gz.digest)


def test_plan_prune_is_what_prune_deletes(store: Store, index: CacheIndex) -> None:
    a = put(index, "a", sized(store, "a", 10), last_used=NOW - 2 * HOUR)
    b = put(index, "b", sized(store, "b", 10), last_used=NOW - HOUR)
    planned = cacheops.plan_prune(store, index, cacheops.PruneOptions())
    assert keys(planned) == [str(a.key), str(b.key)]
    # Only what the user agreed to is deleted, even if more became prunable since.
    c = put(index, "c", sized(store, "c", 10))
    result = cacheops.prune(store, index, cacheops.PruneOptions(), only={str(a.key)})
    assert result.deleted == (str(a.key),)
    assert {str(e.key) for e in index.entries()} == {str(b.key), str(c.key)}


# ------------------------------------------------------------------------------------- durations and sizes


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("24h", 86400),
        ("90m", 5400),
        ("1h30m", 5400),
        ("10s", 10),
        ("500ms", 0.5),
        ("7d", 7 * 86400),
        ("1.5h", 5400),
        ("0", 0),
        ("2h0m10s", 7210),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert units.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "24", "h", "1x", "-1h", "1h 30m", "1w", "1hh", "10 s"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        units.parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1048576", 1048576),
        ("100b", 100),
        ("10GB", 10 * 1000**3),
        ("512MB", 512 * 1000**2),
        ("1kB", 1000),
        ("2TB", 2 * 1000**4),
        ("1g", 1024**3),
        ("100m", 100 * 1024**2),
        ("2GiB", 2 * 1024**3),
        ("1gb", 1024**3),
        ("4k", 4096),
        ("3Mi", 3 * 1024**2),
        ("1.5GiB", 1536 * 1024**2),
        ("1 GB", 1000**3),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert units.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "GB", "10XB", "-1", "1.2.3", "10GBs", "1iB", "1e9"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="invalid size"):
        units.parse_size(text)


# ---------------------------------------------------------------------------------------------- explain


def test_last_build_ties_each_unexplained_miss_to_the_miss_it_followed(index: CacheIndex) -> None:
    assert cacheops.last_build(index) is None
    build = index.start_build("/ctx/Dockerfile")
    report = [
        {"stage": "build", "line": 3, "step": "COPY . .", "status": "cached", "key": "sha256:1", "reason": ""},
        {"stage": "build", "line": 4, "step": "RUN make", "status": "built", "key": "sha256:2", "reason": "x"},
        {"stage": "build", "line": 5, "step": "RUN test", "status": "built", "key": "sha256:3", "reason": ""},
        {"stage": "final", "line": 9, "step": "COPY --from=build", "status": "built", "key": "sha256:4", "reason": ""},
        {"stage": "final", "line": 10, "step": "RUN false", "status": "failed", "key": "sha256:5", "reason": "exit 1"},
    ]
    index.finish_build(build, report)
    last = cacheops.last_build(index)
    assert last is not None and last.dockerfile == "/ctx/Dockerfile"
    assert [s.after for s in last.steps] == [None, None, 4, None, None]
    data = last.to_json()
    assert data["steps"] == report
    assert set(data) == {"dockerfile", "finished", "steps"}
    assert data["finished"].endswith("Z") and len(data["finished"]) == len("2024-01-01T00:00:00Z")


def test_a_stat_cache_keeps_a_few_changes_as_a_delta_and_folds_it_in_when_it_grows(index: CacheIndex) -> None:
    def row(n: int) -> tuple[int, int, int, int, str]:
        return (n, n, n, n, f"{n:064x}")

    rows = {b"/ctx/%d" % n: row(n) for n in range(100)}
    index.save_stats(b"/ctx", rows)  # type: ignore[arg-type]  # a first walk: the rows, whole

    def keys() -> list[bytes]:
        return sorted(r[0] for r in index._db.execute("SELECT root FROM stats"))

    assert keys() == [b"/ctx"]
    index.save_stats(b"/ctx", {b"/ctx/1": row(1000), b"/ctx/2": None, b"/ctx/new": row(7)}, known=100)
    assert keys() == [b"/ctx", b"/ctx\0delta"]  # only the changes were written
    expected = {**rows, b"/ctx/1": row(1000), b"/ctx/new": row(7)}
    del expected[b"/ctx/2"]
    assert index.load_stats(b"/ctx") == expected
    index.save_stats(b"/ctx", {b"/ctx/%d" % n: row(n + 1) for n in range(10, 40)}, known=len(expected))
    assert keys() == [b"/ctx"]  # 33 changes of 100 rows: folded in
    expected.update({b"/ctx/%d" % n: row(n + 1) for n in range(10, 40)})
    assert index.load_stats(b"/ctx") == expected
    assert index.load_stats(b"/other") == {}
