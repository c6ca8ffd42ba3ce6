"""Real builds, as a user runs them: ``pybuild build`` on a busybox base imported from Debian's busybox-static.

The conformance suite (tests/conformance) checks file trees and configs against BuildKit's; these tests cover
what it cannot: the command line (tags, -q, --iidfile, --label, --output, --network, --progress, --log-file),
reproducibility, ADD from a URL, named build contexts, platform selection, ONBUILD across images, failures and
interruptions, and what other tools (umoci, skopeo) make of the result.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import zstandard
from conftest import REPO, CLIResult, HTTPFiles, interruptible, require_tool, run_pybuild, write_context

BUSYBOX = "docker.io/library/busybox:latest"


def context(tmp_path: Path, dockerfile: str, files: dict[str, str] | None = None, name: str = "ctx") -> Path:
    return write_context(tmp_path / name, dockerfile, files)


def build(*args: str, env: dict[str, str] | None = None) -> CLIResult:
    result = run_pybuild("build", "--progress", "plain", *args, env=env)
    return result


def inspect(name: str) -> dict:
    result = run_pybuild("inspect", name)
    assert result.code == 0, result
    return json.loads(result.out)[0]


def last_error(result: CLIResult) -> str:
    lines = result.err.strip().splitlines()
    assert lines and "Traceback" not in result.err, result
    return lines[-1]


def unpack(tmp_path: Path, name: str) -> Path:
    """The image's root filesystem, through --output type=local of a no-op build would be circular: use umoci."""
    umoci = require_tool("umoci")
    bundle = tmp_path / f"bundle-{name.replace('/', '_').replace(':', '_')}"
    root = Path(os.environ["PYBUILD_ROOT"])
    ref = inspect(name)["Names"][0]
    out = subprocess.run([umoci, "unpack", "--image", f"{root}:{ref}", str(bundle)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return bundle / "rootfs"


# ------------------------------------------------------------------------------------------- the basics


DOCKERFILE = """\
FROM busybox
ENV GREETING=hello
WORKDIR /app
COPY greeting.txt ./
RUN echo "$GREETING from RUN" > /app/run.txt && rm /bin/vi
EXPOSE 8080/tcp
LABEL org.example.kind=demo
HEALTHCHECK --interval=5s CMD ["cat", "/app/run.txt"]
SHELL ["/bin/sh", "-ec"]
STOPSIGNAL SIGINT
ONBUILD RUN echo triggered > /onbuild.txt
CMD ["cat", "/app/greeting.txt"]
"""


def test_a_build_tags_the_image_and_prints_its_id_with_q(tmp_path: Path, busybox: str) -> None:
    ctx = context(tmp_path, DOCKERFILE, {"greeting.txt": "hi there\n"})
    iid = tmp_path / "iid"
    result = run_pybuild("-t", "demo", "-t", "demo:v1", "-q", "--iidfile", str(iid), "--label", "extra=1", str(ctx))
    assert result.code == 0, result
    image_id = result.out.strip()
    assert image_id.startswith("sha256:") and len(image_id) == 71
    assert iid.read_text() == image_id
    assert result.err == "", "-q prints no progress"
    info = inspect("demo:v1")
    assert info["Id"] == image_id and sorted(info["RepoTags"]) == ["demo:latest", "demo:v1"]
    config = info["Config"]
    assert config["Env"] == ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "GREETING=hello"]
    assert config["WorkingDir"] == "/app"
    assert config["ExposedPorts"] == {"8080/tcp": {}}
    assert config["Labels"] == {"org.example.kind": "demo", "extra": "1"}
    assert config["Healthcheck"] == {"Test": ["CMD", "cat", "/app/run.txt"], "Interval": 5_000_000_000}
    assert config["Shell"] == ["/bin/sh", "-ec"]
    assert config["StopSignal"] == "SIGINT"
    assert config["OnBuild"] == ["RUN echo triggered > /onbuild.txt"]
    assert config["Cmd"] == ["cat", "/app/greeting.txt"]
    # the base's layer, WORKDIR, COPY and RUN: four layers, and a history entry per instruction
    assert len(info["RootFS"]["Layers"]) == 4
    created_by = [h["created_by"] for h in info["History"][1:]]
    assert created_by[:4] == [
        "ENV GREETING=hello",
        "WORKDIR /app",
        "COPY greeting.txt ./ # buildkit",
        'RUN /bin/sh -c echo "$GREETING from RUN" > /app/run.txt && rm /bin/vi # buildkit',
    ]
    assert all(h["comment"] == "buildkit.dockerfile.v0" for h in info["History"][1:])
    assert [h.get("empty_layer", False) for h in info["History"][1:]] == [
        True,
        False,
        False,
        False,
        True,
        True,
        True,
        True,
        True,
        True,
    ], "ONBUILD and --label add no history entry, as in BuildKit"
    rootfs = unpack(tmp_path, "demo")
    assert (rootfs / "app" / "greeting.txt").read_text() == "hi there\n"
    assert (rootfs / "app" / "run.txt").read_text() == "hello from RUN\n"
    assert not (rootfs / "bin" / "vi").exists() and (rootfs / "bin" / "ls").is_symlink()
    for name in ("hosts", "resolv.conf", "hostname"):
        assert not (rootfs / "etc" / name).exists(), f"/etc/{name} must never enter a layer"


def test_plain_progress_streams_each_output_line_and_the_log_file_keeps_it(tmp_path: Path, busybox: str) -> None:
    ctx = context(tmp_path, "FROM busybox\nRUN echo first line && echo second line >&2\nCOPY a /a\n", {"a": "x"})
    log = tmp_path / "build.log"
    result = run_pybuild("build", "--progress", "plain", "--log-file", str(log), str(ctx))
    assert result.code == 0, result
    for text in (result.err, log.read_text()):
        assert "#2 [2/3] RUN echo first line && echo second line >&2" in text
        lines = text.splitlines()
        assert any(line.startswith("#2 ") and line.endswith(" first line") for line in lines)
        assert any(line.startswith("#2 ") and line.endswith(" second line") for line in lines)
        assert "#2 DONE" in text and "#3 [3/3] COPY a /a" in text
    quiet_log = tmp_path / "quiet.log"
    result = run_pybuild("build", "--progress", "quiet", "--log-file", str(quiet_log), str(ctx))
    assert result.code == 0 and "first line" not in result.err
    assert "first line" in quiet_log.read_text(), "the log file keeps the full plain log in every mode"


def test_a_failing_run_names_the_step_its_line_and_the_exit_code(tmp_path: Path, busybox: str) -> None:
    ctx = context(tmp_path, "FROM busybox\nRUN echo ok\nRUN echo about to fail; exit 3\nRUN echo never\n")
    result = build("-t", "broken", str(ctx))
    assert result.code == 1
    error = last_error(result)
    assert "Dockerfile:3:" in error and "exit code: 3" in error and "echo about to fail; exit 3" in error
    assert "about to fail" in result.err, "the step's output is shown"
    assert "never" not in result.err.replace("echo never", "")
    assert run_pybuild("inspect", "broken").code == 1, "a failed build tags nothing"
    tmp = Path(os.environ["PYBUILD_ROOT"]) / "tmp"
    assert not tmp.exists() or list(tmp.iterdir()) == [], "the failed step's scratch directory is removed"


def test_the_run_steps_of_a_build_are_forked_by_one_sandbox_server(tmp_path: Path, busybox: str) -> None:
    """A new interpreter per RUN costs more than a trivial step: the build starts one sandbox server (per thread that
    runs stages), and each container's init is a fork of it, so it shows the server's command line."""
    steps = "".join(f"RUN echo step{n}: $(tr '\\0' ' ' < /proc/1/cmdline)\n" for n in range(3))
    result = build(str(context(tmp_path, "FROM busybox\n" + steps)))
    assert result.code == 0, result
    shown = [m.group(1) for m in re.finditer(r"^#\d+ [\d.]+ step\d: (.*)$", result.err, re.MULTILINE)]
    assert len(shown) == 3 and len(set(shown)) == 1, result.err
    assert "-m builder.sandbox --server" in shown[0], shown


def test_a_run_that_changes_nothing_adds_no_layer(tmp_path: Path, busybox: str) -> None:
    ctx = context(tmp_path, "FROM busybox\nRUN true\nRUN touch /tmp/x && rm /tmp/x\nRUN echo > /made\n")
    assert build("-t", "quiet-run", str(ctx)).code == 0
    info = inspect("quiet-run")
    assert len(info["RootFS"]["Layers"]) == 2
    assert [h.get("empty_layer", False) for h in info["History"][1:]] == [True, True, False]


def test_big_copied_files_reach_the_next_steps_whole(tmp_path: Path, busybox: str) -> None:
    # A COPY's big files go into its layer, and from it into the snapshot the next steps see, through kernel
    # copies (tests/oci/test_kernelcopy.py); a RUN and a later COPY --from must see exactly the same bytes.
    big = bytes(range(256)) * (12 * 1024 + 3)  # 3 MiB and a bit
    ctx = context(
        tmp_path,
        "FROM busybox AS one\nCOPY big.bin small.txt /data/\nRUN sha256sum /data/big.bin /data/small.txt > /sums\n"
        "FROM busybox\nCOPY --from=one /data/big.bin /sums /\n",
        {"small.txt": "small\n"},
    )
    (ctx / "big.bin").write_bytes(big)
    assert build("-t", "big-copy", str(ctx)).code == 0
    rootfs = unpack(tmp_path, "big-copy")
    assert (rootfs / "big.bin").read_bytes() == big
    sums = (rootfs / "sums").read_text().split()
    assert sums == [
        hashlib.sha256(big).hexdigest(),
        "/data/big.bin",
        hashlib.sha256(b"small\n").hexdigest(),
        "/data/small.txt",
    ]


def test_exec_form_run_and_shell_and_user(tmp_path: Path, busybox: str) -> None:
    dockerfile = """\
FROM busybox
RUN ["/bin/sh", "-c", "echo 'app:x:1000:1000::/home/app:/bin/sh' >> /etc/passwd && echo 'app:x:1000:' >> /etc/group"]
RUN ["/bin/sh", "-c", "mkdir -p /home/app && chown app /home/app"]
RUN ["/bin/echo", "$HOME is not expanded"]
SHELL ["/bin/sh", "-c", "echo shell-was-used > /shell.txt; eval \\"$0\\""]
RUN true
USER app
RUN id -un > /home/app/me && echo "$HOME" >> /home/app/me
USER 1000:0
RUN id > /tmp/id
"""
    ctx = context(tmp_path, dockerfile)
    result = build("-t", "users", str(ctx))
    assert result.code == 0, result
    assert "$HOME is not expanded" in result.err
    rootfs = unpack(tmp_path, "users")
    assert (rootfs / "shell.txt").read_text() == "shell-was-used\n"
    assert (rootfs / "home" / "app" / "me").read_text() == "app\n/home/app\n"
    assert (rootfs / "tmp" / "id").read_text() == "uid=1000(app) gid=0(root)\n"
    assert os.stat(rootfs / "tmp" / "id").st_uid == 1000


def test_network_none_leaves_only_loopback(tmp_path: Path, busybox: str) -> None:
    ctx = context(
        tmp_path, "FROM busybox\nRUN ls /sys/class/net > /net.txt\nRUN --network=host ls /sys/class/net > /host.txt\n"
    )
    assert build("--network", "none", "-t", "isolated", str(ctx)).code == 0
    rootfs = unpack(tmp_path, "isolated")
    assert (rootfs / "net.txt").read_text() == "lo\n"
    assert (rootfs / "host.txt").read_text().split() == sorted(os.listdir("/sys/class/net"))


# --------------------------------------------------------------------------------------------- outputs


def test_outputs_are_accepted_by_umoci_and_skopeo(tmp_path: Path, busybox: str) -> None:
    ctx = context(tmp_path, DOCKERFILE, {"greeting.txt": "hi\n"})
    layout, oci_tar, docker_tar = tmp_path / "layout", tmp_path / "image.oci.tar", tmp_path / "image.docker.tar"
    local, rootfs_tar = tmp_path / "local", tmp_path / "rootfs.tar"
    result = build(
        "-t",
        "out:1",
        "--output",
        f"type=oci,dest={layout},tar=false",
        "--output",
        f"type=oci,dest={oci_tar}",
        "--output",
        f"type=docker,dest={docker_tar}",
        "--output",
        f"type=local,dest={local}",
        "--output",
        f"type=tar,dest={rootfs_tar}",
        str(ctx),
    )
    assert result.code == 0, result
    umoci, skopeo = require_tool("umoci"), require_tool("skopeo")
    bundle = tmp_path / "bundle"
    out = subprocess.run([umoci, "unpack", "--image", f"{layout}:1", str(bundle)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (bundle / "rootfs" / "app" / "run.txt").read_text() == "hello from RUN\n"
    manifest = json.loads(
        subprocess.run(
            [skopeo, "inspect", "--raw", f"oci:{layout}:1"], capture_output=True, text=True, check=True
        ).stdout
    )
    assert {layer["mediaType"] for layer in manifest["layers"]} == {"application/vnd.oci.image.layer.v1.tar+gzip"}
    copied = tmp_path / "copied.tar"
    out = subprocess.run(
        [skopeo, "copy", f"oci:{layout}:1", f"docker-archive:{copied}:out:1"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    for name in (f"docker-archive:{docker_tar}", f"docker-archive:{copied}", f"oci-archive:{oci_tar}"):
        info = json.loads(subprocess.run([skopeo, "inspect", name], capture_output=True, text=True, check=True).stdout)
        assert len(info["Layers"]) == 4, name
    assert (local / "app" / "run.txt").read_text() == "hello from RUN\n"
    assert not (local / "bin" / "vi").exists()
    with tarfile.open(rootfs_tar) as tar:
        names = tar.getnames()
    assert "app/run.txt" in names and "bin/vi" not in names and not any("/.wh." in n for n in names)


def _layout_layers(layout: Path) -> list[str]:
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((layout / "blobs" / "sha256" / digest).read_text())
    return [layer["digest"] for layer in manifest["layers"]]


def test_an_output_s_layers_are_compressed_while_the_build_runs(tmp_path: Path, busybox: str) -> None:
    ctx = context(
        tmp_path,
        "FROM busybox AS tool\nRUN echo tool > /tool\n"
        "FROM busybox\nCOPY greeting.txt /g\nRUN sleep 2 && cat /g > /h\nCOPY --from=tool /tool /tool\n",
        {"greeting.txt": "hi\n"},
    )
    first, again = tmp_path / "first", tmp_path / "again"
    result = build("-t", "early", "--output", f"type=oci,dest={first},tar=false", str(ctx))
    assert result.code == 0, result
    layers = _layout_layers(first)
    assert len(layers) == 4  # busybox, COPY, RUN, COPY --from
    memos = {}
    for path in (Path(os.environ["PYBUILD_ROOT"]) / "compressed" / "gzip" / "sha256").iterdir():
        memos[json.loads(path.read_text())["digest"]] = path.stat().st_mtime
    # Only the image's layers were compressed (not the tool stage's RUN), and the COPY's while the RUN after it
    # was still sleeping, not at the end.
    assert sorted(memos) == sorted(layers)
    assert memos[layers[2]] - memos[layers[1]] > 1.0
    # The same layout as an export that compresses everything itself (no memo left to find).
    shutil.rmtree(Path(os.environ["PYBUILD_ROOT"]) / "compressed")
    assert build("-t", "early", "--output", f"type=oci,dest={again},tar=false", str(ctx)).code == 0
    assert (first / "index.json").read_bytes() == (again / "index.json").read_bytes()
    assert sorted(p.name for p in (first / "blobs" / "sha256").iterdir()) == sorted(
        p.name for p in (again / "blobs" / "sha256").iterdir()
    )


def test_compression_choices(tmp_path: Path, busybox: str) -> None:
    ctx = context(tmp_path, "FROM busybox\nRUN echo x > /x\n")
    for kind, media in (("zstd", "tar+zstd"), ("uncompressed", "tar")):
        dest = tmp_path / kind
        assert build("--compression", kind, "--output", f"type=oci,dest={dest},tar=false", str(ctx)).code == 0
        index = json.loads((dest / "index.json").read_text())
        digest = index["manifests"][0]["digest"].split(":")[1]
        manifest = json.loads((dest / "blobs" / "sha256" / digest).read_text())
        assert {m["mediaType"] for m in manifest["layers"]} == {f"application/vnd.oci.image.layer.v1.{media}"}
    result = build("--compression", "lz4", str(ctx))
    assert result.code == 2 and "unknown compression" in last_error(result)
    # An output that cannot carry what --compression asks is refused before anything is built.
    result = build("--compression", "zstd", "--output", f"type=docker,dest={tmp_path / 'd.tar'}", str(ctx))
    assert result.code == 2 and "type=docker cannot carry zstd layers" in last_error(result)
    assert "RUN echo x" not in result.err


def test_builds_are_reproducible_with_source_date_epoch(tmp_path: Path, busybox: str) -> None:
    dockerfile = "FROM busybox\nWORKDIR /srv/app\nCOPY . .\nRUN echo built > /srv/app/out && mkdir -p /var/cache/x\n"
    digests = []
    for n in range(2):
        ctx = context(tmp_path, dockerfile, {"src/main.py": "print('hi')\n", "README": "r\n"}, name=f"ctx{n}")
        os.utime(ctx / "README", (1_800_000_000 + n, 1_800_000_000 + n))  # later than the epoch: clamped
        result = build("-t", f"repro{n}", str(ctx), env={"SOURCE_DATE_EPOCH": "1700000000"})
        assert result.code == 0, result
        digests.append(inspect(f"repro{n}")["Digest"])
        time.sleep(1.1)
    assert digests[0] == digests[1]
    info = inspect("repro0")
    assert info["Created"] == "2023-11-14T22:13:20Z"
    assert {h["created"] for h in info["History"][1:]} == {"2023-11-14T22:13:20Z"}
    no_epoch = [build("-t", "nr", str(tmp_path / "ctx0")).code, inspect("nr")["Digest"]]
    assert no_epoch[1] != digests[0], "without an epoch the build time is recorded"


def test_reproducible_flag_uses_epoch_zero(tmp_path: Path, busybox: str) -> None:
    ctx = context(tmp_path, "FROM busybox\nCOPY a /a\n", {"a": "x"})
    assert build("--reproducible", "-t", "r", str(ctx)).code == 0
    assert inspect("r")["Created"] == "1970-01-01T00:00:00Z"


# ------------------------------------------------------------------------------------------------ ADD


def test_add_from_a_url_with_checksum(tmp_path: Path, busybox: str, http_files: HTTPFiles) -> None:
    base, served = http_files.url, http_files.root
    (served / "tool.sh").write_text("#!/bin/sh\necho tool\n")
    os.utime(served / "tool.sh", (1_600_000_000, 1_600_000_000))
    good = "sha256:" + hashlib.sha256((served / "tool.sh").read_bytes()).hexdigest()
    dockerfile = f"FROM busybox\nADD --checksum={good} {base}/tool.sh /opt/\nADD {base}/tool.sh /opt/renamed\n"
    result = build("-t", "fetched", str(context(tmp_path, dockerfile)))
    assert result.code == 0, result
    rootfs = unpack(tmp_path, "fetched")
    for path in (rootfs / "opt" / "tool.sh", rootfs / "opt" / "renamed"):
        st = os.stat(path)
        assert path.read_text() == "#!/bin/sh\necho tool\n"
        assert stat.S_IMODE(st.st_mode) == 0o600 and int(st.st_mtime) == 1_600_000_000
    bad = "sha256:" + "0" * 64
    result = build(str(context(tmp_path, f"FROM busybox\nADD --checksum={bad} {base}/tool.sh /opt/\n", name="bad")))
    assert result.code == 1 and "digest mismatch" in last_error(result) and "Dockerfile:2:" in last_error(result)
    missing = build(str(context(tmp_path, f"FROM busybox\nADD {base}/nothing /opt/\n", name="missing")))
    assert missing.code == 1 and "404" in last_error(missing)


def test_add_extracts_a_zstd_tar_and_keeps_its_owners(tmp_path: Path, busybox: str) -> None:
    tree = tmp_path / "tree"
    (tree / "pkg" / "bin").mkdir(parents=True)
    (tree / "pkg" / "bin" / "run").write_text("run\n")
    os.chown(tree / "pkg" / "bin" / "run", 4321, 8765)
    plain = tmp_path / "pkg.tar"
    with tarfile.open(plain, "w") as tar:
        tar.add(tree / "pkg", arcname="pkg")
    ctx = context(tmp_path, "FROM busybox\nADD pkg.tar.zst /opt/\n")
    (ctx / "pkg.tar.zst").write_bytes(zstandard.ZstdCompressor().compress(plain.read_bytes()))
    assert build("-t", "unpacked", str(ctx)).code == 0
    rootfs = unpack(tmp_path, "unpacked")
    run = rootfs / "opt" / "pkg" / "bin" / "run"
    assert run.read_text() == "run\n" and (os.stat(run).st_uid, os.stat(run).st_gid) == (4321, 8765)


# -------------------------------------------------------------------------------------- bases and contexts


def test_named_contexts_oci_layout_and_directory(tmp_path: Path, busybox: str) -> None:
    layout = tmp_path / "layout"
    base = context(tmp_path, "FROM busybox\nRUN echo from-layout > /layer.txt\n", name="base")
    assert build("--output", f"type=oci,dest={layout},tar=false,name=docker.io/library/base:v2", str(base)).code == 0
    files = tmp_path / "files"
    (files / "etc").mkdir(parents=True)
    (files / "etc" / "app.conf").write_text("conf\n")
    dockerfile = """\
FROM base AS layered
RUN cat /layer.txt > /copied.txt
FROM configs AS plain
FROM busybox
COPY --from=layered /copied.txt /from-layout.txt
COPY --from=configs /etc/app.conf /app.conf
COPY --from=plain /etc/app.conf /stage.conf
"""
    ctx = context(tmp_path, dockerfile)
    result = build(
        "-t",
        "ctx",
        "--build-context",
        f"base=oci-layout://{layout}:v2",
        "--build-context",
        f"configs={files}",
        str(ctx),
    )
    assert result.code == 0, result
    rootfs = unpack(tmp_path, "ctx")
    assert (rootfs / "from-layout.txt").read_text() == "from-layout\n"
    assert (rootfs / "app.conf").read_text() == "conf\n" and (rootfs / "stage.conf").read_text() == "conf\n"


def test_onbuild_triggers_run_when_the_image_is_a_base(tmp_path: Path, busybox: str) -> None:
    parent = context(tmp_path, "FROM busybox\nONBUILD COPY marker /marker\nONBUILD RUN echo ran > /ran\n", name="p")
    assert build("-t", "parent", str(parent)).code == 0
    child = context(tmp_path, "FROM parent\nRUN cat /marker /ran > /both\n", {"marker": "m\n"}, name="c")
    result = build("-t", "child", str(child))
    assert result.code == 0, result
    assert (unpack(tmp_path, "child") / "both").read_text() == "m\nran\n"
    assert "OnBuild" not in inspect("child")["Config"], "triggers are consumed, not inherited"


def test_platform_selection_from_an_index(tmp_path: Path, busybox: str, busybox_tar: Path) -> None:
    assert run_pybuild("import", "-q", "--platform", "linux/arm64", str(busybox_tar), "busybox-arm").code == 0
    root = Path(os.environ["PYBUILD_ROOT"])
    index = json.loads((root / "index.json").read_text())
    entries = {e["annotations"]["org.opencontainers.image.ref.name"]: e for e in index["manifests"]}
    manifests = []
    for name, platform in (
        (BUSYBOX, {"os": "linux", "architecture": "amd64"}),
        ("docker.io/library/busybox-arm:latest", {"os": "linux", "architecture": "arm64"}),
    ):
        entry = {k: v for k, v in entries[name].items() if k != "annotations"}
        manifests.append({**entry, "platform": platform})
    raw = json.dumps(
        {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests}
    ).encode()
    digest = hashlib.sha256(raw).hexdigest()
    (root / "blobs" / "sha256" / digest).write_bytes(raw)
    index["manifests"].append(
        {
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": f"sha256:{digest}",
            "size": len(raw),
            "annotations": {"org.opencontainers.image.ref.name": "docker.io/library/multi:latest"},
        }
    )
    (root / "index.json").write_text(json.dumps(index))
    ctx = context(tmp_path, "FROM multi\nCOPY Dockerfile /\n")
    assert build("-t", "picked", str(ctx)).code == 0
    assert inspect("picked")["Architecture"] == "amd64"
    assert build("-t", "picked-arm", "--platform", "linux/arm64", str(ctx)).code == 0
    assert inspect("picked-arm")["Architecture"] == "arm64"


def test_stdin_dockerfile_has_no_context_to_copy_from(tmp_path: Path, busybox: str) -> None:
    result = run_pybuild("build", "-t", "x", "-", input="FROM busybox\nRUN echo ok > /ok\n")
    assert result.code == 0, result
    result = run_pybuild("build", "-", input="FROM busybox\nCOPY a /a\n")
    assert result.code == 1 and "Dockerfile:2:" in last_error(result) and "no context" in last_error(result)


def test_copy_of_a_missing_source_and_onto_a_directory(tmp_path: Path, busybox: str) -> None:
    ctx = context(tmp_path, "FROM busybox\nCOPY nope.txt /x\n")
    result = build(str(ctx))
    assert result.code == 1 and '"/nope.txt": not found' in last_error(result) and "Dockerfile:2:" in last_error(result)
    ctx = context(tmp_path, "FROM busybox\nRUN mkdir -p /d/a.txt\nCOPY a.txt /d/\n", {"a.txt": "a"}, name="c2")
    result = build(str(ctx))
    assert result.code == 1 and "cannot replace to directory /d/a.txt with file" in last_error(result)


# ------------------------------------------------------------------------------------------ interruption


def _processes_with(marker: str) -> list[int]:
    """Processes whose environment holds ``marker`` (every process of a RUN inherits the step's ENV)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if f"MARKER={marker}".encode() in environ.split(b"\0"):
            found.append(int(pid))
    return found


def _wait_gone(marker: str, seconds: float = 10.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        left = _processes_with(marker)
        if not left:
            return []
        time.sleep(0.1)
    return _processes_with(marker)


def test_processes_a_step_started_are_gone_when_it_ends(tmp_path: Path, busybox: str) -> None:
    marker = f"pybuild-daemon-{os.getpid()}-{time.time_ns()}"
    ctx = context(tmp_path, f"FROM busybox\nENV MARKER={marker}\nRUN (sleep 300 &) ; sleep 0.5; echo started\n")
    result = build(str(ctx))
    assert result.code == 0, result
    assert _wait_gone(marker, 2.0) == [], "a background process outlived its step"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_an_interrupted_build_leaves_no_process_and_a_usable_store(tmp_path: Path, busybox: str, signum: int) -> None:
    marker = f"pybuild-interrupt-{os.getpid()}-{time.time_ns()}"
    ctx = context(tmp_path, f"FROM busybox\nENV MARKER={marker}\nRUN echo running && sleep 300\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "builder", "build", "--progress", "plain", "-t", "never", str(ctx)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=os.environ.copy(),
        preexec_fn=interruptible,
    )
    deadline = time.monotonic() + 30
    while not _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_with(marker), "the step never started"
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGKILL: -9}[signum], err
    assert _wait_gone(marker) == [], "the step's processes outlived the build"
    mounts = Path("/proc/self/mountinfo").read_text()
    assert os.environ["PYBUILD_ROOT"] not in mounts, "a mount outlived the build"
    assert run_pybuild("inspect", "never").code == 1
    ok = context(tmp_path, "FROM busybox\nRUN echo fine > /fine\n", name="after")
    assert build("-t", "after", str(ok)).code == 0, "the store is usable after the interruption"
    tmp = Path(os.environ["PYBUILD_ROOT"]) / "tmp"
    assert not tmp.exists() or list(tmp.iterdir()) == [], "what the killed build left in tmp/ is swept"
    shutil.rmtree(tmp_path / "ctx", ignore_errors=True)


def test_several_heredocs_in_one_run(tmp_path: Path, busybox: str) -> None:
    """The Dockerfile reference's example: each heredoc feeds its own command of one RUN."""
    dockerfile = """\
FROM busybox
RUN <<FILE1 cat > /file1 && <<FILE2 cat > /file2
I am
first
FILE1
I am
second
FILE2
"""
    assert build("-t", "two-heredocs", str(context(tmp_path, dockerfile))).code == 0
    rootfs = unpack(tmp_path, "two-heredocs")
    assert (rootfs / "file1").read_text() == "I am\nfirst\n"
    assert (rootfs / "file2").read_text() == "I am\nsecond\n"


def test_heredocs_in_run_and_copy(tmp_path: Path, busybox: str) -> None:
    dockerfile = """\
FROM busybox
ARG WHO=world
RUN <<EOF
#!/bin/sh
echo "script $0 for $WHO" > /script.txt
EOF
RUN <<EOF
echo "plain heredoc" > /plain.txt
echo "second line ran" >> /plain.txt
EOF
COPY <<EOF <<'RAW' /etc/
hello $WHO
EOF
kept $WHO
RAW
"""
    assert build("-t", "heredocs", str(context(tmp_path, dockerfile))).code == 0
    rootfs = unpack(tmp_path, "heredocs")
    assert (rootfs / "script.txt").read_text() == "script /dev/pipes/EOF for world\n"
    assert (rootfs / "plain.txt").read_text() == "plain heredoc\nsecond line ran\n"
    assert (rootfs / "etc" / "EOF").read_text() == "hello world\n"
    assert (rootfs / "etc" / "RAW").read_text() == "kept $WHO\n"
    assert stat.S_IMODE(os.stat(rootfs / "etc" / "EOF").st_mode) == 0o644
    assert not (rootfs / "dev" / "pipes").exists()


def test_copy_from_an_image_in_the_store_keeps_its_owners(tmp_path: Path, busybox: str) -> None:
    owned = context(tmp_path, "FROM busybox\nRUN mkdir /data && echo v > /data/f && chown -R 1234:99 /data\n", name="o")
    assert build("-t", "owned", str(owned)).code == 0
    ctx = context(tmp_path, "FROM scratch\nCOPY --from=owned /data /data\nCOPY --from=busybox /bin/busybox /bb\n")
    result = build("-t", "from-image", str(ctx))
    assert result.code == 0, result
    rootfs = unpack(tmp_path, "from-image")
    assert (rootfs / "data" / "f").read_text() == "v\n"
    assert (os.stat(rootfs / "data" / "f").st_uid, os.stat(rootfs / "data" / "f").st_gid) == (1234, 99)
    assert (rootfs / "bb").read_bytes() == Path("/bin/busybox").read_bytes()
    assert inspect("from-image")["Config"]["WorkingDir"] == "/"


def test_copy_refuses_a_file_that_would_be_a_whiteout(tmp_path: Path, busybox: str) -> None:
    ctx = context(tmp_path, "FROM busybox\nCOPY .wh.passwd /etc/\n", {".wh.passwd": ""})
    result = build(str(ctx))
    assert result.code == 1
    assert "Dockerfile:2:" in last_error(result) and "/etc/.wh.passwd: a file named .wh.*" in last_error(result)
    ctx = context(tmp_path, "FROM busybox\nCOPY d /etc/\n", {"d/.wh.group": ""}, name="nested")
    assert "/etc/.wh.group: a file named .wh.*" in last_error(build(str(ctx)))
