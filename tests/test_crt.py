"""The awscrt fast path against real S3 APIs over HTTP on 127.0.0.1 (moto, rclone serve s3)."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from sftppush import crt
from sftppush.config import Defaults, LogConfig, S3Config
from sftppush.errors import PermanentError, TransientError
from sftppush.locals3 import free_port
from tests.conftest import REPO

needs_crt = pytest.mark.skipif(not crt.available(), reason="awscrt not installed")


def test_without_awscrt_the_module_imports_and_says_so():
    code = ("import sys; sys.modules['awscrt'] = None; from sftppush import crt; "
            "assert not crt.available(); import sftppush.consumer")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def uploader(server, **kwargs) -> crt.CrtUploader:
    return crt.CrtUploader(region="us-east-1", endpoint_url=server.endpoint_url,
                           credentials=crt.Credentials(server.access_key, server.secret_key),
                           **kwargs)


def count(server, bucket: str) -> int:
    return server.client().list_objects_v2(Bucket=bucket).get("KeyCount", 0)


@needs_crt
def test_put_returns_verified_result_and_object_matches(moto_server, s3_client, s3_bucket):
    body = b"a,b,c\n" * 1000
    key = "sftpuser1/upload/2026/ä b+c%.csv"
    with uploader(moto_server) as up:
        result = up.put(s3_bucket, key, body, {"sftppush-source": "sftpuser1"}).result(30)
    assert result.etag == result.md5_hex == hashlib.md5(body).hexdigest()
    assert result.verified_by == "etag"
    assert result.size == len(body)
    obj = s3_client.get_object(Bucket=s3_bucket, Key=key, ChecksumMode="ENABLED")
    assert obj["Body"].read() == body
    assert obj["Metadata"] == {"sftppush-source": "sftpuser1"}
    assert obj.get("ChecksumCRC32") == base64.b64encode(
        zlib.crc32(body).to_bytes(4, "big")).decode()


@needs_crt
def test_when_required_sends_no_crc_checksum(moto_server, s3_client, s3_bucket):
    with uploader(moto_server, s3cfg=S3Config(checksum="when_required")) as up:
        up.put(s3_bucket, "k", b"x" * 10).result(30)
    head = s3_client.head_object(Bucket=s3_bucket, Key="k", ChecksumMode="ENABLED")
    assert "ChecksumCRC32" not in head


@needs_crt
def test_put_many_uploads_every_item_in_order(rclone_s3):
    bucket = rclone_s3.make_bucket("many")
    items = [crt.PutItem(bucket, f"many/{i:04d}", f"{i}".encode() * 500) for i in range(300)]
    with uploader(rclone_s3, max_in_flight=32) as up:
        outcomes = list(up.put_many(items))
    assert [item for item, _ in outcomes] == items
    assert all(isinstance(r, crt.PutResult) and r.verified_by == "etag" for _, r in outcomes)
    assert count(rclone_s3, bucket) == 300


@needs_crt
def test_byte_budget_throttles_but_never_blocks_a_body_larger_than_it(rclone_s3):
    bucket = rclone_s3.make_bucket("budget")
    with uploader(rclone_s3, max_in_flight_bytes=200_000) as up:
        futures = [up.put(bucket, f"b{i}", bytes([i]) * 300_000) for i in range(6)]
        assert all(f.result(30).size == 300_000 for f in futures)


@needs_crt
def test_from_config_uses_endpoint_region_and_environment_credentials(moto_server, s3_bucket):
    # The session-wide fixture has put moto's made-up keys in the environment.
    defaults = Defaults(userpath=Path("/"), s3target=None, awsprofile=None,
                        awsregion="us-east-1", endpoint_url=moto_server.endpoint_url,
                        log=LogConfig())
    with crt.CrtUploader.from_config(defaults, S3Config()) as up:
        assert up.put(s3_bucket, "cfg", b"x").result(30).verified_by == "etag"


@needs_crt
def test_missing_bucket_is_permanent(moto_server):
    with uploader(moto_server) as up, pytest.raises(PermanentError, match="NoSuchBucket"):
        up.put("no-such-bucket-here", "k", b"x").result(30)


@needs_crt
def test_wrong_credentials_are_permanent(rclone_s3):
    bucket = rclone_s3.make_bucket("creds")
    with crt.CrtUploader(region="us-east-1", endpoint_url=rclone_s3.endpoint_url,
                         credentials=crt.Credentials("AKIA" + "X" * 16, "y" * 40)) as up:
        with pytest.raises(PermanentError, match="status=403"):
            up.put(bucket, "k", b"x").result(30)


@needs_crt
def test_nothing_listening_is_transient():
    with crt.CrtUploader(region="us-east-1", endpoint_url=f"http://127.0.0.1:{free_port()}",
                         credentials=crt.Credentials("a", "b"), max_retries=1) as up:
        with pytest.raises(TransientError):
            up.put("bucket", "k", b"x").result(60)


@needs_crt
def test_uploader_recovers_after_the_store_comes_back(rclone_s3):
    bucket = rclone_s3.make_bucket("outage")
    with uploader(rclone_s3, max_retries=1) as up:
        assert up.put(bucket, "before", b"1").result(30).verified_by == "etag"
        rclone_s3.stop()
        with pytest.raises(TransientError):
            up.put(bucket, "during", b"2").result(60)
        rclone_s3.start()
        assert up.put(bucket, "after", b"3").result(30).verified_by == "etag"
    assert count(rclone_s3, bucket) == 2


@needs_crt
def test_bodies_over_part_size_are_refused(moto_server):
    with uploader(moto_server, s3cfg=S3Config(part_size_mb=1)) as up:
        with pytest.raises(ValueError, match="too big"):
            up.put("b", "k", b"\0" * (up.max_body + 1))


@pytest.mark.parametrize(("status", "code"), [(400, "ExpiredToken"), (503, "SlowDown"),
                                              (408, None), (429, None)])
def test_lane_and_boto3_path_call_the_same_answers_transient(status, code):
    from sftppush.errors import PermanentError, TransientError

    body = f"<Error><Code>{code}</Code></Error>".encode() if code else b""
    error = crt._classify(RuntimeError("http"), status, body, "k")
    assert isinstance(error, TransientError), error
    assert isinstance(crt._classify(RuntimeError("http"), 403, b"<Code>AccessDenied</Code>", "k"),
                      PermanentError)
