"""The numbers operators see (status.py): counters that survive purges and restarts, the
Prometheus names, the queue opened read-only, and `sftppush metrics` over real HTTP."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sftppush.errors import QueueError
from sftppush.locals3 import free_port
from sftppush.queue.entries import FileVersion, Stored
from sftppush.queue.queue import Queue
from sftppush.status import prometheus, read
from tests.conftest import SourceTree, child_env, cli_argv, wait_until

STORED = Stored("0123abcd", "sha256-of-the-body")  # what an upload recorded


def versions(n: int, start: int = 0) -> list[FileVersion]:
    return [FileVersion(f"/home/u/upload/f{i}".encode(), "u", 1000 + i, i, i, i, "rescan")
            for i in range(start, start + n)]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def settle(q: Queue, now: float) -> None:
    """4 uploads (one with a note), 1 done without upload, 1 failed, 1 retried."""
    q.enqueue_many(versions(7), now=now)
    a, b, c, d, e, f, g = q.claim("w", 60, limit=7, now=now)
    q.ack_many([(a, None), (b, None), (c, None), (d, "vanished: object exists")], now=now,
               uploaded=dict.fromkeys([a.id, b.id, c.id], STORED))
    q.ack(e, "superseded", now=now)
    q.ack(f, "after a retry", now=now, uploaded=STORED)  # an upload that carries a note counts
    q.fail(g, "corrupt gzip: x", now=now, reason="corrupt")


def test_counters_survive_purging_and_reopening(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    now = time.time()
    with Queue(path) as q:
        settle(q, now - 7200)
        q.enqueue_many(versions(1, 100), now=now)
        (h,) = q.claim("w", 60, now=now)
        assert q.retry_later(h, "timeout", 0, False, now=now, reason="transient")
        before = read(q, now)
        assert q.purge_done(older_than=3600, now=now) == 6
    with Queue(path) as q:
        after = read(q, now)
    assert after.backlog.done == 0 and before.backlog.done == 6
    for stats in (before, after):
        assert (stats.totals.uploads, stats.totals.bytes) == (4, 1000 + 1001 + 1002 + 1005)
        assert stats.totals.last_upload_at == pytest.approx(now - 7200)
        assert stats.totals.failures == {"corrupt": 1} and stats.totals.retries == {"transient": 1}
        assert stats.last_hour.uploads == 0  # two hours ago


def test_trailing_windows_count_uploads_not_done_entries(tmp_path: Path) -> None:
    with Queue(tmp_path / "q.db") as q:
        now = time.time()
        settle(q, now - 30)
        stats = read(q, now)
        assert (stats.last_minute.uploads, stats.last_hour.uploads) == (4, 4)
        assert stats.last_minute.bytes == 1000 + 1001 + 1002 + 1005
        later = read(q, now + 120)
        assert (later.last_minute.uploads, later.last_hour.uploads) == (0, 4)


def test_prometheus_text_keeps_the_old_names_and_adds_the_counters(tmp_path: Path) -> None:
    with Queue(tmp_path / "q.db") as q:
        settle(q, time.time())
        q.beat("watcher", "host/1/2", now=1234.5)
        got = samples(prometheus(read(q)))
    assert got[("sftppush_queue_entries", (("state", "done"),))] == 6
    assert got[("sftppush_queue_entries", (("state", "failed"),))] == 1
    assert got[("sftppush_uploads", (("window", "hour"),))] == 4
    assert ("sftppush_uploaded_bytes", (("window", "minute"),)) in got
    assert ("sftppush_oldest_pending_age_seconds", ()) in got
    assert got[("sftppush_upload_files_total", ())] == 4
    assert got[("sftppush_upload_source_bytes_total", ())] == 4008
    assert got[("sftppush_failures_total", (("reason", "corrupt"),))] == 1
    assert got[("sftppush_watcher_heartbeat_timestamp_seconds", ())] == 1234.5
    assert got[("sftppush_last_upload_timestamp_seconds", ())] > 0
    assert got[("sftppush_queue_file_bytes", ())] > 0
    assert got[("sftppush_queue_up", ())] == 1


def test_a_read_only_queue_writes_nothing_and_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(QueueError, match="does not exist"):
        Queue(tmp_path / "none.db", readonly=True)
    assert not (tmp_path / "none.db").exists()
    with Queue(tmp_path / "q.db") as q:
        settle(q, time.time())
    with Queue(tmp_path / "q.db", readonly=True) as ro:  # no writer: read as immutable
        assert read(ro).totals.uploads == 4
        with pytest.raises(QueueError, match="readonly"):
            ro.beat("watcher", "me")
    with Queue(tmp_path / "q.db") as q, Queue(tmp_path / "q.db", readonly=True) as ro:
        q.beat("watcher", "w", now=5.0)  # a writer has the file open: WAL read
        assert read(ro).watcher.heartbeat_at == 5.0


def test_an_older_queue_file_is_not_upgraded_by_a_reader(tmp_path: Path) -> None:
    with Queue(tmp_path / "q.db") as q, q.db.transaction() as db:
        db.execute("PRAGMA user_version = 2")
    with pytest.raises(QueueError, match="start the watcher to upgrade"):
        Queue(tmp_path / "q.db", readonly=True)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.status == 200
        return r.read().decode()


@pytest.fixture
def metrics_server(source_tree: SourceTree, tmp_path: Path):
    """`sftppush metrics --listen 127.0.0.1:PORT` as a real process: (port, process)."""
    source_tree.write_config()
    port = free_port()
    log = (tmp_path / "metrics.log").open("wb")
    proc = subprocess.Popen(cli_argv("--config", source_tree.config_path, "metrics", "--listen",
                                     f"127.0.0.1:{port}"),
                            env=child_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: "serving metrics" in (tmp_path / "metrics.log").read_text(), 30,
                   "the metrics server", detail=lambda: (tmp_path / "metrics.log").read_text())
        yield port, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(30)
        log.close()


def test_the_endpoint_serves_the_queue_live_over_http(source_tree: SourceTree,
                                                      metrics_server) -> None:
    port, proc = metrics_server
    assert samples(scrape(port))[("sftppush_queue_up", ())] == 0  # no queue file yet
    assert not source_tree.queue_path.exists(), "a reader created the queue file"
    with Queue(source_tree.queue_path) as q:
        settle(q, time.time())
        q.beat("watcher", "w")
        got = samples(scrape(port))
        expected = read(q)
    assert got[("sftppush_queue_up", ())] == 1
    assert got[("sftppush_upload_files_total", ())] == expected.totals.uploads == 4
    assert got[("sftppush_queue_entries", (("state", "done"),))] == expected.backlog.done
    assert got[("sftppush_watcher_heartbeat_timestamp_seconds", ())] == pytest.approx(
        expected.watcher.heartbeat_at)
    with Queue(source_tree.queue_path) as q:  # each scrape reads afresh
        q.enqueue_many(versions(3, 50))
    assert samples(scrape(port))[("sftppush_queue_entries", (("state", "pending"),))] == 3
    proc.terminate()
    assert proc.wait(30) == 0


def test_metrics_listen_must_be_host_and_port(source_tree: SourceTree, run_cli) -> None:
    result = run_cli("--config", source_tree.write_config(), "metrics", "--listen", "9464")
    assert result.returncode == 2
    assert "--listen: '9464' is not HOST:PORT" in result.stderr


# `queue status --json` as operators' scripts read it: one flat object, these keys in this
# order, whatever the records behind it look like.
STATUS_KEYS = ["pending", "claimed", "done", "failed", "oldest_pending_age_s",
               "uploaded_last_minute", "uploaded_last_hour", "bytes_last_minute",
               "bytes_last_hour", "top_errors", "uploads_total", "uploaded_bytes_total",
               "last_upload_at", "failures", "retries", "watcher_heartbeat_at", "file_bytes",
               "in_flight", "watcher_unwatched_dirs"]
PROGRESS_KEYS = ["id", "path", "key", "parts_done", "parts_total", "bytes_sent", "bytes_per_s"]


def test_status_json_keeps_its_keys_their_order_and_nesting(tmp_path: Path) -> None:
    now = time.time()
    with Queue(tmp_path / "q.db") as q:
        settle(q, now - 30)
        q.enqueue_many(versions(2, 100), now=now - 5)  # one claimed, one pending
        (big,) = q.claim("w", 60, now=now)
        q.start_upload(big, "up-1", "u/f100", json.dumps(
            {"bucket": "b", "part_size": 5 * 2**20, "every": 1000, "started": now - 20}))
        q.add_upload_part(big, json.dumps({"number": 1, "size": 5 * 2**20, "etag": "e",
                                           "md5": "m", "checksum": None, "at": now - 10}))
        q.beat("watcher", "w", now=now)
        q.set_gauges({"watcher_unwatched_dirs": 2})
        data = json.loads(json.dumps(read(q, now).to_json()))
    with Queue(tmp_path / "empty.db") as q:
        empty = read(q, now).to_json()
    assert list(data) == list(empty) == STATUS_KEYS
    assert data["top_errors"] == [{"error": "corrupt gzip: x", "count": 1}]
    assert data["failures"] == {"corrupt": 1} and data["retries"] == {}
    assert [list(p) for p in data["in_flight"]] == [PROGRESS_KEYS]
    assert data["in_flight"][0]["id"] == big.id and data["watcher_unwatched_dirs"] == 2
    scalars = [k for k in STATUS_KEYS if k not in ("top_errors", "failures", "retries",
                                                   "in_flight")]
    assert all(isinstance(data[k], int | float) for k in scalars)
    assert [empty[k] for k in ("top_errors", "failures", "retries", "in_flight")] == \
        [[], {}, {}, []]
