"""The fast transport's connections (awscrt's HTTP client, kept alive between PUTs) when the
network between it and the store fails: real sockets through the fault proxy, moto behind it."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

from sftppush import crt
from tests.test_crt import closing, count, needs_crt, uploader


@needs_crt
def test_a_kept_alive_connection_the_store_dropped_fails_no_put(moto_server, s3_bucket,
                                                                      fault_proxy):
    proxy = fault_proxy(moto_server.port)
    with closing(uploader(SimpleNamespace(endpoint_url=proxy.url))) as up:
        assert up.put(s3_bucket, "first", b"1" * 100, {}).result(30).verified_by
        assert proxy.reset() >= 1, "the first PUT's connection was not kept open"
        for i in range(5):  # each on a connection that works, none failed by the reset
            assert up.put(s3_bucket, f"after/{i}", b"2" * 100, {}).result(30).verified_by
    assert count(moto_server, s3_bucket) == 6


@needs_crt
def test_puts_whose_connections_are_reset_mid_request_are_sent_again(moto_server, s3_bucket,
                                                                     fault_proxy):
    proxy = fault_proxy(moto_server.port)
    with closing(uploader(SimpleNamespace(endpoint_url=proxy.url))) as up:
        proxy.slow(0.5)  # every request is still on its way when its connection is reset
        futures = [up.put(s3_bucket, f"k{i}", f"{i}".encode() * 1000, {}) for i in range(8)]
        time.sleep(0.2)
        assert proxy.reset() == 8
        proxy.restore()
        assert all(f.result(30).verified_by for f in futures)
    assert count(moto_server, s3_bucket) == 8
    assert sorted(target for _, target in proxy.requests).count(f"/{s3_bucket}/k0") >= 1


@needs_crt
def test_a_cold_close_answers_every_stalled_put_at_once(moto_server, s3_bucket, fault_proxy):
    proxy = fault_proxy(moto_server.port)
    up = uploader(SimpleNamespace(endpoint_url=proxy.url))
    answers: list[crt.Answer | crt.Failed] = []
    done = threading.Event()

    def answered(answer: crt.Answer | crt.Failed) -> None:
        answers.append(answer)
        if len(answers) == 4:
            done.set()

    proxy.stall()
    for i in range(4):
        up.transport.put(s3_bucket, f"k{i}", b"x" * 100, [], answered)
    time.sleep(0.3)
    started = time.monotonic()
    up.close(abandon=True)
    assert done.wait(5) and time.monotonic() - started < 5
    assert all(isinstance(a, crt.Failed) and a.status is None for a in answers), answers
    proxy.restore()
