"""The boto3 side of the store: the session (credential chain), the one S3 client, the
object options of the config, and the session's credentials handed to awscrt.

Owns how both transports are set up from the config; it never sends a request itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import boto3
import botocore.auth
import botocore.config
import botocore.credentials
import botocore.exceptions

from sftppush.config import Defaults, S3Config
from sftppush.errors import ConfigError, TransientError
from sftppush.sink import crt
from sftppush.sink.transfer import Transfer


def make_session(defaults: Defaults) -> boto3.session.Session:
    """The credential chain of the config: the named profile, else env, files, role."""
    try:
        return boto3.session.Session(profile_name=defaults.awsprofile,
                                     region_name=defaults.awsregion)
    except botocore.exceptions.ProfileNotFound:
        raise ConfigError("config: defaults.awsprofile names a profile that does not exist") \
            from None


def make_client(session: boto3.session.Session, defaults: Defaults, s3: S3Config,
                transfer: Transfer) -> Any:
    """The process's one boto3 S3 client (thread-safe)."""
    config = botocore.config.Config(
        max_pool_connections=transfer.pool_size,
        retries={"total_max_attempts": 1},  # tenacity retries, with waits we control
        connect_timeout=transfer.connect_timeout,
        read_timeout=transfer.read_timeout,
        tcp_keepalive=True,
        request_checksum_calculation=s3.checksum,
        response_checksum_validation=s3.checksum,
        # S3-compatible stores on an endpoint URL rarely do virtual-hosted buckets.
        s3={"addressing_style": "path"} if defaults.endpoint_url else None,
    )
    client = session.client("s3", endpoint_url=defaults.endpoint_url, config=config)
    client.meta.events.register_last("before-call.s3", _no_expect)
    client.meta.events.register_first("choose-signer.s3.UploadPart", _part_signer)
    return client


class PartSigV4(botocore.auth.S3SigV4Auth):
    """botocore's S3 SigV4 signer, whose rule for a streamed body sees a part's checksum.

    Over https, botocore leaves a streamed body that carries a checksum header out of the
    signature: TLS and the checksum guard it. It looks for that header under the name its
    own checksum step chose, and a part's checksum, which the sink gives itself, has none;
    so every part was hashed once more (sha256, about 0.8 CPU s a GiB) to no use. Here an
    `x-amz-checksum-*` header counts too. Over http, or where `payload_signing_enabled` is
    set, botocore's rule stands."""

    def _should_sha256_sign_payload(self, request: Any) -> bool:
        s3 = getattr(request.context.get("client_config"), "s3", None) or {}
        if s3.get("payload_signing_enabled") is None and request.url.startswith("https") \
                and request.context.get("has_streaming_input", False) \
                and any(name.lower().startswith("x-amz-checksum-") for name in request.headers):
            return False
        return super()._should_sha256_sign_payload(request)


# That signer under a name of ours (a new entry: the map's others stay).
PART_SIGNER = "sftppush-s3v4"
botocore.auth.AUTH_TYPE_MAPS.setdefault(PART_SIGNER, PartSigV4)


def _part_signer(context: dict[str, Any], signing_name: str, **_: Any) -> str | None:
    """UploadPart signed by botocore's Python S3 SigV4 signer (as PartSigV4), not the awscrt
    one botocore picks when awscrt is installed. Over http both sign the payload's sha256;
    the awscrt one reads the part through Python 4 KiB at a time to hash it, the Python one
    1 MiB at a time with hashlib: about 1 s of CPU per GiB less, a tenth of what a large
    file costs the consumer. Over https PartSigV4 leaves the body out (its checksum is sent).
    Only the case where botocore would choose plain "s3v4" is taken (None: botocore's
    choice stands)."""
    if signing_name == "s3" and context.get("auth_type") == "v4" \
            and not context.get("unsigned_payload"):
        return PART_SIGNER
    return None


def _no_expect(params: dict[str, Any], **_: Any) -> None:
    """botocore makes every PUT body wait for a `100 Continue`, parts included: one more
    round trip before its first byte, so that a part of 8 MiB 100 ms away takes two round
    trips and its sending instead of one. What the wait can save is sending one body (at
    most a part) that the store refuses, and rarely so: CreateMultipartUpload went through
    with the same credentials."""
    (params.get("headers") or {}).pop("Expect", None)


def options(s3: S3Config) -> dict[str, str]:
    """The object options of the config, as boto3 parameters (see OPTION_HEADERS)."""
    given = {"StorageClass": s3.storage_class, "ServerSideEncryption": s3.sse,
             "SSEKMSKeyId": s3.sse_kms_key_id}
    return {name: value for name, value in given.items() if value}


OPTION_HEADERS = {"StorageClass": "x-amz-storage-class",
                  "ServerSideEncryption": "x-amz-server-side-encryption",
                  "SSEKMSKeyId": "x-amz-server-side-encryption-aws-kms-key-id"}


def crt_credentials(session: boto3.session.Session
                     ) -> crt.Credentials | Callable[[], crt.Credentials]:
    """The session's credentials for awscrt. Keys that never change (environment, shared
    files, explicit) are handed over as they are, so that signing a PUT never calls back into
    Python from a CRT thread; refreshable ones (roles, SSO) and none yet go through `_frozen`.
    The session caches what it resolved, so this is what `_frozen` would return every time."""
    creds = session.get_credentials()
    if creds is None or isinstance(creds, botocore.credentials.RefreshableCredentials):
        return _frozen(session)
    frozen = creds.get_frozen_credentials()
    return crt.Credentials(frozen.access_key, frozen.secret_key, frozen.token)


def _frozen(session: boto3.session.Session) -> Callable[[], crt.Credentials]:
    """The session's current credentials for awscrt (refreshed by botocore when they expire)."""
    def current() -> crt.Credentials:
        creds = session.get_credentials()
        if creds is None:
            raise TransientError("S3: no usable AWS credentials yet")
        frozen = creds.get_frozen_credentials()
        return crt.Credentials(frozen.access_key, frozen.secret_key, frozen.token)

    return current
