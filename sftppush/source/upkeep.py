"""The watcher's upkeep of the queue: its heartbeat and gauges (what read-only status and
metrics show of it), and done entries older than `queue.keep_done` purged a small batch at
a time, so the file stays bounded while claims and acks go on. It never touches an entry
that is not done, nor one still within its keep.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sftppush.errors import QueueError
from sftppush.queue.queue import PURGE_BATCH, Queue
from sftppush.source.scan import still_needed

log = logging.getLogger("sftppush.upkeep")

HEARTBEAT_EVERY = 10.0  # s between two heartbeats of the watcher
PURGE_EVERY = 60.0      # s between two looks for done entries past their keep, at most
PURGE_PAUSE = 0.02      # s between two batches: writers waiting for the lock get it first
GAUGE_EVERY = 1.0       # s between two writes of gauges that changed, at least


class Upkeep:
    """Called from the watcher's loop: `run(now)` whenever `due()` has come."""

    def __init__(self, queue: Queue, keep_done: float, owner: str) -> None:
        self.queue = queue
        self.keep_done = keep_done  # 0: done entries are kept forever
        self.owner = owner
        # A short keep (tests, a small disk) is looked at more often than once a minute.
        self.purge_every = min(PURGE_EVERY, max(1.0, keep_done / 4))
        self.next_beat = 0.0
        self.next_purge = 0.0 if keep_done else float("inf")
        self.sweep = 0  # purged in the sweep under way
        self.purged = 0
        self.gauges: dict[str, float] = {}
        self.written: dict[str, float] = {}  # as the queue has them
        self.next_gauges = 0.0

    def gauge(self, name: str, value: float) -> None:
        """Set a gauge; it is written with the next run() at least GAUGE_EVERY s after the
        last write (a watcher's start writes each, so no stale value stays)."""
        self.gauges[name] = value

    def due(self) -> float:
        changed = self.next_gauges if self.gauges != self.written else float("inf")
        return min(self.next_beat, self.next_purge, changed)

    def run(self, now: float) -> None:
        if now >= self.next_beat:
            self.next_beat = now + HEARTBEAT_EVERY
            self._guarded(lambda: self.queue.beat("watcher", self.owner), "heartbeat")
        if self.gauges != self.written and now >= self.next_gauges:
            self.next_gauges = now + GAUGE_EVERY
            changed = {k: v for k, v in self.gauges.items() if self.written.get(k) != v}
            if self._guarded(lambda: self.queue.set_gauges(changed), "gauges") is not None:
                self.written.update(changed)
        if now >= self.next_purge:
            self.next_purge = now + self.purge_every
            n = self._guarded(lambda: self.queue.purge_some(
                self.keep_done, still_there=still_needed), "purge")
            self.sweep += n or 0
            if n == PURGE_BATCH:  # more to go: the next batch after a pause
                self.next_purge = now + PURGE_PAUSE
            elif self.sweep:
                log.info("purged done entries=%d kept_s=%.0f", self.sweep, self.keep_done)
                self.purged += self.sweep
                self.sweep = 0

    @staticmethod
    def _guarded(work: Callable[[], int | None], what: str) -> int | None:
        """A failed upkeep step (disk full, lock timeout) is logged and tried again at its
        next turn; it must not stop the watcher from queuing files."""
        try:
            return work()
        except QueueError as exc:
            log.warning("%s failed error=%s", what, exc)
            return None
