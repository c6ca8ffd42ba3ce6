"""The OCI image layout: its files, tags as index entries, atomic and concurrent index updates, image checks."""

from __future__ import annotations

import io
import json
import multiprocessing
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REPO

from oci import mediatypes as mt
from oci.compression import Compression
from oci.config import ImageConfig, parse_config
from oci.descriptor import Descriptor, Platform
from oci.digest import Digest
from oci.errors import DigestMismatch, InvalidDocument, LayoutError
from oci.image import load_image, validate_image
from oci.layer import LayerItem, write_layer
from oci.layout import ImageLayout
from oci.manifest import Index, Manifest, parse_index
from oci.tarformat import EntryType, TarEntry

AMD64 = Platform("linux", "amd64")


def _store_image(
    layout: ImageLayout,
    content: bytes = b"hello",
    compression: Compression = Compression.GZIP,
    diff_id: Digest | None = None,
) -> Descriptor:
    entry = TarEntry("file", EntryType.FILE, size=len(content))
    with layout.store.writer() as blob:
        info = write_layer([LayerItem(entry, lambda: io.BytesIO(content))], blob, compression)
        layer = Descriptor(compression.layer_media_type, blob.commit(), blob.size)
    config = ImageConfig("amd64", "linux", diff_ids=(diff_id or info.diff_id,)).encode()
    config_desc = Descriptor(mt.OCI_CONFIG, layout.store.put_bytes(config), len(config))
    manifest = Manifest(config_desc, (layer,)).encode()
    return Descriptor(mt.OCI_MANIFEST, layout.store.put_bytes(manifest), len(manifest))


def test_create_writes_a_valid_empty_layout(tmp_path: Path) -> None:
    layout = ImageLayout.open(tmp_path / "l", create=True)
    assert json.loads((layout.root / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((layout.root / "index.json").read_text())
    assert index == {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": []}
    assert (layout.root / "blobs" / "sha256").is_dir()


def test_opening_a_directory_that_is_not_a_layout_fails(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match="not an OCI image layout"):
        ImageLayout.open(tmp_path)
    (tmp_path / "oci-layout").write_text('{"imageLayoutVersion": "2.0.0"}')
    with pytest.raises(LayoutError, match="version"):
        ImageLayout.open(tmp_path)


def test_tags_are_index_entries_with_ref_names(tmp_path: Path) -> None:
    layout = ImageLayout.open(tmp_path, create=True)
    first, second = _store_image(layout, b"one"), _store_image(layout, b"two")
    layout.tag("docker.io/library/a:latest", first)
    layout.tag("docker.io/library/b:1", first)
    assert layout.resolve("docker.io/library/a:latest") == first.with_ref_name("docker.io/library/a:latest")
    layout.tag("docker.io/library/a:latest", second)  # retagging moves the name
    assert layout.resolve("docker.io/library/a:latest").digest == second.digest  # type: ignore[union-attr]
    assert [d.ref_name for d in layout.tags()] == ["docker.io/library/b:1", "docker.io/library/a:latest"]
    assert layout.untag("docker.io/library/b:1")
    assert not layout.untag("docker.io/library/b:1")
    raw = json.loads((tmp_path / "index.json").read_text())
    assert raw["manifests"][0]["annotations"] == {"org.opencontainers.image.ref.name": "docker.io/library/a:latest"}


def _tag_many(root: str, worker: int, count: int) -> None:
    layout = ImageLayout.open(root)
    desc = layout.resolve("base")
    assert desc is not None
    for i in range(count):
        layout.tag(f"w{worker}-{i}", desc)


def test_concurrent_writers_lose_no_update(tmp_path: Path) -> None:
    layout = ImageLayout.open(tmp_path, create=True)
    layout.tag("base", _store_image(layout))
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_tag_many, args=(str(tmp_path), w, 25)) for w in range(4)]
    for proc in workers:
        proc.start()
    for proc in workers:
        proc.join(60)
        assert proc.exitcode == 0
    names = {d.ref_name for d in layout.tags()}
    assert names == {"base"} | {f"w{w}-{i}" for w in range(4) for i in range(25)}


_KILLED_INDEX_WRITER = textwrap.dedent(
    """
    import os, sys, time
    from oci.layout import ImageLayout
    layout = ImageLayout.open(sys.argv[1])
    real_replace = os.replace
    def stalled_replace(src, dst):
        if str(dst).endswith("index.json"):
            print("ready", flush=True)   # the new index is written and fsynced, not yet in place
            time.sleep(60)
        real_replace(src, dst)
    os.replace = stalled_replace
    layout.tag("victim-of-the-kill", layout.resolve("base"))
    """
)


def test_a_writer_killed_mid_update_leaves_the_old_index_and_the_lock_free(tmp_path: Path) -> None:
    layout = ImageLayout.open(tmp_path, create=True)
    layout.tag("base", _store_image(layout))
    before = (tmp_path / "index.json").read_bytes()
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_INDEX_WRITER, str(tmp_path)], stdout=subprocess.PIPE, cwd=REPO, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (tmp_path / "index.json").read_bytes() == before
    assert layout.sweep() == 1
    layout.tag("after", layout.resolve("base"))  # type: ignore[arg-type]  # the lock died with its holder
    assert {d.ref_name for d in layout.tags()} == {"base", "after"}


