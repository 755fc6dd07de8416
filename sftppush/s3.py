"""The sink: one boto3 client per process, streaming upload, verify, error classification.

Owns talking to S3: single PUT for bodies that fit in one part, multipart above it (aborted
on failure, orphans of earlier attempts aborted first), the metadata of SPEC 3, verification,
and turning every botocore failure into TransientError or PermanentError — here and only here.
It must never touch local files or the queue. `Uploader.upload` is the one entry point another
backend (awscrt) would implement the same way.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import threading
import zlib
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import tenacity

from sftppush.config import Defaults, S3Config
from sftppush.decompress import Reader, read_full
from sftppush.errors import ConfigError, PermanentError, TransientError

log = logging.getLogger("sftppush.s3")

SHA256_KEY = "sftppush-sha256"
SMALL_BODY = 2**20  # read first; a body that ends within it never gets a part-sized buffer
READ_CHUNK = 2**16  # decompressed bytes per readinto while filling a part (a temporary copy
                   # of this size is made by the decompressor; glibc keeps ~2x it per thread)
MAX_SINGLE_COPY = 5 * 2**30  # CopyObject's limit; larger objects are copied in parts
# Error codes that mean "try the same request again later"; other 4xx codes are permanent.
TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestThrottled", "TooManyRequests",
    "RequestTimeout", "RequestTimeTooSkewed", "InternalError", "ServiceUnavailable",
    "ExpiredToken", "TokenRefreshRequired", "RequestExpired", "BadDigest",
    "XAmzContentSHA256Mismatch", "IncompleteBody",
    "OperationAborted",
})


class UploadCancelled(Exception):
    """The consumer is stopping hard: the upload was abandoned (and aborted) between parts."""


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of one S3 call in place (tenacity, exponential backoff with jitter)."""

    attempts: int = 5
    initial: float = 0.5
    maximum: float = 20.0


@dataclass(frozen=True)
class Uploaded:
    bucket: str
    key: str
    bytes_out: int
    sha256: str
    parts: int          # 0 = single PUT
    verified_by: str    # "crc32", "etag" or "head"


def make_session(defaults: Defaults) -> boto3.session.Session:
    """The credential chain of the config: the named profile, else env, files, role."""
    try:
        return boto3.session.Session(profile_name=defaults.awsprofile,
                                     region_name=defaults.awsregion)
    except botocore.exceptions.ProfileNotFound:
        raise ConfigError("config: defaults.awsprofile names a profile that does not exist") \
            from None


def make_client(defaults: Defaults, s3: S3Config, pool_size: int = 10,
                connect_timeout: float = 10.0, read_timeout: float = 60.0) -> Any:
    """The process's one S3 client (thread-safe; the session behind it is not shared)."""
    session = make_session(defaults)
    config = botocore.config.Config(
        max_pool_connections=pool_size,
        retries={"total_max_attempts": 1},  # tenacity retries, with waits we control
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        tcp_keepalive=True,
        request_checksum_calculation=s3.checksum,
        response_checksum_validation=s3.checksum,
        # S3-compatible stores on an endpoint URL rarely do virtual-hosted buckets.
        s3={"addressing_style": "path"} if defaults.endpoint_url else None,
    )
    return session.client("s3", endpoint_url=defaults.endpoint_url, config=config)


def is_transient(code: str | None, status: int) -> bool:
    """An S3 error answer worth retrying as it is: throttling, 5xx, the transient codes."""
    return code in TRANSIENT_CODES or status >= 500 or status in (408, 429)


