"""Helpers for the containment tests (tests/functional/test_containment.py): the host state a build must never
change, hostile images put straight into the store, and a search for a secret in everything a build leaves.

``HostWatch`` records, before a test builds anything: two sentinel trees (one in the test's temporary directory,
one at ``/tmp/pybuild-sentinel-TOKEN``, where hostile names aim with absolute paths and long ``..`` chains),
every byte, mode, owner, inode and mtime of them; the listing of ``/`` and of the directories an escaped name
would land in; and ``/proc/self/mountinfo``. ``check()`` then asserts that the sentinel trees and ``/`` are as
they were, that no name a hostile archive writes turned up anywhere it could land by escaping (around the store,
the test's directories, ``/tmp``, ``/etc``, the working directory) outside an image's own tree, and that the
mount table holds the same mounts of our paths (the store, the test's directories, the sentinel) in the same
number: other processes on a shared machine may mount elsewhere meanwhile, and whatever pybuild mounts names the
store or the context.
"""

from __future__ import annotations

import io
import os
import re
import sqlite3
import stat
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from conftest import REPO, CLIResult
from tartools import compress, snapshot

from builder.commit import store_image
from builder.images import resolve_image
from builder.platforms import host_platform
from builder.root import open_store
from oci.compression import Compression, decompress_stream
from oci.config import ImageConfig
from oci.descriptor import Descriptor
from oci.digest import Digest

VICTIM = b"precious content that lives outside the root\n"
KEEP = b"keep me\n"

# Names a hostile archive writes that could land next to (or above) an extraction root if it escaped.
ESCAPE_NAMES = frozenset({"escape", "escaped", "pwned", "victim", "keep"})


def tree_state(top: Path) -> dict[str, tuple]:
    """Everything observable about a tree, with inode numbers and mtimes (of ``top`` too)."""
    state: dict[str, tuple] = dict(snapshot(top))
    for rel in [".", *list(state)]:
        st = os.lstat(top / rel)
        state[f"stat:{rel}"] = (st.st_ino, st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns)
    return state


def mountinfo() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return f.read().splitlines()


def _make_sentinel_tree(top: Path, secret: bytes) -> None:
    (top / "dir").mkdir(parents=True)
    (top / "victim").write_bytes(VICTIM)
    (top / "dir" / "keep").write_bytes(KEEP)
    (top / "secret").write_bytes(secret)
    os.utime(top / "victim", ns=(1_000_000_000, 1_000_000_000))


@dataclass
class HostWatch:
    token: str
    host: Path  # /tmp/pybuild-sentinel-TOKEN: what absolute names and ../ chains aim at
    outside: Path  # a sentinel tree beside the contexts and outputs
    home: Path  # HOME, with the store under it
    tmp: Path  # the test's tmp_path
    allowed: list[Path] = field(default_factory=list)  # output trees a test asked for (an image's files)
    _trees: dict[str, dict[str, tuple]] = field(default_factory=dict)
    _root_listing: list[str] = field(default_factory=list)
    _listings: dict[str, set[str]] = field(default_factory=dict)
    _mounts: list[str] = field(default_factory=list)
    checks: int = 0

    @property
    def secret(self) -> bytes:
        """Content that exists only in the sentinel trees: it must never reach a layer, a record or a log."""
        return f"outside-secret-{self.token}".encode()

    @property
    def outside_abs(self) -> str:
        """The sentinel's absolute path, under the name tests/oci/test_apply_hostile.py's cases use."""
        return str(self.host)

    @property
    def pwned(self) -> str:
        return f"pwned-{self.token}"

    def climb(self, rel: str = "") -> str:
        """A relative name that climbs far above any extraction root, to the host sentinel (and ``rel`` in it)."""
        return "../" * 40 + str(self.host).lstrip("/") + (f"/{rel}" if rel else "")

    def _watched_dirs(self) -> list[Path]:
        store = self.home / "store"
        dirs = [Path("/tmp"), Path("/etc"), REPO, self.tmp, self.tmp.parent, self.home, store, store / "tmp"]
        dirs.append(store / "snapshots")
        return dirs

    def seal(self) -> None:
        _make_sentinel_tree(self.host, self.secret)
        _make_sentinel_tree(self.outside, self.secret)
        self._trees = {str(p): tree_state(p) for p in (self.host, self.outside)}
        self._root_listing = sorted(os.listdir("/"))
        self._listings = {str(d): set(os.listdir(d)) if d.is_dir() else set() for d in self._watched_dirs()}
        self._mounts = mountinfo()

    def _suspicious(self, name: str) -> bool:
        return name in ESCAPE_NAMES or self.token in name  # other runs may have sentinels of their own in /tmp

    def _stray_names(self) -> list[str]:
        """Escape-looking names that appeared in a watched directory, or anywhere under HOME or tmp_path outside an
        image's tree (a published snapshot, an output a test asked for) and the sentinel tree itself."""
        found = []
        for directory in self._watched_dirs():
            before = self._listings.get(str(directory), set())
            now = set(os.listdir(directory)) if directory.is_dir() else set()
            found += [
                f"{directory}/{n}"
                for n in sorted(now - before)
                if self._suspicious(n) and Path(directory, n) != self.host
            ]
        snapshots = self.home / "store" / "snapshots"
        skip = {self.outside, *self.allowed}
        for top in (self.home, self.tmp):
            for dirpath, dirnames, filenames in os.walk(top):
                here = Path(dirpath)
                # A published snapshot is an image's own tree: whatever the image holds is in there.
                dirnames[:] = [
                    d
                    for d in dirnames
                    if here / d not in skip and not (here == snapshots and re.fullmatch(r"[0-9a-f]{64}", d))
                ]
                found += [str(here / n) for n in dirnames + filenames if self._suspicious(n)]
        return found

    def check(self) -> None:
        """Nothing outside the store and the requested outputs changed; no mount was left behind."""
        self.checks += 1
        for path, before in self._trees.items():
            assert tree_state(Path(path)) == before, f"the sentinel tree {path} changed"
        assert sorted(os.listdir("/")) == self._root_listing, "a name appeared in /"
        stray = self._stray_names()
        assert not stray, f"escaped names: {stray}"
        # Only mounts that name our paths: other processes on the machine may mount and unmount meanwhile, and
        # whatever pybuild mounts (overlays of snapshots, binds of a context) names the store or the context.
        before, now = self._ours(self._mounts), self._ours(mountinfo())
        assert len(now) == len(before) and now == before, {
            "new": sorted(set(now) - set(before)),
            "gone": sorted(set(before) - set(now)),
        }

    def _ours(self, lines: list[str]) -> list[str]:
        paths = (str(self.home), str(self.tmp), str(self.host), "pybuild-sentinel-")
        return [line for line in lines if any(p in line for p in paths)]


