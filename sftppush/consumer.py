"""A consumer process: worker threads that claim entries, run the pipeline and settle them.

Owns claiming in batches with a lease (renewed while uploads run), what an outcome means for
an entry (ack in batches, retry later with a growing capped delay, fail at max_attempts,
release on stop), `--drain` and SIGTERM. It must never decide S3 or file details itself and
never make an entry failed for a transient error.
"""

from __future__ import annotations

import logging
import os
import queue as stdqueue
import random
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sftppush import pipeline
from sftppush.config import Config
from sftppush.errors import PermanentError, TransientError
from sftppush.queue import Entry, Queue
from sftppush.s3 import RetryPolicy, UploadCancelled, Uploader, make_client

log = logging.getLogger("sftppush.consumer")


@dataclass(frozen=True)
class Tuning:
    """Timing knobs that are not operator config; tests pass small values."""

    retry: RetryPolicy = field(default_factory=RetryPolicy)  # in place, per S3 call
    transient_delay: float = 5.0        # back to pending after in-place retries: first delay
    transient_delay_max: float = 300.0  # ... doubling up to this
    permanent_delay: float = 30.0       # between attempts of a permanent error
    permanent_delay_max: float = 3600.0
    poll_interval: float = 0.2          # idle wait between claims
    claim_batch: int = 0                # 0 = 2 x workers
    parts_in_memory: int = 2            # per large upload: buffers of part_size_mb
    nlink_retry_after: float = 2.0      # a second hard link: maybe a link+unlink rename
    connect_timeout: float = 10.0
    read_timeout: float = 60.0


@dataclass
class Claim:
    """One entry this process holds, with its lease as this process last renewed it."""

    entry: Entry
    expires: float
    lost: threading.Event = field(default_factory=threading.Event)


def run(cfg: Config, *, workers: int | None = None, drain: bool = False,
        stop: threading.Event | None = None, tuning: Tuning | None = None) -> None:
    """Consume until `stop` is set (or SIGTERM/SIGINT), or until drained with `drain`."""
    tuning = tuning or Tuning()
    workers = workers or cfg.consumer.workers
    client = make_client(cfg.defaults, cfg.consumer.s3,
                         pool_size=workers * (tuning.parts_in_memory + 1),
                         connect_timeout=tuning.connect_timeout, read_timeout=tuning.read_timeout)
    uploader = Uploader(client, cfg.consumer.s3, tuning.retry, tuning.parts_in_memory)
    cancel = threading.Event()
    own_signals = stop is None
    stop = stop or threading.Event()
    if own_signals and threading.current_thread() is threading.main_thread():
        _install_signals(stop, cancel)
    with Queue(cfg.queue.path) as q:
        Consumer(cfg, q, uploader, workers, tuning, stop, cancel).loop(drain)


def _install_signals(stop: threading.Event, cancel: threading.Event) -> None:
    def handler(signum: int, frame: Any) -> None:
        # First signal: warm stop (finish in-flight uploads). Second: abandon them.
        (cancel if stop.is_set() else stop).set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


