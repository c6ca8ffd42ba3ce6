"""RUN --mount, --security and --network through the CLI, as a user runs them: bind mounts (context, stage, image;
read-only, rw discarded; their content in the key), tmpfs, secrets (by file and by variable, never in the store or
the output), SSH agents (a real ssh-agent, asked by the real ssh-add inside the container), cache mounts, and the
mount stubs, which never reach a layer. After every build, our mount table holds nothing of it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
from conftest import CLIResult, require_tool, run_pybuild, write_context

SECRET_FILE_VALUE = b"file-secret-7f3a9c1e5b"
SECRET_ENV_VALUE = "env-secret-2d8e4b6a0c"


def build(*args: str, env: dict[str, str] | None = None) -> CLIResult:
    return run_pybuild("build", "--progress", "plain", *args, env=env)


def run_layers(image: str) -> set[str]:
    """Every path the image's layers above the base add, change or delete."""
    result = run_pybuild("diff", "--format", "json", image)
    assert result.code == 0, result
    return {change["path"] for layer in json.loads(result.out)[1:] for change in layer["changes"]}


def read_file(image: str, path: str, tmp_path: Path) -> str:
    out = tmp_path / f"export-{time.monotonic_ns()}.tar"
    assert run_pybuild("export", "-o", str(out), image).code == 0
    with tarfile.open(out) as tar:
        member = tar.extractfile(path.lstrip("/"))
        assert member is not None, path
        return member.read().decode()


def assert_no_mounts_left(store: Path) -> None:
    with open("/proc/self/mountinfo") as f:
        left = [line for line in f if str(store) in line or "/pybuild-ssh-" in line]
    assert not left, left


# ------------------------------------------------------------------------------------------------ binds


BINDS = """\
FROM busybox AS assets
RUN mkdir -p /assets && echo logo > /assets/logo.txt && ln -s / /assets/root-link
FROM busybox
WORKDIR /work
RUN --mount=type=bind,source=src,target=src cat src/app.py > /from-context.txt
RUN --mount=from=assets,source=/assets,target=/mnt/assets cp /mnt/assets/logo.txt /from-stage.txt
RUN --mount=from=assets,source=/assets/root-link,target=/mnt/root ls /mnt/root > /stage-root.txt
RUN --mount=from=busybox,source=/bin/busybox,target=/opt/busybox /opt/busybox echo from-image > /from-image.txt
RUN --mount=type=bind,source=src,target=/src,rw \\
    echo new > /src/new.txt && echo changed > /src/app.py && cat /src/app.py > /rw.txt
RUN --mount=type=bind,source=src,target=/src ls /src > /after-rw.txt && cat /src/app.py >> /after-rw.txt
"""


def test_bind_mounts_from_the_context_a_stage_and_an_image(tmp_path: Path, busybox: str, store_root: Path) -> None:
    ctx = write_context(tmp_path / "ctx", BINDS, {"src/app.py": "print(1)\n"})
    result = build("-t", "binds", str(ctx))
    assert result.code == 0, result
    assert read_file("binds", "/from-context.txt", tmp_path) == "print(1)\n"  # a relative target: under WORKDIR
    assert read_file("binds", "/from-stage.txt", tmp_path) == "logo\n"
    # buildah CVE-2024-1753: a source that is a link to / is the stage's root, not the host's.
    assert "assets" in read_file("binds", "/stage-root.txt", tmp_path).split()
    assert read_file("binds", "/from-image.txt", tmp_path) == "from-image\n"
    assert read_file("binds", "/rw.txt", tmp_path) == "changed\n"
    assert read_file("binds", "/after-rw.txt", tmp_path) == "app.py\nprint(1)\n"  # rw writes were discarded
    assert sorted(os.listdir(ctx / "src")) == ["app.py"] and (ctx / "src/app.py").read_text() == "print(1)\n"
    files = {f"/{n}.txt" for n in ("from-context", "from-stage", "stage-root", "from-image", "rw", "after-rw")}
    assert run_layers("binds") == files | {"/work"}, "mount stubs reached a layer"
    assert_no_mounts_left(store_root)


def test_a_changed_bind_mounted_file_misses_the_cache_and_an_unrelated_one_does_not(
    tmp_path: Path, busybox: str
) -> None:
    dockerfile = "FROM busybox\nRUN --mount=type=bind,source=src,target=/src cat /src/app.py > /app.txt\n"
    ctx = write_context(tmp_path / "ctx", dockerfile, {"src/app.py": "v1\n", "README": "docs\n"})
    assert build("-t", "keyed", str(ctx)).code == 0
    (ctx / "README").write_text("more docs\n")
    again = build("-t", "keyed", str(ctx))
    assert again.code == 0 and "#2 CACHED" in again.err, again
    (ctx / "src/app.py").write_text("v2\n")
    changed = build("-t", "keyed", str(ctx))
    assert changed.code == 0, changed
    assert "#2 cache miss: bind mount /src: src/app.py changed" in changed.err
    assert read_file("keyed", "/app.txt", tmp_path) == "v2\n"


