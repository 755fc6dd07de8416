"""The S3 sink against moto's server over HTTP on loopback: uploads, verify, aborts, errors."""

import base64
import hashlib
import io
import os
import time
from typing import Any

import pytest

from sftppush.config import Defaults, LogConfig, S3Config
from sftppush.errors import PermanentError, TransientError
from sftppush.sink.answers import classify
from sftppush.sink.s3 import Sink
from sftppush.sink.transfer import RetryPolicy, Transfer
from tests.conftest import FAKE_REGION, S3Server, free_port

FAST = RetryPolicy(attempts=3, initial=0.01, maximum=0.05)
MB = 2**20


def uploader(endpoint: str, checksum: str = "when_supported", fast: bool = False,
             **kw: Any) -> Sink:
    s3 = S3Config(part_size_mb=5, checksum=checksum)
    defaults = Defaults(userpath=None, s3target=None, awsprofile=None, awsregion=FAKE_REGION,
                        endpoint_url=endpoint, log=LogConfig())
    return Sink.from_config(defaults, s3, Transfer(connect_timeout=1, read_timeout=10,
                                                   retry=FAST, fast=fast, **kw))


class Exploding(io.BytesIO):
    """A reader that fails after `after` bytes, like a corrupt archive found mid-stream."""

    def __init__(self, data: bytes, after: int) -> None:
        super().__init__(data)
        self.after = after

    def read(self, size: int = -1) -> bytes:
        if self.tell() >= self.after:
            raise PermanentError("corrupt gzip: boom")
        return super().read(min(size, self.after - self.tell()) if size > 0 else size)

    def readinto(self, buffer: Any) -> int:
        if self.tell() >= self.after:
            raise PermanentError("corrupt gzip: boom")
        with memoryview(buffer) as view:
            return super().readinto(view[: self.after - self.tell()])


def open_uploads(client: Any, bucket: str) -> list[dict[str, Any]]:
    return client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])


@pytest.mark.parametrize("checksum", ["when_supported", "when_required"])
def test_small_body_is_one_put_verified_without_head(moto_server: S3Server, s3_client: Any,
                                                     s3_bucket: str, checksum: str) -> None:
    up = uploader(moto_server.endpoint_url, checksum)
    body = b"a,b\n1,2\n"
    done = up.upload(s3_bucket, "k/a b.csv", io.BytesIO(body), {"sftppush-source": "s"})
    assert (done.parts, done.bytes_out) == (0, len(body))
    # moto echoes the checksum it is sent: with none sent, only the ETag can tell.
    assert done.verified_by == ("crc64nvme" if checksum == "when_supported" else "etag")
    obj = s3_client.get_object(Bucket=s3_bucket, Key="k/a b.csv")
    assert obj["Body"].read() == body
    assert obj["Metadata"] == {"sftppush-source": "s",
                               "sftppush-sha256": hashlib.sha256(body).hexdigest()}


def requests_sent(up: Sink) -> list[tuple[str, str, dict[str, str]]]:
    """(method, url, headers) of every request the sink's boto3 client sends from now on."""
    sent: list[tuple[str, str, dict[str, str]]] = []
    up.client.meta.events.register("before-send.s3", lambda request, **_: sent.append(
        (request.method, request.url,
         {k.lower(): v.decode() if isinstance(v, bytes) else v
          for k, v in request.headers.items()})))
    return sent


def crc64(data: bytes) -> str:
    from awscrt import checksums
    return base64.b64encode(checksums.crc64nvme(data).to_bytes(8, "big")).decode()


@pytest.mark.parametrize("fast", [True, False])
def test_single_put_sends_a_crc64nvme_the_store_answers(moto_server: S3Server, s3_bucket: str,
                                                        fast: bool) -> None:
    # moto answers the x-amz-checksum-crc64nvme it was sent (it validates nothing): a store
    # that validates (AWS) refuses a wrong one. Either transport sends the same kind.
    up = uploader(moto_server.endpoint_url, fast=fast)
    body = os.urandom(3000)
    done = up.put(s3_bucket, "one", body, {}).result() if fast else \
        up.upload(s3_bucket, "one", io.BytesIO(body), {})
    assert done.verified_by == "crc64nvme"


