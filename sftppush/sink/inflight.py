"""How many requests to keep in flight to one store: a window that follows the link.

Owns the window's arithmetic, increase/decrease as TCP's congestion window does it: pure code
over the latencies of answers and the store's requests to slow down. It never sends, waits,
locks or reads a clock: the transport (crt.py) asks it for the size and tells it what
happened.
"""

from __future__ import annotations

import collections
import statistics
from dataclasses import dataclass, field

GROW = 1.25            # a step up while below the threshold: the first, ...
GROW_MAX = 2.0         # ... up to this after steps that cost no latency (TCP's slow start) ...
GROW_AFTER = 1 / 16    # ... and above it (after a throttle), a sixteenth
PAID = 0.5             # a step pays when latency rose by less than this share of it ...
NOISE = 0.05           # ... give or take this much (an epoch's median is not exact); one
                       # within NOISE cost nothing: the next step is bigger
REST = 8               # epochs before a step that did not pay is tried again
RISE, RISE_SLACK = 2.0, 0.010  # latency above RISE x the lowest recent low + slack: shrink
LOW = 0.1              # an epoch's low: this quantile of its latencies
SHRINK = 0.875
MIN_EPOCH = 8          # answers: fewer say too little about the median
FULL = 0.85            # the window is full when this share of it ran, on average
RECENT = 32            # epochs whose lows make "the lowest recent low"
PIPE_GAIN = 2.0        # rising latency never shrinks it below this many pipes (BBR's gain) ...
RATE_RECENT = 8        # ... a pipe being the best recent epoch's rate x the lowest recent low


@dataclass
class _Epoch:
    """The answers of the epoch being measured."""

    latencies: list[float] = field(default_factory=list)
    running: int = 0          # the requests running at each answer, summed
    throttled: bool = False   # the store asked to slow down in it


@dataclass
class _Probe:
    """The step up being measured, and how big the next one is."""

    step: tuple[float, float] | None = None  # (size, median) before a step up
    factor: float = GROW                     # the next step up, below the threshold
    settling: bool = False                   # the epoch after a step: not measured
    rest: int = 0                            # epochs to wait before the next try


