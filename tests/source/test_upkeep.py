"""The watcher's upkeep of the queue (upkeep.py): done entries past queue.keep_done are purged
a short batch at a time while consumers go on claiming, and the watcher's heartbeat."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from sftppush.queue.entries import FileVersion
from sftppush.queue.queue import PURGE_BATCH, Queue
from sftppush.source.upkeep import PURGE_PAUSE, Upkeep
from sftppush.status import read
from tests.conftest import REPO


def fill_done(q: Queue, n: int, finished: float) -> None:
    q.enqueue_many((FileVersion(f"/home/u/old/{i}".encode(), "u", 10, i, i, i, "rescan")
                    for i in range(n)), now=finished)
    with q.db.transaction() as db:
        db.execute("UPDATE entries SET state = 'done', due = ?", (finished,))


def test_purges_only_done_entries_past_their_keep_a_batch_at_a_time(tmp_path: Path) -> None:
    clock = [1000.0]
    with Queue(tmp_path / "q.db") as q:
        now = time.time()
        fill_done(q, 2 * PURGE_BATCH + 10, now - 100)
        q.enqueue_many([FileVersion(b"/home/u/new", "u", 1, 1, 1, 1, "rescan")])
        (young,) = q.claim("w", 60)
        q.ack(young)
        # A backlog as old as the done ones (a long outage): pending, failed, claimed.
        q.enqueue_many([FileVersion(f"/home/u/backlog/{i}".encode(), "u", 1, 1, 1, 1,
                                    "rescan") for i in range(3)], now=now - 100)
        pending, failed, claimed = q.claim("w", 60, limit=3, now=now - 100)
        assert q.release(pending, now=now - 100)
        assert q.fail(failed, "corrupt gzip: cut short", now=now - 100)
        upkeep = Upkeep(q, keep_done=60, owner="host/1/2")
        upkeep.run(clock[0])
        assert read(q).backlog.done == PURGE_BATCH + 11, "one batch per turn"
        assert upkeep.due() == clock[0] + PURGE_PAUSE
        assert read(q).watcher.heartbeat_at is not None
        while read(q).backlog.done > 1:
            clock[0] = upkeep.due()
            upkeep.run(clock[0])
        assert upkeep.purged == 2 * PURGE_BATCH + 10
        assert q.get(young.id) is not None, "a done entry within its keep was purged"
        assert [q.get(e.id).state for e in (pending, failed, claimed)] == [
            "pending", "failed", "claimed"], "only done entries are ever purged"
        assert upkeep.next_purge == clock[0] + 15, "nothing left: the next look is later"


def test_keep_done_0_keeps_them_forever(tmp_path: Path) -> None:
    with Queue(tmp_path / "q.db") as q:
        fill_done(q, 10, 0.0)
        upkeep = Upkeep(q, keep_done=0, owner="o")
        upkeep.run(upkeep.due())
        assert read(q).backlog.done == 10 and upkeep.due() == upkeep.next_beat


CLAIMER = """
import json, sys, time
from sftppush.queue.entries import FileVersion
from sftppush.queue.queue import Queue
q = Queue(sys.argv[1])
longest, n, end = 0.0, 0, time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    q.enqueue_many([FileVersion(b"/home/u/new/%d" % n, "u", 1, n, n, n, "close_write")])
    started = time.monotonic()
    (e,) = q.claim("claimer", 60)
    assert q.ack(e)
    longest = max(longest, time.monotonic() - started)
    n += 1
print(json.dumps({"claims": n, "longest": longest}))
"""


def test_claims_keep_flowing_while_a_large_backlog_is_purged(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    with Queue(path) as q:
        fill_done(q, 40_000, time.time() - 3600)
        claimer = subprocess.Popen([sys.executable, "-c", CLAIMER, str(path), "4"], text=True,
                                   stdout=subprocess.PIPE,
                                   env={**os.environ, "PYTHONPATH": str(REPO)})
        upkeep = Upkeep(q, keep_done=60, owner="o")
        while claimer.poll() is None:
            now = time.monotonic()
            if now >= upkeep.due():
                upkeep.run(now)
            time.sleep(max(0.0, min(0.05, upkeep.due() - time.monotonic())))
        out = json.loads(claimer.stdout.read())
        assert claimer.wait() == 0
        assert upkeep.purged + upkeep.sweep >= 10_000, "the purge hardly ran"
    print(f"claims {out['claims']} longest {out['longest'] * 1000:.1f} ms")
    assert out["claims"] > 100
    assert out["longest"] < 1.0, f"a claim waited {out['longest']:.2f}s for the purge"
