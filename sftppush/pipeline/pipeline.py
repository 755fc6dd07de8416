"""One queue entry, start to finish: safe open → decompress → upload → verify → delete.

Owns those steps and the checks between them (min age, superseded versions, vanished files,
lease still ours before the delete): `process()` runs them all for a stream; for a small
file's single PUT, the put lane (runtime/lanes.py) calls `open_small()`, `small_body()` and
`finish()` in its own order. It raises TransientError/PermanentError and never touches the
queue: the consumer decides what an outcome means for the entry.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sftppush.config import Config, ConsumerConfig, Source
from sftppush.errors import PermanentError, TransientError
from sftppush.outcomes import Done, Held, LeaseLost, Superseded, Undeleted, Uploaded
from sftppush.pipeline.decompress import CappedReader, detect_fd, inflate
from sftppush.pipeline.keys import candidate_keys, metadata, object_key
from sftppush.pipeline.safeopen import (
    NLINK_RETRY_SECONDS,
    WRITING,
    Aside,
    Kept,
    SafeFile,
    Vanished,
    open_in_root,
    remove_set_aside,
    same_version,
)
from sftppush.queue.entries import AWAY, KEPT, NAME_KEPT, VANISHED, Entry, KeyTaken, shown
from sftppush.queue.owners import user_name
from sftppush.sink.multipart import Journal
from sftppush.sink.parts import read_full
from sftppush.sink.s3 import SHA256_KEY, Sink

log = logging.getLogger("sftppush.pipeline")

TakeKey = Callable[[str], KeyTaken | None]  # the queue's key record for the claimed entry

READ_BUFFER = 1 << 17
WRITING_RETRY = 5.0  # s until a file that a client still holds open for writing is tried again


@dataclass(frozen=True)
class Opened:
    """A file version opened safely and checked, with its key and metadata; close() it."""

    entry: Entry
    source: Source
    safe: SafeFile
    fmt: str | None
    key: str
    meta: dict[str, str]
    started: float

    def reader(self, cap: int) -> CappedReader:
        """The decompressed stream of the file, refusing to go past `cap` bytes; raises
        Superseded unless exactly the size seen at open is read."""
        raw = io.BufferedReader(_Exactly(self.safe.fd, self.safe.st.st_size), READ_BUFFER)
        return CappedReader(raw, self.fmt, cap)

    def close(self) -> None:
        self.safe.close()


@dataclass(frozen=True)
class Prepared:
    """An opened file with what the queue and the store said of its key: ready to upload."""

    opened: Opened
    if_absent: bool  # the key is new to the queue: upload only if no object is there
    stored: Uploaded | None  # an earlier attempt's upload, still there: delete only


@dataclass(frozen=True)
class Body:
    """A small file's whole decompressed body, and whether its PUT is conditional."""

    data: bytes
    if_absent: bool


def process(entry: Entry, cfg: Config, sink: Sink, *,
            still_ours: Callable[[], bool] = lambda: True,
            take_key: TakeKey | None = None,
            cancel: threading.Event | None = None,
            journal: Journal | None = None,
            now: float | None = None,
            nlink_retry_after: float = NLINK_RETRY_SECONDS) -> Done | Held:
    """Move one file version to S3 and delete it; see the module docstring for the order.
    `journal`: the entry's record of a multipart upload in progress, to resume it."""
    prepared = prepare(entry, cfg, sink, take_key=take_key, now=now,
                       nlink_retry_after=nlink_retry_after)
    if not isinstance(prepared, Prepared):
        return prepared
    opened = prepared.opened
    try:
        if prepared.stored is not None:
            return finish(opened, prepared.stored, still_ours, cfg.consumer)
        reader = opened.reader(cfg.consumer.max_decompressed_bytes)
        try:
            uploaded = sink.upload(opened.source.target.bucket, opened.key, reader,
                                   opened.meta, cancel, prepared.if_absent, journal)
        finally:
            reader.close()
        return finish(opened, uploaded, still_ours, cfg.consumer)
    except Superseded as exc:
        return _cut_short(entry, exc)
    finally:
        opened.close()


