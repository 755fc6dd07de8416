"""Latency (SPEC 11): files written at a steady rate (50/s for 60 s) into a watched tree with
`sftppush watch` + `consume` running; p50/p99 from each file's close to its verified object,
taken as the inotify IN_DELETE of the file (a consumer deletes only after verifying). Printed
next to the targets (p50 <= 20 ms, p99 <= 50 ms) and to a bare boto3 PUT round trip at the
same pace on the same loopback `rclone serve s3`, measured in this run.

`--rtt-ms 40` puts both behind a delay line (tests/bench/delayline.py): the target there is one
PUT's round trip plus at most 10 ms (the baseline PUT waits for no `100 Continue`, as
sftppush's do not).

    python -m tests.bench.bench_latency [--rate 50] [--seconds 60] [--workers W] [--rtt-ms MS]
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import tempfile
import threading
import time
from pathlib import Path

from inotify_simple import INotify
from inotify_simple import flags as F

from tests.bench.common import RcloneS3, Sftppush, report, small_body

TARGET_P50_MS, TARGET_P99_MS = 20.0, 50.0  # SPEC 11
TARGET_OVER_PUT_MS = 10.0  # at a distance: one PUT's round trip plus this


def percentiles(samples_ms: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(samples_ms, n=100, method="inclusive")
    return q[49], q[98]


def paced(rate: float, count: int):
    """Yield i at t0 + i/rate, sleeping in between: a steady writer, not a burst."""
    start = time.monotonic()
    for i in range(count):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        yield i


def _no_expect(params: dict, **_: object) -> None:
    (params.get("headers") or {}).pop("Expect", None)  # one round trip, not two


def put_round_trip(server: RcloneS3, bucket: str, rate: float, count: int) -> list[float]:
    client = server.client()
    client.meta.events.register_last("before-call.s3", _no_expect)
    client.head_bucket(Bucket=bucket)
    out = []
    for i in paced(rate, count):
        started = time.monotonic()
        client.put_object(Bucket=bucket, Key=f"rtt/{i:06d}", Body=small_body(i))
        out.append((time.monotonic() - started) * 1000)
    return out


def sftppush_latency(server: RcloneS3, root: Path, bucket: str, rate: float, count: int,
                     workers: int | None, timeout: float) -> tuple[list[float], int]:
    closed: dict[str, float] = {}
    deleted: dict[str, float] = {}
    with Sftppush(server, root, bucket, "latency", workers=workers) as app:
        target = app.upload / "live"
        target.mkdir()
        inotify = INotify()
        inotify.add_watch(target, F.DELETE | F.MOVED_FROM)
        done = threading.Event()

        def collect() -> None:
            while not done.is_set():
                for event in inotify.read(timeout=100):
                    deleted.setdefault(event.name, time.monotonic())

        thread = threading.Thread(target=collect, daemon=True)
        thread.start()
        for i in paced(rate, count):
            name = f"f{i:06d}.csv.gz"
            with open(target / name, "wb") as f:
                f.write(gzip.compress(small_body(i), 6))
            closed[name] = time.monotonic()
        deadline = time.monotonic() + timeout
        # Not len(deleted): the consumer's private names (its safe delete renames a file
        # before it unlinks it) are deleted too, and would end the wait a few files early.
        while not closed.keys() <= deleted.keys() and time.monotonic() < deadline:
            time.sleep(0.05)
        done.set()
        thread.join()
        inotify.close()
    latencies = [(deleted[n] - closed[n]) * 1000 for n in closed if n in deleted]
    return latencies, count - len(latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=50.0, help="files per second")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=None, help="threads per consumer")
    parser.add_argument("--timeout", type=float, default=120.0, help="after the last write")
    parser.add_argument("--rtt-ms", type=float, default=None, metavar="MS",
                        help="a delay line of this round trip in front of the store")
    args = parser.parse_args()
    count = int(args.rate * args.seconds)
    with RcloneS3() as server, tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp, \
            server.behind(args.rtt_ms):
        bucket = server.create_bucket()
        rtt = put_round_trip(server, bucket, args.rate, min(count, int(args.rate * 10)))
        latencies, missing = sftppush_latency(server, Path(tmp), bucket, args.rate, count,
                                              args.workers, args.timeout)
    if missing:
        raise SystemExit(f"{missing} of {count} files were not uploaded and deleted in time")
    p50, p99 = percentiles(latencies)
    b50, b99 = percentiles(rtt)
    where = "" if args.rtt_ms is None else f", {args.rtt_ms:g} ms round trip"
    label = f"{args.rate:g} files/s for {args.seconds:g} s{where}, close-write to verified"
    if args.rtt_ms is None:
        report(f"latency p50 ({label})", p50, "ms", "target", TARGET_P50_MS,
               higher_is_better=False)
        report(f"latency p99 ({label})", p99, "ms", "target", TARGET_P99_MS,
               higher_is_better=False)
    else:
        report(f"latency p50 ({label})", p50, "ms", f"target: put_object p50 + "
               f"{TARGET_OVER_PUT_MS:g} ms", b50 + TARGET_OVER_PUT_MS, higher_is_better=False)
    report("latency p50 vs one boto3 put_object round trip", p50, "ms", "put_object p50", b50,
           higher_is_better=False)
    report("latency p99 vs one boto3 put_object round trip", p99, "ms", "put_object p99", b99,
           higher_is_better=False)
    print(f"  # max {max(latencies):.0f} ms over {len(latencies)} files", flush=True)


if __name__ == "__main__":
    main()
