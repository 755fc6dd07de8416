"""Process memory of a consumer: glibc malloc settings and giving freed memory back.

Owns the two calls that keep a consumer's peak RSS at "idle + part buffers" (SPEC 11): a fixed
mmap threshold, and a trim once the start-up garbage is freed. Never changes what is allocated;
on a libc other than glibc both are no-ops. A consumer process also leaves what start-up made
out of the collector's later rounds (gc.freeze).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
from typing import Any

log = logging.getLogger("sftppush.memory")

M_MMAP_THRESHOLD = -3  # mallopt parameter, from glibc's malloc.h
# Above this, an allocation gets its own mapping that is unmapped on free. glibc's default
# (128 KiB) grows to the largest freed block, 1 MiB after a file's read buffer, and each
# thread's arena then keeps twice that unused; fixed here, it stays where the read chunks
# (64 KiB) are below it and one-off buffers above.
MMAP_THRESHOLD = 256 * 1024


_LIBC: Any
try:
    _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    _LIBC.mallopt, _LIBC.malloc_trim  # noqa: B018  # glibc only
except (OSError, AttributeError):
    _LIBC = None


def fix_mmap_threshold() -> None:
    """Keep glibc from raising its mmap threshold (call before threads start)."""
    if _LIBC is not None:
        _LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def release_free_memory(freeze: bool = False) -> None:
    """Collect garbage and hand pages freed by Python back to the OS (after start-up, when
    botocore's parsed service JSON has been dropped).

    `freeze` (a consumer that owns its process): what is left lives as long as the process
    (modules, botocore's models, the sink), and the collector's full rounds walked it all
    again and again; frozen, they walk only what came later. About 3% of a consumer's CPU
    on small files went to the collector. Not where a consumer runs inside another program
    (the tests): that program's own objects of the moment would never be collected.
    """
    gc.collect()
    if freeze:
        gc.freeze()
        log.debug("frozen start-up objects count=%d", gc.get_freeze_count())
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
