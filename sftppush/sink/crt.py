"""awscrt as a transport for the sink: many concurrent single-request PUTs from one process.

Owns sending PUTs over awscrt's HTTP connections (the address, signing and the pool of kept-alive
connections are crtlink.py's), the in-flight limits and the line of PUTs waiting for room (a
window that follows the link: inflight.py), the request timeout and quick resends on a failed
connection (one PUT's own state is crtput.py's). It sends the
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
from typing import TYPE_CHECKING, Any

from sftppush.sink.crtlink import Credentials, Endpoint, Pool, Signer
from sftppush.sink.crtput import Answer, Body, Put, PutError, failure, keep_thread_state
from sftppush.sink.inflight import Window

if TYPE_CHECKING:
    from sftppush.sink.single import Single

try:
    from awscrt import http
except ImportError:  # the pure-boto3 path works without it
    http = None

log = logging.getLogger("sftppush.crt")

# One PUT can carry at most 5 GiB.
MAX_BODY = 5 * 1024**3
FLOOR = 32  # the least PUTs in flight rising latency shrinks the window to


def available() -> bool:
    """True when awscrt is installed, so the sink may use this transport."""
    return http is not None


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
    `in_flight` (0: at `max_in_flight`, where s5cmd's 256 workers stay) and follows the link
    between FLOOR (or `in_flight`, if lower) and `max_in_flight` (inflight.Window: it grows
    while latency holds, shrinks when it rises or when the store asks to slow down,
    `throttled()`). Starting at the top costs a store on loopback some queueing until the
    window has shrunk; starting at 32 cost a far one the first seconds of a burst (on a host
    whose CPU the store and the delay line share, latency rose while the window grew, and
    4,000 files at 100 ms went 10-15% slower than starting at 256).
    Connections are kept alive for the next request, as many as the window. A request with
    no outcome after `request_timeout` seconds has its connection closed and fails with status
    None, as does one whose connection failed `max_retries` + 1 times. An answer, 5xx included,
    is handed back as it came.
    """

    def __init__(self, *, region: str, credentials: Callable[[], Credentials] | Credentials,
                 endpoint_url: str | None = None, max_body: int = MAX_BODY,
                 in_flight: int = 0, max_in_flight: int = 256,
                 max_in_flight_bytes: int = 64 * 2**20,
                 max_retries: int = 2, connect_timeout_ms: int = 3000,
                 request_timeout: float = 60.0, ca_file: str | None = None) -> None:
        if not available():
            raise RuntimeError("awscrt is not installed (a dependency: pip install awscrt)")
        self._endpoint = Endpoint(region, endpoint_url, connect_timeout_ms, ca_file)
        self._signer = Signer(region, credentials)
        self.max_body = min(MAX_BODY, max_body)
        self.max_retries = max_retries
        self.timeout = request_timeout
        start = in_flight or max_in_flight
        self._slots = Slots(Window(min(FLOOR, start), max_in_flight, start=start),
                            max_in_flight_bytes)
        self._pool = Pool(lambda: self._slots.window.size)
        self._live = Live(request_timeout)
        self._closed = False
        _allow_open_files(4 * max_in_flight + 256)

    @property
    def window(self) -> Window:
        """The window of requests in flight (inflight.Window)."""
        return self._slots.window

    @property
    def connections(self) -> int:
        """Connections opened, ever (one per PUT that found no idle one kept alive)."""
        return self._pool.misses

    @property
    def puts(self) -> int:
        """PUTs started, ever."""
        return self._slots.started

    def virtual_hosted(self) -> bool:
        """True when buckets are addressed as host names (AWS itself)."""
        return self._endpoint.virtual_hosted()

    def put(self, bucket: str, key: str, body: bytes, headers: list[tuple[str, str]],
            answered: Callable[[Answer | PutError], None]) -> None:
        """Start one PUT of `body` with `headers` (Host and Content-Length are added), or
        queue it to start as room comes; blocks while the line is full. `answered` is called
        once, from a CRT thread (or this one), with the Answer or the PutError; it must not
        raise."""
        if len(body) > self.max_body:
            raise ValueError(f"body of {len(body)} bytes is too big for one PUT")
        if self._closed:
            raise RuntimeError("CrtTransport is closed")
        host, path = self._endpoint.address(bucket, key)
        job = Put(host, path, [*headers, ("Host", host), ("Content-Length", str(len(body)))],
                   body, answered)
        if self._slots.take(job):
            self._start(job)

    def send(self, single: Single, answered: Callable[[Answer | PutError], None]) -> None:
        """Start the single PUT `single` (single.py) as `put()` does: the sink's one
        interface to a transport, as s3.Boto3Put's."""
        self.put(single.bucket, single.key, single.body, single.headers(), answered)

    def wait_room(self, size: int, timeout: float) -> bool:
        """Wait up to `timeout` seconds until a `put()` of `size` bytes would not block."""
        return self._slots.wait_room(size, timeout)

    def in_flight(self) -> int:
        """How many PUTs may run at once now: the window's size."""
        return self._slots.window.size

    def throttled(self) -> None:
        """The store asked to slow down (its answer to a PUT of ours): fewer in flight."""
        self._slots.throttled()

    def close(self, timeout: float = 30.0, abandon: bool = False) -> None:
        """Wait for running PUTs (or, with `abandon`, cancel them and those waiting), then
        close the idle connections (those of running PUTs close when they end)."""
        self._closed = True
        if abandon:
            for job in self._slots.drop_waiting():
                _answer(job, PutError(None, None, "cancelled"))
            for job in self._live.jobs():
                job.cancel()
        self._slots.wait_idle(timeout)
        self._live.stop()
        window = self._slots.window
        if self.puts:  # a consumer that never started says nothing more than its error
            log.info("fast path closed puts=%d window=%d largest=%d throttles=%d"
                     " connections=%d", self.puts, window.size, window.largest,
                     window.throttles, self.connections)
        self._pool.close()

    # --- one PUT: sign, connect (or reuse), send, answer; again on a failed connection ---

    def _start(self, job: Put) -> None:
        job.started = time.monotonic()
        self._live.add(job)
        self._sign(job)

    def _sign(self, job: Put) -> None:
        job.request = http.HttpRequest("PUT", job.path, http.HttpHeaders(job.headers),
                                       Body(job.body))
        try:
            signing = self._signer.sign(job.request)
        except BaseException as exc:
            self._end(job, PutError(None, None, f"signing: {exc}"))
            return
        signing.add_done_callback(lambda f: self._signed(job, f))

    def _signed(self, job: Put, signing: Future[Any]) -> None:
        # This and _connected may run on the calling thread (a future done before its
        # callback was added): they leave thread states alone.
        if signing.exception() is not None:
            self._end(job, PutError(None, None, f"signing: {_name(signing.exception())}"))
            return
        connection = self._pool.take(job.host)
        if connection is not None:
            self._send(job, connection)
            return
        try:
            connecting = self._endpoint.connect(job.host)
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
            self._pool.give_back(job.host, connection)
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
        if job.attempts <= self.max_retries and not job.stopped and not self._live.stopping():
            job.attempts += 1
            self._sign(job)  # a fresh request: its body stream starts again at 0
        else:
            self._end(job, job.dropped(self.timeout) if job.stopped else failed)

    def _end(self, job: Put, outcome: Answer | PutError) -> None:
        if not self._live.remove(job):
            return  # answered already
        answered = isinstance(outcome, Answer) or outcome.status is not None
        for waiting in self._slots.release(
                job, time.monotonic() - job.started if answered else None):
            self._start(waiting)  # room it made, for the next in line
        _answer(job, outcome)