def open_small(entry: Entry, cfg: Config, sink: Sink, *,
               nlink_retry_after: float = NLINK_RETRY_SECONDS) -> Opened | Done | Held | None:
    """A small file's steps before its key is taken, without waiting on the store: min age,
    safe open, superseded versions. The caller takes the keys of several opened files in one
    queue transaction and passes each answer to `small_body()`.

    None: nothing opened, `process()` it instead (a vanished file, or one uploaded by an
    earlier attempt: both ask the store, which may wait). Done/Held: no upload needed.
    """
    if entry.etag is not None:
        return None
    try:
        found = _open(entry, cfg, nlink_retry_after, look_up_vanished=False, sink=sink)
    except Vanished:
        return None
    return found


def small_body(opened: Opened, taken: KeyTaken | None, cfg: Config,
               bound: int) -> Body | Done | None:
    """Given the queue's answer to taking the key (take_keys), the body for one PUT. None:
    it is over `bound` bytes, or its key is in doubt (KeyTaken.doubt), so `process()` it
    instead. Raises LeaseLost or the key collision; `opened` stays open only when a Body
    is returned."""
    try:
        if_absent = _first_upload(opened.entry, opened.key, taken)
        # In doubt, the object decides, by a HEAD that waits on the store: process() it.
        data = None if taken is not None and taken.doubt is not None else \
            read_small(opened, cfg.consumer.max_decompressed_bytes, bound)
        if data is None:
            opened.close()
            return None
        return Body(data, if_absent)
    except Superseded as exc:
        opened.close()
        return _cut_short(opened.entry, exc)
    except BaseException:
        opened.close()
        raise


def prepare(entry: Entry, cfg: Config, sink: Sink, *, take_key: TakeKey | None = None,
            now: float | None = None,
            nlink_retry_after: float = NLINK_RETRY_SECONDS) -> Prepared | Done | Held:
    """Steps before the upload: min age, safe open, vanished and superseded versions, and
    the key, which `take_key` (the queue's record of keys) may refuse: SPEC 3's one key,
    one local path. Without it nothing is checked and every upload is unconditional.

    Done or Held means the entry needs no upload now; otherwise the caller owns the returned
    Prepared and must close its file. A vanished file takes a HEAD of its key (retried while
    the store is down).
    """
    opened = _open(entry, cfg, nlink_retry_after, look_up_vanished=True, sink=sink, now=now)
    if not isinstance(opened, Opened):
        return opened
    try:
        key = opened.key
        if_absent = False
        if take_key is not None:
            taken = take_key(key)
            if_absent = _first_upload(entry, key, taken)
            if taken is not None and taken.doubt is not None:
                _look_first(opened, taken.doubt, sink)
        return Prepared(opened, if_absent, _still_stored(entry, opened.source, key, sink))
    except BaseException:
        opened.close()
        raise


def _open(entry: Entry, cfg: Config, nlink_retry_after: float, *, look_up_vanished: bool,
          sink: Sink, now: float | None = None) -> Opened | Done | Held:
    """Min age, safe open, vanished (see `prepare`; without `look_up_vanished` it raises
    Vanished, for callers that must not wait on S3), superseded versions, and the key."""
    now = time.time() if now is None else now
    source = cfg.source(entry.source)
    if source is None:
        raise PermanentError(f"source {entry.source!r} is not in the configuration")
    age = now - entry.mtime_ns / 1e9
    if age < cfg.consumer.min_age_seconds:
        return Held(cfg.consumer.min_age_seconds - age)
    try:
        safe = open_in_root(source.root, entry.path, nlink_retry_after)
    except Vanished:
        if not look_up_vanished:
            raise
        return _vanished(entry, source, sink)
    try:
        if (safe.st.st_ino, safe.st.st_size, safe.st.st_mtime_ns) != \
                (entry.inode, entry.size, entry.mtime_ns) or \
                entry.ctime_ns not in (0, safe.st.st_ctime_ns):  # 0: queued before ctime was
            safe.close()
            return _superseded(entry, source)
        if safe.writing() == WRITING:  # never read what a client is still writing
            safe.close()
            return Held(WRITING_RETRY, f"still being written: {entry.display_path} is open"
                        " for writing")
        started = time.monotonic()
        fmt = detect_fd(safe.fd)
        cap = cfg.consumer.max_decompressed_bytes
        if fmt is None and safe.st.st_size > cap:  # a sparse 1 TB file, say
            raise PermanentError(f"file size {safe.st.st_size} exceeds "
                                 f"max_decompressed_bytes={cap}", reason="too_large")
        return Opened(entry, source, safe, fmt, object_key(source, entry.path, fmt),
                      metadata(source, entry.path, safe.st.st_size, safe.st.st_mtime_ns),
                      started)
    except BaseException:
        safe.close()
        raise


