"""The durable queue's guarantees (SPEC section 4), exercised by real processes on a real file."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from sftppush.errors import QueueError
from sftppush.outcomes import LeaseLost
from sftppush.queue.entries import (
    KEPT,
    NAME_KEPT,
    VANISHED,
    Entry,
    FileVersion,
    KeyTaken,
    State,
    Stored,
)
from sftppush.queue.owners import owner_token
from sftppush.queue.queue import Queue
from sftppush.sink.multipart import Part, Resumable
from sftppush.status import read as read_stats
from tests.conftest import REPO

STORED = Stored("0123abcd", "sha256-of-the-body")  # what an upload recorded


def versions(n: int, prefix: str = "/home/u/upload/f") -> list[FileVersion]:
    return [FileVersion(f"{prefix}{i}".encode(), "u", 100 + i, 1_000 + i, 2_000 + i, 10_000 + i,
                        "rescan") for i in range(n)]


def python(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", code, *args], text=True,
                            stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})


CLAIMER = """
import sys
import threading
from sftppush.queue.queue import Queue
q = Queue(sys.argv[1])
mine = []
while True:
    batch = q.claim("worker" + sys.argv[2], lease_seconds=300, limit=8)
    if not batch:
        break
    lost = q.ack_many([(e, None) for e in batch])
    assert not lost, lost
    mine += [e.id for e in batch]
