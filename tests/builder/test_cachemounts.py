"""``builder.cachemounts``: the store of RUN --mount=type=cache directories. Sharing as BuildKit documents it (shared
steps share, a locked step waits, a private step gets its own directory) with threads and processes; seeding once;
any id string; a SIGKILLed holder or creator leaves a usable store; removing never follows the content's symlinks;
archives round-trip with owners and modes, and hostile ones are refused before anything is written."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import REPO, require_root

from builder.cachemounts import CacheMountError, CacheMountInUse, CacheMountStore, MountArchive
from oci.apply import ApplyLimits
from oci.compression import Compression, compressor
from oci.digest import Digest

# A process that opens a mount and holds it until killed; it prints the directory once it holds it. With "seed-hang",
# it hangs inside the seed, before the mount is published.
HOLDER = """
import os, sys, time
from pathlib import Path
from builder.cachemounts import CacheMountStore
root, id, sharing = sys.argv[1:4]
def seed(path):
    (path / "seeded-by").write_text(str(os.getpid()))
    if sys.argv[4:] == ["seed-hang"]:
        print(path, flush=True)
        time.sleep(600)
with CacheMountStore(Path(root)).open(id, sharing=sharing, seed=seed) as directory:
    (directory / "held-by").write_text(str(os.getpid()))
    print(directory, flush=True)
    time.sleep(600)
