"""Object keys and metadata exactly as SPEC 3 names them."""

from pathlib import Path

import pytest

from sftppush.config import Source, Target
from sftppush.errors import PermanentError
from sftppush.pipeline.keys import candidate_keys, escape_component, iso8601, metadata, object_key
from sftppush.sink.s3 import same_name

SOURCE = Source("sftpuser1", Path("/home/sftpuser1"), ("/upload",), Target("bkt"))
PREFIXED = Source("sftpuser1", Path("/home/sftpuser1"), ("/upload",), Target("bkt", "in/x"))


def test_key_mirrors_path_below_userpath_and_loses_one_matching_suffix() -> None:
    path = b"/home/sftpuser1/upload/2026/a.csv.gz"
    assert object_key(SOURCE, path, "gzip") == "sftpuser1/upload/2026/a.csv"
    assert object_key(SOURCE, b"/home/sftpuser1/upload/a.tar.gz.gz", "gzip") == \
        "sftpuser1/upload/a.tar.gz"
    assert object_key(SOURCE, b"/home/sftpuser1/upload/a.GZIP", "gzip") == "sftpuser1/upload/a"
    assert object_key(SOURCE, b"/home/sftpuser1/upload/b.bz2", "bzip2") == "sftpuser1/upload/b"
    assert object_key(SOURCE, b"/home/sftpuser1/upload/c.xz", "xz") == "sftpuser1/upload/c"
    assert object_key(SOURCE, b"/home/sftpuser1/upload/d.zst", "zstd") == "sftpuser1/upload/d"


def test_suffix_of_another_format_or_undetected_file_is_kept() -> None:
    assert object_key(SOURCE, b"/home/sftpuser1/upload/a.gz", None) == "sftpuser1/upload/a.gz"
    assert object_key(SOURCE, b"/home/sftpuser1/upload/a.xz", "gzip") == "sftpuser1/upload/a.xz"
    assert object_key(SOURCE, b"/home/sftpuser1/upload/a.zip", None) == "sftpuser1/upload/a.zip"
    # A name that is only the suffix keeps it rather than becoming a "directory" key.
    assert object_key(SOURCE, b"/home/sftpuser1/upload/.gz", "gzip") == "sftpuser1/upload/.gz"


def test_prefix_of_the_source_target_comes_first() -> None:
    assert object_key(PREFIXED, b"/home/sftpuser1/upload/a b.csv", None) == \
        "in/x/sftpuser1/upload/a b.csv"


def test_non_utf8_names_are_percent_escaped_the_same_way_every_time() -> None:
    raw = b"caf\xe9 100%.csv"
    assert escape_component(raw) == "caf%E9 100%25.csv"
    assert escape_component(raw) == escape_component(bytes(raw))
    assert escape_component("café 100%.csv".encode()) == "café 100%.csv"  # valid UTF-8 kept
    key = object_key(SOURCE, b"/home/sftpuser1/upload/\xff\xfe/x\x80.gz", "gzip")
    assert key == "sftpuser1/upload/%FF%FE/x%80"
    key.encode("utf-8")


def test_path_outside_the_source_root_has_no_key() -> None:
    with pytest.raises(ValueError):
        object_key(SOURCE, b"/home/other/upload/a.csv", None)
    with pytest.raises(ValueError):
        object_key(SOURCE, b"/home/sftpuser1/../other/a.csv", None)


def test_candidate_keys_of_a_vanished_file_cover_both_namings() -> None:
    assert candidate_keys(SOURCE, b"/home/sftpuser1/upload/a.csv.gz") == \
        ["sftpuser1/upload/a.csv", "sftpuser1/upload/a.csv.gz"]
    assert candidate_keys(SOURCE, b"/home/sftpuser1/upload/a.csv") == ["sftpuser1/upload/a.csv"]


def test_metadata_is_ascii_and_keeps_the_original_name() -> None:
    meta = metadata(SOURCE, b"/home/sftpuser1/upload/caf\xe9 1.csv.gz", 123,
                    1_767_225_600_123_456_789)
    assert meta == {
        "sftppush-source": "sftpuser1",
        "sftppush-original-name": "caf%E9 1.csv.gz",
        "sftppush-original-size": "123",
        "sftppush-mtime": "2026-01-01T00:00:00.123456+00:00",
    }
    for value in meta.values():
        value.encode("ascii")
    assert iso8601(0) == "1970-01-01T00:00:00+00:00"


@pytest.mark.parametrize("name", ["rep ", " rep", "  ", "a b.csv", "tab\t", "p%E9"])
def test_a_name_comes_back_from_a_header_as_it_went(name: str) -> None:
    """HTTP trims a header value's whitespace at its ends: edge spaces travel as %20, and
    the name read back (trimmed or not) is the same name, no other one."""
    path = f"/home/sftpuser1/upload/{name}".encode()
    sent = metadata(SOURCE, path, 1, 0)["sftppush-original-name"]
    assert sent == sent.strip(" \t") and sent.isascii()
    assert same_name(sent.strip(" \t"), sent)
    assert not same_name(sent + "x", sent) and not same_name(None, sent)


def test_an_object_whose_name_came_back_trimmed_before_is_still_the_same_name() -> None:
    # Objects written before edge spaces were kept: "rep " was stored as "rep".
    sent = metadata(SOURCE, b"/home/sftpuser1/upload/rep ", 1, 0)["sftppush-original-name"]
    assert same_name("rep", sent) and not same_name("rep", metadata(
        SOURCE, b"/home/sftpuser1/upload/rep.gz", 1, 0)["sftppush-original-name"])


def test_a_key_over_s3s_1024_bytes_is_a_final_error_naming_the_limit() -> None:
    # S3 refuses such a key (KeyTooLongError); no attempt can help until the file is renamed.
    # Counted in UTF-8 bytes, after the suffix a detected format removes.
    top = b"/home/sftpuser1/upload/"
    room = 1024 - len("sftpuser1/upload/")
    assert len(object_key(SOURCE, top + b"a" * room, None)) == 1024
    assert object_key(SOURCE, top + b"a" * room + b".gz", "gzip").endswith("a")
    for name, fmt in ((b"a" * (room + 1), None), (b"\xc3\xa9" * (room // 2 + 1), None)):
        with pytest.raises(PermanentError, match=r"^key too long: 10\d\d bytes, S3 allows "
                                                 r"at most 1024: shorten") as raised:
            object_key(SOURCE, top + name, fmt)
        assert raised.value.final and raised.value.reason == "key_too_long"
    deep = top + b"/".join([b"d" * 250] * 17) + b"/f"
    with pytest.raises(PermanentError, match=r"the path is \d+ bytes, over PATH_MAX \(4096\)"):
        object_key(SOURCE, deep, None)
