"""Issue 25, item 1: `config check` checks the environment as the user it runs as.

Each case is the real command against a real store (rclone serve s3, which checks signatures)
or a real TLS listener, with the fault an operator meets in their first hour: a wrong secret,
a bucket that does not exist, a store that is not running, an untrusted certificate, a source
or queue directory the service cannot write (a read-only bind mount in a mount namespace of
the command's own), a process without CAP_LEASE in front of another user's directory. Each
problem is one line naming where it is and what to do; the exit status is 1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from sftppush.locals3 import free_port
from tests.conftest import FAKE_REGION, RcloneS3, SourceTree, child_env, cli_argv


def check(source_tree: SourceTree, server: RcloneS3 | None, bucket: str, *extra: str,
          endpoint: str | None = None, env: dict[str, str] | None = None,
          wrap: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """`sftppush config check` as a real process (run through `wrap`, if given)."""
    source_tree.write_config(bucket, defaults={
        "endpoint_url": endpoint or (server.endpoint_url if server else None),
        "awsregion": FAKE_REGION})
    base = server.env() if server else {"AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
                                        "AWS_SECRET_ACCESS_KEY": "x" * 40}
    base.pop("SFTPPUSH_DEFAULTS_ENDPOINT_URL", None)
    base.update({"AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
                 "AWS_EC2_METADATA_DISABLED": "true"})
    return subprocess.run([*wrap, *cli_argv("--config", source_tree.config_path, "config",
                                            "check", *extra)],
                          env=child_env({**base, **(env or {})}), capture_output=True,
                          text=True, timeout=120)


def problems(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("sftppush: problem:")]


def test_a_good_environment_passes_and_leaves_nothing_behind(source_tree, rclone_s3) -> None:
    bucket = rclone_s3.make_bucket("good")
    source_tree.queue_path.parent.mkdir()
    before = sorted(source_tree.userpath.rglob("*"))
    result = check(source_tree, rclone_s3, f"{bucket}/in")
    assert result.returncode == 0, result.stderr
    assert "config ok" in result.stdout
    (ok,) = [line for line in result.stdout.splitlines() if line.startswith("environment ok")]
    assert f"bucket {bucket}/in at {rclone_s3.endpoint_url} (write)" in ok
    assert f"{source_tree.upload} (read, write, leases)" in ok
    assert f"queue directory {source_tree.queue_path.parent} (write)" in ok
    assert "awscrt" in ok and "zstandard" in ok
    # The probes are gone: no object, no open multipart upload, no file in the tree.
    assert [p for p in (rclone_s3.root / bucket).rglob("*") if not p.is_dir()] == []
    client = rclone_s3.client()
    assert client.list_objects_v2(Bucket=bucket).get("Contents", []) == []
    try:
        uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    except client.exceptions.ClientError as exc:  # rclone's answer when there are none
        assert exc.response["Error"]["Code"] == "NoSuchUpload"
        uploads = []
    assert uploads == []
    assert sorted(source_tree.userpath.rglob("*")) == before
    assert list(source_tree.queue_path.parent.iterdir()) == []


def test_a_wrong_secret_is_named_with_where_to_fix_the_credentials(source_tree,
                                                                   rclone_s3) -> None:
    bucket = rclone_s3.make_bucket("signed")
    result = check(source_tree, rclone_s3, bucket,
                   env={"AWS_SECRET_ACCESS_KEY": "wrong" + rclone_s3.secret_key[5:]})
    assert result.returncode == 1, result
    (line,) = problems(result)
    assert "SignatureDoesNotMatch" in line and f"bucket {bucket}" in line
    assert rclone_s3.endpoint_url in line
    assert "AWS_PROFILE" in line and "awsprofile" in line and "check the credentials" in line
    assert "Traceback" not in result.stderr


def test_a_bucket_that_does_not_exist_is_named(source_tree, rclone_s3) -> None:
    result = check(source_tree, rclone_s3, "no-such-bucket")
    assert result.returncode == 1, result
    (line,) = problems(result)
    assert "bucket no-such-bucket does not exist at " + rclone_s3.endpoint_url in line
    assert "s3target" in line


def test_a_store_that_does_not_answer_names_the_endpoint(source_tree) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    result = check(source_tree, None, "some-bucket", endpoint=endpoint)
    assert result.returncode == 1, result
    (line,) = problems(result)
    assert f"nothing answers at {endpoint}" in line and "endpoint_url" in line


def test_an_untrusted_certificate_points_at_aws_ca_bundle(source_tree, tls_listener) -> None:
    result = check(source_tree, None, "some-bucket", endpoint=tls_listener)
    assert result.returncode == 1, result
    (line,) = problems(result)
    assert f"the TLS certificate of {tls_listener} is not trusted" in line
    assert "AWS_CA_BUNDLE" in line


def read_only(*paths: Path) -> tuple[str, ...]:
    """A prefix that runs a command in a mount namespace of its own where `paths` are
    read-only bind mounts (as ProtectSystem=strict leaves what ReadWritePaths= does not name);
    root gets EROFS there as anyone would."""
    script = " && ".join(f'mount --bind -o ro "${i + 1}" "${i + 1}"' for i in range(len(paths)))
    return ("unshare", "--mount", "--propagation", "private", "sh", "-c",
            f'{script} && shift {len(paths)} && exec "$@"', "sh", *map(str, paths))


def test_unwritable_upload_and_queue_directories_are_each_named(source_tree,
                                                                rclone_s3) -> None:
    assert shutil.which("unshare"), "util-linux's unshare is needed"
    bucket = rclone_s3.make_bucket("dirs")
    source_tree.queue_path.parent.mkdir()
    result = check(source_tree, rclone_s3, bucket,
                   wrap=read_only(source_tree.upload, source_tree.queue_path.parent))
    assert result.returncode == 1, result
    upload, queue = problems(result)
    assert f"directory {source_tree.upload} is not writable by user root" in upload
    assert "Read-only file system" in upload and "ReadWritePaths=" in upload
    assert f"queue directory {source_tree.queue_path.parent} is not writable" in queue


def test_no_cap_lease_in_front_of_another_users_directory(source_tree, rclone_s3) -> None:
    bucket = rclone_s3.make_bucket("leases")
    os.chown(source_tree.upload, 65534, 65534)  # the SFTP user's, say
    no_lease = ("setpriv", "--inh-caps=-lease", "--bounding-set=-lease", "--")
    result = check(source_tree, rclone_s3, bucket, wrap=no_lease)
    assert result.returncode == 1, result
    (line,) = problems(result)
    assert f"user root lacks CAP_LEASE and {source_tree.upload} belongs to" in line
    assert "AmbientCapabilities=CAP_LEASE" in line
    # The same as the files' owner would have CAP_LEASE no matter: it owns what it leases.
    os.chown(source_tree.upload, 0, 0)
    assert check(source_tree, rclone_s3, bucket, wrap=no_lease).returncode == 0


def test_no_environment_skips_the_environment(source_tree) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    result = check(source_tree, None, "no-such-bucket", "--no-environment", endpoint=endpoint)
    assert result.returncode == 0, result
    assert result.stdout.startswith("config ok") and "environment ok" not in result.stdout
    assert result.stderr == ""
