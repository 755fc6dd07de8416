"""The model test (SPEC 9): Hypothesis plays clients, store, crashes and the clock at once
against the real watcher, queue, consumer loop, pipeline and sink (tests/model/machine.py).

CI runs the `ci` profile: a fixed set of 600 sequences of up to 50 steps (derandomized: a run
that passes passes again), about 20,000 steps in a minute or two. The long profile explores
fresh random sequences for as long as it is given, and says how many it ran:

    SFTPPUSH_MODEL=long SFTPPUSH_MODEL_MINUTES=30 python -m pytest -n 0 -s tests/model/test_model.py

A failure prints the shortest sequence of steps Hypothesis found; tests/model/test_found.py
shows how to pin one.
"""

from __future__ import annotations

import os
import time

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from tests.model.machine import Model

PROFILE = os.environ.get("SFTPPUSH_MODEL", "ci")
MINUTES = float(os.environ.get("SFTPPUSH_MODEL_MINUTES", "30"))
COMMON = {"deadline": None, "database": None, "suppress_health_check": list(HealthCheck)}

if PROFILE == "ci":
    TestModel = Model.TestCase
    TestModel.settings = settings(max_examples=int(os.environ.get("SFTPPUSH_MODEL_EXAMPLES",
                                                                  "600")),
                                  stateful_step_count=50, derandomize=True, **COMMON)
else:
    @pytest.mark.timeout(int(MINUTES * 60) + 900)  # and the shrinking of what it finds
    def test_the_long_profile_finds_nothing() -> None:
        start = time.monotonic()
        deadline, rounds, ended = start + MINUTES * 60, 0, "none failed"
        sequences, steps = Model.sequences, Model.steps
        try:
            while time.monotonic() < deadline:
                run_state_machine_as_test(Model, settings=settings(
                    max_examples=200, stateful_step_count=60, **COMMON))
                rounds += 1
        except BaseException:
            ended = "stopped at a failure (its shortest sequence is printed below)"
            raise
        finally:  # the figures also when it found something (counted up to the failure)
            print(f"\nmodel, long profile: {Model.sequences - sequences} sequences,"
                  f" {Model.steps - steps} steps in {(time.monotonic() - start) / 60:.1f} min"
                  f" ({rounds} rounds); {ended}")
