"""Cache mounts: the directories ``RUN --mount=type=cache`` binds into a step, kept in the store between builds.

BuildKit keeps them in its build cache; pybuild keeps them beside the store's layout, one directory per id::

    ROOT/cachemounts/
      <sha256 hex of the id>/      so any id string is a safe name (slashes, dots, spaces, any Unicode)
        lock                       the id's flock (below); never deleted while its directory is there
        record.json                {"version": 1, "id", "created", "last_used", "uses", "size", "changes"}
        data/                      what a step sees at its target
      .<pid>-<kind>-<random>/      work of a running command: a new mount being seeded, the fresh directory of a
                                   step that could not have the id's, an import being unpacked, a removed mount
                                   being deleted; swept once that pid is gone

The content was written by RUN commands, so nothing here follows a symlink inside it: it is removed with
``oci.apply.remove_tree``, measured with ``os.fwalk(follow_symlinks=False)`` and archived with
``oci.layer.tree_items``, which never leave the directory they walk.

**Sharing**, as BuildKit documents ``sharing=shared|locked|private``, with one flock per id (on ``lock``):

- ``shared`` (the default) holds it shared: any number of shared steps use ``data/`` at the same time;
- ``locked`` holds it exclusively, waiting until every other user is done (apt's lists and archives need this);
- ``private`` holds it exclusively when nobody else uses the id; otherwise the step gets a fresh directory.

A shared step that finds the id held exclusively (by a locked or private step) does not wait either: it gets a
fresh directory, as BuildKit gives it a new instance. BuildKit keeps such extra instances in its cache, and later
builds get whichever is free; pybuild discards a fresh directory when its step ends, so an id always has one
content: the one ``ls``, ``export`` and ``import`` show and move. Every new directory (the id's first, or a fresh
one) is made owned by ``uid:gid`` with ``mode`` and filled by ``seed`` (``from=``/``source=``) before a step sees it;
the id's own directory is published by rename once seeded, so ``seed`` has run exactly once for it.

**Killed builds** leave nothing that blocks or lies: flocks die with their process, an unpublished directory is
never used, and the ``.<pid>-`` work directories of dead processes are swept.

**Sizes** are measured lazily: a step may have changed a mount, so releasing it forgets its size, and ``list``
measures what is unknown, recording the result only when no step used the mount meanwhile (``changes`` counts
uses, so a measurement never overwrites a newer state).

**Archives** (``write_archive``/``restore``) are how mounts leave the store (``builder.cachemountshare``): a mount is
written by pybuild's deterministic layer writer (the same content gives the same bytes), zstd-compressed; the top
directory's owner, mode and mtime travel beside it (a layer has no entry for its root). Restoring reads an archive
twice: once to refuse anything pybuild's writer would not have written (an absolute name, ``..``, an entry below a
symlink, a hard link to no earlier file, a whiteout) without writing a byte, then through the confined applier
(``oci.apply``) into a new directory, which replaces the mount's whole (contents are never merged: a mix of two
caches' files is a state no build made) unless a step is using it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from builder.errors import BuildError
from builder.limits import DEFAULT_LIMITS, limit_hint
from builder.snapshot import remove_dir
from oci.apply import ApplyLimits, apply_layer
from oci.canonical import load_json_object
from oci.compression import Compression, decompress_stream
from oci.digest import Digest, Hasher
from oci.errors import DigestMismatch, InvalidDocument, LimitExceeded, OCIError, UnsafeEntry
from oci.layer import WHITEOUT_PREFIX, LayerItem, tree_items, write_layer
from oci.store import pid_alive
from oci.tarformat import EntryType, TarReader

__all__ = [
    "CacheMount",
    "CacheMountError",
    "CacheMountInUse",
    "CacheMountStore",
    "MOUNTS_DIR",
    "MountArchive",
    "Removed",
    "SHARING",
    "tree_size",
]

MOUNTS_DIR = "cachemounts"
SHARING = ("shared", "private", "locked")
_LOCK = "lock"
_RECORD = "record.json"
_DATA = "data"
_RECORD_VERSION = 1
_MAX_RECORD = 1 << 20
_MAX_ID = 4096
#: A step that cannot have the lock at once tries for this long before it takes a fresh directory (private, or
#: shared against an exclusive holder): ``ls``, ``rm`` and ``import`` hold the lock for moments, not steps.
_ATTEMPTS = 20
_PAUSE = 0.005
_CHUNK = 1 << 20


class CacheMountError(BuildError):
    """A cache mount that cannot be used, found, archived or restored as asked."""


class CacheMountInUse(CacheMountError):
    """A running step holds the mount, so it cannot be removed or replaced now."""


@dataclass(frozen=True, slots=True)
class CacheMount:
    """One cache mount, as ``list`` finds it. ``size`` is the bytes of its files (hard links once), None when it
    could not be measured; ``in_use``: a step held it when it was looked at."""

    id: str
    created: float
    last_used: float
    size: int | None
    in_use: bool
    uses: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created": _iso(self.created),
            "last_used": _iso(self.last_used),
            "size": self.size,
            "in_use": self.in_use,
            "uses": self.uses,
        }


@dataclass(frozen=True, slots=True)
class MountArchive:
    """What restoring an archived mount needs beside its bytes: ``diff_id`` and ``size`` are the uncompressed tar's,
    ``content`` the bytes of its files; ``uid``, ``gid``, ``mode`` and ``mtime`` are the top directory's."""

    id: str
    diff_id: Digest
    size: int
    content: int
    uid: int
    gid: int
    mode: int
    mtime: int
    created: float
    last_used: float


