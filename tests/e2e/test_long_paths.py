"""Paths past the system's limits, through `sftppush run` against moto: a key over S3's 1,024
bytes, and a path over PATH_MAX (4,096 bytes, which a user makes by working relative to a
directory). Each is queued and ends `failed` at once with a reason that names the limit; the
file stays where it is. On 05b1e90 the first was sent to the store (AWS answers
KeyTooLongError, retried for ever), and the second was never queued (`File name too long`).
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.conftest import wait_until
from tests.e2e.system import Product


def deep_file(top: Path, levels: int, name_bytes: int, data: bytes) -> bytes:
    """A file `levels` directories below `top`, each name `name_bytes` long, made relative
    to the directory before (as a client can, whatever the length); its absolute path."""
    top.mkdir()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    path = os.fsencode(top)
    try:
        for level in range(levels):
            name = b"%03d" % level + b"d" * (name_bytes - 3)
            os.mkdir(name, dir_fd=fd)
            next_fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd, path = next_fd, path + b"/" + name
        out = os.open(b"data.csv", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=fd)
        os.write(out, data)
        os.close(out)
    finally:
        os.close(fd)
    return path + b"/data.csv"


def exists(path: bytes) -> bool:
    """Whether the file is still there, however long its path."""
    parent, name = path.rsplit(b"/", 1)
    fd = os.open(b"/", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parent.strip(b"/").split(b"/"):
            next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        return os.fsdecode(name) in os.listdir(fd)
    finally:
        os.close(fd)


def test_keys_and_paths_past_the_limits_end_failed_at_once_naming_the_limit(
        tmp_path, source_tree, s3_bucket, s3_env, s3_client):
    up = source_tree.upload
    at_start = deep_file(up / "at-start", 22, 240, b"present at start")  # ~5,400 bytes
    config = source_tree.write_config(s3_bucket, defaults={"log": {"level": "info"}})
    product = Product(tmp_path, config, s3_env)

    def failed(paths: set[bytes]) -> list[dict]:
        product.assert_alive()
        entries = [e for e in product.entries("failed") if os.fsencode(e["path"]) in paths]
        return entries if len(entries) == len(paths) else []

    try:
        product.start("run", "run", "--consumers", "1")
        product.wait_watching()
        long_key = deep_file(up / "keys", 9, 220, b"a key of about 2,000 bytes")
        long_path = deep_file(up / "while-running", 22, 240, b"made while running")
        entries = wait_until(lambda: failed({at_start, long_key, long_path}), 60,
                             "the three entries failed",
                             detail=lambda: (product.entries(), product.log_tail()))
        plain = write_plain(up)
        wait_until(lambda: not plain.exists(), 30, "a plain file uploaded meanwhile")
        failures = product.status()["failures"]
    finally:
        product.stop_all()
    by_path = {os.fsencode(e["path"]): e for e in entries}
    key_error = by_path[long_key]["last_error"]
    assert key_error.startswith("key too long: ") and "S3 allows at most 1024" in key_error
    assert by_path[long_key]["attempts"] == 1, "final: not retried"
    for path in (at_start, long_path):
        assert len(path) > 4096
        error = by_path[path]["last_error"]
        assert "S3 allows at most 1024" in error and "over PATH_MAX (4096)" in error, error
        assert by_path[path]["attempts"] == 1
    assert all(exists(p) for p in (at_start, long_key, long_path)), "failed files stay"
    assert failures == {"key_too_long": 3}, "counted under their own reason, not other"
    keys = {o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"]}
    assert keys == {"sftpuser1/upload/plain.csv"}


def write_plain(up: Path) -> Path:
    (up / "plain.csv").write_bytes(b"an ordinary file")
    return up / "plain.csv"
