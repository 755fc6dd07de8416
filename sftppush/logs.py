"""Logging set-up: one event per line, text or JSON, to stderr (journald) or a file.

Owns formatting only; rooms log through `logging.getLogger("sftppush.<room>")` with the
entry id, path and key as `name=value` fields. Nothing here may log credentials.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time

from sftppush.config import LogConfig

# A field's value runs to the next ` name=`: paths and errors may hold spaces.
_FIELD = re.compile(r"(?:^| )([a-z_]+)=(.*?)(?= [a-z_]+=|$)", re.S)


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
