"""The README's install, done on a real Debian with systemd as PID 1, leaves a running service
whose hardening holds when probed from inside it, not just on paper."""

from __future__ import annotations

import json
import re

import pytest

from tests.host.conftest import CONSUMERS, WATCH, Server
from tests.host.machine import require_bootable

require_bootable()

MAX_EXPOSURE = 3.0


def test_readme_install_leaves_every_unit_running(server: Server) -> None:
    m = server.m
    for unit in (WATCH, *CONSUMERS, "sftppush-rescan.timer"):
        assert m.unit_property(unit, "ActiveState") == "active", unit
        assert m.unit_property(unit, "UnitFileState") in ("enabled", "indirect"), unit
    assert m.unit_property(WATCH, "User") == "sftppush"
    status = server.operator("queue status --json")
    assert '"failed": 0' in status, status


@pytest.mark.parametrize("unit", [WATCH, CONSUMERS[0], "sftppush-rescan.service",
                                  "sftppush-metrics.service"])
def test_live_security_exposure_is_within_budget(server: Server, unit: str) -> None:
    out = server.m.run("systemd-analyze", "security", "--no-pager", unit).stdout
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out)
    assert found, out[-2000:]
    assert float(found[1]) <= MAX_EXPOSURE, out


def test_metrics_unit_serves_the_queue_and_can_write_nothing(server: Server) -> None:
    m = server.m
    assert m.unit_property("sftppush-metrics.service", "ActiveState") == "active"
    text = m.run("curl", "-sf", "http://127.0.0.1:9464/metrics").stdout
    status = json.loads(server.operator("queue status --json"))
    for state in ("pending", "claimed", "done", "failed"):
        line = re.search(rf'^sftppush_queue_entries{{state="{state}"}} (\S+)$', text, re.M)
        assert line, text[:2000]
        assert abs(float(line[1]) - status[state]) <= 5, (state, line[1], status)
    pid = m.main_pid("sftppush-metrics.service")
    probe = m.run("nsenter", "-t", str(pid), "-m", "sh", "-c",
                  "touch /var/lib/sftppush/probe || touch /home/probe || touch /tmp/probe",
                  check=False)
    assert probe.returncode != 0, "the metrics unit could write somewhere"


def test_watcher_cannot_reach_the_network(server: Server) -> None:
    """From the running watcher's network namespace the store on the machine's loopback is
    out of reach (PrivateNetwork=yes), and the process is under a seccomp filter."""
    m = server.m
    pid = m.main_pid(WATCH)
    assert m.run("readlink", f"/proc/{pid}/ns/net").stdout != \
        m.run("readlink", "/proc/1/ns/net").stdout
    probe = m.run("nsenter", "-t", str(pid), "-n", "python3", "-c",
                  "import socket; socket.create_connection(('127.0.0.1', 9000), timeout=3)",
                  check=False)
    assert probe.returncode != 0, "the watcher's namespace reached the store"
    assert "unreachable" in probe.stderr or "refused" in probe.stderr, probe.stderr
    assert "Seccomp:\t2" in m.run("cat", f"/proc/{pid}/status").stdout


def test_consumer_can_write_only_upload_roots_and_its_state(server: Server) -> None:
    """In the running consumer's mount namespace, even root gets EROFS outside /home and
    /var/lib/sftppush (ProtectSystem=strict, ReadWritePaths=/home, StateDirectory=)."""
    m = server.m
    pid = str(m.main_pid(CONSUMERS[0]))

    def touch(directory: str) -> str:
        # A dot name: the watcher ignores it.
        result = m.run("nsenter", "-t", pid, "-m", "sh", "-c",
                       f"touch {directory}/.probe && rm {directory}/.probe", check=False)
        return "ok" if result.returncode == 0 else result.stderr

    for writable in ("/home/sftpuser1/upload", "/home/sftpuser2/upload", "/var/lib/sftppush"):
        assert touch(writable) == "ok", writable
    for readonly in ("/etc", "/etc/sftppush", "/opt/sftppush", "/usr/local/bin", "/var/lib",
                     "/var/lib/test-s3", "/root", "/var/log"):
        refused = touch(readonly)
        assert "Read-only file system" in refused or "Permission denied" in refused, readonly


def test_awscrt_runs_in_the_consumer_under_memory_deny_write_execute(server: Server) -> None:
    m = server.m
    uploads = server.batch("sftpuser2", 10)  # small files: the awscrt lane's
    server.wait_delivered(uploads, timeout=60)
    for unit in CONSUMERS:
        assert m.unit_property(unit, "MemoryDenyWriteExecute") == "yes"
        pid = m.main_pid(unit)
        maps = m.run("cat", f"/proc/{pid}/maps").stdout
        assert "_awscrt" in maps, f"{unit}: awscrt is not loaded"
    assert "Traceback" not in m.journal(*CONSUMERS)
