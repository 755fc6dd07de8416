"""Multipart uploads: parts sent in parallel, a resume after a crash, the object verified.

Owns creating the upload, sending parts (sizes, checksums and buffers come from parts.py),
recording each completed part in a Journal and resuming from it (re-reading the whole stream,
sending only the parts not recorded, checking the others), aborting what cannot be resumed
and verifying the completed object (its full-object checksum, else the ETag of the parts'
MD5s, else its size). It reaches the store only through the `call` it is given (s3.Sink's,
retried and classified there) and never opens the source files or the queue (the Journal is
the caller's).
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, wait
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from sftppush import threads
from sftppush.errors import PermanentError, TransientError
from sftppush.outcomes import UploadCancelled, Uploaded
from sftppush.sink.answers import CORRUPTED_CODES, error_code
from sftppush.sink.inflight import Window
from sftppush.sink.parts import (
    READ_CHUNK,
    Body,
    Budget,
    Checksum,
    PartBody,
    Reader,
    Tally,
    digests,
    grow_every,
    part_size,
    read_part,
)

log = logging.getLogger("sftppush.s3")

Call = Callable[..., Any]  # s3.Sink.call: (method, cancel, **kwargs) -> answer
CHECKSUM_FIELDS = ("ChecksumCRC32", "ChecksumCRC32C", "ChecksumCRC64NVME", "ChecksumSHA1",
                   "ChecksumSHA256")  # a part's checksums as the store answers them


class BadPart(TransientError):
    """The store holds other bytes than a part we sent. Not resumable: some stores (rclone
    serve s3) refuse to replace a part with different contents, so the upload starts over."""


@dataclass(frozen=True)
class Part:
    """A part the store took: its size, the ETag it answered, our MD5 and checksum of it."""

    number: int
    size: int
    etag: str
    md5: str
    checksum: str | None
    at: float = 0.0  # when the store took it: progress.py's rate

    def to_json(self) -> str:
        return json.dumps(asdict(self))


@dataclass(frozen=True)
class Resumable:
    """An upload in progress as its journal recorded it: enough to continue it elsewhere."""

    upload_id: str
    bucket: str
    key: str
    part_size: int
    every: int
    parts: tuple[Part, ...] = ()
    started: float = 0.0  # when the upload was created: progress.py's rate

    def detail(self) -> str:
        return json.dumps({"bucket": self.bucket, "part_size": self.part_size,
                           "every": self.every, "started": self.started})

    @classmethod
    def of(cls, upload_id: str, key: str, detail: str, parts: list[str]) -> Resumable:
        """From what a journal kept: detail() and each part's to_json()."""
        d = json.loads(detail)
        return cls(upload_id, d["bucket"], key, d["part_size"], d["every"],
                   tuple(Part(**json.loads(p)) for p in parts), d.get("started", 0.0))


class Journal(Protocol):
    """Where an upload's progress is kept between attempts (the queue entry, see consumer)."""

    def recorded(self) -> Resumable | None: ...
    def started(self, upload: Resumable) -> None: ...
    def completed(self, part: Part) -> None: ...
    def ended(self, sha256: str | None) -> None: ...   # done (sha256) or gone (None)
    def kept(self, key: str) -> set[str]: ...          # upload ids recorded for a resume


SentPart = tuple[dict[str, Any], bytes]  # a part's entry for CompleteMultipartUpload, and its MD5
Kept = dict[int, tuple[Part, dict[str, Any]]]  # a resume's recorded parts, with the listing's


