"""Hostile and odd input, in one running system: each gets the right outcome, and nothing from
outside the user's tree ever reaches S3.

One watcher and one consumer run against moto; the inputs are written once (module fixture)
and each test below checks one of them.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import uuid
from pathlib import Path

import pytest

from tests.conftest import SourceTree, inotify_budget, wait_until
from tests.e2e.sftp_server import SftpServer
from tests.e2e.system import Product

CAP = 1 << 20  # max_decompressed_bytes for this run
SOURCE_KEY = "sftpuser1/upload"


class Run:
    def __init__(self, base: Path, product: Product, s3, bucket: str, upload: Path,
                 outside: Path, secret: bytes):
        self.base, self.product, self.s3, self.bucket = base, product, s3, bucket
        self.upload, self.outside, self.secret = upload, outside, secret
        self.open_file = None  # a paramiko file still open for writing
        self.sessions = contextlib.ExitStack()

    def objects(self) -> dict[str, bytes]:
        out = {}
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            for o in page.get("Contents", []):
                out[o["Key"]] = self.s3.get_object(Bucket=self.bucket,
                                                   Key=o["Key"])["Body"].read()
        return out

    def entry(self, name: str | bytes) -> dict | None:
        """The queue entry of upload/NAME (the newest, if several)."""
        shown = os.fsencode(self.upload / os.fsdecode(name)).decode("utf-8", "backslashreplace")
        return next((e for e in self.product.entries() if e["path"] == shown), None)

    def assert_never_uploaded(self, name: str) -> None:
        assert not [k for k in self.objects() if k.startswith(f"{SOURCE_KEY}/{name}")]
        e = self.entry(name)
        assert e is None or e["state"] != "done", e


@pytest.fixture(scope="module", params=["openat2", "walk"])
def run(request, tmp_path_factory, moto_server, ssh_keys):
    """The consumer resolves paths with openat2, or with the walk of openat calls."""
    base = tmp_path_factory.mktemp("hostile")
    inotify_budget(base)
    tree = SourceTree(base)
    upload = tree.upload
    outside = base / "outside"
    (outside / "dir").mkdir(parents=True)
    secret = f"TOP-SECRET-{uuid.uuid4()}".encode()
    (outside / "secret.csv").write_bytes(secret)
    (outside / "dir" / "secret2.csv").write_bytes(secret)
    s3 = moto_server.client()
    bucket = f"hostile-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    config = tree.write_config(bucket, queue={"lease_seconds": 5}, consumer={
        "workers": 2, "max_attempts": 2, "max_decompressed_bytes": CAP})
    product = Product(base, config, {**moto_server.env(),
                                     "SFTPPUSH_OPENAT2": "0" if request.param == "walk" else "1"})
    server = SftpServer(ssh_keys, {"sftpuser1": upload.parent}, base / "sftp.log").start()
    r = Run(base, product, s3, bucket, upload, outside, secret)
    try:
        product.start("watcher", "watch")
        product.start("consumer", "consume")
        wait_until(lambda: tree.queue_path.exists(), 30, "the queue file")
        # What a local user (or a chrooted SFTP user, whose absolute link targets mean
        # something else outside the chroot) can leave in the tree:
        os.symlink(outside / "secret.csv", upload / "evil-link.csv")
        os.symlink(outside / "dir", upload / "evil-dir")
        os.link(outside / "secret.csv", upload / "hard.csv")
        os.mkfifo(upload / "pipe.csv")
        (upload / os.fsdecode(b"caf\xe9.csv")).write_bytes(b"non-utf8 name\n")
        with server.paramiko("sftpuser1") as sftp:
            sftp.putfo(io.BytesIO(gzip.compress(b"\0" * (20 * CAP), mtime=0)),
                       "/upload/bomb.csv.gz")
            whole = gzip.compress(os.urandom(200_000), mtime=0)
            sftp.putfo(io.BytesIO(whole[: len(whole) // 2]), "/upload/truncated.csv.gz")
            sftp.putfo(io.BytesIO(b""), "/upload/empty.csv")
            sftp.putfo(io.BytesIO(b""), "/upload/empty.gz")
            sftp.putfo(io.BytesIO(gzip.compress(b"good\n" * 1000)), "/upload/good.csv.gz")
        # A slow client still writing: opened, some bytes written and flushed, not closed.
        r.open_file = r.sessions.enter_context(server.paramiko("sftpuser1")).open(
            "/upload/slow.csv", "w")
        r.open_file.write(b"first half\n")
        r.open_file.flush()

        def settled():
            st = product.status()
            return st["pending"] == st["claimed"] == 0 and f"{SOURCE_KEY}/good.csv" in r.objects()
        wait_until(settled, 120, "every entry to finish", 1, detail=product.status)
        yield r
    finally:
        r.sessions.close()
        product.stop_all()
        server.stop()


def test_nothing_from_outside_the_tree_is_in_s3(run):
    leaked = [k for k, body in run.objects().items() if run.secret in body]
    assert leaked == []
    assert (run.outside / "secret.csv").read_bytes() == run.secret


def test_symlink_to_a_file_outside_is_failed_not_uploaded(run):
    run.assert_never_uploaded("evil-link.csv")
    assert (run.upload / "evil-link.csv").is_symlink()  # left where it was
    e = run.entry("evil-link.csv")
    assert e is not None and e["state"] == "failed", e
    assert "symlink" in e["last_error"], e


def test_symlinked_directory_is_not_followed(run):
    assert not [k for k in run.objects() if "evil-dir" in k]
    assert (run.outside / "dir" / "secret2.csv").read_bytes() == run.secret


def test_hard_link_to_a_file_outside_is_failed_with_reason(run):
    run.assert_never_uploaded("hard.csv")
    e = run.entry("hard.csv")
    assert e is not None and e["state"] == "failed", e
    assert "link" in e["last_error"].lower(), e
    assert os.stat(run.upload / "hard.csv").st_nlink == 2


def test_fifo_is_refused_without_blocking_the_consumer(run):
    run.assert_never_uploaded("pipe.csv")
    e = run.entry("pipe.csv")
    assert e is not None and e["state"] == "failed", e
    assert "regular" in e["last_error"] or "FIFO" in e["last_error"], e
    assert run.objects()[f"{SOURCE_KEY}/good.csv"] == b"good\n" * 1000  # written after it


def test_gzip_bomb_over_the_cap_is_failed_and_leaves_nothing_in_s3(run):
    run.assert_never_uploaded("bomb.csv")
    e = run.entry("bomb.csv.gz")
    assert e is not None and e["state"] == "failed", e
    assert "max_decompressed_bytes" in e["last_error"], e
    assert run.s3.list_multipart_uploads(Bucket=run.bucket).get("Uploads", []) == []
    assert (run.upload / "bomb.csv.gz").exists()


def test_truncated_gzip_is_failed_and_kept(run):
    run.assert_never_uploaded("truncated.csv")
    e = run.entry("truncated.csv.gz")
    assert e is not None and e["state"] == "failed" and e["last_error"], e
    assert (run.upload / "truncated.csv.gz").exists()


def test_non_utf8_name_is_uploaded_under_a_percent_escaped_key(run):
    key = f"{SOURCE_KEY}/caf%E9.csv"
    assert run.objects()[key] == b"non-utf8 name\n"
    head = run.s3.head_object(Bucket=run.bucket, Key=key)
    assert head["Metadata"].get("sftppush-original-name")
    assert not (run.upload / os.fsdecode(b"caf\xe9.csv")).exists()


def test_zero_byte_files_are_uploaded_empty(run):
    objects = run.objects()
    assert objects[f"{SOURCE_KEY}/empty.csv"] == b""
    assert objects[f"{SOURCE_KEY}/empty.gz"] == b""  # no gzip magic: byte for byte, name kept
    assert not (run.upload / "empty.csv").exists()
    assert not (run.upload / "empty.gz").exists()


def test_file_still_open_for_writing_waits_for_its_close(run):
    assert f"{SOURCE_KEY}/slow.csv" not in run.objects()
    assert (run.upload / "slow.csv").read_bytes() == b"first half\n"

    run.open_file.write(b"second half\n")
    run.open_file.close()
    run.open_file = None
    wait_until(lambda: f"{SOURCE_KEY}/slow.csv" in run.objects(), 60, "slow.csv after its close")
    assert run.objects()[f"{SOURCE_KEY}/slow.csv"] == b"first half\nsecond half\n"


def test_each_failure_is_counted_under_the_reason_its_error_carries(run):
    """The metric label is the class the error was raised with: the two symlinks (to a file,
    to a directory), the hard link and the FIFO are refused, the bomb is too large, the
    truncated gzip corrupt."""
    assert run.product.status()["failures"] == {"refused": 4, "too_large": 1, "corrupt": 1}
