"""Helpers every room's tests share: the repository, a child sftppush's environment and
command line, the made-up AWS identity, a process stopped by signals, and the one wait.

Nothing here starts a server or touches a queue: see stores.py and trees.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

REPO = Path(__file__).resolve().parent.parent.parent

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


FAKE_ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"  # 20 characters, like a real access key id
FAKE_SECRET_KEY = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY40"  # 40 characters
FAKE_REGION = "us-east-1"


def clean_aws_env(base: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in base.items() if k not in HOST_VARIABLES}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


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
