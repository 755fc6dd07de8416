"""notify.py: sd_notify datagrams on a real unix socket; silent outside systemd."""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from pathlib import Path

from sftppush.source.notify import notify, watchdog_interval


def test_notify_sends_to_a_socket_path():
    with tempfile.TemporaryDirectory(dir="/tmp") as short, \
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        path = str(Path(short) / "n")
        sock.bind(path)
        assert notify("READY=1", env={"NOTIFY_SOCKET": path})
        assert sock.recv(100) == b"READY=1"


def test_notify_sends_to_an_abstract_socket():
    name = f"sftppush-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        assert notify("WATCHDOG=1", env={"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(100) == b"WATCHDOG=1"


def test_notify_is_a_no_op_outside_systemd():
    assert notify("READY=1", env={}) is False


def test_a_vanished_socket_is_logged_not_raised(caplog):
    assert notify("STOPPING=1", env={"NOTIFY_SOCKET": f"@sftppush-none-{uuid.uuid4().hex}"}) \
        is False
    assert "notify failed state=STOPPING" in caplog.text


def test_watchdog_pings_at_half_the_interval():
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) \
        == 15.0


def test_no_watchdog_when_not_asked_or_meant_for_another_process():
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "junk"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}) is None
