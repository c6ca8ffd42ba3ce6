"""The step cache index: an SQLite database in the store root (``ROOT/cache.db``).

One row per cache entry: the key, the key's record (canonical JSON), the result (the layer's descriptor and
diff_id, or none for a step that changed no file), the history text, where it came from (Dockerfile, stage,
line, the step as written, the image names of that build), when it was created and last used, and how often it
was hit. The per-file summaries that explain a COPY's miss are kept beside it, compressed. The database also
holds the context stat cache (``builder.checksum``), the builds that are running (their leases keep the entries
they use from ``cache prune``, and the images they use, bases and the image being committed, from ``pybuild
prune`` and ``rmi``), and the report of each finished build for ``pybuild cache explain``.

``ROOT/cache.lock`` is the store's guard (``store_guard``): held shared by whoever has written or found a blob
that nothing names yet (a build until the entry or lease that holds it is recorded, a pull, import or load until
its tag is written), and exclusively by whoever deletes blobs (``cache prune``, ``pybuild prune``, ``rmi``), so
that a blob is never deleted between the moment a command decides to use it and the moment it is held.

SQLite gives transactions and safe concurrent use from several processes (WAL mode, a generous busy timeout).
An entry is written only after its layer blob is stored, so a build killed at any moment leaves either no entry
or one whose blob exists; an entry whose blob has gone anyway (the store was tampered with) is a miss.
"""

from __future__ import annotations

import fcntl
import json
import marshal
import os
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder.errors import BuildError
from oci.canonical import canonical_json
from oci.descriptor import Descriptor
from oci.digest import Digest
from oci.errors import StoreFull
from oci.store import pid_alive

# Only type checkers read this block: the index stores what cachekey and checksum make without importing them (the
# front end, the plan), so that a verb that only guards the store (pull, import) does not load them.
if TYPE_CHECKING:
    from builder.cachekey import Files
    from builder.checksum import StatRow

__all__ = ["CacheEntry", "CacheIndex", "CacheIndexError", "INDEX_FILE", "store_guard"]

INDEX_FILE = "cache.db"
LOCK_FILE = "cache.lock"
SCHEMA = 2  # the tables' layout; a database with another is emptied
BUSY_TIMEOUT = 120.0  # seconds a writer waits for another (prune deleting blobs, a build recording a step)

