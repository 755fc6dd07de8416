"""What an outcome means for a queue entry, as pure functions: no threads, no queue, no S3.

Owns the consumer's tuning (retries, batching, lanes, timeouts), `decide()` (outcome →
action), the one growing delay `backoff()` and the `Breaker` that pauses claims while the store
keeps failing. Transient errors never make an entry failed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from sftppush.errors import PermanentError, Throttled, TransientError
from sftppush.outcomes import Done, Held, LeaseLost, Undeleted, UploadCancelled, Uploaded
from sftppush.queue.entries import Entry, Stored
from sftppush.sink.transfer import RetryPolicy, Transfer

G = TypeVar("G")  # one group of Tuning


@dataclass(frozen=True)
class Retries:
    """When an entry is tried again: S3 calls in place, then back to the queue with a growing
    delay; and how many transient outcomes in a row mean the store is down."""

    retry: RetryPolicy = field(default_factory=RetryPolicy)  # in place, per S3 call
    transient_delay: float = 5.0        # back to pending after in-place retries: first delay
    transient_delay_max: float = 300.0  # ... doubling up to this
    outage_after: int = 3               # transient outcomes in a row (no success between) that
                                        # pause new claims, for the same growing delays
    permanent_delay: float = 30.0       # between attempts of a permanent error
    permanent_delay_max: float = 3600.0
    nlink_retry_after: float = 2.0      # a second hard link: maybe a link+unlink rename


@dataclass(frozen=True)
class Batching:
    """How often the consumer looks for work, and how many claims and acks go together."""

    poll_interval: float = 0.2          # idle: "anything due?" (read-only) at least this often
    claim_batch: int = 0                # most entries held at once; 0 = twice the fast
                                        # transport's window (at least 64), else 2 x workers.
                                        # Claims wait until a quarter of it is free.
    ack_batch: int = 64                 # acks are written together, up to this many ...
    ack_delay: float = 0.02             # ... or after this long


@dataclass(frozen=True)
class Lanes:
    """Which way a body goes: small ones through the fast lane (awscrt), larger ones streamed
    in parts, and how much each may hold."""

    crt: bool = True                    # small files through awscrt when it is importable
    crt_in_flight: int = 0              # fast PUTs in flight at first (0: as many as
                                        # consumer.s3.max_in_flight); the window follows the
                                        # link from there
    lane_max_body: int = 8 * 2**20      # decompressed bytes; larger files stream via boto3
    part_memory: int = 32 * 2**20       # per large upload: bytes of part buffers


@dataclass(frozen=True)
class Timeouts:
    """How long one request to the store may take to connect, and to answer."""

    connect_timeout: float = 10.0
    read_timeout: float = 60.0


@dataclass(frozen=True)
class Tuning:
    """Timing knobs that are not operator config, in four groups; tests pass small values,
    most easily by name with `Tuning.of(poll_interval=0.02, crt=False)`."""

    retries: Retries = field(default_factory=Retries)
    batching: Batching = field(default_factory=Batching)
    lanes: Lanes = field(default_factory=Lanes)
    timeouts: Timeouts = field(default_factory=Timeouts)

    @classmethod
    def of(cls, **knobs: Any) -> Tuning:
        """The defaults but for `knobs`, each named as in its group (no name is in two)."""

        def group(kind: type[G]) -> G:
            names = [f.name for f in fields(kind)]
            return kind(**{name: knobs.pop(name) for name in names if name in knobs})

        tuning = cls(retries=group(Retries), batching=group(Batching), lanes=group(Lanes),
                     timeouts=group(Timeouts))
        if knobs:
            raise TypeError(f"Tuning has no knob {', '.join(sorted(knobs))}")
        return tuning

    def transfer(self, workers: int) -> Transfer:
        lanes, timeouts = self.lanes, self.timeouts
        return Transfer(pool_size=workers * 8, connect_timeout=timeouts.connect_timeout,
                        read_timeout=timeouts.read_timeout, retry=self.retries.retry,
                        part_memory=lanes.part_memory, fast=lanes.crt,
                        in_flight=lanes.crt_in_flight, max_small=lanes.lane_max_body)


@dataclass(frozen=True)
class Ack:
    note: str | None
    uploaded: Stored | None  # what the upload left, when this entry uploaded


@dataclass(frozen=True)
class RetryLater:
    error: str
    delay: float
    count_attempt: bool
    reason: str | None = None  # the class counted as a retry; None: not a retry (held)
    stored: Stored | None = None  # uploaded already: the retry only deletes


@dataclass(frozen=True)
class Fail:
    error: str
    reason: str = "other"
    stored: Stored | None = None  # uploaded, then kept: the entry keeps its key


@dataclass(frozen=True)
class Release:
    """Hand the entry back at once (stopping)."""


@dataclass(frozen=True)
class Drop:
    """The lease was lost: someone else owns the entry; write nothing, delete nothing."""


Action = Ack | RetryLater | Fail | Release | Drop


def backoff(n: int, first: float, cap: float) -> float:
    """The n-th delay (n >= 1) of a series doubling from `first`, capped at `cap`."""
    return min(cap, first * 2 ** max(0, n - 1))


def jittered(delay: float) -> float:
    return delay * random.uniform(0.8, 1.2)


def decide(entry: Entry, outcome: object, streak: int, retries: Retries, max_attempts: int,
           jitter: Callable[[float], float] = jittered) -> Action:
    """What `outcome` (a pipeline result or an exception) means for `entry`, which has had
    `streak` transient outcomes in a row before this one. Transient errors never fail it."""
    if isinstance(outcome, Done):
        return Ack(outcome.note, stored(outcome.uploaded))
    if isinstance(outcome, Held):
        return RetryLater(outcome.why, outcome.delay, False)
    if isinstance(outcome, Undeleted):
        if outcome.retry_after is not None:
            return RetryLater(outcome.why, outcome.retry_after, False,
                              stored=stored(outcome.uploaded))
        return Fail(outcome.why, outcome.reason, stored(outcome.uploaded))
    if isinstance(outcome, LeaseLost):
        return Drop()
    if isinstance(outcome, UploadCancelled):
        return Release()
    if isinstance(outcome, TransientError):
        delay = backoff(streak + 1, retries.transient_delay, retries.transient_delay_max)
        return RetryLater(str(outcome), jitter(delay), False,
                          "throttled" if isinstance(outcome, Throttled) else "transient")
    if not isinstance(outcome, PermanentError):
        return decide(entry, PermanentError(
            f"internal error: {type(outcome).__name__}: {outcome}", reason="internal"),
            streak, retries, max_attempts, jitter)
    error = str(outcome)
    if outcome.final or entry.attempts + 1 >= max_attempts:
        return Fail(error, outcome.reason)
    delay = outcome.retry_after if outcome.retry_after is not None else backoff(
        entry.attempts + 1, retries.permanent_delay, retries.permanent_delay_max)
    return RetryLater(error, delay, True, outcome.reason)


def stored(uploaded: Uploaded | None) -> Stored | None:
    """What the queue records of a verified upload."""
    return Stored(uploaded.etag, uploaded.sha256) if uploaded is not None else None


class Breaker:
    """The store as one process sees it. After `after` transient outcomes with no success
    between, new claims pause for a growing, capped delay, rather than trying (and logging)
    the whole backlog one entry after another during an outage; after a pause, until an
    upload succeeds, the consumer claims `after` entries at most (a probe, not a batch of
    up to twice the fast path's window)."""

    def __init__(self, after: int, first: float, cap: float,
                 jitter: Callable[[float], float] = jittered) -> None:
        self.after, self.first, self.cap, self.jitter = after, first, cap, jitter
        self.failing = 0
        self.pauses = 0
        self.until = 0.0

    def closed(self, now: float) -> bool:
        """True when claims may go on."""
        return now >= self.until

    def failed(self, now: float) -> float | None:
        """One more transient outcome; the length of the pause it starts, if it starts one."""
        self.failing += 1
        if self.failing < self.after or now < self.until:
            return None
        self.pauses += 1
        pause = self.jitter(backoff(self.pauses, self.first, self.cap))
        self.until = now + pause
        return pause

    def answered(self) -> bool:
        """A successful upload; True if claims were paused until now."""
        paused = self.pauses > 0
        self.failing = self.pauses = 0
        self.until = 0.0
        return paused


class Verdicts:
    """`decide()` with what one process remembers between outcomes: each entry's transient
    streak (forgotten at any other outcome) and the Breaker."""

    def __init__(self, retries: Retries) -> None:
        self.retries = retries
        self.streaks: dict[int, int] = {}  # entry id -> transient outcomes in a row
        self.breaker = Breaker(retries.outage_after, retries.transient_delay,
                               retries.transient_delay_max)

    def judge(self, entry: Entry, outcome: object, max_attempts: int) -> Action:
        streak = self.streaks.pop(entry.id, 0)
        action = decide(entry, outcome, streak, self.retries, max_attempts)
        if isinstance(outcome, TransientError):
            self.streaks[entry.id] = streak + 1
        return action
