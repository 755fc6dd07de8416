"""The local S3 (locals3.py) on a port someone else took between its pick and the bind."""

from __future__ import annotations

import itertools
import socket
from pathlib import Path

import boto3
import pytest

from sftppush import locals3
from sftppush.locals3 import LocalS3


def test_a_port_taken_before_the_bind_gets_the_store_another_and_never_the_stranger(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as stranger:
        stranger.bind(("127.0.0.1", 0))
        stranger.listen()
        taken = stranger.getsockname()[1]
        # The first pick is the stranger's port, as when another process bound it first.
        picks = itertools.chain([taken], iter(locals3.free_port, None))
        monkeypatch.setattr(locals3, "free_port", lambda: next(picks))
        store = LocalS3(tmp_path / "s3", log=tmp_path / "s3.log")
        store.start()
        try:
            assert store.port != taken
            store.make_bucket("b")
            client = boto3.client("s3", endpoint_url=store.endpoint, region_name="us-east-1",
                                  aws_access_key_id=store.access_key,
                                  aws_secret_access_key=store.secret_key)
            client.put_object(Bucket="b", Key="k", Body=b"x")
            assert (tmp_path / "s3" / "b" / "k").read_bytes() == b"x"
        finally:
            store.stop()
    # A restart keeps the port it has (clients were told it), as an outage test needs.
    port = store.port
    store.start()
    try:
        assert store.port == port
    finally:
        store.stop()
