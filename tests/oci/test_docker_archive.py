"""Docker archives: what we write loads in Docker's and skopeo's readers; what they write (and hostile archives) we
read, or refuse with an OCIError, verifying every blob and diff_id on the way in."""

from __future__ import annotations

import functools
import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest
from conftest import require_tool
from tartools import Member, archive, directory, file, symlink

from oci import mediatypes as mt
from oci.canonical import MAX_DOCUMENT_SIZE
from oci.compression import Compression, compressor, sniff
from oci.config import ImageConfig
from oci.descriptor import Descriptor, Platform
from oci.digest import Digest
from oci.docker_archive import LoadedImage, read_docker_archive, write_docker_archive
from oci.errors import (
    DigestMismatch,
    InvalidArchive,
    InvalidDocument,
    InvalidReference,
    OCIError,
    SizeMismatch,
    UnsafeEntry,
)
from oci.image import Image, validate_image
from oci.layer import LayerItem, write_layer
from oci.layout import ImageLayout
from oci.manifest import Index, Manifest, parse_manifest
from oci.reference import Reference
from oci.store import ContentStore
from oci.tarformat import EntryType, TarEntry

AMD64 = Platform("linux", "amd64")
GZIP, ZSTD, NONE = Compression.GZIP, Compression.ZSTD, Compression.NONE


@pytest.fixture
def layout(tmp_path: Path) -> ImageLayout:
    return ImageLayout.open(tmp_path / "layout", create=True)


@pytest.fixture
def store(tmp_path: Path) -> ContentStore:
    return ContentStore(tmp_path / "store" / "blobs", tmp_path / "store" / "ingest")


def _layer(layout: ImageLayout, content: bytes, compression: Compression) -> tuple[Descriptor, Digest]:
    entry = TarEntry("file", EntryType.FILE, size=len(content))
    with layout.store.writer() as blob:
        info = write_layer([LayerItem(entry, lambda: io.BytesIO(content))], blob, compression)
        return Descriptor(compression.layer_media_type, blob.commit(), blob.size), info.diff_id


def _image(
    layout: ImageLayout,
    *layers: tuple[bytes, Compression],
    diff_ids: tuple[Digest, ...] | None = None,
    tag: str | None = None,
) -> Image:
    pairs = [_layer(layout, content, kind) for content, kind in layers or [(b"hello", GZIP)]]
    config = ImageConfig("amd64", "linux", diff_ids=diff_ids or tuple(d for _, d in pairs)).encode()
    config_desc = Descriptor(mt.OCI_CONFIG, layout.store.put_bytes(config), len(config))
    manifest = Manifest(config_desc, tuple(desc for desc, _ in pairs)).encode()
    desc = Descriptor(mt.OCI_MANIFEST, layout.store.put_bytes(manifest), len(manifest))
    if tag:
        layout.tag(tag, desc)
    return Image(layout.store, desc)


def _refs(*names: str) -> list[Reference]:
    return [Reference.parse(name) for name in names]


def _write(path: Path, images: list[tuple[Image, list[Reference]]], **kw: object) -> Path:
    with open(path, "wb") as out:
        write_docker_archive(images, out, **kw)  # type: ignore[arg-type]
    return path


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def _loaded(store: ContentStore, loaded: LoadedImage) -> Image:
    image = Image(store, loaded.descriptor)
    validate_image(image)
    return image


# ---------------------------------------------------------------------------------------------------- writing


def test_round_trip_keeps_the_config_digest_and_diff_ids(
    tmp_path: Path, layout: ImageLayout, store: ContentStore
) -> None:
    image = _image(layout, (b"base", GZIP), (b"top", NONE))
    path = _write(tmp_path / "a.tar", [(image, _refs("busybox", "localhost:5000/app:1"))])
    [loaded] = read_docker_archive(path, store)
    back = _loaded(store, loaded)
    assert back.id == image.id
    assert back.config.diff_ids == image.config.diff_ids
    assert loaded.tags == tuple(_refs("docker.io/library/busybox:latest", "localhost:5000/app:1"))
    # Layers are stored as they were, their media type from what they are.
    assert [(layer.media_type, layer.digest) for layer in back.layers] == [
        (mt.OCI_LAYER_GZIP, image.layers[0].digest),
        (mt.OCI_LAYER, image.layers[1].digest),
    ]