def test_multipart_sends_a_full_object_crc64nvme_of_the_whole_stream(
        moto_server: S3Server, s3_bucket: str) -> None:
    up = uploader(moto_server.endpoint_url)
    sent = requests_sent(up)
    body = os.urandom(MB) * 11 + b"end"
    up.upload(s3_bucket, "whole", io.BytesIO(body), {})
    create = next(h for m, u, h in sent if m == "POST" and u.endswith("?uploads"))
    assert (create["x-amz-checksum-algorithm"], create["x-amz-checksum-type"]) == \
        ("CRC64NVME", "FULL_OBJECT")
    parts = [h for m, u, h in sent if m == "PUT" and "partNumber=" in u]
    assert parts and all("x-amz-checksum-crc64nvme" in h for h in parts)
    complete = next(h for m, u, h in sent if m == "POST" and "uploadId=" in u)
    assert complete["x-amz-checksum-crc64nvme"] == crc64(body)
    assert complete["x-amz-checksum-type"] == "FULL_OBJECT"


def test_when_required_sends_no_checksum_headers(moto_server: S3Server, s3_bucket: str) -> None:
    up = uploader(moto_server.endpoint_url, "when_required")
    sent = requests_sent(up)
    up.upload(s3_bucket, "small", io.BytesIO(b"x" * 100), {})
    done = up.upload(s3_bucket, "big", io.BytesIO(os.urandom(11 * MB)), {})
    assert done.verified_by == "etag"
    assert not [k for _, _, h in sent for k in h if k.startswith("x-amz-checksum")
                or k == "x-amz-sdk-checksum-algorithm" or k == "x-amz-trailer"]


def test_large_body_is_multipart_verified_by_its_etag_with_no_copy_in_place(
        moto_server: S3Server, s3_client: Any, s3_bucket: str) -> None:
    s3_client.put_bucket_versioning(Bucket=s3_bucket,
                                    VersioningConfiguration={"Status": "Enabled"})
    up = uploader(moto_server.endpoint_url)
    body = os.urandom(MB) * 12 + b"tail"
    done = up.upload(s3_bucket, "big.bin", io.BytesIO(body), {"sftppush-source": "s"})
    assert done.parts == 3 and done.verified_by == "etag"
    assert done.sha256 == hashlib.sha256(body).hexdigest()  # for the queue entry and log line
    obj = s3_client.get_object(Bucket=s3_bucket, Key="big.bin")
    assert obj["Body"].read() == body
    assert obj["Metadata"] == {"sftppush-source": "s"}
    versions = s3_client.list_object_versions(Bucket=s3_bucket)["Versions"]
    assert len(versions) == 1  # a copy in place wrote a second version
    assert open_uploads(s3_client, s3_bucket) == []


@pytest.mark.parametrize("storage_class", ["GLACIER", "DEEP_ARCHIVE"])
def test_archive_storage_classes_take_multipart_uploads(moto_server: S3Server, s3_client: Any,
                                                        s3_bucket: str,
                                                        storage_class: str) -> None:
    # CopyObject onto itself is refused for these (ObjectNotInActiveTierError): the copy in
    # place that used to add the sha256 failed every attempt.
    s3 = S3Config(part_size_mb=5, storage_class=storage_class)
    defaults = Defaults(userpath=None, s3target=None, awsprofile=None, awsregion=FAKE_REGION,
                        endpoint_url=moto_server.endpoint_url, log=LogConfig())
    up = Sink.from_config(defaults, s3, Transfer(retry=FAST, fast=False))
    done = up.upload(s3_bucket, "cold.bin", io.BytesIO(os.urandom(11 * MB)), {})
    assert done.parts == 3 and done.verified_by == "etag"
    head = s3_client.head_object(Bucket=s3_bucket, Key="cold.bin")
    assert head["StorageClass"] == storage_class and head["ContentLength"] == 11 * MB


def test_body_of_exactly_one_part_is_a_single_put(moto_server: S3Server,
                                                  s3_bucket: str) -> None:
    done = uploader(moto_server.endpoint_url).upload(s3_bucket, "five", io.BytesIO(b"x" * 5 * MB),
                                                     {})
    assert done.parts == 0 and done.bytes_out == 5 * MB


def test_failure_mid_multipart_aborts_and_leaves_nothing(moto_server: S3Server, s3_client: Any,
                                                         s3_bucket: str) -> None:
    up = uploader(moto_server.endpoint_url)
    with pytest.raises(PermanentError, match="boom"):
        up.upload(s3_bucket, "broken", Exploding(b"z" * 20 * MB, after=16 * MB), {})
    assert s3_client.list_objects_v2(Bucket=s3_bucket)["KeyCount"] == 0
    assert open_uploads(s3_client, s3_bucket) == []


