"""Issue 25, item 3: a long upload shows its progress, from the record its multipart upload
keeps in the queue: `queue list` (text and JSON) and `queue status` show parts done and
total, bytes sent and the rate while it runs, the metrics the bytes sent, and the consumer
logs a progress line at least every 30 s.

A real consumer uploads a 60 MiB file to rclone through a fault proxy that slows every chunk
and then holds every byte (a store that stopped answering mid-upload): the upload is under
way for more than 30 s, and the test asks the product what it shows meanwhile.
"""

from __future__ import annotations

import datetime
import json
import os
import time

from prometheus_client.parser import text_string_to_metric_families

from sftppush.progress import in_flight
from sftppush.queue.queue import Queue
from tests.conftest import FAKE_REGION, wait_until
from tests.e2e.system import Product

MIB = 1 << 20
SIZE = 60 * MIB  # 12 parts of 5 MiB


def test_a_long_upload_shows_its_progress_everywhere(tmp_path, source_tree, rclone_s3,
                                                     fault_proxy) -> None:
    bucket = rclone_s3.make_bucket("progress")
    proxy = fault_proxy(rclone_s3.port)
    config = source_tree.write_config(bucket, defaults={"endpoint_url": proxy.url,
                                                        "awsregion": FAKE_REGION},
                                      consumer={"s3": {"part_size_mb": 5}})
    with (source_tree.upload / "big.bin").open("wb") as f:
        for _ in range(SIZE // MIB):
            f.write(os.urandom(MIB))
    env = {k: v for k, v in rclone_s3.env().items() if k != "SFTPPUSH_DEFAULTS_ENDPOINT_URL"}
    run = Product(tmp_path, config, env)
    assert run.cli("rescan").returncode == 0
    proxy.slow(0.01)
    run.start("consumer", "consume")
    try:
        def under_way() -> bool:  # read in this process: a CLI call takes a while to start
            run.assert_alive()
            if not source_tree.queue_path.exists():
                return False
            with Queue(source_tree.queue_path, readonly=True) as q, q.reading() as db:
                return any(p.parts_done >= 2 for p in in_flight(db, time.time()))

        wait_until(under_way, 60, "two parts to be taken", 0.02, detail=run.log_tail)
        proxy.stall()  # the store stops answering: the upload stays under way
        (entry,) = run.entries()
        going = entry["progress"]
        assert entry["state"] == "claimed" and going["parts_total"] == 12, entry
        assert 2 <= going["parts_done"] < 12
        assert going["bytes_sent"] == going["parts_done"] * 5 * MIB
        assert going["bytes_per_s"] > 0 and going["key"] == "sftpuser1/upload/big.bin"

        text = run.cli("queue", "list").stdout
        assert f"progress='parts {going['parts_done']}/12, " in text, text
        assert " MiB sent, " in text and " MiB/s'" in text

        status = json.loads(run.cli("queue", "status", "--json").stdout)
        assert [(p["id"], p["parts_done"]) for p in status["in_flight"]] == \
            [(entry["id"], going["parts_done"])]
        assert f"id {entry['id']}: parts {going['parts_done']}/12" in \
            run.cli("queue", "status").stdout
        samples = {s.name: s.value for family in text_string_to_metric_families(
            run.cli("queue", "status", "--prometheus").stdout) for s in family.samples}
        assert samples["sftppush_uploads_in_flight"] == 1
        assert samples["sftppush_in_flight_sent_bytes"] == going["bytes_sent"]

        # Silence is never longer than 30 s: the consumer's own line, while nothing moves,
        # timed from its first line (its interpreter's start may take seconds under load).
        line = wait_until(lambda: next(run.events("progress"), None), 40, "a progress line",
                          0.2, detail=run.log_tail)
        first = next(run.events())
        assert logged_at(line) - logged_at(first) < 35, (first, line)
        assert line["level"] == "info" and line["id"] == entry["id"]
        assert line["parts_total"] == 12 and line["parts_done"] >= going["parts_done"]
        assert line["bytes_sent"] == line["parts_done"] * 5 * MIB
        assert line["path"].endswith("/upload/big.bin")
    finally:
        proxy.restore()
    try:
        wait_until(lambda: run.entries()[0]["state"] == "done", 120, "the upload to finish",
                   0.2, detail=run.log_tail)
        assert run.entries()[0]["progress"] is None
        assert json.loads(run.cli("queue", "status", "--json").stdout)["in_flight"] == []
    finally:
        run.stop_all()
    assert (rclone_s3.root / bucket / "sftpuser1" / "upload" / "big.bin").stat().st_size == SIZE


def logged_at(line: dict) -> float:
    """The time a JSON log line was written (ISO 8601 in UTC), in seconds since the epoch."""
    return datetime.datetime.fromisoformat(line["time"]).timestamp()
