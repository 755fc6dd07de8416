"""Fixtures for whole-process tests: a real SFTP server and a TCP fault proxy, both on 127.0.0.1.

Each fixture stops what it started. S3 servers and the CLI runner come from tests/conftest.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

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
