"""One entry through the pipeline, against moto's server: formats, keys, refusals, notes."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import logging
import lzma
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import pytest
import zstandard

from sftppush import outcomes
from sftppush.errors import PermanentError
from sftppush.pipeline import pipeline
from sftppush.pipeline.keys import iso8601
from sftppush.queue.entries import FileVersion, State
from sftppush.queue.queue import Queue
from sftppush.sink.s3 import Sink
from sftppush.sink.transfer import RetryPolicy, Transfer

MB = 2**20
CSV = b"".join(b"%06d,device-7,21.5,ok\n" % i for i in range(3000))


def enqueue(cfg: Any, *paths: Path | bytes) -> list[int]:
    with Queue(cfg.queue.path) as q:
        q.enqueue_many(FileVersion.of(p, "sftpuser1", os.stat(p, follow_symlinks=False),
                                      "close_write") for p in paths)
        return [e.id for e in q.list(limit=10_000)]


def entries(cfg: Any) -> list[Any]:
    with Queue(cfg.queue.path) as q:
        return q.list(limit=10_000)


def assert_nothing_in(s3_client: Any, bucket: str) -> None:
    assert s3_client.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_formats_keys_bodies_and_metadata_as_spec_3(source_tree: Any, pipeline_config: Any,
                                                     consume_until_drained: Any, caplog: Any,
                                                     s3_client: Any, s3_bucket: str) -> None:
    caplog.set_level(logging.INFO, logger="sftppush")
    up = source_tree.upload
    (up / "2026").mkdir()
    large = os.urandom(MB) * 11 + b"end\n"  # decompressed above one 5 MB part: multipart
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as zf:
        zf.writestr("inner.csv", CSV)
    files: dict[bytes, tuple[bytes, str, bytes]] = {  # name -> (on disk, key tail, body)
        b"2026/a.csv.gz": (gzip.compress(CSV), "2026/a.csv", CSV),
        b"multi.csv.gz": (gzip.compress(CSV[:999]) + gzip.compress(CSV[999:]), "multi.csv", CSV),
        b"b.csv.bz2": (bz2.compress(CSV), "b.csv", CSV),
        b"c.csv.xz": (lzma.compress(CSV), "c.csv", CSV),
        b"d.csv.zst": (zstandard.ZstdCompressor().compress(CSV), "d.csv", CSV),
        b"plain.csv": (CSV, "plain.csv", CSV),
        b"archive.zip": (zbuf.getvalue(), "archive.zip", zbuf.getvalue()),
        b"not-really.gz": (CSV, "not-really.gz", CSV),
        b"with space.csv.gz": (gzip.compress(CSV), "with space.csv", CSV),
        b"caf\xe9 100%.csv.gz": (gzip.compress(CSV), "caf%E9 100%25.csv", CSV),
        b"large.bin.gz": (gzip.compress(large, compresslevel=1), "large.bin", large),
    }
    paths = []
    for name, (data, _, _) in files.items():
        path = os.fsencode(up) + b"/" + name
        with open(path, "wb") as f:
            f.write(data)
        paths.append(path)
    cfg = pipeline_config(s3target=f"{s3_bucket}/in")
    enqueue(cfg, *paths)
    consume_until_drained(cfg)

    listed = s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"]
    assert sorted(o["Key"] for o in listed) == sorted(
        f"in/sftpuser1/upload/{tail}" for _, tail, _ in files.values())
    for path, (name, (data, tail, body)) in zip(paths, files.items(), strict=True):
        obj = s3_client.get_object(Bucket=s3_bucket, Key=f"in/sftpuser1/upload/{tail}")
        assert obj["Body"].read() == body, tail
        meta = obj["Metadata"]
        assert meta["sftppush-source"] == "sftpuser1"
        assert meta["sftppush-original-size"] == str(len(data))
        if tail == "large.bin":  # multipart: no copy in place, the sha256 is in the log line
            assert "sftppush-sha256" not in meta
            assert f"sha256={hashlib.sha256(body).hexdigest()}" in caplog.text
        else:
            assert meta["sftppush-sha256"] == hashlib.sha256(body).hexdigest()
        assert meta["sftppush-mtime"].endswith("+00:00")
        assert meta["sftppush-original-name"] == os.path.basename(name).decode(
            "ascii", "replace").replace("\ufffd", "%E9").replace("%.", "%25.")
        assert not os.path.exists(path)
    assert {e.state for e in entries(cfg)} == {State.DONE}
    assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    # Small bodies took the path under test (the awscrt lane verifies by its Content-MD5
    # ETag, boto3 by the CRC64NVME moto returns); the multipart one streams through boto3.
    verified = dict(re.findall(r"uploaded id=\d+ key=(\S+) .* verified=(\w+)", caplog.text))
    assert len(verified) == len(files)
    assert verified.pop("in/sftpuser1/upload/large.bin") == "etag"  # MD5 of part MD5s -N
    assert set(verified.values()) == {"crc64nvme"}  # moto echoes it on both paths


def _bomb(up: Path, _tmp: Path) -> Path:
    p = up / "bomb.csv.gz"
    with gzip.open(p, "wb", compresslevel=1) as f:
        for _ in range(20):
            f.write(b"\0" * MB)
    return p


def _truncated(up: Path, _tmp: Path) -> Path:
    p = up / "truncated.bin.gz"
    p.write_bytes(gzip.compress(os.urandom(MB) * 11, compresslevel=1)[:-1000])
    return p


def _corrupt(up: Path, _tmp: Path) -> Path:
    p = up / "corrupt.csv.gz"
    p.write_bytes(gzip.compress(CSV)[:20] + b"\xff" * 400)
    return p


def _symlink(up: Path, tmp: Path) -> Path:
    (tmp / "shadow").write_bytes(b"root:secret\n")
    p = up / "innocent.csv"
    p.symlink_to(tmp / "shadow")
    return p


def _dir_symlink(up: Path, tmp: Path) -> Path:
    (tmp / "etc").mkdir()
    (tmp / "etc" / "shadow").write_bytes(b"root:secret\n")
    (up / "dir").symlink_to(tmp / "etc")
    return up / "dir" / "shadow"


def _hard_link(up: Path, tmp: Path) -> Path:
    (tmp / "shadow").write_bytes(b"root:secret\n")
    p = up / "linked.csv"
    os.link(tmp / "shadow", p)
    return p


def _fifo(up: Path, _tmp: Path) -> Path:
    p = up / "pipe.csv"
    os.mkfifo(p)
    return p


@pytest.mark.parametrize(("make", "reason"), [
    (_corrupt, "corrupt gzip"),
    (_truncated, "corrupt gzip: truncated"),
    (_bomb, "exceeds max_decompressed_bytes=12582912"),
    (_symlink, "innocent.csv is a symlink"),
    (_dir_symlink, "dir is a symlink"),
    (_hard_link, "has 2 hard links"),
    (_fifo, "is a FIFO, not a regular file"),
], ids=["corrupt", "truncated", "bomb", "symlink", "dir-symlink", "hard-link", "fifo"])
def test_refused_input_fails_with_reason_and_leaves_no_trace(
        make: Any, reason: str, tmp_path: Path, source_tree: Any, pipeline_config: Any,
        consume_until_drained: Any, s3_client: Any, s3_bucket: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    path = make(source_tree.upload, outside)
    before = os.lstat(path)
    content = path.read_bytes() if path.is_file() and not path.is_symlink() else None
    cfg = pipeline_config(max_attempts=2, max_decompressed_bytes=12 * MB)
    enqueue(cfg, path)
    consume_until_drained(cfg, permanent_delay=0.01, nlink_retry_after=0.01)

    [entry] = entries(cfg)
    assert entry.state == State.FAILED
    assert entry.attempts == 2
    assert reason in entry.last_error
    after = os.lstat(path)
    assert (after.st_ino, after.st_size, after.st_mtime_ns, after.st_mode) == \
        (before.st_ino, before.st_size, before.st_mtime_ns, before.st_mode)
    if content is not None:
        assert path.read_bytes() == content
    assert_nothing_in(s3_client, s3_bucket)


def _uploader(cfg: Any) -> Sink:
    return Sink.from_config(cfg.defaults, cfg.consumer.s3, Transfer(
        connect_timeout=1, read_timeout=10, fast=False,
        retry=RetryPolicy(attempts=2, initial=0.01, maximum=0.02)))


def _claim(cfg: Any) -> Any:
    with Queue(cfg.queue.path) as q:
        [entry] = q.claim("test", 30)
    return entry


def test_vanished_file_is_done_with_a_note_telling_if_the_object_exists(
        source_tree: Any, pipeline_config: Any, s3_client: Any, s3_bucket: str) -> None:
    cfg = pipeline_config()
    up = _uploader(cfg)
    before = source_tree.upload / "before.csv.gz"
    before.write_bytes(gzip.compress(CSV))
    enqueue(cfg, before)
    s3_client.put_object(Bucket=s3_bucket, Key="sftpuser1/upload/before.csv", Body=CSV)
    before.unlink()  # uploaded and deleted, then a crash lost the ack
    result = pipeline.process(_claim(cfg), cfg, up)
    assert result.note == "vanished; object exists at sftpuser1/upload/before.csv"

    gone = source_tree.upload / "gone.csv"
    gone.write_bytes(CSV)
    enqueue(cfg, gone)
    gone.unlink()  # removed by someone else
    result = pipeline.process(_claim(cfg), cfg, up)
    assert result.note is not None and "no object" in result.note


def test_superseded_version_is_done_without_upload(source_tree: Any, pipeline_config: Any,
                                                   s3_client: Any, s3_bucket: str) -> None:
    cfg = pipeline_config()
    f = source_tree.upload / "a.csv"
    f.write_bytes(b"v1\n")
    enqueue(cfg, f)
    with f.open("ab") as w:
        w.write(b"appended\n")
    result = pipeline.process(_claim(cfg), cfg, _uploader(cfg))
    assert result.note == "superseded" and result.uploaded is None
    assert f.read_bytes() == b"v1\nappended\n"
    assert_nothing_in(s3_client, s3_bucket)


def test_young_file_is_held_until_min_age(source_tree: Any, pipeline_config: Any) -> None:
    cfg = pipeline_config(min_age_seconds=10)
    f = source_tree.upload / "slow.csv"
    f.write_bytes(CSV)
    enqueue(cfg, f)
    entry = _claim(cfg)
    result = pipeline.process(entry, cfg, _uploader(cfg), now=entry.mtime_ns / 1e9 + 4)
    assert result == outcomes.Held(pytest.approx(6))
    result = pipeline.process(entry, cfg, _uploader(cfg), now=entry.mtime_ns / 1e9 + 11)
    assert result.uploaded is not None and not f.exists()


def test_lost_lease_never_deletes_the_file(source_tree: Any, pipeline_config: Any) -> None:
    cfg = pipeline_config()
    f = source_tree.upload / "a.csv"
    f.write_bytes(CSV)
    enqueue(cfg, f)
    with pytest.raises(outcomes.LeaseLost):
        pipeline.process(_claim(cfg), cfg, _uploader(cfg), still_ours=lambda: False)
    assert f.read_bytes() == CSV


def test_delete_after_upload_false_keeps_the_file(source_tree: Any, pipeline_config: Any,
                                                  s3_client: Any, s3_bucket: str) -> None:
    cfg = pipeline_config(delete_after_upload=False)
    f = source_tree.upload / "keep.csv"
    f.write_bytes(CSV)
    enqueue(cfg, f)
    result = pipeline.process(_claim(cfg), cfg, _uploader(cfg))
    assert result.uploaded is not None and f.read_bytes() == CSV
    assert s3_client.get_object(Bucket=s3_bucket, Key="sftpuser1/upload/keep.csv")[
        "Body"].read() == CSV


def test_mtime_metadata_is_the_files_mtime(source_tree: Any, pipeline_config: Any,
                                           s3_client: Any, s3_bucket: str) -> None:
    cfg = pipeline_config()
    f = source_tree.upload / "t.csv"
    f.write_bytes(CSV)
    os.utime(f, ns=(1_767_225_600_000_000_000, 1_767_225_600_250_000_000))
    enqueue(cfg, f)
    pipeline.process(_claim(cfg), cfg, _uploader(cfg))
    meta = s3_client.head_object(Bucket=s3_bucket, Key="sftpuser1/upload/t.csv")["Metadata"]
    assert meta["sftppush-mtime"] == iso8601(1_767_225_600_250_000_000) == \
        "2026-01-01T00:00:00.250000+00:00"


def _resend_in_place(path: Path, body: bytes) -> None:
    """What `sftp put -p` does: open with O_TRUNC, write, then restore the old mtime."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.truncate(0)
        f.write(body)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.parametrize("size", [len(CSV), 12 * MB])  # one PUT; multipart
