"""The queue watch: a write to the queue file wakes an idle consumer; a paused watch waits."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sftppush.queue.queue import FileVersion, Queue
from sftppush.runtime.wake import QueueWatch
from tests.conftest import REPO, child_env, inotify_budget, own_watch_limit, wait_until


@pytest.fixture(autouse=True)
def _inotify(tmp_path: Path) -> None:
    inotify_budget(tmp_path)


def enqueue_one(q: Queue, tmp_path: Path, name: str) -> None:
    # Not in the queue's directory: there its events would wake the watch's select too.
    (tmp_path / "files").mkdir(exist_ok=True)
    p = tmp_path / "files" / name
    p.write_bytes(b"x")
    q.enqueue_many([FileVersion.of(p, "s", p.stat(), "close_write")])


def test_a_write_made_while_paused_wakes_at_resume_and_none_before(tmp_path: Path) -> None:
    woken = threading.Event()
    with Queue(tmp_path / "queue.db") as q, QueueWatch(q.file, woken.set) as watch:
        enqueue_one(q, tmp_path, "a")
        assert woken.wait(5), "a write wakes an unpaused watch"
        # Paused while its thread waits in select for the next event (that is where it is
        # after a wake-up and its coalescing pause): no write after pause() wakes anyone.
        time.sleep(0.05)
        watch.pause()
        woken.clear()
        enqueue_one(q, tmp_path, "b")
        enqueue_one(q, tmp_path, "c")
        assert not woken.wait(0.3), "a paused watch wakes nobody"
        watch.resume()
        wait_until(woken.is_set, 5, "the write made while paused to wake at resume")


# Run where the user may have no inotify watch at all, as when the watcher holds them all.
WITHOUT_WATCHES = """
import sys, threading, time
from pathlib import Path
from sftppush.queue.queue import FileVersion, Queue
from sftppush.runtime.wake import watch_or_none
tmp = Path(sys.argv[1])
woken = threading.Event()
with Queue(tmp / "queue.db") as q:
    watch = watch_or_none(q.file, woken.set)
    assert watch is not None and watch.polling, "inotify gave a watch: the limit is not 0"
    assert not woken.wait(0.3), "woken with nothing written"
    (tmp / "a").write_bytes(b"x")
    q.enqueue_many([FileVersion.of(tmp / "a", "s", (tmp / "a").stat(), "close_write")])
    assert woken.wait(5), "a write did not wake the polling watch"
    time.sleep(0.05)  # paused while it waits for its next look
    watch.pause()
    woken.clear()
    q.enqueue_many([FileVersion(b"/b", "s", 1, 1, 1, 1, "close_write")])
    assert not woken.wait(0.3), "a paused watch woke"
    watch.resume()
    assert woken.wait(5), "the write made while paused did not wake at resume"
    watch.close()
print("ok")
"""


def test_without_inotify_watches_a_write_still_wakes_by_polling_and_the_log_says_why(
        tmp_path: Path) -> None:
    result = subprocess.run([*own_watch_limit(0), sys.executable, "-c", WITHOUT_WATCHES,
                             str(tmp_path)],
                            capture_output=True, text=True, timeout=60, cwd=REPO,
                            env=child_env())
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
    assert "queue watch unavailable, polling" in result.stderr
    assert "fs.inotify.max_user_watches" in result.stderr
