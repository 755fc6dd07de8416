"""Issue 14, case 3: a cut or damaged compressed file is never uploaded in part.

Each damaged file goes through `sftppush rescan` and `sftppush consume --drain` as real
processes against moto, with `max_attempts: 1`. It must end `failed` with
`corrupt <format>: ...`, stay on disk byte for byte, and leave nothing in the bucket: no
object, no open multipart upload. Small files go through the awscrt lane; the large ones
(over 8 MiB decompressed, 5 MiB parts) stream through boto3 and are cut after some parts have
been sent, so the multipart upload must be aborted. An intact file of the same format in the
same run is uploaded, so the consumer did run.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from tests.e2e.identity import MIB, Bucketed, body

SMALL = 64 * 1024
# Cut at 2/3, 18 MiB come out before the damage: parts 1 and 2 are read, and part 3 only
# once a part has been sent (two part buffers at most), so the multipart upload is under way.
LARGE = 27 * MIB
MULTIPART = {"create_multipart", "upload_part", "complete_multipart", "abort_multipart"}


def zstd_cut_at_two_thirds(data: bytes) -> bytes:
    # No content size in the frame header: nothing tells the reader how much should come.
    whole = zstandard.ZstdCompressor(level=1, write_content_size=False).compress(data)
    return whole[:len(whole) * 2 // 3]


def bzip2_second_stream_damaged(data: bytes) -> bytes:
    second = bz2.compress(body(SMALL, 2), 1)
    assert second.startswith(b"BZh1")
    return bz2.compress(data, 1) + b"BZh0" + second[4:]  # no such block size: a bad header


def xz_trailing_garbage(data: bytes) -> bytes:
    return lzma.compress(data, preset=0) + b"trailing garbage, not an xz stream\n"


def gzip_cut_short(data: bytes) -> bytes:
    whole = gzip.compress(data, 1)
    return whole[:len(whole) * 2 // 3]


DAMAGE: dict[str, tuple[str, Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
    # format: (suffix, damaged file from a body, intact file from a body)
    "zstd": ("zst", zstd_cut_at_two_thirds, lambda d: zstandard.ZstdCompressor().compress(d)),
    "bzip2": ("bz2", bzip2_second_stream_damaged, lambda d: bz2.compress(d, 1)),
    "xz": ("xz", xz_trailing_garbage, lambda d: lzma.compress(d, preset=0)),
    "gzip": ("gz", gzip_cut_short, lambda d: gzip.compress(d, 1)),
}


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["small-crt", "large-multipart"])
@pytest.mark.parametrize("fmt", sorted(DAMAGE))
def test_damaged_compressed_file_fails_stays_on_disk_and_leaves_nothing_in_s3(
        fmt: str, size: int, tmp_path: Path, source_tree, pipeline_config, moto_server,
        s3_client, s3_bucket, fault_proxy) -> None:
    suffix, damage, intact = DAMAGE[fmt]
    pipeline_config(max_attempts=1)
    run = Bucketed.on_moto(tmp_path, source_tree.config_path, moto_server, s3_client,
                           s3_bucket, fault_proxy)
    damaged = source_tree.upload / f"damaged.dat.{suffix}"
    damaged.write_bytes(damage(body(size, 1)))
    good_body = body(SMALL, 3)
    (source_tree.upload / f"good.dat.{suffix}").write_bytes(intact(good_body))
    original = damaged.read_bytes()

    run.rescan()
    run.drain()

    entries = run.by_path()
    entry = entries[str(damaged)]
    assert entry["state"] == "failed", entry
    assert entry["attempts"] == 1, entry
    assert (entry["last_error"] or "").startswith(f"corrupt {fmt}:"), entry
    assert damaged.read_bytes() == original, "the damaged file changed or went"
    assert run.keys() == ["sftpuser1/upload/good.dat"], "a damaged file reached S3"
    assert run.open_multipart_uploads() == [], "a multipart upload was left open"
    assert run.read("sftpuser1/upload/good.dat") == good_body
    assert entries[str(source_tree.upload / f"good.dat.{suffix}")]["state"] == "done"
    sent = run.requests("sftpuser1/upload/damaged.dat")
    assert "put" not in sent and "complete_multipart" not in sent, sent
    if size == LARGE:  # the streaming path was taken, and its upload aborted
        assert sent["create_multipart"] == sent["abort_multipart"] == 1, sent
        assert sent["upload_part"] >= 1, sent
    else:
        assert not MULTIPART & set(sent), sent