def test_orphaned_multipart_upload_of_the_key_is_aborted_on_retry(
        moto_server: S3Server, s3_client: Any, s3_bucket: str) -> None:
    s3_client.create_multipart_upload(Bucket=s3_bucket, Key="big")  # a killed attempt's
    s3_client.create_multipart_upload(Bucket=s3_bucket, Key="big-other")  # not ours
    uploader(moto_server.endpoint_url).upload(s3_bucket, "big", io.BytesIO(b"y" * 11 * MB), {})
    assert [u["Key"] for u in open_uploads(s3_client, s3_bucket)] == ["big-other"]


def test_a_part_retried_in_place_is_sent_whole_again(moto_server: S3Server, s3_client: Any,
                                                     s3_bucket: str) -> None:
    # The first attempt dies after reading part of the body (a reset mid-send); the retry
    # must send it from its start, not the rest of it under the whole part's Content-Length
    # (the store would wait for bytes that never come, up to the read timeout).
    up = uploader(moto_server.endpoint_url)  # read timeout 10 s
    real = up.client.upload_part
    failed: list[int] = []

    def reset_once(**kwargs: Any) -> Any:
        if kwargs["PartNumber"] == 2 and not failed:
            failed.append(len(kwargs["Body"].read(100_000)))
            raise ConnectionResetError("reset by peer mid-body")
        return real(**kwargs)

    up.client.upload_part = reset_once
    body = os.urandom(11 * MB)
    t = time.monotonic()
    done = up.upload(s3_bucket, "retried", io.BytesIO(body), {})
    assert failed == [100_000] and time.monotonic() - t < 5
    assert done.sha256 == hashlib.sha256(body).hexdigest()
    assert s3_client.get_object(Bucket=s3_bucket, Key="retried")["Body"].read() == body


def test_missing_bucket_is_permanent(moto_server: S3Server) -> None:
    with pytest.raises(PermanentError, match="NoSuchBucket"):
        uploader(moto_server.endpoint_url).upload("no-such-bucket-here", "k", io.BytesIO(b"x"), {})


def test_unreachable_endpoint_is_transient_after_retries_in_place() -> None:
    up = uploader(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(TransientError, match="unreachable"):
        up.upload("bkt", "k", io.BytesIO(b"x"), {})


def test_head_tells_present_from_absent_and_whose_object_it_is(
        moto_server: S3Server, s3_client: Any, s3_bucket: str) -> None:
    s3_client.put_object(Bucket=s3_bucket, Key="here", Body=b"1",
                         Metadata={"sftppush-source": "u1", "sftppush-original-name": "p%25E9"})
    up = uploader(moto_server.endpoint_url)
    found = up.head(s3_bucket, "here")
    assert up.head(s3_bucket, "absent") is None
    assert found is not None and found.size == 1 and found.etag == hashlib.md5(b"1").hexdigest()
    ours = {"sftppush-source": "u1", "sftppush-original-name": "p%25E9"}
    assert found.names(ours)
    # `p%E9` (the name) and `p\xe9` (a byte that is not UTF-8) share the key p%E9, never a name
    assert not found.names({**ours, "sftppush-original-name": "p%E9"})
    assert not found.names({**ours, "sftppush-source": "u2"})


def test_classification_of_service_errors() -> None:
    from botocore.exceptions import ClientError

    def err(code: str, status: int) -> ClientError:
        return ClientError({"Error": {"Code": code, "Message": "m"},
                            "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")

    assert isinstance(classify(err("SlowDown", 503)), TransientError)
    assert isinstance(classify(err("InternalError", 500)), TransientError)
    assert isinstance(classify(err("RequestTimeout", 400)), TransientError)
    assert isinstance(classify(err("ExpiredToken", 400)), TransientError)
    assert isinstance(classify(err("AccessDenied", 403)), PermanentError)
    assert isinstance(classify(err("NoSuchBucket", 404)), PermanentError)
    assert "AccessDenied" in str(classify(err("AccessDenied", 403)))


def test_messages_say_where_what_it_means_and_the_fix() -> None:
    from botocore.exceptions import ClientError

    from sftppush.sink import crt
    from sftppush.sink.answers import Where

    where = Where("bkt", "https://s3.example:9000")
    tls = str(classify(crt.PutError(None, None, "AWS_IO_TLS_ERROR_NEGOTIATION_FAILURE"),
                       where=where))
    assert tls.startswith("S3 unreachable on bucket bkt at https://s3.example:9000:")
    assert "the TLS certificate of https://s3.example:9000 is not trusted: set AWS_CA_BUNDLE" \
        in tls
    refused = str(classify(crt.PutError(None, None, "AWS_IO_SOCKET_CONNECTION_REFUSED"),
                           where=where))
    assert "nothing answers at https://s3.example:9000: check defaults.endpoint_url" in refused
    denied = classify(ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied."},
                                   "ResponseMetadata": {"HTTPStatusCode": 403}}, "PutObject"),
                      where=where)
    assert isinstance(denied, PermanentError)
    assert str(denied).startswith("S3 PutObject on bucket bkt at https://s3.example:9000:"
                                  " AccessDenied (403) Access Denied: these credentials may not")


