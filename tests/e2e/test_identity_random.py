"""Random writers against `sftppush run --consumers 2`: every path's latest content ends in S3.

Several writer threads do what hostile or unlucky SFTP users do to a handful of names: write,
write to a temp name and rename over, re-send in place with the old mtime restored, rename a
directory away and back, and create names that map to one key. rclone serve s3 sits behind a
slowed proxy, so uploads overlap with all of it. Then a rescan and a drain.

Pass: every path's latest content is in S3 under its key, from that path; or the path is still
on disk with a failed entry that says why. A file gone from disk whose latest content is not
in S3 fails the test. The seed is printed; SFTPPUSH_RANDOM_SEED replays a run and
SFTPPUSH_RANDOM_SECONDS sets how long the writers write.
"""

from __future__ import annotations

import gzip
import os
import random
import threading
import time
import traceback
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_until
from tests.e2e.system import Product, files_under

SECONDS = float(os.environ.get("SFTPPUSH_RANDOM_SECONDS", "20"))
WRITERS = 4
DIRS = ("a", "b", "c")
NAMES = ("data.csv", "log.txt", "x.csv")  # x.csv also arrives as x.csv.gz: one key


@dataclass
class World:
    """What the writers did, as the filesystem saw it: the latest content of every path."""

    upload: Path
    away: Path
    rng: random.Random
    latest: dict[Path, bytes] = field(default_factory=dict)  # path -> decompressed content
    locks: dict[str, threading.Lock] = field(default_factory=dict)
    counter: int = 0
    ops: list[str] = field(default_factory=list)
    guard: threading.Lock = field(default_factory=threading.Lock)

    def content(self, rng: random.Random) -> bytes:
        with self.guard:
            self.counter += 1
            n = self.counter
        size = rng.choice((200, 5_000, 300_000, 2_500_000))
        line = f"version {n} of the world\n".encode()
        return (line * (size // len(line) + 1))[:size]

    def op(self, rng: random.Random) -> None:
        d = rng.choice(DIRS)
        with self.locks[d]:  # a directory away is not written to
            kind = rng.choices(("write", "rename_over", "resend", "collide", "dir_away"),
                               (4, 3, 2, 2, 1))[0]
            with self.guard:
                self.ops.append(f"{kind} {d}")
            getattr(self, kind)(self.upload / d, rng)

    def _record(self, path: Path, body: bytes) -> None:
        with self.guard:
            self.latest[path] = body

    def write(self, d: Path, rng: random.Random) -> None:
        path, body = d / rng.choice(NAMES), self.content(rng)
        path.write_bytes(body)
        self._record(path, body)

    def rename_over(self, d: Path, rng: random.Random) -> None:
        name, body = rng.choice(NAMES), self.content(rng)
        temp = d / f".{name}.{rng.randrange(1 << 30)}.tmp"  # ignored (".*")
        temp.write_bytes(body)
        os.rename(temp, d / name)
        self._record(d / name, body)

    def resend(self, d: Path, rng: random.Random) -> None:
        """`sftp put -p`: open with O_TRUNC, write, restore the old mtime (and the size)."""
        path = d / rng.choice(NAMES)
        body = self.content(rng)
        try:
            st = path.stat()
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC)  # as sftp-server opens it
        except FileNotFoundError:  # uploaded and deleted meanwhile: a plain write then
            path.write_bytes(body)
            self._record(path, body)
            return
        with open(fd, "wb") as f:
            body = (body * (st.st_size // max(1, len(body)) + 1))[:st.st_size] or body
            time.sleep(rng.uniform(0, 0.05))  # a reader may see it empty, or half written
            f.write(body)
        self._record(path, body)
        try:
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        except FileNotFoundError:
            pass  # that version was uploaded and deleted between our close and this

    def collide(self, d: Path, rng: random.Random) -> None:
        body = self.content(rng)
        path = d / "x.csv.gz"
        path.write_bytes(gzip.compress(body, compresslevel=1))
        self._record(path, body)

    def dir_away(self, d: Path, rng: random.Random) -> None:
        if not d.exists():
            return
        away = self.away / f"{d.name}.{rng.randrange(1 << 30)}"
        os.rename(d, away)
        time.sleep(rng.uniform(0.1, 1.0))
        os.rename(away, d)


def key_of(path: Path, upload: Path) -> str:
    rel = path.relative_to(upload.parent.parent)  # userpath: the source is the first component
    name = rel.as_posix()
    return name[: -len(".gz")] if name.endswith(".gz") else name


def losses(world: World, s3: Any, bucket: str, failed: dict[str, Any]) -> list[str]:
    """Each path whose latest content is neither in S3 (from that path) nor kept on disk
    with a failed entry."""
    lost = []
    for path, body in sorted(world.latest.items()):
        key = key_of(path, world.upload)
        if path.exists():
            if str(path) not in failed:
                lost.append(f"{path} is still on disk with no failed entry")
            continue
        try:
            obj = s3.get_object(Bucket=bucket, Key=key)
        except s3.exceptions.NoSuchKey:
            lost.append(f"{path} was deleted and {key} is not in S3")
            continue
        meta = {k.lower(): v for k, v in obj["Metadata"].items()}
        name = urllib.parse.unquote(meta.get("sftppush-original-name", ""))
        if name != path.name:
            lost.append(f"{path} was deleted but {key} holds {name}")
        elif obj["Body"].read() != body:
            lost.append(f"{path} was deleted but {key} holds an older version")
    return lost


def show_lost(lost: list[str], product: Product) -> None:
    """Print the first lost paths as they are on disk and in the queue, for the report."""
    for line in lost[:3]:
        path = line.split(" ")[0]
        print(path, os.stat(path) if os.path.exists(path) else "gone")
        for e in product.entries():
            if e["path"] == path:
                print("  ", {k: e[k] for k in ("id", "state", "size", "mtime_ns", "ctime_ns",
                                               "inode", "found_by", "note", "last_error")})


@pytest.mark.timeout(SECONDS + 300)
def test_random_writers_lose_no_latest_version(tmp_path: Path, source_tree: Any,
                                               rclone_s3: Any, fault_proxy: Any) -> None:
    seed = int(os.environ.get("SFTPPUSH_RANDOM_SEED") or random.randrange(1 << 32))
    print(f"seed={seed} (replay with SFTPPUSH_RANDOM_SEED={seed})")
    bucket = rclone_s3.make_bucket("random")
    proxy = fault_proxy(rclone_s3.port)
    proxy.slow(0.002)  # ~30 MB/s per connection: uploads overlap with the writers
    upload = source_tree.upload
    for d in DIRS:
        (upload / d).mkdir()
    away = tmp_path / "away"
    away.mkdir()
    config = source_tree.write_config(bucket, queue={"lease_seconds": 30},
                                      consumer={"workers": 4, "max_attempts": 3})
    product = Product(tmp_path, config,
                      {**rclone_s3.env(), "SFTPPUSH_DEFAULTS_ENDPOINT_URL": proxy.url})
    world = World(upload, away, random.Random(seed), locks={d: threading.Lock() for d in DIRS})
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        rng = random.Random(seed * 31 + n)
        end = time.monotonic() + SECONDS
        try:
            while time.monotonic() < end:
                world.op(rng)
                time.sleep(rng.uniform(0, 0.05))
        except BaseException as exc:
            traceback.print_exc()
            errors.append(exc)

    try:
        product.start("run", "run", "--consumers", "2")
        wait_until(lambda: source_tree.queue_path.exists(), 30, "the queue file")
        threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(SECONDS + 120)
        assert not errors, f"seed={seed}: a writer failed: {errors!r}"
        proxy.restore()
        done = product.cli("rescan")
        assert done.returncode == 0, done.stderr

        def settled() -> dict[str, Any] | None:
            product.assert_alive()
            st = product.status()
            return st if st["pending"] == st["claimed"] == 0 else None

        wait_until(settled, 120, "the queue to drain", 0.5, detail=product.status)
    finally:
        product.stop_all()

    failed = {e["path"]: e for e in product.entries("failed")}
    lost = losses(world, rclone_s3.client(), bucket, failed)
    leftovers = [p for p in files_under(upload) if p not in world.latest]
    assert not leftovers, f"seed={seed}: files nobody wrote last: {leftovers[:5]}"
    reasons = {e["last_error"].split(":")[0] for e in failed.values()}
    assert reasons <= {"key collision"}, f"seed={seed}: failed for {reasons}"
    show_lost(lost, product)
    assert not lost, f"seed={seed}: {len(lost)} latest versions lost:\n" + "\n".join(lost[:20])
    print(f"seed={seed}: {len(world.ops)} operations, {len(world.latest)} paths, "
          f"{len(failed)} key collisions kept on disk")
