"""The watcher as a real process on real inotify: every finished file queued exactly once."""

from __future__ import annotations

import os
import random
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import yaml
from inotify_simple import INotify

from sftppush import config, signals
from sftppush.pipeline.safeopen import set_aside_name
from sftppush.queue.queue import Queue
from sftppush.source.events import events
from sftppush.source.watcher import Watcher
from sftppush.source.watches import SUBDIR_MASK
from tests.conftest import WatcherProcess, WatchTree, cli_argv, stopped_after

MAX_QUEUED_EVENTS = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())


def write(path: Path, data: bytes = b"data\n") -> Path:
    path.write_bytes(data)
    return path


def link_rename(temp: Path, final: Path, data: bytes = b"linked\n") -> Path:
    """What OpenSSH's sftp-server does for SSH_FXP_RENAME: link() then unlink()."""
    write(temp, data)
    os.link(temp, final)
    os.unlink(temp)
    return final


def stopped_counts(tree: WatchTree, proc: WatcherProcess, expected: set[Path]):
    """Wait until all expected files are queued, stop the watcher (exit 0), then count.

    Stopping commits everything the watcher still held back, so a late duplicate would show.
    """
    tree.wait_for(expected)
    assert proc.stop() == 0, proc.log_text()
    return tree.counts()


def found_by(tree: WatchTree) -> dict[str, str]:
    return {os.path.basename(os.fsdecode(e.path)): e.found_by for e in tree.entries()}


def test_finished_files_are_queued_exactly_once(watch_tree: WatchTree, watcher: WatcherProcess):
    up = watch_tree.upload
    plain = write(up / "plain.csv.gz")
    empty = write(up / "empty.dat", b"")
    renamed = up / "renamed.csv"
    os.rename(write(up / "renamed.csv.tmp"), renamed)
    winscp = up / "winscp.csv"
    os.rename(write(up / "winscp.csv.filepart"), winscp)
    linked = link_rename(up / "openssh.csv.filepart", up / "openssh.csv")
    ignored = [write(up / "still.part"), write(up / ".hidden"), write(up / "x.tmp")]
    expected = {plain, empty, renamed, winscp, linked}

    counts = stopped_counts(watch_tree, watcher, expected)

    assert counts == {p: 1 for p in expected}
    assert not set(ignored) & set(counts)
    assert found_by(watch_tree) == {"plain.csv.gz": "close_write", "empty.dat": "close_write",
                                    "renamed.csv": "moved_to", "winscp.csv": "moved_to",
                                    "openssh.csv": "created"}


def test_file_created_by_open_is_taken_only_at_its_close_write(watch_tree: WatchTree,
                                                               watcher: WatcherProcess):
    up = watch_tree.upload
    slow = (up / "slow.bin").open("wb")
    slow.write(b"first half ")
    slow.flush()
    # A link+unlink rename made after the open: once it is queued, the slow file's IN_CREATE
    # has had at least as long to be (wrongly) taken for a link.
    marker = link_rename(up / "marker.filepart", up / "marker")
    watch_tree.wait_for({marker})
    assert up / "slow.bin" not in watch_tree.counts()

    slow.write(b"second half")
    slow.close()
    counts = stopped_counts(watch_tree, watcher, {up / "slow.bin", marker})
    assert counts == {up / "slow.bin": 1, marker: 1}
    (entry,) = [e for e in watch_tree.entries() if e.path.endswith(b"slow.bin")]
    assert (entry.size, entry.found_by) == (len(b"first half second half"), "close_write")


def test_link_rename_still_queued_when_the_new_name_is_read_at_once(watch_tree: WatchTree,
                                                                    watcher: WatcherProcess):
    final = link_rename(watch_tree.upload / "a.filepart", watch_tree.upload / "a.csv")
    assert final.read_bytes() == b"linked\n"  # IN_OPEN + IN_CLOSE_NOWRITE right after the link
    assert stopped_counts(watch_tree, watcher, {final}) == {final: 1}