"""


@pytest.fixture
def store(tmp_path: Path) -> CacheMountStore:
    return CacheMountStore(tmp_path / "root")


@pytest.fixture
def holders() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def hold(
    holders: list[subprocess.Popen[str]], store: CacheMountStore, id: str, sharing: str, *extra: str
) -> tuple[subprocess.Popen[str], Path]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(store.root), id, sharing, *extra],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    holders.append(proc)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line, "the holder died before holding the mount"
    return proc, Path(line)


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


# --- sharing


def test_a_new_mount_is_made_with_its_owner_and_mode_and_kept(store: CacheMountStore) -> None:
    with store.open("/root/.cache/pip", uid=1234, gid=5678, mode=0o2770) as directory:
        st = directory.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1234, 5678, 0o2770) or os.geteuid() != 0
        assert list(directory.iterdir()) == []
        (directory / "wheel.whl").write_text("cached")
    with store.open("/root/.cache/pip", uid=1, gid=1, mode=0o700) as again:  # only a new mount takes them
        assert again == directory
        assert (again / "wheel.whl").read_text() == "cached"
        assert again.stat().st_mode & 0o7777 == st.st_mode & 0o7777
    [mount] = store.list()
    assert (mount.id, mount.size, mount.uses, mount.in_use) == ("/root/.cache/pip", 6, 2, False)


def test_shared_steps_use_the_same_directory_at_once(store: CacheMountStore) -> None:
    barrier = threading.Barrier(3)
    seen: list[Path] = []
    listings: list[list[str]] = []
    errors: list[BaseException] = []

    def step(n: int) -> None:
        try:
            with store.open("go-build") as directory:
                (directory / f"from-{n}").write_text(str(n))
                seen.append(directory)
                barrier.wait(timeout=10)  # all three are inside at the same time
                listings.append(sorted(p.name for p in directory.iterdir()))
        except BaseException as err:  # noqa: BLE001 - a thread's failure must fail the test
            errors.append(err)

    threads = [threading.Thread(target=step, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(set(seen)) == 1 and len(seen) == 3
    assert listings == [["from-0", "from-1", "from-2"]] * 3


def test_a_locked_step_waits_for_the_holder_in_another_process(
    store: CacheMountStore, holders: list[subprocess.Popen[str]]
) -> None:
    proc, held = hold(holders, store, "/var/cache/apt", "locked")
    entered = threading.Event()

    def second() -> None:
        with store.open("/var/cache/apt", sharing="locked") as directory:
            assert directory == held
            entered.set()

    thread = threading.Thread(target=second)
    thread.start()
    assert not entered.wait(0.5), "a locked step must wait while another holds the mount"
    assert store.list()[0].in_use
    proc.terminate()  # the holder's SIGTERM ends it without unwinding: its flock goes with the process
    proc.wait()
    assert entered.wait(10)
    thread.join()


def test_a_locked_step_waits_for_shared_steps_then_shared_steps_wait_for_nothing(store: CacheMountStore) -> None:
    order: list[str] = []
    inside = threading.Event()
    release = threading.Event()

    def shared() -> None:
        with store.open("cache", sharing="shared"):
            order.append("shared in")
            inside.set()
            release.wait(10)
            order.append("shared out")

    def locked() -> None:
        with store.open("cache", sharing="locked"):
            order.append("locked in")

    first = threading.Thread(target=shared)
    first.start()
    assert inside.wait(10)
    second = threading.Thread(target=locked)
    second.start()
    time.sleep(0.3)
    release.set()
    first.join()
    second.join()
    assert order == ["shared in", "shared out", "locked in"]


def test_a_private_step_gets_the_mount_alone_or_a_fresh_directory_that_is_discarded(store: CacheMountStore) -> None:
    with store.open("npm", sharing="private") as alone:
        (alone / "kept").write_text("1")
    with store.open("npm", sharing="shared") as first:
        assert first == alone
        with store.open("npm", sharing="private", mode=0o700) as second:
            assert second != first
            assert list(second.iterdir()) == []  # fresh: not the busy mount's content
            assert second.stat().st_mode & 0o777 == 0o700
            (second / "discarded").write_text("2")
        assert not second.exists()
    with store.open("npm") as again:
        assert sorted(p.name for p in again.iterdir()) == ["kept"]


def test_a_shared_step_does_not_wait_for_an_exclusive_holder(
    store: CacheMountStore, holders: list[subprocess.Popen[str]]
) -> None:
    _, held = hold(holders, store, "apt", "locked")
    started = time.monotonic()
    with store.open("apt", sharing="shared") as directory:  # BuildKit gives it another instance
        assert directory != held and list(directory.iterdir()) == []
    assert time.monotonic() - started < 5


def test_seed_runs_once_for_the_mount_even_when_steps_race_to_create_it(store: CacheMountStore) -> None:
    calls: list[Path] = []
    barrier = threading.Barrier(4)

    def seed(directory: Path) -> None:
        calls.append(directory)
        time.sleep(0.2)  # long enough for the other steps to arrive while it is being made
        (directory / "from-stage").write_text("seeded")

    def step() -> None:
        barrier.wait(timeout=10)
        with store.open("seeded", seed=seed) as directory:
            assert (directory / "from-stage").read_text() == "seeded"

    threads = [threading.Thread(target=step) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    with store.open("seeded", seed=seed):
        pass
    assert len(calls) == 1


def test_a_failed_seed_publishes_nothing(store: CacheMountStore) -> None:
    def broken(directory: Path) -> None:
        (directory / "half").write_text("x")
        raise RuntimeError("the source stage is gone")

    with pytest.raises(RuntimeError):
        with store.open("half", seed=broken):
            pass
    assert store.list() == []
    with store.open("half") as directory:
        assert list(directory.iterdir()) == []
    assert not [p for p in store.dir.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    "id",
    ["a/b/c", "../../../etc", "/", ".", "with space\tand\nnewline", "ünïcødé ✓", "x" * 4096, "--mount=type=cache"],
)
def test_any_id_is_a_safe_name(store: CacheMountStore, tmp_path: Path, id: str) -> None:
    with store.open(id) as directory:
        assert directory.parent.parent == store.dir
        (directory / "f").write_text(id)
    with store.open(id) as directory:
        assert (directory / "f").read_text() == id
    assert [m.id for m in store.list()] == [id]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]


def test_ids_that_are_not_strings_are_refused(store: CacheMountStore) -> None:
    for bad in ("", "x" * 4097, "\udcff"):
        with pytest.raises(ValueError):
            with store.open(bad):
                pass
    with pytest.raises(ValueError):
        with store.open("ok", sharing="exclusive"):
            pass


# --- killed processes


def test_a_sigkilled_holder_leaves_a_usable_mount(store: CacheMountStore, holders: list[subprocess.Popen[str]]) -> None:
    proc, held = hold(holders, store, "/root/.m2", "locked")
    kill(proc)
    with store.open("/root/.m2", sharing="locked") as directory:  # no wait: the flock died with the process
        assert directory == held
        assert (directory / "held-by").read_text() == str(proc.pid)
    assert store.remove(["/root/.m2"]).removed


def test_a_creator_killed_while_seeding_leaves_nothing_half_made(
    store: CacheMountStore, holders: list[subprocess.Popen[str]]
) -> None:
    proc, half = hold(holders, store, "seeding", "shared", "seed-hang")
    assert half.parent == store.dir and half.name.startswith(f".{proc.pid}-")
    kill(proc)
    assert store.list() == []  # the unpublished directory is no mount, and the sweep takes it
    assert not half.exists()
    calls = []
    with store.open("seeding", seed=calls.append) as directory:
        assert list(directory.iterdir()) == []
    assert len(calls) == 1


def test_a_killed_private_steps_fresh_directory_is_swept(
    store: CacheMountStore, holders: list[subprocess.Popen[str]]
) -> None:
    hold(holders, store, "p", "locked")
    proc, fresh = hold(holders, store, "p", "private")
    assert fresh.parent == store.dir  # the busy mount's private second user got a work directory
    kill(proc)
    store.sweep()
    assert not fresh.exists()


# --- removing and measuring


def test_remove_refuses_a_mount_in_use_and_never_follows_its_symlinks(
    store: CacheMountStore, tmp_path: Path, holders: list[subprocess.Popen[str]]
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    with store.open("links") as directory:
        os.symlink(outside, directory / "dir-link")
        os.symlink(outside / "precious", directory / "file-link")
        (directory / "sub").mkdir()
        os.symlink("../../../..", directory / "sub" / "up")
    proc, _ = hold(holders, store, "links", "shared")
    result = store.remove(["links", "never-made"])
    assert (result.removed, result.in_use, result.missing) == ((), ("links",), ("never-made",))
    kill(proc)
    result = store.remove(["links"])
    assert [m.id for m in result.removed] == ["links"]
    assert (outside / "precious").read_text() == "keep me"
    assert store.list() == [] and not store.path("links").exists()


def test_sizes_are_measured_after_use_and_prune_takes_the_old_ones(store: CacheMountStore) -> None:
    with store.open("big") as directory:
        (directory / "a").write_bytes(b"x" * 1000)
        os.link(directory / "a", directory / "hard")  # counted once
    with store.open("small") as directory:
        (directory / "b").write_bytes(b"y" * 10)
    assert {m.id: m.size for m in store.list()} == {"big": 1000, "small": 10}
    with store.open("big") as directory:
        (directory / "c").write_bytes(b"z" * 24)
    assert store.get("big").size == 1024  # type: ignore[union-attr]
    now = time.time()
    assert store.prune(until=3600, now=now).removed == ()
    removed = store.prune(until=3600, now=now + 7200)
    assert sorted(m.id for m in removed.removed) == ["big", "small"] and removed.reclaimed == 1034


# --- archives


def _populate(directory: Path) -> None:
    (directory / "file").write_bytes(b"content" * 100)
    os.chmod(directory / "file", 0o640)
    (directory / "dir").mkdir(mode=0o711)
    (directory / "dir" / "exe").write_text("#!/bin/sh\n")
    os.chmod(directory / "dir" / "exe", 0o4755)
    os.symlink("/usr/lib/absolute", directory / "dir" / "abs-link")
    os.link(directory / "file", directory / "dir" / "hard")
    os.utime(directory / "file", (1_600_000_000, 1_600_000_000))
    if os.geteuid() == 0:
        os.chown(directory / "dir", 1000, 1001)
        os.chown(directory / "dir" / "abs-link", 7, 8, follow_symlinks=False)


def _tree(root: Path) -> dict[str, tuple[object, ...]]:
    found: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            extra = os.readlink(path) if path.is_symlink() else path.read_bytes() if path.is_file() else b""
            found[str(path.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, int(st.st_mtime), extra)
    return found


def test_an_archive_restores_the_same_tree_into_another_store(store: CacheMountStore, tmp_path: Path) -> None:
    with store.open("/var/cache/apt", uid=100, gid=101, mode=0o750) as directory:
        _populate(directory)
    buf = io.BytesIO()
    archive = store.write_archive("/var/cache/apt", buf)
    again = io.BytesIO()
    assert store.write_archive("/var/cache/apt", again) == archive and again.getvalue() == buf.getvalue()
    other = CacheMountStore(tmp_path / "other")
    other.restore(archive, lambda: io.BytesIO(buf.getvalue()))
    with store.open("/var/cache/apt") as a, other.open("/var/cache/apt") as b:
        assert _tree(a) == _tree(b)
        assert (a.stat().st_mode, a.stat().st_uid, a.stat().st_gid) == (
            b.stat().st_mode,
            b.stat().st_uid,
            b.stat().st_gid,
        )
        assert os.stat(b / "file").st_ino == os.stat(b / "dir" / "hard").st_ino
    assert other.get("/var/cache/apt").size == 710  # type: ignore[union-attr]


def test_restoring_replaces_the_mount_whole_unless_it_is_in_use(
    store: CacheMountStore, holders: list[subprocess.Popen[str]]
) -> None:
    with store.open("m") as directory:
        (directory / "new").write_text("from the archive")
    buf = io.BytesIO()
    archive = store.write_archive("m", buf)
    store.remove(["m"])
    with store.open("m") as directory:
        (directory / "local-only").write_text("replaced, not merged")
    proc, _ = hold(holders, store, "m", "shared")
    with pytest.raises(CacheMountInUse):
        store.restore(archive, lambda: io.BytesIO(buf.getvalue()))
    kill(proc)
    store.restore(archive, lambda: io.BytesIO(buf.getvalue()))
    with store.open("m") as directory:
        assert sorted(p.name for p in directory.iterdir()) == ["new"]
    assert not [p for p in store.dir.iterdir() if p.name.startswith(f".{os.getpid()}-")]


def _hostile(entries: list[tuple[str, str, str]]) -> tuple[bytes, Digest]:
    """A zstd tar of (kind, name, target-or-content) made with Python's tarfile, and its diff_id."""
    import tarfile

    plain = io.BytesIO()
    with tarfile.open(fileobj=plain, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for kind, name, value in entries:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(value)
                tar.addfile(info, io.BytesIO(value.encode()))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE}[kind]
            info.linkname = value
            tar.addfile(info)
    packed = io.BytesIO()
    writer = compressor(Compression.ZSTD, packed)
    writer.write(plain.getvalue())
    writer.finish()
    return packed.getvalue(), Digest.of_bytes(plain.getvalue())


