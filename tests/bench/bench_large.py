"""Benchmark: one large gzip file through a consumer, against baselines from the same run.

    .venv/bin/python tests/bench/bench_large.py [--size-mib 1024] [--part-size-mb 8]
    .venv/bin/python tests/bench/bench_large.py --size-mib 10240 --sparse   # RSS only

Measures, on a local `rclone serve s3` (127.0.0.1, objects under a temp dir):
  zlib alone     Python gzip/zlib decompression of the file to nowhere
  upload alone   boto3's managed upload_file of the already-decompressed bytes
  sftppush       `sftppush consume --drain --workers 1` on the queued .gz file, with the
                 consumer process's peak RSS (wait4 ru_maxrss)
and prints MB/s (decompressed MiB per second) and the SPEC 11 ratios: sftppush must reach
0.9x the slower baseline with peak RSS <= 128 MB; then the CPU seconds per GiB of each side
(the client, and the S3 server), which tell what bounds the ratio on a small host. `--sparse`
makes a gzip of zeros (fast to make, ~1000:1) and measures the consumer's peak RSS only.
Not part of the default test run.
"""

from __future__ import annotations

import argparse
import gzip
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3.s3.transfer
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from sftppush.queue import FileVersion, Queue  # noqa: E402
from tests.bench.common import proc_cpu_seconds, report  # noqa: E402
from tests.conftest import RcloneS3  # noqa: E402

MiB = 2**20


def make_gzip(path: Path, size_mib: int) -> None:
    """CSV-like lines (compress ~4x like sensor data), written as a stream, never in memory."""
    rng = random.Random(7)
    block = b"".join(b"%d,device-%03d,%0.3f,%0.3f,ok\n" % (i, rng.randrange(999), rng.random(),
                                                          rng.random() * 100)
                     for i in range(200_000))
    with gzip.open(path, "wb", compresslevel=6) as f:
        written = 0
        n = 0
        while written < size_mib * MiB:
            chunk = (b"%012d\n" % n + block)[: size_mib * MiB - written]
            f.write(chunk)
            written += len(chunk)
            n += 1


def make_sparse_gzip(path: Path, size_mib: int) -> None:
    """`size_mib` MiB of zeros as one gzip member per MiB, compressed once."""
    member = gzip.compress(bytes(MiB), 6)
    with path.open("wb") as f:
        for _ in range(size_mib):
            f.write(member)


def zlib_alone(path: Path) -> tuple[float, int, float]:
    """Seconds, decompressed bytes and CPU seconds of this process."""
    t, cpu = time.perf_counter(), time.process_time()
    total = 0
    with gzip.open(path, "rb") as f:
        while chunk := f.read(MiB):
            total += len(chunk)
    return time.perf_counter() - t, total, time.process_time() - cpu


def upload_alone(server: RcloneS3, plain: Path, part_mb: int) -> tuple[float, float, float]:
    """Seconds, CPU seconds of this process (boto3's threads) and of the S3 server."""
    client = server.client()
    cfg = boto3.s3.transfer.TransferConfig(multipart_chunksize=part_mb * MiB,
                                           multipart_threshold=part_mb * MiB)
    t, cpu, srv = time.perf_counter(), time.process_time(), server_cpu(server)
    client.upload_file(str(plain), "baseline", "plain.bin", Config=cfg)
    return (time.perf_counter() - t, time.process_time() - cpu, server_cpu(server) - srv)


def server_cpu(server: RcloneS3) -> float:
    assert server.process is not None
    return proc_cpu_seconds(server.process.pid)


