"""``pybuild cache mounts ls|rm|export|import`` through the CLI: a store's cache mounts carried to a fresh store
through a directory and through a real registry (docker-registry on 127.0.0.1), with the same contents, owners,
modes and times; hostile tarballs refused without a byte written outside; sizes in ``ls`` and ``system df``; which
prune removes them. The mounts are made through ``builder.cachemounts``, as a build's RUN --mount=type=cache does."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import requests
from conftest import CLIResult, require_root, run_pybuild
from registryserver import RegistryServer
from tartools import archive, directory, file, hardlink, snapshot, symlink

from builder.cachemounts import CacheMountStore
from oci.compression import Compression, compressor
from oci.digest import Digest

APT = "/var/cache/apt"
ODD = "go build/ünïcode\tid"


def ok(*args: str) -> CLIResult:
    result = run_pybuild(*args)
    assert result.code == 0, result
    return result


def populate(root: Path) -> None:
    """Two mounts: one with owners, modes, a setuid file, a symlink out of it, a hard link, an old mtime."""
    store = CacheMountStore(root)
    with store.open(APT, uid=100, gid=101, mode=0o750) as data:
        (data / "archives").mkdir(mode=0o700)
        (data / "archives" / "pkg.deb").write_bytes(os.urandom(50_000))
        os.utime(data / "archives" / "pkg.deb", (1_500_000_000, 1_500_000_000))
        os.link(data / "archives" / "pkg.deb", data / "same.deb")
        (data / "tool").write_text("#!/bin/sh\n")
        os.chmod(data / "tool", 0o4755)
        os.symlink("/etc/passwd", data / "outside-link")
        os.chown(data / "archives", 42, 43)
    with store.open(ODD, mode=0o777) as data:
        (data / "x").write_text("odd")


def mount_tree(root: Path, id: str) -> tuple[object, ...]:
    """Everything observable about a mount: its top directory and every entry, with the files' mtimes."""
    data = CacheMountStore(root).path(id) / "data"
    st = data.stat()
    mtimes = {p.relative_to(data).as_posix(): int(p.lstat().st_mtime) for p in data.rglob("*") if p.is_file()}
    return (st.st_mode, st.st_uid, st.st_gid), snapshot(data), mtimes


def test_export_to_a_directory_and_import_into_a_fresh_store(tmp_path: Path) -> None:
    require_root()
    a, b, dest = tmp_path / "a", tmp_path / "b", tmp_path / "exported"
    populate(a)
    out = ok("--root", str(a), "cache", "mounts", "export", "--progress", "plain", str(dest)).out
    assert f"Exported 2 cache mounts to {dest}" in out
    index = json.loads((dest / "cachemounts.json").read_text())
    assert [m["id"] for m in index["mounts"]] == sorted([APT, ODD])
    tarballs = sorted(p.name for p in dest.iterdir() if p.name != "cachemounts.json")
    assert tarballs == sorted(f"{Digest.parse(m['blob']['digest']).encoded}.tar.zst" for m in index["mounts"])

    out = ok("--root", str(b), "cache", "mounts", "import", str(dest)).out
    assert "Imported 2 cache mounts" in out
    for id in (APT, ODD):
        assert mount_tree(b, id) == mount_tree(a, id)
    data = CacheMountStore(b).path(APT) / "data"
    assert os.stat(data / "same.deb").st_ino == os.stat(data / "archives" / "pkg.deb").st_ino
    assert os.readlink(data / "outside-link") == "/etc/passwd"

    # The same content gives the same bytes: a second export rewrites nothing that changed. With --id, the
    # directory then holds exactly that mount.
    ok("--root", str(a), "cache", "mounts", "export", "-q", str(dest))
    assert json.loads((dest / "cachemounts.json").read_text()) == index
    ok("--root", str(a), "cache", "mounts", "export", "-q", "--id", ODD, f"type=local,dest={dest}")
    assert [m["id"] for m in json.loads((dest / "cachemounts.json").read_text())["mounts"]] == [ODD]
    assert len(list(dest.iterdir())) == 2

    listed = {m["id"]: m for m in json.loads(ok("--root", str(b), "cache", "mounts", "ls", "--format", "json").out)}
    assert listed[APT]["size"] == 50_000 + 10 and listed[ODD]["size"] == 3
    assert not listed[APT]["in_use"]
    table = ok("--root", str(b), "cache", "mounts", "ls").out.splitlines()
    assert table[0].split() == ["ID", "SIZE", "LAST", "USED", "USES"] and any(APT in line for line in table)
    rows = [json.loads(line) for line in ok("--root", str(b), "system", "df", "--format", "json").out.splitlines()]
    [row] = [r for r in rows if r["Type"] == "Cache Mounts"]
    assert (row["TotalCount"], row["Active"], row["Size"], row["Reclaimable"]) == (2, 0, 50_013, 50_013)


