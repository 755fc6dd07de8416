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
            found = [p for p in stored.rglob("*") if p.is_file()] if stored.exists() else []
            return found if len(found) == 3 else []

        files = wait_until(uploaded, 60, "the three sample objects")
        names = sorted(p.name for p in files)
        assert [n.split("-")[0] for n in names] == ["events", "notes", "readings"]
        events = next(p for p in files if p.name.startswith("events"))
        assert events.name.endswith(".log") and events.read_bytes() == \
            bz2.decompress(bz2.compress(b"inverter-2 fault cleared\n" * 40))
        readings = next(p for p in files if p.name.startswith("readings"))
        assert readings.name.endswith(".csv")
        assert readings.read_text().startswith("time,device,watts\n")
        assert not [p for p in (home / "home").rglob("*") if p.is_file()], "local files remain"
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
