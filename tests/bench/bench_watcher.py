"""Watcher benchmarks: a burst, and the start of a large multi-tenant tree.

Run: `python -m tests.bench.bench_watcher [--files 100000] [--dirs 100]
[--startup-dirs 20000 --startup-files 100000 --startup-sources 50] [--only burst|startup]`.

Burst: N files written as fast as possible; files/s from the first write until every file
has a queue entry, files lost (must be 0), duplicates, and the ratio against the baseline
measured in the same run: the same writer with no watcher. Target (SPEC 11): >= 10,000
files/s, none lost.

Start-up: a tree of many users' directories and files already there; time from the
process's start to READY=1 and to the end of the start-up scans (every file queued), peak
RSS, and overflows (must be 0); then the same start with --no-rescan (must queue nothing).
Baselines in the same run: a plain walk of the same tree, directories only (what READY
waits for) and with an lstat of every file (what the scans do). Everything lives in a
temporary directory.
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
from datetime import datetime
from pathlib import Path

import yaml

from sftppush.queue.entries import State
from sftppush.queue.queue import Queue
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
        while read_stats(queue).backlog.pending < files and time.monotonic() < deadline:
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


def make_tenants(home: Path, sources: int, dirs: int, files: int, writers: int) -> list[str]:
    """`sources` users' upload trees under `home`, `dirs` directories and `files` files over
    them; the users' names."""
    names = [f"user{s:03d}" for s in range(sources)]
    per_user = max(1, dirs // sources)
    for name in names:
        for d in range(per_user):
            (home / name / "upload" / f"d{d:04d}").mkdir(parents=True)
    paths = [os.fsencode(home / names[i % sources] / "upload" / f"d{(i // sources) % per_user:04d}"
                         / f"f{i:07d}.csv") for i in range(files)]
    with ProcessPoolExecutor(writers, mp_context=multiprocessing.get_context("fork")) as pool:
        list(pool.map(write_files, [paths[w::writers] for w in range(writers)]))
    return names


def plain_walk(home: Path, stat_files: bool) -> float:
    """Seconds for os.walk over `home` (with an lstat of each file): the baseline."""
    t0 = time.perf_counter()
    for top, _, names in os.walk(home):
        if stat_files:
            for name in names:
                os.lstat(os.path.join(top, name))
    return time.perf_counter() - t0


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def startup(base: Path, sources: int, dirs: int, files: int, writers: int,
            timeout: float) -> dict:
    """Both starts over one tree: with the start-up rescan, and with --no-rescan."""
    home = base / "home"
    names = make_tenants(home, sources, dirs, files, writers)
    time.sleep(2.5)  # files already there, not just written (the watcher holds those briefly)
    config = base / "config.yaml"
    results = {"walk_dirs": plain_walk(home, False), "walk_files": plain_walk(home, True),
               "dirs": sum(1 for _ in os.walk(home))}
    for run, args in (("rescan", ()), ("no_rescan", ("--no-rescan",))):
        queue_path = base / f"queue-{run}.db"
        config.write_text(yaml.safe_dump({
            "defaults": {"userpath": str(home), "s3target": "bench-bucket"},
            "watch": {"source": [{"name": n, "paths": ["/upload"]} for n in names]},
            "queue": {"path": str(queue_path)}}))
        os.sync()
        log = base / f"watcher-{run}.log"
        t0, started_at = time.perf_counter(), time.time()
        watcher = WatcherProcess(config, log, *args).start(timeout)
        ready = time.perf_counter() - t0
        assert watcher.proc is not None
        try:
            queue = Queue(queue_path)
            want = files if run == "rescan" else 0
            deadline = time.monotonic() + (timeout if want else 3.0)
            # The counts table only (kept by triggers): polling must not cost the watcher.
            while queue.counts()[State.PENDING] < want and time.monotonic() < deadline:
                time.sleep(0.02)
            scanned = time.perf_counter() - t0
            if not want:
                time.sleep(max(0.0, deadline - time.monotonic()))  # anything queued by mistake
            queued = queue.counts()[State.PENDING]
            rss = peak_rss_mb(watcher.proc.pid)
            status = watcher.stop()
            queue.close()
        finally:
            watcher.close()
        text = log.read_text()
        results[run] = {"ready": ready, "scanned": scanned, "queued": queued, "rss": rss,
                        "status": status, "overflows": text.count("overflowed"),
                        "walked": last_scan_done(text, "start") - started_at}
    return results


def last_scan_done(log: str, why: str) -> float:
    """The wall time of the last `scan done ... why=WHY` line of a text log (its walk ended;
    its files are committed a moment later); 0 if none."""
    times = [datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
             for line in log.splitlines() if "scan done" in line and f"why={why}" in line]
    return max(times, default=0.0)


def report_startup(r: dict, sources: int, files: int) -> bool:
    print(f"# watcher start-up: {r['dirs']} directories of {sources} users, {files} files",
          flush=True)
    full, quiet = r["rescan"], r["no_rescan"]
    report("watcher start-up, READY=1 after", full["ready"], "s", "os.walk of the directories",
           r["walk_dirs"], higher_is_better=False)
    report("watcher start-up, start-up scans walked after", full["walked"], "s",
           "os.walk + lstat of every file", r["walk_files"], higher_is_better=False)
    report("watcher start-up, every file queued (committed) after", full["scanned"], "s",
           "os.walk + lstat of every file", r["walk_files"], higher_is_better=False)
    report("watcher start-up, peak RSS", full["rss"], "MB")
    report("watcher start-up --no-rescan, READY=1 after", quiet["ready"], "s",
           "os.walk of the directories", r["walk_dirs"], higher_is_better=False)
    for name, run in (("rescan", full), ("--no-rescan", quiet)):
        print(f"watcher start-up {name}: queued {run['queued']} | overflows {run['overflows']}"
              f" | peak RSS {run['rss']:.1f} MB | exit status {run['status']}", flush=True)
    return (full["queued"] == files and quiet["queued"] == 0 and not full["overflows"]
            and not quiet["overflows"] and full["status"] == quiet["status"] == 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--dirs", type=int, default=100)
    parser.add_argument("--writers", type=int, default=2, help="writer processes")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--startup-dirs", type=int, default=20_000)
    parser.add_argument("--startup-files", type=int, default=100_000)
    parser.add_argument("--startup-sources", type=int, default=50)
    parser.add_argument("--only", choices=("burst", "startup"), default=None)
    args = parser.parse_args()

    ok = True
    if args.only != "burst":
        with tempfile.TemporaryDirectory(prefix="sftppush-bench-startup-") as tmp:
            r = startup(Path(tmp), args.startup_sources, args.startup_dirs, args.startup_files,
                        args.writers, args.timeout)
        ok = report_startup(r, args.startup_sources, args.startup_files)
    if args.only == "startup":
        return 0 if ok else 1
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
    ok = ok and all(r["lost"] == 0 and r["status"] == 0 for r in (live, paused))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