def test_new_directories_filled_at_once_are_queued(watch_tree: WatchTree,
                                                   watcher: WatcherProcess):
    up = watch_tree.upload
    expected = set()
    for day in range(20):
        deep = up / "2026" / f"{day:02d}" / "raw"
        deep.mkdir(parents=True)
        expected.add(write(deep / "a.csv"))
        expected.add(link_rename(deep / "b.filepart", deep / "b.csv"))
    outside = watch_tree.base / "elsewhere"
    (outside / "sub").mkdir(parents=True)
    for i in range(50):
        write(outside / ("sub" if i % 2 else "") / f"{i}.csv")
    os.rename(outside, up / "moved-in")
    expected |= {p for p in (up / "moved-in").rglob("*") if p.is_file()}
    later = write(up / "2026" / "00" / "raw" / "later.csv")  # the new dir is watched
    expected.add(later)

    counts = stopped_counts(watch_tree, watcher, expected)
    assert counts == {p: 1 for p in expected}


def test_file_open_while_its_new_dir_is_scanned_is_queued_once_at_close(watch_tree: WatchTree):
    # In-process, to hold the race still: the file is opened before its directory is
    # watched, listed by the directory's scan half-written, and closed after.
    cfg = config.load(watch_tree.config, env={})
    with Queue(watch_tree.queue_path) as queue, INotify(nonblocking=True) as inotify:
        watcher = Watcher(cfg, queue, inotify)
        watcher.start(rescan=False)
        (watch_tree.upload / "new").mkdir()
        path = watch_tree.upload / "new" / "slow.csv"
        with path.open("wb") as f:
            f.write(b"first half ")
            f.flush()
            watcher.step()  # reads the mkdir, watches and lists the new dir: slow.csv is there
            f.write(b"second half")
        watcher.step()  # reads the close-write
        watcher.shutdown()
    assert [(e.size, e.found_by) for e in watch_tree.entries()] == [(22, "close_write")]


def test_directory_renamed_inside_the_tree_keeps_being_watched(watch_tree: WatchTree,
                                                               watcher: WatcherProcess):
    up = watch_tree.upload
    (up / "incoming").mkdir()
    first = write(up / "incoming" / "first.csv")
    watch_tree.wait_for({first})
    os.rename(up / "incoming", up / "sorted")
    after = write(up / "sorted" / "after.csv")
    counts = stopped_counts(watch_tree, watcher, {after, up / "sorted" / "first.csv"})
    # first.csv moved with its directory: a new path, so a new entry; the old one's file is gone.
    assert counts == {first: 1, up / "sorted" / "first.csv": 1, after: 1}


def test_directory_filled_under_an_ignored_name_is_taken_when_renamed(
        watch_tree: WatchTree, watcher: WatcherProcess):
    up = watch_tree.upload
    (up / ".incoming").mkdir()
    for i in range(10):
        write(up / ".incoming" / f"{i}.csv")
    os.rename(up / ".incoming", up / "batch1")
    expected = {up / "batch1" / f"{i}.csv" for i in range(10)}
    assert stopped_counts(watch_tree, watcher, expected) == {p: 1 for p in expected}


