"""One config value checked against its kind: booleans, numbers, durations (`7d`, `12h`),
strings, lists, http(s) URLs and log files; and the `--source` flag's syntax.

Owns what each kind accepts and how a value is converted (a duration to seconds, a list to a
tuple); anything else is one ConfigError line naming the key. It never reads a file or the
environment: config.py does, and asks here.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sftppush.errors import ConfigError

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str, name: str = "duration") -> float:
    """`7d`, `12h`, `1d12h`, `90s` -> seconds; anything else is a ConfigError naming `name`."""
    parts = _DURATION.findall(text.strip().lower())
    if not parts or "".join(n + u for n, u in parts) != text.strip().lower():
        raise ConfigError(f"{name} {text!r} is not a duration like 7d, 12h or 30m")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def _is_url(value: Any) -> bool:
    try:
        url = urlsplit(value)
        return url.scheme in ("http", "https") and bool(url.hostname) and url.port != 0
    except (TypeError, ValueError, AttributeError):  # not text, or a port that is not a number
        return False


def _is_log_file(value: Any) -> bool:
    # The path exactly as logging.FileHandler will open it, so a mistake is exit 2, not 1.
    return _is_text(value) and not Path(value).is_dir() and Path(value).parent.is_dir()


# kind: (accepts, what a value must be); a kind's value is kept as given unless converted below.
KINDS: dict[str, tuple[Any, str]] = {
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "int": (lambda v: _is_number(v) and isinstance(v, int), "an integer"),
    "float": (lambda v: _is_number(v) and math.isfinite(v), "a finite number"),
    "duration": (lambda v: isinstance(v, str) or (_is_number(v) and math.isfinite(v)),
                 "seconds or a duration like 7d"),
    "str": (_is_text, "a non-empty string"),
    "list": (lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v),
             "a list of strings"),
    "sources": (lambda _: True, "a list of sources"),  # checked by config.py
    "url": (_is_url, "an http(s) URL with a host"),
    "file": (_is_log_file, "a file in an existing directory"),
}


def check(value: Any, kind: Any, name: str) -> Any:
    """`value` as a `kind` of Key wants it, or one ConfigError line naming the key."""
    if isinstance(kind, tuple):
        if value not in kind:
            raise ConfigError(f"config: {name} must be one of {', '.join(kind)}, got {value!r}")
        return value
    accepts, noun = KINDS[kind]
    if not accepts(value):
        raise ConfigError(f"config: {name} must be {noun}, got {value!r}")
    if kind == "duration" and isinstance(value, str):
        return parse_duration(value, f"config: {name}")
    return {"float": float, "duration": float, "list": tuple}.get(kind, lambda v: v)(value)


def parse_source_flag(text: str) -> dict[str, Any]:
    """`name=sftpuser1,paths=/upload /data[,s3target=bucket/prefix]` as in the original tool."""
    fields: dict[str, Any] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in ("name", "paths", "s3target"):
            raise ConfigError(
                f"--source {text!r}: expected name=NAME,paths=/a /b[,s3target=BUCKET/PREFIX]"
            )
        fields[key] = value.split() if key == "paths" else value.strip()
    return fields
