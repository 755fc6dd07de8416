"""Never loses a file: real SFTP uploads, kill -9s, and an S3 outage, all in one run.

A watcher and two consumers run as separate processes against `rclone serve s3` behind a
fault proxy. SFTP clients (paramiko and OpenSSH `sftp -b`) write a mixed workload into new
nested directories, in place and by temp name + rename, while the test kills consumers three
times and the watcher once (restarting each), and cuts S3 for 30 s. Then every file must be in
S3 under the right key with the right bytes, none failed, none left on disk, and uploads of
the same version counted and no more than the entries that were in flight when things broke.

Scale: SFTPPUSH_E2E_FILES (default 1500; 5000 for the full local run of issue 8) files written
over SFTPPUSH_E2E_WRITE_SECONDS (default 60).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import urllib.parse
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.conftest import wait_until
from tests.e2e.system import Product, files_under
from tests.e2e.workload import Upload, make_uploads, send_with_openssh, send_with_paramiko

FILES = int(os.environ.get("SFTPPUSH_E2E_FILES", "1500"))
WRITE_SECONDS = float(os.environ.get("SFTPPUSH_E2E_WRITE_SECONDS", "60"))
OUTAGE_SECONDS = 30.0
LEASE_SECONDS = 5
WRITERS = ("paramiko", "paramiko", "paramiko", "openssh", "openssh")
CHUNK = 25  # files per SFTP session


class Writers:
    """SFTP clients in threads, each sending its share in sessions paced over `seconds`."""

    def __init__(self, server, uploads: list[Upload], staging: Path, seconds: float):
        self.errors: list[BaseException] = []
        self._threads = [
            threading.Thread(target=self._run,
                             args=(kind, server, uploads[n::len(WRITERS)], staging / str(n),
                                   seconds), name=f"writer-{n}-{kind}")
            for n, kind in enumerate(WRITERS)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def join(self, timeout: float) -> None:
        for t in self._threads:
            t.join(timeout)
        assert not any(t.is_alive() for t in self._threads), "SFTP writers did not finish"
        assert not self.errors, f"SFTP writers failed: {self.errors!r}"

    def _run(self, kind, server, share, staging, seconds) -> None:
        try:
            chunks = [share[i:i + CHUNK] for i in range(0, len(share), CHUNK)]
            t0 = time.monotonic()
            for k, chunk in enumerate(chunks):
                time.sleep(max(0.0, t0 + k * seconds / len(chunks) - time.monotonic()))
                if kind == "paramiko":
                    send_with_paramiko(server, "sftpuser1", chunk)
                else:
                    send_with_openssh(server, "sftpuser1", chunk, staging / str(k))
        except BaseException as exc:  # reported by join()
            self.errors.append(exc)


def test_whole_system_loses_nothing_through_kills_and_an_s3_outage(
        tmp_path, source_tree, rclone_s3, fault_proxy, start_sftp):
    began = time.monotonic()
    bucket = rclone_s3.make_bucket("ingest")
    proxy = fault_proxy(rclone_s3.port)
    upload_dir, queue_path = source_tree.upload, source_tree.queue_path
    config = source_tree.write_config(bucket, queue={"lease_seconds": LEASE_SECONDS},
                                      consumer={"workers": 4, "max_attempts": 3})
    env = {**rclone_s3.env(), "SFTPPUSH_DEFAULTS_ENDPOINT_URL": proxy.url}
    product = Product(tmp_path, config, env)
    server = start_sftp({"sftpuser1": upload_dir.parent})
    uploads = make_uploads(FILES)
    in_flight_at_kills: list[int] = []

    def kill_consumer(name: str) -> None:
        # Frozen first, so the claims held at the moment of death can be counted; and frozen
        # again until some are held (for up to 5 s), so the kill hits work in flight.
        give_up = time.monotonic() + 5
        while True:
            product.pause(name)
            claimed = product.claimed_now(queue_path)
            if claimed or time.monotonic() > give_up:
                break
            product.resume(name)
            time.sleep(0.02)
        in_flight_at_kills.append(claimed)
        product.kill9(name)
        product.start(name, "consume")

    def at(seconds: float) -> None:
        time.sleep(max(0.0, t0 + seconds * WRITE_SECONDS / 60 - time.monotonic()))

    try:
        product.start("watcher", "watch")
        product.start("consumer-1", "consume")
        product.start("consumer-2", "consume")
        writers = Writers(server, uploads, tmp_path / "staging", WRITE_SECONDS)
        t0 = time.monotonic()
        writers.start()

        at(6)
        kill_consumer("consumer-1")
        at(14)
        product.kill9("watcher")
        time.sleep(3)  # files finished now are only found by the restarted watcher's rescan
        product.start("watcher", "watch")
        at(20)
        kill_consumer("consumer-2")
        at(24)
        proxy.cut()
        cut_at = time.monotonic()
        reset_at_cut = proxy.reset_count
        at(38)
        kill_consumer("consumer-1")  # while it retries through the outage
        time.sleep(max(0.0, cut_at + OUTAGE_SECONDS - time.monotonic()))
        proxy.restore()
        outage = time.monotonic() - cut_at

        writers.join(timeout=600)
        written = time.monotonic() - t0

        def settled():
            product.assert_alive()
            st = product.status()
            return st if st["pending"] == st["claimed"] == 0 and not files_under(
                upload_dir) else None

        status = wait_until(settled, 240, "the queue to drain and the tree to empty", 1,
                          detail=lambda: (product.status(), files_under(upload_dir)[:5]))
        for name in ("watcher", "consumer-1", "consumer-2"):
            assert product.alive(name), f"{name} died:\n{product.log_tail()}"
            assert product.stop(name) == 0, f"{name} did not stop cleanly:\n{product.log_tail()}"
    finally:
        product.stop_all()

    assert status["failed"] == 0, product.entries("failed")[:5]
    s3 = rclone_s3.client()
    keys = {o["Key"]: o["Size"] for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket) for o in page.get("Contents", [])}
    expected = {u.key: u for u in uploads}
    assert sorted(set(keys) - set(expected))[:10] == [], "objects nobody wrote"
    assert sorted(set(expected) - set(keys))[:10] == [], "files lost"

    def content_ok(u: Upload) -> bool:
        obj = s3.get_object(Bucket=bucket, Key=u.key)
        body = obj["Body"].read()
        meta = {k.lower(): v for k, v in obj["Metadata"].items()}  # rclone capitalizes them
        return (body == u.expected
                and meta.get("sftppush-sha256") == hashlib.sha256(body).hexdigest())

    with ThreadPoolExecutor(8) as pool:
        checked = zip(uploads, pool.map(content_ok, uploads), strict=True)
        wrong = [u.key for u, ok in checked if not ok]
    assert wrong[:10] == [], f"{len(wrong)} objects with wrong bytes or sha256"

    # Uploads as S3 saw them: every PUT (or multipart completion) that went through the proxy
    # whole, and, as a cross-check, the consumers' own "uploaded" log lines.
    puts = Counter(_key_of(target, bucket) for method, target in proxy.requests
                   if (method == "PUT" and "partNumber=" not in target)
                   or (method == "POST" and "uploadId=" in target))
    logged = Counter(e["key"] for e in product.events("uploaded"))
    assert set(expected) <= set(puts), "the proxy did not see every upload: tap broken?"
    duplicates = sum(n - 1 for n in puts.values())
    bound = sum(in_flight_at_kills) + reset_at_cut
    print(f"\nwhole system: files={FILES} kills=consumer x3 + watcher x1 "
          f"outage={outage:.0f}s writing={written:.0f}s wall={time.monotonic() - began:.0f}s "
          f"done={status['done']} duplicates={duplicates} "
          f"(logged {sum(n - 1 for n in logged.values())}) "
          f"in_flight_at_kills={in_flight_at_kills} connections_reset_at_cut={reset_at_cut} "
          f"refused_during_outage={proxy.refused}")
    assert proxy.refused > 0, "the outage never touched a consumer: the test proved nothing"
    assert sum(in_flight_at_kills) > 0, "no kill hit work in flight: the test proved nothing"
    assert duplicates <= bound, (duplicates, in_flight_at_kills, reset_at_cut)


def _key_of(target: str, bucket: str) -> str:
    """The object key of a path-style request target `/bucket/key?query`."""
    path = urllib.parse.unquote(target.partition("?")[0])
    return path.removeprefix(f"/{bucket}/")