def test_mtime_set_after_close_is_a_new_version(watch_tree: WatchTree, watcher: WatcherProcess):
    path = write(watch_tree.upload / "kept-time.csv")
    watch_tree.wait_for({path})
    os.utime(path, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    watch_tree.wait_for({path})
    assert watcher.stop() == 0
    entries = [e for e in watch_tree.entries() if e.path == os.fsencode(path)]
    assert [(e.found_by, e.mtime_ns) for e in entries][-1] == ("attrib", 1_600_000_000 * 10**9)
    assert len(entries) == 2


def test_mtime_restored_while_a_reader_has_the_file_open_is_a_new_version(
        watch_tree: WatchTree):
    """`sftp put -p` over a file a consumer is reading: the client's close-write is read
    with the new mtime, then its utime restores the old one while the consumer still has
    the file open. That change (only ctime tells the version) is queued at the reader's
    close. In-process, to hold the order of the reads still."""
    cfg = config.load(watch_tree.config, env={})
    path = watch_tree.upload / "resent.csv"
    with Queue(watch_tree.queue_path) as queue, INotify(nonblocking=True) as inotify:
        watcher = Watcher(cfg, queue, inotify)
        watcher.start(rescan=False)
        path.write_bytes(b"the first send\n")
        old = path.stat()
        reader = os.open(path, os.O_RDONLY)  # the consumer, uploading the first send
        watcher.step()  # reads the reader's open (two opens in a row are one event)
        path.write_bytes(b"the re-send, in place\n")
        watcher.step()  # reads the re-send's close-write
        time.sleep(0.05)  # ctime ticks with the kernel's coarse clock
        os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))
        watcher.step()  # reads the change while the file is still open
        os.close(reader)
        watcher.step()  # reads the reader's close
        watcher.shutdown()
    final = path.stat()
    last = watch_tree.entries()[-1]
    assert (last.mtime_ns, last.ctime_ns) == (old.st_mtime_ns, final.st_ctime_ns)


def test_sigterm_commits_what_was_read_and_exits_0(watch_tree: WatchTree,
                                                   watcher: WatcherProcess):
    up = watch_tree.upload
    files = {write(up / f"{i}.csv") for i in range(50)}
    files.add(link_rename(up / "last.filepart", up / "last.csv"))  # still in its grace period
    assert watcher.stop() == 0
    assert watch_tree.counts() == {p: 1 for p in files}
    assert "STOPPING=1" in watcher.messages


def test_start_up_rescan_queues_files_written_while_down(watch_tree: WatchTree, tmp_path: Path):
    (watch_tree.upload / "old").mkdir()
    before = {write(watch_tree.upload / "before.csv"),
              write(watch_tree.upload / "old" / "deep.csv")}
    proc = WatcherProcess(watch_tree.config, tmp_path / "w.log").start()
    assert stopped_counts(watch_tree, proc, before) == {p: 1 for p in before}

    skipped = write(watch_tree.upload / "while-down.csv")
    proc = WatcherProcess(watch_tree.config, tmp_path / "w.log", "--no-rescan").start()
    after = write(watch_tree.upload / "after.csv")
    counts = stopped_counts(watch_tree, proc, {after})
    assert skipped not in counts


