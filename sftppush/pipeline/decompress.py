"""Compression by magic bytes, and streaming readers that stop at the decompressed-size cap.

Owns format detection (gzip incl. multi-member, bzip2, xz, zstd), the rule that a file ends
exactly where its last complete stream ends, and turning decoder failures into
PermanentError; gzip is inflated by ISA-L (`isal`) where it is importable, else by zlib, with
the same checks. It must never look at file names, read a whole file into memory (a small one
the caller already holds as bytes is decompressed in one go) or talk to S3.
"""

from __future__ import annotations

import bz2
import io
import lzma
import os
import zlib
from collections.abc import Callable
from typing import Any, BinaryIO

from sftppush.errors import PermanentError
from sftppush.sink.parts import Reader, read_full

try:
    import zstandard
except ImportError:  # a dependency; a broken install fails zstd files, never stores them
    zstandard = None

try:
    # ISA-L's inflate with zlib's API: about 3x faster than zlib's, the largest cost of a
    # large gzip file (SPEC 11). It checks the header, CRC32 and length as zlib does.
    from isal import isal_zlib
except ImportError:
    isal_zlib = None

MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)
HEAD_BYTES = max(len(m) for m, _ in MAGIC)
GZIP_MAGIC = MAGIC[0][0]
INFLATER: Any = isal_zlib or zlib  # decompressobj(wbits=31) inflates one gzip member
# What decoders raise for bad input (besides EOFError for a cut stream).
CORRUPT: tuple[type[BaseException], ...] = (
    OSError, EOFError, zlib.error, lzma.LZMAError, ValueError,
    *((isal_zlib.error,) if isal_zlib else ()))
RAW_CHUNK = 1 << 16  # compressed bytes fed to a decoder at a time
TRUNCATED = "compressed data ended before the end-of-stream marker"


def detect(head: bytes) -> str | None:
    """The compression format whose magic `head` starts with, or None (upload as it is)."""
    for magic, fmt in MAGIC:
        if head.startswith(magic):
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
        with memoryview(buffer) as view:
            return self._guarded(lambda size: self._stream.readinto(view[:size]),
                                 self._room(len(view)))

    def _room(self, size: int) -> int:
        if self.fmt is None:
            return size
        # Ask for one byte past the cap so "exactly at the cap" and "over it" differ.
        room = self.cap - self.total + 1
        return room if size < 0 else min(size, room)

    def _guarded(self, op: Any, size: int) -> Any:
        try:
            data = op(size)
        except CORRUPT as exc:
            raise PermanentError(f"corrupt {self.fmt or 'file'}: {_reason(exc)}",
                                 reason="corrupt") from None
        except Exception as exc:  # zstandard.ZstdError has no common base with the others
            if zstandard is not None and isinstance(exc, zstandard.ZstdError):
                raise PermanentError(f"corrupt zstd: {exc}", reason="corrupt") from None
            raise
        self.total += data if isinstance(data, int) else len(data)
        if self.fmt is not None and self.total > self.cap:
            raise PermanentError(
                f"decompressed size exceeds max_decompressed_bytes={self.cap}",
                reason="too_large")
        return data

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()


def inflate(data: bytes, fmt: str | None, cap: int, most: int) -> bytes:
    """The decompressed form of a whole file held in memory, cut at `most` + 1 bytes so the
    caller can tell "more than `most`"; the same errors and cap as CappedReader.

    gzip (most small files) is one inflater call per member rather than the streaming
    reader's framing, which costs more than the decompression itself for a 4 KiB file.
    """
    if fmt is None:
        return data[: most + 1]
    if fmt != "gzip":
        return read_full(CappedReader(io.BytesIO(data), fmt, cap), most + 1)
    want = min(most, cap) + 1
    try:
        out = _gunzip(data, want)
    except CORRUPT as exc:
        raise PermanentError(f"corrupt gzip: {_reason(exc)}", reason="corrupt") from None
    if len(out) > cap:
        raise PermanentError(f"decompressed size exceeds max_decompressed_bytes={cap}",
                             reason="too_large")
    return out


