"""The sink: one upload interface over two transports, with verify and error classification.

Streams and multipart go through one boto3 client; small in-memory bodies through awscrt
(crt.py, a transport only) when it is installed. Both share the options of SPEC 3, checksum
encoding, verification and the one mapping of store answers to TransientError or
PermanentError, all here. It must never touch local files or the queue.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

import boto3
import botocore.config
import botocore.credentials
import botocore.exceptions
import tenacity

from sftppush import crt
from sftppush.config import Defaults, S3Config
from sftppush.decompress import Reader, read_full
from sftppush.errors import ConfigError, PermanentError, Throttled, TransientError
from sftppush.multipart import Journal, Multipart, Uploaded, error_code
from sftppush.parts import Checksum, PartBody, read_part, store_checksum

log = logging.getLogger("sftppush.s3")

SHA256_KEY = "sftppush-sha256"
SOURCE_KEY = "sftppush-source"
NAME_KEY = "sftppush-original-name"
# User metadata as request headers, the names sftppush sends spelled once.
_META = {name: f"x-amz-meta-{name}" for name in (
    SOURCE_KEY, NAME_KEY, "sftppush-original-size", "sftppush-mtime", SHA256_KEY)}
SMALL_BODY = 2**20  # read first; a body that ends within it never gets a part-sized buffer
NOT_FOUND = ("404", "NoSuchKey", "NotFound")  # a HEAD's answer for no object
# Error codes that mean "try the same request again later"; other 4xx codes are permanent.
TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestThrottled", "TooManyRequests",
    "RequestTimeout", "RequestTimeTooSkewed", "InternalError", "ServiceUnavailable",
    "ExpiredToken", "TokenRefreshRequired", "RequestExpired", "BadDigest",
    "XAmzContentSHA256Mismatch", "IncompleteBody",
    "OperationAborted",
})
# ... of which these ask the sender to slow down (as do 429 and 503, whatever their code).
THROTTLING_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestThrottled", "TooManyRequests",
})


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of one S3 call in place (tenacity, exponential backoff with jitter)."""

    attempts: int = 5
    initial: float = 0.5
    maximum: float = 20.0


@dataclass(frozen=True)
class Transfer:
    """How one process talks to the store: not operator config; tests pass small values."""

    pool_size: int = 10                 # boto3 connections
    connect_timeout: float = 10.0
    read_timeout: float = 60.0          # boto3's read timeout, and the CRT request timeout
    retry: RetryPolicy = RetryPolicy()  # boto3 calls, in place
    part_memory: int = 32 * 2**20       # per multipart upload: bytes of part buffers, at
    part_memory_max: int = 48 * 2**20   # first, and at most when the link needs more
    spool_above: int = 16 * 2**20       # bigger parts wait in a temporary file
    fast: bool = True                   # small bodies through awscrt when it is installed
    in_flight: int = 32                 # awscrt PUTs in flight at first: the window grows
                                        # from here up to consumer.s3.max_in_flight
    max_small: int = 8 * 2**20          # the largest body the fast transport takes


def make_session(defaults: Defaults) -> boto3.session.Session:
    """The credential chain of the config: the named profile, else env, files, role."""
    try:
        return boto3.session.Session(profile_name=defaults.awsprofile,
                                     region_name=defaults.awsregion)
    except botocore.exceptions.ProfileNotFound:
        raise ConfigError("config: defaults.awsprofile names a profile that does not exist") \
            from None


def make_client(session: boto3.session.Session, defaults: Defaults, s3: S3Config,
                transfer: Transfer) -> Any:
    """The process's one boto3 S3 client (thread-safe)."""
    config = botocore.config.Config(
        max_pool_connections=transfer.pool_size,
        retries={"total_max_attempts": 1},  # tenacity retries, with waits we control
        connect_timeout=transfer.connect_timeout,
        read_timeout=transfer.read_timeout,
        tcp_keepalive=True,
        request_checksum_calculation=s3.checksum,
        response_checksum_validation=s3.checksum,
        # S3-compatible stores on an endpoint URL rarely do virtual-hosted buckets.
        s3={"addressing_style": "path"} if defaults.endpoint_url else None,
    )
    client = session.client("s3", endpoint_url=defaults.endpoint_url, config=config)
    client.meta.events.register_last("before-call.s3", _no_expect)
    return client


