"""The watcher past the system's limits, as real processes against moto: more directories
than inotify watches, at start and while running. It degrades and never stops: every file
is uploaded within seconds, and the gap is counted where an operator looks.

The watch limit is lowered in a user namespace of the product's own (own_watch_limit), so
no other process of the machine loses a watch while these tests run.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import child_env, cli_argv, own_watch_limit, set_watch_limit, wait_until
from tests.e2e.system import Product, files_under

LIMIT = 40  # watches for the watcher and the consumer's queue watch together


def write_files(dirs: list[Path], name: str) -> set[Path]:
    written = set()
    for d in dirs:
        (d / name).write_bytes(f"{d.name}/{name}\n".encode())
        written.add(d / name)
    return written


def test_past_the_watch_limit_at_start_and_while_running_nothing_stays_on_disk(
        tmp_path, source_tree, s3_bucket, s3_env, s3_client):
    up = source_tree.upload
    at_start = [up / f"start{i:02d}" for i in range(LIMIT + 20)]
    for d in at_start:
        d.mkdir()
    present = write_files(at_start, "present.csv")
    config = source_tree.write_config(s3_bucket, defaults={"log": {"level": "info"}})
    product = Product(tmp_path, config, s3_env)
    try:
        run = product.start("run", "run", "--consumers", "1",
                            wrap=own_watch_limit(LIMIT))

        def gone(paths: set[Path]):
            product.assert_alive()
            return not [p for p in paths if p.exists()]

        # Unwatched directories are scanned every few seconds: what they hold is uploaded.
        wait_until(lambda: gone(present), 60, "the files present at start to be uploaded",
                   0.2, detail=lambda: (files_under(up)[:5], product.log_tail()))
        unwatched = product.status()["watcher_unwatched_dirs"]
        assert unwatched >= len(at_start) + 1 - LIMIT, unwatched  # + 1: the source dir

        # While running: more new directories, and files into every one, watched or not.
        later = [up / f"later{i:02d}" for i in range(20)]
        for d in later:
            d.mkdir()
        written = write_files(at_start + later, "later.csv")
        wait_until(lambda: gone(written), 30, "files written while running to be uploaded",
                   0.2, detail=lambda: [p for p in written if p.exists()][:5])
        grown = product.status()["watcher_unwatched_dirs"]
        assert grown >= unwatched + len(later) - 1, (unwatched, grown)
        metrics = product.cli("queue", "status", "--prometheus").stdout
        assert f"sftppush_watcher_unwatched_dirs {float(grown)}" in metrics
        assert f"unwatched dirs {grown}" in product.cli("queue", "status").stdout

        # The operator raises the limit: every directory gets its watch, the gauge drops to 0.
        set_watch_limit(run.pid, 10_000)
        wait_until(lambda: product.status()["watcher_unwatched_dirs"] == 0, 30,
                   "the gauge to drop to 0 once the limit allows every watch")
        last = write_files(at_start + later, "last.csv")
        wait_until(lambda: gone(last), 30, "files written after the raise to be uploaded", 0.2)

        keys = {o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"]}
        every = {f"sftpuser1/upload/{p.parent.name}/{p.name}" for p in present | written | last}
        assert keys == every
        product.assert_alive()
        assert product.stop("run") == 0
    finally:
        product.stop_all()
    limit_lines = [e for e in product.events() if "watch limit reached" in e["message"]]
    assert 1 <= len(limit_lines) <= 3, "one summary line, not one per directory"
    assert not [e for e in product.events() if "cannot watch" in e["message"]]
    assert [e for e in product.events() if "no longer reached" in e["message"]], "all clear"


def test_config_check_warns_when_the_tree_nears_the_watch_limit(source_tree):
    for i in range(8):
        (source_tree.upload / f"d{i}").mkdir()
    config = source_tree.write_config()
    argv = cli_argv("--config", config, "config", "check", "--no-environment")  # no store
    near = subprocess.run([*own_watch_limit(10), *argv], capture_output=True, text=True,
                          timeout=60, env=child_env())
    assert near.returncode == 0, near.stderr
    assert "warning: 9 directories to watch, 90% of the inotify watch limit (10," \
        in near.stderr
    assert "raise fs.inotify.max_user_watches" in near.stderr
    far = subprocess.run([*own_watch_limit(100), *argv], capture_output=True, text=True,
                         timeout=60, env=child_env())
    assert far.returncode == 0 and "warning" not in far.stderr, far.stderr