# ------------------------------------------------------------------------------------------------ tmpfs


def test_tmpfs_is_limited_to_its_size_and_stays_out_of_the_layer(tmp_path: Path, busybox: str) -> None:
    dockerfile = (
        "FROM busybox\n"
        "RUN --mount=type=tmpfs,target=/var/scratch,size=64k "
        "dd if=/dev/zero of=/var/scratch/big bs=1k count=200 2>/dev/null; du -k /var/scratch/big | cut -f1 > /kb.txt\n"
    )
    assert build("-t", "tmpfs", str(write_context(tmp_path / "ctx", dockerfile))).code == 0
    assert 0 < int(read_file("tmpfs", "/kb.txt", tmp_path)) <= 64
    assert run_layers("tmpfs") == {"/kb.txt"}


# ---------------------------------------------------------------------------------------------- secrets


SECRETS = """\
FROM busybox
RUN --mount=type=secret,id=api cat /run/secrets/api; echo; stat -c '%a %u %g' /run/secrets/api > /api-mode.txt
RUN --mount=type=secret,id=token,env=TOKEN,target=/opt/token,uid=1000,mode=0440 \\
    echo "token is $TOKEN"; stat -c '%a %u %g' /opt/token > /token-mode.txt
RUN --mount=type=secret,id=absent cat /run/secrets/absent 2>/dev/null || echo skipped > /absent.txt
"""


def test_secrets_by_file_and_variable_never_reach_the_store_or_the_output(
    tmp_path: Path, busybox: str, store_root: Path
) -> None:
    ctx = write_context(tmp_path / "ctx", SECRETS)
    secret_file = tmp_path / "api.txt"
    secret_file.write_bytes(SECRET_FILE_VALUE)
    log = tmp_path / "build.log"
    secrets = ("--secret", f"id=api,src={secret_file}", "--secret", "id=token,env=MY_TOKEN")
    result = build(*secrets, "--log-file", str(log), "-t", "secrets", str(ctx), env={"MY_TOKEN": SECRET_ENV_VALUE})
    assert result.code == 0, result
    assert read_file("secrets", "/api-mode.txt", tmp_path) == "400 0 0\n"
    assert read_file("secrets", "/token-mode.txt", tmp_path) == "440 1000 0\n"
    assert read_file("secrets", "/absent.txt", tmp_path) == "skipped\n"
    assert "token is ****" in result.err and any(line.endswith(" ****") for line in result.err.splitlines())
    assert run_layers("secrets") == {"/api-mode.txt", "/token-mode.txt", "/absent.txt"}
    # The key holds the ids only (as BuildKit's): other values hit the cache.
    (tmp_path / "other.txt").write_bytes(b"another-value")
    again = build(
        "--secret",
        f"id=api,src={tmp_path}/other.txt",
        "--secret",
        "id=token,env=MY_TOKEN",
        "-t",
        "secrets",
        str(ctx),
        env={"MY_TOKEN": "yet-another"},
    )
    assert again.code == 0 and again.err.count("CACHED") == 3, again
    for value in (SECRET_FILE_VALUE, SECRET_ENV_VALUE.encode()):
        for text in (result.out, result.err, again.err):
            assert value.decode() not in text
        assert value not in log.read_bytes()
        found = [p for p in store_root.rglob("*") if p.is_file() and not p.is_symlink() and value in p.read_bytes()]
        assert not found, f"the secret is in {found}"
    assert_no_mounts_left(store_root)


def test_a_missing_required_secret_or_agent_fails_on_its_line(tmp_path: Path, busybox: str) -> None:
    ctx = write_context(tmp_path / "ctx", "FROM busybox\nRUN --mount=type=secret,id=needed,required=true true\n")
    result = build(str(ctx))
    assert result.code == 1
    (last,) = [line for line in result.err.splitlines() if line.startswith("pybuild:")]
    assert "Dockerfile:2: secret needed is required but was not given" in last, result.err
    assert "Traceback" not in result.err
    ctx = write_context(tmp_path / "ssh", "FROM busybox\nRUN --mount=type=ssh,required true\n")
    result = build(str(ctx), env={"SSH_AUTH_SOCK": ""})
    assert result.code == 1 and "Dockerfile:2: no SSH agent 'default' was given" in result.err, result


# ------------------------------------------------------------------------------------------------- ssh


def ssh_add_context(tmp_path: Path, dockerfile: str) -> Path:
    """A context whose host/ holds the host's ssh-add, its libraries and their loader, to run in busybox."""
    ssh_add = require_tool("ssh-add")
    ctx = write_context(tmp_path / "ctx", dockerfile)
    host = ctx / "host"
    host.mkdir()
    shutil.copy(ssh_add, host / "ssh-add")
    ldd = subprocess.run(["ldd", ssh_add], capture_output=True, text=True, check=True).stdout
    for line in ldd.splitlines():
        path = next((word for word in line.split() if word.startswith("/")), None)
        if path is None:
            continue
        if "ld-linux" in path or "/ld-" in path:
            shutil.copy(path, host / "ld.so")
        else:
            shutil.copy(path, host / os.path.basename(path))
    return ctx


