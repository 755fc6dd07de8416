"""The walks the watcher has queued: at start, after an overflow, of a new directory, a
changed mount, a source dir back, and the directories without a watch. Each is advanced a
slice at a time between two reads of the event queue, so a long one never lets the
kernel's queue fill.

Owns the order of the walks, their slicing and what each one watches before it lists a
directory; what a file found means is the watcher's business. It never opens a data file.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from sftppush.queue.entries import FileVersion, shown
from sftppush.source.scan import walk
from sftppush.source.watches import Root, Watches

log = logging.getLogger("sftppush.watcher")  # the watcher's own lines

SCAN_SLICE = 0.05      # s of scanning between two reads of the event queue
SCAN_SLICE_DIRS = 200  # listing a directory queues 4 events of our own; keep under the limit


@dataclass(eq=False)
class Scan:
    root: Root
    top: bytes
    why: str
    shallow: bool = False  # `top` only, and the directories below it not known yet
    steps: Iterator[FileVersion | None] | None = None
    files: int = 0


class Scans:
    """The queued walks, the first one under way."""

    def __init__(self, watches: Watches, ignore: tuple[str, ...],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.watches = watches
        self.ignore = ignore
        self.clock = clock
        self.queued: deque[Scan] = deque()
        self.waiting: set[tuple[bytes, bool]] = set()  # (top, shallow) of those not started

    def __bool__(self) -> bool:
        return bool(self.queued)

    def __iter__(self) -> Iterator[Scan]:
        return iter(self.queued)

    def add(self, root: Root, top: bytes, why: str, first: bool = False,
            shallow: bool = False) -> bool:
        """Queue a walk of `top`; False if the same walk is queued and not started (it will
        see everything). A new dir goes `first`, before a long rescan, which resumes where
        it paused."""
        if (top, False) in self.waiting or (top, shallow) in self.waiting:
            return False  # a full walk covers a shallow one, not the other way round
        self.waiting.add((top, shallow))
        (self.queued.appendleft if first else self.queued.append)(
            Scan(root, top, why, shallow))
        return True

    def has(self, top: bytes) -> bool:
        return any(s.top == top for s in self.queued)

    def advance(self, now: float) -> Iterator[FileVersion]:
        """The files the queued walks find in one slice (SCAN_SLICE s, or SCAN_SLICE_DIRS
        directories listed)."""
        deadline = self.clock() + SCAN_SLICE
        listed = 0
        while self.queued:
            scan = self.queued[0]
            if scan.steps is None:
                self.waiting.discard((scan.top, scan.shallow))
                scan.steps = walk(scan.top, scan.root.source.name, self.ignore,
                                  on_dir=self._on_dir(scan))
            for version in scan.steps:
                if version is None:
                    listed += 1
                    if listed >= SCAN_SLICE_DIRS or self.clock() >= deadline:
                        return
                    continue
                scan.files += 1
                yield version
            self.queued.popleft()
            if scan.shallow:
                self.watches.unwatched.scanned(now)
            (log.debug if scan.why in ("new dir", "unwatched") else log.info)(
                "scan done source=%s dir=%s files=%d why=%s", scan.root.source.name,
                shown(scan.top), scan.files, scan.why.replace(" ", "_"))

    def tick_unwatched(self, now: float) -> None:
        """When due, scan the directories that have no watch (the watch limit was reached),
        after trying again to watch each."""
        unwatched = self.watches.unwatched
        if now >= unwatched.due():
            unwatched.tick(now, sum(self.add(root, path, "unwatched", shallow=True)
                                    for path, root in self.watches.retry_unwatched()))

    def _on_dir(self, scan: Scan) -> Callable[[bytes], bool]:
        """What a walk does with each directory before listing it: watch it. A shallow
        walk lists its top and the directories it finds that are new (no event told of
        them: its top has no watch); the known ones have their own watch, or scan."""
        watches, root = self.watches, scan.root
        if not scan.shallow:
            return lambda d: watches.watch(d, root)

        def on_dir(d: bytes) -> bool:
            if d == scan.top:
                return True
            known = d in watches.wds or d in watches.unwatched.dirs
            return not known and watches.watch(d, root)

        return on_dir
