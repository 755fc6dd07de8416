"""The consumer's memory settings: glibc's, and the cyclic collector's after start-up."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

CALMED = """
import gc
from sftppush import memory
young, *older = gc.get_threshold()
memory.calm_collector()
assert gc.get_freeze_count() > 1000, gc.get_freeze_count()  # start-up objects: never walked
assert gc.get_threshold() == (memory.YOUNG_COLLECTION_AFTER, *older), gc.get_threshold()
cycle = []
cycle.append(cycle)
del cycle
assert gc.collect() >= 1  # garbage made after it is still collected
"""


def test_start_up_objects_are_frozen_and_young_garbage_still_collected() -> None:
    # In a process of its own: freezing is for the whole interpreter.
    subprocess.run([sys.executable, "-c", CALMED], check=True, cwd=REPO)
