"""A store that fails a share of PUTs with 500 InternalError (answered by the fault proxy in
front of moto, so the store never sees them): each is retried in place (SPEC 4), on both
upload paths, so every file goes up within its first claim and no entry goes back to the
queue."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from sftppush.queue.entries import State
from sftppush.sink.transfer import RetryPolicy
from tests.runtime.test_consumer import states, write_and_enqueue


def queue_retries(run_cli: Any, config: Any) -> float:
    result = run_cli("--config", config, "queue", "status", "--prometheus")
    assert result.returncode == 0, result.stderr
    return sum(sample.value for family in text_string_to_metric_families(result.stdout)
               for sample in family.samples if sample.name == "sftppush_retries_total")


def test_puts_failed_with_500_are_retried_in_place_not_through_the_queue(
        source_tree: Any, pipeline_config: Any, moto_server: Any, s3_client: Any,
        s3_bucket: str, fault_proxy: Any, consume_until_drained: Any, run_cli: Any) -> None:
    proxy = fault_proxy(moto_server.port)
    proxy.answer_puts(0.1, status=500, code="InternalError")  # every tenth PUT
    # Two fast PUTs in flight at most, so failures come one by one, as sporadic ones do (a
    # burst of them beyond the resends at once is an outage: the queue's business).
    cfg = pipeline_config(server=SimpleNamespace(endpoint_url=proxy.url),
                          s3={"max_in_flight": 2})
    bodies = write_and_enqueue(cfg, source_tree.upload, range(60), 2000)
    # The queue's delay is long: an entry sent back to it would not drain in time.
    consume_until_drained(cfg, timeout=60, retry=RetryPolicy(attempts=4, initial=0.01,
                                                             maximum=0.05),
                          transient_delay=120, transient_delay_max=120)
    assert states(cfg)[State.DONE] == 60 and states(cfg)[State.FAILED] == 0
    for key, body in bodies.items():
        assert s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == body
    assert proxy.answered >= 6
    assert queue_retries(run_cli, source_tree.config_path) == 0
