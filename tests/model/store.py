"""An in-process S3 for the model test: the semantics sftppush relies on, and the ways a store
fails or lies, behind a boto3-shaped client and an awscrt-shaped transport.

What it keeps: objects (body, user metadata, ETag), multipart uploads and their parts, and a
log of every write, so the model can tell which local path's content each object held, in
which order. What it models of HTTP: header values lose leading and trailing whitespace
(user metadata comes back trimmed), HEAD errors carry no code but the status.

It is a test double of the store's answers only; every request is made by sftppush's own
sink (s3.py, multipart.py) exactly as it makes it against a real store.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import botocore.exceptions

from sftppush.sink import crt
from sftppush.sink.parts import CRC32, CRC64NVME

CHECKSUMS = {c.name: c for c in (CRC32, CRC64NVME) if c is not None}


class Killed(BaseException):
    """The consumer process dies here (kill -9): nothing after this point of it runs."""


class StoreError(Exception):
    """An answer that is not 2xx (`status`), or none at all (`status` None)."""

    def __init__(self, status: int | None, code: str, message: str = "") -> None:
        super().__init__(message or code)
        self.status = status
        self.code = code


class AnswerLost(Exception):
    """The store applied the request, then the connection dropped before its answer."""


@dataclass
class Obj:
    body: bytes
    meta: dict[str, str]
    etag: str
    checksum: str | None = None   # "name:value", as the store computed it when it validates
    writer: str = "sftppush"      # "sftppush" or "someone else"


@dataclass
class Upload:
    bucket: str
    key: str
    meta: dict[str, str]
    algorithm: str | None
    parts: dict[int, tuple[bytes, str]] = field(default_factory=dict)  # n -> body, etag
    lied: set[int] = field(default_factory=set)  # parts the store keeps corrupted


@dataclass(frozen=True)
class Write:
    """One object written: what the model reads its invariants from."""

    bucket: str
    key: str
    body: bytes
    meta: dict[str, str]
    writer: str  # "sftppush", "someone else", or "the store, corrupting" what it got


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _trimmed(meta: dict[str, str]) -> dict[str, str]:
    """User metadata as HTTP carries it: names in lower case, values without the whitespace
    at their ends (RFC 9110 field values)."""
    return {k.lower(): str(v).strip(" \t") for k, v in meta.items()}


@dataclass
class Faults:
    """What the store does to the next requests; the model's store rules set these."""

    down: bool = False             # every request: connection refused
    fail_next: int = 0             # the next N requests: 500 InternalError
    slow_down_next: int = 0        # the next N requests: 503 SlowDown
    lose_next: int = 0             # the next N writes are applied, their answers lost
    lie_next: int = 0              # the next N objects are stored corrupted (see `lie`)
    lie: str = "corrupt"           # "corrupt": one byte flipped; "truncate": one byte short
    clobber_next: int = 0          # the next N writes are replaced at once by someone else's
    kill_after: int | None = None  # the consumer dies at the request after this many more
    killed: bool = False           # kill_after came: the consumer is dead, whatever it caught


