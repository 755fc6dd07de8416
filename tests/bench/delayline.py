"""A delay line for benchmarks: a TCP proxy on 127.0.0.1 that holds every byte for half a round
trip in each direction, without throttling, so a loopback store looks far away.

Owns the delay (and a new connection's handshake: the first bytes of a connection reach the
server one and a half round trips after it was accepted, as after TCP's SYN, SYN-ACK) and its
own CPU, which a benchmark reads and reports. It never changes, drops or reorders bytes and
never limits a rate: a side that reads more than `buffer` bytes ahead of its peer is paused,
as a TCP window would pause it, and that is the only brake. netem would do this in the
kernel, but needs modules these hosts lack.

    python -m tests.bench.delayline --upstream PORT --rtt-ms 40   # prints "listening PORT"

Benchmarks start it with `DelayLine(upstream_port, rtt_ms)` (a child process: its CPU is
its own, not the benchmark's).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUFFER = 32 * 2**20  # bytes one direction of one connection may hold before its reader pauses


class _Direction:
    """Bytes of one direction of one connection, each due half a round trip after it came."""

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float, not_before: float,
                 buffer: int) -> None:
        self.loop, self.delay, self.not_before, self.buffer = loop, delay, not_before, buffer
        self.items: collections.deque[tuple[float, bytes | None]] = collections.deque()
        self.held = 0
        self.timer: asyncio.TimerHandle | None = None
        self.src: asyncio.Transport | None = None
        self.dst: asyncio.Transport | None = None
        self.paused = False
        self.ending = False  # the end of the stream is queued
        self.ended = False   # ... and was passed on
        self.other: _Direction | None = None

    def push(self, data: bytes | None) -> None:
        """Queue `data` (None: the end of the stream) for its due time."""
        if self.ending or self.ended:
            return
        self.ending = data is None
        self.items.append((max(self.loop.time() + self.delay, self.not_before), data))
        if data:
            self.held += len(data)
            if self.held > self.buffer and self.src is not None and not self.paused:
                self.paused = True
                self.src.pause_reading()
        if self.timer is None:
            self._arm()

    def attach(self, dst: asyncio.Transport) -> None:
        self.dst = dst
        self.flush()

    def _arm(self) -> None:
        if self.items:
            self.timer = self.loop.call_at(self.items[0][0], self.flush)

    def flush(self) -> None:
        self.timer = None
        if self.dst is None:
            self._arm()  # the upstream connection is not there yet: keep the bytes
            return
        if self.dst.is_closing():
            self.items.clear()
            return
        now = self.loop.time()
        while self.items and self.items[0][0] <= now and not self.dst.is_closing():
            _, data = self.items.popleft()
            if data is not None:
                self.held -= len(data)
                self.dst.write(data)
                continue
            self.ended = True
            if self.other is not None and self.other.ended:
                self.close()  # both ways ended: nothing more can pass
            elif self.dst.can_write_eof():
                self.dst.write_eof()
            else:
                self.dst.close()
        if self.paused and self.held < self.buffer // 2 and self.src is not None:
            self.paused = False
            self.src.resume_reading()
        self._arm()

    def close(self, abort: bool = False) -> None:
        """Drop what is queued both ways and close both sockets (`abort`: with a reset)."""
        for way in (self, self.other):
            if way is None:
                continue
            if way.timer is not None:
                way.timer.cancel()
                way.timer = None
            way.items.clear()
            way.ended = True
            if way.dst is not None and not way.dst.is_closing():
                way.dst.abort() if abort else way.dst.close()


class _Side(asyncio.Protocol):
    """One socket of a proxied connection: what it reads goes out, delayed."""

    def __init__(self, out: _Direction, back: _Direction) -> None:
        self.out, self.back = out, back
        self.connecting: asyncio.Task[None] | None = None  # the client's: to the server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.out.src = transport
        self.back.attach(transport)

    def data_received(self, data: bytes) -> None:
        self.out.push(data)

    def eof_received(self) -> bool:
        self.out.push(None)
        return True  # keep the other half open: the peer may still answer

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:  # a reset: the peer learns at once, as from a RST
            self.out.close(abort=True)
        else:
            self.out.push(None)


class Proxy:
    """Accepts on 127.0.0.1 and connects each client to the upstream port through the line."""

    def __init__(self, upstream: int, rtt: float, buffer: int = BUFFER) -> None:
        self.upstream, self.rtt, self.buffer = upstream, rtt, buffer

    def client(self) -> _Side:
        loop = asyncio.get_running_loop()
        now = loop.time()
        # The kernel accepted at once; a real handshake costs the client one round trip
        # before its first byte leaves, so that byte is due 1.5 round trips from now.
        up = _Direction(loop, self.rtt / 2, now + self.rtt * 1.5, self.buffer)
        down = _Direction(loop, self.rtt / 2, now, self.buffer)
        up.other, down.other = down, up
        side = _Side(up, down)
        side.connecting = loop.create_task(self._connect(up, down))
        return side

    async def _connect(self, up: _Direction, down: _Direction) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: _Side(down, up), "127.0.0.1", self.upstream)
        except OSError:
            up.close(abort=True)
            return
        if down.dst is None or down.dst.is_closing():  # the client went meanwhile
            up.close(abort=True)


async def _serve(upstream: int, rtt_ms: float, port: int) -> None:
    proxy = Proxy(upstream, rtt_ms / 1000)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(proxy.client, "127.0.0.1", port, backlog=4096)
    print(f"listening {server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    server.close()


class DelayLine:
    """The line as a child process in front of `upstream_port`: `port` and `url` to connect
    to, `cpu()` its CPU seconds so far. A context manager; `rtt_ms` 0 is the same proxy with
    no delay (what a run at distance compares with)."""

    def __init__(self, upstream_port: int, rtt_ms: float) -> None:
        self.rtt_ms = rtt_ms
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.bench.delayline", "--upstream", str(upstream_port),
             "--rtt-ms", str(rtt_ms)], stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("listening "):
            self.close()
            raise RuntimeError(f"delay line did not start: {line!r}")
        self.port = int(line.split()[1])
        self.url = f"http://127.0.0.1:{self.port}"

    def cpu(self) -> float:
        from tests.bench.common import proc_cpu_seconds  # the line's process stays light

        return proc_cpu_seconds(self.process.pid)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self) -> DelayLine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", type=int, required=True, help="port on 127.0.0.1")
    parser.add_argument("--rtt-ms", type=float, default=40.0)
    parser.add_argument("--port", type=int, default=0, help="0: a free one")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.upstream, args.rtt_ms, args.port))


if __name__ == "__main__":
    main()
