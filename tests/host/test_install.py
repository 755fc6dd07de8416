"""The install of docs/operations.md, done on a real Debian with systemd as PID 1, leaves a
running service whose hardening holds when probed from inside it, not just on paper; its
consumers check their environment before they start, and their warnings reach the journal
with their priority."""

from __future__ import annotations

import json
import re
import time

import pytest

from tests.host.machine import require_bootable
from tests.host.server import CONSUMERS, WATCH, Server

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


def test_consumers_check_their_environment_as_the_service_user_before_they_start(
        server: Server) -> None:
    """ExecStartPre= runs `config check` as sftppush in the consumer's own sandbox: it passed
    for the install's first start; with an upload directory sftppush cannot write, the
    consumer does not start, and the journal names the directory at warning or worse."""
    m = server.m
    assert "environment ok for user sftppush" in m.journal(CONSUMERS[0])
    since = m.run("date", "+%Y-%m-%d %H:%M:%S").stdout.strip()
    m.run("chmod", "g-w", "/home/sftpuser2/upload")  # the ACL's mask with it: both ways gone
    try:
        started = m.run("systemctl", "restart", CONSUMERS[0], check=False)
        assert started.returncode != 0, "the consumer started with an unwritable upload dir"
        warnings = m.run("journalctl", "--no-pager", "-o", "cat", "-p", "warning", "-u",
                         CONSUMERS[0], "--since", since).stdout
        assert ("source sftpuser2: directory /home/sftpuser2/upload is not writable by user"
                " sftppush (Permission denied)") in warnings, warnings
        assert "config check: 1 problem in the environment of user sftppush" in warnings
    finally:
        m.run("chmod", "g+w", "/home/sftpuser2/upload")
    m.wait_active(CONSUMERS[0], timeout=30)  # Restart= tries again by itself
    server.assert_all_delivered()


def test_a_warning_of_the_consumer_is_found_by_journalctl_p_warning(server: Server) -> None:
    """A file that vanished before its upload, with no object: a warning, which journald
    stores at its priority because the line starts with <4>."""
    m = server.m
    m.run("systemctl", "stop", *CONSUMERS)
    since = m.run("date", "+%Y-%m-%d %H:%M:%S").stdout.strip()
    local = server.make_file("sftpuser1/gone.csv", b"here for a moment\n", gz=False)
    server.sftp("sftpuser1", f"put {local} /upload/gone.csv")
    deadline = time.monotonic() + 30
    while json.loads(server.operator("queue status --json"))["pending"] == 0:
        assert time.monotonic() < deadline, "the watcher did not queue the file"
        time.sleep(0.2)
    m.run("rm", "/home/sftpuser1/upload/gone.csv")
    m.run("systemctl", "start", CONSUMERS[0])
    try:
        deadline = time.monotonic() + 60
        while True:
            warnings = m.run("journalctl", "--no-pager", "-o", "cat", "-p", "warning", "-u",
                             CONSUMERS[0], "--since", since).stdout
            if "/home/sftpuser1/upload/gone.csv object=missing" in warnings:
                break
            assert time.monotonic() < deadline, m.journal(CONSUMERS[0])[-3000:]
            time.sleep(0.5)
        assert " WARNING sftppush.pipeline vanished id=" in warnings
        # Info lines are not warnings: the same journal has them, below that priority.
        assert "consumer started" not in warnings
        assert "consumer started" in m.journal(CONSUMERS[0], since=since)
    finally:
        m.run("systemctl", "start", CONSUMERS[1])
    server.wait_sftppush_up()
    server.assert_all_delivered()
