"""Detection by magic bytes and streaming decompression with a cap."""

import bz2
import gzip
import io
import lzma

import pytest
import zstandard

from sftppush.decompress import CappedReader, detect, inflate
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


def inflate_or_error(data: bytes, fmt: str | None, cap: int, most: int) -> bytes | str:
    try:
        return inflate(data, fmt, cap, most)
    except PermanentError as exc:
        return str(exc)


GZ = gzip.compress(BODY)
GZ_BAD_CRC = GZ[:-8] + bytes([GZ[-8] ^ 1]) + GZ[-7:]


@pytest.mark.parametrize(("name", "data"), [
    ("one member", GZ),
    ("two members", gzip.compress(BODY[:1000]) + gzip.compress(BODY[1000:])),
    ("zero padding after a member", GZ + b"\0" * 100),
    ("padding between members", gzip.compress(b"a" * 10) + b"\0" * 3 + gzip.compress(b"b")),
    ("garbage after a member", GZ + b"garbage"),
    ("truncated", GZ[:-100]),
    ("truncated trailer", GZ[:-3]),
    ("bad crc", GZ_BAD_CRC),
    ("not deflate", b"\x1f\x8b\x08\x00" + b"\x00" * 6 + b"not deflate at all" * 10),
    ("empty member", gzip.compress(b"")),
])
def test_inflate_of_a_whole_gzip_reads_as_the_streaming_reader_does(name: str,
                                                                    data: bytes) -> None:
    # The consumer's small-file lane inflates in one go; the streaming path uses GzipFile.
    # Both must agree on bytes, and on corrupt input both must refuse it as corrupt gzip.
    try:
        streamed: bytes | str = read_all(data, "gzip")
    except PermanentError as exc:
        streamed = str(exc)
    inflated = inflate_or_error(data, "gzip", 10**9, 10**8)
    if name == "bad crc":  # zlib words it "incorrect data check", GzipFile "CRC check failed"
        assert inflated.startswith("corrupt gzip: ") and streamed.startswith("corrupt gzip: ")
    else:
        assert inflated == streamed


def test_inflate_stops_past_most_and_refuses_past_the_cap() -> None:
    bomb = gzip.compress(b"\0" * 5_000_000)
    assert len(inflate(bomb, "gzip", cap=10**9, most=1000)) == 1001  # "more than most"
    assert len(inflate(bomb, "gzip", cap=5_000_000, most=10**8)) == 5_000_000
    with pytest.raises(PermanentError, match="exceeds max_decompressed_bytes=4999999"):
        inflate(bomb, "gzip", cap=4_999_999, most=10**8)
    # The cap counts across members, as in the streaming reader.
    two = gzip.compress(b"\0" * 600) + gzip.compress(b"\0" * 600)
    with pytest.raises(PermanentError, match="exceeds max_decompressed_bytes=1000"):
        inflate(two, "gzip", cap=1000, most=10**8)


@pytest.mark.parametrize(("fmt", "compress"), [
    ("bzip2", bz2.compress), ("xz", lzma.compress), (None, lambda b: b),
])
def test_inflate_of_other_formats_is_byte_exact_and_cut_past_most(fmt, compress) -> None:
    assert inflate(compress(BODY), fmt, 10**9, 10**8) == BODY
    assert inflate(compress(BODY), fmt, 10**9, 100) == BODY[:101]