print(" ".join(map(str, mine)))
"""


def test_claim_is_exclusive_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    with Queue(path) as q:
        assert q.enqueue_many(versions(20_000)) == 20_000
    procs = [python(CLAIMER, str(path), str(i)) for i in range(4)]
    claimed: list[int] = []
    for p in procs:
        out, _ = p.communicate(timeout=240)
        assert p.returncode == 0
        claimed += [int(x) for x in out.split()]
    assert len(claimed) == 20_000
    assert len(set(claimed)) == 20_000, "an entry was claimed twice"
    with Queue(path) as q:
        backlog = read_stats(q).backlog
    assert (backlog.done, backlog.pending, backlog.claimed) == (20_000, 0, 0)


# Claims up to 10 entries as owner argv[3] (owner_token() if absent), then sleeps.
HOLDER = """
import sys, time
from sftppush.queue.owners import owner_token
from sftppush.queue.queue import Queue
q = Queue(sys.argv[1])
owner = sys.argv[3] if len(sys.argv) > 3 else owner_token()
got = q.claim(owner, lease_seconds=float(sys.argv[2]), limit=10)
print(" ".join(str(e.id) for e in got), flush=True)
time.sleep(3600)
"""


def test_killed_claimant_entries_come_back_after_lease_not_before(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    with Queue(path) as q:
        q.enqueue_many(versions(10))
    lease = 4.0
    holder = python(HOLDER, str(path), str(lease), "holder")
    try:
        held = [int(x) for x in holder.stdout.readline().split()]
        started = time.time()
        assert len(held) == 10
        # Opening the queue from another process must not reset a live claim.
        opener = python("import sys; from sftppush.queue.queue import Queue;"
                        " Queue(sys.argv[1]).close()", str(path))
        assert opener.wait(timeout=30) == 0
        with Queue(path) as q:
            assert all(q.get(i).state == State.CLAIMED for i in held)
            # Asked at a clock just short of the lease's end, not at whatever time a loaded
            # host lets this line run: the opener's start alone may take seconds there.
            before = min(q.get(i).due for i in held) - 0.05
            assert q.claim("thief", lease_seconds=60, limit=10, now=before) == []
            holder.send_signal(signal.SIGKILL)
            holder.wait(timeout=10)
            assert q.claim("early", lease_seconds=60, limit=10, now=before) == [], \
                "claim taken before its lease"
            time.sleep(max(0.0, started + lease - time.time()) + 0.2)
            again = q.claim("heir", lease_seconds=60, limit=10)
    finally:  # whatever failed above, the claimant sleeping for an hour goes
        holder.kill()
        holder.wait(timeout=10)
        holder.stdout.close()
    assert sorted(e.id for e in again) == sorted(held)
    assert all(e.last_error and "lease expired" in e.last_error for e in again)


def test_only_the_lease_holder_may_ack_retry_fail_or_renew(tmp_path: Path) -> None:
    with Queue(tmp_path / "q.db") as q:
        q.enqueue_many(versions(1), now=1e9)
        (stale,) = q.claim("a", lease_seconds=1, now=1e9)
        (fresh,) = q.claim("b", lease_seconds=60, now=1e9 + 2)  # a's lease expired
        assert fresh.id == stale.id and fresh.owner != stale.owner
        assert q.ack(stale) is False
        assert q.retry_later(stale, "x", 1, count_attempt=True) is False
        assert q.fail(stale, "x") is False
        assert q.release(stale) is False
        assert q.renew_leases([stale], 60)[0] == [stale]
        assert q.get(fresh.id).owner == fresh.owner
        assert q.renew_leases([fresh], 60)[0] == []
        assert q.ack(fresh, note="ok") is True
        assert q.get(fresh.id).state == State.DONE


def test_same_version_is_one_entry_even_after_done(tmp_path: Path) -> None:
    with Queue(tmp_path / "q.db") as q:
        (v,) = versions(1)
        assert q.enqueue_many([v, v]) == 1
        assert q.enqueue_many([v]) == 0
        (e,) = q.claim("c", 60)
        q.ack(e)
        assert q.enqueue_many([v]) == 0, "a done version was queued again"
        assert q.known([v]) == {v}


@pytest.mark.parametrize("change", ["mtime_ns", "ctime_ns", "size", "inode"])
def test_rewritten_file_is_a_new_entry(tmp_path: Path, change: str) -> None:
    with Queue(tmp_path / "q.db") as q:
        (v,) = versions(1)
        q.enqueue_many([v])
        newer = FileVersion(**{**v.__dict__, change: getattr(v, change) + 1})
        assert q.enqueue_many([newer]) == 1
        older, new = sorted(q.list(), key=lambda e: e.id)
        assert (new.state, older.state) == (State.PENDING, State.DONE)
        assert older.note == f"superseded by id {new.id}"


def test_queue_file_is_private_wal_and_holds_no_pickle(tmp_path: Path) -> None:
    path = tmp_path / "state" / "queue.db"
    with Queue(path) as q:
        odd = FileVersion(b"/home/u/upload/caf\xe9.csv", "u", 1, 2, 2, 3, "close_write")
        q.enqueue_many([odd, *versions(50)])
        (e,) = q.claim("c", 60)
        q.retry_later(e, "boom", 0, count_attempt=True)
        for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            assert name.stat().st_mode & 0o777 == 0o600, name
        db = sqlite3.connect(path)
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for row in db.execute(f"SELECT * FROM {table}"):
                for value in row:
                    if isinstance(value, bytes):
                        assert not value.startswith(b"\x80"), f"pickle in {table}: {value!r}"
        assert db.execute("SELECT path FROM entries WHERE source='u' ORDER BY id LIMIT 1"
                          ).fetchone()[0] == odd.path
        db.close()
        raw = path.read_bytes() + Path(f"{path}-wal").read_bytes()
        assert b"\x80\x04\x95" not in raw and b"\x80\x05\x95" not in raw
        assert odd.path in raw


def test_a_purge_goes_on_batch_after_batch_until_none_is_left(tmp_path: Path) -> None:
    with Queue(tmp_path / "q.db") as q:
        q.enqueue_many(versions(7), now=100)
        q.ack_many([(e, None) for e in q.claim("w", 60, limit=7, now=100)], now=100)
        assert q.purge_done(older_than=0, now=200, batch=2) == 7
        assert q.counts()[State.DONE] == 0


def test_a_kept_file_keeps_its_entry_through_purges_until_it_leaves_the_disk(
        tmp_path: Path) -> None:
    """delete_after_upload false: the done entry is the only record that the file was
    uploaded, so a purge keeps it (for another keep) while its version is on disk."""
    with Queue(tmp_path / "q.db") as q:
        q.enqueue_many(versions(3), now=100)
        kept, gone, plain = q.claim("w", 60, limit=3, now=100)
        q.ack_many([(kept, KEPT), (gone, KEPT), (plain, None)], now=100,
                   uploaded=dict.fromkeys([kept.id, gone.id, plain.id], STORED))
        on_disk = {kept.id}
        assert q.purge_done(older_than=10, now=200, batch=1,
                           still_there=lambda e: e.id in on_disk) == 2
        assert [q.get(e.id) is not None for e in (kept, gone, plain)] == [True, False, False]
        assert q.get(kept.id).due == 200, "looked at again a keep later"
        assert q.purge_done(older_than=10, now=205, still_there=lambda _e: True) == 0
        assert q.purge_done(older_than=10, now=205) == 0, "no look at the disk: kept"
        on_disk.clear()
        assert q.purge_done(older_than=10, now=211, still_there=lambda e: e.id in on_disk) == 1


def test_retry_fail_replay_purge_and_counts_stay_true(tmp_path: Path) -> None:
    with Queue(tmp_path / "q.db") as q:
        q.enqueue_many(versions(5), now=100)
        a, b, c, d, e = q.claim("w", 60, limit=5, now=100)
        assert q.retry_later(a, "timeout", 30, count_attempt=False, now=100, reason="transient")
        assert q.fail(b, "corrupt gzip", now=100, reason="corrupt")
        assert q.ack(c, now=100, uploaded=STORED) and q.ack(d, now=110, uploaded=STORED)
        assert q.release(e, now=100)
        stats = read_stats(q, now=120)
        backlog = stats.backlog
        assert (backlog.pending, backlog.claimed, backlog.done, backlog.failed) == (2, 0, 2, 1)
        assert backlog.oldest_pending_age_s == pytest.approx(20)
        assert stats.last_minute.uploads == 2 and stats.last_minute.bytes == c.size + d.size
        assert (stats.totals.failures, stats.totals.retries) == ({"corrupt": 1}, {"transient": 1})
        assert ("corrupt gzip", 1) in backlog.top_errors and ("timeout", 1) in backlog.top_errors
        assert [x.id for x in q.claim("w", 60, limit=5, now=101)] == [e.id], "retry came early"
        assert q.get(a.id).attempts == 0 and q.get(b.id).attempts == 1
        assert q.replay(ids=[c.id]) == 0, "only failed entries are replayed"
        assert q.replay(failed=True) == 1
        assert q.get(b.id).state == State.PENDING and q.get(b.id).attempts == 0
        assert q.purge_done(older_than=15, now=120) == 1
        assert q.get(c.id) is None and q.get(d.id) is not None
        db = q.db._conn
        real = dict(db.execute("SELECT state, count(*) FROM entries GROUP BY state").fetchall())
        kept = {s: n for s, n in db.execute("SELECT state, n FROM counts") if n}
        assert real == kept


def test_list_newest_first_and_by_state(tmp_path: Path) -> None:
    with Queue(tmp_path / "q.db") as q:
        q.enqueue_many(versions(3))
        (first,) = q.claim("w", 60)
        q.fail(first, "bad")
        assert [e.id for e in q.list()] == sorted((e.id for e in q.list()), reverse=True)
        (failed,) = q.list(State.FAILED)
        assert failed.id == first.id and failed.last_error == "bad"
        assert failed.to_json()["state"] == "failed"


def test_missing_or_corrupt_queue_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(QueueError, match="does not exist"):
        Queue(tmp_path / "absent.db", create=False)
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not sqlite" * 200)
    with pytest.raises(QueueError, match=str(bad)):
        Queue(bad)


def test_opening_does_not_wait_for_another_writer(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    Queue(path).close()
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # a consumer in the middle of a write transaction
    try:
        started = time.monotonic()
        with Queue(path, create=False, timeout=5) as q:
            assert read_stats(q).backlog.pending == 0
        assert time.monotonic() - started < 2
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_has_due_answers_without_writing_and_sees_expired_leases(tmp_path: Path) -> None:
    with Queue(tmp_path / "q.db") as q:
        assert not q.has_due()
        q.enqueue_many(versions(2), now=1000.0)
        [a] = q.claim("c1", 30, now=1000.0)
        assert q.has_due(now=1000.0)  # the other one is pending and due
        [b] = q.claim("c1", 30, now=1000.0)
        assert not q.has_due(now=1010.0)  # both held under live leases
        assert q.has_due(now=1031.0)  # ... until they expire
        q.retry_later(a, "x", 100, count_attempt=False, now=1010.0)
        q.ack(b, now=1010.0)
        assert not q.has_due(now=1050.0)  # one waits out its delay, one is done
        assert q.has_due(now=1111.0)


def test_a_batch_of_acks_reports_each_lost_lease_and_settles_only_the_held_ones(
        tmp_path: Path) -> None:
    with Queue(tmp_path / "q.db") as q:
        q.enqueue_many(versions(4), now=999)
        a, b, c, d = q.claim("mine", 60, limit=4, now=1000)
        assert q.release(c, now=1001)               # handed back: pending
        (c_again,) = q.claim("theirs", 60, limit=1, now=1002)  # and taken by another owner
        assert c_again.id == c.id
        stale = replace(d, owner="mine/old-token")  # a claim made before, under another token
        lost = q.ack_many([(a, "superseded"), (b, None), (c, None), (stale, None)], now=1003,
                          uploaded=dict.fromkeys([a.id, b.id, c.id, d.id], STORED))
        assert lost == [c, stale]
        assert (q.get(a.id).state, q.get(a.id).note) == (State.DONE, "superseded")
        assert (q.get(b.id).state, q.get(b.id).note) == (State.DONE, None)
        assert (q.get(c.id).state, q.get(c.id).owner) == (State.CLAIMED, c_again.owner)
        assert (q.get(d.id).state, q.get(d.id).owner) == (State.CLAIMED, d.owner)
        assert read_stats(q).totals.uploads == 2


def test_queue_holds_persist_queue_and_does_not_pretend_to_be_one(tmp_path: Path) -> None:
    """A full queue is truthy; persist-queue's len/empty/get/path do not leak into its API."""
    with Queue(tmp_path / "q.db") as q:
        q.enqueue_many(versions(3))
        assert q and bool(q) is True
        assert not hasattr(q, "empty") and not hasattr(q, "__len__")
        assert q.file == tmp_path / "q.db" and not hasattr(q, "path")
        (e,) = q.claim("w", 60)
        assert q.get(e.id) == e
        assert q.ack_many([(e, "ok")]) == []
        assert q.get(e.id).state == State.DONE and q.get(e.id).note == "ok"
        assert read_stats(q).backlog.done == 1 and read_stats(q).backlog.pending == 2
    with pytest.raises(QueueError, match="closed"):
        read_stats(q)


