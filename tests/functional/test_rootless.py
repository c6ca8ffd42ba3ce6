"""Rootless builds: the pybuild command run by an ordinary user, with subordinate ids and with one id.

The users are made by .ci/run (``pybuild-rootless`` with the range 300000:65536 in /etc/subuid and /etc/subgid,
``pybuild-single`` with none); elsewhere the tests skip unless they exist. The user runs a copy of pybuild and
of its dependencies in a directory every user may read (the checkout and its virtual environment may not be), with
this machine's Python.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, _missing, require_root, require_tool, run_pybuild, write_context

SUBIDS_USER = "pybuild-rootless"
SINGLE_USER = "pybuild-single"
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

# A user and files with another owner, made by RUN and by COPY --chown; a file the user makes as uid 1000.
DOCKERFILE = """\
FROM busybox
RUN echo "app:x:1000:1000::/home/app:/bin/sh" >> /etc/passwd && echo "app:x:1000:" >> /etc/group \\
 && mkdir -p /data /home/app && touch /data/x && chown app:app /data/x /home/app && echo hi > /data/y && rm -f /bin/true
USER app
RUN touch /home/app/mine && id > /home/app/id.txt
COPY --chown=1000:1000 note.txt /home/app/
"""


def _user(name: str) -> pwd.struct_passwd:
    require_root()
    require_tool("newuidmap")
    try:
        return pwd.getpwnam(name)
    except KeyError:
        _missing(f"the user {name} does not exist (.ci/run makes it)")
        raise


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A Python every user may run and a PYTHONPATH every user may read, holding pybuild and its dependencies."""
    import zstandard

    top = tmp_path_factory.mktemp("rootless-runtime")

    site = Path(zstandard.__file__).resolve().parent.parent
    for name in ("builder", "oci"):
        shutil.copytree(REPO / name, top / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in _PACKAGES:
        shutil.copytree(site / name, top / name, ignore=shutil.ignore_patterns("__pycache__"))
    for so in site.glob("_cffi_backend*.so"):
        shutil.copy2(so, top / so.name)
    _open_up(top)
    subprocess.run(["chmod", "-R", "a+rX", str(top)], check=True)
    candidates = [f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}", os.path.realpath(sys.executable)]
    python = next((c for c in candidates if os.path.exists(c)), candidates[-1])
    return python, str(top)


def _as(user: pwd.struct_passwd, runtime: tuple[str, str], root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    python, path = runtime
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "PYTHONPATH": path,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYBUILD_ROOT": str(root),
        "HOME": str(root.parent),
        "SOURCE_DATE_EPOCH": "1700000000",
        "CI": "",
    }
    argv = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--", python]
    return subprocess.run([*argv, "-m", "builder", *args], capture_output=True, text=True, env=env, cwd="/")


def _home_for(user: pwd.struct_passwd, tmp_path: Path) -> Path:
    home = tmp_path / f"home-{user.pw_name}"
    home.mkdir()
    os.chown(home, user.pw_uid, user.pw_gid)
    _open_up(tmp_path)
    return home / "store"


def _open_up(path: Path) -> None:
    """Let every user reach ``path``: its directories up to the first one others may already search (pytest's
    own temporary directories are private to root)."""
    for directory in [path, *path.parents]:
        mode = os.stat(directory).st_mode
        if mode & 0o001:
            break
        os.chmod(directory, mode | 0o005)


def _readable_copy(path: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "shared" / path.name
    copy.parent.mkdir(exist_ok=True)
    shutil.copy2(path, copy)
    subprocess.run(["chmod", "-R", "a+rX", str(copy.parent)], check=True)
    return copy


def _root_build(busybox_tar: Path, context: Path, tmp_path: Path) -> str:
    env = {"PYBUILD_ROOT": str(tmp_path / "root-store"), "SOURCE_DATE_EPOCH": "1700000000"}
    for args in (["import", "-q", str(busybox_tar), "busybox"], ["build", "-q", "-t", "app", str(context)]):
        done = run_pybuild(*args, env=env)
        assert done.code == 0, done.err
    return done.out.strip()


def test_a_build_with_subordinate_ids_gives_the_root_build_s_image(
    tmp_path: Path, busybox_tar: Path, runtime: tuple[str, str]
) -> None:
    user = _user(SUBIDS_USER)
    context = write_context(tmp_path / "shared" / "ctx", DOCKERFILE, {"note.txt": "note\n"})
    tarball = _readable_copy(busybox_tar, tmp_path)
    store = _home_for(user, tmp_path)
    assert _as(user, runtime, store, "import", "-q", str(tarball), "busybox").returncode == 0
    built = _as(user, runtime, store, "build", "-q", "--progress", "plain", "-t", "app", str(context))
    assert built.returncode == 0, built.stderr
    # Same layers, same owners, same digests: uid 1000 in the build is uid 1000 in the layer.
    assert built.stdout.strip() == _root_build(busybox_tar, context, tmp_path)
    # On the host, the user's files are the user's and the rest are in the subordinate range.
    owners = {p.stat().st_uid for p in (store / "snapshots").rglob("*") if p.name in ("x", "mine", "y")}
    assert owners == {user.pw_uid, 300000 + 999}

    info = _as(user, runtime, store, "info", "--format", "json")
    assert info.returncode == 0, info.stderr
    found = json.loads(info.stdout)
    assert found["mode"]["name"] == "rootless with subordinate ids"
    assert found["mode"]["idMaps"] == f"0 {user.pw_uid} 1; 1 300000 65536"
    assert found["host"]["root"] is False
    assert found["features"]["overlay in a user namespace"] == "yes"
    assert found["features"]["RUN"] == "yes"


def test_with_one_id_a_build_runs_until_a_step_needs_another_id(
    tmp_path: Path, busybox_tar: Path, runtime: tuple[str, str]
) -> None:
    user = _user(SINGLE_USER)
    tarball = _readable_copy(busybox_tar, tmp_path)
    store = _home_for(user, tmp_path)
    assert _as(user, runtime, store, "import", "-q", str(tarball), "busybox").returncode == 0
    plain = write_context(tmp_path / "shared" / "plain", "FROM busybox\nRUN echo hi > /hi && cat /hi\n")
    built = _as(user, runtime, store, "build", "-q", "-t", "plain", str(plain))
    assert built.returncode == 0, built.stderr

    owned = write_context(tmp_path / "shared" / "owned", "FROM busybox\nRUN touch /x && chown 1000 /x\n")
    failed = _as(user, runtime, store, "build", "-q", "--progress", "plain", "-t", "owned", str(owned))
    assert failed.returncode == 1
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith(f"pybuild: {owned}/Dockerfile:2: ")
    assert "rootless with one id: only id 0 exists here" in last and "/etc/subuid" in last

    other = write_context(tmp_path / "shared" / "user", "FROM busybox\nUSER 1000\nRUN id\n")
    failed = _as(user, runtime, store, "build", "--progress", "plain", "-t", "user", str(other))
    assert failed.returncode == 1
    assert "user 1000:0 does not exist in this rootless build" in failed.stderr

    info = json.loads(_as(user, runtime, store, "info", "--format", "json").stdout)
    assert info["mode"] == {
        "name": "rootless with one id",
        "idMaps": f"0 {user.pw_uid} 1",
        "whySingle": f"/etc/subuid and /etc/subgid have no range for {SINGLE_USER}",
    }
