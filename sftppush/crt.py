"""Fast PUTs of small in-memory bodies through awscrt's S3 client (optional: `sftppush[crt]`).

Owns one awscrt S3Client per process, request building and signing, Content-MD5 verification
and the mapping of CRT failures to TransientError / PermanentError. It never reads files,
never touches the queue and never does multipart: large files stay on boto3 in s3.py.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

from sftppush.config import Defaults, S3Config
from sftppush.errors import PermanentError, TransientError
from sftppush.s3 import is_transient

try:
    from awscrt import auth, http, s3
except ImportError:  # the pure-boto3 path works without it
    auth = http = s3 = None

# One PUT can carry at most 5 GiB; the consumer sends bodies up to part_size_mb this way.
MAX_BODY = 5 * 1024**3
_CODE_RE = re.compile(rb"<Code>([^<]{1,100})</Code>")


def available() -> bool:
    """True when awscrt is installed, so the consumer may choose this path."""
    return s3 is not None


@dataclass(frozen=True)
class PutItem:
    bucket: str
    key: str
    body: bytes
    metadata: Mapping[str, str] = field(default_factory=dict)
    content_type: str | None = None


@dataclass(frozen=True)
class PutResult:
    """What the store answered for one PUT it accepted (so it found our Content-MD5 right)."""

    bucket: str
    key: str
    size: int
    md5_hex: str
    etag: str | None          # without quotes
    sse: str | None           # x-amz-server-side-encryption of the response
    checksum_crc32: str | None

    @property
    def verified_by(self) -> str | None:
        """"etag" when the store echoed our MD5; None when the caller should HEAD the object
        (SSE-KMS/SSE-C ETags are not the MD5; the store still checked our Content-MD5)."""
        return "etag" if self.etag == self.md5_hex else None


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    token: str | None = None


class CrtUploader:
    """Many concurrent single-request PUTs from one process; share one instance across threads.

    `put()` blocks while `max_in_flight` requests or `max_in_flight_bytes` of bodies are
    running (one body alone may exceed the latter), so callers get backpressure and flat
    memory for free (`wait_room()` waits for that in slices, without starting anything); its
    future resolves to a PutResult or raises TransientError / PermanentError. A request with
    no outcome after `request_timeout` seconds is cancelled and is a TransientError: the CRT
    client has no read timeout, and a store that accepts connections but never answers would
    otherwise hold every slot for ever.
    The store checks the Content-MD5 we send (a 200 means the bytes arrived intact) and
    PutResult.verified_by says whether the returned ETag confirms it.
    """

    def __init__(self, *, region: str, credentials: Callable[[], Credentials] | Credentials,
                 endpoint_url: str | None = None, s3cfg: S3Config | None = None,
                 max_in_flight: int = 32, max_in_flight_bytes: int = 64 * 2**20,
                 max_retries: int | None = 2,
                 connect_timeout_ms: int = 3000, request_timeout: float = 60.0) -> None:
        if not available():
            raise RuntimeError("awscrt is not installed (pip install 'sftppush[crt]')")
        self.region = region
        self.s3cfg = s3cfg or S3Config()
        url = urlsplit(endpoint_url) if endpoint_url else None
        self._host = url.netloc if url else None  # None = AWS, virtual-hosted per bucket
        self._base = url.path.rstrip("/") if url else ""
        tls = s3.S3RequestTlsMode.DISABLED if url and url.scheme == "http" else \
            s3.S3RequestTlsMode.ENABLED
        signing = s3.create_default_s3_signing_config(
            region=region, credential_provider=_provider(credentials))
        kwargs = {"connect_timeout_ms": connect_timeout_ms}
        if max_retries is not None:
            # CRT's own default is 5 retries with up to 20 s backoff; the consumer's tenacity
            # and queue-level retry_later own the long waits, so keep this short.
            kwargs["retry_config"] = s3.S3RetryConfig(max_retries=max(max_retries, 1))
        # Never multipart here: CRT's CreateMultipartUpload parser also rejects rclone serve
        # s3's reply (root element InitiateMultipartUpload), and s3.py owns large files.
        self.max_body = min(MAX_BODY, self.s3cfg.part_size_mb * 2**20)
        self._client = s3.S3Client(region=region, tls_mode=tls, signing_config=signing,
                                   part_size=self.max_body,
                                   multipart_upload_threshold=self.max_body, **kwargs)
        self._room = threading.Condition()
        self._limits = (max_in_flight, max_in_flight_bytes)
        self._running = [0, 0]        # requests, body bytes
        self._live: dict = {}         # token -> (S3Request, deadline); requests must outlive
        self._lock = threading.RLock()  # their callbacks
        self._closed = False
        self._timeout = request_timeout
        self._timed_out: set[object] = set()
        self._stopping = threading.Event()
        self._watchdog = threading.Thread(target=self._cancel_overdue, name="crt-watchdog",
                                          daemon=True)
        self._watchdog.start()

    @classmethod
    def from_session(cls, session, *, region: str | None = None,
                     endpoint_url: str | None = None, **kwargs) -> CrtUploader:
        """Use a boto3 Session's credential chain (profile, env, role; refreshed when needed)."""
        creds = session.get_credentials()
        if creds is None:
            raise PermanentError("no AWS credentials found (profile, environment or role)")

        def current() -> Credentials:
            frozen = creds.get_frozen_credentials()
            return Credentials(frozen.access_key, frozen.secret_key, frozen.token)

        return cls(region=region or session.region_name or "us-east-1", credentials=current,
                   endpoint_url=endpoint_url, **kwargs)

    @classmethod
    def from_config(cls, defaults: Defaults, s3cfg: S3Config, **kwargs) -> CrtUploader:
        """The consumer's entry point: the same profile, region and endpoint as s3.make_client."""
        from sftppush.s3 import make_session

        return cls.from_session(make_session(defaults), endpoint_url=defaults.endpoint_url,
                                s3cfg=s3cfg, **kwargs)

    # ---- requests -------------------------------------------------------------------------

    def put(self, bucket: str, key: str, body: bytes, metadata: Mapping[str, str] | None = None,
            content_type: str | None = None) -> Future[PutResult]:
        """Start one PUT of `body`; blocks while the in-flight limits are reached."""
        if len(body) > self.max_body:
            raise ValueError(f"body of {len(body)} bytes is too big for one PUT; use s3.py")
        if self._closed:
            raise RuntimeError("CrtUploader is closed")
        md5 = hashlib.md5(body, usedforsecurity=False)
        headers = self._headers(bucket, body, md5.digest(), metadata or {}, content_type)
        path = f"{self._base}/{bucket}/{quote(key, safe='/~')}" if self._host else \
            f"/{quote(key, safe='/~')}"
        request = http.HttpRequest("PUT", path, http.HttpHeaders(headers), io.BytesIO(body))
        future: Future[PutResult] = Future()
        answer: dict = {}

        def on_headers(status_code, headers, **_):
            answer["status"] = status_code
            answer["headers"] = headers

        def on_done(error=None, status_code=None, error_body=None, **_):
            try:
                with self._lock:
                    overdue = token in self._timed_out
                    self._timed_out.discard(token)
                if error is not None:
                    future.set_exception(TransientError(
                        f"S3 unreachable: PUT key={key} no answer within {self._timeout:g}s")
                        if overdue else _classify(error, status_code, error_body, key))
                else:
                    future.set_result(_result(bucket, key, len(body), md5.hexdigest(),
                                              answer.get("headers") or ()))
            except BaseException as exc:  # never let an exception escape into CRT's thread
                future.set_exception(exc)
            finally:
                self._finish(token, len(body))

        token = object()
        self._reserve(len(body))
        with self._lock:  # held so on_done cannot run _finish before the request is recorded
            try:
                self._live[token] = (self._client.make_request(
                    type=s3.S3RequestType.PUT_OBJECT, request=request,
                    on_headers=on_headers, on_done=on_done),
                    time.monotonic() + self._timeout)
            except BaseException:
                self._release(len(body))
                raise
        return future

    def put_many(self, items: Iterable[PutItem]) -> Iterator[tuple[PutItem, PutResult | Exception]]:
        """PUT every item, keeping up to max_in_flight running; yield (item, result or error)
        in the order given. Errors are TransientError or PermanentError, never raised here."""
        pending: list[tuple[PutItem, Future[PutResult]]] = []
        for item in items:
            pending.append((item, self.put(item.bucket, item.key, item.body, item.metadata,
                                           item.content_type)))
            while pending and pending[0][1].done():
                yield _outcome(*pending.pop(0))
        for item, fut in pending:
            yield _outcome(item, fut)

    def close(self, timeout: float = 30.0) -> None:
        """Wait for running PUTs, then release the client and its threads."""
        self._closed = True
        with self._lock:
            live = [req for req, _ in self._live.values()]
        for req in live:
            try:
                req.finished_future.result(timeout)
            except Exception:
                pass
        self._stopping.set()
        self._watchdog.join(5.0)
        client, self._client = self._client, None
        if client is not None:
            event = client.shutdown_event
            del client, live
            event.wait(5.0)  # best effort: CRT releases its threads asynchronously

    def __enter__(self) -> CrtUploader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- helpers --------------------------------------------------------------------------

    def wait_room(self, size: int, timeout: float) -> bool:
        """Wait up to `timeout` seconds until a body of `size` bytes would start at once."""
        with self._room:
            return self._room.wait_for(lambda: self._fits(size), timeout)

    def _fits(self, size: int) -> bool:
        count, nbytes = self._limits
        return self._running[0] == 0 or (
            self._running[0] < count and self._running[1] + size <= nbytes)

    def _reserve(self, size: int) -> None:
        with self._room:
            self._room.wait_for(lambda: self._fits(size))
            self._running[0] += 1
            self._running[1] += size

    def _cancel_overdue(self) -> None:
        while not self._stopping.wait(min(1.0, self._timeout / 4)):
            now = time.monotonic()
            with self._lock:
                overdue = [(t, req) for t, (req, deadline) in self._live.items() if now > deadline
                           and t not in self._timed_out]
                self._timed_out.update(t for t, _ in overdue)
            for _, req in overdue:
                req.cancel()  # on_done follows, from a CRT thread, with the timeout as error

    def _release(self, size: int) -> None:
        with self._room:
            self._running[0] -= 1
            self._running[1] -= size
            self._room.notify_all()

    def _finish(self, token: object, size: int) -> None:
        # Dropping our reference here, not in a future callback, avoids a reference cycle
        # (request -> on_done -> future -> callback -> request) that would keep the client
        # alive until the garbage collector ran.
        with self._lock:
            self._live.pop(token, None)
        self._release(size)

    def _headers(self, bucket: str, body: bytes, md5: bytes, metadata: Mapping[str, str],
                 content_type: str | None) -> list[tuple[str, str]]:
        # AWS itself: virtual-hosted style (a bucket name with dots would fail TLS here; the
        # consumer keeps such buckets on boto3).
        host = self._host or f"{bucket}.s3.{self.region}.amazonaws.com"
        headers = [("Host", host), ("Content-Length", str(len(body))),
                   ("Content-MD5", base64.b64encode(md5).decode()),
                   ("Content-Type", content_type or "application/octet-stream")]
        if self.s3cfg.checksum == "when_supported":
            crc = zlib.crc32(body).to_bytes(4, "big")
            headers += [("x-amz-sdk-checksum-algorithm", "CRC32"),
                        ("x-amz-checksum-crc32", base64.b64encode(crc).decode())]
        if self.s3cfg.storage_class:
            headers.append(("x-amz-storage-class", self.s3cfg.storage_class))
        if self.s3cfg.sse:
            headers.append(("x-amz-server-side-encryption", self.s3cfg.sse))
        if self.s3cfg.sse_kms_key_id:
            headers.append(("x-amz-server-side-encryption-aws-kms-key-id",
                            self.s3cfg.sse_kms_key_id))
        for name, value in metadata.items():
            if not (name.isascii() and value.isascii()):
                # boto3 would send these as they are and the store would mangle them; the
                # pipeline percent-escapes names before they get here.
                raise ValueError(f"metadata {name!r} must be ASCII")
            headers.append((f"x-amz-meta-{name}", value))
        return headers


