"""The queue watch: a write to the queue file wakes an idle consumer; a paused watch waits."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from sftppush.queue import FileVersion, Queue
from sftppush.wake import QueueWatch
from tests.conftest import inotify_budget, wait_until


@pytest.fixture(autouse=True)
def _inotify(tmp_path: Path) -> None:
    inotify_budget(tmp_path)


def enqueue_one(q: Queue, tmp_path: Path, name: str) -> None:
    p = tmp_path / name
    p.write_bytes(b"x")
    q.enqueue_many([FileVersion.of(p, "s", p.stat(), "close_write")])


def test_a_write_made_while_paused_wakes_at_resume_and_none_before(tmp_path: Path) -> None:
    woken = threading.Event()
    with Queue(tmp_path / "queue.db") as q, QueueWatch(q.file, woken.set) as watch:
        enqueue_one(q, tmp_path, "a")
        assert woken.wait(5), "a write wakes an unpaused watch"
        watch.pause()
        woken.clear()
        # The watch thread may have been waiting in select when paused: its next event
        # still wakes once; after that it reads nothing until resumed.
        enqueue_one(q, tmp_path, "b")
        woken.wait(0.2)
        woken.clear()
        enqueue_one(q, tmp_path, "c")
        assert not woken.wait(0.3), "a paused watch wakes nobody"
        watch.resume()
        wait_until(woken.is_set, 5, "the write made while paused to wake at resume")
