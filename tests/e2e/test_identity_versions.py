"""Issue 14, cases 1, 4 and 6: versions of one path reach S3 in the order they were written.

Real processes (a watcher and two consumers) against moto behind a slowed proxy, so that a
large first version is still uploading when the client sends the path again:
- case 1: a corrected file renamed over the name (temp name + rename), or written in place;
- case 4: a re-send in place that keeps the size and restores the mtime (`sftp put -p`);
- case 6: a consumer killed with -9 leaves claims that the next claim takes back at once,
  not after the 300 s lease.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.conftest import wait_until
from tests.e2e.identity import MIB, Bucketed, body

KEY = "sftpuser1/upload/data.csv"


def started(tmp_path: Path, source_tree, pipeline_config, moto_server, s3_client, s3_bucket,
            fault_proxy, consumers: int = 2, **consumer) -> Bucketed:
    pipeline_config(workers=2, **consumer)
    run = Bucketed.on_moto(tmp_path, source_tree.config_path, moto_server, s3_client,
                           s3_bucket, fault_proxy)
    run.product.start("watcher", "watch")
    wait_until(lambda: any(run.product.events("watching")), 30, "the watcher's watches")
    for n in range(1, consumers + 1):
        run.product.start(f"consumer-{n}", "consume")
    return run


def settle(run: Bucketed, upload: Path) -> None:
    def settled() -> bool:
        run.product.assert_alive()
        st = run.product.status()
        return st["pending"] == st["claimed"] == 0 and not any(upload.iterdir())

    wait_until(settled, 120, "every version uploaded and its file gone", 0.2,
               detail=run.product.entries)


def uploading(run: Bucketed) -> bool:
    return any(e["state"] == "claimed" for e in run.product.entries())


def slowed(run: Bucketed) -> None:
    """The stalled store answers again, at about 6 MB/s: the first upload, held until the
    file was being sent again, still takes seconds."""
    run.proxy.restore()
    run.proxy.slow(0.01)


@pytest.mark.parametrize("how", ["rename_over", "in_place"])
def test_a_newer_version_sent_during_a_slow_upload_is_the_one_left_in_s3(
        how: str, tmp_path: Path, source_tree, pipeline_config, moto_server, s3_client,
        s3_bucket, fault_proxy) -> None:
    run = started(tmp_path, source_tree, pipeline_config, moto_server, s3_client, s3_bucket,
                  fault_proxy)
    run.proxy.stall()  # until the newer version is sent: the older upload cannot end first
    path = source_tree.upload / "data.csv"
    older, newer = body(24 * MIB, 1), body(1 * MIB, 2)
    try:
        path.write_bytes(older)
        wait_until(lambda: uploading(run), 30, "the older version's upload")
        if how == "rename_over":
            temp = source_tree.upload / ".data.csv.tmp"
            temp.write_bytes(newer)
            os.rename(temp, path)
        else:
            with open(path, "r+b") as f:  # O_TRUNC as sftp-server opens it, same inode
                f.truncate(0)
                f.write(newer)
        slowed(run)
        settle(run, source_tree.upload)
    finally:
        run.product.stop_all()
    assert run.read(KEY) == newer
    notes = [e["note"] for e in run.product.entries() if e["path"] == str(path)]
    assert any(n and ("newer version kept" in n or n.startswith("superseded")) for n in notes)


def test_an_in_place_resend_keeping_size_and_mtime_is_uploaded(
        tmp_path: Path, source_tree, pipeline_config, moto_server, s3_client, s3_bucket,
        fault_proxy) -> None:
    # (inode, size, mtime) stay the same: only ctime tells the re-send from the first send.
    run = started(tmp_path, source_tree, pipeline_config, moto_server, s3_client, s3_bucket,
                  fault_proxy)
    run.proxy.stall()  # until the re-send: the first send's upload cannot end first
    path = source_tree.upload / "data.csv"
    older, newer = body(12 * MIB, 1), body(12 * MIB, 2)
    try:
        path.write_bytes(older)
        st = path.stat()
        wait_until(lambda: uploading(run), 30, "the first send's upload")
        with open(path, "r+b") as f:
            f.truncate(0)
            slowed(run)
            time.sleep(0.2)  # the consumer may read an empty or half-written file meanwhile
            f.write(newer)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
        settle(run, source_tree.upload)
    finally:
        run.product.stop_all()
    assert run.read(KEY) == newer


def test_a_killed_consumers_claims_come_back_at_once_not_after_the_lease(
        tmp_path: Path, source_tree, pipeline_config, moto_server, s3_client, s3_bucket,
        fault_proxy) -> None:
    run = started(tmp_path, source_tree, pipeline_config, moto_server, s3_client, s3_bucket,
                  fault_proxy, consumers=1, lease_seconds=300)
    run.proxy.stall()  # the consumer holds its claims, waiting on the store
    bodies = {f"f{i}.csv": body(4096, i) for i in range(4)}
    try:
        for name, data in bodies.items():
            (source_tree.upload / name).write_bytes(data)
        wait_until(lambda: run.product.status()["claimed"] == 4, 30, "four claims held")
        run.product.kill9("consumer-1")
        run.proxy.restore()
        began = time.monotonic()
        run.product.start("consumer-1", "consume")
        settle(run, source_tree.upload)
        took = time.monotonic() - began
    finally:
        run.product.stop_all()
    assert took < 60, f"took {took:.0f}s: the dead consumer's leases were waited out"
    for name, data in bodies.items():
        assert run.read(f"sftpuser1/upload/{name}") == data
