"""Two sources that reach one folder: a bind mount shares `ua/up/shared` into `ub`'s home as
`ub/up`, as chrooted SFTP homes are usually given a shared folder. One directory on disk,
two paths: each file must be credited to one source only (SPEC 7: each source's files go
to its own prefix), and `config check` must refuse the configuration, naming both.

Real bind mounts, made in a mount namespace of the product's own (own_mounts).
"""

from __future__ import annotations

import shlex
import subprocess

from tests.conftest import child_env, cli_argv, own_mounts, seen_by, wait_until
from tests.e2e.system import Product

SOURCES = {"source": [{"name": "ua", "paths": ["/up"]}, {"name": "ub", "paths": ["/up"]}]}


def shared_homes(source_tree):
    """ua/up/shared, bind-mounted as ub/up; the shell command that mounts it."""
    shared = source_tree.userpath / "ua" / "up" / "shared"
    shared.mkdir(parents=True)
    target = source_tree.userpath / "ub" / "up"
    target.mkdir(parents=True)
    return shared, target, f"mount --bind {shlex.quote(str(shared))} {shlex.quote(str(target))}"


def test_config_check_refuses_two_sources_that_reach_one_folder_naming_both(
        source_tree, run_cli):
    shared, target, bind = shared_homes(source_tree)
    config = source_tree.write_config(watch=SOURCES)
    checked = subprocess.run([*own_mounts(bind), *cli_argv("--config", config, "config", "check")],
                             capture_output=True, text=True, timeout=60, env=child_env())
    assert checked.returncode == 2, checked
    (line,) = checked.stderr.strip().splitlines()
    assert "sources ua and ub reach the same directory" in line
    assert str(shared) in line and str(target) in line
    # No bind mount: valid (the store is not asked: no environment check).
    assert run_cli("--config", config, "config", "check", "--no-environment").returncode == 0


def test_config_check_refuses_a_source_dir_reached_through_a_symlink(source_tree, run_cli):
    real = source_tree.userpath / "ua" / "real"
    real.mkdir(parents=True)
    (source_tree.userpath / "ua" / "up").symlink_to(real)
    config = source_tree.write_config(watch={"source": [{"name": "ua", "paths": ["/up"]}]})
    checked = run_cli("--config", config, "config", "check")
    assert checked.returncode == 2, checked
    (line,) = checked.stderr.strip().splitlines()
    assert f"reached through the symlink {source_tree.userpath / 'ua' / 'up'}" in line


def test_a_bind_mounted_shared_folder_is_uploaded_once_for_the_first_source_only(
        tmp_path, source_tree, s3_bucket, s3_env, s3_client):
    # On 05b1e90: present.txt was queued twice (ua/up/shared/present.txt and
    # ub/up/present.txt), and every file ua wrote into shared/ was uploaded as ub/up/...
    shared, target, bind = shared_homes(source_tree)
    (shared / "present.txt").write_bytes(b"present at start")
    config = source_tree.write_config(s3_bucket, defaults={"log": {"level": "info"}},
                                      watch=SOURCES)
    product = Product(tmp_path, config, s3_env)

    def keys() -> set[str]:
        return {o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket).get(
            "Contents", [])}

    try:
        run = product.start("run", "run", "--consumers", "1",
                            wrap=own_mounts(bind))
        wait_until(lambda: "ua/up/shared/present.txt" in keys(), 30, "present.txt uploaded")
        (shared / "live.txt").write_bytes(b"written by ua")
        (seen_by(run.pid, target) / "via-ub.txt").write_bytes(b"written by ub")
        wanted = {"ua/up/shared/present.txt", "ua/up/shared/live.txt",
                  "ua/up/shared/via-ub.txt"}
        wait_until(lambda: wanted <= keys(), 30, "the shared folder's files uploaded",
                   detail=keys)
        wait_until(lambda: not list(shared.iterdir()), 30, "the uploaded files deleted")
        assert product.stop("run") == 0
        assert keys() == wanted, "uploaded once each, under the first source's prefix only"
        entries = product.entries()
        assert sorted(e["path"] for e in entries) == sorted(
            str(shared / n) for n in ("present.txt", "live.txt", "via-ub.txt"))

        # A rescan credits the shared folder the same way, and says what it skipped.
        (shared / "late.txt").write_bytes(b"late")
        rescan = product.start("rescan", "rescan",
                               wrap=own_mounts(bind))
        assert rescan.wait(60) == 0
        late = [e for e in product.entries() if e["path"].endswith("late.txt")]
        assert [e["path"] for e in late] == [str(shared / "late.txt")]
    finally:
        product.stop_all()
    (refused,) = [e for e in product.events() if e["event"] == "same"]
    assert (refused["source"], refused["dir"], refused["same_as"], refused["first_source"]) \
        == ("ub", str(target), str(shared), "ua"), product.log_tail()
    skipped = [e for e in product.events() if e["event"] == "rescan" and "skipped" in
               e["message"]]
    assert skipped and str(target) in skipped[0]["message"]
