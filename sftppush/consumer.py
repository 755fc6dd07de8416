"""A consumer process: one loop that claims entries, runs them and settles their outcomes.

Small files go through the awscrt lane (fastlane.py, many PUTs in flight from this loop) when
awscrt is importable; others through worker threads running the pipeline with boto3. Owns
claiming in batches with a lease (renewed while uploads run), waking when the queue is written
(wake.py), what an outcome means for an entry (ack in batches, retry later with a growing
capped delay, fail at max_attempts, release on stop), `--drain` and SIGTERM. It must never
decide S3 or file details itself and never make an entry failed for a transient error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue as stdqueue
import random
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sftppush import crt, memory, pipeline, signals
from sftppush.config import Config
from sftppush.errors import PermanentError, TransientError
from sftppush.fastlane import Lane, Sent
from sftppush.queue import Entry, Queue
from sftppush.s3 import RetryPolicy, UploadCancelled, Uploader, make_client
from sftppush.wake import watch_or_none

log = logging.getLogger("sftppush.consumer")

WAKE_RECHECK = 0.005


@dataclass(frozen=True)
class Tuning:
    """Timing knobs that are not operator config; tests pass small values."""

    retry: RetryPolicy = field(default_factory=RetryPolicy)  # in place, per S3 call
    transient_delay: float = 5.0        # back to pending after in-place retries: first delay
    transient_delay_max: float = 300.0  # ... doubling up to this
    outage_after: int = 3               # transient outcomes in a row (no success between) that
                                        # pause new claims, for the same growing delays
    permanent_delay: float = 30.0       # between attempts of a permanent error
    permanent_delay_max: float = 3600.0
    poll_interval: float = 0.2          # idle: "anything due?" (read-only) at least this often
    claim_batch: int = 0                # most entries held at once; 0 = 64 with the lane, else
                                        # 2 x workers. Claims wait until half of it is free.
    ack_batch: int = 64                 # acks are written together, up to this many ...
    ack_delay: float = 0.02             # ... or after this long
    crt: bool = True                    # small files through awscrt when it is importable
    crt_in_flight: int = 32             # concurrent PUTs of the lane
    lane_max_body: int = 8 * 2**20      # decompressed bytes; larger files stream via boto3
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
    memory.fix_mmap_threshold()
    client = make_client(cfg.defaults, cfg.consumer.s3,
                         pool_size=workers * (tuning.parts_in_memory + 1),
                         connect_timeout=tuning.connect_timeout, read_timeout=tuning.read_timeout)
    uploader = Uploader(client, cfg.consumer.s3, tuning.retry, tuning.parts_in_memory)
    cancel = threading.Event()
    own_signals = stop is None
    stop = stop or threading.Event()
    restore_signals = contextlib.ExitStack()
    if own_signals:  # first signal: warm stop (finish in-flight uploads); second: abandon them
        restore_signals.enter_context(signals.on_stop(stop, cancel))
    lane = None
    if tuning.crt and crt.available():
        lane = Lane(cfg, crt.CrtUploader.from_config(
            cfg.defaults, cfg.consumer.s3, max_in_flight=tuning.crt_in_flight,
            connect_timeout_ms=int(tuning.connect_timeout * 1000),
            request_timeout=tuning.read_timeout),
            uploader, tuning.lane_max_body, tuning.nlink_retry_after)
    memory.release_free_memory()
    try:
        with Queue(cfg.queue.path) as q:
            Consumer(cfg, q, uploader, workers, tuning, stop, cancel, lane).loop(drain)
    finally:
        if lane is not None:
            lane.close()
        restore_signals.close()


class Consumer:
    """The loop of one process: claim → hand to worker threads → settle outcomes."""

    def __init__(self, cfg: Config, q: Queue, uploader: Uploader, workers: int, tuning: Tuning,
                 stop: threading.Event, cancel: threading.Event, lane: Lane | None = None) -> None:
        self.cfg = cfg
        self.queue = q
        self.uploader = uploader
        self.workers = workers
        self.tuning = tuning
        self.stop = stop
        self.cancel = cancel
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self.lease = cfg.queue.lease_seconds
        self.lane = lane
        self.batch = tuning.claim_batch or (64 if lane else 2 * workers)
        self.inflight: dict[int, Claim] = {}
        # Outcomes of workers and lane PUTs, and None: "the queue was written, look again".
        self.outcomes: stdqueue.SimpleQueue[tuple[Claim, Any] | None] = stdqueue.SimpleQueue()
        self.woken = False
        self.woken_at = 0.0
        self.acks: list[tuple[Claim, str | None]] = []
        self.acks_since = 0.0
        self.transient_streak: dict[int, int] = {}  # entry id -> transient failures in a row
        self.next_renew = 0.0
        self.pool: ThreadPoolExecutor | None = None
        # The store as this process sees it: transient outcomes since the last success, and
        # while it seems down, no new claims until `paused_until` (monotonic).
        self.failing = 0
        self.pauses = 0
        self.paused_until = 0.0

    def loop(self, drain: bool) -> None:
        log.info("consumer started owner=%s workers=%d queue=%s", self.owner, self.workers,
                 self.cfg.queue.path)
        pool = self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="worker")
        watch = watch_or_none(self.queue.file, self._wake)
        self.next_renew = time.monotonic() + self.lease / 3
        try:
            while not self.stop.is_set():
                claimed = self._claim()
                self._renew_if_due()
                if drain and not claimed and not self.inflight and self._drained():
                    log.info("drained owner=%s", self.owner)
                    break
                self._settle(wait=0 if claimed == self.batch else self._idle_wait())
            # Warm stop: unstarted entries are released by the workers; running ones finish.
            while self.inflight:
                self._settle(wait=self.tuning.poll_interval)
                if not self.cancel.is_set():
                    self._renew_if_due()
        finally:
            if watch is not None:
                watch.close()
            pool.shutdown(wait=True)
            self.pool = None
            self._settle(wait=0)
            self._flush_acks()
            log.info("consumer stopped owner=%s", self.owner)

    def _wake(self) -> None:
        if not self.woken:  # one wake-up in the queue is enough
            self.woken = True
            self.outcomes.put(None)

    def _idle_wait(self) -> float:
        # The WAL is written a moment before the commit is visible to readers: just after a
        # wake-up, look again shortly rather than a whole poll interval later.
        if time.monotonic() - self.woken_at < WAKE_RECHECK * 3:
            return WAKE_RECHECK
        return self.tuning.poll_interval

    def _claim(self) -> int:
        if self.paused_until and time.monotonic() < self.paused_until:
            return 0  # the store seems down: the backlog waits in the queue, untouched
        room = self.batch - len(self.inflight)
        # Claim in batches: wait until half the batch is free (or nothing is held), and ask
        # the read-only "anything due?" first, so an idle consumer writes nothing.
        if room <= 0 or (self.inflight and room < self.batch // 2) or not self.queue.has_due():
            return 0
        entries = self.queue.claim(self.owner, self.lease, limit=room)
        expires = time.time() + self.lease
        claims = [Claim(entry, expires) for entry in entries]
        # All held before any starts: _start may wait for a lane slot, renewing what we hold.
        self.inflight.update((c.entry.id, c) for c in claims)
        for claim in claims:
            if self.stop.is_set() or not self._start(claim):
                self.pool.submit(self._work, claim)
        return len(entries)

    def _start(self, claim: Claim) -> bool:
        """Start `claim` in the lane if it fits there; False: a worker thread takes it."""
        if self.lane is None or not self.lane.accepts(claim.entry):
            return False
        # All slots busy (a slow or stalled store): wait here, but keep every lease we hold
        # renewed meanwhile; a stalled PUT times out in the CRT client, so a slot comes.
        while not self.lane.wait_room(self.tuning.poll_interval):
            self._renew_if_due()
        return self.lane.start(claim.entry, lambda outcome: self.outcomes.put((claim, outcome)))

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

    def _complete(self, claim: Claim, sent: Sent) -> None:
        try:
            result: Any = self.lane.complete(sent, lambda: self._still_ours(claim))
        except Exception as exc:
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

    def _renew_if_due(self) -> None:
        if time.monotonic() >= self.next_renew:
            self._renew()
            self.next_renew = time.monotonic() + self.lease / 3

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
        self._flush_acks()
        stats = self.queue.stats()
        return stats.pending == 0 and stats.claimed == 0

    def _settle(self, wait: float) -> None:
        """Apply every outcome that is ready (waiting up to `wait` for the first)."""
        if self.acks:  # acks wait at most ack_delay for company
            wait = max(0.0, min(wait, self.acks_since + self.tuning.ack_delay - time.monotonic()))
        ready: list[tuple[Claim, Any] | None] = []
        try:
            ready.append(self.outcomes.get(timeout=wait) if wait > 0 else
                         self.outcomes.get_nowait())
            while True:
                ready.append(self.outcomes.get_nowait())
        except stdqueue.Empty:
            pass
        for item in ready:
            if item is None:
                self.woken = False
                self.woken_at = time.monotonic()
                continue
            claim, result = item
            if isinstance(result, Sent):
                # A boto3 HEAD waits on S3, with retries: never in this loop while it runs.
                if self.pool is not None and self.lane.needs_head(result):
                    self.pool.submit(self._complete, claim, result)
                    continue
                try:
                    result = self.lane.complete(result, lambda c=claim: self._still_ours(c))
                except Exception as exc:
                    result = exc
            # A claim this process took again after its lease ran out (e.g. while stopped) has
            # a new owner token; the older run's outcome is stale and must not drop the new
            # one. Its queue writes fail on the old token and are logged as lease lost.
            if self.inflight.get(claim.entry.id) is claim:
                del self.inflight[claim.entry.id]
            if isinstance(result, pipeline.Result) and not result.hold:
                self.transient_streak.pop(claim.entry.id, None)
                if result.uploaded is not None:
                    self._store_answered()
                if not self.acks:
                    self.acks_since = time.monotonic()
                self.acks.append((claim, result.note))
            else:
                self._settle_one(claim.entry, result)
        if len(self.acks) >= self.tuning.ack_batch or (
                self.acks and time.monotonic() >= self.acks_since + self.tuning.ack_delay):
            self._flush_acks()

    def _flush_acks(self) -> None:
        if not self.acks:
            return
        done, self.acks = self.acks, []
        for entry in self.queue.ack_many([(c.entry, note) for c, note in done]):
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
            self._store_failed(result)
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

    def _store_failed(self, error: TransientError) -> None:
        """Several transient outcomes in a row: the store is down or throttling. Stop taking
        new entries for a growing, capped delay, rather than trying (and logging) the whole
        backlog one entry after another. Entries held meanwhile finish as they do."""
        self.failing += 1
        now = time.monotonic()
        if self.failing < self.tuning.outage_after or now < self.paused_until:
            return
        self.pauses += 1
        pause = min(self.tuning.transient_delay_max,
                    self.tuning.transient_delay * 2 ** (self.pauses - 1))
        pause *= random.uniform(0.8, 1.2)
        self.paused_until = now + pause
        log.warning("store failing: no new claims for %.1fs (transient errors in a row=%d)"
                    " error=%s", pause, self.failing, error)

    def _store_answered(self) -> None:
        if self.pauses:
            log.info("store answering again: claims resume")
        self.failing = self.pauses = 0
        self.paused_until = 0.0

    def _lease_lost(self, entry: Entry, at: str) -> None:
        log.warning("lease lost id=%d path=%s at=%s", entry.id, entry.display_path, at)
