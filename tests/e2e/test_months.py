"""Months unattended, in a minute: `sftppush run --consumers 2` with queue.keep_done of one
second against rclone, files arriving in waves. Done entries are purged while the consumers
claim, the counters still count every upload, the watcher's heartbeat is there, and
`sftppush metrics` (read-only, its own process) serves the same numbers as the queue.
"""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from sftppush.locals3 import free_port
from tests.conftest import wait_until
from tests.e2e.system import Product

WAVES, PER_WAVE = 5, 60


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {s.name + "".join(f"{{{v}}}" for v in s.labels.values()): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_done_entries_are_purged_while_consumers_claim_and_the_counters_stay_true(
        source_tree: Any, rclone_s3: Any, tmp_path: Path) -> None:
    bucket = rclone_s3.make_bucket("months")
    config = source_tree.write_config(
        bucket, defaults={"log": {"level": "info"}},
        queue={"path": str(source_tree.queue_path), "keep_done": "1s"})
    product = Product(tmp_path, config, rclone_s3.env())
    port = free_port()
    try:
        product.start("run", "run", "--consumers", "2")
        wait_until(lambda: source_tree.queue_path.exists(), 30, "the queue file")
        product.start("metrics", "metrics", "--listen", f"127.0.0.1:{port}")
        wait_until(lambda: _up(port), 30, "the metrics endpoint")
        sent = 0
        for wave in range(WAVES):
            target = source_tree.upload / f"w{wave}"
            target.mkdir()
            for i in range(PER_WAVE):
                (target / f"f{i:03d}.csv").write_bytes(b"%d,%d\n" % (wave, i) * 50)
            sent += PER_WAVE
            wait_until(lambda n=sent: product.status().get("uploads_total") == n, 60,
                       f"{sent} uploads counted", detail=product.status)
            time.sleep(1.5)  # the earlier waves pass their keep
        status = wait_until(lambda: (s := product.status())["done"] < PER_WAVE and s, 60,
                            "done entries purged down to the last wave",
                            detail=product.status)
        product.assert_alive()
        metrics = scrape(port)
    finally:
        product.stop_all()
    assert status["uploads_total"] == WAVES * PER_WAVE
    assert status["uploaded_last_hour"] == WAVES * PER_WAVE
    assert status["failed"] == 0 and status["pending"] == 0
    assert status["watcher_heartbeat_at"] > time.time() - 60
    purged = [int(e["entries"]) for e in product.events("purged")]
    assert sum(purged) >= WAVES * PER_WAVE - status["done"], purged
    assert metrics["sftppush_upload_files_total"] == WAVES * PER_WAVE
    assert metrics["sftppush_watcher_heartbeat_timestamp_seconds"] > 0
    assert metrics["sftppush_queue_entries{done}"] < PER_WAVE
    assert sum(1 for _ in (rclone_s3.root / bucket).rglob("*.csv")) == WAVES * PER_WAVE
    assert not any(p.is_file() for p in source_tree.upload.rglob("*"))


def _up(port: int) -> bool:
    try:
        return scrape(port).get("sftppush_queue_up") == 1
    except OSError:
        return False
