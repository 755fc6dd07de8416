"""What a multipart upload's parts are made of: sizes that grow, checksums, digests, buffers.

Owns part sizes (doubling so that 10,000 parts hold 5 TiB), the full-object checksum every
upload sends (CRC64NVME where awscrt is installed, else CRC32), the running tally of the
decompressed stream, a part's MD5 and checksum, and part buffers within a byte budget; and
the `Reader` a body is read from (what the pipeline's decompressor hands the sink). It
never talks to the store.
"""

from __future__ import annotations

import base64
import bisect
import functools
import hashlib
import io
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

try:
    from awscrt import checksums as crt_checksums
except ImportError:  # CRC32 from zlib then
    crt_checksums = None

READ_CHUNK = 2**16  # decompressed bytes per readinto while filling a part (a temporary copy
                   # of this size is made by the decompressor; glibc keeps ~2x it per thread)
MAX_PARTS = 10_000       # S3's limits
MAX_OBJECT = 5 * 2**40
MAX_PART = 5 * 2**30
Body = bytearray | Any   # a part in memory, or in an (unlinked) temporary file


class Reader(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...
    def readinto(self, buffer: memoryview | bytearray, /) -> int: ...


def part_size(first: int, number: int, every: int) -> int:
    """The size of part `number` (from 1): `first`, doubled after every `every` parts."""
    return min(MAX_PART, first << ((number - 1) // every))


@functools.cache
def grow_every(first: int) -> int:
    """The most parts of each size for which 10,000 parts still hold 5 TiB: the decompressed
    size is not known in advance, so parts grow with the stream, as late as they can."""
    def too_slow(every: int) -> bool:
        return sum(part_size(first, n, every) for n in range(1, MAX_PARTS + 1)) < MAX_OBJECT

    return bisect.bisect_left(range(1, MAX_PARTS + 1), True, key=too_slow)


@dataclass(frozen=True)
class Checksum:
    """A full-object checksum S3 verifies: CRCs chain over a stream (`update(data, crc)`)."""

    name: str
    width: int
    update: Callable[[Any, int], int]

    @property
    def param(self) -> str:
        """The boto3 parameter (and answer field) that carries it."""
        return "Checksum" + self.name.upper()

    @property
    def header(self) -> str:
        return f"x-amz-checksum-{self.name}"

    def b64(self, value: int) -> str:
        return base64.b64encode(value.to_bytes(self.width, "big")).decode()

    def of(self, data: Any) -> str:
        return self.b64(self.update(data, 0))


CRC32 = Checksum("crc32", 4, zlib.crc32)
CRC64NVME = Checksum("crc64nvme", 8, crt_checksums.crc64nvme) if crt_checksums else None


def store_checksum(mode: str) -> Checksum | None:
    """The checksum every upload sends under `s3.checksum: mode`; None sends none."""
    if mode != "when_supported":
        return None
    return CRC64NVME or CRC32


class Tally:
    """The decompressed stream (`reader`) and its sha256, full-object checksum and size, fed
    part by part in stream order from the part threads (`feed_part`), so that the reading
    thread only decompresses while a part thread hashes (hashlib drops the GIL)."""

    def __init__(self, reader: Reader, checksum: Checksum | None) -> None:
        self.reader = reader
        self.checksum = checksum
        self.sha256 = hashlib.sha256()
        self.crc = 0
        self.total = 0
        self.parts_fed = 0  # feed_part(n) waits until parts 1..n-1 are in
        self._turn = threading.Condition()

    def feed(self, data: Any) -> None:
        self.sha256.update(data)
        if self.checksum:
            self.crc = self.checksum.update(data, self.crc)
        self.total += len(data)

    def feed_part(self, number: int, body: Body) -> None:
        """Feed part `number` once the parts before it are in. Parts start in number order
        (one pool, FIFO), so the one waited for is always running or done."""
        with self._turn:
            self._turn.wait_for(lambda: self.parts_fed == number - 1)
        try:
            for data in chunks(body):
                self.feed(data)
        finally:  # a part that failed fails the upload; the rest must not wait for it
            with self._turn:
                self.parts_fed = number
                self._turn.notify_all()


class Budget:
    """Bytes of part buffers in use; `take` waits for room (one part alone may exceed it)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._room = threading.Condition()

    def take(self, n: int) -> None:
        with self._room:
            self._room.wait_for(lambda: self.used == 0 or self.used + n <= self.limit)
            self.used += n

    def give(self, n: int) -> None:
        with self._room:
            self.used -= n
            self._room.notify_all()


def chunks(body: Any) -> Iterator[Any]:
    """The bytes of a part: a buffer whole, or a file read from its start in 1 MiB views of
    one reused buffer."""
    if isinstance(body, bytearray):
        yield body
        return
    body.seek(0)
    chunk = bytearray(2**20)
    with memoryview(chunk) as view:
        while n := body.readinto(chunk):
            yield view[:n]


def digests(body: Any, checksum: Checksum | None) -> tuple[Any, int, int]:
    """A part's MD5 (the ETag a store answers), its own checksum (0 without one) and size;
    `body` is a buffer, or a file read to its end."""
    md5, crc, size = hashlib.md5(usedforsecurity=False), 0, 0
    for data in chunks(body):
        md5.update(data)
        crc = checksum.update(data, crc) if checksum else 0
        size += len(data)
    return md5, crc, size


class PartBody(io.RawIOBase):
    """A part buffer as a seekable stream. botocore copies a bytes-like Body whole; a stream
    it reads in chunks, so a part costs its buffer once, not twice. `read` hands out views of
    the buffer, not copies: the signer's payload hash and the socket take them as they are
    (a copy of every 16 KiB sent cost about 0.2 s of CPU per GiB)."""

    def __init__(self, buf: bytes | bytearray) -> None:
        self._view = memoryview(buf)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, into: Any) -> int:
        n = max(0, min(len(into), len(self._view) - self._pos))
        into[:n] = self._view[self._pos: self._pos + n]
        self._pos += n
        return n

    def read(self, size: int | None = -1) -> memoryview:  # type: ignore[override]
        end = len(self._view) if size is None or size < 0 else \
            min(len(self._view), self._pos + size)
        chunk = self._view[self._pos: max(self._pos, end)]
        self._pos += len(chunk)
        return chunk

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = base + offset
        return self._pos

    def __len__(self) -> int:
        return len(self._view)


def read_part(reader: Reader, size: int, head: bytes = b"") -> bytearray:
    """One part of up to `size` bytes in its own buffer, filled in place (no 2x peak).

    Part buffers are bytearrays (boto3 takes them as a Body); a short last part is truncated
    in place.
    """
    buf = bytearray(size)
    buf[: len(head)] = head
    pos = len(head)
    with memoryview(buf) as view:
        while pos < size and (n := reader.readinto(view[pos: pos + READ_CHUNK])):
            pos += n
    del buf[pos:]
    return buf


def read_exactly(read: Callable[[int], bytes], size: int) -> bytes:
    """`size` bytes from repeated `read(n)` calls, fewer only where `read` returns b"".

    Any short-reading source fits: a reader's `read`, or `os.pread` at a moving offset.
    """
    data = read(size)
    if len(data) == size or not data:
        return data
    chunks = [data]
    got = len(data)
    while got < size and (more := read(size - got)):
        chunks.append(more)
        got += len(more)
    return b"".join(chunks)


def read_full(reader: Reader, size: int) -> bytes:
    """Up to `size` bytes from `reader`; fewer only at its end."""
    return read_exactly(reader.read, size)
