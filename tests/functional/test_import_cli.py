"""``pybuild import``, ``images`` and ``inspect`` as a user runs them, and the store as other OCI tools see it."""

from __future__ import annotations

import gzip
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
import zstandard
from conftest import CLIResult, require_root, require_tool, run_pybuild
from tartools import archive, file

REF = "docker.io/library/busybox:latest"


def _import(tar: Path, *args: str, env: dict[str, str] | None = None) -> CLIResult:
    result = run_pybuild("import", str(tar), "-t", "busybox", "--change", 'CMD ["sh"]', *args, env=env)
    assert result.code == 0, result
    return result


@pytest.fixture
def imported(busybox_tar: Path, store_root: Path) -> str:
    require_root()
    result = _import(busybox_tar)
    image_id = result.out.strip()
    assert image_id.startswith("sha256:") and len(image_id) == 71
    return image_id


def test_images_lists_the_import(imported: str) -> None:
    table = run_pybuild("images")
    assert table.code == 0
    header, row = table.out.splitlines()
    assert header.split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    assert row.split()[:3] == ["busybox", "latest", imported[7:19]]
    (line,) = run_pybuild("images", "--format", "json").out.splitlines()
    listed = json.loads(line)
    assert (listed["Name"], listed["ID"], listed["Repository"], listed["Tag"]) == (REF, imported, "busybox", "latest")
    assert run_pybuild("images", "-q").out.split() == [imported[7:19]]
    assert run_pybuild("images", "-q", "--filter", "reference=nothing*").out == ""
    assert run_pybuild("images", "-q", "--filter", "reference=busy*").out.split() == [imported[7:19]]


def test_inspect_shows_config_manifest_and_layers(imported: str) -> None:
    result = run_pybuild("inspect", "busybox")
    assert result.code == 0, result
    (info,) = json.loads(result.out)
    assert info["Id"] == imported
    assert info["RepoTags"] == ["busybox:latest"]
    assert info["Config"]["Cmd"] == ["sh"]
    assert (info["Os"], info["Architecture"]) == ("linux", "amd64")
    assert len(info["RootFS"]["Layers"]) == 1 and len(info["Manifest"]["layers"]) == 1
    assert info["History"][0]["comment"] == "Imported from rootfs.tar"
    for name in (imported, imported[7:19], info["Digest"], REF):
        assert json.loads(run_pybuild("inspect", name).out)[0]["Id"] == imported


