"""The awscrt fast path against real S3 APIs over HTTP on 127.0.0.1 (moto, rclone serve s3)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from sftppush.config import Defaults, LogConfig, S3Config
from sftppush.errors import PermanentError, TransientError
from sftppush.locals3 import free_port
from sftppush.sink import crt
from sftppush.sink.answers import classify
from sftppush.sink.s3 import Sink
from sftppush.sink.transfer import RetryPolicy, Transfer
from tests.conftest import REPO


def test_without_awscrt_the_module_imports_and_says_so():
    code = ("import sys; sys.modules['awscrt'] = None; from sftppush.sink import crt; "
            "assert not crt.available(); import sftppush.runtime.consumer")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def uploader(server, s3cfg: S3Config | None = None, **transfer) -> Sink:
    """The sink with its fast transport, on `server`'s endpoint; the credentials are the
    environment's (the session-wide fixture's made-up keys, unless a test sets others)."""
    defaults = Defaults(userpath=Path("/"), s3target=None, awsprofile=None,
                        awsregion="us-east-1", endpoint_url=server.endpoint_url,
                        log=LogConfig())
    transfer.setdefault("retry", RetryPolicy(attempts=2, initial=0.01, maximum=0.05))
    sink = Sink.from_config(defaults, s3cfg or S3Config(), Transfer(fast=True, **transfer))
    assert sink.fast
    return sink


def count(server, bucket: str) -> int:
    return server.client().list_objects_v2(Bucket=bucket).get("KeyCount", 0)


@contextlib.contextmanager
def closing(sink: Sink):
    try:
        yield sink
    finally:
        sink.close()


def test_put_returns_verified_result_and_object_matches(moto_server, s3_client, s3_bucket):
    body = b"a,b,c\n" * 1000
    key = "sftpuser1/upload/2026/ä b+c%.csv"
    with closing(uploader(moto_server)) as up:
        result = up.put(s3_bucket, key, body, {"sftppush-source": "sftpuser1"}).result(30)
    assert result.verified_by == "crc64nvme"  # moto answers the checksum it was sent
    assert result.bytes_out == len(body) and result.parts == 0
    assert result.sha256 == hashlib.sha256(body).hexdigest()
    obj = s3_client.get_object(Bucket=s3_bucket, Key=key, ChecksumMode="ENABLED")
    assert obj["Body"].read() == body
    assert obj["Metadata"] == {"sftppush-source": "sftpuser1", "sftppush-sha256": result.sha256}
    from awscrt import checksums
    assert obj.get("ChecksumCRC64NVME") == base64.b64encode(
        checksums.crc64nvme(body).to_bytes(8, "big")).decode()


def test_when_required_sends_no_crc_checksum(moto_server, s3_client, s3_bucket):
    with closing(uploader(moto_server, S3Config(checksum="when_required"))) as up:
        up.put(s3_bucket, "k", b"x" * 10, {}).result(30)
    head = s3_client.head_object(Bucket=s3_bucket, Key="k", ChecksumMode="ENABLED")
    assert not [k for k in head if k.startswith("Checksum")]


def test_many_puts_in_flight_all_arrive_verified_by_etag_on_rclone(rclone_s3):
    bucket = rclone_s3.make_bucket("many")
    results = {}
    with closing(uploader(rclone_s3, in_flight=32)) as up:
        # A store under load may answer a PUT 500 now and then: the consumer sends such a
        # PUT again later, and so does this test, a few rounds at most.
        for _ in range(3):
            futures = {i: up.put(bucket, f"many/{i:04d}", f"{i}".encode() * 500, {})
                       for i in range(300) if i not in results}
            for i, future in futures.items():
                with contextlib.suppress(TransientError):
                    results[i] = future.result(30)
    results = [results[i] for i in sorted(results)]
    assert [r.key for r in results] == [f"many/{i:04d}" for i in range(300)]
    assert {r.verified_by for r in results} == {"etag"}  # rclone returns no checksum
    assert count(rclone_s3, bucket) == 300


def test_byte_budget_throttles_but_never_blocks_a_body_larger_than_it(rclone_s3):
    bucket = rclone_s3.make_bucket("budget")
    with closing(uploader(rclone_s3)) as up:
        transport = up.transport
        transport._slots.max_bytes = 200_000  # a budget smaller than one body
        futures = [up.put(bucket, f"b{i}", bytes([i]) * 300_000, {}) for i in range(6)]
        assert all(f.result(30).bytes_out == 300_000 for f in futures)


def test_missing_bucket_is_permanent(moto_server):
    with closing(uploader(moto_server)) as up, pytest.raises(PermanentError, match="NoSuchBucket"):
        up.put("no-such-bucket-here", "k", b"x", {}).result(30)


def test_wrong_credentials_are_permanent(rclone_s3, monkeypatch):
    bucket = rclone_s3.make_bucket("creds")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA" + "X" * 16)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y" * 40)
    with closing(uploader(rclone_s3)) as up, pytest.raises(PermanentError, match="403"):
        up.put(bucket, "k", b"x", {}).result(30)


def test_nothing_listening_is_transient():
    server = SimpleNamespace(endpoint_url=f"http://127.0.0.1:{free_port()}")
    with closing(uploader(server, connect_timeout=1)) as up, pytest.raises(TransientError):
        up.put("bucket", "k", b"x", {}).result(60)


def test_missing_credentials_are_transient_on_both_paths(moto_server, s3_bucket, monkeypatch,
                                                          tmp_path):
    # An instance whose metadata service is not up yet has no credentials for a while: no
    # entry may end failed for that (it used to be permanent on boto3, exit 1 on awscrt).
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with closing(uploader(moto_server)) as up:
        with pytest.raises(TransientError, match="credentials"):
            up.put(s3_bucket, "k", b"x", {}).result(30)
        with pytest.raises(TransientError, match="credentials"):
            up.upload(s3_bucket, "k", io.BytesIO(b"x"), {})


def test_sink_recovers_after_the_store_comes_back(rclone_s3):
    bucket = rclone_s3.make_bucket("outage")
    with closing(uploader(rclone_s3, connect_timeout=1)) as up:
        assert up.put(bucket, "before", b"1", {}).result(30).verified_by == "etag"
        rclone_s3.stop()
        with pytest.raises(TransientError):
            up.put(bucket, "during", b"2", {}).result(60)
        rclone_s3.start()
        assert up.put(bucket, "after", b"3", {}).result(30).verified_by == "etag"
    assert count(rclone_s3, bucket) == 2


def test_bodies_over_part_size_are_not_taken_by_the_fast_transport(moto_server):
    with closing(uploader(moto_server, S3Config(part_size_mb=5))) as up:
        assert up.takes("b", 5 * 2**20) and not up.takes("b", 5 * 2**20 + 1)
        with pytest.raises(ValueError, match="too big"):
            up.transport.put("b", "k", b"\0" * (up.transport.max_body + 1), [],
                             lambda _answer: None)


@pytest.mark.parametrize("path", ["boto3", "crt"])
@pytest.mark.parametrize(("status", "code", "transient"), [
    (400, "ExpiredToken", True), (503, "SlowDown", True), (408, None, True), (429, None, True),
    (500, None, True), (403, "AccessDenied", False), (404, "NoSuchBucket", False)])
def test_both_upload_paths_classify_the_same_answer_the_same_way(path, status, code,
                                                                  transient):
    from botocore.exceptions import ClientError

    if path == "crt":
        failure: Exception = crt.PutError(status, code, "http")
    else:
        failure = ClientError({"Error": {"Code": code or "", "Message": "m"},
                               "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")
    error = classify(failure)
    assert isinstance(error, TransientError if transient else PermanentError), error
    assert str(status) in str(error)


def test_crt_threads_keep_their_python_thread_state_from_one_put_to_the_next(rclone_s3):
    # awscrt enters Python from its own threads; a thread state made for one callback and
    # freed after it (with its frame stack: an mmap and a munmap) cost every PUT four times.
    # A threading.local lives in the thread state: it survives only if the state is kept.
    bucket = rclone_s3.make_bucket("tstate")
    local = threading.local()
    seen: list[tuple[int, bool]] = []

    def answered(answer: crt.Answer | crt.PutError, done: threading.Event) -> None:
        assert isinstance(answer, crt.Answer), answer  # else `done` stays unset
        seen.append((threading.get_ident(), getattr(local, "here", False)))
        local.here = True
        done.set()

    with closing(uploader(rclone_s3)) as up:
        for i in range(20):
            done = threading.Event()
            up.transport.put(bucket, f"k{i}", b"x", [], lambda a, done=done: answered(a, done))
            assert done.wait(30)
    threads = {ident for ident, _ in seen}
    assert len(seen) == 20 and threading.get_ident() not in threads
    assert [kept for _, kept in seen].count(False) == len(threads), seen


def test_max_in_flight_caps_the_window_from_the_start(rclone_s3):
    bucket = rclone_s3.make_bucket("ceiling")
    with closing(uploader(rclone_s3, S3Config(max_in_flight=4))) as up:
        window = up.transport.window
        assert (window.size, window.ceiling) == (4, 4)
        futures = [up.put(bucket, f"c{i}", b"x" * 100, {}) for i in range(40)]
        assert all(f.result(30).verified_by for f in futures)
        assert window.size <= 4


def test_connections_are_kept_alive_and_reused(rclone_s3):
    bucket = rclone_s3.make_bucket("alive")
    with closing(uploader(rclone_s3, S3Config(max_in_flight=4))) as up:
        for i in range(30):  # one at a time: each finds the one before's connection idle
            assert up.put(bucket, f"a{i}", b"x" * 100, {}).result(30).verified_by
        assert up.transport.connections == 1
        # A burst opens no more connections than the window lets run at once.
        futures = [up.put(bucket, f"b{i}", b"y" * 100, {}) for i in range(60)]
        assert all(f.result(30).verified_by for f in futures)
        assert 1 < up.transport.connections <= 4
