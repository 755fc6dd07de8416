"""The in-flight window (inflight.py) against model links: a round trip in front of a store
that answers so many requests per second, latency = max(round trip, window / capacity)."""

from __future__ import annotations

import itertools

import pytest

from sftppush.sink.inflight import Window


def run(window: Window, rtt: float, capacity: float, epochs: int = 300,
        demand: int | None = None) -> list[int]:
    """Feed `epochs` windows of answers from the model link; the sizes seen. `demand`: the
    most requests the sender has to send at once (None: always more than the window)."""
    sizes = []
    for _ in range(epochs):
        size = window.size
        running = size if demand is None else min(size, demand)
        for _ in range(max(8, size)):
            window.answered(max(rtt, running / capacity), running)
        sizes.append(window.size)
    return sizes


@pytest.mark.parametrize("rtt, capacity", [(0.040, 1500), (0.100, 1500), (0.040, 600),
                                           (0.100, 2000), (0.010, 3000)])
def test_a_far_store_gets_a_full_pipe_without_a_queue(rtt, capacity):
    window = Window(32, 256)
    size = run(window, rtt, capacity)[-1]
    pipe = rtt * capacity  # Little's law: what keeps the store busy
    throughput = size / max(rtt, size / capacity)
    assert throughput >= 0.95 * min(capacity, 256 / rtt), (size, pipe)
    assert max(rtt, size / capacity) <= 1.5 * rtt + 0.002, (size, pipe)  # little queueing


@pytest.mark.parametrize("rtt, capacity", [(0.100, 2000), (0.100, 1500), (0.040, 1500)])
def test_a_far_store_fills_its_pipe_within_ten_round_trips(rtt, capacity):
    # A step that costs no latency makes the next one bigger (TCP's slow start): at a
    # fixed x1.25 per two epochs, 32 to 150 took 14 round trips, a third of a short run.
    pipe = rtt * capacity
    sizes = run(Window(32, 256), rtt, capacity, epochs=10)
    assert max(sizes) >= pipe, sizes


def test_an_overshoot_steps_back_halfway_and_settles_near_the_pipe():
    # 40 ms x 1,500/s: a pipe of 60. Doubling from 60 overshoots to 120; the step back
    # bisects (90, 75) instead of returning to 60 at once, and no overshoot stays.
    sizes = run(Window(32, 256), 0.040, 1500, epochs=60)
    top = sizes.index(max(sizes))
    assert max(sizes) == 120 and 60 < sizes[top + 2] < 120, sizes
    assert probing(sizes[20:], 60), sizes


def probing(sizes: list[int], size: int) -> bool:
    """The window stays at `size` but for the short steps up that find it did not pay."""
    return sizes.count(size) >= 0.75 * len(sizes) and max(sizes) <= size * 1.25


def test_on_loopback_queueing_is_no_reason_to_grow():
    # 1 ms round trip, a store busy at 1,800 PUTs/s: 32 in flight already queue (18 ms).
    assert probing(run(Window(32, 256), 0.001, 1800), 32)


def test_a_window_the_sender_does_not_fill_does_not_grow():
    assert set(run(Window(32, 256), 0.100, 2000, demand=20)) == {32}


def test_the_ceiling_caps_the_window_and_the_floor_with_it():
    assert max(run(Window(32, 256), 0.100, 100_000)) == 256
    assert set(run(Window(32, 8), 0.100, 100_000)) == {8}


def test_rising_latency_shrinks_the_window_down_to_its_floor_not_below():
    window = Window(32, 256)
    run(window, 0.100, 2000)
    assert window.size > 150
    # The store slows down to a twentieth: requests queue there, latency rises.
    sizes = run(window, 0.100, 100, epochs=100)
    assert min(sizes) == 32
    down = sizes.index(32)
    assert sizes[:down] == sorted(sizes[:down], reverse=True)
    assert probing(sizes[down:], 32)


