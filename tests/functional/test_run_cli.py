"""``pybuild run``: a throwaway container of an image, its output and exit status passed through, and
``--commit`` keeping its changes as a new image."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, require_root, run_pybuild, write_context

from builder.container import ContainerRequest, container_spec, running_images
from builder.errors import UsageError
from oci.config import ImageConfig, RuntimeConfig


class _Image:
    def __init__(self, runtime: RuntimeConfig) -> None:
        self.config = ImageConfig("amd64", "linux", config=runtime)


@pytest.mark.parametrize(
    ("entrypoint", "cmd", "request_", "argv"),
    [
        (None, ("sh",), ContainerRequest(), ("sh",)),
        (None, ("sh",), ContainerRequest(command=("echo", "hi")), ("echo", "hi")),
        (("/entry",), ("default",), ContainerRequest(), ("/entry", "default")),
        (("/entry",), ("default",), ContainerRequest(command=("x",)), ("/entry", "x")),
        (("/entry",), ("default",), ContainerRequest(entrypoint=("/other",)), ("/other",)),
        (("/entry",), ("default",), ContainerRequest(entrypoint=(), command=("ls",)), ("ls",)),
    ],
)
def test_the_command_is_resolved_as_docker_run_resolves_it(
    entrypoint: tuple[str, ...] | None, cmd: tuple[str, ...], request_: ContainerRequest, argv: tuple[str, ...]
) -> None:
    image = _Image(RuntimeConfig(entrypoint=entrypoint, cmd=cmd, env=("A=image", "B=image"), working_dir="/srv"))
    spec = container_spec(image, request_, "abc")  # type: ignore[arg-type]
    assert spec.argv == argv and spec.cwd == "/srv" and spec.hostname == "abc"


def test_environment_user_and_workdir_override_the_images() -> None:
    image = _Image(RuntimeConfig(cmd=("sh",), env=("A=image", "B=image"), user="app", working_dir="/srv"))
    spec = container_spec(image, ContainerRequest(env=("B=mine", "C=new"), user="0", workdir="/tmp"), "h")  # type: ignore[arg-type]
    assert dict(e.split("=", 1) for e in spec.env) == {
        "A": "image",
        "B": "mine",
        "C": "new",
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOSTNAME": "h",
    }
    assert (spec.user, spec.cwd) == ("0", "/tmp")
    with pytest.raises(UsageError, match="no command"):
        container_spec(_Image(RuntimeConfig()), ContainerRequest(), "h")  # type: ignore[arg-type]


def test_output_stdin_and_the_exit_status_pass_through(busybox: str) -> None:
    result = run_pybuild("run", "--rm", "busybox", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (result.code, result.out, result.err) == (3, "out\n", "err\n")
    assert run_pybuild("run", "busybox", "cat", input="from stdin\n").out == "from stdin\n"
    missing = run_pybuild("run", "busybox", "/no/such/program")
    assert missing.code == 127 and "/no/such/program" in missing.err


def test_options_reach_the_container(busybox: str) -> None:
    shown = run_pybuild(
        "run", "-e", "GREETING=hi", "-e", "FROM_CALLER", "-w", "/var/work", "-u", "nobody", "--hostname", "box",
        "busybox", "sh", "-c", 'echo "$GREETING $FROM_CALLER $(pwd) $(id -u) $(hostname)"',
        env={"FROM_CALLER": "passed"},
    )  # fmt: skip
    assert shown.code == 0 and shown.out == "hi passed /var/work 65534 box\n", shown
    isolated = run_pybuild("run", "--network", "none", "busybox", "sh", "-c", "ls /sys/class/net")
    assert isolated.code == 0 and isolated.out.split() == ["lo"], isolated


def test_a_run_leaves_the_image_and_the_host_as_they_were(busybox: str, store_root: Path) -> None:
    mounts = Path("/proc/self/mountinfo").read_text()
    before = json.loads(run_pybuild("inspect", "busybox").out)[0]["Id"]
    assert run_pybuild("run", "busybox", "sh", "-c", "echo x > /new; rm /bin/ls").code == 0
    after = run_pybuild("run", "busybox", "sh", "-c", "test ! -e /new && test -e /bin/ls")
    assert after.code == 0 and json.loads(run_pybuild("inspect", "busybox").out)[0]["Id"] == before
    assert Path("/proc/self/mountinfo").read_text() == mounts
    assert not list((store_root / "tmp").iterdir()) and not list((store_root / "containers").iterdir())


def test_commit_keeps_the_changes_as_a_new_image(busybox: str, tmp_path: Path) -> None:
    result = run_pybuild("run", "--commit", "patched:1", "busybox", "sh", "-c", "echo data > /data; rm /bin/ls")
    assert result.code == 0 and "docker.io/library/patched:1: sha256:" in result.err, result
    patched = json.loads(run_pybuild("inspect", "patched:1").out)[0]
    base = json.loads(run_pybuild("inspect", "busybox").out)[0]
    assert patched["RootFS"]["Layers"][:-1] == base["RootFS"]["Layers"]
    assert patched["History"][-1]["created_by"] == "sh -c echo data > /data; rm /bin/ls"
    check = run_pybuild("run", "patched:1", "sh", "-c", "cat /data; test ! -e /bin/ls")
    assert check.code == 0 and check.out == "data\n", check
    # The committed image is an image like any other: a build starts FROM it.
    context = write_context(tmp_path / "ctx", "FROM patched:1\nRUN test -e /data && test ! -e /bin/ls\n")
    assert run_pybuild("build", "-q", str(context)).code == 0


def test_a_running_container_is_recorded_for_prune(busybox: str, store_root: Path) -> None:
    require_root()
    proc = subprocess.Popen(
        [sys.executable, "-m", "builder", "run", "busybox", "sleep", "5"], cwd=REPO, stdout=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 20
        while not running_images(store_root) and time.monotonic() < deadline:
            time.sleep(0.05)
        digest = json.loads(run_pybuild("inspect", "busybox").out)[0]["Digest"]
        assert {str(d) for d in running_images(store_root)} == {digest}
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) != 0
    assert running_images(store_root) == set()


def test_no_tty_and_no_command_are_clear_errors(busybox: str, tmp_path: Path) -> None:
    tty = run_pybuild("run", "-t", "busybox", "sh")
    assert tty.code == 2 and "no pseudo-terminal" in tty.err
    context = write_context(tmp_path / "ctx", "FROM busybox\nENTRYPOINT []\nCMD []\n")
    assert run_pybuild("build", "-q", "-t", "nocmd", str(context)).code == 0
    none = run_pybuild("run", "nocmd")
    assert none.code == 2 and "no command" in none.err
