"""The S3 endpoints tests run against, on loopback: moto's server mode and `rclone serve s3`,
each with its URL, the made-up credentials it accepts, a boto3 client for assertions and the
environment a child sftppush needs to reach it and nothing else."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import boto3
import botocore.config

from sftppush.locals3 import LocalS3
from tests.support.processes import FAKE_ACCESS_KEY, FAKE_REGION, FAKE_SECRET_KEY, clean_aws_env


class S3Server:
    """An S3 API endpoint on loopback: its URL and the credentials it accepts."""

    def __init__(self, port: int, access_key: str, secret_key: str,
                 ca_file: Path | None = None) -> None:
        self.port = port
        self.access_key = access_key
        self.secret_key = secret_key
        self.ca_file = ca_file  # over https: the certificate to trust
        self.front: int | None = None  # a proxy's port (a bench's delay line): clients go there

    @property
    def endpoint_url(self) -> str:
        scheme = "https" if self.ca_file else "http"
        return f"{scheme}://127.0.0.1:{self.front or self.port}"

    def client(self) -> Any:
        return boto3.session.Session(
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            region_name=FAKE_REGION,
        ).client("s3", endpoint_url=self.endpoint_url,
                 verify=str(self.ca_file) if self.ca_file else None,
                 config=botocore.config.Config(
            s3={"addressing_style": "path"}, retries={"total_max_attempts": 2},
            connect_timeout=2, read_timeout=30,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required"))

    def env(self) -> dict[str, str]:
        env = clean_aws_env(os.environ)
        env.update({"AWS_ACCESS_KEY_ID": self.access_key,
                    "AWS_SECRET_ACCESS_KEY": self.secret_key,
                    "AWS_DEFAULT_REGION": FAKE_REGION,
                    "AWS_CONFIG_FILE": os.devnull,
                    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
                    "AWS_EC2_METADATA_DISABLED": "true",
                    "SFTPPUSH_DEFAULTS_ENDPOINT_URL": self.endpoint_url,
                    "SFTPPUSH_DEFAULTS_AWSREGION": FAKE_REGION})
        if self.ca_file:  # trusted as an operator would: boto3 and awscrt, and Go's s5cmd
            env.update({"AWS_CA_BUNDLE": str(self.ca_file), "SSL_CERT_FILE": str(self.ca_file)})
        return env


class RcloneS3(S3Server, LocalS3):
    """`rclone serve s3` over a directory: objects are plain files, so they survive restarts."""

    def __init__(self, root: Path, log: Path, tls: tuple[Path, Path] | None = None) -> None:
        # The same made-up keys as moto's, so in-process code under test works with either.
        LocalS3.__init__(self, root, access_key=FAKE_ACCESS_KEY, secret_key=FAKE_SECRET_KEY,
                         log=log, tls=tls)
        S3Server.__init__(self, self.port, FAKE_ACCESS_KEY, FAKE_SECRET_KEY,
                          tls[0] if tls else None)

    def freeze(self) -> None:
        """SIGSTOP the server: from this instant it serves no byte more, so what it stored can
        be counted before `stop()` (which continues it, then terminates it)."""
        assert self.process is not None and self.process.poll() is None, "not running"
        self.process.send_signal(signal.SIGSTOP)
