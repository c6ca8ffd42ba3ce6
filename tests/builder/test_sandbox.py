"""The RUN sandbox: ``run_container`` over a busybox snapshot, checked from inside (what a command sees) and from
outside (what is left in the upper directory, in the process table and in our mount table afterwards). Every test
that runs a container runs it both ways: started as a program of its own, and forked by a sandbox server."""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO, require_root

from builder.executor import DEFAULT_HOSTNAME, RunSpec, SandboxError, SandboxServers, run_container
from builder.rootfs import ensure_skeleton
from builder.sandbox import DEFAULT_CAPABILITIES
from builder.snapshot import SnapshotStore
from oci.digest import Digest

PATH = "PATH=/usr/sbin:/usr/bin:/sbin:/bin"
DEV = set("core fd full mqueue null ptmx pts random shm stderr stdin stdout tty urandom zero".split())

PASSWD = """root:x:0:0:root:/root:/bin/sh
alice:x:1000:1000:Alice:/home/alice:/bin/sh
bob:x:1001:1001::/home/bob:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""
GROUP = """root:x:0:
wheel:x:10:alice
audio:x:29:bob,alice
staff:x:50:
alice:x:1000:
bob:x:1001:
nogroup:x:65534:
"""


@dataclass(frozen=True)
class Image:
    busybox: list[Path]  # the busybox snapshot and the skeleton, top first
    users: list[Path]  # a layer with more users and groups, then the same


@pytest.fixture(scope="module")
def image(busybox_tar: Path, tmp_path_factory: pytest.TempPathFactory) -> Image:
    require_root()
    root = tmp_path_factory.mktemp("sandbox-store")
    diff_id = Digest.of_bytes(busybox_tar.read_bytes())
    snapshot = SnapshotStore(root / "snapshots").ensure(diff_id, lambda: open(busybox_tar, "rb"))
    skeleton = ensure_skeleton(root)
    users = root / "users"
    (users / "etc").mkdir(parents=True)
    (users / "etc/passwd").write_text(PASSWD)
    (users / "etc/group").write_text(GROUP)
    (users / "home/alice").mkdir(parents=True)
    os.chown(users / "home/alice", 1000, 1000)
    return Image([snapshot, skeleton], [users, snapshot, skeleton])


@dataclass
class Result:
    status: int
    output: str
    scratch: Path

    @property
    def upper(self) -> Path:
        return self.scratch / "upper"

    def upper_paths(self) -> set[str]:
        return {os.path.relpath(os.path.join(d, n), self.upper) for d, ds, fs in os.walk(self.upper) for n in ds + fs}


class Runner:
    def __init__(self, tmp_path: Path, image: Image, servers: SandboxServers | None) -> None:
        self.tmp = tmp_path
        self.image = image
        self.servers = servers  # None: each sandbox is a program of its own
        self.count = 0

    def scratch(self) -> Path:
        self.count += 1
        path = self.tmp / f"scratch-{self.count}"
        path.mkdir(mode=0o700)
        return path

    def __call__(self, command: str | tuple[str, ...], *, lowers: list[Path] | None = None, **fields: object) -> Result:
        argv = ("/bin/sh", "-c", command) if isinstance(command, str) else command
        fields.setdefault("env", (PATH,))
        spec = RunSpec(argv=argv, **fields)  # type: ignore[arg-type]
        chunks: list[bytes] = []
        scratch = self.scratch()
        status = run_container(scratch, lowers or self.image.busybox, spec, chunks.append, servers=self.servers)
        return Result(status, b"".join(chunks).decode(errors="replace"), scratch)

    def sandboxes(self, scratch: Path) -> list[tuple[int, str]]:
        """The sandbox and the container's init of ``scratch`` that are still running: a program started for its
        spec names the spec; one forked by a server has the server's command line, which names our directory."""
        if self.servers is None:
            return processes_with(str(scratch / "spec.json"))
        return [p for p in processes_with(f"{self.tmp} ") if p[0] not in self.server_pids()]

    def server_pids(self) -> set[int]:
        return {server.proc.pid for server in self.servers._servers} if self.servers is not None else set()


@pytest.fixture(params=["program", "server"])
def run(request: pytest.FixtureRequest, tmp_path: Path, image: Image) -> Iterator[Runner]:
    servers = SandboxServers(tmp_path) if request.param == "server" else None
    try:
        yield Runner(tmp_path, image, servers)
    finally:
        if servers is not None:
            servers.close()
            assert processes_with(f"{tmp_path} ") == [], "a server or a sandbox outlived close()"