def test_the_archive_is_byte_for_byte_deterministic(tmp_path: Path) -> None:
    # Two separate stores, built at different times, written twice each: one set of bytes.
    outputs = []
    for name in ("one", "two"):
        layout = ImageLayout.open(tmp_path / name, create=True)
        image = _image(layout, (b"base", GZIP), (b"zstd layer", ZSTD))
        for copy in ("x", "y"):
            outputs.append(_write(tmp_path / f"{name}-{copy}.tar", [(image, _refs("app:1"))]).read_bytes())
    assert len(set(outputs)) == 1


def test_members_are_sorted_and_normalised(tmp_path: Path, layout: ImageLayout) -> None:
    path = _write(tmp_path / "a.tar", [(_image(layout), _refs("app:1"))])
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names)
    assert names[:2] == ["blobs", "blobs/sha256"]
    assert names[-4:] == ["index.json", "manifest.json", "oci-layout", "repositories"]
    for m in members:
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")
        assert m.mode == (0o755 if m.isdir() else 0o644)
        assert m.isdir() or m.isfile()


def test_manifest_json_uses_docker_familiar_names_and_oci_blob_paths(tmp_path: Path, layout: ImageLayout) -> None:
    image = _image(layout, (b"a", GZIP), (b"b", GZIP))
    path = _write(tmp_path / "a.tar", [(image, _refs("busybox", "localhost:5000/app:1", "user/app:2"))])
    files = _members(path)
    config_path = f"blobs/sha256/{image.id.encoded}"
    layer_paths = [f"blobs/sha256/{layer.digest.encoded}" for layer in image.layers]
    assert json.loads(files["manifest.json"]) == [
        {
            "Config": config_path,
            "RepoTags": ["busybox:latest", "localhost:5000/app:1", "user/app:2"],
            "Layers": layer_paths,
        }
    ]
    top = image.layers[-1].digest.encoded
    assert json.loads(files["repositories"]) == {
        "busybox": {"latest": top},
        "localhost:5000/app": {"1": top},
        "user/app": {"2": top},
    }
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    assert files[config_path] == image.raw_config
    assert all(Digest.of_bytes(files[p]).encoded == p.rsplit("/", 1)[1] for p in files if p.startswith("blobs/"))


def test_the_archive_is_an_oci_layout_with_containerd_names(tmp_path: Path, layout: ImageLayout) -> None:
    image = _image(layout)
    path = _write(tmp_path / "a.tar", [(image, _refs("busybox", "localhost:5000/app:1"))])
    with tarfile.open(path) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    extracted = ImageLayout.open(tmp_path / "x")
    entries = extracted.index().manifests
    assert [dict(e.annotations) for e in entries] == [
        {"io.containerd.image.name": "docker.io/library/busybox:latest", "org.opencontainers.image.ref.name": "latest"},
        {"io.containerd.image.name": "localhost:5000/app:1", "org.opencontainers.image.ref.name": "1"},
    ]
    assert {e.digest for e in entries} == {image.digest}  # unchanged layers: the manifest is kept as it is
    assert entries[0].platform == AMD64
    validate_image(extracted.image(entries[0], AMD64))


def test_an_untagged_image_is_in_both_indexes(tmp_path: Path, layout: ImageLayout, store: ContentStore) -> None:
    image = _image(layout)
    files = _members(_write(tmp_path / "a.tar", [(image, [])]))
    assert json.loads(files["manifest.json"])[0]["RepoTags"] == []
    assert [m["digest"] for m in json.loads(files["index.json"])["manifests"]] == [str(image.digest)]
    assert "repositories" not in files
    [loaded] = read_docker_archive(tmp_path / "a.tar", store)
    assert loaded.tags == ()


def test_the_same_image_twice_is_written_once_with_all_its_tags(tmp_path: Path, layout: ImageLayout) -> None:
    image = _image(layout)
    other = _image(layout, (b"other", GZIP))
    path = _write(tmp_path / "a.tar", [(image, _refs("a:1")), (other, _refs("b:1")), (image, _refs("a:2", "a:1"))])
    items = json.loads(_members(path)["manifest.json"])
    assert [item["RepoTags"] for item in items] == [["a:1", "a:2"], ["b:1"]]


