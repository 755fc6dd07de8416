"""Compression by magic bytes, and streaming readers that stop at the decompressed-size cap.

Owns format detection (gzip incl. multi-member, bzip2, xz; zstd when `zstandard` is
importable) and turning decoder failures into PermanentError. It must never look at file
names, read a whole file into memory (a small one the caller already holds as bytes is
decompressed in one go) or talk to S3.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import zlib
from typing import Any, BinaryIO, Protocol

from sftppush.errors import PermanentError

try:
    import zstandard
except ImportError:  # the optional extra is not installed: zstd files go up byte for byte
    zstandard = None

MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)
HEAD_BYTES = max(len(m) for m, _ in MAGIC)


class Reader(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...
    def readinto(self, buffer: memoryview | bytearray, /) -> int: ...


def detect(head: bytes) -> str | None:
    """The compression format whose magic `head` starts with, or None (upload as it is)."""
    for magic, fmt in MAGIC:
        if head.startswith(magic):
            if fmt == "zstd" and zstandard is None:
                return None
            return fmt
    return None


def detect_fd(fd: int) -> str | None:
    """Detect from the first bytes of an open file without moving its offset."""
    return detect(os.pread(fd, HEAD_BYTES, 0))


class CappedReader:
    """Reads the decompressed stream of `raw` in format `fmt`, refusing to go past `cap` bytes.

    `read(n)` returns up to n bytes (fewer only at the end). Decoder errors, truncation and the
    cap all raise PermanentError with a reason an operator can act on.
    """

    def __init__(self, raw: BinaryIO, fmt: str | None, cap: int) -> None:
        self.fmt = fmt
        self.cap = cap
        self.total = 0
        self._stream: Reader = _open(raw, fmt)

    def read(self, size: int = -1) -> bytes:
        return self._guarded(self._stream.read, self._room(size))

    def readinto(self, buffer: memoryview | bytearray) -> int:
        """Fill (part of) `buffer` without an intermediate copy of the whole request."""
        view = memoryview(buffer)
        n = self._guarded(lambda size: self._stream.readinto(view[:size]), self._room(len(view)))
        view.release()
        return n

    def _room(self, size: int) -> int:
        if self.fmt is None:
            return size
        # Ask for one byte past the cap so "exactly at the cap" and "over it" differ.
        room = self.cap - self.total + 1
        return room if size < 0 else min(size, room)

    def _guarded(self, op: Any, size: int) -> Any:
        try:
            data = op(size)
        except (OSError, EOFError, zlib.error, lzma.LZMAError, ValueError) as exc:
            raise PermanentError(f"corrupt {self.fmt or 'file'}: {_reason(exc)}") from None
        except Exception as exc:  # zstandard.ZstdError has no common base with the others
            if zstandard is not None and isinstance(exc, zstandard.ZstdError):
                raise PermanentError(f"corrupt zstd: {exc}") from None
            raise
        self.total += data if isinstance(data, int) else len(data)
        if self.fmt is not None and self.total > self.cap:
            raise PermanentError(
                f"decompressed size exceeds max_decompressed_bytes={self.cap}")
        return data

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()


def inflate(data: bytes, fmt: str | None, cap: int, most: int) -> bytes:
    """The decompressed form of a whole file held in memory, cut at `most` + 1 bytes so the
    caller can tell "more than `most`"; the same errors and cap as CappedReader.

    gzip (most small files) is one zlib call per member rather than GzipFile's Python-level
    framing, which costs more than the decompression itself for a 4 KiB file.
    """
    if fmt is None:
        return data[: most + 1]
    if fmt != "gzip":
        return read_full(CappedReader(io.BytesIO(data), fmt, cap), most + 1)
    want = min(most, cap) + 1
    try:
        out = _gunzip(data, want)
    except (OSError, EOFError, zlib.error) as exc:
        raise PermanentError(f"corrupt gzip: {_reason(exc)}") from None
    if len(out) > cap:
        raise PermanentError(f"decompressed size exceeds max_decompressed_bytes={cap}")
    return out


def _gunzip(data: bytes, want: int) -> bytes:
    """Up to `want` bytes of a gzip stream, members and zero padding as GzipFile reads them."""
    out: list[bytes] = []
    got = 0
    while True:
        member = zlib.decompressobj(wbits=31)  # checks the header, CRC32 and length itself
        chunk = member.decompress(data, want - got)
        out.append(chunk)
        got += len(chunk)
        if got >= want:
            break
        if not member.eof:
            raise EOFError("compressed data ended before the end-of-stream marker")
        data = member.unused_data.lstrip(b"\0")
        if not data:
            break
        if not data.startswith(b"\x1f\x8b"):
            raise gzip.BadGzipFile(f"Not a gzipped file ({data[:2]!r})")
    return b"".join(out)


def _open(raw: BinaryIO, fmt: str | None) -> Reader:
    if fmt is None:
        return raw
    if fmt == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if fmt == "bzip2":
        return bz2.BZ2File(raw, mode="rb")
    if fmt == "xz":
        return lzma.LZMAFile(raw, mode="rb")
    if fmt == "zstd" and zstandard is not None:
        # read_across_frames: a file of several frames is one stream, like multi-member gzip.
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(
            raw, read_across_frames=True, closefd=False), buffer_size=1 << 20)
    raise PermanentError(f"unsupported compression {fmt}")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, EOFError):
        return "truncated (compressed data ended before the end-of-stream marker)"
    return str(exc) or type(exc).__name__


def read_full(reader: Reader, size: int) -> bytes:
    """Up to `size` bytes from `reader`; fewer only at its end."""
    data = reader.read(size)
    if len(data) == size or not data:
        return data
    chunks = [data]
    got = len(data)
    while got < size:
        more = reader.read(size - got)
        if not more:
            break
        chunks.append(more)
        got += len(more)
    return b"".join(chunks)
