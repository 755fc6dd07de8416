"""Issue 23: the identity holes that live in combinations, with real processes against moto.

Each test is one hole the model test (tests/model) found on 05b1e90, replayed as an operator
would meet it: `rescan`, `consume` and `queue` commands as processes, a fault proxy in front
of moto, files that a client (this test) holds open, directories nobody may write, a
consumer without CAP_LEASE. Each fails on 05b1e90.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import os
import struct
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import wait_until
from tests.e2e.identity import Bucketed, body

NOBODY = 65534
PREFIX = "sftpuser1/upload"


def product(tmp_path: Path, source_tree, pipeline_config, moto_server, s3_client, s3_bucket,
            fault_proxy, **consumer) -> Bucketed:
    pipeline_config(**consumer)
    return Bucketed.on_moto(tmp_path, source_tree.config_path, moto_server, s3_client,
                            s3_bucket, fault_proxy)


def entry_of(run: Bucketed, path: Path) -> dict:
    return run.by_path()[str(path)]


def purge(run: Bucketed) -> None:
    done = run.product.cli("queue", "purge", "--done-older-than", "0s")
    assert done.returncode == 0, done.stderr


def puts(run: Bucketed, key: str) -> int:
    return run.requests(key)["put"] + run.requests(key)["complete_multipart"]


@contextlib.contextmanager
def immutable(directory: Path) -> Iterator[None]:
    """chattr +i: nobody, root included, may add, rename or delete a name in it."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        flags = struct.unpack("i", fcntl.ioctl(fd, 0x80086601, b"\0" * 4))[0]  # GETFLAGS
        fcntl.ioctl(fd, 0x40086602, struct.pack("i", flags | 0x10))  # SETFLAGS, IMMUTABLE
        yield
    finally:
        fcntl.ioctl(fd, 0x40086602, struct.pack("i", flags))
        os.close(fd)


def gz_superseded_after_failing_once(run: Bucketed, upload: Path) -> tuple[Path, Path]:
    """a.csv uploaded and its entry purged; a.csv.gz v1 takes the key and fails once (the
    store unreachable), then v2, written in place, supersedes it and is drained."""
    plain, gz = upload / "a.csv", upload / "a.csv.gz"
    plain.write_bytes(body(4096, 1))
    run.rescan()
    run.drain()
    purge(run)
    gz.write_bytes(gzip.compress(body(4096, 2)))
    run.rescan()
    run.proxy.refuse()
    run.product.start("consumer", "consume")
    wait_until(lambda: "unreachable" in (entry_of(run, gz).get("last_error") or ""), 60,
               "a.csv.gz v1 failing once", detail=lambda: entry_of(run, gz))
    assert run.product.stop("consumer") == 0
    run.proxy.restore()
    gz.write_bytes(gzip.compress(body(4096, 3)))  # v2, in place
    run.rescan()
    run.drain()
    return plain, gz


def test_a_newer_version_after_a_failed_first_never_replaces_another_paths_object(
        tmp_path: Path, source_tree, pipeline_config, moto_server, s3_client, s3_bucket,
        fault_proxy) -> None:
    """Hole 1: a.csv is uploaded and its entry purged; a.csv.gz v1 takes the key and fails
    (store unreachable); v2 supersedes it. v1's entry proves nothing about the object, so v2
    asks the store (If-None-Match) and finds a.csv's object: a collision, not a replace."""
    run = product(tmp_path, source_tree, pipeline_config, moto_server, s3_client, s3_bucket,
                  fault_proxy)
    key = f"{PREFIX}/a.csv"
    _, gz = gz_superseded_after_failing_once(run, source_tree.upload)
    assert run.read(key) == body(4096, 1), "a.csv's object was replaced by a.csv.gz"
    last = entry_of(run, gz)
    assert last["state"] == "failed" and last["last_error"].startswith(
        f"key collision: {key} holds sftpuser1:a.csv"), last
    assert gz.exists()


