"""The queue file: persist-queue's SQLite set-up, the schema and its migrations, and the one
way to run a statement (a transaction under the file's lock).

The queue's parts (entries, keys, uploads, counters, commands) each hold this file and say
what its rows mean; status.py reads them through `reading()`. It never says what a row means
and runs no statement but the schema's.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from persistqueue.sqlbase import SQLiteBase

from sftppush.errors import QueueError


class _Connection(SQLiteBase):
    """persist-queue's SQLite set-up and nothing more: one connection, WAL, a busy timeout.

    Its queue (a thread-lock-only get, pickled items, an in-process size counter) is not
    used; the schema is this module's, every other statement the queue parts'.
    """

    _SQL_CREATE = ""  # its _init runs this; the schema is SCHEMA, applied by version

    def __init__(self, file: Path, timeout: float, readonly: bool = False) -> None:
        self.readonly = readonly
        super().__init__(str(file.parent), timeout=timeout, db_file_name=file.name)

    def _new_db_connection(self, path: str, _multithreading: bool,
                           timeout: float) -> sqlite3.Connection:
        # Shared by the queue's threads under its lock, so not bound to the opening thread;
        # autocommit, so that every write is QueueFile.transaction()'s BEGIN IMMEDIATE.
        if self.readonly:
            return _read_only(Path(path, self.db_file_name), timeout)
        conn = super()._new_db_connection(path, True, timeout)
        conn.isolation_level = None
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn


SCHEMA_VERSION = 4
# The (state, due) index serves claim, the expired-lease sweep, purge and throughput;
# (path, state) finds the other versions of a path in flight (claim, supersede) without
# walking the done versions a path keeps for dedup; (key) finds who holds a key. Counts
# are kept by triggers so `queue status` never scans the table.
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS entries ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " path BLOB NOT NULL, source TEXT NOT NULL, size INTEGER NOT NULL,"
    " mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL DEFAULT 0,"
    " inode INTEGER NOT NULL, found_by TEXT NOT NULL,"
    " state TEXT NOT NULL CHECK (state IN ('pending', 'claimed', 'done', 'failed')),"
    " owner TEXT, due REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,"
    " enqueued_at REAL NOT NULL, last_error TEXT, note TEXT, key TEXT, sha256 TEXT,"
    " etag TEXT)",
    "CREATE UNIQUE INDEX IF NOT EXISTS entries_version"
    " ON entries (path, inode, size, mtime_ns, ctime_ns)",
    "CREATE INDEX IF NOT EXISTS entries_state_due ON entries (state, due)",
    "CREATE INDEX IF NOT EXISTS entries_path_state ON entries (path, state)",
    "CREATE INDEX IF NOT EXISTS entries_key ON entries (key) WHERE key IS NOT NULL",
    "CREATE TABLE IF NOT EXISTS counts (state TEXT PRIMARY KEY, n INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO counts VALUES"
    " ('pending', 0), ('claimed', 0), ('done', 0), ('failed', 0)",
    "CREATE TRIGGER IF NOT EXISTS entries_counted_in AFTER INSERT ON entries"
    " BEGIN UPDATE counts SET n = n + 1 WHERE state = new.state; END",
    "CREATE TRIGGER IF NOT EXISTS entries_counted_move AFTER UPDATE OF state ON entries"
    " WHEN old.state <> new.state BEGIN"
    " UPDATE counts SET n = n - 1 WHERE state = old.state;"
    " UPDATE counts SET n = n + 1 WHERE state = new.state; END",
    "CREATE TRIGGER IF NOT EXISTS entries_counted_out AFTER DELETE ON entries"
    " BEGIN UPDATE counts SET n = n - 1 WHERE state = old.state; END",
    # What happened, kept apart from the entries so that purging forgets none of it:
    # totals (uploads, bytes, failures and retries by reason), uploads per second for
    # the trailing windows, and the last sign of life of each long-running role.
    "CREATE TABLE IF NOT EXISTS counters (name TEXT NOT NULL, label TEXT NOT NULL,"
    " value REAL NOT NULL, PRIMARY KEY (name, label))",
    "CREATE TABLE IF NOT EXISTS throughput (second INTEGER PRIMARY KEY,"
    " uploads INTEGER NOT NULL, bytes INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS heartbeats (role TEXT PRIMARY KEY, owner TEXT NOT NULL,"
    " at REAL NOT NULL)",
    # A multipart upload in progress, kept by its entry for a resume: the sink's own
    # JSON (`detail`, and one item per completed part), opaque here.
    "CREATE TABLE IF NOT EXISTS uploads (entry_id INTEGER PRIMARY KEY, upload_id TEXT"
    " NOT NULL, key TEXT NOT NULL, detail TEXT NOT NULL, parts TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS uploads_key ON uploads (key)",
    "CREATE TRIGGER IF NOT EXISTS entries_upload_out AFTER DELETE ON entries"
    " BEGIN DELETE FROM uploads WHERE entry_id = old.id; END",
)
# What takes a file of user_version N to N + 1; SCHEMA then creates what is missing.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: ("ALTER TABLE entries ADD COLUMN ctime_ns INTEGER NOT NULL DEFAULT 0",
        "DROP INDEX entries_version",
        "ALTER TABLE entries ADD COLUMN key TEXT"),
    2: ("ALTER TABLE entries ADD COLUMN sha256 TEXT",),  # and new tables; counters at 0
    # A done row of schema 3 recorded no ETag: it no longer proves its path wrote its key
    # (a re-send then asks the store first: If-None-Match, and on 412 whose object).
    3: ("ALTER TABLE entries ADD COLUMN etag TEXT",),
}
# The schema's statements are a fixed list run in order (SCHEMA, then the version), each
# written whole; a PRAGMA takes no parameter, so the version is written into its statement.
READ_VERSION = "PRAGMA user_version"
SET_VERSION = f"PRAGMA user_version = {SCHEMA_VERSION}"
# A file made before the schema version was recorded has the entries table at version 0.
HAS_ENTRIES = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'entries'"


class QueueFile:
    """One open queue file; its threads share the connection through an internal lock."""

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True,
                 timeout: float = 30.0, readonly: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        """Open (or create) the queue file; `readonly` opens it without any write access
        (metrics), which neither creates nor upgrades it. `clock` is the wall clock every
        write acts at (a test passes its own)."""
        self.file = Path(path).absolute()
        self.clock = clock
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        if not self.file.exists():
            if not create or readonly:
                raise QueueError(f"queue: {self.file} does not exist")
            self.file.parent.mkdir(parents=True, exist_ok=True)
            # Created by us with 0600 before SQLite opens it; SQLite gives -wal/-shm the same mode.
            os.close(os.open(self.file, os.O_CREAT | os.O_WRONLY, 0o600))
        try:
            self._sqlite = _Connection(self.file, timeout, readonly)
            self._conn = self._sqlite._conn
            # Read-only commands must not wait for the write lock: only an older (or new)
            # file gets the schema statements.
            with self.transaction(write=False) as db:
                version = _version(db)
            if version != SCHEMA_VERSION and readonly:
                raise QueueError(f"queue: {self.file} has schema {version}, this sftppush"
                                 f" reads {SCHEMA_VERSION}: start the watcher to upgrade")
            if version != SCHEMA_VERSION:
                with self.transaction() as db:
                    self._upgrade(db)
        except sqlite3.DatabaseError as exc:
            self.close()
            raise QueueError(f"queue: {self.file} is not a usable queue file: {exc}") from None
        except BaseException:
            self.close()
            raise

    def _upgrade(self, db: sqlite3.Cursor) -> None:
        # Read again under the write lock: another process may have upgraded meanwhile.
        version = _version(db)
        if version > SCHEMA_VERSION:
            raise QueueError(f"queue: {self.file} has schema {version}, newer than this"
                             f" sftppush knows ({SCHEMA_VERSION}): upgrade sftppush")
        if version == 0 and db.execute(HAS_ENTRIES).fetchone():
            version = 1  # made before the schema version was recorded: the same table
        if version:  # an existing file: brought up to date step by step
            for step in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[step]:
                    db.execute(statement)
        for statement in SCHEMA:
            db.execute(statement)
        db.execute(SET_VERSION)

    def __enter__(self) -> QueueFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._sqlite.close()
            self._conn = None

    def now(self, now: float | None) -> float:
        """The time a write acts at: the caller's, else the clock read now, which in a write
        is after BEGIN IMMEDIATE (that may have waited for the busy timeout)."""
        return self.clock() if now is None else now

    def reading(self) -> contextlib.AbstractContextManager[sqlite3.Cursor]:
        """One read transaction: a consistent view, no write lock (status.py's numbers)."""
        return self.transaction(write=False)

    @contextlib.contextmanager
    def transaction(self, write: bool = True) -> Iterator[sqlite3.Cursor]:
        """The one way to run statements: BEGIN IMMEDIATE (BEGIN to read), COMMIT, and a
        ROLLBACK on any error; a database error comes out as one QueueError line."""
        with self._lock:
            if self._conn is None:
                raise QueueError(f"queue: {self.file} is closed")
            cur = self._conn.cursor()
            try:
                cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield cur
                except BaseException:
                    cur.execute("ROLLBACK")
                    raise
                cur.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                if self._conn.in_transaction:
                    self._conn.rollback()
                raise QueueError(f"queue: {self.file}: {exc}") from None
            finally:
                cur.close()


def _version(db: sqlite3.Cursor) -> int:
    """The schema version the file records (0: none recorded)."""
    (version,) = db.execute(READ_VERSION).fetchone()
    return int(version)


def _read_only(file: Path, timeout: float) -> sqlite3.Connection:
    """A connection that cannot write, to a file it may not write either.

    With no -wal file no writer has the queue open, and a reader without write access to
    the directory could not create the -shm that WAL reading needs: then read the main file
    as immutable (at worst one stale or failed read, should a writer start meanwhile).
    """
    wal = file.with_name(file.name + "-wal")
    uri = file.as_uri() + ("?mode=ro" if wal.exists() else "?mode=ro&immutable=1")
    conn = sqlite3.connect(uri, uri=True, timeout=timeout, check_same_thread=False)
    conn.isolation_level = None
    return conn
