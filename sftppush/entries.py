"""What a queue row is: a file version (what the watcher and rescan enqueue), an entry (that
version and where it stands), and the answer of a key reservation. Plain data; queue.py
reads and writes them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from typing import Any


class State(StrEnum):
    PENDING = "pending"
    CLAIMED = "claimed"
    DONE = "done"
    FAILED = "failed"


# The note of an entry whose file was gone at its turn. Such a version is queued again when
# it is seen again: whether or not an object exists under its key, that object may be an
# older version's (a directory renamed away and back, a mount not up yet).
VANISHED = "vanished"


def shown(path: bytes) -> str:
    """A path for a log line or message: bytes that are not UTF-8 shown as escapes."""
    return path.decode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class FileVersion:
    """One version of one file: what the watcher and rescan enqueue.

    (path, inode, size, mtime_ns, ctime_ns) tell versions apart: ctime catches a re-send in
    place that restores the old mtime.
    """

    path: bytes
    source: str
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    found_by: str

    @classmethod
    def of(cls, path: bytes | str, source: str, st: os.stat_result, found_by: str) -> FileVersion:
        return cls(os.fsencode(path), source, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                   st.st_ino, found_by)


@dataclass(frozen=True)
class Entry(FileVersion):
    """A queue row: a file version and where it stands.

    `due` is when the row next needs attention: the next attempt (pending), the lease
    expiry (claimed), or when it finished (done, failed). `key` is the object key the
    entry holds (take_key), kept once it is done.
    """

    id: int
    state: State
    owner: str | None
    due: float
    attempts: int
    enqueued_at: float
    last_error: str | None
    note: str | None
    key: str | None = None
    sha256: str | None = None  # of a multipart upload's object (one PUT's is in its metadata)

    @property
    def display_path(self) -> str:
        return shown(self.path)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = self.display_path
        data["state"] = self.state.value
        return data


@dataclass(frozen=True)
class KeyTaken:
    """The answer of take_key: `holder` is the path of another entry holding the key (then
    nothing was set), else None; `known`: an earlier entry of this same path is done with
    this key, so its object is there to be replaced."""

    holder: bytes | None
    known: bool


# Entry's fields are the columns read back: a FileVersion's first, then the queue's.
FIELDS = tuple(f.name for f in fields(Entry))
COLUMNS = ", ".join(FIELDS)


def entry_of(row: Sequence[Any]) -> Entry:
    """An Entry from a row of COLUMNS."""
    data = dict(zip(FIELDS, row, strict=True))
    data["path"] = bytes(data["path"])
    data["state"] = State(data["state"])  # an unknown state is an error, not a guess
    return Entry(**data)


def vanished(state: str, note: str | None) -> bool:
    """Was this entry acked because its file vanished without an object?"""
    return state == State.DONE and (note or "").startswith(VANISHED)
