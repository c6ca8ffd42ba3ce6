"""The store verbs' operations over a real store (no root needed): untagged images in the layout, ``rmi``,
``prune`` (what goes, and everything that keeps a blob or snapshot: names, cache entries, leases of running builds,
running containers, compressed copies, ``until``), the guard that makes prune wait for writers, ``system df``,
``history``, the ``images`` filters, ``tag``, and ``save``/``load`` round trips in both formats."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
import threading
import time
from pathlib import Path

import pytest
from conftest import layer, put_entry

from builder import fsck, storeops
from builder.cache import CacheEntry, CacheIndex, store_guard
from builder.commit import store_image
from builder.compressed import CompressedLayers
from builder.container import CONTAINERS_DIR
from builder.errors import BuildError, ImageNotFound, UsageError
from builder.images import (
    filter_images,
    image_history,
    list_images,
    parse_image_filters,
    resolve_image,
    tag_image,
)
from builder.root import Store, open_store
from oci import mediatypes as mt
from oci.compression import Compression
from oci.config import History, ImageConfig, RuntimeConfig
from oci.descriptor import Descriptor, Platform
from oci.digest import Digest
from oci.frozen import FrozenMap
from oci.image import Image, validate_image
from oci.layout import ImageLayout

AMD64 = Platform("linux", "amd64")
APP = "docker.io/library/app:latest"


# ------------------------------------------------------------------------------------------------ helpers


def image(
    store: Store,
    *layers: tuple[Descriptor, Digest],
    created: str = "2024-01-01T00:00:00Z",
    labels: dict[str, str] | None = None,
    history: tuple[History, ...] = (),
) -> Image:
    config = ImageConfig(
        architecture="amd64",
        os="linux",
        created=created,
        config=RuntimeConfig(labels=FrozenMap(labels or {})),
        diff_ids=tuple(diff_id for _, diff_id in layers),
        history=history,
    )
    made = store_image(store.layout, config, [desc for desc, _ in layers])
    made.config  # noqa: B018 - read now: tests look at images whose blobs are gone
    return made


def snapshot(store: Store, diff_id: Digest, size: int = 10) -> Path:
    path = store.root / "snapshots" / diff_id.encoded
    path.mkdir(parents=True, exist_ok=True)
    (path / "file").write_bytes(bytes(size))
    return path


def names(layout: ImageLayout) -> list[tuple[str | None, Digest]]:
    """The index entries (name, digest), in a stable order (tag moves the name it sets to the end)."""
    return sorted(((d.ref_name, d.digest) for d in layout.index().manifests), key=str)


def blobs_of(img: Image) -> set[Digest]:
    return {img.digest, img.id, *(d.digest for d in img.layers)}


# ------------------------------------------------------------------------------------- untagged images


def test_a_moved_name_leaves_the_old_image_untagged_once(store: Store) -> None:
    layout = store.layout
    old = image(store, layer(store, "a", b"1"))
    new = image(store, layer(store, "a", b"2"))
    layout.tag(APP, old.descriptor)
    layout.tag(APP, new.descriptor)
    assert names(layout) == [(APP, new.digest), (None, old.digest)]
    layout.tag(APP, new.descriptor)  # the same image again: nothing moves
    assert names(layout) == [(APP, new.digest), (None, old.digest)]
    layout.tag("docker.io/library/other:1", old.descriptor)  # naming an untagged image replaces its entry
    assert names(layout) == [(APP, new.digest), ("docker.io/library/other:1", old.digest)]
    layout.tag("docker.io/library/other:1", new.descriptor)
    assert names(layout) == [(APP, new.digest), ("docker.io/library/other:1", new.digest), (None, old.digest)]
    raw = json.loads((store.root / "index.json").read_text())
    assert [m.get("annotations", {}) for m in raw["manifests"] if m["digest"] == str(old.digest)] == [{}]


def test_a_moved_name_leaves_nothing_when_another_name_holds_the_image(store: Store) -> None:
    layout = store.layout
    old = image(store, layer(store, "a", b"1"))
    new = image(store, layer(store, "a", b"2"))
    layout.tag(APP, old.descriptor)
    layout.tag("docker.io/library/keep:1", old.descriptor)
    layout.tag(APP, new.descriptor)
    assert names(layout) == [(APP, new.digest), ("docker.io/library/keep:1", old.digest)]
    assert layout.untag("docker.io/library/keep:1")  # the last name: the image stays, untagged
    assert names(layout) == [(APP, new.digest), (None, old.digest)]
    assert not layout.add_untagged(old.descriptor)
    assert layout.remove([old.digest]) == [old.descriptor]
    assert names(layout) == [(APP, new.digest)]


def test_images_lists_untagged_images_as_none_and_filters_them(store: Store) -> None:
    layout = store.layout
    old = image(store, layer(store, "a", b"1"), created="2024-01-01T00:00:00Z", labels={"team": "a"})
    new = image(store, layer(store, "a", b"2"), created="2024-02-01T00:00:00Z", labels={"team": "b", "x": "1"})
    layout.tag(APP, old.descriptor)
    layout.tag(APP, new.descriptor)
    rows = list_images(layout, AMD64)
    assert [(r.reference and str(r.reference), r.dangling) for r in rows] == [(APP, False), (None, True)]
    assert rows[1].to_json()["Repository"] == "<none>" and rows[1].to_json()["Tag"] == "<none>"

    def kept(*texts: str) -> list[Digest]:
        return [r.image.id for r in filter_images(layout, rows, parse_image_filters(texts), AMD64)]

    assert kept("dangling=true") == [old.id]
    assert kept("dangling=false") == [new.id]
    assert kept("reference=app") == [new.id]
    assert kept("reference=nothing*", "reference=ap*") == [new.id]  # values of one key: any
    assert kept("label=team") == [new.id, old.id]
    assert kept("label=team=b", "label=x") == [new.id]  # labels: all
    assert kept("label=team=a", "dangling=false") == []  # different keys: all
    assert kept(f"before={APP}") == [old.id]
    assert kept(f"since={old.id.encoded[:12]}") == [new.id]
    for bad in ("bogus=1", "dangling=maybe", "reference="):
        with pytest.raises(UsageError):
            parse_image_filters([bad])


# ----------------------------------------------------------------------------------------------- tag


def test_tag_names_an_image_given_by_name_id_or_digest_and_refuses_digests(store: Store) -> None:
    layout = store.layout
    img = image(store, layer(store, "a", b"1"))
    layout.tag(APP, img.descriptor)
    assert str(tag_image(layout, "app", "copy", AMD64)) == "docker.io/library/copy:latest"
    tag_image(layout, img.id.encoded[:8], "registry.example.com/team/app:2", AMD64)
    tag_image(layout, str(img.digest), "third:3", AMD64)
    assert {d.ref_name for d in layout.tags()} == {
        APP,
        "docker.io/library/copy:latest",
        "registry.example.com/team/app:2",
        "docker.io/library/third:3",
    }
    assert all(d.digest == img.digest for d in layout.tags())
    with pytest.raises(UsageError, match="digest"):
        tag_image(layout, "app", f"app@{img.digest}", AMD64)
    with pytest.raises(ImageNotFound):
        tag_image(layout, "missing", "other", AMD64)


# ----------------------------------------------------------------------------------------------- rmi


def test_rmi_untags_while_another_name_holds_the_image_then_deletes_it(store: Store, index: CacheIndex) -> None:
    layout = store.layout
    base = layer(store, "base", b"b" * 100)
    own = layer(store, "own", b"o" * 50)
    other = image(store, base)
    img = image(store, base, own)
    layout.tag("docker.io/library/base:latest", other.descriptor)
    layout.tag(APP, img.descriptor)
    layout.tag("docker.io/library/app:2", img.descriptor)
    snapshot(store, own[1])
    snapshot(store, base[1])

    removed = storeops.remove_image(store, "app", force=False, platform=AMD64)
    assert [str(r) for r in removed.untagged] == [APP] and removed.image is None
    assert layout.store.has(img.digest)

    removed = storeops.remove_image(store, "app:2", force=False, platform=AMD64)
    assert removed.image == img.id
    assert {d for d, _ in removed.swept.blobs} == {img.digest, img.id, own[0].digest}  # base's layer is shared
    assert [d for d, _ in removed.swept.snapshots] == [own[1]]
    assert names(layout) == [("docker.io/library/base:latest", other.digest)]
    validate_image(layout.image(layout.tags()[0], AMD64))
    with pytest.raises(ImageNotFound):
        storeops.remove_image(store, "app:2", force=False, platform=AMD64)


def test_rmi_by_id_needs_force_when_several_names_hold_it(store: Store, index: CacheIndex) -> None:
    layout = store.layout
    cached = layer(store, "a", b"1")
    put_entry(index, cached)
    img = image(store, cached)
    layout.tag(APP, img.descriptor)
    layout.tag("docker.io/library/app:2", img.descriptor)
    with pytest.raises(BuildError, match="must be forced.*multiple repositories"):
        storeops.remove_image(store, img.id.encoded[:12], force=False, platform=AMD64)
    removed = storeops.remove_image(store, img.id.encoded[:12], force=True, platform=AMD64)
    assert sorted(str(r) for r in removed.untagged) == ["docker.io/library/app:2", APP]
    assert layout.index().manifests == ()
    assert layout.store.has(cached[0].digest)  # the step cache still holds the layer
    assert not layout.store.has(img.digest)


def test_rmi_keeps_an_image_a_running_container_uses(store: Store) -> None:
    layout = store.layout
    img = image(store, layer(store, "a", b"1"))
    layout.tag(APP, img.descriptor)
    _running_container(store, img.digest)
    with pytest.raises(BuildError, match="running container"):
        storeops.remove_image(store, img.id.encoded, force=True, platform=AMD64)
    with pytest.raises(BuildError, match="must force"):
        storeops.remove_image(store, "app", force=False, platform=AMD64)
    removed = storeops.remove_image(store, "app", force=True, platform=AMD64)
    assert removed.image is None and names(layout) == [(None, img.digest)]
    assert storeops.prune(store, storeops.PruneOptions()).images == ()
    validate_image(Image(layout.store, img.descriptor))


def _running_container(store: Store, digest: Digest) -> None:
    directory = store.root / CONTAINERS_DIR
    directory.mkdir(exist_ok=True)
    record = {"id": "c" * 64, "image": str(digest), "pid": os.getpid()}
    (directory / f"{'c' * 64}.json").write_text(json.dumps(record))


# --------------------------------------------------------------------------------------------- prune


def test_prune_removes_dangling_images_and_only_what_nothing_needs(store: Store, index: CacheIndex) -> None:
    layout = store.layout
    base = layer(store, "base", b"b" * 1000)
    cached = layer(store, "cached", b"c" * 300)
    gone = layer(store, "gone", b"g" * 200)
    put_entry(index, cached)
    kept = image(store, base, cached)
    old = image(store, base, gone)
    layout.tag(APP, old.descriptor)
    layout.tag(APP, kept.descriptor)  # old is now dangling
    orphan = layout.store.put_bytes(b"left behind by a killed command")
    # The gzip copies of a kept layer and of a layer that goes, with their memos.
    copies = CompressedLayers(store)
    kept_copy = copies.get(base[0], Compression.GZIP)
    gone_copy = copies.get(gone[0], Compression.GZIP)
    for result in (base, cached, gone):
        snapshot(store, result[1])
    stray = snapshot(store, Digest.of_bytes(b"a layer nobody has"))
    half = store.root / "snapshots" / f".{os.getpid()}-extracting"
    half.mkdir()

    plan = storeops.plan_prune(store, storeops.PruneOptions())
    result = storeops.prune(store, storeops.PruneOptions())
    assert [i.id for i in result.images] == [old.id] and plan.images == result.images
    deleted = {d for d, _ in result.swept.blobs}
    assert deleted == {old.digest, old.id, gone[0].digest, gone_copy.digest, orphan}
    assert {d for d, _ in plan.swept.blobs} == deleted and plan.reclaimed == result.reclaimed
    assert {d for d, _ in result.swept.snapshots} == {gone[1], Digest("sha256", stray.name)}
    assert result.reclaimed == sum(size for _, size in result.swept.blobs) + 20
    assert result.to_json()["SpaceReclaimed"] == result.reclaimed
    # Everything a name, the cache or a kept layer's compressed copy needs is still there, and whole.
    assert names(layout) == [(APP, kept.digest)]
    validate_image(layout.image(layout.tags()[0], AMD64))
    assert layout.store.has(cached[0].digest) and layout.store.has(kept_copy.digest)
    assert (store.root / "snapshots" / base[1].encoded).is_dir()
    assert (store.root / "snapshots" / cached[1].encoded).is_dir() and half.is_dir()
    assert copies.memo_path(base[0].digest, Compression.GZIP).exists()
    assert not copies.memo_path(gone[0].digest, Compression.GZIP).exists()
    # Nothing more to do.
    again = storeops.prune(store, storeops.PruneOptions())
    assert again.images == () and again.reclaimed == 0


def test_prune_keeps_what_running_builds_leased(store: Store, index: CacheIndex) -> None:
    layout = store.layout
    base = image(store, layer(store, "base", b"1"))
    layout.tag("docker.io/library/base:latest", base.descriptor)
    committed = image(store, layer(store, "new", b"2"))  # a build's image, not tagged yet
    build = index.start_build("/ctx/Dockerfile")
    index.lease_image(build, base.descriptor)
    index.lease_image(build, committed.descriptor)
    layout.tag("docker.io/library/base:latest", image(store, layer(store, "base", b"3")).descriptor)  # base moves
    expected = blobs_of(base) | blobs_of(committed)
    result = storeops.prune(store, storeops.PruneOptions())
    assert result.images == () and result.swept.blobs == ()
    index.finish_build(build, [])
    result = storeops.prune(store, storeops.PruneOptions())
    assert [i.id for i in result.images] == [base.id]
    assert {d for d, _ in result.swept.blobs} == expected


def test_a_layer_whose_entry_another_build_replaced_is_kept_while_its_build_runs(
    store: Store, index: CacheIndex
) -> None:
    """Two builds make the same step at once (both missed): the second entry replaces the first, whose layer the
    first build goes on using (a later COPY --from reads its snapshot). Its lease keeps blob and snapshot."""
    first, second = layer(store, "side", b"1"), layer(store, "side", b"2")
    for made in (first, second):
        snapshot(store, made[1])
    record = {"v": 1, "op": "run", "seed": "same step"}
    builds = [index.start_build("/ctx/Dockerfile") for _ in range(2)]
    for build, made in zip(builds, (first, second), strict=True):
        key = Digest.of_bytes(json.dumps(record).encode())
        entry = CacheEntry(key, record, made[0], made[1], "RUN x", "RUN x", "stage-0", 2, "/ctx/Dockerfile")
        index.put(entry, None, build)
    assert [e.layer for e in index.entries()] == [second[0]]  # the newest result won the key
    result = storeops.prune(store, storeops.PruneOptions())
    assert result.swept.blobs == () and result.swept.snapshots == ()
    assert fsck.check_store(store).clean
    index.finish_build(builds[0], [])
    result = storeops.prune(store, storeops.PruneOptions())
    assert [d for d, _ in result.swept.blobs] == [first[0].digest]
    assert [d for d, _ in result.swept.snapshots] == [first[1]]


def test_prune_until_keeps_recent_images_and_files(store: Store) -> None:
    layout = store.layout
    now = time.time()
    old = image(store, layer(store, "a", b"1"), created="2020-01-01T00:00:00.123456789Z")
    recent = image(store, layer(store, "a", b"2"), created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)))
    for img in (old, recent):
        layout.add_untagged(img.descriptor)
    expected = blobs_of(old) | blobs_of(recent)
    result = storeops.prune(store, storeops.PruneOptions(until=3600), now=now)
    assert [i.id for i in result.images] == [old.id]
    assert result.swept.blobs == ()  # its blobs were written a moment ago: kept until they are an hour old
    result = storeops.prune(store, storeops.PruneOptions(until=3600), now=now + 7200)
    assert [i.id for i in result.images] == [recent.id]
    assert {d for d, _ in result.swept.blobs} == expected


def test_prune_waits_for_a_writer_holding_the_guard(store: Store) -> None:
    dangling = image(store, layer(store, "a", b"1"))
    store.layout.add_untagged(dangling.descriptor)
    done = threading.Event()

    def run() -> None:
        storeops.prune(store, storeops.PruneOptions())
        done.set()

    with store_guard(store.root):  # as a pull holds it from its first blob to its tag
        worker = threading.Thread(target=run)
        worker.start()
        assert not done.wait(0.5)
    worker.join(10)
    assert done.is_set() and not store.layout.store.has(dangling.digest)


# ------------------------------------------------------------------------------------------- system df


def test_system_df_counts_images_blobs_snapshots_and_reclaimable_space(store: Store, index: CacheIndex) -> None:
    layout = store.layout
    shared = layer(store, "base", b"b" * 1000)
    mine = layer(store, "mine", b"m" * 100)
    old = image(store, shared, mine)
    new = image(store, shared)
    layout.tag(APP, old.descriptor)
    layout.tag(APP, new.descriptor)
    put_entry(index, layer(store, "cached", b"c" * 10))
    snapshot(store, shared[1], 7)
    snapshot(store, mine[1], 5)
    planned = storeops.plan_prune(store, storeops.PruneOptions())
    usage = storeops.system_df(store, AMD64)
    rows = {row.type: row for row in usage.rows}
    blob_bytes = sum(p.stat().st_size for p in (store.root / "blobs" / "sha256").iterdir())
    assert (rows["Images"].total, rows["Images"].active) == (2, 0)
    assert rows["Images"].reclaimable == old.descriptor.size + old.manifest.config.size + mine[0].size
    assert (rows["Blobs"].total, rows["Blobs"].size) == (len(list(layout.store)), blob_bytes)
    assert rows["Blobs"].reclaimable == sum(size for _, size in planned.swept.blobs)
    assert (rows["Snapshots"].total, rows["Snapshots"].size, rows["Snapshots"].reclaimable) == (2, 12, 5)
    assert rows["Build Cache"].total == 1 and rows["Cache Mounts"].size == 0
    by_id = {i.summary.image.id: i for i in usage.images}
    assert by_id[new.id].shared == shared[0].size and by_id[old.id].unique == by_id[old.id].size - shared[0].size
    assert [r["Type"] for r in usage.to_json()["Types"]] == [
        "Images",
        "Blobs",
        "Snapshots",
        "Build Cache",
        "Cache Mounts",
    ]


# --------------------------------------------------------------------------------------------- history


def test_history_is_newest_first_with_layer_sizes_and_the_id_on_top(store: Store) -> None:
    first, second = layer(store, "a", b"1" * 3000), layer(store, "b", b"2")
    gzipped = CompressedLayers(store).get(second[0], Compression.GZIP)
    history = (
        History(created="2024-01-01T00:00:00Z", created_by="ADD rootfs.tar /", comment="base"),
        History(created="2024-01-02T00:00:00Z", created_by="ENV A=1", empty_layer=True),
        History(created="2024-01-03T00:00:00Z", created_by="RUN make"),
    )
    img = image(store, first, (gzipped, second[1]), history=history)
    store.layout.tag(APP, img.descriptor)
    rows = image_history(store.layout, "app", AMD64)
    assert [(r.id, r.created_by, r.size, r.empty_layer) for r in rows] == [
        (str(img.id), "RUN make", second[0].size, False),  # the uncompressed size of a gzip layer
        ("<missing>", "ENV A=1", 0, True),
        ("<missing>", "ADD rootfs.tar /", first[0].size, False),
    ]
    assert rows[2].to_json()["Comment"] == "base" and rows[0].layer == gzipped


# ------------------------------------------------------------------------------------------ save and load


@pytest.mark.parametrize("kind", ["docker", "oci"])
def test_save_then_load_into_a_fresh_store_keeps_the_image(store: Store, tmp_path: Path, kind: str) -> None:
    layout = store.layout
    base = image(store, layer(store, "a", b"1" * 500))
    img = image(store, layer(store, "a", b"1" * 500), layer(store, "b", b"2"))
    layout.tag("docker.io/library/base:latest", base.descriptor)
    layout.tag(APP, img.descriptor)
    layout.tag("docker.io/library/app:2", img.descriptor)
    archive = tmp_path / "images.tar"
    with open(archive, "wb") as out:
        storeops.save_images(store, ["app", base.id.encoded[:12]], out, format=kind, platform=AMD64)
    members = tarfile.open(archive).getnames()
    assert ("manifest.json" in members) == (kind == "docker") and "index.json" in members

    fresh = open_store(tmp_path / "fresh")
    loaded = storeops.load_images(fresh, str(archive), io.BytesIO(), AMD64)
    by_id = {item.id: item for item in loaded}
    assert set(by_id) == {img.id, base.id}
    assert sorted(str(r) for r in by_id[img.id].names) == ["docker.io/library/app:2", APP]  # every tag of app
    assert by_id[base.id].names == ()  # given by ID: no name, so it is kept untagged
    assert by_id[img.id].digest == img.digest  # layers as stored: the very manifest comes back
    assert sorted(str(d.ref_name) for d in fresh.layout.index().manifests) == sorted(
        [APP, "docker.io/library/app:2", "None"]
    )
    for entry in fresh.layout.index().manifests:
        validate_image(fresh.layout.image(entry, AMD64))

    # Loading again, gzip-compressed and from standard input, names the same images and moves nothing.
    again = storeops.load_images(fresh, "-", io.BytesIO(gzip.compress(archive.read_bytes())), AMD64)
    assert {item.id for item in again} == {img.id, base.id} and all(not item.replaced for item in again)


def test_save_with_compression_and_load_keep_the_image_id(store: Store, tmp_path: Path) -> None:
    img = image(store, layer(store, "a", b"1" * 5000))
    store.layout.tag(APP, img.descriptor)
    archive = tmp_path / "gz.tar"
    with open(archive, "wb") as out:
        storeops.save_images(store, ["app"], out, format="docker", platform=AMD64, compression=Compression.GZIP)
    fresh = open_store(tmp_path / "fresh")
    [loaded] = storeops.load_images(fresh, str(archive), io.BytesIO(), AMD64)
    assert loaded.id == img.id and loaded.digest != img.digest  # gzip layers: another manifest, the same config
    stored = resolve_image(fresh.layout, "app", AMD64).image
    assert mt.layer_compression(stored.layers[0].media_type) == "gzip"
    with pytest.raises(UsageError, match="zstd"):
        storeops.save_images(
            store, ["app"], io.BytesIO(), format="docker", platform=AMD64, compression=Compression.ZSTD
        )


def test_load_reports_a_name_that_held_another_image(store: Store, tmp_path: Path) -> None:
    img = image(store, layer(store, "a", b"1"))
    store.layout.tag(APP, img.descriptor)
    archive = tmp_path / "a.tar"
    with open(archive, "wb") as out:
        storeops.save_images(store, ["app"], out, format="oci", platform=AMD64)
    other = image(store, layer(store, "a", b"2"))
    store.layout.tag(APP, other.descriptor)
    [loaded] = storeops.load_images(store, str(archive), io.BytesIO(), AMD64)
    assert [(str(ref), old) for ref, old in loaded.replaced] == [(APP, other.id)]
    assert names(store.layout) == [(APP, img.digest), (None, other.digest)]


def test_archive_output_refuses_a_terminal_and_load_a_missing_file(store: Store, tmp_path: Path) -> None:
    class Terminal(io.BytesIO):
        def isatty(self) -> bool:
            return True

    with pytest.raises(UsageError, match="terminal"):
        with storeops.archive_output(None, Terminal()):
            pass
    with pytest.raises(UsageError, match="terminal"):
        storeops.load_images(store, "-", Terminal(), AMD64)
    with pytest.raises(BuildError, match="no such file"):
        storeops.load_images(store, str(tmp_path / "missing.tar"), io.BytesIO(), AMD64)
