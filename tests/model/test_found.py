"""What the model test found on 05b1e90, pinned: each run is the shrunk sequence Hypothesis
printed (tests/model/test_model.py), replayed step by step with every invariant checked after
each step and at the end (teardown quiesces: writers close, the store heals, time passes,
consumers drain). Each failed on 05b1e90; the issue 23 commits say which hole it is.
"""

from __future__ import annotations

from typing import Any

from tests.model.machine import Model

STORE = {"conditional": True, "checksums": "validate", "opaque": False}


def replay(setup: dict[str, Any], *steps: tuple[str, dict[str, Any]]) -> None:
    model = Model()
    try:
        model.setup(**setup)
        for rule, args in steps:
            getattr(model, rule)(**args)
            model.check()
    finally:
        model.teardown()


def test_a_name_with_a_trailing_space_is_its_own_objects_path() -> None:
    """Hole 2: HTTP trims "rep " to "rep" in metadata; after a purge, the conditional
    re-send found its own object and failed "key collision: ... holds u1:rep"."""
    replay({"crt": True, **STORE, "delete": True},
           ("write", {"d": b"a", "name": b"rep ", "size": 300}),
           ("watcher_reads_events", {}),
           ("consumers_run", {}),
           ("done_entries_purged", {}),
           ("write", {"d": b"a", "name": b"rep ", "size": 300}),
           ("watcher_reads_events", {}),
           ("consumers_run", {}))



def test_a_store_that_ignores_checksums_is_caught_corrupting_by_its_md5_etag() -> None:
    """Found beside the eleven: the store kept one byte flipped and answered the ETag of what
    it kept; a single PUT whose ETag was not the body's MD5 fell back to HEAD (size and our
    own sha256 metadata, both as sent), passed, and the file was deleted."""
    replay({"crt": True, "conditional": True, "checksums": "ignore", "opaque": False,
            "delete": True},
           ("write", {"d": b"a", "name": b"x.csv", "size": 300}),
           ("watcher_reads_events", {}),
           ("store_lies_next", {"lie": "corrupt"}),
           ("consumers_run", {}))
