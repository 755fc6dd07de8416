"""The model test's smaller rule set against a real S3 API over HTTP (moto's server), so the
in-process store of tests/model/store.py cannot drift from what a store answers.

The same machine, clients, clock, crashes, purges and rescans; the store is moto, honest,
seen through boto3 after every step. Rules that only the in-process store can play (faults,
lies, lifecycle aborts, a death at a given request) are not rules here; consumers stream
through boto3 (the awscrt lane answers on its own threads, which the model cannot step).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize, rule

from sftppush.sink.s3 import Sink
from tests.model.machine import Model
from tests.model.store import MotoStore
from tests.model.world import DIRS
from tests.model.world import NAMES as ALL_NAMES

NAMES = tuple(n for n in ALL_NAMES if b"\n" not in n)


class MotoModel(Model):
    server: Any = None  # the session's moto server (tests/conftest.py), set by the fixture
    part_mb = 5

    @initialize(delete=st.booleans())
    def setup(self, delete: bool) -> None:  # type: ignore[override]
        client = self.server.client()
        bucket = f"model-{uuid.uuid4().hex[:12]}"
        client.create_bucket(Bucket=bucket)
        self.start(MotoStore(client, bucket), False, False, delete, self.server.endpoint_url,
                   bucket)

    def sink(self, transport: Any, verify: Any) -> Sink:  # noqa: ARG002
        return Sink.from_config(self.cfg.defaults, self.cfg.consumer.s3,
                                replace(self.transfer, fast=False))

    # moto answers 404 to a key with a newline (S3 itself takes one): every other name.
    @rule(d=st.sampled_from(DIRS), name=st.sampled_from(NAMES), size=st.sampled_from((300,)))
    def write(self, d: bytes, name: bytes, size: int) -> None:
        super().write(d, name, size)

    @rule(d=st.sampled_from(DIRS), name=st.sampled_from(NAMES), size=st.sampled_from((300,)))
    def rename_over(self, d: bytes, name: bytes, size: int) -> None:
        super().rename_over(d, name, size)

    @rule(d=st.sampled_from(DIRS), name=st.sampled_from(NAMES))
    def resend_keeping_mtime(self, d: bytes, name: bytes) -> None:
        super().resend_keeping_mtime(d, name)

    @rule(d=st.sampled_from(DIRS), name=st.sampled_from(NAMES[2:4]))
    def open_and_hold(self, d: bytes, name: bytes) -> None:
        super().open_and_hold(d, name)

    @rule(d=st.sampled_from(DIRS), name=st.sampled_from((b"x.csv", b"rep ")))
    def someone_else_writes_the_key(self, d: bytes, name: bytes) -> None:
        key = self._key(os.path.join(self.world.dir(d), name), False)
        self.store.client.put_object(Bucket=self.bucket, Key=key, Body=b"the Go tool\n")

    # Only the in-process store plays these: plain methods here, so no longer rules.
    def store_fails_next(self, n: int) -> None: ...
    def store_down(self, down: bool) -> None: ...
    def store_slows_down(self) -> None: ...
    def store_loses_next_answer(self) -> None: ...
    def store_lifecycle_aborts_uploads(self) -> None: ...
    def store_lies_next(self, lie: str) -> None: ...


@pytest.fixture(autouse=True)
def _moto(moto_server: Any) -> None:
    MotoModel.server = moto_server


TestMotoModel = MotoModel.TestCase
TestMotoModel.settings = settings(
    max_examples=int(os.environ.get("SFTPPUSH_MODEL_MOTO_EXAMPLES", "15")),
    stateful_step_count=25, deadline=None, derandomize=True, database=None,
    suppress_health_check=list(HealthCheck))
