"""Mounts that change under a watched source while `sftppush run` runs, against moto: a tmpfs
and a bind mount made, a mount taken away from what it covered, a tmpfs over a source dir
itself. Their files are uploaded within seconds, and each change is logged.

The product runs in a mount namespace of its own (own_mounts), where the test
mounts and unmounts (in_mounts_of) and writes (seen_by): nothing is mounted on the machine
itself, and whatever a failed test left mounted goes away with its processes.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from tests.conftest import in_mounts_of, own_mounts, seen_by, wait_until
from tests.e2e.system import Product


def test_mounts_made_and_unmounted_under_a_watched_source_have_their_files_uploaded(
        tmp_path, source_tree, s3_bucket, s3_env, s3_client):
    up = source_tree.upload
    # Files under a directory that is mounted over from the start: hidden until the unmount.
    (up / "covered" / "sub2").mkdir(parents=True)
    underneath = {up / "covered" / "e.txt", up / "covered" / "sub2" / "f.txt"}
    for p in underneath:
        p.write_bytes(p.name.encode())
    (up / "fresh").mkdir()  # a tmpfs goes here while running
    (up / "bound").mkdir()  # and a bind mount of `outside` here
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.txt").write_bytes(b"x")
    other = source_tree.userpath / "sftpuser2" / "upload"  # mounted over while running
    other.mkdir(parents=True)
    config = source_tree.write_config(
        s3_bucket, defaults={"log": {"level": "info"}},
        watch={"source": [{"name": "sftpuser1", "paths": ["/upload"]},
                          {"name": "sftpuser2", "paths": ["/upload"]}]})
    product = Product(tmp_path, config, s3_env)
    try:
        run = product.start("run", "run", "--consumers", "1", wrap=own_mounts(
            f"mount -t tmpfs tmpfs {shlex.quote(str(up / 'covered'))}"))
        product.wait_watching()

        def uploaded(keys: set[str]) -> bool:
            product.assert_alive()
            listed = s3_client.list_objects_v2(Bucket=s3_bucket).get("Contents", [])
            return keys <= {o["Key"] for o in listed}

        in_mounts_of(run.pid, "mount", "-t", "tmpfs", "tmpfs", str(up / "fresh"))
        fresh = seen_by(run.pid, up / "fresh")
        (fresh / "deep").mkdir()
        (fresh / "a.txt").write_bytes(b"a")
        (fresh / "deep" / "b.txt").write_bytes(b"b")
        wait_until(lambda: uploaded({"sftpuser1/upload/fresh/a.txt",
                                     "sftpuser1/upload/fresh/deep/b.txt"}), 20,
                   "files written into a tmpfs mounted while running",
                   detail=lambda: product.log_tail())

        in_mounts_of(run.pid, "mount", "--bind", str(outside), str(up / "bound"))
        wait_until(lambda: uploaded({"sftpuser1/upload/bound/x.txt"}), 20,
                   "the file of a directory bind-mounted while running")
        (seen_by(run.pid, up / "bound") / "y.txt").write_bytes(b"y")
        wait_until(lambda: uploaded({"sftpuser1/upload/bound/y.txt"}), 20,
                   "a file written into the bind mount")

        assert all(p.exists() for p in underneath)
        in_mounts_of(run.pid, "umount", str(up / "covered"))
        wait_until(lambda: uploaded({"sftpuser1/upload/covered/e.txt",
                                     "sftpuser1/upload/covered/sub2/f.txt"}), 20,
                   "the files a mount covered, once unmounted")
        wait_until(lambda: not any(p.exists() for p in underneath), 20,
                   "the uncovered files deleted after upload")
        after = seen_by(run.pid, up / "covered" / "sub2" / "g.txt")
        after.write_bytes(b"g")  # what was uncovered is watched again
        wait_until(lambda: uploaded({"sftpuser1/upload/covered/sub2/g.txt"}), 20,
                   "a file written into the uncovered directory")

        in_mounts_of(run.pid, "mount", "-t", "tmpfs", "tmpfs", str(other))
        wait_until(lambda: [e for e in product.events() if "source dir back" in e["message"]],
                   20, "the source dir mounted over to be watched again")
        (seen_by(run.pid, other) / "z.txt").write_bytes(b"z")
        wait_until(lambda: uploaded({"sftpuser2/upload/z.txt"}), 20,
                   "a file written into a tmpfs mounted over a source dir")
        assert product.stop("run") == 0
    finally:
        product.stop_all()
    changes = {(e["dir"], e["why"]) for e in product.events() if e["event"] == "mount"}
    assert changes >= {(str(up / "fresh"), "mount"), (str(up / "bound"), "mount"),
                       (str(up / "covered"), "unmount")}, changes
    assert not list(Path(outside).iterdir()), "the bind mount's files were deleted as uploaded"