class Store:
    """Buckets of objects with the behaviour of one kind of store.

    `conditional`: honours If-None-Match: * (AWS, MinIO, moto) or ignores it (rclone).
    `checksums`: "validate" (AWS: checks and answers what it computed), "echo" (moto: answers
    the value sent), "ignore" (rclone: neither). `opaque_etags`: ETags are not MD5s (SSE-KMS).
    """

    def __init__(self, *, conditional: bool = True, checksums: str = "validate",
                 opaque_etags: bool = False) -> None:
        self.conditional = conditional
        self.checksums = checksums
        self.opaque_etags = opaque_etags
        self.objects: dict[tuple[str, str], Obj] = {}
        self.uploads: dict[str, Upload] = {}
        self.writes: list[Write] = []
        self.faults = Faults()
        self.requests = 0
        self.lied = False  # the object being stored is not what was received
        self._ids = itertools.count(1)
        self._lock = threading.RLock()

    # --- what every request goes through ------------------------------------------------

    def _enter(self, write: bool) -> None:
        """Count the request and apply the faults that come before the store acts."""
        f = self.faults
        self.requests += 1
        if f.kill_after is not None:
            if f.kill_after <= 0:
                f.kill_after = None
                f.killed = True
                raise Killed("killed during a request to the store")
            f.kill_after -= 1
        if f.down:
            raise StoreError(None, "ConnectionRefused", "connection refused")
        if f.fail_next:
            f.fail_next -= 1
            raise StoreError(500, "InternalError", "We encountered an internal error.")
        if f.slow_down_next and write:
            f.slow_down_next -= 1
            raise StoreError(503, "SlowDown", "Please reduce your request rate.")

    def _etag(self, body: bytes) -> str:
        return _md5(body + str(next(self._ids)).encode()) if self.opaque_etags else _md5(body)

    def _received(self, body: bytes, algorithm: str | None, sent: str | None) -> str | None:
        """Check a body's checksum as the store does; the value it answers (None: none)."""
        if algorithm is None or self.checksums == "ignore":
            return None
        if self.checksums == "echo":
            return sent
        computed = CHECKSUMS[algorithm].of(body)
        if sent is not None and sent != computed:
            raise StoreError(400, "BadDigest", f"The {algorithm} you specified did not match"
                             " the calculated checksum.")
        return computed

    def _stored(self, body: bytes) -> bytes:
        """The bytes the store keeps: a lying store keeps other bytes than it received."""
        f = self.faults
        if not f.lie_next or not body:
            return body
        f.lie_next -= 1
        self.lied = True
        if f.lie == "truncate":
            return body[:-1]
        return body[:-1] + bytes([body[-1] ^ 0x01])

    def _put_object(self, bucket: str, key: str, body: bytes, meta: dict[str, str],
                    algorithm: str | None, sent: str | None,
                    if_none_match: bool) -> dict[str, str]:
        """Store one object; the answer's fields (etag, checksum) or raise."""
        if self.conditional and if_none_match and (bucket, key) in self.objects:
            raise StoreError(412, "PreconditionFailed", "At least one of the pre-conditions"
                             " you specified did not hold")
        answered = self._received(body, algorithm, sent)
        stored = self._stored(body)
        if answered is not None and self.checksums == "validate":
            answered = CHECKSUMS[str(algorithm)].of(stored)  # what it holds, as it says
        obj = Obj(stored, _trimmed(meta), self._etag(stored),
                  f"{algorithm}:{answered}" if answered else None)
        self._keep(bucket, key, obj)
        answer = {"etag": f'"{obj.etag}"'}
        if answered is not None:
            answer[f"checksum_{algorithm}"] = answered
        self._after_write(bucket, key, obj)
        return answer

    def _keep(self, bucket: str, key: str, obj: Obj) -> None:
        self.objects[(bucket, key)] = obj
        writer = "the store, corrupting" if self.lied else obj.writer
        self.lied = False
        self.writes.append(Write(bucket, key, obj.body, obj.meta, writer))

    def _after_write(self, bucket: str, key: str, obj: Obj) -> None:
        f = self.faults
        if f.clobber_next:  # someone else writes the key right after, same size
            f.clobber_next -= 1
            self.someone_writes(bucket, key, bytes(len(obj.body)))
        if f.lose_next:
            f.lose_next -= 1
            raise AnswerLost("connection reset after the request was applied")

    def sync(self) -> None:
        """Nothing to read: every write is logged as it happens (see MotoStore)."""

    # --- what the model does to the store directly --------------------------------------

    def someone_writes(self, bucket: str, key: str, body: bytes,
                       meta: dict[str, str] | None = None) -> None:
        """Another writer (a person, the Go tool) puts an object under `key`."""
        with self._lock:
            obj = Obj(body, _trimmed(meta or {}), self._etag(body), writer="someone else")
            self._keep(bucket, key, obj)

    def lifecycle_abort(self) -> int:
        """AbortIncompleteMultipartUpload: every open upload is gone."""
        with self._lock:
            n = len(self.uploads)
            self.uploads.clear()
            return n

    # --- the operations, with errors as StoreError / AnswerLost -------------------------

    def head(self, bucket: str, key: str) -> Obj:
        with self._lock:
            self._enter(write=False)
            obj = self.objects.get((bucket, key))
            if obj is None:
                raise StoreError(404, "404", "Not Found")
            return obj

    def put(self, bucket: str, key: str, body: bytes, meta: dict[str, str],
            algorithm: str | None, sent: str | None, if_none_match: bool) -> dict[str, str]:
        with self._lock:
            self._enter(write=True)
            return self._put_object(bucket, key, body, meta, algorithm, sent, if_none_match)

    def create(self, bucket: str, key: str, meta: dict[str, str],
               algorithm: str | None) -> str:
        with self._lock:
            self._enter(write=True)
            upload_id = f"up{next(self._ids)}"
            self.uploads[upload_id] = Upload(bucket, key, _trimmed(meta), algorithm)
            return upload_id

    def _upload(self, key: str, upload_id: str) -> Upload:
        upload = self.uploads.get(upload_id)
        if upload is None or upload.key != key:
            raise StoreError(404, "NoSuchUpload", "The specified upload does not exist.")
        return upload

    def put_part(self, key: str, upload_id: str, number: int, body: bytes,
                 algorithm: str | None, sent: str | None) -> dict[str, str]:
        with self._lock:
            self._enter(write=True)
            upload = self._upload(key, upload_id)
            answered = self._received(body, algorithm, sent)
            # A lie about a multipart object is told part by part, where the store's
            # answers (the part's MD5 as its ETag, its checksum) are made: a store that
            # corrupted the object only when it joined the parts would answer the ETag of
            # the parts it got, and nothing short of reading the object back could tell.
            stored = self._stored(body)
            upload.lied.discard(number)
            if self.lied:
                upload.lied.add(number)
                self.lied = False
                if answered is not None and self.checksums == "validate":
                    answered = CHECKSUMS[str(algorithm)].of(stored)
            upload.parts[number] = (stored, _md5(stored))
            answer = {"etag": f'"{_md5(stored)}"'}
            if answered is not None:
                answer[f"checksum_{algorithm}"] = answered
            return answer

    def list_parts(self, key: str, upload_id: str) -> list[tuple[int, int, str]]:
        with self._lock:
            self._enter(write=False)
            upload = self._upload(key, upload_id)
            return [(n, len(b), e) for n, (b, e) in sorted(upload.parts.items())]

    def list_uploads(self, key_prefix: str) -> list[tuple[str, str]]:
        with self._lock:
            self._enter(write=False)
            return [(u.key, i) for i, u in self.uploads.items() if u.key.startswith(key_prefix)]

    def abort(self, key: str, upload_id: str) -> None:
        with self._lock:
            self._enter(write=True)
            self._upload(key, upload_id)
            del self.uploads[upload_id]

    def complete(self, bucket: str, key: str, upload_id: str, parts: list[dict[str, Any]],
                 sent: str | None) -> dict[str, str]:
        with self._lock:
            self._enter(write=True)
            upload = self._upload(key, upload_id)
            bodies = []
            for p in parts:
                have = upload.parts.get(p["PartNumber"])
                if have is None or have[1] != str(p["ETag"]).strip('"'):
                    raise StoreError(400, "InvalidPart", "One or more of the specified parts"
                                     " could not be found.")
                bodies.append(have[0])
            stored = b"".join(bodies)  # what the store kept of each part
            answered = self._received(stored, upload.algorithm, sent)
            self.lied = any(p["PartNumber"] in upload.lied for p in parts)
            if answered is not None and self.checksums == "validate":
                answered = CHECKSUMS[str(upload.algorithm)].of(stored)
            md5s = b"".join(bytes.fromhex(_md5(b)) for b in bodies)
            etag = self._etag(stored) if self.opaque_etags else f"{_md5(md5s)}-{len(bodies)}"
            obj = Obj(stored, upload.meta, etag)
            del self.uploads[upload_id]
            self._keep(bucket, key, obj)
            answer = {"etag": f'"{etag}"'}
            if answered is not None:
                answer[f"checksum_{upload.algorithm}"] = answered
            self._after_write(bucket, key, obj)
            return answer


