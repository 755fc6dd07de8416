"""Shared fixtures: source trees with config files, and the CLI as a real subprocess."""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import boto3
import botocore.config
import pytest
import yaml

from sftppush.locals3 import LocalS3, free_port, stop_process, wait_for_port

# In-process consumers run in threads, so consumer.run cannot do this for them: a lease
# break (a writer opening a file while safeopen deletes it) must not end the test run.
signal.signal(signal.SIGIO, signal.SIG_IGN)

REPO = Path(__file__).resolve().parent.parent

# Variables of the host that must not leak into a test's child processes: a test talks only
# to servers it started on 127.0.0.1, with the credentials it made up.
HOST_VARIABLES = (
    "AWS_CA_BUNDLE", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE",
    "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy",
    "NOTIFY_SOCKET", "WATCHDOG_USEC", "STATE_DIRECTORY", "SFTPPUSH_CONFIG",
)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a child sftppush: no SFTPPUSH_/host AWS settings, this repo first."""
    env = {k: v for k, v in os.environ.items()
           if k not in HOST_VARIABLES and not k.startswith("SFTPPUSH_")}
    env["PYTHONPATH"] = str(REPO)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update(extra or {})
    return env


def cli_argv(*args: str | os.PathLike[str]) -> list[str]:
    return [sys.executable, "-m", "sftppush", *map(str, args)]


@pytest.fixture
def run_cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run `sftppush ARGS` as a real process and return its completed result."""

    def run(*args: str | os.PathLike[str], env: dict[str, str] | None = None,
            timeout: float = 60, input: str | None = None,
            cwd: str | os.PathLike[str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(cli_argv(*args), env=child_env(env), capture_output=True,
                              text=True, timeout=timeout, input=input, cwd=cwd)

    return run


class SourceTree:
    """A userpath with one source (`sftpuser1`, watched dir `upload`) and a config writer."""

    def __init__(self, root: Path) -> None:
        self.userpath = root / "home"
        self.name = "sftpuser1"
        self.upload = self.userpath / self.name / "upload"
        self.upload.mkdir(parents=True)
        self.queue_path = root / "state" / "queue.db"
        self.config_path = root / "config.yaml"

    def config(self, bucket: str = "test-bucket", **sections: dict[str, Any]) -> dict[str, Any]:
        data: dict[str, Any] = {
            "defaults": {"userpath": str(self.userpath), "s3target": bucket},
            "watch": {"source": [{"name": self.name, "paths": ["/upload"]}]},
            "queue": {"path": str(self.queue_path)},
        }
        for section, values in sections.items():
            data.setdefault(section, {}).update(values)
        return data

    def write_config(self, bucket: str = "test-bucket", **sections: dict[str, Any]) -> Path:
        self.config_path.write_text(yaml.safe_dump(self.config(bucket, **sections)))
        return self.config_path


@pytest.fixture
def source_tree(tmp_path: Path) -> SourceTree:
    return SourceTree(tmp_path)


# ---------------------------------------------------------------------------------------------
# S3 fixtures (pipeline room): moto server, rclone serve s3, boto3 client, child environment
# ---------------------------------------------------------------------------------------------

FAKE_ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"  # 20 characters, like a real access key id
FAKE_SECRET_KEY = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY40"  # 40 characters
FAKE_REGION = "us-east-1"
def _clean_aws_env(base: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in base.items() if k not in HOST_VARIABLES}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


@pytest.fixture(scope="session", autouse=True)
def _isolated_aws_environment() -> Iterator[None]:
    """boto3 in the test process must not read the developer's profile, CA bundle or proxy."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(_clean_aws_env(saved))
    os.environ.update({"AWS_ACCESS_KEY_ID": FAKE_ACCESS_KEY,
                       "AWS_SECRET_ACCESS_KEY": FAKE_SECRET_KEY,
                       "AWS_DEFAULT_REGION": FAKE_REGION,
                       "AWS_CONFIG_FILE": os.devnull,
                       "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
                       "AWS_EC2_METADATA_DISABLED": "true"})
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


class S3Server:
    """An S3 API endpoint on loopback: its URL and the credentials it accepts."""

    def __init__(self, port: int, access_key: str, secret_key: str) -> None:
        self.port = port
        self.endpoint_url = f"http://127.0.0.1:{port}"
        self.access_key = access_key
        self.secret_key = secret_key

    def client(self) -> Any:
        return boto3.session.Session(
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            region_name=FAKE_REGION,
        ).client("s3", endpoint_url=self.endpoint_url, config=botocore.config.Config(
            s3={"addressing_style": "path"}, retries={"total_max_attempts": 2},
            connect_timeout=2, read_timeout=30,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required"))

    def env(self) -> dict[str, str]:
        env = _clean_aws_env(os.environ)
        env.update({"AWS_ACCESS_KEY_ID": self.access_key,
                    "AWS_SECRET_ACCESS_KEY": self.secret_key,
                    "AWS_DEFAULT_REGION": FAKE_REGION,
                    "AWS_CONFIG_FILE": os.devnull,
                    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
                    "AWS_EC2_METADATA_DISABLED": "true",
                    "SFTPPUSH_DEFAULTS_ENDPOINT_URL": self.endpoint_url,
                    "SFTPPUSH_DEFAULTS_AWSREGION": FAKE_REGION})
        return env


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's server mode as a subprocess on a free loopback port, for behaviour tests."""
    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env=_clean_aws_env(os.environ),
    )
    try:
        wait_for_port(port, proc)
        yield S3Server(port, FAKE_ACCESS_KEY, FAKE_SECRET_KEY)
    finally:
        stop_process(proc)
        log.close()


@pytest.fixture
def s3_client(moto_server: S3Server) -> Any:
    """A plain boto3 client on the moto server, for assertions (not the code under test)."""
    return moto_server.client()


@pytest.fixture
def s3_bucket(s3_client: Any) -> str:
    """A fresh, empty bucket on the moto server for one test."""
    name = f"t-{uuid.uuid4().hex[:20]}"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_env(moto_server: S3Server) -> dict[str, str]:
    """Environment for child processes talking to the moto server, with nothing else reachable."""
    return moto_server.env()


class RcloneS3(S3Server, LocalS3):
    """`rclone serve s3` over a directory: objects are plain files, so they survive restarts."""

    def __init__(self, root: Path, log: Path) -> None:
        # The same made-up keys as moto's, so in-process code under test works with either.
        LocalS3.__init__(self, root, access_key=FAKE_ACCESS_KEY, secret_key=FAKE_SECRET_KEY,
                         log=log)
        S3Server.__init__(self, self.port, FAKE_ACCESS_KEY, FAKE_SECRET_KEY)


@pytest.fixture
def rclone_s3(tmp_path: Path) -> Iterator[RcloneS3]:
    """A restartable `rclone serve s3` for this test; `.stop()` / `.start()` make a real outage."""
    root = tmp_path / "rclone-s3"
    root.mkdir()
    server = RcloneS3(root, tmp_path / "rclone.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pipeline_config(source_tree: SourceTree, moto_server: S3Server,
                    s3_bucket: str) -> Callable[..., Any]:
    """`make(server=moto, bucket=fresh, s3target=None, **consumer) -> Config` for the source tree.

    Writes the YAML file (so child processes can use `--config`) and loads it like the CLI does.
    """
    from sftppush.config import load

    def make(server: S3Server = moto_server, bucket: str = s3_bucket,
             s3target: str | None = None, lease_seconds: float = 30,
             **consumer: Any) -> Any:
        consumer.setdefault("s3", {}).setdefault("part_size_mb", 5)
        path = source_tree.write_config(
            s3target or bucket,
            defaults={"endpoint_url": server.endpoint_url, "awsregion": FAKE_REGION,
                      "log": {"level": "debug"}},
            queue={"path": str(source_tree.queue_path), "lease_seconds": lease_seconds},
            consumer=consumer)
        return load(path, env={})

    return make


@pytest.fixture(params=["crt", "boto3"])
def upload_path(request: pytest.FixtureRequest) -> str:
    """Both ways a consumer uploads: the awscrt lane for small files, or boto3 alone."""
    return str(request.param)


@contextlib.contextmanager
def consumer_thread(cfg: Any, tuning: Any = None, workers: int = 1,
                    drain: bool = False) -> Iterator[threading.Thread]:
    """consumer.run in a thread of this process: the one way tests run an in-process consumer.

    The stop event is ours, so no signal handler of pytest is replaced; the block's end sets
    it, joins the thread and re-raises what the consumer raised.
    """
    from sftppush import signals
    from sftppush.runtime import consumer

    stop = signals.Flag()  # its set() ends the consumer's wait at once
    errors: list[BaseException] = []

    def target() -> None:
        try:
            consumer.run(cfg, workers=workers, drain=drain, stop=stop,
                         tuning=tuning or consumer.Tuning())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name="consumer-under-test")
    thread.start()
    try:
        yield thread
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive(), "the consumer did not stop within 60 s"
    if errors:
        raise errors[0]


