"""The sink: one upload interface over two transports, with verify.

Streams and multipart go through one boto3 client; small in-memory bodies through awscrt
(crt.py, a transport only). Both share the options of SPEC 3 and checksum encoding; a
single PUT is built once (single.py) and sent by either transport through the same
`send(single, answered)` (crt.CrtTransport, Boto3Put here), and its answer is settled
once; what a failure means (TransientError or PermanentError) is answers.py's. What needs
the store again (a HEAD to verify, a 412's "whose object?") happens here. It must
never touch local files or the queue.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

import tenacity

from sftppush import threads
from sftppush.config import Defaults, S3Config
from sftppush.errors import PermanentError, Throttled, TransientError
from sftppush.outcomes import Uploaded
from sftppush.sink import crt
from sftppush.sink.answers import NOT_FOUND, Where, classify, error_code
from sftppush.sink.client import OPTION_HEADERS, crt_credentials, make_client, make_session, options
from sftppush.sink.multipart import Journal, Multipart
from sftppush.sink.parts import PartBody, Reader, read_full, read_part, store_checksum
from sftppush.sink.single import (
    NAME_KEY,
    SHA256_KEY,
    SOURCE_KEY,
    Answer,
    PutError,
    Settled,
    Shape,
    Single,
    Taken,
    Unverified,
    Verified,
    settle,
)
from sftppush.sink.transfer import Transfer

log = logging.getLogger("sftppush.s3")

SMALL_BODY = 2**20  # read first; a body that ends within it never gets a part-sized buffer
# Failed fast PUTs sent again in place at once (SPEC 4: transient errors are retried in
# place). More failing together means the store is down: the queue and the consumer's
# breaker deal with that, not a line of threads waiting out their backoffs.
RESEND_AT_ONCE = 4


class Sink:
    """Uploads to S3: `upload()` streams a reader (boto3, multipart above one part);
    `put()` sends a small body through awscrt when `fast`, many at once. Safe across threads.
    Every upload comes back verified, every failure as TransientError or PermanentError."""

    def __init__(self, client: Any, s3: S3Config, transfer: Transfer | None = None,
                 transport: crt.CrtTransport | None = None,
                 credentials: Callable[[], Any] | None = None,
                 verify_pool: Executor | None = None,
                 resend_pool: Executor | None = None) -> None:
        transfer = transfer or Transfer()
        self.client = client
        part_size = s3.part_size_mb * 2**20
        self.retry = transfer.retry
        self.checksum = store_checksum(s3.checksum)
        self.extra = options(s3)
        # Under SSE-KMS (and SSE-C) an ETag is not an MD5 of the body.
        self.opaque = str(s3.sse).startswith("aws:kms")
        self.multipart = Multipart(self.call, part_size, self.checksum, self.extra,
                                   self.opaque, transfer.part_memory, transfer.spool_above,
                                   transfer.part_memory_max)
        self.transport = transport
        self.max_small = min(transfer.max_small, part_size,
                             transport.max_body if transport else 0)
        self._credentials = credentials or (lambda: True)
        # What every single PUT carries, built once.
        common = [("Content-Type", "application/octet-stream"),
                  *((OPTION_HEADERS[name], value) for name, value in self.extra.items())]
        if self.checksum:
            common.append(("x-amz-sdk-checksum-algorithm", self.checksum.name.upper()))
        self.shape = Shape(self.checksum, self.extra, tuple(common), self.opaque)
        # HEADs that verify fast PUTs run here, never on a CRT thread or the caller's loop.
        self._verify = verify_pool or threads.Pool(2, "verify")
        # Failed fast PUTs sent again through boto3 (tenacity's backoff) run here.
        self._resend = resend_pool or threads.Pool(RESEND_AT_ONCE, "resend")
        self._resends = threading.BoundedSemaphore(RESEND_AT_ONCE)
        self._abandon = threading.Event()  # a cold close: resends stop between attempts

    @classmethod
    def from_config(cls, defaults: Defaults, s3: S3Config,
                    transfer: Transfer | None = None) -> Sink:
        """One session for both transports: the profile, region and endpoint of the config."""
        transfer = transfer or Transfer()
        session = make_session(defaults)
        transport = None
        if transfer.fast and crt.available():
            transport = crt.CrtTransport(
                region=session.region_name or "us-east-1", credentials=crt_credentials(session),
                endpoint_url=defaults.endpoint_url, max_body=s3.part_size_mb * 2**20,
                in_flight=transfer.in_flight, max_in_flight=s3.max_in_flight,
                connect_timeout_ms=int(transfer.connect_timeout * 1000),
                request_timeout=transfer.read_timeout,
                ca_file=os.environ.get("AWS_CA_BUNDLE") or None)  # as boto3 takes it
        return cls(make_client(session, defaults, s3, transfer), s3, transfer, transport,
                   session.get_credentials)

    @property
    def fast(self) -> bool:
        return self.transport is not None

    def in_flight(self) -> int:
        """How many fast PUTs may run at once now (the transport's window); 0 without it."""
        return self.transport.in_flight() if self.transport is not None else 0

    def takes(self, bucket: str, size: int) -> bool:
        """Worth a fast `put()`: a small body, to a bucket the CRT client can address (on AWS
        it addresses buckets virtual-hosted, and a dotted name breaks TLS)."""
        return self.transport is not None and size <= self.max_small and not (
            "." in bucket and self.transport.virtual_hosted())

    def wait_room(self, timeout: float) -> bool:
        """Wait up to `timeout` s until a `put()` of any small body would start at once."""
        return self.transport is None or self.transport.wait_room(self.max_small, timeout)

    def put(self, bucket: str, key: str, body: bytes, metadata: dict[str, str],
            if_absent: bool = False) -> Future[Uploaded]:
        """Start one PUT of a small body (fast transport); the future is a verified Uploaded
        or raises TransientError / PermanentError. Blocks while the in-flight limits are met.
        `if_absent`: see `upload()`."""
        assert self.transport is not None, "put() needs awscrt; stream with upload()"
        out: Future[Uploaded] = Future()
        if self._credentials() is None:
            out.set_exception(TransientError("S3: no usable AWS credentials yet"))
            return out
        single = Single.of(self.shape, bucket, key, body, metadata, if_absent)

        def answered(answer: Answer | PutError) -> None:
            try:
                settled = settle(single, answer, lambda: self.where(bucket))
            except Throttled as exc:
                # Asked to back off: fewer in flight from now on, and this one goes back to
                # the queue, whose retry delay is the backoff; no resend meanwhile.
                self.transport.throttled()
                out.set_exception(exc)
                return
            except BaseException as exc:
                # Unanswered for the whole request timeout: a stalled store, whose PUTs wait
                # in the queue rather than hold their claims for a timeout per attempt.
                stalled = isinstance(answer, PutError) and answer.timed_out
                self._resend_or_fail(out, single, classify(exc), again=not stalled)
                return
            if isinstance(settled, Verified):
                out.set_result(single.uploaded(settled.how, settled.etag))
            else:  # a HEAD waits on the store: never on a CRT thread
                self._verify.submit(self._settle, out, single, settled)

        self.transport.send(single, answered)
        return out

    def _resend_or_fail(self, out: Future[Uploaded], single: Single,
                        error: TransientError | PermanentError, again: bool = True) -> None:
        """A fast PUT failed: a transient error (5xx, a connection lost or refused) sends it
        again in place through boto3's single PUT, retried with backoff and jitter, while
        fewer than RESEND_AT_ONCE others are and the sink is not abandoning its work;
        anything else fails `out` (the queue retries it later). A resend is conditional as
        the PUT was: if the first one landed, its 412 finds this path's own object."""
        if not again or isinstance(error, Throttled) or not isinstance(error, TransientError) \
                or self._abandon.is_set() or not self._resends.acquire(blocking=False):
            out.set_exception(error)
            return
        log.info("resend in place key=%s error=%s", single.key, error)
        try:
            self._resend.submit(self._resent, out, single)
        except RuntimeError:  # closed meanwhile
            self._resends.release()
            out.set_exception(error)

    def _resent(self, out: Future[Uploaded], single: Single) -> None:
        try:
            out.set_result(self._put_single(single, self._abandon))
        except BaseException as exc:
            out.set_exception(classify(exc))
        finally:
            self._resends.release()

    def _settle(self, out: Future[Uploaded], single: Single, settled: Settled) -> None:
        """`out` gets what `_finish` returns or raises (classified): the part of a fast
        PUT's settling that waits on the store, run on the verify pool."""
        try:
            out.set_result(self._finish(single, settled, None))
        except BaseException as exc:
            out.set_exception(classify(exc))

    def _finish(self, single: Single, settled: Settled,
                cancel: threading.Event | None) -> Uploaded:
        """A single PUT's verified upload, from what its answer meant (either transport):
        verified already; checked by a HEAD; or, an object found at the key (412), replaced
        by an unconditional PUT if it came from the same local path, else `may_replace`
        raises the key collision."""
        if isinstance(settled, Taken):
            self.may_replace(single.bucket, single.key, single.metadata)
            return self._put_single(single.unconditional(), cancel)
        if isinstance(settled, Unverified):
            return single.uploaded("head", self.verify_head(
                single.bucket, single.key, len(single.body), single.sha))
        return single.uploaded(settled.how, settled.etag)

    def head(self, bucket: str, key: str) -> Found | None:
        """The object at `key` as HEAD shows it, or None if there is none."""
        try:
            head = self.call("head_object", Bucket=bucket, Key=key)
        except PermanentError as exc:
            if error_code(exc) in NOT_FOUND:
                return None
            raise
        return Found(str(head.get("ETag", "")).strip('"'), head.get("ContentLength"),
                     {k.lower(): v for k, v in (head.get("Metadata") or {}).items()})

    def may_replace(self, bucket: str, key: str, metadata: dict[str, str]) -> None:
        """Raise a final PermanentError unless the object at `key` came from the same local
        path as `metadata` says ours does (SPEC 3: one key, one local path). An object without
        sftppush's metadata (the Go tool's, say) is replaced, with a warning."""
        found = self.head(bucket, key)
        if found is None:
            return
        if SOURCE_KEY not in found.metadata:
            log.warning("replacing an object sftppush did not write bucket=%s key=%s",
                        bucket, key)
            return
        if not found.names(metadata):
            raise PermanentError(f"key collision: {key} holds {found.metadata.get(SOURCE_KEY)}:"
                                 f"{found.metadata.get(NAME_KEY)}", final=True,
                                 reason="key_collision")

    def where(self, bucket: str | None) -> Where:
        return Where(bucket, getattr(getattr(self.client, "meta", None), "endpoint_url", None))

    def close(self, abandon: bool = False) -> None:
        """Wait for what runs; with `abandon` (a cold stop), cancel it instead."""
        if abandon:
            self._abandon.set()
        if self.transport is not None:
            self.transport.close(timeout=0.5 if abandon else 30.0, abandon=abandon)
        self._resend.shutdown(wait=not abandon, cancel_futures=abandon)
        self._verify.shutdown(wait=not abandon, cancel_futures=abandon)

    def call(self, method: str, cancel: threading.Event | None = None, **kwargs: Any) -> Any:
        """One client call, retried in place on TransientError; raises only our two errors."""
        fn = getattr(self.client, method)
        stop = tenacity.stop_after_attempt(self.retry.attempts)
        if cancel is not None:
            stop = stop | tenacity.stop_when_event_set(cancel)

        body = kwargs.get("Body")

        def once() -> Any:
            if hasattr(body, "seek"):
                # An attempt that failed mid-body left the stream there, and botocore sends
                # the rest under the whole length (the store then waits for the missing
                # bytes until the read timeout). Only its payload signing (awscrt's signer
                # reads the body from its start) used to hide that.
                body.seek(0)
            try:
                return fn(**kwargs)
            except Exception as exc:
                raise classify(exc, where=self.where(kwargs.get("Bucket"))) from exc

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
               cancel: threading.Event | None = None, if_absent: bool = False,
               journal: Journal | None = None) -> Uploaded:
        """Upload everything `reader` yields to bucket/key with `metadata` + sha256; verified.

        `if_absent`: the key is new to us. A single PUT is conditional (If-None-Match, where
        the store honours it), a multipart upload looks first; an object found there is
        replaced only if it came from the same local path (`may_replace`). `journal`: where a
        multipart upload records its parts, and finds those of an earlier attempt to resume.
        """
        recorded = journal.recorded() if journal is not None else None
        if recorded is not None:  # only a multipart upload is recorded: nothing to read first
            if if_absent:
                self.may_replace(bucket, key, metadata)
            return self.multipart.upload(bucket, key, [], reader, metadata, cancel, journal,
                                         recorded)
        # Small-file fast path: most files end within the first read, one PUT of bytes.
        part_size = self.multipart.part_size
        head = read_full(reader, min(SMALL_BODY, part_size))
        if len(head) < min(SMALL_BODY, part_size):
            return self._put_single(Single.of(self.shape, bucket, key, head, metadata,
                                              if_absent), cancel)
        first = read_part(reader, part_size, head)
        second = read_part(reader, part_size) if len(first) == part_size else None
        if not second:
            return self._put_single(Single.of(self.shape, bucket, key, first, metadata,
                                              if_absent), cancel)
        if if_absent:
            self.may_replace(bucket, key, metadata)
        parts = [first, second]
        # Only `parts` may refer to them: the upload frees each buffer once it is sent,
        # and a local name here would keep two parts alive for the whole upload.
        del head, first, second
        return self.multipart.upload(bucket, key, parts, reader, metadata, cancel, journal)

    def _put_single(self, single: Single, cancel: threading.Event | None) -> Uploaded:
        """One single PUT through boto3 (retried in place), settled as a fast one is."""
        answers: list[Answer | PutError] = []
        Boto3Put(self.call, cancel).send(single, answers.append)
        return self._finish(single, settle(single, answers[0],
                                           lambda: self.where(single.bucket)), cancel)

    def verify_head(self, bucket: str, key: str, size: int, sha: str) -> str:
        """Check the object's size and `sftppush-sha256` through HEAD; its ETag."""
        head = self.call("head_object", Bucket=bucket, Key=key)
        meta = {k.lower(): v for k, v in (head.get("Metadata") or {}).items()}
        if head.get("ContentLength") != size or meta.get(SHA256_KEY) != sha:
            raise TransientError(
                f"S3 verify {key}: stored size {head.get('ContentLength')} sha256 "
                f"{meta.get(SHA256_KEY)} != sent {size} {sha}")
        return str(head.get("ETag", "")).strip('"')

    def holds(self, bucket: str, key: str, etag: str) -> int | None:
        """The size of the object at `key` if it is still the one whose ETag an upload
        recorded (a retry that only has a file to delete), else None."""
        found = self.head(bucket, key)
        return found.size if found is not None and found.etag == etag else None


