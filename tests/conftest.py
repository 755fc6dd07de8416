"""Shared fixtures. Each room keeps its fixtures in its own clearly marked section."""

from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

# ---------------------------------------------------------------------------------------------
# Watcher fixtures (watcher room): a source tree with its config file, the watcher as a process.
# Also imported by tests/bench/bench_watcher.py. Everything lives under a temporary directory;
# notification sockets are abstract (no file) or in that directory.
# ---------------------------------------------------------------------------------------------

_WATCHER_REPO = Path(__file__).resolve().parent.parent


class WatchTree:
    """A userpath with one source `sftpuser1` watching `/upload`, its config file and queue."""

    def __init__(self, base: Path, ignore: list[str] | None = None) -> None:
        self.base = base
        self.userpath = base / "home"
        self.source = "sftpuser1"
        self.upload = self.userpath / self.source / "upload"
        self.upload.mkdir(parents=True)
        self.queue_path = base / "var" / "queue.db"
        self.config = base / "config.yaml"
        watch: dict[str, object] = {"source": [{"name": self.source, "paths": ["/upload"]}]}
        if ignore is not None:
            watch["ignore"] = ignore
        self.config.write_text(yaml.safe_dump({
            "defaults": {"userpath": str(self.userpath), "s3target": "test-bucket"},
            "watch": watch,
            "queue": {"path": str(self.queue_path)},
        }))

    def entries(self) -> list[object]:
        """Every queue entry, oldest first (empty if the queue file does not exist yet)."""
        from sftppush.queue import Queue

        if not self.queue_path.exists():
            return []
        with Queue(self.queue_path, create=False) as q:
            return list(reversed(q.list(limit=10_000_000)))

    def counts(self) -> collections.Counter[Path]:
        """How many entries each path has."""
        return collections.Counter(Path(os.fsdecode(e.path)) for e in self.entries())

    def wait_for(self, paths: set[Path], timeout: float = 30.0) -> collections.Counter[Path]:
        """Poll the queue until every path in `paths` has an entry; fail at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            counts = self.counts()
            missing = paths - set(counts)
            if not missing:
                return counts
            if time.monotonic() > deadline:
                sample = sorted(map(str, missing))[:5]
                raise AssertionError(f"{len(missing)} files never queued, e.g. {sample}")
            time.sleep(0.05)


class WatcherProcess:
    """`python -m sftppush --config CFG watch` as a child, with a real NOTIFY_SOCKET.

    `start()` returns once the watcher reported READY=1 (its watches are in place).
    """

    def __init__(self, config: Path, log: Path, *args: str,
                 env: dict[str, str] | None = None, notify_path: Path | None = None) -> None:
        self.config = config
        self.log = log
        self.args = args
        self.env = env or {}
        self.notify_path = notify_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self.messages: list[str] = []

    def start(self, timeout: float = 30.0) -> WatcherProcess:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if self.notify_path is not None:
            self.sock.bind(str(self.notify_path))
            address = str(self.notify_path)
        else:
            name = f"sftppush-test-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            address = "@" + name
        env = {**os.environ, "PYTHONPATH": str(_WATCHER_REPO), "NOTIFY_SOCKET": address,
               **self.env}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sftppush", "--config", str(self.config), "watch",
                 *self.args], env=env, stdout=log, stderr=subprocess.STDOUT)
        self.wait_message("READY=1", timeout)
        return self

    def wait_message(self, wanted: str, timeout: float = 30.0, count: int = 1) -> None:
        """Receive notifications until `count` have the line `wanted`; fail at the deadline."""
        assert self.sock is not None and self.proc is not None
        deadline = time.monotonic() + timeout
        while sum(wanted in m.splitlines() for m in self.messages) < count:
            left = deadline - time.monotonic()
            if left <= 0 or (self.proc.poll() is not None and not self._receive(0.01)):
                raise AssertionError(f"no {wanted} from the watcher (status "
                                     f"{self.proc.poll()}):\n{self.log.read_text()[-3000:]}")
            self._receive(min(left, 0.2))

    def _receive(self, timeout: float) -> bool:
        assert self.sock is not None
        self.sock.settimeout(timeout)
        try:
            self.messages.append(self.sock.recv(4096).decode())
            return True
        except (TimeoutError, BlockingIOError):
            return False

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait: the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        finally:
            self.close()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.close()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        while self.sock is not None and self._receive(0):
            pass  # keep what was sent before the end, e.g. STOPPING=1
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def watch_tree(tmp_path: Path) -> WatchTree:
    """A source tree and config for the watcher, under this test's temporary directory."""
    return WatchTree(tmp_path)


@pytest.fixture
def watcher(watch_tree: WatchTree, tmp_path: Path) -> Iterator[WatcherProcess]:
    """A running watcher over `watch_tree` (READY=1 received); stopped after the test."""
    proc = WatcherProcess(watch_tree.config, tmp_path / "watcher.log").start()
    try:
        yield proc
    finally:
        proc.close()

# --- end of watcher fixtures (watcher room) --------------------------------------------------