def test_a_damaged_body_refused_and_retried_in_place_is_a_warning(
        moto_server: S3Server, s3_bucket: str, caplog: pytest.LogCaptureFixture) -> None:
    """A store that checks what it gets (AWS S3) answers BadDigest; boto3's lane retries in
    place, and the retry's success must not hide it below debug."""
    from botocore.exceptions import ClientError

    up = uploader(moto_server.endpoint_url)
    real = up.client.put_object
    refused: list[int] = []

    def damaged_once(**kwargs: Any) -> Any:
        if not refused:
            refused.append(1)
            raise ClientError({"Error": {"Code": "BadDigest", "Message": "The Content-MD5 you"
                                         " specified did not match what we received."},
                               "ResponseMetadata": {"HTTPStatusCode": 400}}, "PutObject")
        return real(**kwargs)

    up.client.put_object = damaged_once
    with caplog.at_level("WARNING", logger="sftppush"):
        up.upload(s3_bucket, "k", io.BytesIO(b"x" * 1000), {})
    (warning,) = [r for r in caplog.records if r.levelname == "WARNING"]
    assert warning.getMessage() == (f"store refused a body damaged on the way, sent again"
                                    f" bucket={s3_bucket} endpoint={moto_server.endpoint_url}"
                                    " code=BadDigest")


def test_multipart_to_rclone_with_no_open_uploads_and_capitalised_metadata(rclone_s3: Any) -> None:
    # rclone serve s3 answers ListMultipartUploads on a bucket without uploads with
    # NoSuchUpload, and returns metadata keys capitalised; neither may stop an upload.
    bucket = rclone_s3.make_bucket("fresh")
    body = os.urandom(MB) * 11
    done = uploader(rclone_s3.endpoint_url).upload(bucket, "big", io.BytesIO(body),
                                                   {"sftppush-source": "s"})
    assert done.parts == 3 and done.verified_by == "etag"
    assert (rclone_s3.root / bucket / "big").read_bytes() == body


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_a_parts_body_is_hashed_for_its_signature_over_http_only(scheme: str) -> None:
    # botocore leaves a streamed body out of the signature over https when a checksum header
    # comes with it (TLS and the checksum guard it), but finds the header only under the
    # name its own checksum step chose: a part's checksum, which the sink gives, went unseen,
    # and every part was hashed once more (sha256, 0.8 CPU s a GiB) for nothing. Over http
    # the hash is what guards the body. Signing only: the request is answered before sending.
    from botocore.awsrequest import AWSResponse

    from sftppush.sink.client import PART_SIGNER

    client = uploader(f"{scheme}://127.0.0.1:{free_port()}").client
    seen: dict[str, str] = {}
    signers: list[str] = []

    class Empty:
        def stream(self, **_: Any) -> Any:
            yield b""

    def answer(request: Any, **_: Any) -> AWSResponse:
        seen.update({k: bytes(v).decode() if isinstance(v, bytes) else v
                     for k, v in request.headers.items()})
        return AWSResponse(request.url, 200, {"ETag": '"e"'}, Empty())

    client.meta.events.register("before-send.s3.UploadPart", answer)
    client.meta.events.register("before-sign.s3.UploadPart",
                                lambda signature_version, **_: signers.append(signature_version))
    body = os.urandom(MB)
    client.upload_part(Bucket="signed", Key="k", UploadId="u", PartNumber=1,
                       Body=io.BytesIO(body), ChecksumAlgorithm="CRC64NVME",
                       ChecksumCRC64NVME="AAAAAAAAAAA=")
    assert signers == [PART_SIGNER]
    assert seen["x-amz-checksum-crc64nvme"] == "AAAAAAAAAAA="
    assert seen["X-Amz-Content-SHA256"] == (
        "UNSIGNED-PAYLOAD" if scheme == "https" else hashlib.sha256(body).hexdigest())
    assert "Authorization" in seen