def processes_with(marker: str) -> list[tuple[int, str]]:
    """Every process on the host whose command line contains ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            found.append((int(entry), cmdline))
    return found


def unique_sleep() -> str:
    """A sleep duration no other process on the machine uses, to find the sleeper in the process table."""
    return f"{secrets.randbelow(9 * 10**5) + 10**5}.{secrets.randbelow(10**6):06d}"


def wait_until_gone(marker: str, timeout: float = 5.0) -> list[tuple[int, str]]:
    deadline = time.monotonic() + timeout
    while (left := processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return left


def wait_until_sandboxes_gone(run: Runner, scratch: Path, timeout: float = 5.0) -> list[tuple[int, str]]:
    deadline = time.monotonic() + timeout
    while (left := run.sandboxes(scratch)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return left


# ----------------------------------------------------------------------------------------------- namespaces


def test_pid_namespace(run: Runner) -> None:
    result = run("echo $$; ps")
    assert result.status == 0, result.output
    own_pid, header, *rows = result.output.splitlines()
    assert own_pid == "2"  # init is 1, the command its first child
    assert header.split()[0] == "PID"
    pids = {int(row.split()[0]): row for row in rows}
    assert 1 in pids and "builder.sandbox" in pids[1]
    assert 2 in pids and len(pids) <= 3, rows  # init, the shell, and ps itself (unless the shell exec'd it)


def test_namespaces_are_new_except_the_network(run: Runner) -> None:
    kinds = ("pid", "mnt", "uts", "ipc", "net")
    result = run("; ".join(f"readlink /proc/self/ns/{k}" for k in kinds))
    assert result.status == 0, result.output
    inside = dict(zip(kinds, result.output.split(), strict=True))
    outside = {k: os.readlink(f"/proc/self/ns/{k}") for k in kinds}
    for kind in ("pid", "mnt", "uts", "ipc"):
        assert inside[kind] != outside[kind], kind
    assert inside["net"] == outside["net"]


def test_hostname_is_the_specs(run: Runner) -> None:
    before = os.uname().nodename
    result = run("hostname; cat /etc/hostname", hostname="box-under-test")
    assert result.output == "box-under-test\nbox-under-test\n"
    assert run("hostname").output == f"{DEFAULT_HOSTNAME}\n"
    assert os.uname().nodename == before


def test_mounts_stay_inside(run: Runner, image: Image) -> None:
    def ours() -> list[str]:
        # Other programs on this machine may mount things meanwhile; what matters is what names our paths.
        with open("/proc/self/mountinfo") as f:
            return [line for line in f if any(str(p) in line for p in (run.tmp, *image.busybox))]

    before = ours()
    result = run("cat /proc/self/mountinfo")
    assert ours() == before == []
    lines = [line.split() for line in result.output.splitlines()]
    points = {fields[4]: fields for fields in lines}
    from builder.sandbox import _MASKED, _READ_ONLY

    hidden = {f"/{rel}" for rel in (*_MASKED, *_READ_ONLY)}
    assert {p for p in points if p not in hidden} == {
        "/",
        "/proc",
        "/dev",
        *(f"/dev/{name}" for name in ("null", "zero", "full", "random", "urandom", "tty")),
        "/dev/pts",
        "/dev/mqueue",
        "/dev/shm",
        "/sys",
        "/etc/hosts",
        "/etc/resolv.conf",
        "/etc/hostname",
    }, result.output
    present = {p for p in hidden if os.path.exists(p)}  # this kernel may lack some (/proc/kcore, ...)
    assert "/proc/sys" in present and present <= set(points), "runc's masks and read-only paths"
    root = points["/"]
    assert root[root.index("-") + 1] == "overlay"
    assert f"upperdir={result.scratch / 'upper'}," in root[-1]  # so the check above had something to find


# ------------------------------------------------------------------------------------------ the filesystem


def test_proc_dev_and_sys(run: Runner) -> None:
    result = run(
        "ls -A /dev; echo --; ls -A /dev/pts; echo --; "
        "stat -c '%n %F %t:%T %a' /dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/tty; echo --; "
        "for l in fd stdin stdout stderr ptmx core; do readlink /dev/$l; done; echo --; "
        "echo discarded > /dev/null && echo null-ok; head -c 3 /dev/zero | od -An -tx1; "
        "echo x > /dev/full || echo full-refuses; echo shm > /dev/shm/t && cat /dev/shm/t; echo --; "
        "cat /proc/1/cmdline | tr '\\0' ' '; echo; echo --; "
        "mkdir /sys/x 2>/dev/null && echo sys-writable || echo sys-read-only; grep ' /sys ' /proc/mounts"
    )
    assert result.status == 0, result.output
    dev, pts, devices, links, writes, proc, sys_ = result.output.split("--\n")
    assert set(dev.split()) == DEV
    assert "ptmx" in pts.split()
    assert devices.splitlines() == [
        "/dev/null character special file 1:3 666",
        "/dev/zero character special file 1:5 666",
        "/dev/full character special file 1:7 666",
        "/dev/random character special file 1:8 666",
        "/dev/urandom character special file 1:9 666",
        "/dev/tty character special file 5:0 666",
    ]
    assert links.split() == [
        "/proc/self/fd",
        "/proc/self/fd/0",
        "/proc/self/fd/1",
        "/proc/self/fd/2",
        "pts/ptmx",
        "/proc/kcore",  # runc adds it too
    ]
    assert "null-ok" in writes and "00 00 00" in writes and "full-refuses" in writes and "shm" in writes
    assert "builder.sandbox" in proc
    assert sys_.splitlines()[0] == "sys-read-only"
    assert sys_.splitlines()[1].split()[3].split(",")[0] == "ro"
    assert result.upper_paths() == set()  # nothing written under /dev or /sys reached the upper


def test_writes_reach_the_upper(run: Runner) -> None:
    result = run("echo hello > /tmp/made && mkdir -p /opt/a/b && rm /bin/vi")
    assert result.status == 0, result.output
    assert (result.upper / "tmp/made").read_text() == "hello\n"
    assert (result.upper / "opt/a/b").is_dir()
    assert os.stat(result.upper / "bin/vi", follow_symlinks=False).st_rdev == 0  # a whiteout
    assert result.upper_paths() == {"tmp", "tmp/made", "opt", "opt/a", "opt/a/b", "bin", "bin/vi"}


def _host_resolv_conf() -> str | None:
    with open("/etc/resolv.conf") as f:
        text = f.read()
    servers = [
        line.split()[1] for line in text.splitlines() if line.startswith("nameserver ") and len(line.split()) > 1
    ]
    if not servers or all(s.startswith(("127.", "::1")) for s in servers):
        return None  # behind a loopback resolver the engine picks another file
    return text


@pytest.mark.parametrize("in_image", [False, True], ids=["from-skeleton", "over-image-files"])
def test_etc_files_are_the_specs_and_never_reach_the_upper(run: Runner, image: Image, in_image: bool) -> None:
    lowers = image.busybox
    if in_image:
        layer = run.tmp / "etc-layer"
        (layer / "etc").mkdir(parents=True)
        for name in ("hosts", "resolv.conf", "hostname"):
            (layer / "etc" / name).write_text(f"the image's own {name}\n")
        lowers = [layer, *lowers]
    result = run(
        "cat /etc/hosts; echo --; cat /etc/resolv.conf; echo --; cat /etc/hostname; echo --; "
        "echo '10.0.0.1 added' >> /etc/hosts; echo 'nameserver 10.9.9.9' > /etc/resolv.conf; "
        "echo renamed > /etc/hostname; echo more > /etc/other; echo --; "
        "cat /etc/hosts /etc/resolv.conf /etc/hostname",
        hostname="myhost",
        lowers=lowers,
    )
    hosts, resolv, hostname, errors, after = result.output.split("--\n")
    assert hosts == "127.0.0.1\tlocalhost myhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    expected_resolv = _host_resolv_conf()
    if expected_resolv is not None:
        assert resolv == expected_resolv
    assert "the image's own" not in resolv
    assert hostname == "myhost\n"
    # Read-only binds, as BuildKit mounts them: the writes fail and change nothing.
    assert errors.count("Read-only file system") == 3, errors
    assert after == hosts + resolv + hostname
    assert result.upper_paths() == {"etc", "etc/other"}
    assert (result.scratch / "files/hosts").read_text() == hosts


def test_network_none_has_only_loopback_and_it_is_up(run: Runner) -> None:
    result = run("ls /sys/class/net; cat /sys/class/net/lo/flags; readlink /proc/self/ns/net", network="none")
    *names, flags, namespace = result.output.splitlines()
    assert names == ["lo"]
    assert int(flags, 16) & 1  # IFF_UP
    assert namespace != os.readlink("/proc/self/ns/net")


def test_default_network_is_the_hosts(run: Runner) -> None:
    result = run("ls /sys/class/net; readlink /proc/self/ns/net")
    *names, namespace = result.output.splitlines()
    assert names == sorted(os.listdir("/sys/class/net"))
    assert namespace == os.readlink("/proc/self/ns/net")


# ---------------------------------------------------------------------------------------------- the user

IDENTITY = "id -u; id -g; grep '^Groups:' /proc/self/status; echo $HOME; id"


@pytest.mark.parametrize(
    ("user", "uid", "gid", "groups", "home"),
    [
        ("", 0, 0, [], "/root"),
        ("alice", 1000, 1000, [10, 29], "/home/alice"),  # member of wheel and audio; primary group not added
        ("1001", 1001, 1001, [29], "/home/bob"),  # a uid in passwd is that user
        ("alice:staff", 1000, 50, [], "/home/alice"),  # an explicit group: no supplementary groups (runc)
        ("alice:77", 1000, 77, [], "/home/alice"),
        ("1500", 1500, 0, [], "/"),  # not in passwd: gid 0, HOME /
        ("1500:77", 1500, 77, [], "/"),
        ("nobody", 65534, 65534, [], "/nonexistent"),
    ],
)
def test_user(run: Runner, image: Image, user: str, uid: int, gid: int, groups: list[int], home: str) -> None:
    result = run(IDENTITY, user=user, lowers=image.users)
    assert result.status == 0, result.output
    got_uid, got_gid, got_groups, got_home, full = result.output.splitlines()
    assert (int(got_uid), int(got_gid)) == (uid, gid), result.output
    assert sorted(int(g) for g in got_groups.split()[1:]) == sorted(groups), result.output
    assert got_home == home
    assert full.startswith(f"uid={uid}")


def test_user_by_name_in_the_id_output(run: Runner, image: Image) -> None:
    result = run("id", user="alice", lowers=image.users)
    assert result.output == "uid=1000(alice) gid=1000(alice) groups=10(wheel),29(audio)\n"


def test_home_from_the_env_wins(run: Runner, image: Image) -> None:
    result = run("echo $HOME", user="alice", env=(PATH, "HOME=/elsewhere"), lowers=image.users)
    assert result.output == "/elsewhere\n"


@pytest.mark.parametrize(
    ("user", "message"),
    [
        ("carol", "unable to find user carol: no matching entries in passwd file"),
        ("alice:nosuchgroup", "unable to find group nosuchgroup: no matching entries in group file"),
    ],
)
def test_unknown_user_or_group(run: Runner, image: Image, user: str, message: str) -> None:
    with pytest.raises(SandboxError, match=re.escape(message)):
        run("echo should not run", user=user, lowers=image.users)


def test_environment_is_exactly_the_specs(run: Runner) -> None:
    result = run(("env",), env=(PATH, "FOO=bar baz", "EMPTY="))
    assert sorted(result.output.splitlines()) == sorted([PATH, "FOO=bar baz", "EMPTY=", "HOME=/root"])


def test_workdir_is_created_and_kept(run: Runner, image: Image) -> None:
    result = run("pwd; touch here", cwd="/work/dir", user="alice", lowers=image.users)
    assert result.status == 1 and result.output.startswith("/work/dir\n")  # alice cannot write in root's dir
    assert {"work", "work/dir"} <= result.upper_paths()
    st = os.stat(result.upper / "work/dir")
    assert (st.st_uid, st.st_mode & 0o777) == (0, 0o755)
    assert run("pwd", cwd="/tmp").output == "/tmp\n"
    assert run("pwd", cwd="/tmp").upper_paths() == set()  # an existing workdir is not copied up


# ------------------------------------------------------------------------------------------ the command


def test_exec_form_has_no_shell(run: Runner) -> None:
    assert run(("/bin/echo", "$HOME", "a  b", "*")).output == "$HOME a  b *\n"
    assert run(("echo", "found", "on", "PATH")).output == "found on PATH\n"


@pytest.mark.parametrize(
    ("command", "status", "says"),
    [
        ("exit 3", 3, ""),
        ("true", 0, ""),
        ("no-such-command", 127, "not found"),
        (("/no/such/binary",), 127, "/no/such/binary: No such file or directory"),
        (("/etc/passwd",), 126, "Permission denied"),
        ("kill -KILL $$", 128 + signal.SIGKILL, ""),
        ("kill -TERM $$", 128 + signal.SIGTERM, ""),
    ],
)
def test_exit_status(run: Runner, command: str | tuple[str, ...], status: int, says: str) -> None:
    result = run(command)
    assert result.status == status, result.output
    assert says in result.output


def test_heredoc_script(run: Runner) -> None:
    # plan.py: a heredoc body with #! runs as (*SHELL, "/dev/pipes/NAME")
    script = '#!/bin/sh\necho "hi from $0"\nid -u\n'
    result = run(("/bin/sh", "-c", "/dev/pipes/EOF"), scripts=(("EOF", script),))
    assert (result.status, result.output) == (0, "hi from /dev/pipes/EOF\n0\n")
    assert result.upper_paths() == set()


# ---------------------------------------------------------------------------------------------- processes


def test_init_holds_no_descriptor_of_the_engine_or_the_server(run: Runner) -> None:
    result = run("ls /proc/1/fd")
    assert result.status == 0, result.output
    # Its output, the error file and the pipe that tells it the sandbox is alive (runc CVE-2024-21626: a descriptor
    # of a host directory in init would be a way out through /proc/1/fd).
    assert result.output.split() == ["0", "1", "2", "3", "4"]


def test_leftover_processes_die_with_the_command(run: Runner) -> None:
    marker = unique_sleep()
    started = time.monotonic()
    result = run(f"sleep {marker} & echo started")
    assert result.status == 0 and result.output == "started\n"
    assert time.monotonic() - started < 5
    assert processes_with(marker) == []


def _output_breaks(run: Runner, scratch: Path, marker: str) -> None:
    def explode(chunk: bytes) -> None:
        assert len(processes_with(marker)) == 2, "the shell and its sleeper should be running by now"
        assert len(run.sandboxes(scratch)) == 2, "the sandbox and the container's init should be running by now"
        raise RuntimeError("display broke")

    spec = RunSpec(argv=("/bin/sh", "-c", f"sleep {marker} & echo started; wait"), env=(PATH,))
    with pytest.raises(RuntimeError, match="display broke"):
        run_container(scratch, run.image.busybox, spec, explode, servers=run.servers)


def test_everything_dies_when_reading_the_output_fails(run: Runner, image: Image) -> None:
    marker = unique_sleep()
    scratch = run.scratch()
    _output_breaks(run, scratch, marker)
    assert wait_until_gone(marker) == []
    assert wait_until_sandboxes_gone(run, scratch) == []  # the sandbox and the container's init


def test_everything_is_gone_when_run_container_returns_after_a_failure(run: Runner, image: Image) -> None:
    survivors = []
    for _ in range(5):  # the race is lost about 4 times in 5; five in a row leaves it no chance to hide
        marker = unique_sleep()
        scratch = run.scratch()
        _output_breaks(run, scratch, marker)
        survivors.extend(processes_with(marker) + run.sandboxes(scratch))
        wait_until_gone(marker)
    assert survivors == []


@pytest.mark.parametrize("run", ["server"], indirect=True)
def test_a_server_is_used_again_and_replaced_when_it_is_gone(run: Runner) -> None:
    assert run("echo one").output == "one\n"
    (first,) = run.server_pids()
    assert run("echo two").output == "two\n"
    assert run.server_pids() == {first}, "one server forks the sandbox of every step"
    os.kill(first, signal.SIGKILL)
    os.waitid(os.P_PID, first, os.WEXITED | os.WNOWAIT)
    assert run("echo three").output == "three\n"  # found gone when asked: this sandbox is a program of its own
    assert run("echo four").output == "four\n"
    assert len(run.server_pids() - {first}) == 1, "the next step has a new server"


@pytest.mark.parametrize("run", ["server"], indirect=True)
def test_a_server_refuses_a_spec_outside_its_directory(run: Runner, tmp_path_factory: pytest.TempPathFactory) -> None:
    assert run("true").status == 0  # the server is started
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    spec = RunSpec(argv=("/bin/sh", "-c", "echo ran"), env=(PATH,))
    with pytest.raises(SandboxError, match="refused"):
        run_container(elsewhere, run.image.busybox, spec, lambda chunk: None, servers=run.servers)
    assert run("echo after").output == "after\n"


ENGINE = """
import os
import sys
from pathlib import Path
from builder.executor import RunSpec, SandboxServers, run_container
scratch, *lowers = sys.argv[1:]
marker = os.environ["MARKER"]  # not in our own command line, where the test looks for the sleeper
servers = SandboxServers(Path(scratch).parent) if os.environ["SERVERS"] else None
spec = RunSpec(argv=("/bin/sh", "-c", f"sleep {marker} & echo started; wait"), env=("PATH=/bin",))
def show(chunk):
    sys.stdout.buffer.write(chunk)
    sys.stdout.flush()
