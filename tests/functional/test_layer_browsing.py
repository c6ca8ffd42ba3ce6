"""``pybuild diff`` and ``pybuild layers`` as a user runs them, on images whose waste is known to the byte: one
built from a Dockerfile on busybox (and the same chain opened through its cache keys), and one crafted from tar
archives written member by member (gzip, zstd and plain layers; an opaque directory, whiteouts of a file, a
directory and a hardlinked file, a file changed twice)."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import pytest
from conftest import CLIResult, run_pybuild, write_context
from tartools import Member, archive, directory, file, hardlink, symlink

from builder.commit import store_image
from builder.platforms import host_platform
from builder.root import open_store
from oci.compression import Compression, compressor
from oci.config import History, ImageConfig
from oci.descriptor import Descriptor
from oci.digest import Digest

WASTEFUL = """FROM busybox
RUN head -c 100000 /dev/zero > /big && head -c 300 /dev/zero > /small
RUN rm /big
RUN head -c 5000 /dev/zero > /small
"""


def ok(*args: str) -> CLIResult:
    result = run_pybuild(*args)
    assert result.code == 0, result
    assert result.err == "", result
    return result


def json_of(*args: str) -> object:
    return json.loads(ok(*args, "--format", "json").out)


def error(result: CLIResult, code: int) -> str:
    assert result.code == code, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.err, result
    return lines[0]


def changes(layer: dict) -> dict[str, tuple[str, str, int]]:
    return {c["path"]: (c["kind"], c["type"], c["size"]) for c in layer["changes"]}


# ------------------------------------------------------------------------------------------ a built image


def test_a_built_image_and_its_cached_steps_show_the_exact_waste(tmp_path: Path, busybox: str) -> None:
    context = write_context(tmp_path / "ctx", WASTEFUL)
    built = run_pybuild("build", "-q", "-t", "waste", str(context))
    assert built.code == 0, built

    summary = json_of("layers", "waste")
    layers = summary["layers"]
    assert [layer["index"] for layer in layers] == [1, 2, 3, 4]
    assert [layer["created_by"] for layer in layers] == [
        "pybuild import",
        "RUN /bin/sh -c head -c 100000 /dev/zero > /big && head -c 300 /dev/zero > /small # buildkit",
        "RUN /bin/sh -c rm /big # buildkit",
        "RUN /bin/sh -c head -c 5000 /dev/zero > /small # buildkit",
    ]
    base = layers[0]["size"]
    assert base > 1_000_000 and layers[0]["deleted"] == 0  # busybox itself
    rows = [{k: layer[k] for k in ("size", "files", "added", "changed", "deleted")} for layer in layers[1:]]
    assert rows == [
        {"size": 100_300, "files": 2, "added": 2, "changed": 0, "deleted": 0},
        {"size": 0, "files": 0, "added": 0, "changed": 0, "deleted": 1},
        {"size": 5000, "files": 1, "added": 0, "changed": 1, "deleted": 0},
    ]
    assert summary["image_size"] == base + 105_300
    assert summary["wasted_bytes"] == 100_300
    assert summary["efficiency"] == pytest.approx(1 - 100_300 / (base + 105_300))
    assert summary["inefficient_files"] == [
        {"path": "/big", "count": 2, "wasted": 100_000},
        {"path": "/small", "count": 2, "wasted": 300},
    ]
    image = json.loads(ok("inspect", "waste").out)[0]
    assert [layer["diff_id"] for layer in layers] == image["RootFS"]["Layers"]

    diff = json_of("diff", "waste")
    assert [changes(layer) for layer in diff[1:]] == [
        {"/big": ("A", "file", 100_000), "/small": ("A", "file", 300)},
        {"/big": ("D", "file", 100_000)},
        {"/small": ("C", "file", 5000)},
    ]
    assert json_of("diff", "waste", "--layer", "3") == [diff[2]]
    assert json_of("diff", "waste", "--layer", "-1") == [diff[3]]

    table = ok("layers", "waste").out
    assert re.search(r"^3\s+0B\s+0\s+0\s+0\s+1\s+RUN /bin/sh -c rm /big # buildkit$", table, re.M)
    assert "Wasted:      100kB (100300 bytes)\n" in table
    assert re.search(r"^2\s+100kB\s+/big\n2\s+300B\s+/small$", table, re.M)
    shown = ok("diff", "waste", "--layer", "2").out.splitlines()
    assert shown[2].startswith("layer 2 of 4  ") and shown[2].endswith("  100kB  " + layers[1]["created_by"])
    assert shown[3:] == ["A  100kB  /big", "A   300B  /small"]

    # The same chain through the cache: the last RUN's key opens all four layers, the middle one's three.
    entries = {e["step"]: e["key"] for e in json_of("cache", "ls")}
    last, middle = entries["RUN head -c 5000 /dev/zero > /small"], entries["RUN rm /big"]
    cached = json_of("layers", last.removeprefix("sha256:")[:12])
    assert cached["target"] == f"cache entry {last[7:19]}: RUN head -c 5000 /dev/zero > /small"
    for layer in (*cached["layers"], *summary["layers"]):
        layer.pop("comment")  # the image's history has BuildKit's comment, a cache entry keeps created_by only
    assert {**cached, "target": ""} == {**summary, "target": ""}
    assert [changes(layer) for layer in json_of("diff", last)] == [changes(layer) for layer in diff]
    upto = json_of("layers", middle)
    assert [layer["digest"] for layer in upto["layers"]] == [layer["digest"] for layer in layers[:3]]
    assert (upto["image_size"], upto["wasted_bytes"]) == (base + 100_300, 100_000)
    assert upto["inefficient_files"] == [{"path": "/big", "count": 2, "wasted": 100_000}]


# ---------------------------------------------------------------------------------------- a crafted image


def _layer(blobs: object, members: list[Member], kind: Compression) -> tuple[Descriptor, Digest]:
    raw = archive(*members)
    out = io.BytesIO()
    writer = compressor(kind, out)
    writer.write(raw)
    writer.finish()
    data = out.getvalue()
    digest = blobs.put_bytes(data)  # type: ignore[attr-defined]
    return Descriptor(kind.layer_media_type, digest, len(data)), Digest.of_bytes(raw)


def _whiteout(path: str) -> Member:
    parent, _, name = path.rpartition("/")
    return file(f"{parent}/.wh.{name}".lstrip("/"), b"")


@pytest.fixture
def crafted(store_root: Path) -> list[tuple[Descriptor, Digest]]:
    """Four layers with 9535 bytes of file content, 6730 of them wasted, tagged ``crafted``."""
    store = open_store(store_root)
    blobs = store.layout.store
    layers = [
        _layer(
            blobs,
            [
                directory("./"),
                directory("./etc/"),
                file("./etc/app.conf", b"1" * 1200),
                directory("opt/"),
                file("opt/a", b"a" * 10),
                directory("opt/sub/"),
                file("opt/sub/b", b"b" * 20),
                directory("bin/"),
                file("bin/busybox", b"x" * 1000),
                hardlink("bin/sh", "bin/busybox"),
                symlink("bin/ls", "busybox"),
            ],
            Compression.GZIP,
        ),
        _layer(
            blobs,
            [
                directory("etc/"),
                file("etc/app.conf", b"2" * 1500),  # changed: the first copy (1200) is wasted
                file("opt/.wh..wh..opq", b""),  # opt/a (10) and opt/sub/b (20) are gone
                directory("opt/"),
                file("opt/c", b"c" * 5),
                _whiteout("bin/busybox"),  # bin/sh still shows its bytes: nothing wasted
            ],
            Compression.ZSTD,
        ),
        _layer(
            blobs,
            [file("etc/app.conf", b"3" * 1800), directory("tmp/"), file("tmp/cache.bin", b"t" * 4000)],
            Compression.NONE,
        ),
        _layer(blobs, [_whiteout("tmp")], Compression.GZIP),  # the directory and the 4000 bytes in it
    ]
    history = (
        History(created_by="ADD rootfs.tar /"),
        History(created_by="ENV MODE=fast", empty_layer=True),
        History(created_by="RUN configure"),
        History(created_by="RUN make"),
        History(created_by="RUN cleanup"),
    )
    platform = host_platform()
    config = ImageConfig(platform.architecture, platform.os, diff_ids=tuple(d for _, d in layers), history=history)
    image = store_image(store.layout, config, [desc for desc, _ in layers])
    store.layout.tag("docker.io/library/crafted:latest", image.descriptor)
    return layers


def test_a_crafted_image_shows_every_kind_of_change_and_the_exact_waste(crafted: list) -> None:
    summary = json_of("layers", "crafted")
    assert [layer["created_by"] for layer in summary["layers"]] == [
        "ADD rootfs.tar /",
        "RUN configure",
        "RUN make",
        "RUN cleanup",
    ]
    counts = [tuple(layer[k] for k in ("size", "files", "added", "changed", "deleted")) for layer in summary["layers"]]
    assert counts == [(2230, 6, 10, 0, 0), (1505, 2, 1, 3, 4), (5800, 2, 2, 1, 0), (0, 0, 0, 0, 2)]
    assert [layer["digest"] for layer in summary["layers"]] == [str(desc.digest) for desc, _ in crafted]
    assert [layer["blob_size"] for layer in summary["layers"]] == [desc.size for desc, _ in crafted]
    assert (summary["image_size"], summary["wasted_bytes"]) == (9535, 6730)
    assert summary["efficiency"] == pytest.approx(2805 / 9535)
    assert summary["inefficient_files"] == [
        {"path": "/tmp/cache.bin", "count": 2, "wasted": 4000},
        {"path": "/etc/app.conf", "count": 3, "wasted": 2700},
        {"path": "/opt/sub/b", "count": 2, "wasted": 20},
        {"path": "/opt/a", "count": 2, "wasted": 10},
    ]

    diff = json_of("diff", "crafted")
    assert changes(diff[0])["/bin/sh"] == ("A", "hardlink", 0)
    assert [c["link"] for c in diff[0]["changes"] if c["path"] in ("/bin/sh", "/bin/ls")] == ["busybox", "/bin/busybox"]
    assert changes(diff[1]) == {
        "/bin/busybox": ("D", "file", 1000),
        "/etc": ("C", "dir", 0),
        "/etc/app.conf": ("C", "file", 1500),
        "/opt": ("C", "dir", 0),
        "/opt/a": ("D", "file", 10),
        "/opt/c": ("A", "file", 5),
        "/opt/sub": ("D", "dir", 0),
        "/opt/sub/b": ("D", "file", 20),
    }
    assert changes(diff[3]) == {"/tmp": ("D", "dir", 0), "/tmp/cache.bin": ("D", "file", 4000)}

    table = ok("diff", "crafted", "--layer", "2").out
    assert table.splitlines()[3:] == [
        "D    1kB  /bin/busybox",
        "C      -  /etc",
        "C  1.5kB  /etc/app.conf",
        "C      -  /opt",
        "D    10B  /opt/a",
        "A     5B  /opt/c",
        "D      -  /opt/sub",
        "D    20B  /opt/sub/b",
    ]
    top = ok("layers", "crafted", "--top", "1").out
    assert "Image size:  9.54kB (9535 bytes)\nWasted:      6.73kB (6730 bytes)\nEfficiency:  29.42%\n" in top
    assert top.endswith("Inefficient files (top 1, 3 more):\nCOUNT   WASTED   PATH\n2       4kB      /tmp/cache.bin\n")


def test_a_layer_missing_from_the_store_is_reported_not_a_crash(crafted: list, store_root: Path) -> None:
    gone = crafted[1][0].digest
    os.unlink(store_root / "blobs" / "sha256" / gone.encoded)
    result = run_pybuild("layers", "crafted", "--format", "json")
    assert result.code == 0, result
    assert (
        result.err == f"WARNING: layer 2: layer {gone} is not in the store; the layers above it are read without it\n"
    )
    summary = json.loads(result.out)
    assert summary["layers"][1]["error"] == f"layer {gone} is not in the store"
    assert summary["layers"][1]["size"] is None
    assert (summary["image_size"], summary["wasted_bytes"]) == (8030, 5200)  # app.conf's 1200, tmp's 4000
    shown = run_pybuild("diff", "crafted", "--layer", "2")
    assert shown.code == 0 and "WARNING: layer 2:" in shown.err
    assert shown.out.splitlines()[2:] == [
        f"layer 2 of 4  {gone.encoded[:12]}  missing  RUN configure",
        f"  (layer {gone} is not in the store)",
    ]
    table = run_pybuild("layers", "crafted").out
    assert re.search(r"^2\s+missing\s+-\s+-\s+-\s+-\s+RUN configure$", table, re.M)


def test_what_cannot_be_shown_is_one_line_and_an_exit_code(crafted: list) -> None:
    assert error(run_pybuild("layers", "nothing"), 1) == "pybuild: no such image: nothing"
    assert error(run_pybuild("diff", "abcdef0123"), 1) == "pybuild: no image or cache entry matches abcdef0123"
    assert error(run_pybuild("diff", "crafted", "--layer", "5"), 2) == (
        "pybuild: --layer 5: crafted has 4 layers (1 to 4, or -1 for the top one)"
    )
    assert error(run_pybuild("diff", "crafted", "--layer", "0"), 2).startswith("pybuild: --layer 0: ")
    assert error(run_pybuild("diff"), 2).startswith("pybuild: ")
    help_text = ok("layers", "--help").out
    assert "Unlike dive, the copy\nthe image still shows is never counted as waste." in help_text
