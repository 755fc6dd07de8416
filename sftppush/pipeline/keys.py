"""Object keys and user metadata: a local path → `[prefix/]relative/path`, as SPEC 3 defines.

Owns key naming, the suffix a detected compression removes, and the percent-escaping of names
that are not valid UTF-8. It must never touch the filesystem or S3: pure functions of bytes.
"""

from __future__ import annotations

import functools
import os
import re
from datetime import UTC, datetime
from urllib.parse import quote

from sftppush.config import Source
from sftppush.errors import PermanentError

# The suffixes a detected format removes from the key (one of them, matched case-insensitively).
SUFFIXES: dict[str, tuple[bytes, ...]] = {
    "gzip": (b".gz", b".gzip"),
    "bzip2": (b".bz2",),
    "xz": (b".xz",),
    "zstd": (b".zst",),
}
_ESCAPED = re.compile("[%\udc80-\udcff]")
MAX_KEY_BYTES = 1024  # S3's limit on an object key, in UTF-8 bytes (else KeyTooLongError)
PATH_MAX = 4096       # linux/limits.h: a longer path is refused in one call


def escape_component(raw: bytes) -> str:
    """One path component as valid UTF-8 text, the same way every time.

    A valid UTF-8 name is kept as it is. In a name that is not, every byte that is not part of
    a valid UTF-8 sequence becomes `%XX`, and `%` itself becomes `%25` so the escape is
    reversible for that name.
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", "surrogateescape")
    # "%" is 0x25; surrogateescape turned each undecodable byte XX into U+DCXX.
    return _ESCAPED.sub(lambda m: f"%{ord(m[0]) & 0xFF:02X}", text)


def relative_parts(source: Source, path: bytes) -> list[bytes]:
    """The components of `path` below userpath (the source name first); ValueError if outside."""
    path = os.path.normpath(path)
    inside = _inside(source.root)
    # An absolute path below an absolute root: what relpath would say, without its getcwd.
    rel = path[len(inside):] if inside and path.startswith(inside) and path != inside \
        else os.path.relpath(path, os.fsencode(source.root))
    parts = rel.split(b"/")
    if os.path.isabs(rel) or b".." in parts or rel == b".":
        raise ValueError(f"{path!r} is not inside source root {source.root}")
    return [os.fsencode(source.name), *parts]


@functools.lru_cache(maxsize=256)
def _inside(root: os.PathLike[str] | str) -> bytes:
    """`root` normalised with one trailing slash, or b"" for a relative root."""
    root_b = os.path.normpath(os.fsencode(root))
    return root_b.rstrip(b"/") + b"/" if root_b.startswith(b"/") else b""


def strip_suffix(name: bytes, fmt: str | None) -> bytes:
    """`name` without one suffix matching the detected format `fmt` (None = not compressed)."""
    for suffix in SUFFIXES.get(fmt or "", ()):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def object_key(source: Source, path: bytes, fmt: str | None) -> str:
    """The object key for the file at `path` of `source`, uploaded as format `fmt` detected.
    A key over S3's 1,024 bytes is a PermanentError (final: no attempt can help)."""
    parts = relative_parts(source, path)
    parts[-1] = strip_suffix(parts[-1], fmt)
    key = source.target.key_for("/".join(escape_component(p) for p in parts))
    if len(key.encode()) > MAX_KEY_BYTES:
        over = f"; the path is {len(path)} bytes, over PATH_MAX ({PATH_MAX})" \
            if len(path) >= PATH_MAX else ""
        raise PermanentError(f"key too long: {len(key.encode())} bytes, S3 allows at most"
                             f" {MAX_KEY_BYTES}{over}: shorten the file's name or"
                             " directories", final=True, reason="key_too_long")
    return key


def candidate_keys(source: Source, path: bytes) -> list[str]:
    """Every key the file at `path` may have been uploaded under, for a file that is gone."""
    keys = [object_key(source, path, None)]
    name = relative_parts(source, path)[-1].lower()
    for fmt, suffixes in SUFFIXES.items():
        if name.endswith(suffixes):
            keys.insert(0, object_key(source, path, fmt))
    return keys


def metadata(source: Source, path: bytes, size: int, mtime_ns: int) -> dict[str, str]:
    """The user metadata of SPEC 3 but `sftppush-sha256`, which the upload adds once known.

    Values are ASCII (they travel as HTTP headers): the original name is percent-encoded.
    """
    return {
        "sftppush-source": _quoted_name(source.name),
        "sftppush-original-name": _ends_kept(quote(os.path.basename(path),
                                                   safe=" !$&'()*+,;=@[]~")),
        "sftppush-original-size": str(size),
        "sftppush-mtime": iso8601(mtime_ns),
    }


@functools.lru_cache(maxsize=256)
def _quoted_name(name: str) -> str:
    return _ends_kept(quote(name, safe=" "))


def _ends_kept(quoted: str) -> str:
    """HTTP trims the whitespace at a header value's ends (`"rep "` comes back as `"rep"`):
    spaces there are sent as %20, so the name comes back as it went."""
    inner = quoted.strip(" ")
    if inner == quoted:
        return quoted
    lead = len(quoted) - len(quoted.lstrip(" "))
    return "%20" * lead + inner + "%20" * (len(quoted) - lead - len(inner))



def iso8601(mtime_ns: int) -> str:
    """`mtime_ns` as ISO 8601 in UTC with microseconds, e.g. 2026-01-02T03:04:05.000006+00:00
    (none when they are 0, as datetime.isoformat)."""
    seconds, ns = divmod(mtime_ns, 1_000_000_000)
    whole = _iso_second(seconds)
    return f"{whole[:-6]}.{ns // 1000:06d}+00:00" if ns >= 1000 else whole


@functools.lru_cache(maxsize=64)
def _iso_second(seconds: int) -> str:
    """One second's ISO 8601 text: files of a burst share their mtime's second."""
    return datetime.fromtimestamp(seconds, UTC).isoformat()
