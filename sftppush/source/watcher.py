"""The watcher: inotify events on the source trees become file versions in the queue.

Owns what each event means (close-write, rename, link+unlink rename, new and removed
directories, mounts that change), which walks to queue (new dirs, overflow recovery, the
directories without a watch), and sd_notify; the watch descriptors are watches.py's, the
walks scans.py's, the raw reads events.py's, the names still being written waits.py's, the
queue's upkeep (heartbeat, gauges, purge) upkeep.py's. It must never open a data file (one
lstat per name, nothing more) and never talk to S3, so an outage cannot slow it.
"""

from __future__ import annotations

import logging
import os
import select
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from inotify_simple import INotify
from inotify_simple import flags as F

from sftppush import signals
from sftppush.config import Config
from sftppush.queue.entries import FileVersion, shown
from sftppush.queue.owners import owner_token
from sftppush.queue.queue import Queue
from sftppush.source import longpaths, notify
from sftppush.source.events import events, read_all
from sftppush.source.mounts import below, mount_table
from sftppush.source.scan import ignore_matcher, symlink_on_the_way
from sftppush.source.scans import Scans
from sftppush.source.upkeep import Upkeep
from sftppush.source.waits import Names, Waits
from sftppush.source.watches import Root, Watches

log = logging.getLogger("sftppush.watcher")

FRESH_NS = 2_000_000_000  # a scanned file younger than this may still be open for writing
BUSY_DELAY = 0.005        # s to let a burst's events gather, so one transaction takes many
MAX_WAIT = 1.0            # s; an external `stop` event is noticed at least this often


@dataclass
class _Batch:
    """What one pass of the loop enqueues in one transaction."""

    names: Names = field(default_factory=dict)  # path -> source, found_by
    scanned: list[FileVersion] = field(default_factory=list)


class _Poll:
    """What the watcher waits on: inotify, the stop signal's fd, the mount table (POLLPRI
    when something is mounted or unmounted); and whether the last read found a burst."""

    def __init__(self, inotify: INotify, wakeup: int | None) -> None:
        self.poller = select.poll()
        self.poller.register(inotify.fileno(), select.POLLIN)
        self.wakeup = wakeup  # readable when a signal arrived
        if wakeup is not None:
            self.poller.register(wakeup, select.POLLIN)
        self.mounts = mount_table()
        if self.mounts is not None:
            self.poller.register(self.mounts.fileno(), select.POLLPRI)
        self.busy = False  # the last read found events

    def wait(self, timeout: float) -> bool:
        """Until something is readable or `timeout` s; True if the mount table changed."""
        remounted = False
        for fd, _ in self.poller.poll(timeout * 1000):
            if fd == self.wakeup:
                signals.drain(fd)
            elif self.mounts is not None and fd == self.mounts.fileno():
                remounted = True
            elif self.busy and timeout:  # a burst: one commit per few ms, not per file
                time.sleep(BUSY_DELAY)
        return remounted

    def close(self) -> None:
        if self.mounts is not None:
            self.mounts.close()


class _Watchdog:
    """sd_notify WATCHDOG=1 at half the unit's WatchdogSec, if it has one."""

    def __init__(self) -> None:
        self.every = notify.watchdog_interval()
        self.next = 0.0 if self.every else float("inf")

    def ping(self, now: float) -> None:
        if self.every and now >= self.next:
            notify.notify("WATCHDOG=1")
            self.next = now + self.every


def run(cfg: Config, *, rescan: bool = True, stop: threading.Event | None = None) -> None:
    """Watch every configured source until SIGTERM/SIGINT or `stop`; commit what was read."""
    stop = threading.Event() if stop is None else stop
    with signals.on_stop(stop) as stopping, Queue(cfg.queue.path) as queue, \
            INotify(nonblocking=True) as inotify:
        watcher = Watcher(cfg, queue, inotify, wakeup=stopping.fileno())
        signals.drive(stop, lambda: watcher.start(rescan), lambda: watcher.step(stop),
                      lambda _ended: watcher.shutdown())