def _no_expect(params: dict[str, Any], **_: Any) -> None:
    """botocore makes every PUT body wait for a `100 Continue`, parts included: one more
    round trip before its first byte, so that a part of 8 MiB 100 ms away takes two round
    trips and its sending instead of one. What the wait can save is sending one body (at
    most a part) that the store refuses, and rarely so: CreateMultipartUpload went through
    with the same credentials."""
    (params.get("headers") or {}).pop("Expect", None)


def options(s3: S3Config) -> dict[str, str]:
    """The object options of the config, as boto3 parameters (see OPTION_HEADERS)."""
    given = {"StorageClass": s3.storage_class, "ServerSideEncryption": s3.sse,
             "SSEKMSKeyId": s3.sse_kms_key_id}
    return {name: value for name, value in given.items() if value}


OPTION_HEADERS = {"StorageClass": "x-amz-storage-class",
                  "ServerSideEncryption": "x-amz-server-side-encryption",
                  "SSEKMSKeyId": "x-amz-server-side-encryption-aws-kms-key-id"}


def is_transient(code: str | None, status: int) -> bool:
    """An S3 error answer worth retrying as it is: throttling, 5xx, the transient codes."""
    return code in TRANSIENT_CODES or status >= 500 or status in (408, 429)


# What a store's error code means for an operator, and what to do about it. `{bucket}` and
# `{endpoint}` are filled in where the call names them.
_CREDENTIALS = ("check the credentials: AWS_PROFILE / defaults.awsprofile, AWS_ACCESS_KEY_ID"
                " and AWS_SECRET_ACCESS_KEY, or the shared credentials file"
                " (AWS_SHARED_CREDENTIALS_FILE; the consumer unit reads"
                " /etc/sftppush/aws-credentials)")
_CORRUPTED = "the store received other bytes than were sent (damaged on the way); sent again"
HINTS = {
    "NoSuchBucket": "bucket {bucket} does not exist at {endpoint}: create it, or fix"
                    " s3target (and endpoint_url, awsregion)",
    "SignatureDoesNotMatch": "the secret key does not match the access key: " + _CREDENTIALS,
    "InvalidAccessKeyId": "the store does not know this access key: " + _CREDENTIALS,
    "InvalidClientTokenId": "the store does not know this access key: " + _CREDENTIALS,
    "InvalidToken": "the session token is not valid: " + _CREDENTIALS,
    "ExpiredToken": "the session token expired: " + _CREDENTIALS,
    "AccessDenied": "these credentials may not do this on bucket {bucket}: check the IAM"
                    " policy (s3:PutObject, s3:GetObject, s3:ListBucket,"
                    " s3:AbortMultipartUpload, s3:ListBucketMultipartUploads), the bucket policy"
                    " and, under SSE-KMS, the key's policy",
    "AllAccessDisabled": "all access to bucket {bucket} is disabled by its owner",
    "AuthorizationHeaderMalformed": "the region is wrong: set defaults.awsregion to the"
                                    " bucket's region",
    "PermanentRedirect": "bucket {bucket} is in another region: set defaults.awsregion to it",
    "301": "bucket {bucket} is in another region: set defaults.awsregion to it",
    "403": "wrong credentials, or no permission on bucket {bucket}; " + _CREDENTIALS,
    "BadDigest": _CORRUPTED,
    "XAmzContentSHA256Mismatch": _CORRUPTED,
    "InvalidStorageClass": "the store does not offer this storage class: change"
                           " consumer.s3.storage_class",
    "KMS.NotFoundException": "the KMS key does not exist: check consumer.s3.sse_kms_key_id",
}
# The store refused a body it received damaged: worth a warning, though it is sent again.
CORRUPTED_CODES = frozenset({"BadDigest", "XAmzContentSHA256Mismatch"})
_UNREACHABLE = (  # what a failure without an answer says -> its meaning and fix
    (("CERTIFICATE_VERIFY_FAILED", "TLS_ERROR", "SSL validation failed"),
     "the TLS certificate of {endpoint} is not trusted: set AWS_CA_BUNDLE to the CA bundle"
     " that signed it"),
    (("Could not connect", "CONNECTION_REFUSED", "Connection refused"),
     "nothing answers at {endpoint}: check defaults.endpoint_url, and that the store runs"),
    (("Could not resolve", "DNS", "Name or service not known"),
     "the host of {endpoint} does not resolve: check defaults.endpoint_url and DNS"),
    (("timed out", "TIMEOUT", "no answer within", "Read timeout", "Connect timeout"),
     "no answer from {endpoint} in time: check the network to it"),
)


