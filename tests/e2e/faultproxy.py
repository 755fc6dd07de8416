"""A TCP proxy on 127.0.0.1 that fails on command, to put real network faults in front of S3.

refuse() closes new connections at once (RST), reset() kills the open ones (SO_LINGER 0),
stall() stops every byte both ways while keeping sockets open, cut() = refuse + reset,
slow(seconds) delays every chunk sent upstream, corrupt_part(n) flips one byte in the body of
the next multipart upload part number n, corrupt_put(key) in the next PUT of that key,
answer_puts(share, ...) answers that share of PUTs itself (503 SlowDown by default) without
passing them on, restore() lets everything flow again.
Runs its own asyncio loop in a background thread.
It also notes every HTTP/1.1 request whose body went through in full (`requests`), so a test
can count what reached the server — e.g. uploads of the same key.
"""

from __future__ import annotations

import asyncio
import re
import socket
import struct
import threading
from collections.abc import Coroutine
from typing import Any


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with an RST rather than a FIN: what a crashed server or a middlebox does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


class _RequestTap:
    """Follows one client→server HTTP/1.1 stream: Content-Length and chunked bodies."""

    def __init__(self, seen: list[tuple[str, str]], heads: list[dict[str, str]]):
        self.seen, self.heads = seen, heads
        self.buf = b""
        self.state = "head"  # head | body | chunk-size | trailer
        self.request: tuple[str, str] = ("", "")
        self.body_left = 0  # bytes of body (or of chunk data + its CRLF) still to pass

    def feed(self, data: bytes) -> None:
        self.buf += data
        while self._step():
            pass

    def _line(self, end: bytes = b"\r\n") -> str | None:
        at = self.buf.find(end)
        if at < 0:
            return None
        line, self.buf = self.buf[:at], self.buf[at + len(end):]
        return line.decode("latin-1")

    def _step(self) -> bool:
        if self.body_left:
            take = min(self.body_left, len(self.buf))
            self.buf, self.body_left = self.buf[take:], self.body_left - take
            if self.body_left:
                return False
            if self.state == "body":
                return self._finish()
            return True
        if self.state == "head":
            head = self._line(b"\r\n\r\n")
            if head is None:
                return False
            method, target = head.split(" ", 2)[:2]
            headers = {k.strip().lower(): v.strip() for k, _, v in
                       (h.partition(":") for h in head.split("\r\n")[1:])}
            self.request = (method, target)
            self.heads.append(headers)
            if "chunked" in headers.get("transfer-encoding", "").lower():
                self.state = "chunk-size"
                return True
            self.body_left = int(headers.get("content-length", 0))
            self.state = "body"
            return True if self.body_left else self._finish()
        line = self._line()
        if line is None:
            return False
        if self.state == "chunk-size":
            size = int(line.split(";")[0], 16)
            self.body_left = size + 2 if size else 0
            self.state = "chunk-size" if size else "trailer"
            return True
        return self._finish() if line == "" else True  # trailer lines until an empty one

    def _finish(self) -> bool:
        self.seen.append(self.request)
        self.state = "head"
        return True


class _Flip:
    """Flips one byte `offset` bytes into the body of the next request whose head holds
    `marker` (botocore may send the body later, after a 100 Continue)."""

    def __init__(self, marker: re.Pattern[bytes], offset: int = 1000):
        self.marker = marker
        self.left: int | None = None  # body bytes still to pass before the flip
        self.offset = offset
        self.done = False

    def feed(self, data: bytes) -> bytes:
        if self.done:
            return data
        start = 0
        if self.left is None:
            found = self.marker.search(data)
            if found is None:
                return data
            end = data.find(b"\r\n\r\n", found.start())
            start = end + 4 if end >= 0 else len(data)
            self.left = self.offset
        if start + self.left >= len(data):
            self.left -= len(data) - start
            return data
        flipped = bytearray(data)
        flipped[start + self.left] ^= 0xFF
        self.done = True
        return bytes(flipped)


class _Answerer:
    """Follows one client→server HTTP/1.1 stream and takes some PUTs out of it: their head
    and body are swallowed and `reply` is their answer (clients do not pipeline, so the
    server owes nothing before it). Only Content-Length bodies sent without Expect."""

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.buf = b""
        self.left = 0           # body bytes of the current request still to pass
        self.passing = True     # ... to the server (False: swallowed)

    def feed(self, data: bytes, client: asyncio.StreamWriter) -> bytes:
        """What to send on to the server; answers go back to `client` at once."""
        out = bytearray()
        self.buf += data
        while self.buf:
            if self.left:
                take = min(self.left, len(self.buf))
                if self.passing:
                    out += self.buf[:take]
                self.buf, self.left = self.buf[take:], self.left - take
                if not self.left and not self.passing:
                    client.write(self.proxy.reply)
                continue
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head, self.buf = self.buf[:end + 4], self.buf[end + 4:]
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in
                       (h.partition(":") for h in lines[1:] if h)}
            plain = "expect" not in headers and "transfer-encoding" not in headers
            self.passing = not (lines[0].startswith("PUT ") and plain
                                and self.proxy._answer_next())
            self.left = int(headers.get("content-length", 0))
            if self.passing:
                out += head
            elif not self.left:
                client.write(self.proxy.reply)
        return bytes(out)


class FaultProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1"):
        self.upstream = (upstream_host, upstream_port)
        self.port: int | None = None
        self.accepted = 0       # connections forwarded upstream
        self.refused = 0        # connections closed at accept while refusing
        self.reset_count = 0    # open connections killed by reset()/cut()
        self.bytes_up = 0       # bytes forwarded from clients to the server
        self.delay = 0.0        # seconds each chunk to the server waits (slow())
        self.requests: list[tuple[str, str]] = []  # (method, target) of HTTP requests sent whole
        self.heads: list[dict[str, str]] = []  # every request's headers (names in lower case)
        self.flip: _Flip | None = None
        self.share = 0.0        # of PUTs answered here (answer_puts)
        self.answered = 0       # PUTs answered here, not passed on
        self.puts_seen = 0      # PUTs looked at while answering
        self.reply = b""
        self._refusing = False
        self._conns: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="faultproxy",
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    # --- control, from any thread -------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def refuse(self) -> None:
        self._call(self._set(refusing=True))

    def reset(self) -> int:
        """Reset every open connection now; returns how many."""
        return self._call(self._reset_all())

    def stall(self) -> None:
        self._call(self._set(flowing=False))

    def slow(self, seconds: float) -> None:
        """Every chunk (up to 64 KiB) from a client waits `seconds` before it goes upstream."""
        self.delay = seconds

    def corrupt_part(self, number: int) -> None:
        """Flip a byte in the body of the next UploadPart request for part `number`."""
        self.flip = _Flip(re.compile(rb"[?&]partNumber=%d[& ]" % number))

    def corrupt_put(self, key: str) -> None:
        """Flip a byte near the start of the body of the next PUT of an object whose key
        ends with `key` (a single PUT: its Content-MD5 no longer matches)."""
        self.flip = _Flip(re.compile(rb"PUT /\S*" + re.escape(key.encode()) + rb" "), offset=10)

    def answer_puts(self, share: float, status: int = 503, code: str = "SlowDown") -> None:
        """Answer `share` of the PUTs on connections accepted from now on with `status` and
        the S3 error `code`, evenly spread (every second one for 0.5), without passing them
        on: the store never sees them."""
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                f"<Message>injected by the fault proxy</Message></Error>").encode()
        self.reply = (f"HTTP/1.1 {status} {code}\r\nContent-Type: application/xml\r\n"
                      f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        self.share = share

    def _answer_next(self) -> bool:
        seen, self.puts_seen = self.puts_seen, self.puts_seen + 1
        answer = int((seen + 1) * self.share) > int(seen * self.share)
        self.answered += answer
        return answer

    def cut(self) -> None:
        self.refuse()
        self.reset()

    def restore(self) -> None:
        self.delay = 0.0
        self.share = 0.0
        self._call(self._set(refusing=False, flowing=True))

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    # --- inside the loop ----------------------------------------------------------------------

    async def _listen(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        self._server.close()
        await self._reset_all()
        self._flowing.set()  # let stalled pumps run into their aborted sockets and end

    async def _set(self, refusing: bool | None = None, flowing: bool | None = None) -> None:
        if refusing is not None:
            self._refusing = refusing
        if flowing is True:
            self._flowing.set()
        elif flowing is False:
            self._flowing.clear()

    async def _reset_all(self) -> int:
        conns = list(self._conns)
        self._conns.clear()
        for client, upstream in conns:
            _abort(client)
            _abort(upstream)
        self.reset_count += len(conns)
        return len(conns)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing:
            self.refused += 1
            _abort(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _abort(writer)
            return
        self.accepted += 1
        conn = (writer, up_writer)
        self._conns.add(conn)
        try:
            answerer = _Answerer(self) if self.share else None
            tap = _RequestTap(self.requests, self.heads)
            await asyncio.gather(self._pump(reader, up_writer, conn, tap, answerer),
                                 self._pump(up_reader, writer, conn))
        finally:
            self._conns.discard(conn)
            for w in conn:
                w.transport.abort() if w.transport.is_closing() else w.close()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                    conn: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
                    tap: _RequestTap | None = None, answerer: _Answerer | None = None) -> None:
        flip: _Flip | None = None
        try:
            while True:
                data = await src.read(65536)
                await self._flowing.wait()  # a stall holds what was read, like a dead link
                if not data:
                    if dst.can_write_eof() and not dst.transport.is_closing():
                        dst.write_eof()
                    return
                if tap is not None:
                    data, flip = await self._upward(data, flip, conn, answerer)
                dst.write(data)
                await dst.drain()
                if tap is not None:
                    try:
                        tap.feed(data)
                    except ValueError:  # not HTTP/1.1 after all: stop following it
                        tap = None
        except (ConnectionError, OSError):
            for w in conn:
                w.transport.abort()

    async def _upward(self, data: bytes, flip: _Flip | None,
                      conn: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
                      answerer: _Answerer | None) -> tuple[bytes, _Flip | None]:
        """What goes on to the store of `data` read from the client: delayed, flipped,
        answered here instead (a shared object), counted."""
        if self.delay:
            await asyncio.sleep(self.delay)
        data, flip = self._flipped(data, flip)
        if answerer is not None:
            data = answerer.feed(data, conn[0])
        self.bytes_up += len(data)
        return data, flip

    def _flipped(self, data: bytes, flip: _Flip | None) -> tuple[bytes, _Flip | None]:
        if flip is None and self.flip is not None and self.flip.marker.search(data):
            flip, self.flip = self.flip, None  # this connection carries that part
        return (data if flip is None else flip.feed(data)), flip
