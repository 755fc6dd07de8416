"""One single PUT, whichever transport sends it: the request built once, and what its answer
means.

Owns the record of one single PUT (where, the body, our metadata, its sha256 and the store
checksum sent, conditional or not, and the `Shape` every PUT of its sink has); what it looks
like to each transport (headers for awscrt, put_object's arguments for boto3), so that
either sends it from the record alone; and `settle`, the one reading of the store's answer
to it: verified, left for a HEAD to verify, an object already at the key (412 to a
conditional PUT: whose is it?), or an error. It never sends a request and never waits on
the store: the transports send, and s3.py does what `settle` says.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from sftppush.outcomes import Uploaded
from sftppush.sink.answers import Where, classify, verified_by
from sftppush.sink.crtput import Answer, PutError
from sftppush.sink.parts import Checksum

SHA256_KEY = "sftppush-sha256"
SOURCE_KEY = "sftppush-source"
NAME_KEY = "sftppush-original-name"
# User metadata as request headers, the names sftppush sends spelled once.
_META = {name: f"x-amz-meta-{name}" for name in (
    SOURCE_KEY, NAME_KEY, "sftppush-original-size", "sftppush-mtime", SHA256_KEY)}


@dataclass(frozen=True)
class Shape:
    """What every single PUT of one sink has: the store `checksum` (None under
    `when_required`), the request options of SPEC 3 (`extra`, in put_object's names, and
    `common`, the same as awscrt headers after Content-Type), and whether an ETag may not be
    an MD5 (`opaque`: SSE-KMS). Built once per sink."""

    checksum: Checksum | None
    extra: dict[str, Any]
    common: tuple[tuple[str, str], ...]
    opaque: bool = False


@dataclass(frozen=True)
class Single:
    """One single PUT of `body` to bucket/key with our `metadata` (its sha256 is added when
    sent); `sent` is the store checksum it carries, `if_absent` makes it conditional."""

    shape: Shape = field(repr=False)
    bucket: str
    key: str
    body: bytes | bytearray = field(repr=False)
    metadata: dict[str, str]
    sha: str
    sent: str | None
    if_absent: bool

    @classmethod
    def of(cls, shape: Shape, bucket: str, key: str, body: bytes | bytearray,
           metadata: dict[str, str], if_absent: bool) -> Single:
        return cls(shape, bucket, key, body, metadata, hashlib.sha256(body).hexdigest(),
                   shape.checksum.of(body) if shape.checksum else None, if_absent)

    @cached_property
    def md5(self) -> bytes:
        """The body's MD5, computed once if at all (awscrt's Content-MD5, an ETag check)."""
        return hashlib.md5(self.body, usedforsecurity=False).digest()

    def unconditional(self) -> Single:
        """The same PUT, replacing what is at the key (once it is known to be ours)."""
        return replace(self, if_absent=False)

    def headers(self) -> list[tuple[str, str]]:
        """Its headers for the awscrt transport (Host and Content-Length are the
        transport's)."""
        checksum = self.shape.checksum
        headers = [("Content-MD5", base64.b64encode(self.md5).decode()), *self.shape.common]
        if checksum and self.sent:
            headers.append((checksum.header, self.sent))
        headers += [(_META.get(name) or f"x-amz-meta-{name}", value)
                    for name, value in self.metadata.items()]
        headers.append((_META[SHA256_KEY], self.sha))
        if self.if_absent:
            headers.append(("If-None-Match", "*"))
        return headers

    def arguments(self, body: Any) -> dict[str, Any]:
        """Its arguments for boto3's put_object, sending `body` (the bytes, or a stream of
        them)."""
        checksum = self.shape.checksum
        args = {"Bucket": self.bucket, "Key": self.key, "Body": body,
                "Metadata": {**self.metadata, SHA256_KEY: self.sha}, **self.shape.extra}
        if checksum:
            args.update({"ChecksumAlgorithm": checksum.name.upper(), checksum.param: self.sent})
        if self.if_absent:
            args["IfNoneMatch"] = "*"
        return args

    def uploaded(self, how: str, etag: str) -> Uploaded:
        return Uploaded(self.bucket, self.key, len(self.body), self.sha, 0, how,
                        etag.strip('"'))


@dataclass(frozen=True)
class Verified:
    """The answer proves the store holds the body: `how` (checksum name or "etag")."""

    how: str
    etag: str


@dataclass(frozen=True)
class Unverified:
    """A 2xx whose answer proves nothing (no checksum, an opaque ETag): a HEAD must."""

    etag: str


@dataclass(frozen=True)
class Taken:
    """412 to a conditional PUT: an object is at the key; whose, a HEAD tells."""


Settled = Verified | Unverified | Taken


def settle(single: Single, answer: Answer | PutError, where: Callable[[], Where]) -> Settled:
    """What the store's `answer` to `single` means; raises TransientError (Throttled) or
    PermanentError for an error, or for an answer that shows other bytes were stored.
    `where` names the bucket and endpoint in an error's message."""
    if isinstance(answer, PutError):
        if answer.status == 412 and single.if_absent:
            return Taken()
        raise classify(answer, where=where())
    etag, checksum = answer.headers.get("etag", ""), single.shape.checksum
    how = verified_by(checksum, single.sent,
                      answer.headers.get(checksum.header) if checksum else None, etag,
                      lambda: single.md5.hex(), single.shape.opaque)
    return Verified(how, etag) if how else Unverified(etag)
