"""Watcher burst benchmark: N files written as fast as possible, how fast they are all queued.

Run: `python -m tests.bench.bench_watcher [--files 100000] [--dirs 100]`. Prints files/s from
the first write until every file has a queue entry, files lost (must be 0), duplicates, and
the ratio against the baseline measured in the same run: the same writer with no watcher.
Target (SPEC 11): >= 10,000 files/s, none lost. Everything lives in a temporary directory.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from sftppush.queue import Queue
from sftppush.status import read as read_stats
from tests.bench.common import report
from tests.conftest import WatcherProcess, WatchTree


def make_dirs(top: Path, dirs: int) -> None:
    for d in range(dirs):
        (top / f"d{d:04d}").mkdir()


def burst_paths(top: Path, files: int, dirs: int) -> list[bytes]:
    return [os.fsencode(top / f"d{i % dirs:04d}" / f"f{i:07d}.csv") for i in range(files)]


def write_files(paths: list[bytes]) -> None:
    payload = b"x" * 64
    for path in paths:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, payload)
        os.close(fd)


def write_burst(top: Path, files: int, dirs: int, writers: int) -> list[bytes]:
    """Write `files` small files over `dirs` directories from `writers` processes; their paths."""
    paths = burst_paths(top, files, dirs)
    with ProcessPoolExecutor(writers, mp_context=multiprocessing.get_context("fork")) as pool:
        list(pool.map(write_files, [paths[w::writers] for w in range(writers)]))
    return paths


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def burst(base: Path, files: int, dirs: int, writers: int, paused: bool, timeout: float) -> dict:
    """One run: the watcher live during the writes, into directories it sees created; or
    SIGSTOPped while they fill watched directories (the kernel queue overflows: rescan)."""
    tree = WatchTree(base)
    if paused:
        make_dirs(tree.upload, dirs)
    watcher = WatcherProcess(tree.config, base / "watcher.log").start()
    assert watcher.proc is not None
    try:
        queue = Queue(tree.queue_path)
        cpu0 = cpu_seconds(watcher.proc.pid)
        if paused:
            watcher.signal(signal.SIGSTOP)
        else:
            make_dirs(tree.upload, dirs)
        t0 = time.perf_counter()
        paths = write_burst(tree.upload, files, dirs, writers)
        written = time.perf_counter() - t0
        if paused:
            t0 = time.perf_counter()  # from SIGCONT: the watcher's own work only
            watcher.signal(signal.SIGCONT)
        deadline = time.monotonic() + timeout
        while read_stats(queue).pending < files and time.monotonic() < deadline:
            time.sleep(0.01)
        elapsed = time.perf_counter() - t0
        cpu = cpu_seconds(watcher.proc.pid) - cpu0
        status = watcher.stop()
        entries = queue.list(limit=10 * files)
        queue.close()
    finally:
        watcher.close()
    queued = {e.path for e in entries}
    return {"written": written, "elapsed": elapsed, "cpu": cpu, "status": status,
            "lost": len(set(paths) - queued), "duplicates": len(entries) - len(queued),
            "overflows": watcher.log_text().count("inotify queue overflowed")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--dirs", type=int, default=100)
    parser.add_argument("--writers", type=int, default=2, help="writer processes")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="sftppush-bench-watcher-") as tmp:
        base = Path(tmp)
        baseline_dir = base / "baseline"
        baseline_dir.mkdir()
        t0 = time.perf_counter()
        make_dirs(baseline_dir, args.dirs)
        write_burst(baseline_dir, args.files, args.dirs, args.writers)
        baseline = args.files / (time.perf_counter() - t0)

        live = burst(base / "live", args.files, args.dirs, args.writers, False, args.timeout)
        paused = burst(base / "paused", args.files, args.dirs, args.writers, True, args.timeout)

    print(f"# watcher burst: {args.files} files in {args.dirs} dirs by {args.writers} writer "
          f"processes", flush=True)
    report("watcher burst baseline: the same writers, unwatched", baseline, "files/s")
    for name, r in (("live", live), ("paused+overflow", paused)):
        since = "SIGCONT" if name != "live" else "the first write"
        rate = args.files / r["elapsed"]
        report(f"watcher burst {name}, all queued after {since}", rate, "files/s",
               "target", 10_000)
        report(f"watcher burst {name}, vs writers unwatched", rate, "files/s",
               "writers unwatched", baseline)
        report(f"watcher burst {name}, files per watcher CPU-second",
               args.files / max(r["cpu"], 1e-3), "files/s")
        print(f"watcher burst {name}: files lost {r['lost']} | duplicate entries "
              f"{r['duplicates']} | overflows {r['overflows']} | exit status {r['status']}",
              flush=True)
    ok = all(r["lost"] == 0 and r["status"] == 0 for r in (live, paused))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
