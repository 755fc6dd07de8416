"""Shared fixtures: source trees with config files, and the CLI as a real subprocess."""

from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent

# Variables of the host that must not leak into a test's child processes: a test talks only
# to servers it started on 127.0.0.1, with the credentials it made up.
HOST_VARIABLES = ("AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE",
                  "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL",
                  "AWS_ENDPOINT_URL_S3", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
                  "AWS_SESSION_TOKEN", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy",
                  "https_proxy", "ALL_PROXY", "all_proxy", "NOTIFY_SOCKET", "WATCHDOG_USEC",
                  "STATE_DIRECTORY", "SFTPPUSH_CONFIG")


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a child sftppush: no SFTPPUSH_/host AWS settings, this repo first."""
    env = {k: v for k, v in os.environ.items()
           if k not in HOST_VARIABLES and not k.startswith("SFTPPUSH_")}
    env["PYTHONPATH"] = str(REPO)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update(extra or {})
    return env


def cli_argv(*args: str | os.PathLike[str]) -> list[str]:
    return [sys.executable, "-m", "sftppush", *map(str, args)]


@pytest.fixture
def run_cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run `sftppush ARGS` as a real process and return its completed result."""

    def run(*args: str | os.PathLike[str], env: dict[str, str] | None = None,
            timeout: float = 60, input: str | None = None,
            cwd: str | os.PathLike[str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(cli_argv(*args), env=child_env(env), capture_output=True,
                              text=True, timeout=timeout, input=input, cwd=cwd)

    return run


class SourceTree:
    """A userpath with one source (`sftpuser1`, watched dir `upload`) and a config writer."""

    def __init__(self, root: Path) -> None:
        self.userpath = root / "home"
        self.name = "sftpuser1"
        self.upload = self.userpath / self.name / "upload"
        self.upload.mkdir(parents=True)
        self.queue_path = root / "state" / "queue.db"
        self.config_path = root / "config.yaml"

    def config(self, bucket: str = "test-bucket", **sections: dict[str, Any]) -> dict[str, Any]:
        data: dict[str, Any] = {
            "defaults": {"userpath": str(self.userpath), "s3target": bucket},
            "watch": {"source": [{"name": self.name, "paths": ["/upload"]}]},
            "queue": {"path": str(self.queue_path)},
        }
        for section, values in sections.items():
            data.setdefault(section, {}).update(values)
        return data

    def write_config(self, bucket: str = "test-bucket", **sections: dict[str, Any]) -> Path:
        self.config_path.write_text(yaml.safe_dump(self.config(bucket, **sections)))
        return self.config_path


@pytest.fixture
def source_tree(tmp_path: Path) -> SourceTree:
    return SourceTree(tmp_path)


# ---------------------------------------------------------------------------------------------
# Watcher room: the watcher as a real process with a real NOTIFY_SOCKET, and the queue read
# back with a deadline. Also used by tests/bench/bench_watcher.py. Notification sockets are
# abstract (no file) unless a test passes a path in its own temporary directory.
# ---------------------------------------------------------------------------------------------

class WatchTree(SourceTree):
    """A SourceTree with its config written, and its queue read back for assertions."""

    def __init__(self, root: Path, **sections: dict[str, Any]) -> None:
        super().__init__(root)
        self.base = root
        self.config = self.write_config(**sections)

    def entries(self) -> list[Any]:
        """Every queue entry, oldest first (none if the queue file does not exist yet)."""
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
    """`sftppush --config CFG watch ARGS` as a child; `start()` returns once READY=1 arrived."""

    def __init__(self, config: Path, log: Path, *args: str, env: dict[str, str] | None = None,
                 notify_path: Path | None = None) -> None:
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
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                cli_argv("--config", self.config, "watch", *self.args),
                env=child_env({"NOTIFY_SOCKET": address, **self.env}),
                stdout=log, stderr=subprocess.STDOUT)
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
                                     f"{self.proc.poll()}):\n{self.log_text()[-3000:]}")
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
        """SIGTERM (after SIGCONT, in case it is stopped) and wait: the exit status."""
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
    """A source tree with its config file written, for the watcher and scan tests."""
    return WatchTree(tmp_path)


@pytest.fixture
def watcher(watch_tree: WatchTree, tmp_path: Path) -> Iterator[WatcherProcess]:
    """A running watcher over `watch_tree` (READY=1 received); killed if a test left it up."""
    proc = WatcherProcess(watch_tree.config, tmp_path / "watcher.log").start()
    try:
        yield proc
    finally:
        proc.close()

# --- end of the watcher room's fixtures ------------------------------------------------------
