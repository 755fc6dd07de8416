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
from sftppush.decompress import CappedReader, detect_fd
from sftppush.errors import PermanentError
from sftppush.keys import candidate_keys, metadata, object_key
from sftppush.queue import Entry
from sftppush.s3 import Uploaded, Uploader
from sftppush.safeopen import NLINK_RETRY_SECONDS, Vanished, open_in_root, same_version

log = logging.getLogger("sftppush.pipeline")

READ_BUFFER = 1 << 20


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


def process(entry: Entry, cfg: Config, uploader: Uploader, *,
            still_ours: Callable[[], bool] = lambda: True,
            cancel: threading.Event | None = None,
            now: float | None = None,
            nlink_retry_after: float = NLINK_RETRY_SECONDS) -> Result:
    """Move one file version to S3 and delete it; see the module docstring for the order."""
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
        return _vanished(entry, source, uploader)
    with safe:
        if (safe.st.st_ino, safe.st.st_size, safe.st.st_mtime_ns) != \
                (entry.inode, entry.size, entry.mtime_ns):
            log.info("superseded id=%d path=%s", entry.id, _show(entry.path))
            return Result(note="superseded")
        started = time.monotonic()
        fmt = detect_fd(safe.fd)
        key = object_key(source, entry.path, fmt)
        meta = metadata(source, entry.path, safe.st.st_size, safe.st.st_mtime_ns)
        with open(safe.fd, "rb", buffering=READ_BUFFER, closefd=False) as raw:
            reader = CappedReader(raw, fmt, cfg.consumer.max_decompressed_bytes)
            try:
                uploaded = uploader.upload(source.target.bucket, key, reader, meta, cancel)
            finally:
                reader.close()
        ms = (time.monotonic() - started) * 1000
        log.info("uploaded id=%d key=%s bytes_in=%d bytes_out=%d ms=%d parts=%d verified=%s",
                 entry.id, key, safe.st.st_size, uploaded.bytes_out, ms, uploaded.parts,
                 uploaded.verified_by)
        if not same_version(os.fstat(safe.fd), safe.st):
            # Written to while we read it: its next close-write is a newer entry that will
            # upload it again to the same key. Keep the file.
            log.warning("changed during upload id=%d path=%s", entry.id, _show(entry.path))
            return Result(note="changed during upload; newer version kept", uploaded=uploaded)
        if not still_ours():
            raise LeaseLost(f"lease lost id={entry.id}")
        if cfg.consumer.delete_after_upload and not safe.unlink():
            log.warning("not deleted id=%d path=%s reason=replaced during upload",
                        entry.id, _show(entry.path))
            return Result(note="replaced during upload; newer version kept", uploaded=uploaded)
    return Result(uploaded=uploaded)


def _vanished(entry: Entry, source: Source, uploader: Uploader) -> Result:
    for key in candidate_keys(source, entry.path):
        if uploader.exists(source.target.bucket, key):
            log.info("vanished id=%d path=%s object=exists key=%s", entry.id, _show(entry.path),
                     key)
            return Result(note=f"vanished; object exists at {key}")
    log.warning("vanished id=%d path=%s object=missing", entry.id, _show(entry.path))
    return Result(note="vanished before upload; no object (removed by someone else)")


def _show(path: bytes) -> str:
    return os.fsdecode(path).encode("utf-8", "backslashreplace").decode("utf-8")
