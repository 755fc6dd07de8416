"""Many small files (SPEC 11): N x 4 KiB gzip written into a watched tree with `sftppush watch`
and `sftppush consume` running as real processes; files/s from the first write to the last
verified object (its local file deleted), next to `s5cmd cp` and `rclone copy --transfers 16`
of the same decompressed files to the same loopback `rclone serve s3`, measured in this run.

    python -m tests.bench.bench_small_files [--files N] [--consumers K] [--workers W]
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import os
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.bench.common import (
    PySpy,
    RcloneS3,
    Sftppush,
    Timing,
    best_of,
    by_thread_name,
    filesystem_of,
    proc_cpu_seconds,
    rclone_copy,
    remaining_files,
    report,
    s5cmd_cp,
    small_body,
    thread_cpu_seconds,
)


def run_sftppush(server: RcloneS3, root: Path, bucket: str, blobs: list[bytes],
                 consumers: int, workers: int | None, timeout: float,
                 profile: Path | None = None) -> tuple[float, dict]:
    with Sftppush(server, root, bucket, "sftppush", consumers, workers) as app, \
            contextlib.ExitStack() as spying:
        target = app.upload / "2026"
        target.mkdir()
        os.sync()  # as before each baseline: no writeback of earlier writes in this run
        spy = spying.enter_context(PySpy(app.procs["consumer0"].pid, profile)) \
            if profile else None
        cpu0 = app.cpu()
        threads0 = thread_cpu_seconds(app.procs["consumer0"].pid)
        started = time.perf_counter()
        for i, blob in enumerate(blobs):
            (target / f"f{i:06d}.csv.gz").write_bytes(blob)
        written = time.perf_counter() - started
        deadline = time.monotonic() + timeout
        while (left := remaining_files(app.upload)) and time.monotonic() < deadline:
            time.sleep(0.02)
        elapsed = time.perf_counter() - started
        cpu = {k: v - cpu0.get(k, 0.0) for k, v in app.cpu().items()}
        threads = by_thread_name(threads0, thread_cpu_seconds(app.procs["consumer0"].pid))
        spying.close()
        if spy is not None:
            print("\n".join(spy.summary()), flush=True)
        if left:
            raise RuntimeError(f"{left} of {len(blobs)} files still on disk after {timeout:.0f} s;"
                               f" queue {app.status()}; logs in {app.logs}")
        status = app.status()
    objects = server.count_objects(bucket, "sftppush/")
    if objects != len(blobs) or status.get("done") != len(blobs):
        raise RuntimeError(f"{objects} objects and queue {status} for {len(blobs)} files")
    cpu["writer (this process)"] = written
    # Python's threads share the interpreter's name; awscrt's event loops have their own.
    print("  # consumer0 CPU ms per file by thread name: " + ", ".join(
        f"{name} {seconds / len(blobs) * 1000:.2f}" for name, seconds in sorted(
            threads.items(), key=lambda kv: -kv[1]) if seconds > 0), flush=True)
    return elapsed, cpu


def with_cpu(server: RcloneS3, cpu: dict[str, tuple[float, float]], name: str,
             measure: Callable[[], Timing]) -> Timing:
    """Run one baseline, keeping the CPU its tool and the S3 server used (per run)."""
    def children() -> float:
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    os.sync()  # the writes before it (the source files, another side's objects) land first
    tool0, server0 = children(), proc_cpu_seconds(server.process.pid)
    timing = measure()
    cpu[name] = (children() - tool0, proc_cpu_seconds(server.process.pid) - server0)
    return timing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--consumers", type=int, default=1, help="consumer processes")
    parser.add_argument("--workers", type=int, default=None, help="threads per consumer")
    parser.add_argument("--repeat", type=int, default=1, help="best of R runs for baselines")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--py-spy", type=Path, default=None, metavar="FILE",
                        help="record the first consumer with py-spy (raw stacks to FILE) and"
                             " print where its time went")
    args = parser.parse_args()
    n = args.files
    bodies = [small_body(i) for i in range(n)]
    blobs = [gzip.compress(b, 6) for b in bodies]
    with RcloneS3() as server, tempfile.TemporaryDirectory(prefix="bench-small-") as tmp:
        root = Path(tmp)
        bucket = server.create_bucket()
        src = root / "decompressed"
        src.mkdir()
        for i, body in enumerate(bodies):
            (src / f"f{i:06d}.csv").write_bytes(body)
        runs = iter(range(10**6))
        peers: dict[str, tuple[float, float]] = {}
        s5 = best_of(args.repeat, lambda: with_cpu(
            server, peers, "s5cmd", lambda: s5cmd_cp(server, src, bucket, f"s5/{next(runs)}")))
        rc = best_of(args.repeat, lambda: with_cpu(
            server, peers, "rclone", lambda: rclone_copy(server, src, bucket,
                                                         f"rc/{next(runs)}")))
        elapsed, cpu = run_sftppush(server, root / "sftppush", bucket, blobs, args.consumers,
                                    args.workers, args.timeout, args.py_spy)
    rate = n / elapsed
    label = f"sftppush {n:,} x 4 KiB gzip, write to verified ({args.consumers} consumer(s))"
    report(label, rate, "files/s", "s5cmd cp", s5.rate)
    report(label, rate, "files/s", "rclone copy --transfers 16", rc.rate)
    print("  # CPU ms per file: " + ", ".join(f"{k} {v / n * 1000:.2f}" for k, v in cpu.items()
                                             if not k.startswith("writer")), flush=True)
    print(f"  # writing the {n:,} files took {cpu['writer (this process)']:.2f} s, on"
          f" {filesystem_of(tempfile.gettempdir())} ({tempfile.gettempdir()}; set TMPDIR to"
          " move it)", flush=True)
    # What bounds the ratio on a small box: CPU per file of each side, S3 server included.
    for name, (tool, srv) in peers.items():
        print(f"  # CPU ms per file (last run): {name} {tool / n * 1000:.2f}, s3 server"
              f" {srv / n * 1000:.2f}", flush=True)


if __name__ == "__main__":
    main()
