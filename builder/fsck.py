"""``pybuild fsck``: check everything the store holds, and with ``repair`` remove what is broken or left over.

Each thing found is a ``Finding``: a kind, its subject (a digest, an image's name, a cache key, a path under the
root), a detail, and whether a repair can fix it. Most are problems: damage that nothing in pybuild makes (a blob
that no longer hashes to its name, an image or a cache record that needs a blob the store lacks, a database that
fails its integrity check, files that are no blobs), and they fail the check until repaired. Some are leftovers
(``LEFTOVER_KINDS``): what a killed or failed command may leave and the usual sweeps remove anyway (temporary files
of dead processes, snapshots nothing needs, leases of builds that died, memos about pruned blobs, a cache mount
left half-made). They break nothing, as the contract promises of an interrupted command, so they are reported and
repaired but do not fail the check. What is checked:

- blobs (``blobs/<algorithm>/<hex>``): each is hashed, streamed through the content store's verifying reader (a
  few at a time), and must match its name ("corrupt blob"); a name that is no digest is a "stray file", an entry
  that is no regular file an "invalid blob", one that cannot be read an "unreadable blob".
- ``index.json`` must parse ("corrupt index": not repairable). Each entry's image must be whole: its manifest (for
  an index, at least one of its manifests, and each one present), config and layers in the store and intact
  ("dangling entry"); documents that parse, blobs of the sizes their descriptors give, as many diff_ids in the
  config as layers in the manifest ("invalid entry").
- the step cache (``cache.db``) must pass ``PRAGMA integrity_check`` ("corrupt cache index": not repairable, since
  removing it would drop the leases of running builds); each record must parse ("invalid cache record") and its
  layer be in the store and intact ("dangling cache record"; the solver already treats one as a miss). A build that
  died unfinished leaves "stale leases".
- snapshots (``snapshots/<diff_id hex>``): names are sha256 hex, each one a readable directory ("invalid
  snapshot"); one that no image, running build, running container or cached step needs, as ``prune`` decides
  (``storeops.needed_snapshots``), is an "unreferenced snapshot". Their contents are not hashed: a snapshot was
  checked against its diff_id when it was extracted, and a tree walk would cost more than every blob.
- the memos of compressed copies (``compressed/``) must be readable and name blobs the store has ("invalid memo",
  "dangling memo", the ones ``prune`` sweeps); each cache mount (``cachemounts/``) needs a record naming its
  directory and a ``data/`` directory ("invalid", "dangling", "incomplete cache mount"); a record of a running
  container (``containers/``) whose process is gone is a "stale container record"; ``sources.db`` must pass its
  integrity check and hold digests. A source row naming a blob the store no longer has is not a problem: it says
  what a registry holds, and ``prune`` rightly leaves it.
- "temp leftovers" of processes that are gone: ingest files, scratch trees (``tmp/``), half-extracted snapshots,
  the cache mounts' work directories and half-written records, a half-made skeleton.

Hashing the blobs is the slow part and holds nothing. Everything else is decided, and repaired, holding what
``prune`` holds (the store's guard exclusively, then the layout's lock), so no build is between writing a blob or
snapshot and recording what keeps it, and no tag moves meanwhile. Nothing a running build leases, a running
container uses or a live process is writing is touched. A repair deletes the corrupt blobs first (a corrupt blob is
never trusted; each is hashed again under the guard, in case it was rewritten since), so that the entries, records
and memos that needed them are found dangling and removed too, and the snapshots only those needed are then
unreferenced and removed last. A second check after a repair finds nothing a repair could fix.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder import storeops
from builder.cache import BUSY_TIMEOUT, SCHEMA, CacheEntry, CacheIndex, store_guard
from builder.cache import INDEX_FILE as CACHE_FILE
from builder.cachemounts import CacheMountStore
from builder.compressed import MEMO_DIR
from builder.container import CONTAINERS_DIR
from builder.errors import BuildError
from builder.root import Store
from builder.snapshot import remove_dir
from builder.storeops import SNAPSHOTS_DIR
from oci import mediatypes as mt
from oci.canonical import MAX_DOCUMENT_SIZE, load_json_object
from oci.compression import Compression
from oci.config import parse_config
from oci.descriptor import Descriptor
from oci.digest import Digest, Hasher
from oci.errors import BlobNotFound, InvalidDigest, InvalidDocument, LayoutError, OCIError, VerificationError
from oci.layout import ImageLayout
from oci.manifest import Index, parse_document
from oci.store import pid_alive

__all__ = ["Checked", "Finding", "Report", "check_store", "open_for_check"]

SOURCES_FILE = "sources.db"
_CHUNK = 4 << 20  # bytes read per call while hashing a blob
_JOBS = 4  # blobs hashed at once (hashlib and reads release the GIL)
_MAX_RECORD = 1 << 20
_UNREADABLE = "unreadable"

CORRUPT_BLOB = "corrupt blob"
DANGLING_ENTRY = "dangling entry"
INVALID_ENTRY = "invalid entry"
TEMP_LEFTOVER = "temp leftover"
STRAY_FILE = "stray file"
#: What killed or failed commands leave, and the sweeps (``open_store``, builds, ``prune``, dropping dead leases)
#: remove anyway: found and repaired like the rest, but harmless, so they do not fail the check ("leftovers").
LEFTOVER_KINDS = frozenset(
    {
        TEMP_LEFTOVER,
        "unreferenced snapshot",
        "stale lease",
        "stale container record",
        "dangling memo",
        "invalid memo",
        "dangling cache mount",
        "incomplete cache mount",
    }
)


@dataclass(frozen=True)
class Finding:
    """One thing found: ``kind`` (``corrupt blob``, ``dangling entry``, ...), what it is about, and what is wrong.
    A ``leftover`` (one of ``LEFTOVER_KINDS``) is harmless garbage; anything else is a problem."""

    kind: str
    subject: str
    detail: str
    repairable: bool
    repaired: bool = False

    @property
    def leftover(self) -> bool:
        return self.kind in LEFTOVER_KINDS

    def line(self) -> str:
        return f"{self.kind} {self.subject}: {self.detail}" + (" (repaired)" if self.repaired else "")

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "subject": self.subject,
            "detail": self.detail,
            "leftover": self.leftover,
            "repairable": self.repairable,
            "repaired": self.repaired,
        }


@dataclass(frozen=True)
class Checked:
    """How much was looked at."""

    blobs: int = 0
    bytes: int = 0  # of the blobs hashed
    images: int = 0  # index.json entries
    cache_records: int = 0
    snapshots: int = 0
    cache_mounts: int = 0
    memos: int = 0

    def to_json(self) -> dict[str, int]:
        return {
            "blobs": self.blobs,
            "bytes": self.bytes,
            "images": self.images,
            "cache_records": self.cache_records,
            "snapshots": self.snapshots,
            "cache_mounts": self.cache_mounts,
            "memos": self.memos,
        }


@dataclass(frozen=True)
class Report:
    findings: tuple[Finding, ...]
    checked: Checked
    repair: bool  # whether repairs were asked for

    @property
    def problems(self) -> int:
        return sum(not f.leftover for f in self.findings)

    @property
    def leftovers(self) -> int:
        return sum(f.leftover for f in self.findings)

    @property
    def repaired(self) -> int:
        """Findings repaired, problems and leftovers."""
        return sum(f.repaired for f in self.findings)

    @property
    def remaining(self) -> int:
        """Problems not repaired (leftovers do not count: they are harmless)."""
        return sum(not f.leftover and not f.repaired for f in self.findings)

    @property
    def repairable(self) -> int:
        """Findings a repair could fix that are still there."""
        return sum(f.repairable and not f.repaired for f in self.findings)

    @property
    def clean(self) -> bool:
        """No problem found, or every one repaired."""
        return self.remaining == 0

    def summary(self) -> str:
        text = f"{self.problems} problem{'' if self.problems == 1 else 's'}"
        if self.leftovers:
            text += f", {self.leftovers} leftover{'' if self.leftovers == 1 else 's'}"
        if self.repair:
            return f"{text} ({self.repaired} repaired)"
        if self.repairable:
            return f"{text} ({self.repairable} repairable with --repair)"
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "findings": [f.to_json() for f in self.findings],
            "problems": self.problems,
            "leftovers": self.leftovers,
            "repaired": self.repaired,
            "remaining": self.remaining,
            "checked": self.checked.to_json(),
        }


def open_for_check(root: Path) -> Store:
    """The store at ``root`` as it is: never created, and not swept on opening (the sweep would remove the
    leftovers ``check_store`` reports)."""
    if not (root / "oci-layout").exists():
        raise BuildError(f"{root}: no store here (no oci-layout file)")
    return Store(root, ImageLayout.open(root))


def check_store(store: Store, *, repair: bool = False, jobs: int | None = None) -> Report:
    """Check the store (see the module docstring); with ``repair``, fix what can be fixed. ``jobs``: blobs hashed at
    once (default: up to 4, one per CPU)."""
    check = _Check(store, repair)
    try:
        return check.run(max(1, jobs if jobs is not None else min(_JOBS, os.cpu_count() or 1)))
    finally:
        check.close()


# ------------------------------------------------------------------------------------------------- helpers


class _InUse(Exception):
    """A repair that would touch something a running process holds."""


def _dead(name: str) -> bool:
    """Whether ``<pid>-…`` belongs to a process that is gone (False when it names no pid)."""
    pid = name.split("-", 1)[0]
    return pid.isdigit() and not pid_alive(int(pid))


def _names(directory: Path) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _is_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False


def _remove(path: Path) -> None:
    """Remove a file or a whole tree (never following a symlink); gone already is fine."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        remove_dir(path)
    else:
        path.unlink(missing_ok=True)


