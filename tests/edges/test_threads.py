"""threads.Pool: an executor whose threads a process ending does not wait for."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from concurrent.futures import CancelledError

import pytest

from sftppush.threads import Pool
from tests.support.processes import wait_until


def test_results_and_errors_reach_their_futures() -> None:
    pool = Pool(2, "t")
    try:
        assert pool.submit(lambda a, b=0: a + b, 2, b=3).result(5) == 5
        with pytest.raises(ZeroDivisionError):
            pool.submit(lambda: 1 / 0).result(5)
    finally:
        pool.shutdown()


def test_no_more_threads_run_at_once_than_the_pool_has_workers() -> None:
    pool = Pool(3, "three")
    running, most = 0, 0
    lock = threading.Lock()

    def job() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.02)
        with lock:
            running -= 1

    futures = [pool.submit(job) for _ in range(20)]
    for f in futures:
        f.result(10)
    pool.shutdown()
    assert most == 3
    assert [t.name for t in threading.enumerate() if t.name.startswith("three_")] == []


def test_an_idle_thread_takes_the_next_job_instead_of_a_new_thread_starting() -> None:
    pool = Pool(4, "idle")
    try:
        for _ in range(10):
            pool.submit(lambda: None).result(5)
            # Its result is set just before the thread counts itself idle: wait for that,
            # not for a fixed 10 ms a loaded host may not give it.
            wait_until(lambda: pool._idle._value == 1, 5, "the thread back waiting")
        assert [t.name for t in threading.enumerate() if t.name.startswith("idle_")] == ["idle_0"]
    finally:
        pool.shutdown()


def test_shutdown_cancelling_futures_cancels_what_has_not_started() -> None:
    pool = Pool(1, "t")
    release = threading.Event()
    started = pool.submit(release.wait, 10)
    waiting = [pool.submit(lambda: "ran") for _ in range(3)]
    wait_until(started.running, 5, "the first job to start")  # a loaded host may take a while
    pool.shutdown(wait=False, cancel_futures=True)
    release.set()
    assert started.result(5) is True
    for f in waiting:
        with pytest.raises(CancelledError):
            f.result(5)
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(lambda: None)


def test_shutdown_without_cancelling_finishes_the_work_already_submitted() -> None:
    pool = Pool(1, "t")
    futures = [pool.submit(time.sleep, 0.01) for _ in range(5)]
    pool.shutdown(wait=True)
    assert all(f.done() and not f.cancelled() for f in futures)


def test_a_process_ends_while_a_pool_thread_still_waits() -> None:
    # The reason the pool exists: a call stuck on a store that never answers must not keep
    # a stopping process alive (concurrent.futures joins its threads at exit).
    code = ("import threading, sys; from sftppush.threads import Pool;"
            " f = Pool(2, 'stuck').submit(threading.Event().wait);"
            " print('submitted', flush=True)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0 and out == "submitted\n"
