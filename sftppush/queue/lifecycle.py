"""An entry's life: enqueued with version dedup, claimed under a lease (one version of a path
at a time), then renewed, acked, retried, failed or released, every step after the claim
fenced by the claim's owner token.

Owns those statements. It never takes a claim from a live owner: only an expired lease, or
an owner process of this host that no longer runs, frees it; and a step whose fence does not
hold changes nothing (the caller learns the lease was lost).
"""

from __future__ import annotations

import json
import socket
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from sftppush.queue.counters import Counters
from sftppush.queue.entries import Entry, FileVersion, Stored, entries_of, vanished
from sftppush.queue.owners import died
from sftppush.queue.queuefile import QueueFile

# One version of a file. A row migrated from schema 1 has ctime_ns 0 (not known then): it
# matches any ctime, so an upgrade does not queue again every file already queued or done.
FIND_VERSION = """
SELECT id, state, note FROM entries
 WHERE path = ? AND inode = ? AND size = ? AND mtime_ns = ? AND ctime_ns IN (?, 0)"""
INSERT_VERSION = """
INSERT INTO entries (path, source, size, mtime_ns, ctime_ns, inode, found_by, state, due,
                     enqueued_at)
VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?) RETURNING id"""
# A version that vanished is pending again; it keeps its key only if it recorded an upload.
REQUEUE_VANISHED = """
UPDATE entries SET state = 'pending', owner = NULL, due = ?, attempts = 0, enqueued_at = ?,
                   found_by = ?, last_error = NULL, note = NULL, etag = NULL, sha256 = NULL,
                   key = CASE WHEN etag IS NULL THEN NULL ELSE key END
 WHERE id = ?"""
SUPERSEDE_OLDER = """
UPDATE entries SET state = 'done', due = ?, note = ?
 WHERE path = ? AND state = 'pending' AND id < ?"""

CLAIMED_OWNERS = "SELECT DISTINCT owner FROM entries WHERE state = 'claimed'"
TAKE_BACK_DEAD = """
UPDATE entries SET state = 'pending', due = ?, owner = NULL,
                   last_error = 'owner died (' || owner || ')'
 WHERE state = 'claimed' AND owner = ?"""
TAKE_BACK_EXPIRED = """
UPDATE entries SET state = 'pending', due = ?, owner = NULL,
                   last_error = 'lease expired (' || owner || ')'
 WHERE state = 'claimed' AND due <= ?"""
# A pending entry is claimable when due and the oldest pending version of its path, with no
# version of its path claimed: one version of a path in flight, in the order written.
# ANY_CLAIMABLE asks the same without claiming.
CLAIM = """
UPDATE entries SET state = 'claimed', owner = ?, due = ?
 WHERE id IN (SELECT id FROM entries
               WHERE state = 'pending' AND due <= ?
                 AND NOT EXISTS (SELECT 1 FROM entries AS other
                                  WHERE other.path = entries.path
                                    AND other.state IN ('claimed', 'pending')
                                    AND (other.state = 'claimed' OR other.id < entries.id))
               ORDER BY due LIMIT ?)
RETURNING *"""
ANY_CLAIMABLE = """
SELECT 1 FROM entries
 WHERE state = 'pending' AND due <= ?
   AND NOT EXISTS (SELECT 1 FROM entries AS other
                    WHERE other.path = entries.path
                      AND other.state IN ('claimed', 'pending')
                      AND (other.state = 'claimed' OR other.id < entries.id))
 LIMIT 1"""
ANY_LEASE_EXPIRED = "SELECT 1 FROM entries WHERE state = 'claimed' AND due <= ? LIMIT 1"

# Every step after the claim: `id = ? AND state = 'claimed' AND owner = ?`, its fence.
RENEW = "UPDATE entries SET due = ? WHERE id = ? AND state = 'claimed' AND owner = ?"
# One statement for a batch, fenced row by row all the same; the rows it does not return had
# lost their lease. json_each keeps the statement fixed whatever the batch size; the plan
# looks each id up by rowid. An entry keeps its key, unless it vanished recording nothing.
ACK_BATCH = """
UPDATE entries SET state = 'done', owner = NULL, due = ?, note = j.note,
                   key = CASE WHEN j.vanished AND j.etag IS NULL THEN NULL ELSE key END,
                   etag = coalesce(j.etag, entries.etag),
                   sha256 = coalesce(j.sha256, entries.sha256)
  FROM (SELECT json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS owner,
               json_extract(value, '$[2]') AS note, json_extract(value, '$[3]') AS vanished,
               json_extract(value, '$[4]') AS etag, json_extract(value, '$[5]') AS sha256
          FROM json_each(?)) AS j
 WHERE entries.id = j.id AND +entries.state = 'claimed' AND entries.owner = j.owner
RETURNING entries.id"""
RETRY = """
UPDATE entries SET state = 'pending', owner = NULL, due = ?, attempts = attempts + ?,
                   last_error = ?, etag = coalesce(?, etag), sha256 = coalesce(?, sha256)
 WHERE id = ? AND state = 'claimed' AND owner = ?"""
