#!/usr/bin/env python3
"""Regenerate the conformance suite's expected.json files with Docker's BuildKit (the reference builder).

    sudo .venv/bin/python testdata/conformance/regen.py              # every case, on a private dockerd
    sudo .venv/bin/python testdata/conformance/regen.py copy-file run-hardlinks   # named cases
    sudo .venv/bin/python testdata/conformance/regen.py --check      # rebuild and compare, write nothing

By default a private ``dockerd`` is started (its own data root, socket and exec root under a temporary directory,
a bridge of its own and no iptables rules, so it disturbs no Docker already running) and removed at the end; with
``--docker-host unix:///var/run/docker.sock`` a running daemon is used instead (its ``busybox:latest`` and
``conformance/*`` tags are overwritten). The daemon must be Docker Engine with BuildKit, driven by a docker CLI
that builds with BuildKit itself (``DOCKER_BUILDKIT=1``; the 20.10 CLI does, later ones need buildx).

The base image is made exactly as the CI check makes it: ``testdata/busybox-rootfs.sh`` from Debian's
busybox-static, imported with ``docker import`` as ``busybox:latest``, no config. Each case is built with
``docker build --no-cache`` from a prepared copy of its context (tests/conformance/cases.py), saved with
``docker save`` and summarised by tests/conformance/tree.py, the same code the CI check runs on pybuild's output.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from conformance.cases import Case, CaseError, all_cases, load_case  # noqa: E402
from conformance.tree import ImageData, Tree, flatten, read_docker_save, summarize  # noqa: E402

CASES_DIR = Path(__file__).resolve().parent
#: BuildKit's plain progress output starts with this step; the legacy builder's never has it.
BUILDKIT_MARK = "[internal] load build definition"


class Docker:
    def __init__(self, cli: str, host: str, data_root: Path | None = None) -> None:
        self.cli = cli
        self.data_root = data_root
        self.env = {**os.environ, "DOCKER_HOST": host, "DOCKER_BUILDKIT": "1"}
        self.env.pop("DOCKER_CONTEXT", None)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([self.cli, *args], env=self.env, capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise SystemExit(f"regen: docker {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
        return proc

    def versions(self) -> str:
        server = json.loads(self.run("version", "--format", "{{json .Server}}").stdout)
        client = self.run("version", "--format", "{{.Client.Version}}").stdout.strip()
        engine = server.get("Version", "?")
        parts = {c.get("Name"): c.get("Version") for c in server.get("Components") or []}
        return (
            f"Docker Engine {engine} (containerd {parts.get('containerd', '?')}, runc {parts.get('runc', '?')}), "
            f"docker CLI {client}, BuildKit and Dockerfile frontend built into the daemon"
        )


class ReferenceMismatch(Exception):
    """The reference did not do what the case says it should (or failed where it should not)."""


class PrivateDaemon:
    """A dockerd of our own: nothing it does is visible to another daemon, and it leaves nothing behind."""

    BRIDGE = "pbconf0"
    BRIDGE_ADDRESS = "10.217.73.1/24"

    def __init__(self, dockerd: str) -> None:
        self.dockerd = dockerd
        self.root = Path(tempfile.mkdtemp(prefix="pybuild-conformance-dockerd-", dir="/var/tmp"))
        self.host = f"unix://{self.root}/docker.sock"
        self.process: subprocess.Popen[bytes] | None = None
        self.bridge_created = False

    def start(self, docker: str) -> None:
        # RUN steps on the default network need a bridge, and docker0 may belong to a running Docker.
        self.bridge_created = subprocess.run(["ip", "link", "show", self.BRIDGE], capture_output=True).returncode != 0
        if self.bridge_created:
            subprocess.run(["ip", "link", "add", "name", self.BRIDGE, "type", "bridge"], check=True)
            subprocess.run(["ip", "addr", "add", self.BRIDGE_ADDRESS, "dev", self.BRIDGE], check=True)
            subprocess.run(["ip", "link", "set", self.BRIDGE, "up"], check=True)
        log = open(self.root / "dockerd.log", "wb")  # noqa: SIM115 - lives as long as the daemon
        self.process = subprocess.Popen(
            [
                self.dockerd,
                "--data-root", str(self.root / "data"),
                "--exec-root", str(self.root / "exec"),
                "--pidfile", str(self.root / "dockerd.pid"),
                "--host", self.host,
                "--bridge", self.BRIDGE,
                "--iptables=false",
                "--ip-masq=false",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        env = {**os.environ, "DOCKER_HOST": self.host}
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"regen: dockerd exited; its log:\n{(self.root / 'dockerd.log').read_text()}")
            if subprocess.run([docker, "info"], env=env, capture_output=True).returncode == 0:
                return
            time.sleep(0.5)
        raise SystemExit("regen: dockerd did not come up within 60 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        subprocess.run(["umount", "-R", str(self.root / "data")], capture_output=True)
        subprocess.run(["umount", "-R", str(self.root / "exec")], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)
        if self.bridge_created:
            subprocess.run(["ip", "link", "delete", self.BRIDGE], capture_output=True)


def _message(proc: subprocess.CompletedProcess[str]) -> str:
    return proc.stderr + proc.stdout


def build_case(docker: Docker, case: Case, base: ImageData, base_tree: Tree, work: Path) -> dict:
    context, dockerfile = case.prepare(work)
    tag = f"conformance/{case.name}"
    proc = docker.run(
        "build", "--no-cache", "--progress=plain", "-f", str(dockerfile), "-t", tag,
        *case.build_options(), str(context),
        check=False,
    )  # fmt: skip
    if BUILDKIT_MARK not in _message(proc):
        raise ReferenceMismatch(f"this was not built by BuildKit (is DOCKER_BUILDKIT honoured?):\n{_message(proc)}")
    if proc.returncode != 0:
        error = case.options.get("error")
        if error is None:
            raise ReferenceMismatch(f"the reference build failed:\n{_message(proc)[-3000:]}")
        for text in error.get("contains", []):
            if text not in _message(proc):
                raise ReferenceMismatch(f"the reference's message lacks {text!r}:\n{_message(proc)[-3000:]}")
        return {"error": True, "exit_code": proc.returncode, "contains": list(error.get("contains", []))}
    if case.expects_error:
        raise ReferenceMismatch("case.json expects an error but the reference build succeeded")
    saved = work / "image.tar"
    proc = docker.run("save", "-o", str(saved), tag, check=False)
    if proc.returncode == 0:
        image = read_docker_save(saved)
    elif "empty export" in proc.stderr and docker.data_root is not None:
        image = _layerless_image(docker, tag)
    else:
        raise ReferenceMismatch(f"docker save failed: {_message(proc)}")
    return summarize(image, base, base_tree)


def _layerless_image(docker: Docker, tag: str) -> ImageData:
    """An image with no layers, which Docker 20.10 cannot ``docker save`` ("empty export - not implemented"):
    its config is read as stored in the daemon's image store, byte for byte."""
    image_id = docker.run("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip()
    algorithm, _, encoded = image_id.partition(":")
    for driver_dir in sorted((docker.data_root / "image").iterdir()):  # type: ignore[operator]
        stored = driver_dir / "imagedb" / "content" / algorithm / encoded
        if stored.exists():
            return ImageData(json.loads(stored.read_bytes()), [])
    raise ReferenceMismatch(f"{tag}: {image_id} is not in {docker.data_root}")


def encode(expected: dict) -> str:
    return json.dumps(expected, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="*", help="case names (default: all)")
    parser.add_argument("--docker-host", help="use this running daemon instead of starting a private one")
    parser.add_argument(
        "--docker",
        default=shutil.which("docker", path="/usr/bin") or "docker",
        help="the docker CLI (default /usr/bin/docker, the 20.10 CLI with built-in BuildKit)",
    )
    parser.add_argument(
        "--data-root",
        type=Path,
        help="with --docker-host: that daemon's data root (to read "
        "the config of an image without layers, which docker save refuses)",
    )
    parser.add_argument("--dockerd", default="dockerd", help="the daemon to start (default: dockerd on PATH)")
    parser.add_argument("--check", action="store_true", help="compare with the stored expectations, write nothing")
    args = parser.parse_args(argv)

    cases = [load_case(CASES_DIR / name) for name in args.cases] if args.cases else all_cases()
    daemon = None if args.docker_host else PrivateDaemon(args.dockerd)
    try:
        if daemon is not None:
            daemon.start(args.docker)
            docker = Docker(args.docker, daemon.host, daemon.root / "data")
        else:
            docker = Docker(args.docker, args.docker_host, args.data_root)
        print(f"reference: {docker.versions()}", flush=True)
        with tempfile.TemporaryDirectory(prefix="pybuild-conformance-") as tmp:
            work = Path(tmp)
            rootfs = work / "rootfs.tar"
            subprocess.run(["sh", str(REPO / "testdata" / "busybox-rootfs.sh"), str(rootfs)], check=True)
            docker.run("import", str(rootfs), "busybox:latest")
            docker.run("save", "-o", str(work / "base.tar"), "busybox:latest")
            base = read_docker_save(work / "base.tar")
            base_tree = flatten(base.layers)
            stale: list[str] = []
            failed: list[str] = []
            for case in cases:
                case_work = work / case.name
                case_work.mkdir()
                try:
                    expected = encode(build_case(docker, case, base, base_tree, case_work))
                except ReferenceMismatch as err:
                    print(f"{case.name}: FAILED: {err}", flush=True)
                    failed.append(case.name)
                    continue
                if args.check:
                    old = case.expected_path.read_text() if case.expected_path.exists() else ""
                    status = "same" if old == expected else "DIFFERENT"
                    if old != expected:
                        stale.append(case.name)
                else:
                    case.expected_path.write_text(expected)
                    status = "written"
                print(f"{case.name}: {status}", flush=True)
                shutil.rmtree(case_work)
            if failed:
                print(f"regen: {len(failed)} case(s) failed: {' '.join(failed)}", file=sys.stderr)
                return 1
            if stale:
                print(f"regen: {len(stale)} expectation(s) differ: {' '.join(stale)}", file=sys.stderr)
                return 1
    except CaseError as err:
        print(f"regen: {err}", file=sys.stderr)
        return 2
    finally:
        if daemon is not None:
            daemon.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