def test_a_read_cut_short_by_an_in_place_resend_is_superseded_never_uploaded(
        source_tree: Any, pipeline_config: Any, s3_client: Any, s3_bucket: str,
        size: int) -> None:
    cfg = pipeline_config()
    sink = _uploader(cfg)
    f = source_tree.upload / "data.csv"
    f.write_bytes((CSV * (size // len(CSV) + 1))[:size])
    enqueue(cfg, f)
    prepared = pipeline.prepare(_claim(cfg), cfg, sink)
    assert isinstance(prepared, pipeline.Prepared)
    opened = prepared.opened
    try:
        _resend_in_place(f, b"short\n")  # truncated while we hold it open, same inode
        with pytest.raises(outcomes.Superseded, match="at open"):
            sink.upload(s3_bucket, opened.key, opened.reader(2**40), opened.meta)
    finally:
        opened.close()
    assert f.read_bytes() == b"short\n"
    assert_nothing_in(s3_client, s3_bucket)


def test_a_small_file_cut_short_before_its_fast_put_is_superseded(
        source_tree: Any, pipeline_config: Any) -> None:
    cfg = pipeline_config()
    f = source_tree.upload / "small.csv"
    f.write_bytes(CSV)
    enqueue(cfg, f)
    opened = pipeline.open_small(_claim(cfg), cfg, _uploader(cfg))
    assert isinstance(opened, pipeline.Opened)
    try:
        _resend_in_place(f, CSV[:100])
        with pytest.raises(outcomes.Superseded):
            pipeline.read_small(opened, 2**40, 8 * MB)
    finally:
        opened.close()


def test_a_plain_file_over_max_decompressed_bytes_is_refused(
        source_tree: Any, pipeline_config: Any, s3_client: Any, s3_bucket: str) -> None:
    cfg = pipeline_config(max_decompressed_bytes=2**20)
    sparse = source_tree.upload / "sparse.bin"
    with open(sparse, "wb") as f:
        f.truncate(2**30)  # a hole: no disk used, and not compressed
    enqueue(cfg, sparse)
    with pytest.raises(PermanentError, match="exceeds max_decompressed_bytes=1048576"):
        pipeline.process(_claim(cfg), cfg, _uploader(cfg))
    assert sparse.stat().st_size == 2**30
    assert_nothing_in(s3_client, s3_bucket)