def test_the_path_that_owns_an_object_replaces_it_after_another_paths_entry_was_superseded(
        tmp_path: Path, source_tree, pipeline_config, moto_server, s3_client, s3_bucket,
        fault_proxy) -> None:
    """As above; then v1's done entry keeps the key (its PUT might have landed) but recorded
    no upload: it proves nothing. a.csv's re-send owns the object and replaces it; before,
    the queue refused it as colliding with a.csv.gz."""
    run = product(tmp_path, source_tree, pipeline_config, moto_server, s3_client, s3_bucket,
                  fault_proxy)
    key = f"{PREFIX}/a.csv"
    plain, gz = gz_superseded_after_failing_once(run, source_tree.upload)
    assert entry_of(run, gz)["state"] == "failed", entry_of(run, gz)
    plain.write_bytes(body(4096, 4))  # a.csv v2, from the path that owns the object
    run.rescan()
    run.drain()
    assert entry_of(run, plain)["state"] == "done", entry_of(run, plain)
    assert run.read(key) == body(4096, 4) and not plain.exists()
    assert gz.exists(), "the colliding file is kept"


def test_a_name_with_edge_spaces_is_its_own_objects_path_after_a_purge(
        tmp_path: Path, source_tree, pipeline_config, moto_server, s3_client, s3_bucket,
        fault_proxy) -> None:
    """Hole 2: HTTP trims header values; "rep " must come back as "rep ", or its re-send
    after a purge (If-None-Match, 412, whose object?) collides with its own object."""
    run = product(tmp_path, source_tree, pipeline_config, moto_server, s3_client, s3_bucket,
                  fault_proxy)
    name = source_tree.upload / " rep "
    name.write_bytes(body(2000, 1))
    run.rescan()
    run.drain()
    purge(run)
    name.write_bytes(body(2000, 2))
    run.rescan()
    run.drain()
    assert entry_of(run, name)["state"] == "done", entry_of(run, name)
    assert run.read(f"{PREFIX}/ rep ") == body(2000, 2) and not name.exists()


def test_without_a_lease_an_uploaded_file_is_kept_and_nothing_a_writer_appends_is_lost(
        tmp_path: Path, source_tree, pipeline_config, moto_server, s3_client, s3_bucket,
        fault_proxy) -> None:
    """Hole 3: a consumer without CAP_LEASE, on a file another user owns, cannot tell that
    a client still has the file open: it uploads, then keeps the file with a reason, and
    what the client appends afterwards is uploaded in turn. (05b1e90 deleted it: the
    client's later writes went into an unlinked inode.)"""
    run = product(tmp_path, source_tree, pipeline_config, moto_server, s3_client, s3_bucket,
                  fault_proxy, max_attempts=1)
    log = source_tree.upload / "plant.log"
    log.write_bytes(b"first part\n")
    os.chown(log, NOBODY, NOBODY)
    writer = os.open(log, os.O_WRONLY | os.O_APPEND)
    try:
        run.rescan()
        proc = run.product.start("consumer", "consume", "--drain",
                                 wrap=("setpriv", "--bounding-set=-lease", "--inh-caps=-lease"))
        assert proc.wait(60) == 0, run.product.log_tail()
        first = entry_of(run, log)
        assert first["state"] == "failed" and first["last_error"].startswith(
            f"no lease: cannot tell whether {log} is still open for writing"), first
        assert log.exists() and run.read(f"{PREFIX}/plant.log") == b"first part\n"
        os.write(writer, b"second part\n")
    finally:
        os.close(writer)
    run.rescan()
    run.drain()  # a consumer with CAP_LEASE, as the unit runs it
    assert run.read(f"{PREFIX}/plant.log") == b"first part\nsecond part\n"
    assert not log.exists()


def test_a_file_held_open_at_its_delete_is_deleted_once_closed_without_a_second_upload(
        tmp_path: Path, source_tree, pipeline_config, moto_server, s3_client, s3_bucket,
        fault_proxy) -> None:
    """Hole 4: a client has the file open (for writing, not writing) when the consumer
    would delete it, then closes without writing: no new version, no event. The entry waits
    ("still being written") instead of ending done with the file stranded on disk."""
    run = product(tmp_path, source_tree, pipeline_config, moto_server, s3_client, s3_bucket,
                  fault_proxy)
    f = source_tree.upload / "held.csv"
    f.write_bytes(body(3000, 1))
    run.rescan()
    writer = os.open(f, os.O_WRONLY)
    try:
        run.product.start("consumer", "consume")
        held = wait_until(lambda: (entry_of(run, f).get("last_error") or "").startswith(
            "still being written"), 60, "the entry held", detail=lambda: entry_of(run, f))
        assert held and entry_of(run, f)["state"] in ("pending", "claimed") and f.exists()
    finally:
        os.close(writer)  # closed without writing: the same version, and no new event
    wait_until(lambda: not f.exists(), 60, "the file deleted once its writer closed")
    assert run.product.stop("consumer") == 0
    assert entry_of(run, f)["state"] == "done"
    assert run.read(f"{PREFIX}/held.csv") == body(3000, 1)
    assert puts(run, f"{PREFIX}/held.csv") == 1


