"""SIGTERM/SIGINT for every long-running command: one context that turns them into flags,
and one driver that runs a command's loop until its flag is set.

Owns installing the handlers (main thread only), the self-pipe that ends a loop's wait, and
putting back the previous handlers, wake-up fd and signal mask; `Flag`, a stop event a loop
can poll() on with its other file descriptors; `drive()`, huey's initialize/loop/shutdown
shape. A handler only sets events, never logs or works; as `Event.set()` takes the event's
lock, the main thread must never sit in `stop.wait()`/`cancel.wait()` (a handler runs between
any two of its bytecodes): it waits on a file descriptor (`Stopping.wait`, `Flag.fileno`).
"""

from __future__ import annotations

import os
import select
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopping:
    """What `on_stop()` yields: a file descriptor that turns readable when a signal came.

    `fileno()` is None where no handler was installed (outside the main thread): then only
    someone setting `stop` ends the caller's loop.
    """

    def __init__(self, stop: threading.Event, fd: int | None) -> None:
        self.stop = stop
        self._fd = fd

    def fileno(self) -> int | None:
        return self._fd

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` s for `stop`; True if it is set.

        With handlers installed this waits on the pipe, never in `stop.wait()`: that holds
        the event's lock, and a handler's `stop.set()` on this same thread would wait for it
        forever.
        """
        if self._fd is None:
            return self.stop.wait(timeout)
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        if poller.poll(timeout * 1000):
            drain(self._fd)
        return self.stop.is_set()


class Flag(threading.Event):
    """A stop event whose `fileno()` turns readable when it is set, so that a loop waits on
    it in the same poll() as its other work, whoever sets it: a signal handler (one
    non-blocking write, which never waits) or another thread."""

    def __init__(self) -> None:
        super().__init__()
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def set(self) -> None:
        super().set()
        with suppress(BlockingIOError, OSError):  # full (already readable) or closed
            os.write(self._write, b"\0")

    def fileno(self) -> int:
        return self._read

    def __del__(self) -> None:
        for fd in (self._read, self._write):
            with suppress(OSError):
                os.close(fd)


def drive(stop: threading.Event, initialize: Callable[[], None], loop: Callable[[], object],
          shutdown: Callable[[bool], None]) -> None:
    """Every long-running process's shape (huey's consumer): `initialize()`, then `loop()`
    (one round, waiting at most a moment) until `stop` is set or it returns False, and
    `shutdown(ended)` whatever happened; `ended` is False when a round raised."""
    initialize()
    ended = False
    try:
        while not stop.is_set() and loop() is not False:
            pass
        ended = True
    finally:
        shutdown(ended)


class _Handler:
    """First signal sets `stop`, any later one `cancel` (a cold stop), if there is one.

    `Event.set()` takes the event's lock. A second signal arriving while the first one's
    `set()` holds it runs this handler again, nested, on the same thread: it must not call
    `set()` there (that waits forever for itself). It leaves the signal to the outer call.
    """

    def __init__(self, stop: threading.Event, cancel: threading.Event | None) -> None:
        self.stop = stop
        self.cancel = cancel
        self.pending: list[int] = []
        self.running = False

    def __call__(self, signum: int, _frame: FrameType | None) -> None:
        self.pending.append(signum)
        while self.pending and not self.running:
            self.running = True
            try:
                while self.pending:
                    self.pending.pop()
                    if not self.stop.is_set():
                        self.stop.set()
                    elif self.cancel is not None:
                        self.cancel.set()
            finally:
                self.running = False  # a signal taken in after the inner loop: go round


@contextmanager
def on_stop(stop: threading.Event,
            cancel: threading.Event | None = None) -> Iterator[Stopping]:
    """Within the block, SIGTERM/SIGINT set `stop` (then `cancel`) and wake `fileno()`.

    A no-op outside the main thread, where Python cannot install handlers. SIGTERM/SIGINT
    are unblocked inside the block: a parent may start us with them blocked (see
    `blocked()`), so that a stop sent during start-up waits for these handlers.
    """
    if threading.current_thread() is not threading.main_thread():
        yield Stopping(stop, None)
        return
    read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    handler = _Handler(stop, cancel)
    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    # The C-level handler writes here the moment a signal lands, so a poll() about to block
    # returns at once; the Python handler alone runs only after that poll() returned.
    old_wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    old_mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    try:
        yield Stopping(stop, read_fd)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        signal.set_wakeup_fd(old_wakeup)
        for sig, old in previous.items():
            signal.signal(sig, old)
        os.close(read_fd)
        os.close(write_fd)


@contextmanager
def blocked() -> Iterator[None]:
    """SIGTERM/SIGINT held pending on this thread, e.g. around starting a child process.

    A child inherits the mask, so a stop sent before its `on_stop()` is in place is not
    lost to a half-started process: it is delivered to the handlers once they are.
    """
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def drain(fd: int) -> None:
    """Empty a non-blocking wake-up pipe, so that a poll() on it waits again."""
    with suppress(BlockingIOError):
        while os.read(fd, 512):
            pass