def _gunzip(data: bytes, want: int) -> bytes:
    """Up to `want` bytes of a gzip stream: members and zero padding as _Streams reads them."""
    out: list[bytes] = []
    got = 0
    while True:
        member = INFLATER.decompressobj(wbits=31)  # checks the header, CRC32 and length itself
        chunk = member.decompress(data, want - got)
        out.append(chunk)
        got += len(chunk)
        if got >= want:
            break
        if not member.eof:
            raise EOFError(TRUNCATED)
        data = member.unused_data.lstrip(b"\0")
        if not data:
            break
        _check_magic(data, GZIP_MAGIC)
    return b"".join(out)


def _check_magic(start: bytes, magic: bytes) -> None:
    """Refuse a stream that cannot start with `magic` (one cut short is the decoder's to call
    truncated), so that trailing garbage reads the same in every decoder and both readers."""
    if not magic.startswith(start[: len(magic)]):
        raise ValueError(f"{start[: len(magic)]!r} after a stream does not start another")


def _open(raw: BinaryIO, fmt: str | None) -> Reader:
    if fmt is None:
        return raw
    if fmt == "gzip":
        # Members back to back, with zero padding of any length between and after them.
        return io.BufferedReader(_Streams(raw, _GzipMember, padding=1, magic=GZIP_MAGIC))
    if fmt == "bzip2":
        return io.BufferedReader(_Streams(raw, bz2.BZ2Decompressor))
    if fmt == "xz":
        # FORMAT_XZ, not LZMAFile's FORMAT_AUTO: a legacy .lzma stream is not part of an .xz
        # file. Streams may be followed by stream padding, NULs in multiples of four.
        return io.BufferedReader(_Streams(
            raw, lambda: lzma.LZMADecompressor(lzma.FORMAT_XZ), padding=4))
    if fmt == "zstd" and zstandard is not None:
        return io.BufferedReader(_Zstd(raw), buffer_size=1 << 20)
    raise PermanentError(f"unsupported compression {fmt}: the Python module for it is not"
                         " installed (zstandard, a dependency of sftppush): reinstall sftppush",
                         reason="unsupported")


class _Streams(io.RawIOBase):
    """Compressed streams back to back, each decoded by a fresh decompressor object; the input
    must end exactly where a stream ends.

    BZ2File and LZMAFile read the same way but end quietly at bytes that do not start a valid
    stream, which would upload the first streams of a damaged file as if it were whole.
    """

    def __init__(self, raw: BinaryIO, new: Callable[[], Any], padding: int = 0,
                 magic: bytes = b"") -> None:
        self._raw = raw
        self._new = new
        self._decoder = new()
        self._padding = padding  # 0: none allowed; n: runs of NULs in multiples of n
        self._magic = magic  # checked here before a stream after the first, when given
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def _read(self, size: int) -> bytes:
        while not self._done:
            decoder = self._decoder
            if decoder.eof:
                rest = self._next_stream(decoder.unused_data)
                if not rest:
                    self._done = True
                    break
                self._decoder = decoder = self._new()
            elif decoder.needs_input:
                rest = self._raw.read(RAW_CHUNK)
                if not rest:
                    raise EOFError(TRUNCATED)
            else:
                rest = b""
            data = decoder.decompress(rest, size)
            if data:
                return data
        return b""

    def _next_stream(self, rest: bytes) -> bytes:
        """The start of the next stream after padding, or b"" at the end of the input."""
        padded = 0
        while True:
            rest = rest or self._raw.read(RAW_CHUNK)
            if not self._padding or not rest:
                break
            start = rest.lstrip(b"\0")
            padded += len(rest) - len(start)
            if start:
                rest = start
                break
            rest = b""
        if padded % (self._padding or 1):
            raise ValueError(f"stream padding of {padded} bytes is not a multiple of "
                             f"{self._padding}")
        if rest and self._magic:
            while len(rest) < len(self._magic) and (more := self._raw.read(RAW_CHUNK)):
                rest += more
            _check_magic(rest, self._magic)
        return rest