def read_small(opened: Opened, cap: int, bound: int) -> bytes | None:
    """The whole decompressed body if it is at most `bound` bytes, else None (stream it).

    Reads the file in one go; raises Superseded unless that is exactly the size seen at open.
    """
    data = read_full(_Exactly(opened.safe.fd, opened.safe.st.st_size),
                     opened.safe.st.st_size + 1)
    body = inflate(data, opened.fmt, cap, bound)
    return body if len(body) <= bound else None


def finish(opened: Opened, uploaded: Uploaded, still_ours: Callable[[], bool],
           consumer: ConsumerConfig) -> Done | Undeleted:
    """Steps after a verified upload: log it, then delete the file if it is still that
    version, nobody has it open for writing and the lease is still ours. Raises LeaseLost
    (never deleting) when the lease is not."""
    entry, safe = opened.entry, opened.safe
    ms = (time.monotonic() - opened.started) * 1000
    log.info("uploaded id=%d key=%s bytes_in=%d bytes_out=%d ms=%d parts=%d verified=%s"
             " sha256=%s", entry.id, opened.key, safe.st.st_size, uploaded.bytes_out, ms,
             uploaded.parts, uploaded.verified_by, uploaded.sha256)
    if not same_version(os.fstat(safe.fd), safe.st):
        # Written to while we read it (ctime catches a re-send that restores the mtime): its
        # close-write is a newer entry that uploads it again to the same key. Keep the file.
        log.warning("changed during upload id=%d path=%s", entry.id, entry.display_path)
        return Done("superseded: changed during upload; newer version kept", uploaded)
    if not consumer.delete_after_upload:
        return Done(KEPT, uploaded)
    if not still_ours():
        raise LeaseLost(f"lease lost id={entry.id}")
    kept = safe.unlink(without_lease=consumer.delete_without_lease)
    if kept is None:
        return Done(uploaded=uploaded)
    if kept.reason == "replaced":
        log.info("not deleted id=%d path=%s reason=replaced by a newer version", entry.id,
                 entry.display_path)
        return Done("superseded: replaced; newer version kept", uploaded)
    return _undeleted(opened, uploaded, kept)


def _undeleted(opened: Opened, uploaded: Uploaded, kept: Kept) -> Undeleted:
    """What an operator reads of a file that was uploaded and is still on disk."""
    path = opened.entry.display_path
    if kept.reason == WRITING:  # a client holds it open: its close may bring no new version
        log.info("not deleted id=%d path=%s reason=still open for writing",
                 opened.entry.id, path)
        return Undeleted(uploaded, f"still being written: {path} is open for writing;"
                         " uploaded, deleted once closed", WRITING, WRITING_RETRY)
    if kept.reason == "no_lease":
        return Undeleted(uploaded, f"no lease: cannot tell whether {path} is still open for"
                         f" writing ({kept.detail}); uploaded, kept", "no_lease")
    return Undeleted(uploaded, f"cannot delete: {shown(os.path.dirname(opened.entry.path))}"
                     f" not writable by {user_name()} ({kept.detail}); uploaded, kept",
                     "cannot_delete")


def _still_stored(entry: Entry, source: Source, key: str, sink: Sink) -> Uploaded | None:
    """An earlier attempt's verified upload of this very version (its file could not be
    deleted then), if its object is still at `key`: then it is not uploaded again."""
    if entry.etag is None or entry.key != key:
        return None
    size = sink.holds(source.target.bucket, key, entry.etag)
    if size is None:
        return None
    return Uploaded(source.target.bucket, key, size, entry.sha256 or "", 0, "recorded",
                    entry.etag)


def _cut_short(entry: Entry, exc: Superseded) -> Done:
    log.info("superseded id=%d path=%s reason=%s", entry.id, entry.display_path, exc)
    return Done(f"superseded: {exc}")


