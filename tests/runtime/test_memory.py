"""A consumer's process memory: what start-up left is frozen out of the collector's rounds
only where the consumer owns its process."""

from __future__ import annotations

import gc

from sftppush.runtime import memory


def test_start_up_objects_are_frozen_only_for_a_consumer_that_owns_its_process() -> None:
    assert gc.get_freeze_count() == 0
    memory.release_free_memory()  # a consumer run inside another program (these tests)
    assert gc.get_freeze_count() == 0
    try:
        memory.release_free_memory(freeze=True)  # `sftppush consume`
        frozen = gc.get_freeze_count()
        assert frozen > 1000  # modules, functions, botocore's and pytest's objects
        later = [[] for _ in range(100)]  # made after: collected as usual
        assert gc.get_freeze_count() == frozen and len(later) == 100
    finally:
        gc.unfreeze()
    assert gc.get_freeze_count() == 0
