"""Walk a source's directories into file versions: the backfill (`rescan`) and the watcher's scans.

Owns the ignore rules and the walk. It only lists directories and lstat()s names: it never
opens a data file, never follows a symlink, and never talks to S3.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from itertools import islice

from sftppush.config import Config, Source
from sftppush.entries import FileVersion, shown
from sftppush.queue import Queue
from sftppush.safeopen import DELETING_PREFIX

log = logging.getLogger("sftppush.scan")

BATCH = 2000  # versions per enqueue transaction during a rescan


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
    """What a walk skipped, for summaries; a walk only adds to it."""

    ignored: int = 0


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
         counts: Counts | None = None) -> Iterator[FileVersion | None]:
    """Every non-directory below `top` as a `rescan` FileVersion, from one lstat each.

    Yields None after each directory so a caller can interleave other work. `on_dir(path)`
    runs before a directory is listed (the watcher puts its watch there first, so a file is
    either listed or reported by an event); it returns False to skip the directory.
    Ignored names are skipped, directories included. Symlinks, FIFOs and other non-regular
    files are yielded: the consumer refuses them with a clear reason an operator can see.
    """
    regex = _ignore_regex(tuple(ignore))
    counts = Counts() if counts is None else counts
    stack = [top]
    while stack:
        directory = stack.pop()
        if on_dir is not None and not on_dir(directory):
            continue
        try:
            entries = os.scandir(directory)
        except FileNotFoundError:
            continue  # removed while we walked; its events are gone with it
        except OSError as exc:
            log.warning("scan cannot list dir=%s error=%s", shown(directory),
                        exc.strerror)
            continue
        with entries:
            for entry in entries:
                if regex.match(entry.name):
                    counts.ignored += 1
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
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


def scan_source(source: Source, ignore: tuple[str, ...], *,
                counts: Counts | None = None) -> Iterator[FileVersion]:
    """Every non-ignored, non-directory file version in the source's watched dirs."""
    seen: set[bytes] = set()
    for top in source.dirs:
        top_b = os.fsencode(top)
        # Overlapping paths (e.g. "/" and "/upload") must not list a tree twice.
        if any(top_b == s or top_b.startswith(s + b"/") for s in seen):
            continue
        seen.add(top_b)
        if not os.path.isdir(top_b):
            log.warning("scan missing source=%s dir=%s", source.name, top)
            continue
        yield from filter(None, walk(top_b, source.name, ignore, counts=counts))


def rescan(cfg: Config, queue: Queue, source_name: str | None = None, dry_run: bool = False,
           progress: bool = False) -> RescanSummary:
    """Backfill: enqueue the files on disk that have no entry yet, in batched transactions;
    `progress` keeps a counter on stderr."""
    found = enqueued = 0
    counts = Counts()
    shown_at = 0.0
    for source in cfg.watch.sources:
        if source_name is not None and source.name != source_name:
            continue
        found_before, enqueued_before = found, enqueued
        versions = scan_source(source, cfg.watch.ignore, counts=counts)
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
    if progress:
        sys.stderr.write(f"\rscanning: {found} files\n")
    return RescanSummary(found, enqueued, found - enqueued, counts.ignored)