def _file_type(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISLNK(mode):
        return "a symlink"
    return "a special file"


def _read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path.as_uri() + "?mode=ro", uri=True, timeout=BUSY_TIMEOUT)


def _integrity(db: sqlite3.Connection) -> str | None:
    """None when SQLite finds the database whole, else its first complaint."""
    rows = db.execute("PRAGMA integrity_check").fetchall()
    return None if [tuple(r) for r in rows] == [("ok",)] else str(rows[0][0])


def _layer_leases(db: sqlite3.Connection, build: str) -> list[sqlite3.Row]:
    """The layers ``build`` leased (none in a cache index written before layers had their own leases)."""
    try:
        return db.execute("SELECT layer, diff_id FROM layer_leases WHERE build = ?", (build,)).fetchall()
    except sqlite3.OperationalError:
        return []


@dataclass(frozen=True)
class _Live:
    """What running processes hold: cache keys and images leased by running builds, images of running containers."""

    keys: frozenset[str] = frozenset()
    images: tuple[Descriptor, ...] = ()
    layers: tuple[tuple[Descriptor, Digest | None], ...] = ()  # the layers of the steps running builds made or hit

    @property
    def digests(self) -> frozenset[Digest]:
        return frozenset(d.digest for d in self.images)


@dataclass(frozen=True)
class _DeadBuild:
    id: str
    pid: int
    dockerfile: str
    keys: int
    images: int