# The schema of user_version 1 (before ctime_ns), as files in the field have it.
SCHEMA_1 = (
    "CREATE TABLE entries (id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " path BLOB NOT NULL, source TEXT NOT NULL, size INTEGER NOT NULL,"
    " mtime_ns INTEGER NOT NULL, inode INTEGER NOT NULL, found_by TEXT NOT NULL,"
    " state TEXT NOT NULL CHECK (state IN ('pending', 'claimed', 'done', 'failed')),"
    " owner TEXT, due REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,"
    " enqueued_at REAL NOT NULL, last_error TEXT, note TEXT)",
    "CREATE UNIQUE INDEX entries_version ON entries (path, inode, size, mtime_ns)",
    "CREATE INDEX entries_state_due ON entries (state, due)",
    "CREATE TABLE counts (state TEXT PRIMARY KEY, n INTEGER NOT NULL)",
    "INSERT INTO counts VALUES ('pending', 0), ('claimed', 0), ('done', 0), ('failed', 0)",
    "CREATE TRIGGER entries_counted_in AFTER INSERT ON entries"
    " BEGIN UPDATE counts SET n = n + 1 WHERE state = new.state; END",
    "CREATE TRIGGER entries_counted_move AFTER UPDATE OF state ON entries"
    " WHEN old.state <> new.state BEGIN"
    " UPDATE counts SET n = n - 1 WHERE state = old.state;"
    " UPDATE counts SET n = n + 1 WHERE state = new.state; END",
    "CREATE TRIGGER entries_counted_out AFTER DELETE ON entries"
    " BEGIN UPDATE counts SET n = n - 1 WHERE state = old.state; END",
    "PRAGMA user_version = 1",
)


