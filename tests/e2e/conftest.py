"""Fixtures for whole-process tests: a real SFTP server, a TCP fault proxy and an https
listener whose certificate nobody trusts, all on 127.0.0.1.

Each fixture stops what it started. S3 servers and the CLI runner come from tests/conftest.py.
"""

from __future__ import annotations

import datetime
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.e2e.faultproxy import FaultProxy
from tests.e2e.sftp_server import SftpServer, SshKeys


@pytest.fixture(scope="session")
def ssh_keys(tmp_path_factory: pytest.TempPathFactory) -> SshKeys:
    return SshKeys.generate(tmp_path_factory.mktemp("ssh"))


@pytest.fixture
def start_sftp(ssh_keys: SshKeys, tmp_path: Path) -> Iterator[Callable[..., SftpServer]]:
    """start_sftp({"sftpuser1": root}, rename="link"|"rename") -> a running SftpServer."""
    started: list[SftpServer] = []

    def start(roots: dict[str, Path], rename: str = "link") -> SftpServer:
        server = SftpServer(ssh_keys, roots, tmp_path / f"sftp-server-{len(started)}.log", rename)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def sftp_server(start_sftp: Callable[..., SftpServer], tmp_path: Path) -> SftpServer:
    """One user, sftpuser1, jailed in tmp_path/home/sftpuser1; renames like OpenSSH."""
    root = tmp_path / "home" / "sftpuser1"
    root.mkdir(parents=True)
    return start_sftp({"sftpuser1": root})


@pytest.fixture
def fault_proxy() -> Iterator[Callable[[int], FaultProxy]]:
    """fault_proxy(upstream_port) -> a running FaultProxy in front of 127.0.0.1:upstream_port."""
    started: list[FaultProxy] = []

    def start(upstream_port: int) -> FaultProxy:
        proxy = FaultProxy(upstream_port)
        started.append(proxy)
        return proxy.start()

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture
def tls_listener(tmp_path: Path) -> Iterator[str]:
    """An https endpoint on loopback whose certificate no one trusts (self-signed)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    pem = tmp_path / "tls.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pem)
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def handshake(conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            with context.wrap_socket(conn, server_side=True):
                pass
        except (ssl.SSLError, OSError):
            pass  # the client gave up on our certificate: that is the point
        finally:
            conn.close()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=handshake, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        server.close()
