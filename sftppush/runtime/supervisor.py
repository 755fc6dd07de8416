"""`sftppush run`: the watcher and consumer processes under one parent, for small hosts.

Owns starting, watching and stopping child processes: a child that dies is restarted (and
said so), one that keeps dying at start makes `run` give up with an error; SIGTERM/SIGINT stop
every child cleanly. It never touches files, the queue or S3.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sftppush import signals
from sftppush.config import Config
from sftppush.errors import SftppushError

log = logging.getLogger("sftppush.supervisor")

STOP_TIMEOUT = 120.0  # long enough for a consumer to finish an upload in flight
MAX_BACKOFF = 30.0
YOUNG = 10.0          # a child that dies this soon after its start crashed at start ...
GIVE_UP_AFTER = 5     # ... and this many such deaths in a row end `run`


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    backoff: float = 0.0
    restart_at: float = 0.0
    crashes: int = 0  # deaths in a row within YOUNG seconds of a start

    def start(self) -> None:
        # The child starts with SIGTERM/SIGINT blocked and unblocks them once its handlers
        # are in place (signals.on_stop): a stop sent while it is still importing is held,
        # not fatal, so it too ends in a clean exit.
        with signals.blocked():
            self.process = subprocess.Popen(self.argv, env=self.env)
        self.started = time.monotonic()
        log.info("started child=%s pid=%d", self.name, self.process.pid)


def child_argv(global_args: Sequence[str], *command: str) -> list[str]:
    # -P: the current directory is not put first on sys.path, so a `sftppush` folder there
    # (a checkout's parent, another project) cannot shadow the installed package.
    return [sys.executable, "-P", "-m", "sftppush", *global_args, *command]


def run(cfg: Config, *, global_args: Sequence[str], sources: Sequence[str] = (),
        consumers: int = 1, env: dict[str, str] | None = None,
        stop: threading.Event | None = None,
        on_ready: Callable[[], None] | None = None) -> None:
    """Run one watcher and `consumers` consumer processes until SIGTERM/SIGINT or `stop`."""
    stop = stop or threading.Event()
    env = dict(os.environ if env is None else env)
    source_args = [a for s in sources for a in ("--source", s)]
    workers = ["--workers", str(cfg.consumer.workers)]
    children = [Child("watcher", child_argv(global_args, "watch", *source_args), env)]
    children += [Child(f"consumer-{i}", child_argv(global_args, "consume", *workers,
                                                   *source_args), env)
                 for i in range(1, consumers + 1)]
    with signals.on_stop(stop) as stopping, \
            tempfile.TemporaryDirectory(prefix="sftppush-run-") as tmp:
        ready = _ReadySocket(Path(tmp) / "notify")
        children[0].env = {**env, "NOTIFY_SOCKET": str(ready.path)}

        def loop() -> None:
            if ready.poll() and on_ready is not None:
                on_ready()
            for child in children:
                _tend(child)
            stopping.wait(0.5)

        def shutdown(_ended: bool) -> None:
            _shutdown(children)
            ready.close()

        signals.drive(stop, lambda: _start(children, ready), loop, shutdown)


def _start(children: list[Child], ready: _ReadySocket) -> None:
    try:
        for child in children:
            child.start()
    except BaseException:  # those started are stopped, as when the loop ends
        _shutdown(children)
        ready.close()
        raise


def _tend(child: Child) -> None:
    """Restart a child that died, with a growing delay if it keeps dying young."""
    assert child.process is not None
    code = child.process.poll()
    if code is None:
        return
    now = time.monotonic()
    if child.restart_at == 0.0:
        lived = now - child.started
        child.crashes = child.crashes + 1 if lived < YOUNG else 0
        if child.crashes >= GIVE_UP_AFTER:
            raise SftppushError(
                f"run: child {child.name} exited with status {code} {child.crashes} times in"
                f" a row within {YOUNG:.0f}s of its start: giving up; its own error lines are"
                " above (try the same command alone, e.g. sftppush config check)")
        child.backoff = 0.0 if lived > 60 else min(MAX_BACKOFF, max(1.0, child.backoff * 2))
        child.restart_at = now + child.backoff
        log.warning("child died child=%s pid=%d status=%d restart_in_s=%.0f",
                    child.name, child.process.pid, code, child.backoff)
    if now >= child.restart_at:
        child.restart_at = 0.0
        child.start()
        log.warning("restarted child=%s pid=%d", child.name, child.process.pid)


def _shutdown(children: list[Child]) -> None:
    running = [c for c in children if c.process and c.process.poll() is None]
    for child in running:
        child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for child in running:
        try:
            child.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("child did not stop child=%s pid=%d, killing", child.name,
                      child.process.pid)
            child.process.kill()
            child.process.wait()
    log.info("stopped children=%d", len(running))


class _ReadySocket:
    """A private NOTIFY_SOCKET for the watcher child: READY=1 means its watches are in place."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)

    def poll(self) -> bool:
        ready = False
        while True:
            try:
                message = self.sock.recv(4096)
            except BlockingIOError:
                return ready
            if b"READY=1" in message.split(b"\n"):
                log.info("watcher ready")
                ready = True

    def close(self) -> None:
        self.sock.close()
