"""Detection by magic bytes and streaming decompression with a cap (gzip with each inflater)."""

import bz2
import gzip
import io
import itertools
import lzma
import random
import zlib

import pytest
import zstandard
from isal import isal_zlib

from sftppush.errors import PermanentError
from sftppush.pipeline import decompress
from sftppush.pipeline.decompress import CappedReader, detect, inflate
from sftppush.sink.parts import read_exactly, read_full

BODY = b"".join(b"%06d,sensor,21.5\n" % i for i in range(20000))


@pytest.fixture(autouse=True, params=["isal", "zlib"])
def inflater(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test of this file runs with ISA-L's inflater and with zlib's (the fallback)."""
    module = isal_zlib if request.param == "isal" else zlib  # isal is a dependency
    monkeypatch.setattr(decompress, "INFLATER", module)
    return str(request.param)


def test_gzip_is_inflated_by_isal_where_it_is_installed() -> None:
    assert decompress.isal_zlib is isal_zlib  # and so the default INFLATER


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


def test_zstd_without_its_module_is_refused_never_stored_compressed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Identity hole 8: a detected format is never uploaded still compressed for lack of a
    module (zstandard is a dependency; a broken install refuses the file with a reason)."""
    monkeypatch.setattr(decompress, "zstandard", None)
    data = zstandard.ZstdCompressor().compress(b"a,b\n" * 100)
    assert detect(data) == "zstd"
    with pytest.raises(PermanentError, match="unsupported compression zstd"):
        CappedReader(io.BytesIO(data), "zstd", 1 << 20).read()
    with pytest.raises(PermanentError, match="unsupported compression zstd") as raised:
        inflate(data, "zstd", 1 << 20, 1 << 20)
    assert raised.value.reason == "unsupported"


def test_zip_and_plain_text_are_not_compressed() -> None:
    assert detect(b"PK\x03\x04rest") is None
    assert detect(b"id,value\n") is None
    assert read_all(b"PK\x03\x04rest", None) == b"PK\x03\x04rest"


def test_truncated_gzip_is_a_permanent_error() -> None:
    with pytest.raises(PermanentError, match="corrupt gzip: truncated") as raised:
        read_all(gzip.compress(BODY)[:-100], "gzip")
    assert raised.value.reason == "corrupt"


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


def stream_or_error(data: bytes, fmt: str | None) -> bytes | str:
    """What the upload path gets: readinto() in the chunks s3.read_part asks for."""
    reader = CappedReader(io.BytesIO(data), fmt, 10**9)
    out = bytearray()
    buf = bytearray(65536)
    try:
        while n := reader.readinto(buf):
            out += buf[:n]
    except PermanentError as exc:
        return str(exc)
    return bytes(out)


def zst(body: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(body)


def damaged(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x55]) + data[at + 1:]


GZ = gzip.compress(BODY)
GZ_BAD_CRC = GZ[:-8] + bytes([GZ[-8] ^ 1]) + GZ[-7:]
GZ_BAD_LENGTH = GZ[:-4] + bytes([GZ[-4] ^ 1]) + GZ[-3:]  # ISIZE, the length mod 2**32
ZS = zst(BODY)
BZ, BZ_2 = bz2.compress(BODY[:1000]), bz2.compress(BODY[1000:])
XZ, XZ_2 = lzma.compress(BODY[:1000]), lzma.compress(BODY[1000:])
# Incompressible bytes then zeros: raw, compressed and RLE blocks, with a checksum and no size.
MIXED = random.Random(0).randbytes(300_000) + bytes(1_000_000) + BODY
ZS_MIXED = zstandard.ZstdCompressor(write_checksum=True, write_content_size=False).compress(
    MIXED)
SKIPPABLE = (0x184D2A50).to_bytes(4, "little") + (6).to_bytes(4, "little") + b"ignore"
CORRUPT = "corrupt "  # the error text must start so; both readers must give the same text

# (format, case, input, expected: the decompressed bytes, or the start of the error text)
READER_CASES = [
    ("gzip", "one member", GZ, BODY),
    ("gzip", "two members", gzip.compress(BODY[:1000]) + gzip.compress(BODY[1000:]), BODY),
    ("gzip", "zero padding after a member", GZ + b"\0" * 100, BODY),
    ("gzip", "padding between members",
     gzip.compress(b"a" * 10) + b"\0" * 3 + gzip.compress(b"b"), b"a" * 10 + b"b"),
    ("gzip", "garbage after a member", GZ + b"garbage", "corrupt gzip: b'ga' after a stream"),
    ("gzip", "garbage after padding", GZ + b"\0" * 5 + b"garbage",
     "corrupt gzip: b'ga' after a stream"),
    ("gzip", "one byte of a magic after a member", GZ + b"\x1f", "corrupt gzip: truncated"),
    ("gzip", "a header cut after a member", GZ + GZ[:7], "corrupt gzip: truncated"),
    ("gzip", "a cut member after a member", GZ + GZ[:50], "corrupt gzip: truncated"),
    ("gzip", "truncated", GZ[:-100], "corrupt gzip: truncated"),
    ("gzip", "truncated trailer", GZ[:-3], "corrupt gzip: truncated"),
    ("gzip", "bad crc", GZ_BAD_CRC, "corrupt gzip: "),
    ("gzip", "bad length", GZ_BAD_LENGTH, "corrupt gzip: "),
    ("gzip", "bad crc in the second member", gzip.compress(b"a" * 10) + GZ_BAD_CRC,
     "corrupt gzip: "),
    ("gzip", "not deflate", b"\x1f\x8b\x08\x00" + b"\x00" * 6 + b"not deflate at all" * 10,
     "corrupt gzip: "),
    ("gzip", "empty member", gzip.compress(b""), b""),
    ("zstd", "one frame", ZS, BODY),
    ("zstd", "two frames", zst(BODY[:1000]) + zst(BODY[1000:]), BODY),
    ("zstd", "an empty frame between frames", zst(b"a") + zst(b"") + zst(b"b"), b"ab"),
    ("zstd", "skippable frames", SKIPPABLE + ZS + SKIPPABLE, BODY),
    ("zstd", "raw, RLE and compressed blocks with a checksum", ZS_MIXED, MIXED),
    ("zstd", "cut in the checksum", ZS_MIXED[:-1], "corrupt zstd: truncated"),
    ("zstd", "cut at 1/3", ZS[: len(ZS) // 3], "corrupt zstd: truncated"),
    ("zstd", "cut at 2/3", ZS[: len(ZS) * 2 // 3], "corrupt zstd: truncated"),
    ("zstd", "one byte short", ZS[:-1], "corrupt zstd: truncated"),
    ("zstd", "only the magic", ZS[:4], "corrupt zstd: truncated"),
    ("zstd", "second frame cut", ZS + ZS[:100], "corrupt zstd: truncated"),
    ("zstd", "a cut skippable frame after a frame", ZS + SKIPPABLE[:-1],
     "corrupt zstd: truncated"),
    ("zstd", "trailing garbage", ZS + b"garbage", "corrupt zstd: "),
    ("zstd", "two trailing bytes", ZS + b"ga", "corrupt zstd: "),
    ("bzip2", "one stream", bz2.compress(BODY), BODY),
    ("bzip2", "two streams", BZ + BZ_2, BODY),
    ("bzip2", "second stream header damaged", BZ + damaged(BZ_2, 3), "corrupt bzip2: "),
    ("bzip2", "second stream block magic damaged", BZ + damaged(BZ_2, 5), "corrupt bzip2: "),
    ("bzip2", "trailing garbage", BZ + b"garbage", "corrupt bzip2: "),
    ("bzip2", "one trailing byte", BZ + b"B", "corrupt bzip2: truncated"),
    ("bzip2", "zero bytes after the stream", BZ + b"\0" * 4, "corrupt bzip2: "),
    ("bzip2", "cut", BZ_2[:-10], "corrupt bzip2: truncated"),
    ("bzip2", "second stream cut", BZ + BZ_2[:-10], "corrupt bzip2: truncated"),
    ("xz", "one stream", lzma.compress(BODY), BODY),
    ("xz", "two streams", XZ + XZ_2, BODY),
    ("xz", "stream padding after the last stream", XZ + b"\0" * 8, BODY[:1000]),
    ("xz", "stream padding between streams", XZ + b"\0" * 4 + XZ_2, BODY),
    ("xz", "padding not a multiple of four", XZ + b"\0" * 3, "corrupt xz: "),
    ("xz", "second stream header damaged", XZ + damaged(XZ_2, 7), "corrupt xz: "),
    ("xz", "trailing garbage", XZ + b"garbage", "corrupt xz: "),
    ("xz", "trailing garbage after padding", XZ + b"\0" * 4 + b"garbage", "corrupt xz: "),
    ("xz", "cut", XZ_2[:-10], "corrupt xz: truncated"),
    ("xz", "second stream cut", XZ + XZ_2[:-10], "corrupt xz: truncated"),
    ("xz", "a legacy .lzma stream after the xz stream",
     XZ + lzma.compress(b"x", format=lzma.FORMAT_ALONE), "corrupt xz: "),
]


@pytest.mark.parametrize(("fmt", "data", "expected"),
                         [(fmt, data, expected) for fmt, _, data, expected in READER_CASES],
                         ids=[f"{fmt}: {case}" for fmt, case, _, _ in READER_CASES])
def test_a_compressed_file_must_end_with_its_last_complete_stream_in_both_readers(
        fmt: str, data: bytes, expected: bytes | str) -> None:
    # SPEC 3: complete streams back to back (plus gzip's zero and xz's stream padding) and
    # nothing else; a cut or damaged stream or trailing bytes are a permanent corrupt error.
    # The small-file lane inflates in one go, big files stream: both must say the same.
    streamed = stream_or_error(data, fmt)
    inflated = inflate_or_error(data, fmt, 10**9, 10**8)
    if isinstance(expected, bytes):
        assert streamed == expected
    else:
        assert isinstance(streamed, str) and streamed.startswith(expected), streamed
    assert inflated == streamed


class Trickle(io.RawIOBase):
    """A file that hands out its bytes a few at a time (a slow pipe, a short read)."""

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.sizes = itertools.cycle([1, 3, 7, 2, 13, 5])

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), next(self.sizes), len(self.data))
        buffer[:n] = self.data[:n]
        self.data = self.data[n:]
        return n


SMALL_STREAM_CASES = [c for c in READER_CASES if len(c[2]) < 100_000]


@pytest.mark.parametrize(("fmt", "data"), [(fmt, data) for fmt, _, data, _ in SMALL_STREAM_CASES],
                         ids=[f"{fmt}: {case}" for fmt, case, _, _ in SMALL_STREAM_CASES])
def test_streams_read_the_same_when_the_file_comes_a_few_bytes_at_a_time(
        fmt: str, data: bytes) -> None:
    # Headers and padding split across reads must not change the verdict.
    reader = CappedReader(Trickle(data), fmt, 10**9)  # type: ignore[arg-type]
    try:
        out: bytes | str = read_full(reader, 10**9)
    except PermanentError as exc:
        out = str(exc)
    assert out == stream_or_error(data, fmt)


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


def test_read_exactly_gathers_short_reads_until_the_end() -> None:
    trickle = Trickle(b"0123456789" * 10)
    assert read_exactly(trickle.read, 95) == (b"0123456789" * 10)[:95]
    assert read_exactly(trickle.read, 95) == b"56789"
    assert read_exactly(trickle.read, 95) == b""