def test_skopeo_reads_the_store(imported: str, store_root: Path) -> None:
    skopeo = require_tool("skopeo")
    out = subprocess.run([skopeo, "inspect", f"oci:{store_root}:{REF}"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    ours = json.loads(run_pybuild("inspect", "busybox").out)[0]
    assert info["Digest"] == ours["Digest"]
    assert info["Layers"] == [layer["digest"] for layer in ours["Manifest"]["layers"]]
    raw = subprocess.run([skopeo, "inspect", "--config", f"oci:{store_root}:{REF}"], capture_output=True, text=True)
    assert json.loads(raw.stdout)["rootfs"]["diff_ids"] == ours["RootFS"]["Layers"]


def test_umoci_unpacks_the_image_and_verifies_every_digest(imported: str, store_root: Path, tmp_path: Path) -> None:
    umoci = require_tool("umoci")
    bundle = tmp_path / "bundle"
    out = subprocess.run(
        [umoci, "unpack", "--image", f"{store_root}:{REF}", str(bundle)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    rootfs = bundle / "rootfs"
    assert (rootfs / "bin" / "busybox").read_bytes() == Path("/bin/busybox").read_bytes()
    assert os.stat(rootfs / "bin" / "busybox").st_mode & stat.S_IXUSR
    assert os.readlink(rootfs / "bin" / "sh") == "/bin/busybox"
    assert stat.S_IMODE(os.stat(rootfs / "tmp").st_mode) == 0o1777
    config = json.loads((bundle / "config.json").read_text())
    assert config["process"]["args"] == ["sh"]


def test_oci_image_tool_validates_the_store(imported: str, store_root: Path) -> None:
    tool = require_tool("oci-image-tool")
    out = subprocess.run(
        [tool, "validate", "--type", "image", "--ref", f"name={REF}", str(store_root)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Validation succeeded" in out.stdout + out.stderr


def test_imports_are_reproducible_with_source_date_epoch(busybox_tar: Path, tmp_path: Path) -> None:
    require_root()
    raw = busybox_tar.read_bytes()
    (tmp_path / "rootfs.tar.gz").write_bytes(gzip.compress(raw, mtime=123))
    (tmp_path / "rootfs.tar.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    env = {"SOURCE_DATE_EPOCH": "1700000000"}
    ids = []
    for i, source in enumerate([busybox_tar, tmp_path / "rootfs.tar.gz", tmp_path / "rootfs.tar.zst"]):
        renamed = tmp_path / f"in{i}" / "rootfs.tar"  # the history comment names the file: keep it equal
        renamed.parent.mkdir()
        renamed.write_bytes(source.read_bytes())
        result = _import(renamed, "--root", str(tmp_path / f"store{i}"), env=env)
        ids.append(result.out.strip())
    assert len(set(ids)) == 1, "same files, any compression, any store: the same image"
    info = json.loads(run_pybuild("--root", str(tmp_path / "store0"), "inspect", "busybox").out)[0]
    assert info["Created"] == "2023-11-14T22:13:20Z"


def test_import_from_standard_input(busybox_tar: Path) -> None:
    require_root()
    result = run_pybuild("import", "-", "fromstdin:1", "-q", input=busybox_tar.read_bytes())
    assert result.code == 0, result
    info = json.loads(run_pybuild("inspect", "fromstdin:1").out)[0]
    assert info["History"][0]["comment"] == "Imported from -"


def test_root_option_wins_over_pybuild_root(busybox_tar: Path, tmp_path: Path, store_root: Path) -> None:
    require_root()
    _import(busybox_tar, "--root", str(tmp_path / "elsewhere"))
    assert (tmp_path / "elsewhere" / "index.json").exists()
    assert not (store_root / "index.json").exists()


# ------------------------------------------------------------------------------------------------- errors


def _one_line_error(result: CLIResult, code: int, *fragments: str) -> None:
    assert result.code == code, result
    # Progress lines may come first; the error is the one last line.
    lines = result.err.strip().splitlines()
    errors = [line for line in lines if line.startswith("pybuild: ")]
    assert errors == lines[-1:], result.err
    assert "Traceback" not in result.err
    for fragment in fragments:
        assert fragment in errors[0]


def test_a_missing_rootfs_is_one_clear_line() -> None:
    _one_line_error(run_pybuild("import", "/nonexistent.tar", "x"), 1, "nonexistent.tar", "no such file")


def test_a_hostile_rootfs_is_refused(tmp_path: Path, store_root: Path) -> None:
    evil = tmp_path / "evil.tar"
    evil.write_bytes(archive(file("ok", b"fine"), file("../../escape", b"owned")))
    _one_line_error(run_pybuild("import", str(evil), "evil"), 1, "evil.tar", "outside the root")
    assert not (tmp_path / "escape").exists() and not (store_root.parent / "escape").exists()
    assert run_pybuild("images", "-q").out == ""
    assert os.listdir(store_root / "tmp") == [], "the scratch tree is removed on failure"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("import", "x.tar", "Bad:Name"), "must be lowercase"),
        (("import", "x.tar", "-t", "a@sha256:" + "0" * 64), "digest"),
        (("import", "x.tar", "--platform", "linux/amd64!"), "invalid component"),
        (("import", "x.tar", "--change", "RUN x"), "not supported"),
        (("import", "x.tar", "--compression", "lz4"), "unknown compression"),
        (("imagse",), "did you mean 'images'"),
        (("images", "--bogus"), "unrecognized arguments"),
    ],
)
def test_usage_errors_exit_2(args: tuple[str, ...], fragment: str) -> None:
    _one_line_error(run_pybuild(*args), 2, fragment)


def test_inspect_of_a_missing_image_fails() -> None:
    result = run_pybuild("inspect", "nothing-here")
    assert result.code == 1
    assert "no such image: nothing-here" in result.err
    assert json.loads(result.out) == []


def test_debug_shows_the_traceback() -> None:
    result = run_pybuild("--debug", "import", "/nonexistent.tar", "x")
    assert result.code == 1
    assert "Traceback" in result.err


def test_help_has_examples() -> None:
    assert run_pybuild("--help").code == 0
    for verb in ("import", "images", "inspect"):
        result = run_pybuild(verb, "--help")
        assert result.code == 0 and "examples:" in result.out
