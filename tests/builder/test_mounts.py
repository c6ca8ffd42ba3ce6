"""RUN --mount below the CLI: the option parsers, targets, keys and redaction (``builder.mounts``), and the sandbox
making ``MountPoint``s (``run_container``), checked from inside the container and from outside (the upper directory,
the source trees, our own mount table)."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest
from conftest import require_root

from builder import cachekey
from builder.context import load_ignore_rules
from builder.copy import ContextTree
from builder.errors import BuildError, UsageError
from builder.executor import MountPoint, RunSpec, remove_stubs, run_container
from builder.frontend import instructions as ins
from builder.frontend.runmount import parse_mount
from builder.mounts import (
    BindRoot,
    Redactor,
    Secrets,
    check_run,
    key_inputs,
    mount_target,
    parse_allow,
    parse_secret,
    parse_ssh,
    prepared,
    read_secrets,
)
from builder.plan import Step
from builder.rootfs import ensure_skeleton
from builder.snapshot import SnapshotStore
from oci.digest import Digest

PATH = "PATH=/usr/sbin:/usr/bin:/sbin:/bin"


def run_step(*mounts: str, workdir: str = "/", security: str = "") -> Step:
    command = ins.CommandLine(exec_form=False, args=("true",))
    instruction = ins.Run(line=2, end_line=2, original="RUN true", command=command, mounts=mounts, security=security)
    return Step(
        instruction,
        env=(),
        build_args=(),
        workdir=workdir,
        user="",
        shell=("/bin/sh", "-c"),
        history="",
        empty_layer=False,
        argv=("/bin/sh", "-c", "true"),
        mounts=tuple(parse_mount(m) for m in mounts),
        mount_sources=tuple(None for _ in mounts),
    )


# ----------------------------------------------------------------------------------------------- --secret


def test_secret_from_a_file_and_from_a_variable(tmp_path: Path) -> None:
    (tmp_path / "token.txt").write_bytes(b"from-file\n")
    environ = {"MY_TOKEN": "from-env"}
    assert parse_secret(f"id=a,src={tmp_path}/token.txt", environ) == ("a", b"from-file\n")
    assert parse_secret(f"id=a,source={tmp_path}/token.txt,type=file", environ) == ("a", b"from-file\n")
    assert parse_secret("id=b,env=MY_TOKEN", environ) == ("b", b"from-env")
    assert parse_secret("type=env,id=b,src=MY_TOKEN", environ) == ("b", b"from-env")
    assert parse_secret("id=b,env=UNSET", environ) == ("b", None)


def test_secret_by_id_alone_is_the_variable_if_set_else_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "API_TOKEN").write_bytes(b"file")
    assert parse_secret("id=API_TOKEN", {"API_TOKEN": "variable"}) == ("API_TOKEN", b"variable")
    assert parse_secret("id=API_TOKEN", {}) == ("API_TOKEN", b"file")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("src=x", "needs an id"),
        ("id=a,flavour=x", "unexpected key 'flavour'"),
        ("id=a,type=vault", "unsupported secret type 'vault'"),
        ("id=a,bare", "invalid field 'bare'"),
        ("id=a,src=/nonexistent/file", "cannot read /nonexistent/file"),
    ],
)
def test_bad_secrets(text: str, says: str) -> None:
    with pytest.raises(UsageError, match=says):
        parse_secret(text, {})


def test_secrets_larger_than_buildkits_limit_are_refused(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"x" * (500 * 1024 + 1))
    with pytest.raises(UsageError, match="larger than 500 KiB"):
        parse_secret(f"id=big,src={tmp_path}/big", {})


def test_secrets_never_show_their_values() -> None:
    secrets = read_secrets(["id=a,env=A", "id=b,env=UNSET"], {"A": "hunter2-hunter2"})
    assert secrets.get("a") == b"hunter2-hunter2" and secrets.get("b") is None
    assert "hunter2" not in repr(secrets) and "'a'" in repr(secrets)


# -------------------------------------------------------------------------------------------- --ssh, --allow


def test_ssh_agents(tmp_path: Path) -> None:
    path = tmp_path / "agent.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        assert parse_ssh("default", {"SSH_AUTH_SOCK": str(path)}) == ("default", str(path))
        assert parse_ssh(f"work={path}", {}) == ("work", str(path))
    with pytest.raises(UsageError, match="SSH_AUTH_SOCK is not set"):
        parse_ssh("default", {})
    (tmp_path / "id_ed25519").write_text("a key")
    with pytest.raises(UsageError, match="is not an agent socket") as raised:
        parse_ssh(f"default={tmp_path}/id_ed25519", {})
    assert "ssh-add" in raised.value.hint


def test_allow() -> None:
    assert parse_allow(["security.insecure", "network.host,security.insecure"]) == {
        "security.insecure",
        "network.host",
    }
    with pytest.raises(UsageError, match="unknown entitlement"):
        parse_allow(["device"])


# ------------------------------------------------------------------------------------------ checks, targets


def test_insecure_needs_the_entitlement() -> None:
    step = run_step(security="insecure")
    with pytest.raises(BuildError, match="--security=insecure is not allowed") as raised:
        check_run(step, allow=frozenset())
    assert "--allow security.insecure" in raised.value.hint
    check_run(step, allow=frozenset({"security.insecure"}))
    check_run(run_step(security="sandbox"), allow=frozenset())


def test_two_locked_cache_mounts_of_one_id_are_refused() -> None:
    with pytest.raises(BuildError, match="would wait forever"):
        check_run(
            run_step("type=cache,id=x,target=/a,sharing=locked", "type=cache,id=x,target=/b,sharing=locked"),
            allow=frozenset(),
        )
    check_run(run_step("type=cache,id=x,target=/a", "type=cache,id=x,target=/b"), allow=frozenset())


@pytest.mark.parametrize(
    ("mount", "workdir", "target"),
    [
        ("type=tmpfs,target=/t", "/app", "/t"),
        ("type=tmpfs,target=cache", "/app", "/app/cache"),
        ("type=tmpfs,target=../x/./y/", "/app/src", "/app/x/y"),
        ("type=ssh", "/", "/run/buildkit/ssh_agent.0"),
        ("type=secret,id=tok", "/", "/run/secrets/tok"),
        ("type=secret,id=tok,env=TOKEN", "/", ""),
    ],
)
def test_targets(mount: str, workdir: str, target: str) -> None:
    assert mount_target(parse_mount(mount), workdir) == target


def test_the_root_is_no_target() -> None:
    with pytest.raises(BuildError, match="cannot mount over the root"):
        mount_target(parse_mount("type=tmpfs,target=/app/.."), "/")


# ----------------------------------------------------------------------------------------------- the key


def context_root(path: Path) -> BindRoot:
    _, rules = load_ignore_rules(path, None)
    return BindRoot({"context": "."}, context=ContextTree(path, rules))


def test_a_bind_sources_content_is_in_the_key_and_nothing_else_of_the_context(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src/app.py").write_text("print(1)\n")
    (tmp_path / "README").write_text("docs\n")
    step = run_step("type=bind,source=src,target=/src", "type=tmpfs,target=/t", "type=secret,id=x")
    records, sums = key_inputs(step, lambda source: context_root(tmp_path), epoch=None)
    assert [r["target"] for r in records] == ["/src"] and sums[0] is not None
    (tmp_path / "README").write_text("more docs\n")
    assert key_inputs(step, lambda source: context_root(tmp_path), epoch=None)[0] == records
    (tmp_path / "src/app.py").write_text("print(2)\n")
    changed, new_sums = key_inputs(step, lambda source: context_root(tmp_path), epoch=None)
    assert changed != records
    new = {"v": 1, "op": "run", "mounts": changed}
    old = {"v": 1, "op": "run", "mounts": records}
    files_new = [s.files if s else {} for s in new_sums]
    files_old = [s.files if s else {} for s in sums]
    why = cachekey.differences(new, old, new_files=files_new, old_files=files_old)
    assert why == ["bind mount /src: src/app.py changed"]


def test_a_stage_bind_is_keyed_by_its_layers() -> None:
    step = run_step("type=bind,from=build,source=/out,target=/out")
    root = BindRoot({"stage": "build"}, layers=("sha256:aa",))
    records, sums = key_inputs(step, lambda source: root, epoch=None)
    assert records == [{"target": "/out", "stage": "build", "layers": ["sha256:aa"], "path": "/out"}]
    assert sums == [None]


def test_a_missing_bind_source_names_the_mount(tmp_path: Path) -> None:
    step = run_step("type=bind,source=nowhere,target=/src")
    with pytest.raises(BuildError, match='bind mount /src: source "/nowhere": not found'):
        key_inputs(step, lambda source: context_root(tmp_path), epoch=None)


def test_what_dockerignore_excludes_is_whited_out(tmp_path: Path) -> None:
    require_root()
    context = tmp_path / "context"
    (context / "src/secret").mkdir(parents=True)
    (context / "src/app.py").write_text("app\n")
    (context / "src/app.pyc").write_text("bytes\n")
    (context / "src/secret/key").write_text("key\n")
    (context / ".dockerignore").write_text("**/*.pyc\nsrc/secret\n")
    step = run_step("type=bind,source=src,target=/src")
    with prepared(step, roots=lambda source: context_root(context), scratch=tmp_path / "scratch") as ready:
        (mount,) = ready.mounts
        hidden = Path(mount.lowers[0])
        assert mount.lowers[1:] == (str(context),) and mount.source == "src" and mount.readonly
        assert sorted(os.listdir(hidden / "src")) == ["app.pyc", "secret"]
        assert all(stat.S_ISCHR(os.lstat(hidden / "src" / n).st_mode) for n in ("app.pyc", "secret"))


def test_secrets_become_files_and_variables_and_missing_ones_are_skipped_unless_required(tmp_path: Path) -> None:
    step = run_step(
        "type=secret,id=a",
        "type=secret,id=b,env=B_TOKEN,target=/etc/b,mode=0440,uid=7,gid=8",
        "type=secret,id=absent",
    )
    secrets = Secrets({"a": b"alpha-secret", "b": b"beta-secret"})
    with prepared(step, roots=lambda s: context_root(tmp_path), scratch=tmp_path, secrets=secrets) as ready:
        files = {m.target: m for m in ready.mounts}
        assert set(files) == {"/run/secrets/a", "/etc/b"}
        assert files["/etc/b"].mode == 0o440 and (files["/etc/b"].uid, files["/etc/b"].gid) == (7, 8)
        assert files["/run/secrets/a"].mode == 0o400 and files["/run/secrets/a"].data == b"alpha-secret"
        assert ready.secret_env == ("B_TOKEN=beta-secret",)
        assert "alpha" not in repr(ready) and "beta" not in repr(files["/etc/b"])
    with pytest.raises(BuildError, match="secret absent is required but was not given"):
        with prepared(
            run_step("type=secret,id=absent,required"), roots=lambda s: context_root(tmp_path), scratch=tmp_path
        ):
            pass


def test_ssh_mounts_forward_the_agent_and_set_ssh_auth_sock(tmp_path: Path) -> None:
    agent = tmp_path / "agent.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(agent))
        server.listen(1)
        step = run_step("type=ssh", "type=ssh,id=other,target=/agent")
        agents = {"default": str(agent)}
        with prepared(step, roots=lambda s: context_root(tmp_path), scratch=tmp_path, agents=agents) as ready:
            (mount,) = ready.mounts
            assert mount.target == "/run/buildkit/ssh_agent.0" and ready.env == (
                "SSH_AUTH_SOCK=/run/buildkit/ssh_agent.0",
            )
            assert stat.S_IMODE(os.stat(mount.source).st_mode) == 0o600
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(mount.source)
                client.sendall(b"\0\0\0\1\x0b")  # SSH_AGENTC_REQUEST_IDENTITIES
                conn, _ = server.accept()
                with conn:
                    assert conn.recv(16) == b"\0\0\0\1\x0b"
                    conn.sendall(b"\0\0\0\5\x0c\0\0\0\0")
                    assert client.recv(16) == b"\0\0\0\5\x0c\0\0\0\0"
        assert not os.path.exists(mount.source)
        with pytest.raises(BuildError, match="no SSH agent 'other' was given"):
            with prepared(
                run_step("type=ssh,id=other,required"), roots=lambda s: context_root(tmp_path), scratch=tmp_path
            ):
                pass


# --------------------------------------------------------------------------------------------- redaction


def test_redaction_of_values_their_trimmed_form_and_key_lines() -> None:
    redactor = Redactor([b"hunter2-value\n", b"-----BEGIN KEY-----\nAAAABBBBCCCCDDDD\n-----END KEY-----\n", b"abc"])
    assert redactor.redact(b"pw=hunter2-value; ok") == b"pw=****; ok"
    assert redactor.redact(b"line AAAABBBBCCCCDDDD") == b"line ****"
    assert redactor.redact(b"abc is too short to be hidden") == b"abc is too short to be hidden"
    assert redactor.text("error: hunter2-value") == "error: ****"
    assert not Redactor([b"", b"ab"])


def test_redaction_holds_back_a_value_split_across_reads() -> None:
    redactor = Redactor([b"s3cr3t-value"])
    out: list[bytes] = []
    stream = redactor.stream(out.append)
    data = b"before s3cr3t-value middle s3cr3t-val"
    for i in range(len(data)):
        stream(data[i : i + 1])
    assert b"".join(out) == b"before **** middle "
    stream.close()
    assert b"".join(out) == b"before **** middle s3cr3t-val"  # the end never became the value


# ----------------------------------------------------------------------------------------------- stubs


def test_stubs_are_removed_only_when_empty_and_never_through_a_symlink(tmp_path: Path) -> None:
    upper, outside = tmp_path / "upper", tmp_path / "outside"
    (upper / "run/secrets").mkdir(parents=True)
    (upper / "run/secrets/tok").touch()
    (upper / "full").mkdir()
    (upper / "full/kept").write_text("written by the command")
    (outside / "b").mkdir(parents=True)
    (upper / "a").symlink_to(outside)  # the command replaced a stub's parent with a link out of the tree
    remove_stubs(upper, ["run/secrets", "run/secrets/tok", "full", "a", "a/b"])
    assert sorted(os.listdir(upper)) == ["a", "full", "run"]
    assert (outside / "b").is_dir()


# ---------------------------------------------------------------------------------------------- the sandbox


@pytest.fixture(scope="module")
def lowers(busybox_tar: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    require_root()
    root = tmp_path_factory.mktemp("mounts-store")
    diff_id = Digest.of_bytes(busybox_tar.read_bytes())
    snapshot = SnapshotStore(root / "snapshots").ensure(diff_id, lambda: open(busybox_tar, "rb"))
    escape = root / "escape"  # a layer whose links point out of the tree, as a hostile image's would
    (escape / "links").mkdir(parents=True)
    os.symlink("/../../../../tmp/pybuild-mounts-escape", escape / "links/up")
    os.symlink("/", escape / "links/root")
    return [escape, snapshot, ensure_skeleton(root)]


def run(
    tmp_path: Path, lowers: list[Path], command: str, *mounts: MountPoint, **fields: object
) -> tuple[int, str, Path]:
    scratch = tmp_path / f"scratch-{len(list(tmp_path.glob('scratch-*')))}"
    scratch.mkdir(mode=0o700)
    chunks: list[bytes] = []
    spec = RunSpec(argv=("/bin/sh", "-c", command), env=(PATH,), mounts=mounts, **fields)  # type: ignore[arg-type]
    status = run_container(scratch, lowers, spec, chunks.append)
    return status, b"".join(chunks).decode(errors="replace"), scratch / "upper"


def upper_paths(upper: Path) -> set[str]:
    return {os.path.relpath(os.path.join(d, n), upper) for d, ds, fs in os.walk(upper) for n in ds + fs}


def mount_table() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [" ".join(line.split()[3:5]) for line in f]


def test_binds_tmpfs_and_files_leave_nothing_in_the_upper_or_our_mount_table(
    tmp_path: Path, lowers: list[Path]
) -> None:
    before = mount_table()
    tree = tmp_path / "tree"
    (tree / "src").mkdir(parents=True)
    (tree / "src/app.py").write_text("app\n")
    command = """
        cat /ro/app.py; { echo x > /ro/new; } 2>/dev/null || echo ro-refused
        echo changed > /rw/app.py && echo new > /rw/new && cat /rw/app.py
        dd if=/dev/zero of=/deep/er/t/big bs=1k count=100 2>/dev/null || echo tmpfs-full
        stat -c '%a %u %g' /run/secrets/tok; cat /run/secrets/tok; echo; echo "env=$TOKEN"
        grep -cE ' /(ro|rw|deep/er/t|run/secrets/tok) ' /proc/self/mountinfo
    """
    status, output, upper = run(
        tmp_path,
        lowers,
        command,
        MountPoint("bind", "/ro", source="src", readonly=True, lowers=(str(tree),)),
        MountPoint("bind", "/rw", source="src", lowers=(str(tree),), copy_on_write=True),
        MountPoint("tmpfs", "/deep/er/t", size=64 * 1024),
        MountPoint("file", "/run/secrets/tok", readonly=True, mode=0o440, uid=1000, gid=0, data=b"tok-value"),
        secret_env=("TOKEN=env-value",),
    )
    assert status == 0, output
    lines = output.splitlines()
    assert lines[:3] == ["app", "ro-refused", "changed"]
    assert "tmpfs-full" in lines
    assert "440 1000 0" in lines
    assert "tok-value" in lines and "env=env-value" in lines
    assert lines[-1] == "4"
    assert (tree / "src/app.py").read_text() == "app\n" and sorted(os.listdir(tree / "src")) == ["app.py"]
    assert upper_paths(upper) == set(), "mount stubs or writes into mounts reached the upper directory"
    assert mount_table() == before


def test_stubs_go_but_what_the_command_wrote_beside_them_stays(tmp_path: Path, lowers: list[Path]) -> None:
    status, output, upper = run(
        tmp_path, lowers, "echo kept > /mnt/beside.txt", MountPoint("tmpfs", "/mnt/a/b"), MountPoint("tmpfs", "/c")
    )
    assert status == 0, output
    assert upper_paths(upper) == {"mnt", "mnt/beside.txt"}


def test_links_in_the_image_and_in_a_source_stay_inside_their_trees(tmp_path: Path, lowers: list[Path]) -> None:
    outside = Path("/tmp/pybuild-mounts-escape")
    assert not outside.exists()
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "marker").write_text("tree root\n")
    os.symlink("/", tree / "to-root")  # buildah CVE-2024-1753: a bind source that is a link to /
    os.symlink("../../../..", tree / "up")
    command = "ls /m1 /m2; touch /links/up/x/written && echo wrote-inside; ls /links/root/tmp/pybuild-mounts-escape/x"
    status, output, upper = run(
        tmp_path,
        lowers,
        command,
        MountPoint("bind", "/m1", source="to-root", lowers=(str(tree),), copy_on_write=True),
        MountPoint("bind", "/m2", source="up", readonly=True, lowers=(str(tree),)),
        MountPoint("tmpfs", "/links/up/x"),
    )
    assert status == 0, output
    assert output.count("marker") == 2 and "to-root" in output and "wrote-inside" in output and "written" in output
    assert not outside.exists()
    assert "tmp/pybuild-mounts-escape" not in upper_paths(upper)  # the stub went, with its parents


def test_insecure_keeps_every_capability(tmp_path: Path, lowers: list[Path]) -> None:
    status, output, _ = run(tmp_path, lowers, "grep CapEff /proc/self/status", insecure=True)
    assert status == 0, output
    with open("/proc/self/status") as f:
        ours = next(line.split()[1] for line in f if line.startswith("CapPrm:"))
    assert output.split()[1] == ours  # every capability pybuild has, not Docker's default 00000000a80425fb
