"""Walk a source's directories into file versions: the backfill (`rescan`) and the watcher's scans.

Owns the ignore rules, the walk, and what `config check` says of the source trees (the same
directory reached by two sources, a symlink on the way to a source dir, how close the tree
is to the inotify watch limit). It only lists directories and stat()s names: it never
opens a data file, never follows a symlink below a source dir, and never talks to S3.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import islice
from pathlib import Path

from sftppush.config import Config, Source
from sftppush.pipeline.safeopen import DELETING_PREFIX, set_aside_name
from sftppush.queue.entries import Entry, FileVersion, may_be_set_aside, shown
from sftppush.queue.queue import Queue
from sftppush.source import longpaths
from sftppush.source.watches import watch_limit

log = logging.getLogger("sftppush.scan")

BATCH = 2000  # versions per enqueue transaction during a rescan
NEAR_LIMIT = 0.8  # config check warns past this share of the inotify watch limit


@dataclass(frozen=True)
class RescanSummary:
    found: int
    enqueued: int
    already: int
    ignored: int

    def line(self, dry_run: bool = False) -> str:
        verb = "would enqueue" if dry_run else "enqueued"
        return (f"rescan{' (dry run)' if dry_run else ''}: found {self.found} files, "
                f"{verb} {self.enqueued}, already queued {self.already}, "
                f"ignored {self.ignored} names")


@dataclass
class Counts:
    """What a walk skipped, for summaries; a walk only adds to it. `set_aside`: the
    consumers' private names it met (paths)."""

    ignored: int = 0
    set_aside: list[bytes] = field(default_factory=list)

    def skipped(self, name: bytes, path: bytes) -> None:
        self.ignored += 1
        if name.startswith(DELETING_PREFIX):
            self.set_aside.append(path)


@dataclass(frozen=True)
class Alias:
    """One directory reached under two paths (a bind mount, or a symlinked source dir)."""

    path: bytes
    source: str
    first_path: bytes
    first_source: str

    def __str__(self) -> str:
        whose = (f"source {self.first_source} reaches the same directory twice"
                 if self.source == self.first_source else
                 f"sources {self.first_source} and {self.source} reach the same directory")
        return (f"{whose}: {shown(self.path)} is {shown(self.first_path)} (same device and"
                " inode: a bind mount?); its files would be uploaded twice, or under the"
                " wrong prefix: keep it in one source")


class Reached:
    """The directories walks reached, by (st_dev, st_ino), each with the path and source that
    reached it first. A directory reached again under another path is an alias, walked once:
    its files belong to the first (the first source in the config's order)."""

    def __init__(self) -> None:
        self.first: dict[tuple[int, int], tuple[bytes, str]] = {}
        self.aliases: list[Alias] = []

    def reach(self, path: bytes, source: str, follow: bool = False) -> bool:
        """True the first time the directory at `path` is reached: walk it. `follow`: `path`
        is a source dir, which may be a symlink the administrator made."""
        try:
            st = os.stat(path) if follow else longpaths.lstat(path)
        except OSError:
            return True  # the listing says why, or skips what vanished
        key = (st.st_dev, st.st_ino)
        if key not in self.first:
            self.first[key] = (path, source)
            return True
        first_path, first_source = self.first[key]
        if first_path != path:
            self.aliases.append(Alias(path, source, first_path, first_source))
        return False


@lru_cache(maxsize=16)
def _ignore_regex(ignore: tuple[str, ...]) -> re.Pattern[bytes]:
    # Built in, whatever the configuration: the private name a consumer gives a file while
    # it deletes it is not a new file.
    return re.compile(b"|".join([re.escape(DELETING_PREFIX)]
                                + [os.fsencode(fnmatch.translate(g)) for g in ignore]))


def ignore_matcher(ignore: tuple[str, ...]) -> Callable[[bytes], object]:
    """Truthy for a bytes basename that matches one of the ignore globs (case-sensitive, `*`
    matches dots) or is a consumer's private name of a file it is deleting."""
    return _ignore_regex(tuple(ignore)).match


