"""pybuild run by an ordinary user, for the rootless tests and the rootless run of the conformance suite.

The users are made by .ci/run (``pybuild-rootless`` with the range 300000:65536 in /etc/subuid and /etc/subgid,
``pybuild-single`` with none); elsewhere the tests skip unless they exist. The user runs a copy of pybuild and of
its dependencies in a directory every user may read (the checkout and its virtual environment may not be), with
this machine's Python, through ``setpriv`` (util-linux) as root drops to the user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from conftest import REPO, _missing, require_root, require_tool

SUBIDS_USER = "pybuild-rootless"
SINGLE_USER = "pybuild-single"
#: SOURCE_DATE_EPOCH of every rootless build, and of the root builds its digests are compared with.
EPOCH = "1700000000"
#: pybuild's dependencies as importable top-level names (and the ones they import in turn).
_PACKAGES = (
    "dockerfile_parse",
    "zstandard",
    "requests",
    "urllib3",
    "idna",
    "certifi",
    "charset_normalizer",
    "cryptography",
    "cffi",
    "pycparser",
)


@dataclass(frozen=True)
class Runtime:
    """A Python every user may run and a PYTHONPATH every user may read, holding pybuild and its dependencies."""

    python: str
    path: str


def make_runtime(top: Path) -> Runtime:
    import zstandard

    site = Path(zstandard.__file__).resolve().parent.parent
    for name in ("builder", "oci"):
        shutil.copytree(REPO / name, top / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in _PACKAGES:
        shutil.copytree(site / name, top / name, ignore=shutil.ignore_patterns("__pycache__"))
    for so in site.glob("_cffi_backend*.so"):
        shutil.copy2(so, top / so.name)
    open_up(top)
    subprocess.run(["chmod", "-R", "a+rX", str(top)], check=True)
    candidates = [f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}", os.path.realpath(sys.executable)]
    return Runtime(next((c for c in candidates if os.path.exists(c)), candidates[-1]), str(top))


def user(name: str) -> pwd.struct_passwd:
    """The ordinary user ``name`` (a failure in CI, a skip elsewhere, when it or newuidmap is missing)."""
    require_root()
    require_tool("newuidmap")
    require_tool("setpriv")
    try:
        return pwd.getpwnam(name)
    except KeyError:
        _missing(f"the user {name} does not exist (.ci/run makes it)")
        raise


def run_as(
    who: pwd.struct_passwd,
    runtime: Runtime,
    store: Path,
    *args: str,
    epoch: str | None = EPOCH,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``pybuild ARGS`` as ``who``, with ``store`` as its PYBUILD_ROOT and its parent as HOME (and
    SOURCE_DATE_EPOCH ``epoch``, unless None), and ``env`` besides."""
    environ = {
        "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "PYTHONPATH": runtime.path,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYBUILD_ROOT": str(store),
        "HOME": str(store.parent),
        "CI": "",
    }
    if epoch is not None:
        environ["SOURCE_DATE_EPOCH"] = epoch
    environ.update(env or {})
    argv = ["setpriv", f"--reuid={who.pw_uid}", f"--regid={who.pw_gid}", "--init-groups", "--", runtime.python]
    return subprocess.run([*argv, "-m", "builder", *args], capture_output=True, text=True, env=environ, cwd="/")


def home_for(who: pwd.struct_passwd, directory: Path) -> Path:
    """A new home of ``who`` in ``directory`` (which every user may then reach); returns its ``store`` path."""
    home = directory / f"home-{who.pw_name}"
    home.mkdir()
    os.chown(home, who.pw_uid, who.pw_gid)
    open_up(directory)
    return home / "store"


def give(path: Path, who: pwd.struct_passwd, keep: tuple[Path, ...] = ()) -> None:
    """Make ``who`` the owner of ``path`` and all under it but ``keep`` (as a user's own build context is)."""
    for directory, names, files in os.walk(path):
        for entry in [Path(directory), *(Path(directory) / name for name in names + files)]:
            if entry not in keep:
                os.lchown(entry, who.pw_uid, who.pw_gid)
    open_up(path.parent)


def open_up(path: Path) -> None:
    """Let every user reach ``path``: its directories up to the first one others may already search (pytest's
    own temporary directories are private to root)."""
    for directory in [path, *path.parents]:
        mode = os.stat(directory).st_mode
        if mode & 0o001:
            break
        os.chmod(directory, mode | 0o005)


def readable_copy(path: Path, directory: Path) -> Path:
    """A copy of the file ``path`` in ``directory/shared`` that every user may read."""
    copy = directory / "shared" / path.name
    copy.parent.mkdir(exist_ok=True)
    shutil.copy2(path, copy)
    subprocess.run(["chmod", "-R", "a+rX", str(copy.parent)], check=True)
    open_up(copy.parent)
    return copy
