"""What can become of one entry's attempt, as types: the pipeline and the sink return or raise
them, the policy reads them (`decide()`), the consumer hands them from one to the other.

Owns those types and nothing else. It imports nothing of the package and no library, so that
every layer may name an outcome and the pure decisions can be read without I/O below them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Uploaded:
    """A verified object in the store: what an upload (single PUT or multipart) left."""

    bucket: str
    key: str
    bytes_out: int
    sha256: str
    parts: int          # 0 = single PUT
    verified_by: str    # "crc64nvme", "crc32", "etag", "head", "size" or "recorded"
    etag: str = ""      # the object's, as the store answered (quotes stripped)


@dataclass(frozen=True)
class Done:
    """The entry is finished, with `note` saying anything unusual (superseded, vanished)."""

    note: str | None = None
    uploaded: Uploaded | None = None


@dataclass(frozen=True)
class Held:
    """Not processed: try again in `delay` seconds, for the reason `why` (younger than
    min_age_seconds; still open for writing)."""

    delay: float
    why: str = "held: younger than min_age_seconds"


@dataclass(frozen=True)
class Undeleted:
    """Uploaded and verified, but the file was not deleted: `why` says what an operator
    reads, `reason` its class. With `retry_after` the entry is tried again then (still open
    for writing); else it ends failed until an operator acts (no lease, a directory the
    service cannot write). A later attempt finds `uploaded`'s object and only deletes."""

    uploaded: Uploaded
    why: str
    reason: str
    retry_after: float | None = None


class LeaseLost(Exception):
    """Another consumer holds the entry now: drop it, and never delete its file."""


class Superseded(Exception):
    """The file changed while it was read (an in-place re-send, say): that newer version has
    an entry of its own, and this one must not be uploaded cut short."""


class UploadCancelled(Exception):
    """The consumer is stopping hard: the upload was abandoned between parts."""
