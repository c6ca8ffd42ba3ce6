"""Shared fixtures: every test runs with its own HOME, XDG directories and store; tools and root are required.

When ``CI=true``, a test whose tool (skopeo, umoci, ...) or privilege is missing fails instead of skipping, so a
CI machine that forgot to install something cannot pass by skipping.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from fakeregistry import BlobStore, FakeRegistry
from registryserver import RegistryServer, run_registry

from builder.cache import CacheEntry, CacheIndex
from builder.root import Store, open_store
from oci import mediatypes as mt
from oci.compression import Compression
from oci.descriptor import Descriptor
from oci.digest import Digest
from oci.layer import LayerItem, write_layer
from oci.tarformat import EntryType, TarEntry

if TYPE_CHECKING:
    from rootless import Runtime

REPO = Path(__file__).resolve().parent.parent
TESTDATA = REPO / "testdata"
IN_CI = os.environ.get("CI", "").lower() == "true"


def _missing(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing requirement is a failure)")
    pytest.skip(reason)


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        _missing(f"{name} is not installed")
    return path  # type: ignore[return-value]


def require_root() -> None:
    if os.geteuid() != 0:
        _missing("needs root")


@pytest.fixture(autouse=True)
def isolate(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point HOME, the XDG directories and PYBUILD_ROOT at a fresh directory."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    for name, sub in (
        ("XDG_DATA_HOME", ".local/share"),
        ("XDG_CONFIG_HOME", ".config"),
        ("XDG_CACHE_HOME", ".cache"),
        ("XDG_RUNTIME_DIR", "run"),
    ):
        (home / sub).mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv(name, str(home / sub))
    monkeypatch.setenv("PYBUILD_ROOT", str(home / "store"))
    monkeypatch.setenv("DOCKER_CONFIG", str(home / ".docker"))
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    return home


@pytest.fixture
def store_root() -> Path:
    return Path(os.environ["PYBUILD_ROOT"])


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """A new, empty store at ``tmp_path/root`` (for tests that call the operations directly, not the CLI)."""
    return open_store(tmp_path / "root")


def layer(store: Store, name: str, data: bytes) -> tuple[Descriptor, Digest]:
    """A one-file uncompressed layer written into ``store``: its descriptor and diff_id."""
    item = LayerItem(TarEntry(name, EntryType.FILE, size=len(data)), lambda: io.BytesIO(data))
    with store.layout.store.writer() as blob:
        info = write_layer([item], blob, Compression.NONE)
        digest = blob.commit()
        size = blob.size
    return Descriptor(mt.OCI_LAYER, digest, size), info.diff_id


def put_entry(index: CacheIndex, result: tuple[Descriptor, Digest], seed: str = "a", build: str = "") -> CacheEntry:
    """A step-cache entry whose layer is ``result`` (its key differs per ``seed``), recorded by ``build`` (which
    goes on holding its leases), or by a build that starts and finishes around it."""
    record = {"v": 1, "op": "run", "seed": seed}
    entry = CacheEntry(
        key=Digest.of_bytes(json.dumps(record).encode()),
        record=record,
        layer=result[0],
        diff_id=result[1],
        history="RUN true",
        step="RUN true",
        stage="stage-0",
        line=2,
        dockerfile="/ctx/Dockerfile",
    )
    own = build or index.start_build("/ctx/Dockerfile")
    index.put(entry, None, own)
    if not build:
        index.finish_build(own, [])
    return entry


@pytest.fixture
def index(store: Store) -> Iterator[CacheIndex]:
    """The cache index of ``store``, closed after the test."""
    cache = CacheIndex(store.root)
    yield cache
    cache.close()


@pytest.fixture(scope="session")
def rootless_runtime(tmp_path_factory: pytest.TempPathFactory) -> Runtime:
    """pybuild and its dependencies where every user may run them (``rootless.Runtime``; see tests/rootless.py)."""
    from rootless import make_runtime

    return make_runtime(tmp_path_factory.mktemp("rootless-runtime"))


@pytest.fixture(scope="session")
def busybox_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root filesystem tarball made from Debian's busybox-static."""
    if not Path(os.environ.get("BUSYBOX", "/bin/busybox")).exists():
        _missing("busybox-static is not installed (/bin/busybox)")
    out = tmp_path_factory.mktemp("busybox") / "rootfs.tar"
    subprocess.run(["sh", str(TESTDATA / "busybox-rootfs.sh"), str(out)], check=True)
    return out


class CLIResult:
    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        self.code = proc.returncode
        self.out = proc.stdout
        self.err = proc.stderr

    def __repr__(self) -> str:
        return f"CLIResult(code={self.code}, out={self.out[-500:]!r}, err={self.err[-500:]!r})"


def run_pybuild(*args: str, input: str | bytes | None = None, env: dict[str, str] | None = None) -> CLIResult:
    """Run the CLI as a user would, in a subprocess."""
    proc = subprocess.run(
        [sys.executable, "-m", "builder", *args],
        input=input,
        capture_output=True,
        text=not isinstance(input, bytes),
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )
    if isinstance(input, bytes):
        proc = subprocess.CompletedProcess(
            proc.args, proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
        )
    return CLIResult(proc)