# --- boto3's shape ---------------------------------------------------------------------------

def _client_error(exc: StoreError, operation: str) -> botocore.exceptions.ClientError:
    error = {"Code": exc.code, "Message": str(exc)} if operation != "HeadObject" else \
        {"Code": str(exc.status), "Message": "Not Found" if exc.status == 404 else ""}
    return botocore.exceptions.ClientError(
        {"Error": error, "ResponseMetadata": {"HTTPStatusCode": exc.status}}, operation)


def _body(body: Any) -> bytes:
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    body.seek(0)
    return bytes(body.read())


def _checksum_arg(kwargs: dict[str, Any]) -> tuple[str | None, str | None]:
    algorithm = kwargs.get("ChecksumAlgorithm")
    if algorithm is None:
        return None, None
    name = str(algorithm).lower()
    return name, kwargs.get("Checksum" + name.upper())


class Client:
    """The boto3 S3 client calls the sink makes, answered by a Store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def _call(self, operation: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except StoreError as exc:
            if exc.status is None:
                raise botocore.exceptions.EndpointConnectionError(
                    endpoint_url="http://store.invalid") from None
            raise _client_error(exc, operation) from None
        except AnswerLost:
            raise botocore.exceptions.ConnectionClosedError(
                endpoint_url="http://store.invalid") from None

    @staticmethod
    def _answer(fields: dict[str, str]) -> dict[str, Any]:
        out: dict[str, Any] = {"ETag": fields["etag"]}
        for name, value in fields.items():
            if name.startswith("checksum_"):
                out["Checksum" + name.removeprefix("checksum_").upper()] = value
        return out

    def put_object(self, **kw: Any) -> dict[str, Any]:
        algorithm, sent = _checksum_arg(kw)
        return self._answer(self._call("PutObject", lambda: self.store.put(
            kw["Bucket"], kw["Key"], _body(kw["Body"]), kw.get("Metadata") or {}, algorithm,
            sent, kw.get("IfNoneMatch") == "*")))

    def head_object(self, **kw: Any) -> dict[str, Any]:
        obj = self._call("HeadObject", lambda: self.store.head(kw["Bucket"], kw["Key"]))
        return {"ContentLength": len(obj.body), "Metadata": dict(obj.meta),
                "ETag": f'"{obj.etag}"'}

    def create_multipart_upload(self, **kw: Any) -> dict[str, Any]:
        algorithm, _ = _checksum_arg(kw)
        return {"UploadId": self._call("CreateMultipartUpload", lambda: self.store.create(
            kw["Bucket"], kw["Key"], kw.get("Metadata") or {}, algorithm))}

    def upload_part(self, **kw: Any) -> dict[str, Any]:
        algorithm, sent = _checksum_arg(kw)
        return self._answer(self._call("UploadPart", lambda: self.store.put_part(
            kw["Key"], kw["UploadId"], kw["PartNumber"], _body(kw["Body"]), algorithm, sent)))

    def list_parts(self, **kw: Any) -> dict[str, Any]:
        parts = self._call("ListParts", lambda: self.store.list_parts(kw["Key"], kw["UploadId"]))
        return {"Parts": [{"PartNumber": n, "Size": size, "ETag": f'"{etag}"'}
                          for n, size, etag in parts], "IsTruncated": False}

    def list_multipart_uploads(self, **kw: Any) -> dict[str, Any]:
        ups = self._call("ListMultipartUploads",
                         lambda: self.store.list_uploads(kw.get("Prefix", "")))
        return {"Uploads": [{"Key": k, "UploadId": i} for k, i in ups], "IsTruncated": False}

    def abort_multipart_upload(self, **kw: Any) -> dict[str, Any]:
        self._call("AbortMultipartUpload", lambda: self.store.abort(kw["Key"], kw["UploadId"]))
        return {}

    def complete_multipart_upload(self, **kw: Any) -> dict[str, Any]:
        _, sent = _checksum_arg({"ChecksumAlgorithm": self._algorithm(kw), **kw})
        return self._answer(self._call("CompleteMultipartUpload", lambda: self.store.complete(
            kw["Bucket"], kw["Key"], kw["UploadId"], kw["MultipartUpload"]["Parts"], sent)))

    def _algorithm(self, kw: dict[str, Any]) -> str | None:
        upload = self.store.uploads.get(kw["UploadId"])
        return upload.algorithm if upload else None


# --- awscrt's shape: PUTs whose answers the model delivers ------------------------------------

@dataclass
class PendingPut:
    bucket: str
    key: str
    body: bytes
    headers: dict[str, str]
    answered: Callable[[crt.Answer | crt.PutError], None]
    started: float


class Transport:
    """CrtTransport's interface; a PUT waits in `pending` until the model delivers it, so the
    model decides what happens between a PUT's start and its answer."""

    max_body = 8 * 2**20

    def __init__(self, store: Store, clock: Callable[[], float], timeout: float) -> None:
        self.store = store
        self.clock = clock
        self.timeout = timeout
        self.pending: list[PendingPut] = []

    def virtual_hosted(self) -> bool:
        return False

    def wait_room(self, size: int, timeout: float) -> bool:  # noqa: ARG002
        return True

    def in_flight(self) -> int:
        return 32

    def throttled(self) -> None:
        """A 503 SlowDown: CrtTransport shrinks its window; the model has none to shrink."""

    def send(self, single: Any, answered: Callable[[crt.Answer | crt.PutError], None]) -> None:
        """As CrtTransport.send: the PUT with the headers awscrt would send."""
        self.put(single.bucket, single.key, single.body, single.headers(), answered)

    def put(self, bucket: str, key: str, body: bytes, headers: list[tuple[str, str]],
            answered: Callable[[crt.Answer | crt.PutError], None]) -> None:
        self.pending.append(PendingPut(bucket, key, bytes(body),
                                       {k.lower(): v for k, v in headers}, answered,
                                       self.clock()))

    def deliver(self, index: int = 0) -> None:
        """Send the PUT to the store and hand its answer back (as awscrt's thread would)."""
        put = self.pending.pop(index)
        meta = {k.removeprefix("x-amz-meta-"): v for k, v in put.headers.items()
                if k.startswith("x-amz-meta-")}
        algorithm = put.headers.get("x-amz-sdk-checksum-algorithm", "").lower() or None
        sent = put.headers.get(f"x-amz-checksum-{algorithm}") if algorithm else None
        md5 = put.headers.get("content-md5")
        try:
            if md5 is not None and md5 != base64.b64encode(
                    hashlib.md5(put.body, usedforsecurity=False).digest()).decode():
                raise StoreError(400, "BadDigest", "The Content-MD5 you specified did not"
                                 " match what we received.")
            fields = self.store.put(put.bucket, put.key, put.body, meta, algorithm, sent,
                                    put.headers.get("if-none-match") == "*")
        except StoreError as exc:
            put.answered(crt.PutError(exc.status, exc.code if exc.status else None, str(exc)))
            return
        except AnswerLost as exc:
            put.answered(crt.PutError(None, None, str(exc)))
            return
        headers = {"etag": fields["etag"]}
        for name, value in fields.items():
            if name.startswith("checksum_"):
                headers["x-amz-checksum-" + name.removeprefix("checksum_")] = value
        put.answered(crt.Answer(headers))

    def drop(self, index: int = 0) -> None:
        """A PUT of a killed process: it never reached the store."""
        self.pending.pop(index)

    def time_out(self, reached: bool) -> None:
        """The request timeout: PUTs older than it end with no answer (as the transport's
        watchdog ends them); each reached the store before, or never will."""
        for put in [p for p in self.pending if self.clock() - p.started >= self.timeout]:
            answered = put.answered
            if reached:
                put.answered = lambda _answer: None
                self.deliver(self.pending.index(put))
            else:
                self.pending.remove(put)
            answered(crt.PutError(None, None, "request timed out", timed_out=True))

    def close(self, timeout: float = 0.0, abandon: bool = False) -> None:  # noqa: ARG002
        self.pending.clear()


