"""The queue's disk fills up: the watcher stops with one clear line and a non-zero status, and
after room is made a restart (with its start-up rescan) recovers every file.

The full disk is real where the test may mount (root): a small tmpfs under the queue, filled up
by a ballast file. Elsewhere the watcher runs with RLIMIT_FSIZE, so its writes fail the way
they do on a full disk (EFBIG instead of ENOSPC).
"""

from __future__ import annotations

import os
import resource
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sftppush.queue.queue import Queue
from tests.conftest import wait_until
from tests.e2e.system import Product, files_under

FILES = 3000
FREE_BYTES = 256 * 1024


class FullDisk:
    """Makes the queue's filesystem full for the next watcher, and makes room again."""

    def __init__(self, state: Path):
        self.state = state
        self.ballast = state / "ballast"
        self.mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=32m,mode=0700", "sftppush-e2e", str(state)],
            capture_output=True).returncode == 0
        self.kind = "tmpfs" if self.mounted else "RLIMIT_FSIZE"

    def fill(self) -> Callable[[], None] | None:
        """Fill the disk; returns the preexec_fn the watcher must start with (or None)."""
        if self.mounted:
            st = os.statvfs(self.state)
            with open(self.ballast, "wb") as f:
                f.truncate(0)
                f.write(b"\0" * (st.f_bavail * st.f_frsize - FREE_BYTES))
            return None
        limit = max(p.stat().st_size for p in self.state.iterdir()) + FREE_BYTES
        return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    def make_room(self) -> None:
        self.ballast.unlink(missing_ok=True)

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.state)], check=True)


@pytest.fixture
def full_disk(tmp_path) -> Iterator[FullDisk]:
    state = tmp_path / "state"
    state.mkdir()
    disk = FullDisk(state)
    yield disk
    disk.close()


def test_disk_full_stops_the_watcher_cleanly_and_a_restart_recovers_every_file(
        tmp_path, source_tree, full_disk, moto_server, s3_client, s3_bucket):
    upload, queue_path = source_tree.upload, source_tree.queue_path
    assert queue_path.parent == full_disk.state
    config = source_tree.write_config(s3_bucket, queue={"lease_seconds": 5})
    Queue(queue_path).close()
    product = Product(tmp_path, config, moto_server.env())
    try:
        watcher = product.start("watcher", "watch", preexec_fn=full_disk.fill())
        wait_until(lambda: product.status(), 30, "the watcher to open the queue")
        for i in range(FILES):
            d = upload / f"d{i // 500}"
            d.mkdir(exist_ok=True)
            (d / f"f{i:05d}.csv").write_bytes(f"{i}\n".encode())
        wait_until(lambda: watcher.poll() is not None, 60,
                 f"the watcher to stop on a full disk ({full_disk.kind})")
        log = (product.logs / "watcher.0.log").read_text(errors="replace")
        final = [line for line in log.splitlines() if line.startswith("sftppush:")]

        assert watcher.returncode == 1, log[-2000:]
        assert "Traceback" not in log, log[-2000:]
        assert len(final) == 1 and str(queue_path) in final[0], log[-2000:]

        full_disk.make_room()
        product.start("watcher", "watch")
        product.start("consumer", "consume")

        def settled():
            product.assert_alive()
            st = product.status()
            return st if st["pending"] == st["claimed"] == 0 and not files_under(upload) else None

        status = wait_until(settled, 180, "every file to be uploaded after the restart", 1,
                          detail=lambda: (product.status(), files_under(upload)[:3]))
    finally:
        product.stop_all()

    keys = {o["Key"] for page in s3_client.get_paginator("list_objects_v2").paginate(
        Bucket=s3_bucket) for o in page.get("Contents", [])}
    assert status["failed"] == 0
    assert len(keys) == FILES
    assert f"sftpuser1/upload/d5/f{FILES - 1:05d}.csv" in keys
