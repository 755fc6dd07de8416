"""`sftppush demo`: the embedded default (SPEC 10) — a local S3, a source, sample files, live.

Owns the demo's layout under one directory and the local S3 it starts (`rclone serve s3` on
127.0.0.1, objects as plain files). It never listens beyond 127.0.0.1 and leaves no process
behind: everything it starts is stopped when it returns.
"""

from __future__ import annotations

import bz2
import gzip
import logging
import os
import time
from pathlib import Path

import yaml

from sftppush.config import load
from sftppush.locals3 import LocalS3
from sftppush.runtime import supervisor

log = logging.getLogger("sftppush.demo")

BUCKET = "demo-bucket"
SOURCE = "demo"


def write_samples(upload: Path) -> list[Path]:
    """A few files like a field logger's: gzip, bzip2 and plain, one in a new nested dir."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    nested = upload / time.strftime("%Y") / time.strftime("%m")
    nested.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"2026-11-25T00:{m:02d}:00Z,inverter-{m % 4},{4200 + 7 * m}\n"
                   for m in range(60))
    samples = {
        nested / f"readings-{stamp}.csv.gz": gzip.compress(("time,device,watts\n" + rows).encode()),
        upload / f"events-{stamp}.log.bz2": bz2.compress(b"inverter-2 fault cleared\n" * 40),
        upload / f"notes-{stamp}.txt": b"plain files are uploaded byte for byte\n",
    }
    for path, data in samples.items():
        # Written under a temporary name and renamed, as SFTP clients do.
        part = path.with_name(path.name + ".filepart")
        part.write_bytes(data)
        os.rename(part, path)
    return list(samples)


def run(directory: Path, log_level: str = "info") -> None:
    directory = directory.absolute()
    upload = directory / "home" / SOURCE / "upload"
    upload.mkdir(parents=True, exist_ok=True)
    (directory / "s3" / BUCKET).mkdir(parents=True, exist_ok=True)
    store = LocalS3(directory / "s3", log=directory / "s3.log")
    config_path = directory / "config.yaml"
    store.start()  # first: its port is known once it listens
    try:
        config_path.write_text(yaml.safe_dump({
            "defaults": {"userpath": str(directory / "home"), "s3target": BUCKET,
                         "awsregion": "us-east-1", "endpoint_url": store.endpoint},
            "watch": {"source": [{"name": SOURCE, "paths": ["/upload"]}]},
            "queue": {"path": str(directory / "queue.db"), "lease_seconds": 60},
            "consumer": {"workers": 2, "s3": {"checksum": "when_required"}},
        }, sort_keys=False))
        cfg = load(config_path, env={})
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AWS_", "SFTPPUSH_")) and k not in ("NOTIFY_SOCKET",)}
        env.update(store.credentials_env())
        print(f"sftppush demo: local S3 at {store.endpoint} (bucket {BUCKET}), objects stored as "
              f"files under {directory / 's3' / BUCKET}/", flush=True)
        print(f"sftppush demo: copy files into {upload}/ and watch them move; Ctrl-C stops.",
              flush=True)

        def ready() -> None:
            for path in write_samples(upload):
                print(f"sftppush demo: dropped sample {path.relative_to(directory)}", flush=True)

        supervisor.run(cfg, global_args=["--config", str(config_path), "--log-level", log_level],
                       env=env, on_ready=ready)
    finally:
        store.stop()
        print(f"sftppush demo: stopped. Objects remain under {directory / 's3' / BUCKET}/; "
              f"queue: sftppush --config {config_path} queue status", flush=True)