def test_a_directory_that_is_not_an_export_is_neither_filled_nor_read(tmp_path: Path) -> None:
    populate(tmp_path / "a")
    busy = tmp_path / "home"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    result = run_pybuild("--root", str(tmp_path / "a"), "cache", "mounts", "export", str(busy))
    assert result.code == 1 and "not a cache mounts export" in result.err
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]
    result = run_pybuild("--root", str(tmp_path / "b"), "cache", "mounts", "import", str(busy))
    assert result.code == 1 and "cachemounts.json" in result.err
    result = run_pybuild("--root", str(tmp_path / "a"), "cache", "mounts", "export", "--id", "nope", str(busy / "x"))
    assert result.code == 1 and "no cache mount 'nope'" in result.err


def test_export_and_import_through_a_registry(registry: RegistryServer, tmp_path: Path) -> None:
    require_root()
    a, b = tmp_path / "a", tmp_path / "b"
    populate(a)
    ref = f"{registry.host}/ci/mounts:main"
    out = ok("--root", str(a), "cache", "mounts", "export", "--progress", "plain", f"type=registry,ref={ref}")
    assert f"Exported 2 cache mounts to {ref}" in out.out
    manifest = requests.get(
        f"{registry.url}/v2/ci/mounts/manifests/main",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        timeout=10,
    ).json()
    assert manifest["artifactType"] == "application/vnd.pybuild.cachemounts.v1+json"
    assert [layer["annotations"]["dev.pybuild.cachemount.id"] for layer in manifest["layers"]] == sorted([APT, ODD])
    assert {layer["mediaType"] for layer in manifest["layers"]} == {"application/vnd.oci.image.layer.v1.tar+zstd"}

    again = ok("--root", str(a), "cache", "mounts", "export", "--progress", "plain", f"type=registry,ref={ref}")
    assert "uploading" not in again.err  # deterministic tarballs: every blob is already there

    ok("--root", str(b), "cache", "mounts", "import", "--id", APT, f"type=registry,ref={ref}")
    assert [m["id"] for m in json.loads(ok("--root", str(b), "cache", "mounts", "ls", "--format", "json").out)] == [APT]
    ok("--root", str(b), "cache", "mounts", "import", f"type=registry,ref={ref}")
    for id in (APT, ODD):
        assert mount_tree(b, id) == mount_tree(a, id)
    missing = run_pybuild("--root", str(b), "cache", "mounts", "import", f"type=registry,ref={registry.host}/ci/no:1")
    assert missing.code == 1 and "not found" in missing.err


def _hostile_export(dest: Path, id: str, tar: bytes) -> None:
    """An export directory whose one tarball is ``tar`` and whose index describes it truthfully, so only the
    extractor's rules stand between it and the filesystem."""
    dest.mkdir()
    packed = bytearray()

    class Sink:
        def write(self, data: bytes) -> int:
            packed.extend(data)
            return len(data)

    writer = compressor(Compression.ZSTD, Sink())  # type: ignore[arg-type]
    writer.write(tar)
    writer.finish()
    digest = Digest.of_bytes(bytes(packed))
    (dest / f"{digest.encoded}.tar.zst").write_bytes(packed)
    mount = {
        "id": id,
        "blob": {
            "mediaType": "application/vnd.oci.image.layer.v1.tar+zstd",
            "digest": str(digest),
            "size": len(packed),
        },
        "diff_id": str(Digest.of_bytes(tar)),
        "size": len(tar),
        "content": 1,
        "uid": 0,
        "gid": 0,
        "mode": 0o755,
        "mtime": 0,
        "created": 0,
        "last_used": 0,
    }
    (dest / "cachemounts.json").write_text(json.dumps({"version": 1, "mounts": [mount]}))


HOSTILE = {
    "dot-dot": archive(file("../../../../../../escaped")),
    "absolute": archive(file("/tmp/escaped-absolute")),
    "symlink-escape": archive(symlink("link", "../../../../../.."), file("link/tmp/escaped-through-link")),
    "hardlink-escape": archive(hardlink("h", "../../../../../../etc/hostname")),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_tarball_is_refused_and_writes_nothing_outside(tmp_path: Path, case: str) -> None:
    root = tmp_path / "store"
    with CacheMountStore(root).open("victim") as data:
        (data / "mine").write_text("untouched")
    ok("--root", str(root), "cache", "mounts", "ls")  # the store's own files, before the snapshot
    before = snapshot(tmp_path)
    _hostile_export(tmp_path / "evil", "victim", HOSTILE[case])
    result = run_pybuild("--root", str(root), "cache", "mounts", "import", str(tmp_path / "evil"))
    assert result.code == 1, result
    assert "refused" in result.err and "Traceback" not in result.err
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("evil")} == before
    for path in ("/escaped", "/tmp/escaped", "/tmp/escaped-absolute", "/tmp/escaped-through-link"):
        assert not os.path.lexists(path)
    assert (CacheMountStore(root).path("victim") / "data" / "mine").read_text() == "untouched"