def _superseded(entry: Entry, source: Source) -> Done:
    """The entry's version is no longer at its name (a newer one is, which has an entry of
    its own). A consumer killed while deleting this version may have left it under its
    private name: whoever next meets the entry removes it."""
    log.info("superseded id=%d path=%s", entry.id, entry.display_path)
    aside = remove_set_aside(source.root, entry.path, entry.inode, entry.size, entry.mtime_ns)
    return Done(_noted("superseded", aside))


def _noted(note: str, aside: Aside) -> str:
    """The note of an entry whose version stays under its private name (the directory not
    writable) says so: a purge keeps the entry while the name is there (NAME_KEPT)."""
    return f"{note}; {NAME_KEPT}" if aside == Aside.KEPT else note


def _first_upload(entry: Entry, key: str, taken: KeyTaken | None) -> bool:
    """What the queue answered to recording `key` as this path's (None: the lease is lost);
    True if no earlier upload of this path went to it."""
    if taken is None:
        raise LeaseLost(f"lease lost id={entry.id}")
    if taken.holder is not None and taken.waits:
        raise TransientError(f"key {key} is being uploaded from {shown(taken.holder)}:"
                             " waiting for that upload to end")
    if taken.holder is not None:
        raise PermanentError(f"key collision: {key} holds {shown(taken.holder)}", final=True,
                             reason="key_collision")
    return not taken.known


def _look_first(opened: Opened, doubt: bytes, sink: Sink) -> None:
    """A done entry of another path (`doubt`) took this key and recorded no upload: its PUT
    may have landed all the same (its answer lost). On a store that ignores If-None-Match
    nothing else would stop this upload, so the object's metadata decides first: another
    path's is a key collision (raised); this path's, none, or one sftppush did not write
    goes on, still conditional."""
    log.info("key in doubt id=%d key=%s taken_by=%s: asking the store whose object it is",
             opened.entry.id, opened.key, shown(doubt))
    sink.may_replace(opened.source.target.bucket, opened.key, opened.meta)


def _vanished(entry: Entry, source: Source, sink: Sink) -> Done:
    """The entry's file is gone. A consumer killed between the set-aside and the unlink left
    this version under its private name: it goes if its upload was verified (recorded in the
    entry, or its object found). If an object of its path is at the key this entry took (a
    consumer killed after uploading it, between the set-aside and the unlink or before the
    ack), the entry records that object, so that its path keeps the key: on a store that
    ignores If-None-Match, the queue's record is all that stops another path's upload. A
    version gone with its directory (AWAY) may be under its private name there: the note
    keeps the entry until the directory is back and the name removed."""
    bucket = source.target.bucket
    away = not os.path.isdir(os.path.dirname(entry.path))
    aside = Aside.NONE
    if entry.etag is not None:  # this version's verified upload was recorded
        aside = remove_set_aside(source.root, entry.path, entry.inode, entry.size,
                                 entry.mtime_ns)
    for key in candidate_keys(source, entry.path):
        found = sink.head(bucket, key)
        if found is not None:
            if entry.etag is None:  # else removed above
                aside = remove_set_aside(source.root, entry.path, entry.inode, entry.size,
                                         entry.mtime_ns)
            log.info("vanished id=%d path=%s object=exists key=%s", entry.id, entry.display_path,
                     key)
            ours = key == entry.key and \
                found.names(metadata(source, entry.path, entry.size, entry.mtime_ns))
            gone = AWAY if away and (ours or entry.etag is not None) else VANISHED
            return Done(_noted(f"{gone}; object exists at {key}", aside), Uploaded(
                bucket, key, found.size or 0, found.metadata.get(SHA256_KEY, ""), 0,
                "recorded", found.etag) if ours else None)
    log.warning("vanished id=%d path=%s object=missing", entry.id, entry.display_path)
    return Done(f"{VANISHED} before upload; no object (removed by someone else)")


class _Exactly(io.RawIOBase):
    """The bytes of an open file from offset 0, by pread (the fd's offset is not touched),
    raising Superseded when the file ends before or goes past `size`."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.size, self.pos = fd, size, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        want = min(len(buffer), self.size + 1 - self.pos)
        n = os.preadv(self.fd, [memoryview(buffer)[:want]], self.pos) if want > 0 else 0
        self.pos += n
        if self.pos > self.size or (n == 0 and self.pos < self.size):
            raise Superseded(f"{'more' if self.pos > self.size else self.pos} bytes read, "
                             f"{self.size} at open")
        return n
