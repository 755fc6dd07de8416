"""A store that lies, and a path that meets another's object, as pinned model runs: each must
end with no file deleted before the store held its exact content, and no object replaced
by another path's. These are the sequences that kill the verification and key mutants of
issue 23's review (a check removed, a condition dropped); each passes only while that check
is there. See tests/model/test_found.py for how a run is replayed.
"""

from __future__ import annotations

import pytest

from tests.model.test_found import replay

WRITE = ("write", {"d": b"a", "name": b"x.csv", "size": 300})
SEEN = ("watcher_reads_events", {})
RUN = ("consumers_run", {})


@pytest.mark.parametrize("crt", [True, False], ids=["awscrt", "boto3"])
def test_a_checksum_answer_that_is_not_the_bodys_is_no_verification(crt: bool) -> None:
    replay({"crt": crt, "conditional": True, "checksums": "validate", "opaque": False,
            "delete": True}, WRITE, SEEN, ("store_lies_next", {"lie": "corrupt"}), RUN)


@pytest.mark.parametrize("crt", [True, False], ids=["awscrt", "boto3"])
def test_a_head_that_finds_someone_elses_object_is_no_verification(crt: bool) -> None:
    """No checksums and opaque ETags (SSE-KMS): only HEAD's size and sftppush-sha256 can
    tell, and someone else wrote the key right after our PUT."""
    replay({"crt": crt, "conditional": True, "checksums": "ignore", "opaque": True,
            "delete": True}, WRITE, SEEN, ("store_lies_next", {"lie": "clobber"}), RUN)


def test_a_multipart_object_whose_whole_checksum_differs_is_no_verification() -> None:
    replay({"crt": False, "conditional": True, "checksums": "validate", "opaque": False,
            "delete": True}, ("write", {"d": b"a", "name": b"big.bin", "size": 300}), SEEN,
           ("store_lies_next", {"lie": "corrupt"}), RUN)


@pytest.mark.parametrize("crt", [True, False], ids=["awscrt", "boto3"])
def test_a_first_upload_meets_another_paths_object_the_queue_forgot(crt: bool) -> None:
    """x.csv is uploaded, its entry purged; x.csv.gz (one key) must not replace it: its
    first upload is conditional (If-None-Match), on either upload path."""
    replay({"crt": crt, "conditional": True, "checksums": "validate", "opaque": False,
            "delete": True}, WRITE, SEEN, RUN, ("done_entries_purged", {}),
           ("write", {"d": b"a", "name": b"x.csv.gz", "size": 300}), SEEN, RUN)
