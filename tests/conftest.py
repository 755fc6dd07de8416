"""The fixtures every room's tests share: source trees with config files, the CLI as a real
subprocess, S3 on loopback (moto, rclone), in-process consumers and a running watcher. The
helpers behind them live in tests/support/ (re-exported here for the tests that import them
from this file)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sftppush.locals3 import free_port, start_on_free_port, stop_process
from tests.support.consumers import consumer_thread
from tests.support.processes import (
    FAKE_ACCESS_KEY,
    FAKE_REGION,
    FAKE_SECRET_KEY,
    HOST_VARIABLES,
    REPO,
    child_env,
    clean_aws_env,
    cli_argv,
    stopped_after,
    wait_until,
)
from tests.support.stores import RcloneS3, S3Server
from tests.support.trees import (
    SourceTree,
    WatcherProcess,
    WatchTree,
    in_mounts_of,
    inotify_budget,
    own_mounts,
    own_watch_limit,
    seen_by,
    set_watch_limit,
)

__all__ = [
    "FAKE_ACCESS_KEY", "FAKE_REGION", "FAKE_SECRET_KEY", "HOST_VARIABLES", "REPO", "RcloneS3",
    "S3Server", "SourceTree", "WatchTree", "WatcherProcess", "child_env", "cli_argv",
    "consumer_thread", "free_port", "in_mounts_of", "inotify_budget", "own_mounts",
    "own_watch_limit", "seen_by", "set_watch_limit", "stopped_after", "wait_until",
]

# In-process consumers run in threads, so consumer.run cannot do this for them: a lease
# break (a writer opening a file while safeopen deletes it) must not end the test run.
signal.signal(signal.SIGIO, signal.SIG_IGN)


@pytest.fixture
def run_cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run `sftppush ARGS` as a real process and return its completed result."""

    def run(*args: str | os.PathLike[str], env: dict[str, str] | None = None,
            timeout: float = 60, input: str | None = None,
            cwd: str | os.PathLike[str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(cli_argv(*args), env=child_env(env), capture_output=True,
                              text=True, timeout=timeout, input=input, cwd=cwd)

    return run


@pytest.fixture
def source_tree(tmp_path: Path) -> SourceTree:
    return SourceTree(tmp_path)


# ---------------------------------------------------------------------------------------------
# S3 fixtures (pipeline room): moto server, rclone serve s3, boto3 client, child environment
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="session", autouse=True)
def _isolated_aws_environment() -> Iterator[None]:
    """boto3 in the test process must not read the developer's profile, CA bundle or proxy."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(clean_aws_env(saved))
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


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's server mode as a subprocess on a free loopback port, for behaviour tests."""
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("wb")
    proc, port = start_on_free_port(lambda port: subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env=clean_aws_env(os.environ)))
    try:
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
        with consumer_thread(cfg, consumer.Tuning.of(**tuning), workers, drain=True) as thread:
            thread.join(timeout)
            if thread.is_alive():
                pytest.fail(f"consumer did not drain within {timeout}s")

    return consume


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