class Multipart:
    """Sends one stream as a multipart upload; shared by the threads of one Sink.

    One upload holds at most `part_memory` bytes of part buffers (one part alone may exceed
    it); a part bigger than `spool_above` is written to a temporary file as it is read, and
    counts `spool_above` against the budget, which so bounds the disk used too. The budget
    follows the link up to `part_memory_max`, in parts of the first size: a store far away
    needs more parts in flight to keep its bandwidth-delay product full (`parts`, a window
    as the small files' is, on the parts' latencies; shared by the uploads of the Sink).
    """

    def __init__(self, call: Call, part_size: int, checksum: Checksum | None,
                 extra: dict[str, str], opaque_etags: bool, part_memory: int,
                 spool_above: int, part_memory_max: int = 0) -> None:
        self.call = call
        self.part_size = part_size
        self.parts = Window(max(1, part_memory // part_size),
                            max(1, max(part_memory, part_memory_max) // part_size), min_epoch=4)
        self._parts_lock = threading.Lock()
        self.every = grow_every(part_size)
        self.checksum = checksum
        self.extra = extra
        self.opaque_etags = opaque_etags
        self.spool_above = spool_above

    def upload(self, bucket: str, key: str, parts: list[bytearray], reader: Reader,
               metadata: dict[str, str], cancel: threading.Event | None,
               journal: Journal | None = None, resume: Resumable | None = None) -> Uploaded:
        """Upload `parts` (already read) and the rest of `reader`; verified.

        With a `journal`, each completed part is recorded, and an upload that fails for any
        reason but a PermanentError, a BadPart or a completion refused as damaged (BadDigest)
        is kept for a resume: `resume` (that record; then nothing may have been read)
        continues it, sending only the parts not recorded, or aborts it and raises
        TransientError when the stream is not what was sent before."""
        stream = Tally(reader, self.checksum)
        done: list[SentPart] = []
        kept = self._resume(resume, journal) if resume else None
        upload = resume if resume and kept is not None else \
            self._create(bucket, key, metadata, cancel, journal)
        completing = False
        try:
            self._send(upload, parts, stream, done, cancel, journal, kept or {})
            ck = self.checksum
            whole = {ck.param: ck.b64(stream.crc), "ChecksumType": "FULL_OBJECT"} if ck else {}
            completing = True
            resp = self.call("complete_multipart_upload", cancel, Bucket=bucket, Key=key,
                             UploadId=upload.upload_id,
                             MultipartUpload={"Parts": [part for part, _ in done]}, **whole)
        except BaseException as exc:
            # A completion refused for its whole-object checksum: a part was stored otherwise
            # than sent, and a resume would join the same parts again.
            spoiled = completing and error_code(exc) in CORRUPTED_CODES
            if journal is None or spoiled or isinstance(exc, (PermanentError, BadPart)):
                self._give_up(bucket, key, upload.upload_id, journal)
            raise
        etag = hashlib.md5(b"".join(md5 for _, md5 in done), usedforsecurity=False).hexdigest()
        sha = stream.sha256.hexdigest()
        try:
            how = self._verify(bucket, key, stream.total, resp,
                               ck.b64(stream.crc) if ck else None, f"{etag}-{len(done)}")
        except BaseException:
            if journal is not None:
                journal.ended(None)  # completed, so no longer resumable: the retry starts over
            raise
        if journal is not None:
            journal.ended(sha)
        return Uploaded(bucket, key, stream.total, sha, len(done), how,
                        str(resp.get("ETag", "")).strip('"'))

    def _create(self, bucket: str, key: str, metadata: dict[str, str],
                cancel: threading.Event | None, journal: Journal | None) -> Resumable:
        self.abort_orphans(bucket, key, journal.kept(key) if journal else set())
        ck = self.checksum
        create = {"ChecksumAlgorithm": ck.name.upper(), "ChecksumType": "FULL_OBJECT"} \
            if ck else {}
        upload_id = self.call("create_multipart_upload", cancel, Bucket=bucket, Key=key,
                              Metadata=metadata, **self.extra, **create)["UploadId"]
        upload = Resumable(upload_id, bucket, key, self.part_size, self.every,
                           started=time.time())
        if journal is not None:
            journal.started(upload)
        return upload

    def _send(self, upload: Resumable, parts: list[bytearray], stream: Tally, done: list[SentPart],
              cancel: threading.Event | None, journal: Journal | None, kept: Kept) -> None:
        """Read the stream and send its parts, those `kept` (a resume's) checked instead,
        appending them to `done`; raises the first failure once every part in flight has
        ended."""
        budget = Budget(self.parts.size * self.part_size)
        futures: list[Future[SentPart]] = []
        pool = threads.Pool(self.parts.ceiling, "part")

        def answered(latency: float) -> None:  # one part's UploadPart, `latency` s
            with self._parts_lock:
                self.parts.answered(latency, max(1, -(-budget.used // self.part_size)))

        try:
            number = len(done)
            while not any(f.done() and f.exception() for f in futures):
                if cancel is not None and cancel.is_set():
                    raise UploadCancelled(upload.key)
                size = part_size(upload.part_size, number + 1, upload.every)
                cost = min(size, self.spool_above)
                budget.limit = self.parts.size * self.part_size
                budget.take(cost)
                body = parts.pop(0) if parts else self._read(stream.reader, size)
                if body is None:
                    budget.give(cost)
                    break
                number += 1
                fut = pool.submit(self._check_part, upload, number, body, stream, kept[number]) \
                    if number in kept else \
                    pool.submit(self._upload_part, upload, number, body, stream, cancel, journal,
                                answered)
                fut.add_done_callback(lambda _f, cost=cost: budget.give(cost))
                futures.append(fut)
                del body  # only the part thread may keep it alive
            wait(futures, return_when=FIRST_EXCEPTION)
            done.extend(f.result() for f in futures)  # raises the first part's error
            if kept and max(kept) > number:
                raise BadPart(f"resume {upload.key}: the stream ends before part {max(kept)}; "
                              "upload aborted, starting over")
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _resume(self, upload: Resumable, journal: Journal | None) -> Kept | None:
        """The recorded parts the store's listing confirms, which the resume re-reads and
        checks instead of sending them (every one, not only those before the first gap: a
        part that was slow when the consumer died costs itself, not all that followed it).
        None: there is nothing to resume (start afresh). Aborts the upload and raises
        TransientError when the store holds other parts than the record."""
        listed = self._list_parts(upload)
        if listed is None:
            if journal is not None:
                journal.ended(None)
            return None
        kept: Kept = {}
        for part in upload.parts:
            theirs = listed.get(part.number, {})
            if (theirs.get("Size"), str(theirs.get("ETag", "")).strip('"')) != \
                    (part.size, part.etag.strip('"')):
                self._give_up(upload.bucket, upload.key, upload.upload_id, journal)
                raise TransientError(f"resume {upload.key}: part {part.number} differs from "
                                     "the one recorded; upload aborted, starting over")
            kept[part.number] = (part, theirs)
        log.info("resuming upload key=%s upload_id=%s parts=%d bytes=%d", upload.key,
                 upload.upload_id, len(kept), sum(part.size for part, _ in kept.values()))
        return kept

    def _check_part(self, upload: Resumable, number: int, body: Body, stream: Tally,
                    kept: tuple[Part, dict[str, Any]]) -> SentPart:
        """A part a resume re-read: tallied and compared with the one the store holds."""
        part, theirs = kept
        try:
            stream.feed_part(number, body)
            md5, crc, size = digests(body, self.checksum)
        finally:
            if not isinstance(body, bytearray):
                body.close()
        if (size, md5.hexdigest(), self.checksum.b64(crc) if self.checksum else None) != \
                (part.size, part.md5, part.checksum):
            raise BadPart(f"resume {upload.key}: part {number} differs from the one recorded; "
                          "upload aborted, starting over")
        return ({"PartNumber": number, "ETag": theirs["ETag"],
                 **{k: v for k, v in theirs.items() if k in CHECKSUM_FIELDS}}, md5.digest())

    def _list_parts(self, upload: Resumable) -> dict[int, dict[str, Any]] | None:
        """The parts the store holds for the upload; None when the upload is gone."""
        parts: dict[int, dict[str, Any]] = {}
        kwargs: dict[str, Any] = {"Bucket": upload.bucket, "Key": upload.key,
                                  "UploadId": upload.upload_id}
        while True:
            try:
                page = self.call("list_parts", **kwargs)
            except PermanentError as exc:
                if error_code(exc) in ("NoSuchUpload", "404", "NoSuchKey"):
                    return None
                raise
            parts.update((p["PartNumber"], p) for p in page.get("Parts") or ())
            if not page.get("IsTruncated"):
                return parts
            kwargs["PartNumberMarker"] = page["NextPartNumberMarker"]

    def _read(self, stream: Reader, size: int) -> Body | None:
        """The next part, None at the end of the stream: in memory, or spooled to disk; its
        part thread tallies it."""
        if size <= self.spool_above:
            return read_part(stream, size) or None
        spool = tempfile.TemporaryFile()  # noqa: SIM115  # closed by the part thread
        chunk = bytearray(READ_CHUNK)
        left = size
        with memoryview(chunk) as view:
            while left and (n := stream.readinto(view[: min(left, READ_CHUNK)])):
                spool.write(view[:n])
                left -= n
        if left == size:
            spool.close()
            return None
        return spool

    def _verify(self, bucket: str, key: str, size: int, resp: dict[str, Any],
                crc: str | None, expected: str) -> str:
        """The store's full-object checksum when it answers one; else the ETag, which is the
        MD5 of the parts' MD5s plus -N except under SSE-KMS: then only the size can tell, of
        the object the completion made (HEAD shows its ETag: not someone else's write since)."""
        ck = self.checksum
        answered = resp.get(ck.param) if ck else None
        if ck and answered and "-" not in answered:  # "-N": a composite, not ours to compare
            if answered != crc:
                raise TransientError(f"S3 verify {key}: store checksum {answered} != {crc} "
                                     "computed from the stream")
            return ck.name
        etag = str(resp.get("ETag", "")).strip('"')
        if etag == expected:
            return "etag"
        if not self.opaque_etags:
            raise TransientError(f"S3 verify {key}: multipart ETag {etag} != {expected} "
                                 "computed from the parts sent")
        head = self.call("head_object", Bucket=bucket, Key=key)
        stored, now = head.get("ContentLength"), str(head.get("ETag", "")).strip('"')
        if stored != size or now != etag:
            raise TransientError(f"S3 verify {key}: stored size {stored} ETag {now} != sent"
                                 f" {size}, completed as {etag}")
        return "size"

    def _upload_part(self, upload: Resumable, number: int, body: Body, stream: Tally,
                     cancel: threading.Event | None, journal: Journal | None,
                     answered: Callable[[float], None]) -> SentPart:
        """One part tallied, sent, checked and recorded; `answered` gets its latency."""
        ck = self.checksum
        try:
            stream.feed_part(number, body)  # first: the next part's thread waits for it
            md5, crc, size = digests(body, ck)
            extra = {"ChecksumAlgorithm": ck.name.upper(), ck.param: ck.b64(crc)} if ck else {}
            if isinstance(body, bytearray):
                body = PartBody(body)
            body.seek(0)
            started = time.monotonic()
            resp = self.call("upload_part", cancel, Bucket=upload.bucket, Key=upload.key,
                             UploadId=upload.upload_id, PartNumber=number, Body=body, **extra)
            answered(time.monotonic() - started)
        finally:
            body.close()
        if not self.opaque_etags and resp["ETag"].strip('"') != md5.hexdigest():
            # A store that ignores checksums still answers the part's MD5 as its ETag.
            raise BadPart(f"S3 UploadPart {upload.key} part {number}: ETag "
                                 f"{resp['ETag']} is not the MD5 of the part sent")
        if journal is not None:
            journal.completed(Part(number, size, resp["ETag"], md5.hexdigest(),
                                   ck.b64(crc) if ck else None, time.time()))
        return ({"PartNumber": number, "ETag": resp["ETag"],
                 **{k: v for k, v in resp.items() if k in CHECKSUM_FIELDS and v}}, md5.digest())

    def abort_orphans(self, bucket: str, key: str, keep: set[str]) -> int:
        """Abort open multipart uploads of exactly `key` left by a killed earlier attempt,
        except those in `keep` (recorded for a resume)."""
        aborted = 0
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": key}
        while True:
            try:
                page = self.call("list_multipart_uploads", **kwargs)
            except (TransientError, PermanentError) as exc:
                # rclone serve s3 answers NoSuchUpload when a bucket has none; some stores do
                # not implement the listing. Nothing to abort then; lifecycle rules remain.
                if error_code(exc) in ("NoSuchUpload", "NotImplemented"):
                    break
                raise
            for up in page.get("Uploads") or ():
                if up.get("Key") == key and up["UploadId"] not in keep:
                    self.call("abort_multipart_upload", Bucket=bucket, Key=key,
                              UploadId=up["UploadId"])
                    aborted += 1
            if not page.get("IsTruncated"):
                break
            kwargs.update(KeyMarker=page.get("NextKeyMarker", ""),
                          UploadIdMarker=page.get("NextUploadIdMarker", ""))
        if aborted:
            log.info("aborted orphaned multipart uploads bucket=%s key=%s count=%d",
                     bucket, key, aborted)
        return aborted

    def _give_up(self, bucket: str, key: str, upload_id: str, journal: Journal | None) -> None:
        """Abort the upload and forget its record: it is not to be resumed."""
        try:
            self.call("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)
        except (TransientError, PermanentError) as exc:
            # Left for the next attempt's abort_orphans (and the bucket lifecycle rule).
            log.warning("abort failed bucket=%s key=%s upload_id=%s error=%s",
                        bucket, key, upload_id, exc)
        if journal is not None:
            journal.ended(None)