class Inline:
    """An executor that runs what it is given when the model says so, in the model's thread:
    `submit` queues, `run_one` runs the oldest. The consumer's workers and the sink's
    verifications run here, one at a time, in an order the model chooses."""

    def __init__(self, immediate: bool = False) -> None:
        self.immediate = immediate
        self.waiting: list[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]] = []

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        self.waiting.append((fut, fn, args))
        if self.immediate:
            self.run_one()
        return fut

    def run_one(self) -> None:
        fut, fn, args = self.waiting.pop(0)
        try:
            fut.set_result(fn(*args))
        except Exception as exc:
            fut.set_exception(exc)

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:  # noqa: ARG002
        self.waiting.clear()


class MotoStore:
    """A real S3 API over HTTP (moto's server), seen the way the model sees Store: its
    objects and a log of writes, read back with boto3 after each step (`sync`). Faults and
    lies are Store's alone; this one is honest, conditional and echoes checksums, as moto is."""

    conditional, checksums, opaque_etags = True, "echo", False

    def __init__(self, client: Any, bucket: str) -> None:
        self.client, self.bucket = client, bucket
        self.faults = Faults()  # never set: only Store plays faults
        self.objects: dict[tuple[str, str], Obj] = {}
        self.writes: list[Write] = []
        self._seen: dict[str, tuple[str, Any]] = {}  # key -> ETag, LastModified

    def sync(self) -> None:
        """Every object whose ETag or time changed since the last look is a new write."""
        seen = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            for o in page.get("Contents", []):
                seen[o["Key"]] = (o["ETag"].strip('"'), o["LastModified"])
        for key, stamp in seen.items():
            if self._seen.get(key) == stamp:
                continue
            self._seen[key] = stamp
            got = self.client.get_object(Bucket=self.bucket, Key=key)
            meta = _trimmed(got.get("Metadata") or {})
            obj = Obj(got["Body"].read(), meta, stamp[0],
                      writer="sftppush" if "sftppush-source" in meta else "someone else")
            self.objects[(self.bucket, key)] = obj
            self.writes.append(Write(self.bucket, key, obj.body, obj.meta, obj.writer))
        for gone in [k for k in self._seen if k not in seen]:
            del self._seen[gone], self.objects[(self.bucket, gone)]
