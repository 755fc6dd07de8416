"""Large files against rclone serve s3 behind the fault proxy, as real processes.

kill -9 of the consumer at ~40% of a 2 GiB gzip's upload: the restarted consumer resumes
(re-reading, not re-sending, what the store holds), so the store receives at most 1.2x the
object; and a part corrupted on the wire is caught, retried, and the file kept until a good
upload. The gzips are generated as numbered 1 MiB members, compressing ~1000:1.
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

from tests.conftest import wait_until
from tests.e2e.system import Product

MB = 2**20
KEY = "sftpuser1/upload/big.dat"


def numbered_gzip(path: Path, mib: int) -> str:
    """A multi-member gzip of `mib` numbered MiB blocks; the sha256 of its decompressed bytes."""
    sha = hashlib.sha256()
    with path.open("wb") as f:
        for i in range(mib):
            block = (b"block %08d\n" % i).ljust(MB, b"\0")
            sha.update(block)
            f.write(gzip.compress(block, 1))
    return sha.hexdigest()


def stored_sha256(server, bucket: str) -> tuple[int, str]:
    """Size and sha256 of the object, streamed from the server itself (not the proxy)."""
    obj = server.client().get_object(Bucket=bucket, Key=KEY)
    sha = hashlib.sha256()
    for block in obj["Body"].iter_chunks(MB):
        sha.update(block)
    return obj["ContentLength"], sha.hexdigest()


def product_behind(proxy, tmp_path: Path, source_tree, server, bucket: str) -> Product:
    config = source_tree.write_config(bucket, consumer={"workers": 1})
    return Product(tmp_path, config,
                   {**server.env(), "SFTPPUSH_DEFAULTS_ENDPOINT_URL": proxy.url})


def test_kill_9_at_40_percent_of_2_gib_resumes_and_sends_at_most_1_2x(
        tmp_path, source_tree, rclone_s3, fault_proxy):
    size = 2048 * MB
    bucket = rclone_s3.make_bucket("resume")
    proxy = fault_proxy(rclone_s3.port)
    sha = numbered_gzip(source_tree.upload / "big.dat.gz", size // MB)
    product = product_behind(proxy, tmp_path, source_tree, rclone_s3, bucket)
    try:
        assert product.cli("rescan").returncode == 0
        product.start("consumer", "consume")
        wait_until(lambda: product.assert_alive() or proxy.bytes_up >= 0.4 * size, 300,
                   "40% of the upload", 0.02)
        product.kill9("consumer")
        at_kill = proxy.bytes_up
        product.start("consumer", "consume", "--drain")
        assert product.procs["consumer"].wait(600) == 0, product.log_tail()
    finally:
        product.stop_all()
    (entry,) = product.entries()
    assert entry["state"] == "done" and entry["sha256"] == sha
    assert stored_sha256(rclone_s3, bucket) == (size, sha)
    (resumed,) = product.events("resuming")  # "resuming upload key=... parts=N"
    assert int(resumed["parts"]) * 8 * MB >= 0.3 * size, resumed
    assert 0.35 * size < at_kill < 0.6 * size
    assert proxy.bytes_up <= 1.2 * size, f"{proxy.bytes_up / size:.2f}x the object"
    assert not (source_tree.upload / "big.dat.gz").exists()


def test_a_part_corrupted_on_the_wire_is_caught_and_the_file_kept_until_a_good_upload(
        tmp_path, source_tree, rclone_s3, fault_proxy):
    size = 40 * MB
    bucket = rclone_s3.make_bucket("corrupt")
    proxy = fault_proxy(rclone_s3.port)
    local = source_tree.upload / "big.dat.gz"
    sha = numbered_gzip(local, size // MB)
    proxy.corrupt_part(3)
    product = product_behind(proxy, tmp_path, source_tree, rclone_s3, bucket)
    try:
        assert product.cli("rescan").returncode == 0
        product.start("consumer", "consume")

        def retried():
            product.assert_alive()
            (entry,) = product.entries()
            return entry if entry["attempts"] or entry["last_error"] else None

        entry = wait_until(retried, 120, "the corrupted part to be caught", 0.1)
        assert "part 3" in entry["last_error"] and "not the MD5" in entry["last_error"]
        assert proxy.flip is None  # the fault was used
        assert local.exists(), "deleted before a good upload"
        wait_until(lambda: product.entries()[0]["state"] == "done", 120, "the retry", 0.2,
                   detail=product.log_tail)
    finally:
        product.stop_all()
    assert stored_sha256(rclone_s3, bucket) == (size, sha)
    assert not local.exists()
