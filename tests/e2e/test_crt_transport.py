"""The fast transport's connections (awscrt's HTTP client, kept alive between PUTs) when the
network between it and the store fails: real sockets through the fault proxy, moto behind it."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from sftppush.config import S3Config
from sftppush.errors import Throttled, TransientError
from sftppush.sink import crt
from tests.e2e.tls import TlsTerminator, self_signed
from tests.sink.test_crt import closing, count, uploader
from tests.support.processes import wait_until


def test_a_kept_alive_connection_the_store_dropped_fails_no_put(rclone_s3, fault_proxy):
    # rclone keeps connections alive; moto's server (werkzeug) answers every request with
    # "Connection: close", so behind it there would be no kept-alive connection to drop.
    bucket = rclone_s3.make_bucket("dropped")
    proxy = fault_proxy(rclone_s3.port)
    with closing(uploader(SimpleNamespace(endpoint_url=proxy.url))) as up:
        assert up.put(bucket, "first", b"1" * 100, {}).result(30).verified_by
        time.sleep(0.2)  # a connection the store closed after its answer would be gone by now
        assert proxy.reset() >= 1, "the first PUT's connection was not kept open"
        for i in range(5):  # each on a connection that works, none failed by the reset
            assert up.put(bucket, f"after/{i}", b"2" * 100, {}).result(30).verified_by
    assert count(rclone_s3, bucket) == 6


def test_puts_whose_connections_are_reset_mid_request_are_sent_again(moto_server, s3_bucket,
                                                                     fault_proxy):
    proxy = fault_proxy(moto_server.port)
    with closing(uploader(SimpleNamespace(endpoint_url=proxy.url))) as up:
        # Every request is held on its way, however long the 8 connections take to open:
        # each is still in flight when its connection is reset.
        proxy.stall()
        futures = [up.put(s3_bucket, f"k{i}", f"{i}".encode() * 1000, {}) for i in range(8)]
        wait_until(lambda: proxy.open_connections == 8, 30, "8 connections open",
                   detail=lambda: proxy.open_connections)
        assert proxy.reset() == 8
        proxy.restore()
        assert all(f.result(30).verified_by for f in futures)
    assert count(moto_server, s3_bucket) == 8
    assert sorted(target for _, target in proxy.requests).count(f"/{s3_bucket}/k0") >= 1


def test_a_cold_close_answers_every_stalled_put_at_once(moto_server, s3_bucket, fault_proxy):
    proxy = fault_proxy(moto_server.port)
    up = uploader(SimpleNamespace(endpoint_url=proxy.url))
    answers: list[crt.Answer | crt.PutError] = []
    done = threading.Event()

    def answered(answer: crt.Answer | crt.PutError) -> None:
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
    assert all(isinstance(a, crt.PutError) and a.status is None for a in answers), answers
    proxy.restore()


def test_https_endpoints_are_verified_against_the_ca_bundle_boto3_is_given(
        moto_server, s3_bucket, tmp_path, monkeypatch):
    cert, key = self_signed(tmp_path)
    terminator = TlsTerminator(moto_server.port, cert, key)
    endpoint = SimpleNamespace(endpoint_url=f"https://127.0.0.1:{terminator.port}")
    try:
        # Not trusted: the system's trust store does not know this certificate (a refused
        # handshake takes awscrt about 15 s to give up on: the request timeout comes first).
        with closing(uploader(endpoint, connect_timeout=2, read_timeout=3)) as up, \
                pytest.raises(TransientError):
            up.put(s3_bucket, "untrusted", b"x", {}).result(30)
        assert terminator.handshakes == 0
        monkeypatch.setenv("AWS_CA_BUNDLE", str(cert))
        with closing(uploader(endpoint)) as up:
            assert up.put(s3_bucket, "trusted", b"y" * 100, {}).result(30).verified_by
        assert terminator.handshakes >= 1
    finally:
        terminator.close()
    assert count(moto_server, s3_bucket) == 1


def test_a_store_asking_to_slow_down_gets_no_immediate_resend():
    # 503 SlowDown asks for a backoff: the PUT fails as transient at once and the queue's
    # retry delays space the next attempt; the transport must not send it again meanwhile.
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    puts: list[str] = []

    class SlowDown(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            puts.append(self.path)
            body = b"<Error><Code>SlowDown</Code></Error>"
            self.send_response(503)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowDown)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = SimpleNamespace(endpoint_url=f"http://127.0.0.1:{server.server_port}")
    try:
        with closing(uploader(endpoint)) as up, \
                pytest.raises(TransientError, match="SlowDown"):
            up.put("bucket", "k", b"x" * 100, {}).result(30)
    finally:
        server.shutdown()
        server.server_close()
    assert puts == ["/bucket/k"]


def test_a_put_that_failed_on_a_5xx_is_sent_again_in_place(moto_server, s3_client, s3_bucket,
                                                           fault_proxy):
    # SPEC 4: transient errors are retried in place (tenacity), then go back to the queue.
    # The fast path used to hand every failed PUT to the queue at once: 5 s later at best.
    proxy = fault_proxy(moto_server.port)
    with closing(uploader(SimpleNamespace(endpoint_url=proxy.url))) as up:
        assert up.put(s3_bucket, "first", b"1" * 100, {}).result(30).verified_by
        proxy.answer_puts(0.5, status=500, code="InternalError")  # every second PUT from now
        assert up.put(s3_bucket, "ok", b"2" * 100, {}).result(30).verified_by
        assert up.put(s3_bucket, "failed-once", b"3" * 100, {}).result(30).verified_by
        assert proxy.answered == 1
    assert s3_client.get_object(Bucket=s3_bucket, Key="failed-once")["Body"].read() == \
        b"3" * 100


def test_a_put_that_keeps_failing_in_place_ends_transient_for_the_queue(moto_server, s3_bucket,
                                                                         fault_proxy):
    # The resend is tenacity's attempts (2 here), no more: then the queue's delays take over.
    proxy = fault_proxy(moto_server.port)
    proxy.answer_puts(1.0, status=500, code="InternalError")
    with closing(uploader(SimpleNamespace(endpoint_url=proxy.url))) as up, \
            pytest.raises(TransientError, match="InternalError"):
        up.put(s3_bucket, "k", b"x" * 100, {}).result(30)
    assert proxy.answered == 1 + 2


def test_a_store_asking_to_slow_down_gets_fewer_puts_in_flight_and_loses_nothing(
        moto_server, s3_client, s3_bucket, fault_proxy):
    proxy = fault_proxy(moto_server.port)
    proxy.answer_puts(0.3)  # 503 SlowDown to every third PUT or so; the store never sees them
    bodies = {f"k{i:03d}": f"{i},".encode() * 300 for i in range(200)}
    left, throttled, rounds = dict(bodies), 0, 0
    with closing(uploader(SimpleNamespace(endpoint_url=proxy.url))) as up:
        window = up.transport.window
        first = window.size
        while left and rounds < 30:  # what the queue does: try the throttled ones again
            rounds += 1
            futures = {key: up.put(s3_bucket, key, body, {}) for key, body in left.items()}
            for key, future in futures.items():
                try:
                    assert future.result(30).verified_by
                    del left[key]
                except Throttled:
                    throttled += 1
        assert window.cuts >= 3 and window.size < first // 4, (window.size, window.cuts)
    assert not left and throttled == proxy.answered >= 60
    for key, body in bodies.items():
        assert s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == body


def test_puts_beyond_the_window_wait_in_line_and_start_as_answers_make_room(
        moto_server, s3_bucket, fault_proxy):
    # A caller busy elsewhere (the consumer opening its next files) must not leave the pipe
    # empty: a window's worth more is taken at once and started by the answers, and only a
    # full line blocks.
    proxy = fault_proxy(moto_server.port)
    with closing(uploader(SimpleNamespace(endpoint_url=proxy.url), S3Config(max_in_flight=2),
                          in_flight=2)) as up:
        transport = up.transport
        proxy.stall()
        futures: list = []
        putting = threading.Thread(target=lambda: futures.extend(
            up.put(s3_bucket, f"k{i}", b"x" * 100, {}) for i in range(4)))
        putting.start()  # 2 run, 2 wait in line: none of these blocks
        putting.join(2)
        alive = putting.is_alive()
        if alive:
            proxy.restore()
        assert not alive and transport.puts == 2
        assert not transport.wait_room(100, 0.3)  # the line is full: a fifth would block
        proxy.restore()
        assert all(f.result(30).verified_by for f in futures)
        assert transport.puts == 4 and transport.wait_room(100, 0)
    assert count(moto_server, s3_bucket) == 4