@dataclass(frozen=True)
class Where:
    """The bucket and endpoint a call went to, for messages that say where."""

    bucket: str | None = None
    endpoint: str | None = None

    def __str__(self) -> str:
        on = f" on bucket {self.bucket}" if self.bucket else ""
        return f"{on} at {self.endpoint}" if self.endpoint else on


def _hint(text: str, where: Where) -> str:
    return ": " + text.format(bucket=where.bucket or "?", endpoint=where.endpoint or "the"
                              " endpoint")


def verdict(status: int | None, code: str | None, message: str,
            where: Where = Where()) -> TransientError | PermanentError:
    """What a store's answer (status None: no answer at all) means for a retry; the message
    gains what the code means and what to do, where that is known."""
    if status is None:
        hint = next((h for marks, h in _UNREACHABLE if any(m in message for m in marks)), "")
        return TransientError(f"S3 unreachable{where}: {message}"
                              + (_hint(hint, where) if hint else ""))
    if code in HINTS:
        message += _hint(HINTS[code], where)
    if code in CORRUPTED_CODES:  # worth knowing even when the next attempt succeeds
        log.warning("store refused a body damaged on the way, sent again bucket=%s"
                    " endpoint=%s code=%s", where.bucket, where.endpoint, code)
    if code in THROTTLING_CODES or status in (429, 503):
        return Throttled(message)
    if is_transient(code, status):
        return TransientError(message)
    return PermanentError(message)


