"""Helpers for the identity tests (issue 14): the product as real processes against moto.

`Bucketed` ties a Product to one moto bucket, reached through a fault proxy that notes every
request, so a test can run `rescan` and `consume --drain` as separate processes and ask the
bucket what arrived, what did not, what is left open, and which requests made it so.
"""

from __future__ import annotations

import random
import subprocess
import urllib.parse
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.e2e.faultproxy import FaultProxy
from tests.e2e.system import Product

MIB = 1 << 20


def body(size: int, seed: int) -> bytes:
    """`size` bytes, half random and half text: compressors stay fast, output stays large."""
    rng = random.Random(seed)
    out = bytearray()
    n = 0
    while len(out) < size:
        out += rng.randbytes(4096) + f"{n:09d},{seed}\n".encode() * 256
        n += 1
    return bytes(out[:size])


@dataclass
class Bucketed:
    product: Product
    s3: Any
    bucket: str
    proxy: FaultProxy

    @classmethod
    def on_moto(cls, workdir: Path, config: Path, moto_server: Any, s3: Any, bucket: str,
                fault_proxy: Any, **env: str) -> Bucketed:
        """The product with `config`, talking to moto through a new fault proxy."""
        proxy = fault_proxy(moto_server.port)
        child = {**moto_server.env(), "SFTPPUSH_DEFAULTS_ENDPOINT_URL": proxy.url, **env}
        return cls(Product(workdir, config, child), s3, bucket, proxy)

    def rescan(self) -> str:
        done = self.product.cli("rescan")
        assert done.returncode == 0, done.stderr
        return done.stdout

    def drain(self, *, timeout: float = 180) -> None:
        """`sftppush consume --drain` as a process: it must exit 0 within `timeout`."""
        proc = self.product.start("consumer", "consume", "--drain")
        try:
            status = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.product.stop_all()
            raise AssertionError(f"consume --drain still running after {timeout:.0f}s\n"
                                 f"{self.product.log_tail()}") from None
        assert status == 0, f"consume --drain exited {status}\n{self.product.log_tail()}"

    def by_path(self) -> dict[str, dict[str, Any]]:
        """The newest queue entry of each path."""
        out: dict[str, dict[str, Any]] = {}
        for entry in sorted(self.product.entries(), key=lambda e: e["id"]):
            out[entry["path"]] = entry
        return out

    def keys(self) -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def open_multipart_uploads(self) -> list[str]:
        answer = self.s3.list_multipart_uploads(Bucket=self.bucket)
        return [u["Key"] for u in answer.get("Uploads", [])]

    def read(self, key: str) -> bytes:
        return bytes(self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def requests(self, key: str) -> Counter[str]:
        """The S3 calls on `key` that went through the proxy, by kind."""
        kinds: Counter[str] = Counter()
        for method, target in self.proxy.requests:
            path, _, query = target.partition("?")
            if urllib.parse.unquote(path) != f"/{self.bucket}/{key}":
                continue
            q = urllib.parse.parse_qs(query, keep_blank_values=True)
            if method == "POST" and "uploads" in q:
                kinds["create_multipart"] += 1
            elif method == "PUT" and "partNumber" in q:
                kinds["upload_part"] += 1
            elif method == "POST" and "uploadId" in q:
                kinds["complete_multipart"] += 1
            elif method == "DELETE" and "uploadId" in q:
                kinds["abort_multipart"] += 1
            else:
                kinds[method.lower()] += 1
        return kinds