run_container(Path(scratch), [Path(p) for p in lowers], spec, show, servers=servers)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_everything_dies_with_the_engine(run: Runner, image: Image, signum: int) -> None:
    marker = unique_sleep()
    scratch = run.scratch()
    engine = subprocess.Popen(
        [sys.executable, "-c", ENGINE, str(scratch), *map(str, image.busybox)],
        stdout=subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "MARKER": marker, "SERVERS": "1" if run.servers else ""},
    )
    try:
        assert engine.stdout is not None
        assert engine.stdout.readline() == b"started\n"
        sandbox = processes_with(str(scratch / "spec.json") if run.servers is None else f"{run.tmp} ")
        assert len(sandbox) == (2 if run.servers is None else 3), sandbox  # (the server,) the sandbox and init
        assert len(processes_with(marker)) == 2  # the shell and its sleeper
        engine.send_signal(signum)
        assert engine.wait(5) == -signum
    finally:
        if engine.poll() is None:
            engine.kill()
            engine.wait()
    assert wait_until_gone(marker) == []
    assert wait_until_gone(str(scratch / "spec.json")) == []
    assert wait_until_gone(f"{run.tmp} ") == []  # the server, its sandbox and the container's init


# ------------------------------------------------------------------------------------------------- output


def test_output_streams_and_idle_is_called(run: Runner, image: Image) -> None:
    scratch = run.scratch()
    started = time.monotonic()
    chunks: list[tuple[float, bytes]] = []
    idles: list[float] = []
    spec = RunSpec(argv=("/bin/sh", "-c", "echo one; sleep 1; echo two"), env=(PATH,))
    status = run_container(
        scratch,
        image.busybox,
        spec,
        lambda chunk: chunks.append((time.monotonic() - started, chunk)),
        lambda: idles.append(time.monotonic() - started),
        servers=run.servers,
    )
    ended = time.monotonic() - started
    assert status == 0
    assert b"".join(c for _, c in chunks) == b"one\ntwo\n"
    first_at, first = chunks[0]
    assert first == b"one\n", chunks
    assert ended - first_at >= 0.6, (first_at, ended)  # it came while the command was still sleeping
    two_at = next(t for t, c in chunks if b"two" in c)
    quiet = [t for t in idles if first_at < t < two_at]
    assert len(quiet) >= 2, (chunks, idles)  # quiet for 1 s: on_idle every 0.25 s