def test_kept_files_are_uploaded_once_however_often_done_entries_are_purged(
        tmp_path: Path, source_tree, pipeline_config, moto_server, s3_client, s3_bucket,
        fault_proxy) -> None:
    """Hole 6: with delete_after_upload false, a purge must not make the next rescan
    upload the unchanged file again; its entry goes once the file does."""
    run = product(tmp_path, source_tree, pipeline_config, moto_server, s3_client, s3_bucket,
                  fault_proxy, delete_after_upload=False)
    f = source_tree.upload / "kept.csv"
    f.write_bytes(body(3000, 1))
    for _ in range(3):
        run.rescan()
        run.drain()
        purge(run)
    assert puts(run, f"{PREFIX}/kept.csv") == 1 and f.exists()
    assert entry_of(run, f)["note"] == "kept"
    f.unlink()
    purge(run)
    assert str(f) not in run.by_path()


def test_a_directory_the_service_cannot_write_fails_once_uploaded_and_replay_only_deletes(
        tmp_path: Path, source_tree, pipeline_config, moto_server, s3_client, s3_bucket,
        fault_proxy) -> None:
    """Hole 7: the upload succeeds, the delete cannot: one clear reason, no traceback, no
    second upload on a retry; after the fix `queue replay` deletes without uploading."""
    run = product(tmp_path, source_tree, pipeline_config, moto_server, s3_client, s3_bucket,
                  fault_proxy, max_attempts=1)
    sub = source_tree.upload / "ro"
    sub.mkdir()
    f = sub / "data.csv"
    f.write_bytes(body(3000, 1))
    key = f"{PREFIX}/ro/data.csv"
    with immutable(sub):
        for _ in range(2):
            run.rescan()
            run.drain()
            failed = entry_of(run, f)
            assert failed["state"] == "failed" and failed["last_error"].startswith(
                f"cannot delete: {sub} not writable by root"), failed
            assert run.product.cli("queue", "replay", "--failed").returncode == 0
        run.drain()
    assert not any("Traceback" in line for line in run.product.log_tail(10_000).splitlines())
    assert f.exists() and puts(run, key) == 1
    assert run.product.cli("queue", "replay", "--failed").returncode == 0
    run.drain()
    assert not f.exists() and entry_of(run, f)["state"] == "done"
    assert puts(run, key) == 1 and run.read(key) == body(3000, 1)


def test_a_zstd_file_is_never_stored_compressed_for_lack_of_the_module(
        tmp_path: Path, source_tree, pipeline_config, moto_server, s3_client, s3_bucket,
        fault_proxy) -> None:
    """Hole 8: zstd is detected always; a consumer that cannot import zstandard (a broken
    install) fails the file with a reason instead of uploading it still compressed."""
    blocked = tmp_path / "no-zstandard"
    blocked.mkdir()
    (blocked / "zstandard.py").write_text("raise ImportError('not installed')\n")
    run = product(tmp_path, source_tree, pipeline_config, moto_server, s3_client, s3_bucket,
                  fault_proxy, max_attempts=1)
    run.product.env["PYTHONPATH"] = f"{blocked}:{run.product.env['PYTHONPATH']}"
    f = source_tree.upload / "frame.csv.zst"
    f.write_bytes(bytes.fromhex("28b52ffd2000410000") + b"x")  # a zstd frame's magic, cut
    run.rescan()
    run.drain()
    failed = entry_of(run, f)
    assert failed["state"] == "failed" and failed["last_error"].startswith(
        "unsupported compression zstd"), failed
    assert f.exists() and run.keys() == []


