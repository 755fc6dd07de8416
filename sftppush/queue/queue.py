"""The durable queue: what happens to entries in the queue file, shared by the watcher,
consumers and operator commands.

Enqueue with version dedup, atomic leased claims fenced by owner tokens (one version of a
path at a time), key reservations, ack/retry/fail/release with the counters they keep, a
multipart upload's record for a resume, heartbeats, replay and purge; status.py reads the
numbers, queuefile.py keeps the file and its schema. It knows nothing of S3 or inotify, and
it never takes a claim from a live owner: only an expired lease, or an owner process of
this host that no longer runs, frees it.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from sftppush.queue.entries import (
    COLUMNS,
    KEPT,
    Entry,
    FileVersion,
    KeyTaken,
    State,
    Stored,
    entry_of,
    vanished,
)
from sftppush.queue.owners import died
from sftppush.queue.queuefile import QueueFile


def _dead_owners(db: sqlite3.Cursor) -> list[str]:
    """The owner tokens of claims whose process died (see owners.died), asking once per
    process: each claim of a process has a token of its own."""
    host = socket.gethostname()
    owners = [o for (o,) in db.execute("SELECT DISTINCT owner FROM entries"
                                         " WHERE state = 'claimed'")]
    by_process = {o.rpartition("/")[0]: o for o in owners}
    dead = {process for process, owner in by_process.items() if died(owner, host)}
    return [o for o in owners if o.rpartition("/")[0] in dead]


def _key_answer(holders: dict[int, tuple[bytes, bool, bool]], entry: Entry,
                leased: bool) -> KeyTaken | None:
    """take_key's answer for `entry` from the rows holding its key (id -> path, whether it
    recorded a verified upload, whether it is settled: done or with its upload recorded):
    None without a lease; the oldest settled holder of another path, else the oldest one
    still in flight (`waits`: its upload may yet fail); else whether a version of this path
    (this entry included) verifiably wrote the key."""
    if not leased:
        return None
    others = [i for i, (path, _, _) in holders.items() if path != entry.path]
    if settled := [i for i in others if holders[i][2]]:
        return KeyTaken(holder=holders[min(settled)][0], known=False)
    if others:
        return KeyTaken(holder=holders[min(others)][0], known=False, waits=True)
    return KeyTaken(holder=None, known=any(stored for _, stored, _ in holders.values()))


# A pending entry is claimable when due and the oldest pending version of its path, with no
# version of its path claimed: one version of a path in flight, in the order written.
_CLAIMABLE = ("state = 'pending' AND due <= ? AND NOT EXISTS (SELECT 1 FROM entries AS other"
              " WHERE other.path = entries.path AND other.state IN ('claimed', 'pending')"
              " AND (other.state = 'claimed' OR other.id < entries.id))")
# One version of a file. A row migrated from schema 1 has ctime_ns 0 (not known then): it
# matches any ctime, so an upgrade does not queue again every file already queued or done.
_SAME_VERSION = "path = ? AND inode = ? AND size = ? AND mtime_ns = ? AND ctime_ns IN (?, 0)"
_FENCE = "id = ? AND state = 'claimed' AND owner = ?"
# Uploads per second are kept this long, for `queue status`'s trailing windows.
THROUGHPUT_KEPT = 3600
# Done entries deleted per transaction: a claim waits at most one batch (a few ms).
PURGE_BATCH = 500


class Queue(QueueFile):
    """The queue file and what happens to its entries. One object per process; its threads
    share it through the file's lock."""

    # --- producers ---------------------------------------------------------------------

    def enqueue_many(self, versions: Iterable[FileVersion], now: float | None = None) -> int:
        """Append file versions in one transaction; returns how many are new.

        A version already queued is skipped, unless it vanished (VANISHED): that entry is
        pending again, which counts as new; it keeps its key if an object of its path was
        found there, so that no other path takes the key meanwhile. A new
        version retires the older pending versions of its path (done, note
        `superseded by id N`); a claimed one is left to its consumer, which finds it
        superseded.
        """
        versions = list(versions)
        if not versions:
            return 0
        added = 0
        with self._transaction() as db:
            now = self._now(now)
            for v in versions:
                row = db.execute(f"SELECT id, state, note FROM entries WHERE {_SAME_VERSION}",
                                 _version_key(v)).fetchone()
                if row is None:
                    (new,) = db.execute(
                        "INSERT INTO entries (path, source, size, mtime_ns, ctime_ns, inode,"
                        " found_by, state, due, enqueued_at)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?) RETURNING id",
                        (v.path, v.source, v.size, v.mtime_ns, v.ctime_ns, v.inode,
                         v.found_by, now, now)).fetchone()
                elif vanished(*row[1:]):
                    new = row[0]
                    db.execute("UPDATE entries SET state = 'pending', owner = NULL, due = ?,"
                               " attempts = 0, enqueued_at = ?, found_by = ?, last_error = NULL,"
                               " note = NULL, etag = NULL, sha256 = NULL,"
                               " key = CASE WHEN etag IS NULL THEN NULL ELSE key END"
                               " WHERE id = ?",
                               (now, now, v.found_by, new))
                else:
                    continue
                db.execute("UPDATE entries SET state = 'done', due = ?, note = ?"
                           " WHERE path = ? AND state = 'pending' AND id < ?",
                           (now, f"superseded by id {new}", v.path, new))
                added += 1
        return added

    def known(self, versions: Iterable[FileVersion]) -> set[FileVersion]:
        """The versions that already have an entry, in any state, except the versions that
        vanished without an object (enqueue_many takes those as new)."""
        found = set()
        with self._transaction(write=False) as db:
            for v in versions:
                row = db.execute(f"SELECT state, note FROM entries WHERE {_SAME_VERSION}",
                                 _version_key(v)).fetchone()
                if row is not None and not vanished(*row):
                    found.add(v)
        return found

    # --- consumers: every call after claim is fenced by the claim's owner token ---------

    def claim(self, owner: str, lease_seconds: float, limit: int = 1,
              now: float | None = None) -> list[Entry]:
        """Claim up to `limit` due entries for a fresh owner token, in one transaction.

        Claims of dead owners go back to pending first (see _take_back); pass
        owner_token() as `owner` for yours to be recognised. Each returned entry's `due` is
        its lease expiry as written, counted from a clock read inside the transaction, so
        the caller never believes in a longer lease than the queue's.
        """
        token = f"{owner}/{uuid.uuid4().hex[:12]}"
        with self._transaction() as db:
            now = self._now(now)
            self._take_back(db, now)
            db.execute(
                f"UPDATE entries SET state = 'claimed', owner = ?, due = ? WHERE id IN"
                f" (SELECT id FROM entries WHERE {_CLAIMABLE} ORDER BY due LIMIT ?)"
                f" RETURNING {COLUMNS}",
                (token, now + lease_seconds, now, limit))
            rows = db.fetchall()
        return sorted((entry_of(r) for r in rows), key=lambda e: e.id)

    @staticmethod
    def _take_back(db: sqlite3.Cursor, now: float) -> None:
        """Claims whose owner is a process of this host that no longer runs go back to
        pending at once; any other claim once its lease expired."""
        if dead := [(now, owner) for owner in _dead_owners(db)]:
            db.executemany("UPDATE entries SET state = 'pending', due = ?, owner = NULL,"
                           " last_error = 'owner died (' || owner || ')'"
                           " WHERE state = 'claimed' AND owner = ?", dead)
        db.execute("UPDATE entries SET state = 'pending', due = ?, owner = NULL,"
                   " last_error = 'lease expired (' || owner || ')'"
                   " WHERE state = 'claimed' AND due <= ?", (now, now))

    def has_due(self, now: float | None = None) -> bool:
        """Read-only: is anything claimable (pending, due and first of its path; or a claim
        whose lease expired or whose owner died)? Cheap enough to ask often; a claim is a
        write transaction."""
        now = self._now(now)
        with self._transaction(write=False) as db:
            for sql in (f"SELECT 1 FROM entries WHERE {_CLAIMABLE} LIMIT 1",
                        "SELECT 1 FROM entries WHERE state = 'claimed' AND due <= ? LIMIT 1"):
                if db.execute(sql, (now,)).fetchone():
                    return True
            return bool(_dead_owners(db))

    def renew_leases(self, entries: Sequence[Entry], lease_seconds: float,
                     now: float | None = None) -> tuple[list[Entry], float]:
        """Extend leases: (the entries whose lease was lost meanwhile, the new expiry of the
        others), the expiry counted from a clock read inside the transaction."""
        lost, now = self._fenced(entries, "due = ?", lambda _e, now: (now + lease_seconds,),
                                 now)
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
        # One statement for the batch, fenced row by row all the same (_FENCE's state and
        # owner); the rows it does not return had lost their lease. json_each keeps the SQL
        # fixed whatever the batch size; the plan looks each id up by rowid.
        batch = json.dumps([[e.id, e.owner, note, vanished("done", note),
                             *_stored(uploaded.get(e.id))] for e, note in done])
        with self._transaction() as db:
            now = self._now(now)
            acked = {r[0] for r in db.execute(
                "UPDATE entries SET state = 'done', owner = NULL, due = ?, note = j.note,"
                " key = CASE WHEN j.vanished AND j.etag IS NULL THEN NULL ELSE key END,"
                " etag = coalesce(j.etag, entries.etag),"
                " sha256 = coalesce(j.sha256, entries.sha256)"
                " FROM (SELECT json_extract(value, '$[0]') AS id, json_extract(value, '$[1]')"
                " AS owner, json_extract(value, '$[2]') AS note, json_extract(value, '$[3]')"
                " AS vanished, json_extract(value, '$[4]') AS etag,"
                " json_extract(value, '$[5]') AS sha256 FROM json_each(?)) AS j"
                " WHERE entries.id = j.id AND +entries.state = 'claimed'"
                " AND entries.owner = j.owner RETURNING entries.id", (now, batch))}
            if up := [e for e, _ in done if e.id in acked and e.id in uploaded]:
                _count_uploads(db, len(up), sum(e.size for e in up), now)
        return [e for e, _ in done if e.id not in acked]

    def retry_later(self, entry: Entry, error: str, delay: float, count_attempt: bool,
                    now: float | None = None, reason: str | None = None,
                    stored: Stored | None = None) -> bool:
        """Back to pending, due in `delay` s; a `reason` counts one retry of that class.
        `stored`: what this version's verified upload left (its file is still to delete)."""
        return not self._fenced(
            [entry], "state = 'pending', owner = NULL, due = ?, attempts = attempts + ?,"
            " last_error = ?, etag = coalesce(?, etag), sha256 = coalesce(?, sha256)",
            lambda _e, now: (now + delay, int(count_attempt), error, *_stored(stored)), now,
            count=None if reason is None else ("retries", reason))[0]

    def fail(self, entry: Entry, error: str, now: float | None = None,
             reason: str = "other", stored: Stored | None = None) -> bool:
        """Mark failed, counting one failure of class `reason`. A failed entry holds no key,
        unless its version was uploaded (`stored`, now or before): that object is its."""
        return not self._fenced(
            [entry], "state = 'failed', owner = NULL, due = ?, attempts = attempts + 1,"
            " last_error = ?, etag = coalesce(?, etag), sha256 = coalesce(?, sha256),"
            " key = CASE WHEN coalesce(?, etag) IS NULL THEN NULL ELSE key END",
            lambda _e, now: (now, error, *_stored(stored), _stored(stored)[0]), now,
            count=("failures", reason))[0]

    def take_key(self, entry: Entry, key: str, now: float | None = None) -> KeyTaken | None:
        """Reserve `key` for this entry's upload: one key, one local path (SPEC 3).

        In one transaction: if an entry of another path holds the key (claimed, pending or
        done; a failed one holds none), returns KeyTaken(holder=that path) and sets
        nothing; else records the key on this entry. None means the lease was lost (or
        ran out: an upload must not start on it) and nothing was set.
        """
        return self.take_keys([(entry, key)], now)[0]

    def take_keys(self, wanted: Sequence[tuple[Entry, str]],
                  now: float | None = None) -> list[KeyTaken | None]:
        """take_key for several entries in one transaction, in order: each answer is the one
        take_key would give after the entries before it (two paths of one batch that map
        to one key: the second finds the first holding it).

        Three statements whatever the batch's size: the leases, the rows that hold any of
        the keys, the keys written; the answers are worked out in between, entry by entry,
        on those rows as the earlier entries of the batch leave them.
        """
        if not wanted:
            return []
        out: list[KeyTaken | None] = []
        taken: dict[int, str] = {}  # id -> key; an entry asked twice keeps the later key
        with self._transaction() as db:
            now = self._now(now)
            leased = {r[0] for r in db.execute(
                "SELECT id FROM entries, (SELECT json_extract(value, '$[0]') AS jid,"
                " json_extract(value, '$[1]') AS jowner FROM json_each(?))"
                " WHERE id = jid AND +state = 'claimed' AND owner = jowner AND due > ?",
                (json.dumps([[e.id, e.owner] for e, _ in wanted]), now))}
            holders: dict[str, dict[int, tuple[bytes, bool, bool]]] = \
                {key: {} for _, key in wanted}
            key_of: dict[int, str] = {}
            # Every row with a key holds it: a failed one that never uploaded has none.
            for i, key, path, stored, done in db.execute(
                    "SELECT id, key, path, etag IS NOT NULL, state = 'done' FROM entries"
                    " WHERE key IN (SELECT value FROM json_each(?))",
                    (json.dumps(list(holders)),)):
                holders[key][i] = (bytes(path), bool(stored), bool(stored or done))
                key_of[i] = key
            for entry, key in wanted:
                answer = _key_answer(holders[key], entry, entry.id in leased)
                if answer is not None and answer.holder is None:
                    stored = False
                    if entry.id in key_of:  # an entry holds one key at a time
                        stored = holders[key_of[entry.id]].pop(entry.id)[1] and \
                            key_of[entry.id] == key
                    holders[key][entry.id] = (entry.path, stored, stored)
                    key_of[entry.id] = key
                    taken[entry.id] = key
                out.append(answer)
            if taken:
                # A recorded upload stays recorded only for the key it went to.
                db.execute("UPDATE entries SET key = j.key, etag = CASE WHEN entries.key ="
                           " j.key THEN entries.etag END FROM (SELECT json_extract(value,"
                           " '$[0]') AS id, json_extract(value, '$[1]') AS key"
                           " FROM json_each(?)) AS j WHERE entries.id = j.id",
                           (json.dumps(list(taken.items())),))
        return out

    # --- a multipart upload in progress, for a resume after a crash -----------------------

    def start_upload(self, entry: Entry, upload_id: str, key: str, detail: str) -> bool:
        """Record the entry's new upload (replacing any earlier one); False: lease lost."""
        return self._holding(entry, "INSERT OR REPLACE INTO uploads VALUES (?, ?, ?, ?, '[]')",
                             (entry.id, upload_id, key, detail))

    def add_upload_part(self, entry: Entry, part: str) -> bool:
        """Append one completed part (JSON) to the entry's upload; False: lease lost."""
        return self._holding(entry, "UPDATE uploads SET parts = json_insert(parts, '$[#]',"
                                    " json(?)) WHERE entry_id = ?", (part, entry.id))

    def end_upload(self, entry: Entry, sha256: str | None) -> bool:
        """Forget the entry's upload: completed (its object's `sha256`) or gone (None)."""
        return self._holding(entry, "DELETE FROM uploads WHERE entry_id = ?", (entry.id,),
                             sha256)

    def upload_of(self, entry: Entry) -> tuple[str, str, str, list[str]] | None:
        """(upload id, key, detail, parts) recorded by the entry, or None."""
        with self._transaction(write=False) as db:
            row = db.execute("SELECT upload_id, key, detail, parts FROM uploads"
                             " WHERE entry_id = ?", (entry.id,)).fetchone()
        if row is None:
            return None
        return row[0], row[1], row[2], [json.dumps(part) for part in json.loads(row[3])]

    def resumable_uploads(self, key: str) -> set[str]:
        """Upload ids of `key` that entries still to be done keep for a resume."""
        with self._transaction(write=False) as db:
            return {r[0] for r in db.execute(
                "SELECT upload_id FROM uploads JOIN entries ON entries.id = uploads.entry_id"
                " WHERE uploads.key = ? AND state IN ('pending', 'claimed')", (key,))}

    def _holding(self, entry: Entry, sql: str, args: tuple[Any, ...],
                 sha256: str | None = None) -> bool:
        """Run `sql` if the entry's claim is still this owner's (and set its sha256)."""
        with self._transaction() as db:
            db.execute(f"UPDATE entries SET sha256 = coalesce(?, sha256) WHERE {_FENCE}",
                       (sha256, entry.id, entry.owner))
            if db.rowcount == 0:
                return False
            db.execute(sql, args)
            return True

    def release(self, entry: Entry, now: float | None = None) -> bool:
        """Hand an unstarted or interrupted entry back at once (a consumer stopping)."""
        return not self._fenced([entry], "state = 'pending', owner = NULL, due = ?",
                                lambda _e, now: (now,), now)[0]

    def _fenced(self, entries: Sequence[Entry], assignments: str,
                values: Callable[[Entry, float], tuple[Any, ...]], now: float | None,
                count: tuple[str, str] | None = None) -> tuple[list[Entry], float]:
        """One fenced UPDATE per entry: (the entries whose lease was lost, the clock used).
        `count` = (counter, label) counts the entries updated, in the same transaction."""
        lost, updated = [], []
        with self._transaction() as db:
            now = self._now(now)
            for e in entries:
                db.execute(f"UPDATE entries SET {assignments} WHERE {_FENCE}",
                           (*values(e, now), e.id, e.owner))
                (updated if db.rowcount else lost).append(e)
            if count is not None and updated:
                _add(db, *count, len(updated))
        return lost, now

    # --- operators ----------------------------------------------------------------------

    def replay(self, ids: Sequence[int] | None = None, failed: bool = False,
               now: float | None = None) -> int:
        """Failed entries (all, or those of `ids`) back to pending with attempts reset."""
        sql = ("UPDATE entries SET state = 'pending', owner = NULL, due = ?, attempts = 0"
               " WHERE state = 'failed'")
        with self._transaction() as db:
            now = self._now(now)
            if failed:
                db.execute(sql, (now,))
            else:  # executemany sums the rows each id changed
                db.executemany(sql + " AND id = ?", [(now, i) for i in ids or ()])
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
        only record that the file was uploaded: it is dropped only once `still_there` says
        its version left the disk, else kept for another `older_than` (none without it)."""
        return self._purge_batch(older_than, now, batch, still_there)[0]

    def _purge_batch(self, older_than: float, now: float | None, batch: int,
                     still_there: Callable[[Entry], bool] | None) -> tuple[int, int]:
        """(dropped, looked at): the entries past their keep, then those of kept files."""
        with self._transaction() as db:
            now = self._now(now)
            db.execute("DELETE FROM entries WHERE id IN (SELECT id FROM entries"
                       " WHERE state = 'done' AND due < ? AND note IS NOT ? LIMIT ?)",
                       (now - older_than, KEPT, batch))
            dropped = db.rowcount
        if dropped == batch or still_there is None:
            return dropped, dropped
        with self._transaction(write=False) as db:
            kept = [entry_of(r) for r in db.execute(
                f"SELECT {COLUMNS} FROM entries WHERE state = 'done' AND due < ? AND note = ?"
                " LIMIT ?", (now - older_than, KEPT, batch - dropped))]
        there = {e.id for e in kept if still_there(e)}
        with self._transaction() as db:
            # Fenced by what was read: an entry that changed meanwhile is left alone.
            db.executemany("DELETE FROM entries WHERE id = ? AND state = 'done' AND due = ?",
                           [(e.id, e.due) for e in kept if e.id not in there])
            gone = db.rowcount if kept else 0
            db.executemany("UPDATE entries SET due = ? WHERE id = ? AND state = 'done'"
                           " AND due = ?", [(now, e.id, e.due) for e in kept if e.id in there])
        return dropped + gone, dropped + len(kept)

    def beat(self, role: str, owner: str, now: float | None = None) -> None:
        """A sign of life of a long-running role (the watcher), for metrics to show."""
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO heartbeats (role, owner, at) VALUES (?, ?, ?)",
                       (role, owner, self._now(now)))

    def set_gauges(self, values: Mapping[str, float]) -> int:
        """Gauges of a long-running role (the watcher's unwatched directories), kept with
        the counters for read-only status and metrics to show; returns how many."""
        with self._transaction() as db:
            db.executemany("INSERT INTO counters (name, label, value) VALUES (?, '', ?)"
                           " ON CONFLICT (name, label) DO UPDATE SET value = excluded.value",
                           values.items())
        return len(values)

    def counts(self) -> dict[State, int]:
        """Entries per state, from the counts the triggers keep (no table scan)."""
        with self._transaction(write=False) as db:
            found = dict(db.execute("SELECT state, n FROM counts").fetchall())
        return {state: found.get(state.value, 0) for state in State}

    def list(self, state: State | None = None, limit: int = 100) -> list[Entry]:
        """Entries, newest first, optionally of one state."""
        where, args = ("WHERE state = ?", (State(state).value,)) if state else ("", ())
        with self._transaction(write=False) as db:
            rows = db.execute(f"SELECT {COLUMNS} FROM entries {where} ORDER BY id DESC"
                              f" LIMIT ?", (*args, limit)).fetchall()
        return [entry_of(r) for r in rows]

    def requeue_set_aside(self, directory: bytes, inode: int, size: int, mtime_ns: int,
                          now: float | None = None) -> int:
        """Back to pending: the done entry of a file directly in `directory` whose version
        (inode, size, mtime) had its upload recorded (an ETag), so that a consumer meets it
        again and removes the private name it was left under; how many went back."""
        with self._transaction() as db:
            rows = db.execute(
                "SELECT id, path FROM entries"
                " WHERE path > ? AND path < ? AND inode = ? AND size = ? AND mtime_ns = ?"
                " AND state = 'done' AND etag IS NOT NULL",
                (directory + b"/", directory + b"0", inode, size, mtime_ns)).fetchall()
            ids = [i for i, path in rows if os.path.dirname(bytes(path)) == directory]
            now = self._now(now)
            db.executemany("UPDATE entries SET state = 'pending', owner = NULL, due = ?,"
                           " attempts = 0 WHERE id = ? AND state = 'done'",
                           [(now, i) for i in ids])
            return len(ids)

    def get(self, entry_id: int) -> Entry | None:
        with self._transaction(write=False) as db:
            row = db.execute(f"SELECT {COLUMNS} FROM entries WHERE id = ?",
                             (entry_id,)).fetchone()
        return entry_of(row) if row else None


def _stored(stored: Stored | None) -> tuple[str | None, str | None]:
    return (stored.etag, stored.sha256) if stored else (None, None)


def _add(db: sqlite3.Cursor, name: str, label: str, amount: float) -> None:
    db.execute("INSERT INTO counters (name, label, value) VALUES (?, ?, ?) ON CONFLICT"
               " (name, label) DO UPDATE SET value = value + excluded.value",
               (name, label, amount))


def _count_uploads(db: sqlite3.Cursor, files: int, size: int, now: float) -> None:
    """Uploads into the totals and this second's throughput (older seconds dropped)."""
    _add(db, "uploads", "", files)
    _add(db, "uploaded_bytes", "", size)
    db.execute("INSERT INTO counters (name, label, value) VALUES ('last_upload_at', '', ?)"
               " ON CONFLICT (name, label) DO UPDATE SET value = max(value, excluded.value)",
               (now,))
    db.execute("INSERT INTO throughput (second, uploads, bytes) VALUES (?, ?, ?) ON CONFLICT"
               " (second) DO UPDATE SET uploads = uploads + excluded.uploads,"
               " bytes = bytes + excluded.bytes", (int(now), files, size))
    db.execute("DELETE FROM throughput WHERE second < ?", (int(now) - THROUGHPUT_KEPT,))


def _version_key(v: FileVersion) -> tuple[bytes, int, int, int, int]:
    """The values of _SAME_VERSION's placeholders."""
    return (v.path, v.inode, v.size, v.mtime_ns, v.ctime_ns)
