"""What an outcome means for an entry: decide(), backoff() and the Breaker, with no threads."""

from __future__ import annotations

from dataclasses import asdict, fields

import pytest

from sftppush.errors import REASONS, PermanentError, TransientError
from sftppush.outcomes import Done, Held, LeaseLost, Undeleted, UploadCancelled, Uploaded
from sftppush.queue.entries import Entry, State, Stored
from sftppush.runtime.policy import (
    Ack,
    Breaker,
    Drop,
    Fail,
    Release,
    Retries,
    RetryLater,
    Tuning,
    backoff,
    decide,
)

RETRIES = Retries(transient_delay=5, transient_delay_max=300, permanent_delay=30,
                  permanent_delay_max=3600)


def entry(attempts: int = 0) -> Entry:
    return Entry(path=b"/home/u/a.csv", source="u", size=1, mtime_ns=1, ctime_ns=1, inode=1,
                 found_by="close_write", id=7, state=State.CLAIMED, owner="o", due=0.0,
                 attempts=attempts, enqueued_at=0.0, last_error=None, note=None)


def exact(delay: float) -> float:
    return delay


def test_backoff_doubles_from_the_first_delay_up_to_the_cap() -> None:
    assert [backoff(n, 5, 300) for n in range(1, 9)] == [5, 10, 20, 40, 80, 160, 300, 300]


def test_an_upload_is_acked_and_says_what_it_stored() -> None:
    up = Uploaded("b", "k", 1, "s", 0, "etag", "e1")
    assert decide(entry(), Done(None, up), 0, RETRIES, 5) == Ack(None, Stored("e1", "s"))
    assert decide(entry(), Done("superseded"), 0, RETRIES, 5) == Ack("superseded", None)


@pytest.mark.parametrize(("reason", "retry_after"), [("writing", 5.0), ("no_lease", None),
                                                     ("cannot_delete", None)])
def test_an_uploaded_file_left_on_disk_is_held_or_failed_and_keeps_its_upload(
        reason: str, retry_after: float | None) -> None:
    up = Uploaded("b", "k", 1, "s", 0, "etag", "e1")
    outcome = Undeleted(up, f"{reason}: why", reason, retry_after)
    action = decide(entry(4), outcome, 0, RETRIES, 5)
    if retry_after is None:
        assert action == Fail(f"{reason}: why", reason, Stored("e1", "s"))
    else:  # held: no attempt counted, no retry counted, however many attempts came before
        assert action == RetryLater(f"{reason}: why", retry_after, False, None,
                                    Stored("e1", "s"))


def test_a_held_entry_waits_without_counting_an_attempt() -> None:
    action = decide(entry(), Held(6.0), 0, RETRIES, 5)
    assert action == RetryLater("held: younger than min_age_seconds", 6.0, False)


def test_lost_lease_drops_and_a_cancelled_upload_releases() -> None:
    assert decide(entry(), LeaseLost("x"), 0, RETRIES, 5) == Drop()
    assert decide(entry(), UploadCancelled("stopping"), 0, RETRIES, 5) == Release()


@pytest.mark.parametrize("attempts", [0, 4, 100])
def test_transient_errors_never_fail_an_entry_and_back_off_with_the_streak(attempts: int) -> None:
    delays = [decide(entry(attempts), TransientError("S3 unreachable"), streak, RETRIES, 5, exact)
              for streak in range(8)]
    assert all(isinstance(a, RetryLater) and not a.count_attempt for a in delays)
    assert [a.delay for a in delays] == [5, 10, 20, 40, 80, 160, 300, 300]


def test_transient_delays_are_jittered_by_default() -> None:
    delays = {decide(entry(), TransientError("x"), 0, RETRIES, 5).delay for _ in range(50)}
    assert len(delays) > 1 and all(4.0 <= d <= 6.0 for d in delays)


def test_permanent_errors_count_attempts_then_fail_at_max_attempts() -> None:
    error = PermanentError("corrupt gzip: boom", reason="corrupt")
    assert decide(entry(0), error, 0, RETRIES, 3) == RetryLater(str(error), 30, True, "corrupt")
    assert decide(entry(1), error, 0, RETRIES, 3) == RetryLater(str(error), 60, True, "corrupt")
    assert decide(entry(2), error, 0, RETRIES, 3) == Fail(str(error), "corrupt")


def test_a_permanent_error_may_ask_for_its_own_short_delay() -> None:
    error = PermanentError("refused: 2 hard links", retry_after=2.0, reason="refused")
    assert decide(entry(0), error, 0, RETRIES, 5) == RetryLater(str(error), 2.0, True, "refused")


def test_an_unexpected_exception_is_a_permanent_internal_error() -> None:
    action = decide(entry(4), KeyError("boom"), 0, RETRIES, 5)
    assert action == Fail("internal error: KeyError: 'boom'", "internal")


@pytest.mark.parametrize("reason", REASONS)
def test_a_failure_is_counted_under_the_reason_its_error_was_raised_with(reason: str) -> None:
    # The message may name a path, which may contain anything: it never decides the class.
    error = "refused: /home/u/corrupt x is a symlink"
    assert decide(entry(4), PermanentError(error, reason=reason), 0, RETRIES, 5) == \
        Fail(error, reason)


def test_a_reason_outside_the_fixed_classes_is_refused_where_it_is_raised() -> None:
    with pytest.raises(ValueError, match="unknown failure reason 'corupt'"):
        PermanentError("corrupt gzip: x", reason="corupt")


def test_transient_retries_are_counted_as_such_and_a_held_entry_is_no_retry() -> None:
    assert decide(entry(), TransientError("x"), 0, RETRIES, 5).reason == "transient"
    assert decide(entry(), Held(6.0), 0, RETRIES, 5).reason is None


def test_the_breaker_pauses_after_failures_in_a_row_for_growing_delays() -> None:
    breaker = Breaker(3, 1.0, 4.0, exact)
    assert breaker.failed(0.0) is None and breaker.failed(0.0) is None
    assert breaker.closed(0.0)
    assert breaker.failed(0.0) == 1.0
    assert not breaker.closed(0.5) and breaker.closed(1.0)
    assert breaker.failed(0.5) is None  # failures while paused start no new pause
    assert breaker.failed(1.0) == 2.0
    assert breaker.failed(3.0) == 4.0 and breaker.failed(7.0) == 4.0
    assert breaker.answered() is True and breaker.closed(7.1)
    assert breaker.answered() is False
    assert breaker.failed(8.0) is None  # the count starts again after a success


def test_a_final_permanent_error_fails_at_its_first_attempt() -> None:
    """A key collision: no attempt helps until an operator acts, so none is made again."""
    error = PermanentError("key collision: u/a.csv holds /home/u/a.csv.gz", final=True,
                           reason="key_collision")
    assert decide(entry(0), error, 0, RETRIES, 5) == Fail(str(error), "key_collision")


def test_each_tuning_knob_is_set_by_its_own_name_and_an_unknown_one_is_refused() -> None:
    groups = {f.name: asdict(getattr(Tuning(), f.name)) for f in fields(Tuning)}
    knobs = [(group, name) for group, values in groups.items() for name in values]
    assert len({name for _, name in knobs}) == len(knobs), "a knob name is in two groups"
    for group, name in knobs:
        changed = asdict(Tuning.of(**{name: "set"}))
        assert changed[group][name] == "set"
        assert changed == {**groups, group: {**groups[group], name: "set"}}
    assert Tuning.of() == Tuning()
    with pytest.raises(TypeError, match="no knob poll_intervall"):
        Tuning.of(poll_interval=1, poll_intervall=2)