def classify(exc: BaseException, what: str = "S3") -> TransientError | PermanentError:
    """The one place a botocore/network failure becomes Transient or Permanent."""
    if isinstance(exc, (TransientError, PermanentError)):
        return exc
    if isinstance(exc, botocore.exceptions.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", "")) or "Unknown"
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        message = f"{what} {exc.operation_name}: {code} ({status}) {err.get('Message', '')}".strip()
        if is_transient(code, status):
            return TransientError(message)
        return PermanentError(message)
    if isinstance(exc, (botocore.exceptions.NoCredentialsError,
                        botocore.exceptions.PartialCredentialsError,
                        botocore.exceptions.ParamValidationError,
                        botocore.exceptions.NoRegionError)):
        return PermanentError(f"{what}: {exc}")
    if isinstance(exc, (botocore.exceptions.BotoCoreError, OSError)):
        # Connection refused/reset, timeouts, truncated responses, credential refresh failures.
        return TransientError(f"{what} unreachable: {exc}")
    return PermanentError(f"{what}: {type(exc).__name__}: {exc}")


class Uploader:
    """Streams one decompressed reader to one key with a shared client; safe across threads."""

    def __init__(self, client: Any, s3: S3Config, retry: RetryPolicy | None = None,
                 parts_in_memory: int = 2) -> None:
        self.client = client
        self.part_size = s3.part_size_mb * 2**20
        self.retry = retry or RetryPolicy()
        self.parts_in_memory = max(1, parts_in_memory)
        self.part_crc32 = s3.checksum == "when_supported"
        self.extra: dict[str, str] = {}
        if s3.storage_class:
            self.extra["StorageClass"] = s3.storage_class
        if s3.sse:
            self.extra["ServerSideEncryption"] = s3.sse
        if s3.sse_kms_key_id:
            self.extra["SSEKMSKeyId"] = s3.sse_kms_key_id

    def call(self, method: str, cancel: threading.Event | None = None, **kwargs: Any) -> Any:
        """One client call, retried in place on TransientError; raises only our two errors."""
        fn = getattr(self.client, method)
        stop = tenacity.stop_after_attempt(self.retry.attempts)
        if cancel is not None:
            stop = stop | tenacity.stop_when_event_set(cancel)

        def once() -> Any:
            try:
                return fn(**kwargs)
            except Exception as exc:
                raise classify(exc) from exc

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(TransientError), stop=stop, reraise=True,
            # Exponential backoff plus jitter, spelled so tenacity 8 and 9 read it the same.
            wait=tenacity.wait_exponential(multiplier=self.retry.initial, max=self.retry.maximum)
            + tenacity.wait_random(0, self.retry.initial),
            sleep=cancel.wait if cancel is not None else tenacity.nap.sleep,
            before_sleep=lambda state: log.debug(
                "s3 retry op=%s attempt=%d error=%s", method, state.attempt_number,
                state.outcome.exception() if state.outcome else None),
        )
        return retrying(once)

    def upload(self, bucket: str, key: str, reader: Reader, metadata: dict[str, str],
               cancel: threading.Event | None = None) -> Uploaded:
        """Upload everything `reader` yields to bucket/key with `metadata` + sha256; verified."""
        # Small-file fast path: most files end within the first read, one PUT of bytes.
        head = read_full(reader, min(SMALL_BODY, self.part_size))
        if len(head) < min(SMALL_BODY, self.part_size):
            return self._put_single(bucket, key, head, metadata, cancel)
        first = read_part(reader, self.part_size, head)
        second = read_part(reader, self.part_size) if len(first) == self.part_size else None
        if not second:
            return self._put_single(bucket, key, first, metadata, cancel)
        parts = [first, second]
        # Only `parts` may refer to them: _put_multipart frees each buffer once it is sent,
        # and a local name here would keep two parts alive for the whole upload.
        del head, first, second
        return self._put_multipart(bucket, key, parts, reader, metadata, cancel)

    def exists(self, bucket: str, key: str) -> bool:
        try:
            self.call("head_object", Bucket=bucket, Key=key)
        except PermanentError as exc:
            if _code(exc) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

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
                if _code(exc) in ("NoSuchUpload", "NotImplemented"):
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

    def _put_single(self, bucket: str, key: str, body: bytes | bytearray, metadata: dict[str, str],
                    cancel: threading.Event | None) -> Uploaded:
        sha = hashlib.sha256(body).hexdigest()
        resp = self.call("put_object", cancel, Bucket=bucket, Key=key,
                         Body=PartBody(body) if len(body) > SMALL_BODY else body,
                         Metadata={**metadata, SHA256_KEY: sha}, **self.extra)
        how = self._verify_put(resp, body) or self.verify_head(bucket, key, len(body), sha)
        return Uploaded(bucket, key, len(body), sha, 0, how)

    def _put_multipart(self, bucket: str, key: str, parts: list[bytearray], reader: Reader,
                       metadata: dict[str, str], cancel: threading.Event | None) -> Uploaded:
        self.abort_orphans(bucket, key)
        upload_id = self.call("create_multipart_upload", cancel, Bucket=bucket, Key=key,
                              Metadata=metadata, **self.extra)["UploadId"]
        sha = hashlib.sha256()
        total = 0
        # At most `parts_in_memory` part buffers exist at once: one is read while others upload.
        slots = threading.Semaphore(self.parts_in_memory)
        futures: list[Future[dict[str, Any]]] = []
        data: bytearray
        pool = ThreadPoolExecutor(self.parts_in_memory, thread_name_prefix="part")
        try:
            number = 0
            while True:
                if parts:
                    data = parts.pop(0)
                    slots.acquire()
                else:
                    slots.acquire()
                    if cancel is not None and cancel.is_set():
                        raise UploadCancelled(key)
                    if any(f.done() and f.exception() for f in futures):
                        break
                    data = read_part(reader, self.part_size)
                    if not data:
                        slots.release()
                        break
                number += 1
                total += len(data)
                sha.update(data)
                fut = pool.submit(self._upload_part, bucket, key, upload_id, number, data, cancel)
                fut.add_done_callback(lambda _f: slots.release())
                futures.append(fut)
                del data
            wait(futures, return_when=FIRST_EXCEPTION)
            done = [f.result() for f in futures]  # raises the first part's error
            self.call("complete_multipart_upload", cancel, Bucket=bucket, Key=key,
                      UploadId=upload_id, MultipartUpload={"Parts": done})
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            self._abort(bucket, key, upload_id)
            raise
        pool.shutdown(wait=True)
        digest = sha.hexdigest()
        # The sha256 is known only now; a copy in place sets the full metadata.
        self._set_metadata(bucket, key, total, {**metadata, SHA256_KEY: digest}, cancel)
        how = self.verify_head(bucket, key, total, digest)
        return Uploaded(bucket, key, total, digest, number, how)

    def _upload_part(self, bucket: str, key: str, upload_id: str, number: int, data: bytearray,
                     cancel: threading.Event | None) -> dict[str, Any]:
        extra = {}
        if self.part_crc32:
            # Ours, computed over the buffer in place: botocore's own pass would read the part
            # through 1 MiB copies, which glibc then keeps per part thread (~3 MB each).
            extra["ChecksumCRC32"] = base64.b64encode(
                zlib.crc32(data).to_bytes(4, "big")).decode()
        resp = self.call("upload_part", cancel, Bucket=bucket, Key=key, UploadId=upload_id,
                         PartNumber=number, Body=PartBody(data), **extra)
        part = {"PartNumber": number, "ETag": resp["ETag"]}
        for name in ("ChecksumCRC32", "ChecksumCRC32C", "ChecksumCRC64NVME", "ChecksumSHA1",
                     "ChecksumSHA256"):
            if resp.get(name):
                part[name] = resp[name]
        return part

    def _abort(self, bucket: str, key: str, upload_id: str) -> None:
        try:
            self.call("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)
        except (TransientError, PermanentError) as exc:
            # Left for the next attempt's abort_orphans (and the bucket lifecycle rule).
            log.warning("abort failed bucket=%s key=%s upload_id=%s error=%s",
                        bucket, key, upload_id, exc)

    def _set_metadata(self, bucket: str, key: str, size: int, metadata: dict[str, str],
                      cancel: threading.Event | None) -> None:
        args = {"MetadataDirective": "REPLACE", "Metadata": metadata, **self.extra}
        source = {"Bucket": bucket, "Key": key}
        if size <= MAX_SINGLE_COPY:
            self.call("copy_object", cancel, Bucket=bucket, Key=key, CopySource=source, **args)
        else:
            self.call("copy", cancel, CopySource=source, Bucket=bucket, Key=key, ExtraArgs=args)

    def _verify_put(self, resp: dict[str, Any], body: bytes | bytearray) -> str | None:
        """Verified from the PutObject response alone, or None if a HEAD is needed."""
        crc = resp.get("ChecksumCRC32")
        if crc:
            if crc != base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode():
                raise TransientError(f"S3 PutObject: store checksum {crc} does not match the body")
            return "crc32"
        etag = str(resp.get("ETag", "")).strip('"')
        # An ETag is the body's MD5 unless SSE-KMS/SSE-C or multipart; then fall back to HEAD.
        if etag and etag == hashlib.md5(body, usedforsecurity=False).hexdigest():
            return "etag"
        return None

    def verify_head(self, bucket: str, key: str, size: int, sha: str) -> str:
        head = self.call("head_object", Bucket=bucket, Key=key)
        meta = {k.lower(): v for k, v in (head.get("Metadata") or {}).items()}
        if head.get("ContentLength") != size or meta.get(SHA256_KEY) != sha:
            raise TransientError(
                f"S3 verify {key}: stored size {head.get('ContentLength')} sha256 "
                f"{meta.get(SHA256_KEY)} != sent {size} {sha}")
        return "head"


def _code(exc: BaseException) -> str | None:
    """The S3 error code behind one of our errors, if it came from a service response."""
    cause = exc.__cause__
    if isinstance(cause, botocore.exceptions.ClientError):
        return str(cause.response.get("Error", {}).get("Code"))
    return None


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