_TABLES = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    layer TEXT,
    diff_id TEXT,
    size INTEGER NOT NULL,
    history TEXT NOT NULL,
    step TEXT NOT NULL,
    stage TEXT NOT NULL,
    line INTEGER NOT NULL,
    dockerfile TEXT NOT NULL,
    image TEXT NOT NULL,
    about TEXT NOT NULL,
    created REAL NOT NULL,
    last_used REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0,
    parents TEXT NOT NULL,
    files BLOB
);
CREATE INDEX IF NOT EXISTS entries_origin ON entries (stage, line);
CREATE TABLE IF NOT EXISTS builds (
    id TEXT PRIMARY KEY,
    pid INTEGER NOT NULL,
    started REAL NOT NULL,
    finished REAL,
    dockerfile TEXT NOT NULL,
    report TEXT
);
CREATE TABLE IF NOT EXISTS leases (build TEXT NOT NULL, key TEXT NOT NULL, PRIMARY KEY (build, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS image_leases (
    build TEXT NOT NULL,
    descriptor TEXT NOT NULL,
    PRIMARY KEY (build, descriptor)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS layer_leases (
    build TEXT NOT NULL,
    layer TEXT NOT NULL,
    diff_id TEXT,
    PRIMARY KEY (build, layer)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS stats (root BLOB PRIMARY KEY, rows BLOB NOT NULL) WITHOUT ROWID;
"""

_COLUMNS = (
    "key, record, layer, diff_id, history, step, stage, line, dockerfile, image, about, created, last_used, hits, "
    "parents"
)


@dataclass(frozen=True)
class CacheEntry:
    """One cached step: its key and record, its result, and where and when it was made."""

    key: Digest
    record: Mapping[str, Any]
    layer: Descriptor | None  # None: the step changed no file (an empty_layer history entry)
    diff_id: Digest | None
    history: str
    step: str  # the instruction as written
    stage: str
    line: int
    dockerfile: str
    image: str = ""  # the names the build that made it gave its image, comma-separated
    about: Mapping[str, str] = field(default_factory=dict)  # what explanations need that the record lacks
    created: float = 0.0
    last_used: float = 0.0
    hits: int = 0
    parents: tuple[tuple[Descriptor, Digest], ...] = ()  # the layers under this step's, bottom first

    @property
    def size(self) -> int:
        return self.layer.size if self.layer is not None else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "key": str(self.key),
            "step": self.step,
            "stage": self.stage,
            "line": self.line,
            "dockerfile": self.dockerfile,
            "image": self.image,
            "created": _iso(self.created),
            "last_used": _iso(self.last_used),
            "hits": self.hits,
            "size": self.size,
            "layer": self.layer.to_json() if self.layer is not None else None,
            "diff_id": str(self.diff_id) if self.diff_id is not None else None,
            "history": self.history,
        }


@contextmanager
def store_guard(root: Path, exclusive: bool = False) -> Iterator[None]:
    """The store's guard (``ROOT/cache.lock``; see the module docstring): shared for users of blobs nothing names
    yet, exclusive for deleters."""
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def _iso(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


def _entry(row: sqlite3.Row, known: dict[str, tuple[Descriptor, Digest]]) -> CacheEntry:
    layer = Descriptor.from_json(json.loads(row["layer"])) if row["layer"] else None
    return CacheEntry(
        key=Digest.parse(row["key"]),
        record=json.loads(row["record"]),
        layer=layer,
        diff_id=Digest.parse(row["diff_id"]) if row["diff_id"] else None,
        history=row["history"],
        step=row["step"],
        stage=row["stage"],
        line=row["line"],
        dockerfile=row["dockerfile"],
        image=row["image"],
        about=json.loads(row["about"]),
        created=row["created"],
        last_used=row["last_used"],
        hits=row["hits"],
        parents=_parents(row["parents"], known),
    )


def _parents(text: str, known: dict[str, tuple[Descriptor, Digest]]) -> tuple[tuple[Descriptor, Digest], ...]:
    """The layers under an entry's. A step's are the step before's and one more, so the entries of a build repeat
    the same layers over and over: ``known`` keeps each (layer, diff_id) pair parsed, by the repr of its JSON."""
    parents = []
    for pair in json.loads(text):
        key = repr(pair)
        parsed = known.get(key)
        if parsed is None:
            layer, diff_id = pair
            parsed = known[key] = (Descriptor.from_json(layer), Digest.parse(diff_id))
        parents.append(parsed)
    return tuple(parents)


class CacheIndexError(BuildError):
    """The cache database could not be read or written (other than for want of space: that is ``StoreFull``)."""


class _Connection(sqlite3.Connection):
    """A connection whose failures are the store's errors, named after the file: a full disk is ``StoreFull``
    like a blob that did not fit, anything else a ``CacheIndexError``, never a bare ``sqlite3`` exception."""

    directory = "."

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
        try:
            return super().execute(sql, *args)
        except sqlite3.Error as err:
            raise _index_error(err, self.directory) from err

    def executemany(self, sql: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
        try:
            return super().executemany(sql, *args)
        except sqlite3.Error as err:
            raise _index_error(err, self.directory) from err


def _index_error(err: sqlite3.Error, directory: str) -> Exception:
    code = getattr(err, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL or "disk is full" in str(err) or (code is not None and _out_of_space(directory)):
        return StoreFull(f"no space left on device while writing the cache index ({INDEX_FILE}: {err})")
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return CacheIndexError(f"the cache index ({INDEX_FILE}) is damaged: {err}", hint="run 'pybuild fsck --repair'")
    return CacheIndexError(f"the cache index ({INDEX_FILE}): {err}")


def _busy(err: BaseException) -> bool:
    cause = err.__cause__
    code = getattr(cause, "sqlite_errorcode", None) if isinstance(cause, sqlite3.Error) else None
    return code is not None and code & 0xFF == sqlite3.SQLITE_BUSY  # and its extended codes (BUSY_RECOVERY, ...)


def _out_of_space(directory: str) -> bool:
    """Whether the filesystem is (all but) full: SQLite reports a write that failed with ENOSPC in its WAL or
    shared-memory file as a plain "disk I/O error", and this tells the two apart."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < _FULL_MARGIN


#: Less room than this, and a failed write of the cache index is taken to be for want of space.
_FULL_MARGIN = 256 << 10


#: The key of a tree's stat-cache delta: its root's with this suffix (no path holds a NUL).
_STATS_DELTA = b"\0delta"


def _stat_rows(db: sqlite3.Connection, key: bytes) -> dict[bytes, StatRow | None]:
    row = db.execute("SELECT rows FROM stats WHERE root = ?", (key,)).fetchone()
    if row is None:
        return {}
    try:
        # marshal, not JSON: it loads 30k rows in a few milliseconds, and it can only build plain values.
        # Its format may change between Python versions; then the cache is simply rebuilt.
        rows = marshal.loads(row["rows"])
    except (EOFError, ValueError, TypeError):
        return {}
    return rows if isinstance(rows, dict) else {}


def _apply_changes(rows: dict[bytes, StatRow | None], changes: Mapping[bytes, StatRow | None]) -> None:
    for path, row in changes.items():
        if row is None:
            rows.pop(path, None)
        else:
            rows[path] = row


class CacheIndex:
    """The cache database of one store. Every method is one transaction."""

    def __init__(self, root: Path) -> None:
        self.path = root / INDEX_FILE
        # One connection per thread (stages run in parallel): SQLite orders them, as it orders separate builds.
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._parents: dict[str, tuple[Descriptor, Digest]] = {}  # see _parents
        # Two processes opening a new index at once: SQLite answers the one that loses the race to switch it to
        # WAL "database is locked" at once, without waiting, on the switch or on the first transaction after it.
        # Only then is the whole opening tried again (afterwards, writers wait for each other as usual).
        deadline = time.monotonic() + BUSY_TIMEOUT
        while True:
            try:
                self._create()
                return
            except CacheIndexError as err:
                if not _busy(err) or time.monotonic() > deadline:
                    raise
                self.close()
                time.sleep(0.02)

    def _create(self) -> None:
        """Open the index (its tables made, or emptied if another schema's)."""
        with self.transaction() as db:
            db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
            row = db.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
            if row is not None and row["value"] != str(SCHEMA):
                # Another pybuild's layout: the cache is only a cache, so it starts empty rather than misread.
                for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
                    if table != "meta":
                        db.execute(f'DROP TABLE "{table}"')
            for statement in _TABLES.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA),))

    @property
    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False, factory=_Connection
            )
            db.directory = os.fspath(self.path.parent)  # type: ignore[attr-defined]
            db.row_factory = sqlite3.Row
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
            except BaseException:
                db.close()
                raise
            self._local.db = db
            with self._connections_lock:
                self._connections.append(db)
        return db

    def close(self) -> None:
        with self._connections_lock:
            for db in self._connections:
                db.close()
            self._connections.clear()
        self._local = threading.local()

    @contextmanager
    def guard(self, exclusive: bool = False) -> Iterator[None]:
        """The lock between builds (shared: from committing or finding a layer until its entry is leased) and
        ``cache prune`` (exclusive: while it deletes entries and blobs); ``store_guard`` of this store."""
        with store_guard(self.path.parent, exclusive):
            yield

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """An immediate (write-locked) transaction: committed on success, rolled back on any error."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # ------------------------------------------------------------------------------------------- entries

    def get(self, key: Digest) -> CacheEntry | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM entries WHERE key = ?", (str(key),)).fetchone()
        return _entry(row, self._parents) if row is not None else None

    def find(self, prefix: str) -> list[CacheEntry]:
        """Entries whose key starts with ``prefix`` (with or without ``sha256:``)."""
        text = prefix if ":" in prefix else f"sha256:{prefix}"
        escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM entries WHERE key LIKE ? ESCAPE '\\'", (escaped + "%",))
        return [_entry(row, self._parents) for row in rows]

    def entries(self) -> list[CacheEntry]:
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM entries ORDER BY last_used DESC, key")
        return [_entry(row, self._parents) for row in rows]

    def candidates(self, stage: str, line: int, limit: int = 64) -> list[CacheEntry]:
        """The most recently used entries made at this stage and line (to explain a miss)."""
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM entries WHERE stage = ? AND line = ? ORDER BY last_used DESC LIMIT ?",
            (stage, line, limit),
        )
        return [_entry(row, self._parents) for row in rows]

    def files(self, key: Digest) -> Files | None:
        row = self._db.execute("SELECT files FROM entries WHERE key = ?", (str(key),)).fetchone()
        if row is None or row["files"] is None:
            return None
        return json.loads(zlib.decompress(row["files"]))  # type: ignore[no-any-return]

    def put(self, entry: CacheEntry, files: Files | None, build: str) -> None:
        """Record ``entry`` (replacing one with the same key: the newest result wins) and lease it, and its layer,
        to ``build``. The layer's own lease matters when two builds make the same step at once: the second entry
        replaces the first, and the first build's layer, which it goes on using, is then in no entry."""
        packed = zlib.compress(canonical_json(files), 6) if files else None
        now = time.time()
        with self.transaction() as db:
            db.execute(
                f"INSERT OR REPLACE INTO entries ({_COLUMNS}, size, files) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    str(entry.key),
                    canonical_json(entry.record).decode(),
                    canonical_json(entry.layer.to_json()).decode() if entry.layer is not None else None,
                    str(entry.diff_id) if entry.diff_id is not None else None,
                    entry.history,
                    entry.step,
                    entry.stage,
                    entry.line,
                    entry.dockerfile,
                    entry.image,
                    canonical_json(dict(entry.about)).decode(),
                    entry.created or now,
                    now,
                    entry.hits,
                    canonical_json([[layer.to_json(), str(diff_id)] for layer, diff_id in entry.parents]).decode(),
                    entry.size,
                    packed,
                ),
            )
            db.execute("INSERT OR IGNORE INTO leases VALUES (?, ?)", (build, str(entry.key)))
            self._lease_layer(db, build, str(entry.key))

    def use(self, key: Digest, build: str) -> None:
        """A hit: count it, and lease the entry and its layer to ``build`` until the build ends."""
        with self.transaction() as db:
            db.execute("UPDATE entries SET hits = hits + 1, last_used = ? WHERE key = ?", (time.time(), str(key)))
            db.execute("INSERT OR IGNORE INTO leases VALUES (?, ?)", (build, str(key)))
            self._lease_layer(db, build, str(key))

    @staticmethod
    def _lease_layer(db: sqlite3.Connection, build: str, key: str) -> None:
        db.execute(
            "INSERT OR IGNORE INTO layer_leases SELECT ?, layer, diff_id FROM entries "
            "WHERE key = ? AND layer IS NOT NULL",
            (build, key),
        )

    def leased_layers(self) -> list[tuple[Descriptor, Digest | None]]:
        """The layers (and diff_ids) of the entries running builds made or hit, whatever entry now has their key;
        the leases of builds that died are dropped on the way."""
        with self.transaction() as db:
            self._drop_dead(db)
            rows = db.execute("SELECT DISTINCT layer, diff_id FROM layer_leases").fetchall()
        return [
            (Descriptor.from_json(json.loads(row["layer"])), Digest.parse(row["diff_id"]) if row["diff_id"] else None)
            for row in rows
        ]

    def name_image(self, build: str, names: str) -> None:
        """Record the image names of ``build`` on the entries it leased."""
        with self.transaction() as db:
            db.execute(
                "UPDATE entries SET image = ? WHERE key IN (SELECT key FROM leases WHERE build = ?)", (names, build)
            )

    def delete(self, keys: list[str]) -> None:
        with self.transaction() as db:
            db.executemany("DELETE FROM entries WHERE key = ?", [(k,) for k in keys])

    # -------------------------------------------------------------------------------------------- builds

    def start_build(self, dockerfile: str) -> str:
        build = os.urandom(16).hex()  # random, like uuid4().hex, without importing uuid (which imports platform)
        with self.transaction() as db:
            db.execute(
                "INSERT INTO builds (id, pid, started, dockerfile) VALUES (?, ?, ?, ?)",
                (build, os.getpid(), time.time(), dockerfile),
            )
        return build

    def finish_build(self, build: str, report: list[dict[str, Any]]) -> None:
        """The build ended (well or not): keep its report, drop its leases and older builds' reports."""
        with self.transaction() as db:
            db.execute(
                "UPDATE builds SET finished = ?, report = ? WHERE id = ?",
                (time.time(), json.dumps(report), build),
            )
            db.execute("DELETE FROM leases WHERE build = ?", (build,))
            db.execute("DELETE FROM image_leases WHERE build = ?", (build,))
            db.execute("DELETE FROM layer_leases WHERE build = ?", (build,))
            db.execute(
                "DELETE FROM builds WHERE finished IS NOT NULL AND id NOT IN "
                "(SELECT id FROM builds WHERE finished IS NOT NULL ORDER BY finished DESC LIMIT 20)"
            )

    def last_report(self) -> tuple[str, float, list[dict[str, Any]]] | None:
        """The Dockerfile, end time and step report of the build that finished last."""
        row = self._db.execute(
            "SELECT dockerfile, finished, report FROM builds WHERE finished IS NOT NULL ORDER BY finished DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        return row["dockerfile"], row["finished"], json.loads(row["report"] or "[]")

    def leased(self) -> set[str]:
        """Keys leased by builds still running; the leases of builds that died are dropped on the way."""
        with self.transaction() as db:
            self._drop_dead(db)
            return {row["key"] for row in db.execute("SELECT key FROM leases")}

    def lease_image(self, build: str, descriptor: Descriptor) -> None:
        """Keep the image ``descriptor`` names (and every blob it reaches) from deletion until ``build`` ends: a
        base it builds on, or the image it has committed and not yet tagged. Call it under the guard."""
        with self.transaction() as db:
            text = canonical_json(descriptor.with_ref_name(None).to_json()).decode()
            db.execute("INSERT OR IGNORE INTO image_leases VALUES (?, ?)", (build, text))

    def leased_images(self) -> list[Descriptor]:
        """The images running builds leased; the leases of builds that died are dropped on the way."""
        with self.transaction() as db:
            self._drop_dead(db)
            rows = db.execute("SELECT DISTINCT descriptor FROM image_leases").fetchall()
        return [Descriptor.from_json(json.loads(row["descriptor"])) for row in rows]

    @staticmethod
    def _drop_dead(db: sqlite3.Connection) -> None:
        running = db.execute("SELECT id, pid FROM builds WHERE finished IS NULL").fetchall()
        for row in running:
            if not pid_alive(row["pid"]):
                db.execute("DELETE FROM leases WHERE build = ?", (row["id"],))
                db.execute("DELETE FROM image_leases WHERE build = ?", (row["id"],))
                db.execute("DELETE FROM layer_leases WHERE build = ?", (row["id"],))
                db.execute("DELETE FROM builds WHERE id = ?", (row["id"],))

    # ---------------------------------------------------------------------------------------- stat cache

    def load_stats(self, root: bytes) -> dict[bytes, StatRow]:
        """The stat cache of the tree at ``root`` (absolute path -> row); empty when unknown or unreadable.

        A tree's rows are stored whole, with the changes learnt since beside them as a delta (``save_stats``)."""
        self._db.execute("BEGIN")  # one snapshot of both: a build folding its delta in between would hide it
        try:
            rows = _stat_rows(self._db, root)
            _apply_changes(rows, _stat_rows(self._db, root + _STATS_DELTA))
        finally:
            self._db.execute("COMMIT")
        return rows  # type: ignore[return-value]  # the delta's removals are applied

    def forget_stats(self) -> None:
        """Drop every tree's stat cache (``cache prune --all``): the next build hashes its context afresh."""
        with self.transaction() as db:
            db.execute("DELETE FROM stats")

    def save_stats(self, root: bytes, changes: Mapping[bytes, StatRow | None], known: int = 0) -> None:
        """Keep what a walk of the tree at ``root`` learnt: new rows, and None for paths that are gone.

        ``known`` is how many rows the walk started from. Rewriting 30,000 rows (5 MB) because one file changed
        costs a rebuild ~35 ms, so the changes go into a delta beside the rows, and the rows are rewritten with
        the delta folded in only once it holds more than a quarter as many."""
        with self.transaction() as db:
            delta = _stat_rows(db, root + _STATS_DELTA)
            delta.update(changes)
            if len(delta) * 4 <= known:
                db.execute("INSERT OR REPLACE INTO stats VALUES (?, ?)", (root + _STATS_DELTA, marshal.dumps(delta)))
                return
            rows = _stat_rows(db, root)
            _apply_changes(rows, delta)
            db.execute("INSERT OR REPLACE INTO stats VALUES (?, ?)", (root, marshal.dumps(rows)))
            db.execute("DELETE FROM stats WHERE root = ?", (root + _STATS_DELTA,))
