"""How far the uploads in flight are: parts done (of how many, when that can be known), bytes
sent and the rate, read from the record each multipart upload keeps in the queue for a resume
(the `uploads` table); and a consumer's progress line for each of its uploads every 30 s.

Only reads the queue, through its own read-only connection; never writes it, never touches
S3 or a file. A single PUT (a body below one part) keeps no record and shows no progress.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sftppush.queue.entries import shown
from sftppush.sink.parts import part_size

log = logging.getLogger("sftppush.progress")

EVERY = 30.0   # seconds between a consumer's progress lines
WINDOW = 60.0  # the rate counts the parts the store took in this many seconds
_IN_FLIGHT = ("SELECT entries.id, entries.path, entries.size, uploads.key, uploads.detail,"
              " uploads.parts FROM uploads JOIN entries ON entries.id = uploads.entry_id"
              " WHERE entries.state = 'claimed'")


@dataclass(frozen=True)
class Progress:
    """One multipart upload in flight, as its record shows it at `now`."""

    id: int
    path: str
    key: str
    parts_done: int
    parts_total: int | None  # None: a decompressed stream's length is not known in advance
    bytes_sent: int
    bytes_per_s: float | None  # None: nothing taken in the last WINDOW seconds yet

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        """`parts 3/8, 15.0 MiB sent, 2.1 MiB/s`."""
        rate = "-" if self.bytes_per_s is None else f"{self.bytes_per_s / 2**20:.1f} MiB/s"
        return (f"parts {self.parts_done}/{self.parts_total or '?'},"
                f" {self.bytes_sent / 2**20:.1f} MiB sent, {rate}")


def in_flight(db: sqlite3.Cursor, now: float, owner: str | None = None) -> list[Progress]:
    """The progress of every claimed entry with a multipart upload (of `owner`'s claims
    only, when given: a process's owner token, which starts each of its claim tokens)."""
    sql, args = _IN_FLIGHT, ()
    if owner is not None:
        sql, args = sql + " AND substr(entries.owner, 1, ?) = ?", (len(owner) + 1, owner + "/")
    return [of(i, bytes(path), size, key, detail, parts, now)
            for i, path, size, key, detail, parts in db.execute(sql + " ORDER BY entries.id",
                                                                args)]


def of(entry_id: int, path: bytes, size: int, key: str, detail: str, parts: str,
       now: float) -> Progress:
    """One upload's progress from its record (multipart.Resumable's detail, Part's JSON)."""
    d = json.loads(detail)
    done = json.loads(parts)
    sent = sum(p["size"] for p in done)
    recent = [p for p in done if p.get("at", 0) > now - WINDOW]
    since = max(now - WINDOW, d.get("started") or now - WINDOW)
    rate = sum(p["size"] for p in recent) / (now - since) if recent and now > since else None
    return Progress(entry_id, shown(path), key, len(done),
                    _parts_total(path, size, key, d, len(done)), sent, rate)


def _parts_total(path: bytes, size: int, key: str, detail: dict[str, Any], done: int
                 ) -> int | None:
    """How many parts the file makes when it is uploaded as it is (its key keeps its name:
    no compression suffix dropped); None for a decompressed stream, or when the parts done
    already disagree (a compressed file without a suffix)."""
    if not os.fsdecode(path).endswith("/" + key.rsplit("/", 1)[-1]):
        return None
    count = total = 0
    while total < size:
        count += 1
        total += part_size(detail["part_size"], count, detail["every"])
    return count if count >= done else None


class Reporter:
    """A thread that logs `progress` for each multipart upload of this process every EVERY
    seconds, from the queue file's records: an upload that takes minutes is never silent."""

    def __init__(self, queue: Path, owner: str, every: float = EVERY) -> None:
        self.queue, self.owner, self.every = queue, owner, every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="progress", daemon=True)

    def __enter__(self) -> Reporter:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)

    def _run(self) -> None:
        from sftppush.errors import SftppushError
        from sftppush.queue.queue import Queue

        while not self.stop.wait(self.every):
            try:
                with Queue(self.queue, readonly=True, timeout=5.0) as q, q.reading() as db:
                    found = in_flight(db, time.time(), self.owner)
            except SftppushError as exc:  # not made yet, or busy: the next tick tries again
                log.debug("progress unreadable error=%s", exc)
                continue
            for p in found:
                if p.parts_total is None:
                    log.info("progress id=%d key=%s parts_done=%d parts_total=unknown"
                             " bytes_sent=%d bytes_per_s=%d path=%s", p.id, p.key,
                             p.parts_done, p.bytes_sent, p.bytes_per_s or 0, p.path)
                else:
                    log.info("progress id=%d key=%s parts_done=%d parts_total=%d"
                             " bytes_sent=%d bytes_per_s=%d path=%s", p.id, p.key,
                             p.parts_done, p.parts_total, p.bytes_sent, p.bytes_per_s or 0,
                             p.path)