def walk(top: bytes, source: str, ignore: tuple[str, ...], *,
         on_dir: Callable[[bytes], bool] | None = None,
         counts: Counts | None = None, files: bool = True) -> Iterator[FileVersion | None]:
    """Every non-directory below `top` as a `rescan` FileVersion, from one lstat each.

    Yields None after each directory so a caller can interleave other work. `on_dir(path)`
    runs before a directory is listed (the watcher puts its watch there first, so a file is
    either listed or reported by an event); it returns False to skip the directory.
    Ignored names are skipped, directories included. Symlinks, FIFOs and other non-regular
    files are yielded: the consumer refuses them with a clear reason an operator can see.
    `files=False` walks the directories only.
    """
    regex = _ignore_regex(tuple(ignore))
    counts = Counts() if counts is None else counts
    stack = [top]
    while stack:
        directory = stack.pop()
        if on_dir is not None and not on_dir(directory):
            continue
        try:
            entries = longpaths.scandir(directory)
        except FileNotFoundError:
            continue  # removed while we walked; its events are gone with it
        except OSError as exc:
            log.warning("scan cannot list dir=%s error=%s", shown(directory),
                        exc.strerror)
            continue
        with entries:
            for entry in entries:
                if regex.match(entry.name):
                    counts.skipped(entry.name, entry.path)
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                        continue
                    if not files:
                        continue
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                yield FileVersion.of(entry.path, source, st, "rescan")
        yield None


def still_on_disk(v: FileVersion) -> bool:
    """Is this version still the file at its path? One lstat, as every look here."""
    try:
        st = os.lstat(v.path)
    except OSError:
        return False
    return (st.st_ino, st.st_size, st.st_mtime_ns) == (v.inode, v.size, v.mtime_ns) and \
        v.ctime_ns in (0, st.st_ctime_ns)


def still_needed(entry: Entry) -> bool:
    """Does a done entry a purge keeps until it is not needed still say something the disk
    needs? A kept file's (KEPT): while its version is at its path. One whose version may be
    under its private name (AWAY, NAME_KEPT): while its directory is away, or holds that
    name."""
    if may_be_set_aside(entry.note):
        directory = os.path.dirname(entry.path)
        return not os.path.isdir(directory) or \
            os.path.lexists(os.path.join(directory, set_aside_name(entry.inode)))
    return still_on_disk(entry)


def scan_source(source: Source, ignore: tuple[str, ...], *, counts: Counts | None = None,
                reached: Reached | None = None, files: bool = True) -> Iterator[FileVersion]:
    """Every non-ignored, non-directory file version in the source's watched dirs.

    Each directory is listed once (overlapping paths, e.g. "/" and "/upload"); one that
    `reached` knows under another path, maybe another source's, is skipped (an alias)."""
    reached = Reached() if reached is None else reached
    for top in source.dirs:
        top_b = os.fsencode(top)
        if not os.path.isdir(top_b):
            log.warning("scan missing source=%s dir=%s", source.name, top)
            continue
        yield from filter(None, walk(
            top_b, source.name, ignore, counts=counts, files=files,
            on_dir=lambda d, t=top_b: reached.reach(d, source.name, follow=d == t)))


