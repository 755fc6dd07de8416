"""What a queue row is: a file version (what the watcher and rescan enqueue), an entry (that
version and where it stands), and the answer of a key reservation. Plain data; the queue's
parts read and write them. It runs no statement."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any, Protocol


class State(StrEnum):
    PENDING = "pending"
    CLAIMED = "claimed"
    DONE = "done"
    FAILED = "failed"


# The note of an entry whose file was gone at its turn. Such a version is queued again when
# it is seen again: whether or not an object exists under its key, that object may be an
# older version's (a directory renamed away and back, a mount not up yet).
VANISHED = "vanished"
# The note of an entry whose file stays on disk by config (delete_after_upload: false). Its
# row is the only record that this version was uploaded: a purge keeps it while the file is
# there, or the next rescan would upload the file again.
KEPT = "kept"
# The note of an entry whose verified version vanished with its directory (renamed away by
# its client): a consumer killed between its set-aside and its unlink may have left it under
# its private name in that directory. A purge keeps the row while the directory is away or
# holds that name, so that the rescan that meets the name once the directory is back hands
# the entry to a consumer, which removes the name (sweep_set_asides).
AWAY = f"{VANISHED} with its directory"
# The end of the note of an entry whose version its consumer found under its private name
# and could not remove (the directory not writable by the service, now): a purge keeps the
# row while the name is there, so that the rescan that meets it once the directory is
# writable again hands the entry back to a consumer, which removes it (sweep_set_asides).
NAME_KEPT = "private name kept: directory not writable"


def may_be_set_aside(note: str | None) -> bool:
    """Does a done entry's note say its version may still be on disk under its private
    name (AWAY, or NAME_KEPT)?"""
    return (note or "").startswith(AWAY) or (note or "").endswith(NAME_KEPT)


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
    sha256: str | None = None  # of the bytes uploaded (one PUT's object has it in metadata)
    etag: str | None = None    # set once this version's upload was verified: see Stored

    @property
    def display_path(self) -> str:
        return shown(self.path)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = self.display_path
        data["state"] = self.state.value
        return data


@dataclass(frozen=True)
class Stored:
    """What a verified upload left under an entry's key: the object's ETag and the sha256 of
    its bytes. Only an entry that records one proves that its path wrote the key (an entry
    that took the key and then failed, vanished or was superseded proves nothing), and an
    entry retried after its upload (its file could not be deleted yet) finds its object by
    this ETag instead of uploading again."""

    etag: str
    sha256: str


@dataclass(frozen=True)
class KeyTaken:
    """The answer of take_key: `holder` is the path of another entry holding the key (then
    nothing was set), else None; `known`: an entry of this same path recorded a verified
    upload to this key (Stored), so the object there is this path's to replace; `waits`:
    the holder's upload is still in flight (pending or claimed, nothing recorded yet): it
    may fail and give the key up, so this entry tries again later instead of failing;
    `doubt`: the path of a done entry that took the key and recorded no upload (it was
    superseded, say): its PUT may have landed, so the object's own metadata must show
    whose it is before this entry uploads (set only with no holder and not known)."""

    holder: bytes | None
    known: bool
    waits: bool = False
    doubt: bytes | None = None


class Rows(Protocol):
    """A cursor after a statement that returns rows (its columns named in `description`)."""

    @property
    def description(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


def entries_of(rows: Rows) -> list[Entry]:
    """The Entries of the rows of `SELECT *` (or `RETURNING *`) on the entries table, by
    column name: a file migrated from an older schema has its columns in another order."""
    names = [d[0] for d in rows.description]
    return [_entry(dict(zip(names, row, strict=True))) for row in rows.fetchall()]


def _entry(data: dict[str, Any]) -> Entry:
    data["path"] = bytes(data["path"])
    data["state"] = State(data["state"])  # an unknown state is an error, not a guess
    return Entry(**data)


def vanished(state: str, note: str | None) -> bool:
    """Was this entry acked because its file vanished without an object?"""
    return state == State.DONE and (note or "").startswith(VANISHED)