T = TypeVar("T")


def stopped_after(argv: list[str], log: Path, delay: float, signals: tuple[int, ...],
                  timeout: float, env: dict[str, str] | None = None) -> int:
    """Start `argv` (output to `log`), send `signals` after `delay` s, and return its exit
    status; a process still running after `timeout` s is killed (and the status is None)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env or child_env(), stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        time.sleep(delay)
        for signum in signals:
            proc.send_signal(signum)
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_until(check: Callable[[], T], timeout: float, what: str, interval: float = 0.02,
               detail: Callable[[], object] | None = None) -> T:
    """Poll until `check()` is truthy and return it; on timeout fail naming `what` and
    `detail()` (or the last value seen). The one wait helper of the tests."""
    deadline = time.monotonic() + timeout
    value = check()
    while not value:
        if time.monotonic() > deadline:
            seen = detail() if detail is not None else value
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}: {seen!r}")
        time.sleep(interval)
        value = check()
    return value


@pytest.fixture
def consume_until_drained(upload_path: str) -> Callable[..., None]:
    """`consume(cfg, timeout=30, workers=2, **tuning)`: an in-process consumer with `--drain`,
    once through each upload path (`upload_path`). Small tuning values (retry waits, delays)
    keep tests fast. Fails the test if draining takes over `timeout`.
    """
    from sftppush.runtime import consumer
    from sftppush.sink.transfer import RetryPolicy

    def consume(cfg: Any, timeout: float = 30, workers: int = 2, **tuning: Any) -> None:
        tuning.setdefault("retry", RetryPolicy(attempts=2, initial=0.01, maximum=0.05))
        tuning.setdefault("poll_interval", 0.02)
        tuning.setdefault("crt", upload_path == "crt")
        with consumer_thread(cfg, consumer.Tuning(**tuning), workers, drain=True) as thread:
            thread.join(timeout)
            if thread.is_alive():
                pytest.fail(f"consumer did not drain within {timeout}s")

    return consume


# --- end of S3 fixtures (pipeline room) ------------------------------------------------------
# Watcher room: the watcher as a real process with a real NOTIFY_SOCKET, and the queue read
# back with a deadline. Also used by tests/bench/bench_watcher.py. Notification sockets are
# abstract (no file) unless a test passes a path in its own temporary directory.
# ---------------------------------------------------------------------------------------------

class WatchTree(SourceTree):
    """A SourceTree with its config written, and its queue read back for assertions."""

    def __init__(self, root: Path, **sections: dict[str, Any]) -> None:
        super().__init__(root)
        self.base = root
        self.config = self.write_config(**sections)

    def entries(self) -> list[Any]:
        """Every queue entry, oldest first (none if the queue file does not exist yet)."""
        from sftppush.queue.queue import Queue

        if not self.queue_path.exists():
            return []
        with Queue(self.queue_path, create=False) as q:
            return list(reversed(q.list(limit=10_000_000)))

    def counts(self) -> collections.Counter[Path]:
        """How many entries each path has."""
        return collections.Counter(Path(os.fsdecode(e.path)) for e in self.entries())

    def wait_for(self, paths: set[Path], timeout: float = 30.0) -> collections.Counter[Path]:
        """Poll the queue until every path in `paths` has an entry; fail at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            counts = self.counts()
            missing = paths - set(counts)
            if not missing:
                return counts
            if time.monotonic() > deadline:
                sample = sorted(map(str, missing))[:5]
                raise AssertionError(f"{len(missing)} files never queued, e.g. {sample}")
            time.sleep(0.05)