class _GzipMember:
    """One gzip member inflated by INFLATER, behind the API of bz2's and lzma's decompressors
    that _Streams drives (`needs_input`; input not yet used is kept, not handed back)."""

    def __init__(self) -> None:
        self._inflate = INFLATER.decompressobj(wbits=31)  # header, CRC32, length checked
        self.needs_input = True

    @property
    def eof(self) -> bool:
        return self._inflate.eof

    @property
    def unused_data(self) -> bytes:
        return self._inflate.unused_data

    def decompress(self, data: bytes, max_length: int) -> bytes:
        out = self._inflate.decompress(data or self._inflate.unconsumed_tail, max_length)
        # A full output may leave more of the input's output inside the inflater.
        self.needs_input = not self._inflate.unconsumed_tail and len(out) < max_length
        return out


class _ZstdFrames:
    """The compressed input of a zstd reader, following frame and block headers as it passes,
    to tell whether the input ended exactly at the end of a frame.

    zstandard's streaming readers end quietly on a cut frame (they hide ZSTD_decompressStream's
    "more input wanted"), and its decompressobj has no output limit (4 bytes of RLE block make
    128 KiB), so the frame boundaries are followed here: 3 header bytes per block of up to
    128 KiB, next to nothing beside the decoding. Invalid headers are left to the decoder.
    """

    MAGIC = 0xFD2FB528
    SKIPPABLE = 0x184D2A50  # ..0x184D2A5F: a frame of metadata that decoders pass over

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._head = b""  # the header read so far
        self._want = 4  # header bytes wanted before self._parse can run
        self._parse: Callable[[], None] | None = self._frame  # None: lost track (invalid)
        self._skip = 0  # bytes to pass over (block bodies, checksums, skippable frames)
        self._checksum = 0
        self.ended = False

    @property
    def complete(self) -> bool:
        """True once the input ended between two frames."""
        return (self.ended and self._parse == self._frame and not self._head
                and not self._skip)

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        if not data:
            self.ended = True
        pos, end = 0, len(data)
        while pos < end and self._parse is not None:
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
                continue
            take = self._want - len(self._head)
            self._head += data[pos: pos + take]
            pos += take
            if len(self._head) == self._want:
                self._parse()
        return data

    def _frame(self) -> None:
        magic = int.from_bytes(self._head[:4], "little")
        if magic & ~0xF == self.SKIPPABLE:
            if len(self._head) < 8:
                self._want = 8  # up to its 4-byte size
                return
            self._skip = int.from_bytes(self._head[4:8], "little")
            self._head, self._want = b"", 4
        elif magic == self.MAGIC:
            if len(self._head) < 5:
                self._want = 5  # up to the frame header descriptor
                return
            descriptor = self._head[4]
            single_segment = descriptor >> 5 & 1
            content_size = (single_segment, 2, 4, 8)[descriptor >> 6]
            dictionary_id = (0, 1, 2, 4)[descriptor & 3]
            self._want = 5 + (not single_segment) + dictionary_id + content_size
            self._checksum = 4 if descriptor & 4 else 0
            self._parse = self._frame_header
        else:
            self._parse = None

    def _frame_header(self) -> None:
        self._head, self._want, self._parse = b"", 3, self._block

    def _block(self) -> None:
        header = int.from_bytes(self._head, "little")
        kind, size = header >> 1 & 3, header >> 3
        self._skip = 1 if kind == 1 else size  # an RLE block holds one byte
        self._head = b""
        if kind == 3:  # reserved
            self._parse = None
        elif header & 1:  # the last block of its frame
            self._skip += self._checksum
            self._want, self._parse = 4, self._frame


class _Zstd(io.RawIOBase):
    """zstd frames back to back (skippable ones too) that must end with a complete frame."""

    def __init__(self, raw: BinaryIO) -> None:
        self._frames = _ZstdFrames(raw)
        self._stream = zstandard.ZstdDecompressor().stream_reader(
            self._frames, read_across_frames=True, closefd=False)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._stream.readinto(buffer)
        if not n and not self._frames.complete:
            raise EOFError(TRUNCATED)
        return n


def _reason(exc: BaseException) -> str:
    if isinstance(exc, EOFError):
        return f"truncated ({TRUNCATED})"
    return str(exc) or type(exc).__name__