def test_parts_sent_over_https_unsigned_are_accepted_by_a_store_that_checks_signatures(
        rclone_s3: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # The same over a real https endpoint: rclone (--auth-key) behind a TLS terminator
    # checks each part's signature, made over UNSIGNED-PAYLOAD, and stores the parts whole.
    from tests.e2e.tls import TlsTerminator, self_signed

    cert, key = self_signed(tmp_path)
    terminator = TlsTerminator(rclone_s3.port, cert, key)
    monkeypatch.setenv("AWS_CA_BUNDLE", str(cert))
    try:
        bucket = rclone_s3.make_bucket("tls")
        up = uploader(f"https://127.0.0.1:{terminator.port}")
        hashes: list[str] = []
        up.client.meta.events.register(
            "before-send.s3.UploadPart", lambda request, **_: hashes.append(
                bytes(request.headers["X-Amz-Content-SHA256"]).decode()))
        body = os.urandom(MB) * 11
        done = up.upload(bucket, "big", io.BytesIO(body), {"sftppush-source": "s"})
    finally:
        terminator.close()
    assert done.parts == 3 and done.verified_by == "etag"
    assert hashes == ["UNSIGNED-PAYLOAD"] * 3
    assert terminator.handshakes >= 1
    assert (rclone_s3.root / bucket / "big").read_bytes() == body


def test_parts_are_signed_over_their_sha256_by_botocores_own_signer(rclone_s3: Any) -> None:
    # UploadPart goes through botocore's Python S3 signer (client.py), which hashes a part
    # 1 MiB at a time instead of through Python 4 KiB at a time. rclone (--auth-key) checks
    # every signature: the parts landing whole is what says the signer signs them right.
    from sftppush.sink.client import PART_SIGNER

    bucket = rclone_s3.make_bucket("signed")
    body = os.urandom(MB) * 11
    up = uploader(rclone_s3.endpoint_url)
    signers: list[str] = []
    hashes: list[str] = []
    events = up.client.meta.events
    events.register("before-sign.s3.UploadPart",
                    lambda signature_version, **_: signers.append(signature_version))
    events.register("before-send.s3.UploadPart",
                    lambda request, **_: hashes.append(
                        bytes(request.headers["X-Amz-Content-SHA256"]).decode()))
    done = up.upload(bucket, "big", io.BytesIO(body), {"sftppush-source": "s"})
    assert done.parts == 3 and (rclone_s3.root / bucket / "big").read_bytes() == body
    assert signers == [PART_SIGNER] * 3
    parts = [body[i:i + 5 * MB] for i in range(0, len(body), 5 * MB)]
    assert sorted(hashes) == sorted(hashlib.sha256(p).hexdigest() for p in parts)



class Generated:
    """`size` bytes of a repeated block, made as they are read: the test holds no body."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.block = os.urandom(MB)

    def read(self, size: int = -1) -> bytes:
        n = min(self.left, len(self.block), size if size >= 0 else self.left)
        self.left -= n
        return self.block[:n]

    def readinto(self, buffer: Any) -> int:
        n = min(self.left, len(self.block), len(buffer))
        buffer[:n] = self.block[:n]
        self.left -= n
        return n


def test_a_wrong_part_on_a_store_that_ignores_checksums_is_caught_by_its_etag(
        rclone_s3: Any) -> None:
    # rclone serve s3 accepts a part whose CRC32 header is wrong; its answer (the MD5 of what
    # it received, as the part's ETag) is all that can tell. One part is sent corrupted here.
    bucket = rclone_s3.make_bucket("wrongpart")
    up = uploader(rclone_s3.endpoint_url)
    call = up.multipart.call

    def corrupting(method: str, cancel: Any = None, **kwargs: Any) -> Any:
        if method == "upload_part" and kwargs["PartNumber"] == 2:
            data = bytearray(kwargs["Body"].read())
            data[100] ^= 0xFF
            kwargs["Body"] = bytes(data)
        return call(method, cancel, **kwargs)

    up.multipart.call = corrupting
    journal = MemoryJournal()
    with pytest.raises(TransientError, match=r"part 2: ETag .* is not the MD5"):
        up.upload(bucket, "big", io.BytesIO(os.urandom(11 * MB)), {}, journal=journal)
    assert not (rclone_s3.root / bucket / "big").exists()
    # Not kept for a resume: rclone refuses to replace a part with different contents.
    assert journal.upload is None and open_uploads(rclone_s3.client(), bucket) == []


def test_without_awscrt_uploads_send_a_crc32() -> None:
    import subprocess
    import sys

    code = ("import sys; sys.modules['awscrt'] = None; from sftppush.sink import parts as m; "
            "assert m.store_checksum('when_supported') is m.CRC32; "
            "assert m.store_checksum('when_required') is None")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize("first_mb", [5, 8, 64, 5120])
def test_parts_double_so_that_10000_parts_hold_5_tib(first_mb: int) -> None:
    from sftppush.sink.parts import grow_every, part_size

    every = grow_every(first_mb * MB)
    sizes = [part_size(first_mb * MB, n, every) for n in range(1, 10_001)]
    assert sizes[0] == first_mb * MB and sizes == sorted(sizes)
    assert sum(sizes) >= 5 * 2**40 and max(sizes) <= 5 * 2**30
    assert all(s == 5 * 2**30 or (s // (first_mb * MB)).bit_count() == 1 for s in sizes)
    # No faster than needed: one part fewer per size and 5 TiB would not fit.
    assert every == 10_000 or sum(part_size(first_mb * MB, n, every + 1)
                                  for n in range(1, 10_001)) < 5 * 2**40


def test_parts_grow_as_the_stream_goes_on_in_flat_memory(moto_server: S3Server,
                                                         s3_bucket: str) -> None:
    import tracemalloc

    up = uploader(moto_server.endpoint_url, part_memory=10 * MB, part_memory_max=10 * MB,
                  spool_above=5 * MB)
    up.multipart.every = 2  # doubling after every 2 parts, to see it on a small object
    sent = requests_sent(up)
    tracemalloc.start()
    try:
        result = up.upload(s3_bucket, "big", Generated(65 * MB), {})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    sizes = {int(u.split("partNumber=")[1].split("&")[0]): int(h["content-length"])
             for m, u, h in sent if m == "PUT" and "partNumber=" in u}  # sent in parallel
    assert [sizes[n] for n in sorted(sizes)] == [5 * MB, 5 * MB, 10 * MB, 10 * MB, 20 * MB,
                                                 15 * MB]
    assert result.parts == 6 and result.bytes_out == 65 * MB and result.verified_by == "etag"
    # Two 5 MB part buffers and a few 1 MB blocks: parts over spool_above wait in a
    # temporary file, not in memory.
    assert peak < 16 * MB, f"peak {peak / MB:.1f} MB"


def test_parts_tallied_on_their_threads_give_the_sha256_and_crc_of_the_stream(
        moto_server: S3Server, s3_bucket: str) -> None:
    # Each part thread adds its part to the whole-object digests, in part order: buffers and
    # spooled parts alike (5 and 5 MB buffers, then 10, 10 and 6 MB in temporary files).
    up = uploader(moto_server.endpoint_url, part_memory=10 * MB, spool_above=5 * MB)
    up.multipart.every = 2
    sent = requests_sent(up)
    body = os.urandom(36 * MB)
    done = up.upload(s3_bucket, "mixed", io.BytesIO(body), {})
    assert (done.parts, done.bytes_out) == (5, len(body))
    assert done.sha256 == hashlib.sha256(body).hexdigest()
    complete = next(h for m, u, h in sent if m == "POST" and "uploadId=" in u)
    assert complete["x-amz-checksum-crc64nvme"] == crc64(body)


def test_a_tally_takes_parts_in_order_whichever_thread_comes_first() -> None:
    from concurrent.futures import ThreadPoolExecutor

    from sftppush.sink.parts import CRC32, Tally

    parts = [os.urandom(1000 + n) for n in range(6)]
    tally = Tally(io.BytesIO(), CRC32)
    with ThreadPoolExecutor(6) as pool:
        for n in reversed(range(1, 7)):  # the last part's thread starts first
            pool.submit(tally.feed_part, n, bytearray(parts[n - 1]))
    whole = b"".join(parts)
    assert (tally.sha256.hexdigest(), tally.crc, tally.total, tally.parts_fed) == \
        (hashlib.sha256(whole).hexdigest(), CRC32.update(whole, 0), len(whole), 6)


class Crash(Exception):
    """The consumer dies here (kill -9): nothing after this point runs."""


class MemoryJournal:
    """multipart.Journal in a dict's place: what the queue keeps for a claimed entry."""

    def __init__(self, crash_after: int | None = None) -> None:
        self.upload: Any = None
        self.parts: list[Any] = []
        self.sha256: str | None = None
        self.crash_after = crash_after

    def recorded(self) -> Any:
        import dataclasses
        return dataclasses.replace(self.upload, parts=tuple(self.parts)) if self.upload else None

    def started(self, upload: Any) -> None:
        self.upload, self.parts = upload, []

    def completed(self, part: Any) -> None:
        if self.crash_after is not None and part.number > self.crash_after:
            raise Crash  # parts before it, sent in parallel, still finish and are recorded
        self.parts.append(part)

    def ended(self, sha256: str | None) -> None:
        self.upload, self.parts, self.sha256 = None, [], sha256

    def kept(self, _key: str) -> set[str]:
        return {self.upload.upload_id} if self.upload else set()


def crashed_upload(up: Sink, bucket: str, body: bytes, journal: MemoryJournal) -> None:
    with pytest.raises(Crash):
        up.upload(bucket, "big", io.BytesIO(body), {}, journal=journal)
    journal.crash_after = None


@pytest.mark.parametrize("store", ["moto", "rclone"])
def test_an_interrupted_upload_resumes_sending_only_the_parts_missing(
        store: str, request: pytest.FixtureRequest) -> None:
    server = request.getfixturevalue("moto_server" if store == "moto" else "rclone_s3")
    bucket = f"resume-{store}"
    server.client().create_bucket(Bucket=bucket)
    up = uploader(server.endpoint_url)
    body = os.urandom(31 * MB)  # 7 parts of 5 MB
    journal = MemoryJournal(crash_after=3)
    crashed_upload(up, bucket, body, journal)
    recorded = journal.recorded()
    assert sorted(p.number for p in recorded.parts) == [1, 2, 3]
    # Another attempt's clean-up leaves an upload recorded for a resume alone.
    assert up.multipart.abort_orphans(bucket, "big", journal.kept("big")) == 0
    sent = requests_sent(up)
    done = up.upload(bucket, "big", io.BytesIO(body), {}, journal=journal)
    parts_sent = [u for m, u, _ in sent if m == "PUT" and "partNumber=" in u]
    assert len(parts_sent) == 7 - 3 and done.parts == 7
    assert done.verified_by == "etag" and done.sha256 == hashlib.sha256(body).hexdigest()
    assert journal.sha256 == done.sha256 and journal.upload is None
    assert server.client().get_object(Bucket=bucket, Key="big")["Body"].read() == body
    assert open_uploads(server.client(), bucket) == []


class LosingJournal(MemoryJournal):
    """Part 3's record is lost with the consumer (it was slow, the others went on)."""

    def completed(self, part: Any) -> None:
        if part.number != 3:
            super().completed(part)


def test_a_resume_sends_only_the_parts_not_recorded_even_after_a_gap(
        rclone_s3: Any) -> None:
    bucket = rclone_s3.make_bucket("gap")
    up = uploader(rclone_s3.endpoint_url)
    body = os.urandom(31 * MB)  # 7 parts of 5 MB
    journal = LosingJournal(crash_after=5)
    crashed_upload(up, bucket, body, journal)
    assert sorted(p.number for p in journal.recorded().parts) == [1, 2, 4, 5]
    sent = requests_sent(up)
    done = up.upload(bucket, "big", io.BytesIO(body), {}, journal=journal)
    parts_sent = sorted(int(u.split("partNumber=")[1].split("&")[0])
                        for m, u, _ in sent if m == "PUT" and "partNumber=" in u)
    assert parts_sent == [3, 6, 7] and done.parts == 7
    assert done.verified_by == "etag" and done.sha256 == hashlib.sha256(body).hexdigest()
    assert rclone_s3.client().get_object(Bucket=bucket, Key="big")["Body"].read() == body


def test_a_resume_over_different_bytes_aborts_and_starts_over(moto_server: S3Server,
                                                              s3_client: Any,
                                                              s3_bucket: str) -> None:
    up = uploader(moto_server.endpoint_url)
    body = os.urandom(31 * MB)
    journal = MemoryJournal(crash_after=3)
    crashed_upload(up, s3_bucket, body, journal)
    changed = bytearray(body)
    changed[6 * MB] ^= 1  # in part 2, which the store already holds
    with pytest.raises(TransientError, match="part 2 differs"):
        up.upload(s3_bucket, "big", io.BytesIO(bytes(changed)), {}, journal=journal)
    assert journal.upload is None and open_uploads(s3_client, s3_bucket) == []
    done = up.upload(s3_bucket, "big", io.BytesIO(bytes(changed)), {}, journal=journal)
    assert done.parts == 7 and done.sha256 == hashlib.sha256(changed).hexdigest()


def test_a_permanent_error_aborts_a_recorded_upload_and_forgets_it(
        moto_server: S3Server, s3_client: Any, s3_bucket: str) -> None:
    journal = MemoryJournal()
    with pytest.raises(PermanentError, match="boom"):
        uploader(moto_server.endpoint_url).upload(
            s3_bucket, "broken", Exploding(b"z" * 20 * MB, after=16 * MB), {}, journal=journal)
    assert journal.upload is None and open_uploads(s3_client, s3_bucket) == []


def test_fixed_keys_reach_awscrt_as_they_are_refreshable_ones_are_asked_each_time():
    import datetime

    import boto3
    import botocore.credentials

    from sftppush.sink import crt
    from sftppush.sink.client import crt_credentials

    fixed = boto3.session.Session(aws_access_key_id="AKIAFIXED", aws_secret_access_key="s",
                                  aws_session_token="t", region_name=FAKE_REGION)
    assert crt_credentials(fixed) == crt.Credentials("AKIAFIXED", "s", "t")
    # A role's keys expire: botocore refreshes them (these within a minute, so at every
    # ask), and awscrt must ask the session each time, never keep the first keys.
    keys = iter(["AKIAFIRST", "AKIASECOND"])
    soon = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=1)).isoformat()
    rotating = boto3.session.Session(region_name=FAKE_REGION)
    rotating._session._credentials = botocore.credentials.RefreshableCredentials(
        "AKIAOLD", "s", None, datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC),
        lambda: {"access_key": next(keys), "secret_key": "s", "token": None,
                 "expiry_time": soon}, "test")
    ask = crt_credentials(rotating)
    assert callable(ask)
    assert [ask().access_key, ask().access_key] == ["AKIAFIRST", "AKIASECOND"]


