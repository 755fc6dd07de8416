"""How one process talks to the store: pool size, timeouts, retries in place, part memory and
the fast transport's window, as plain settings.

Owns those two dataclasses and nothing else: not operator config (the consumer's tuning makes
them; tests pass small values). It imports nothing, so that the pure decisions that hold
them (runtime/policy.py) need no I/O library.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of one S3 call in place (tenacity, exponential backoff with jitter)."""

    attempts: int = 5
    initial: float = 0.5
    maximum: float = 20.0


@dataclass(frozen=True)
class Transfer:
    """How one process talks to the store: not operator config; tests pass small values."""

    pool_size: int = 10                 # boto3 connections
    connect_timeout: float = 10.0
    read_timeout: float = 60.0          # boto3's read timeout, and the CRT request timeout
    retry: RetryPolicy = RetryPolicy()  # boto3 calls, in place
    part_memory: int = 32 * 2**20       # per multipart upload: bytes of part buffers, at
    part_memory_max: int = 48 * 2**20   # first, and at most when the link needs more
    spool_above: int = 16 * 2**20       # bigger parts wait in a temporary file
    fast: bool = True                   # small bodies through awscrt when it is installed
    in_flight: int = 0                  # awscrt PUTs in flight at first (0: as many as
                                        # consumer.s3.max_in_flight); the window follows the
                                        # link from there (crt.CrtTransport)
    max_small: int = 8 * 2**20          # the largest body the fast transport takes
