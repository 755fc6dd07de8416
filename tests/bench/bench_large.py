"""Benchmark: one large gzip file through a consumer, against baselines from the same run.

    .venv/bin/python tests/bench/bench_large.py [--size-mib 1024] [--part-size-mb 8]
    .venv/bin/python tests/bench/bench_large.py --size-mib 10240 --sparse   # RSS only

Measures, on a local `rclone serve s3` (127.0.0.1, objects under a temp dir):
  inflate alone     the file inflated to nowhere by the inflater sftppush uses (ISA-L, else
                    zlib), then the digests sftppush takes of every byte of a multipart
                    upload (sha256, the parts' MD5s, the store checksum twice: per part and
                    whole): the CPU floor of sftppush's own work, which `s5cmd cp` does
                    not do (it reads a decompressed file, and hashes it twice: SigV4's payload
                    sha256 and Content-MD5)
  upload alone      boto3's managed upload_file of the already-decompressed bytes
  zcat | s5cmd pipe the peer pipeline doing sftppush's job (SPEC 11: sftppush >= 1.0x)
  s5cmd cp          s5cmd uploading the already-decompressed file (SPEC 11: >= 0.9x)
  sftppush          `sftppush consume --drain --workers 1` on the queued .gz file, with the
                    consumer process's peak RSS (wait4 ru_maxrss): the whole process, and
                    the file alone as a running consumer takes it (from its open to its
                    verified upload: the `ms` of its `uploaded` log line)
and prints MB/s (decompressed MiB per second) and the ratios, peak RSS against 128 MB, then
the CPU seconds per GiB of each side (the client, and the S3 server), which tell what bounds
the ratio on a small host. `--rtt-ms 40` puts every side behind a delay line
(tests/bench/delayline.py); `--https` serves the store over TLS, as S3 is (sftppush's
signer then leaves a part's body out of its signature, whose checksum is sent; over http it
hashes each part once more, sha256). `--sparse` makes a gzip of zeros (fast to make,
~1000:1) and measures the consumer's peak RSS only. Not part of the default test run.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import os
import random
import re
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

from sftppush.pipeline.decompress import INFLATER  # noqa: E402
from sftppush.queue.queue import FileVersion, Queue  # noqa: E402
from sftppush.sink.parts import store_checksum  # noqa: E402
from tests.bench.common import proc_cpu_seconds, report, s5cmd_binary  # noqa: E402
from tests.bench.delayline import DelayLine  # noqa: E402
from tests.conftest import RcloneS3  # noqa: E402
from tests.e2e.tls import self_signed  # noqa: E402

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


def inflate_alone(path: Path) -> tuple[float, int, float, float]:
    """Seconds and decompressed bytes of inflating `path` as sftppush does, its CPU seconds,
    and the CPU seconds of the digests sftppush takes of those bytes in a multipart upload."""
    checksum = store_checksum("when_supported")
    t, cpu = time.perf_counter(), time.process_time()
    total, digest_cpu = 0, 0.0
    inflater = INFLATER.decompressobj(wbits=31)
    sha, md5, crc, part_crc = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0, 0
    with open(path, "rb") as f:
        while block := f.read(MiB):
            data = inflater.decompress(block)
            total += len(data)
            d = time.process_time()
            sha.update(data)
            md5.update(data)
            if checksum:
                crc, part_crc = checksum.update(data, crc), checksum.update(data, part_crc)
            digest_cpu += time.process_time() - d
    elapsed, cpu = time.perf_counter() - t, time.process_time() - cpu
    return elapsed, total, cpu - digest_cpu, digest_cpu


def upload_alone(server: RcloneS3, plain: Path, part_mb: int) -> tuple[float, float, float]:
    """Seconds, CPU seconds of this process (boto3's threads) and of the S3 server."""
    client = server.client()
    cfg = boto3.s3.transfer.TransferConfig(multipart_chunksize=part_mb * MiB,
                                           multipart_threshold=part_mb * MiB)
    t, cpu, srv = time.perf_counter(), time.process_time(), server_cpu(server)
    client.upload_file(str(plain), "baseline", "plain.bin", Config=cfg)
    return (time.perf_counter() - t, time.process_time() - cpu, server_cpu(server) - srv)


def s5cmd(server: RcloneS3, command: str, source: Path, key: str) -> tuple[float, float, float]:
    """`s5cmd cp FILE` or `zcat FILE.gz | s5cmd pipe` (at s5cmd's defaults) to baseline/key:
    seconds, CPU seconds of the client side (zcat included) and of the S3 server."""
    cmd = [str(s5cmd_binary()), "--endpoint-url", server.endpoint_url, "--log", "error",
           command, *([str(source)] if command == "cp" else []), f"s3://baseline/{key}"]
    env = server.env()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t, srv = time.perf_counter(), server_cpu(server)
    if command == "cp":
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    else:
        with subprocess.Popen(["zcat", str(source)], stdout=subprocess.PIPE) as zcat:
            subprocess.run(cmd, env=env, check=True, stdin=zcat.stdout,
                           stdout=subprocess.DEVNULL)
    elapsed, srv = time.perf_counter() - t, server_cpu(server) - srv
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return elapsed, cpu, srv


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
    parser.add_argument("--rtt-ms", type=float, default=None, metavar="MS",
                        help="a delay line of this round trip in front of the store")
    parser.add_argument("--https", action="store_true",
                        help="the store over TLS (rclone's own, a self-signed certificate"
                        " every side trusts), as S3 is")
    parser.add_argument("--sparse", action="store_true",
                        help="a gzip of zeros, and the consumer's peak RSS only")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sftppush-bench-"))
    server = RcloneS3(work / "s3", work / "rclone.log",
                      tls=self_signed(work) if args.https else None)
    (work / "s3" / "baseline").mkdir(parents=True)
    (work / "s3" / "bench").mkdir()
    try:
        gz = work / "big.csv.gz"
        t = time.perf_counter()
        (make_sparse_gzip if args.sparse else make_gzip)(gz, args.size_mib)
        print(f"made {gz.stat().st_size / MiB:.0f} MiB gzip of {args.size_mib} MiB "
              f"in {time.perf_counter() - t:.1f}s; load average {os.getloadavg()[0]:.2f}")
        server.start()
        with contextlib.ExitStack() as stack:
            if args.rtt_ms is not None:
                line = stack.enter_context(DelayLine(server.port, args.rtt_ms))
                server.front = line.port  # every side goes through the line
            if args.sparse:
                _, rss, log, _, _ = sftppush_run(server, work / "run", gz, args.part_size_mb)
                report_rss(args.size_mib, rss, log)
                return
            compare(server, work, gz, args)
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def compare(server: RcloneS3, work: Path, gz: Path, args: argparse.Namespace) -> None:
    """Every side once, in the same run; then the ratios and CPU per GiB."""
    plain = work / "big.csv"
    with gzip.open(gz, "rb") as src, plain.open("wb") as dst:
        shutil.copyfileobj(src, dst, MiB)
    zt, total, zcpu, dcpu = inflate_alone(gz)
    stored = work / "s3" / "baseline"
    sides: dict[str, tuple[float, float, float]] = {}
    sides["upload alone"] = upload_alone(server, plain, args.part_size_mb or 8)
    (stored / "plain.bin").unlink()
    sides["zcat | s5cmd pipe"] = s5cmd(server, "pipe", gz, "piped.csv")
    (stored / "piped.csv").unlink()
    sides["s5cmd cp"] = s5cmd(server, "cp", plain, "copied.csv")
    (stored / "copied.csv").unlink()
    plain.unlink()
    st, rss, log, scpu, ssrv = sftppush_run(server, work / "run", gz, args.part_size_mb)
    object_path = work / "s3" / "bench" / "sftpuser1" / "upload" / "big.csv"
    assert object_path.stat().st_size == total, "object size differs from the decompressed size"
    where = ("" if args.rtt_ms is None else f", {args.rtt_ms:g} ms round trip") + \
        (", https" if args.https else "")
    label = f"large 1 file {args.size_mib} MiB{where}"
    mib = total / MiB
    report(f"{label}: inflate alone ({INFLATER.__name__}) and digests", mib / zt, "MiB/s")
    for name, (sec, _, _) in sides.items():
        report(f"{label}: {name}", mib / sec, "MiB/s")
    # A consumer is a daemon: it starts once, not once a file. Its log line's ms runs from
    # the file's open to its verified upload (read, inflate, every request, the verify).
    [ms] = [int(m) for m in re.findall(r" uploaded id=\d+ .* ms=(\d+) ", log)]
    for what, sec in (("sftppush decompress+upload", st),
                      ("sftppush, the file in a running consumer", ms / 1000)):
        for name, target in (("zcat | s5cmd pipe", "1.0"), ("s5cmd cp", "0.9"),
                             ("upload alone", None)):
            report(f"{label}: {what}", mib / sec, "MiB/s",
                   name + (f" (target ratio {target})" if target else ""),
                   mib / sides[name][0])
    print(f"  # sftppush: {st:.2f} s for the process (start, imports, client, queue, the file,"
          f" exit), {ms / 1000:.2f} s for the file (open to verified upload, its log line)",
          flush=True)
    gib = total / 2**30
    print(f"  # CPU s per GiB (client, s3 server): inflate alone {zcpu / gib:.2f}, digests"
          f" alone {dcpu / gib:.2f}; " + "; ".join(
        f"{name} {cpu / gib:.2f}, {srv / gib:.2f}" for name, (_, cpu, srv) in sides.items())
        + f"; sftppush {scpu / gib:.2f}, {ssrv / gib:.2f} ({os.cpu_count()} CPUs here)",
        flush=True)
    report_rss(args.size_mib, rss, log)


if __name__ == "__main__":
    main()