@dataclass(frozen=True, slots=True)
class Removed:
    """What ``remove`` did: the mounts it removed (with their sizes as last known), the ids a step was using, and
    the ids the store does not have."""

    removed: tuple[CacheMount, ...] = ()
    in_use: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()

    @property
    def reclaimed(self) -> int:
        return sum(m.size or 0 for m in self.removed)


class CacheMountStore:
    """The cache mounts of the store at ``root`` (the store's root: they live in ``root/cachemounts``)."""

    def __init__(self, root: Path, limits: ApplyLimits = DEFAULT_LIMITS) -> None:
        self.root = Path(root)
        self.dir = self.root / MOUNTS_DIR
        self.limits = limits  # how far an imported archive may expand (``restore``)
        self._swept = False

    def path(self, id: str) -> Path:
        """The id's directory (its data is ``path(id) / "data"``)."""
        return self.dir / _name(id)

    # --- using a mount

    @contextmanager
    def open(
        self,
        id: str,
        *,
        sharing: str = "shared",
        uid: int = 0,
        gid: int = 0,
        mode: int = 0o755,
        seed: Callable[[Path], None] | None = None,
    ) -> Iterator[Path]:
        """The host directory to bind at the step's target, held as ``sharing`` says until the block ends (see the
        module docstring). A new directory is made owned by ``uid:gid`` with ``mode``, then ``seed(directory)``
        fills it. Marks the mount used now."""
        if sharing not in SHARING:
            raise ValueError(f"sharing must be one of {', '.join(SHARING)}, not {sharing!r}")
        _check_id(id)
        self._sweep_once()
        home, fd, held = self._enter(id, sharing, uid, gid, mode, seed)
        fresh: Path | None = None
        try:
            if held:
                directory = home / _DATA
            else:
                fresh = directory = self._new_dir("instance", uid, gid, mode, seed)
            self._update(home, id, _used)
            yield directory
        finally:
            try:
                if held:
                    self._update(home, id, _released)
            finally:
                os.close(fd)
                if fresh is not None:
                    remove_dir(fresh)

    def _enter(
        self, id: str, sharing: str, uid: int, gid: int, mode: int, seed: Callable[[Path], None] | None
    ) -> tuple[Path, int, bool]:
        """The id's directory and its lock descriptor, held as ``sharing`` asks (True), or not held at all (False:
        the step gets a fresh directory). Starts again whenever the id's directory was removed or replaced."""
        while True:
            got = self._lock_file(id, create=True)
            if got is None:
                continue
            home, fd = got
            try:
                if not self._ensure(id, home, fd, uid, gid, mode, seed):
                    os.close(fd)
                    continue
                if sharing == "locked":
                    state = _take(fd, home, fcntl.LOCK_EX, wait=True)
                else:
                    state = _take(fd, home, fcntl.LOCK_SH if sharing == "shared" else fcntl.LOCK_EX, wait=False)
                if state is None or (state and not _is_dir(home / _DATA)):
                    os.close(fd)  # removed, or emptied by a killed import, since _ensure: start again
                    continue
                return home, fd, state
            except BaseException:
                os.close(fd)
                raise

    def _ensure(
        self,
        id: str,
        home: Path,
        fd: int,
        uid: int,
        gid: int,
        mode: int,
        seed: Callable[[Path], None] | None,
    ) -> bool:
        """Make sure the id has its data directory: made, seeded and published under the id directory's own lock
        (the one records are updated under), so by one step only. Not under the mount's lock: a step that holds the
        mount shared for its whole RUN must not keep another from finding the directory made. False when the id's
        directory was removed or replaced meanwhile."""
        if _is_dir(home / _DATA):
            return True
        try:
            dir_fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(dir_fd, fcntl.LOCK_EX)
            if not _same_file(fd, home / _LOCK):
                return False
            if not _is_dir(home / _DATA):
                made = self._new_dir("new", uid, gid, mode, seed)
                try:
                    now = time.time()
                    _write_record(home, _record(id, created=now, last_used=now))
                    os.rename(made, home / _DATA)
                except BaseException:
                    remove_dir(made)
                    raise
        finally:
            os.close(dir_fd)
        return True

    def _new_dir(self, kind: str, uid: int, gid: int, mode: int, seed: Callable[[Path], None] | None) -> Path:
        path = self._work_dir(kind)
        try:
            _own(path, uid, gid)
            os.chmod(path, mode)
            if seed is not None:
                seed(path)
        except BaseException:
            remove_dir(path)
            raise
        return path

    def _work_dir(self, kind: str) -> Path:
        """A new private directory ``.<pid>-<kind>-…`` among the mounts (same filesystem: published by rename)."""
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{os.getpid()}-{kind}-", dir=self.dir))

    @contextmanager
    def scratch(self, kind: str) -> Iterator[Path]:
        """A private working directory among the mounts, removed afterwards (or swept if the process dies)."""
        path = self._work_dir(kind)
        try:
            yield path
        finally:
            remove_dir(path)

    def _lock_file(self, id: str, *, create: bool) -> tuple[Path, int] | None:
        """The id's directory and an open descriptor of its lock file; None when it is not there (or, with
        ``create``, was removed between making the directory and opening the file)."""
        home = self.path(id)
        if create:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:
                home.mkdir(mode=0o700)
            except FileExistsError:
                pass
        flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | (os.O_CREAT if create else 0)
        try:
            return home, os.open(home / _LOCK, flags, 0o600)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _update(self, home: Path, id: str, change: Callable[[dict[str, Any]], dict[str, Any] | None]) -> None:
        """Read, change and write the id's record under the record's own lock (a flock of the id's directory), so
        concurrent steps do not lose each other's changes. A missing or unreadable record starts afresh."""
        try:
            dir_fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return  # removed meanwhile
        try:
            fcntl.flock(dir_fd, fcntl.LOCK_EX)
            now = time.time()
            record = _read_record(home, id) or _record(id, created=now, last_used=now)
            changed = change(record)
            if changed is not None:
                _write_record(home, changed)
        finally:
            os.close(dir_fd)

    # --- looking

    def list(self, *, measure: bool = True) -> list[CacheMount]:
        """Every mount, most recently used first; sizes not known yet are measured when ``measure``."""
        self.sweep()
        mounts = []
        for home in self._homes():
            record = _read_record(home)
            if record is None or not _is_dir(home / _DATA):
                continue  # being made, or left half-made by a killed process: not a mount yet
            in_use = _in_use(home)
            size = record["size"]
            if size is None and measure:
                size = self._measure(home, record, in_use)
            mounts.append(
                CacheMount(record["id"], record["created"], record["last_used"], size, in_use, record["uses"])
            )
        mounts.sort(key=lambda m: (-m.last_used, m.id))
        return mounts

    def get(self, id: str, *, measure: bool = True) -> CacheMount | None:
        """The mount ``id`` (its size measured if unknown, when ``measure``); None when the store does not have it."""
        _check_id(id)
        home = self.path(id)
        record = _read_record(home, id)
        if record is None or not _is_dir(home / _DATA):
            return None
        in_use = _in_use(home)
        size = record["size"]
        if size is None and measure:
            size = self._measure(home, record, in_use)
        return CacheMount(id, record["created"], record["last_used"], size, in_use, record["uses"])

    def _homes(self) -> list[Path]:
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return []
        return [self.dir / name for name in names if not name.startswith(".") and _is_dir(self.dir / name)]

    def _measure(self, home: Path, record: dict[str, Any], in_use_before: bool) -> int:
        size = tree_size(home / _DATA)
        if not in_use_before and not _in_use(home):
            changes = record["changes"]

            def known(current: dict[str, Any]) -> dict[str, Any] | None:
                if current["changes"] != changes or current["size"] is not None:
                    return None  # used since: this measurement may be stale
                return {**current, "size": size}

            self._update(home, record["id"], known)
        return size

    # --- removing

    def remove(self, ids: Iterable[str]) -> Removed:
        """Remove these mounts, except those a step is using (``in_use``) and those the store does not have."""
        self._sweep_once()
        removed: list[CacheMount] = []
        in_use: list[str] = []
        missing: list[str] = []
        for id in dict.fromkeys(ids):
            _check_id(id)
            outcome = self._remove_one(id)
            if isinstance(outcome, CacheMount):
                removed.append(outcome)
            elif outcome == "in use":
                in_use.append(id)
            else:
                missing.append(id)
        return Removed(tuple(removed), tuple(in_use), tuple(missing))

    def _remove_one(self, id: str) -> CacheMount | str:
        while True:
            got = self._lock_file(id, create=False)
            if got is None:
                return "missing"
            home, fd = got
            try:
                state = _take(fd, home, fcntl.LOCK_EX, wait=False)
                if state is None:
                    continue
                if not state:
                    return "in use"
                record = _read_record(home, id)
                if record is None or not _is_dir(home / _DATA):
                    found = None
                else:
                    size = record["size"] if record["size"] is not None else tree_size(home / _DATA)
                    found = CacheMount(id, record["created"], record["last_used"], size, False, record["uses"])
                trash = self._work_dir("removed")
                os.rename(home, trash / "mount")
            finally:
                os.close(fd)
            remove_dir(trash)
            return found if found is not None else "missing"

    def plan_prune(self, *, until: float | None = None, now: float | None = None) -> list[CacheMount]:
        """The mounts ``prune`` would remove now: those no step is using (``until``: last used longer ago, in
        seconds)."""
        moment = time.time() if now is None else now
        return [m for m in self.list() if not m.in_use and (until is None or moment - m.last_used > until)]

    def prune(self, *, until: float | None = None, now: float | None = None) -> Removed:
        """Remove the mounts ``plan_prune`` names (each checked again: one a step took meanwhile stays)."""
        return self.remove([m.id for m in self.plan_prune(until=until, now=now)])

    # --- archives

    def write_archive(self, id: str, out: BinaryIO) -> MountArchive:
        """Write mount ``id`` into ``out`` as a zstd-compressed layer tar, holding it shared meanwhile (a locked or
        private step waits; a shared step that writes into it meanwhile may make the export fail)."""
        _check_id(id)
        while True:
            got = self._lock_file(id, create=False)
            if got is None:
                raise CacheMountError(f"no cache mount {id!r}")
            home, fd = got
            try:
                if _take(fd, home, fcntl.LOCK_SH, wait=True) is None:
                    continue  # removed or replaced meanwhile: look again
                return _archive(id, home, out)
            finally:
                os.close(fd)

    def restore(self, archive: MountArchive, open_archive: Callable[[], BinaryIO]) -> None:
        """Make ``archive.id``'s content the archive's (``open_archive()`` opens its bytes, compressed or not; it is
        read twice), replacing the mount the store has, unless a step is using it: ``CacheMountInUse``. An archive
        that is not what pybuild's writer makes is refused (``CacheMountError``) before anything is written."""
        _check_id(archive.id)
        self._sweep_once()
        where = f"cache mount {archive.id!r}"
        try:
            with open_archive() as stream:
                _check_archive(stream, archive.diff_id, self.limits)
                while stream.read(_CHUNK):  # to its end, so a verifying stream checks the compressed bytes too
                    pass
        except UnsafeEntry as err:
            raise CacheMountError(f"{where}: refused: {err}") from None
        except OCIError as err:
            raise CacheMountError(f"{where}: {err}", hint=limit_hint(err)) from None
        made = self._work_dir("import")
        try:
            try:
                with open_archive() as stream:
                    apply_layer(stream, made, expected_diff_id=archive.diff_id, limits=self.limits, what="archive")
            except OCIError as err:
                raise CacheMountError(f"{where}: {err}") from None
            _own(made, archive.uid, archive.gid)
            os.chmod(made, archive.mode)
            os.utime(made, (archive.mtime, archive.mtime), follow_symlinks=False)
            self._replace(archive, made)
        except BaseException:
            remove_dir(made)
            raise

    def _replace(self, archive: MountArchive, made: Path) -> None:
        while True:
            got = self._lock_file(archive.id, create=True)
            if got is None:
                continue
            home, fd = got
            trash: Path | None = None
            try:
                state = _take(fd, home, fcntl.LOCK_EX, wait=False)
                if state is None:
                    continue
                if not state:
                    raise CacheMountInUse(
                        f"cache mount {archive.id!r} is in use by a running build; it was not replaced"
                    )
                if os.path.lexists(home / _DATA):
                    trash = self._work_dir("replaced")
                    os.rename(home / _DATA, trash / _DATA)
                record = _record(archive.id, created=archive.created, last_used=archive.last_used)
                _write_record(home, {**record, "size": archive.content})
                os.rename(made, home / _DATA)
            finally:
                os.close(fd)
                if trash is not None:
                    remove_dir(trash)
            return

    # --- sweeping

    def _sweep_once(self) -> None:
        if not self._swept:
            self._swept = True
            self._sweep_work()

    def sweep(self) -> None:
        """Remove what dead processes left: work directories, and records half-written in the mounts' directories."""
        self._swept = True
        self._sweep_work()
        for home in self._homes():
            try:
                names = os.listdir(home)
            except FileNotFoundError:
                continue
            for name in names:
                if name.startswith(".") and _dead(name):
                    try:
                        os.unlink(home / name)
                    except FileNotFoundError:
                        pass

    def _sweep_work(self) -> None:
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return
        for name in names:
            if name.startswith(".") and _dead(name):
                remove_dir(self.dir / name)


