"""Upload paths for many small bodies, one loopback `rclone serve s3`, same run: s5cmd cp,
rclone copy --transfers 16, boto3 put_object (1 and N threads), s3transfer's CRT transfer
manager, and sftppush's Sink.put (awscrt); plus zlib alone. This is the evidence for choosing the
consumer's fast path (issue 9). Prints rates, ratios to s5cmd, and client CPU per object.

    python -m tests.bench.bench_upload_paths [--files N] [--repeat R] [--threads T]
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import tempfile
import threading
import time
from pathlib import Path

from tests.bench.common import (
    REGION,
    RcloneS3,
    Timing,
    best_of,
    boto3_put,
    cpu_seconds,
    proc_cpu_seconds,
    rclone_copy,
    report,
    s5cmd_cp,
    small_body,
    zlib_decompress,
)


def crt_uploader_put(server: RcloneS3, bucket: str, prefix: str, bodies, in_flight: int) -> Timing:
    """sftppush's sink with its fast transport: every PUT verified, `in_flight` at once."""
    from pathlib import Path

    from sftppush.config import Defaults, LogConfig, S3Config
    from sftppush.sink.s3 import Sink
    from sftppush.sink.transfer import Transfer

    os.environ.update(AWS_ACCESS_KEY_ID=server.access_key,
                      AWS_SECRET_ACCESS_KEY=server.secret_key)
    defaults = Defaults(userpath=Path("/"), s3target=None, awsprofile=None, awsregion=REGION,
                        endpoint_url=server.endpoint, log=LogConfig())
    sink = Sink.from_config(defaults, S3Config(), Transfer(fast=True, in_flight=in_flight))
    sink.put(bucket, f"{prefix}/warm", b"", {}).result(30)
    started = time.perf_counter()
    futures = [sink.put(bucket, f"{prefix}/{i:06d}", body, {}) for i, body in enumerate(bodies)]
    errors = [f.exception() for f in futures if f.exception() is not None]
    elapsed = time.perf_counter() - started
    sink.close()
    if errors:
        raise RuntimeError(f"Sink.put: {len(errors)} errors, first {errors[0]}")
    return Timing(len(bodies), elapsed, sum(map(len, bodies)))


def crt_transfer_manager_put(server: RcloneS3, bucket: str, prefix: str, bodies,
                             in_flight: int) -> Timing:
    """s3transfer's CRTTransferManager built by hand: boto3.s3.transfer's own factory ignores
    endpoint_url (it would talk to AWS) and takes a machine-wide lock, so it cannot serve an
    S3-compatible store or several consumer processes."""
    import botocore.session
    from awscrt.auth import AwsCredentialsProvider
    from s3transfer.crt import (
        BotocoreCRTRequestSerializer,
        CRTTransferManager,
        create_s3_crt_client,
    )
    from s3transfer.subscribers import BaseSubscriber

    session = botocore.session.Session()
    session.set_credentials(server.access_key, server.secret_key)
    serializer = BotocoreCRTRequestSerializer(
        session, {"region_name": REGION, "endpoint_url": server.endpoint})
    client = create_s3_crt_client(REGION, AwsCredentialsProvider.new_static(
        server.access_key, server.secret_key), use_ssl=False)
    slots = threading.Semaphore(in_flight)

    class Release(BaseSubscriber):
        def on_done(self, *_, **__):
            slots.release()

    with CRTTransferManager(client, serializer) as manager:
        started = time.perf_counter()
        futures = []
        for i, body in enumerate(bodies):
            slots.acquire()
            futures.append(manager.upload(io.BytesIO(body), bucket, f"{prefix}/{i:06d}",
                                          extra_args={"Metadata": {"sftppush-sha256": "0"}},
                                          subscribers=[Release()]))
        for f in futures:
            f.result()
        elapsed = time.perf_counter() - started
    return Timing(len(bodies), elapsed, sum(map(len, bodies)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=2, help="keep the best of R runs each")
    parser.add_argument("--threads", type=int, default=8, help="boto3 threads for the N case")
    parser.add_argument("--in-flight", type=int, default=32)
    args = parser.parse_args()
    n = args.files
    bodies = [small_body(i) for i in range(n)]
    with RcloneS3() as server, tempfile.TemporaryDirectory(prefix="bench-paths-") as tmp:
        bucket = server.create_bucket()
        src = Path(tmp) / "src"
        src.mkdir()
        for i, body in enumerate(bodies):
            (src / f"f{i:06d}.csv").write_bytes(body)
        runs = iter(range(10**6))

        def measure(fn, fn_args):
            cpu0, srv0 = cpu_seconds(), proc_cpu_seconds(server.process.pid)
            t = best_of(args.repeat, lambda: fn(*fn_args(next(runs))))
            cpu = (cpu_seconds() - cpu0) / args.repeat / n * 1000
            srv = (proc_cpu_seconds(server.process.pid) - srv0) / args.repeat / n * 1000
            return t, f"client {cpu:.2f} ms CPU/object, server {srv:.2f}"

        s5, s5_cpu = measure(s5cmd_cp, lambda r: (server, src, bucket, f"s5/{r}"))
        rc, rc_cpu = measure(rclone_copy, lambda r: (server, src, bucket, f"rc/{r}"))
        report(f"s5cmd cp {n} x 4 KiB", s5.rate, "files/s")
        print(f"  # {s5_cpu}")
        report(f"rclone copy --transfers 16 {n} x 4 KiB", rc.rate, "files/s", "s5cmd", s5.rate)
        print(f"  # {rc_cpu}")
        cases = [
            ("boto3 put_object, 1 thread", boto3_put,
             lambda r: (server, bucket, f"b1/{r}", bodies, 1)),
            (f"boto3 put_object, {args.threads} threads", boto3_put,
             lambda r: (server, bucket, f"bn/{r}", bodies, args.threads)),
            (f"s3transfer CRTTransferManager, {args.in_flight} in flight",
             crt_transfer_manager_put, lambda r: (server, bucket, f"tm/{r}", bodies,
                                                  args.in_flight)),
            (f"sftppush's Sink.put (awscrt), {args.in_flight} in flight", crt_uploader_put,
             lambda r: (server, bucket, f"crt/{r}", bodies, args.in_flight)),
        ]
        for name, fn, fn_args in cases:
            t, cpu = measure(fn, fn_args)
            report(name, t.rate, "files/s", "s5cmd", s5.rate)
            print(f"  # {cpu}")
        blobs = [gzip.compress(b, 6) for b in bodies]
        z = best_of(args.repeat, lambda: zlib_decompress(blobs))
        report("zlib decompress alone, 4 KiB gzip", z.rate, "files/s", "s5cmd", s5.rate)


if __name__ == "__main__":
    main()
