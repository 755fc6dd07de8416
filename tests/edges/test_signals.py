"""SIGTERM/SIGINT only set flags: a second signal never deadlocks, nothing is left installed."""

from __future__ import annotations

import os
import signal
import threading
import time

from sftppush import signals


def signal_me(sig: int) -> None:
    signal.pthread_kill(threading.main_thread().ident, sig)


class LockingEvent(threading.Event):
    """An Event whose set() holds a plain lock, as threading.Event's own does, and the next
    signal lands while it holds it: a handler that calls set() again waits for itself."""

    def __init__(self, then: int | None = None) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.then = then

    def set(self) -> None:
        if not self.lock.acquire(timeout=2):
            raise AssertionError("set() re-entered from a nested signal handler: deadlock")
        try:
            if self.then is not None:
                sig, self.then = self.then, None
                signal_me(sig)
                time.sleep(0)  # a call: the nested handler runs here, lock held
            super().set()
        finally:
            self.lock.release()


def test_second_signal_during_the_first_ones_handler_is_a_cold_stop_not_a_deadlock():
    stop, cancel = LockingEvent(then=signal.SIGTERM), threading.Event()
    with signals.on_stop(stop, cancel):
        signal_me(signal.SIGINT)
        time.sleep(0)
        assert stop.is_set() and cancel.is_set()


def test_first_signal_is_a_warm_stop_and_wakes_the_fd():
    stop, cancel = threading.Event(), threading.Event()
    with signals.on_stop(stop, cancel) as stopping:
        assert not stopping.wait(0)
        threading.Timer(0.05, signal_me, [signal.SIGTERM]).start()
        started = time.monotonic()
        assert stopping.wait(5)
        assert time.monotonic() - started < 1
        assert not cancel.is_set()


def test_handlers_wakeup_fd_and_mask_are_restored_on_exit():
    before = {sig: signal.getsignal(sig) for sig in signals.STOP_SIGNALS}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    with signals.on_stop(threading.Event()) as stopping:
        fd = stopping.fileno()
        assert fd is not None
        assert signal.getsignal(signal.SIGTERM) is not before[signal.SIGTERM]
    assert {sig: signal.getsignal(sig) for sig in signals.STOP_SIGNALS} == before
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == mask
    assert signal.set_wakeup_fd(-1) == -1  # none left set
    try:
        os.fstat(fd)
        raise AssertionError("wake-up pipe left open")
    except OSError:
        pass


def test_a_signal_sent_while_blocked_arrives_once_the_handlers_are_in_place():
    stop = threading.Event()
    with signals.blocked():
        signal_me(signal.SIGTERM)  # held pending, as for a child still starting up
        with signals.on_stop(stop):
            time.sleep(0)
            assert stop.is_set()
        assert signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, [])


def test_outside_the_main_thread_nothing_is_installed():
    stop = threading.Event()
    seen: list[object] = []

    def target() -> None:
        with signals.on_stop(stop) as stopping:
            seen.append(stopping.fileno())
            seen.append(signal.getsignal(signal.SIGTERM))
            stop.set()
            seen.append(stopping.wait(0))

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=target)
    thread.start()
    thread.join(5)
    assert seen == [None, before, True]
