"""scan.py: the walk shared by `rescan` and the watcher, and the backfill it drives."""

from __future__ import annotations

import collections
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from sftppush import config
from sftppush.pipeline.safeopen import DELETING_PREFIX
from sftppush.queue.entries import AWAY, FileVersion, Stored
from sftppush.queue.queue import Queue
from sftppush.source.scan import Counts, ignore_matcher, rescan, scan_source, still_needed, walk
from sftppush.status import read as read_stats
from tests.conftest import WatcherProcess, WatchTree, child_env, cli_argv

DEFAULT_IGNORE = ("*.filepart", "*.part", "*.tmp", ".*")


@pytest.mark.parametrize(("name", "ignored"), [
    ("a.csv.filepart", True), ("a.part", True), (".hidden", True), ("x.tmp", True),
    (b".ssh", True), ("a.csv", False), ("a.tmp.csv", False), ("A.TMP", False),
    ("part", False), (b"\xff\xfe.csv", False), (b"\xff.tmp", True),
])
def test_ignore_globs_match_whole_basenames(name: str | bytes, ignored: bool):
    assert bool(ignore_matcher(DEFAULT_IGNORE)(os.fsencode(name))) is ignored


def test_nothing_is_ignored_without_globs():
    assert not ignore_matcher(())(b".hidden")


@pytest.mark.parametrize("ignore", [(), DEFAULT_IGNORE, ("*.csv",)])
def test_a_file_being_deleted_is_never_queued_whatever_the_globs(ignore, tmp_path: Path):
    # The consumer renames a file to a private name to delete it (safeopen.SafeFile.unlink);
    # the watcher (ignore_matcher) and rescan (walk) must not take that name for a new file.
    private = DELETING_PREFIX + b"0123456789abcdef"
    assert ignore_matcher(ignore)(private)
    assert not ignore_matcher(ignore)(b"a.txt")
    (tmp_path / os.fsdecode(private)).write_bytes(b"uploaded, being deleted")
    (tmp_path / "a.txt").write_bytes(b"new")
    counts = Counts()
    found = [v.path for v in walk(bytes(tmp_path), "s", ignore, counts=counts) if v]
    assert found == [bytes(tmp_path / "a.txt")]
    assert counts.ignored == 1


def _tree(tree: WatchTree) -> None:
    up = tree.upload
    (up / "2026" / "01").mkdir(parents=True)
    (up / "2026" / "01" / "a.csv.gz").write_bytes(b"a")
    (up / "b.csv").write_bytes(b"bb")
    (up / "c.csv.filepart").write_bytes(b"partial")
    (up / ".cache").mkdir()
    (up / ".cache" / "inside-hidden-dir.csv").write_bytes(b"never")
    (up / b"\xff-latin1.csv".decode("utf-8", "surrogateescape")).write_bytes(b"x")
    os.symlink("/etc/passwd", up / "evil-link")
    os.symlink("/etc", up / "evil-dir-link")
    os.mkfifo(up / "fifo")


def test_scan_yields_every_non_directory_once_and_follows_no_symlink(watch_tree: WatchTree):
    _tree(watch_tree)
    cfg = config.load(watch_tree.config, env={})
    names = {os.path.relpath(v.path, os.fsencode(watch_tree.upload)): v
             for v in scan_source(cfg.watch.sources[0], cfg.watch.ignore)}
    assert set(names) == {b"2026/01/a.csv.gz", b"b.csv", b"\xff-latin1.csv", b"evil-link",
                          b"evil-dir-link", b"fifo"}
    link = names[b"evil-link"]
    assert link.size == len("/etc/passwd")  # lstat: the link itself, never its target
    assert link.inode == os.lstat(watch_tree.upload / "evil-link").st_ino
    b = names[b"b.csv"]
    st = os.lstat(watch_tree.upload / "b.csv")
    assert (b.source, b.size, b.mtime_ns, b.inode, b.found_by) == \
        ("sftpuser1", 2, st.st_mtime_ns, st.st_ino, "rescan")


def test_rescan_enqueues_missing_files_once_and_counts_what_it_did(watch_tree: WatchTree):
    _tree(watch_tree)
    cfg = config.load(watch_tree.config, env={})
    with Queue(watch_tree.queue_path) as q:
        dry = rescan(cfg, q, dry_run=True)
        assert (dry.found, dry.enqueued, dry.already, dry.ignored) == (6, 6, 0, 2)
        assert read_stats(q).backlog.pending == 0

        first = rescan(cfg, q)
        assert (first.found, first.enqueued, first.already) == (6, 6, 0)
        # A version already done is not queued again; a file rewritten since is.
        for entry in q.claim("test", 60, limit=10):
            assert q.ack(entry)
        (watch_tree.upload / "b.csv").write_bytes(b"rewritten")
        second = rescan(cfg, q)
        assert (second.found, second.enqueued, second.already) == (6, 1, 5)
        assert "found 6 files, enqueued 1, already queued 5, ignored 2" in second.line()