class Boto3Put:
    """boto3 as a transport for single PUTs, with crt.CrtTransport's `send(single,
    answered)`: put_object through the sink's `call` (retried in place on transient errors,
    until `cancel` is set), answered on the calling thread before `send` returns, with the
    store's headers as awscrt would hand them back or a 412 to a conditional PUT. Other
    errors raise, classified by `call` (they were retried already)."""

    def __init__(self, call: Callable[..., Any], cancel: threading.Event | None) -> None:
        self.call, self.cancel = call, cancel

    def send(self, single: Single, answered: Callable[[Answer | PutError], None]) -> None:
        body = PartBody(single.body) if len(single.body) > SMALL_BODY else single.body
        try:
            resp = self.call("put_object", self.cancel, **single.arguments(body))
        except PermanentError as exc:
            if single.if_absent and error_code(exc) == "PreconditionFailed":
                answered(PutError(412, "PreconditionFailed", str(exc)))
                return
            raise
        headers, checksum = {"etag": str(resp.get("ETag", ""))}, single.shape.checksum
        if checksum and resp.get(checksum.param):
            headers[checksum.header] = resp[checksum.param]
        answered(Answer(headers))


@dataclass(frozen=True)
class Found:
    """An object as HEAD shows it: its ETag (unquoted), size and user metadata (keys in lower
    case: some stores capitalise them)."""

    etag: str
    size: int | None
    metadata: dict[str, str]

    def names(self, ours: dict[str, str]) -> bool:
        """Did the local path that `ours` (keys.metadata()) describes write this object?"""
        return all(same_name(self.metadata.get(k), ours[k]) for k in (SOURCE_KEY, NAME_KEY))


def same_name(theirs: str | None, ours: str) -> bool:
    """Does a metadata value read back from the store name what `ours` (keys.metadata()) names?
    Compared as the bytes they encode; an object written before its name's edge spaces
    were kept came back trimmed, and is the same name too."""
    if theirs is None:
        return False
    stored, sent = unquote_to_bytes(theirs), unquote_to_bytes(ours)
    return stored in (sent, sent.strip(b" "))
