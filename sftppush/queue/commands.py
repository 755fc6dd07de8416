"""What operators and upkeep ask of the queue file: list and get entries, replay failed ones,
purge done ones, and hand back a version whose file a killed consumer left set aside.

Owns those statements. It never touches a claimed entry, and never drops the only record
that a kept file was uploaded while that file is still on disk.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

from sftppush.queue.entries import AWAY, KEPT, NAME_KEPT, Entry, State, entries_of
from sftppush.queue.queuefile import QueueFile

# Done entries deleted per transaction: a claim waits at most one batch (a few ms).
PURGE_BATCH = 500

LIST_ALL = "SELECT * FROM entries ORDER BY id DESC LIMIT ?"
LIST_IN_STATE = "SELECT * FROM entries WHERE state = ? ORDER BY id DESC LIMIT ?"
GET = "SELECT * FROM entries WHERE id = ?"
REPLAY_ALL_FAILED = """
UPDATE entries SET state = 'pending', owner = NULL, due = ?, attempts = 0
 WHERE state = 'failed'"""
REPLAY_FAILED_ID = """
UPDATE entries SET state = 'pending', owner = NULL, due = ?, attempts = 0
 WHERE state = 'failed' AND id = ?"""
# Done entries past their keep, except those of kept files (KEPT) and of versions that may
# still be under their private name (AWAY, NAME_KEPT): the next three decide.
PURGE_DONE = """
DELETE FROM entries WHERE id IN (SELECT id FROM entries
                                  WHERE state = 'done' AND due < ? AND note IS NOT ?
                                    AND coalesce(note, '') NOT LIKE ?
                                    AND coalesce(note, '') NOT LIKE ? LIMIT ?)"""
KEPT_PAST = """
SELECT * FROM entries
 WHERE state = 'done' AND due < ? AND (note = ? OR note LIKE ? OR note LIKE ?) LIMIT ?"""
# The note patterns a purge holds back for a look at the disk (LIKE's wildcards: none in
# the constants).
KEPT_NOTES = (KEPT, AWAY + "%", "%" + NAME_KEPT)
# Fenced by what was read: an entry that changed meanwhile is left alone.
DROP_KEPT_GONE = "DELETE FROM entries WHERE id = ? AND state = 'done' AND due = ?"
KEEP_KEPT_THERE = "UPDATE entries SET due = ? WHERE id = ? AND state = 'done' AND due = ?"
# Done versions (inode, size, mtime) under `directory` that recorded their upload, or whose
# consumer met the name and could not remove it (NAME_KEPT); the caller keeps those directly
# in it. `path > dir/ AND path < dir0` is the prefix by index.
SET_ASIDE_CANDIDATES = """
SELECT id, path FROM entries
 WHERE path > ? AND path < ? AND inode = ? AND size = ? AND mtime_ns = ?
   AND state = 'done' AND (etag IS NOT NULL OR note LIKE ?)"""
REQUEUE_SET_ASIDE = """
UPDATE entries SET state = 'pending', owner = NULL, due = ?, attempts = 0
 WHERE id = ? AND state = 'done'"""


class Commands:
    """The operators' and upkeep's view of one queue file's entries."""

    def __init__(self, file: QueueFile) -> None:
        self.file = file

    def list(self, state: State | None = None, limit: int = 100) -> list[Entry]:
        """Entries, newest first, optionally of one state."""
        with self.file.transaction(write=False) as db:
            if state:
                return entries_of(db.execute(LIST_IN_STATE, (State(state).value, limit)))
            return entries_of(db.execute(LIST_ALL, (limit,)))

    def get(self, entry_id: int) -> Entry | None:
        with self.file.transaction(write=False) as db:
            found = entries_of(db.execute(GET, (entry_id,)))
        return found[0] if found else None

    def replay(self, ids: Sequence[int] | None = None, failed: bool = False,
               now: float | None = None) -> int:
        """Failed entries (all, or those of `ids`) back to pending with attempts reset."""
        with self.file.transaction() as db:
            now = self.file.now(now)
            if failed:
                db.execute(REPLAY_ALL_FAILED, (now,))
            else:  # executemany sums the rows each id changed
                db.executemany(REPLAY_FAILED_ID, [(now, i) for i in ids or ()])
            return db.rowcount

    def purge_done(self, older_than: float, now: float | None = None,
                   batch: int = PURGE_BATCH, pause: float = 0.0,
                   still_there: Callable[[Entry], bool] | None = None) -> int:
        """Drop done entries finished more than `older_than` seconds ago, `batch` per
        transaction with `pause` s between, so that claims and acks go on meanwhile; see
        purge_some for `still_there`. Returns how many were dropped."""
        total = 0
        while True:
            dropped, looked_at = self._purge_batch(older_than, now, batch, still_there)
            total += dropped
            if looked_at < batch:
                return total
            time.sleep(pause)

    def purge_some(self, older_than: float, now: float | None = None,
                   batch: int = PURGE_BATCH,
                   still_there: Callable[[Entry], bool] | None = None) -> int:
        """Drop up to `batch` done entries finished more than `older_than` s ago, in short
        transactions; returns how many. An entry whose file was kept by config (KEPT) is the
        only record that the file was uploaded, and one whose version may be under its private
        name (AWAY, NAME_KEPT) the only way to that name: each is dropped only once
        `still_there` says it is not needed, else kept for another `older_than` (none
        without it)."""
        return self._purge_batch(older_than, now, batch, still_there)[0]

    def _purge_batch(self, older_than: float, now: float | None, batch: int,
                     still_there: Callable[[Entry], bool] | None) -> tuple[int, int]:
        """(dropped, looked at): the entries past their keep, then the KEPT_NOTES ones."""
        with self.file.transaction() as db:
            now = self.file.now(now)
            db.execute(PURGE_DONE, (now - older_than, *KEPT_NOTES, batch))
            dropped = db.rowcount
        if dropped == batch or still_there is None:
            return dropped, dropped
        with self.file.transaction(write=False) as db:
            kept = entries_of(db.execute(KEPT_PAST, (now - older_than, *KEPT_NOTES,
                                                     batch - dropped)))
        there = {e.id for e in kept if still_there(e)}
        with self.file.transaction() as db:
            db.executemany(DROP_KEPT_GONE, [(e.id, e.due) for e in kept if e.id not in there])
            gone = db.rowcount if kept else 0
            db.executemany(KEEP_KEPT_THERE, [(now, e.id, e.due) for e in kept if e.id in there])
        return dropped + gone, dropped + len(kept)

    def requeue_set_aside(self, directory: bytes, inode: int, size: int, mtime_ns: int,
                          now: float | None = None) -> int:
        """Back to pending: the done entry of a file directly in `directory` whose version
        (inode, size, mtime) had its upload recorded (an ETag) or its private name kept
        (NAME_KEPT), so that a consumer meets it again and removes the private name it was
        left under; how many went back."""
        with self.file.transaction() as db:
            rows = db.execute(SET_ASIDE_CANDIDATES, (directory + b"/", directory + b"0",
                                                     inode, size, mtime_ns, KEPT_NOTES[2])
                              ).fetchall()
            ids = [i for i, path in rows if os.path.dirname(bytes(path)) == directory]
            now = self.file.now(now)
            db.executemany(REQUEUE_SET_ASIDE, [(now, i) for i in ids])
            return len(ids)
