"""The flattener and the comparison the conformance suite rests on, with layers made by hand: if these were wrong,
the suite could pass while the builders disagree."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pytest

from conformance.tree import (
    FlattenError,
    ImageData,
    delta,
    flatten,
    normalize_config,
    read_docker_save,
    read_oci_layout,
    summarize,
)
from oci.config import ImageConfig, RuntimeConfig
from oci.descriptor import Descriptor
from oci.digest import Digest
from oci.layout import ImageLayout
from oci.manifest import Manifest
from oci.mediatypes import OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST
from oci.tarformat import EntryType, TarEntry, TarWriter

D, F, L, H = EntryType.DIR, EntryType.FILE, EntryType.SYMLINK, EntryType.HARDLINK


def layer(*members: tuple) -> bytes:
    """A layer tar from ``(path, type, ...)``: a file takes its content, a link its target; keyword-ish extras
    follow as a dict (mode, uid, gid)."""
    out = io.BytesIO()
    writer = TarWriter(out)
    for member in members:
        path, kind, *rest = member
        extra = rest.pop() if rest and isinstance(rest[-1], dict) else {}
        data = rest[0] if rest else b""
        if kind is F:
            entry = TarEntry(path, kind, size=len(data), mode=extra.get("mode", 0o644), **_owner(extra))
            writer.add(entry, io.BytesIO(data))
        elif kind in (L, H):
            entry = TarEntry(path, kind, linkname=data, mode=extra.get("mode", 0o777), **_owner(extra))
            writer.add(entry)
        else:
            writer.add(TarEntry(path, kind, mode=extra.get("mode", 0o755), **_owner(extra), **_dev(extra)))
    writer.close()
    return out.getvalue()


def _owner(extra: dict) -> dict:
    return {"uid": extra.get("uid", 0), "gid": extra.get("gid", 0)}


def _dev(extra: dict) -> dict:
    return {"devmajor": extra.get("devmajor", 0), "devminor": extra.get("devminor", 0)}


def opener(data: bytes) -> Callable[[], BinaryIO]:
    return lambda: io.BytesIO(data)


def records(*layers: bytes) -> dict[str, dict]:
    return flatten([opener(data) for data in layers]).records()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


BASE = layer(
    ("etc", D),
    ("etc/passwd", F, b"root:x:0:0::/root:/bin/sh\n"),
    ("etc/group", F, b"root:x:0:\n"),
    ("usr", D),
    ("usr/lib", D),
    ("usr/lib/a.so", F, b"\x7fELF a"),
    ("usr/lib/sub", D),
    ("usr/lib/sub/b.so", F, b"\x7fELF b"),
    ("bin", D),
    ("bin/sh", L, "busybox"),
)


def test_records_of_every_kind() -> None:
    got = records(
        layer(
            ("./", D, {"mode": 0o700}),
            ("./dir/", D, {"mode": 0o1777, "uid": 5, "gid": 6}),
            ("./dir/file", F, b"hello\n", {"mode": 0o4755, "uid": 1234, "gid": 5678}),
            ("dir/link", L, "../elsewhere"),
            ("dir/fifo", EntryType.FIFO, {"mode": 0o600}),
            ("dir/null", EntryType.CHAR, {"mode": 0o666, "devmajor": 1, "devminor": 3}),
            ("dir/loop", EntryType.BLOCKDEV, {"mode": 0o660, "devmajor": 7, "devminor": 9}),
            ("dir/blob", F, bytes(range(256))),
        )
    )
    assert list(got) == sorted(got), "records come sorted by path"
    assert "/" not in got, "the root directory is not recorded"
    assert got == {
        "/dir": {"path": "/dir", "type": "dir", "mode": "1777", "uid": 5, "gid": 6},
        "/dir/blob": {
            "path": "/dir/blob",
            "type": "file",
            "mode": "0644",
            "uid": 0,
            "gid": 0,
            "size": 256,
            "digest": sha(bytes(range(256))),
        },
        "/dir/fifo": {"path": "/dir/fifo", "type": "fifo", "mode": "0600", "uid": 0, "gid": 0},
        "/dir/file": {
            "path": "/dir/file",
            "type": "file",
            "mode": "4755",
            "uid": 1234,
            "gid": 5678,
            "size": 6,
            "digest": sha(b"hello\n"),
            "text": "hello\n",
        },
        "/dir/link": {
            "path": "/dir/link",
            "type": "symlink",
            "mode": "0777",
            "uid": 0,
            "gid": 0,
            "link": "../elsewhere",
        },
        "/dir/loop": {"path": "/dir/loop", "type": "block", "mode": "0660", "uid": 0, "gid": 0, "device": "7:9"},
        "/dir/null": {"path": "/dir/null", "type": "char", "mode": "0666", "uid": 0, "gid": 0, "device": "1:3"},
    }


def test_text_only_for_small_utf8_text() -> None:
    got = records(
        layer(
            ("small", F, b"x" * 256),
            ("big", F, b"x" * 257),
            ("binary", F, b"\xff\xfe"),
            ("control", F, b"a\x00b"),
            ("empty", F, b""),
        )
    )
    assert got["/small"]["text"] == "x" * 256
    assert "text" not in got["/big"] and "text" not in got["/binary"] and "text" not in got["/control"]
    assert got["/empty"]["text"] == "" and got["/empty"]["size"] == 0


def test_whiteouts_remove_files_and_subtrees() -> None:
    got = records(BASE, layer(("etc", D), ("etc/.wh.group", F), ("usr/lib/.wh.sub", F), (".wh.bin", F)))
    assert sorted(got) == ["/etc", "/etc/passwd", "/usr", "/usr/lib", "/usr/lib/a.so"]


def test_whiteout_applies_to_lower_layers_only() -> None:
    """A layer may whiteout a path and recreate it; the new entry survives whatever the member order."""
    got = records(BASE, layer(("etc/group", F, b"new\n"), ("etc/.wh.group", F)))
    assert got["/etc/group"]["text"] == "new\n"


def test_opaque_directory_hides_only_lower_children() -> None:
    upper = layer(("usr/lib", D, {"mode": 0o700}), ("usr/lib/new.so", F, b"new"), ("usr/lib/.wh..wh..opq", F))
    got = records(BASE, upper)
    assert sorted(p for p in got if p.startswith("/usr/lib")) == ["/usr/lib", "/usr/lib/new.so"]
    assert got["/usr/lib"]["mode"] == "0700"


def test_aufs_metadata_is_not_content() -> None:
    got = records(BASE, layer(("etc/.wh..wh.plnk", D), ("etc/.wh..wh.aufs", F)))
    assert got == records(BASE)


def test_later_entries_replace_earlier_ones() -> None:
    got = records(
        BASE,
        layer(
            ("usr/lib", F, b"a file now"),  # a file over a directory takes the subtree with it
            ("etc/passwd", D),  # a directory over a file
            ("etc/passwd/inside", F, b"x"),
            ("etc/group", F, b"v1"),
            ("etc/group", F, b"v2"),  # the last of two entries in one layer wins
        ),
        layer(("etc", D, {"mode": 0o750, "uid": 7})),  # a directory over a directory keeps the children
    )
    assert got["/usr/lib"]["type"] == "file" and not any(p.startswith("/usr/lib/") for p in got)
    assert got["/etc/passwd"]["type"] == "dir" and got["/etc/passwd/inside"]["text"] == "x"
    assert got["/etc/group"]["text"] == "v2"
    assert (got["/etc"]["mode"], got["/etc"]["uid"]) == ("0750", 7)


def test_hardlinks_are_normalised_whatever_the_order() -> None:
    one = records(layer(("d", D), ("d/b", F, b"shared", {"mode": 0o755}), ("d/a", H, "d/b"), ("d/c", H, "./d/b")))
    two = records(layer(("d", D), ("d/c", F, b"shared", {"mode": 0o755}), ("d/b", H, "d/c"), ("d/a", H, "d/b")))
    assert one == two
    assert one["/d/a"]["type"] == "file" and one["/d/a"]["mode"] == "0755"
    assert one["/d/b"] == {"path": "/d/b", "type": "hardlink", "link": "/d/a"}
    assert one["/d/c"] == {"path": "/d/c", "type": "hardlink", "link": "/d/a"}


def test_hardlink_to_an_earlier_layer_and_rewriting_the_original() -> None:
    got = records(BASE, layer(("etc/passwd.bak", H, "etc/passwd")))
    assert got["/etc/passwd"]["type"] == "file"
    assert got["/etc/passwd.bak"] == {"path": "/etc/passwd.bak", "type": "hardlink", "link": "/etc/passwd"}
    # A later layer rewriting one member gives it a new inode: the other keeps the old content.
    got = records(BASE, layer(("etc/passwd.bak", H, "etc/passwd")), layer(("etc/passwd", F, b"new\n")))
    assert got["/etc/passwd"]["text"] == "new\n"
    assert got["/etc/passwd.bak"]["type"] == "file" and got["/etc/passwd.bak"]["text"] == "root:x:0:0::/root:/bin/sh\n"
    # Deleting the original leaves the other name as a plain file.
    got = records(BASE, layer(("etc/passwd.bak", H, "etc/passwd")), layer(("etc/.wh.passwd", F)))
    assert got["/etc/passwd.bak"]["type"] == "file"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (layer(("x", H, "missing")), "does not exist"),
        (layer(("d", D), ("x", H, "d")), "directory"),
        (layer(("f", F, b""), ("f/child", F, b"")), "not a directory"),
        (layer(("a/../../escape", F, b"")), "'..'"),
    ],
)
def test_unfaithful_layers_are_refused(bad: bytes, message: str) -> None:
    with pytest.raises(FlattenError, match=message):
        records(bad)


def test_missing_parents_are_created_as_appliers_do() -> None:
    got = records(layer(("a/b/c", F, b"x")))
    assert got["/a"] == {"path": "/a", "type": "dir", "mode": "0755", "uid": 0, "gid": 0}
    assert got["/a/b"]["type"] == "dir"


def test_compressed_layers_are_read() -> None:
    assert records(gzip.compress(BASE)) == records(BASE)


def test_delta_keeps_only_what_changed_and_compacts_deletions() -> None:
    base = records(BASE)
    image = records(
        BASE,
        layer(
            ("etc", D),  # touched but identical: left out
            ("etc/group", F, b"root:x:0:\napp:x:1:\n"),  # changed
            ("etc/new", F, b"n"),  # added
            ("usr/.wh.lib", F),  # a deleted directory: its contents are implied
            ("bin", F, b"not a dir"),  # a directory replaced: its contents are implied
            ("etc/.wh.passwd", F),
        ),
    )
    changed, deleted = delta(base, image)
    assert [r["path"] for r in changed] == ["/bin", "/etc/group", "/etc/new"]
    assert deleted == ["/etc/passwd", "/usr/lib"]
    assert delta(base, base) == ([], [])
    assert delta({}, base) == (list(base.values()), [])


def test_normalize_config() -> None:
    config = {
        "architecture": "amd64",
        "os": "linux",
        "author": "Jane",
        "config": {
            "Hostname": "ignored",
            "Env": ["PATH=/bin"],
            "Cmd": [],
            "Entrypoint": None,
            "User": "",
            "Labels": {},
            "Volumes": {"/b": {}, "/a": {}},
            "ExposedPorts": {"80/tcp": {}, "53/udp": {}},
            "Healthcheck": {"Test": ["CMD", "true"], "Interval": 0, "Retries": 3},
            "OnBuild": None,
            "ArgsEscaped": False,
            "StopSignal": "SIGQUIT",
        },
    }
    assert normalize_config(config) == {
        "Env": ["PATH=/bin"],
        "Cmd": [],
        "Volumes": ["/a", "/b"],
        "ExposedPorts": ["53/udp", "80/tcp"],
        "Healthcheck": {"Retries": 3, "Test": ["CMD", "true"]},
        "StopSignal": "SIGQUIT",
        "author": "Jane",
    }
    assert normalize_config({"config": None}) == {}


def _image(layers: list[bytes], history: list[dict], config: dict | None = None) -> ImageData:
    diff_ids = [sha(data) for data in layers]
    document = {"config": config or {}, "rootfs": {"type": "layers", "diff_ids": diff_ids}, "history": history}
    return ImageData(document, [opener(data) for data in layers])


def test_summarize_on_the_base_and_from_scratch() -> None:
    added = layer(("etc/new", F, b"n"))
    base = _image([BASE], [{"comment": "imported"}])
    image = _image(
        [BASE, added],
        [{"comment": "imported"}, {"created_by": "ENV A=1", "empty_layer": True}, {"created_by": "RUN x"}],
        {"Env": ["A=1"]},
    )
    summary = summarize(image, base)
    assert summary["base"] == "busybox"
    assert [r["path"] for r in summary["tree"]] == ["/etc/new"]
    assert summary["history"] == [
        {"created_by": "ENV A=1", "empty_layer": True},
        {"created_by": "RUN x", "empty_layer": False},
    ]
    assert summary["config"] == {"Env": ["A=1"]}
    scratch = summarize(_image([added], [{"created_by": "COPY x"}]), base)
    assert scratch["base"] == "scratch" and [r["path"] for r in scratch["tree"]] == ["/etc", "/etc/new"]
    empty = summarize(_image([], [{"created_by": "CMD", "empty_layer": True}]), base)
    assert (empty["base"], empty["tree"], empty["deleted"]) == ("scratch", [], [])


def test_summarize_refuses_history_that_does_not_match_the_layers() -> None:
    with pytest.raises(FlattenError, match="history"):
        summarize(_image([BASE], [{"created_by": "a"}, {"created_by": "b"}]), None)


def test_read_docker_save_legacy_archive(tmp_path: Path) -> None:
    config = json.dumps(_image([BASE], [{"created_by": "x"}]).config).encode()
    members = {
        "manifest.json": json.dumps([{"Config": "abc.json", "RepoTags": ["t:1"], "Layers": ["l1/layer.tar"]}]).encode(),
        "abc.json": config,
        "l1/layer.tar": BASE,
    }
    path = tmp_path / "saved.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("l2/layer.tar")  # Docker links a layer that appears twice
        link.type, link.linkname = tarfile.SYMTYPE, "../l1/layer.tar"
        tar.addfile(link)
    image = read_docker_save(path)
    assert image.diff_ids == [sha(BASE)]
    assert flatten(image.layers).records() == records(BASE)


def test_read_oci_layout(tmp_path: Path) -> None:
    layout = ImageLayout.open(tmp_path / "layout", create=True)
    blob = gzip.compress(BASE)
    layer_digest = layout.store.put_bytes(blob)
    config = ImageConfig("amd64", "linux", RuntimeConfig(cmd=("sh",)), diff_ids=(Digest.parse(sha(BASE)),))
    config_raw = config.encode()
    config_digest = layout.store.put_bytes(config_raw)
    manifest = Manifest(
        config=Descriptor(OCI_CONFIG, config_digest, len(config_raw)),
        layers=(Descriptor(OCI_LAYER_GZIP, layer_digest, len(blob)),),
    )
    raw = manifest.encode()
    layout.tag("docker.io/library/x:latest", Descriptor(OCI_MANIFEST, layout.store.put_bytes(raw), len(raw)))
    for image in (read_oci_layout(layout.root), read_oci_layout(layout.root, "docker.io/library/x:latest")):
        assert normalize_config(image.config) == {"Cmd": ["sh"]}
        assert flatten(image.layers).records() == records(BASE)
    with pytest.raises(FlattenError, match="found 0"):
        read_oci_layout(layout.root, "docker.io/library/other:latest")
