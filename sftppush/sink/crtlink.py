"""Where a fast-path PUT goes and what it goes over: the store's address, SigV4 signing and
the kept-alive connections of awscrt's HTTP client.

Owns turning a bucket and key into a host and path (the endpoint URL, or AWS's virtual-hosted
buckets), the signing config (renewed each minute: it carries its date), TLS (the system's
trust store or the CA bundle boto3 is given) and the pool of idle connections per host. It
never sends a request, counts what is in flight or decides what an answer means (crt.py and
answers.py do).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

try:
    from awscrt import auth, http, io
except ImportError:  # the pure-boto3 path works without it
    auth = http = io = None


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    token: str | None = None


class Endpoint:
    """The store's address and how to open a connection to it. `endpoint_url` None: AWS,
    each bucket its own host in `region` (over TLS)."""

    def __init__(self, region: str, endpoint_url: str | None, connect_timeout_ms: int,
                 ca_file: str | None) -> None:
        self.region = region
        url = urlsplit(endpoint_url) if endpoint_url else None
        self.host = url.netloc if url else None  # None = AWS, virtual-hosted per bucket
        self.hostname = url.hostname if url else None  # what to connect to
        self.base = url.path.rstrip("/") if url else ""
        secure = not (url and url.scheme == "http")
        self.port = (url.port if url and url.port else None) or (443 if secure else 80)
        self.tls = None
        if secure:  # the system's trust store, or the CA bundle boto3 is given too
            options = io.TlsContextOptions()
            if ca_file:
                options.override_default_trust_store_from_path(ca_filepath=ca_file)
            self.tls = io.ClientTlsContext(options)
        # awscrt's shared event loops: they live as long as the process, as the thread
        # states that keep_thread_state gives them do.
        self.bootstrap = io.ClientBootstrap.get_or_create_static_default()
        self.socket = io.SocketOptions()
        self.socket.connect_timeout_ms = connect_timeout_ms

    def virtual_hosted(self) -> bool:
        """True when buckets are addressed as host names (AWS itself)."""
        return self.host is None

    def address(self, bucket: str, key: str) -> tuple[str, str]:
        """The Host header and the path of a PUT to bucket/key."""
        if self.host:
            return self.host, f"{self.base}/{bucket}/{quote(key, safe='/~')}"
        return f"{bucket}.s3.{self.region}.amazonaws.com", f"/{quote(key, safe='/~')}"

    def connect(self, host: str) -> Future[Any]:
        """A new connection to `host` (the endpoint's, or a bucket's on AWS); may raise."""
        name = self.hostname or host
        tls = None
        if self.tls is not None:
            tls = self.tls.new_connection_options()
            tls.set_server_name(name)
        return http.HttpClientConnection.new(
            host_name=name, port=self.port, bootstrap=self.bootstrap,
            socket_options=self.socket, tls_connection_options=tls)


class Signer:
    """SigV4 for S3 with an unsigned payload (the body is verified by its checksum or ETag)."""

    def __init__(self, region: str,
                 credentials: Callable[[], Credentials] | Credentials) -> None:
        self.region = region
        self.provider = _provider(credentials)
        self.config: tuple[float, Any] = (0.0, None)  # (made at, config)

    def sign(self, request: Any) -> Future[Any]:
        """Sign `request` in place; the future is done when it is. May raise."""
        return auth.aws_sign_request(request, self._config())

    def _config(self) -> Any:
        """The signing config, renewed each minute: it carries the date it was made at."""
        made, config = self.config
        now = time.monotonic()
        if config is None or now - made > 60:
            config = auth.AwsSigningConfig(
                algorithm=auth.AwsSigningAlgorithm.V4,
                signature_type=auth.AwsSignatureType.HTTP_REQUEST_HEADERS,
                credentials_provider=self.provider, region=self.region, service="s3",
                signed_body_value=auth.AwsSignedBodyValue.UNSIGNED_PAYLOAD,
                signed_body_header_type=auth.AwsSignedBodyHeaderType.X_AMZ_CONTENT_SHA_256,
                use_double_uri_encode=False, should_normalize_uri_path=False)
            self.config = (now, config)
        return config


class Pool:
    """Open connections not in use, per host; at most `limit()` per host are kept."""

    def __init__(self, limit: Callable[[], int]) -> None:
        self.limit = limit
        self.idle: dict[str, list[Any]] = {}
        self.lock = threading.Lock()
        self.closed = False
        self.misses = 0  # takes that found none: each opens a new connection

    def take(self, host: str) -> Any:
        """An open idle connection to `host`, or None (the caller opens one)."""
        with self.lock:
            connections = self.idle.get(host, [])
            while connections:
                connection = connections.pop()
                if connection.is_open():
                    return connection
            self.misses += 1
        return None

    def give_back(self, host: str, connection: Any) -> None:
        if connection.is_open() and not self.closed:
            with self.lock:
                idle = self.idle.setdefault(host, [])
                if len(idle) < self.limit():  # a pool as big as the window, no bigger
                    idle.append(connection)
                    return
        connection.close()

    def close(self) -> None:
        """Close the idle connections; those given back later are closed then."""
        with self.lock:
            self.closed = True
            idle, self.idle = self.idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()


def _provider(credentials: Callable[[], Credentials] | Credentials) -> Any:
    if isinstance(credentials, Credentials):
        return auth.AwsCredentialsProvider.new_static(
            credentials.access_key, credentials.secret_key, credentials.token)

    def delegate() -> Any:
        c = credentials()
        return auth.AwsCredentials(c.access_key, c.secret_key, c.token)

    return auth.AwsCredentialsProvider.new_delegate(delegate)
