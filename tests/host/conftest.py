"""One real server for the whole host suite (tests/host/server.py), booted once per session.

The machine is shared by the tests in file order (install, sftp, survives): each test leaves
it with nothing pending and no file on disk, which `Server.assert_all_delivered()` checks.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.host.machine import Machine, require_bootable
from tests.host.rootfs import rootfs
from tests.host.server import Server, install_as_the_docs_say, prepare, sftp_users


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every host test runs in one pytest-xdist worker: they share one booted machine."""
    for item in items:
        if item.nodeid.startswith("tests/host/"):
            item.add_marker(pytest.mark.xdist_group("host"))


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    require_bootable()
    workdir = Path(tempfile.mkdtemp(prefix="sftppush-host-", dir="/var/tmp"))
    machine = Machine(rootfs(), workdir / "machine")
    try:
        srv = Server(machine, workdir)
        prepare(machine, srv)
        machine.boot()
        sftp_users(machine)
        machine.wait_active("ssh.service", "test-s3.service")
        install_as_the_docs_say(machine)
        srv.wait_sftppush_up()
        yield srv
    finally:
        machine.close()
        shutil.rmtree(workdir, ignore_errors=True)
