"""Issue 25, item 4 (and issue 23's hole 9): log lines that journald and log shippers can use.

Real files whose names hold a newline, a fake log line, ESC, CR, TAB, DEL, C1 controls, the
Unicode line separators and bytes that are not UTF-8 go through `rescan` and `consume
--drain` as real processes against rclone (moto answers 404 to a key with a newline): every
line of their output is one event, no name forges another line, times carry their zone, JSON
numbers are numbers, and when stderr is the journal ($JOURNAL_STREAM names it) every line
starts with its syslog priority.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import FAKE_REGION, RcloneS3, S3Server, SourceTree, child_env, cli_argv

FORGED = "2026-01-01T00:00:00.000Z ERROR sftppush.consumer failed id=1 error=forged"
NAMES = [f"forged\n{FORGED}.csv".encode(),
         b"ctl bell\a esc\x1b[31m cr\r tab\t del\x7f.csv",
         "unicode nel\x85 ls\u2028 ps\u2029.csv".encode(),
         b"raw \x85\x0b bytes.csv"]
RAW_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
TEXT_LINE = re.compile(r"^(<[0-7]>)?\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z "
                       r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) sftppush(\.\w+)* \S")


def run_product(source_tree: SourceTree, server: S3Server, bucket: str, tmp_path: Path,
                fmt: str, journal: bool) -> list[str]:
    """Write the files, `rescan`, `consume --drain`; every line both wrote to stderr."""
    for name in NAMES:
        (source_tree.upload / os.fsdecode(name)).write_bytes(b"a,b\n1,2\n")
    config = source_tree.write_config(bucket, defaults={
        "endpoint_url": server.endpoint_url, "awsregion": FAKE_REGION})
    lines: list[str] = []
    for command in (["rescan"], ["consume", "--drain"]):
        err = tmp_path / f"{command[0]}-{fmt}-{journal}.err"
        with err.open("wb") as out:
            st = os.fstat(out.fileno())
            env = {**server.env(), "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"} if journal \
                else server.env()
            done = subprocess.run(cli_argv("--config", config, "--log-format", fmt, *command),
                                  env=child_env(env), stdout=subprocess.PIPE, stderr=out,
                                  timeout=120)
        assert done.returncode == 0, err.read_text(errors="replace")
        # Split on "\n" alone: str.splitlines() would also split at \x85 and \u2028.
        lines += err.read_bytes().decode().split("\n")[:-1]
    return lines


@pytest.mark.parametrize(("fmt", "journal"), [("text", False), ("json", False),
                                              ("text", True), ("json", True)])
def test_a_file_name_cannot_forge_a_log_line(source_tree: SourceTree, rclone_s3: RcloneS3,
                                             tmp_path: Path, fmt: str, journal: bool) -> None:
    bucket = rclone_s3.make_bucket("names")
    lines = run_product(source_tree, rclone_s3, bucket, tmp_path, fmt, journal)
    assert len([p for p in (rclone_s3.root / bucket).rglob("*") if p.is_file()]) == len(NAMES)
    uploaded = []
    for line in lines:
        assert not RAW_CONTROL.search(line), f"a raw control character in {line!r}"
        assert not line.startswith(FORGED) and FORGED not in line.split("forged\\n")[0]
        if journal:
            assert re.match(r"<[0-7]>", line), line
            line = line[3:]
        if fmt == "text":
            assert TEXT_LINE.match(line), line
            if " uploaded " in line:
                uploaded.append(line)
        else:
            record = json.loads(line)
            assert record["time"].endswith("Z") and record["logger"].startswith("sftppush")
            if record["event"] == "uploaded":
                uploaded.append(record)
    assert len(uploaded) == len(NAMES), lines
    if fmt == "text":
        forged = [line for line in uploaded if "forged" in line]
        assert len(forged) == 1 and f"forged\\n{FORGED}" in forged[0]
        ctl = next(line for line in uploaded if "ctl bell" in line)
        assert "bell\\x07 esc\\x1b[31m cr\\r tab\\t del\\x7f" in ctl
        assert "nel\\x85 ls\\u2028 ps\\u2029" in next(u for u in uploaded if "unicode" in u)
    else:
        # JSON keeps each name exactly (its escapes decode back to it), numbers as numbers.
        keys = {record["key"].rsplit("/", 1)[-1] for record in uploaded}
        assert f"forged\n{FORGED}.csv" in keys and "unicode nel\x85 ls\u2028 ps\u2029.csv" in keys
        for record in uploaded:
            for field in ("id", "bytes_in", "bytes_out", "ms", "parts"):
                assert type(record[field]) is int, (field, record)


def test_a_journal_line_carries_the_priority_of_its_level(source_tree: SourceTree,
                                                          moto_server: S3Server,
                                                          tmp_path: Path) -> None:
    """A warning (a missing bucket, retried) is <4>, an info line <6>, an error line of the
    CLI itself <3>: what `journalctl -p warning` filters on."""
    source_tree.write_config("no-such-bucket", defaults={
        "endpoint_url": moto_server.endpoint_url, "awsregion": FAKE_REGION},
        consumer={"max_attempts": 1})
    (source_tree.upload / "a.csv").write_bytes(b"1\n")
    err = tmp_path / "consume.err"
    with err.open("wb") as out:
        st = os.fstat(out.fileno())
        env = child_env({**moto_server.env(), "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        for command in (["rescan"], ["consume", "--drain"], ["queue", "replay", "7"]):
            subprocess.run(cli_argv("--config", source_tree.config_path, *command), env=env,
                           stdout=subprocess.DEVNULL, stderr=out, timeout=120)
    lines = err.read_text().split("\n")[:-1]
    failed = [line for line in lines if " failed id=" in line]
    assert failed and all(line.startswith("<3>") for line in failed), lines
    assert "no-such-bucket" in failed[0]
    assert any(line.startswith("<6>") and " consumer started " in line for line in lines)
    assert lines[-1].startswith("<3>sftppush: queue replay: entry 7 cannot be replayed")


def test_a_traceback_shows_only_at_debug_and_on_one_line(source_tree: SourceTree,
                                                         run_cli) -> None:
    config = source_tree.write_config()
    for level, traceback in (("info", False), ("debug", True)):
        result = run_cli("--config", config, "--log-level", level, "queue", "status")
        assert result.returncode == 1, result
        lines = result.stderr.split("\n")[:-1]
        assert lines[-1] == f"sftppush: queue: {source_tree.queue_path} does not exist"
        assert ("Traceback" in result.stderr) is traceback, result.stderr
        assert len(lines) == 1 + traceback, result.stderr
