"""What the store's answers mean: every failure classified once, and a PUT's answer checked.

Owns the mapping of a botocore, awscrt or network failure (and of a store's status and error
code) to TransientError, Throttled or PermanentError, with a message that names the call,
the bucket, the endpoint and the fix; the codes that mean "no such object"; and whether a
PUT's answer (checksum, MD5 ETag) verifies the body sent. Both transports and multipart
uploads use it. It never sends a request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import botocore.exceptions

from sftppush.errors import PermanentError, Throttled, TransientError
from sftppush.sink import crt
from sftppush.sink.parts import Checksum

log = logging.getLogger("sftppush.s3")  # its lines are the sink's, as before the split

NOT_FOUND = ("404", "NoSuchKey", "NotFound")  # a HEAD's answer for no object
# Error codes that mean "try the same request again later"; other 4xx codes are permanent.
TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestThrottled", "TooManyRequests",
    "RequestTimeout", "RequestTimeTooSkewed", "InternalError", "ServiceUnavailable",
    "ExpiredToken", "TokenRefreshRequired", "RequestExpired", "BadDigest",
    "XAmzContentSHA256Mismatch", "IncompleteBody",
    "OperationAborted",
})
# ... of which these ask the sender to slow down (as do 429 and 503, whatever their code).
THROTTLING_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestThrottled", "TooManyRequests",
})


def is_transient(code: str | None, status: int) -> bool:
    """An S3 error answer worth retrying as it is: throttling, 5xx, the transient codes."""
    return code in TRANSIENT_CODES or status >= 500 or status in (408, 429)


# What a store's error code means for an operator, and what to do about it. `{bucket}` and
# `{endpoint}` are filled in where the call names them.
_CREDENTIALS = ("check the credentials: AWS_PROFILE / defaults.awsprofile, AWS_ACCESS_KEY_ID"
                " and AWS_SECRET_ACCESS_KEY, or the shared credentials file"
                " (AWS_SHARED_CREDENTIALS_FILE; the consumer unit reads"
                " /etc/sftppush/aws-credentials)")
_CORRUPTED = "the store received other bytes than were sent (damaged on the way); sent again"
HINTS = {
    "NoSuchBucket": "bucket {bucket} does not exist at {endpoint}: create it, or fix"
                    " s3target (and endpoint_url, awsregion)",
    "SignatureDoesNotMatch": "the secret key does not match the access key: " + _CREDENTIALS,
    "InvalidAccessKeyId": "the store does not know this access key: " + _CREDENTIALS,
    "InvalidClientTokenId": "the store does not know this access key: " + _CREDENTIALS,
    "InvalidToken": "the session token is not valid: " + _CREDENTIALS,
    "ExpiredToken": "the session token expired: " + _CREDENTIALS,
    "AccessDenied": "these credentials may not do this on bucket {bucket}: check the IAM"
                    " policy (s3:PutObject, s3:GetObject, s3:ListBucket,"
                    " s3:AbortMultipartUpload, s3:ListBucketMultipartUploads), the bucket policy"
                    " and, under SSE-KMS, the key's policy",
    "AllAccessDisabled": "all access to bucket {bucket} is disabled by its owner",
    "AuthorizationHeaderMalformed": "the region is wrong: set defaults.awsregion to the"
                                    " bucket's region",
    "PermanentRedirect": "bucket {bucket} is in another region: set defaults.awsregion to it",
    "301": "bucket {bucket} is in another region: set defaults.awsregion to it",
    "403": "wrong credentials, or no permission on bucket {bucket}; " + _CREDENTIALS,
    "BadDigest": _CORRUPTED,
    "XAmzContentSHA256Mismatch": _CORRUPTED,
    "InvalidStorageClass": "the store does not offer this storage class: change"
                           " consumer.s3.storage_class",
    "KMS.NotFoundException": "the KMS key does not exist: check consumer.s3.sse_kms_key_id",
}
# The store refused a body it received damaged: worth a warning, though it is sent again.
CORRUPTED_CODES = frozenset({"BadDigest", "XAmzContentSHA256Mismatch"})
_UNREACHABLE = (  # what a failure without an answer says -> its meaning and fix
    (("CERTIFICATE_VERIFY_FAILED", "TLS_ERROR", "SSL validation failed"),
     "the TLS certificate of {endpoint} is not trusted: set AWS_CA_BUNDLE to the CA bundle"
     " that signed it"),
    (("Could not connect", "CONNECTION_REFUSED", "Connection refused"),
     "nothing answers at {endpoint}: check defaults.endpoint_url, and that the store runs"),
    (("Could not resolve", "DNS", "Name or service not known"),
     "the host of {endpoint} does not resolve: check defaults.endpoint_url and DNS"),
    (("timed out", "TIMEOUT", "no answer within", "Read timeout", "Connect timeout"),
     "no answer from {endpoint} in time: check the network to it"),
)


@dataclass(frozen=True)
class Where:
    """The bucket and endpoint a call went to, for messages that say where."""

    bucket: str | None = None
    endpoint: str | None = None

    def __str__(self) -> str:
        on = f" on bucket {self.bucket}" if self.bucket else ""
        return f"{on} at {self.endpoint}" if self.endpoint else on


def _hint(text: str, where: Where) -> str:
    return ": " + text.format(bucket=where.bucket or "?", endpoint=where.endpoint or "the"
                              " endpoint")


def verdict(status: int | None, code: str | None, message: str,
            where: Where = Where()) -> TransientError | PermanentError:
    """What a store's answer (status None: no answer at all) means for a retry; the message
    gains what the code means and what to do, where that is known."""
    if status is None:
        hint = next((h for marks, h in _UNREACHABLE if any(m in message for m in marks)), "")
        return TransientError(f"S3 unreachable{where}: {message}"
                              + (_hint(hint, where) if hint else ""))
    if code in HINTS:
        message += _hint(HINTS[code], where)
    if code in CORRUPTED_CODES:  # worth knowing even when the next attempt succeeds
        log.warning("store refused a body damaged on the way, sent again bucket=%s"
                    " endpoint=%s code=%s", where.bucket, where.endpoint, code)
    if code in THROTTLING_CODES or status in (429, 503):
        return Throttled(message)
    if is_transient(code, status):
        return TransientError(message)
    return PermanentError(message)


def classify(exc: BaseException, what: str = "S3",
             where: Where = Where()) -> TransientError | PermanentError:
    """The one place a botocore/awscrt/network failure becomes Transient or Permanent, its
    message naming the call, the bucket and endpoint, the store's answer and the fix."""
    if isinstance(exc, (TransientError, PermanentError)):
        return exc
    if isinstance(exc, botocore.exceptions.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", "")) or "Unknown"
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return verdict(status, code, f"{what} {exc.operation_name}{where}: {code} ({status}) "
                                     f"{err.get('Message', '')}".strip().rstrip("."), where)
    if isinstance(exc, crt.PutError):
        if exc.status is None:
            return verdict(None, None, f"PutObject {exc}", where)
        detail = str(exc)  # the store's <Message>, else "HTTP 404"
        said = detail if not exc.code and detail == f"HTTP {exc.status}" else \
            f"{exc.code or 'HTTP'} ({exc.status}) {detail}"
        return verdict(exc.status, exc.code, f"{what} PutObject{where}: {said}", where)
    if isinstance(exc, (botocore.exceptions.NoCredentialsError,
                        botocore.exceptions.PartialCredentialsError)):
        # The instance metadata service may be unreachable at boot: wait for it, never fail.
        return TransientError(f"{what}: no usable AWS credentials yet: {exc}: {_CREDENTIALS}")
    if isinstance(exc, (botocore.exceptions.ParamValidationError,
                        botocore.exceptions.NoRegionError)):
        return PermanentError(f"{what}{where}: {exc}")
    if isinstance(exc, botocore.exceptions.EndpointConnectionError):
        # Its text names the URL of the one object; the endpoint alone groups the errors.
        return verdict(None, None, f"{type(exc).__name__}: Could not connect", where)
    if isinstance(exc, (botocore.exceptions.BotoCoreError, OSError)):
        # Connection refused/reset, timeouts, truncated responses, credential refresh failures.
        return verdict(None, None, str(exc), where)
    return PermanentError(f"{what}{where}: {type(exc).__name__}: {exc}")


def verified_by(checksum: Checksum | None, sent: str | None, answered: str | None,
                etag: str | None, md5_hex: Callable[[], str], opaque: bool) -> str | None:
    """The checksum's name or "etag" when a PUT's answer confirms the body whose `checksum`
    was `sent` and whose MD5 is `md5_hex()` (asked only to compare an ETag); None when a HEAD
    must: the store answered no checksum, and its ETags are `opaque` (not the MD5 of the
    body, as under SSE-KMS). Raises TransientError for a checksum or an MD5 ETag that
    differs: the store holds other bytes than were sent."""
    if checksum and answered:
        if answered != sent:
            raise TransientError(f"S3 PutObject: store checksum {answered} does not match "
                                 "the body sent")
        return checksum.name
    if etag and not opaque:
        if etag.strip('"') != md5_hex():
            raise TransientError(f"S3 PutObject: store ETag {etag} is not the MD5 of the body"
                                 " sent: it holds other bytes (a store whose ETags are not"
                                 " MD5s encrypts: set consumer.s3.sse to say so)")
        return "etag"
    return None


def error_code(exc: BaseException) -> str | None:
    """The S3 error code behind one of our errors, if it came from a service response."""
    cause = exc.__cause__
    if isinstance(cause, botocore.exceptions.ClientError):
        return str(cause.response.get("Error", {}).get("Code"))
    return None
