"""The watcher: inotify events on the source trees become file versions in the queue.

Owns what each event means (close-write, rename, link+unlink rename, new and removed
directories), the scans of new dirs, overflow recovery by rescan, and sd_notify; the watch
descriptors are watches.py's, the queue's upkeep (heartbeat, purge) upkeep.py's. It must
never open a data file (one lstat per name, nothing more) and never talk to S3, so an outage
cannot slow it.
"""

from __future__ import annotations

import array
import fcntl
import logging
import os
import select
import stat
import struct
import termios
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from inotify_simple import INotify
from inotify_simple import flags as F

from sftppush import notify, signals
from sftppush.config import Config
from sftppush.entries import FileVersion, shown
from sftppush.errors import ConfigError
from sftppush.owners import owner_token
from sftppush.queue import Queue
from sftppush.scan import ignore_matcher, walk
from sftppush.upkeep import Upkeep
from sftppush.watches import Root, Watches

log = logging.getLogger("sftppush.watcher")

GRACE = 0.2               # s an IN_CREATE waits for its IN_OPEN; a fresh scanned file, its close
FRESH_NS = 2_000_000_000  # a scanned file younger than this may still be open for writing
BUSY_DELAY = 0.005        # s to let a burst's events gather, so one transaction takes many
SCAN_SLICE = 0.05         # s of scanning between two reads of the event queue
SCAN_SLICE_DIRS = 200     # listing a directory queues 4 events of our own; keep under the limit
MAX_WAIT = 1.0            # s; an external `stop` event is noticed at least this often

# The raw read() is parsed here, not by inotify_simple's read()/parse_events(): those build a
# namedtuple per event and decode each name to str, which we would only encode back (paths
# stay bytes, undecodable names included): 3.5x the time (122 vs 33 ms per 100,000 events,
# measured here), in the loop that must keep up with a burst. And its read() waits on the
# inotify fd alone, where we also wait on the signal wake-up fd.
_EVENT = struct.Struct("iIII")


@dataclass(eq=False)
class _Scan:
    root: Root
    top: bytes
    why: str
    steps: Iterator[FileVersion | None] | None = None
    files: int = 0


@dataclass
class _Batch:
    """What one pass of the loop enqueues in one transaction."""

    names: dict[bytes, tuple[str, str]] = field(default_factory=dict)  # path -> source, found_by
    scanned: list[FileVersion] = field(default_factory=list)


def run(cfg: Config, *, rescan: bool = True, stop: threading.Event | None = None) -> None:
    """Watch every configured source until SIGTERM/SIGINT or `stop`; commit what was read."""
    stop = threading.Event() if stop is None else stop
    with signals.on_stop(stop) as stopping, Queue(cfg.queue.path) as queue, \
            INotify(nonblocking=True) as inotify:
        watcher = Watcher(cfg, queue, inotify, wakeup=stopping.fileno())
        watcher.start(rescan)
        try:
            while not stop.is_set():
                watcher.step(stop)
        finally:
            watcher.shutdown()


