"""Purging while consumers claim (SPEC 4, 11): N `done` entries past queue.keep_done are
purged by the watcher's upkeep (upkeep.Upkeep, its batches and pauses) while another process
enqueues, claims and acks one entry at a time. Prints the longest and p99 claim time during
the purge next to the same measured without a purge in this run, and the purge rate.

    python -m tests.bench.bench_purge [--entries N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sftppush.queue.queue import Queue
from sftppush.source.upkeep import Upkeep
from sftppush.status import file_bytes
from tests.bench.bench_queue import fill_sftppush
from tests.bench.common import report
from tests.conftest import child_env

# Runs in its own process until killed: one claim (and ack) at a time, timed, and each time
# printed as a line (ms), so the parent reads every one of them.
CLAIMER = """
import os, sys, time
from sftppush.queue.entries import FileVersion
from sftppush.queue.queue import Queue
q = Queue(sys.argv[1])
n, me = 0, os.getpid()
while True:
    q.enqueue_many([FileVersion(b"/home/u/live/%d/%d" % (me, n), "u", 1, n, n, n, "close_write")])
    started = time.perf_counter()
    (e,) = q.claim("claimer", 60)
    took = time.perf_counter() - started
    q.ack(e)
    print(f"{took * 1000:.3f}", flush=True)
    n += 1
"""


def claims_while(path: Path, work) -> list[float]:
    """Claim times (ms) of the claimer process while `work()` runs."""
    proc = subprocess.Popen([sys.executable, "-c", CLAIMER, str(path)], text=True,
                            stdout=subprocess.PIPE, env=child_env())
    try:
        time.sleep(1.0)  # imports and the first claims, outside the measure
        work()
    finally:
        proc.terminate()
        out, _ = proc.communicate(30)
    times = [float(x) for x in out.split()]
    return times[len(times) // 10:]  # drop the warm-up


def p99(times: list[float]) -> float:
    return sorted(times)[int(len(times) * 0.99)] if times else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--baseline-seconds", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-purge-") as tmp:
        path = Path(tmp) / "queue.db"
        fill_sftppush(path, args.entries, 0).close()
        with Queue(path) as q, q.db.transaction() as db:  # finished an hour ago
            db.execute("UPDATE entries SET due = ?", (time.time() - 3600,))
        size_before = file_bytes(path)
        quiet = claims_while(path, lambda: time.sleep(args.baseline_seconds))
        with Queue(path) as q:
            upkeep = Upkeep(q, keep_done=60, owner="bench")
            took = [0.0]

            def purge() -> None:
                started = time.monotonic()
                while upkeep.purged + upkeep.sweep < args.entries:
                    now = time.monotonic()
                    if now >= upkeep.due():
                        upkeep.run(now)
                    time.sleep(max(0.0, upkeep.due() - time.monotonic()))
                took[0] = time.monotonic() - started

            during = claims_while(path, purge)
        size_after = file_bytes(path)
    label = f"purging {args.entries:,} done entries"
    report(f"longest claim while {label}", max(during), "ms", "longest without a purge",
           max(quiet), higher_is_better=False)
    report(f"p99 claim while {label}", p99(during), "ms", "p99 without a purge", p99(quiet),
           higher_is_better=False)
    report(f"purge rate ({label})", args.entries / took[0], "entries/s")
    print(f"  # queue file with WAL: {size_before / 2**20:.0f} MiB before, "
          f"{size_after / 2**20:.0f} MiB after (pages are reused, not returned)", flush=True)
    print("  # " + json.dumps({"purge_seconds": round(took[0], 1), "claims": len(during)}))


if __name__ == "__main__":
    main()