class _Check:
    def __init__(self, store: Store, repair: bool) -> None:
        self.store = store
        self.root = store.root
        self.content = store.layout.store
        self.repair = repair
        self.findings: list[Finding] = []
        self.bad: dict[Digest, str] = {}  # blobs found corrupt, unreadable or not files: why
        self._cache: CacheIndex | None = None
        self._local = threading.local()
        self._pending: list[tuple[str, str, str, Callable[[], object] | None]] = []  # found before the guard
        self.records = 0  # cache records looked at

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()

    def found(self, kind: str, subject: str, detail: str, fix: Callable[[], object] | None = None) -> bool:
        """Record a problem and, when repairing, fix it (``fix`` None: it cannot be). Whether it was fixed."""
        repaired = False
        if fix is not None and self.repair:
            try:
                fix()
                repaired = True
            except _InUse as err:
                detail = f"{detail} (not repaired: {err})"
            except (OSError, sqlite3.Error) as err:
                reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
                detail = f"{detail} (repair failed: {reason})"
        self.findings.append(Finding(kind, subject, detail, fix is not None, repaired))
        return repaired

    def later(self, kind: str, subject: str, detail: str, fix: Callable[[], object] | None = None) -> None:
        """A problem found before the guard is held: recorded (and repaired) once it is."""
        self._pending.append((kind, subject, detail, fix))

    def rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    # --- the order of the checks

    def run(self, jobs: int) -> Report:
        blobs = self.scan_blobs()
        hashed = self.hash_blobs(blobs, jobs)
        with store_guard(self.root, exclusive=True), self.store.layout.locked():
            for pending in self._pending:
                self.found(*pending)
            self.report_blobs(hashed)
            db = self.open_cache()
            live, dead = self.live(db)
            images = self.check_index(live)
            records = self.check_cache(db, live, dead) if db is not None else ([] if not self.has_cache() else None)
            memos = self.check_memos()
            snapshots = self.check_snapshots(images, records, live)
            mounts = self.check_mounts()
            self.check_leftovers()
            self.check_sources()
            if db is not None:
                db.close()
        checked = Checked(
            blobs=len(blobs),
            bytes=sum(size for _, size in blobs),
            images=images or 0,
            cache_records=self.records,
            snapshots=snapshots,
            cache_mounts=mounts,
            memos=memos,
        )
        return Report(tuple(self.findings), checked, self.repair)

    # --- blobs

    def scan_blobs(self) -> list[tuple[Digest, int]]:
        """Every blob file with its size; what is no blob is reported."""
        found: list[tuple[Digest, int]] = []
        base = self.content.blobs_dir
        for algorithm in _names(base):
            directory = base / algorithm
            if not _is_dir(directory):
                self.later(STRAY_FILE, self.rel(directory), "not a blob directory", lambda p=directory: _remove(p))
                continue
            try:
                Hasher(algorithm)
            except InvalidDigest:
                self.later(STRAY_FILE, self.rel(directory), f"unsupported digest algorithm {algorithm!r}: not checked")
                continue
            for name in _names(directory):
                path = directory / name
                try:
                    digest = Digest(algorithm, name)
                except InvalidDigest:
                    self.later(STRAY_FILE, self.rel(path), f"not a {algorithm} digest", lambda p=path: _remove(p))
                    continue
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    continue  # deleted meanwhile (a prune)
                if not stat.S_ISREG(st.st_mode):
                    self.bad[digest] = "not a regular file"
                    self.later(
                        "invalid blob",
                        str(digest),
                        f"{_file_type(st.st_mode)}, not a regular file",
                        lambda p=path: _remove(p),
                    )
                    continue
                found.append((digest, st.st_size))
        return found

    def hash_blobs(self, blobs: list[tuple[Digest, int]], jobs: int) -> list[tuple[Digest, str, str]]:
        """The blobs that do not hash to their names, or cannot be read: (digest, kind, detail)."""
        with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="fsck") as pool:
            results = list(pool.map(self.hash_one, [digest for digest, _ in blobs]))
        return [r for r in results if r is not None]

    def hash_one(self, digest: Digest) -> tuple[Digest, str, str] | None:
        buffer: bytearray | None = getattr(self._local, "buffer", None)
        if buffer is None:
            buffer = self._local.buffer = bytearray(_CHUNK)
        view = memoryview(buffer)
        try:
            with self.content.open(digest) as stream:
                while stream.readinto(view):
                    pass
        except BlobNotFound:
            return None  # deleted meanwhile (a prune)
        except VerificationError as err:
            return digest, CORRUPT_BLOB, str(err).removeprefix(f"blob {digest}: ")
        except OSError as err:
            return digest, "unreadable blob", err.strerror or str(err)
        return None

    def report_blobs(self, hashed: list[tuple[Digest, str, str]]) -> None:
        for digest, kind, detail in hashed:
            if kind == CORRUPT_BLOB:
                self.bad[digest] = "corrupt"
                self.found(kind, str(digest), detail, lambda d=digest: self.delete_corrupt(d))
            else:
                self.bad[digest] = _UNREADABLE
                self.found(kind, str(digest), detail)

    def delete_corrupt(self, digest: Digest) -> None:
        """Delete a blob found corrupt, unless it was rewritten whole meanwhile (hashed again, under the guard)."""
        try:
            self.content.verify(digest)
            del self.bad[digest]  # whole again: what needs it is not dangling
        except VerificationError:
            self.content.delete(digest)
        except BlobNotFound:
            pass

    def blob_state(self, digest: Digest) -> str | None:
        """None when the blob is there and whole; else "missing", "corrupt", "corrupt (deleted)", "unreadable"..."""
        if not self.content.has(digest):
            return f"{self.bad[digest]} (deleted)" if digest in self.bad else "missing"
        return self.bad.get(digest)

    # --- what running processes hold

    def sure(self, detail: str) -> bool:
        """Whether a problem is certain enough to remove something for it: not when a blob it names could not be
        read (a permission or an I/O error: the blob may well be whole)."""
        return f"is {_UNREADABLE}" not in detail

    def has_cache(self) -> bool:
        return (self.root / CACHE_FILE).exists()

    def open_cache(self) -> sqlite3.Connection | None:
        """A read-only connection to the step cache when it exists, is whole and has this pybuild's tables (another
        layout is emptied by the next command that opens it: nothing to check)."""
        path = self.root / CACHE_FILE
        if not path.exists():
            return None
        db = _read_only(path)
        try:
            complaint = _integrity(db)
            if complaint is not None:
                self.found(
                    "corrupt cache index",
                    CACHE_FILE,
                    f"{complaint} (remove it to start the step cache afresh, when no build is running)",
                )
                db.close()
                return None
            row = db.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
            if row is None or row[0] != str(SCHEMA):
                db.close()
                return None
        except sqlite3.DatabaseError as err:
            db.close()
            if "no such table" in str(err):
                return None
            self.found("corrupt cache index", CACHE_FILE, str(err))
            return None
        db.row_factory = sqlite3.Row
        return db

    def cache(self) -> CacheIndex:
        if self._cache is None:
            self._cache = CacheIndex(self.root)
        return self._cache

    def live(self, db: sqlite3.Connection | None) -> tuple[_Live, list[_DeadBuild]]:
        """What running builds lease and running containers use; the builds that died unfinished."""
        keys: set[str] = set()
        images: list[Descriptor] = []
        layers: list[tuple[Descriptor, Digest | None]] = []
        dead: list[_DeadBuild] = []
        if db is not None:
            for build in db.execute("SELECT id, pid, dockerfile FROM builds WHERE finished IS NULL").fetchall():
                leased = [r[0] for r in db.execute("SELECT key FROM leases WHERE build = ?", (build["id"],))]
                texts = [
                    r[0] for r in db.execute("SELECT descriptor FROM image_leases WHERE build = ?", (build["id"],))
                ]
                if not pid_alive(build["pid"]):
                    dead.append(_DeadBuild(build["id"], build["pid"], build["dockerfile"], len(leased), len(texts)))
                    continue
                keys.update(leased)
                for text in texts:
                    try:
                        images.append(Descriptor.from_json(json.loads(text)))
                    except (ValueError, OCIError):
                        continue
                for row in _layer_leases(db, build["id"]):
                    try:
                        layers.append(
                            (Descriptor.from_json(json.loads(row[0])), Digest.parse(row[1]) if row[1] else None)
                        )
                    except (ValueError, OCIError):
                        continue
        images.extend(self.check_containers())
        return _Live(frozenset(keys), tuple(images), tuple(layers)), dead

    def check_containers(self) -> list[Descriptor]:
        """The images running containers use (as ``storeops`` reads them: sniffed); dead records are reported."""
        directory = self.root / CONTAINERS_DIR
        running: list[Descriptor] = []
        for name in _names(directory):
            path = directory / name
            if not name.endswith(".json"):
                if _dead(name):
                    self.found(
                        TEMP_LEFTOVER, self.rel(path), "written by a process that is gone", lambda p=path: _remove(p)
                    )
                continue
            try:
                record = load_json_object(path.read_bytes()[:_MAX_RECORD], "container record")
                pid = record["pid"]
                digest = Digest.parse(record["image"])
                if isinstance(pid, bool) or not isinstance(pid, int):
                    raise TypeError("pid")
            except FileNotFoundError:
                continue  # the container ended meanwhile
            except (OSError, OCIError, KeyError, TypeError) as err:
                self.found("invalid container record", self.rel(path), f"unreadable ({err})", lambda p=path: _remove(p))
                continue
            if pid_alive(pid):
                running.append(Descriptor(mt.OCI_MANIFEST, digest, 0))
            else:
                self.found(
                    "stale container record", self.rel(path), f"its process {pid} is gone", lambda p=path: _remove(p)
                )
        return running

    # --- index.json

    def check_index(self, live: _Live) -> int | None:
        """Each entry's image is whole; the number of entries, None when index.json cannot be read."""
        layout = self.store.layout
        try:
            entries = layout.index().manifests
        except LayoutError as err:
            self.found("corrupt index", "index.json", str(err))
            return None
        problems: dict[Digest, tuple[str, str] | None] = {}
        for entry in entries:
            if entry.digest not in problems:
                problems[entry.digest] = self.image_problem(entry)
            problem = problems[entry.digest]
            if problem is None:
                continue
            kind, detail = problem
            subject = entry.ref_name or f"<none>@{entry.digest}"
            if entry.digest in live.digests:
                self.found(kind, subject, f"{detail} (in use by a running build or container: not removed)")
            elif not self.sure(detail):
                self.found(kind, subject, detail)
            else:
                self.found(kind, subject, detail, lambda d=entry.digest: layout.remove({d}))
        return len(entries)

    def image_problem(self, desc: Descriptor, depth: int = 0) -> tuple[str, str] | None:
        """What makes the image (or index) ``desc`` names unusable: (kind, detail), or None when it is whole."""
        is_index, is_manifest = mt.is_index(desc.media_type), mt.is_manifest(desc.media_type)
        what = "index" if is_index else "manifest" if is_manifest else "blob"
        state = self.blob_state(desc.digest)
        if state is not None:
            return DANGLING_ENTRY, f"{what} {desc.digest} is {state}"
        if not (is_index or is_manifest):
            return None  # an artifact: its blob is there and whole, and nothing here reads it
        problem = self.size_problem(what, desc)
        if problem is not None:
            return INVALID_ENTRY, problem
        try:
            document = parse_document(
                self.content.read(desc.digest, MAX_DOCUMENT_SIZE), desc.media_type, f"{what} {desc.digest}"
            )
        except OCIError as err:
            return INVALID_ENTRY, str(err)
        except OSError as err:
            return DANGLING_ENTRY, f"{what} {desc.digest} is {_UNREADABLE} ({err.strerror or err})"
        if isinstance(document, Index):
            if depth > 4:
                return INVALID_ENTRY, f"index {desc.digest}: indexes nested too deeply"
            # A store may keep an index with only some platforms' manifests (as containerd does): one is enough.
            present = [child for child in document.manifests if self.content.has(child.digest)]
            if not present:
                return DANGLING_ENTRY, f"none of the {len(document.manifests)} manifests of index {desc.digest} is here"
            for child in present:
                problem_here = self.image_problem(child, depth + 1)
                if problem_here is not None:
                    return problem_here
            return None
        config, layers = document.config, document.layers
        missing = [
            f"{label} {blob.digest} is {state}"
            for label, blob in (("config", config), *(("layer", layer) for layer in layers))
            if (state := self.blob_state(blob.digest)) is not None
        ]
        if missing:
            missing.sort(key=lambda text: f"is {_UNREADABLE}" not in text)  # shown first: it keeps the entry
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            return DANGLING_ENTRY, missing[0] + more
        for label, blob in (("config", config), *(("layer", layer) for layer in layers)):
            problem = self.size_problem(label, blob)
            if problem is not None:
                return INVALID_ENTRY, problem
        if not mt.is_config(config.media_type):
            return INVALID_ENTRY, f"manifest {desc.digest}: config has media type {config.media_type}"
        try:
            parsed = parse_config(self.content.read(config.digest, MAX_DOCUMENT_SIZE), f"config {config.digest}")
        except OCIError as err:
            return INVALID_ENTRY, str(err)
        except OSError as err:
            return DANGLING_ENTRY, f"config {config.digest} is {_UNREADABLE} ({err.strerror or err})"
        if len(parsed.diff_ids) != len(layers):
            return INVALID_ENTRY, (
                f"manifest {desc.digest} has {len(layers)} layers but its config has {len(parsed.diff_ids)} diff_ids"
            )
        return None

    def size_problem(self, what: str, desc: Descriptor) -> str | None:
        try:
            size = self.content.size(desc.digest)
        except BlobNotFound:
            return f"{what} {desc.digest} is missing"
        if size != desc.size:
            return f"{what} {desc.digest} has {size} bytes, its descriptor says {desc.size}"
        return None

    # --- the step cache

    def check_cache(self, db: sqlite3.Connection, live: _Live, dead: list[_DeadBuild]) -> list[CacheEntry]:
        """Each record parses and its layer is here and whole; the records kept (after any repair)."""
        for build in dead:
            self.found(
                "stale lease",
                f"build {build.id}",
                f"the build of {build.dockerfile} (pid {build.pid}) is gone; it still leases {build.keys} cache "
                f"entries and {build.images} images",
                lambda: self.cache().leased(),  # drops the leases of every build that died
            )
        kept: list[CacheEntry] = []
        keys = db.execute("SELECT key FROM entries ORDER BY key").fetchall()
        self.records = len(keys)
        for (text,) in keys:
            delete = (lambda k=text: self.cache().delete([k])) if text not in live.keys else None
            leased = "" if delete is not None else " (leased by a running build: not removed)"
            try:
                entry = self.cache().get(Digest.parse(text))
            except (ValueError, TypeError, KeyError, AttributeError, OCIError) as err:
                self.found("invalid cache record", text, f"unreadable ({err}){leased}", delete)
                continue
            if entry is None:
                continue  # deleted meanwhile
            if not isinstance(entry.record, Mapping):
                self.found("invalid cache record", text, f"its key record is not an object{leased}", delete)
                continue
            if (entry.layer is None) != (entry.diff_id is None):
                detail = f"a layer without a diff_id, or the reverse{leased}"
                removed = self.found("invalid cache record", text, detail, delete)
            elif entry.layer is not None and (state := self.blob_state(entry.layer.digest)) is not None:
                detail = f"{entry.step!r}: layer {entry.layer.digest} is {state}{leased}"
                removed = self.found("dangling cache record", text, detail, delete if self.sure(detail) else None)
            elif entry.layer is not None and (problem := self.size_problem("layer", entry.layer)) is not None:
                removed = self.found("invalid cache record", text, problem + leased, delete)
            else:
                removed = False
            if not removed:
                kept.append(entry)  # as prune counts it: it still holds its layer's snapshot
        return kept

    # --- compressed copies

    def check_memos(self) -> int:
        """The memos of compressed copies (``builder.compressed``) are readable and name blobs the store has, as
        ``prune`` keeps them; how many there are."""
        base = self.root / MEMO_DIR
        kinds = {kind.value for kind in Compression}
        count = 0
        for kind in _names(base):
            kind_dir = base / kind
            if kind not in kinds or not _is_dir(kind_dir):
                self.found(STRAY_FILE, self.rel(kind_dir), "not a compression's memos", lambda p=kind_dir: _remove(p))
                continue
            for algorithm in _names(kind_dir):
                directory = kind_dir / algorithm
                if not _is_dir(directory):
                    self.found(STRAY_FILE, self.rel(directory), "not a directory", lambda p=directory: _remove(p))
                    continue
                for name in _names(directory):
                    path = directory / name
                    count += 1
                    fix = lambda p=path: _remove(p)  # noqa: E731
                    try:
                        source = Digest(algorithm, name)
                    except InvalidDigest:
                        self.found("invalid memo", self.rel(path), "not named by a digest", fix)
                        continue
                    copy = self.memo_copy(path, source)
                    if copy is None:
                        self.found("invalid memo", self.rel(path), "unreadable, or about another layer", fix)
                    elif (state := self.blob_state(source)) is not None:
                        detail = f"its layer {source} is {state}"
                        self.found("dangling memo", self.rel(path), detail, fix if self.sure(detail) else None)
                    elif (state := self.blob_state(copy)) is not None:
                        detail = f"its compressed copy {copy} is {state}"
                        self.found("dangling memo", self.rel(path), detail, fix if self.sure(detail) else None)
        return count

    @staticmethod
    def memo_copy(path: Path, source: Digest) -> Digest | None:
        try:
            with open(path, "rb") as f:
                raw = f.read(_MAX_RECORD + 1)
            data = load_json_object(raw, "memo")
            if len(raw) > _MAX_RECORD or data.get("source") != str(source):
                return None
            return Digest.parse(data["digest"])
        except (OSError, InvalidDocument, InvalidDigest, KeyError, TypeError):
            return None

    # --- snapshots

    def check_snapshots(self, images: int | None, records: list[CacheEntry] | None, live: _Live) -> int:
        """Names, types and readability, and whether anything needs each one; how many there are."""
        base = self.root / SNAPSHOTS_DIR
        # Whether a snapshot is needed is decided only when index.json and the step cache could both be read.
        needed = None
        if images is not None and records is not None:
            needed = storeops.needed_snapshots(self.store, live.images, records, live.layers)
        count = 0
        for name in _names(base):
            path = base / name
            if name.startswith("."):
                if _dead(name[1:]):
                    self.found(
                        TEMP_LEFTOVER,
                        self.rel(path),
                        "half-extracted by a process that is gone",
                        lambda p=path: _remove(p),
                    )
                elif not name[1:].split("-", 1)[0].isdigit():
                    self.found(STRAY_FILE, self.rel(path), "not a snapshot", lambda p=path: _remove(p))
                continue
            try:
                diff_id = Digest("sha256", name)
            except InvalidDigest:
                self.found(
                    STRAY_FILE, self.rel(path), "not a snapshot (its name is no sha256 hex)", lambda p=path: _remove(p)
                )
                continue
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue  # removed meanwhile
            count += 1
            if not stat.S_ISDIR(st.st_mode):
                self.found("invalid snapshot", str(diff_id), "not a directory", lambda p=path: _remove(p))
                continue
            try:
                os.listdir(path)
            except OSError as err:
                self.found("invalid snapshot", str(diff_id), f"unreadable: {err.strerror or err}")
                continue
            if needed is not None and diff_id not in needed:
                self.found(
                    "unreferenced snapshot",
                    str(diff_id),
                    "no image, running build or cached step has this layer",
                    lambda p=path: remove_dir(p),
                )
        return count

    # --- cache mounts

    def check_mounts(self) -> int:
        """Each cache mount has a record naming its directory and a data directory; how many there are."""
        mounts = CacheMountStore(self.root)
        count = 0
        for name in _names(mounts.dir):
            path = mounts.dir / name
            if name.startswith("."):
                if _dead(name[1:]):
                    self.found(
                        TEMP_LEFTOVER, self.rel(path), "work of a process that is gone", lambda p=path: _remove(p)
                    )
                continue
            try:
                Digest("sha256", name)
                is_home = _is_dir(path)
            except InvalidDigest:
                is_home = False
            if not is_home:
                self.found(STRAY_FILE, self.rel(path), "not a cache mount", lambda p=path: _remove(p))
                continue
            count += 1
            for inner in _names(path):
                if inner.startswith(".") and _dead(inner[1:]):
                    self.found(
                        TEMP_LEFTOVER,
                        self.rel(path / inner),
                        "half-written by a process that is gone",
                        lambda p=path / inner: _remove(p),
                    )
            with _mount_held(path) as held:
                if not held:
                    continue  # a step is using it, or it is being made: it is in flux, not broken
                problem = self.mount_problem(mounts, path)
            if problem is not None:
                kind, detail = problem
                self.found(kind, self.rel(path), detail, lambda p=path: _remove_mount(mounts, p))
        return count

    @staticmethod
    def mount_problem(mounts: CacheMountStore, home: Path) -> tuple[str, str] | None:
        has_data = _is_dir(home / "data")
        try:
            with open(home / "record.json", "rb") as f:
                record: Any = load_json_object(f.read(_MAX_RECORD + 1), "cache mount record")
        except FileNotFoundError:
            record = None
        except (OSError, InvalidDocument) as err:
            return "invalid cache mount", f"unreadable record.json ({err})"
        if record is None:
            if has_data:
                return "invalid cache mount", "data/ without a record.json (invisible to 'cache mounts ls')"
            return "incomplete cache mount", "neither record.json nor data/: left half-made"
        id = record.get("id")
        if not isinstance(id, str) or not id or mounts.path(id) != home:
            return "invalid cache mount", "its record.json does not name this directory's id"
        if not has_data:
            return "dangling cache mount", f"the record of {id!r} has no data/ directory"
        try:
            if mounts.get(id, measure=False) is None:
                return "invalid cache mount", f"the record of {id!r} is unreadable"
        except BuildError as err:
            return "invalid cache mount", str(err)
        return None

    # --- leftovers

    def check_leftovers(self) -> None:
        """Temporary files and trees of processes that are gone (the sweeps of ``open_store`` and builds would
        remove them)."""
        ingest = self.content.ingest_dir
        for name in _names(ingest):
            path = ingest / name
            if not name.endswith(".part") or not name.split("-", 1)[0].isdigit():
                self.found(STRAY_FILE, self.rel(path), "not a file being written", lambda p=path: _remove(p))
            elif _dead(name):
                self.found(
                    TEMP_LEFTOVER, self.rel(path), "written by a process that is gone", lambda p=path: _remove(p)
                )
        tmp = self.root / "tmp"
        for name in _names(tmp):
            if _dead(name):
                path = tmp / name
                self.found(
                    TEMP_LEFTOVER, self.rel(path), "scratch of a process that is gone", lambda p=path: _remove(p)
                )
        for name in _names(self.root):
            if name.startswith(".skeleton-") and _dead(name.removeprefix(".skeleton-")):
                path = self.root / name
                self.found(TEMP_LEFTOVER, name, "made by a process that is gone", lambda p=path: _remove(p))

    # --- sources.db

    def check_sources(self) -> None:
        path = self.root / SOURCES_FILE
        if not path.exists():
            return
        try:
            with closing(_read_only(path)) as db:
                complaint = _integrity(db)
                if complaint is not None:
                    self.found(
                        "corrupt sources index",
                        SOURCES_FILE,
                        f"{complaint} (it only helps pushes mount blobs: removing it is safe)",
                    )
                    return
                rows = db.execute("SELECT digest, registry, repository FROM sources").fetchall()
        except sqlite3.DatabaseError as err:
            if "no such table" not in str(err):
                self.found("corrupt sources index", SOURCES_FILE, str(err))
            return
        for text, registry, repository in rows:
            try:
                Digest.parse(text)
            except InvalidDigest:
                self.found(
                    "invalid source record",
                    f"{registry}/{repository}",
                    f"{text!r} is no digest",
                    lambda t=text: _delete_source(path, t),
                )


def _delete_source(path: Path, digest: str) -> None:
    with closing(sqlite3.connect(path, timeout=BUSY_TIMEOUT)) as db, db:
        db.execute("DELETE FROM sources WHERE digest = ?", (digest,))


@contextmanager
def _mount_held(home: Path) -> Iterator[bool]:
    """Hold a cache mount as its remover does (its lock file, and its directory, whose flock guards the making of
    ``data/`` and the record), without waiting: False when a step uses it or a process is making it."""
    fds: list[int] = []
    held = True
    try:
        for path, flags in ((home / "lock", os.O_RDWR), (home, os.O_RDONLY | os.O_DIRECTORY)):
            try:
                fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)
            except (FileNotFoundError, NotADirectoryError):
                continue
            fds.append(fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held = False
                break
        yield held
    finally:
        for fd in fds:
            os.close(fd)


def _remove_mount(mounts: CacheMountStore, home: Path) -> None:
    """Remove a broken cache mount as ``CacheMountStore.remove`` does: renamed into a work directory while held."""
    with _mount_held(home) as held:
        if not held:
            raise _InUse("a step is using it")
        with mounts.scratch("fsck") as trash:
            os.rename(home, trash / "mount")