@pytest.mark.parametrize("transport", ["awscrt", "boto3"])
def test_a_conditional_put_onto_an_object_replaces_ours_and_refuses_another_path_s(
        moto_server: S3Server, s3_client: Any, s3_bucket: str, transport: str) -> None:
    # moto honours If-None-Match: each conditional PUT below gets a 412, which both
    # transports must settle the same way (sink/single.py's settle, then Sink._finish).
    up = uploader(moto_server.endpoint_url, fast=transport == "awscrt")
    ours = {"sftppush-source": "alice", "sftppush-original-name": "a.csv.gz"}

    def send(key: str, body: bytes) -> Any:
        if transport == "awscrt":
            return up.put(s3_bucket, key, body, ours, if_absent=True).result(30)
        return up.upload(s3_bucket, key, io.BytesIO(body), ours, if_absent=True)

    try:
        s3_client.put_object(Bucket=s3_bucket, Key="mine", Body=b"older", Metadata=ours)
        done = send("mine", b"newer version of a.csv")
        assert done.verified_by and done.sha256 == hashlib.sha256(
            b"newer version of a.csv").hexdigest()
        s3_client.put_object(Bucket=s3_bucket, Key="theirs", Body=b"bob's", Metadata={
            "sftppush-source": "bob", "sftppush-original-name": "a.csv.gz"})
        with pytest.raises(PermanentError, match=r"key collision: theirs holds bob:a\.csv\.gz") \
                as refused:
            send("theirs", b"alice's a.csv")
        assert refused.value.final
    finally:
        up.close()
    assert s3_client.get_object(Bucket=s3_bucket, Key="mine")["Body"].read() == \
        b"newer version of a.csv"
    assert s3_client.get_object(Bucket=s3_bucket, Key="theirs")["Body"].read() == b"bob's"