def test_rescan_of_one_source_leaves_the_others(tmp_path: Path):
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f.csv").write_bytes(name.encode())
    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text(yaml.safe_dump({
        "defaults": {"userpath": str(tmp_path), "s3target": "bucket"},
        "watch": {"source": [{"name": "one", "paths": ["/"]}, {"name": "two", "paths": ["/"]}]},
        "queue": {"path": str(tmp_path / "q.db")}}))
    cfg = config.load(cfg_file, env={})
    with Queue(cfg.queue.path) as q:
        assert rescan(cfg, q, source_name="two").enqueued == 1
        assert [e.source for e in q.list()] == ["two"]


def test_rescan_command_prints_its_summary(watch_tree: WatchTree, run_cli):
    _tree(watch_tree)
    result = run_cli("--config", watch_tree.config, "rescan", timeout=30)
    assert result.returncode == 0, result.stderr
    assert "enqueued 6" in result.stdout
    assert len(watch_tree.counts()) == 6


def test_rescan_dry_run_command_changes_nothing(watch_tree: WatchTree, run_cli):
    _tree(watch_tree)
    result = run_cli("--config", watch_tree.config, "rescan", "--dry-run", timeout=30)
    assert result.returncode == 0, result.stderr
    assert "would enqueue 6" in result.stdout
    assert watch_tree.counts() == {}


def test_rescan_while_the_watcher_runs_queues_nothing_twice(watch_tree: WatchTree,
                                                            watcher: WatcherProcess) -> None:
    written = set()
    rescans = []
    for batch in range(4):
        for i in range(100):
            path = watch_tree.upload / f"b{batch}" / f"f{i}.csv"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(b"x" * i)
            written.add(path)
        rescans.append(subprocess.Popen(cli_argv("--config", watch_tree.config, "rescan"),
                                        env=child_env(), stdout=subprocess.PIPE, text=True))
    for proc in rescans:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "found" in out
    watch_tree.wait_for(written)
    assert watcher.stop() == 0
    # Each finished version is queued exactly once. A rescan that catches a file between its
    # open and its close queues that partial version too: an older version, which the
    # consumer retires as superseded without uploading it (SPEC 4).
    final = {p: os.stat(p) for p in written}
    finished = collections.Counter()
    for e in watch_tree.entries():
        path = Path(os.fsdecode(e.path))
        st = final[path]
        if (e.inode, e.size, e.mtime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns):
            finished[path] += 1
        else:
            assert e.size < st.st_size or e.mtime_ns < st.st_mtime_ns, e
    assert finished == {p: 1 for p in written}


def test_a_version_gone_with_its_directory_keeps_its_entry_while_it_may_be_set_aside(
        tmp_path: Path) -> None:
    """A consumer killed between its set-aside and its unlink, and the directory renamed away
    by its client: the done entry (AWAY) is all that leads a later rescan to the private
    name, so purges keep it while the directory is away or holds that name."""
    directory = tmp_path / "home" / "u1" / "up" / "b"
    directory.mkdir(parents=True)
    path = directory / "x.csv"
    path.write_bytes(b"x" * 300)
    st = path.stat()
    private = directory / (DELETING_PREFIX + str(st.st_ino).encode()).decode()
    with Queue(tmp_path / "q.db") as q:
        q.enqueue_many([FileVersion.of(path, "u1", st, "rescan")], now=100)
        (entry,) = q.claim("w", 60, now=100)
        path.rename(private)  # the set-aside; then the consumer was killed
        directory.rename(tmp_path / "away")
        q.ack_many([(entry, f"{AWAY}; object exists at u1/up/b/x.csv")], now=100,
                   uploaded={entry.id: Stored("0123abcd", "sha")})
        assert q.purge_done(older_than=10, now=200, still_there=still_needed) == 0
        (tmp_path / "away").rename(directory)
        assert q.purge_done(older_than=10, now=300, still_there=still_needed) == 0
        private.unlink()  # what the consumer the rescan hands the entry to does
        assert q.purge_done(older_than=10, now=400, still_there=still_needed) == 1
