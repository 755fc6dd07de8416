"""A damaged queue file stops every command with one clear line naming it: exit 1, no traceback.

Damage as it happens on real disks: a file that is not SQLite at all, a header overwritten,
and a populated queue truncated mid-file (opens fine, fails on the first page it lacks).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sftppush.queue.entries import FileVersion
from sftppush.queue.queue import Queue


def _populated_queue(path: Path, count: int = 3000) -> None:
    st = os.stat(path.parent)
    with Queue(path) as q:
        q.enqueue_many(FileVersion.of(f"/home/sftpuser1/upload/f{i:06d}.csv", "sftpuser1",
                                      st, "rescan") for i in range(count))
        for entry in q.claim("killed-consumer", 300, limit=100):
            q.ack(entry)


def _not_sqlite(path: Path) -> None:
    path.write_bytes(b"definitely not a database\n" * 4096)


def _header_overwritten(path: Path) -> None:
    _populated_queue(path)
    with open(path, "r+b") as f:
        f.write(b"\xff" * 100)


def _truncated(path: Path) -> None:
    _populated_queue(path)
    with Queue(path) as q:  # fold the WAL back so the truncation hits the main file
        q.db._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = path.stat().st_size
    assert size > 64 * 1024, "the queue must span many pages for this test to mean anything"
    os.truncate(path, size // 3)


DAMAGE = {"not_sqlite": _not_sqlite, "header_overwritten": _header_overwritten,
          "truncated": _truncated}
COMMANDS = {
    "queue_status": ["queue", "status", "--json"],
    "queue_list": ["queue", "list", "--state", "pending", "--limit", "5000"],
    "consume": ["consume", "--drain", "--workers", "1"],
    "watch": ["watch"],
    "rescan": ["rescan"],
}


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("command", COMMANDS)
def test_damaged_queue_file_is_one_clear_line_and_exit_1(source_tree, run_cli, damage, command):
    (source_tree.upload / "waiting.csv").write_bytes(b"a,b\n")
    source_tree.queue_path.parent.mkdir(parents=True)
    DAMAGE[damage](source_tree.queue_path)
    config = source_tree.write_config()

    done = run_cli("--config", config, *COMMANDS[command], timeout=60)

    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1, done.stderr
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert str(source_tree.queue_path) in lines[0]
    assert (source_tree.upload / "waiting.csv").read_bytes() == b"a,b\n"