def test_a_short_rise_of_latency_the_window_does_not_cause_leaves_it_where_it_was():
    # 40 ms x 2,500/s: a pipe of 100. Then for 5 epochs every answer takes 100 ms more however
    # many run (the cores the store or the sender share are busy elsewhere): fewer requests
    # in flight would not bring it down, only leave the link idle. The window stays at two
    # pipes of the best recent rate, no lower.
    window = Window(32, 256)
    run(window, 0.040, 2500)
    before = window.size
    assert before >= 100
    for _ in range(5):
        for _ in range(window.size):
            window.answered(max(0.040, window.size / 2500) + 0.100, window.size)
    assert window.size == before


def test_a_store_asking_to_slow_down_halves_the_window_once_per_window_of_answers():
    window = Window(32, 256)
    run(window, 0.100, 2000)
    before = window.size
    for _ in range(10):  # a burst of throttles within one window: one cut
        window.throttled()
    assert window.size == before // 2 and window.cuts == 1 and window.throttles == 10
    for _ in range(window.size):
        window.answered(0.1, window.size)
    window.throttled()
    assert window.size == before // 4 and window.cuts == 2


def throttled_epochs(window: Window, epochs: int, latency: float) -> None:
    """`epochs` epochs, each with a throttle at its start."""
    for _ in range(epochs):
        window.throttled()
        for _ in range(max(8, window.size)):
            window.answered(latency, window.size)


def test_a_store_that_keeps_throttling_gets_one_request_at_a_time():
    window = Window(32, 256)
    throttled_epochs(window, 20, 0.001)
    assert window.size == 1


def test_after_throttling_the_window_comes_back_to_its_floor_then_grows_additively():
    window = Window(32, 256)
    throttled_epochs(window, 3, 0.1)
    assert window.size == 4
    sizes = run(window, 0.100, 100_000, epochs=30)
    assert 32 in sizes and sizes == sorted(sizes)
    above = [b - a for a, b in itertools.pairwise(sizes) if a >= 32]
    assert above and max(above) <= max(2, 256 // 16), sizes  # additive, not x1.25


def test_a_window_started_at_the_top_keeps_a_far_pipe_full_from_the_first_round_trip():
    # 100 ms x 2,000/s: a pipe of 200. Started at 256 (crt.CrtTransport's default) the first
    # epoch already runs at the store's rate; started at 32 it takes round trips to get there.
    top = run(Window(32, 256, start=256), 0.100, 2000, epochs=5)
    assert top[0] == 256 and min(top) >= 200, top
    assert run(Window(32, 256), 0.100, 2000, epochs=1)[0] < 200


def test_a_window_started_at_the_top_comes_down_when_it_only_queues():
    # On loopback the first answers come while few requests run (the sender is still opening
    # files): that is the latency the window is held to. Then 256 in flight at a store busy at
    # 1,800/s only queue (142 ms), and the window shrinks an eighth an epoch to its floor.
    window = Window(32, 256, start=256)
    assert window.size == window.largest == 256
    for _ in range(window.size):
        window.answered(0.002, 8)
    sizes = run(window, 0.001, 1800)
    down = sizes.index(32)
    assert sizes[:down] == sorted(sizes[:down], reverse=True) and down <= 20, sizes
    assert probing(sizes[down:], 32), sizes


def test_a_window_started_at_the_top_comes_down_even_when_its_first_epoch_queued():
    # Several consumers start at once on one store on loopback: 4 x 256 PUTs fill its queue
    # within the first epoch, whose answers took 0.5 to 142 ms as the queue built. Its median
    # (71 ms) is queueing already: held to that, 256 in flight (142 ms) would stay for good.
    # Held to its low (14 ms), the window shrinks an eighth an epoch until latency is within
    # 2 x 14 + 10 ms (68 in flight), then probes a step above that now and then.
    window = Window(32, 256, start=256)
    for i in range(1, 257):
        window.answered(0.142 * i / 256, i)
    sizes = run(window, 0.001, 1800)
    assert sizes[:8] == sorted(sizes[:8], reverse=True) and sizes[7] < 80, sizes
    assert max(sizes[8:]) <= 68 * 1.25, sizes
