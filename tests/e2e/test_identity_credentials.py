"""Issue 14, case 8: a consumer without AWS credentials waits for them; nothing ends failed.

`sftppush consume` starts with no credentials anywhere in its environment (no keys, the shared
credentials and config files missing, instance metadata disabled): what a host sees while its
instance metadata service is unreachable. With `max_attempts: 1`, one permanent error would
fail an entry. A small file (awscrt lane) and a 12 MiB one (boto3, multipart) are queued. The
process must keep running with both entries pending and an error naming credentials, stop
cleanly on SIGTERM, and once restarted with credentials upload both and delete them.
"""

from __future__ import annotations

import time
from pathlib import Path

from tests.conftest import wait_until
from tests.e2e.identity import MIB, Bucketed, body

CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def test_missing_credentials_keep_entries_pending_until_credentials_come(
        tmp_path: Path, source_tree, pipeline_config, moto_server, s3_client, s3_bucket,
        fault_proxy) -> None:
    pipeline_config(max_attempts=1)
    nowhere = str(tmp_path / "no-such-aws-file")
    run = Bucketed.on_moto(tmp_path, source_tree.config_path, moto_server, s3_client,
                           s3_bucket, fault_proxy, AWS_SHARED_CREDENTIALS_FILE=nowhere,
                           AWS_CONFIG_FILE=nowhere, AWS_EC2_METADATA_DISABLED="true")
    with_credentials = {k: run.product.env[k] for k in CREDENTIALS if k in run.product.env}
    for name in CREDENTIALS:
        run.product.env.pop(name, None)
    bodies = {"small.csv": body(4096, 1), "large.csv": body(12 * MIB, 2)}
    for name, data in bodies.items():
        (source_tree.upload / name).write_bytes(data)
    run.rescan()

    product = run.product
    try:
        product.start("consumer", "consume")

        def all_tried() -> list[dict]:
            product.assert_alive()
            entries = product.entries()
            return [e for e in entries if e["last_error"]] == entries and entries

        entries = wait_until(all_tried, 60, "both entries to be tried without credentials",
                           detail=product.entries)
        time.sleep(3)  # longer than a permanent error needs to fail an entry at max_attempts 1
        product.assert_alive()
        entries = product.entries()
        # Waiting, never failed: tried again every few seconds, so one may be claimed now.
        assert {e["state"] for e in entries} <= {"pending", "claimed"}, entries
        for entry in entries:
            assert "credential" in entry["last_error"].lower(), entry
        assert product.stop("consumer") == 0, product.log_tail()
    finally:
        product.stop_all()

    product.env.update(with_credentials)
    run.drain()

    assert {e["state"] for e in product.entries()} == {"done"}, product.entries()
    for name, data in bodies.items():
        assert run.read(f"sftpuser1/upload/{name}") == data
    assert list(source_tree.upload.iterdir()) == []