class WatcherProcess:
    """`sftppush --config CFG watch ARGS` as a child; `start()` returns once READY=1 arrived."""

    def __init__(self, config: Path, log: Path, *args: str, env: dict[str, str] | None = None,
                 notify_path: Path | None = None) -> None:
        self.config = config
        self.log = log
        self.args = args
        self.env = env or {}
        self.notify_path = notify_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self.messages: list[str] = []

    def start(self, timeout: float = 30.0) -> WatcherProcess:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if self.notify_path is not None:
            self.sock.bind(str(self.notify_path))
            address = str(self.notify_path)
        else:
            name = f"sftppush-test-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            address = "@" + name
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                cli_argv("--config", self.config, "watch", *self.args),
                env=child_env({"NOTIFY_SOCKET": address, **self.env}),
                stdout=log, stderr=subprocess.STDOUT)
        self.wait_message("READY=1", timeout)
        return self

    def wait_message(self, wanted: str, timeout: float = 30.0, count: int = 1) -> None:
        """Receive notifications until `count` have the line `wanted`; fail at the deadline."""
        assert self.sock is not None and self.proc is not None
        deadline = time.monotonic() + timeout
        while sum(wanted in m.splitlines() for m in self.messages) < count:
            left = deadline - time.monotonic()
            if left <= 0 or (self.proc.poll() is not None and not self._receive(0.01)):
                raise AssertionError(f"no {wanted} from the watcher (status "
                                     f"{self.proc.poll()}):\n{self.log_text()[-3000:]}")
            self._receive(min(left, 0.2))

    def _receive(self, timeout: float) -> bool:
        assert self.sock is not None
        self.sock.settimeout(timeout)
        try:
            self.messages.append(self.sock.recv(4096).decode())
            return True
        except (TimeoutError, BlockingIOError):
            return False

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (after SIGCONT, in case it is stopped) and wait: the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        finally:
            self.close()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.close()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        while self.sock is not None and self._receive(0):
            pass  # keep what was sent before the end, e.g. STOPPING=1
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def own_watch_limit(watches: int) -> tuple[str, ...]:
    """A command prefix: what follows it runs in a user namespace of its own (root mapped to
    root) whose inotify watch limit is `watches`. The kernel counts a user's watches per
    user namespace (and in every namespace above it), so a test reaches the limit there
    without lowering fs.inotify.max_user_watches for every other process of the machine."""
    return ("unshare", "--user", "--map-root-user", "--", "sh", "-c",
            'echo "$0" > /proc/sys/user/max_inotify_watches && exec "$@"', str(watches))