class Watcher:
    """One inotify instance over all sources; `step()` is one read, one transaction."""

    def __init__(self, cfg: Config, queue: Queue, inotify: INotify, *,
                 wakeup: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.queue = queue
        self.inotify = inotify
        self.clock = clock
        self.ignored = ignore_matcher(cfg.watch.ignore)
        self.roots = [Root(s, os.fsencode(d)) for s in cfg.watch.sources for d in s.dirs]
        for source in cfg.watch.sources:
            for link in filter(None, (symlink_on_the_way(source, d) for d in source.dirs)):
                log.error("source dir reached through a symlink source=%s symlink=%s: consumers"
                          " follow none below %s, so every file there fails: configure a"
                          " real directory (config check refuses this)", source.name, link,
                          source.root)
        self.watches = Watches(inotify, self.roots, self.ignored, clock)
        self.scans = Scans(self.watches, cfg.watch.ignore, clock)
        self.waits = Waits()
        self.poll = _Poll(inotify, wakeup)
        self.upkeep = Upkeep(queue, cfg.queue.keep_done, owner_token())
        self.watchdog = _Watchdog()
        self.enqueued = 0

    # --- lifecycle -----------------------------------------------------------------------

    def start(self, rescan: bool) -> None:
        """Watch every directory of every root, report READY=1, then queue the start-up scans.

        The events the walk itself causes are read (and dropped) as it goes; the others,
        files finished meanwhile, are queued with the first commit.
        """
        batch = _Batch()

        def drain() -> None:
            self._handle(read_all(self.inotify.fileno()), self.clock(), batch)

        for root in self.roots:
            self.watches.watch_tree(root, drain)
            if root.wd is None and not root.missing and \
                    root.path not in self.watches.unwatched.dirs:
                # Missing, or unreadable: like one that goes at run time, a warning, and
                # looked for until it is there; the other sources go on.
                self.watches.lose_root(root, "missing at start" if not os.path.isdir(
                    root.path) else "cannot watch")
        drain()
        self._commit(batch)
        self._sum_up_unwatched(self.clock())
        notify.notify(f"READY=1\nSTATUS=watching {len(self.watches)} directories"
                      f" ({len(self.watches.unwatched)} unwatched)")
        log.info("watching sources=%d dirs=%d unwatched=%d rescan=%s",
                 len({r.source.name for r in self.roots}), len(self.watches),
                 len(self.watches.unwatched), str(rescan).lower())
        if rescan:
            for root in self.roots:
                self.scans.add(root, root.path, "start")

    def step(self, stop: threading.Event | None = None, wait: bool = True) -> None:
        """Wait for events (or a deadline), read them all, enqueue what they mean at once;
        `wait=False` takes what is there now (a test stepping the watcher)."""
        remounted = self.poll.wait(self._timeout() if wait else 0.0)
        now = self.clock()
        data = read_all(self.inotify.fileno())
        self.poll.busy = bool(data)
        batch = _Batch()
        self._handle(data, now, batch)
        if remounted:
            self._remount()
        if not (stop is not None and stop.is_set()):
            self._advance_scans(now, batch)
            self._check_roots(now)
            self.scans.tick_unwatched(now)
            self._sum_up_unwatched(now)
        self._decide(now, batch, everything=False)
        self._commit(batch)
        if now >= self.upkeep.due() and not (stop is not None and stop.is_set()):
            self.upkeep.run(now)
        self.watchdog.ping(now)

    def shutdown(self) -> None:
        """Commit what was read and decided so far; what was not, the next start-up scan finds."""
        notify.notify("STOPPING=1")
        batch = _Batch()
        self._handle(read_all(self.inotify.fileno()), self.clock(), batch)
        self._decide(self.clock(), batch, everything=True)
        self._commit(batch)
        for scan in self.scans:  # the next start-up rescan makes up for these
            log.warning("scan unfinished source=%s dir=%s why=%s", scan.root.source.name,
                        shown(scan.top), scan.why.replace(" ", "_"))
        self.poll.close()
        log.info("watcher stopped enqueued=%d", self.enqueued)

    # --- events --------------------------------------------------------------------------

    def _handle(self, data: bytes, now: float, batch: _Batch) -> None:
        where_is, ignored = self.watches.dirs.get, self.ignored
        for wd, mask, name in events(data):
            if mask & F.Q_OVERFLOW:
                self._overflow()
                continue
            where = where_is(wd)
            if where is None:
                continue  # the last events of a watch we dropped
            if not name:
                self._self_event(wd, mask)
            elif not ignored(name):
                path = where[0] + b"/" + name
                if mask & F.ISDIR:
                    self._dir_event(mask, path, where[1])
                else:
                    self.waits.file_event(mask, path, where[1].source.name, now,
                                          batch.names)

    def _dir_event(self, mask: int, path: bytes, root: Root) -> None:
        if mask & (F.CREATE | F.MOVED_TO):
            self.scans.add(root, path, "new dir", first=True)
        elif mask & F.MOVED_FROM:
            self._unwatch_tree(path)

    def _self_event(self, wd: int, mask: int) -> None:
        if mask & F.IGNORED:  # the directory was deleted (or unmounted): the watch is gone
            self.watches.gone(wd)
        elif mask & F.MOVE_SELF:
            for root in self.watches.roots_at(wd):  # a source dir renamed away
                self._unwatch_tree(root.path)

    def _remount(self) -> None:
        """Something was mounted or unmounted. Inside a source's tree, the directory at the
        mount point is another one now (the mounted one, or the one it covered): watch and
        scan it afresh. A source dir, or a dir above it, mounted over is looked for again."""
        assert self.poll.mounts is not None
        added, removed = self.poll.mounts.changed()
        for point in sorted(added | removed):
            why = "mount" if point in added else "unmount"
            for root in list(self.watches.present_roots()):
                if below(root.path, point):
                    self._unwatch_tree(root.path, why)
                    if not root.missing:
                        self.watches.lose_root(root, why)
                elif below(point, root.path):
                    log.info("mount changed source=%s dir=%s why=%s", root.source.name,
                             shown(point), why)
                    self._unwatch_tree(point, why)
                    self.scans.add(root, point, why, first=True)

    def _unwatch_tree(self, top: bytes, why: str = "moved away") -> None:
        """A directory left the tree: drop its watches, and every wait on a name below it."""
        self.watches.unwatch_tree(top, why)
        self.waits.forget_below(top)

    def _overflow(self) -> None:
        # Events were dropped: what we knew of open files is unreliable, and any directory
        # created meanwhile is unwatched. Rescan every root (walks re-add the watches).
        log.warning("inotify queue overflowed: rescanning roots=%d", len(self.roots))
        self.waits.lost_events()
        for root in self.watches.present_roots():
            self.scans.add(root, root.path, "overflow")

    def _decide(self, now: float, batch: _Batch, everything: bool) -> None:
        """Take the waiting names whose grace is over (all of them when stopping)."""
        for path, source, how in self.waits.due(now, everything):
            batch.names.setdefault(path, (source, how))

    def _commit(self, batch: _Batch) -> None:
        versions = batch.scanned
        for path, (source, how) in batch.names.items():
            try:
                st = longpaths.lstat(path)
            except OSError:
                continue  # gone again (renamed, deleted): its own event tells the rest
            if not stat.S_ISDIR(st.st_mode):
                versions.append(FileVersion.of(path, source, st, how))
        if versions:
            new = self.queue.enqueue_many(versions)
            self.enqueued += new
            if log.isEnabledFor(logging.DEBUG):
                for v in versions:
                    log.debug("seen path=%s found_by=%s size=%d", shown(v.path),
                              v.found_by, v.size)
                log.debug("enqueued new=%d of=%d", new, len(versions))

    # --- scans ---------------------------------------------------------------------------

    def _advance_scans(self, now: float, batch: _Batch) -> None:
        """What the queued walks find in a slice: queued, or held while it may still be
        written (fresh), or left to the event that enqueues it."""
        fresh_after = time.time_ns() - FRESH_NS
        for version in self.scans.advance(now):
            path = version.path
            if self.waits.is_open(path) or path in batch.names:
                continue  # its close-write (or the event just read) enqueues it
            if version.mtime_ns >= fresh_after:
                self.waits.hold_fresh(path, now, version.source)
            else:
                batch.scanned.append(version)

    def _check_roots(self, now: float) -> None:
        for root in self.watches.roots_back(now):
            if not self.scans.has(root.path):
                log.info("source dir back source=%s dir=%s", root.source.name,
                         shown(root.path))
                self.scans.add(root, root.path, "dir back")

    def _sum_up_unwatched(self, now: float) -> None:
        line = self.watches.unwatched.summary(now, len(self.watches))
        if line is not None:
            (log.warning if self.watches.unwatched else log.info)(line)
        self.upkeep.gauge("watcher_unwatched_dirs", len(self.watches.unwatched))

    def _timeout(self) -> float:
        if self.scans:
            return 0.0
        now = self.clock()
        until = [now + MAX_WAIT, self.upkeep.due(), self.watchdog.next,
                 self.watches.next_check(), self.watches.unwatched.due(),
                 *self.waits.next_due()]
        return max(0.001, min(until) - now)