# ------------------------------------------------------------------------------------------------ helpers


def _archive(id: str, home: Path, out: BinaryIO) -> MountArchive:
    record = _read_record(home, id)
    data = home / _DATA
    if record is None or not _is_dir(data):
        raise CacheMountError(f"no cache mount {id!r}")
    st = os.lstat(data)
    content = 0

    def items() -> Iterator[LayerItem]:
        nonlocal content
        for item in tree_items(data):
            if item.entry.type is EntryType.FILE:
                content += item.entry.size  # a hard link's other names are HARDLINK entries: counted once
            yield item

    try:
        info = write_layer(items(), out, Compression.ZSTD)
    except OCIError as err:
        raise CacheMountError(f"cache mount {id!r}: {err}") from None
    return MountArchive(
        id=id,
        diff_id=info.diff_id,
        size=info.size,
        content=content,
        uid=st.st_uid,
        gid=st.st_gid,
        mode=stat.S_IMODE(st.st_mode),
        mtime=int(st.st_mtime),
        created=record["created"],
        last_used=record["last_used"],
    )


def _own(path: Path, uid: int, gid: int) -> None:
    st = os.lstat(path)
    if (st.st_uid, st.st_gid) != (uid, gid):
        os.chown(path, uid, gid, follow_symlinks=False)


