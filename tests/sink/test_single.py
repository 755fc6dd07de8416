"""single.py: one single PUT's request, as each transport sends it, and the one settle of
its answer (pure: no store here; tests/sink/test_s3.py and test_crt.py send them for real)."""

from __future__ import annotations

import base64
import hashlib

import pytest

from sftppush.errors import PermanentError, Throttled, TransientError
from sftppush.sink.answers import Where
from sftppush.sink.crtput import Answer, PutError
from sftppush.sink.parts import store_checksum
from sftppush.sink.single import Shape, Single, Taken, Unverified, Verified, settle

CHECKSUM = store_checksum("when_supported")
BODY = b"one small file\n" * 10
META = {"sftppush-source": "alice", "sftppush-original-name": "a.csv.gz"}
MD5 = hashlib.md5(BODY).hexdigest()


COMMON = (("Content-Type", "application/octet-stream"),)


def single(if_absent: bool = False, checksum=CHECKSUM, opaque: bool = False) -> Single:
    return Single.of(Shape(checksum, {}, COMMON, opaque), "b", "k", BODY, META, if_absent)


def settled(s: Single, answer):
    return settle(s, answer, lambda: Where("b", "http://127.0.0.1:1"))


def test_both_transports_send_the_same_metadata_sha_checksum_and_condition() -> None:
    for if_absent in (False, True):
        s = single(if_absent)
        headers = dict(s.headers())
        args = s.arguments(BODY)
        sha = hashlib.sha256(BODY).hexdigest()
        assert args["Metadata"] == {**META, "sftppush-sha256": sha}
        assert {k.removeprefix("x-amz-meta-"): v for k, v in headers.items()
                if k.startswith("x-amz-meta-")} == args["Metadata"]
        assert headers[CHECKSUM.header] == args[CHECKSUM.param] == s.sent
        assert headers["Content-MD5"] == base64.b64encode(bytes.fromhex(MD5)).decode()
        assert ("If-None-Match" in headers) == ("IfNoneMatch" in args) == if_absent


def test_an_answered_checksum_verifies_and_a_different_one_means_other_bytes() -> None:
    s = single()
    assert settled(s, Answer({"etag": "x", CHECKSUM.header: s.sent})) == \
        Verified(CHECKSUM.name, "x")
    with pytest.raises(TransientError, match="does not match the body sent"):
        settled(s, Answer({"etag": f'"{MD5}"', CHECKSUM.header: "AAAAAAAAAAA="}))


def test_without_a_checksum_an_md5_etag_verifies_and_another_etag_means_other_bytes() -> None:
    s = single(checksum=None)
    assert settled(s, Answer({"etag": f'"{MD5}"'})) == Verified("etag", f'"{MD5}"')
    with pytest.raises(TransientError, match="is not the MD5 of the body"):
        settled(s, Answer({"etag": '"0123"'}))


def test_an_answer_that_proves_nothing_is_left_for_a_head() -> None:
    assert settled(single(checksum=None, opaque=True), Answer({"etag": '"kms"'})) == \
        Unverified('"kms"')
    assert settled(single(checksum=None), Answer({})) == Unverified("")


def test_412_is_someone_s_object_only_for_a_conditional_put() -> None:
    assert settled(single(if_absent=True), PutError(412, "PreconditionFailed", "x")) == Taken()
    with pytest.raises(PermanentError):
        settled(single(if_absent=False), PutError(412, "PreconditionFailed", "x"))


def test_errors_are_classified_once_naming_the_bucket_and_endpoint() -> None:
    with pytest.raises(Throttled):
        settled(single(), PutError(503, "SlowDown", "Please reduce your request rate."))
    with pytest.raises(TransientError, match=r"S3 unreachable.*127\.0\.0\.1"):
        settled(single(), PutError(None, None, "connection refused"))
    with pytest.raises(PermanentError, match="AccessDenied"):
        settled(single(), PutError(403, "AccessDenied", "Access Denied"))