HOSTILE = {
    "dot-dot": [("file", "../escaped", "x")],
    "dot-dot-inside": [("dir", "a", ""), ("file", "a/../../escaped", "x")],
    "absolute": [("file", "/tmp/escaped", "x")],
    "symlink-escape": [("symlink", "link", "/"), ("file", "link/escaped", "x")],
    "symlink-parent": [("symlink", "up", "../../.."), ("dir", "up/x", "")],
    "hardlink-outside": [("hardlink", "h", "../../../etc/passwd")],
    "hardlink-dangling": [("hardlink", "h", "nothing")],
    "whiteout": [("file", ".wh.file", "")],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_archive_is_refused_before_anything_is_written(
    store: CacheMountStore, tmp_path: Path, case: str
) -> None:
    with store.open("target") as directory:
        (directory / "mine").write_text("untouched")
    before = _tree(tmp_path)
    data, diff_id = _hostile(HOSTILE[case])
    archive = MountArchive("target", diff_id, 0, 0, 0, 0, 0o755, 0, 0.0, 0.0)
    with pytest.raises(CacheMountError, match="refused"):
        store.restore(archive, lambda: io.BytesIO(data))
    assert _tree(tmp_path) == before  # nothing written anywhere, the mount as it was
    assert not Path("/tmp/escaped").exists()


def test_an_archive_whose_content_is_not_its_diff_id_is_refused(store: CacheMountStore) -> None:
    data, diff_id = _hostile([("file", "ok", "fine")])
    wrong = replace(MountArchive("x", diff_id, 0, 0, 0, 0, 0o755, 0, 0.0, 0.0), diff_id=Digest.of_bytes(b"other"))
    with pytest.raises(CacheMountError, match="diff_id"):
        store.restore(wrong, lambda: io.BytesIO(data))
    assert store.list() == []


def test_archives_keep_owners_as_root(store: CacheMountStore, tmp_path: Path) -> None:
    require_root()
    with store.open("owned", uid=33, gid=33) as directory:
        (directory / "f").write_text("x")
        os.chown(directory / "f", 1000, 2000)
    buf = io.BytesIO()
    archive = store.write_archive("owned", buf)
    other = CacheMountStore(tmp_path / "other")
    other.restore(archive, lambda: io.BytesIO(buf.getvalue()))
    with other.open("owned") as directory:
        assert (directory.stat().st_uid, directory.stat().st_gid) == (33, 33)
        assert ((directory / "f").stat().st_uid, (directory / "f").stat().st_gid) == (1000, 2000)


@pytest.mark.parametrize(
    ("entries", "limits", "message"),
    [
        ([("file", "zeros", "\0" * (4 << 20))], ApplyLimits(max_bytes=1 << 20), "expands to more than the 1 MiB"),
        ([("file", f"f{i}", "") for i in range(50)], ApplyLimits(max_entries=20), "has more than the 20-entry"),
    ],
    ids=["bytes", "entries"],
)
def test_an_archive_beyond_the_store_limits_is_refused_before_anything_is_written(
    tmp_path: Path, entries: list[tuple[str, str, str]], limits: ApplyLimits, message: str
) -> None:
    store = CacheMountStore(tmp_path / "root", limits)
    data, diff_id = _hostile(entries)
    archive = MountArchive("bomb", diff_id, 0, 0, 0, 0, 0o755, 0, 0.0, 0.0)
    before = _tree(tmp_path)
    with pytest.raises(CacheMountError, match=message) as caught:
        store.restore(archive, lambda: io.BytesIO(data))
    assert caught.value.hint.startswith("raise it with --max-layer-")
    assert _tree(tmp_path) == before
    assert store.list() == []
