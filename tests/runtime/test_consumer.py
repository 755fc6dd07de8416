"""Consumer processes and threads: outages, kill -9, SIGTERM and --drain, all for real."""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sftppush import outcomes
from sftppush.queue.entries import FileVersion, State
from sftppush.queue.queue import Queue
from sftppush.runtime import consumer
from sftppush.sink.transfer import RetryPolicy
from tests.conftest import REPO, consumer_thread, wait_until

MB = 2**20


def write_and_enqueue(cfg: Any, directory: Path, names: range, size: int) -> dict[str, bytes]:
    bodies = {}
    versions = []
    for i in names:
        body = b"%08d\n" % i + os.urandom(size)
        p = directory / f"f{i:04d}.bin.gz"
        p.write_bytes(gzip.compress(body, compresslevel=1))
        bodies[f"sftpuser1/upload/f{i:04d}.bin"] = body
        versions.append(FileVersion.of(p, "sftpuser1", p.stat(), "close_write"))
    with Queue(cfg.queue.path) as q:
        q.enqueue_many(versions)
    return bodies


def states(cfg: Any) -> dict[State, int]:
    with Queue(cfg.queue.path) as q:
        return q.counts()


def consumer_process(config: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "sftppush", "--config", str(config), "consume", *args],
        env={**env, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)


def test_s3_outage_of_200_files_loses_nothing(source_tree: Any, pipeline_config: Any,
                                              rclone_s3: Any, upload_path: str) -> None:
    bucket = rclone_s3.make_bucket("outage")
    cfg = pipeline_config(server=rclone_s3, bucket=bucket, max_attempts=1)
    stored = rclone_s3.root / bucket
    bodies = write_and_enqueue(cfg, source_tree.upload, range(150), 200_000)
    tuning = consumer.Tuning.of(retry=RetryPolicy(attempts=3, initial=0.02, maximum=0.1),
                                transient_delay=0.1, transient_delay_max=0.5, poll_interval=0.02,
                                crt=upload_path == "crt")

    def retried_pending() -> list[str]:
        with Queue(cfg.queue.path) as q:
            return [e.last_error for e in q.list(State.PENDING, limit=500) if e.last_error]

    with consumer_thread(cfg, tuning, workers=4):
        wait_until(lambda: sum(1 for _ in stored.rglob("*.bin")) >= 20, 30, "first uploads")
        # Frozen at once: a SIGTERM alone lets the store serve on while it shuts down, and the
        # fast path then finished all 150 before the outage began (a CI run on 479f71d).
        rclone_s3.freeze()
        uploaded_before = sum(1 for _ in stored.rglob("*.bin"))
        rclone_s3.stop()
        assert uploaded_before < 150, "the outage must start mid-run"
        # Files keep arriving during the outage.
        bodies.update(write_and_enqueue(cfg, source_tree.upload, range(150, 200), 200_000))
        # Entries tried during the outage, retried in place, then back to pending.
        errors = wait_until(lambda: len(retried_pending()) >= 10 and retried_pending(), 30,
                            "entries back to pending after failing in the outage")
        during = states(cfg)
        assert during[State.FAILED] == 0 and during[State.DONE] < 200
        assert all("unreachable" in e for e in errors)
        rclone_s3.start()
        wait_until(lambda: states(cfg)[State.DONE] == 200, 60, "all 200 done after the outage")
    assert states(cfg)[State.FAILED] == 0
    for key, body in bodies.items():
        assert (stored / key).read_bytes() == body
    assert list(source_tree.upload.iterdir()) == []