def sftppush_run(server: RcloneS3, work: Path, gz: Path,
                 part_mb: int) -> tuple[float, int, str, float, float]:
    """Seconds, the consumer's peak RSS, its log, its CPU seconds and the S3 server's."""
    home = work / "home"
    upload = home / "sftpuser1" / "upload"
    upload.mkdir(parents=True)
    target = upload / gz.name
    shutil.copyfile(gz, target)
    config = work / "config.yaml"
    config.write_text(yaml.safe_dump({
        "defaults": {"userpath": str(home), "s3target": "bench",
                     "endpoint_url": server.endpoint_url, "awsregion": "us-east-1"},
        "watch": {"source": [{"name": "sftpuser1", "paths": ["/upload"]}]},
        "queue": {"path": str(work / "queue.db")},
        "consumer": {"workers": 1, **({"s3": {"part_size_mb": part_mb}} if part_mb else {})},
    }))
    with Queue(work / "queue.db") as q:
        q.enqueue_many([FileVersion.of(target, "sftpuser1", target.stat(), "rescan")])
    env = {**server.env(), "PYTHONPATH": str(REPO)}
    t, srv = time.perf_counter(), server_cpu(server)
    proc = subprocess.Popen([sys.executable, "-m", "sftppush", "--config", str(config),
                             "consume", "--drain"], env=env, stderr=subprocess.PIPE, text=True)
    stderr = proc.stderr.read() if proc.stderr else ""
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t
    srv = server_cpu(server) - srv
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"consumer exited {proc.returncode}:\n{stderr}")
    return elapsed, usage.ru_maxrss * 1024, stderr, usage.ru_utime + usage.ru_stime, srv


def report_rss(size_mib: int, rss: int, log: str) -> None:
    report(f"large 1 file {size_mib} MiB: consumer peak RSS", rss / 1e6, "MB",
           "target", 128, higher_is_better=False)
    print(next((line for line in log.splitlines() if "uploaded id=" in line), ""))
    print(f"bench process self RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1e3:.0f}"
          " MB (not the consumer)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--part-size-mb", type=int, default=None,
                        help="default: the config default")
    parser.add_argument("--sparse", action="store_true",
                        help="a gzip of zeros, and the consumer's peak RSS only")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sftppush-bench-"))
    server = RcloneS3(work / "s3", work / "rclone.log")
    (work / "s3" / "baseline").mkdir(parents=True)
    (work / "s3" / "bench").mkdir()
    try:
        gz = work / "big.csv.gz"
        t = time.perf_counter()
        (make_sparse_gzip if args.sparse else make_gzip)(gz, args.size_mib)
        print(f"made {gz.stat().st_size / MiB:.0f} MiB gzip of {args.size_mib} MiB "
              f"in {time.perf_counter() - t:.1f}s")
        server.start()
        if args.sparse:
            st, rss, log, _, _ = sftppush_run(server, work / "run", gz, args.part_size_mb)
            report_rss(args.size_mib, rss, log)
            return
        plain = work / "big.csv"
        with gzip.open(gz, "rb") as src, plain.open("wb") as dst:
            shutil.copyfileobj(src, dst, MiB)
        zt, total, zcpu = zlib_alone(gz)
        ut, ucpu, usrv = upload_alone(server, plain, args.part_size_mb or 8)
        plain.unlink()
        (work / "s3" / "baseline" / "plain.bin").unlink()
        st, rss, log, scpu, ssrv = sftppush_run(server, work / "run", gz, args.part_size_mb)
        stored = work / "s3" / "bench" / "sftpuser1" / "upload" / "big.csv"
        assert stored.stat().st_size == total, "object size differs from the decompressed size"
        mbs = {name: total / MiB / sec for name, sec in
               (("zlib alone", zt), ("upload alone", ut), ("sftppush", st))}
        slower = min(("zlib alone", mbs["zlib alone"]), ("upload alone", mbs["upload alone"]),
                     key=lambda item: item[1])
        for name in ("zlib alone", "upload alone"):
            report(f"large 1 file {args.size_mib} MiB: {name}", mbs[name], "MiB/s")
        report(f"large 1 file {args.size_mib} MiB: sftppush decompress+upload", mbs["sftppush"],
               "MiB/s", f"slower of the two ({slower[0]}), target ratio 0.90", slower[1])
        report(f"large 1 file {args.size_mib} MiB: sftppush vs upload alone", mbs["sftppush"],
               "MiB/s", "upload alone", mbs["upload alone"])
        gib = total / 2**30
        print(f"  # CPU s per GiB: zlib alone {zcpu / gib:.2f}; upload alone: client "
              f"{ucpu / gib:.2f}, s3 server {usrv / gib:.2f}; sftppush: consumer "
              f"{scpu / gib:.2f}, s3 server {ssrv / gib:.2f} ({os.cpu_count()} CPUs "
              "here)", flush=True)
        report_rss(args.size_mib, rss, log)
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
