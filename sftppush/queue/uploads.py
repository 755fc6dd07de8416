"""The multipart journal: a claimed entry's upload in progress, kept in the queue file so that
whoever claims the entry next resumes it.

Owns the uploads table's statements and `EntryJournal`, the sink's multipart journal over
one claimed entry. What is kept is the sink's own JSON (the upload's detail, one item per
part), opaque here: the queue never imports the sink, and a caller hands in how a record
becomes the sink's upload again. Every write needs the entry's lease.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from sftppush.outcomes import LeaseLost
from sftppush.queue.entries import Entry
from sftppush.queue.queuefile import QueueFile

# The lease check of every write, which also keeps the sha256 of a completed upload.
HOLD_AND_KEEP_SHA256 = """
UPDATE entries SET sha256 = coalesce(?, sha256)
 WHERE id = ? AND state = 'claimed' AND owner = ?"""
RECORD_UPLOAD = "INSERT OR REPLACE INTO uploads VALUES (?, ?, ?, ?, '[]')"
ADD_PART = "UPDATE uploads SET parts = json_insert(parts, '$[#]', json(?)) WHERE entry_id = ?"
FORGET_UPLOAD = "DELETE FROM uploads WHERE entry_id = ?"
UPLOAD_OF = "SELECT upload_id, key, detail, parts FROM uploads WHERE entry_id = ?"
RESUMABLE_OF_KEY = """
SELECT upload_id FROM uploads JOIN entries ON entries.id = uploads.entry_id
 WHERE uploads.key = ? AND state IN ('pending', 'claimed')"""

Record = tuple[str, str, str, list[str]]  # upload id, key, detail, parts: as kept


class Uploads:
    """The uploads in progress of one queue file, each kept by its entry."""

    def __init__(self, file: QueueFile) -> None:
        self.file = file

    def start(self, entry: Entry, upload_id: str, key: str, detail: str) -> bool:
        """Record the entry's new upload (replacing any earlier one); False: lease lost."""
        return self._holding(entry, RECORD_UPLOAD, (entry.id, upload_id, key, detail))

    def add_part(self, entry: Entry, part: str) -> bool:
        """Append one completed part (JSON) to the entry's upload; False: lease lost."""
        return self._holding(entry, ADD_PART, (part, entry.id))

    def end(self, entry: Entry, sha256: str | None) -> bool:
        """Forget the entry's upload: completed (its object's `sha256`) or gone (None)."""
        return self._holding(entry, FORGET_UPLOAD, (entry.id,), sha256)

    def of(self, entry: Entry) -> Record | None:
        """(upload id, key, detail, parts) recorded by the entry, or None."""
        with self.file.transaction(write=False) as db:
            row = db.execute(UPLOAD_OF, (entry.id,)).fetchone()
        if row is None:
            return None
        return row[0], row[1], row[2], [json.dumps(part) for part in json.loads(row[3])]

    def resumable(self, key: str) -> set[str]:
        """Upload ids of `key` that entries still to be done keep for a resume."""
        with self.file.transaction(write=False) as db:
            return {r[0] for r in db.execute(RESUMABLE_OF_KEY, (key,))}

    def _holding(self, entry: Entry, statement: str, args: tuple[Any, ...],
                 sha256: str | None = None) -> bool:
        """Run `statement` if the entry's claim is still this owner's (and set its sha256)."""
        with self.file.transaction() as db:
            db.execute(HOLD_AND_KEEP_SHA256, (sha256, entry.id, entry.owner))
            if db.rowcount == 0:
                return False
            db.execute(statement, args)
            return True


class Started(Protocol):
    """What the journal keeps of an upload as it starts (the sink's Resumable)."""

    @property
    def upload_id(self) -> str: ...
    @property
    def key(self) -> str: ...
    def detail(self) -> str: ...


class Completed(Protocol):
    """What the journal keeps of a completed part (the sink's Part)."""

    def to_json(self) -> str: ...


R = TypeVar("R")


@dataclass(frozen=True)
class EntryJournal(Generic[R]):
    """A claimed entry as the record of its multipart upload (the sink's multipart Journal).
    `restore` makes the sink's upload again from a record (the sink's Resumable.of)."""

    uploads: Uploads
    entry: Entry
    restore: Callable[[str, str, str, list[str]], R]

    def recorded(self) -> R | None:
        found = self.uploads.of(self.entry)
        return self.restore(*found) if found else None

    def started(self, upload: Started) -> None:
        self._held(self.uploads.start(self.entry, upload.upload_id, upload.key,
                                      upload.detail()))

    def completed(self, part: Completed) -> None:
        self._held(self.uploads.add_part(self.entry, part.to_json()))

    def ended(self, sha256: str | None) -> None:
        self.uploads.end(self.entry, sha256)  # a lost lease shows at the ack

    def kept(self, key: str) -> set[str]:
        return self.uploads.resumable(key)

    def _held(self, ok: bool) -> None:
        if not ok:  # another consumer holds the entry now, and may be resuming this upload
            raise LeaseLost(f"lease lost id={self.entry.id}")