def test_kill_9_mid_upload_then_another_consumer_resumes_it_after_the_lease(
        source_tree: Any, pipeline_config: Any, s3_env: dict[str, str], s3_client: Any,
        s3_bucket: str) -> None:
    cfg = pipeline_config(lease_seconds=2, workers=1)
    big = source_tree.upload / "big.bin.gz"
    # 120 MiB decompressed: 24 parts of 5 MiB. Each MiB is numbered, so a wrong order shows.
    body_hash = hashlib.sha256()
    with gzip.open(big, "wb", compresslevel=1) as f:
        for i in range(120):
            block = (b"block %08d\n" % i).ljust(MB, b"\0")
            f.write(block)
            body_hash.update(block)
    with Queue(cfg.queue.path) as q:
        q.enqueue_many([FileVersion.of(big, "sftpuser1", big.stat(), "close_write")])
    key = "sftpuser1/upload/big.bin"

    def parts_recorded() -> int:
        """Parts the consumer has recorded for a resume (each after the store took it)."""
        with Queue(cfg.queue.path) as q:
            [entry] = q.list()
            upload = q.upload_of(entry)
        return len(upload[3]) if upload else 0

    first = consumer_process(cfg.file, s3_env)
    try:
        wait_until(lambda: parts_recorded() >= 2, 30, "the first consumer mid-upload")
        first.kill()  # SIGKILL: no cleanup of any kind
    finally:
        first.kill()
        first.communicate(timeout=10)
    assert s3_client.list_objects_v2(Bucket=s3_bucket)["KeyCount"] == 0
    assert big.exists() and states(cfg)[State.CLAIMED] == 1

    second = subprocess.run(
        [sys.executable, "-m", "sftppush", "--config", str(cfg.file), "consume", "--drain"],
        env={**s3_env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    head = s3_client.head_object(Bucket=s3_bucket, Key=key)
    assert head["ContentLength"] == 120 * MB
    got = hashlib.sha256(s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read())
    assert got.hexdigest() == body_hash.hexdigest()
    assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    assert not big.exists()
    assert states(cfg)[State.DONE] == 1
    # The parts the killed consumer recorded were re-read and checked, not sent again.
    resumed = re.search(r"resuming upload key=\S+ upload_id=\S+ parts=(\d+)", second.stderr)
    assert resumed and int(resumed.group(1)) >= 1, second.stderr
    with Queue(cfg.queue.path) as q:
        assert q.list()[0].sha256 == body_hash.hexdigest()


def test_sigterm_finishes_or_releases_in_flight_entries_and_exits_0(
        source_tree: Any, pipeline_config: Any, s3_env: dict[str, str], s3_client: Any,
        s3_bucket: str) -> None:
    cfg = pipeline_config(workers=1)
    # More than the fast path's 64 MiB of bodies in flight: some wait for room when the
    # first object lands, so the stop has something to release however late it comes.
    files = 150
    bodies = write_and_enqueue(cfg, source_tree.upload, range(files), MB)
    proc = consumer_process(cfg.file, s3_env)
    try:
        wait_until(lambda: s3_client.list_objects_v2(Bucket=s3_bucket)["KeyCount"] >= 1, 30,
                   "the first upload")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    counts = states(cfg)
    assert counts[State.CLAIMED] == 0 and counts[State.FAILED] == 0
    assert counts[State.PENDING] > 0 and counts[State.DONE] + counts[State.PENDING] == files
    stored = {o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket).get("Contents", [])}
    assert len(stored) == counts[State.DONE]
    for key in bodies:
        local = source_tree.upload / (key.rsplit("/", 1)[1] + ".gz")
        assert local.exists() != (key in stored), key  # uploaded exactly when deleted


def test_drain_exits_0_after_everything_is_done_with_one_log_line_per_upload(
        source_tree: Any, pipeline_config: Any, s3_env: dict[str, str], s3_client: Any,
        s3_bucket: str, run_cli: Any) -> None:
    cfg = pipeline_config()
    bodies = write_and_enqueue(cfg, source_tree.upload, range(5), 1000)
    result = run_cli("--config", str(cfg.file), "consume", "--drain", env=s3_env, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = re.findall(r"uploaded id=(\d+) key=(\S+) bytes_in=(\d+) bytes_out=(\d+) ms=(\d+)",
                       result.stderr)
    assert sorted(k for _, k, _, _, _ in lines) == sorted(bodies)
    for _, key, bytes_in, bytes_out, _ in lines:
        assert int(bytes_out) == len(bodies[key]) and int(bytes_in) > 0
    assert states(cfg)[State.DONE] == 5
    for key, body in bodies.items():
        assert s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == body
    # `consume` owns its process: what start-up made is frozen out of the collector's rounds.
    frozen = re.search(r"frozen start-up objects count=(\d+)", result.stderr)
    assert frozen and int(frozen.group(1)) > 1000, result.stderr[-2000:]


def test_an_idle_consumer_wakes_when_the_queue_is_written(
        source_tree: Any, pipeline_config: Any, s3_client: Any, s3_bucket: str,
        upload_path: str) -> None:
    cfg = pipeline_config()
    # A poll interval far beyond the test's timeout: only the wake-up can start the upload.
    tuning = consumer.Tuning.of(poll_interval=3600, crt=upload_path == "crt")
    with Queue(cfg.queue.path):
        pass  # the queue file exists before the consumer watches its directory

    def idle(thread: threading.Thread) -> bool:
        """The consumer has looked, found nothing, and waits for an outcome or a wake-up."""
        frame = sys._current_frames().get(thread.ident or 0)
        return frame is not None and frame.f_code.co_qualname in ("Inbox.take", "Inbox._wait")

    with consumer_thread(cfg, tuning, workers=2) as thread:
        wait_until(lambda: idle(thread), 20, "the consumer idle in its wait")
        bodies = write_and_enqueue(cfg, source_tree.upload, range(3), 1000)
        wait_until(lambda: states(cfg)[State.DONE] == 3, 20, "the woken consumer")
    for key, body in bodies.items():
        assert s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == body
    assert list(source_tree.upload.iterdir()) == []


def test_a_consumer_that_worked_through_a_backlog_wakes_again_when_idle(
        source_tree: Any, pipeline_config: Any, s3_client: Any, s3_bucket: str,
        upload_path: str) -> None:
    # Full claims pause the queue watch (outcomes bring the loop back); once the backlog is
    # gone it must watch again, or the next file would wait the poll interval (here: for ever).
    cfg = pipeline_config()
    tuning = consumer.Tuning.of(poll_interval=3600, claim_batch=4, crt=upload_path == "crt")
    bodies = write_and_enqueue(cfg, source_tree.upload, range(20), 1000)
    with consumer_thread(cfg, tuning, workers=2):
        wait_until(lambda: states(cfg)[State.DONE] == 20, 30, "the backlog of 20")
        bodies.update(write_and_enqueue(cfg, source_tree.upload, range(20, 23), 1000))
        wait_until(lambda: states(cfg)[State.DONE] == 23, 20, "the consumer woken again")
    for key, body in bodies.items():
        assert s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == body
    assert list(source_tree.upload.iterdir()) == []


def test_uploads_leave_no_reference_cycles_behind(
        source_tree: Any, pipeline_config: Any, rclone_s3: Any) -> None:
    # What a file leaves behind (its claim, opened file, PUT's future) must go with its last
    # reference: a cycle per file keeps memory until the collector runs, and makes it run
    # every few dozen files, walking every entry in flight. The store runs in a process of
    # its own (moto, in this one, makes garbage of its own per request); start-up and stop
    # make some (botocore's client).
    import gc
    from concurrent.futures import Future

    cfg = pipeline_config(server=rclone_s3, bucket=rclone_s3.make_bucket("cycles"))

    def garbage_of(files: range) -> list[object]:
        """The cyclic garbage a consumer run over `files` leaves, of the kinds an upload
        makes (futures, sftppush's own objects)."""
        write_and_enqueue(cfg, source_tree.upload, files, 1000)
        gc.collect()
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            with consumer_thread(cfg, consumer.Tuning.of(crt=True), workers=2):
                wait_until(lambda: states(cfg)[State.DONE] == files.stop, 30, "the files")
            gc.collect()
            # type(), not isinstance(): the garbage may hold weak proxies to objects gone.
            return [o for o in gc.garbage if issubclass(type(o), Future)
                    or type(o).__module__.startswith("sftppush.")]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()

    # A run makes some garbage of its own (start-up, stop, an earlier test's objects let go
    # meanwhile): the same for 10 files as for 210. A cycle per file would make 200 more.
    few, many = garbage_of(range(10)), garbage_of(range(10, 210))
    assert len(many) - len(few) < 100, many[:10]


def test_a_fast_upload_whose_etag_is_not_the_md5_is_verified_by_head_off_the_loop(
        source_tree: Any, pipeline_config: Any, s3_client: Any, s3_bucket: str,
        monkeypatch: Any, caplog: Any) -> None:
    # With SSE-KMS a store's ETag is not the body's MD5, so a fast PUT the store answers
    # without a checksum (checksum: when_required sends none) is verified with a boto3 HEAD;
    # that waits on S3 and must run on the sink's own threads, never in the claim loop.
    from sftppush.sink import crt, s3

    if not crt.available():
        raise AssertionError("awscrt is part of the test extra")
    heads: list[str] = []
    verify_head = s3.Sink.verify_head

    def recorded(self: Any, *args: Any) -> str:
        heads.append(threading.current_thread().name)
        return verify_head(self, *args)

    monkeypatch.setattr(s3.Sink, "verify_head", recorded)
    cfg = pipeline_config(s3={"sse": "aws:kms", "checksum": "when_required"})
    bodies = write_and_enqueue(cfg, source_tree.upload, range(6), 1000)
    caplog.set_level("INFO", logger="sftppush.pipeline")
    consumer.run(cfg, workers=2, drain=True, stop=threading.Event(),
                 tuning=consumer.Tuning.of(crt=True, poll_interval=0.02))
    uploaded = [r for r in caplog.records if r.getMessage().startswith("uploaded id=")]
    assert len(uploaded) == 6
    assert all("verified=head" in r.getMessage() for r in uploaded)
    assert len(heads) == 6 and {name.split("_")[0] for name in heads} == {"verify"}
    assert states(cfg)[State.DONE] == 6
    for key, body in bodies.items():
        assert s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == body
    assert list(source_tree.upload.iterdir()) == []


def test_while_the_store_is_down_the_backlog_waits_in_the_queue_untried_then_all_upload(
        source_tree: Any, pipeline_config: Any, rclone_s3: Any, upload_path: str,
        caplog: Any) -> None:
    # Connection refused on every request. Trying each of 1,000 entries in turn would log and
    # reschedule the whole backlog again and again; after a few transient errors in a row the
    # consumer takes no new entries for a growing delay instead, and then a few (3) to find
    # out whether the store is back. The first claim is a whole batch: twice the fast path's
    # window, which starts at its ceiling (256), or twice the workers.
    store = rclone_s3
    bucket = store.make_bucket("outage")
    cfg = pipeline_config(server=store, bucket=bucket)
    store.stop()
    bodies = write_and_enqueue(cfg, source_tree.upload, range(1000), 100)
    tuning = consumer.Tuning.of(retry=RetryPolicy(attempts=2, initial=0.01, maximum=0.05),
                                transient_delay=1.0, transient_delay_max=2.0, poll_interval=0.02,
                                crt=upload_path == "crt", connect_timeout=1.0)
    caplog.set_level("INFO", logger="sftppush.consumer")
    with consumer_thread(cfg, tuning, workers=4):
        wait_until(lambda: sum("store failing: no new claims" in r.getMessage()
                               for r in caplog.records) >= 4, 60, "four pauses of the outage")
        with Queue(cfg.queue.path) as q:
            tried = sum(1 for e in q.list(State.PENDING, limit=2000) if e.last_error)
        first = 2 * 256 if upload_path == "crt" else 2 * 4
        assert 0 < tried <= first + 4 * 3, f"{tried} of 1,000 entries tried during the outage"
        assert any("store failing: no new claims" in r.getMessage() for r in caplog.records)
        store.start()
        wait_until(lambda: states(cfg)[State.DONE] == 1000, 90, "all done after the outage")
    assert states(cfg)[State.FAILED] == 0
    assert any("claims resume" in r.getMessage() for r in caplog.records)
    stored = store.root / bucket
    assert all((stored / key).read_bytes() == body for key, body in bodies.items())
    assert list(source_tree.upload.iterdir()) == []


def test_transient_streaks_are_forgotten_whatever_the_next_outcome(source_tree: Any,
                                                                    pipeline_config: Any) -> None:
    # Months of transient errors followed by any other outcome (an upload, a failure, a file
    # superseded or gone, a lost lease, a stop) must leave nothing behind per entry.
    from sftppush.errors import PermanentError, TransientError

    cfg = pipeline_config(max_attempts=1)
    write_and_enqueue(cfg, source_tree.upload, range(500), 10)
    ends = [outcomes.Done(None), outcomes.Done("superseded"), PermanentError("corrupt gzip: x"),
            outcomes.LeaseLost("x"), outcomes.UploadCancelled("stopping")]
    sink = SimpleNamespace(fast=False)
    stop, cancel = threading.Event(), threading.Event()
    with Queue(cfg.queue.path) as q:
        loop = consumer.Consumer(cfg, q, sink, 1, consumer.Tuning(), stop, cancel)
        try:
            for round_ in range(3):  # each entry: transient, transient, then an end
                claims = [consumer.Claim(e, e.due) for e in q.claim(loop.owner, 60, 500)]
                for claim in claims:
                    loop._apply(consumer.Result(claim, TransientError("S3 unreachable")
                                                if round_ < 2
                                                else ends[claim.entry.id % len(ends)]))
                if round_ < 2:
                    assert len(loop.verdicts.streaks) == 500
                    _make_due(q)
            loop._flush_acks()
        finally:
            loop.lane.shutdown(cold=False)
    assert loop.verdicts.streaks == {}


def test_a_cold_stop_says_it_abandoned_uploads_only_when_some_were_in_flight(
        source_tree: Any, pipeline_config: Any, caplog: Any) -> None:
    # Ctrl-C in a terminal reaches every process of the group, and the supervisor passes it
    # on: an idle consumer gets a second signal, a cold stop with nothing to abandon.
    cfg = pipeline_config()
    write_and_enqueue(cfg, source_tree.upload, range(1), 10)
    stop, cancel = threading.Event(), threading.Event()
    cancel.set()
    with Queue(cfg.queue.path) as q:
        loop = consumer.Consumer(cfg, q, SimpleNamespace(fast=False), 1, consumer.Tuning(),
                                 stop, cancel)
        try:
            with caplog.at_level("WARNING", logger="sftppush.consumer"):
                loop._abandon()
                assert not [r for r in caplog.records if "abandoned" in r.getMessage()]
                (entry,) = q.claim(loop.owner, 60)
                loop.inflight[entry.id] = consumer.Claim(entry, entry.due)
                loop._abandon()
            assert [r.getMessage().split(" owner=")[0] for r in caplog.records] == [
                "cold stop: abandoned uploads in flight count=1"]
            assert q.counts()[State.PENDING] == 1 and not loop.inflight
        finally:
            loop.lane.shutdown(cold=False)


def _make_due(q: Queue) -> None:
    """Every pending entry due now (their retry delays skipped)."""
    with q.db.transaction() as db:
        db.execute("UPDATE entries SET due = 0 WHERE state = 'pending'")