def rescan(cfg: Config, queue: Queue, source_name: str | None = None, dry_run: bool = False,
           progress: bool = False) -> RescanSummary:
    """Backfill: enqueue the files on disk that have no entry yet, in batched transactions;
    `progress` keeps a counter on stderr. A directory two sources reach is scanned for the
    first in the config's order, as the watcher does (the sources before `source_name` are
    walked for their directories only, to know which)."""
    found = enqueued = 0
    counts = Counts()
    reached = Reached()
    shown_at = 0.0
    sources = cfg.watch.sources
    if source_name is not None:
        at = next((i for i, s in enumerate(sources) if s.name == source_name), len(sources))
        for earlier in sources[:at]:
            for _ in scan_source(earlier, cfg.watch.ignore, reached=reached, files=False):
                pass
        sources = sources[at:at + 1]
    for source in sources:
        found_before, enqueued_before = found, enqueued
        versions = scan_source(source, cfg.watch.ignore, counts=counts, reached=reached)
        while batch := list(islice(versions, BATCH)):
            new = len(batch) - len(queue.known(batch)) if dry_run else queue.enqueue_many(batch)
            found += len(batch)
            enqueued += new
            if progress and time.monotonic() - shown_at >= 0.2:
                shown_at = time.monotonic()
                sys.stderr.write(f"\rscanning: {found} files")
                sys.stderr.flush()
        log.info("rescan source=%s found=%d enqueued=%d dry_run=%s", source.name,
                 found - found_before, enqueued - enqueued_before, str(dry_run).lower())
        sweep_set_asides(queue, counts.set_aside, dry_run)
    for alias in reached.aliases:
        if source_name in (None, alias.source):  # an earlier source's own aliases: not ours
            log.warning("rescan skipped dir=%s source=%s reason=%s", shown(alias.path),
                        alias.source, alias)
    if progress:
        sys.stderr.write(f"\rscanning: {found} files\n")
    return RescanSummary(found, enqueued, found - enqueued, counts.ignored)


def sweep_set_asides(queue: Queue, private: list[bytes], dry_run: bool = False) -> int:
    """Each private name `.sftppush-deleting.<inode>` whose version (inode, size, mtime) a
    done entry of its directory recorded as uploaded sends that entry back to the consumers,
    which remove the name (only they delete). A consumer killed between its set-aside and
    its unlink leaves one, and the next claim removes it, unless the directory was away
    then (renamed by its client, and back since). How many entries went back."""
    found, private[:] = list(private), []
    requeued = 0
    for path in [] if dry_run else found:
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if os.path.basename(path) != DELETING_PREFIX + str(st.st_ino).encode():
            continue  # not a name a consumer gave: someone else's file, left alone
        requeued += queue.requeue_set_aside(os.path.dirname(path), st.st_ino, st.st_size,
                                            st.st_mtime_ns)
    if requeued:
        log.info("rescan requeued=%d reason=left under a private name by a killed consumer",
                 requeued)
    return requeued


@dataclass
class SourceCheck:
    """What `config check` says of the source trees: problems (exit 2) and warnings."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def check_sources(cfg: Config) -> SourceCheck:
    """Walk every source's directories (no file is looked at) for what the config alone
    cannot tell: a symlink on the way to a source dir, a directory two sources reach (or
    one source twice), and a tree near the inotify watch limit."""
    check = SourceCheck()
    reached = Reached()
    for source in cfg.watch.sources:
        for directory in source.dirs:
            link = symlink_on_the_way(source, directory)
            if link is not None:
                check.problems.append(
                    f"config: source {source.name}: {directory} is reached through the"
                    f" symlink {link}; consumers follow no symlink below {source.root}, so"
                    " every file there would fail: configure a real directory (a bind mount"
                    " is one)")
        for _ in scan_source(source, cfg.watch.ignore, reached=reached, files=False):
            pass
    check.problems += [f"config: {alias}" for alias in reached.aliases]
    limit = watch_limit()
    if limit and len(reached.first) >= NEAR_LIMIT * limit:
        check.warnings.append(
            f"{len(reached.first)} directories to watch, {len(reached.first) / limit:.0%} of"
            f" the inotify watch limit ({limit}, shared by every process of this user):"
            " raise fs.inotify.max_user_watches (past it, directories are scanned every few"
            " seconds instead of watched)")
    return check


def symlink_on_the_way(source: Source, directory: Path) -> Path | None:
    """The first symlink between the source's root (userpath/name, which may be one) and
    its watched `directory`, or None."""
    path = source.root
    for part in directory.relative_to(source.root).parts:
        path = path / part
        if path.is_symlink():
            return path
    return None