class Slots:
    """The in-flight limits: a window of requests, a budget of body bytes, and the line of
    PUTs taken but not started (at most a window's worth, within the same budget). One body
    alone may exceed the budget. Thread-safe; it starts nothing itself: `take()` and
    `release()` say which PUTs may start."""

    def __init__(self, window: Window, max_bytes: int) -> None:
        self.window = window
        self.max_bytes = max_bytes
        self.room = threading.Condition()
        self.running = [0, 0, 0]  # requests, their body bytes, bytes waiting
        self.waiting: collections.deque[Put] = collections.deque()
        self.started = 0          # ever

    def take(self, job: Put) -> bool:
        """Take `job` (blocking while the line is full); True: it may start now."""
        with self.room:
            self.room.wait_for(lambda: self._takes(len(job.body)))
            if not self.waiting and self._fits(len(job.body)):
                self._reserve(job)
                return True
            self.waiting.append(job)
            self.running[2] += len(job.body)
            return False

    def release(self, job: Put, latency: float | None) -> list[Put]:
        """`job` ended (`latency`: its answer's, None without one); the PUTs that may start
        in the room it made."""
        with self.room:
            if latency is not None:
                self.window.answered(latency, self.running[0])
            self.running[0] -= 1
            self.running[1] -= len(job.body)
            starting = []
            while self.waiting and self._fits(len(self.waiting[0].body)):
                waiting = self.waiting.popleft()
                self.running[2] -= len(waiting.body)
                self._reserve(waiting)
                starting.append(waiting)
            self.room.notify_all()
            return starting

    def wait_room(self, size: int, timeout: float) -> bool:
        with self.room:
            return self.room.wait_for(lambda: self._takes(size), timeout)

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds until nothing runs or waits."""
        with self.room:
            return self.room.wait_for(lambda: self.running[0] == 0 and not self.waiting,
                                      timeout)

    def drop_waiting(self) -> list[Put]:
        """Empty the line; what was in it."""
        with self.room:
            waiting, self.waiting = list(self.waiting), collections.deque()
            self.running[2] = 0
            self.room.notify_all()
            return waiting

    def throttled(self) -> None:
        with self.room:
            cuts = self.window.cuts
            self.window.throttled()
            if self.window.cuts > cuts:
                log.debug("in flight cut window=%d throttles=%d", self.window.size,
                          self.window.throttles)

    def _fits(self, size: int) -> bool:
        """A body of `size` may start now (called with room held)."""
        return self.running[0] == 0 or (
            self.running[0] < self.window.size and self.running[1] + size <= self.max_bytes)

    def _takes(self, size: int) -> bool:
        """A PUT of `size` would start now or wait in the line (called with room held)."""
        if not self.waiting and self._fits(size):
            return True
        return len(self.waiting) < self.window.size and \
            self.running[1] + self.running[2] + size <= self.max_bytes

    def _reserve(self, job: Put) -> None:
        self.running[0] += 1
        self.running[1] += len(job.body)
        self.started += 1


class Live:
    """Running PUTs and their deadlines; a watchdog thread cancels those overdue."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.deadlines: dict[Put, float] = {}
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.watchdog = threading.Thread(target=self._cancel_overdue, name="crt-watchdog",
                                         daemon=True)
        self.watchdog.start()

    def add(self, job: Put) -> None:
        with self.lock:
            self.deadlines[job] = job.started + self.timeout

    def remove(self, job: Put) -> bool:
        """False: `job` was not running (answered already)."""
        with self.lock:
            return self.deadlines.pop(job, None) is not None

    def jobs(self) -> list[Put]:
        with self.lock:
            return list(self.deadlines)

    def stopping(self) -> bool:
        return self.stopped.is_set()

    def stop(self) -> None:
        self.stopped.set()
        self.watchdog.join(5.0)

    def _cancel_overdue(self) -> None:
        while not self.stopped.wait(min(1.0, self.timeout / 4)):
            now = time.monotonic()
            with self.lock:
                overdue = [job for job, deadline in self.deadlines.items() if now > deadline]
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


def _name(error: BaseException | None) -> str:
    return getattr(error, "name", None) or type(error).__name__