# A failed entry holds no key, unless its version was uploaded (now or before).
FAIL = """
UPDATE entries SET state = 'failed', owner = NULL, due = ?, attempts = attempts + 1,
                   last_error = ?, etag = coalesce(?, etag), sha256 = coalesce(?, sha256),
                   key = CASE WHEN coalesce(?, etag) IS NULL THEN NULL ELSE key END
 WHERE id = ? AND state = 'claimed' AND owner = ?"""
RELEASE = """
UPDATE entries SET state = 'pending', owner = NULL, due = ?
 WHERE id = ? AND state = 'claimed' AND owner = ?"""


class Entries:
    """The entries of one queue file, from enqueue to done or failed."""

    def __init__(self, file: QueueFile, counters: Counters) -> None:
        self.file = file
        self.counters = counters

    # --- producers -------------------------------------------------------------------

    def enqueue_many(self, versions: Iterable[FileVersion], now: float | None = None) -> int:
        """Append file versions in one transaction; returns how many are new.

        A version already queued is skipped, unless it vanished (VANISHED): that entry is
        pending again, which counts as new; it keeps its key if an object of its path was
        found there, so that no other path takes the key meanwhile. A new version retires
        the older pending versions of its path (done, note `superseded by id N`); a claimed
        one is left to its consumer, which finds it superseded.
        """
        versions = list(versions)
        if not versions:
            return 0
        added = 0
        with self.file.transaction() as db:
            now = self.file.now(now)
            for v in versions:
                row = _version_row(db, v)
                if row is None:
                    (new,) = db.execute(INSERT_VERSION, (
                        v.path, v.source, v.size, v.mtime_ns, v.ctime_ns, v.inode, v.found_by,
                        now, now)).fetchone()
                elif vanished(*row[1:]):
                    new = row[0]
                    db.execute(REQUEUE_VANISHED, (now, now, v.found_by, new))
                else:
                    continue
                db.execute(SUPERSEDE_OLDER, (now, f"superseded by id {new}", v.path, new))
                added += 1
        return added

    def known(self, versions: Iterable[FileVersion]) -> set[FileVersion]:
        """The versions that already have an entry, in any state, except the versions that
        vanished without an object (enqueue_many takes those as new)."""
        found = set()
        with self.file.transaction(write=False) as db:
            for v in versions:
                row = _version_row(db, v)
                if row is not None and not vanished(*row[1:]):
                    found.add(v)
        return found

    # --- consumers: every step after claim is fenced by the claim's owner token ----------

    def claim(self, owner: str, lease_seconds: float, limit: int = 1,
              now: float | None = None) -> list[Entry]:
        """Claim up to `limit` due entries for a fresh owner token, in one transaction.

        Claims of dead owners go back to pending first (see _take_back); pass
        owner_token() as `owner` for yours to be recognised. Each returned entry's `due` is
        its lease expiry as written, counted from a clock read inside the transaction, so
        the caller never believes in a longer lease than the queue's.
        """
        token = f"{owner}/{uuid.uuid4().hex[:12]}"
        with self.file.transaction() as db:
            now = self.file.now(now)
            _take_back(db, now)
            claimed = entries_of(db.execute(CLAIM, (token, now + lease_seconds, now, limit)))
        return sorted(claimed, key=lambda e: e.id)

    def has_due(self, now: float | None = None) -> bool:
        """Read-only: is anything claimable (pending, due and first of its path; or a claim
        whose lease expired or whose owner died)? Cheap enough to ask often; a claim is a
        write transaction."""
        now = self.file.now(now)
        with self.file.transaction(write=False) as db:
            if db.execute(ANY_CLAIMABLE, (now,)).fetchone():
                return True
            if db.execute(ANY_LEASE_EXPIRED, (now,)).fetchone():
                return True
            return bool(_dead_owners(db))

    def renew_leases(self, entries: Sequence[Entry], lease_seconds: float,
                     now: float | None = None) -> tuple[list[Entry], float]:
        """Extend leases: (the entries whose lease was lost meanwhile, the new expiry of the
        others), the expiry counted from a clock read inside the transaction."""
        lost, now = self._fenced(RENEW, entries, lambda now: (now + lease_seconds,), now)
        return lost, now + lease_seconds

    def ack(self, entry: Entry, note: str | None = None, now: float | None = None,
            uploaded: Stored | None = None) -> bool:
        """Mark done; False means the lease was lost and someone else owns the entry."""
        return not self.ack_many([(entry, note)], now,
                                 uploaded={entry.id: uploaded} if uploaded else {})

    def ack_many(self, done: Sequence[tuple[Entry, str | None]], now: float | None = None,
                 uploaded: Mapping[int, Stored] | None = None) -> list[Entry]:
        """Mark several done in one transaction; returns the ones whose lease was lost.

        The entries in `uploaded` count as uploads (files, source bytes, the time of the
        last one) and record what they stored. An entry keeps its key, unless its note
        starts with VANISHED and it records nothing: it wrote no object.
        """
        if not done:
            return []
        uploaded = uploaded or {}
        batch = json.dumps([[e.id, e.owner, note, vanished("done", note),
                             *_stored(uploaded.get(e.id))] for e, note in done])
        with self.file.transaction() as db:
            now = self.file.now(now)
            acked = {r[0] for r in db.execute(ACK_BATCH, (now, batch))}
            if up := [e for e, _ in done if e.id in acked and e.id in uploaded]:
                self.counters.count_uploads(db, len(up), sum(e.size for e in up), now)
        return [e for e, _ in done if e.id not in acked]

    def retry_later(self, entry: Entry, error: str, delay: float, count_attempt: bool,
                    now: float | None = None, reason: str | None = None,
                    stored: Stored | None = None) -> bool:
        """Back to pending, due in `delay` s; a `reason` counts one retry of that class.
        `stored`: what this version's verified upload left (its file is still to delete)."""
        return not self._fenced(
            RETRY, [entry],
            lambda now: (now + delay, int(count_attempt), error, *_stored(stored)), now,
            count=None if reason is None else ("retries", reason))[0]

    def fail(self, entry: Entry, error: str, now: float | None = None,
             reason: str = "other", stored: Stored | None = None) -> bool:
        """Mark failed, counting one failure of class `reason`. A failed entry holds no key,
        unless its version was uploaded (`stored`, now or before): that object is its."""
        return not self._fenced(
            FAIL, [entry], lambda now: (now, error, *_stored(stored), _stored(stored)[0]),
            now, count=("failures", reason))[0]

    def release(self, entry: Entry, now: float | None = None) -> bool:
        """Hand an unstarted or interrupted entry back at once (a consumer stopping)."""
        return not self._fenced(RELEASE, [entry], lambda now: (now,), now)[0]

    def _fenced(self, statement: str, entries: Sequence[Entry],
                values: Callable[[float], tuple[Any, ...]], now: float | None,
                count: tuple[str, str] | None = None) -> tuple[list[Entry], float]:
        """`statement` (whose last placeholders are its fence's id and owner) once per
        entry: (the entries whose lease was lost, the clock used). `count` = (counter,
        label) counts the entries updated, in the same transaction."""
        lost, updated = [], []
        with self.file.transaction() as db:
            now = self.file.now(now)
            for e in entries:
                db.execute(statement, (*values(now), e.id, e.owner))
                (updated if db.rowcount else lost).append(e)
            if count is not None and updated:
                self.counters.add(db, *count, len(updated))
        return lost, now


