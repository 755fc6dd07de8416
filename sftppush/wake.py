"""Wakes an idle consumer the moment another process writes the queue file.

Owns one inotify watch on the queue's directory (IN_MODIFY/IN_CREATE of its `-wal` file,
which every committed write appends to) and a thread that turns those events into a call.
It never reads or writes the queue: a wake-up is only a hint, the caller's timer stays the
fallback (and the only clock for retries that come due by time alone). A caller with work
enough pauses it: events wait in the kernel (coalesced) and wake it at once on resume.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections.abc import Callable
from pathlib import Path

from inotify_simple import INotify
from inotify_simple import flags as F

log = logging.getLogger("sftppush.wake")

COALESCE_SECONDS = 0.002


class QueueWatch:
    """Calls `wake()` (from its own thread) whenever the queue's WAL file is written."""

    def __init__(self, queue_file: Path, wake: Callable[[], None]) -> None:
        self._name = queue_file.name + "-wal"
        self._wake = wake
        self._inotify = INotify(nonblocking=True)
        # The directory, not the file: the WAL is deleted and recreated as connections come
        # and go, and a watch on the directory survives that.
        self._inotify.add_watch(queue_file.parent, F.MODIFY | F.CREATE | F.MOVED_TO)
        self._stop_r, self._stop_w = os.pipe()
        self._armed = threading.Event()
        self._armed.set()
        self._thread = threading.Thread(target=self._run, name="queue-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        fds = [self._inotify.fileno(), self._stop_r]
        while True:
            self._armed.wait()
            ready, _, _ = select.select(fds, [], [])
            if self._stop_r in ready:
                return
            if any(event.name == self._name for event in self._inotify.read(timeout=0)):
                self._wake()
                # Under load every commit writes the WAL. Unread identical events coalesce in
                # the kernel, so a short pause turns thousands of reads a second into a few.
                time.sleep(COALESCE_SECONDS)

    def pause(self) -> None:
        """No wake-ups until resume(): the caller has work enough (a deep backlog), and each
        of its own commits would otherwise wake it and this thread for nothing."""
        self._armed.clear()

    def resume(self) -> None:
        """Wake-ups again; a write made while paused wakes the caller at once."""
        self._armed.set()

    def close(self) -> None:
        os.write(self._stop_w, b"x")
        self._armed.set()
        self._thread.join(5)
        for fd in (self._stop_r, self._stop_w):
            os.close(fd)
        self._inotify.close()

    def __enter__(self) -> QueueWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def watch_or_none(queue_file: Path, wake: Callable[[], None]) -> QueueWatch | None:
    """A QueueWatch, or None where inotify is unavailable (the timer alone then)."""
    try:
        return QueueWatch(queue_file, wake)
    except OSError as exc:  # e.g. fs.inotify.max_user_instances reached
        log.warning("queue watch unavailable, polling only error=%s", exc)
        return None
