"""A store that accepts connections but never answers: the awscrt lane times out, never hangs.

The fault proxy stalls every byte both ways while keeping sockets open, which no error reaches
the CRT client for (it has no read timeout of its own). Its PUTs must become TransientErrors,
the entries go back to pending (never failed), the leases held meanwhile stay renewed, and
after the stall everything is uploaded.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from sftppush.errors import TransientError
from sftppush.queue.entries import State
from sftppush.queue.queue import Queue
from sftppush.runtime import consumer
from sftppush.sink.s3 import Sink
from sftppush.sink.transfer import RetryPolicy, Transfer
from tests.conftest import consumer_thread, wait_until
from tests.runtime.test_consumer import consumer_process, states, write_and_enqueue


@contextlib.contextmanager
def restored(proxy: Any) -> Iterator[None]:
    """Let stalled traffic through when the block ends, before the consumer is joined."""
    try:
        yield
    finally:
        proxy.restore()


def stalled_setup(pipeline_config: Any, rclone_s3: Any, fault_proxy: Any, lease: float,
                  **consumer: Any) -> tuple[Any, Any, str]:
    """(cfg, proxy, bucket): a consumer config whose store is rclone behind a fault proxy."""
    bucket = rclone_s3.make_bucket("stall")
    proxy = fault_proxy(rclone_s3.port)
    cfg = pipeline_config(server=SimpleNamespace(endpoint_url=proxy.url), bucket=bucket,
                          lease_seconds=lease, **consumer)
    return cfg, proxy, bucket


def test_a_stalled_put_becomes_transient_after_the_request_timeout(
        pipeline_config: Any, rclone_s3: Any, fault_proxy: Any) -> None:
    cfg, proxy, bucket = stalled_setup(pipeline_config, rclone_s3, fault_proxy, 30)
    sink = Sink.from_config(cfg.defaults, cfg.consumer.s3, Transfer(fast=True, read_timeout=1.0))
    try:
        assert sink.put(bucket, "before", b"a", {}).result(30).verified_by  # the path works
        proxy.stall()
        stalled = sink.put(bucket, "stalled", b"b", {})
        with pytest.raises(TransientError, match="no answer within 1s"):
            stalled.result(30)
        proxy.restore()
        assert sink.put(bucket, "after", b"c", {}).result(30).verified_by
    finally:
        sink.close()
    assert (rclone_s3.root / bucket / "after").read_bytes() == b"c"


def test_stalled_store_sends_entries_back_to_pending_keeps_leases_then_uploads_all(
        source_tree: Any, pipeline_config: Any, rclone_s3: Any, fault_proxy: Any) -> None:
    lease = 2.0  # renewed every 0.67 s: a loaded host may hold the loop up 1.3 s
    cfg, proxy, bucket = stalled_setup(pipeline_config, rclone_s3, fault_proxy, lease,
                                       max_attempts=1)
    proxy.stall()
    bodies = write_and_enqueue(cfg, source_tree.upload, range(4), 1000)
    # One PUT in flight: the loop holds the other claims while it waits for a slot, for
    # longer than a lease, since a stalled PUT takes the whole request timeout.
    tuning = consumer.Tuning.of(retry=RetryPolicy(attempts=2, initial=0.01, maximum=0.05),
                                transient_delay=0.2, transient_delay_max=0.5, poll_interval=0.05,
                                crt=True, crt_in_flight=1, claim_batch=8, read_timeout=4 * lease)
    with consumer_thread(cfg, tuning), restored(proxy):
        wait_until(lambda: states(cfg)[State.CLAIMED] == 4, 30, "all four claimed")
        time.sleep(2 * lease)  # every lease would have run out unless renewed
        with Queue(cfg.queue.path) as q:
            taken = q.claim("rival", lease, limit=4)
        assert taken == [], "a lease expired while the consumer waited for a slot"

        def timed_out_pending() -> bool:
            with Queue(cfg.queue.path) as q:
                return any("no answer within" in (e.last_error or "")
                           for e in q.list(State.PENDING, limit=10))

        wait_until(timed_out_pending, 60, "a stalled PUT back to pending as transient")
        assert states(cfg)[State.FAILED] == 0
        proxy.restore()
        wait_until(lambda: states(cfg)[State.DONE] == 4, 60, "all four done after the stall")
    with Queue(cfg.queue.path) as q:
        assert [e.attempts for e in q.list(State.DONE, limit=10)] == [0] * 4  # never permanent
    stored = rclone_s3.root / bucket
    for key, body in bodies.items():
        assert (stored / key).read_bytes() == body
    assert list(source_tree.upload.iterdir()) == []


def test_a_vanished_file_looked_up_in_a_stalled_store_does_not_stop_the_claim_loop(
        source_tree: Any, pipeline_config: Any, rclone_s3: Any, fault_proxy: Any) -> None:
    # A vanished file takes a boto3 HEAD of its key, retried while the store does not answer.
    # Were it run in the claim loop, the loop would stop renewing the other leases it holds.
    lease = 2.0  # renewed every 0.67 s: a loaded host may hold the loop up 1.3 s
    cfg, proxy, bucket = stalled_setup(pipeline_config, rclone_s3, fault_proxy, lease)
    write_and_enqueue(cfg, source_tree.upload, range(1), 1000)
    (source_tree.upload / "f0000.bin.gz").unlink()  # vanished before its turn
    bodies = write_and_enqueue(cfg, source_tree.upload, range(1, 4), 1000)
    proxy.stall()
    tuning = consumer.Tuning.of(retry=RetryPolicy(attempts=2, initial=0.01, maximum=0.05),
                                poll_interval=0.05, crt=True, claim_batch=8,
                                read_timeout=8 * lease)
    with consumer_thread(cfg, tuning), restored(proxy):
        wait_until(lambda: states(cfg)[State.CLAIMED] == 4, 30, "all four claimed")
        time.sleep(3 * lease)  # the HEAD is still waiting; leases would have run out
        with Queue(cfg.queue.path) as q:
            taken = q.claim("rival", lease, limit=4)
        assert taken == [], "a lease expired while a vanished file's HEAD waited on S3"
        proxy.restore()
        wait_until(lambda: states(cfg)[State.DONE] == 4, 90, "all four done after the stall")
    with Queue(cfg.queue.path) as q:
        notes = sorted(e.note or "" for e in q.list(State.DONE, limit=10))
    assert notes[-1].startswith("vanished before upload") and notes[:3] == ["", "", ""]
    for key, body in bodies.items():
        assert (rclone_s3.root / bucket / key).read_bytes() == body


def stopped_twice(cfg: Any, proxy: Any, rclone_s3: Any, busy: int, connections: int
                  ) -> tuple[str, float]:
    """Start a consumer process on the stalled store, wait for `busy` claims and
    `connections` open upstream, SIGTERM it twice: (its stderr, seconds the second took).
    The first SIGTERM (a warm stop) must not end it while its uploads hang."""
    with restored(proxy):
        env = rclone_s3.env()
        env.pop("SFTPPUSH_DEFAULTS_ENDPOINT_URL")  # the config's: the proxy
        proc = consumer_process(cfg.file, env)
        try:
            wait_until(lambda: states(cfg)[State.CLAIMED] == busy, 60, "the claims made")
            wait_until(lambda: proxy.open_connections >= connections, 30, "uploads started",
                       detail=lambda: proxy.open_connections)
            time.sleep(1.0)
            proc.send_signal(signal.SIGTERM)
            time.sleep(1.0)
            assert proc.poll() is None, "a warm stop does not abandon uploads in flight"
            proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            _, stderr = proc.communicate(timeout=90)
            took = time.monotonic() - started
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    return stderr, took


def test_a_second_sigterm_while_every_fast_slot_is_held_by_a_stalled_store_exits_at_once(
        source_tree: Any, pipeline_config: Any, rclone_s3: Any, fault_proxy: Any) -> None:
    # A real consumer process at its default settings (256 fast PUTs in flight at first, a
    # 60 s request timeout), all of its PUTs stalled: the first SIGTERM waits for them (a
    # warm stop), the second abandons them and the process is gone at once, not a timeout
    # later. All 300 claimed (a batch is twice the window), 256 PUTs started, 44 wait.
    cfg, proxy, _bucket = stalled_setup(pipeline_config, rclone_s3, fault_proxy, 300)
    proxy.stall()
    write_and_enqueue(cfg, source_tree.upload, range(300), 1000)
    _, took = stopped_twice(cfg, proxy, rclone_s3, busy=300, connections=128)
    assert took < 5.0, f"the cold stop took {took:.1f}s"
    # Nothing was lost: the abandoned claims come back (their owner is gone), no file left
    # its disk unverified, nothing failed.
    with Queue(cfg.queue.path) as q:
        assert len(q.claim("after", 60, limit=400)) == 300
    assert states(cfg)[State.FAILED] == 0
    assert len(list(source_tree.upload.iterdir())) == 300


def test_a_second_sigterm_while_a_streaming_upload_is_stalled_exits_at_once(
        source_tree: Any, pipeline_config: Any, rclone_s3: Any, fault_proxy: Any) -> None:
    # The same for the boto3 path: a file too big for a fast PUT streams from a worker
    # thread, which no cancel reaches; its request (60 s read timeout, then retries) is left
    # to die with the process, and the claim is handed back first.
    cfg, proxy, _bucket = stalled_setup(pipeline_config, rclone_s3, fault_proxy, 300)
    proxy.stall()
    write_and_enqueue(cfg, source_tree.upload, range(1), 12 * 2**20)
    stderr, took = stopped_twice(cfg, proxy, rclone_s3, busy=1, connections=1)
    assert took < 5.0, f"the cold stop took {took:.1f}s"
    assert "cold stop: abandoned uploads in flight" in stderr
    with Queue(cfg.queue.path) as q:  # handed back, not left to a lease that runs 300 s
        assert q.counts()[State.PENDING] == 1
    assert len(list(source_tree.upload.iterdir())) == 1
