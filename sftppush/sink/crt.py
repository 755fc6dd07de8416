"""awscrt as a transport for the sink: many concurrent single-request PUTs from one process.

Owns awscrt's HTTP connections (kept alive, per host, as many as requests in flight), request
signing, in-flight limits (a window that follows the link: inflight.py), the request timeout
and quick resends on a failed connection (one PUT's own state is crtput.py's). It sends the
headers it is given and hands back the store's raw answer: what the headers mean, whether an
answer verifies a body and whether a failure is worth retrying are decided in s3.py and
answers.py. It never reads files, never touches the queue and never does multipart.
"""

from __future__ import annotations

import collections
import logging
import resource
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from sftppush.sink.crtput import Answer, Body, Put, PutError, failure, keep_thread_state
from sftppush.sink.inflight import Window

try:
    from awscrt import auth, http, io
except ImportError:  # the pure-boto3 path works without it
    auth = http = io = None

log = logging.getLogger("sftppush.crt")

# One PUT can carry at most 5 GiB.
MAX_BODY = 5 * 1024**3


def available() -> bool:
    """True when awscrt is installed, so the sink may use this transport."""
    return http is not None


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    token: str | None = None


class CrtTransport:
    """Concurrent PUTs of in-memory bodies over awscrt's HTTP client; share one instance.

    Each PUT is signed (SigV4, unsigned payload: the body is verified by its checksum or
    ETag), sent on a kept-alive connection of the store's host, and answered from awscrt's
    event-loop thread. Plain HTTP requests, not awscrt's S3 client: its meta-request
    machinery cost the consumer about 0.04 ms of CPU per small file more (issue 18).

    A PUT starts when the window's requests and `max_in_flight_bytes` of bodies allow (one
    body alone may exceed the latter); until then it waits in a line of up to a window's
    worth, started from the thread of the answer that makes room, so a caller busy elsewhere
    (opening the next files) leaves no gap in the pipe. `put()` blocks while that line is
    full too, so callers get backpressure and flat memory (`wait_room()` waits for that in
    slices, without starting anything). The window starts at
    `min_in_flight` and follows the link up to `max_in_flight` (inflight.Window: it grows while
    latency holds, shrinks when it rises or when the store asks to slow down, `throttled()`).
    Connections are kept alive for the next request, as many as the window. A request with
    no outcome after `request_timeout` seconds has its connection closed and fails with status
    None, as does one whose connection failed `max_retries` + 1 times. An answer, 5xx included,
    is handed back as it came.
    """

    def __init__(self, *, region: str, credentials: Callable[[], Credentials] | Credentials,
                 endpoint_url: str | None = None, max_body: int = MAX_BODY,
                 min_in_flight: int = 32, max_in_flight: int = 256,
                 max_in_flight_bytes: int = 64 * 2**20,
                 max_retries: int = 2, connect_timeout_ms: int = 3000,
                 request_timeout: float = 60.0, ca_file: str | None = None) -> None:
        if not available():
            raise RuntimeError("awscrt is not installed (a dependency: pip install awscrt)")
        self.region = region
        url = urlsplit(endpoint_url) if endpoint_url else None
        self._host = url.netloc if url else None  # None = AWS, virtual-hosted per bucket
        self._hostname = url.hostname if url else None  # what to connect to
        self._base = url.path.rstrip("/") if url else ""
        secure = not (url and url.scheme == "http")
        self._port = (url.port if url and url.port else None) or (443 if secure else 80)
        self._tls = None
        if secure:  # the system's trust store, or the CA bundle boto3 is given too
            options = io.TlsContextOptions()
            if ca_file:
                options.override_default_trust_store_from_path(ca_filepath=ca_file)
            self._tls = io.ClientTlsContext(options)
        # awscrt's shared event loops: they live as long as the process, as the thread
        # states that keep_thread_state gives them do.
        self._bootstrap = io.ClientBootstrap.get_or_create_static_default()
        self._socket = io.SocketOptions()
        self._socket.connect_timeout_ms = connect_timeout_ms
        self._provider = _provider(credentials)
        self._signing_config: tuple[float, Any] = (0.0, None)
        self.max_body = min(MAX_BODY, max_body)
        self.max_retries = max_retries
        self._idle: dict[str, list[Any]] = {}  # host -> open connections not in use
        self._room = threading.Condition()  # guards the window, _running and _waiting
        self.window = Window(min_in_flight, max_in_flight)
        self._max_bytes = max_in_flight_bytes
        self._running = [0, 0, 0]     # requests, their body bytes, bytes waiting
        self._waiting: collections.deque[Put] = collections.deque()  # taken, not started
        self._live: dict[Put, float] = {}  # running PUT -> deadline
        self.puts = 0                       # started, ever
        self._lock = threading.RLock()
        self._closed = False
        self.timeout = request_timeout
        self._stopping = threading.Event()
        _allow_open_files(4 * self.window.ceiling + 256)
        self._watchdog = threading.Thread(target=self._cancel_overdue, name="crt-watchdog",
                                          daemon=True)
        self._watchdog.start()

    def virtual_hosted(self) -> bool:
        """True when buckets are addressed as host names (AWS itself)."""
        return self._host is None

    def put(self, bucket: str, key: str, body: bytes, headers: list[tuple[str, str]],
            answered: Callable[[Answer | PutError], None]) -> None:
        """Start one PUT of `body` with `headers` (Host and Content-Length are added); blocks
        while the in-flight limits are reached. `answered` is called once, from a CRT thread
        (or this one), with the Answer or the PutError; it must not raise."""
        if len(body) > self.max_body:
            raise ValueError(f"body of {len(body)} bytes is too big for one PUT")
        if self._closed:
            raise RuntimeError("CrtTransport is closed")
        host = self._host or f"{bucket}.s3.{self.region}.amazonaws.com"
        path = f"{self._base}/{bucket}/{quote(key, safe='/~')}" if self._host else \
            f"/{quote(key, safe='/~')}"
        job = Put(host, path, [*headers, ("Host", host), ("Content-Length", str(len(body)))],
                   body, answered)
        with self._room:
            self._room.wait_for(lambda: self._takes(len(body)))
            start = not self._waiting and self._fits(len(body))
            if start:
                self._reserve(job)
            else:
                self._waiting.append(job)
                self._running[2] += len(body)
        if start:
            self._start(job)

    def wait_room(self, size: int, timeout: float) -> bool:
        """Wait up to `timeout` seconds until a `put()` of `size` bytes would not block."""
        with self._room:
            return self._room.wait_for(lambda: self._takes(size), timeout)

    def in_flight(self) -> int:
        """How many PUTs may run at once now: the window's size."""
        return self.window.size

    def throttled(self) -> None:
        """The store asked to slow down (its answer to a PUT of ours): fewer in flight."""
        with self._room:
            cuts = self.window.cuts
            self.window.throttled()
            if self.window.cuts > cuts:
                log.debug("in flight cut window=%d throttles=%d", self.window.size,
                          self.window.throttles)

    def close(self, timeout: float = 30.0, abandon: bool = False) -> None:
        """Wait for running PUTs (or, with `abandon`, cancel them), then close the idle
        connections (those of running PUTs close when they end)."""
        self._closed = True
        if abandon:
            with self._room:
                waiting, self._waiting = list(self._waiting), collections.deque()
                self._running[2] = 0
            for job in waiting:
                _answer(job, PutError(None, None, "cancelled"))
            with self._lock:
                live = list(self._live)
            for job in live:
                job.cancel()
        with self._room:
            self._room.wait_for(lambda: self._running[0] == 0 and not self._waiting, timeout)
        self._stopping.set()
        self._watchdog.join(5.0)
        if self.puts:  # a consumer that never started says nothing more than its error
            log.info("fast path closed puts=%d window=%d largest=%d throttles=%d", self.puts,
                     self.window.size, self.window.largest, self.window.throttles)
        with self._lock:
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()

    # --- one PUT: sign, connect (or reuse), send, answer; again on a failed connection ---

    def _start(self, job: Put) -> None:
        job.started = time.monotonic()
        with self._lock:
            self._live[job] = job.started + self.timeout
            self.puts += 1
        self._sign(job)

    def _sign(self, job: Put) -> None:
        job.request = http.HttpRequest("PUT", job.path, http.HttpHeaders(job.headers),
                                       Body(job.body))
        try:
            signing = auth.aws_sign_request(job.request, self._signing())
        except BaseException as exc:
            self._end(job, PutError(None, None, f"signing: {exc}"))
            return
        signing.add_done_callback(lambda f: self._signed(job, f))

    def _signing(self) -> Any:
        """The signing config, renewed each minute: it carries the date it was made at."""
        made, config = self._signing_config
        now = time.monotonic()
        if config is None or now - made > 60:
            config = auth.AwsSigningConfig(
                algorithm=auth.AwsSigningAlgorithm.V4,
                signature_type=auth.AwsSignatureType.HTTP_REQUEST_HEADERS,
                credentials_provider=self._provider, region=self.region, service="s3",
                signed_body_value=auth.AwsSignedBodyValue.UNSIGNED_PAYLOAD,
                signed_body_header_type=auth.AwsSignedBodyHeaderType.X_AMZ_CONTENT_SHA_256,
                use_double_uri_encode=False, should_normalize_uri_path=False)
            self._signing_config = (now, config)
        return config

    def _signed(self, job: Put, signing: Future[Any]) -> None:
        # This and _connected may run on the calling thread (a future done before its
        # callback was added): they leave thread states alone.
        if signing.exception() is not None:
            self._end(job, PutError(None, None, f"signing: {_name(signing.exception())}"))
            return
        connection = self._take_idle(job.host)
        if connection is not None:
            self._send(job, connection)
            return
        name = self._hostname or job.host
        tls = None
        if self._tls is not None:
            tls = self._tls.new_connection_options()
            tls.set_server_name(name)
        try:
            connecting = http.HttpClientConnection.new(
                host_name=name, port=self._port, bootstrap=self._bootstrap,
                socket_options=self._socket, tls_connection_options=tls)
        except BaseException as exc:
            self._again_or_end(job, PutError(None, None, _name(exc)))
            return
        connecting.add_done_callback(lambda f: self._connected(job, f))

    def _connected(self, job: Put, connecting: Future[Any]) -> None:
        if connecting.exception() is not None:
            self._again_or_end(job, PutError(None, None, _name(connecting.exception())))
            return
        self._send(job, connecting.result())

    def _send(self, job: Put, connection: Any) -> None:
        if not job.attach(connection):
            connection.close()  # timed out or cancelled meanwhile
            self._end(job, job.dropped(self.timeout))
            return
        try:
            stream = connection.request(job.request, on_response=job.on_response,
                                        on_body=job.on_body)
            stream.completion_future.add_done_callback(lambda f: self._completed(job, f))
            stream.activate()
        except BaseException as exc:
            connection.close()
            self._again_or_end(job, PutError(None, None, _name(exc)))

    def _completed(self, job: Put, completion: Future[Any]) -> None:
        keep_thread_state()
        connection, status = job.detach(), job.status
        if completion.exception() is None and status is not None:
            self._give_back(job.host, connection)
            # An answer is never sent again from here: a 503 SlowDown asks for a backoff,
            # which the queue's retry delays and the consumer's outage pause give.
            self._end(job, Answer({n.lower(): v for n, v in job.response})
                      if 200 <= status < 300 else failure(status, bytes(job.error_body)))
            return
        connection.close()
        if job.stopped:
            self._end(job, job.dropped(self.timeout))
        else:
            self._again_or_end(job, PutError(None, None, _name(completion.exception())))

    def _again_or_end(self, job: Put, failed: PutError) -> None:
        if job.attempts <= self.max_retries and not job.stopped and not self._stopping.is_set():
            job.attempts += 1
            self._sign(job)  # a fresh request: its body stream starts again at 0
        else:
            self._end(job, job.dropped(self.timeout) if job.stopped else failed)

    def _end(self, job: Put, outcome: Answer | PutError) -> None:
        with self._lock:
            if self._live.pop(job, None) is None:
                return  # answered already
        answered = isinstance(outcome, Answer) or outcome.status is not None
        self._release(len(job.body), time.monotonic() - job.started if answered else None)
        _answer(job, outcome)

    def _take_idle(self, host: str) -> Any:
        with self._lock:
            connections = self._idle.get(host, [])
            while connections:
                connection = connections.pop()
                if connection.is_open():
                    return connection
        return None

    def _give_back(self, host: str, connection: Any) -> None:
        if connection.is_open() and not self._stopping.is_set():
            with self._lock:
                idle = self._idle.setdefault(host, [])
                if len(idle) < self.window.size:  # a pool as big as the window, no bigger
                    idle.append(connection)
                    return
        connection.close()

    # --- limits and the watchdog ------------------------------------------------------------

    def _fits(self, size: int) -> bool:
        """A body of `size` may start now (called with _room held)."""
        return self._running[0] == 0 or (
            self._running[0] < self.window.size and self._running[1] + size <= self._max_bytes)

    def _takes(self, size: int) -> bool:
        """A `put()` of `size` would start now or wait in the line (called with _room held):
        the line holds a window's worth, and running and waiting bodies the byte budget."""
        if not self._waiting and self._fits(size):
            return True
        return len(self._waiting) < self.window.size and \
            self._running[1] + self._running[2] + size <= self._max_bytes

    def _reserve(self, job: Put) -> None:
        self._running[0] += 1
        self._running[1] += len(job.body)

    def _release(self, size: int, latency: float | None) -> None:
        """A PUT ended: its room goes to the PUTs waiting in line, started from here."""
        with self._room:
            if latency is not None:
                self.window.answered(latency, self._running[0])
            self._running[0] -= 1
            self._running[1] -= size
            starting = []
            while self._waiting and self._fits(len(self._waiting[0].body)):
                job = self._waiting.popleft()
                self._running[2] -= len(job.body)
                self._reserve(job)
                starting.append(job)
            self._room.notify_all()
        for job in starting:
            self._start(job)

    def _cancel_overdue(self) -> None:
        while not self._stopping.wait(min(1.0, self.timeout / 4)):
            now = time.monotonic()
            with self._lock:
                overdue = [job for job, deadline in self._live.items() if now > deadline]
            for job in overdue:
                job.cancel(timed_out=True)


def _answer(job: Put, outcome: Answer | PutError) -> None:
    try:
        job.answered(outcome)
    except BaseException:  # never let an exception escape into CRT's thread
        pass


def _allow_open_files(wanted: int) -> None:
    """Raise this process's soft limit of open files towards `wanted` (up to the hard limit):
    each request in flight holds a connection, and the consumer a file for each."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (
            wanted if hard == resource.RLIM_INFINITY else min(wanted, hard), hard))


def _provider(credentials: Callable[[], Credentials] | Credentials) -> Any:
    if isinstance(credentials, Credentials):
        return auth.AwsCredentialsProvider.new_static(
            credentials.access_key, credentials.secret_key, credentials.token)

    def delegate() -> Any:
        c = credentials()
        return auth.AwsCredentials(c.access_key, c.secret_key, c.token)

    return auth.AwsCredentialsProvider.new_delegate(delegate)


def _name(error: BaseException | None) -> str:
    return getattr(error, "name", None) or type(error).__name__
