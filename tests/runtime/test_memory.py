"""A consumer's process memory: what start-up left is frozen out of the collector's rounds
only where the consumer owns its process."""

from __future__ import annotations

import gc
import weakref

from sftppush.runtime import memory


class Cycle:
    me: Cycle


def test_start_up_objects_are_frozen_only_for_a_consumer_that_owns_its_process() -> None:
    assert gc.get_freeze_count() == 0
    memory.release_free_memory()  # a consumer run inside another program (these tests)
    assert gc.get_freeze_count() == 0
    try:
        memory.release_free_memory(freeze=True)  # `sftppush consume`
        frozen = gc.get_freeze_count()
        assert frozen > 1000  # modules, functions, botocore's and pytest's objects
        # Made after: collected as usual, a cycle included.
        later = Cycle()
        later.me = later
        gone = weakref.ref(later)
        del later
        gc.collect()
        assert gone() is None and gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()
    assert gc.get_freeze_count() == 0
