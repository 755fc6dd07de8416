"""The awscrt fast path against real S3 APIs over HTTP on 127.0.0.1 (moto, rclone serve s3)."""

from __future__ import annotations

import base64
import hashlib
import socket
import subprocess
import sys
import time
import zlib

import pytest

from sftppush import crt
from sftppush.config import S3Config
from sftppush.errors import PermanentError, TransientError
from tests.bench.common import RcloneS3, free_port

pytestmark = pytest.mark.skipif(not crt.available(), reason="awscrt not installed")

ACCESS, SECRET = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


@pytest.fixture(scope="module")
def moto_endpoint():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                             "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def rclone():
    with RcloneS3() as server:
        yield server


def _boto3(endpoint, access=ACCESS, secret=SECRET):
    import boto3

    return boto3.session.Session(aws_access_key_id=access, aws_secret_access_key=secret,
                                 region_name="us-east-1").client("s3", endpoint_url=endpoint)


@pytest.fixture
def moto_bucket(moto_endpoint, request):
    name = "crt-" + hashlib.md5(request.node.name.encode()).hexdigest()[:12]
    _boto3(moto_endpoint).create_bucket(Bucket=name)
    return name


def _uploader(endpoint, **kwargs):
    return crt.CrtUploader(region="us-east-1", credentials=crt.Credentials(ACCESS, SECRET),
                           endpoint_url=endpoint, **kwargs)


def test_put_returns_verified_result_and_object_matches(moto_endpoint, moto_bucket):
    body = b"a,b,c\n" * 1000
    key = "sftpuser1/upload/2026/ä b+c%.csv"
    with _uploader(moto_endpoint) as up:
        result = up.put(moto_bucket, key, body, {"sftppush-source": "sftpuser1"}).result(30)
    assert result.etag == result.md5_hex == hashlib.md5(body).hexdigest()
    assert result.verified_by == "etag"
    assert result.size == len(body)
    obj = _boto3(moto_endpoint).get_object(Bucket=moto_bucket, Key=key, ChecksumMode="ENABLED")
    assert obj["Body"].read() == body
    assert obj["Metadata"] == {"sftppush-source": "sftpuser1"}
    expected_crc = base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode()
    assert obj.get("ChecksumCRC32") == expected_crc


def test_when_required_sends_no_crc_checksum(moto_endpoint, moto_bucket):
    with _uploader(moto_endpoint, s3cfg=S3Config(checksum="when_required")) as up:
        up.put(moto_bucket, "k", b"x" * 10).result(30)
    head = _boto3(moto_endpoint).head_object(Bucket=moto_bucket, Key="k", ChecksumMode="ENABLED")
    assert "ChecksumCRC32" not in head


def test_put_many_uploads_every_item_in_order(rclone):
    bucket = rclone.create_bucket()
    items = [crt.PutItem(bucket, f"many/{i:04d}", f"{i}".encode() * 500) for i in range(300)]
    with crt.CrtUploader(region="us-east-1", endpoint_url=rclone.endpoint, max_in_flight=32,
                         credentials=crt.Credentials(rclone.access_key, rclone.secret_key)) as up:
        outcomes = list(up.put_many(items))
    assert [item for item, _ in outcomes] == items
    assert all(isinstance(r, crt.PutResult) for _, r in outcomes)
    assert rclone.count_objects(bucket, "many/") == 300


def test_from_session_uses_the_boto3_credential_chain(rclone):
    bucket = rclone.create_bucket()
    with crt.CrtUploader.from_session(rclone.session(), endpoint_url=rclone.endpoint) as up:
        assert up.put(bucket, "s", b"hello").result(30).etag == hashlib.md5(b"hello").hexdigest()


def test_missing_bucket_is_permanent(moto_endpoint):
    with _uploader(moto_endpoint) as up, pytest.raises(PermanentError, match="NoSuchBucket"):
        up.put("no-such-bucket-here", "k", b"x").result(30)


def test_wrong_credentials_are_permanent(rclone):
    bucket = rclone.create_bucket()
    with crt.CrtUploader(region="us-east-1", endpoint_url=rclone.endpoint,
                         credentials=crt.Credentials(ACCESS, SECRET)) as up:
        with pytest.raises(PermanentError, match="status=403"):
            up.put(bucket, "k", b"x").result(30)


def test_server_down_is_transient():
    with _uploader(f"http://127.0.0.1:{free_port()}", max_retries=1) as up:
        with pytest.raises(TransientError):
            up.put("bucket", "k", b"x").result(60)


def test_bodies_over_part_size_are_refused(moto_endpoint):
    with _uploader(moto_endpoint, s3cfg=S3Config(part_size_mb=1)) as up:
        with pytest.raises(ValueError, match="too big"):
            up.put("b", "k", b"\0" * (up.max_body + 1))


def test_byte_budget_throttles_but_never_blocks_a_body_larger_than_it(rclone):
    bucket = rclone.create_bucket()
    bodies = [bytes([i]) * 300_000 for i in range(6)]
    with crt.CrtUploader(region="us-east-1", endpoint_url=rclone.endpoint,
                         max_in_flight_bytes=200_000,
                         credentials=crt.Credentials(rclone.access_key, rclone.secret_key)) as up:
        futures = [up.put(bucket, f"b{i}", body) for i, body in enumerate(bodies)]
        assert all(f.result(30).size == 300_000 for f in futures)


def test_uploader_recovers_after_the_store_comes_back():
    with RcloneS3() as server:
        bucket = server.create_bucket()
        with crt.CrtUploader(region="us-east-1", endpoint_url=server.endpoint, max_retries=1,
                             credentials=crt.Credentials(server.access_key,
                                                         server.secret_key)) as up:
            assert up.put(bucket, "before", b"1").result(30).verified_by == "etag"
            server.stop()
            with pytest.raises(TransientError):
                up.put(bucket, "during", b"2").result(60)
            server.start()
            assert up.put(bucket, "after", b"3").result(30).verified_by == "etag"
        assert server.count_objects(bucket) == 2


def test_from_config_uses_endpoint_region_and_environment_credentials(rclone, monkeypatch):
    from pathlib import Path

    from sftppush.config import Defaults, LogConfig

    bucket = rclone.create_bucket()
    for name, value in rclone.env().items():
        monkeypatch.setenv(name, value)
    defaults = Defaults(userpath=Path("/"), s3target=None, awsprofile=None,
                        awsregion="us-east-1", endpoint_url=rclone.endpoint, log=LogConfig())
    with crt.CrtUploader.from_config(defaults, S3Config()) as up:
        assert up.put(bucket, "cfg", b"x").result(30).verified_by == "etag"