@pytest.mark.parametrize(
    "refs",
    [["app:1", "docker.io/library/app:1"], ["app@sha256:" + "a" * 64]],
    ids=["one-tag-two-images", "digest-only"],
)
def test_ambiguous_or_untagged_references_are_refused(tmp_path: Path, layout: ImageLayout, refs: list[str]) -> None:
    first, second = _image(layout, (b"1", GZIP)), _image(layout, (b"2", GZIP))
    images = [(first, _refs(refs[0])), (second, _refs(*refs[1:]))]
    out = io.BytesIO()
    with pytest.raises(InvalidReference):
        write_docker_archive(images, out)
    assert out.getvalue() == b""


def test_zstd_layers_come_out_as_plain_tar(tmp_path: Path, layout: ImageLayout, store: ContentStore) -> None:
    image = _image(layout, (b"gzip", GZIP), (b"zstd", ZSTD))
    path = _write(tmp_path / "a.tar", [(image, _refs("app:1"))])
    files = _members(path)
    [item] = json.loads(files["manifest.json"])
    diff_id = image.config.diff_ids[1]
    assert item["Layers"][1] == f"blobs/sha256/{diff_id.encoded}"
    assert sniff(files[item["Layers"][1]][:4]) is NONE
    assert f"blobs/sha256/{image.layers[1].digest.encoded}" not in files  # the zstd blob is not shipped
    # The OCI side describes what is really there, in a new manifest.
    [entry] = json.loads(files["index.json"])["manifests"]
    manifest = parse_manifest(files[f"blobs/sha256/{entry['digest'].split(':')[1]}"])
    assert [layer.media_type for layer in manifest.layers] == [mt.OCI_LAYER_GZIP, mt.OCI_LAYER]
    assert manifest.layers[1].digest == diff_id and manifest.config == image.manifest.config
    [loaded] = read_docker_archive(path, store)
    back = _loaded(store, loaded)
    assert back.id == image.id and back.config.diff_ids == image.config.diff_ids


def test_zstd_layers_can_be_recompressed_to_gzip(tmp_path: Path, layout: ImageLayout, store: ContentStore) -> None:
    image = _image(layout, (b"zstd", ZSTD))
    path = _write(tmp_path / "a.tar", [(image, _refs("app:1"))], compress=functools.partial(compressor, GZIP))
    files = _members(path)
    [item] = json.loads(files["manifest.json"])
    assert sniff(files[item["Layers"][0]][:4]) is GZIP
    [loaded] = read_docker_archive(path, store)
    back = _loaded(store, loaded)
    assert back.layers[0].media_type == mt.OCI_LAYER_GZIP
    assert back.config.diff_ids == image.config.diff_ids


def test_a_zstd_layer_with_the_wrong_diff_id_is_refused_before_writing(layout: ImageLayout) -> None:
    image = _image(layout, (b"zstd", ZSTD), diff_ids=(Digest.of_bytes(b"not this layer"),))
    out = io.BytesIO()
    with pytest.raises(DigestMismatch, match="diff_id"):
        write_docker_archive([(image, _refs("app:1"))], out)
    assert out.getvalue() == b""


def test_a_corrupt_stored_blob_is_refused_while_writing(layout: ImageLayout) -> None:
    image = _image(layout, (b"some content", GZIP))
    blob = layout.store.path(image.layers[0].digest)
    blob.write_bytes(bytes(len(blob.read_bytes())))  # same size, other bytes
    with pytest.raises(DigestMismatch):
        write_docker_archive([(image, _refs("app:1"))], io.BytesIO())


# ---------------------------------------------------------------------------------------------------- skopeo


def _skopeo(*args: str) -> subprocess.CompletedProcess[str]:
    skopeo = require_tool("skopeo")
    return subprocess.run([skopeo, "--insecure-policy", *args], capture_output=True, text=True, check=True)


def test_skopeo_inspect_accepts_the_archive(tmp_path: Path, layout: ImageLayout) -> None:
    image = _image(layout, (b"base", GZIP), (b"zstd", ZSTD), (b"plain", NONE))
    path = _write(tmp_path / "a.tar", [(image, _refs("app:1"))])
    info = json.loads(_skopeo("inspect", f"docker-archive:{path}").stdout)
    assert (info["Os"], info["Architecture"]) == ("linux", "amd64")
    # docker-archive: reports layers by their diff_ids (it hands out uncompressed layers).
    assert info["Layers"] == [str(d) for d in image.config.diff_ids]


