"""TLS at a distance: what handshakes cost the fast path over https, 40 ms from the store.

N x 4 KiB PUTs through sftppush's Sink.put (awscrt), behind the delay line, to a loopback
`rclone serve s3` over http, and over https through a TLS terminator (a self-signed
certificate for 127.0.0.1, trusted through AWS_CA_BUNDLE as an operator would): files/s of
each, the handshakes the terminator completed (one per connection: connections are kept
alive and reused; awscrt's Python API offers no TLS session resumption to save the rest),
and what one connection costs, the first PUT of a new sink less a PUT on its kept-alive
connection, with and without TLS.

    python -m tests.bench.bench_tls [--files N] [--rtt-ms 40] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from sftppush.config import Defaults, LogConfig, S3Config
from sftppush.sink.s3 import Sink
from sftppush.sink.transfer import Transfer
from tests.bench.common import REGION, RcloneS3, report, small_body
from tests.bench.delayline import DelayLine
from tests.e2e.tls import TlsTerminator, self_signed


def sink(endpoint: str) -> Sink:
    defaults = Defaults(userpath=Path("/"), s3target=None, awsprofile=None, awsregion=REGION,
                        endpoint_url=endpoint, log=LogConfig())
    return Sink.from_config(defaults, S3Config(), Transfer(fast=True))


def first_and_kept(endpoint: str, bucket: str, repeat: int) -> tuple[float, float]:
    """Medians (s) of a new sink's first PUT (its connection made first) and of the PUT that
    follows on the same, kept-alive connection."""
    first, kept = [], []
    for i in range(repeat):
        up = sink(endpoint)
        try:
            t0 = time.perf_counter()
            up.put(bucket, f"first/{i}", b"x" * 4096, {}).result(60)
            t1 = time.perf_counter()
            up.put(bucket, f"kept/{i}", b"y" * 4096, {}).result(60)
            t2 = time.perf_counter()
        finally:
            up.close()
        first.append(t1 - t0)
        kept.append(t2 - t1)
    return statistics.median(first), statistics.median(kept)


def many(endpoint: str, bucket: str, prefix: str, bodies: list[bytes]) -> tuple[float, str]:
    """Seconds for every body through one sink, all at once; the window it ended with."""
    up = sink(endpoint)
    try:
        t0 = time.perf_counter()
        futures = [up.put(bucket, f"{prefix}/{i:06d}", body, {}) for i, body in enumerate(bodies)]
        for future in futures:
            future.result(120)
        elapsed = time.perf_counter() - t0
        window = up.transport.window
        return elapsed, f"window {window.size} (largest {window.largest})"
    finally:
        up.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--rtt-ms", type=float, default=40.0)
    parser.add_argument("--repeat", type=int, default=5, help="new sinks timed for one PUT")
    args = parser.parse_args()
    bodies = [small_body(i) for i in range(args.files)]
    with RcloneS3() as server, tempfile.TemporaryDirectory(prefix="bench-tls-") as tmp:
        os.environ.update({k: v for k, v in server.env().items() if k.startswith("AWS_")})
        bucket = server.create_bucket()  # its client drops AWS_CA_BUNDLE: set it after
        cert, key = self_signed(Path(tmp))
        os.environ["AWS_CA_BUNDLE"] = str(cert)  # as an operator would trust a private CA
        terminator = TlsTerminator(server.port, cert, key)
        try:
            with DelayLine(server.port, args.rtt_ms) as plain, \
                    DelayLine(terminator.port, args.rtt_ms) as tls:
                http, https = plain.url, f"https://127.0.0.1:{tls.port}"
                http_first, http_kept = first_and_kept(http, bucket, args.repeat)
                before = terminator.handshakes
                https_first, https_kept = first_and_kept(https, bucket, args.repeat)
                http_s, http_window = many(http, bucket, "http", bodies)
                shakes = terminator.handshakes
                https_s, https_window = many(https, bucket, "https", bodies)
                shakes = terminator.handshakes - shakes
                assert terminator.handshakes - before >= args.repeat
        finally:
            terminator.close()
    n, rtt = args.files, args.rtt_ms / 1000
    label = f"{n:,} x 4 KiB PUTs (Sink.put, awscrt), {args.rtt_ms:g} ms round trip"
    report(f"{label}, https", n / https_s, "files/s", "the same over http", n / http_s)
    print(f"  # http: {http_window}; https: {https_window}, {shakes} TLS handshakes for"
          f" {n:,} PUTs", flush=True)
    connect_tls = https_first - https_kept
    connect_tcp = http_first - http_kept
    print(f"  # a new connection costs its first PUT {connect_tcp * 1000:.0f} ms over http"
          f" ({connect_tcp / rtt:.1f} round trips: TCP) and {connect_tls * 1000:.0f} ms over"
          f" https ({connect_tls / rtt:.1f}: TCP + TLS); a PUT on a kept-alive connection"
          f" {http_kept * 1000:.0f} / {https_kept * 1000:.0f} ms", flush=True)
    # The handshakes of a run happen side by side as the window opens its connections, so
    # the run pays about one handshake's time, not the sum.
    print(f"  # TLS handshakes' share: {shakes} of {n:,} PUTs opened a connection"
          f" ({100 * shakes / n:.1f}%); the run paid about {1000 * (connect_tls - connect_tcp):.0f}"
          f" ms of TLS in its {https_s:.2f} s"
          f" ({100 * (connect_tls - connect_tcp) / https_s:.1f}%)", flush=True)


if __name__ == "__main__":
    main()
