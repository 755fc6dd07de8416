"""A consumer process: one loop that claims entries, runs them and settles their outcomes.

Small files are put through the sink's fast transport from this loop (many in flight) when
awscrt is installed; others go to worker threads that stream them. Both run the same pipeline.
Owns claiming in batches with a lease (renewed while uploads run), waking when the queue is
written (wake.py), what an outcome means for an entry (`decide`: ack in batches, retry later
with a growing capped delay, fail at max_attempts, release on stop), `--drain` and SIGTERM.
It must never decide S3 or file details itself and never fail an entry for a transient error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue as stdqueue
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sftppush import signals
from sftppush.config import Config
from sftppush.errors import PermanentError, TransientError
from sftppush.outcomes import Done, Held, LeaseLost, Undeleted, UploadCancelled
from sftppush.pipeline import pipeline
from sftppush.queue.entries import Entry, KeyTaken, State
from sftppush.queue.owners import owner_token
from sftppush.queue.queue import Queue
from sftppush.runtime import memory
from sftppush.runtime.policy import (
    Ack,
    Action,
    Breaker,
    Drop,
    Fail,
    Release,
    Tuning,
    decide,
)
from sftppush.runtime.wake import QueueWatch, watch_or_none
from sftppush.sink.multipart import Resumable
from sftppush.sink.s3 import Sink

log = logging.getLogger("sftppush.consumer")

WAKE_RECHECK = 0.005
# Outcomes the pipeline means to give; anything else is a bug, logged with its traceback.
EXPECTED = (TransientError, PermanentError, Done, Held, Undeleted, LeaseLost, UploadCancelled)


@dataclass(slots=True)
class Claim:
    """One entry this process holds, with its lease as this process last renewed it.
    `lost` is set once, by whichever thread learns it (a plain flag: it only goes to True)."""

    entry: Entry
    expires: float
    lost: bool = False


def run(cfg: Config, *, workers: int | None = None, drain: bool = False,
        stop: threading.Event | None = None, tuning: Tuning | None = None) -> None:
    """Consume until `stop` is set (or SIGTERM/SIGINT), or until drained with `drain`."""
    tuning = tuning or Tuning()
    workers = workers or cfg.consumer.workers
    memory.fix_mmap_threshold()
    if cfg.consumer.delete_without_lease:
        log.warning("consumer.delete_without_lease is on: a file is deleted where the kernel"
                    " cannot tell whether a client still writes it, and what a client writes"
                    " after the delete is lost")
    sink = Sink.from_config(cfg.defaults, cfg.consumer.s3, tuning.transfer(workers))
    cancel = threading.Event()
    own_signals = stop is None
    stop = stop or threading.Event()
    with contextlib.ExitStack() as restore:
        if own_signals:  # first signal: warm stop (finish in-flight uploads); second: abandon
            restore.enter_context(signals.on_stop(stop, cancel))
        if threading.current_thread() is threading.main_thread():
            # The lease safeopen holds while it deletes a file breaks with SIGIO when a client
            # opens that file for writing meanwhile; its default action would end us.
            signal.signal(signal.SIGIO, signal.SIG_IGN)
        memory.release_free_memory()
        try:
            with Queue(cfg.queue.path) as q:
                Consumer(cfg, q, sink, workers, tuning, stop, cancel).loop(drain)
        finally:
            sink.close(abandon=cancel.is_set())
    if own_signals and cancel.is_set():
        # A cold stop: the claims are handed back, but a worker thread still waiting on the
        # store would hold the interpreter's exit (executors join their threads) until its
        # read timeout. Its upload dies with the process.
        logging.shutdown()
        os._exit(0)


class Consumer:
    """The loop of one process: claim → start (fast PUT or worker thread) → settle outcomes."""

    def __init__(self, cfg: Config, q: Queue, sink: Sink, workers: int, tuning: Tuning,
                 stop: threading.Event, cancel: threading.Event, *, owner: str | None = None,
                 pool: Executor | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        """`owner`, `pool` (where streams run) and `monotonic` (the clock of its own timers;
        leases follow the queue's clock) default to this process's; a test that steps the
        consumer passes its own."""
        self.cfg = cfg
        self.queue = q
        self.sink = sink
        self.workers = workers
        self.tuning = tuning
        self.stop = stop
        self.cancel = cancel
        self.owner = owner or owner_token()
        self.monotonic = monotonic
        self.lease = cfg.queue.lease_seconds
        self.batch = self._batch()
        self.inflight: dict[int, Claim] = {}
        # Outcomes of workers and fast PUTs, and None: "the queue was written, look again".
        self.outcomes: stdqueue.SimpleQueue[tuple[Claim, Any] | None] = stdqueue.SimpleQueue()
        self.woken = False
        self.woken_at = 0.0
        self.watch: QueueWatch | None = None
        self.watching = True
        self.acks: list[tuple[Claim, Ack]] = []
        self.acks_since = 0.0
        self.transient_streak: dict[int, int] = {}  # entry id -> transient outcomes in a row
        self.next_renew = 0.0
        self.breaker = Breaker(tuning.outage_after, tuning.transient_delay,
                               tuning.transient_delay_max)
        self.pool = pool or ThreadPoolExecutor(self.workers, thread_name_prefix="worker")
        self.finished = False

    def loop(self, drain: bool) -> None:
        log.info("consumer started owner=%s workers=%d queue=%s", self.owner, self.workers,
                 self.cfg.queue.path)
        self.watch = watch_or_none(self.queue.file, self._wake)
        # The loop sleeps on its outcomes (up to poll_interval): a stop, warm or cold, must
        # wake it, whoever sets it (a signal handler, which must not block, or a caller).
        threading.Thread(target=self._wake_on_stop, name="stop-waker", daemon=True).start()
        self.next_renew = self.monotonic() + self.lease / 3
        try:
            while not self.stop.is_set():
                claimed = self._claim()
                self._renew_if_due()
                if drain and not claimed and not self.inflight and self._drained():
                    log.info("drained owner=%s", self.owner)
                    break
                self._settle(wait=0 if claimed == self.batch else self._idle_wait())
            # Warm stop: unstarted entries are released by the workers; running ones finish.
            # A cold stop (cancel) waits no longer for the store.
            while self.inflight and not self.cancel.is_set():
                self._settle(wait=self.tuning.poll_interval)
                self._renew_if_due()
        finally:
            self.finished = True
            if self.watch is not None:
                self.watch.close()
            cold = self.cancel.is_set()  # a worker waiting on the store is not waited for
            self.pool.shutdown(wait=not cold, cancel_futures=cold)
            self._settle(wait=0)
            self._flush_acks()
            self._abandon()
            log.info("consumer stopped owner=%s", self.owner)

    def _abandon(self) -> None:
        """A cold stop: hand back the claims whose upload still runs. Their files stay; an
        upload that lands anyway is made again by the next claimant (at-least-once)."""
        abandoned = list(self.inflight.values())
        for claim in abandoned:
            del self.inflight[claim.entry.id]
            if not self.queue.release(claim.entry):
                self._lease_lost(claim.entry, "abandon")
        if abandoned and self.cancel.is_set():
            log.warning("cold stop: abandoned uploads in flight count=%d owner=%s",
                        len(abandoned), self.owner)

    def _wake_on_stop(self) -> None:
        for event in (self.stop, self.cancel):
            while not event.wait(0.5):
                if self.finished:
                    return
            self.outcomes.put(None)

    def _watch_queue(self, on: bool) -> None:
        if self.watch is not None and on != self.watching:
            self.watching = on
            (self.watch.resume if on else self.watch.pause)()

    def _wake(self) -> None:
        if not self.woken:  # one wake-up in the queue is enough
            self.woken = True
            self.outcomes.put(None)

    def _idle_wait(self) -> float:
        # The WAL is written a moment before the commit is visible to readers: just after a
        # wake-up, look again shortly rather than a whole poll interval later.
        if self.monotonic() - self.woken_at < WAKE_RECHECK * 3:
            return WAKE_RECHECK
        return self.tuning.poll_interval

    def _batch(self) -> int:
        """Most entries held at once: twice the fast transport's window, which follows the
        link, so that a far store's window can fill (half runs, half waits opened)."""
        return self.tuning.claim_batch or (
            max(64, 2 * self.sink.in_flight()) if self.sink.fast else 2 * self.workers)

    def _claim(self) -> int:
        if not self.breaker.closed(self.monotonic()):
            return 0  # the store seems down: the backlog waits in the queue, untouched
        self.batch = self._batch()
        room = self.batch - len(self.inflight)
        # Claim in batches: wait until half the batch is free (or nothing is held), and ask
        # the read-only "anything due?" first, so an idle consumer writes nothing.
        if room <= 0 or (self.inflight and room < self.batch // 2):
            return 0
        if not self.queue.has_due():
            self._watch_queue(True)
            return 0
        entries = self.queue.claim(self.owner, self.lease, limit=room)
        # A full claim: more is waiting, and outcomes bring this loop back for it; wake-ups
        # by queue writes (its own among them) matter again once a claim finds less.
        self._watch_queue(len(entries) < room)
        # The lease is the queue's (its clock was read inside the claim), never longer.
        claims = [Claim(entry, entry.due) for entry in entries]
        # All held before any starts: _send may wait for a fast slot, renewing what we hold.
        self.inflight.update((c.entry.id, c) for c in claims)
        opened: list[tuple[Claim, pipeline.Prepared]] = []
        for claim in claims:
            if self.stop.is_set() or not self._open(claim, opened):
                self.pool.submit(self._work, claim)
        self._send(opened)
        return len(entries)

    def _open(self, claim: Claim, opened: list[tuple[Claim, pipeline.Prepared]]) -> bool:
        """Open a small file for a PUT from this loop (into `opened`, or settled at once);
        False: a worker thread takes the claim."""
        source = self.cfg.source(claim.entry.source)
        if source is None or not self.sink.takes(source.target.bucket, claim.entry.size):
            return False
        try:
            result = pipeline.open_small(claim.entry, self.cfg, self.sink,
                                         nlink_retry_after=self.tuning.nlink_retry_after)
        except Exception as exc:
            result = exc
        if result is None:
            return False
        if isinstance(result, pipeline.Prepared):
            opened.append((claim, result))
        else:
            self.outcomes.put((claim, result))
        return True

    def _send(self, opened: list[tuple[Claim, pipeline.Prepared]]) -> None:
        """Take the keys of the opened files in one queue transaction (SPEC 3's record of
        keys, before any upload starts), then start their PUTs."""
        if not opened:
            return
        try:
            taken = self.queue.take_keys([(p.entry, p.key) for _, p in opened])
        except Exception as exc:
            for claim, prepared in opened:
                prepared.close()
                self.outcomes.put((claim, exc))
            return
        for (claim, prepared), answer in zip(opened, taken, strict=True):
            try:
                sent = self._put(claim, prepared, answer)
            except Exception as exc:
                sent = exc
            if sent is None:
                self.pool.submit(self._work, claim)
            elif isinstance(sent, pipeline.Sent):
                # Not `sent` itself: the future keeps its callbacks, and a callback holding
                # the Sent that holds the future is a cycle per file for the collector.
                sent.future.add_done_callback(
                    lambda f, claim=claim, prepared=sent.prepared: self.outcomes.put(
                        (claim, pipeline.Sent(prepared, f))))
            else:
                self.outcomes.put((claim, sent))

    def _put(self, claim: Claim, prepared: pipeline.Prepared,
             taken: KeyTaken | None) -> pipeline.Sent | Done | None:
        # All slots busy (a slow or stalled store): wait here, but keep every lease we hold
        # renewed meanwhile; a stalled PUT times out in the transport, so a slot comes. On a
        # stop, what has not started goes to the workers, which release it.
        while not self.stop.is_set() and not self.sink.wait_room(self.tuning.poll_interval):
            self._renew_if_due()
        if self.stop.is_set():
            prepared.close()
            return None
        if claim.lost or self.queue.clock() >= claim.expires:  # lost while waiting: start nothing
            taken = None
        return pipeline.send_opened(prepared, taken, self.cfg, self.sink)

    def _work(self, claim: Claim) -> None:
        if self.stop.is_set():
            self.outcomes.put((claim, UploadCancelled("stopping")))
            return
        try:
            result: Any = pipeline.process(claim.entry, self.cfg, self.sink,
                                           still_ours=lambda: self._still_ours(claim),
                                           take_key=lambda key: self.queue.take_key(
                                               claim.entry, key),
                                           cancel=self.cancel,
                                           journal=self.queue.journal(claim.entry, Resumable.of),
                                           nlink_retry_after=self.tuning.nlink_retry_after)
        except Exception as exc:  # every failure is settled by the loop, none kills a worker
            result = exc
        self.outcomes.put((claim, result))

    def _still_ours(self, claim: Claim) -> bool:
        """Checked just before a delete: the lease must be ours with time to spare."""
        if claim.lost:
            return False
        if self.queue.clock() < claim.expires - min(5.0, self.lease / 4):
            return True
        lost, expires = self.queue.renew_leases([claim.entry], self.lease)
        if lost:
            claim.lost = True
            return False
        claim.expires = expires
        return True

    def _renew_if_due(self) -> None:
        if self.monotonic() >= self.next_renew:
            self._renew()
            self.next_renew = self.monotonic() + self.lease / 3

    def _renew(self) -> None:
        claims = [c for c in list(self.inflight.values()) if not c.lost]
        if not claims:
            return
        renewed, expires = self.queue.renew_leases([c.entry for c in claims], self.lease)
        lost = {e.id for e in renewed}
        for c in claims:
            if c.entry.id in lost:
                c.lost = True
            else:
                c.expires = expires

    def _drained(self) -> bool:
        self._flush_acks()
        counts = self.queue.counts()
        return counts[State.PENDING] == 0 and counts[State.CLAIMED] == 0

    def _settle(self, wait: float) -> None:
        """Apply every outcome that is ready (waiting up to `wait` for the first)."""
        if self.acks:  # acks wait at most ack_delay for company
            wait = max(0.0, min(wait, self.acks_since + self.tuning.ack_delay - self.monotonic()))
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
                self.woken_at = self.monotonic()
            else:
                self._apply(*item)
        if len(self.acks) >= self.tuning.ack_batch or (
                self.acks and self.monotonic() >= self.acks_since + self.tuning.ack_delay):
            self._flush_acks()

    def _apply(self, claim: Claim, outcome: Any) -> None:
        if isinstance(outcome, pipeline.Sent):
            try:
                outcome = pipeline.finish_sent(outcome, lambda: self._still_ours(claim),
                                            self.cfg.consumer)
            except Exception as exc:
                outcome = exc
        # A claim this process took again after its lease ran out (e.g. while stopped) has
        # a new owner token; the older run's outcome is stale and must not drop the new
        # one. Its queue writes fail on the old token and are logged as lease lost.
        entry = claim.entry
        if self.inflight.get(entry.id) is claim:
            del self.inflight[entry.id]
        if not isinstance(outcome, EXPECTED):
            log.error("unexpected error id=%d path=%s", entry.id, entry.display_path,
                      exc_info=outcome)
        streak = self.transient_streak.pop(entry.id, 0)
        action = decide(entry, outcome, streak, self.tuning, self.cfg.consumer.max_attempts)
        self._breaker(outcome, action)
        if isinstance(outcome, TransientError):
            self.transient_streak[entry.id] = streak + 1
        # A held entry (young, or open for writing) is no failure: it waits without a line.
        self._act(claim, action,
                  logged=not isinstance(outcome, (Held, Undeleted)))

    def _act(self, claim: Claim, action: Action, logged: bool) -> None:
        entry = claim.entry
        if isinstance(action, Ack):
            if not self.acks:
                self.acks_since = self.monotonic()
            self.acks.append((claim, action))
            return
        if isinstance(action, Drop):
            self._lease_lost(entry, "delete")
            return
        if isinstance(action, Release):
            ok = self.queue.release(entry)
            log.info("released id=%d path=%s", entry.id, entry.display_path)
        elif isinstance(action, Fail):
            ok = self.queue.fail(entry, action.error, reason=action.reason,
                                 stored=action.stored)
            log.error("failed id=%d path=%s attempts=%d error=%s", entry.id,
                      entry.display_path, entry.attempts + 1, action.error)
        else:
            ok = self.queue.retry_later(entry, action.error, action.delay, action.count_attempt,
                                        reason=action.reason, stored=action.stored)
            if logged:
                log.warning("retry later id=%d path=%s attempts=%d delay=%.1f error=%s",
                            entry.id, entry.display_path,
                            entry.attempts + action.count_attempt, action.delay, action.error)
        if not ok:
            self._lease_lost(entry, "settle")

    def _breaker(self, outcome: object, action: Action) -> None:
        if isinstance(outcome, TransientError):
            pause = self.breaker.failed(self.monotonic())
            if pause is not None:
                log.warning("store failing: no new claims for %.1fs (transient errors in a"
                            " row=%d) error=%s", pause, self.breaker.failing, outcome)
        elif isinstance(action, Ack) and action.uploaded and self.breaker.answered():
            log.info("store answering again: claims resume")

    def _flush_acks(self) -> None:
        if not self.acks:
            return
        done, self.acks = self.acks, []
        for entry in self.queue.ack_many([(c.entry, ack.note) for c, ack in done],
                                         uploaded={c.entry.id: ack.uploaded for c, ack in done
                                                   if ack.uploaded}):
            self._lease_lost(entry, "ack")

    def _lease_lost(self, entry: Entry, at: str) -> None:
        log.warning("lease lost id=%d path=%s at=%s", entry.id, entry.display_path, at)
