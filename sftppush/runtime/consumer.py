"""A consumer process: one loop that claims entries, hands them to a lane and settles them.

Owns claiming in batches with a lease (leases.py renews it while uploads run), waking when
the queue is written (wake.py), applying what an outcome means for an entry (policy.py:
ack in batches, retry later with a growing capped delay, fail at max_attempts, release on
stop), `--drain` and SIGTERM, as initialize/loop/shutdown under signals.drive(). How an
entry is sent is its lane's (lanes.py): the consumer never calls the pipeline or the sink's
transports, and never fails an entry for a transient error. A cold stop hands the claims
back and returns; the uploads still waiting run on daemon threads (threads.Pool) and end
with the process.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor

from sftppush import signals, threads
from sftppush.config import Config
from sftppush.errors import PermanentError, TransientError
from sftppush.outcomes import Done, Held, LeaseLost, Undeleted, UploadCancelled
from sftppush.queue.entries import Entry, State
from sftppush.queue.lifecycle import Entries
from sftppush.queue.owners import owner_token
from sftppush.queue.queue import Queue
from sftppush.runtime import memory
from sftppush.runtime.lanes import Inbox, Lane, PutLane, Result, StreamLane
from sftppush.runtime.leases import Claim, Leases
from sftppush.runtime.policy import Ack, Action, Batching, Drop, Fail, Release, Tuning, Verdicts
from sftppush.sink.multipart import Resumable
from sftppush.sink.s3 import Sink

log = logging.getLogger("sftppush.consumer")

WAKE_RECHECK = 0.005
# Outcomes the pipeline means to give; anything else is a bug, logged with its traceback.
EXPECTED = (TransientError, PermanentError, Done, Held, Undeleted, LeaseLost, UploadCancelled)
__all__ = ["Claim", "Consumer", "Result", "Tuning", "run"]


def run(cfg: Config, *, workers: int | None = None, drain: bool = False,
        stop: threading.Event | None = None, tuning: Tuning | None = None,
        own_process: bool = False) -> None:
    """Consume until `stop` is set (or SIGTERM/SIGINT), or until drained with `drain`.
    A `stop` that is a signals.Flag ends the loop's wait at once; another waits its turn
    (an outcome, a wake-up or the poll interval). `own_process`: the process is this
    consumer's (`sftppush consume`), not a test's or a host's that runs it in passing."""
    tuning = tuning or Tuning()
    workers = workers or cfg.consumer.workers
    memory.fix_mmap_threshold()
    if cfg.consumer.delete_without_lease:
        log.warning("consumer.delete_without_lease is on: a file is deleted where the kernel"
                    " cannot tell whether a client still writes it, and what a client writes"
                    " after the delete is lost")
    sink = Sink.from_config(cfg.defaults, cfg.consumer.s3, tuning.transfer(workers))
    cancel = signals.Flag()
    own_signals = stop is None
    stop = stop or signals.Flag()
    with contextlib.ExitStack() as restore:
        if own_signals:  # first signal: warm stop (finish in-flight uploads); second: abandon
            restore.enter_context(signals.on_stop(stop, cancel))
        if threading.current_thread() is threading.main_thread():
            # The lease safeopen holds while it deletes a file breaks with SIGIO when a client
            # opens that file for writing meanwhile; its default action would end us.
            signal.signal(signal.SIGIO, signal.SIG_IGN)
        memory.release_free_memory(freeze=own_process)
        try:
            with Queue(cfg.queue.path) as q:
                loop = Consumer(cfg, q, sink, workers, tuning, stop, cancel)
                signals.drive(stop, loop.initialize, lambda: loop.loop(drain), loop.shutdown)
        finally:
            sink.close(abandon=cancel.is_set())


