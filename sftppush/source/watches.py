"""The watcher's inotify watches: which directory each watch descriptor stands for.

Owns adding and removing watches over whole trees, the wd <-> path maps, the directories
that have no watch because the watch limit was reached (until one fits), the source dirs
that went missing (deleted, moved away) until they are back, and the refusal of a second
path to a directory already watched (a bind mount into another source's tree): one
directory, one path, the first watched. It never reads events, never lists a file for the
queue and never touches the queue: what an event means is the watcher's business.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from inotify_simple import INotify
from inotify_simple import flags as F

from sftppush.config import Source
from sftppush.queue.entries import shown
from sftppush.source import longpaths

log = logging.getLogger("sftppush.watcher")  # the watcher's own lines, as before the split

# IN_OPEN / IN_CLOSE_NOWRITE tell a file created by open() (taken at its close-write) from one
# created by link() (OpenSSH's rename: no open at all); IN_ATTRIB catches a client setting the
# mtime after close, which makes a new version the consumer would otherwise retire unuploaded.
_EVENTS = (F.CLOSE_WRITE | F.MOVED_TO | F.CREATE | F.OPEN | F.CLOSE_NOWRITE | F.ATTRIB
           | F.MOVED_FROM | F.DELETE | F.DELETE_SELF | F.MOVE_SELF | F.EXCL_UNLINK | F.ONLYDIR)
ROOT_MASK = _EVENTS                    # a configured dir may be a symlink the admin set up
SUBDIR_MASK = _EVENTS | F.DONT_FOLLOW  # below it, a symlink is never followed

ROOT_CHECK = 1.0  # s between looks for a missing source dir
DRAIN_DIRS = 200  # directories listed between two reads of the event queue (4 events each)
UNWATCHED_SCAN = 2.0  # s between two scans of the directories that have no watch, at least
UNWATCHED_LINE = 300.0  # s between two summary lines while the count of those changes


@dataclass(eq=False)
class Root:
    """One watched dir of a source (userpath / name / path)."""

    source: Source
    path: bytes
    wd: int | None = None  # None while the directory is missing, or has no watch
    missing: bool = False  # gone (deleted, moved away): looked for every ROOT_CHECK


class Watches:
    """The watch descriptors of one inotify instance over the roots of every source."""

    def __init__(self, inotify: INotify, roots: list[Root],
                 ignored: Callable[[bytes], object], clock: Callable[[], float]) -> None:
        self.inotify = inotify
        self.roots = roots
        self.ignored = ignored
        self.clock = clock
        self.dirs: dict[int, tuple[bytes, Root]] = {}  # wd -> watched path, its root
        self.wds: dict[bytes, int] = {}
        self.unwatched = Unwatched()
        self.refused: set[tuple[bytes, bytes]] = set()  # (first path, alias) logged once
        self.failed: set[bytes] = set()  # could not be watched (EACCES...), logged once
        self.next_root_check = 0.0

    def __len__(self) -> int:
        return len(self.dirs)

    def watch(self, path: bytes, root: Root) -> bool:
        """Put a watch on one directory before it is listed; False to skip listing it."""
        try:
            wd = self._add_watch(path, ROOT_MASK if path == root.path else SUBDIR_MASK)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                twin = self._unwatched_twin(path, root)
                if twin is not None:
                    self._refuse(path, root, twin, self.unwatched.dirs[twin])
                    return False
                # No line per directory: the watcher sums them up (unwatched) and scans them.
                self.unwatched.dirs[path] = root
                return True
            self.unwatched.dirs.pop(path, None)
            # ENOENT, ENOTDIR: gone, or a symlink now. Else said once per directory: a
            # missing source dir is tried every second.
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR) and path not in self.failed:
                self.failed.add(path)
                log.warning("cannot watch dir=%s error=%s", shown(path), exc.strerror)
            return False
        self.failed.discard(path)
        self.unwatched.dirs.pop(path, None)
        old = self.dirs.get(wd)
        if old is not None and old[0] != path:
            if self._same_dir(old[0], path, root):
                self._refuse(path, root, *old)
                return False
            if self.wds.get(old[0]) == wd:
                del self.wds[old[0]]  # the same directory under a new name (renamed in the tree)
        self.dirs[wd] = (path, root)
        self.wds[path] = wd
        if path == root.path:
            root.wd = wd
        return True

    def watch_tree(self, root: Root, drain: Callable[[], None]) -> None:
        """Watches on a whole root, directories only: what start-up needs before READY=1.

        Listing a watched directory queues 4 events of our own (open and close, on it and on
        its parent): `drain()` runs every DRAIN_DIRS directories to read them out, so a large
        tree cannot fill the kernel's queue and overflow it.
        """
        stack = [root.path]
        listed = 0
        while stack:
            directory = stack.pop()
            if not self.watch(directory, root):
                continue
            listed += 1
            if listed % DRAIN_DIRS == 0:
                drain()
            try:
                with longpaths.scandir(directory) as entries:
                    stack.extend(e.path for e in entries
                                 if not self.ignored(e.name) and e.is_dir(follow_symlinks=False))
            except OSError as exc:
                log.warning("cannot list dir=%s error=%s", shown(directory), exc.strerror)

    def _add_watch(self, path: bytes, mask: int) -> int:
        try:
            return self.inotify.add_watch(path, mask)
        except OSError as exc:
            if not longpaths.too_long(exc):
                raise
        # Longer than PATH_MAX: watched through its fd's /proc link, which must be followed.
        fd = longpaths.open_dir(path)
        try:
            return self.inotify.add_watch(f"/proc/self/fd/{fd}", mask & ~F.DONT_FOLLOW)
        finally:
            os.close(fd)

    def _same_dir(self, first: bytes, path: bytes, root: Root) -> bool:
        """`first` still names the directory at `path`: two ways to one directory (a bind
        mount, a symlinked source dir), not a rename. A source dir may be a symlink."""
        try:
            a = os.stat(first) if any(r.path == first for r in self.roots) \
                else longpaths.lstat(first)
            b = os.stat(path) if path == root.path else longpaths.lstat(path)
        except OSError:
            return False
        return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)

    def _unwatched_twin(self, path: bytes, root: Root) -> bytes | None:
        """Another directory without a watch that is this one (the kernel's wd, which tells
        the watched ones apart, is missing here); None if there is none."""
        try:
            st = os.stat(path) if path == root.path else longpaths.lstat(path)
        except OSError:
            return None
        twin = self.unwatched.ids.setdefault((st.st_dev, st.st_ino), path)
        if twin != path and twin in self.unwatched.dirs and self._same_dir(twin, path, root):
            return twin
        self.unwatched.ids[(st.st_dev, st.st_ino)] = path
        return None

    def _refuse(self, path: bytes, root: Root, first: bytes, first_root: Root) -> None:
        """A second path to a watched directory: not watched, not scanned, so that each of
        its files is queued once, for the source that reached it first. Said once."""
        if (first, path) not in self.refused:
            self.refused.add((first, path))
            log.error("same directory reached twice, its files are queued for the first"
                      " source only: refused source=%s dir=%s same_as=%s first_source=%s"
                      " fix=keep the directory in one source (config check refuses this)",
                      root.source.name, shown(path), shown(first), first_root.source.name)
        if path == root.path and not root.missing:
            root.missing = True  # looked for again: the alias may go (an unmount)
            self.next_root_check = self.clock() + ROOT_CHECK

    def unwatch_tree(self, top: bytes, why: str = "moved away") -> None:
        """Drop the watches of `top` and below: renamed away (or mounted over), their paths
        mean nothing now."""
        prefix = top + b"/"
        for path in [p for p in self.unwatched.dirs if p == top or p.startswith(prefix)]:
            del self.unwatched.dirs[path]
        for path in [p for p in self.wds if p == top or p.startswith(prefix)]:
            wd = self.wds.pop(path)
            self.dirs.pop(wd, None)
            with contextlib.suppress(OSError):  # already gone with its directory
                self.inotify.rm_watch(wd)
            for root in self.roots_at(wd):  # a source dir inside another one, moved away
                self.lose_root(root, why)

    def gone(self, wd: int) -> None:
        """IN_IGNORED: the directory was deleted (or unmounted), the kernel dropped its watch."""
        path, _ = self.dirs.pop(wd)
        if self.wds.get(path) == wd:
            del self.wds[path]
        for root in self.roots_at(wd):
            self.lose_root(root, "deleted")

    def roots_at(self, wd: int) -> list[Root]:
        """The source dirs this watch is on (IN_MOVE_SELF: renamed away, no longer the source)."""
        return [r for r in self.roots if r.wd == wd]

    def lose_root(self, root: Root, why: str) -> None:
        """The source dir is gone: look for it every ROOT_CHECK until it is back."""
        root.wd = None
        root.missing = True
        self.next_root_check = self.clock() + ROOT_CHECK
        log.warning("source dir gone source=%s dir=%s why=%s looked_for_every_s=%g",
                    root.source.name, shown(root.path), why.replace(" ", "_"), ROOT_CHECK)

    def present_roots(self) -> Iterator[Root]:
        return (r for r in self.roots if not r.missing)

    def next_check(self) -> float:
        """When to look again for a missing source dir; never (inf) while none is missing."""
        return self.next_root_check if any(r.missing for r in self.roots) else float("inf")

    def roots_back(self, now: float) -> list[Root]:
        """The missing source dirs that exist again, watched now (looked for once per
        ROOT_CHECK); the caller scans them."""
        if now < self.next_root_check:
            return []
        self.next_root_check = now + ROOT_CHECK
        back = [r for r in self.roots
                if r.missing and os.path.isdir(r.path) and self.watch(r.path, r)]
        for root in back:
            root.missing = False
        return back

    def retry_unwatched(self) -> list[tuple[bytes, Root]]:
        """Try again to watch every directory that has none; each of them, watched now or
        not, is to be listed once more (what arrived before its watch)."""
        todo = list(self.unwatched.dirs.items())
        self.unwatched.ids.clear()  # each one left without a watch is put back
        for path, root in todo:
            self.watch(path, root)
        return todo


class Unwatched:
    """The directories listed without a watch (the watch limit was reached): when to scan
    them again, and the one line that sums them up.

    A scan of all of them is a tick; the next one starts UNWATCHED_SCAN s after one ends, or
    later if ticks take long (at most a fifth of the time is spent on them).
    """

    def __init__(self) -> None:
        self.dirs: dict[bytes, Root] = {}
        self.ids: dict[tuple[int, int], bytes] = {}  # (st_dev, st_ino) -> path, of dirs
        self.next_tick = 0.0
        self.tick_started: float | None = None
        self.scans_left = 0
        self.said = 0  # the count the last summary line gave
        self.next_line = 0.0

    def __len__(self) -> int:
        return len(self.dirs)

    def due(self) -> float:
        """When the next tick starts: never (inf) with nothing unwatched or a tick under way."""
        return self.next_tick if self.dirs and self.tick_started is None else float("inf")

    def tick(self, now: float, scans: int) -> None:
        """A tick started with `scans` scans queued; `scanned()` is called as each ends."""
        self.tick_started, self.scans_left = now, scans
        if not scans:
            self.scanned(now)

    def scanned(self, now: float) -> None:
        self.scans_left = max(0, self.scans_left - 1)
        if not self.scans_left and self.tick_started is not None:
            self.next_tick = now + max(UNWATCHED_SCAN, 4 * (now - self.tick_started))
            self.tick_started = None

    def summary(self, now: float, watched: int) -> str | None:
        """The line to log when the count changed: at once when it starts or ends, else at
        most once per UNWATCHED_LINE s; None when there is nothing new to say."""
        n = len(self.dirs)
        if n == self.said or (n and self.said and now < self.next_line):
            return None
        self.said, self.next_line = n, now + UNWATCHED_LINE
        if not n:
            return f"watch limit no longer reached: unwatched_dirs=0 watched_dirs={watched}"
        limit = watch_limit()
        return (f"watch limit reached: unwatched_dirs={n} watched_dirs={watched} limit="
                f"{limit if limit is not None else '?'} scanned_every_s={UNWATCHED_SCAN:.0f}"
                " fix=raise fs.inotify.max_user_watches (each is watched once it fits)")


def watch_limit() -> int | None:
    """The inotify watches one user may have: fs.inotify.max_user_watches, or a user
    namespace's lower max_inotify_watches; None where neither can be read."""
    limits = []
    for name in ("/proc/sys/fs/inotify/max_user_watches", "/proc/sys/user/max_inotify_watches"):
        with contextlib.suppress(OSError, ValueError):
            limits.append(int(Path(name).read_text()))
    return min(limits, default=None)
