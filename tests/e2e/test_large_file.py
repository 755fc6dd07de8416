"""A 200 MB gzip through OpenSSH's sftp client arrives decompressed, whole, as one object.

Big enough for a multipart upload at the default 64 MiB part size; generated and checked as
streams so the test itself stays small in memory.
"""

from __future__ import annotations

import gzip
import hashlib
import random

from tests.conftest import wait_until
from tests.e2e.system import Product, files_under

SIZE = 200 * 1024 * 1024
CHUNK = 1024 * 1024


def test_200_mb_gzip_over_sftp_arrives_whole(tmp_path, source_tree, rclone_s3, start_sftp):
    bucket = rclone_s3.make_bucket("large")
    upload = source_tree.upload
    local = tmp_path / "big.dat.gz"
    raw_sha = hashlib.sha256()
    rng = random.Random(200)
    with gzip.open(local, "wb", compresslevel=1) as gz:
        for n in range(SIZE // CHUNK):
            # half random (incompressible), half text: a ~100 MB file that inflates to 200 MB
            block = rng.randbytes(CHUNK // 2) + (f"{n:08d}," * (CHUNK // 18 + 1)).encode()[
                :CHUNK // 2]
            raw_sha.update(block)
            gz.write(block)
    product = Product(tmp_path, source_tree.write_config(bucket), rclone_s3.env())
    server = start_sftp({"sftpuser1": upload.parent})
    try:
        product.start("watcher", "watch")
        product.start("consumer", "consume")
        server.batch("sftpuser1", [f"put {local} upload/big.dat.gz.filepart",
                                   "rename -l upload/big.dat.gz.filepart upload/big.dat.gz"])

        def uploaded():
            product.assert_alive()
            st = product.status()
            return st["done"] == 1 and not files_under(upload) and st

        status = wait_until(uploaded, 240, "the 200 MB file to be uploaded", 1,
                          detail=product.status)
    finally:
        product.stop_all()

    assert status["failed"] == 0
    obj = rclone_s3.client().get_object(Bucket=bucket, Key="sftpuser1/upload/big.dat")
    got = hashlib.sha256()
    for block in obj["Body"].iter_chunks(CHUNK):
        got.update(block)
    assert obj["ContentLength"] == SIZE
    assert got.hexdigest() == raw_sha.hexdigest()
