"""How a claimed entry is sent: the lanes, behind the one interface the consumer knows.

Owns the order of a lane's steps. The stream lane runs `pipeline.process` on worker threads.
The put lane, for small files through the sink's fast transport, goes from this loop: open a
batch → take their keys in one queue transaction → `sink.put` each body (many in flight) →
finish on the loop once the PUT is verified; what it cannot put it hands to the stream lane.
Results reach the loop typed, through the Inbox. A lane never decides what an outcome means
for the entry (the consumer's policy does), and never acks, retries or fails one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue as stdqueue
import select
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sftppush.config import Config
from sftppush.outcomes import Done, UploadCancelled, Uploaded
from sftppush.pipeline import pipeline
from sftppush.queue.entries import Entry, KeyTaken
from sftppush.queue.keys import Keys
from sftppush.runtime.leases import Claim, Leases
from sftppush.runtime.wake import QueueWatch, watch_or_none
from sftppush.signals import Flag
from sftppush.sink.multipart import Journal
from sftppush.sink.s3 import Sink

log = logging.getLogger("sftppush.consumer")


@dataclass(frozen=True, slots=True)
class Sent:
    """A small body's PUT has started: the lane finishes it once `future` is done."""

    opened: pipeline.Opened
    future: Future[Uploaded]


@dataclass(frozen=True, slots=True)
class Result:
    """What a lane made of a claim: an outcome (outcomes.py), the exception it raised, or a
    Sent that the lane finishes on the loop (`Lane.settled`)."""

    claim: Claim
    outcome: object


class Inbox:
    """The loop's one wait: lanes' Results, and wake-ups (None: "the queue was written", by
    another process or this one, as the queue watch of wake.py saw it; or a stop)."""

    def __init__(self, monotonic: Callable[[], float]) -> None:
        self._items: stdqueue.SimpleQueue[Result | None] = stdqueue.SimpleQueue()
        self._monotonic = monotonic
        self.woken = False
        self.woken_at = 0.0
        self._watch: QueueWatch | None = None
        self._listening = True
        # Readable when an item is put (an eventfd), polled with the stop flags' fds: so a
        # loop's wait ends on a result, a wake-up or a stop alike. None until open().
        self._ready: int | None = None
        self._stops: list[tuple[Flag, int]] = []

    def open(self, queue_file: Path, stops: list[Flag]) -> None:
        """Wait on the queue's writes (wake.py) too, and end a wait when one of `stops` is
        set; until then `take()` waits on items alone."""
        self._ready = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._stops = [(stop, stop.fileno()) for stop in stops]
        self._watch = watch_or_none(queue_file, self.wake)

    def listen(self, on: bool) -> None:
        """Wake-ups by queue writes matter (or not, while claims come full)."""
        if self._watch is not None and on != self._listening:
            self._listening = on
            (self._watch.resume if on else self._watch.pause)()

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()

    def __del__(self) -> None:
        # Not in close(): a PUT's answer may still come after it, and a write to a closed
        # descriptor number could land in whatever file took the number next.
        if self._ready is not None:
            os.close(self._ready)

    def put(self, claim: Claim, outcome: object) -> None:
        self._put(Result(claim, outcome))

    def wake(self) -> None:
        if not self.woken:  # one wake-up in the queue is enough
            self.woken = True
            self._put(None)

    def _put(self, item: Result | None) -> None:
        self._items.put(item)
        if self._ready is not None:
            os.eventfd_write(self._ready, 1)

    def empty(self) -> bool:
        return self._items.empty()

    def take(self, wait: float) -> list[Result]:
        """Every result that is ready, waiting up to `wait` for the first item (or a stop)."""
        ready: list[Result | None] = []
        try:
            if wait > 0 and self._items.empty():
                if self._ready is None:  # not opened (a test stepping the loop): items alone
                    ready.append(self._items.get(timeout=wait))
                else:
                    self._wait(self._ready, wait)
            while True:
                ready.append(self._items.get_nowait())
        except stdqueue.Empty:
            pass
        if None in ready:
            self.woken = False
            self.woken_at = self._monotonic()
        return [r for r in ready if r is not None]

    def _wait(self, ready: int, timeout: float) -> None:
        poller = select.poll()
        poller.register(ready, select.POLLIN)
        for stop, fd in self._stops:
            if not stop.is_set():  # a set one stays readable: the loop knows it already
                poller.register(fd, select.POLLIN)
        if poller.poll(timeout * 1000):
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(ready)  # before the items are read: none is missed


class Lane(Protocol):
    """What the consumer knows of how its claims are sent."""

    cfg: Config
    workers: int

    def batch(self) -> int:
        """Most entries worth holding at once."""

    def start(self, claims: Sequence[Claim]) -> None:
        """Begin every claim; each ends as one Result in the Inbox."""

    def settled(self, result: Result) -> object:
        """On the loop: the outcome a Result stands for (finishing what is left to do)."""

    def shutdown(self, cold: bool) -> None:
        """Stop taking work; a cold stop waits for none of it."""


