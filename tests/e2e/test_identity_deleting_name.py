"""Issue 14, case 7: the private name a consumer gives a file it deletes is never queued.

A consumer renames an uploaded file to `.sftppush-deleting.*` in its directory, checks the
inode, then unlinks it. That name shows up as a rename (IN_MOVED_TO) and may be seen by a
scan: it is not a new file, whatever the ignore globs. Here the globs are empty, so `.*` does
not hide it, and hidden control files in the same places must be queued. Both `sftppush
rescan` and a running `sftppush watch` are real processes; every way a name can appear is
tried: written in place, renamed within the directory (what the consumer does), renamed in
from outside, hard-linked in (sftp-server's rename), and inside a directory moved in.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.conftest import WatcherProcess, WatchTree

PRIVATE = ".sftppush-deleting."


def queued(tree: WatchTree) -> set[str]:
    return {str(path.relative_to(tree.upload)) for path in tree.counts()}


def test_rescan_never_queues_a_file_being_deleted(tmp_path: Path, run_cli) -> None:
    tree = WatchTree(tmp_path, watch={"ignore": []})
    sub = tree.upload / "2026" / "05"
    sub.mkdir(parents=True)
    for where in (tree.upload, sub):
        (where / f"{PRIVATE}data.csv").write_bytes(b"uploaded, being deleted\n")
        (where / f"{PRIVATE}0f3a9c.data.csv.gz").write_bytes(b"\x1f\x8b not really\n")
        (where / ".hidden.csv").write_bytes(b"a hidden file is a file\n")
        (where / "data.csv").write_bytes(b"a new version\n")

    done = run_cli("--config", tree.config, "rescan")
    assert done.returncode == 0, done.stderr

    assert queued(tree) == {".hidden.csv", "data.csv", "2026/05/.hidden.csv",
                            "2026/05/data.csv"}


def test_running_watcher_never_queues_a_file_being_deleted(tmp_path: Path) -> None:
    tree = WatchTree(tmp_path, watch={"ignore": []})
    outside = tmp_path / "outside"  # same filesystem, not watched
    outside.mkdir()
    watcher = WatcherProcess(tree.config, tmp_path / "watcher.log", "--no-rescan").start()
    try:
        up = tree.upload
        # 1. written in place (close-write)
        (up / f"{PRIVATE}written.csv").write_bytes(b"x\n")
        # 2. what the consumer does: the queued file renamed to its private name in place
        (up / "victim.csv").write_bytes(b"uploaded\n")
        tree.wait_for({up / "victim.csv"})
        os.rename(up / "victim.csv", up / f"{PRIVATE}victim.csv")
        # 3. renamed in from outside (moved-to)
        (outside / "moved.csv").write_bytes(b"x\n")
        os.rename(outside / "moved.csv", up / f"{PRIVATE}moved.csv")
        # 4. sftp-server's rename: link() then unlink(), no open in the watched directory
        (outside / "linked.csv").write_bytes(b"x\n")
        os.link(outside / "linked.csv", up / f"{PRIVATE}linked.csv")
        os.unlink(outside / "linked.csv")
        # 5. inside a directory moved in, which the watcher scans
        (outside / "dir").mkdir()
        (outside / "dir" / f"{PRIVATE}in-dir.csv").write_bytes(b"x\n")
        (outside / "dir" / ".hidden-in-dir.csv").write_bytes(b"x\n")
        os.rename(outside / "dir", up / "dir")
        # controls, last: once they are queued, every event above has been read
        (outside / ".hidden-moved.csv").write_bytes(b"x\n")
        os.link(outside / ".hidden-moved.csv", up / ".hidden-linked.csv")
        os.unlink(outside / ".hidden-moved.csv")
        (up / ".hidden-written.csv").write_bytes(b"x\n")
        tree.wait_for({up / ".hidden-written.csv", up / ".hidden-linked.csv",
                       up / "dir" / ".hidden-in-dir.csv"})
        time.sleep(1.0)  # and anything the watcher would queue late (a link's grace) is in
    finally:
        assert watcher.stop() == 0, watcher.log_text()[-3000:]

    assert queued(tree) == {"victim.csv", ".hidden-written.csv", ".hidden-linked.csv",
                            "dir/.hidden-in-dir.csv"}
