"""Logging set-up: one event per line, text or JSON, to stderr (journald) or a file.

Owns formatting only, for every line whoever logs it: control characters in any field are
escaped (a file name cannot forge a line), times are UTC with their zone, a traceback shows
only at debug and folded into its line, JSON fields keep the types of their values, and when
stderr is the journal each line starts with its syslog priority (sd-daemon(3)). Rooms log
through `logging.getLogger("sftppush.<room>")` with the entry id, path and key as `name=value`
fields. Nothing here may log credentials.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import re
import sys
import threading
import time
from typing import Any, TextIO

from sftppush.config import LogConfig

# C0, DEL, C1 and the Unicode line and paragraph separators: each can end or fake a line.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# A field: ` name=` in a message template; its value runs to the next one.
_FIELD = re.compile(r"(?:^| )([a-z_]+)=")
_CONVERSION = re.compile(r"%[-#0 +]*(?:\d+)?(?:\.\d+)?[hlL]?([diouxXeEfFgGcrsa%])")
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


def prefix(level: int, stream: TextIO) -> str:
    """The `<N>` priority a line at `level` starts with on `stream`, if it is the journal."""
    return f"<{PRIORITY.get(level, 6)}>" if is_journal(stream) else ""


def line(text: str, level: int = logging.ERROR, stream: TextIO | None = None) -> None:
    """Write one line that is not a log record (the CLI's error and check lines): escaped,
    with its priority when `stream` (stderr by default) is the journal."""
    stream = stream or sys.stderr
    stream.write(f"{prefix(level, stream)}{escape(text)}\n")
    stream.flush()


@functools.lru_cache(maxsize=1024)
def _fields(template: str) -> tuple[tuple[str | None, int, str], ...]:
    """A message template cut at its ` name=` fields: (name or None for the text before the
    first field, how many arguments the piece takes, the piece's own template)."""
    starts = [(m.start(), m.group(1), m.end()) for m in _FIELD.finditer(template)]
    pieces = []
    bounds = [(0, None, 0), *starts, (len(template), None, len(template))]
    for (_, name, begin), (end, _, _) in itertools.pairwise(bounds):
        piece = template[begin:end]
        pieces.append((name, sum(c != "%" for c in _CONVERSION.findall(piece)), piece))
    return tuple(pieces)


def _typed(piece: str, args: tuple[Any, ...]) -> Any:
    """A field's value: a number when the piece is one numeric conversion, else text."""
    conversion = _CONVERSION.fullmatch(piece)
    text = piece % args if args else piece.replace("%%", "%")
    if conversion and conversion.group(1) in "diouxX" and len(args) == 1:
        return int(args[0]) if isinstance(args[0], (int, float)) else text
    if conversion and conversion.group(1) in "eEfFgG" and len(args) == 1:
        return float(text)
    return text


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The `name=value` fields of a record, each taken from its own argument: a number stays
    a number, and text inside an argument can never make a field of its own."""
    args = record.args if isinstance(record.args, tuple) else ()
    if not isinstance(record.msg, str) or (record.args and not args):
        return {}
    found: dict[str, Any] = {}
    at = 0
    try:
        for name, count, piece in _fields(record.msg):
            value = _typed(piece, args[at:at + count])
            at += count
            if name is not None:
                found.setdefault(name, value)
    except (TypeError, ValueError):  # a template that does not fit its arguments
        return {}
    return found


class _Base(logging.Formatter):
    def __init__(self, debug: bool = False, journal: bool = False) -> None:
        super().__init__()
        self.debug = debug
        self.journal = journal
        self._second = (-1, "")

    def when(self, record: logging.LogRecord) -> str:
        """ISO 8601 in UTC with its zone, formatted once per second (a line per upload)."""
        second = int(record.created)
        if second != self._second[0]:
            self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        return f"{self._second[1]}.{int(record.msecs):03d}Z"

    def exception(self, record: logging.LogRecord) -> str | None:
        """The record's exception: its traceback at debug, else its type and message."""
        if not record.exc_info or record.exc_info[1] is None:
            return None
        if self.debug:
            return self.formatException(record.exc_info)
        exc = record.exc_info[1]
        return f"{type(exc).__name__}: {exc}"

    def priority(self, record: logging.LogRecord) -> str:
        return f"<{PRIORITY.get(record.levelno, 6)}>" if self.journal else ""


class TextFormatter(_Base):
    """`time level logger message`, control characters escaped, an exception folded in."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"{self.when(record)} {record.levelname} {record.name} {record.getMessage()}"
        exc = self.exception(record)
        if exc is not None:
            text += f" exception={exc}"
        return self.priority(record) + escape(text)


class JsonFormatter(_Base):
    """One JSON object per line: the message, its event (first word) and its fields."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        data: dict[str, Any] = {
            "time": self.when(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
            "event": message.split(" ", 1)[0],
        }
        for key, value in fields(record).items():
            data.setdefault(key, value)
        exc = self.exception(record)
        if exc is not None:
            data["exception"] = exc
        # json escapes C0 itself; DEL, C1 and U+2028/9 as \u escapes too, still valid JSON.
        text = json.dumps(data, ensure_ascii=False, default=str)
        return self.priority(record) + _CONTROL.sub(lambda m: f"\\u{ord(m[0]):04x}", text)


def setup(cfg: LogConfig) -> None:
    """Log the `sftppush` loggers at `cfg.level`, and everyone's warnings (boto's, Python's,
    a thread's uncaught exception), through one handler and one formatter."""
    stream = None if cfg.location else sys.stderr
    handler: logging.Handler = (logging.FileHandler(cfg.location, encoding="utf-8")
                                if cfg.location else logging.StreamHandler(stream))
    kind = JsonFormatter if cfg.format == "json" else TextFormatter
    handler.setFormatter(kind(debug=cfg.level == "debug",
                              journal=stream is not None and is_journal(stream)))
    ours = logging.getLogger("sftppush")
    ours.handlers[:] = [handler]
    ours.setLevel(cfg.level.upper())
    ours.propagate = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.captureWarnings(True)
    threading.excepthook = _thread_died
    # No record needs its caller's file and line, thread or process (logging's documented
    # optimisations): finding the caller walks the stack on every line.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    # boto's own chatter at debug would log request headers; keep it at warning.
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _thread_died(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("sftppush").error("thread died thread=%s", name, exc_info=(
        args.exc_type, args.exc_value, args.exc_traceback))
