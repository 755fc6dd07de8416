"""The durable queue as one object: the queue file and its parts, for the watcher, consumers,
upkeep and operator commands.

Owns composing them, one part a concern as rq's registries are: the file (queuefile.py),
entries from enqueue to done (lifecycle.py), key reservations (keys.py), the multipart
journal (uploads.py), counters (counters.py), and what operators ask (commands.py). Each
method here hands its call to the part that owns it; it never runs a statement itself. A
consumer's loop, which runs per file, holds the parts it writes through (`entries`, `keys`)
and calls them directly.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from sftppush.queue.commands import PURGE_BATCH, Commands
from sftppush.queue.counters import THROUGHPUT_KEPT, Counters
from sftppush.queue.entries import Entry, FileVersion, KeyTaken, State, Stored
from sftppush.queue.keys import Keys
from sftppush.queue.lifecycle import Entries
from sftppush.queue.queuefile import SCHEMA_VERSION, QueueFile
from sftppush.queue.uploads import EntryJournal, Record, Uploads

__all__ = ["PURGE_BATCH", "THROUGHPUT_KEPT", "FileVersion", "Queue"]

R = TypeVar("R")


class Queue:
    """The queue file and what happens to its entries. One object per process; its threads
    share it through the file's lock."""

    SCHEMA_VERSION = SCHEMA_VERSION

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True,
                 timeout: float = 30.0, readonly: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        """Open (or create) the queue file: see QueueFile."""
        self.db = QueueFile(path, create=create, timeout=timeout, readonly=readonly,
                            clock=clock)
        self.counters = Counters(self.db)
        self.entries = Entries(self.db, self.counters)
        self.keys = Keys(self.db)
        self.uploads = Uploads(self.db)
        self.commands = Commands(self.db)

    @property
    def file(self) -> Path:
        return self.db.file

    @property
    def clock(self) -> Callable[[], float]:
        return self.db.clock

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    def reading(self) -> contextlib.AbstractContextManager[sqlite3.Cursor]:
        """One read transaction: a consistent view, no write lock (status.py's numbers)."""
        return self.db.reading()

    # --- entries (lifecycle.py) ------------------------------------------------------------

    def enqueue_many(self, versions: Iterable[FileVersion], now: float | None = None) -> int:
        return self.entries.enqueue_many(versions, now)

    def known(self, versions: Iterable[FileVersion]) -> set[FileVersion]:
        return self.entries.known(versions)

    def claim(self, owner: str, lease_seconds: float, limit: int = 1,
              now: float | None = None) -> list[Entry]:
        return self.entries.claim(owner, lease_seconds, limit, now)

    def has_due(self, now: float | None = None) -> bool:
        return self.entries.has_due(now)

    def renew_leases(self, entries: Sequence[Entry], lease_seconds: float,
                     now: float | None = None) -> tuple[list[Entry], float]:
        return self.entries.renew_leases(entries, lease_seconds, now)

    def ack(self, entry: Entry, note: str | None = None, now: float | None = None,
            uploaded: Stored | None = None) -> bool:
        return self.entries.ack(entry, note, now, uploaded)

    def ack_many(self, done: Sequence[tuple[Entry, str | None]], now: float | None = None,
                 uploaded: Mapping[int, Stored] | None = None) -> list[Entry]:
        return self.entries.ack_many(done, now, uploaded)

    def retry_later(self, entry: Entry, error: str, delay: float, count_attempt: bool,
                    now: float | None = None, reason: str | None = None,
                    stored: Stored | None = None) -> bool:
        return self.entries.retry_later(entry, error, delay, count_attempt, now, reason, stored)

    def fail(self, entry: Entry, error: str, now: float | None = None,
             reason: str = "other", stored: Stored | None = None) -> bool:
        return self.entries.fail(entry, error, now, reason, stored)

    def release(self, entry: Entry, now: float | None = None) -> bool:
        return self.entries.release(entry, now)

    # --- key reservations (keys.py) --------------------------------------------------------

    def take_key(self, entry: Entry, key: str, now: float | None = None) -> KeyTaken | None:
        return self.keys.take_key(entry, key, now)

    def take_keys(self, wanted: Sequence[tuple[Entry, str]],
                  now: float | None = None) -> list[KeyTaken | None]:
        return self.keys.take_keys(wanted, now)

    # --- the multipart journal (uploads.py) ------------------------------------------------

    def journal(self, entry: Entry,
                restore: Callable[[str, str, str, list[str]], R]) -> EntryJournal[R]:
        """The claimed entry as the record of its multipart upload (the sink's Journal)."""
        return EntryJournal(self.uploads, entry, restore)

    def start_upload(self, entry: Entry, upload_id: str, key: str, detail: str) -> bool:
        return self.uploads.start(entry, upload_id, key, detail)

    def add_upload_part(self, entry: Entry, part: str) -> bool:
        return self.uploads.add_part(entry, part)

    def end_upload(self, entry: Entry, sha256: str | None) -> bool:
        return self.uploads.end(entry, sha256)

    def upload_of(self, entry: Entry) -> Record | None:
        return self.uploads.of(entry)

    def resumable_uploads(self, key: str) -> set[str]:
        return self.uploads.resumable(key)

    # --- counters (counters.py) ------------------------------------------------------------

    def beat(self, role: str, owner: str, now: float | None = None) -> None:
        self.counters.beat(role, owner, now)

    def set_gauges(self, values: Mapping[str, float]) -> int:
        return self.counters.set_gauges(values)

    def counts(self) -> dict[State, int]:
        return self.counters.counts()

    # --- operators and upkeep (commands.py) ------------------------------------------------

    def list(self, state: State | None = None, limit: int = 100) -> list[Entry]:
        return self.commands.list(state, limit)

    def get(self, entry_id: int) -> Entry | None:
        return self.commands.get(entry_id)

    def replay(self, ids: Sequence[int] | None = None, failed: bool = False,
               now: float | None = None) -> int:
        return self.commands.replay(ids, failed, now)

    def purge_done(self, older_than: float, now: float | None = None,
                   batch: int = PURGE_BATCH, pause: float = 0.0,
                   still_there: Callable[[Entry], bool] | None = None) -> int:
        return self.commands.purge_done(older_than, now, batch, pause, still_there)

    def purge_some(self, older_than: float, now: float | None = None,
                   batch: int = PURGE_BATCH,
                   still_there: Callable[[Entry], bool] | None = None) -> int:
        return self.commands.purge_some(older_than, now, batch, still_there)

    def requeue_set_aside(self, directory: bytes, inode: int, size: int, mtime_ns: int,
                          now: float | None = None) -> int:
        return self.commands.requeue_set_aside(directory, inode, size, mtime_ns, now)
