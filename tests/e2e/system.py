"""The product as real processes for one test: start, kill -9, restart, ask the queue, read logs.

Each process gets its own session (process group), so a kill takes its children with it — a
crashed service under systemd — and the owner test can always clean up everything it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from tests.conftest import child_env, cli_argv

T = TypeVar("T")


class Product:
    def __init__(self, workdir: Path, config: Path, env: dict[str, str]):
        self.config = config
        self.env = child_env(env)
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.starts: Counter[str] = Counter()

    # --- processes ----------------------------------------------------------------------------

    def start(self, name: str, *args: str,
              preexec_fn: Callable[[], None] | None = None,
              wrap: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
        """Start `sftppush ARGS` as process `name` (e.g. "watcher", "consumer-1"), through
        the command `wrap` if given (e.g. setpriv)."""
        assert not self.alive(name), f"{name} is already running"
        log = self.logs / f"{name}.{self.starts[name]}.log"
        self.starts[name] += 1
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [*wrap, *cli_argv("--config", self.config, "--log-format", "json", *args)],
                env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=preexec_fn)
        self.procs[name] = proc
        return proc

    def alive(self, name: str) -> bool:
        proc = self.procs.get(name)
        return proc is not None and proc.poll() is None

    def assert_alive(self) -> None:
        """Every process started (and not stopped by the test) is still running."""
        dead = {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}
        assert not dead, f"died: {dead}\n{self.log_tail()}"

    def pause(self, name: str) -> None:
        """SIGSTOP the whole process group: its claims freeze, so they can be counted."""
        os.killpg(self.procs[name].pid, signal.SIGSTOP)

    def resume(self, name: str) -> None:
        os.killpg(self.procs[name].pid, signal.SIGCONT)

    def kill9(self, name: str) -> None:
        proc = self.procs[name]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)

    def stop(self, name: str, timeout: float = 60) -> int:
        """SIGTERM, as systemd stops a unit; returns the exit status."""
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(20)
                except (subprocess.TimeoutExpired, ProcessLookupError):
                    pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # and any child it left behind
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait(30)

    # --- asking the product -------------------------------------------------------------------

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(cli_argv("--config", self.config, *args), env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def status(self) -> dict[str, Any]:
        done = self.cli("queue", "status", "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def entries(self, state: str | None = None) -> list[dict[str, Any]]:
        args = ["queue", "list", "--json", "--limit", "1000000"]
        done = self.cli(*args, *(["--state", state] if state else []))
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines()]

    def claimed_now(self, queue_path: Path) -> int:
        """Claimed entries, read without taking any lock: works while a consumer is paused
        inside a write transaction (the CLI would wait for its lock)."""
        with contextlib.closing(sqlite3.connect(f"file:{queue_path}?mode=ro", uri=True,
                                                timeout=30)) as db:
            return db.execute("SELECT count(*) FROM entries WHERE state = 'claimed'").fetchone()[0]

    def events(self, event: str | None = None) -> Iterator[dict[str, Any]]:
        """Every JSON log line of every process started, optionally one event kind only."""
        for log in sorted(self.logs.glob("*.log")):
            for line in log.read_text(errors="replace").splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and (event is None or record.get("event") == event):
                    yield record

    def log_tail(self, lines: int = 40) -> str:
        out = []
        for log in sorted(self.logs.glob("*.log")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {log.name}\n" + "\n".join(text))
        return "\n".join(out)


def files_under(root: Path) -> list[Path]:
    """Every non-directory left under root (regular files, links, FIFOs...)."""
    return sorted(p for p in root.rglob("*") if not p.is_dir() or p.is_symlink())
