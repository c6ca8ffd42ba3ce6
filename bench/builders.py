"""The builders ``bench/run.py`` compares, each driven through its own command line as a user drives it.

- ``pybuild``: this checkout (``python -m builder``), a store of the benchmark's own;
- ``buildah``: ``buildah bud --isolation chroot --layers``, a containers-storage of the benchmark's own;
- ``buildkit`` and ``classic``: Docker's BuildKit (``DOCKER_BUILDKIT=1``) and classic builder (``=0``) in a running
  dockerd (one is started for the run, with a data root of the benchmark's own, when none answers).

Each builder can: load the base images (untimed), forget every step it cached and every image it built while
keeping the bases (``reset``, untimed: the next build is cold), build a context into a tag (timed: the image is
ready in the builder's own store), and write that image as an OCI layout with gzip layers (timed: pybuild with
``--output type=oci``, the peers with ``skopeo copy --dest-compress``, which is how their images leave them).
Peak memory is the largest resident set of the command's process tree (``wait4``) or, for Docker, of dockerd and
containerd, whose high-water marks are reset before each command (``/proc/PID/clear_refs``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


class BenchError(Exception):
    pass


@dataclass(frozen=True)
class Sample:
    seconds: float
    peak_kb: int


def measure(argv: list[str], env: dict[str, str] | None = None, daemons: tuple[int, ...] = ()) -> Sample:
    """Run ``argv`` to completion; its wall time and the peak memory of its tree (or of ``daemons``)."""
    for pid in daemons:
        _reset_peak(pid)
    with tempfile.TemporaryFile() as log:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            log.seek(0)
            tail = log.read().decode(errors="replace")[-3000:]
            raise BenchError(f"{' '.join(argv)} exited {proc.returncode}:\n{tail}")
    peak = usage.ru_maxrss
    if daemons:
        peak = max(peak, sum(_peak(pid) for pid in daemons))
    return Sample(elapsed, peak)


def _reset_peak(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def _peak(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def quiet(argv: list[str], env: dict[str, str] | None = None, check: bool = True) -> str:
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise BenchError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def layout_layer_bytes(layout: Path, base_layers: int) -> tuple[int, int, list[str]]:
    """(count, compressed bytes, media types) of the layers an image in an OCI layout adds to its base."""
    from builder.platforms import host_platform
    from oci.layout import ImageLayout

    lay = ImageLayout.open(layout)
    # An index.json entry that is itself an index resolves to its manifest for this machine's platform.
    added = lay.image(lay.index().manifests[0], host_platform()).layers[base_layers:]
    return len(added), sum(layer.size for layer in added), sorted({layer.media_type for layer in added})


class Builder:
    name = ""
    daemons: tuple[int, ...] = ()
    direct_layout = False  # the build command itself writes an OCI layout (build_layout)

    def unavailable(self) -> str | None:
        """Why this builder cannot run here, or None."""
        return None

    def version(self) -> str:
        return ""

    def setup(self, work: Path, bases: dict[str, Path]) -> None:
        """Load each base (name -> OCI archive) into the builder's store."""

    def reset(self) -> None:
        raise NotImplementedError

    def build(self, context: Path, tag: str) -> Sample:
        raise NotImplementedError

    def export(self, tag: str, dest: Path) -> Sample:
        """Write the built image ``tag`` as an OCI layout with gzip layers in ``dest`` (after ``build``)."""
        raise NotImplementedError

    def build_layout(self, context: Path, tag: str, dest: Path) -> Sample:
        """Build straight to an OCI layout with gzip layers in ``dest``, in the one command a user of this builder
        runs for it (``direct_layout``; the others ``build`` and then ``export``)."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class Pybuild(Builder):
    name = "pybuild"
    direct_layout = True

    def __init__(self, jobs: int | None = None) -> None:
        self.jobs = jobs
        if jobs is not None:
            self.name = f"pybuild --jobs {jobs}"
        self.env: dict[str, str] = {}
        self.tags: set[str] = set()

    def _cli(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "builder", *args]

    def version(self) -> str:
        commit = quiet(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], check=False).strip()
        dirty = quiet(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"], check=False).strip()
        return f"{commit}{'+changes' if dirty else ''}"

    def setup(self, work: Path, bases: dict[str, Path]) -> None:
        self.root = work / "pybuild-store"
        self.env = {**os.environ, "PYBUILD_ROOT": str(self.root), "PYTHONPATH": str(REPO), "CI": ""}
        self.env.pop("SOURCE_DATE_EPOCH", None)
        # The .pyc files users get after their first run.
        quiet([sys.executable, "-m", "compileall", "-q", str(REPO / "builder"), str(REPO / "oci")])
        for archive in bases.values():
            quiet(self._cli("load", "-q", "-i", str(archive)), self.env)

    def reset(self) -> None:
        for tag in sorted(self.tags):
            quiet(self._cli("rmi", "-f", tag), self.env, check=False)
        quiet(self._cli("cache", "prune", "-a", "-f"), self.env)
        # pybuild remembers the compressed copy of every layer it exported, the base's too; skopeo, which writes
        # the peers' layouts, compresses every layer each time. Forgotten here, so that each cold export
        # compresses the base as the peers' do (prune then removes the copies).
        shutil.rmtree(self.root / "compressed", ignore_errors=True)
        quiet(self._cli("prune", "-f"), self.env)
        cached = json.loads(quiet(self._cli("cache", "ls", "--format", "json"), self.env) or "[]")
        if cached:
            raise BenchError(f"pybuild's step cache still holds {len(cached)} entries after the reset")

    def _build(self, tag: str, context: Path, *extra: str) -> Sample:
        jobs = ["--jobs", str(self.jobs)] if self.jobs is not None else []
        return measure(
            self._cli("build", "-q", "--progress", "plain", *jobs, "-t", tag, *extra, str(context)), self.env
        )

    def build(self, context: Path, tag: str) -> Sample:
        self.tags.add(tag)
        return self._build(tag, context)

    def build_layout(self, context: Path, tag: str, dest: Path) -> Sample:
        self.tags.add(tag)
        return self._build(tag, context, "-o", f"type=oci,dest={dest},tar=false")


class Buildah(Builder):
    name = "buildah"

    def unavailable(self) -> str | None:
        for tool in ("buildah", "skopeo"):
            if shutil.which(tool) is None:
                return f"{tool} is not installed"
        return None

    def version(self) -> str:
        return quiet(["buildah", "--version"]).split()[2]

    def setup(self, work: Path, bases: dict[str, Path]) -> None:
        self.bases = bases
        self.storage = work / "buildah"
        root, run = self.storage / "root", self.storage / "run"
        self.global_args = ["--root", str(root), "--runroot", str(run), "--storage-driver", "overlay"]
        self.transport = f"containers-storage:[overlay@{root}+{run}]"
        self._load_bases()

    def _load_bases(self) -> None:
        for name, archive in self.bases.items():
            quiet(["skopeo", "copy", "-q", f"oci-archive:{archive}", f"{self.transport}localhost/{name}:latest"])

    def reset(self) -> None:
        # Every image goes, the intermediate ones --layers caches steps in included (``images`` lists those only
        # with --all, and a parent cannot go before its children); then the bases come back.
        quiet(["buildah", *self.global_args, "rm", "--all"], check=False)
        quiet(["buildah", *self.global_args, "rmi", "--all", "--force"], check=False)
        left = quiet(["buildah", *self.global_args, "images", "--all", "--quiet"]).split()
        if left:
            raise BenchError(f"buildah rmi --all left images: {' '.join(left)}")
        self._load_bases()

    def build(self, context: Path, tag: str) -> Sample:
        argv = ["buildah", *self.global_args, "bud", "--isolation", "chroot", "--layers", "--pull=never", "-q"]
        return measure([*argv, "-t", tag, str(context)])

    def export(self, tag: str, dest: Path) -> Sample:
        source = f"{self.transport}localhost/{tag}:latest"
        return measure(_skopeo_to_layout(source, dest))

    def close(self) -> None:
        quiet(["buildah", *self.global_args, "rm", "--all"], check=False)
        subprocess.run(["umount", "-R", str(self.storage / "root" / "overlay")], capture_output=True, check=False)


def _skopeo_to_layout(source: str, dest: Path) -> list[str]:
    return ["skopeo", "copy", "-q", "--dest-compress", "--dest-compress-format", "gzip", source, f"oci:{dest}:latest"]


class Docker(Builder):
    """One dockerd serves both Docker builders; ``classic`` is ``DOCKER_BUILDKIT=0``."""

    def __init__(self, buildkit: bool, daemon: Dockerd) -> None:
        self.buildkit = buildkit
        self.name = "buildkit" if buildkit else "classic"
        self.dockerd = daemon
        self.tags: set[str] = set()

    def unavailable(self) -> str | None:
        return self.dockerd.unavailable()

    def version(self) -> str:
        return self.dockerd.version()

    def setup(self, work: Path, bases: dict[str, Path]) -> None:
        self.dockerd.start(work, bases)
        self.daemons = self.dockerd.pids()
        self.env = {**os.environ, "DOCKER_BUILDKIT": "1" if self.buildkit else "0", **self.dockerd.env}

    def reset(self) -> None:
        self.dockerd.reset(self.tags)

    def build(self, context: Path, tag: str) -> Sample:
        self.tags.add(tag)
        return measure([self.dockerd.cli, "build", "-q", "-t", tag, str(context)], self.env, self.daemons)

    def export(self, tag: str, dest: Path) -> Sample:
        source = f"docker-daemon:{tag}:latest"
        return measure(_skopeo_to_layout(source, dest), self.env, self.daemons)

    def close(self) -> None:
        self.dockerd.stop()


class Dockerd:
    """The Docker daemon both Docker builders use: the running one, else one started here and stopped after."""

    def __init__(self) -> None:
        # The Debian docker.io client: it has BuildKit without the buildx plugin.
        self.cli = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else (shutil.which("docker") or "docker")
        self.env: dict[str, str] = {}
        self.started: subprocess.Popen[bytes] | None = None
        self.loaded = False
        self.bases: set[str] = set()

    def unavailable(self) -> str | None:
        if shutil.which(self.cli) is None:
            return "docker is not installed"
        if self._answers() or shutil.which("dockerd"):
            return None
        return "no dockerd answers and dockerd is not installed"

    def _answers(self) -> bool:
        return subprocess.run([self.cli, "info"], capture_output=True, env={**os.environ, **self.env}).returncode == 0

    def version(self) -> str:
        return quiet([self.cli, "version", "--format", "{{.Server.Version}}"], {**os.environ, **self.env}).strip()

    def start(self, work: Path, bases: dict[str, Path]) -> None:
        if self.loaded:
            return
        if not self._answers():
            data = work / "docker"
            data.mkdir(exist_ok=True)
            self.started = subprocess.Popen(
                ["dockerd", "--data-root", str(data / "root"), "--exec-root", str(data / "exec")],
                stdout=open(work / "dockerd.log", "wb"),
                stderr=subprocess.STDOUT,
            )
            deadline = time.monotonic() + 60
            while not self._answers():
                if time.monotonic() > deadline or self.started.poll() is not None:
                    raise BenchError(f"dockerd did not start (see {work / 'dockerd.log'})")
                time.sleep(0.5)
        for name, archive in bases.items():
            quiet(["skopeo", "copy", "-q", f"oci-archive:{archive}", f"docker-daemon:{name}:latest"])
            self.bases.add(name)
        self.loaded = True

    def pids(self) -> tuple[int, ...]:
        found = []
        for name in ("dockerd", "containerd"):
            out = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True).stdout.split()
            found += [int(p) for p in out]
        return tuple(found)

    def reset(self, tags: set[str]) -> None:
        if not Path("/sys/class/net/docker0").exists():
            # Seen once while other tests ran: RUN steps then fail with "could not find bridge docker0".
            raise BenchError("dockerd's bridge docker0 is gone; restart dockerd and run again")
        env = {**os.environ, **self.env}
        # Every image but the bases goes (the classic builder's step cache is its intermediate images, and an
        # earlier run's would serve it too); both Docker builders share the daemon, and one's turn is over when the
        # other's starts.
        keep = {i for name in self.bases for i in quiet([self.cli, "images", "-q", "--no-trunc", name], env).split()}
        every = quiet([self.cli, "images", "--all", "--quiet", "--no-trunc"], env).split()
        doomed = [image for image in dict.fromkeys(every) if image not in keep]
        if doomed:
            quiet([self.cli, "rmi", "-f", *doomed], env, check=False)
        quiet([self.cli, "image", "prune", "-f"], env, check=False)
        quiet([self.cli, "builder", "prune", "-af"], env, check=False)
        left = set(quiet([self.cli, "images", "--all", "--format", "{{.Repository}}"], env).split()) - self.bases
        if left:  # the classic builder's cache is its intermediate images: none may be left
            raise BenchError(f"docker still has images after the reset: {' '.join(sorted(left))}")

    def stop(self) -> None:
        if self.started is not None and self.started.poll() is None:
            self.started.terminate()
            self.started.wait(60)
            self.started = None
