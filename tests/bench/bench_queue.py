"""Queue benchmark (SPEC 11): claim+ack per second with 1,000,000 done entries retained,
next to persist-queue's own SQLiteAckQueue get+ack measured in the same run, and the time of
`queue status` on that queue. Prints ratios; asserts nothing.

    python -m tests.bench.bench_queue [--retained N] [--measured N]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from persistqueue import SQLiteAckQueue
from persistqueue.serializers import json as pq_json

from sftppush.queue.entries import FileVersion
from sftppush.queue.queue import Queue
from sftppush.status import read as read_stats
from tests.bench.common import report
from tests.conftest import child_env, cli_argv


def fill_sftppush(path: Path, retained: int, measured: int) -> Queue:
    q = Queue(path)
    chunk = 100_000
    for start in range(0, retained, chunk):
        q.enqueue_many(FileVersion(f"/home/u/old/{i}".encode(), "u", 4096, i, i, i, "rescan")
                       for i in range(start, min(retained, start + chunk)))
    with q.db.transaction() as db:
        db.execute("UPDATE entries SET state = 'done'")
    q.enqueue_many(FileVersion(f"/home/u/new/{i}".encode(), "u", 4096, i, i, i, "close_write")
                   for i in range(measured))
    return q


def sftppush_rate(q: Queue, measured: int, batch: int) -> float:
    started, n = time.perf_counter(), 0
    while n < measured:
        got = q.claim("bench", lease_seconds=300, limit=batch)
        if not got:
            break
        if batch == 1:
            q.ack(got[0])
        else:
            q.ack_many([(e, None) for e in got])
        n += len(got)
    return n / (time.perf_counter() - started)


def persist_queue_rate(directory: Path, retained: int, measured: int) -> float:
    q = SQLiteAckQueue(str(directory), serializer=pq_json, multithreading=True)
    # Retained acked rows go in with one statement: only the measured part is timed.
    row = pq_json.dumps({"path": "/home/u/old/x"})
    with q._putter as db:
        db.executemany(f"INSERT INTO {q._table_name} (data, timestamp, status) VALUES (?, ?, 5)",
                       ((row, time.time()) for _ in range(retained)))
    for i in range(measured):
        q.put({"path": f"/home/u/new/{i}"})
    started, n = time.perf_counter(), 0
    for _ in range(measured):
        item = q.get(block=False, raw=True)
        q.ack(id=item["pqid"])
        n += 1
    elapsed = time.perf_counter() - started
    q.close()
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--retained", type=int, default=1_000_000)
    parser.add_argument("--measured", type=int, default=20_000)
    parser.add_argument("--baseline-measured", type=int, default=500,
                        help="get+ack pairs for persist-queue (it walks every acked row)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-queue-") as tmp:
        root = Path(tmp)
        base = persist_queue_rate(root / "pq", args.retained, args.baseline_measured)
        q = fill_sftppush(root / "queue.db", args.retained, 2 * args.measured)
        single = sftppush_rate(q, args.measured, batch=1)
        batched = sftppush_rate(q, args.measured, batch=64)
        started = time.perf_counter()
        read_stats(q)
        stats_ms = (time.perf_counter() - started) * 1000
        q.close()
        started = time.perf_counter()
        subprocess.run(cli_argv("queue", "status", "--json"), check=True, capture_output=True,
                       env=child_env({"SFTPPUSH_QUEUE_PATH": str(root / "queue.db")}))
        cli_ms = (time.perf_counter() - started) * 1000
    label = f"{args.retained:,} done retained"
    report(f"queue claim+ack, one per transaction ({label})", single, "ops/s",
           "persist-queue SQLiteAckQueue get+ack", base)
    report(f"queue claim+ack, batches of 64 ({label})", batched, "ops/s",
           "persist-queue SQLiteAckQueue get+ack", base)
    report(f"queue claim+ack, one per transaction, vs the SPEC 11 floor ({label})", single,
           "ops/s", "target", 5000)
    report(f"queue stats() ({label})", stats_ms, "ms", "target", 1000, higher_is_better=False)
    report(f"sftppush queue status --json, whole process ({label})", cli_ms, "ms", "target",
           1000, higher_is_better=False)


if __name__ == "__main__":
    sys.exit(main())
