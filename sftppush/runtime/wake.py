"""Wakes an idle consumer the moment another process writes the queue file.

Owns one inotify watch on the queue's directory (IN_MODIFY/IN_CREATE of its `-wal` file,
which every committed write appends to) and a thread that turns those events into a call.
Where no watch can be had (the per-user inotify limits are shared with the watcher, which
may hold every watch a user is allowed), the thread looks at the WAL's stat every
POLL_SECONDS instead, and says so once with the limit to raise. It never reads or writes
the queue: a wake-up is only a hint, the caller's timer stays the fallback (and the only
clock for retries that come due by time alone). A caller with work enough pauses it:
events wait in the kernel (coalesced), or the stat's change waits, and wake it at once on
resume.
"""

from __future__ import annotations

import errno
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
POLL_SECONDS = 0.01  # without a watch: 100 stat() calls a second, a wake-up within 10 ms

# What to raise when inotify refuses, by errno.
_LIMITS = {errno.ENOSPC: "fs.inotify.max_user_watches (shared with the watcher)",
           errno.EMFILE: "fs.inotify.max_user_instances"}


class QueueWatch:
    """Calls `wake()` (from its own thread) whenever the queue's WAL file is written."""

    def __init__(self, queue_file: Path, wake: Callable[[], None]) -> None:
        self._name = queue_file.name + "-wal"
        self._wal = queue_file.with_name(self._name)
        self._wake = wake
        self._inotify = _watch_dir(queue_file.parent)
        self._stop_r, self._stop_w = os.pipe()
        self._armed = threading.Event()
        self._armed.set()
        # pause() waits out a wake-up under way, so that none comes after it returns; a
        # write seen just as it paused is owed, and resume() wakes for it.
        self._gate = threading.Lock()
        self._owed = False
        self._thread = threading.Thread(target=self._run if self._inotify else self._poll,
                                        name="queue-watch", daemon=True)
        self._thread.start()

    @property
    def polling(self) -> bool:
        """True when no inotify watch could be had and the WAL's stat is polled."""
        return self._inotify is None

    def _run(self) -> None:
        assert self._inotify is not None
        fds = [self._inotify.fileno(), self._stop_r]
        while True:
            self._armed.wait()
            ready, _, _ = select.select(fds, [], [])
            if self._stop_r in ready:
                return
            if not self._armed.is_set():
                continue  # paused while it waited: the events stay in the kernel for resume()
            if any(event.name == self._name for event in self._inotify.read(timeout=0)):
                self._wake_if_armed()
                # Under load every commit writes the WAL. Unread identical events coalesce in
                # the kernel, so a short pause turns thousands of reads a second into a few.
                time.sleep(COALESCE_SECONDS)

    def _poll(self) -> None:
        seen = self._stat()
        while True:
            self._armed.wait()
            ready, _, _ = select.select([self._stop_r], [], [], POLL_SECONDS)
            if ready:
                return
            if not self._armed.is_set():
                continue  # paused meanwhile: a change now is for resume() to wake
            now = self._stat()
            if now != seen:
                seen = now
                self._wake_if_armed()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self._wal)
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def _wake_if_armed(self) -> None:
        with self._gate:
            if self._armed.is_set():
                self._wake()
            else:
                self._owed = True

    def pause(self) -> None:
        """No wake-ups from its return until resume(): the caller has work enough (a deep
        backlog), and each of its own commits would otherwise wake it and this thread for
        nothing."""
        with self._gate:
            self._armed.clear()

    def resume(self) -> None:
        """Wake-ups again; a write made while paused wakes the caller at once."""
        with self._gate:
            self._armed.set()
            owed, self._owed = self._owed, False
        if owed:
            self._wake()

    def close(self) -> None:
        os.write(self._stop_w, b"x")
        self._armed.set()
        self._thread.join(5)
        for fd in (self._stop_r, self._stop_w):
            os.close(fd)
        if self._inotify is not None:
            self._inotify.close()

    def __enter__(self) -> QueueWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _watch_dir(directory: Path) -> INotify | None:
    """An inotify instance watching `directory`, or None (logged) where none can be had."""
    # The directory, not the file: the WAL is deleted and recreated as connections come
    # and go, and a watch on the directory survives that.
    try:
        inotify = INotify(nonblocking=True)
    except OSError as exc:
        return _unavailable(exc)
    try:
        inotify.add_watch(directory, F.MODIFY | F.CREATE | F.MOVED_TO)
    except OSError as exc:
        inotify.close()
        return _unavailable(exc)
    return inotify


def _unavailable(exc: OSError) -> None:
    limit = _LIMITS.get(exc.errno or 0)
    log.warning("queue watch unavailable, polling the queue file every %gs instead error=%s%s",
                POLL_SECONDS, exc.strerror or exc,
                f" limit={limit} (raise it for wake-ups by inotify)" if limit else "")


def watch_or_none(queue_file: Path, wake: Callable[[], None]) -> QueueWatch | None:
    """The consumer's QueueWatch. Since it polls where inotify refuses, it is never None
    now; the name is the one consumer.py calls."""
    return QueueWatch(queue_file, wake)
