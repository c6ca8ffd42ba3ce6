"""The store verbs as users run them against images built in the test: ``images`` (untagged rows, filters),
``tag``, ``rmi``, ``prune``, ``system df``, ``history``, ``inspect``, ``save``/``load`` (both formats, checked by
skopeo, into a fresh store) and ``export`` (the flattened tree, a file deleted by a later layer included).

The acceptance: a re-tag leaves a ``<none>`` image that ``prune -f`` removes, reporting what it reclaimed; after the
prune every tagged image still verifies (skopeo, oci-image-tool, every blob and diff_id) and a rebuild is fully
cached; archives round-trip with the same image ID.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest
from conftest import REPO, CLIResult, require_tool, run_pybuild, run_pybuild_on_a_terminal, write_context
from test_docker_load import docker  # noqa: F401 - the private dockerd fixture, for docker load and save

from builder.platforms import host_platform
from oci.image import validate_image
from oci.layout import ImageLayout

APP = "docker.io/library/app:latest"
DOCKERFILE = """\
FROM busybox
ENV GREETING=hello
COPY gone.txt kept.txt /data/
RUN echo "$GREETING {version}" > /data/run.txt && rm /data/gone.txt
"""


def ok(*args: str, **kwargs: object) -> str:
    result = run_pybuild(*args, **kwargs)  # type: ignore[arg-type]
    assert result.code == 0, result
    return result.out


def pybuild_bytes(*args: str, input: bytes | None = None) -> bytes:
    """Standard output as bytes (an archive), for a command that must succeed."""
    proc = subprocess.run([sys.executable, "-m", "builder", *args], input=input, capture_output=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def store() -> Path:
    return Path(os.environ["PYBUILD_ROOT"])


def last_error(result: CLIResult) -> str:
    lines = result.err.strip().splitlines()
    assert lines and "Traceback" not in result.err, result
    return lines[-1]


def build(context: Path, version: str, *args: str) -> str:
    write_context(context, DOCKERFILE.format(version=version), {"gone.txt": "deleted later\n", "kept.txt": "kept\n"})
    return ok("build", "-q", "-t", "app", *args, str(context)).strip()


def image_ids(*args: str) -> list[str]:
    return ok("images", "-q", "--no-trunc", *args).split()


def check_store(root: Path) -> None:
    """Every tagged image is whole: skopeo and oci-image-tool read it, every blob and diff_id verifies."""
    skopeo, validator = require_tool("skopeo"), require_tool("oci-image-tool")
    layout = ImageLayout.open(root)
    # oci-image-tool reads every file under the directory it is given, snapshots' whiteout devices included: give
    # it the layout alone (its files hard-linked).
    alone = Path(tempfile.mkdtemp(prefix="layout-", dir=root.parent))
    (alone / "blobs" / "sha256").mkdir(parents=True)
    for name in ("oci-layout", "index.json"):
        os.link(root / name, alone / name)
    for blob in (root / "blobs" / "sha256").iterdir():
        os.link(blob, alone / "blobs" / "sha256" / blob.name)
    for entry in layout.tags():
        name = entry.ref_name
        assert name
        out = subprocess.run([skopeo, "inspect", f"oci:{root}:{name}"], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        out = subprocess.run(
            [validator, "validate", "--type", "image", "--ref", f"name={name}", str(alone)],
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        image = layout.image(entry, host_platform())
        validate_image(image)
        for blob in (image.digest, image.id):
            layout.store.verify(blob)


def all_cached() -> None:
    explained = json.loads(ok("cache", "explain", "--format", "json"))
    assert explained["steps"] and {step["status"] for step in explained["steps"]} == {"cached"}, explained


# ----------------------------------------------------------------------------------- dangling and prune


def test_a_retag_leaves_a_dangling_image_that_prune_removes(tmp_path: Path, busybox: str, store_root: Path) -> None:
    first = build(tmp_path / "ctx", "1")
    second = build(tmp_path / "ctx", "2")
    assert first != second
    table = ok("images").splitlines()
    assert table[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    rows = {tuple(line.split()[:3]) for line in table[1:]}
    assert rows == {
        ("app", "latest", second[7:19]),
        ("<none>", "<none>", first[7:19]),
        ("busybox", "latest", busybox[7:19]),
    }
    assert image_ids("--filter", "dangling=true") == [first]
    assert image_ids("-a") == image_ids()  # no intermediate images: -a lists the same
    assert set(image_ids("--filter", "dangling=false")) == {second, busybox}
    listed = [json.loads(line) for line in ok("images", "--format", "json", "--filter", "dangling=true").splitlines()]
    assert [(row["Repository"], row["Tag"], row["ID"]) for row in listed] == [("<none>", "<none>", first)]
    sizes = {path: path.stat().st_size for path in (store_root / "blobs" / "sha256").iterdir()}

    usage = {json.loads(line)["Type"]: json.loads(line) for line in ok("system", "df", "--format", "json").splitlines()}
    pruned = ok("prune", "-f")  # standard input is not a terminal: no question either way
    assert f"deleted: {first}" in pruned.splitlines()
    reclaimed = re.search(r"^Total reclaimed space: (\S+)$", pruned, re.M)
    assert reclaimed and reclaimed.group(1) != "0B", pruned
    gone = sizes.keys() - set((store_root / "blobs" / "sha256").iterdir())
    assert gone and usage["Blobs"]["Reclaimable"] == sum(sizes[path] for path in gone)
    assert usage["Images"]["Reclaimable"] == usage["Blobs"]["Reclaimable"]  # the step cache holds the layers
    assert image_ids("--filter", "dangling=true") == []
    assert set(image_ids()) == {second, busybox}
    check_store(store_root)
    # The step cache kept what it needs: the same build again runs nothing and makes the same image.
    assert build(tmp_path / "ctx", "2") == second
    all_cached()
    again = json.loads(ok("prune", "-f", "--format", "json"))
    assert again == {"ImagesDeleted": [], "BlobsDeleted": [], "SnapshotsDeleted": [], "SpaceReclaimed": 0}


def test_prune_keeps_what_the_cache_needs_after_rmi(tmp_path: Path, busybox: str, store_root: Path) -> None:
    built = build(tmp_path / "ctx", "1")
    removed = ok("rmi", "app").splitlines()
    assert removed[0] == "Untagged: app:latest" and removed[1] == f"Deleted: {built}"
    ok("prune", "-f")
    check_store(store_root)
    assert build(tmp_path / "ctx", "1") == built  # every layer came back from the cache
    all_cached()


def test_prune_reports_json_and_refuses_unknown_filters(tmp_path: Path, busybox: str) -> None:
    rootfs = tmp_path / "rootfs.tar"
    with tarfile.open(rootfs, "w") as tar:
        entry = tarfile.TarInfo("etc/")
        entry.type = tarfile.DIRTYPE
        tar.addfile(entry)
    ok("tag", "busybox", "other")
    ok("import", "-q", str(rootfs), "other")  # moves "other"; busybox still names the image it left
    assert image_ids("--filter", "dangling=true") == []
    result = run_pybuild("prune", "-f", "--filter", "label=x")
    assert result.code == 2 and "unsupported filter" in last_error(result)
    ok("tag", "busybox", "other")  # the imported image is left untagged
    (dangling,) = image_ids("--filter", "dangling=true")
    report = json.loads(ok("prune", "-f", "--filter", "until=1h", "--format", "json"))
    assert report["ImagesDeleted"] == []  # made a moment ago
    report = json.loads(ok("prune", "-a", "-f", "--format", "json"))
    assert [item["Deleted"] for item in report["ImagesDeleted"]] == [dangling]
    assert report["SpaceReclaimed"] == sum(item["Size"] for item in report["BlobsDeleted"]) + sum(
        item["Size"] for item in report["SnapshotsDeleted"]
    )
    assert set(image_ids()) == {busybox}


def prune_on_a_terminal(answer: str, *args: str) -> CLIResult:
    return run_pybuild_on_a_terminal(answer, "prune", *args)


def test_prune_asks_on_a_terminal_unless_forced(tmp_path: Path, busybox: str) -> None:
    first = build(tmp_path / "ctx", "1")
    build(tmp_path / "ctx", "2")
    refused = prune_on_a_terminal("n")
    assert refused.code == 1 and refused.err.startswith("WARNING! This will remove:\n  - all dangling images (1)\n")
    assert refused.err.endswith("Are you sure you want to continue? [y/N] pybuild: aborted\n"), refused
    assert image_ids("--filter", "dangling=true") == [first]
    agreed = prune_on_a_terminal("y")
    assert agreed.code == 0 and f"deleted: {first}" in agreed.out, agreed
    assert image_ids("--filter", "dangling=true") == []
    forced = prune_on_a_terminal("n", "-f")
    assert forced.code == 0 and forced.err == "" and forced.out == "Total reclaimed space: 0B\n"


# ------------------------------------------------------------------------------------------- tag and rmi


def test_tag_and_rmi_follow_docker(tmp_path: Path, busybox: str) -> None:
    built = build(tmp_path / "ctx", "1")
    ok("tag", built[7:19], "registry.example.com/team/app:2")
    ok("tag", "app", "app:3")
    assert {json.loads(line)["Name"] for line in ok("images", "app", "--format", "json").splitlines()} == {
        APP,
        "docker.io/library/app:3",
    }
    assert ok("rmi", "app:3") == "Untagged: app:3\n"  # other names hold it: only untagged
    result = run_pybuild("rmi", built[7:19])
    assert result.code == 1
    assert last_error(result).endswith(
        f"unable to delete {built[7:19]} (must be forced) - image is referenced in multiple repositories"
    )
    result = run_pybuild("rmi", "-f", built[7:19], "nothing")
    assert result.code == 1 and last_error(result) == "pybuild: no such image: nothing"
    lines = result.out.splitlines()
    assert sorted(lines[:2]) == ["Untagged: app:latest", "Untagged: registry.example.com/team/app:2"]
    assert lines[2] == f"Deleted: {built}" and all(line.startswith("Deleted: sha256:") for line in lines[3:])
    assert image_ids() == [busybox]
    for args, message in (
        (("tag", "busybox", f"app@{built}"), "digest"),
        (("tag", "missing", "app"), "no such image: missing"),
        (("images", "--filter", "bogus=1"), "invalid filter"),
    ):
        result = run_pybuild(*args)
        assert result.code == (1 if "missing" in message else 2) and message in last_error(result), result


# -------------------------------------------------------------------------------- history, inspect, df


def test_history_shows_each_step_newest_first(tmp_path: Path, busybox: str) -> None:
    built = build(tmp_path / "ctx", "1")
    table = ok("history", "app").splitlines()
    assert re.split(r"\s{2,}", table[0]) == ["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"]
    rows = [re.split(r"\s{2,}", line.strip()) for line in table[1:]]
    assert [row[0] for row in rows] == [built[7:19], "<missing>", "<missing>", "<missing>"]
    assert rows[0][2].startswith("RUN /bin/sh -c echo") and rows[0][2].endswith("…") and len(rows[0][2]) == 45
    assert rows[2][2:4] == ["ENV GREETING=hello", "0B"]  # an empty layer
    assert rows[3][2] == "pybuild import"
    history = [json.loads(line) for line in ok("history", "--format", "json", "--no-trunc", "app").splitlines()]
    assert history[0]["ID"] == built and history[0]["CreatedBy"].endswith("rm /data/gone.txt # buildkit")
    assert [h["EmptyLayer"] for h in history] == [False, False, True, False]
    assert all(h["Size"] > 0 for h in history if not h["EmptyLayer"])
    assert ok("history", "-q", built[7:19]).split() == [built[7:19], "<missing>", "<missing>", "<missing>"]


def test_inspect_several_images_and_system_df(tmp_path: Path, busybox: str) -> None:
    built = build(tmp_path / "ctx", "1")
    infos = json.loads(ok("inspect", "app", busybox[7:19]))
    assert [info["Id"] for info in infos] == [built, busybox]
    assert len(infos[0]["Layers"]) == len(infos[0]["Manifest"]["layers"]) == len(infos[0]["RootFS"]["Layers"]) == 3
    assert infos[0]["Config"]["Env"][-1] == "GREETING=hello"
    table = ok("system", "df").splitlines()
    assert [line.split()[0] for line in table] == ["TYPE", "Images", "Blobs", "Snapshots", "Build", "Cache"]
    rows = {row["Type"]: row for row in map(json.loads, ok("system", "df", "--format", "json").splitlines())}
    assert rows["Images"]["TotalCount"] == 2 and rows["Images"]["Reclaimable"] == 0
    assert rows["Build Cache"]["TotalCount"] == 2 and rows["Cache Mounts"]["Size"] == 0
    verbose = json.loads(ok("system", "df", "-v", "--format", "json"))
    assert {image["ID"] for image in verbose["Images"]} == {built, busybox}
    assert "Images space usage:" in ok("system", "df", "-v")


# --------------------------------------------------------------------------------- save, load, export


@pytest.mark.parametrize("kind", ["docker", "oci"])
def test_save_and_load_round_trip_through_skopeo(tmp_path: Path, busybox: str, kind: str) -> None:
    skopeo = require_tool("skopeo")
    built = build(tmp_path / "ctx", "1")
    archive = tmp_path / "app.tar"
    ok("save", "--format", kind, "-o", str(archive), "app")
    transport = "docker-archive" if kind == "docker" else "oci-archive"
    out = subprocess.run([skopeo, "inspect", f"{transport}:{archive}"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)["Layers"]) == 3
    copied = tmp_path / "copied"
    out = subprocess.run([skopeo, "copy", "-q", f"{transport}:{archive}", f"oci:{copied}:x"], capture_output=True)
    assert out.returncode == 0, out.stderr

    fresh = tmp_path / "fresh"
    assert ok("--root", str(fresh), "load", "-i", str(archive)) == "Loaded image: app:latest\n"
    assert ok("--root", str(fresh), "images", "-q", "--no-trunc") == f"{built}\n"
    check_store(fresh)
    # Standard output to standard input, into another store, as 'docker save | docker load'.
    raw = pybuild_bytes("save", "--format", kind, "app")
    assert raw == archive.read_bytes()  # the same archive, byte for byte
    other = tmp_path / "other"
    loaded = run_pybuild("--root", str(other), "load", input=raw)
    assert loaded.code == 0 and loaded.out == "Loaded image: app:latest\n", loaded
    assert ok("--root", str(other), "images", "-q", "--no-trunc") == f"{built}\n"


def test_load_reads_what_skopeo_writes_and_refuses_a_broken_archive(tmp_path: Path, busybox: str) -> None:
    skopeo = require_tool("skopeo")
    archive = tmp_path / "skopeo.tar"
    source = f"oci:{store()}:docker.io/library/busybox:latest"
    out = subprocess.run(
        [skopeo, "copy", "-q", source, f"docker-archive:{archive}:example.com/copied:1"], capture_output=True
    )
    assert out.returncode == 0, out.stderr
    fresh = tmp_path / "fresh"
    assert ok("--root", str(fresh), "load", "-i", str(archive)) == "Loaded image: example.com/copied:1\n"
    assert ok("--root", str(fresh), "images", "-q", "--no-trunc") == f"{busybox}\n"
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF  # flip a byte in the middle of the layer
    (tmp_path / "broken.tar").write_bytes(bytes(data))
    broken = tmp_path / "broken-store"
    result = run_pybuild("--root", str(broken), "load", "-i", str(tmp_path / "broken.tar"))
    assert result.code == 1 and "pybuild:" in last_error(result)
    assert ok("--root", str(broken), "images", "-q") == ""


def test_export_is_the_flattened_tree(tmp_path: Path, busybox: str) -> None:
    build(tmp_path / "ctx", "1")
    exported = tmp_path / "rootfs.tar"
    ok("export", "-o", str(exported), "app")
    flattened = tmp_path / "flat.tar"
    ok("build", "-q", "--output", f"type=tar,dest={flattened}", str(tmp_path / "ctx"))
    assert exported.read_bytes() == flattened.read_bytes()
    with tarfile.open(exported) as tar:
        names = set(tar.getnames())
        assert {"data/kept.txt", "data/run.txt", "bin/busybox"} <= names
        assert "data/gone.txt" not in names and not any(".wh." in name for name in names)
        run = tar.extractfile("data/run.txt")
        assert run is not None and run.read() == b"hello 1\n"
    # The layer that had it still has it: the export applied the deletion.
    history = [json.loads(line) for line in ok("history", "--format", "json", "app").splitlines()]
    copy_layer = history[1]["Layer"]
    blob = store() / "blobs" / "sha256" / copy_layer.split(":")[1]
    with tarfile.open(fileobj=io.BytesIO(blob.read_bytes())) as tar:
        assert "data/gone.txt" in tar.getnames()
    assert pybuild_bytes("export", "app") == exported.read_bytes()  # to standard output too


def test_docker_loads_what_save_writes_and_load_reads_what_docker_saves(
    tmp_path: Path,
    busybox: str,
    docker: list[str],  # noqa: F811 - the imported fixture
) -> None:
    built = build(tmp_path / "ctx", "1")
    archive = tmp_path / "app.tar"
    ok("save", "-o", str(archive), "app")
    loaded = subprocess.run([*docker, "load", "-i", str(archive)], capture_output=True, text=True)
    assert loaded.returncode == 0 and "Loaded image: app:latest" in loaded.stdout, loaded.stderr
    (info,) = json.loads(subprocess.run([*docker, "image", "inspect", "app"], capture_output=True, check=True).stdout)
    assert info["Id"] == built
    ran = subprocess.run(
        [*docker, "run", "--rm", "--network", "none", "app", "cat", "/data/run.txt"], capture_output=True
    )
    assert ran.stdout == b"hello 1\n", ran.stderr
    back = tmp_path / "back.tar"
    subprocess.run([*docker, "save", "-o", str(back), "app"], capture_output=True, check=True)
    fresh = tmp_path / "fresh"
    assert ok("--root", str(fresh), "load", "-i", str(back)) == "Loaded image: app:latest\n"
    assert ok("--root", str(fresh), "images", "-q", "--no-trunc") == f"{built}\n"
    check_store(fresh)