class Consumer:
    """The loop of one process: claim → hand to worker threads → settle outcomes."""

    def __init__(self, cfg: Config, q: Queue, uploader: Uploader, workers: int, tuning: Tuning,
                 stop: threading.Event, cancel: threading.Event) -> None:
        self.cfg = cfg
        self.queue = q
        self.uploader = uploader
        self.workers = workers
        self.tuning = tuning
        self.stop = stop
        self.cancel = cancel
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self.lease = cfg.queue.lease_seconds
        self.batch = tuning.claim_batch or 2 * workers
        self.inflight: dict[int, Claim] = {}
        self.outcomes: stdqueue.SimpleQueue[tuple[Claim, Any]] = stdqueue.SimpleQueue()
        self.transient_streak: dict[int, int] = {}  # entry id -> transient failures in a row

    def loop(self, drain: bool) -> None:
        log.info("consumer started owner=%s workers=%d queue=%s", self.owner, self.workers,
                 self.cfg.queue.path)
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="worker")
        next_renew = time.monotonic() + self.lease / 3
        try:
            while not self.stop.is_set():
                claimed = self._claim(pool)
                if time.monotonic() >= next_renew:
                    self._renew()
                    next_renew = time.monotonic() + self.lease / 3
                if drain and not claimed and not self.inflight and self._drained():
                    log.info("drained owner=%s", self.owner)
                    break
                self._settle(wait=0 if claimed == self.batch else self.tuning.poll_interval)
            # Warm stop: unstarted entries are released by the workers; running ones finish.
            while self.inflight:
                self._settle(wait=self.tuning.poll_interval)
                if time.monotonic() >= next_renew and not self.cancel.is_set():
                    self._renew()
                    next_renew = time.monotonic() + self.lease / 3
        finally:
            pool.shutdown(wait=True)
            self._settle(wait=0)
            log.info("consumer stopped owner=%s", self.owner)

    def _claim(self, pool: ThreadPoolExecutor) -> int:
        room = self.batch - len(self.inflight)
        if room <= 0:
            return 0
        entries = self.queue.claim(self.owner, self.lease, limit=room)
        expires = time.time() + self.lease
        for entry in entries:
            claim = Claim(entry, expires)
            self.inflight[entry.id] = claim
            pool.submit(self._work, claim)
        return len(entries)

    def _work(self, claim: Claim) -> None:
        if self.stop.is_set():
            self.outcomes.put((claim, UploadCancelled("stopping")))
            return
        try:
            result: Any = pipeline.process(claim.entry, self.cfg, self.uploader,
                                           still_ours=lambda: self._still_ours(claim),
                                           cancel=self.cancel,
                                           nlink_retry_after=self.tuning.nlink_retry_after)
        except Exception as exc:  # every failure is settled by the loop, none kills a worker
            result = exc
        self.outcomes.put((claim, result))

    def _still_ours(self, claim: Claim) -> bool:
        """Checked just before a delete: the lease must be ours with time to spare."""
        if claim.lost.is_set():
            return False
        if time.time() < claim.expires - min(5.0, self.lease / 4):
            return True
        lost = self.queue.renew([claim.entry], self.lease)
        if lost:
            claim.lost.set()
            return False
        claim.expires = time.time() + self.lease
        return True

    def _renew(self) -> None:
        claims = [c for c in list(self.inflight.values()) if not c.lost.is_set()]
        if not claims:
            return
        lost = {e.id for e in self.queue.renew([c.entry for c in claims], self.lease)}
        expires = time.time() + self.lease
        for c in claims:
            if c.entry.id in lost:
                c.lost.set()
            else:
                c.expires = expires

    def _drained(self) -> bool:
        stats = self.queue.stats()
        return stats.pending == 0 and stats.claimed == 0

    def _settle(self, wait: float) -> None:
        """Apply every outcome that is ready (waiting up to `wait` for the first)."""
        ready: list[tuple[Claim, Any]] = []
        try:
            ready.append(self.outcomes.get(timeout=wait) if wait > 0 else
                         self.outcomes.get_nowait())
            while True:
                ready.append(self.outcomes.get_nowait())
        except stdqueue.Empty:
            pass
        done: list[tuple[Entry, str | None]] = []
        for claim, result in ready:
            del self.inflight[claim.entry.id]
            if isinstance(result, pipeline.Result) and not result.hold:
                self.transient_streak.pop(claim.entry.id, None)
                done.append((claim.entry, result.note))
            else:
                self._settle_one(claim.entry, result)
        if done:
            for entry in self.queue.ack_many(done):
                self._lease_lost(entry, "ack")

    def _settle_one(self, entry: Entry, result: Any) -> None:
        q = self.queue
        if isinstance(result, pipeline.Result):  # held by min_age_seconds
            ok = q.retry_later(entry, "held: younger than min_age_seconds", result.hold,
                               count_attempt=False)
        elif isinstance(result, pipeline.LeaseLost):
            self._lease_lost(entry, "delete")
            return
        elif isinstance(result, UploadCancelled):
            ok = q.release(entry)
            log.info("released id=%d path=%s", entry.id, entry.display_path)
        elif isinstance(result, TransientError):
            streak = self.transient_streak.get(entry.id, 0) + 1
            self.transient_streak[entry.id] = streak
            delay = min(self.tuning.transient_delay_max,
                        self.tuning.transient_delay * 2 ** (streak - 1))
            delay *= random.uniform(0.8, 1.2)
            ok = q.retry_later(entry, str(result), delay, count_attempt=False)
            log.warning("retry later id=%d path=%s delay=%.1f error=%s", entry.id,
                        entry.display_path, delay, result)
        else:
            if not isinstance(result, PermanentError):
                log.error("unexpected error id=%d path=%s", entry.id, entry.display_path,
                          exc_info=result)
                result = PermanentError(f"internal error: {type(result).__name__}: {result}")
            attempts = entry.attempts + 1
            if attempts >= self.cfg.consumer.max_attempts:
                ok = q.fail(entry, str(result))
                log.error("failed id=%d path=%s attempts=%d error=%s", entry.id,
                          entry.display_path, attempts, result)
            else:
                delay = result.retry_after if result.retry_after is not None else min(
                    self.tuning.permanent_delay_max,
                    self.tuning.permanent_delay * 2 ** (attempts - 1))
                ok = q.retry_later(entry, str(result), delay, count_attempt=True)
                log.warning("retry later id=%d path=%s attempts=%d delay=%.1f error=%s",
                            entry.id, entry.display_path, attempts, delay, result)
        if not ok:
            self._lease_lost(entry, "settle")

    def _lease_lost(self, entry: Entry, at: str) -> None:
        log.warning("lease lost id=%d path=%s at=%s", entry.id, entry.display_path, at)