def _provider(credentials: Callable[[], Credentials] | Credentials):
    if isinstance(credentials, Credentials):
        return auth.AwsCredentialsProvider.new_static(
            credentials.access_key, credentials.secret_key, credentials.token)

    def delegate():
        c = credentials()
        return auth.AwsCredentials(c.access_key, c.secret_key, c.token)

    return auth.AwsCredentialsProvider.new_delegate(delegate)


def _result(bucket: str, key: str, size: int, md5_hex: str,
            headers: Iterable[tuple[str, str]]) -> PutResult:
    h = {name.lower(): value for name, value in headers}
    return PutResult(bucket, key, size, md5_hex, h.get("etag", "").strip('"') or None,
                     h.get("x-amz-server-side-encryption"), h.get("x-amz-checksum-crc32"))


def _classify(error: BaseException, status: int | None, body: bytes | None,
              key: str) -> Exception:
    if isinstance(error, TransientError | PermanentError):
        return error
    code_match = _CODE_RE.search(body or b"")
    code = code_match.group(1).decode(errors="replace") if code_match else None
    status = getattr(error, "status_code", None) or status
    what = f"PUT key={key} " + (f"status={status} code={code}" if status else
                                getattr(error, "name", type(error).__name__))
    if status is None:  # no answer at all: refused, reset, timed out, DNS
        return TransientError(f"S3 unreachable: {what}")  # the words s3.classify uses
    if is_transient(code, status):
        return TransientError(what)
    return PermanentError(what)


def _outcome(item: PutItem, fut: Future[PutResult]) -> tuple[PutItem, PutResult | Exception]:
    try:
        return item, fut.result()
    except (TransientError, PermanentError) as exc:
        return item, exc
