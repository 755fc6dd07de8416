"""The small-file lane of a consumer: awscrt PUTs started from the claim loop, many at once.

Owns which entries take the lane (a whole decompressed body within `max_body`), reading that
body, its sha256, starting the PUT without waiting, and on completion verifying it and handing
over to the pipeline's finish step. It shares every check with pipeline.py (prepare/finish),
never touches the queue and never streams: a bigger file goes back to the threaded boto3 path.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from sftppush import crt, pipeline
from sftppush.config import Config
from sftppush.queue import Entry
from sftppush.s3 import SHA256_KEY, Uploaded, Uploader
from sftppush.safeopen import Vanished

log = logging.getLogger("sftppush.fastlane")


@dataclass(frozen=True)
class Sent:
    """A PUT started for one prepared file; `complete()` it once its future is done."""

    prepared: pipeline.Prepared
    future: Future[crt.PutResult]
    sha256: str
    size: int


class Lane:
    """Starts PUTs on the calling thread; completions are reported through `done(outcome)`."""

    def __init__(self, cfg: Config, client: crt.CrtUploader, uploader: Uploader,
                 max_body: int, nlink_retry_after: float) -> None:
        self.cfg = cfg
        self.client = client
        self.uploader = uploader  # boto3: HEADs for vanished files and unverifiable ETags
        self.max_body = min(max_body, client.max_body)
        self.nlink_retry_after = nlink_retry_after

    def accepts(self, entry: Entry) -> bool:
        """Worth trying here: the file on disk is small (its decompressed size is checked
        when read), and the bucket is reachable by the CRT client's addressing."""
        if entry.size > self.max_body:
            return False
        source = self.cfg.source(entry.source)
        # On AWS the CRT client addresses buckets virtual-hosted; a dotted name breaks TLS.
        return source is None or bool(self.cfg.defaults.endpoint_url) or \
            "." not in source.target.bucket

    def wait_room(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds until `start()` would not block on the in-flight
        limits (any body the lane takes fits then)."""
        return self.client.wait_room(self.max_body, timeout)

    def start(self, entry: Entry, done: Callable[[Any], None]) -> bool:
        """Start one entry; `done` gets exactly one outcome, maybe from a CRT thread: a Sent,
        a pipeline.Result or an exception. False: nothing started, a worker thread takes it
        (a bigger body to stream, or a vanished file, whose HEAD may wait on the store)."""
        try:
            prepared = pipeline.prepare(entry, self.cfg, self.uploader,
                                        nlink_retry_after=self.nlink_retry_after,
                                        look_up_vanished=False)
        except Vanished:
            return False
        except Exception as exc:
            done(exc)
            return True
        if isinstance(prepared, pipeline.Result):
            done(prepared)
            return True
        try:
            body = pipeline.read_small(prepared, self.cfg.consumer.max_decompressed_bytes,
                                       self.max_body)
            if body is None:
                prepared.close()
                return False
            sha = hashlib.sha256(body).hexdigest()
            future = self.client.put(prepared.source.target.bucket, prepared.key, body,
                                     {**prepared.meta, SHA256_KEY: sha})
        except Exception as exc:
            prepared.close()
            done(exc)
            return True
        sent = Sent(prepared, future, sha, len(body))
        future.add_done_callback(lambda _f: done(sent))
        return True

    def needs_head(self, sent: Sent) -> bool:
        """True when completing `sent` takes a boto3 HEAD (its ETag is not the body's MD5, as
        with SSE-KMS): the caller runs complete() on a worker thread then, not its loop."""
        return sent.future.exception() is None and sent.future.result().verified_by is None

    def complete(self, sent: Sent, still_ours: Callable[[], bool]) -> pipeline.Result:
        """Verify a finished PUT and run the pipeline's finish step (delete, notes)."""
        prepared = sent.prepared
        try:
            put = sent.future.result()  # raises TransientError / PermanentError
            bucket = prepared.source.target.bucket
            # The store checked our Content-MD5; an ETag equal to it confirms the bytes. Where
            # the ETag is not the MD5 (SSE-KMS, SSE-C) a HEAD checks size and sha256 instead.
            how = put.verified_by or self.uploader.verify_head(bucket, prepared.key, sent.size,
                                                               sent.sha256)
            uploaded = Uploaded(bucket, prepared.key, sent.size, sent.sha256, 0, how)
            return pipeline.finish(prepared, uploaded, still_ours,
                                   self.cfg.consumer.delete_after_upload)
        finally:
            prepared.close()

    def close(self) -> None:
        self.client.close()