@pytest.mark.parametrize("kind", [GZIP, ZSTD, NONE], ids=lambda k: k.value)
def test_skopeo_copies_the_archive_to_a_valid_oci_layout(
    tmp_path: Path, layout: ImageLayout, kind: Compression
) -> None:
    image = _image(layout, (b"base", GZIP), (b"top", kind))
    path = _write(tmp_path / "a.tar", [(image, _refs("app:1"))])
    _skopeo("copy", "-q", f"docker-archive:{path}", f"oci:{tmp_path / 'out'}:copied")
    copied = ImageLayout.open(tmp_path / "out")
    desc = copied.resolve("copied")
    assert desc is not None
    result = copied.image(desc, AMD64)
    validate_image(result)
    # skopeo re-encodes the config as it converts to OCI (key order), so compare what it says.
    assert result.config == image.config


def test_archives_written_by_skopeo_are_read(tmp_path: Path, layout: ImageLayout, store: ContentStore) -> None:
    image = _image(layout, (b"base", GZIP), (b"top", NONE), tag="src")
    out = tmp_path / "skopeo.tar"
    _skopeo("copy", "-q", f"oci:{layout.root}:src", f"docker-archive:{out}:localhost:5000/app:7")
    with tarfile.open(out) as tar:
        assert any(m.issym() for m in tar.getmembers())  # the legacy <id>/layer.tar links are exercised
    [loaded] = read_docker_archive(out, store)
    assert loaded.tags == (Reference.parse("localhost:5000/app:7"),)
    back = _loaded(store, loaded)
    assert back.id == image.id and back.config.diff_ids == image.config.diff_ids


# ---------------------------------------------------------------------------------------------------- reading


LAYER = archive(file("hello", b"hi\n"))


def _config(*layers: bytes, diff_ids: tuple[Digest, ...] | None = None) -> bytes:
    return ImageConfig("amd64", "linux", diff_ids=diff_ids or tuple(Digest.of_bytes(x) for x in layers)).encode()


def _legacy(
    tmp_path: Path,
    *,
    layer: bytes = LAYER,
    config: bytes | None = None,
    items: object = None,
    extra: tuple[Member, ...] = (),
    layer_member: Member | None = None,
) -> Path:
    """Docker 1.10-24's layout: <image id>.json, <v1 id>/layer.tar, manifest.json, repositories."""
    config = config if config is not None else _config(layer)
    config_name = f"{Digest.of_bytes(config).encoded}.json"
    if items is None:
        items = [{"Config": config_name, "RepoTags": ["app:1"], "Layers": ["abc/layer.tar"]}]
    members = [
        file("manifest.json", items if isinstance(items, bytes) else json.dumps(items).encode()),
        file(config_name, config),
        directory("abc/"),
        layer_member or file("abc/layer.tar", layer),
        file("abc/VERSION", b"1.0"),
        file("repositories", b'{"app":{"1":"abc"}}'),
        *extra,
    ]
    path = tmp_path / "legacy.tar"
    path.write_bytes(archive(*members))
    return path


def test_a_legacy_archive_is_read(tmp_path: Path, store: ContentStore) -> None:
    [loaded] = read_docker_archive(_legacy(tmp_path), store)
    assert loaded.tags == (Reference.parse("app:1"),)
    image = _loaded(store, loaded)
    assert image.config.diff_ids == (Digest.of_bytes(LAYER),)
    assert image.layers[0].media_type == mt.OCI_LAYER and image.id == Digest.of_bytes(_config(LAYER))


def test_a_legacy_symlinked_layer_is_followed(tmp_path: Path, store: ContentStore) -> None:
    # Docker before 25 saves a layer two images share once and links the second <id>/layer.tar to it.
    config = _config(LAYER, LAYER)
    items = [{"Config": f"{Digest.of_bytes(config).encoded}.json", "RepoTags": None, "Layers": ["abc/layer.tar"] * 2}]
    items[0]["Layers"][1] = "def/layer.tar"
    path = _legacy(tmp_path, config=config, items=items, extra=(symlink("def/layer.tar", "../abc/layer.tar"),))
    [loaded] = read_docker_archive(path, store)
    assert loaded.tags == ()
    assert _loaded(store, loaded).config.diff_ids == (Digest.of_bytes(LAYER),) * 2


