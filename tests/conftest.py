"""Shared fixtures: source trees with config files, and the CLI as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent

# Variables of the host that must not leak into a test's child processes: a test talks only
# to servers it started on 127.0.0.1, with the credentials it made up.
HOST_VARIABLES = ("AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE",
                  "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL",
                  "AWS_ENDPOINT_URL_S3", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
                  "AWS_SESSION_TOKEN", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy",
                  "https_proxy", "ALL_PROXY", "all_proxy", "NOTIFY_SOCKET", "WATCHDOG_USEC",
                  "STATE_DIRECTORY", "SFTPPUSH_CONFIG")


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
