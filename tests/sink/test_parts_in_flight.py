"""How many parts of one multipart upload are in flight: more when each waits on a store far
away (its bandwidth-delay product), never more than the memory ceiling, and no more when the
store itself is the bottleneck. Model stores behind Multipart's `call` seam: pure sizing logic,
not uploading (that is tests/sink/test_s3.py's, on real servers)."""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from typing import Any

from sftppush.sink.multipart import Multipart

PART = 64 * 2**10  # small parts keep the model quick; S3's 5 MiB floor is not Multipart's


class ModelStore:
    """Answers UploadPart after `latency(parts in flight)` seconds; notes how many parts were
    in flight as each came (`seen`)."""

    def __init__(self, latency: Any) -> None:
        self.latency = latency
        self.running = 0
        self.seen: list[int] = []
        self.lock = threading.Lock()

    def call(self, method: str, _cancel: Any = None, **kw: Any) -> dict[str, Any]:
        if method == "create_multipart_upload":
            return {"UploadId": "u"}
        if method == "complete_multipart_upload":
            return {"ETag": '"whole-1"'}
        if method == "head_object":
            return {"ContentLength": self.total, "ETag": '"whole-1"'}  # as completed
        if method != "upload_part":
            return {}
        with self.lock:
            self.running += 1
            self.seen.append(self.running)
        time.sleep(self.latency(self.running))
        with self.lock:
            self.running -= 1
        return {"ETag": f'"{hashlib.md5(kw["Body"].read(), usedforsecurity=False).hexdigest()}"'}


def upload(store: ModelStore, parts: int, floor: int, ceiling: int) -> Multipart:
    multipart = Multipart(store.call, PART, None, {}, True, floor * PART, 2**30, ceiling * PART)
    multipart.every = 10**6  # parts keep their first size
    store.total = parts * PART
    done = multipart.upload("b", "k", [], io.BytesIO(os.urandom(store.total)), {}, None)
    assert (done.parts, done.bytes_out) == (parts, store.total)
    return multipart


def test_parts_waiting_on_a_far_store_grow_in_flight_up_to_the_memory_ceiling():
    store = ModelStore(lambda _: 0.1)  # a round trip of 100 ms, whatever runs
    upload(store, 100, floor=2, ceiling=8)
    later = store.seen[50:]
    assert max(store.seen) <= 8 and sum(later) / len(later) >= 5, store.seen


def test_a_store_busy_with_one_part_at_a_time_gets_no_more_in_flight():
    busy = threading.Lock()

    def one_at_a_time(_: int) -> float:
        with busy:
            time.sleep(0.03)
        return 0.0

    store = ModelStore(one_at_a_time)
    upload(store, 60, floor=2, ceiling=8)
    # Steps up are tried now and then (a noisy median may even keep one a while), and
    # taken back: they only made parts wait longer.
    assert sum(store.seen) / len(store.seen) <= 2.6, store.seen