def test_an_oci_only_archive_is_read_with_its_manifest_kept(
    tmp_path: Path, layout: ImageLayout, store: ContentStore
) -> None:
    image = _image(layout, (b"one", ZSTD), (b"two", GZIP), tag="docker.io/library/app:3")
    layout.tag("latest", image.descriptor)  # a bare tag names no repository
    layout.tag("Not A Docker:Name", image.descriptor)  # ref.name is free-form: passed over, not refused
    path = tmp_path / "oci.tar"
    with tarfile.open(path, "w") as tar:
        tar.add(layout.root, arcname=".")
    [loaded] = read_docker_archive(path, store)
    assert loaded.descriptor.digest == image.digest
    assert loaded.tags == (Reference.parse("app:3"),)
    assert _loaded(store, loaded).layers == image.layers


def test_a_multi_platform_index_needs_a_platform(tmp_path: Path, layout: ImageLayout, store: ContentStore) -> None:
    image = _image(layout)
    index = Index((Descriptor(mt.OCI_MANIFEST, image.digest, image.descriptor.size, platform=AMD64),)).encode()
    layout.tag("docker.io/library/multi:1", Descriptor(mt.OCI_INDEX, layout.store.put_bytes(index), len(index)))
    path = tmp_path / "oci.tar"
    with tarfile.open(path, "w") as tar:
        tar.add(layout.root, arcname=".")
    with pytest.raises(InvalidDocument, match="multi-platform index: choose a platform"):
        read_docker_archive(path, store)
    [loaded] = read_docker_archive(path, store, platform=AMD64)
    assert loaded.descriptor.digest == image.digest
    assert loaded.tags == (Reference.parse("multi:1"),)


# ---------------------------------------------------------------------------------------------------- hostile


@pytest.mark.parametrize("name", ["../evil", "/etc/passwd", "abc/../../evil"])
def test_member_names_that_leave_the_archive_are_refused(tmp_path: Path, store: ContentStore, name: str) -> None:
    with pytest.raises(UnsafeEntry):
        read_docker_archive(_legacy(tmp_path, extra=(file(name, b"x"),)), store)


@pytest.mark.parametrize("target", ["../../outside", "/etc/passwd"], ids=["relative", "absolute"])
def test_links_that_leave_the_archive_are_refused(tmp_path: Path, store: ContentStore, target: str) -> None:
    path = _legacy(tmp_path, layer_member=symlink("abc/layer.tar", target))
    with pytest.raises(UnsafeEntry):
        read_docker_archive(path, store)


def test_a_link_loop_is_refused(tmp_path: Path, store: ContentStore) -> None:
    path = _legacy(tmp_path, layer_member=symlink("abc/layer.tar", "other"), extra=(symlink("abc/other", "layer.tar"),))
    with pytest.raises(InvalidArchive, match="too many links"):
        read_docker_archive(path, store)


@pytest.mark.parametrize("field", ["Config", "Layers"])
def test_manifest_entries_pointing_outside_or_at_nothing_are_refused(
    tmp_path: Path, store: ContentStore, field: str
) -> None:
    config_name = f"{Digest.of_bytes(_config(LAYER)).encoded}.json"
    for bad, error in (("../x", UnsafeEntry), ("missing", InvalidArchive)):
        item = {"Config": config_name, "RepoTags": [], "Layers": ["abc/layer.tar"]}
        item[field] = bad if field == "Config" else [bad]
        with pytest.raises(error):
            read_docker_archive(_legacy(tmp_path, items=[item]), store)
    assert list(store) == []  # checked before anything was stored


def test_a_diff_id_mismatch_is_refused_and_the_layer_not_stored(tmp_path: Path, store: ContentStore) -> None:
    config = _config(diff_ids=(Digest.of_bytes(b"some other layer"),))
    with pytest.raises(DigestMismatch, match="diff_id"):
        read_docker_archive(_legacy(tmp_path, config=config), store)
    assert list(store) == []  # neither the layer nor its config
    assert not store.ingest_dir.exists() or list(store.ingest_dir.iterdir()) == []


def test_a_blob_that_does_not_match_its_name_is_refused(tmp_path: Path, store: ContentStore) -> None:
    name = f"blobs/sha256/{Digest.of_bytes(b'what the name says').encoded}"
    items = [{"Config": f"{Digest.of_bytes(_config(LAYER)).encoded}.json", "RepoTags": [], "Layers": [name]}]
    with pytest.raises(DigestMismatch):
        read_docker_archive(_legacy(tmp_path, items=items, extra=(file(name, LAYER),)), store)
    assert Digest.of_bytes(LAYER) not in list(store)


