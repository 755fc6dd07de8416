"""What happened, kept beside the entries: counters (uploads, bytes, failures and retries by
reason), uploads per second for the trailing windows, gauges, heartbeats, entries per state.

Owns those tables' statements. It never reads or changes an entry: a lifecycle step that
counts passes its own transaction in (`add`, `count_uploads`), so a count and the change it
counts commit together.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping

from sftppush.queue.entries import State
from sftppush.queue.queuefile import QueueFile

# Uploads per second are kept this long, for `queue status`'s trailing windows.
THROUGHPUT_KEPT = 3600

ADD_TO_COUNTER = """
INSERT INTO counters (name, label, value) VALUES (?, ?, ?)
    ON CONFLICT (name, label) DO UPDATE SET value = value + excluded.value"""
LAST_UPLOAD_AT = """
INSERT INTO counters (name, label, value) VALUES ('last_upload_at', '', ?)
    ON CONFLICT (name, label) DO UPDATE SET value = max(value, excluded.value)"""
ADD_THROUGHPUT = """
INSERT INTO throughput (second, uploads, bytes) VALUES (?, ?, ?)
    ON CONFLICT (second) DO UPDATE SET uploads = uploads + excluded.uploads,
                                       bytes = bytes + excluded.bytes"""
DROP_OLD_THROUGHPUT = "DELETE FROM throughput WHERE second < ?"
SET_GAUGE = """
INSERT INTO counters (name, label, value) VALUES (?, '', ?)
    ON CONFLICT (name, label) DO UPDATE SET value = excluded.value"""
BEAT = "INSERT OR REPLACE INTO heartbeats (role, owner, at) VALUES (?, ?, ?)"
# Kept by the schema's triggers, so counting never scans the entries.
ENTRIES_PER_STATE = "SELECT state, n FROM counts"


class Counters:
    """The counters, gauges and heartbeats of one queue file."""

    def __init__(self, file: QueueFile) -> None:
        self.file = file

    @staticmethod
    def add(db: sqlite3.Cursor, name: str, label: str, amount: float) -> None:
        """Add `amount` to the counter (name, label), in the caller's transaction."""
        db.execute(ADD_TO_COUNTER, (name, label, amount))

    def count_uploads(self, db: sqlite3.Cursor, files: int, size: int, now: float) -> None:
        """Uploads into the totals and this second's throughput (older seconds dropped), in
        the caller's transaction."""
        self.add(db, "uploads", "", files)
        self.add(db, "uploaded_bytes", "", size)
        db.execute(LAST_UPLOAD_AT, (now,))
        db.execute(ADD_THROUGHPUT, (int(now), files, size))
        db.execute(DROP_OLD_THROUGHPUT, (int(now) - THROUGHPUT_KEPT,))

    def beat(self, role: str, owner: str, now: float | None = None) -> None:
        """A sign of life of a long-running role (the watcher), for metrics to show."""
        with self.file.transaction() as db:
            db.execute(BEAT, (role, owner, self.file.now(now)))

    def set_gauges(self, values: Mapping[str, float]) -> int:
        """Gauges of a long-running role (the watcher's unwatched directories), kept with
        the counters for read-only status and metrics to show; returns how many."""
        with self.file.transaction() as db:
            db.executemany(SET_GAUGE, values.items())
        return len(values)

    def counts(self) -> dict[State, int]:
        """Entries per state, from the counts the triggers keep (no table scan)."""
        with self.file.transaction(write=False) as db:
            found = dict(db.execute(ENTRIES_PER_STATE).fetchall())
        return {state: found.get(state.value, 0) for state in State}
