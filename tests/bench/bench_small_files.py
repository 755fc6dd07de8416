"""Many small files (SPEC 11): N x 4 KiB gzip written into a watched tree with `sftppush watch`
and `sftppush consume` running as real processes; files/s from the first write to the last
verified object (its local file deleted), next to `s5cmd cp`, `rclone copy --transfers 16` and
`rclone copy` at its defaults of the same decompressed files to the same loopback
`rclone serve s3`, measured in this run.

`--rtt-ms 0 40 100` puts every side behind a delay line (tests/bench/delayline.py) of each
round trip in turn, and compares sftppush at each distance with itself through the line at
the first one. Run it on tmpfs (TMPDIR=/dev/shm; see tests/bench/README.md).

    python -m tests.bench.bench_small_files [--files N] [--consumers K] [--workers W]
                                            [--rtt-ms MS ...]
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.bench.common import (
    Deletions,
    PySpy,
    RcloneS3,
    Sftppush,
    Timing,
    best_of,
    by_thread_name,
    filesystem_of,
    proc_cpu_seconds,
    rclone_copy,
    report,
    s5cmd_cp,
    small_body,
    thread_cpu_seconds,
    thread_cpu_waits,
)
from tests.bench.delayline import DelayLine


def run_sftppush(server: RcloneS3, root: Path, bucket: str, prefix: str, blobs: list[bytes],
                 consumers: int, workers: int | None, timeout: float,
                 profile: Path | None = None, keep_logs: Path | None = None
                 ) -> tuple[float, dict]:
    """One sftppush run; `keep_logs`: a directory its processes' logs are copied into, once
    they have stopped (the run's tree is temporary), whether the run went well or not."""
    try:
        return _run_sftppush(server, root, bucket, prefix, blobs, consumers, workers, timeout,
                             profile)
    finally:
        if keep_logs is not None and (root / "logs").is_dir():
            shutil.copytree(root / "logs", keep_logs / f"{root.name}-{time.strftime('%H%M%S')}")


def _run_sftppush(server: RcloneS3, root: Path, bucket: str, prefix: str, blobs: list[bytes],
                  consumers: int, workers: int | None, timeout: float,
                  profile: Path | None) -> tuple[float, dict]:
    with Sftppush(server, root, bucket, prefix, consumers, workers) as app, \
            contextlib.ExitStack() as spying:
        target = app.upload / "2026"
        target.mkdir()
        os.sync()  # as before each baseline: no writeback of earlier writes in this run
        spy = spying.enter_context(PySpy(app.procs["consumer0"].pid, profile)) \
            if profile else None
        cpu0 = app.cpu()
        threads0 = thread_cpu_seconds(app.procs["consumer0"].pid)
        waits0 = thread_cpu_waits(app.procs["consumer0"].pid)
        deletions = spying.enter_context(Deletions(target))
        started = time.perf_counter()
        for i, blob in enumerate(blobs):
            (target / f"f{i:06d}.csv.gz").write_bytes(blob)
        written = time.perf_counter() - started
        left = deletions.wait(len(blobs), timeout)
        elapsed = time.perf_counter() - started
        cpu = {k: v - cpu0.get(k, 0.0) for k, v in app.cpu().items()}
        threads = by_thread_name(threads0, thread_cpu_seconds(app.procs["consumer0"].pid))
        waits = by_thread_name(waits0, thread_cpu_waits(app.procs["consumer0"].pid))
        spying.close()
        if spy is not None:
            print("\n".join(spy.summary()), flush=True)
        if left:
            raise RuntimeError(f"{left} of {len(blobs)} files still on disk after {timeout:.0f} s;"
                               f" queue {app.status()}; logs in {app.logs}")
        status = app.status()
    for name in app.procs:  # what the fast path's window did, as each consumer logs it
        if name.startswith("consumer"):
            log = (app.logs / f"{name}.log").read_text(errors="replace")
            print(f"  # {name}: " + " ".join(line.partition("fast path closed ")[2] for line in
                                              log.splitlines() if "fast path closed" in line))
    objects = server.count_objects(bucket, f"{prefix}/")
    if objects != len(blobs) or status.get("done") != len(blobs):
        raise RuntimeError(f"{objects} objects and queue {status} for {len(blobs)} files")
    cpu["writer (this process)"] = written
    # Python's threads share the interpreter's name; awscrt's event loops have their own.
    print("  # consumer0 CPU ms per file by thread name: " + ", ".join(
        f"{name} {seconds / len(blobs) * 1000:.2f}" for name, seconds in sorted(
            threads.items(), key=lambda kv: -kv[1]) if seconds > 0), flush=True)
    if waits:
        print(f"  # consumer0 s waiting for a CPU (run queue) in the {elapsed:.2f} s, by thread"
              " name: " + ", ".join(f"{name} {seconds:.2f}" for name, seconds in sorted(
                  waits.items(), key=lambda kv: -kv[1]) if seconds >= 0.01), flush=True)
    return elapsed, cpu


def with_cpu(server: RcloneS3, line: DelayLine | None, cpu: dict[str, tuple[float, ...]],
             name: str, measure: Callable[[], Timing]) -> Timing:
    """Run one baseline, keeping the CPU its tool, the S3 server and the line used."""
    def children() -> float:
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    os.sync()  # the writes before it (the source files, another side's objects) land first
    tool0, server0 = children(), proc_cpu_seconds(server.process.pid)
    line0 = line.cpu() if line else 0.0
    timing = measure()
    cpu[name] = (children() - tool0, proc_cpu_seconds(server.process.pid) - server0,
                 line.cpu() - line0 if line else 0.0)
    return timing


Peer = Callable[[RcloneS3, Path, str, str], Timing]
PEERS: tuple[tuple[str, Peer], ...] = (
    ("s5cmd cp", s5cmd_cp),
    ("rclone copy --transfers 16", lambda server, src, bucket, prefix: rclone_copy(
        server, src, bucket, prefix, 16)),
    ("rclone copy (defaults)", lambda server, src, bucket, prefix: rclone_copy(
        server, src, bucket, prefix, None)),
)


def best_sftppush(server: RcloneS3, line: DelayLine | None, root: Path, bucket: str, tag: str,
                  blobs: list[bytes], args: argparse.Namespace) -> tuple[float, dict]:
    """The fastest of --repeat sftppush runs (as for every peer), each on a fresh store:
    its seconds and the CPU each process used."""
    best: tuple[float, dict] | None = None
    for k in range(max(1, args.repeat)):
        server.fresh(bucket)
        line0 = line.cpu() if line else 0.0
        elapsed, cpu = run_sftppush(server, root / f"sftppush-{tag}-{k}", bucket,
                                    f"{tag}/sftppush{k}", blobs, args.consumers, args.workers,
                                    args.timeout, args.py_spy if k == 0 else None,
                                    args.keep_logs)
        if line:
            cpu["delay line"] = line.cpu() - line0
        if args.repeat > 1:
            print(f"  # sftppush run {k + 1}: {len(blobs) / elapsed:,.1f} files/s", flush=True)
        if best is None or elapsed < best[0]:
            best = elapsed, cpu
    assert best is not None
    return best


def at_distance(server: RcloneS3, root: Path, bucket: str, src: Path, blobs: list[bytes],
                rtt: float | None, args: argparse.Namespace) -> float:
    """Every side once behind a line of `rtt` ms (None: no line); sftppush's files/s."""
    n = len(blobs)
    where = "loopback" if rtt is None else f"{rtt:g} ms round trip"
    tag = "direct" if rtt is None else f"rtt{rtt:g}"
    print(f"== {where}", flush=True)
    with server.behind(rtt) as line:
        peers: dict[str, tuple[float, ...]] = {}
        rates: dict[str, float] = {}
        runs = iter(range(10**6))  # a fresh prefix for every run of a peer
        for name, measure in PEERS if args.peers else ():
            if args.only and not any(name.startswith(only) for only in args.only):
                continue

            def once(name: str = name, measure: Peer = measure) -> Timing:
                server.fresh(bucket)  # every run of every side meets the same empty store
                return with_cpu(server, line, peers, name,
                                lambda: measure(server, src, bucket, f"{tag}/peer{next(runs)}"))
            rates[name] = best_of(args.repeat, once).rate
        elapsed, cpu = best_sftppush(server, line, root, bucket, tag, blobs, args)
    rate = n / elapsed
    label = f"sftppush {n:,} x 4 KiB gzip, write to verified, {where} " \
            f"({args.consumers} consumer(s))"
    for name, peer in rates.items():
        report(label, rate, "files/s", name, peer)
    if not rates:
        report(label, rate, "files/s")
    print("  # CPU ms per file: " + ", ".join(f"{k} {v / n * 1000:.2f}" for k, v in cpu.items()
                                             if not k.startswith("writer")), flush=True)
    print(f"  # writing the {n:,} files took {cpu['writer (this process)']:.2f} s", flush=True)
    # What bounds the ratio on a small box: CPU per file of each side, S3 server included.
    for name, (tool, srv, by_line) in peers.items():
        print(f"  # CPU ms per file (last run): {name} {tool / n * 1000:.2f}, s3 server"
              f" {srv / n * 1000:.2f}" + (f", delay line {by_line / n * 1000:.2f}" if line
                                          else ""), flush=True)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--consumers", type=int, default=1, help="consumer processes")
    parser.add_argument("--workers", type=int, default=None, help="threads per consumer")
    parser.add_argument("--repeat", type=int, default=1,
                        help="best of R runs, for every side (each on a fresh store)")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--rtt-ms", type=float, nargs="+", default=None, metavar="MS",
                        help="round trips of a delay line in front of the store, one run of"
                             " every side at each; sftppush at each is compared with the first")
    parser.add_argument("--no-peers", dest="peers", action="store_false",
                        help="sftppush alone (quick A/B runs; the targets need the peers)")
    parser.add_argument("--peer", dest="only", action="append", default=None, metavar="NAME",
                        help="measure only the peers whose name starts with NAME (repeatable;"
                             " e.g. --peer s5cmd for quick A/B runs)")
    parser.add_argument("--keep-logs", type=Path, default=None, metavar="DIR",
                        help="copy each sftppush run's logs (watcher, consumers) into DIR")
    parser.add_argument("--py-spy", type=Path, default=None, metavar="FILE",
                        help="record the first consumer with py-spy (raw stacks to FILE) and"
                             " print where its time went")
    args = parser.parse_args()
    n = args.files
    bodies = [small_body(i) for i in range(n)]
    blobs = [gzip.compress(b, 6) for b in bodies]
    tmp_dir = tempfile.gettempdir()
    print(f"# {n:,} files on {filesystem_of(tmp_dir)} ({tmp_dir}; set TMPDIR to move it),"
          f" load average {os.getloadavg()[0]:.2f}", flush=True)
    with RcloneS3() as server, tempfile.TemporaryDirectory(prefix="bench-small-") as tmp:
        root = Path(tmp)
        bucket = server.create_bucket()
        src = root / "decompressed"
        src.mkdir()
        for i, body in enumerate(bodies):
            (src / f"f{i:06d}.csv").write_bytes(body)
        rates = [(rtt, at_distance(server, root, bucket, src, blobs, rtt, args))
                 for rtt in (args.rtt_ms or [None])]
    (first, base), *rest = rates
    for rtt, rate in rest:
        report(f"sftppush at {rtt:g} ms round trip vs itself at {first:g} ms", rate, "files/s",
               f"sftppush at {first:g} ms", base)
    print(f"# load average after: {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