def set_watch_limit(pid: int, watches: int) -> None:
    """Raise (or lower) the watch limit of the user namespace process `pid` runs in."""
    subprocess.run(["nsenter", "--target", str(pid), "--user", "--", "sh", "-c",
                    f"echo {watches} > /proc/sys/user/max_inotify_watches"], check=True,
                   timeout=30)


def own_mounts(*first: str) -> tuple[str, ...]:
    """A command prefix: what follows it runs in a mount namespace of its own, after the
    shell command `first` (if any) ran there: what it mounts stays in the namespace and goes
    away with its processes."""
    return ("unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
            f'{" ".join(first) or ":"} && exec "$@"', "sh")


def in_mounts_of(pid: int, *command: str) -> None:
    """Run `command` (mount, umount) in the mount namespace of process `pid`."""
    subprocess.run(["nsenter", "--target", str(pid), "--mount", "--", *command], check=True,
                   timeout=30)


def seen_by(pid: int, path: Path) -> Path:
    """`path` as process `pid` sees it, through its own mounts (/proc/PID/root)."""
    return Path(f"/proc/{pid}/root") / path.relative_to("/")


def inotify_budget(where: Path) -> None:
    """Fail, saying so, when this machine's inotify budget is spent (other processes of the
    same user hold every watch or instance): a test that needs watches would otherwise fail
    later, as a timeout that looks like a bug of its own."""
    from inotify_simple import INotify
    from inotify_simple import flags as F

    def limit(name: str) -> str:
        try:
            return Path(f"/proc/sys/fs/inotify/{name}").read_text().strip()
        except OSError:
            return "?"

    try:
        with INotify() as probe:
            probe.add_watch(where, F.CREATE)
    except OSError as exc:
        pytest.fail(f"inotify is out of {'instances' if exc.errno == 24 else 'watches'} for"
                    f" this user ({exc.strerror}; fs.inotify.max_user_watches="
                    f"{limit('max_user_watches')}, max_user_instances="
                    f"{limit('max_user_instances')}): free some, or raise the limits",
                    pytrace=False)


@pytest.fixture
def watch_tree(tmp_path: Path) -> WatchTree:
    """A source tree with its config file written, for the watcher and scan tests."""
    return WatchTree(tmp_path)


@pytest.fixture
def watcher(watch_tree: WatchTree, tmp_path: Path) -> Iterator[WatcherProcess]:
    """A running watcher over `watch_tree` (READY=1 received); killed if a test left it up."""
    proc = WatcherProcess(watch_tree.config, tmp_path / "watcher.log").start()
    try:
        yield proc
    finally:
        proc.close()

# --- end of the watcher room's fixtures ------------------------------------------------------