SSH = """\
FROM busybox
RUN --mount=type=ssh --mount=type=bind,source=host,target=/host \\
    echo "sock=$SSH_AUTH_SOCK"; /host/ld.so --library-path /host /host/ssh-add -l; echo "status=$?"
RUN --mount=type=ssh,id=absent echo "absent=${SSH_AUTH_SOCK:-unset}"
RUN --mount=type=ssh,target=/agent.sock,uid=1000,mode=0660 stat -c '%a %u %F' /agent.sock; echo "sock=$SSH_AUTH_SOCK"
"""


def test_an_ssh_agent_is_forwarded(tmp_path: Path, busybox: str, store_root: Path) -> None:
    agent_bin, keygen = require_tool("ssh-agent"), require_tool("ssh-keygen")
    ctx = ssh_add_context(tmp_path, SSH)
    socket_path = tmp_path / "agent.sock"
    agent = subprocess.Popen([agent_bin, "-D", "-a", str(socket_path)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if socket_path.exists():
                break
            time.sleep(0.01)
        key = tmp_path / "id_ed25519"
        subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", "pybuild-test", "-f", str(key)], check=True)
        env = {**os.environ, "SSH_AUTH_SOCK": str(socket_path)}
        subprocess.run([require_tool("ssh-add"), "-q", str(key)], env=env, check=True, capture_output=True)
        result = build("--ssh", "default", "-t", "ssh", str(ctx), env={"SSH_AUTH_SOCK": str(socket_path)})
    finally:
        agent.kill()
        agent.wait()
    assert result.code == 0, result
    fingerprint = subprocess.run([keygen, "-lf", f"{key}.pub"], capture_output=True, text=True).stdout.split()[1]
    assert "sock=/run/buildkit/ssh_agent.0" in result.err
    assert fingerprint in result.err and "status=0" in result.err  # the real ssh-add asked the agent, through us
    assert "absent=unset" in result.err  # an optional agent that was not given is left out
    assert "660 1000 socket" in result.err and "sock=/agent.sock" in result.err
    assert run_layers("ssh") == set()
    assert_no_mounts_left(store_root)


# ------------------------------------------------------------------------------------------- cache mounts


def test_a_cache_mount_survives_between_builds_and_stays_out_of_layers(tmp_path: Path, busybox: str) -> None:
    dockerfile = (
        "FROM busybox\n"
        "RUN --mount=type=cache,target=/root/.cache/tool n=$(cat /root/.cache/tool/n 2>/dev/null || echo 0);"
        ' echo "runs=$n"; echo $((n+1)) > /root/.cache/tool/n; echo built > /built.txt\n'
    )
    ctx = write_context(tmp_path / "ctx", dockerfile)
    assert "runs=0" in build("-t", "cached", str(ctx)).err
    second = build("--no-cache", "-t", "cached", str(ctx))
    assert second.code == 0 and "runs=1" in second.err, second
    assert run_layers("cached") == {"/built.txt"}


# --------------------------------------------------------------------------------------- --security, --network


def test_insecure_needs_allow_and_sandbox_keeps_dockers_capabilities(tmp_path: Path, busybox: str) -> None:
    dockerfile = (
        "FROM busybox\n"
        "RUN --network=none ls /sys/class/net\n"
        "RUN --security=sandbox grep CapEff /proc/self/status\n"
        "RUN --security=insecure grep CapEff /proc/self/status\n"
    )
    ctx = write_context(tmp_path / "ctx", dockerfile)
    refused = build(str(ctx))
    assert refused.code == 1
    assert "Dockerfile:4: RUN --security=insecure is not allowed (build with --allow security.insecure" in refused.err
    allowed = build("--no-cache", "--allow", "security.insecure", str(ctx))
    assert allowed.code == 0, allowed
    with open("/proc/self/status") as f:
        ours = next(line.split()[1] for line in f if line.startswith("CapPrm:"))
    effective = [line.split()[-1] for line in allowed.err.splitlines() if "CapEff:" in line and "grep" not in line]
    assert effective == ["00000000a80425fb", ours]
    assert any(line.endswith(" lo") for line in allowed.err.splitlines())  # RUN --network=none


@pytest.mark.parametrize("option", ["--secret", "--ssh", "--allow"])
def test_bad_options_are_usage_errors(tmp_path: Path, option: str) -> None:
    value = {"--secret": "src=nowhere", "--ssh": f"default={tmp_path}", "--allow": "device"}[option]
    result = run_pybuild("build", option, value, str(write_context(tmp_path / "ctx", "FROM scratch\n")))
    assert result.code == 2 and "Traceback" not in result.err, result
