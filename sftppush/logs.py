"""Logging set-up: one event per line, text or JSON, to stderr (journald) or a file.

Owns formatting only; rooms log through `logging.getLogger("sftppush.<room>")` with the
entry id, path and key as `name=value` fields. Nothing here may log credentials.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from typing import TextIO

from sftppush.config import LogConfig

# A field's value runs to the next ` name=`: paths and errors may hold spaces.
_FIELD = re.compile(r"(?:^| )([a-z_]+)=(.*?)(?= [a-z_]+=|$)", re.S)
# C0, DEL, C1 and the Unicode line and paragraph separators: each can end or fake a line.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# sd-daemon(3): what journald reads from the start of a line it gets on a stream.
PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
            logging.CRITICAL: 2}


def escape(text: str) -> str:
    """`text` with every control character shown as an escape (`\\n`, `\\x1b`, `\\u2028`)."""
    return _CONTROL.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    char = match[0]
    return _NAMED.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100
                                else f"\\u{ord(char):04x}")


def is_journal(stream: TextIO) -> bool:
    """True when `stream` is connected to the journal: $JOURNAL_STREAM names its device and
    inode (systemd sets it for a service's stdout and stderr)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):  # closed, or not a real file (a test's)
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


def line(text: str, level: int = logging.ERROR, stream: TextIO | None = None) -> None:
    """Write one line that is not a log record (the CLI's error and check lines): escaped,
    with its priority when `stream` (stderr by default) is the journal."""
    stream = stream or sys.stderr
    priority = f"<{PRIORITY.get(level, 6)}>" if is_journal(stream) else ""
    stream.write(f"{priority}{escape(text)}\n")
    stream.flush()


class TextFormatter(logging.Formatter):
    """`time level logger message`, the time as logging's default (2026-01-02 03:04:05,678),
    its seconds formatted once per second: a consumer logs a line per upload."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")
        self._second = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: ARG002
        second = int(record.created)
        if second != self._second[0]:
            self._second = (second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second)))
        return f"{self._second[1]},{int(record.msecs):03d}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line; `name=value` pairs of the message are lifted into fields."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        data = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
            "event": message.split(" ", 1)[0],
        }
        for key, value in _FIELD.findall(message):
            data.setdefault(key, value)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


def setup(cfg: LogConfig) -> None:
    handler = (logging.FileHandler(cfg.location, encoding="utf-8") if cfg.location
               else logging.StreamHandler(sys.stderr))
    handler.setFormatter(JsonFormatter() if cfg.format == "json" else TextFormatter())
    root = logging.getLogger("sftppush")
    root.handlers[:] = [handler]
    root.setLevel(cfg.level.upper())
    root.propagate = False
    # No record needs its caller's file and line, thread or process (logging's documented
    # optimisations): finding the caller walks the stack on every line.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    # boto's own chatter at debug would log request headers; keep it at warning.
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
