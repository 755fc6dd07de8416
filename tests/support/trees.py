"""Source trees on disk with their config file, the watcher as a real process with a real
NOTIFY_SOCKET, the queue read back with a deadline, and the namespaces (own watch limit,
own mounts) the watcher tests run in. Also used by tests/bench/bench_watcher.py.
Notification sockets are abstract (no file) unless a test passes a path of its own."""

from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.processes import child_env, cli_argv


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


class WatchTree(SourceTree):
    """A SourceTree with its config written, and its queue read back for assertions."""

    def __init__(self, root: Path, **sections: dict[str, Any]) -> None:
        super().__init__(root)
        self.base = root
        self.config = self.write_config(**sections)

    def entries(self) -> list[Any]:
        """Every queue entry, oldest first (none if the queue file does not exist yet)."""
        from sftppush.queue.queue import Queue

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


def own_watch_limit(watches: int) -> tuple[str, ...]:
    """A command prefix: what follows it runs in a user namespace of its own (root mapped to
    root) whose inotify watch limit is `watches`. The kernel counts a user's watches per
    user namespace (and in every namespace above it), so a test reaches the limit there
    without lowering fs.inotify.max_user_watches for every other process of the machine."""
    return ("unshare", "--user", "--map-root-user", "--", "sh", "-c",
            'echo "$0" > /proc/sys/user/max_inotify_watches && exec "$@"', str(watches))


def set_watch_limit(pid: int, watches: int) -> None:
    """Raise (or lower) the watch limit of the user namespace process `pid` runs in."""
    subprocess.run(["nsenter", "--target", str(pid), "--user", "--", "sh", "-c",
                    f"echo {watches} > /proc/sys/user/max_inotify_watches"], check=True,
                   timeout=30)


def own_mounts(*first: str) -> tuple[str, ...]:
    """A command prefix: what follows it runs in a mount namespace of its own, after the
    shell command `first` (if any) ran there: what it mounts stays in the namespace and goes
    away with its processes."""
    return ("unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
            f'{" ".join(first) or ":"} && exec "$@"', "sh")


def in_mounts_of(pid: int, *command: str) -> None:
    """Run `command` (mount, umount) in the mount namespace of process `pid`."""
    subprocess.run(["nsenter", "--target", str(pid), "--mount", "--", *command], check=True,
                   timeout=30)


def seen_by(pid: int, path: Path) -> Path:
    """`path` as process `pid` sees it, through its own mounts (/proc/PID/root)."""
    return Path(f"/proc/{pid}/root") / path.relative_to("/")


def inotify_budget(where: Path) -> None:
    """Fail, saying so, when this machine's inotify budget is spent (other processes of the
    same user hold every watch or instance): a test that needs watches would otherwise fail
    later, as a timeout that looks like a bug of its own."""
    from inotify_simple import INotify
    from inotify_simple import flags as F

    def limit(name: str) -> str:
        try:
            return Path(f"/proc/sys/fs/inotify/{name}").read_text().strip()
        except OSError:
            return "?"

    try:
        with INotify() as probe:
            probe.add_watch(where, F.CREATE)
    except OSError as exc:
        pytest.fail(f"inotify is out of {'instances' if exc.errno == 24 else 'watches'} for"
                    f" this user ({exc.strerror}; fs.inotify.max_user_watches="
                    f"{limit('max_user_watches')}, max_user_instances="
                    f"{limit('max_user_instances')}): free some, or raise the limits",
                    pytrace=False)
