"""Issue 14, case 5: a file whose directory was away at its turn is uploaded when it is back.

A directory renamed away (or a mount not up yet) when the consumer gets to its files makes
their entries `done` as vanished. When the directory comes back, those same file versions
must be queued again and uploaded: by the watcher seeing the directory return, or by
`rescan`. Both kinds of vanished entry are tried: no object under the key at all, and an
object there from an older version of the same path.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import wait_until
from tests.e2e.identity import Bucketed, body


@pytest.mark.parametrize("found_by", ["watcher", "rescan"])
def test_files_of_a_directory_renamed_away_and_back_are_uploaded(
        found_by: str, tmp_path: Path, source_tree, pipeline_config, moto_server, s3_client,
        s3_bucket, fault_proxy) -> None:
    pipeline_config()
    run = Bucketed.on_moto(tmp_path, source_tree.config_path, moto_server, s3_client,
                           s3_bucket, fault_proxy)
    d = source_tree.upload / "2026"
    d.mkdir()
    older, newer, fresh = body(5000, 1), body(6000, 2), body(7000, 3)
    (d / "data.csv").write_bytes(older)
    run.rescan()
    run.drain()  # the older version of data.csv is in S3; its file is gone
    assert run.read("sftpuser1/upload/2026/data.csv") == older
    (d / "data.csv").write_bytes(newer)
    (d / "new.csv").write_bytes(fresh)
    run.rescan()
    away = tmp_path / "away"
    os.rename(d, away)  # at their turn, both files are gone
    run.drain()
    notes = sorted(e["note"] for e in run.product.entries("done") if e["id"] > 1)
    assert notes == ["vanished before upload; no object (removed by someone else)",
                     "vanished; object exists at sftpuser1/upload/2026/data.csv"], notes
    if found_by == "watcher":
        run.product.start("watcher", "watch", "--no-rescan")
        wait_until(lambda: any(run.product.events("watching")), 30, "the watcher's watches")
        os.rename(away, d)
        wait_until(lambda: run.product.status()["pending"] == 2, 30,
                   "both versions queued again by the watcher", detail=run.product.entries)
        run.product.stop("watcher")
    else:
        os.rename(away, d)
        assert "enqueued 2," in run.rescan()
    run.drain()
    assert run.read("sftpuser1/upload/2026/data.csv") == newer
    assert run.read("sftpuser1/upload/2026/new.csv") == fresh
    assert list(d.iterdir()) == []
