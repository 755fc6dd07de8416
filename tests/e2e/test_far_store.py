"""What each upload costs in round trips, which a store far away multiplies: no `100 Continue`
wait before a body, and kept-alive connections, no more than the requests in flight.
Real sockets: the fault proxy (it notes every request's headers and counts connections) in
front of moto or rclone."""

from __future__ import annotations

import io
import os
from types import SimpleNamespace

from sftppush.config import S3Config
from tests.sink.test_crt import closing, uploader


def test_no_body_waits_for_100_continue_on_either_upload_path(moto_server, s3_bucket,
                                                              fault_proxy):
    proxy = fault_proxy(moto_server.port)
    with closing(uploader(SimpleNamespace(endpoint_url=proxy.url),
                          S3Config(part_size_mb=5))) as up:
        assert up.put(s3_bucket, "fast", b"f" * 4096, {}).result(30).verified_by  # awscrt
        assert up.upload(s3_bucket, "stream", io.BytesIO(b"s" * 4096), {}).verified_by  # boto3
        big = up.upload(s3_bucket, "parts", io.BytesIO(os.urandom(11 * 2**20)), {})
        assert big.parts == 3
    puts = [head for (method, _), head in zip(proxy.requests, proxy.heads, strict=True)
            if method == "PUT"]
    assert len(puts) == 5  # two PutObject, three UploadPart
    assert not [head for head in puts if "expect" in head], puts


def test_puts_reuse_kept_alive_connections_no_more_than_the_window(rclone_s3, fault_proxy):
    # rclone keeps connections alive (moto's server closes each after one answer).
    bucket = rclone_s3.make_bucket("alive")
    proxy = fault_proxy(rclone_s3.port)
    with closing(uploader(SimpleNamespace(endpoint_url=proxy.url))) as up:
        for batch in range(10):
            futures = [up.put(bucket, f"k{batch}-{i}", b"x" * 100, {}) for i in range(32)]
            assert all(f.result(30).verified_by for f in futures)
        most = up.transport.window.ceiling
    # The window starts at its ceiling (256); 32 PUTs at a time open no more connections than
    # they need, and reuse them.
    assert 32 <= proxy.accepted <= 48 < most, proxy.accepted  # 320 PUTs