def test_output_is_merged_stdout_and_stderr(run: Runner) -> None:
    result = run("echo out; echo err >&2; echo out2")
    assert result.output == "out\nerr\nout2\n"


def test_root_in_the_container_has_only_dockers_default_capabilities(run: Runner) -> None:
    result = run(
        "grep -E '^Cap(Prm|Eff|Bnd|Amb)' /proc/self/status;"
        " mknod /tmp/disk b 7 0 && (cat /tmp/disk > /dev/null 2>&1 && echo DISK-READ || echo disk-refused);"
        " hostname other 2>/dev/null && echo HOSTNAME-SET || echo hostname-refused;"
        " (echo 1 > /proc/sys/kernel/panic) 2>/dev/null && echo PROC-SYS-WRITTEN || echo proc-sys-read-only;"
        " mkdir -p /mnt/t && (mount -t tmpfs t /mnt/t 2>/dev/null && echo MOUNTED || echo mount-refused)"
    )
    assert result.status == 0, result.output
    caps = dict(line.split(":\t") for line in result.output.splitlines() if line.startswith("Cap"))
    expected = f"{sum(1 << cap for cap in DEFAULT_CAPABILITIES):016x}"
    assert caps == {"CapPrm": expected, "CapEff": expected, "CapBnd": expected, "CapAmb": "0" * 16}
    for refused in ("disk-refused", "hostname-refused", "proc-sys-read-only", "mount-refused"):
        assert refused in result.output, result.output
