"""One PUT as awscrt runs it: its answer or error, its state across attempts, the body awscrt
reads, and the Python thread state kept for awscrt's threads.

Owns what crt.py's transport hands to and gets from awscrt for a single request, including
the store's error XML turned into a PutError. It never opens connections, signs or decides
what an answer means (answers.py does).
"""

from __future__ import annotations

import ctypes
import io as stdio
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_CODE_RE = re.compile(rb"<Code>([^<]{1,100})</Code>")
_MESSAGE_RE = re.compile(rb"<Message>([^<]{1,500})</Message>")


@dataclass(frozen=True)
class Answer:
    """A 2xx answer to one PUT: its headers, names in lower case."""

    headers: dict[str, str]


class PutError(Exception):
    """No 2xx answer. `status` None: no answer at all (refused, reset, timed out, DNS);
    `timed_out`: none within the whole request timeout."""

    def __init__(self, status: int | None, code: str | None, detail: str,
                 timed_out: bool = False) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.timed_out = timed_out


@dataclass(frozen=True)
class Request:
    """What one PUT sends, built once: where, its headers (each attempt signs a copy) and its
    body."""

    host: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class Heard:
    """What the store said to the attempt in flight: status, headers, an error's XML."""

    status: int | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    error_body: bytearray = field(default_factory=bytearray)


class Put:
    """One PUT's state across its attempts. Its connection is closed to stop it (a timeout
    or a cold stop); the attempt in flight then completes with an error and is not retried."""

    def __init__(self, host: str, path: str, headers: list[tuple[str, str]], body: bytes,
                 answered: Callable[[Answer | PutError], None]) -> None:
        self.sent = Request(host, path, headers, body)
        self.answered = answered
        self.request: Any = None  # awscrt's HttpRequest, signed for the attempt in flight
        self.attempts = 1
        self.started = 0.0  # time.monotonic() once it had room
        self.stopped = False
        self.timed_out = False
        self.heard = Heard()
        self._connection: Any = None
        self._lock = threading.Lock()

    @property
    def host(self) -> str:
        return self.sent.host

    @property
    def path(self) -> str:
        return self.sent.path

    @property
    def headers(self) -> list[tuple[str, str]]:
        return self.sent.headers

    @property
    def body(self) -> bytes:
        return self.sent.body

    @property
    def status(self) -> int | None:
        return self.heard.status

    @property
    def response(self) -> list[tuple[str, str]]:
        return self.heard.headers

    @property
    def error_body(self) -> bytearray:
        return self.heard.error_body

    def attach(self, connection: Any) -> bool:
        with self._lock:
            if self.stopped:
                return False
            self._connection = connection
            self.heard = Heard()
            return True

    def detach(self) -> Any:
        with self._lock:
            connection, self._connection = self._connection, None
            return connection

    def cancel(self, timed_out: bool = False) -> None:
        with self._lock:
            self.stopped = True
            self.timed_out = self.timed_out or timed_out
            connection = self._connection
        if connection is not None:
            connection.close()

    def dropped(self, timeout: float) -> PutError:
        return PutError(None, None, f"no answer within {timeout:g}s" if self.timed_out
                        else "cancelled", timed_out=self.timed_out)

    def on_response(self, status_code: int, headers: list[tuple[str, str]],
                    **_: Any) -> None:
        keep_thread_state()
        self.heard.status, self.heard.headers = status_code, headers

    def on_body(self, chunk: bytes, **_: Any) -> None:
        if len(self.heard.error_body) < 4096:  # an error's XML; a PUT's answer has no body
            self.heard.error_body += chunk


_kept = threading.local()  # lives in a thread's Python thread state: set once it is kept


def keep_thread_state() -> None:
    """Give the CRT thread running this callback a Python thread state for its whole life.

    awscrt enters Python from its own threads with PyGILState_Ensure, which makes a thread
    state (and maps a 16 KiB frame stack) when the thread has none, and frees it all again
    at the matching Release: several times per PUT (body read, headers, done), each
    munmap costing the other core an interrupt. One Ensure that is never released keeps the
    state: later callbacks only take the GIL. Runs with the GIL held. The mark is a
    thread-local, not the thread's ident: idents are reused by threads started later.
    Called where a PUT enters Python from a CRT thread and only there: the body's read, the
    answer's headers and the stream's completion.
    """
    if not getattr(_kept, "state", False):
        ctypes.pythonapi.PyGILState_Ensure()
        _kept.state = True


class Body(stdio.BytesIO):
    """A PUT's body as awscrt reads it (readinto1, from a CRT thread)."""

    def readinto1(self, buffer: Any) -> int:
        keep_thread_state()
        return super().readinto1(buffer)


def failure(status: int, body: bytes) -> PutError:
    code_match = _CODE_RE.search(body)
    code = code_match.group(1).decode(errors="replace") if code_match else None
    message = _MESSAGE_RE.search(body)  # the store's own words, as boto3 shows them
    return PutError(status, code, message.group(1).decode(errors="replace") if message
                    else f"HTTP {status}")