def interruptible() -> None:
    """``preexec_fn`` for a process a test will send SIGINT: a shell without job control starts background jobs
    with SIGINT ignored, the child would inherit that, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_pybuild_here(*args: str, env: dict[str, str] | None = None) -> CLIResult:
    """The command line's ``main`` in this process: the same code as ``run_pybuild`` without a Python start-up, for
    tables of many cases (a few of which should still go through ``run_pybuild``, the real process). Standard
    output and error are captured; the SIGTERM handler ``main`` installs is put back."""
    from builder.cli import main

    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="replace", write_through=True)
    err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="replace", write_through=True)
    handler = signal.getsignal(signal.SIGTERM)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args), {**os.environ, **(env or {})})
    finally:
        signal.signal(signal.SIGTERM, handler)
    texts = [stream.buffer.getvalue().decode(errors="replace") for stream in (out, err)]  # type: ignore[attr-defined]
    return CLIResult(subprocess.CompletedProcess(list(args), code, *texts))


def step_states(err: str) -> dict[str, str]:
    """A build's plain progress read back: each step as shown (without its ``[stage i/n]`` label) -> ``CACHED``,
    ``DONE`` or ``miss: REASON``; FROM steps are left out."""
    titles: dict[str, str] = {}
    states: dict[str, str] = {}
    for line in err.splitlines():
        header = re.match(r"#(\d+) (?:\[[^\]]*\] )?(.*)$", line)
        if header is None:
            continue
        number, text = header.groups()
        if number not in titles and not re.match(r"[\d.]+ |CACHED|DONE|ERROR|cache miss:", text):
            titles[number] = text
        elif text == "CACHED":
            states[titles[number]] = "CACHED"
        elif text.startswith("cache miss: "):
            states[titles[number]] = "miss: " + text[len("cache miss: ") :]
        elif re.fullmatch(r"DONE [\d.]+s", text):
            states.setdefault(titles[number], "DONE")
    return {title: state for title, state in states.items() if not title.startswith("FROM ")}


def run_pybuild_on_a_terminal(answer: str, *args: str) -> CLIResult:
    """The CLI with a terminal as standard input (so it asks before deleting), answering with ``answer``."""
    primary, secondary = os.openpty()
    try:
        os.write(primary, answer.encode() + b"\n")
        proc = subprocess.run(
            [sys.executable, "-m", "builder", *args],
            stdin=secondary,
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=120,
        )
    finally:
        os.close(primary)
        os.close(secondary)
    return CLIResult(proc)


@pytest.fixture
def pybuild() -> Iterator[object]:
    yield run_pybuild


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


@dataclass(frozen=True)
class HTTPFiles:
    url: str  # http://127.0.0.1:PORT
    root: Path  # the directory it serves
    server: http.server.ThreadingHTTPServer


@pytest.fixture
def http_files(tmp_path: Path) -> Iterator[HTTPFiles]:
    """A web server on 127.0.0.1 serving a fresh directory (for ADD of URLs)."""
    root = tmp_path / "served"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):  # type: ignore[no-untyped-def]
            pass

    server = _Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield HTTPFiles(f"http://127.0.0.1:{server.server_address[1]}", root, server)
    finally:
        server.shutdown()


@pytest.fixture
def busybox(busybox_tar: Path) -> str:
    """busybox imported into this test's store as ``busybox``; returns its image ID."""
    require_root()
    result = run_pybuild("import", "-q", str(busybox_tar), "busybox")
    assert result.code == 0, result
    return result.out.strip()


def write_context(root: Path, dockerfile: str, files: dict[str, str] | None = None) -> Path:
    """A build context at ``root``: the Dockerfile and ``files`` (relative path -> text)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "Dockerfile").write_text(dockerfile)
    for path, content in (files or {}).items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    return root


# Registries on 127.0.0.1: Debian's docker-registry (tests/registryserver.py) and an in-process fake (fakeregistry.py).


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RegistryServer]:
    """docker-registry over plain HTTP, no auth."""
    require_tool("docker-registry")
    with run_registry(tmp_path) as server:
        yield server


@pytest.fixture
def registry_basic(tmp_path: Path) -> Iterator[RegistryServer]:
    """docker-registry over plain HTTP with htpasswd basic auth (``username``/``password``)."""
    require_tool("docker-registry")
    require_tool("htpasswd")
    with run_registry(tmp_path, auth="basic") as server:
        yield server


@pytest.fixture
def registry_tls(tmp_path: Path) -> Iterator[RegistryServer]:
    """docker-registry over HTTPS with a certificate from a test CA (``ca_path``), no auth."""
    require_tool("docker-registry")
    with run_registry(tmp_path, tls=True) as server:
        yield server


@pytest.fixture
def registry_token(tmp_path: Path) -> Iterator[RegistryServer]:
    """docker-registry over plain HTTP with token auth; ``token_server`` issues tokens for the basic credentials."""
    require_tool("docker-registry")
    with run_registry(tmp_path, auth="token") as server:
        yield server


@pytest.fixture
def fake_registry() -> Iterator[FakeRegistry]:
    """An in-memory Distribution fake at 127.0.0.1 with fault injection (``faults``) and a request log."""
    with FakeRegistry() as server:
        yield server


@pytest.fixture
def blob_host() -> Iterator[BlobStore]:
    """A second server, addressed as ``localhost``: where a registry's redirects may send blob downloads."""
    with BlobStore() as server:
        yield server