def _name(id: str) -> str:
    return hashlib.sha256(id.encode("utf-8")).hexdigest()


def _check_id(id: str) -> None:
    if not isinstance(id, str) or not id:
        raise ValueError("a cache mount id is a non-empty string")
    if len(id) > _MAX_ID:
        raise ValueError(f"a cache mount id is at most {_MAX_ID} characters")
    try:
        id.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"cache mount id {id!r} is not valid Unicode") from None


def _iso(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


def _dead(name: str) -> bool:
    """Whether ``.<pid>-…`` belongs to a process that is gone."""
    pid = name[1:].split("-", 1)[0]
    return pid.isdigit() and not pid_alive(int(pid))


def _is_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _take(fd: int, home: Path, operation: int, *, wait: bool) -> bool | None:
    """Take the flock ``operation`` on the lock file ``fd``: True once held; False when another holds it (only
    without ``wait``, after a few brief tries); None when the id's directory was removed or replaced since ``fd``
    was opened (a remover renames it away while holding the lock: the caller starts again)."""
    if wait:
        fcntl.flock(fd, operation)
    else:
        for attempt in range(_ATTEMPTS):
            try:
                fcntl.flock(fd, operation | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == _ATTEMPTS - 1:
                    return False
                time.sleep(_PAUSE)
    if not _same_file(fd, home / _LOCK):
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    return True


def _in_use(home: Path) -> bool:
    """Whether a step holds the mount: one try at the exclusive lock, released at once."""
    try:
        fd = os.open(home / _LOCK, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except (FileNotFoundError, NotADirectoryError):
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _record(id: str, *, created: float, last_used: float) -> dict[str, Any]:
    return {
        "version": _RECORD_VERSION,
        "id": id,
        "created": created,
        "last_used": last_used,
        "uses": 0,
        "size": None,
        "changes": 0,
    }


def _used(record: dict[str, Any]) -> dict[str, Any]:
    return {**record, "last_used": time.time(), "uses": record["uses"] + 1, "changes": record["changes"] + 1}


def _released(record: dict[str, Any]) -> dict[str, Any]:
    return {**record, "size": None, "changes": record["changes"] + 1}


def _read_record(home: Path, id: str | None = None) -> dict[str, Any] | None:
    """The id's record, or None when it is missing, unreadable, or not this directory's (``id``, when given, must
    be the one it names; the directory's name must be its digest)."""
    try:
        fd = os.open(home / _RECORD, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        raw = f.read(_MAX_RECORD + 1)
    try:
        record = load_json_object(raw, "cache mount record")
    except InvalidDocument:
        return None
    if record.get("version") != _RECORD_VERSION or not isinstance(record.get("id"), str) or not record["id"]:
        return None
    if _name(record["id"]) != home.name or (id is not None and record["id"] != id):
        return None
    for key in ("created", "last_used"):
        if isinstance(record.get(key), bool) or not isinstance(record.get(key), int | float):
            return None
    size = record.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int)):
        return None
    for key in ("uses", "changes"):
        if isinstance(record.get(key), bool) or not isinstance(record.get(key), int):
            return None
    return record


def _write_record(home: Path, record: dict[str, Any]) -> None:
    """Replace the record whole (a temporary ``.<pid>-record-…`` file renamed over it)."""
    fd, temp = tempfile.mkstemp(prefix=f".{os.getpid()}-record-", dir=home)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(json.dumps(record, sort_keys=True).encode("utf-8"))
        os.replace(temp, home / _RECORD)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise


def tree_size(path: Path) -> int:
    """Bytes of the regular files under ``path`` (hard links once), following no symlink."""
    total = 0
    seen: set[tuple[int, int]] = set()
    for _dirpath, _dirnames, filenames, dir_fd in os.fwalk(path, follow_symlinks=False):
        for name in filenames:
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


class _Hashing:
    """The uncompressed tar stream, hashed as it is read (its diff_id)."""

    def __init__(self, source: BinaryIO) -> None:
        self._source = source
        self.hasher = Hasher()

    def readinto(self, view: memoryview) -> int:
        n = self._source.readinto(view) or 0  # type: ignore[attr-defined]
        if n:
            self.hasher.update(view[:n])
        return n

    def drain(self) -> None:
        buf = memoryview(bytearray(_CHUNK))
        while self.readinto(buf):
            pass


def _strict_parts(name: str, is_dir: bool, what: str) -> list[str]:
    """The components of an archive name as pybuild's writer makes them; anything else is an ``UnsafeEntry``."""
    if name.startswith("/"):
        raise UnsafeEntry(f"{what} {name!r} is an absolute path")
    if is_dir and name.endswith("/"):
        name = name[:-1]
    parts = name.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise UnsafeEntry(f"{what} {name!r} is not a plain relative path")
        if part.startswith(WHITEOUT_PREFIX):
            raise UnsafeEntry(f"{what} {name!r} is a whiteout")
    return parts


def _check_archive(stream: BinaryIO, expected: Digest, limits: ApplyLimits) -> None:
    """Read a mount archive through, writing nothing: refuse what pybuild's writer never makes (see the module
    docstring), and check its diff_id. ``limits`` bound its expanded size and its entries as they come."""
    _, plain = decompress_stream(stream, max_bytes=limits.max_bytes, what="archive")
    hashing = _Hashing(plain)
    kinds: dict[str, EntryType] = {}
    reader = TarReader(hashing)  # type: ignore[arg-type]
    for entry, _data in reader:
        if limits.max_entries is not None and reader.entries > limits.max_entries:
            raise LimitExceeded.too_many_entries("archive", limits.max_entries)
        parts = _strict_parts(entry.path, entry.type is EntryType.DIR, "entry")
        for depth in range(1, len(parts)):
            above = kinds.get("/".join(parts[:depth]))
            if above is not None and above is not EntryType.DIR:
                raise UnsafeEntry(f"entry {entry.path!r} is below a {above.name.lower()}, not a directory")
        if entry.type is EntryType.HARDLINK:
            target = "/".join(_strict_parts(entry.linkname, False, "hard link target"))
            if kinds.get(target, EntryType.DIR) is EntryType.DIR:
                raise UnsafeEntry(f"hard link {entry.path!r} does not point at an earlier file ({entry.linkname!r})")
        kinds["/".join(parts)] = entry.type
    hashing.drain()
    found = hashing.hasher.digest()
    if found != expected:
        raise DigestMismatch(f"its content has diff_id {found}, expected {expected}")
