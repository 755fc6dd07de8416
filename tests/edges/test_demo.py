"""`sftppush demo`: the embedded default uploads its samples and Ctrl-C leaves nothing behind."""

from __future__ import annotations

import bz2
import os
import signal
import subprocess
from pathlib import Path

from tests.conftest import child_env, cli_argv, wait_until


def processes_mentioning(text: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline and int(pid) != os.getpid():
            found.append(f"{pid}: {cmdline}")
    return found


def test_demo_uploads_samples_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    home = tmp_path / "demo"
    stored = home / "s3" / "demo-bucket" / "demo" / "upload"
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        demo = subprocess.Popen(cli_argv("demo", "--dir", home), env=child_env(),
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        def uploaded() -> list[Path]:
            # The store writes an object under a temporary name first (".rclone_temp..."),
            # and the local file goes only after its object is verified: wait for both.
            found = [p for p in stored.rglob("*") if p.is_file() and "rclone" not in p.name
                     and not p.name.endswith(".partial")] if stored.exists() else []
            left = [p for p in (home / "home").rglob("*") if p.is_file()]
            return found if len(found) == 3 and not left else []

        files = wait_until(uploaded, 60, "the three sample objects, their local files deleted")
        names = sorted(p.name for p in files)
        assert [n.split("-")[0] for n in names] == ["events", "notes", "readings"]
        events = next(p for p in files if p.name.startswith("events"))
        assert events.name.endswith(".log") and events.read_bytes() == \
            bz2.decompress(bz2.compress(b"inverter-2 fault cleared\n" * 40))
        readings = next(p for p in files if p.name.startswith("readings"))
        assert readings.name.endswith(".csv")
        assert readings.read_text().startswith("time,device,watts\n")
        text = log.read_text()
        assert "local S3 at http://127.0.0.1:" in text and "uploaded id=" in text

        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=60) == 0
        assert "stopped" in log.read_text()
        assert processes_mentioning(str(home)) == []
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