class Consumer:
    """The loop of one process: claim → its lane → settle outcomes, acks in batches."""

    def __init__(self, cfg: Config, q: Queue, sink: Sink, workers: int, tuning: Tuning,
                 stop: threading.Event, cancel: threading.Event, *, owner: str | None = None,
                 pool: Executor | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        """`owner`, `pool` (where streams run) and `monotonic` (the clock of its own timers;
        leases follow the queue's clock) default to this process's; a test that steps the
        consumer passes its own."""
        self.cfg = cfg
        self.entries = q.entries  # the queue's part the loop claims and settles through
        self.tuning = tuning
        self.stop, self.cancel = stop, cancel
        self.owner = owner or owner_token()
        self.monotonic = monotonic
        self.leases = Leases(q.entries, cfg.queue.lease_seconds, monotonic)
        # Outcomes of the lanes, and wake-ups: "the queue was written, look again".
        self.inbox = Inbox(monotonic)
        self.acks = Acks(q.entries, tuning.batching, monotonic)
        self.verdicts = Verdicts(tuning.retries)
        stream = StreamLane(cfg, sink, q.keys, self.leases, self.inbox,
                            pool or threads.Pool(workers, "worker"),
                            workers, (stop, cancel), lambda entry: q.journal(entry, Resumable.of),
                            tuning.retries.nlink_retry_after)
        self.lane: Lane = PutLane(stream, tuning.batching.poll_interval) if sink.fast else stream

    @property
    def inflight(self) -> dict[int, Claim]:
        """The claims held now, by entry id."""
        return self.leases.held

    def initialize(self) -> None:
        log.info("consumer started owner=%s workers=%d queue=%s", self.owner,
                 self.lane.workers, self.cfg.queue.path)
        # The loop sleeps on its inbox (up to poll_interval): a stop, warm or cold, wakes it
        # when its flag has a file descriptor (signals.Flag), whoever sets it.
        self.inbox.open(self.entries.file.file, [f for f in (self.stop, self.cancel)
                                          if isinstance(f, signals.Flag)])
        self.leases.start()

    def loop(self, drain: bool) -> bool:
        """One round: claim, renew, settle what is ready; False once drained."""
        claimed, full = self._claim()
        self.leases.renew_if_due()
        if drain and not claimed and not self.inflight and self._drained():
            log.info("drained owner=%s", self.owner)
            return False
        self._settle(wait=0 if full else self._idle_wait())
        return True

    def shutdown(self, ended: bool) -> None:
        """Warm stop: unstarted entries are released by the workers; running ones finish. A
        cold stop (cancel) waits no longer for the store, nor does a loop that raised."""
        try:
            while ended and self.inflight and not self.cancel.is_set():
                self._settle(wait=self.tuning.batching.poll_interval)
                self.leases.renew_if_due()
        finally:
            self.inbox.close()
            self.lane.shutdown(cold=self.cancel.is_set())  # a cold stop waits for no worker
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
            if not self.entries.release(claim.entry):
                self._lease_lost(claim.entry, "abandon")
        if abandoned and self.cancel.is_set():
            log.warning("cold stop: abandoned uploads in flight count=%d owner=%s",
                        len(abandoned), self.owner)

    def _idle_wait(self) -> float:
        # The WAL is written a moment before the commit is visible to readers: just after a
        # wake-up, look again shortly rather than a whole poll interval later.
        if self.monotonic() - self.inbox.woken_at < WAKE_RECHECK * 3:
            return WAKE_RECHECK
        return self.tuning.batching.poll_interval

    def _claim(self) -> tuple[int, bool]:
        """Claim what there is room for and start it in the lane: (how many, whether that
        filled the batch)."""
        breaker = self.verdicts.breaker
        if not breaker.closed(self.monotonic()):
            return 0, False  # the store seems down: the backlog waits in the queue, untouched
        batch = self.tuning.batching.claim_batch or self.lane.batch()
        if breaker.pauses:  # the store was failing: a few entries find out whether it is back
            batch = min(batch, max(1, breaker.after))
        room = batch - len(self.inflight)
        # Claim in batches: wait until a quarter of the batch is free (or nothing is held),
        # and ask the read-only "anything due?" first, so an idle consumer writes nothing.
        # Not half: with the fast lane's batch of twice its window, the window ran dry while
        # the loop claimed and opened the next half (a fifth to a third of a far store's
        # round trip), and a window not full does not grow.
        if room <= 0 or (self.inflight and room < batch // 4):
            return 0, False
        if not self.entries.has_due():
            self.inbox.listen(True)
            return 0, False
        entries = self.entries.claim(self.owner, self.lease_seconds, limit=room)
        # A full claim: more is waiting, and outcomes bring this loop back for it; wake-ups
        # by queue writes (its own among them) matter again once a claim finds less.
        self.inbox.listen(len(entries) < room)
        # All held before any starts: a lane may wait for a slot, renewing what we hold.
        self.lane.start(self.leases.hold(entries))
        return len(entries), len(entries) == batch

    @property
    def lease_seconds(self) -> float:
        return self.leases.seconds

    def _drained(self) -> bool:
        self._flush_acks()
        counts = self.entries.counters.counts()
        return counts[State.PENDING] == 0 and counts[State.CLAIMED] == 0

    def _settle(self, wait: float) -> None:
        """Apply every outcome that is ready (waiting up to `wait` for the first)."""
        for result in self.inbox.take(self.acks.wait(wait)):
            self._apply(result)
        if self.acks.due():
            self._flush_acks()

    def _apply(self, result: Result) -> None:
        outcome = self.lane.settled(result)
        # Its queue writes fail on an old owner token and are logged as lease lost.
        claim = result.claim
        entry = claim.entry
        self.leases.let_go(claim)
        if not isinstance(outcome, EXPECTED):
            log.error("unexpected error id=%d path=%s", entry.id, entry.display_path,
                      exc_info=outcome)
        action = self.verdicts.judge(entry, outcome, self.cfg.consumer.max_attempts)
        self._breaker(outcome, action)
        # A held entry (young, or open for writing) is no failure: it waits without a line.
        self._act(claim, action, logged=not isinstance(outcome, (Held, Undeleted)))

    def _act(self, claim: Claim, action: Action, logged: bool) -> None:
        entry = claim.entry
        if isinstance(action, Ack):
            self.acks.add(claim, action)
            return
        if isinstance(action, Drop):
            self._lease_lost(entry, "delete")
            return
        if isinstance(action, Release):
            ok = self.entries.release(entry)
            log.info("released id=%d path=%s", entry.id, entry.display_path)
        elif isinstance(action, Fail):
            ok = self.entries.fail(entry, action.error, reason=action.reason,
                                 stored=action.stored)
            log.error("failed id=%d path=%s attempts=%d error=%s", entry.id,
                      entry.display_path, entry.attempts + 1, action.error)
        else:
            ok = self.entries.retry_later(entry, action.error, action.delay, action.count_attempt,
                                        reason=action.reason, stored=action.stored)
            if logged:
                log.warning("retry later id=%d path=%s attempts=%d delay=%.1f error=%s",
                            entry.id, entry.display_path,
                            entry.attempts + action.count_attempt, action.delay, action.error)
        if not ok:
            self._lease_lost(entry, "settle")

    def _breaker(self, outcome: object, action: Action) -> None:
        breaker = self.verdicts.breaker
        if isinstance(outcome, TransientError):
            pause = breaker.failed(self.monotonic())
            if pause is not None:
                log.warning("store failing: no new claims for %.1fs (transient errors in a"
                            " row=%d) error=%s", pause, breaker.failing, outcome)
        elif isinstance(action, Ack) and action.uploaded and breaker.answered():
            log.info("store answering again: claims resume")

    def _flush_acks(self) -> None:
        for entry in self.acks.flush():
            self._lease_lost(entry, "ack")

    def _lease_lost(self, entry: Entry, at: str) -> None:
        log.warning("lease lost id=%d path=%s at=%s", entry.id, entry.display_path, at)


class Acks:
    """Acks written together: up to ack_batch of them, none waiting over ack_delay."""

    def __init__(self, entries: Entries, batching: Batching, monotonic: Callable[[], float]
                 ) -> None:
        self.entries = entries
        self.batch, self.delay = batching.ack_batch, batching.ack_delay
        self.monotonic = monotonic
        self.pending: list[tuple[Claim, Ack]] = []
        self.since = 0.0

    def __len__(self) -> int:
        return len(self.pending)

    def add(self, claim: Claim, ack: Ack) -> None:
        if not self.pending:
            self.since = self.monotonic()
        self.pending.append((claim, ack))

    def wait(self, wait: float) -> float:
        """`wait`, shortened so that no ack waits over ack_delay for company."""
        if not self.pending:
            return wait
        return max(0.0, min(wait, self.since + self.delay - self.monotonic()))

    def due(self) -> bool:
        return len(self.pending) >= self.batch or (
            bool(self.pending) and self.monotonic() >= self.since + self.delay)

    def flush(self) -> list[Entry]:
        """Write the pending acks; the entries whose lease was lost meanwhile."""
        if not self.pending:
            return []
        done, self.pending = self.pending, []
        return self.entries.ack_many([(c.entry, ack.note) for c, ack in done],
                                   uploaded={c.entry.id: ack.uploaded for c, ack in done
                                             if ack.uploaded})
