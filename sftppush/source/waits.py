"""What the watcher knows of names that may still be written: which are open, which were
created and not opened yet, which were created and opened (a link, or a writer), which had
their attributes changed while open, and which a scan found young.

Owns when such a name is ready to queue: at its close-write, at its last close after a
link, or when its grace is over. It only keeps sets and counts of paths from the events it
is told of: it never touches the file system, the queue or inotify.
"""

from __future__ import annotations

from collections.abc import Iterator

from inotify_simple import flags as F

GRACE = 0.2  # s an IN_CREATE waits for its IN_OPEN; a fresh scanned file, its close

Names = dict[bytes, tuple[str, str]]  # path -> (source, found_by): to queue now


class Waits:
    """The names being written, as far as the events tell."""

    def __init__(self) -> None:
        self.created: dict[bytes, tuple[float, str]] = {}  # IN_CREATE seen, no IN_OPEN yet
        self.linked: set[bytes] = set()                    # created, then opened: await close
        self.touched: set[bytes] = set()                   # attributes changed while open
        self.opens: dict[bytes, int] = {}                  # names open as far as we saw
        self.fresh: dict[bytes, tuple[float, str]] = {}    # scanned, maybe still being written

    def is_open(self, path: bytes) -> bool:
        return path in self.opens

    def file_event(self, mask: int, path: bytes, source: str, now: float, names: Names) -> None:
        """One event on a non-directory name; what is ready to queue goes into `names`."""
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
            self._closed_reading(path, source, names)
        elif mask & F.ATTRIB:
            self._attrib(path, source, names)
        elif mask & (F.MOVED_FROM | F.DELETE):
            self._settled(path)
            self.opens.pop(path, None)
            names.pop(path, None)

    def hold_fresh(self, path: bytes, now: float, source: str) -> None:
        """A scanned file young enough to be still written: queued when its grace is over,
        unless an event takes it first."""
        self.fresh.pop(path, None)
        self.fresh[path] = (now, source)

    def due(self, now: float, everything: bool) -> Iterator[tuple[bytes, str, str]]:
        """(path, source, found_by) of the waiting names whose grace is over (all of them
        when stopping); an open one is left to its close-write."""
        for waiting, how in ((self.created, "created"), (self.fresh, "rescan")):
            while waiting:
                path, (since, source) = next(iter(waiting.items()))
                if since + GRACE > now and not everything:
                    break
                del waiting[path]
                if path not in self.opens:
                    yield path, source, how

    def next_due(self) -> list[float]:
        """When the oldest waiting names' grace ends (none, one or two times)."""
        return [next(iter(w.values()))[0] + GRACE for w in (self.created, self.fresh) if w]

    def forget_below(self, top: bytes) -> None:
        """A directory left the tree: every wait on a name below it ends."""
        prefix = top + b"/"
        for waiting in (self.created, self.fresh, self.opens):
            for path in [p for p in waiting if p.startswith(prefix)]:
                del waiting[path]
        self.linked = {p for p in self.linked if not p.startswith(prefix)}
        self.touched = {p for p in self.touched if not p.startswith(prefix)}

    def lost_events(self) -> None:
        """Events were dropped: what we knew of open files is unreliable."""
        self.opens.clear()
        self.linked.clear()
        self.touched.clear()

    def _attrib(self, path: bytes, source: str, names: Names) -> None:
        if path in self.opens:  # a writer's close-write takes it; a reader's, below
            self.touched.add(path)
        elif path not in self.created and path not in self.linked:
            names.setdefault(path, (source, "attrib"))

    def _closed_reading(self, path: bytes, source: str, names: Names) -> None:
        """A close of a name opened to read: a link seen whole, or a change made meanwhile."""
        if self._closed(path):
            return
        if path in self.linked:
            self.linked.discard(path)  # created, opened only to read, closed: a link
            names[path] = (source, "created")
        elif path in self.touched:  # changed while a reader (a consumer) had it open
            self.touched.discard(path)
            names.setdefault(path, (source, "attrib"))

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
        self.touched.discard(path)
        self.fresh.pop(path, None)
