"""A store that asks to slow down (503 SlowDown to a share of PUTs, answered by the fault proxy
in front of moto, so the store never sees them): the consumer sends fewer at once, loses
nothing, and every slow-down is counted where an operator looks (the retries metric)."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from sftppush.queue.entries import State
from sftppush.sink.transfer import RetryPolicy
from tests.runtime.test_consumer import states, write_and_enqueue


def throttled_retries(run_cli: Any, config: Any) -> float:
    result = run_cli("--config", config, "queue", "status", "--prometheus")
    assert result.returncode == 0, result.stderr
    return sum(sample.value for family in text_string_to_metric_families(result.stdout)
               for sample in family.samples
               if sample.name == "sftppush_retries_total"
               and sample.labels.get("reason") == "throttled")


def test_a_store_asking_to_slow_down_loses_nothing_and_its_slow_downs_show_in_the_metrics(
        source_tree: Any, pipeline_config: Any, moto_server: Any, s3_client: Any,
        s3_bucket: str, fault_proxy: Any, consume_until_drained: Any, upload_path: str,
        run_cli: Any, caplog: Any) -> None:
    proxy = fault_proxy(moto_server.port)
    proxy.answer_puts(0.25)
    cfg = pipeline_config(server=SimpleNamespace(endpoint_url=proxy.url))
    bodies = write_and_enqueue(cfg, source_tree.upload, range(120), 2000)
    with caplog.at_level(logging.DEBUG, logger="sftppush.crt"):
        # One attempt per claim: every slow-down sends its entry back to the queue.
        consume_until_drained(cfg, timeout=120, retry=RetryPolicy(attempts=1),
                              transient_delay=0.05, transient_delay_max=0.2)
    assert states(cfg)[State.DONE] == 120 and states(cfg)[State.FAILED] == 0
    for key, body in bodies.items():
        assert s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == body
    assert proxy.answered >= 30
    assert throttled_retries(run_cli, source_tree.config_path) == proxy.answered
    cuts = [r for r in caplog.records if r.getMessage().startswith("in flight cut")]
    if upload_path == "crt":  # the fast path's window shrank; boto3's threads are fixed
        assert cuts, "the window was never cut"