def _version_row(db: sqlite3.Cursor, v: FileVersion) -> tuple[int, str, str | None] | None:
    """(id, state, note) of the entry of this version, if it has one."""
    return db.execute(FIND_VERSION, (v.path, v.inode, v.size, v.mtime_ns,
                                     v.ctime_ns)).fetchone()


def _take_back(db: sqlite3.Cursor, now: float) -> None:
    """Claims whose owner is a process of this host that no longer runs go back to pending
    at once; any other claim once its lease expired."""
    if dead := [(now, owner) for owner in _dead_owners(db)]:
        db.executemany(TAKE_BACK_DEAD, dead)
    db.execute(TAKE_BACK_EXPIRED, (now, now))


def _dead_owners(db: sqlite3.Cursor) -> list[str]:
    """The owner tokens of claims whose process died (see owners.died), asking once per
    process: each claim of a process has a token of its own."""
    host = socket.gethostname()
    owners = [o for (o,) in db.execute(CLAIMED_OWNERS)]
    by_process = {o.rpartition("/")[0]: o for o in owners}
    dead = {process for process, owner in by_process.items() if died(owner, host)}
    return [o for o in owners if o.rpartition("/")[0] in dead]


def _stored(stored: Stored | None) -> tuple[str | None, str | None]:
    return (stored.etag, stored.sha256) if stored else (None, None)
