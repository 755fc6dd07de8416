"""Detection by magic bytes and streaming decompression with a cap."""

import bz2
import gzip
import io
import lzma

import pytest
import zstandard

from sftppush.decompress import CappedReader, detect
from sftppush.errors import PermanentError

BODY = b"".join(b"%06d,sensor,21.5\n" % i for i in range(20000))


def read_all(data: bytes, fmt: str | None, cap: int = 10**9) -> bytes:
    reader = CappedReader(io.BytesIO(data), fmt, cap)
    out = []
    while chunk := reader.read(65536):
        out.append(chunk)
    return b"".join(out)


@pytest.mark.parametrize(("fmt", "compress"), [
    ("gzip", gzip.compress), ("bzip2", bz2.compress), ("xz", lzma.compress),
    ("zstd", lambda b: zstandard.ZstdCompressor().compress(b)),
])
def test_each_format_is_detected_and_decompressed_byte_exact(fmt: str, compress) -> None:
    data = compress(BODY)
    assert detect(data[:8]) == fmt
    assert read_all(data, fmt) == BODY


def test_multi_member_gzip_and_multi_frame_zstd_are_one_stream() -> None:
    gz = gzip.compress(BODY[:1000]) + gzip.compress(BODY[1000:])
    assert read_all(gz, "gzip") == BODY
    z = zstandard.ZstdCompressor()
    zs = z.compress(BODY[:1000]) + z.compress(BODY[1000:])
    assert read_all(zs, "zstd") == BODY


def test_zip_and_plain_text_are_not_compressed() -> None:
    assert detect(b"PK\x03\x04rest") is None
    assert detect(b"id,value\n") is None
    assert read_all(b"PK\x03\x04rest", None) == b"PK\x03\x04rest"


def test_truncated_gzip_is_a_permanent_error() -> None:
    with pytest.raises(PermanentError, match="corrupt gzip: truncated"):
        read_all(gzip.compress(BODY)[:-100], "gzip")


@pytest.mark.parametrize(("fmt", "data"), [
    ("gzip", b"\x1f\x8b\x08\x00" + b"\x00" * 6 + b"not deflate at all" * 10),
    ("bzip2", b"BZh9" + b"garbage" * 20),
    ("xz", b"\xfd7zXZ\x00" + b"garbage" * 20),
])
def test_corrupt_data_is_a_permanent_error(fmt: str, data: bytes) -> None:
    with pytest.raises(PermanentError, match=f"corrupt {fmt}"):
        read_all(data, fmt)


def test_output_stops_at_the_cap() -> None:
    bomb = gzip.compress(b"\0" * 5_000_000)
    assert len(read_all(bomb, "gzip", cap=5_000_000)) == 5_000_000
    with pytest.raises(PermanentError, match="exceeds max_decompressed_bytes=4999999"):
        read_all(bomb, "gzip", cap=4_999_999)
