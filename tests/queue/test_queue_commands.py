"""`sftppush queue status|list|replay|purge` as real processes on a real queue file (SPEC 6)."""

from __future__ import annotations

import json
import re
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sftppush import __version__
from sftppush.queue.entries import FileVersion, State, Stored
from sftppush.queue.queue import Queue
from sftppush.status import read as read_stats
from tests.conftest import SourceTree

STORED = Stored("0123abcd", "sha256-of-the-body")  # what an upload recorded


@pytest.fixture
def filled(source_tree: SourceTree) -> SourceTree:
    """A queue with 1 pending (retrying), 1 claimed, 2 done (one of them old), 2 failed."""
    source_tree.write_config()
    with Queue(source_tree.queue_path) as q:
        q.enqueue_many(FileVersion(f"/home/sftpuser1/upload/f{i}".encode(), "sftpuser1", 10 * i,
                                   i, i, i, "close_write") for i in range(6))
        a, b, c, d, e = q.claim("test", 300, limit=5)
        q.ack(a, now=time.time() - 30 * 86400)
        q.take_key(b, "sftpuser1/upload/f1")
        q.ack(b, uploaded=STORED)
        q.fail(c, "corrupt gzip: unexpected end of stream", reason="corrupt")
        q.fail(d, "corrupt gzip: unexpected end of stream", reason="corrupt")
        q.retry_later(e, "could not connect to the endpoint", 3600, count_attempt=False)
        q.claim("test", 300, limit=1)
    return source_tree


def test_status_json_counts_each_state(filled: SourceTree, run_cli) -> None:
    result = run_cli("--config", filled.config_path, "queue", "status", "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert {k: status[k] for k in ("pending", "claimed", "done", "failed")} == \
        {"pending": 1, "claimed": 1, "done": 2, "failed": 2}
    assert isinstance(status["oldest_pending_age_s"], float)
    assert status["uploaded_last_hour"] == 1
    assert status["top_errors"][0] == {"error": "corrupt gzip: unexpected end of stream",
                                       "count": 2}


def test_status_prometheus_parses(filled: SourceTree, run_cli) -> None:
    result = run_cli("--config", filled.config_path, "queue", "status", "--prometheus")
    assert result.returncode == 0, result.stderr
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(result.stdout)
               for s in family.samples}
    assert samples[("sftppush_queue_entries", (("state", "failed"),))] == 2
    assert samples[("sftppush_queue_entries", (("state", "done"),))] == 2
    assert samples[("sftppush_uploads", (("window", "hour"),))] == 1
    assert samples[("sftppush_oldest_pending_age_seconds", ())] >= 0
    assert samples[("sftppush_build_info", (("version", __version__),))] == 1


def test_status_text_names_errors(filled: SourceTree, run_cli) -> None:
    result = run_cli("--config", filled.config_path, "queue", "status")
    assert result.returncode == 0
    assert "failed 2" in result.stdout and "corrupt gzip" in result.stdout
    # The counters are totals since the queue file was made; the line says so, and how many
    # entries are failed now.
    assert "failures ever (since the queue file was made), by reason: corrupt 2  (failed now: 2" \
        in result.stdout


def test_list_shows_the_key_when_a_pending_entry_retries_and_only_current_errors(
        filled: SourceTree, run_cli) -> None:
    with Queue(filled.queue_path) as q:  # done after an outage: its error is history
        q.enqueue_many([FileVersion(b"/home/sftpuser1/upload/late", "sftpuser1", 1, 9, 9, 9,
                                    "close_write")])
        (late,) = q.claim("test", 300)
        q.retry_later(late, "S3 unreachable: connection refused", 0, count_attempt=False)
        (late,) = q.claim("test", 300)
        q.take_key(late, "sftpuser1/upload/late")
        q.ack(late, uploaded=STORED)
    text = run_cli("--config", filled.config_path, "queue", "list").stdout
    lines = {line.split("path=")[1].split()[0].strip("'").rsplit("/", 1)[1]: line
             for line in text.splitlines()}
    assert re.search(r" pending +attempts=0 retry_in=3[56]\d\ds ", lines["f4"]), lines["f4"]
    assert "error='could not connect to the endpoint'" in lines["f4"]
    assert "key='sftpuser1/upload/f1'" in lines["f1"]
    assert "key='sftpuser1/upload/late'" in lines["late"] and "error=" not in lines["late"]
    assert "error='corrupt gzip" in lines["f2"] and "retry_in" not in lines["f2"]
    rows = {r["path"].rsplit("/", 1)[1]: r for r in map(
        json.loads, run_cli("--config", filled.config_path, "queue", "list", "--json")
        .stdout.splitlines())}
    assert 3500 < rows["f4"]["retry_in_s"] <= 3600
    assert rows["f4"]["error"] == rows["f4"]["last_error"] == "could not connect to the endpoint"
    assert rows["late"]["error"] is None and rows["late"]["retry_in_s"] is None
    assert rows["late"]["last_error"] == "S3 unreachable: connection refused"  # the record


