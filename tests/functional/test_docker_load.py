"""A ``--output type=docker`` archive loads into a real Docker engine, and the image runs there.

The test starts a private dockerd (Debian's docker.io: its own data root, exec root and socket under a temporary
directory, no bridge, no iptables rules), so it disturbs no Docker already running and needs no registry.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, require_root, require_tool, run_pybuild

EXAMPLE = REPO / "testdata" / "example"


@pytest.fixture(scope="module")
def docker() -> Iterator[list[str]]:
    require_root()
    dockerd = require_tool("dockerd")
    client = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else require_tool("docker")
    work = Path(tempfile.mkdtemp(prefix="pybuild-dockerd-", dir="/var/tmp"))
    socket = work / "docker.sock"
    log = open(work / "dockerd.log", "wb")  # noqa: SIM115 - closed below
    # In a network namespace of its own: a dockerd started with --bridge=none deletes the host's docker0 (the
    # bridge a Docker already running here needs); docker load and a --network none run need no network.
    daemon = subprocess.Popen(
        [
            require_tool("unshare"),
            "--net",
            dockerd,
            "--data-root", str(work / "data"),
            "--exec-root", str(work / "exec"),
            "--pidfile", str(work / "docker.pid"),
            "-H", f"unix://{socket}",
            "--iptables=false",
            "--bridge=none",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    command = [client, "-H", f"unix://{socket}"]
    try:
        deadline = time.monotonic() + 60
        while subprocess.run([*command, "version"], capture_output=True).returncode != 0:
            if daemon.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"dockerd did not start:\n{(work / 'dockerd.log').read_text()[-3000:]}")
            time.sleep(0.2)
        yield command
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        log.close()
        subprocess.run(["umount", "-R", str(work)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.parametrize("compression", ["gzip", "uncompressed"])
def test_docker_output_loads_and_runs(busybox_tar: Path, tmp_path: Path, docker: list[str], compression: str) -> None:
    assert run_pybuild("import", "-q", str(busybox_tar), "busybox").code == 0
    archive = tmp_path / "hello.tar"
    tag = f"pybuild-hello:{compression}"
    result = run_pybuild(
        "build", "-q", "-t", tag, "--compression", compression, "--output", f"type=docker,dest={archive}", str(EXAMPLE)
    )
    assert result.code == 0, result
    image_id = result.out.strip()
    loaded = subprocess.run([*docker, "load", "-i", str(archive)], capture_output=True, text=True)
    assert loaded.returncode == 0, loaded.stderr
    assert f"Loaded image: {tag}" in loaded.stdout
    (info,) = json.loads(subprocess.run([*docker, "image", "inspect", tag], capture_output=True, check=True).stdout)
    assert info["Id"] == image_id, "Docker's image ID is pybuild's config digest"
    assert info["Config"]["Cmd"] == ["/app/hello.sh"] and info["Config"]["User"] == "nobody"
    ran = subprocess.run([*docker, "run", "--rm", "--network", "none", tag], capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith("Hello from a daemonless build (from ")
