"""The fault proxy does what the outage tests rely on: refuse, reset, stall, restore."""

from __future__ import annotations

import http.client
import http.server
import socket
import socketserver
import threading
from collections.abc import Iterator

import pytest


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.server.connections += 1
        try:
            while data := self.request.recv(65536):
                self.request.sendall(data)
        except ConnectionResetError:
            pass  # the proxy reset us: that is the point of some tests


class _Hello(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like boto3's connection pool

    def do_GET(self) -> None:
        body = b"hello " + self.path.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_PUT(self) -> None:
        if self.headers.get("Transfer-Encoding") == "chunked":
            while size := int(self.rfile.readline().split(b";")[0], 16):
                self.rfile.read(size + 2)
            while self.rfile.readline() not in (b"\r\n", b""):
                pass
        else:
            self.rfile.read(int(self.headers["Content-Length"]))
        self.do_GET()

    def log_message(self, *args: object) -> None:
        pass


def _serve(server: socketserver.TCPServer) -> Iterator[socketserver.TCPServer]:
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(10)


@pytest.fixture
def echo_server() -> Iterator[socketserver.TCPServer]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.connections = 0
    yield from _serve(server)


@pytest.fixture
def http_server() -> Iterator[socketserver.TCPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    server.handle_error = lambda *_: None  # resets are what these tests do
    yield from _serve(server)


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def _echo(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def test_proxy_forwards_both_ways(echo_server, fault_proxy):
    proxy = fault_proxy(echo_server.server_address[1])
    payload = bytes(range(256)) * 4096  # 1 MiB, more than one read
    with _connect(proxy.port) as sock:
        assert _echo(sock, payload) == payload
    assert proxy.accepted == 1


def test_refuse_closes_new_connections_without_reaching_upstream(echo_server, fault_proxy):
    proxy = fault_proxy(echo_server.server_address[1])
    proxy.refuse()
    with pytest.raises(ConnectionResetError), _connect(proxy.port) as sock:
        sock.sendall(b"x")
        sock.recv(1)  # RST arrives (maybe already at connect): closed with SO_LINGER 0
    assert proxy.refused == 1
    assert echo_server.connections == 0

    proxy.restore()
    with _connect(proxy.port) as sock:
        assert _echo(sock, b"back") == b"back"


def test_refuse_leaves_open_connections_alone(echo_server, fault_proxy):
    proxy = fault_proxy(echo_server.server_address[1])
    with _connect(proxy.port) as sock:
        assert _echo(sock, b"one") == b"one"
        proxy.refuse()
        assert _echo(sock, b"two") == b"two"


def test_reset_kills_open_connections(echo_server, fault_proxy):
    proxy = fault_proxy(echo_server.server_address[1])
    with _connect(proxy.port) as sock:
        assert _echo(sock, b"ping") == b"ping"
        assert proxy.reset() == 1
        with pytest.raises(ConnectionResetError):
            sock.sendall(b"after")
            sock.recv(1)
    assert proxy.open_connections == 0
    with _connect(proxy.port) as sock:  # new connections still work after a reset
        assert _echo(sock, b"new") == b"new"


def test_stall_holds_bytes_until_restore(echo_server, fault_proxy):
    proxy = fault_proxy(echo_server.server_address[1])
    with _connect(proxy.port) as open_before:
        assert _echo(open_before, b"a") == b"a"
        proxy.stall()
        open_before.settimeout(0.5)
        open_before.sendall(b"held")
        with pytest.raises(TimeoutError):
            open_before.recv(4)
        with _connect(proxy.port) as opened_during:  # the TCP handshake works; no bytes do
            opened_during.settimeout(0.5)
            opened_during.sendall(b"late")
            with pytest.raises(TimeoutError):
                opened_during.recv(4)
            proxy.restore()
            opened_during.settimeout(5)
            assert opened_during.recv(4) == b"late"
        open_before.settimeout(5)
        assert open_before.recv(4) == b"held"


def test_cut_fails_http_keepalive_and_new_requests_then_restore_heals(http_server, fault_proxy):
    proxy = fault_proxy(http_server.server_address[1])
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    conn.request("GET", "/one")
    assert conn.getresponse().read() == b"hello /one"

    proxy.cut()
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        conn.request("GET", "/two")  # the pooled connection was reset...
        conn.getresponse().read()
    conn.close()
    fresh = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        fresh.request("GET", "/three")  # ...and a new one is refused
        fresh.getresponse().read()
    fresh.close()

    proxy.restore()
    healed = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    healed.request("GET", "/four")
    assert healed.getresponse().read() == b"hello /four"
    healed.close()


def test_proxy_notes_each_http_request_sent_whole(http_server, fault_proxy):
    proxy = fault_proxy(http_server.server_address[1])
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    for method, path, body, chunked in [
            ("GET", "/a", None, False),
            ("PUT", "/bucket/key1", b"\r\n\r\nGET /fake HTTP/1.1\r\n\r\n" * 5000, False),
            ("PUT", "/bucket/key2", iter([b"abc", b"PUT /x HTTP/1.1\r\n\r\n", b"z" * 70000]),
             True),
            ("PUT", "/bucket/key1", b"", False)]:
        conn.request(method, path, body=body, encode_chunked=chunked)
        assert conn.getresponse().read() == b"hello " + path.encode()
    conn.close()

    assert proxy.requests == [("GET", "/a"), ("PUT", "/bucket/key1"), ("PUT", "/bucket/key2"),
                              ("PUT", "/bucket/key1")]
