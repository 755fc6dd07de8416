"""Issue 14, case 9: GLACIER / DEEP_ARCHIVE and versioned buckets take multipart uploads whole.

A copy in place after a multipart upload (to add metadata) is refused for objects in GLACIER
or DEEP_ARCHIVE and writes a second version in a versioned bucket. `sftppush consume --drain`
runs as a process against moto with `part_size_mb: 5`: a 12 MiB file goes up in three parts,
a small one in one PUT (awscrt lane). Each must be done in one go, with the storage class,
size, ETag and metadata S3 shows, its file deleted, and exactly one object version.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.e2e.identity import MIB, Bucketed, body

PART = 5 * MIB
FILES = {"large.csv": 12 * MIB, "small.csv": 4096}


def multipart_etag(data: bytes, part: int) -> str:
    digests = b"".join(hashlib.md5(data[i:i + part]).digest()
                       for i in range(0, len(data), part))
    return f'"{hashlib.md5(digests).hexdigest()}-{-(-len(data) // part)}"'


def upload_both(tmp_path: Path, source_tree, pipeline_config, moto_server, s3_client,
                s3_bucket, fault_proxy, storage_class: str | None) -> tuple[Bucketed,
                                                                            dict[str, bytes]]:
    """Write both files, rescan and drain; every entry done in one attempt, files gone."""
    pipeline_config(max_attempts=1, s3={"storage_class": storage_class, "part_size_mb": 5})
    run = Bucketed.on_moto(tmp_path, source_tree.config_path, moto_server, s3_client,
                           s3_bucket, fault_proxy)
    bodies = {name: body(size, n) for n, (name, size) in enumerate(FILES.items())}
    for name, data in bodies.items():
        (source_tree.upload / name).write_bytes(data)
    run.rescan()
    run.drain()
    entries = run.product.entries()
    assert [(e["state"], e["attempts"]) for e in entries] == [("done", 0)] * 2, entries
    assert list(source_tree.upload.iterdir()) == []
    return run, bodies


def assert_one_multipart_upload_and_no_copy(run: Bucketed) -> None:
    sent = run.requests("sftpuser1/upload/large.csv")
    assert (sent["create_multipart"], sent["upload_part"], sent["complete_multipart"],
            sent["put"]) == (1, 3, 1, 0), f"not one multipart upload of 3 parts: {sent}"


@pytest.mark.parametrize("storage_class", ["GLACIER", "DEEP_ARCHIVE"])
def test_multipart_upload_to_an_archive_storage_class_is_done_in_one_go(
        storage_class: str, tmp_path: Path, source_tree, pipeline_config, moto_server,
        s3_client, s3_bucket, fault_proxy) -> None:
    run, bodies = upload_both(tmp_path, source_tree, pipeline_config, moto_server, s3_client,
                              s3_bucket, fault_proxy, storage_class)
    for name, data in bodies.items():
        head = s3_client.head_object(Bucket=s3_bucket, Key=f"sftpuser1/upload/{name}")
        assert head.get("StorageClass") == storage_class, (name, head)
        assert head["ContentLength"] == len(data), name
        assert head["Metadata"].get("sftppush-original-name") == name, head["Metadata"]
        assert head["Metadata"].get("sftppush-source") == "sftpuser1", head["Metadata"]
        if len(data) > PART:
            assert head["ETag"] == multipart_etag(data, PART)
            assert head["ETag"].endswith('-3"')
        else:
            assert head["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    assert_one_multipart_upload_and_no_copy(run)


def test_multipart_upload_to_a_versioned_bucket_writes_one_version(
        tmp_path: Path, source_tree, pipeline_config, moto_server, s3_client, s3_bucket,
        fault_proxy) -> None:
    s3_client.put_bucket_versioning(Bucket=s3_bucket,
                                    VersioningConfiguration={"Status": "Enabled"})
    run, bodies = upload_both(tmp_path, source_tree, pipeline_config, moto_server, s3_client,
                              s3_bucket, fault_proxy, None)
    listed = s3_client.list_object_versions(Bucket=s3_bucket)
    versions = sorted(v["Key"] for v in listed.get("Versions", []))
    assert versions == sorted(f"sftpuser1/upload/{name}" for name in bodies), listed
    assert not listed.get("DeleteMarkers"), listed
    for name, data in bodies.items():
        assert run.read(f"sftpuser1/upload/{name}") == data
    assert_one_multipart_upload_and_no_copy(run)
