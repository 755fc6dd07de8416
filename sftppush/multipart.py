"""Multipart uploads: full-object checksums the store verifies, parts that grow, flat memory.

Owns the checksum every upload sends (CRC64NVME where awscrt is installed, else CRC32), the
part sizes (doubling so that 10,000 parts hold 5 TiB), part buffers within a byte budget
(bigger parts wait in a temporary file), sending parts in parallel, aborting what failed and
verifying the completed object (its full-object checksum, else the ETag of the parts' MD5s,
else its size). It reaches the store only through the `call` it is given (s3.Sink's, retried
and classified there) and never opens the source files or the queue.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import io
import logging
import tempfile
import threading
import zlib
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import botocore.exceptions

from sftppush.decompress import Reader
from sftppush.errors import PermanentError, TransientError

try:
    from awscrt import checksums as crt_checksums
except ImportError:  # CRC32 from zlib then
    crt_checksums = None

log = logging.getLogger("sftppush.s3")

READ_CHUNK = 2**16  # decompressed bytes per readinto while filling a part (a temporary copy
                   # of this size is made by the decompressor; glibc keeps ~2x it per thread)
Call = Callable[..., Any]  # s3.Sink.call: (method, cancel, **kwargs) -> answer
MAX_PARTS = 10_000       # S3's limits
MAX_OBJECT = 5 * 2**40
MAX_PART = 5 * 2**30
Body = bytearray | Any   # a part in memory, or in an (unlinked) temporary file


def part_size(first: int, number: int, every: int) -> int:
    """The size of part `number` (from 1): `first`, doubled after every `every` parts."""
    return min(MAX_PART, first << ((number - 1) // every))


def grow_every(first: int) -> int:
    """The most parts of each size for which 10,000 parts still hold 5 TiB: the decompressed
    size is not known in advance, so parts grow with the stream, as late as they can."""
    def too_slow(every: int) -> bool:
        return sum(part_size(first, n, every) for n in range(1, MAX_PARTS + 1)) < MAX_OBJECT

    return bisect.bisect_left(range(1, MAX_PARTS + 1), True, key=too_slow)


class UploadCancelled(Exception):
    """The consumer is stopping hard: the upload was abandoned between parts."""


@dataclass(frozen=True)
class Uploaded:
    bucket: str
    key: str
    bytes_out: int
    sha256: str
    parts: int          # 0 = single PUT
    verified_by: str    # "crc64nvme", "crc32", "etag", "head" or "size"


@dataclass(frozen=True)
class Checksum:
    """A full-object checksum S3 verifies: CRCs chain over a stream (`update(data, crc)`)."""

    name: str
    width: int
    update: Callable[[Any, int], int]

    @property
    def param(self) -> str:
        """The boto3 parameter (and answer field) that carries it."""
        return "Checksum" + self.name.upper()

    @property
    def header(self) -> str:
        return f"x-amz-checksum-{self.name}"

    def b64(self, value: int) -> str:
        return base64.b64encode(value.to_bytes(self.width, "big")).decode()

    def of(self, data: Any) -> str:
        return self.b64(self.update(data, 0))


CRC32 = Checksum("crc32", 4, zlib.crc32)
CRC64NVME = Checksum("crc64nvme", 8, crt_checksums.crc64nvme) if crt_checksums else None


def store_checksum(mode: str) -> Checksum | None:
    """The checksum every upload sends under `s3.checksum: mode`; None sends none."""
    if mode != "when_supported":
        return None
    return CRC64NVME or CRC32


def error_code(exc: BaseException) -> str | None:
    """The S3 error code behind one of our errors, if it came from a service response."""
    cause = exc.__cause__
    if isinstance(cause, botocore.exceptions.ClientError):
        return str(cause.response.get("Error", {}).get("Code"))
    return None


class Multipart:
    """Sends one stream as a multipart upload; shared by the threads of one Sink.

    One upload holds at most `part_memory` bytes of part buffers (one part alone may exceed
    it); a part bigger than `spool_above` is written to a temporary file as it is read, and
    counts `spool_above` against the budget, which so bounds the disk used too.
    """

    def __init__(self, call: Call, part_size: int, checksum: Checksum | None,
                 extra: dict[str, str], opaque_etags: bool, part_memory: int,
                 spool_above: int) -> None:
        self.call = call
        self.part_size = part_size
        self.every = grow_every(part_size)
        self.checksum = checksum
        self.extra = extra
        self.opaque_etags = opaque_etags
        self.part_memory = part_memory
        self.spool_above = spool_above

    def upload(self, bucket: str, key: str, parts: list[bytearray], reader: Reader,
               metadata: dict[str, str], cancel: threading.Event | None) -> Uploaded:
        """Upload `parts` (already read) and the rest of `reader`; verified."""
        self.abort_orphans(bucket, key)
        ck = self.checksum
        create = {"ChecksumAlgorithm": ck.name.upper(), "ChecksumType": "FULL_OBJECT"} \
            if ck else {}
        upload_id = self.call("create_multipart_upload", cancel, Bucket=bucket, Key=key,
                              Metadata=metadata, **self.extra, **create)["UploadId"]
        stream = Tally(reader, ck)
        for data in parts:
            stream.feed(data)
        budget = Budget(self.part_memory)
        futures: list[Future[tuple[dict[str, Any], bytes]]] = []
        pool = ThreadPoolExecutor(max(1, self.part_memory // self.part_size),
                                  thread_name_prefix="part")
        try:
            number = 0
            while not any(f.done() and f.exception() for f in futures):
                if cancel is not None and cancel.is_set():
                    raise UploadCancelled(key)
                size = part_size(self.part_size, number + 1, self.every)
                cost = min(size, self.spool_above)
                budget.take(cost)
                body = parts.pop(0) if parts else self._read(stream, size)
                if body is None:
                    budget.give(cost)
                    break
                number += 1
                fut = pool.submit(self._upload_part, bucket, key, upload_id, number, body, cancel)
                fut.add_done_callback(lambda _f, cost=cost: budget.give(cost))
                futures.append(fut)
                del body  # only the part thread may keep it alive
            wait(futures, return_when=FIRST_EXCEPTION)
            done = [f.result() for f in futures]  # raises the first part's error
            whole = {ck.param: ck.b64(stream.crc), "ChecksumType": "FULL_OBJECT"} if ck else {}
            resp = self.call("complete_multipart_upload", cancel, Bucket=bucket, Key=key,
                             UploadId=upload_id,
                             MultipartUpload={"Parts": [part for part, _ in done]}, **whole)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            self._abort(bucket, key, upload_id)
            raise
        pool.shutdown(wait=True)
        etag = hashlib.md5(b"".join(md5 for _, md5 in done), usedforsecurity=False).hexdigest()
        how = self._verify(bucket, key, stream.total, resp, ck.b64(stream.crc) if ck else None,
                           f"{etag}-{number}")
        return Uploaded(bucket, key, stream.total, stream.sha256.hexdigest(), number, how)

    def _read(self, stream: Tally, size: int) -> Body | None:
        """The next part, None at the end of the stream: in memory, or spooled to disk."""
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
        MD5 of the parts' MD5s plus -N except under SSE-KMS: then only the size can tell."""
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
        stored = self.call("head_object", Bucket=bucket, Key=key).get("ContentLength")
        if stored != size:
            raise TransientError(f"S3 verify {key}: stored size {stored} != sent {size}")
        return "size"

    def _upload_part(self, bucket: str, key: str, upload_id: str, number: int, body: Body,
                     cancel: threading.Event | None) -> tuple[dict[str, Any], bytes]:
        """One part sent; its entry for CompleteMultipartUpload, and its MD5."""
        try:
            md5, crc = digests(body, self.checksum)
            extra = {}
            if self.checksum:
                extra = {"ChecksumAlgorithm": self.checksum.name.upper(),
                         self.checksum.param: self.checksum.b64(crc)}
            if isinstance(body, bytearray):
                body = PartBody(body)
            body.seek(0)
            resp = self.call("upload_part", cancel, Bucket=bucket, Key=key, UploadId=upload_id,
                             PartNumber=number, Body=body, **extra)
        finally:
            body.close()
        if not self.opaque_etags and resp["ETag"].strip('"') != md5.hexdigest():
            # A store that ignores checksums still answers the part's MD5 as its ETag.
            raise TransientError(f"S3 UploadPart {key} part {number}: ETag {resp['ETag']} is "
                                 f"not the MD5 of the part sent")
        part = {"PartNumber": number, "ETag": resp["ETag"]}
        for name in ("ChecksumCRC32", "ChecksumCRC32C", "ChecksumCRC64NVME", "ChecksumSHA1",
                     "ChecksumSHA256"):
            if resp.get(name):
                part[name] = resp[name]
        return part, md5.digest()

    def abort_orphans(self, bucket: str, key: str) -> int:
        """Abort open multipart uploads of exactly `key` left by a killed earlier attempt."""
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
                if up.get("Key") == key:
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

    def _abort(self, bucket: str, key: str, upload_id: str) -> None:
        try:
            self.call("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)
        except (TransientError, PermanentError) as exc:
            # Left for the next attempt's abort_orphans (and the bucket lifecycle rule).
            log.warning("abort failed bucket=%s key=%s upload_id=%s error=%s",
                        bucket, key, upload_id, exc)


class Tally:
    """The decompressed stream as it is read, with its sha256, full-object checksum and size."""

    def __init__(self, reader: Reader, checksum: Checksum | None) -> None:
        self.reader = reader
        self.checksum = checksum
        self.sha256 = hashlib.sha256()
        self.crc = 0
        self.total = 0

    def readinto(self, view: Any) -> int:
        n = self.reader.readinto(view)
        with memoryview(view) as got:
            self.feed(got[:n])
        return n

    def feed(self, data: Any) -> None:
        self.sha256.update(data)
        if self.checksum:
            self.crc = self.checksum.update(data, self.crc)
        self.total += len(data)


class Budget:
    """Bytes of part buffers in use; `take` waits for room (one part alone may exceed it)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._room = threading.Condition()

    def take(self, n: int) -> None:
        with self._room:
            self._room.wait_for(lambda: self.used == 0 or self.used + n <= self.limit)
            self.used += n

    def give(self, n: int) -> None:
        with self._room:
            self.used -= n
            self._room.notify_all()


def digests(body: Body, checksum: Checksum | None) -> tuple[Any, int]:
    """A part's MD5 (the ETag a store answers) and its own checksum (0 without one)."""
    if isinstance(body, bytearray):
        return hashlib.md5(body, usedforsecurity=False), \
            checksum.update(body, 0) if checksum else 0
    md5, crc = hashlib.md5(usedforsecurity=False), 0
    body.seek(0)
    chunk = bytearray(2**20)
    with memoryview(chunk) as view:
        while n := body.readinto(chunk):
            md5.update(view[:n])
            crc = checksum.update(view[:n], crc) if checksum else 0
    return md5, crc


class PartBody(io.RawIOBase):
    """A part buffer as a seekable stream. botocore copies a bytes-like Body whole; a stream
    it reads in chunks, so a part costs its buffer once, not twice."""

    def __init__(self, buf: bytes | bytearray) -> None:
        self._view = memoryview(buf)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, into: Any) -> int:
        n = max(0, min(len(into), len(self._view) - self._pos))
        into[:n] = self._view[self._pos: self._pos + n]
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def __len__(self) -> int:
        return len(self._view)


def read_part(reader: Reader, size: int, head: bytes = b"") -> bytearray:
    """One part of up to `size` bytes in its own buffer, filled in place (no 2x peak).

    Part buffers are bytearrays (boto3 takes them as a Body); a short last part is truncated
    in place.
    """
    buf = bytearray(size)
    buf[: len(head)] = head
    pos = len(head)
    with memoryview(buf) as view:
        while pos < size:
            n = reader.readinto(view[pos: pos + READ_CHUNK])
            if not n:
                break
            pos += n
    del buf[pos:]
    return buf
