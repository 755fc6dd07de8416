"""What a server lives through, in the order an unlucky year brings it: every file sent is
in S3 byte-exact afterwards and none is left on disk, whatever was killed, stopped or cut."""

from __future__ import annotations

import json
import time

import pytest

from tests.host.machine import require_bootable
from tests.host.server import CONSUMERS, USERS, WATCH, Server

require_bootable()


def queue_status(server: Server) -> dict:
    return json.loads(server.operator("queue status --json"))


def wait_for(what: str, check, timeout: float = 60, every: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not after {timeout}s: {what}"
        time.sleep(every)


def backlog_being_uploaded(server: Server, *consumers: str) -> int:
    """With the consumers stopped, both users send many small files and two 30 MB ones; then
    `consumers` start, and this returns once they have uploaded a few: a backlog, mid-way.
    Returns how many entries were unfinished (pending or claimed) in the status that showed
    the first uploads: read again, the consumers (a claim batch takes up to twice the
    in-flight window) may have drained it during the status call itself."""
    server.m.run("systemctl", "stop", *CONSUMERS)
    for user in USERS:
        server.batch(user, 2, size=30 << 20)
        server.batch(user, 400)
    done = queue_status(server)["done"]
    server.m.run("systemctl", "start", *consumers)
    seen: dict = {}

    def started() -> bool:
        seen.update(queue_status(server))
        return seen["done"] >= done + 5

    wait_for("uploads starting", started, every=0.05)
    return seen["pending"] + seen["claimed"]


def test_steady_uploads_by_both_users(server: Server) -> None:
    for _ in range(5):
        for user in USERS:
            server.batch(user, 20)
        time.sleep(0.5)
    server.assert_all_delivered()


def test_consumer_killed_mid_backlog_is_restarted_and_loses_nothing(server: Server) -> None:
    m = server.m
    restarts = server.restarts(CONSUMERS[0])
    left = backlog_being_uploaded(server, CONSUMERS[0])
    m.run("systemctl", "kill", "-s", "KILL", CONSUMERS[0])
    assert left > 0, "the backlog was gone before the kill"
    m.run("systemctl", "start", CONSUMERS[1])
    wait_for("consumer 1 restarted by systemd",
             lambda: server.restarts(CONSUMERS[0]) > restarts, timeout=30)
    server.wait_sftppush_up()
    server.assert_all_delivered()


def test_frozen_watcher_is_restarted_by_the_watchdog_and_loses_nothing(server: Server) -> None:
    m = server.m
    restarts = server.restarts(WATCH)
    m.run("systemctl", "kill", "--kill-whom=main", "-s", "SIGSTOP", WATCH)
    for _ in range(3):  # files keep arriving while it hangs
        for user in USERS:
            server.batch(user, 10)
        time.sleep(5)
    wait_for("the watchdog restarting the watcher",
             lambda: server.restarts(WATCH) > restarts, timeout=120, every=1)
    server.wait_sftppush_up()
    server.assert_all_delivered()
    assert "Watchdog timeout" in m.journal(WATCH)


def test_target_stopped_with_a_backlog_then_started(server: Server) -> None:
    m = server.m
    backlog_being_uploaded(server, *CONSUMERS)
    started = time.monotonic()
    m.run("systemctl", "stop", "sftppush.target")
    assert time.monotonic() - started < 60, "stopping took the consumers' whole TimeoutStopSec"
    for unit in (WATCH, *CONSUMERS):  # stopped by PartOf=, after the target's own job
        wait_for(f"{unit} stopped", lambda u=unit: m.unit_property(u, "ActiveState") ==
                 "inactive", timeout=60 - (time.monotonic() - started))
    for user in USERS:  # and files arrive while everything is stopped
        server.batch(user, 10)
    m.run("systemctl", "start", "sftppush.target")
    server.wait_sftppush_up()
    server.assert_all_delivered()


@pytest.mark.timeout(720)
def test_store_down_for_a_minute(server: Server) -> None:
    m = server.m
    m.run("systemctl", "stop", "test-s3.service")
    try:
        for _ in range(4):
            for user in USERS:
                server.batch(user, 10)
            time.sleep(15)
    finally:
        m.run("systemctl", "start", "test-s3.service")
    # Claims pause for a doubling delay while the store fails (5 s up to 5 min): the first
    # claim after a minute's outage may come minutes after the store is back.
    server.assert_all_delivered(timeout=420)
    assert queue_status(server)["failed"] == 0


def test_clean_reboot_with_a_backlog(server: Server) -> None:
    m = server.m
    m.run("systemctl", "stop", *CONSUMERS)
    uploads = [u for user in USERS for u in server.batch(user, 100)]
    wait_for("the watcher queueing the backlog",
             lambda: queue_status(server)["pending"] >= len(uploads))
    m.reboot()
    server.wait_sftppush_up()
    server.assert_all_delivered()


def test_power_cut_with_a_backlog_then_boot(server: Server) -> None:
    m = server.m
    left = backlog_being_uploaded(server, *CONSUMERS)
    m.power_cut()
    assert left > 0, "the backlog was gone before the power cut"
    m.boot()
    server.wait_sftppush_up()
    server.assert_all_delivered()