def test_index_json_is_read_strictly(tmp_path: Path) -> None:
    layout = ImageLayout.open(tmp_path, create=True)
    (tmp_path / "index.json").write_text('{"schemaVersion": 2, "manifests": [], "manifests": []}')
    with pytest.raises(LayoutError, match="repeated key"):
        layout.index()


# ------------------------------------------------------------------------------------------- image checks


def test_a_stored_image_validates_and_loads(tmp_path: Path) -> None:
    layout = ImageLayout.open(tmp_path, create=True)
    desc = _store_image(layout, compression=Compression.ZSTD)
    image = layout.image(desc, AMD64)
    validate_image(image)
    assert image.config.diff_ids and image.id == image.manifest.config.digest
    assert image.size() == desc.size + image.manifest.config.size + image.layers[0].size


def test_validation_catches_a_config_that_lies_about_diff_ids(tmp_path: Path) -> None:
    layout = ImageLayout.open(tmp_path, create=True)
    desc = _store_image(layout, diff_id=Digest.of_bytes(b"not the layer"))
    with pytest.raises(DigestMismatch, match="diff_id"):
        validate_image(layout.image(desc, AMD64))


def test_validation_catches_a_corrupted_layer(tmp_path: Path) -> None:
    layout = ImageLayout.open(tmp_path, create=True)
    desc = _store_image(layout)
    layer = layout.image(desc, AMD64).layers[0]
    path = layout.store.path(layer.digest)
    data = bytearray(path.read_bytes())
    data[-9] ^= 0xFF  # inside the gzip trailer: same size, wrong bytes
    path.write_bytes(bytes(data))
    with pytest.raises(DigestMismatch):
        validate_image(layout.image(desc, AMD64))


def test_validation_catches_a_media_type_that_lies_about_compression(tmp_path: Path) -> None:
    layout = ImageLayout.open(tmp_path, create=True)
    desc = _store_image(layout, compression=Compression.ZSTD)
    image = layout.image(desc, AMD64)
    lying = Manifest(
        image.manifest.config, (Descriptor(mt.OCI_LAYER_GZIP, image.layers[0].digest, image.layers[0].size),)
    )
    raw = lying.encode()
    with pytest.raises(InvalidDocument, match="zstd"):
        validate_image(layout.image(Descriptor(mt.OCI_MANIFEST, layout.store.put_bytes(raw), len(raw)), AMD64))


def test_a_multi_platform_index_selects_the_requested_platform(tmp_path: Path) -> None:
    layout = ImageLayout.open(tmp_path, create=True)
    amd, arm = _store_image(layout, b"amd"), _store_image(layout, b"arm")
    index = Index(
        (
            Descriptor(amd.media_type, amd.digest, amd.size, platform=Platform("linux", "amd64")),
            Descriptor(arm.media_type, arm.digest, arm.size, platform=Platform("linux", "arm64", "v8")),
        )
    ).encode()
    desc = Descriptor(mt.OCI_INDEX, layout.store.put_bytes(index), len(index))
    assert load_image(layout.store, desc, Platform.parse("linux/arm64")).digest == arm.digest
    assert load_image(layout.store, desc, AMD64).digest == amd.digest
    with pytest.raises(InvalidDocument, match="linux/amd64, linux/arm64"):
        load_image(layout.store, desc, Platform.parse("linux/s390x"))
    assert parse_index(index) == parse_index(layout.store.read(desc.digest))
    assert parse_config(layout.image(amd, AMD64).raw_config).architecture == "amd64"