class StreamLane:
    """Worker threads, each running `pipeline.process` for one claim."""

    def __init__(self, cfg: Config, sink: Sink, keys: Keys, leases: Leases, inbox: Inbox,
                 pool: Executor, workers: int, stops: tuple[threading.Event, threading.Event],
                 journal: Callable[[Entry], Journal], nlink_retry_after: float) -> None:
        self.cfg = cfg
        self.sink = sink
        self.keys = keys
        self.leases = leases
        self.inbox = inbox
        self.pool = pool
        self.workers = workers
        self.stop, self.cancel = stops
        self.journal = journal
        self.nlink_retry_after = nlink_retry_after

    def batch(self) -> int:
        return 2 * self.workers

    def start(self, claims: Sequence[Claim]) -> None:
        for claim in claims:
            self.pool.submit(self._work, claim)

    def settled(self, result: Result) -> object:
        return result.outcome

    def shutdown(self, cold: bool) -> None:
        self.pool.shutdown(wait=not cold, cancel_futures=cold)

    def _work(self, claim: Claim) -> None:
        if self.stop.is_set():
            self.inbox.put(claim, UploadCancelled("stopping"))
            return
        try:
            result: object = pipeline.process(
                claim.entry, self.cfg, self.sink,
                still_ours=lambda: self.leases.still_ours(claim),
                take_key=lambda key: self.keys.take_key(claim.entry, key),
                cancel=self.cancel, journal=self.journal(claim.entry),
                nlink_retry_after=self.nlink_retry_after)
        except Exception as exc:  # every failure is settled by the loop, none kills a worker
            result = exc
        self.inbox.put(claim, result)


class PutLane:
    """Small files as single PUTs from the loop, many in flight; the rest to `stream`."""

    def __init__(self, stream: StreamLane, poll_interval: float) -> None:
        self.stream = stream
        self.sink = stream.sink
        self.poll_interval = poll_interval

    @property
    def workers(self) -> int:
        return self.stream.workers

    @property
    def cfg(self) -> Config:
        return self.stream.cfg

    @cfg.setter
    def cfg(self, cfg: Config) -> None:
        self.stream.cfg = cfg

    def batch(self) -> int:
        """Twice the fast transport's window, which follows the link, so that a far store's
        window can fill (half runs, half waits opened)."""
        return max(64, 2 * self.sink.in_flight())

    def start(self, claims: Sequence[Claim]) -> None:
        opened: list[tuple[Claim, pipeline.Opened]] = []
        for claim in claims:
            if self.stream.stop.is_set() or not self._open(claim, opened):
                self.stream.start([claim])
        self._send(opened)

    def settled(self, result: Result) -> object:
        sent = result.outcome
        if not isinstance(sent, Sent):
            return sent
        try:
            return pipeline.finish(sent.opened, sent.future.result(),
                                   lambda: self.stream.leases.still_ours(result.claim),
                                   self.cfg.consumer)
        except Exception as exc:
            return exc
        finally:
            sent.opened.close()

    def shutdown(self, cold: bool) -> None:
        self.stream.shutdown(cold)

    def _open(self, claim: Claim, opened: list[tuple[Claim, pipeline.Opened]]) -> bool:
        """Open a small file (into `opened`, or its outcome to the inbox at once); False: the
        stream lane takes the claim."""
        source = self.cfg.source(claim.entry.source)
        if source is None or not self.sink.takes(source.target.bucket, claim.entry.size):
            return False
        try:
            result: object = pipeline.open_small(
                claim.entry, self.cfg, self.sink,
                nlink_retry_after=self.stream.nlink_retry_after)
        except Exception as exc:
            result = exc
        if result is None:
            return False
        if isinstance(result, pipeline.Opened):
            opened.append((claim, result))
        else:
            self.stream.inbox.put(claim, result)
        return True

    def _send(self, opened: list[tuple[Claim, pipeline.Opened]]) -> None:
        """Take the keys of the opened files in one queue transaction (SPEC 3's record of
        keys, before any upload starts), then start their PUTs."""
        if not opened:
            return
        inbox = self.stream.inbox
        try:
            taken = self.stream.keys.take_keys([(o.entry, o.key) for _, o in opened])
        except Exception as exc:
            for claim, one in opened:
                one.close()
                inbox.put(claim, exc)
            return
        for (claim, one), answer in zip(opened, taken, strict=True):
            try:
                sent = self._put(claim, one, answer)
            except Exception as exc:
                sent = exc
            if sent is None:
                self.stream.start([claim])
            elif isinstance(sent, Sent):
                # Not `sent` itself: the future keeps its callbacks, and a callback holding
                # the Sent that holds the future is a cycle per file for the collector.
                sent.future.add_done_callback(
                    lambda f, claim=claim, one=one: inbox.put(claim, Sent(one, f)))
            else:
                inbox.put(claim, sent)

    def _put(self, claim: Claim, opened: pipeline.Opened,
             taken: KeyTaken | None) -> Sent | Done | None:
        # All slots busy (a slow or stalled store): wait here, but keep every lease we hold
        # renewed meanwhile; a stalled PUT times out in the transport, so a slot comes. On a
        # stop, what has not started goes to the stream lane, which releases it.
        leases, stop = self.stream.leases, self.stream.stop
        while not stop.is_set() and not self.sink.wait_room(self.poll_interval):
            leases.renew_if_due()
        if stop.is_set():
            opened.close()
            return None
        if leases.expired(claim):  # lost while waiting: start nothing
            taken = None
        body = pipeline.small_body(opened, taken, self.cfg, self.sink.max_small)
        if not isinstance(body, pipeline.Body):
            return body
        try:
            future = self.sink.put(opened.source.target.bucket, opened.key, body.data,
                                   opened.meta, body.if_absent)
        except BaseException:
            opened.close()
            raise
        return Sent(opened, future)
