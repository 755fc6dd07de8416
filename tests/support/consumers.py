"""An in-process consumer in a thread: the one way tests run consumer.run in this process."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def consumer_thread(cfg: Any, tuning: Any = None, workers: int = 1,
                    drain: bool = False) -> Iterator[threading.Thread]:
    """consumer.run in a thread of this process: the one way tests run an in-process consumer.

    The stop event is ours, so no signal handler of pytest is replaced; the block's end sets
    it, joins the thread and re-raises what the consumer raised.
    """
    from sftppush import signals
    from sftppush.runtime import consumer

    stop = signals.Flag()  # its set() ends the consumer's wait at once
    errors: list[BaseException] = []

    def target() -> None:
        try:
            consumer.run(cfg, workers=workers, drain=drain, stop=stop,
                         tuning=tuning or consumer.Tuning())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name="consumer-under-test")
    thread.start()
    try:
        yield thread
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive(), "the consumer did not stop within 60 s"
    if errors:
        raise errors[0]