# ------------------------------------------------------------------------------------------ the CLI's answers


def one_line_error(result: CLIResult, *fragments: str) -> str:
    """A failure reported as exit 1 and one ``pybuild:`` line (the last), holding every fragment."""
    assert result.code == 1, result
    assert "Traceback" not in result.err, result
    lines = result.err.strip().splitlines()
    errors = [line for line in lines if line.startswith("pybuild: ")]
    assert errors == lines[-1:], result.err
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


# ------------------------------------------------------------------------------------------ images in the store


def put_image(
    store_root: Path, name: str, layers: list[bytes], *, base: str | None = None, kind: Compression = Compression.NONE
) -> None:
    """Tag ``name`` as an image made of ``base``'s layers (if any) and then ``layers`` (raw tars, stored as they
    are or compressed with ``kind``): the bytes go into the store without being looked at, as a pull would."""
    store = open_store(store_root)
    blobs = store.layout.store
    platform = host_platform()
    descriptors: list[Descriptor] = []
    diff_ids: list[Digest] = []
    if base is not None:
        for desc, diff_id in resolve_image(store.layout, base, platform).image.layer_pairs():
            descriptors.append(desc)
            diff_ids.append(diff_id)
    for raw in layers:
        data = compress(kind, raw) if kind is not Compression.NONE else raw
        descriptors.append(Descriptor(kind.layer_media_type, blobs.put_bytes(data), len(data)))
        diff_ids.append(Digest.of_bytes(raw))
    config = ImageConfig(platform.architecture, platform.os, diff_ids=tuple(diff_ids))
    image = store_image(store.layout, config, descriptors)
    store.layout.tag(f"docker.io/library/{name}:latest", image.descriptor)


# ------------------------------------------------------------------------------------------ exported trees


def tar_members(path: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return {m.name.rstrip("/"): m for m in tar.getmembers()}


def tar_file(path: Path, name: str) -> bytes:
    with tarfile.open(path) as tar:
        member = tar.extractfile(name)
        assert member is not None, name
        return member.read()


def assert_clean_names(members: dict[str, tarfile.TarInfo]) -> None:
    """Every name (and hardlink target) in an exported tar is relative and stays inside."""
    for name, member in members.items():
        for value in (name, member.linkname if member.islnk() else ""):
            assert not value.startswith("/"), member
            assert ".." not in value.split("/"), member


# ------------------------------------------------------------------------------------------ finding a secret


def _decoded(path: Path) -> Iterator[bytes]:
    """A file's bytes, and for a blob its decompressed bytes too, and for the cache index every value in it."""
    data = path.read_bytes()
    yield data
    try:
        _, plain = decompress_stream(io.BytesIO(data))
        unpacked = plain.read()
    except Exception:  # noqa: BLE001 - not a compressed stream
        unpacked = b""
    if unpacked and unpacked != data:
        yield unpacked
    if data.startswith(b"SQLite format 3\0"):
        yield from _sqlite_values(path)


def _sqlite_values(path: Path) -> Iterator[bytes]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for row in db.execute(f'SELECT * FROM "{table}"'):
                for value in row:
                    if isinstance(value, str):
                        yield value.encode()
                    elif isinstance(value, bytes):
                        yield value
                        try:
                            yield zlib.decompress(value)
                        except zlib.error:
                            pass
    finally:
        db.close()


def files_holding(top: Path, *needles: bytes) -> list[str]:
    """The files under ``top`` (or ``top`` itself) whose bytes (decompressed, or the values in an SQLite database)
    hold a needle; a symlink's target counts as its bytes."""
    found = []
    walked = [(str(top.parent), [], [top.name])] if not top.is_dir() else os.walk(top)
    for dirpath, _dirnames, filenames in walked:
        for name in filenames:
            path = Path(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                chunks = [os.fsencode(os.readlink(path))]
            elif stat.S_ISREG(st.st_mode):
                chunks = list(_decoded(path))
            else:
                continue
            if any(needle in chunk for needle in needles for chunk in chunks):
                found.append(str(path))
    return found
