"""awscrt as a transport for the sink: many concurrent single-request PUTs from one process.

Owns one awscrt S3Client, request signing, in-flight limits and the request timeout. It sends
the headers it is given and hands back the store's raw answer: what the headers mean, whether
an answer verifies a body and whether a failure is worth retrying are decided in s3.py. It
never reads files, never touches the queue and never does multipart.
"""

from __future__ import annotations

import ctypes
import io
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

try:
    from awscrt import auth, http, s3
except ImportError:  # the pure-boto3 path works without it
    auth = http = s3 = None

# One PUT can carry at most 5 GiB.
MAX_BODY = 5 * 1024**3
_CODE_RE = re.compile(rb"<Code>([^<]{1,100})</Code>")


def available() -> bool:
    """True when awscrt is installed, so the sink may use this transport."""
    return s3 is not None


@dataclass(frozen=True)
class Answer:
    """A 2xx answer to one PUT: its headers, names in lower case."""

    headers: dict[str, str]


class Failed(Exception):
    """No 2xx answer. `status` None: no answer at all (refused, reset, timed out, DNS)."""

    def __init__(self, status: int | None, code: str | None, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    token: str | None = None


class CrtTransport:
    """Concurrent PUTs of in-memory bodies; share one instance across threads.

    `put()` blocks while `max_in_flight` requests or `max_in_flight_bytes` of bodies are
    running (one body alone may exceed the latter), so callers get backpressure and flat
    memory (`wait_room()` waits for that in slices, without starting anything). A request with
    no outcome after `request_timeout` seconds is cancelled and fails with status None: the
    CRT client has no read timeout, and a store that accepts connections but never answers
    would otherwise hold every slot for ever.
    """

    def __init__(self, *, region: str, credentials: Callable[[], Credentials] | Credentials,
                 endpoint_url: str | None = None, max_body: int = MAX_BODY,
                 max_in_flight: int = 32, max_in_flight_bytes: int = 64 * 2**20,
                 max_retries: int = 2, connect_timeout_ms: int = 3000,
                 request_timeout: float = 60.0) -> None:
        if not available():
            raise RuntimeError("awscrt is not installed (pip install 'sftppush[crt]')")
        self.region = region
        url = urlsplit(endpoint_url) if endpoint_url else None
        self._host = url.netloc if url else None  # None = AWS, virtual-hosted per bucket
        self._base = url.path.rstrip("/") if url else ""
        tls = s3.S3RequestTlsMode.DISABLED if url and url.scheme == "http" else \
            s3.S3RequestTlsMode.ENABLED
        signing = s3.create_default_s3_signing_config(
            region=region, credential_provider=_provider(credentials))
        # Never multipart here: CRT's CreateMultipartUpload parser also rejects rclone serve
        # s3's reply (root element InitiateMultipartUpload), and s3.py owns large files.
        # CRT's own default is 5 retries with up to 20 s backoff; the consumer's queue-level
        # retries own the long waits, so keep this short.
        self.max_body = min(MAX_BODY, max_body)
        self._client = s3.S3Client(region=region, tls_mode=tls, signing_config=signing,
                                   part_size=self.max_body,
                                   multipart_upload_threshold=self.max_body,
                                   connect_timeout_ms=connect_timeout_ms,
                                   retry_config=s3.S3RetryConfig(max_retries=max(max_retries, 1)))
        self._room = threading.Condition()
        self._limits = (max_in_flight, max_in_flight_bytes)
        self._running = [0, 0]        # requests, body bytes
        self._live: dict[object, tuple[Any, float]] = {}  # token -> (S3Request, deadline):
        self._lock = threading.RLock()                    # requests must outlive callbacks
        self._closed = False
        self.timeout = request_timeout
        self._timed_out: set[object] = set()
        self._stopping = threading.Event()
        self._watchdog = threading.Thread(target=self._cancel_overdue, name="crt-watchdog",
                                          daemon=True)
        self._watchdog.start()

    def virtual_hosted(self) -> bool:
        """True when buckets are addressed as host names (AWS itself)."""
        return self._host is None

    def put(self, bucket: str, key: str, body: bytes, headers: list[tuple[str, str]],
            answered: Callable[[Answer | Failed], None]) -> None:
        """Start one PUT of `body` with `headers` (Host and Content-Length are added); blocks
        while the in-flight limits are reached. `answered` is called once, from a CRT thread,
        with the Answer or the Failed; it must not raise."""
        if len(body) > self.max_body:
            raise ValueError(f"body of {len(body)} bytes is too big for one PUT")
        if self._closed:
            raise RuntimeError("CrtTransport is closed")
        host = self._host or f"{bucket}.s3.{self.region}.amazonaws.com"
        path = f"{self._base}/{bucket}/{quote(key, safe='/~')}" if self._host else \
            f"/{quote(key, safe='/~')}"
        headers.append(("Host", host))
        headers.append(("Content-Length", str(len(body))))
        request = http.HttpRequest("PUT", path, http.HttpHeaders(headers), _Body(body))
        got: list[list[tuple[str, str]]] = []
        size = len(body)

        def on_done(error: BaseException | None = None, status_code: int | None = None,
                    error_body: bytes | None = None, **_: Any) -> None:
            _keep_thread_state()
            try:
                with self._lock:
                    overdue = token in self._timed_out
                    self._timed_out.discard(token)
                if error is None:
                    outcome: Answer | Failed = Answer(
                        {n.lower(): v for n, v in got[-1]} if got else {})
                elif overdue:
                    outcome = Failed(None, None, f"no answer within {self.timeout:g}s")
                else:
                    outcome = _failure(error, status_code, error_body)
            except BaseException as exc:  # never let an exception escape into CRT's thread
                outcome = Failed(None, None, f"{type(exc).__name__}: {exc}")
            self._finish(token, size)
            answered(outcome)

        token = object()
        self._reserve(size)
        with self._lock:  # held so on_done cannot run _finish before the request is recorded
            try:
                self._live[token] = (self._client.make_request(
                    type=s3.S3RequestType.PUT_OBJECT, request=request,
                    on_headers=lambda headers, **_: got.append(headers), on_done=on_done),
                    time.monotonic() + self.timeout)
            except BaseException:
                self._release(size)
                raise

    def wait_room(self, size: int, timeout: float) -> bool:
        """Wait up to `timeout` seconds until a body of `size` bytes would start at once."""
        with self._room:
            return self._room.wait_for(lambda: self._fits(size), timeout)

    def close(self, timeout: float = 30.0, abandon: bool = False) -> None:
        """Wait for running PUTs (or, with `abandon`, cancel them), then release the client
        and its threads."""
        self._closed = True
        with self._lock:
            live = [req for req, _ in self._live.values()]
        for req in live:
            if abandon:
                req.cancel()
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
            # Best effort: CRT releases its threads asynchronously (abandoned PUTs may hold
            # them until their connections close: the process is about to exit anyway).
            event.wait(0.5 if abandon else 5.0)

    def _fits(self, size: int) -> bool:
        count, nbytes = self._limits
        return self._running[0] == 0 or (
            self._running[0] < count and self._running[1] + size <= nbytes)

    def _reserve(self, size: int) -> None:
        with self._room:
            self._room.wait_for(lambda: self._fits(size))
            self._running[0] += 1
            self._running[1] += size

    def _release(self, size: int) -> None:
        with self._room:
            self._running[0] -= 1
            self._running[1] -= size
            self._room.notify_all()

    def _cancel_overdue(self) -> None:
        while not self._stopping.wait(min(1.0, self.timeout / 4)):
            now = time.monotonic()
            with self._lock:
                overdue = [(t, req) for t, (req, deadline) in self._live.items() if now > deadline
                           and t not in self._timed_out]
                self._timed_out.update(t for t, _ in overdue)
            for _, req in overdue:
                req.cancel()  # on_done follows, from a CRT thread, with the timeout as error

    def _finish(self, token: object, size: int) -> None:
        # Dropping our reference here, not in a future callback, avoids a reference cycle
        # (request -> on_done -> future -> callback -> request) that would keep the client
        # alive until the garbage collector ran.
        with self._lock:
            self._live.pop(token, None)
        self._release(size)


_kept_thread_states: set[int] = set()


def _keep_thread_state() -> None:
    """Give the CRT thread running this callback a Python thread state for its whole life.

    awscrt enters Python from its own threads with PyGILState_Ensure, which makes a thread
    state (and maps a 16 KiB frame stack) when the thread has none, and frees it all again
    at the matching Release: four times per PUT (body read, headers, done, shutdown), each
    munmap costing the other core an interrupt. One Ensure that is never released keeps the
    state: later callbacks only take the GIL. Runs with the GIL held; a thread is kept once.
    Called where a PUT first enters Python on each of CRT's threads: the body's read (the
    thread that prepares requests) and on_done (the one that answers them).
    """
    ident = threading.get_ident()
    if ident not in _kept_thread_states:
        _kept_thread_states.add(ident)
        ctypes.pythonapi.PyGILState_Ensure()


class _Body(io.BytesIO):
    """A PUT's body as awscrt reads it (readinto1, from a CRT thread)."""

    def readinto1(self, buffer: Any) -> int:
        _keep_thread_state()
        return super().readinto1(buffer)


def _provider(credentials: Callable[[], Credentials] | Credentials) -> Any:
    if isinstance(credentials, Credentials):
        return auth.AwsCredentialsProvider.new_static(
            credentials.access_key, credentials.secret_key, credentials.token)

    def delegate() -> Any:
        c = credentials()
        return auth.AwsCredentials(c.access_key, c.secret_key, c.token)

    return auth.AwsCredentialsProvider.new_delegate(delegate)


def _failure(error: BaseException, status: int | None, body: bytes | None) -> Failed:
    code_match = _CODE_RE.search(body or b"")
    code = code_match.group(1).decode(errors="replace") if code_match else None
    status = getattr(error, "status_code", None) or status
    return Failed(status or None, code, getattr(error, "name", type(error).__name__))