def test_a_config_that_does_not_match_its_image_id_is_refused(tmp_path: Path, store: ContentStore) -> None:
    name = f"{'0' * 64}.json"
    items = [{"Config": name, "RepoTags": [], "Layers": ["abc/layer.tar"]}]
    with pytest.raises(DigestMismatch):
        read_docker_archive(_legacy(tmp_path, items=items, extra=(file(name, _config(LAYER)),)), store)


def test_a_member_larger_than_its_descriptor_is_refused(
    tmp_path: Path, layout: ImageLayout, store: ContentStore
) -> None:
    image = _image(layout, (b"content", GZIP), tag="docker.io/library/app:1")
    blob = layout.store.path(image.layers[0].digest)
    blob.write_bytes(blob.read_bytes() + b"\0" * 10)  # gzip ignores trailing NULs: only the size tells
    path = tmp_path / "oci.tar"
    with tarfile.open(path, "w") as tar:
        tar.add(layout.root, arcname=".")
    with pytest.raises(SizeMismatch):
        read_docker_archive(path, store)
    assert image.layers[0].digest not in list(store)


@pytest.mark.parametrize("member", ["manifest.json", "config"])
def test_oversized_documents_are_refused(tmp_path: Path, store: ContentStore, member: str) -> None:
    huge = b"[" + b" " * MAX_DOCUMENT_SIZE + b"]"
    if member == "manifest.json":
        path = _legacy(tmp_path, items=huge)
    else:
        items = [{"Config": "big.json", "RepoTags": [], "Layers": ["abc/layer.tar"]}]
        path = _legacy(tmp_path, items=items, extra=(file("big.json", huge),))
    with pytest.raises(InvalidDocument, match="larger than"):
        read_docker_archive(path, store)


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"{}",
        b"[1, 2]",
        b'[{"Config": 1, "Layers": []}]',
        b'[{"Config": "c.json", "Layers": "abc/layer.tar"}]',
        b'[{"Config": "c.json", "Layers": [], "Layers": []}]',
        b'[{"Config": "c.json", "Layers": [NaN]}]',
    ],
    ids=["not-json", "object", "not-objects", "config-type", "layers-type", "repeated-key", "nan"],
)
def test_malformed_manifest_json_is_refused(tmp_path: Path, store: ContentStore, raw: bytes) -> None:
    with pytest.raises(InvalidDocument):
        read_docker_archive(_legacy(tmp_path, items=raw), store)


def test_a_layer_count_that_disagrees_with_the_config_is_refused(tmp_path: Path, store: ContentStore) -> None:
    items = [{"Config": f"{Digest.of_bytes(_config(LAYER)).encoded}.json", "Layers": ["abc/layer.tar"] * 2}]
    with pytest.raises(InvalidDocument, match="diff_ids"):
        read_docker_archive(_legacy(tmp_path, items=items), store)


@pytest.mark.parametrize("tag", ["App:1", "app@sha256:" + "a" * 64, "app"])
def test_repo_tags_that_are_not_name_tag_are_refused(tmp_path: Path, store: ContentStore, tag: str) -> None:
    items = [
        {"Config": f"{Digest.of_bytes(_config(LAYER)).encoded}.json", "RepoTags": [tag], "Layers": ["abc/layer.tar"]}
    ]
    with pytest.raises(InvalidReference):
        read_docker_archive(_legacy(tmp_path, items=items), store)


def test_a_member_that_appears_twice_is_refused(tmp_path: Path, store: ContentStore) -> None:
    with pytest.raises(InvalidArchive, match="twice"):
        read_docker_archive(_legacy(tmp_path, extra=(file("abc/layer.tar", b"a second layer"),)), store)


@pytest.mark.parametrize(
    "content",
    [archive(file("hello", b"x")), LAYER[:700], b"\x1f\x8b\x08\x00" + bytes(600), b"junk" * 300],
    ids=["no-manifest", "truncated", "gzip", "junk"],
)
def test_what_is_not_a_docker_archive_is_refused(tmp_path: Path, store: ContentStore, content: bytes) -> None:
    path = tmp_path / "a.tar"
    path.write_bytes(content)
    with pytest.raises(OCIError):
        read_docker_archive(path, store)
    assert list(store) == []
