"""The build outputs: --output parsing as buildx does it, and each exporter over an image built without the engine.

The test image has two uncompressed layers, as the store keeps them. The first is a small tree (files, a
directory, a symlink, a hardlink); the second changes a file, deletes one (a whiteout), and makes a directory
opaque. Every output is checked with pybuild's own invariant checker, and with skopeo and umoci where installed.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from conftest import require_tool

import builder.compressed
import builder.export
from builder.commit import store_image
from builder.errors import UsageError
from builder.export import OutputSpec, check_destination, export_image, parse_output
from builder.root import Store, open_store
from oci import mediatypes as mt
from oci.compression import Compression
from oci.config import ImageConfig
from oci.descriptor import Descriptor, Platform
from oci.docker_archive import read_docker_archive
from oci.errors import DigestMismatch, OCIError
from oci.image import Image, validate_image
from oci.layer import LayerItem, opaque, tree_items, whiteout, write_layer
from oci.layout import ImageLayout
from oci.reference import Reference
from oci.tarformat import EntryType, TarEntry

AMD64 = Platform("linux", "amd64")
CREATED = "2024-01-02T03:04:05Z"
APP = Reference.parse("app:1.0")
EPOCH = 1_600_000_000


# ---------------------------------------------------------------------------------------------------- the image


def _layer(store: Store, items: list[LayerItem]) -> tuple[Descriptor, object]:
    with store.layout.store.writer() as writer:
        info = write_layer(items, writer, Compression.NONE)  # type: ignore[arg-type]
        digest = writer.commit()
        return Descriptor(mt.OCI_LAYER, digest, writer.size), info.diff_id


def _file(path: str, content: bytes, mode: int = 0o644) -> LayerItem:
    return LayerItem(
        TarEntry(path, EntryType.FILE, mode=mode, size=len(content), mtime=1_700_000_000), lambda: io.BytesIO(content)
    )


def _dir(path: str) -> LayerItem:
    return LayerItem(TarEntry(path, EntryType.DIR, mode=0o755, mtime=1_700_000_000))


def _build(store: Store, tmp: Path) -> Image:
    tree = tmp / "layer1"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "hostname").write_text("one\n")
    (tree / "bin").mkdir()
    (tree / "bin" / "tool").write_text("#!/bin/sh\necho tool\n")
    os.chmod(tree / "bin" / "tool", 0o755)
    os.link(tree / "bin" / "tool", tree / "bin" / "tool-link")
    os.symlink("tool", tree / "bin" / "alias")
    (tree / "tmp").mkdir()
    (tree / "tmp" / "old.txt").write_text("deleted by layer 2\n")
    (tree / "doc").mkdir()
    (tree / "doc" / "a.txt").write_text("hidden by the opaque directory\n")
    (tree / "data.bin").write_bytes(b"z" * 200_000 + bytes(range(256)) * 100)
    first, diff1 = _layer(store, list(tree_items(tree, clamp_mtime=1_700_000_000)))
    second_items = [
        _dir("doc"),
        LayerItem(opaque("doc")),
        _file("doc/b.txt", b"new in layer 2\n"),
        _dir("etc"),
        _file("etc/hostname", b"two\n"),
        _dir("tmp"),
        LayerItem(whiteout("tmp/old.txt")),
    ]
    second, diff2 = _layer(store, second_items)
    config = ImageConfig("amd64", "linux", diff_ids=(diff1, diff2), created=CREATED)  # type: ignore[arg-type]
    return store_image(store.layout, config, [first, second])


@pytest.fixture
def image(store: Store, tmp_path: Path) -> Image:
    return _build(store, tmp_path)


def _export(
    spec: OutputSpec | str,
    image: Image,
    store: Store,
    *,
    compression: Compression = Compression.GZIP,
    names: tuple[Reference, ...] = (APP,),
    epoch: int | None = None,
    stdout: object = None,
    status: list[str] | None = None,
) -> None:
    export_image(
        parse_output(spec) if isinstance(spec, str) else spec,
        image,
        store=store,
        compression=compression,
        names=names,
        epoch=epoch,
        stdout=stdout,  # type: ignore[arg-type]
        on_status=status.append if status is not None else None,
    )


FINAL_FILES = {
    "bin/alias": "-> tool",
    "bin/tool": b"#!/bin/sh\necho tool\n",
    "bin/tool-link": b"#!/bin/sh\necho tool\n",
    "doc/b.txt": b"new in layer 2\n",
    "etc/hostname": b"two\n",
}


def _tree(root: Path) -> dict[str, object]:
    found: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            found[rel] = f"-> {os.readlink(path)}"
        elif path.is_file():
            found[rel] = path.read_bytes() if rel != "data.bin" else len(path.read_bytes())
        else:
            found[rel] = "dir"
    return found


EXPECTED_TREE = {
    "bin": "dir",
    "data.bin": 225_600,
    "doc": "dir",
    "etc": "dir",
    "tmp": "dir",
    **FINAL_FILES,
}


def _layout_from_tar(raw: bytes, where: Path) -> ImageLayout:
    where.mkdir()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        tar.extractall(where, filter="data")
    return ImageLayout.open(where)


def _only_image(layout: ImageLayout) -> tuple[Descriptor, Image]:
    [entry] = layout.index().manifests
    return entry, layout.image(entry, AMD64)


# ---------------------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("type=oci,dest=out.tar", OutputSpec("oci", "out.tar")),
        ("type=oci,dest=out,tar=false", OutputSpec("oci", "out", tar=False)),
        ("type=oci", OutputSpec("oci", "-")),  # buildx: a tar without dest goes to standard output
        ("type=oci,dest=-", OutputSpec("oci", "-")),
        ("type=docker,dest=img.tar", OutputSpec("docker", "img.tar")),
        ("type=docker,dest=-", OutputSpec("docker", "-")),
        ("type=local,dest=out", OutputSpec("local", "out")),
        ("type=tar,dest=rootfs.tar", OutputSpec("tar", "rootfs.tar")),
        ("type=tar", OutputSpec("tar", "-")),
        ("out/dir", OutputSpec("local", "out/dir")),
        ("-", OutputSpec("tar", "-")),
        ("type=registry", OutputSpec("image", push=True)),
        ("type=image,push=true", OutputSpec("image", push=True)),
        ("type=image", OutputSpec("image")),
        ("type=cacheonly", OutputSpec("cacheonly")),
        ("TYPE=oci,DEST=x.tar", OutputSpec("oci", "x.tar")),  # keys are lowercased, as buildx does
        ("type=oci,dest=x,compression=uncompressed", OutputSpec("oci", "x", compression=Compression.NONE)),
        (
            "type=oci,dest=x,compression=zstd,force-compression=true",
            OutputSpec("oci", "x", compression=Compression.ZSTD),
        ),
        ("type=oci,dest=x,oci-mediatypes=true", OutputSpec("oci", "x")),
        ("type=local,dest=x,platform-split=false,mode=copy", OutputSpec("local", "x")),
        (
            'type=oci,dest=x,"name=app:1.0,docker.io/other/b"',
            OutputSpec("oci", "x", names=(APP, Reference.parse("other/b"))),
        ),
    ],
)
def test_parse_output(text: str, expected: OutputSpec) -> None:
    assert parse_output(text) == expected


def test_parse_output_annotations() -> None:
    spec = parse_output("type=oci,dest=x,annotation.org.example.a=1,annotation-manifest.org.example.b=2")
    assert dict(spec.annotations) == {"org.example.a": "1", "org.example.b": "2"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty value"),
        ("type=ocj,dest=x", "unknown output type 'ocj' (did you mean oci?)"),
        ("type=oci,dset=x", "unknown attribute 'dset' (did you mean dest?)"),
        ("type=local,name=x,dest=y", "unknown attribute 'name'"),
        ("dest=x,tar=false", "type is required for output"),
        ("type=oci,dest", "invalid value 'dest'"),
        ("type=local", "dest is required for local exporter"),
        ("type=oci,tar=false", "dest is required for oci exporter"),
        ("type=local,dest=-", "dest cannot be stdout for local exporter"),
        ("type=oci,tar=false,dest=-", "dest cannot be stdout"),
        ("type=docker", "dest is required"),
        ("type=docker,dest=x,tar=false", "tar=false is not supported"),
        ("type=oci,dest=x,tar=maybe", "not a boolean"),
        ("type=oci,dest=x,compression=estargz", "unknown compression 'estargz'"),
        ("type=oci,dest=x,compression-level=9", "compression-level is not supported by pybuild"),
        ("type=oci,dest=x,rewrite-timestamp=true", "rewrite-timestamp is not supported"),
        ("type=oci,dest=x,oci-mediatypes=false", "oci-mediatypes=false is not supported"),
        ("type=oci,dest=x,annotation-index.a=b", "index annotations not supported for single platform export"),
        ("type=oci,dest=x,annotation[linux/amd64].a=b", "platform-qualified annotations are not supported"),
        ("type=oci,dest=x,name=UPPER", "name=UPPER"),
        ("type=local,dest=x,platform-split=true", "platform-split=true is not supported"),
        ("type=local,dest=x,mode=delete", "mode=delete is not supported"),
        ("type=registry,push-by-digest=true", "pushed by name"),
        ("type=image,dest=x", "unknown attribute 'dest'"),
        ('type=oci,"dest=x', "--output"),
    ],
)
def test_parse_output_refuses_with_one_clear_line(text: str, message: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_output(text)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert info.value.exit_code == 2


# ---------------------------------------------------------------------------------------------------- oci


@pytest.mark.parametrize("kind", [Compression.GZIP, Compression.ZSTD, Compression.NONE])
def test_oci_tar_is_a_valid_layout_with_layers_compressed_as_asked(
    image: Image, store: Store, tmp_path: Path, kind: Compression
) -> None:
    out = tmp_path / "image.tar"
    _export(f"type=oci,dest={out}", image, store, compression=kind)
    entry, exported = _only_image(_layout_from_tar(out.read_bytes(), tmp_path / "layout"))
    validate_image(exported)
    assert [layer.media_type for layer in exported.layers] == [kind.layer_media_type] * 2
    assert exported.id == image.id, "the config is the same blob, so the image ID is the same"
    assert exported.config.diff_ids == image.config.diff_ids
    assert (exported.digest == image.digest) is (kind is Compression.NONE)
    assert entry.annotations == {
        "io.containerd.image.name": "docker.io/library/app:1.0",
        "org.opencontainers.image.ref.name": "1.0",
        "org.opencontainers.image.created": CREATED,
    }
    assert entry.platform == AMD64
    assert entry.media_type == mt.OCI_MANIFEST


def test_oci_tar_members_are_sorted_owned_by_root_and_timeless(image: Image, store: Store, tmp_path: Path) -> None:
    out = tmp_path / "image.tar"
    _export(f"type=oci,dest={out}", image, store, epoch=EPOCH)
    with tarfile.open(out) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names)
    assert names[:4] == ["blobs", "blobs/sha256", *names[2:4]]
    assert {"oci-layout", "index.json"} <= set(names)
    assert all(m.uid == 0 and m.gid == 0 and m.uname == "" and m.gname == "" for m in members)
    assert {m.mtime for m in members} == {EPOCH}
    assert {m.mode for m in members if m.isdir()} == {0o755} and {m.mode for m in members if m.isfile()} == {0o644}
    index = json.loads(_member(out, "index.json"))
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.created"] == "2020-09-13T12:26:40Z"


def _member(archive: Path, name: str) -> bytes:
    with tarfile.open(archive) as tar:
        member = tar.extractfile(name)
        assert member is not None
        return member.read()


def test_two_exports_give_the_same_bytes(image: Image, store: Store, tmp_path: Path) -> None:
    for kind in (Compression.GZIP, Compression.ZSTD):
        _export(f"type=oci,dest={tmp_path / 'a.tar'}", image, store, compression=kind)
        _export(f"type=oci,dest={tmp_path / 'b.tar'}", image, store, compression=kind)
        assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    # And from another store holding the same image: compression is deterministic, not merely remembered.
    other = open_store(tmp_path / "other")
    _export(
        f"type=oci,dest={tmp_path / 'c.tar'}", _build(other, tmp_path / "again"), other, compression=Compression.ZSTD
    )
    assert (tmp_path / "c.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()


def test_dest_dash_writes_the_same_tar_to_standard_output(image: Image, store: Store, tmp_path: Path) -> None:
    _export(f"type=oci,dest={tmp_path / 'file.tar'}", image, store)
    stdout = io.BytesIO()
    _export("type=oci,dest=-", image, store, stdout=stdout)
    assert stdout.getvalue() == (tmp_path / "file.tar").read_bytes()


class _Terminal(io.BytesIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("text", ["-", "type=oci", "type=docker,dest=-"])
def test_a_tar_is_never_written_to_a_terminal(image: Image, store: Store, text: str) -> None:
    terminal = _Terminal()
    with pytest.raises(UsageError, match="refusing to write to a terminal"):
        _export(text, image, store, stdout=terminal)
    assert terminal.getvalue() == b""


def test_the_second_export_does_not_compress_again(
    image: Image, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Compression] = []
    real = builder.compressed.compressor
    monkeypatch.setattr(
        builder.compressed, "compressor", lambda kind, out, level=None: calls.append(kind) or real(kind, out, level)
    )
    _export(f"type=oci,dest={tmp_path / 'a.tar'}", image, store)
    assert calls == [Compression.GZIP, Compression.GZIP]
    _export(f"type=oci,dest={tmp_path / 'b.tar'}", image, store)
    _export(f"type=docker,dest={tmp_path / 'c.tar'}", image, store)
    assert calls == [Compression.GZIP, Compression.GZIP], "the memo makes later exports free"
    memos = sorted((store.root / "compressed" / "gzip" / "sha256").iterdir())
    assert [m.name for m in memos] == sorted(layer.digest.encoded for layer in image.layers)
    # A pruned compressed blob is made again, to the same digest.
    gzip_digest = json.loads(memos[0].read_bytes())["digest"]
    (store.root / "blobs" / "sha256" / gzip_digest.split(":")[1]).unlink()
    _export(f"type=oci,dest={tmp_path / 'd.tar'}", image, store)
    assert len(calls) == 3
    assert (tmp_path / "d.tar").read_bytes() == (tmp_path / "a.tar").read_bytes()


def test_a_failed_export_leaves_no_file_behind(image: Image, store: Store, tmp_path: Path) -> None:
    _export(f"type=oci,dest={tmp_path / 'warm.tar'}", image, store)  # the compressed layers now exist
    out = tmp_path / "out"
    out.mkdir()
    (out / "image.tar").write_bytes(b"the previous export")
    # Damage the second compressed layer: the export fails half way, after the first blobs are written.
    layer = json.loads(
        next((store.root / "compressed" / "gzip" / "sha256").glob(image.layers[1].digest.encoded)).read_bytes()
    )
    blob = store.root / "blobs" / "sha256" / layer["digest"].split(":")[1]
    damaged = bytearray(blob.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    blob.write_bytes(bytes(damaged))
    with pytest.raises(DigestMismatch):
        _export(f"type=oci,dest={out / 'image.tar'}", image, store)
    assert sorted(p.name for p in out.iterdir()) == ["image.tar"]
    assert (out / "image.tar").read_bytes() == b"the previous export"
    with pytest.raises(OCIError):
        _export(f"type=docker,dest={out / 'new.tar'}", image, store)
    assert sorted(p.name for p in out.iterdir()) == ["image.tar"]


def test_an_interrupted_write_leaves_no_file_behind(
    image: Image, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = builder.export.TarWriter.add
    added: list[str] = []

    def failing_add(self: object, entry: TarEntry, data: object = None) -> None:
        added.append(entry.path)
        if len(added) == 4:
            raise KeyboardInterrupt
        real(self, entry, data)  # type: ignore[arg-type]

    monkeypatch.setattr(builder.export.TarWriter, "add", failing_add)
    with pytest.raises(KeyboardInterrupt):
        _export(f"type=oci,dest={tmp_path / 'image.tar'}", image, store)
    assert added and list(tmp_path.glob("*image.tar*")) == []


def test_oci_directory_is_a_layout(image: Image, store: Store, tmp_path: Path) -> None:
    dest = tmp_path / "new" / "layout"
    _export(f"type=oci,tar=false,dest={dest}", image, store, compression=Compression.ZSTD)
    entry, exported = _only_image(ImageLayout.open(dest))
    validate_image(exported)
    assert [layer.media_type for layer in exported.layers] == [mt.OCI_LAYER_ZSTD] * 2
    assert entry.ref_name == "1.0"
    assert sorted(p.name for p in dest.iterdir()) == ["blobs", "index.json", "oci-layout"]
    assert len(list((dest / "blobs" / "sha256").iterdir())) == 4  # two layers, config, manifest


def test_oci_directory_adds_to_an_existing_layout(image: Image, store: Store, tmp_path: Path) -> None:
    dest = tmp_path / "layout"
    _export(f"type=oci,tar=false,dest={dest}", image, store, names=(APP,))
    _export(
        f"type=oci,tar=false,dest={dest}",
        image,
        store,
        names=(Reference.parse("app:2.0"),),
        compression=Compression.NONE,
    )
    _export(f"type=oci,tar=false,dest={dest}", image, store, names=(APP,), compression=Compression.ZSTD)
    entries = ImageLayout.open(dest).index().manifests
    # BuildKit's client: an entry of the same name is replaced, others are kept, the new one goes last.
    assert [(e.annotations["io.containerd.image.name"], e.ref_name) for e in entries] == [
        ("docker.io/library/app:2.0", "2.0"),
        ("docker.io/library/app:1.0", "1.0"),
    ]
    layout = ImageLayout.open(dest)
    for entry in entries:
        validate_image(layout.image(entry, AMD64))
    assert entries[0].digest == image.digest
    assert [layer.media_type for layer in layout.image(entries[1], AMD64).layers] == [mt.OCI_LAYER_ZSTD] * 2


def test_oci_directory_without_names_is_tagged_latest_and_the_tar_is_not(
    image: Image, store: Store, tmp_path: Path
) -> None:
    _export(f"type=oci,tar=false,dest={tmp_path / 'dir'}", image, store, names=())
    [entry] = ImageLayout.open(tmp_path / "dir").index().manifests
    assert entry.annotations == {
        "org.opencontainers.image.ref.name": "latest",
        "org.opencontainers.image.created": CREATED,
    }
    _export(f"type=oci,dest={tmp_path / 'x.tar'}", image, store, names=())
    [raw] = json.loads(_member(tmp_path / "x.tar", "index.json"))["manifests"]
    assert raw["annotations"] == {"org.opencontainers.image.created": CREATED}


def test_names_come_from_tags_then_from_the_name_attribute(image: Image, store: Store, tmp_path: Path) -> None:
    text = f"type=oci,tar=false,dest={tmp_path / 'a'},name=other:7"
    _export(text, image, store, names=())
    assert [e.ref_name for e in ImageLayout.open(tmp_path / "a").index().manifests] == ["7"]
    text = f"type=oci,tar=false,dest={tmp_path / 'b'},name=other:7"
    _export(text, image, store, names=(APP, Reference.parse("app:latest")))
    assert [e.ref_name for e in ImageLayout.open(tmp_path / "b").index().manifests] == ["1.0", "latest"]


def test_annotations_go_on_the_manifest(image: Image, store: Store, tmp_path: Path) -> None:
    _export(
        f"type=oci,tar=false,dest={tmp_path / 'a'},compression=uncompressed,annotation.org.example.note=hi",
        image,
        store,
    )
    _, exported = _only_image(ImageLayout.open(tmp_path / "a"))
    validate_image(exported)
    assert dict(exported.manifest.annotations) == {"org.example.note": "hi"}
    assert exported.digest != image.digest and exported.id == image.id


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: d.write_text("x"), "is a file"),
        (lambda d: (d.mkdir(), (d / "notes.txt").write_text("mine")), "neither empty nor an OCI image layout"),
    ],
)
def test_oci_directory_refuses_what_it_would_clobber(
    image: Image, store: Store, tmp_path: Path, setup, message: str
) -> None:  # type: ignore[no-untyped-def]
    dest = tmp_path / "dest"
    setup(dest)
    before = _tree(tmp_path)
    with pytest.raises(UsageError, match=message):
        _export(f"type=oci,tar=false,dest={dest}", image, store)
    assert _tree(tmp_path) == before


def test_oci_directory_refuses_the_store_itself(image: Image, store: Store) -> None:
    with pytest.raises(UsageError, match="pybuild's own store"):
        _export(f"type=oci,tar=false,dest={store.root}", image, store)


def test_a_failed_directory_export_removes_the_directory_it_made(image: Image, store: Store, tmp_path: Path) -> None:
    store.layout.store.path(image.layers[0].digest).write_bytes(b"damaged")
    with pytest.raises(OCIError):
        _export(f"type=oci,tar=false,dest={tmp_path / 'made'}", image, store, compression=Compression.NONE)
    assert not (tmp_path / "made").exists()


def test_a_file_destination_that_is_a_directory_is_refused(image: Image, store: Store, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is a directory"):
        check_destination(parse_output(f"type=oci,dest={tmp_path}"))
    with pytest.raises(UsageError, match="directory does not exist"):
        _export(f"type=docker,dest={tmp_path / 'missing' / 'x.tar'}", image, store)


def test_status_messages(image: Image, store: Store, tmp_path: Path) -> None:
    said: list[str] = []
    _export(f"type=oci,dest={tmp_path / 'x.tar'}", image, store, status=said)
    assert said[0] == "exporting layers (gzip)"
    assert f"compressing layer {image.layers[0].digest.short} (gzip)" in said
    assert any(line.startswith("writing image sha256:") for line in said)


def test_skopeo_and_umoci_read_the_oci_outputs(image: Image, store: Store, tmp_path: Path) -> None:
    skopeo = require_tool("skopeo")
    umoci = require_tool("umoci")
    _export(f"type=oci,tar=false,dest={tmp_path / 'layout'}", image, store)
    _export(f"type=oci,dest={tmp_path / 'layout.tar'}", image, store, compression=Compression.ZSTD)
    for source in (f"oci:{tmp_path / 'layout'}:1.0", f"oci-archive:{tmp_path / 'layout.tar'}:1.0"):
        run = subprocess.run([skopeo, "inspect", source], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        info = json.loads(run.stdout)
        assert info["Layers"] and len(info["Layers"]) == 2
        assert info["Created"].startswith("2024-01-02T03:04:05")
    bundle = tmp_path / "bundle"
    args = [umoci, "unpack", "--image", f"{tmp_path / 'layout'}:1.0", str(bundle)]
    if os.geteuid() != 0:
        args.insert(2, "--rootless")
    run = subprocess.run(args, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert _tree(bundle / "rootfs") == EXPECTED_TREE


# ---------------------------------------------------------------------------------------------------- docker


def test_docker_archive_loads_back_with_its_tags(image: Image, store: Store, tmp_path: Path) -> None:
    out = tmp_path / "docker.tar"
    _export(f"type=docker,dest={out}", image, store, names=(APP, Reference.parse("registry.example/x/app:2")))
    manifest = json.loads(_member(out, "manifest.json"))
    assert manifest[0]["RepoTags"] == ["app:1.0", "registry.example/x/app:2"]
    other = open_store(tmp_path / "other")
    [loaded] = read_docker_archive(out, other.layout.store)
    assert loaded.tags == (APP, Reference.parse("registry.example/x/app:2"))
    back = Image(other.layout.store, loaded.descriptor)
    validate_image(back)
    assert back.id == image.id
    assert [layer.media_type for layer in back.layers] == [mt.OCI_LAYER_GZIP] * 2


def test_docker_archive_to_standard_output_and_uncompressed(image: Image, store: Store, tmp_path: Path) -> None:
    stdout = io.BytesIO()
    _export("type=docker,dest=-", image, store, stdout=stdout, compression=Compression.NONE)
    (tmp_path / "d.tar").write_bytes(stdout.getvalue())
    [loaded] = read_docker_archive(tmp_path / "d.tar", open_store(tmp_path / "other").layout.store)
    assert loaded.descriptor.digest == image.digest


def test_docker_archive_refuses_zstd(image: Image, store: Store, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="zstd"):
        _export(f"type=docker,dest={tmp_path / 'd.tar'}", image, store, compression=Compression.ZSTD)
    with pytest.raises(UsageError, match="zstd"):
        _export(f"type=docker,dest={tmp_path / 'd.tar'},compression=zstd", image, store)
    assert not list(tmp_path.glob("*d.tar*"))


def test_skopeo_reads_the_docker_archive(image: Image, store: Store, tmp_path: Path) -> None:
    skopeo = require_tool("skopeo")
    _export(f"type=docker,dest={tmp_path / 'd.tar'}", image, store)
    run = subprocess.run([skopeo, "inspect", f"docker-archive:{tmp_path / 'd.tar'}"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    info = json.loads(run.stdout)
    assert len(info["Layers"]) == 2 and info["Architecture"] == "amd64"


# ---------------------------------------------------------------------------------------------------- local and tar


def test_local_output_is_the_final_tree(image: Image, store: Store, tmp_path: Path) -> None:
    dest = tmp_path / "made" / "rootfs"
    _export(f"type=local,dest={dest}", image, store)
    assert _tree(dest) == EXPECTED_TREE
    assert (dest / "bin" / "tool").stat().st_mode & 0o777 == 0o755
    assert os.path.samefile(dest / "bin" / "tool", dest / "bin" / "tool-link")
    assert not (store.root / "compressed").exists(), "a local output compresses nothing"


def test_local_output_shorthand_and_epoch(image: Image, store: Store, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    _export(str(dest), image, store, epoch=EPOCH)
    assert _tree(dest) == EXPECTED_TREE
    assert {p.lstat().st_mtime for p in dest.rglob("*")} == {EPOCH}


def test_local_output_into_a_directory_with_files_keeps_them(image: Image, store: Store, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    (dest / "tmp").mkdir(parents=True)
    (dest / "tmp" / "old.txt").write_text("the user's, not the image's")  # the image deletes this path
    (dest / "doc").mkdir()
    (dest / "doc" / "mine.txt").write_text("in a directory the image makes opaque")
    (dest / "etc").mkdir()
    (dest / "etc" / "hostname").write_text("replaced")
    _export(f"type=local,dest={dest}", image, store, epoch=EPOCH)
    assert _tree(dest) == {
        **EXPECTED_TREE,
        "tmp/old.txt": b"the user's, not the image's",
        "doc/mine.txt": b"in a directory the image makes opaque",
    }
    assert (dest / "bin" / "tool").stat().st_mtime == EPOCH
    assert not list((store.root / "tmp").iterdir()), "the scratch tree is removed"


def test_local_output_never_writes_outside_dest(image: Image, store: Store, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "out"
    dest.mkdir()
    os.symlink(outside, dest / "etc")  # an existing symlink in dest must not lead the export out of it
    _export(f"type=local,dest={dest}", image, store)
    assert list(outside.iterdir()) == []
    assert (dest / "etc").is_dir() and not (dest / "etc").is_symlink()


def test_local_output_refuses_a_file(image: Image, store: Store, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(UsageError, match="destination directory .* is a file"):
        _export(f"type=local,dest={tmp_path / 'f'}", image, store)


def test_a_failed_local_export_removes_what_it_made(image: Image, store: Store, tmp_path: Path) -> None:
    store.layout.store.path(image.layers[1].digest).write_bytes(b"damaged")
    with pytest.raises(OCIError):
        _export(f"type=local,dest={tmp_path / 'new'}", image, store)
    assert not (tmp_path / "new").exists()


def _tar_members(raw: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        return {m.name: m for m in tar.getmembers()}


def test_tar_output_has_the_final_tree_and_no_whiteouts(image: Image, store: Store, tmp_path: Path) -> None:
    out = tmp_path / "rootfs.tar"
    _export(f"type=tar,dest={out}", image, store)
    members = _tar_members(out.read_bytes())
    assert not [name for name in members if ".wh." in name]
    assert sorted(members) == sorted(EXPECTED_TREE)
    assert members["bin/tool-link"].islnk() or members["bin/tool"].islnk()
    assert members["bin/alias"].issym() and members["bin/alias"].linkname == "tool"
    assert members["bin/tool"].mode == 0o755
    assert all(m.uname == "" for m in members.values())
    extracted = tmp_path / "x"
    extracted.mkdir()
    with tarfile.open(out) as tar:
        tar.extractall(extracted, filter="tar")
    assert _tree(extracted) == EXPECTED_TREE
    assert not list((store.root / "tmp").iterdir()), "the scratch tree is removed"


def test_tar_output_is_deterministic_and_takes_the_epoch(image: Image, store: Store, tmp_path: Path) -> None:
    first, second = io.BytesIO(), io.BytesIO()
    _export("-", image, store, stdout=first, epoch=EPOCH)
    _export("type=tar", image, store, stdout=second, epoch=EPOCH)
    assert first.getvalue() == second.getvalue()
    assert {m.mtime for m in _tar_members(first.getvalue()).values()} == {EPOCH}


# ---------------------------------------------------------------------------------------------------- image, registry


def test_pushing_needs_a_name(image: Image, store: Store) -> None:
    for text in ("type=registry", "type=image,push=true"):
        with pytest.raises(UsageError, match="pushing needs a name"):
            _export(text, image, store, names=())


def test_pushing_hands_the_image_and_every_name_to_the_remote(image: Image, store: Store) -> None:
    pushed: list[tuple[object, ...]] = []

    class Remote:
        def push(self, image, refs, compression, *, annotations, on_status):  # type: ignore[no-untyped-def]
            pushed.append((image.digest, tuple(str(r) for r in refs), compression))

    names = (Reference.parse("127.0.0.1:5000/app:1"), Reference.parse("127.0.0.1:5000/app:latest"))
    export_image(
        parse_output("type=registry"),
        image,
        store=store,
        compression=Compression.ZSTD,
        names=names,
        epoch=None,
        remote=Remote(),  # type: ignore[arg-type]
    )
    assert pushed == [(image.digest, ("127.0.0.1:5000/app:1", "127.0.0.1:5000/app:latest"), Compression.ZSTD)]
    assert all(store.layout.resolve(str(n)).digest == image.digest for n in names)  # type: ignore[union-attr]


def test_image_output_names_the_image_in_the_store(image: Image, store: Store) -> None:
    _export("type=image,name=docker.io/library/named:3", image, store, names=())
    assert store.layout.resolve("docker.io/library/named:3").digest == image.digest  # type: ignore[union-attr]


def test_cacheonly_writes_nothing(image: Image, store: Store, tmp_path: Path) -> None:
    before = _tree(tmp_path)
    _export("type=cacheonly", image, store)
    assert _tree(tmp_path) == before
