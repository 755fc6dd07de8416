"""Months unattended (SPEC 11, issue 16): N small files (4 KiB gzip) and L large ones through
`sftppush run --consumers 2` against a loopback `rclone serve s3`, with queue.keep_done of one
minute, while `sftppush metrics` serves /metrics read-only. Every `--every` files it prints the
consumers' and the watcher's RSS, open fds and threads, the queue file's size with its WAL,
and checks that a scrape of the metrics endpoint matches the queue's own status.

Pass: after warm-up (the first two rows) RSS grows by at most 10 MB, fds and threads stay
constant, the queue file is bounded. Prints a verdict; asserts nothing, like every benchmark.

    python -m tests.bench.bench_soak [--files 200000] [--large 20] [--large-mb 256]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from sftppush.locals3 import free_port
from sftppush.status import file_bytes
from tests.bench.common import REGION, SOURCE, RcloneS3, remaining_files, small_body
from tests.conftest import cli_argv

MB = 10**6


def proc_info(pid: int) -> dict[str, int]:
    """RSS (bytes), open fds and threads of a running process, from /proc."""
    status = dict(line.split(":", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines())
    return {"rss": int(status["VmRSS"].split()[0]) * 1024,
            "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": int(status["Threads"])}


def children(pid: int) -> dict[str, int]:
    """The `run` supervisor's children by role: watcher, consumer-1, consumer-2."""
    found, n = {}, 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            if b"watch" in argv:
                found["watcher"] = int(child)
            elif b"consume" in argv:
                n += 1
                found[f"consumer-{n}"] = int(child)
    return found


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {s.name + "".join(f"{{{v}}}" for v in s.labels.values()): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def status(config: Path, env: dict[str, str]) -> dict:
    out = subprocess.run(cli_argv("--config", config, "queue", "status", "--json"), env=env,
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def write_large(path: Path, size: int) -> None:
    """A gzip file of `size` decompressed bytes, written in a stream."""
    block = b"".join(small_body(i, 64 * 1024) for i in range(16))  # 1 MiB, compressible
    with gzip.open(path.with_suffix(".tmp"), "wb", compresslevel=1) as f:
        for _ in range(size // len(block)):
            f.write(block)
    path.with_suffix(".tmp").rename(path)  # the watcher takes the rename (moved_to)


class Soak:
    def __init__(self, server: RcloneS3, root: Path, bucket: str) -> None:
        self.server, self.root = server, root
        self.home = root / "home"
        self.upload = self.home / SOURCE / "upload"
        self.upload.mkdir(parents=True)
        self.queue = root / "queue.db"
        self.config = root / "config.yaml"
        self.config.write_text(yaml.safe_dump({
            "defaults": {"userpath": str(self.home), "s3target": bucket,
                         "endpoint_url": server.endpoint, "awsregion": REGION,
                         "log": {"level": "warning"}},
            "watch": {"source": [{"name": SOURCE, "paths": ["/upload"]}],
                      "ignore": ["*.tmp"]},
            "queue": {"path": str(self.queue), "keep_done": "1m"},
        }))
        self.env = server.env()
        self.port = free_port()
        self.procs: list[subprocess.Popen] = []

    def start(self) -> None:
        for name, args in (("run", ("run", "--consumers", "2")),
                           ("metrics", ("metrics", "--listen", f"127.0.0.1:{self.port}"))):
            with open(self.root / f"{name}.log", "wb") as log:
                self.procs.append(subprocess.Popen(cli_argv("--config", self.config, *args),
                                                   env=self.env, stdout=log, stderr=log))
            time.sleep(2.0)

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(150)

    def wait_uploaded(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while remaining_files(self.upload) and time.monotonic() < deadline:
            time.sleep(0.2)
        if remaining_files(self.upload):
            raise RuntimeError(f"files left on disk after {timeout:.0f} s; logs in {self.root}")

    def row(self, sent: int) -> dict:
        procs = children(self.procs[0].pid)
        before = status(self.config, self.env)
        metrics = scrape(self.port)
        after = status(self.config, self.env)
        # The counters can only grow between the two status reads: the scrape is in between.
        match = (before["uploads_total"] <= metrics["sftppush_upload_files_total"]
                 <= after["uploads_total"])
        row = {"files": sent, "uploads": after["uploads_total"], "done": after["done"],
               "queue_mb": file_bytes(self.queue) / MB, "metrics_match": match}
        for name, pid in sorted(procs.items()):
            row[name] = proc_info(pid)
        return row


def show(row: dict) -> None:
    roles = [k for k in row if k.startswith(("consumer", "watcher"))]
    cells = [f"{row['files']:>8,}", f"{row['done']:>7,}", f"{row['queue_mb']:>7.1f}"]
    cells += [f"{row[r]['rss'] / MB:6.1f} {row[r]['fds']:>3} {row[r]['threads']:>3}"
              for r in roles]
    cells.append("yes" if row["metrics_match"] else "NO")
    print(" | ".join(cells), flush=True)


def verdict(rows: list[dict]) -> None:
    after = rows[2:] if len(rows) > 3 else rows[1:]
    roles = [k for k in rows[0] if k.startswith(("consumer", "watcher"))]
    for role in roles:
        rss = [r[role]["rss"] for r in after]
        fds = {r[role]["fds"] for r in after}
        threads = {r[role]["threads"] for r in after}
        print(f"{role}: RSS growth after warm-up {(rss[-1] - rss[0]) / MB:+.1f} MB"
              f" (max {(max(rss) - rss[0]) / MB:+.1f}), fds {sorted(fds)}, threads"
              f" {sorted(threads)}", flush=True)
    sizes = [r["queue_mb"] for r in after]
    print(f"queue file with WAL: {min(sizes):.1f}-{max(sizes):.1f} MB after warm-up,"
          f" last {sizes[-1]:.1f} MB; metrics matched the queue in"
          f" {sum(r['metrics_match'] for r in rows)}/{len(rows)} scrapes", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=200_000)
    parser.add_argument("--large", type=int, default=20)
    parser.add_argument("--large-mb", type=int, default=256)
    parser.add_argument("--every", type=int, default=10_000)
    args = parser.parse_args()
    blobs = [gzip.compress(small_body(i), 6) for i in range(1000)]  # reused: 4 KiB each
    large_every = max(1, args.files // max(1, args.large))
    rows: list[dict] = []
    started = time.monotonic()
    with RcloneS3() as server, tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        soak = Soak(server, Path(tmp), server.create_bucket())
        soak.start()
        try:
            print("   files |    done | queueMB | " + " | ".join(
                f"{r} RSS-MB fds thr" for r in ("consumer-1", "consumer-2", "watcher"))
                  + " | metrics=queue", flush=True)
            sent = large = 0
            while sent < args.files:
                chunk = soak.upload / f"c{sent // args.every:04d}"
                chunk.mkdir()
                for i in range(min(args.every, args.files - sent)):
                    (chunk / f"f{i:05d}.csv.gz").write_bytes(blobs[(sent + i) % len(blobs)])
                    if (sent + i + 1) % large_every == 0 and large < args.large:
                        write_large(chunk / f"large{large:02d}.bin.gz", args.large_mb * 2**20)
                        large += 1
                sent += min(args.every, args.files - sent)
                soak.wait_uploaded(timeout=600 + args.large_mb)
                rows.append(soak.row(sent))
                show(rows[-1])
        finally:
            soak.stop()
    print(f"# {args.files:,} small + {args.large} x {args.large_mb} MiB files in"
          f" {time.monotonic() - started:.0f} s, keep_done 1 min", flush=True)
    verdict(rows)


if __name__ == "__main__":
    main()