def test_a_file_still_being_written_when_a_scan_finds_it_is_not_uploaded_half_written(
        tmp_path: Path, source_tree, pipeline_config, moto_server, s3_client, s3_bucket,
        fault_proxy) -> None:
    """Hole 10: a rescan queues a file a client is still writing; the client then renames
    its batch directory. Nothing is uploaded while the file is open for writing, so no half
    object is left under the old directory's key."""
    run = product(tmp_path, source_tree, pipeline_config, moto_server, s3_client, s3_bucket,
                  fault_proxy)
    batch = source_tree.upload / "batch2"
    batch.mkdir()
    f = batch / "data.csv"
    writer = os.open(f, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(writer, body(196_608, 1))
        run.rescan()
        run.product.start("consumer", "consume")
        wait_until(lambda: (entry_of(run, f).get("last_error") or "").startswith(
            "still being written"), 60, "the entry held", detail=lambda: entry_of(run, f))
        assert run.keys() == []
        os.write(writer, body(100_000, 2))
    finally:
        os.close(writer)
    (source_tree.upload / "done").mkdir()
    batch.rename(source_tree.upload / "done" / "batch2")
    run.rescan()
    key = f"{PREFIX}/done/batch2/data.csv"
    wait_until(lambda: run.keys() == [key], 60, "the whole file uploaded", detail=run.keys)
    assert run.product.stop("consumer") == 0
    assert run.keys() == [key] and run.read(key) == body(196_608, 1) + body(100_000, 2)


def kept_then_set_aside(run: Bucketed, d: Path) -> tuple[Path, Path]:
    """d/data.csv uploaded and kept (delete_after_upload false), then renamed to its private
    name as a consumer killed between its set-aside and its unlink leaves it: (file, name)."""
    d.mkdir()
    f = d / "data.csv"
    f.write_bytes(body(3000, 1))
    run.rescan()
    run.drain()
    assert entry_of(run, f)["note"] == "kept"
    private = d / f".sftppush-deleting.{f.stat().st_ino}"
    os.rename(f, private)
    return f, private


def test_a_private_name_a_killed_consumer_left_goes_at_the_next_rescan(
        tmp_path: Path, source_tree, pipeline_config, moto_server, s3_client, s3_bucket,
        fault_proxy) -> None:
    """Found by the long profile: a consumer killed between its set-aside and its unlink,
    whose next claim ran while the client had the directory renamed away, left
    `.sftppush-deleting.<inode>` for good. That state is made here from a kept upload and
    the consumer's own rename; then a rescan and a drain remove it, without uploading
    again. A private name whose version the queue never recorded as uploaded stays."""
    run = product(tmp_path, source_tree, pipeline_config, moto_server, s3_client, s3_bucket,
                  fault_proxy, delete_after_upload=False)
    d = source_tree.upload / "batch"
    _, private = kept_then_set_aside(run, d)
    other = d / "other.csv"
    other.write_bytes(b"never uploaded\n")
    stray = d / f".sftppush-deleting.{other.stat().st_ino}"
    os.rename(other, stray)
    pipeline_config(delete_after_upload=True)

    run.rescan()
    run.drain()

    assert not private.exists()
    assert stray.read_bytes() == b"never uploaded\n"
    assert puts(run, f"{PREFIX}/batch/data.csv") == 1
    assert run.read(f"{PREFIX}/batch/data.csv") == body(3000, 1)


def test_a_private_name_the_directory_kept_from_a_consumer_outlives_a_purge(
        tmp_path: Path, source_tree, pipeline_config, moto_server, s3_client, s3_bucket,
        fault_proxy) -> None:
    """Found by the long profile at 479f71d: a consumer killed between its set-aside and its
    unlink; the next claim met the private name in a directory it could not write, acked
    the entry, and a purge dropped it before the directory was writable again: nothing was
    left to remove `.sftppush-deleting.<inode>`. The entry now says the name was kept, a
    purge keeps it while the name is there, and the first rescan after the fix removes it,
    without uploading again."""
    run = product(tmp_path, source_tree, pipeline_config, moto_server, s3_client, s3_bucket,
                  fault_proxy, delete_after_upload=False)
    d = source_tree.upload / "batch"
    f, private = kept_then_set_aside(run, d)
    pipeline_config(delete_after_upload=True)
    with immutable(d):
        run.rescan()
        run.drain()
        note = entry_of(run, f)["note"]
        assert note.endswith("private name kept: directory not writable"), note
        purge(run)
        assert entry_of(run, f)["state"] == "done"
    assert private.exists()

    run.rescan()
    run.drain()

    assert not private.exists() and os.listdir(d) == []
    purge(run)
    assert str(f) not in run.by_path()
    assert puts(run, f"{PREFIX}/batch/data.csv") == 1
    assert run.read(f"{PREFIX}/batch/data.csv") == body(3000, 1)
