"""Which sftppush modules one small file's pass goes through: `python -m tests.bench.walk`.

One 4 KiB gzip file is queued for an in-process consumer (awscrt lane) on a loopback `rclone
serve s3`; every call made on Python threads from its enqueue to its ack is recorded, and the
package's modules are listed with the functions called in each. Calls on awscrt's own
threads (the PUT's answer, sink/answers.py) are not seen. A measurement, not a test.
"""

from __future__ import annotations

import gzip
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType

import yaml

from sftppush.config import load
from sftppush.queue.entries import FileVersion, State
from sftppush.queue.queue import Queue
from sftppush.runtime import consumer
from tests.bench.common import RcloneS3

PACKAGE = Path(consumer.__file__).parents[1]


class Calls:
    """The package's functions called on Python threads while `recording`."""

    def __init__(self) -> None:
        self.recording = False
        self.seen: dict[str, list[str]] = {}

    def __call__(self, frame: FrameType, event: str, _arg: object) -> None:
        path = frame.f_code.co_filename
        if self.recording and event == "call" and path.startswith(str(PACKAGE)):
            names = self.seen.setdefault(os.path.relpath(path, PACKAGE.parent), [])
            if frame.f_code.co_qualname not in names:
                names.append(frame.f_code.co_qualname)


def _idle(thread: threading.Thread) -> bool:
    """The consumer has started and waits, with nothing to do."""
    frame = sys._current_frames().get(thread.ident or 0)
    while frame is not None:
        if frame.f_code.co_name in ("_wait", "take", "_settle"):  # its wait, now and on 8a57873
            return True
        frame = frame.f_back
    return False


def main() -> int:
    calls = Calls()
    root = Path(tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    with RcloneS3(root / "s3") as server:
        bucket = server.create_bucket("walk")
        upload = root / "home" / "sftpuser1" / "upload"
        upload.mkdir(parents=True)
        (root / "config.yaml").write_text(yaml.safe_dump({
            "defaults": {"userpath": str(root / "home"), "s3target": f"{bucket}/p",
                         "endpoint_url": server.endpoint, "awsregion": "us-east-1"},
            "watch": {"source": [{"name": "sftpuser1", "paths": ["/upload"]}]},
            "queue": {"path": str(root / "queue.db")}}))
        os.environ.update(server.env())  # the sink reads its credentials there
        cfg = load(root / "config.yaml")
        with Queue(cfg.queue.path):
            pass
        threading.setprofile(calls)
        stop = threading.Event()
        thread = threading.Thread(target=consumer.run, args=(cfg,), kwargs={
            "workers": 2, "stop": stop, "tuning": consumer.Tuning.of(crt=True)})
        thread.start()
        while not _idle(thread):
            time.sleep(0.05)
        f = upload / "a.csv.gz"
        f.write_bytes(gzip.compress(os.urandom(2048).hex().encode()))
        calls.recording = True
        with Queue(cfg.queue.path) as q:
            q.enqueue_many([FileVersion.of(f, "sftpuser1", f.stat(), "close_write")])
            deadline = time.monotonic() + 30
            while q.counts()[State.DONE] < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            done = q.counts()[State.DONE]
        calls.recording = False
        stop.set()
        thread.join()
    print(f"done={done} deleted={not f.exists()} modules={len(calls.seen)}")
    for module in sorted(calls.seen):
        names = calls.seen[module]
        print(f"  {module}: {', '.join(names[:10])}{' ...' if len(names) > 10 else ''}")
    return 0 if done == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
