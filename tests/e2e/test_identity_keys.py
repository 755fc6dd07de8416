"""Issue 14, case 2: one key, one local path (SPEC 3), with real processes against moto.

`a.csv` and `a.csv.gz` map to one key. Whichever path uploads first holds it; the other's
entry ends `failed` with `key collision: <key> holds <path>` and its file stays, whether the
two arrive together or apart, in either order, small (awscrt PUT) or large (boto3 multipart).
An object the queue does not remember is caught by the conditional first upload (moto
honours If-None-Match). A re-send of the same path replaces its object; `queue replay` works
once the operator has renamed the file.
"""

from __future__ import annotations

import gzip
import urllib.parse
from pathlib import Path

import pytest

from tests.e2e.identity import MIB, Bucketed, body

KEY = "sftpuser1/upload/a.csv"
SIZES = {"small": 4096, "large": 11 * MIB}  # the large ones go multipart (5 MiB parts)


def product(tmp_path: Path, source_tree, pipeline_config, moto_server, s3_client, s3_bucket,
            fault_proxy) -> Bucketed:
    pipeline_config(max_attempts=5)
    return Bucketed.on_moto(tmp_path, source_tree.config_path, moto_server, s3_client,
                            s3_bucket, fault_proxy)


def write(upload: Path, name: str, data: bytes) -> Path:
    path = upload / name
    path.write_bytes(gzip.compress(data, compresslevel=1) if name.endswith(".gz") else data)
    return path


def origin(run: Bucketed) -> str:
    head = run.s3.head_object(Bucket=run.bucket, Key=KEY)
    meta = {k.lower(): v for k, v in head["Metadata"].items()}
    return urllib.parse.unquote(meta["sftppush-original-name"])


def collision(run: Bucketed, loser: Path, holder: Path) -> dict:
    [entry] = [e for e in run.product.entries("failed") if e["path"] == str(loser)]
    assert entry["last_error"] == f"key collision: {KEY} holds {holder}", entry
    assert entry["attempts"] == 1, "a collision fails at once, no retries"
    assert loser.exists()
    return entry


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("first", ["a.csv", "a.csv.gz"])
def test_a_second_path_for_a_key_arriving_later_fails_and_stays(
        first: str, size: str, tmp_path: Path, source_tree, pipeline_config, moto_server,
        s3_client, s3_bucket, fault_proxy) -> None:
    run = product(tmp_path, source_tree, pipeline_config, moto_server, s3_client, s3_bucket,
                  fault_proxy)
    second = "a.csv.gz" if first == "a.csv" else "a.csv"
    one, two = body(SIZES[size], 1), body(SIZES[size], 2)
    holder = write(source_tree.upload, first, one)
    run.rescan()
    run.drain()
    assert run.read(KEY) == one and not holder.exists()
    loser = write(source_tree.upload, second, two)
    run.rescan()
    run.drain()
    collision(run, loser, holder)
    assert run.read(KEY) == one and origin(run) == first
    # The same path again replaces its own object.
    again = body(SIZES[size], 3)
    write(source_tree.upload, first, again)
    run.rescan()
    run.drain()
    assert run.read(KEY) == again and not holder.exists()


@pytest.mark.parametrize("size", SIZES)
def test_two_paths_for_one_key_arriving_together_leave_one_object_and_one_file(
        size: str, tmp_path: Path, source_tree, pipeline_config, moto_server, s3_client,
        s3_bucket, fault_proxy) -> None:
    run = product(tmp_path, source_tree, pipeline_config, moto_server, s3_client, s3_bucket,
                  fault_proxy)
    bodies = {"a.csv": body(SIZES[size], 1), "a.csv.gz": body(SIZES[size], 2)}
    paths = {name: write(source_tree.upload, name, data) for name, data in bodies.items()}
    run.rescan()
    run.drain()
    [kept] = [name for name, p in paths.items() if p.exists()]
    [gone] = [name for name in paths if name != kept]
    collision(run, paths[kept], paths[gone])
    assert run.read(KEY) == bodies[gone] and origin(run) == gone


def test_replay_works_once_the_operator_has_renamed_the_file(
        tmp_path: Path, source_tree, pipeline_config, moto_server, s3_client, s3_bucket,
        fault_proxy) -> None:
    run = product(tmp_path, source_tree, pipeline_config, moto_server, s3_client, s3_bucket,
                  fault_proxy)
    write(source_tree.upload, "a.csv", body(4096, 1))
    run.rescan()
    run.drain()
    loser = write(source_tree.upload, "a.csv.gz", body(4096, 2))
    run.rescan()
    run.drain()
    entry = collision(run, loser, source_tree.upload / "a.csv")
    loser.rename(source_tree.upload / "a2.csv.gz")
    assert run.product.cli("queue", "replay", str(entry["id"])).returncode == 0
    run.rescan()
    run.drain()
    assert run.read("sftpuser1/upload/a2.csv") == body(4096, 2)
    assert run.read(KEY) == body(4096, 1)
    assert run.product.status()["failed"] == 0 and list(source_tree.upload.iterdir()) == []


@pytest.mark.parametrize("size", SIZES)
def test_an_object_the_queue_does_not_remember_is_caught_by_the_conditional_upload(
        size: str, tmp_path: Path, source_tree, pipeline_config, moto_server, s3_client,
        s3_bucket, fault_proxy) -> None:
    # Written before the queue file was new (purged entries, another installation).
    theirs = b"another path's content"
    s3_client.put_object(Bucket=s3_bucket, Key=KEY, Body=theirs, Metadata={
        "sftppush-source": "sftpuser1", "sftppush-original-name": "a.csv.gz"})
    run = product(tmp_path, source_tree, pipeline_config, moto_server, s3_client, s3_bucket,
                  fault_proxy)
    mine = write(source_tree.upload, "a.csv", body(SIZES[size], 1))
    run.rescan()
    run.drain()
    [entry] = run.product.entries("failed")
    assert entry["last_error"] == f"key collision: {KEY} holds sftpuser1:a.csv.gz", entry
    assert mine.exists() and run.read(KEY) == theirs


def test_an_object_without_sftppush_metadata_is_replaced_with_a_warning(
        tmp_path: Path, source_tree, pipeline_config, moto_server, s3_client, s3_bucket,
        fault_proxy) -> None:
    s3_client.put_object(Bucket=s3_bucket, Key=KEY, Body=b"the Go tool's upload")
    run = product(tmp_path, source_tree, pipeline_config, moto_server, s3_client, s3_bucket,
                  fault_proxy)
    mine = write(source_tree.upload, "a.csv", body(4096, 1))
    run.rescan()
    run.drain()
    assert run.read(KEY) == body(4096, 1) and not mine.exists()
    assert any("replacing an object sftppush did not write" in e.get("message", "")
               for e in run.product.events())