class Watcher:
    """One inotify instance over all sources; `step()` is one read, one transaction."""

    def __init__(self, cfg: Config, queue: Queue, inotify: INotify, *,
                 wakeup: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.queue = queue
        self.inotify = inotify
        self.clock = clock
        self.ignored = ignore_matcher(cfg.watch.ignore)
        self.ignore = cfg.watch.ignore
        self.roots = [Root(s, os.fsencode(d)) for s in cfg.watch.sources for d in s.dirs]
        self.watches = Watches(inotify, self.roots, self.ignored, clock)
        self.scans: deque[_Scan] = deque()
        self.created: dict[bytes, tuple[float, str]] = {}  # IN_CREATE seen, no IN_OPEN yet
        self.linked: set[bytes] = set()                    # created, then opened: await close
        self.opens: dict[bytes, int] = {}                  # names open as far as we saw
        self.fresh: dict[bytes, tuple[float, str]] = {}    # scanned, maybe still being written
        self.poller = select.poll()
        self.poller.register(inotify.fileno(), select.POLLIN)
        self.wakeup = wakeup  # readable when a signal arrived
        if wakeup is not None:
            self.poller.register(wakeup, select.POLLIN)
        self.upkeep = Upkeep(queue, cfg.queue.keep_done, owner_token())
        self.ping_every = notify.watchdog_interval()
        self.next_ping = 0.0 if self.ping_every else float("inf")
        self.enqueued = 0
        self.busy = False  # the last read found events

    # --- lifecycle -----------------------------------------------------------------------

    def start(self, rescan: bool) -> None:
        """Watch every directory of every root, report READY=1, then queue the start-up scans."""
        for root in self.roots:
            try:
                os.scandir(root.path).close()
            except OSError as exc:
                raise ConfigError(f"watch: source {root.source.name}: cannot read directory "
                                  f"{shown(root.path)}: {exc.strerror}") from None
            self.watches.watch_tree(root)
            if root.wd is None:
                raise ConfigError(f"watch: source {root.source.name}: cannot watch directory "
                                  f"{shown(root.path)}")
        notify.notify(f"READY=1\nSTATUS=watching {len(self.watches)} directories")
        log.info("watching sources=%d dirs=%d rescan=%s", len({r.source.name for r in self.roots}),
                 len(self.watches), str(rescan).lower())
        if rescan:
            for root in self.roots:
                self._add_scan(root, root.path, "start")

    def step(self, stop: threading.Event | None = None, wait: bool = True) -> None:
        """Wait for events (or a deadline), read them all, enqueue what they mean at once;
        `wait=False` takes what is there now (a test stepping the watcher)."""
        timeout = self._timeout() if wait else 0.0
        if timeout:
            for fd, _ in self.poller.poll(timeout * 1000):
                if fd == self.wakeup:
                    signals.drain(fd)
                elif self.busy:  # a burst: one commit per few ms, not per file
                    time.sleep(BUSY_DELAY)
        now = self.clock()
        data = self._read()
        self.busy = bool(data)
        batch = _Batch()
        self._handle(data, now, batch)
        if not (stop is not None and stop.is_set()):
            self._advance_scans(now, batch)
            self._check_roots(now)
        self._decide(now, batch, everything=False)
        self._commit(batch)
        if now >= self.upkeep.due() and not (stop is not None and stop.is_set()):
            self.upkeep.run(now)
        if self.ping_every and now >= self.next_ping:
            notify.notify("WATCHDOG=1")
            self.next_ping = now + self.ping_every

    def shutdown(self) -> None:
        """Commit what was read and decided so far; what was not, the next start-up scan finds."""
        notify.notify("STOPPING=1")
        batch = _Batch()
        self._handle(self._read(), self.clock(), batch)
        self._decide(self.clock(), batch, everything=True)
        self._commit(batch)
        for scan in self.scans:  # the next start-up rescan makes up for these
            log.warning("scan unfinished source=%s dir=%s why=%s", scan.root.source.name,
                        shown(scan.top), scan.why.replace(" ", "_"))
        log.info("watcher stopped enqueued=%d", self.enqueued)

    # --- events --------------------------------------------------------------------------

    def _read(self) -> bytes:
        # Read everything queued right now in one read(): one batch, one transaction.
        size = array.array("i", [0])
        fcntl.ioctl(self.inotify.fileno(), termios.FIONREAD, size)
        if not size[0]:
            return b""
        try:
            return os.read(self.inotify.fileno(), size[0])
        except BlockingIOError:
            return b""

    def _handle(self, data: bytes, now: float, batch: _Batch) -> None:
        where_is, ignored = self.watches.dirs.get, self.ignored
        for wd, mask, name in _events(data):
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
                    self._file_event(mask, path, where[1].source.name, now, batch.names)

    def _file_event(self, mask: int, path: bytes, source: str, now: float,
                    names: dict[bytes, tuple[str, str]]) -> None:
        if mask & F.CLOSE_WRITE:
            self._closed(path)
            self._settled(path)
            names[path] = (source, "close_write")
        elif mask & F.MOVED_TO:
            self._settled(path)
            names[path] = (source, "moved_to")
        elif mask & F.CREATE:
            self.created.pop(path, None)  # re-insert: the dict stays in order of arrival
            self.created[path] = (now, source)
        elif mask & F.OPEN:
            self.opens[path] = self.opens.get(path, 0) + 1
            if self.created.pop(path, None) is not None:
                self.linked.add(path)
        elif mask & F.CLOSE_NOWRITE:
            if not self._closed(path) and path in self.linked:
                self.linked.discard(path)  # created, opened only to read, closed: a link
                names[path] = (source, "created")
        elif mask & F.ATTRIB:
            if path not in self.opens and path not in self.created and path not in self.linked:
                names.setdefault(path, (source, "attrib"))
        elif mask & (F.MOVED_FROM | F.DELETE):
            self._settled(path)
            self.opens.pop(path, None)
            names.pop(path, None)

    def _closed(self, path: bytes) -> bool:
        """One close of `path`; True while it is still open elsewhere."""
        n = self.opens.pop(path, 0) - 1
        if n > 0:
            self.opens[path] = n
        return n > 0

    def _settled(self, path: bytes) -> None:
        """An event that enqueues `path` itself ends every wait on it."""
        self.created.pop(path, None)
        self.linked.discard(path)
        self.fresh.pop(path, None)

    def _dir_event(self, mask: int, path: bytes, root: Root) -> None:
        if mask & (F.CREATE | F.MOVED_TO):
            self._add_scan(root, path, "new dir", first=True)
        elif mask & F.MOVED_FROM:
            self._unwatch_tree(path)

    def _self_event(self, wd: int, mask: int) -> None:
        if mask & F.IGNORED:  # the directory was deleted (or unmounted): the watch is gone
            self.watches.gone(wd)
        elif mask & F.MOVE_SELF:
            for root in self.watches.roots_at(wd):  # a source dir renamed away
                self._unwatch_tree(root.path)

    def _unwatch_tree(self, top: bytes) -> None:
        """A directory left the tree: drop its watches, and every wait on a name below it."""
        self.watches.unwatch_tree(top)
        prefix = top + b"/"
        for waiting in (self.created, self.fresh, self.opens):
            for path in [p for p in waiting if p.startswith(prefix)]:
                del waiting[path]
        self.linked = {p for p in self.linked if not p.startswith(prefix)}

    def _overflow(self) -> None:
        # Events were dropped: what we knew of open files is unreliable, and any directory
        # created meanwhile is unwatched. Rescan every root (walks re-add the watches).
        log.warning("inotify queue overflowed: rescanning roots=%d", len(self.roots))
        self.opens.clear()
        self.linked.clear()
        for root in self.watches.watched_roots():
            self._add_scan(root, root.path, "overflow")

    def _decide(self, now: float, batch: _Batch, everything: bool) -> None:
        """Take the waiting names whose grace is over (all of them when stopping)."""
        for waiting, how in ((self.created, "created"), (self.fresh, "rescan")):
            while waiting:
                path, (since, source) = next(iter(waiting.items()))
                if since + GRACE > now and not everything:
                    break
                del waiting[path]
                if path not in self.opens:  # an open one is taken at its close-write
                    batch.names.setdefault(path, (source, how))

    def _commit(self, batch: _Batch) -> None:
        versions = batch.scanned
        for path, (source, how) in batch.names.items():
            try:
                st = os.lstat(path)
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

    def _add_scan(self, root: Root, top: bytes, why: str, first: bool = False) -> None:
        if any(s.top == top and s.steps is None for s in self.scans):
            return  # the same walk is queued and not started: it will see everything
        # A new dir goes before a long rescan, which resumes where it paused.
        (self.scans.appendleft if first else self.scans.append)(_Scan(root, top, why))

    def _advance_scans(self, now: float, batch: _Batch) -> None:
        """Walk queued scans for a short slice, so events keep being read during a long one."""
        deadline = self.clock() + SCAN_SLICE
        listed = 0
        fresh_after = time.time_ns() - FRESH_NS
        while self.scans:
            scan = self.scans[0]
            if scan.steps is None:
                scan.steps = walk(scan.top, scan.root.source.name, self.ignore,
                                  on_dir=lambda d, r=scan.root: self.watches.watch(d, r))
            for version in scan.steps:
                if version is None:
                    listed += 1
                    if listed >= SCAN_SLICE_DIRS or self.clock() >= deadline:
                        return
                    continue
                scan.files += 1
                path = version.path
                if path in self.opens or path in batch.names:
                    continue  # its close-write (or the event just read) enqueues it
                if version.mtime_ns >= fresh_after:
                    self.fresh.pop(path, None)
                    self.fresh[path] = (now, version.source)
                else:
                    batch.scanned.append(version)
            self.scans.popleft()
            (log.debug if scan.why == "new dir" else log.info)(
                "scan done source=%s dir=%s files=%d why=%s", scan.root.source.name,
                shown(scan.top), scan.files, scan.why.replace(" ", "_"))

    def _check_roots(self, now: float) -> None:
        for root in self.watches.roots_back(now):
            if not any(s.top == root.path for s in self.scans):
                log.info("source dir back source=%s dir=%s", root.source.name,
                         shown(root.path))
                self._add_scan(root, root.path, "dir back")

    def _timeout(self) -> float:
        if self.scans:
            return 0.0
        now = self.clock()
        until = [now + MAX_WAIT, self.upkeep.due(), self.next_ping, self.watches.next_check()]
        for waiting in (self.created, self.fresh):
            if waiting:
                until.append(next(iter(waiting.values()))[0] + GRACE)
        return max(0.001, min(until) - now)


def _events(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(wd, mask, name) of each event in one read of the inotify fd; the cookie is unused."""
    unpack, pos, end = _EVENT.unpack_from, 0, len(data)
    while pos < end:
        wd, mask, _cookie, size = unpack(data, pos)
        yield wd, mask, data[pos + 16:pos + 16 + size].rstrip(b"\0")
        pos += 16 + size