def test_an_index_cannot_name_a_file_outside_its_directory(tmp_path: Path) -> None:
    _hostile_export(tmp_path / "evil", "x", archive(directory("d")))
    index = json.loads((tmp_path / "evil" / "cachemounts.json").read_text())
    index["mounts"][0]["blob"]["digest"] = "sha256:../../../../etc/passwd"
    (tmp_path / "evil" / "cachemounts.json").write_text(json.dumps(index))
    result = run_pybuild("cache", "mounts", "import", str(tmp_path / "evil"))
    assert result.code == 1 and "not a usable cache mounts export" in result.err


def test_prune_leaves_cache_mounts_and_cache_prune_all_removes_them(tmp_path: Path) -> None:
    root = tmp_path / "store"
    for id in ("/root/.cache/pip", "/go/pkg/mod"):
        with CacheMountStore(root).open(id) as data:
            (data / "f").write_text("x")
    ok("--root", str(root), "prune", "-f")
    ok("--root", str(root), "cache", "prune", "-f")
    assert len(CacheMountStore(root).list()) == 2
    out = ok("--root", str(root), "cache", "prune", "--all", "-f").out
    assert out == "Deleted 0 cache entries and 2 cache mounts, reclaimed 2B\n"
    assert CacheMountStore(root).list() == []
    with CacheMountStore(root).open("again") as data:
        (data / "f").write_text("x")
    assert json.loads(ok("--root", str(root), "cache", "prune", "--all", "-f", "--format", "json").out) == {
        "deleted": [],
        "reclaimed": 1,
        "cache_mounts": ["again"],
    }
    with CacheMountStore(root).open("again"):
        pass
    assert ok("--root", str(root), "cache", "mounts", "rm", "again").out == "Removed: again\n"
    gone = run_pybuild("--root", str(root), "cache", "mounts", "rm", "again")
    assert gone.code == 1 and "no cache mount 'again'" in gone.err


# ------------------------------------------------------------------------------------------ with real builds

CACHED_RUN = """\
FROM busybox
RUN --mount=type=cache,id=tool-cache,target=/root/.cache/tool,sharing=locked \\
    n=$(cat /root/.cache/tool/n 2>/dev/null || echo 0); echo "runs=$n"; echo $((n+1)) > /root/.cache/tool/n; \\
    echo cache-only-$(({a} * {b})) > /root/.cache/tool/marker; echo built > /built.txt
"""


def _blobs_holding(root: Path, needle: bytes) -> list[str]:
    """The store's blobs (layers, decompressed when compressed) and snapshots whose bytes contain ``needle``."""
    from oci.compression import decompress_stream

    found = []
    for blob in (root / "blobs" / "sha256").iterdir():
        with open(blob, "rb") as raw:
            _, plain = decompress_stream(raw)
            if needle in plain.read():
                found.append(blob.name)
    for path in (root / "snapshots").rglob("*"):
        if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
            found.append(str(path))
    return found


def test_a_build_keeps_its_cache_mount_out_of_every_layer_and_another_store_builds_with_it(
    tmp_path: Path, busybox_tar: Path, busybox: str, store_root: Path
) -> None:
    # The marker is computed by the step, so the Dockerfile (and the history and the key records) never holds it.
    a, b = (int.from_bytes(os.urandom(3), "big") + 10_000_000 for _ in range(2))
    marker = f"cache-only-{a * b}"
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(CACHED_RUN.format(a=a, b=b))

    def build(root: Path, *args: str) -> str:
        result = run_pybuild("--root", str(root), "build", "--progress", "plain", *args, "-t", "app", str(ctx))
        assert result.code == 0, result
        return result.err

    assert "runs=0" in build(store_root)
    assert "runs=1" in build(store_root, "--no-cache")  # the mount survived the first build
    assert "CACHED" in build(store_root)  # a hit does not run, so the mount is not used
    assert _blobs_holding(store_root, marker.encode()) == []  # in no layer, config or snapshot
    data = CacheMountStore(store_root).path("tool-cache") / "data"
    assert (data / "marker").read_text() == f"{marker}\n" and (data / "n").read_text() == "2\n"

    ok("--root", str(store_root), "cache", "mounts", "export", str(tmp_path / "mounts"))
    other = tmp_path / "other"
    ok("--root", str(other), "import", "-q", str(busybox_tar), "busybox")
    ok("--root", str(other), "cache", "mounts", "import", str(tmp_path / "mounts"))
    assert "runs=2" in build(other)  # a fresh store, yet the step starts from the exported cache
    assert _blobs_holding(other, marker.encode()) == []