def test_a_schema_1_file_is_migrated_in_place_and_keeps_its_versions(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    old = sqlite3.connect(path, isolation_level=None)
    for statement in SCHEMA_1:
        old.execute(statement)
    done, pending = versions(2)
    for v, state in ((done, "done"), (pending, "pending")):
        old.execute("INSERT INTO entries (path, source, size, mtime_ns, inode, found_by, state,"
                    " due, enqueued_at) VALUES (?, ?, ?, ?, ?, ?, ?, 1, 1)",
                    (v.path, v.source, v.size, v.mtime_ns, v.inode, v.found_by, state))
    old.close()
    with Queue(path) as q:
        db = q.db._conn
        assert db.execute("PRAGMA user_version").fetchone()[0] == Queue.SCHEMA_VERSION
        assert [r[2] for r in db.execute("PRAGMA index_info(entries_version)")] == \
            ["path", "inode", "size", "mtime_ns", "ctime_ns"]
        assert {e.ctime_ns for e in q.list()} == {0}, "a ctime the old file never had"
        # The files on disk, seen again with their real ctime, are still the same versions.
        assert q.known([done, pending]) == {done, pending}
        assert q.enqueue_many([done, pending]) == 0
        # A legacy row cannot tell ctimes apart; a version recorded since then can.
        rewritten = FileVersion(**{**done.__dict__, "mtime_ns": done.mtime_ns + 1})
        assert q.enqueue_many([rewritten]) == 1
        resent = FileVersion(**{**rewritten.__dict__, "ctime_ns": rewritten.ctime_ns + 1})
        assert q.enqueue_many([resent]) == 1
        (e, *_) = q.claim("w", 60, limit=5)
        assert e.path == pending.path and e.ctime_ns == 0 and e.key is None
        assert q.take_key(e, "u/f1") == KeyTaken(holder=None, known=False)
        backlog = read_stats(q).backlog
        assert (backlog.pending + backlog.claimed, backlog.done) == (2, 2)  # rewritten superseded
    with Queue(path) as q:  # opening it again changes nothing
        assert read_stats(q).backlog.done == 2 and q.get(e.id).state == State.CLAIMED


def test_a_file_of_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    Queue(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {Queue.SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(QueueError, match="newer"):
        Queue(path)


def test_lease_is_counted_from_inside_the_write_transaction(tmp_path: Path) -> None:
    """A claim or renew that waited for another writer must not hand out a lease that
    started before its wait: the returned expiry is the one in the queue."""
    path = tmp_path / "q.db"
    Queue(path).close()
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    released: list[float] = []

    def hold_the_write_lock() -> threading.Thread:
        other.execute("BEGIN IMMEDIATE")

        def let_go() -> None:
            time.sleep(1.0)
            released.append(time.time())
            other.execute("COMMIT")
        thread = threading.Thread(target=let_go)
        thread.start()
        return thread

    with Queue(path) as q:
        q.enqueue_many(versions(1))
        waiter = hold_the_write_lock()
        (e,) = q.claim("w", lease_seconds=10)
        waiter.join()
        assert e.due >= released[-1] + 10
        assert q.get(e.id).due == e.due
        waiter = hold_the_write_lock()
        lost, expires = q.renew_leases([e], 10)
        waiter.join()
        assert lost == [] and expires >= released[-1] + 10
        assert q.get(e.id).due == expires
        assert q.renew_leases([e], 10)[0] == []
    other.close()


def test_a_killed_owners_claims_come_back_at_the_next_claim(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    with Queue(path) as q:
        q.enqueue_many(versions(10))
    holder = python(HOLDER, str(path), "300")
    held = sorted(int(x) for x in holder.stdout.readline().split())
    assert len(held) == 10
    with Queue(path) as q:
        token = q.get(held[0]).owner
        assert token.startswith(f"{socket.gethostname()}:{holder.pid}:")
        assert q.claim(owner_token(), lease_seconds=300, limit=10) == [], "a live owner robbed"
        holder.send_signal(signal.SIGKILL)
        # Not reaped yet, as under a busy supervisor: a zombie never renews or acks either.
        stat = Path(f"/proc/{holder.pid}/stat")
        while stat.read_bytes().rpartition(b")")[2].split()[0] != b"Z":
            time.sleep(0.01)
        again = q.claim(owner_token(), lease_seconds=300, limit=10)
        holder.wait(timeout=10)
    assert sorted(e.id for e in again) == held
    assert {e.last_error for e in again} == {f"owner died ({token})"}
    holder.stdout.close()


def test_only_claims_of_dead_processes_of_this_host_come_back_before_their_lease(
        tmp_path: Path) -> None:
    host = socket.gethostname()
    me = owner_token()
    _, pid, started = me.split(":")
    gone = subprocess.Popen(["true"])
    gone.wait()
    owners = {
        "live": me,
        "dead": f"{host}:{gone.pid}:{started}",
        "pid reused": f"{host}:{pid}:{int(started) + 1}",
        "other host": f"not-{host}:{gone.pid}:{started}",
        "unparseable": f"{host}:{gone.pid}",
    }
    with Queue(tmp_path / "q.db") as q:
        q.enqueue_many(versions(len(owners)), now=1000)
        claims = q.claim(me, lease_seconds=300, limit=len(owners), now=1000)
        held = {name: e.id for name, e in zip(owners, claims, strict=True)}
        # As if each had made its claim itself (a claim would take the dead ones back).
        for name, owner in owners.items():
            q.db._conn.execute("UPDATE entries SET owner = ? WHERE id = ?",
                            (f"{owner}/0123456789ab", held[name]))
        back = q.claim(me, lease_seconds=300, limit=10, now=1001)
        assert sorted(e.id for e in back) == sorted([held["dead"], held["pid reused"]])
        assert q.claim(me, lease_seconds=300, limit=10, now=1299) == []
        assert len(q.claim(me, lease_seconds=300, limit=10, now=1300)) == 3  # leases expired


def test_one_version_of_a_path_in_flight_and_the_oldest_first(tmp_path: Path) -> None:
    with Queue(tmp_path / "q.db") as q:
        (v1,) = versions(1)
        v2 = FileVersion(**{**v1.__dict__, "mtime_ns": v1.mtime_ns + 1})
        q.enqueue_many([v1], now=1000)
        (e1,) = q.claim("w", 60, now=1000)
        assert q.enqueue_many([v2], now=1001) == 1
        assert q.get(e1.id).state == State.CLAIMED, "a claimed version was retired"
        assert q.claim("w", 60, limit=10, now=1002) == [], "two versions of a path in flight"
        assert not q.has_due(now=1002)
        # Back to pending beside the newer one: the older goes first, and alone.
        assert q.release(e1, now=1003)
        (again,) = q.claim("w", 60, limit=10, now=1003)
        assert again.id == e1.id
        assert q.claim("w", 60, limit=10, now=1004) == []
        # Its lease expires: the sweep and the claim are one transaction, still the older.
        (heir,) = q.claim("w", 60, limit=10, now=1100)
        assert heir.id == e1.id and "lease expired" in heir.last_error
        assert q.ack(heir, note="superseded", now=1101)
        (e2,) = q.claim("w", 60, limit=10, now=1101)
        assert e2.mtime_ns == v2.mtime_ns


def test_an_older_version_seen_again_waits_while_a_newer_one_is_claimed(
        tmp_path: Path) -> None:
    """A directory renamed away and back: v1 vanished, v2 came and is claimed, then v1 is
    seen again (a vanished version is queued again). It is an older entry, pending, but it
    must not go in flight beside v2."""
    with Queue(tmp_path / "q.db") as q:
        (v1,) = versions(1)
        v2 = FileVersion(**{**v1.__dict__, "mtime_ns": v1.mtime_ns + 1})
        q.enqueue_many([v1], now=1000)
        (e1,) = q.claim("w", 60, now=1000)
        assert q.ack(e1, f"{VANISHED} before upload; no object", now=1001)
        q.enqueue_many([v2], now=1002)
        (e2,) = q.claim("w", 60, now=1002)
        assert e2.mtime_ns == v2.mtime_ns
        assert q.enqueue_many([v1], now=1003) == 1
        assert q.get(e1.id).state == State.PENDING
        assert q.claim("w", 60, limit=10, now=1004) == [], "two versions of a path in flight"
        assert not q.has_due(now=1004)


def test_a_new_version_retires_the_older_pending_ones(tmp_path: Path) -> None:
    with Queue(tmp_path / "q.db") as q:
        (v1,) = versions(1)
        v2, v3 = (FileVersion(**{**v1.__dict__, "size": v1.size + n}) for n in (1, 2))
        other = versions(1, prefix="/home/u/upload/other")
        q.enqueue_many([v1, *other])
        q.enqueue_many([v2, v3])  # a client that closed and reopened twice
        e1, e2, e3 = sorted((e for e in q.list() if e.path == v1.path), key=lambda e: e.id)
        assert e3.state == State.PENDING
        assert (e1.state, e1.note) == (State.DONE, f"superseded by id {e2.id}")
        assert (e2.state, e2.note) == (State.DONE, f"superseded by id {e3.id}")
        assert read_stats(q).backlog.pending == 2, "another path's version was retired"
        assert read_stats(q).last_minute.uploads == 0


IN_ORDER_CLAIMER = """
import json, sys, time
from sftppush.queue.owners import owner_token
from sftppush.queue.queue import Queue

q = Queue(sys.argv[1])
log = []
while True:
    batch = q.claim(owner_token(), lease_seconds=300, limit=8)
    if not batch:
        counts = q.counts()
        if counts["pending"] == counts["claimed"] == 0:
            break
        time.sleep(0.002)
        continue
    got = time.monotonic()
    time.sleep(0.005)  # uploading
    acking = time.monotonic()
    assert not q.ack_many([(e, None) for e in batch])
    log += [[e.path.hex(), e.id, got, acking] for e in batch]
print(json.dumps(log))
"""


def test_versions_of_a_path_are_one_at_a_time_in_order_across_processes(
        tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    with Queue(path) as q:
        first = versions(100)
        q.enqueue_many(first)
        held = q.claim("setup", 300, limit=100)
        # Newer versions arrive while the first ones are held, which keeps both pending.
        q.enqueue_many(FileVersion(**{**v.__dict__, "size": v.size + 1}) for v in first)
        for e in held:
            assert q.release(e)
        assert read_stats(q).backlog.pending == 200
    procs = [python(IN_ORDER_CLAIMER, str(path)) for _ in range(4)]
    log = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        log += json.loads(out)
    by_path: dict[str, list[tuple[int, float, float]]] = {}
    for name, entry_id, got, acking in log:
        by_path.setdefault(name, []).append((entry_id, got, acking))
    assert len(by_path) == 100 and all(len(v) == 2 for v in by_path.values())
    for name, (older, newer) in ((n, sorted(v)) for n, v in by_path.items()):
        assert older[2] < newer[1], f"{bytes.fromhex(name)!r}: newer claimed before older acked"


def test_a_version_that_vanished_is_queued_again_when_seen_whatever_its_key_holds(
        tmp_path: Path) -> None:
    # "object exists" may be an older version's object (a directory renamed away at this
    # version's turn, then back): the version itself was never uploaded.
    with Queue(tmp_path / "q.db") as q:
        gone, older_object = versions(2)
        q.enqueue_many([gone, older_object], now=1000)
        a, b = q.claim("w", 60, limit=2, now=1000)
        assert q.ack_many([(a, f"{VANISHED} before upload; no object (removed by someone else)"),
                           (b, f"{VANISHED}; object exists at u/f1")], now=1001) == []
        assert q.known([gone, older_object]) == set()
        assert q.enqueue_many([gone, older_object], now=1002) == 2
        for entry in (q.get(a.id), q.get(b.id)):
            assert (entry.state, entry.attempts, entry.note, entry.due, entry.enqueued_at) == \
                (State.PENDING, 0, None, 1002, 1002)
        assert sorted(x.id for x in q.claim("w", 60, limit=5, now=1002)) == [a.id, b.id]
        assert read_stats(q).backlog.done == 0


def two_paths_one_key(q: Queue, now: float = 1000) -> tuple[Entry, Entry]:
    """`a.csv` and `a.csv.gz`, both claimed: both map to the key `u/a.csv`."""
    plain, gz = (FileVersion(f"/home/u/{name}".encode(), "u", 1, 1, 1, i, "close_write")
                 for i, name in enumerate(("a.csv", "a.csv.gz")))
    q.enqueue_many([plain, gz], now=now)
    first, second = q.claim("w", 60, limit=2, now=now)
    return first, second


@pytest.mark.parametrize("first_is", ["plain", "gz"])
def test_one_key_one_local_path_in_either_order(tmp_path: Path, first_is: str) -> None:
    with Queue(tmp_path / "q.db") as q:
        plain, gz = two_paths_one_key(q)
        first, second = (plain, gz) if first_is == "plain" else (gz, plain)
        assert q.take_key(first, "u/a.csv", now=1001) == KeyTaken(holder=None, known=False)
        # In flight, the holder may still fail and give the key up: the second waits.
        assert q.take_key(second, "u/a.csv", now=1001) == KeyTaken(holder=first.path,
                                                                    known=False, waits=True)
        assert q.get(second.id).key is None and q.get(first.id).key == "u/a.csv"
        # The holder keeps the key while it waits for a retry (its PUT may have landed),
        # and once its upload is recorded: then the second collides for good.
        assert q.retry_later(first, "timeout", 0, count_attempt=False, now=1002)
        assert q.take_key(second, "u/a.csv", now=1002) == KeyTaken(first.path, False, True)
        (again,) = q.claim("w", 60, now=1003)
        assert again.id == first.id and again.key == "u/a.csv"
        assert q.ack(again, now=1004, uploaded=STORED) and q.get(first.id).key == "u/a.csv"
        assert q.take_key(second, "u/a.csv", now=1005) == KeyTaken(first.path, False)
        assert q.take_key(second, "u/other.csv", now=1005) == KeyTaken(None, False)


def test_keys_taken_in_one_batch_collide_as_if_taken_one_by_one(tmp_path: Path) -> None:
    with Queue(tmp_path / "q.db") as q:
        plain, gz = two_paths_one_key(q)
        other = FileVersion(b"/home/u/b.csv", "u", 1, 1, 1, 9, "close_write")
        q.enqueue_many([other], now=1000)
        (third,) = q.claim("w", 60, now=1000)
        assert q.take_keys([(plain, "u/a.csv"), (gz, "u/a.csv"), (third, "u/b.csv")],
                           now=1001) == [KeyTaken(holder=None, known=False),
                                         KeyTaken(holder=plain.path, known=False,
                                                  waits=True),
                                         KeyTaken(holder=None, known=False)]
        assert [q.get(e.id).key for e in (plain, gz, third)] == ["u/a.csv", None, "u/b.csv"]
        assert q.take_keys([(plain, "u/a.csv"), (third, "u/b.csv")], now=1061) == [None, None]


def test_a_resend_of_the_same_path_may_replace_its_object(tmp_path: Path) -> None:
    with Queue(tmp_path / "q.db") as q:
        (v1,) = versions(1)
        q.enqueue_many([v1], now=1000)
        (e1,) = q.claim("w", 60, now=1000)
        assert q.take_key(e1, "u/f0", now=1000) == KeyTaken(holder=None, known=False)
        assert q.ack(e1, now=1001, uploaded=STORED)
        q.enqueue_many([FileVersion(**{**v1.__dict__, "size": v1.size + 1})], now=1002)
        (e2,) = q.claim("w", 60, now=1002)
        assert q.take_key(e2, "u/f0", now=1002) == KeyTaken(holder=None, known=True)
        assert q.get(e2.id).key == "u/f0"


@pytest.mark.parametrize("ended", ["superseded", "retried", "vanished", "failed"])
def test_only_a_verified_upload_makes_a_key_known_to_its_path(tmp_path: Path,
                                                              ended: str) -> None:
    """Identity hole 1: an entry that took the key and then was superseded, retried,
    vanished or failed wrote no object there; the next version of its path must not take
    the key as its own (its upload would be unconditional, over another path's object)."""
    with Queue(tmp_path / "q.db") as q:
        (v1,) = versions(1)
        q.enqueue_many([v1], now=1000)
        (e1,) = q.claim("w", 60, now=1000)
        assert q.take_key(e1, "u/f0", now=1000) == KeyTaken(holder=None, known=False)
        if ended == "superseded":
            assert q.ack(e1, "superseded: 10 bytes read, 100 at open", now=1001)
        elif ended == "retried":
            assert q.retry_later(e1, "S3 unreachable", 0, count_attempt=False, now=1001)
        elif ended == "vanished":
            assert q.ack(e1, f"{VANISHED} before upload; no object", now=1001)
        else:
            assert q.fail(e1, "corrupt gzip: cut short", now=1001)
        q.enqueue_many([FileVersion(**{**v1.__dict__, "size": v1.size + 1})], now=1002)
        e2 = next(e for e in q.claim("w", 60, limit=2, now=1002) if e.id != e1.id)
        assert q.take_key(e2, "u/f0", now=1002) == KeyTaken(holder=None, known=False)


def test_a_done_holder_without_a_recorded_upload_leaves_the_object_to_decide(
        tmp_path: Path) -> None:
    """Found by the model's long profile: a superseded entry keeps its key (its PUT may have
    landed, the answer lost) but recorded no upload. Counted as a settled holder, it made
    the path that owned the object fail as a collision with its own object. It is a doubt:
    the key is taken, and the caller asks the object whose it is."""
    with Queue(tmp_path / "q.db") as q:
        plain, gz = two_paths_one_key(q)
        assert q.take_key(gz, "u/a.csv", now=1001) == KeyTaken(holder=None, known=False)
        assert q.ack(gz, "superseded: replaced", now=1002)
        assert q.get(gz.id).key == "u/a.csv"
        assert q.take_key(plain, "u/a.csv", now=1002) == KeyTaken(holder=None, known=False,
                                                                   doubt=gz.path)
        assert q.get(plain.id).key == "u/a.csv"
        # Once the path's own upload to the key is recorded, that decides: no doubt left.
        assert q.ack(plain, now=1003, uploaded=STORED)
        q.enqueue_many([FileVersion(plain.path, "u", 5, 6, 7, 8, "rescan")], now=1004)
        (again,) = q.claim("w", 60, now=1004)
        assert q.take_key(again, "u/a.csv", now=1004) == KeyTaken(holder=None, known=True)


def test_a_holder_in_flight_that_fails_gives_the_key_to_the_path_that_waited(
        tmp_path: Path) -> None:
    """Found by the model's long profile: the path that owned the object (its done entry
    purged) met the key held by another path's entry still in flight, and failed for good
    as a collision; that entry then failed as a collision with the owner's object."""
    with Queue(tmp_path / "q.db") as q:
        plain, gz = two_paths_one_key(q)
        assert q.take_key(gz, "u/a.csv", now=1001) == KeyTaken(holder=None, known=False)
        assert q.take_key(plain, "u/a.csv", now=1001).waits
        assert q.fail(gz, "key collision: u/a.csv holds u:a.csv", now=1002)
        assert q.take_key(plain, "u/a.csv", now=1002) == KeyTaken(holder=None, known=False)


def test_a_failed_or_vanished_entry_holds_no_key(tmp_path: Path) -> None:
    with Queue(tmp_path / "q.db") as q:
        plain, gz = two_paths_one_key(q)
        assert q.take_key(plain, "u/a.csv", now=1001).holder is None
        assert q.fail(plain, "corrupt gzip", now=1001)
        assert q.get(plain.id).key is None
        assert q.take_key(gz, "u/a.csv", now=1001) == KeyTaken(holder=None, known=False)
        assert q.ack(gz, note=f"{VANISHED} (removed by someone else)", now=1002)
        assert q.get(gz.id).key is None, "a key held by an upload that never happened"


def test_only_the_lease_holder_may_take_a_key(tmp_path: Path) -> None:
    with Queue(tmp_path / "q.db") as q:
        plain, _ = two_paths_one_key(q, now=1000)
        assert q.take_key(plain, "u/a.csv", now=1061) is None, "taken on an expired lease"
        (heir, _) = q.claim("heir", 60, limit=2, now=1061)
        assert heir.id == plain.id
        assert q.take_key(plain, "u/a.csv", now=1062) is None, "taken on a lost lease"
        assert q.get(plain.id).key is None
        assert q.take_key(heir, "u/a.csv", now=1062) == KeyTaken(holder=None, known=False)
        assert heir.to_json()["key"] is None and q.get(heir.id).to_json()["key"] == "u/a.csv"
        assert q.get(heir.id).to_json()["ctime_ns"] == 1


def test_an_upload_in_progress_is_kept_by_its_entry_for_a_resume(tmp_path: Path) -> None:
    with Queue(tmp_path / "q.db") as q:
        q.enqueue_many(versions(2))
        a, b = q.claim("w", 60, limit=2)
        assert q.upload_of(a) is None
        assert q.start_upload(a, "up-1", "u/f0", '{"bucket": "b"}')
        assert q.add_upload_part(a, '{"number": 1}') and q.add_upload_part(a, '{"number": 2}')
        assert q.start_upload(b, "up-2", "u/f1", "{}")
        assert q.upload_of(a) == ("up-1", "u/f0", '{"bucket": "b"}',
                                  ['{"number": 1}', '{"number": 2}'])
        assert q.resumable_uploads("u/f0") == {"up-1"}
        # Only the lease holder writes; the record outlives the claim for the next claimant.
        stale = Entry(**{**a.__dict__, "owner": "someone-else"})
        assert not q.add_upload_part(stale, '{"number": 3}')
        assert q.release(a)
        (a,) = q.claim("w2", 60)
        assert q.upload_of(a)[0] == "up-1" and q.resumable_uploads("u/f0") == {"up-1"}
        # Completed: the record goes, the object's sha256 stays with the entry.
        assert q.end_upload(a, "ab" * 32)
        assert q.upload_of(a) is None and q.resumable_uploads("u/f0") == set()
        assert q.ack(a)
        assert q.get(a.id).sha256 == "ab" * 32 and q.get(a.id).to_json()["sha256"] == "ab" * 32
        # A failed entry's upload is not resumable; a purged entry's record goes with it.
        assert q.fail(b, "boom") and q.resumable_uploads("u/f1") == set()
        q.db._conn.execute("DELETE FROM entries WHERE id = ?", (b.id,))
        assert q.db._conn.execute("SELECT count(*) FROM uploads").fetchone() == (0,)


def test_the_journal_hands_an_upload_to_the_next_claimant_and_needs_the_lease(
        tmp_path: Path) -> None:
    """The sink's multipart Journal over a claimed entry: what one claimant recorded is
    the next one's to resume, a write without the lease raises LeaseLost (the next
    claimant may be resuming the upload), and the upload's end keeps the object's sha256."""
    upload = Resumable("up-1", "bucket", "u/f0", part_size=8 << 20, every=1, started=5.0)
    parts = [Part(n, 8 << 20, f"etag-{n}", f"md5-{n}", None, at=6.0 + n) for n in (1, 2)]
    with Queue(tmp_path / "q.db") as q:
        q.enqueue_many(versions(1))
        (first,) = q.claim("w1", 60)
        journal = q.journal(first, Resumable.of)
        assert journal.recorded() is None and journal.kept("u/f0") == set()
        journal.started(upload)
        journal.completed(parts[0])
        assert q.release(first)
        (again,) = q.claim("w2", 60)
        resumed = q.journal(again, Resumable.of)
        assert resumed.recorded() == replace(upload, parts=(parts[0],))
        with pytest.raises(LeaseLost, match=f"id={first.id}"):
            journal.completed(parts[1])
        resumed.completed(parts[1])
        assert resumed.recorded() == replace(upload, parts=tuple(parts))
        assert resumed.kept("u/f0") == {"up-1"}
        journal.ended("cd" * 32)  # no lease: changes nothing (the ack finds it lost)
        assert resumed.recorded() is not None and q.get(again.id).sha256 is None
        resumed.ended("ab" * 32)
        assert resumed.recorded() is None and resumed.kept("u/f0") == set()
        assert q.get(again.id).sha256 == "ab" * 32


def test_a_key_given_up_in_a_batch_is_free_for_the_entries_after_it(tmp_path: Path) -> None:
    with Queue(tmp_path / "q.db") as q:
        q.enqueue_many(versions(2), now=1000)
        first, second = q.claim("w", 60, limit=2, now=1000)
        assert q.take_key(first, "u/old", now=1001) == KeyTaken(holder=None, known=False)
        # Its key changed since (say a new key mapping): the old one is free from then on.
        assert q.take_keys([(first, "u/new"), (second, "u/old")], now=1002) == [
            KeyTaken(holder=None, known=False), KeyTaken(holder=None, known=False)]
        assert [q.get(e.id).key for e in (first, second)] == ["u/new", "u/old"]


def test_an_entry_asked_twice_in_a_batch_keeps_the_later_key(tmp_path: Path) -> None:
    with Queue(tmp_path / "q.db") as q:
        q.enqueue_many(versions(1), now=1000)
        (entry,) = q.claim("w", 60, now=1000)
        assert q.take_keys([(entry, "u/b"), (entry, "u/a")], now=1001) == [
            KeyTaken(holder=None, known=False)] * 2
        assert q.get(entry.id).key == "u/a"


def _take_key_one_by_one(db: sqlite3.Cursor, entry: Entry, key: str, now: float
                         ) -> KeyTaken | None:
    """take_key one entry at a time: a few statements per entry, each on the rows as the
    entries before it left them. The oracle below."""
    if not db.execute("SELECT 1 FROM entries WHERE id = ? AND state = 'claimed' AND owner = ?"
                      " AND due > ?", (entry.id, entry.owner, now)).fetchone():
        return None
    # Another path's holder with its upload recorded first, else one in flight (not done).
    row = db.execute("SELECT path, etag IS NULL FROM entries WHERE key = ? AND path <> ?"
                     " AND (etag IS NOT NULL OR state <> 'done') ORDER BY 2, id LIMIT 1",
                     (key, entry.path)).fetchone()
    if row is not None:
        return KeyTaken(holder=bytes(row[0]), known=False, waits=bool(row[1]))
    known = db.execute("SELECT 1 FROM entries WHERE key = ? AND path = ?"
                       " AND etag IS NOT NULL LIMIT 1", (key, entry.path)).fetchone()
    # Else a done one that recorded nothing is a doubt, unless this path's upload is known.
    doubt = db.execute("SELECT path FROM entries WHERE key = ? AND path <> ?"
                       " ORDER BY id LIMIT 1", (key, entry.path)).fetchone()
    db.execute("UPDATE entries SET key = ?, etag = CASE WHEN key = ? THEN etag END"
               " WHERE id = ?", (key, key, entry.id))
    return KeyTaken(holder=None, known=known is not None,
                    doubt=bytes(doubt[0]) if doubt and not known else None)


@pytest.mark.parametrize("seed", range(100))
def test_a_batch_of_keys_is_answered_as_one_by_one_statements_would(tmp_path: Path,
                                                                    seed: int) -> None:
    """Random queues (a few paths and keys, entries in every state holding keys, leases
    expired or lost) and random batches: take_keys gives the answers and leaves the keys
    that the one-by-one statements give on a copy of the same file."""
    rnd = random.Random(seed)
    paths = [f"/home/u/p{i}".encode() for i in range(3)]
    keys = [f"u/k{i}" for i in range(3)]
    with Queue(tmp_path / "new.db") as q:
        q.enqueue_many([FileVersion(rnd.choice(paths), "u", n, n, n, n, "rescan")
                        for n in range(rnd.randint(4, 14))], now=1000)
        with q.db.transaction() as db:
            for (i,) in db.execute("SELECT id FROM entries").fetchall():
                # A row with a key holds it; one with an ETag uploaded there (a failed
                # row holds a key only then).
                state, key = rnd.choice(["pending", "done", "failed", "claimed"]), \
                    rnd.choice([*keys, None])
                etag = rnd.choice([None, "e"]) if key else None
                db.execute("UPDATE entries SET state = ?, key = ?, etag = ?, owner = 'x',"
                           " due = 2000 WHERE id = ?",
                           (state, key if state != "failed" or etag else None, etag, i))
            ids = [i for (i,) in db.execute("SELECT id FROM entries WHERE state = 'claimed'")
                   .fetchall()]
            # Some leases expired, some lost to another owner.
            for i in ids:
                db.execute("UPDATE entries SET due = ?, owner = ? WHERE id = ?",
                           (rnd.choice([2000, 1500, 900]), rnd.choice(["x", "x", "y"]), i))
        wanted = [(replace(q.get(i), owner="x"), rnd.choice(keys)) for i in ids
                  for _ in range(rnd.choice([1, 1, 2]))]
        rnd.shuffle(wanted)
    shutil.copy(tmp_path / "new.db", tmp_path / "old.db")  # closed: nothing left in a WAL
    with Queue(tmp_path / "new.db") as q:
        got = q.take_keys(wanted, now=1000)
        with q.reading() as db:
            got_keys = db.execute("SELECT id, key, etag FROM entries ORDER BY id").fetchall()
    with Queue(tmp_path / "old.db") as old, old.db.transaction() as db:
        expected = [_take_key_one_by_one(db, e, key, 1000) for e, key in wanted]
        expected_keys = db.execute("SELECT id, key, etag FROM entries ORDER BY id").fetchall()
    assert got == expected
    assert got_keys == expected_keys


def test_a_set_aside_version_goes_back_to_pending_only_from_its_own_directory(
        tmp_path: Path) -> None:
    """`requeue_set_aside`: a done entry directly in the directory, of that version (inode,
    size, mtime), whose upload was recorded or whose consumer could not remove the name
    (NAME_KEPT); not one in a subdirectory, in a sibling whose name starts alike, of another
    version, or done without an upload."""
    wanted = [FileVersion(p, "u", 10, 20, 30, 7, "rescan")
              for p in (b"/h/a/x", b"/h/a/sub/x", b"/h/ab/x", b"/h/a/y", b"/h/a/w")]
    other = FileVersion(b"/h/a/z", "u", 11, 20, 30, 7, "rescan")
    with Queue(tmp_path / "q.db") as q:
        q.enqueue_many([*wanted, other])
        claimed = {e.path: e for e in q.claim("c", 60, limit=6)}
        for path, e in claimed.items():
            if path == b"/h/a/w":
                assert q.ack(e, f"superseded; {NAME_KEPT}")
                continue
            assert q.ack(e, "uploaded", uploaded=None if path == b"/h/a/y" else STORED)
        assert q.requeue_set_aside(b"/h/a", 7, 10, 20) == 2
        assert q.requeue_set_aside(b"/h/a", 7, 10, 20) == 0
        pending = sorted(e.path for e in q.list(State.PENDING))
    assert pending == [b"/h/a/w", b"/h/a/x"]