def test_overflow_while_stopped_loses_nothing(watch_tree: WatchTree, watcher: WatcherProcess):
    up = watch_tree.upload
    watcher.signal(signal.SIGSTOP)
    # 3 events per file (create, open, close-write): this overflows the kernel's queue ...
    burst = {write(up / f"{i}.csv", b"x") for i in range(MAX_QUEUED_EVENTS // 3 + 1000)}
    # ... so the creation of this directory is dropped too: the rescan must watch it.
    (up / "new").mkdir()
    burst |= {write(up / "new" / f"{i}.csv", b"x") for i in range(100)}
    watcher.signal(signal.SIGCONT)
    watch_tree.wait_for(burst, timeout=60)
    later = write(up / "new" / "later.csv")

    counts = stopped_counts(watch_tree, watcher, burst | {later})
    assert "inotify queue overflowed" in watcher.log_text()
    assert counts == {p: 1 for p in burst | {later}}


def test_start_up_walk_of_a_large_tree_overflows_nothing_and_no_rescan_queues_nothing(
        watch_tree: WatchTree, tmp_path: Path):
    # Listing a watched directory queues 4 events (open and close, on it and on its
    # parent): a tree of more directories than a quarter of the kernel's queue overflowed it
    # at every start, and the overflow's rescan queued everything even with --no-rescan.
    up = watch_tree.upload
    present = set()
    for d in range(max(5000, MAX_QUEUED_EVENTS // 3)):
        (up / f"d{d}").mkdir()
        present.add(write(up / f"d{d}" / "old.csv"))
    quiet = WatcherProcess(watch_tree.config, tmp_path / "no-rescan.log", "--no-rescan")
    quiet.start(timeout=120)
    after = write(up / "d0" / "after.csv")  # READY=1 came: every directory is watched
    assert stopped_counts(watch_tree, quiet, {after}) == {after: 1}
    assert "overflowed" not in quiet.log_text()

    full = WatcherProcess(watch_tree.config, tmp_path / "rescan.log").start(timeout=120)
    counts = stopped_counts(watch_tree, full, present | {after})
    assert counts == {p: 1 for p in present | {after}}
    assert "overflowed" not in full.log_text()


def test_directory_listings_and_private_names_are_dropped_as_events_are_read(tmp_path: Path):
    # Our own walks list directories, and consumers open them and set a file aside under a
    # private name before they unlink it: none of that is worth a moment of the watcher's.
    (tmp_path / "sub").mkdir()
    kept = tmp_path / "sub" / "kept.csv"
    with INotify(nonblocking=True) as inotify:
        for d in (tmp_path, tmp_path / "sub"):
            inotify.add_watch(d, SUBDIR_MASK)
        os.scandir(tmp_path / "sub").close()
        uploaded = write(tmp_path / "sub" / "uploaded.csv")
        aside = uploaded.with_name(os.fsdecode(set_aside_name(uploaded.stat().st_ino)))
        os.rename(uploaded, aside)
        os.unlink(aside)
        write(kept)
        names = [name for _, _, name in events(os.read(inotify.fileno(), 1 << 16))]
    assert not [name for name in names if name.startswith(b".sftppush-deleting.")]
    assert b"" not in names and b"sub" not in names, "a directory opened or closed"
    assert names.count(b"uploaded.csv") == 4  # created, opened, closed, moved away
    assert names[-3:] == [b"kept.csv"] * 3


def test_kill_9_mid_burst_then_restart_loses_nothing(watch_tree: WatchTree, tmp_path: Path):
    up = watch_tree.upload
    log = tmp_path / "watcher.log"
    first = WatcherProcess(watch_tree.config, log).start()
    total, killed_at = 12_000, threading.Event()
    written: list[Path] = []

    def burst() -> None:
        for i in range(total):
            final = up / f"{i % 10}" / f"{i}.csv"
            final.parent.mkdir(exist_ok=True)
            if i % 2:
                os.rename(write(final.with_suffix(".tmp"), b"y" * 100), final)
            else:
                write(final, b"z" * 100)
            written.append(final)
            if i == total // 3:
                killed_at.wait(30)

    writer = threading.Thread(target=burst)
    writer.start()
    try:
        watch_tree.wait_for({up / "0" / "0.csv"})
        while len(written) <= total // 3:
            threading.Event().wait(0.01)
        first.kill()  # SIGKILL: whatever it had read but not committed is lost with it
        killed_at.set()
        queued_before = len(watch_tree.counts())
        second = WatcherProcess(watch_tree.config, log).start()
    finally:
        killed_at.set()
        writer.join()
    counts = stopped_counts(watch_tree, second, set(written))

    assert 0 < queued_before < total
    assert counts == {p: 1 for p in written}
    assert "rescan" in {e.found_by for e in watch_tree.entries()}


def test_source_dir_deleted_and_recreated_is_rescanned(watch_tree: WatchTree,
                                                       watcher: WatcherProcess):
    up = watch_tree.upload
    first = write(up / "first.csv")
    watch_tree.wait_for({first})
    os.rename(first, watch_tree.base / "uploaded-elsewhere.csv")  # as if consumed
    shutil.rmtree(up)
    up.mkdir()
    back = write(up / "while-unwatched.csv")
    watch_tree.wait_for({back})
    after = write(up / "after.csv")
    counts = stopped_counts(watch_tree, watcher, {back, after})
    assert counts == {first: 1, back: 1, after: 1}
    assert "source dir gone" in watcher.log_text() and "source dir back" in watcher.log_text()


def test_missing_source_dir_at_start_is_a_warning_and_its_arrival_is_noticed(
        watch_tree: WatchTree, tmp_path: Path, run_cli):
    # One user's missing directory used to stop the watcher (exit 2) for every user.
    late = watch_tree.userpath / "late" / "upload"
    data = yaml.safe_load(watch_tree.config.read_text())
    data["watch"]["source"].append({"name": "late", "paths": ["/upload"]})
    config = tmp_path / "two-sources.yaml"
    config.write_text(yaml.safe_dump(data))
    check = run_cli("--config", config, "config", "check")
    assert check.returncode == 2 and str(late) in check.stderr, check
    proc = WatcherProcess(config, tmp_path / "w.log").start()
    first = write(watch_tree.upload / "first.csv")
    watch_tree.wait_for({first})
    late.mkdir(parents=True)
    arrived = {write(late / "arrived.csv"), first}
    watch_tree.wait_for(arrived)
    after = write(late / "after.csv")  # and it is watched
    assert stopped_counts(watch_tree, proc, arrived | {after}) == {p: 1 for p in arrived | {after}}
    log = proc.log_text()
    assert f"source dir gone source=late dir={late} why=missing_at_start" in log
    assert f"source dir back source=late dir={late}" in log


def test_sd_notify_ready_watchdog_stopping(watch_tree: WatchTree, tmp_path: Path):
    with tempfile.TemporaryDirectory(dir="/tmp") as short:  # AF_UNIX paths are short
        proc = WatcherProcess(watch_tree.config, tmp_path / "w.log", env={
            "WATCHDOG_USEC": "200000"}, notify_path=Path(short) / "notify")
        proc.start()
        proc.wait_message("WATCHDOG=1", timeout=5, count=3)  # every 0.1 s
        assert proc.stop() == 0
    assert proc.messages[0].splitlines()[0] == "READY=1"
    assert proc.messages[-1] == "STOPPING=1"


def test_sigterm_at_any_moment_of_its_life_exits_0_promptly(watch_tree: WatchTree,
                                                           tmp_path: Path):
    # Real processes on a real tree, signalled at random moments: while Python starts, while
    # the watches go in, during the start-up rescan, idle. Half the runs get SIGINT just
    # before the SIGTERM, as after Ctrl-C in `sftppush demo`: the terminal signals the whole
    # process group, then `run` sends its own SIGTERM. Started as `run` starts it (signals
    # blocked until the handlers are in place), so even a SIGTERM at once ends in status 0.
    for d in range(40):  # enough for the start-up rescan to take a while
        (watch_tree.upload / f"d{d}").mkdir()
        for i in range(25):
            write(watch_tree.upload / f"d{d}" / f"{i}.csv", b"x")
    seed = random.randrange(1 << 32)
    print(f"seed={seed}")
    rng = random.Random(seed)
    # "Promptly": the stop is honoured, not lost. A stop held until the handlers are in place
    # lands once the interpreter has started (0.1-0.4 s idle, several seconds on a loaded
    # host); a lost one would never end the process, so the bound is there to catch a hang.
    for run in range(20):
        log = tmp_path / f"watcher-{run}.log"
        stop = (signal.SIGINT, signal.SIGTERM) if rng.random() < 0.5 else (signal.SIGTERM,)
        with signals.blocked():  # started as `run` starts it: stop signals held until ready
            status = stopped_after(cli_argv("--config", watch_tree.config, "watch"), log,
                                   rng.uniform(0, 1.0), stop, timeout=30)
        assert status == 0, f"seed={seed} run={run}: status {status}\n{log.read_text()[-3000:]}"