def test_list_failed_as_json(filled: SourceTree, run_cli) -> None:
    result = run_cli("--config", filled.config_path, "queue", "list", "--state", "failed",
                     "--json")
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["state"] for r in rows] == ["failed", "failed"]
    assert rows[0]["last_error"].startswith("corrupt gzip")
    assert rows[0]["path"].startswith("/home/sftpuser1/upload/f")
    limited = run_cli("--config", filled.config_path, "queue", "list", "--limit", "3")
    assert len(limited.stdout.splitlines()) == 3


def test_list_json_shows_the_key_and_ctime(filled: SourceTree, run_cli) -> None:
    result = run_cli("--config", filled.config_path, "queue", "list", "--state", "done",
                     "--json")
    rows = {r["path"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert rows["/home/sftpuser1/upload/f1"]["key"] == "sftpuser1/upload/f1"
    assert rows["/home/sftpuser1/upload/f0"]["key"] is None
    assert rows["/home/sftpuser1/upload/f1"]["ctime_ns"] == 1


def test_replay_failed_and_by_id(filled: SourceTree, run_cli) -> None:
    with Queue(filled.queue_path) as q:
        first, second = (e.id for e in q.list(State.FAILED))
    one = run_cli("--config", filled.config_path, "queue", "replay", str(first))
    assert one.returncode == 0 and "replayed 1 entry" in one.stdout
    rest = run_cli("--config", filled.config_path, "queue", "replay", "--failed")
    assert rest.returncode == 0 and "replayed 1 entry" in rest.stdout
    with Queue(filled.queue_path) as q:
        assert {q.get(first).state, q.get(second).state} == {State.PENDING}
        assert q.get(second).attempts == 0


def test_replay_bad_id_is_exit_2(filled: SourceTree, run_cli) -> None:
    result = run_cli("--config", filled.config_path, "queue", "replay", "99999")
    assert result.returncode == 2
    assert result.stderr.strip() == \
        "sftppush: queue replay: entry 99999 cannot be replayed: no such entry"
    both = run_cli("--config", filled.config_path, "queue", "replay")
    assert both.returncode == 2


def test_purge_done_older_than(filled: SourceTree, run_cli) -> None:
    result = run_cli("--config", filled.config_path, "queue", "purge", "--done-older-than", "7d")
    assert result.returncode == 0 and "purged 1 done entry" in result.stdout
    with Queue(filled.queue_path) as q:
        assert read_stats(q).backlog.done == 1


def test_purge_bad_duration_is_exit_2(filled: SourceTree, run_cli) -> None:
    result = run_cli("--config", filled.config_path, "queue", "purge", "--done-older-than",
                     "seven days")
    assert result.returncode == 2 and "not a duration" in result.stderr


def test_missing_queue_file_is_one_line_exit_1(source_tree: SourceTree, run_cli) -> None:
    result = run_cli("--config", source_tree.write_config(), "queue", "status")
    assert result.returncode == 1
    assert result.stderr.strip() == f"sftppush: queue: {source_tree.queue_path} does not exist"


def test_corrupt_queue_file_is_one_line_exit_1(source_tree: SourceTree, run_cli) -> None:
    source_tree.queue_path.parent.mkdir(parents=True)
    source_tree.queue_path.write_bytes(b"\0garbage" * 512)
    result = run_cli("--config", source_tree.write_config(), "queue", "status", "--json")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(source_tree.queue_path) in lines[0]
    assert "Traceback" not in result.stderr
