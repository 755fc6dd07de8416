"""Process memory of a consumer: glibc malloc settings, giving freed memory back, and the
cyclic garbage collector.

Owns the two calls that keep a consumer's peak RSS at "idle + part buffers" (SPEC 11): a fixed
mmap threshold, and a trim once the start-up garbage is freed (on a libc other than glibc both
are no-ops); and the collector's settings after start-up. Never changes what is allocated.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from typing import Any

M_MMAP_THRESHOLD = -3  # mallopt parameter, from glibc's malloc.h
# Above this, an allocation gets its own mapping that is unmapped on free. glibc's default
# (128 KiB) grows to the largest freed block, 1 MiB after a file's read buffer, and each
# thread's arena then keeps twice that unused; fixed here, it stays where the read chunks
# (64 KiB) are below it and one-off buffers above.
MMAP_THRESHOLD = 256 * 1024


def _libc() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018  # glibc only
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


def fix_mmap_threshold() -> None:
    """Keep glibc from raising its mmap threshold (call before threads start)."""
    if _LIBC is not None:
        _LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


# Container objects allocated (net) between two young collections. Python's 700 means one
# every few files, each walking the objects of every entry in flight again; at this many, one
# every few hundred files, the cycles it frees (a PUT's future and its callback) a few MB at
# most meanwhile.
YOUNG_COLLECTION_AFTER = 20_000


def calm_collector() -> None:
    """After start-up: freeze what exists (boto3's and botocore's models live as long as the
    process, and a full collection would walk them all again), and collect young garbage
    less often (see YOUNG_COLLECTION_AFTER)."""
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_AFTER, *gc.get_threshold()[1:])


def release_free_memory() -> None:
    """Collect garbage and hand pages freed by Python back to the OS (after start-up, when
    botocore's parsed service JSON has been dropped)."""
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
