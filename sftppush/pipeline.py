"""One queue entry, start to finish: safe open → decompress → upload → verify → delete.

Owns the order of those steps and the checks between them (min age, superseded versions,
vanished files, lease still ours before the delete). It raises TransientError/PermanentError
and never touches the queue: the consumer decides what an outcome means for the entry.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sftppush.config import Config, Source
from sftppush.decompress import CappedReader, detect_fd, inflate
from sftppush.errors import PermanentError
from sftppush.keys import candidate_keys, metadata, object_key
from sftppush.queue import Entry
from sftppush.s3 import Uploaded, Uploader
from sftppush.safeopen import (
    NLINK_RETRY_SECONDS,
    SafeFile,
    Vanished,
    open_in_root,
    same_version,
)

log = logging.getLogger("sftppush.pipeline")

READ_BUFFER = 1 << 17


class LeaseLost(Exception):
    """Another consumer holds the entry now: drop it, and never delete its file."""


@dataclass(frozen=True)
class Result:
    """What happened to one entry that did not raise.

    `hold` > 0: not processed, try again after that many seconds (min_age_seconds).
    Otherwise the entry is done, with `note` saying anything unusual.
    """

    note: str | None = None
    uploaded: Uploaded | None = None
    hold: float = 0.0


@dataclass
class Prepared:
    """A file version opened safely and checked, with its key and metadata; close() it."""

    entry: Entry
    source: Source
    safe: SafeFile
    fmt: str | None
    key: str
    meta: dict[str, str]
    started: float

    def reader(self, cap: int) -> CappedReader:
        """The decompressed stream of the file, refusing to go past `cap` bytes."""
        # closefd=False: the fd belongs to self.safe, which closes it.
        raw = open(self.safe.fd, "rb", buffering=READ_BUFFER, closefd=False)  # noqa: SIM115
        return CappedReader(raw, self.fmt, cap)

    def close(self) -> None:
        self.safe.close()


def process(entry: Entry, cfg: Config, uploader: Uploader, *,
            still_ours: Callable[[], bool] = lambda: True,
            cancel: threading.Event | None = None,
            now: float | None = None,
            nlink_retry_after: float = NLINK_RETRY_SECONDS) -> Result:
    """Move one file version to S3 and delete it; see the module docstring for the order."""
    prepared = prepare(entry, cfg, uploader, now=now, nlink_retry_after=nlink_retry_after)
    if isinstance(prepared, Result):
        return prepared
    try:
        reader = prepared.reader(cfg.consumer.max_decompressed_bytes)
        try:
            uploaded = uploader.upload(prepared.source.target.bucket, prepared.key, reader,
                                       prepared.meta, cancel)
        finally:
            reader.close()
        return finish(prepared, uploaded, still_ours, cfg.consumer.delete_after_upload)
    finally:
        prepared.close()


def prepare(entry: Entry, cfg: Config, uploader: Uploader, *, now: float | None = None,
            nlink_retry_after: float = NLINK_RETRY_SECONDS,
            look_up_vanished: bool = True) -> Prepared | Result:
    """Steps before the upload: min age, safe open, vanished and superseded versions.

    A Result means the entry needs no upload (held, vanished, superseded); otherwise the
    caller owns the returned Prepared and must close it. A vanished file takes a HEAD of its
    key (retried while the store is down); with `look_up_vanished=False` it raises Vanished
    instead, for callers that must not wait on S3.
    """
    now = time.time() if now is None else now
    source = cfg.source(entry.source)
    if source is None:
        raise PermanentError(f"source {entry.source!r} is not in the configuration")
    age = now - entry.mtime_ns / 1e9
    if age < cfg.consumer.min_age_seconds:
        return Result(hold=cfg.consumer.min_age_seconds - age)
    try:
        safe = open_in_root(source.root, entry.path, nlink_retry_after)
    except Vanished:
        if not look_up_vanished:
            raise
        return _vanished(entry, source, uploader)
    try:
        if (safe.st.st_ino, safe.st.st_size, safe.st.st_mtime_ns) != \
                (entry.inode, entry.size, entry.mtime_ns):
            log.info("superseded id=%d path=%s", entry.id, entry.display_path)
            safe.close()
            return Result(note="superseded")
        started = time.monotonic()
        fmt = detect_fd(safe.fd)
        return Prepared(entry, source, safe, fmt, object_key(source, entry.path, fmt),
                        metadata(source, entry.path, safe.st.st_size, safe.st.st_mtime_ns),
                        started)
    except BaseException:
        safe.close()
        raise


def read_small(prepared: Prepared, cap: int, bound: int) -> bytes | None:
    """The whole decompressed body if it is at most `bound` bytes, else None (stream it).

    Reads the file in one go; one that grew since it was opened is left to the streaming
    path too, whose checks call it superseded.
    """
    size = prepared.safe.st.st_size
    data = _pread_all(prepared.safe.fd, size + 1)
    if len(data) > size:
        return None
    body = inflate(data, prepared.fmt, cap, bound)
    return body if len(body) <= bound else None


def _pread_all(fd: int, most: int) -> bytes:
    data = os.pread(fd, most, 0)
    if len(data) in (0, most):
        return data
    chunks = [data]
    got = len(data)
    while got < most and (more := os.pread(fd, most - got, got)):
        chunks.append(more)
        got += len(more)
    return b"".join(chunks)


def finish(prepared: Prepared, uploaded: Uploaded, still_ours: Callable[[], bool],
           delete: bool) -> Result:
    """Steps after a verified upload: log it, then delete the file if it is still that
    version and the lease still ours. Raises LeaseLost (never deleting) otherwise."""
    entry, safe = prepared.entry, prepared.safe
    ms = (time.monotonic() - prepared.started) * 1000
    log.info("uploaded id=%d key=%s bytes_in=%d bytes_out=%d ms=%d parts=%d verified=%s",
             entry.id, prepared.key, safe.st.st_size, uploaded.bytes_out, ms, uploaded.parts,
             uploaded.verified_by)
    if not same_version(os.fstat(safe.fd), safe.st):
        # Written to while we read it: its next close-write is a newer entry that will
        # upload it again to the same key. Keep the file.
        log.warning("changed during upload id=%d path=%s", entry.id, entry.display_path)
        return Result(note="changed during upload; newer version kept", uploaded=uploaded)
    if not still_ours():
        raise LeaseLost(f"lease lost id={entry.id}")
    if delete and not safe.unlink():
        log.warning("not deleted id=%d path=%s reason=replaced during upload",
                    entry.id, entry.display_path)
        return Result(note="replaced during upload; newer version kept", uploaded=uploaded)
    return Result(uploaded=uploaded)


def _vanished(entry: Entry, source: Source, uploader: Uploader) -> Result:
    for key in candidate_keys(source, entry.path):
        if uploader.exists(source.target.bucket, key):
            log.info("vanished id=%d path=%s object=exists key=%s", entry.id, entry.display_path,
                     key)
            return Result(note=f"vanished; object exists at {key}")
    log.warning("vanished id=%d path=%s object=missing", entry.id, entry.display_path)
    return Result(note="vanished before upload; no object (removed by someone else)")

