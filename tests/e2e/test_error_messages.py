"""Issue 25, item 2: errors name what and where, say what they mean, and give the fix.

Real consumers (both lanes: a small file goes through awscrt, a 12 MiB one through boto3's
multipart upload) against rclone, which checks signatures and Content-MD5, or against a TLS
listener nobody trusts; a real metrics process on a port that is taken.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from tests.conftest import FAKE_REGION, RcloneS3, SourceTree, child_env, cli_argv, wait_until
from tests.e2e.identity import MIB, body
from tests.e2e.system import Product

FILES = {"small.csv": 4096, "large.csv": 12 * MIB}  # the awscrt lane, and boto3's multipart


def product(tmp_path: Path, source_tree: SourceTree, endpoint: str, bucket: str,
            env: dict[str, str], files: tuple[str, ...] = tuple(FILES),
            **consumer: object) -> Product:
    config = source_tree.write_config(bucket, defaults={"endpoint_url": endpoint,
                                                        "awsregion": FAKE_REGION},
                                      consumer={"s3": {"part_size_mb": 5}, **consumer})
    for name in files:
        (source_tree.upload / name).write_bytes(body(FILES[name], len(name)))
    env = {k: v for k, v in env.items() if k != "SFTPPUSH_DEFAULTS_ENDPOINT_URL"}  # the file's
    run = Product(tmp_path, config, env)
    assert run.cli("rescan").returncode == 0
    return run


def errors_once_tried(run: Product, states: tuple[str, ...]) -> dict[str, dict]:
    """Start a consumer; the entries by file name once each is in one of `states`."""
    run.start("consumer", "consume")
    try:
        def tried() -> dict[str, dict] | None:
            run.assert_alive()
            entries = {Path(e["path"]).name: e for e in run.entries()}
            return entries if all(e["state"] in states and e["last_error"]
                                  for e in entries.values()) else None

        return wait_until(tried, 60, f"both entries {states}", 0.2, detail=run.log_tail)
    finally:
        run.stop_all()


def test_a_wrong_secret_fails_with_where_and_how_to_fix_the_credentials(
        tmp_path, source_tree, rclone_s3: RcloneS3) -> None:
    bucket = rclone_s3.make_bucket("signed")
    env = {**rclone_s3.env(), "AWS_SECRET_ACCESS_KEY": "wrong" + rclone_s3.secret_key[5:]}
    run = product(tmp_path, source_tree, rclone_s3.endpoint_url, bucket, env, max_attempts=1)
    entries = errors_once_tried(run, ("failed",))
    for name, entry in entries.items():
        error = entry["last_error"]
        assert f"on bucket {bucket} at {rclone_s3.endpoint_url}" in error, (name, error)
        assert "check the credentials: AWS_PROFILE / defaults.awsprofile" in error, error
    # The fast path's PUT has the store's own words, not "HTTP 403" as before; the large
    # file's first call is a HEAD (is its key free?), whose 403 has no body to tell more.
    small = entries["small.csv"]["last_error"]
    assert "SignatureDoesNotMatch (403)" in small, small
    assert "does not match the signature you provided" in small, small
    assert "wrong credentials, or no permission on bucket" in entries["large.csv"]["last_error"]
    failed = list(run.events("failed"))
    assert len(failed) == 2 and all("check the credentials" in e["error"] for e in failed)


def test_a_missing_bucket_is_named_with_its_fix(tmp_path, source_tree, rclone_s3) -> None:
    run = product(tmp_path, source_tree, rclone_s3.endpoint_url, "no-such-bucket",
                  rclone_s3.env(), max_attempts=1)
    for name, entry in errors_once_tried(run, ("failed",)).items():
        assert "NoSuchBucket (404)" in entry["last_error"], (name, entry)
        assert (f"bucket no-such-bucket does not exist at {rclone_s3.endpoint_url}: create it,"
                " or fix s3target") in entry["last_error"], (name, entry)


def test_an_untrusted_certificate_waits_and_says_aws_ca_bundle(
        tmp_path, source_tree, rclone_s3, tls_listener: str) -> None:
    # boto3's lane only: awscrt's TLS (s2n) waits 10-30 s after a failed handshake before it
    # says so ("blinding"); its message is checked in tests/sink/test_s3.py.
    run = product(tmp_path, source_tree, tls_listener, "some-bucket", rclone_s3.env(),
                  files=("large.csv",))
    for name, entry in errors_once_tried(run, ("pending",)).items():
        # Transient: the file waits for the operator's fix, nothing fails meanwhile.
        assert f"the TLS certificate of {tls_listener} is not trusted: set AWS_CA_BUNDLE" \
            in entry["last_error"], (name, entry)
    assert all(e["level"] == "warning" for e in run.events("retry"))


def test_a_body_the_store_refused_as_damaged_is_a_warning(tmp_path, source_tree, rclone_s3,
                                                           fault_proxy) -> None:
    """rclone checks Content-MD5, which the fast path sends: a byte flipped on the way is
    BadDigest, a warning that says so, and the file goes up whole when it is sent again in
    place (not a retry through the queue)."""
    bucket = rclone_s3.make_bucket("digest")
    proxy = fault_proxy(rclone_s3.port)
    proxy.corrupt_put("small.csv")
    run = product(tmp_path, source_tree, proxy.url, bucket, rclone_s3.env(),
                  files=("small.csv",))
    done = run.start("consumer", "consume", "--drain").wait(120)
    assert done == 0, run.log_tail()
    assert proxy.flip is None  # the fault was used
    (warning,) = run.events("store")
    assert warning["level"] == "warning" and warning["code"] == "BadDigest"
    assert warning["bucket"] == bucket and warning["endpoint"] == proxy.url
    assert "damaged on the way" in warning["message"]
    (resent,) = run.events("resend")
    assert "BadDigest" in resent["error"] and "damaged on the way" in resent["error"]
    assert not list(run.events("retry"))
    assert (rclone_s3.root / bucket / "sftpuser1" / "upload" / "small.csv").read_bytes() == \
        body(FILES["small.csv"], len("small.csv"))


def test_a_busy_metrics_port_names_the_address(source_tree) -> None:
    taken = socket.create_server(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    try:
        result = subprocess.run(
            cli_argv("--config", source_tree.write_config(), "metrics", "--listen",
                     f"127.0.0.1:{port}"), env=child_env(), capture_output=True, text=True,
            timeout=60)
    finally:
        taken.close()
    assert result.returncode == 1, result
    assert result.stderr == (f"sftppush: metrics: cannot listen on 127.0.0.1:{port}: Address"
                             f" already in use: another process holds it (ss -ltnp 'sport ="
                             f" :{port}'), or give another with --listen\n")