class Window:
    """The most requests in flight, between 1 and `ceiling`; `size` is the current one.

    It starts at `start` (default `floor`, what a store on loopback needs: more only queues
    there) and decides once per epoch, one window's worth of answers (about one round trip
    while it is full):

    - Grow while throughput grows. When the window was full (on average, requests running
      filled FULL of it: the sender is faster than the window lets it be), it grows a step,
      and the epoch after next (the first one may still answer requests sent before) says
      whether that paid: with the window full, throughput is window / latency (Little's
      law), so the step paid if latency rose by less than half of it. If it did, the next
      step follows in the same epoch (two epochs a step). The first step is x1.25; each
      that cost no latency at all (the link, not the store, set it) makes the next one
      bigger, up to x2, as TCP's slow start (32 to 256 in about 10 round trips); one
      that cost some brings it back to x1.25. A step that did not pay steps back: a big
      one halfway, which the next epochs measure as a step from the same start, and a
      x1.25 one all the way, resting REST epochs before it tries again. On a far link
      latency holds as the window grows, until the store is busy; on loopback the first
      step already only adds queueing; a sender busy elsewhere (its CPU) never fills it.
    - Shrink on rising latency: beyond RISE x the lowest low (the 10th percentile of an
      epoch's latencies, not its median: a window started high may queue at the store from
      its first epoch on, whose first answers still came before the queue) of the last
      RECENT epochs, an eighth per epoch, not below `floor`, nor below two pipes (BBR's
      gain: a pipe is the best rate of the last RATE_RECENT epochs, by Little's law, times
      the lowest low). Where requests queue at the store, two pipes hold twice the low, under
      the threshold: the rule stops above them anyway. Where something else raised latency
      (the cores the store or the sender share, busy elsewhere), fewer requests would not
      lower it and would leave the link idle: the window stays at two pipes, and a rise that
      lasts lowers it only as the rate it delivers falls.
    - Shrink on throttling (`throttled()`: 503 SlowDown, 429, throttling codes), at most once
      per window of answers as TCP once per round trip: halved, down to one request; growth
      above that level is then a sixteenth a step, and below `floor` it grows back an eighth
      per epoch whatever the latency (until the next throttle).
    """

    def __init__(self, floor: int = 32, ceiling: int = 256, min_epoch: int = MIN_EPOCH,
                 start: int | None = None) -> None:
        self.min_epoch = min_epoch  # answers an epoch takes at least
        self.ceiling = max(1, ceiling)
        self.floor = max(1, min(floor, self.ceiling))
        self.limit = float(max(self.floor, min(start or self.floor, self.ceiling)))
        self.threshold = float(self.ceiling)  # growth above it is careful (TCP's ssthresh)
        self.largest = self.size              # the largest size so far
        self.throttles = 0                    # times the store asked to slow down
        self.cuts = 0                         # ... that cut the window
        self._epoch = _Epoch()
        self._lows: collections.deque[float] = collections.deque(maxlen=RECENT)
        self._rates: collections.deque[float] = collections.deque(maxlen=RATE_RECENT)
        self._since_cut = self.size           # answers since the last cut
        self._probe = _Probe()

    @property
    def size(self) -> int:
        """Requests that may run at once now."""
        return int(self.limit)

    def throttled(self) -> None:
        """The store asked to slow down (503 SlowDown, 429, a throttling code)."""
        self.throttles += 1
        self._epoch.throttled = True
        if self._since_cut >= self.size:  # once per window of answers, as TCP once per RTT
            self.cuts += 1
            self._since_cut = 0
            self.limit = max(1.0, self.limit / 2)
            self.threshold = self.limit
            self._probe.step = None

    def answered(self, latency: float, running: int) -> None:
        """One answer came, `latency` seconds after its request started, while `running`
        requests were in flight (itself included)."""
        self._since_cut += 1
        self._epoch.latencies.append(latency)
        self._epoch.running += running
        if len(self._epoch.latencies) >= max(self.min_epoch, self.size):
            self._decide()

    def _decide(self) -> None:
        latencies, self._epoch.latencies = self._epoch.latencies, []
        latencies.sort()  # once, for the median and the low
        median = statistics.median(latencies)
        self._lows.append(latencies[int(len(latencies) * LOW)])
        full = self._epoch.running >= FULL * self.size * len(latencies)
        # Little's law: answers a second = requests in flight / latency, both on average.
        rate = self._epoch.running / max(sum(latencies), 1e-9)
        self._epoch.running = 0
        throttled, self._epoch.throttled = self._epoch.throttled, False
        if throttled:
            return  # cut already, at the throttle (whose quick refusals are no rate)
        self._rates.append(rate)
        if self.limit < self.floor:
            self.limit = min(float(self.floor), self.limit + max(1.0, self.limit / 8))
        elif median > RISE * min(self._lows) + RISE_SLACK:
            self.limit = max(float(self.floor), self.limit * SHRINK,
                             min(self.limit, self._pipes()))
            self._probe.step = None
        elif self._probe.settling:
            self._probe.settling = False
        elif self._probe.step is not None:
            if self._paid(median) and full:
                self._grow(median)  # the next step at once: two epochs a step
        elif full:
            self._grow(median)

    def _pipes(self) -> float:
        """PIPE_GAIN times what the link holds at the best recent rate and the lowest recent
        low (asked only after an unthrottled epoch's rate is in)."""
        return PIPE_GAIN * max(self._rates) * min(self._lows)

    def _grow(self, median: float) -> None:
        if self._probe.rest:
            self._probe.rest -= 1
            return
        grown = max(self.limit + 1, self.limit * self._probe.factor) \
            if self.limit < self.threshold else self.limit + max(1.0, self.limit * GROW_AFTER)
        grown = min(float(self.ceiling), grown)
        if int(grown) > self.size:
            self._probe.step, self._probe.settling = (self.limit, median), True
            self.limit = grown
            self.largest = max(self.largest, self.size)

    def _paid(self, median: float) -> bool:
        """Whether the step up just measured paid. If not, a big step goes back halfway (and
        that is measured next as a step from the same start), a small one back to before it,
        and the window rests."""
        (before, was), self._probe.step = self._probe.step, None
        step = self.limit / before
        if median / was > 1 + (step - 1) * PAID + NOISE:  # it only queued
            self._probe.factor = GROW
            halfway = before * (1 + step) / 2
            if step > GROW and int(halfway) > int(before):
                self._probe.step, self._probe.settling = (before, was), True
                self.limit = halfway
            else:
                self.limit, self._probe.rest = before, REST
            return False
        # Latency held: the link set it, not the store; bigger steps until one costs some.
        self._probe.factor = min(GROW_MAX, 1 + 2 * (self._probe.factor - 1)) \
            if median / was <= 1 + NOISE else GROW
        return True