def classify(exc: BaseException, what: str = "S3",
             where: Where = Where()) -> TransientError | PermanentError:
    """The one place a botocore/awscrt/network failure becomes Transient or Permanent, its
    message naming the call, the bucket and endpoint, the store's answer and the fix."""
    if isinstance(exc, (TransientError, PermanentError)):
        return exc
    if isinstance(exc, botocore.exceptions.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", "")) or "Unknown"
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return verdict(status, code, f"{what} {exc.operation_name}{where}: {code} ({status}) "
                                     f"{err.get('Message', '')}".strip().rstrip("."), where)
    if isinstance(exc, crt.Failed):
        if exc.status is None:
            return verdict(None, None, f"PutObject {exc}", where)
        detail = str(exc)  # the store's <Message>, else "HTTP 404"
        said = detail if not exc.code and detail == f"HTTP {exc.status}" else \
            f"{exc.code or 'HTTP'} ({exc.status}) {detail}"
        return verdict(exc.status, exc.code, f"{what} PutObject{where}: {said}", where)
    if isinstance(exc, (botocore.exceptions.NoCredentialsError,
                        botocore.exceptions.PartialCredentialsError)):
        # The instance metadata service may be unreachable at boot: wait for it, never fail.
        return TransientError(f"{what}: no usable AWS credentials yet: {exc}: {_CREDENTIALS}")
    if isinstance(exc, (botocore.exceptions.ParamValidationError,
                        botocore.exceptions.NoRegionError)):
        return PermanentError(f"{what}{where}: {exc}")
    if isinstance(exc, botocore.exceptions.EndpointConnectionError):
        # Its text names the URL of the one object; the endpoint alone groups the errors.
        return verdict(None, None, f"{type(exc).__name__}: Could not connect", where)
    if isinstance(exc, (botocore.exceptions.BotoCoreError, OSError)):
        # Connection refused/reset, timeouts, truncated responses, credential refresh failures.
        return verdict(None, None, str(exc), where)
    return PermanentError(f"{what}{where}: {type(exc).__name__}: {exc}")


def verified_by(checksum: Checksum | None, sent: str | None, answered: str | None,
                etag: str | None, md5_hex: Callable[[], str], opaque: bool) -> str | None:
    """The checksum's name or "etag" when a PUT's answer confirms the body whose `checksum`
    was `sent` and whose MD5 is `md5_hex()` (asked only to compare an ETag); None when a HEAD
    must: the store answered no checksum, and its ETags are `opaque` (not the MD5 of the
    body, as under SSE-KMS). Raises TransientError for a checksum or an MD5 ETag that
    differs: the store holds other bytes than were sent."""
    if checksum and answered:
        if answered != sent:
            raise TransientError(f"S3 PutObject: store checksum {answered} does not match "
                                 "the body sent")
        return checksum.name
    if etag and not opaque:
        if etag.strip('"') != md5_hex():
            raise TransientError(f"S3 PutObject: store ETag {etag} is not the MD5 of the body"
                                 " sent: it holds other bytes (a store whose ETags are not"
                                 " MD5s encrypts: set consumer.s3.sse to say so)")
        return "etag"
    return None


class Sink:
    """Uploads to S3: `upload()` streams a reader (boto3, multipart above one part);
    `put()` sends a small body through awscrt when `fast`, many at once. Safe across threads.
    Every upload comes back verified, every failure as TransientError or PermanentError."""

    def __init__(self, client: Any, s3: S3Config, transfer: Transfer | None = None,
                 transport: crt.CrtTransport | None = None,
                 credentials: Callable[[], Any] | None = None,
                 verify_pool: Executor | None = None) -> None:
        transfer = transfer or Transfer()
        self.client = client
        self.part_size = s3.part_size_mb * 2**20
        self.retry = transfer.retry
        self.checksum = store_checksum(s3.checksum)
        self.extra = options(s3)
        # Under SSE-KMS (and SSE-C) an ETag is not an MD5 of the body.
        self.opaque = str(s3.sse).startswith("aws:kms")
        self.multipart = Multipart(self.call, self.part_size, self.checksum, self.extra,
                                   self.opaque, transfer.part_memory, transfer.spool_above,
                                   transfer.part_memory_max)
        self.transport = transport
        self.max_small = min(transfer.max_small, self.part_size,
                             transport.max_body if transport else 0)
        self._credentials = credentials or (lambda: True)
        # The headers every fast PUT carries, built once.
        self._headers = [("Content-Type", "application/octet-stream"),
                         *((OPTION_HEADERS[name], value) for name, value in self.extra.items())]
        self._checksum_header = self.checksum.header if self.checksum else ""
        if self.checksum:
            self._headers.append(("x-amz-sdk-checksum-algorithm", self.checksum.name.upper()))
        # HEADs that verify fast PUTs run here, never on a CRT thread or the caller's loop.
        self._verify = verify_pool or ThreadPoolExecutor(2, thread_name_prefix="verify")

    @classmethod
    def from_config(cls, defaults: Defaults, s3: S3Config,
                    transfer: Transfer | None = None) -> Sink:
        """One session for both transports: the profile, region and endpoint of the config."""
        transfer = transfer or Transfer()
        session = make_session(defaults)
        transport = None
        if transfer.fast and crt.available():
            transport = crt.CrtTransport(
                region=session.region_name or "us-east-1", credentials=_crt_credentials(session),
                endpoint_url=defaults.endpoint_url, max_body=s3.part_size_mb * 2**20,
                min_in_flight=transfer.in_flight, max_in_flight=s3.max_in_flight,
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
        sha = hashlib.sha256(body).hexdigest()
        md5 = hashlib.md5(body, usedforsecurity=False)
        sent = self.checksum.of(body) if self.checksum else None
        headers = [("Content-MD5", base64.b64encode(md5.digest()).decode()), *self._headers]
        if sent:
            headers.append((self._checksum_header, sent))
        headers += [(_META.get(name) or f"x-amz-meta-{name}", value)
                    for name, value in metadata.items()]
        headers.append((_META[SHA256_KEY], sha))
        if if_absent:
            headers.append(("If-None-Match", "*"))

        def answered(answer: crt.Answer | crt.Failed) -> None:
            try:
                if isinstance(answer, crt.Failed):
                    if answer.status == 412 and if_absent:  # someone's object is there: whose?
                        self._verify.submit(self._put_over, out, bucket, key, body, metadata)
                        return
                    error = classify(answer, where=self.where(bucket))
                    if isinstance(error, Throttled):
                        self.transport.throttled()  # fewer in flight from now on
                    out.set_exception(error)
                    return
                etag = answer.headers.get("etag", "")
                how = verified_by(self.checksum, sent, answer.headers.get(self._checksum_header),
                                  etag, md5.hexdigest, self.opaque)
            except BaseException as exc:
                out.set_exception(classify(exc))
                return
            if how:
                out.set_result(Uploaded(bucket, key, len(body), sha, 0, how, etag.strip('"')))
            else:
                self._verify.submit(self._verified_head, out, bucket, key, len(body), sha)

        self.transport.put(bucket, key, body, headers, answered)
        return out

    def _put_over(self, out: Future[Uploaded], bucket: str, key: str, body: bytes,
                  metadata: dict[str, str]) -> None:
        try:
            self.may_replace(bucket, key, metadata)
            out.set_result(self._put_single(bucket, key, body, metadata, None))
        except BaseException as exc:
            out.set_exception(classify(exc))

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
                                 f"{found.metadata.get(NAME_KEY)}", final=True)

    def _verified_head(self, out: Future[Uploaded], bucket: str, key: str, size: int,
                       sha: str) -> None:
        try:
            out.set_result(Uploaded(bucket, key, size, sha, 0, "head",
                                    self.verify_head(bucket, key, size, sha)))
        except BaseException as exc:
            out.set_exception(classify(exc))

    def where(self, bucket: str | None) -> Where:
        return Where(bucket, getattr(getattr(self.client, "meta", None), "endpoint_url", None))

    def close(self, abandon: bool = False) -> None:
        """Wait for what runs; with `abandon` (a cold stop), cancel it instead."""
        if self.transport is not None:
            self.transport.close(timeout=0.5 if abandon else 30.0, abandon=abandon)
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
        head = read_full(reader, min(SMALL_BODY, self.part_size))
        if len(head) < min(SMALL_BODY, self.part_size):
            return self._put_single(bucket, key, head, metadata, cancel, if_absent)
        first = read_part(reader, self.part_size, head)
        second = read_part(reader, self.part_size) if len(first) == self.part_size else None
        if not second:
            return self._put_single(bucket, key, first, metadata, cancel, if_absent)
        if if_absent:
            self.may_replace(bucket, key, metadata)
        parts = [first, second]
        # Only `parts` may refer to them: the upload frees each buffer once it is sent,
        # and a local name here would keep two parts alive for the whole upload.
        del head, first, second
        return self.multipart.upload(bucket, key, parts, reader, metadata, cancel, journal)

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

    def _put_single(self, bucket: str, key: str, body: bytes | bytearray, metadata: dict[str, str],
                    cancel: threading.Event | None, if_absent: bool = False) -> Uploaded:
        sha = hashlib.sha256(body).hexdigest()
        args = {"Bucket": bucket, "Key": key, "Metadata": {**metadata, SHA256_KEY: sha},
                "Body": PartBody(body) if len(body) > SMALL_BODY else body, **self.extra}
        sent = self.checksum.of(body) if self.checksum else None
        if self.checksum:
            args.update({"ChecksumAlgorithm": self.checksum.name.upper(),
                         self.checksum.param: sent})
        try:
            resp = self.call("put_object", cancel, **args,
                             **({"IfNoneMatch": "*"} if if_absent else {}))
        except PermanentError as exc:
            if not (if_absent and error_code(exc) == "PreconditionFailed"):
                raise
            self.may_replace(bucket, key, metadata)
            resp = self.call("put_object", cancel, **args)
        etag = str(resp.get("ETag", ""))
        how = verified_by(self.checksum, sent,
                          resp.get(self.checksum.param) if self.checksum else None, etag,
                          lambda: hashlib.md5(body, usedforsecurity=False).hexdigest(),
                          self.opaque)
        if how is None:
            how, etag = "head", self.verify_head(bucket, key, len(body), sha)
        return Uploaded(bucket, key, len(body), sha, 0, how, etag.strip('"'))

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


def _crt_credentials(session: boto3.session.Session
                     ) -> crt.Credentials | Callable[[], crt.Credentials]:
    """The session's credentials for awscrt. Keys that never change (environment, shared
    files, explicit) are handed over as they are, so that signing a PUT never calls back into
    Python from a CRT thread; refreshable ones (roles, SSO) and none yet go through `_frozen`.
    The session caches what it resolved, so this is what `_frozen` would return every time."""
    creds = session.get_credentials()
    if creds is None or isinstance(creds, botocore.credentials.RefreshableCredentials):
        return _frozen(session)
    frozen = creds.get_frozen_credentials()
    return crt.Credentials(frozen.access_key, frozen.secret_key, frozen.token)


def _frozen(session: boto3.session.Session) -> Callable[[], crt.Credentials]:
    """The session's current credentials for awscrt (refreshed by botocore when they expire)."""
    def current() -> crt.Credentials:
        creds = session.get_credentials()
        if creds is None:
            raise TransientError("S3: no usable AWS credentials yet")
        frozen = creds.get_frozen_credentials()
        return crt.Credentials(frozen.access_key, frozen.secret_key, frozen.token)

    return current
