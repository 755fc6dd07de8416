"""Log lines: one event each, fields lifted into JSON with their types, every field escaped,
times in UTC with their zone, a traceback only at debug and folded (issue 25, item 4)."""

from __future__ import annotations

import json
import logging
import sys

from sftppush.logs import JsonFormatter, TextFormatter, escape, fields


def record(msg: str, *args: object, level: int = logging.INFO,
           exc: BaseException | None = None) -> logging.LogRecord:
    made = logging.LogRecord("sftppush.pipeline", level, __file__, 1, msg, args,
                             (type(exc), exc, exc.__traceback__) if exc else None)
    made.created, made.msecs = 1_767_225_600.25, 250.0
    return made


def test_json_lines_lift_fields_with_spaces_and_keep_numbers_numbers() -> None:
    data = json.loads(JsonFormatter().format(record(
        "uploaded id=%d key=%s path=%s ms=%d delay=%.1f note=%s object=exists",
        17, "u/a b.csv", "/home/u/a b.csv", 42, 1.25, "7")))
    assert data["event"] == "uploaded"
    assert (data["id"], data["key"], data["path"], data["ms"], data["delay"]) == \
        (17, "u/a b.csv", "/home/u/a b.csv", 42, 1.2)
    assert data["note"] == "7" and data["object"] == "exists"  # %s stays text, as written
    assert data["level"] == "info" and data["message"].startswith("uploaded id=17")
    assert data["time"] == "2026-01-01T00:00:00.250Z"


def test_a_value_cannot_make_a_field_of_its_own() -> None:
    # A path that looks like more fields is one value; the real fields keep their values.
    made = record("failed id=%d path=%s error=%s", 3, "/u/x level=error id=99 key=k", "boom")
    assert fields(made) == {"id": 3, "path": "/u/x level=error id=99 key=k", "error": "boom"}


def test_text_lines_are_utc_with_their_zone_and_escape_every_field() -> None:
    line = TextFormatter().format(record("uploaded id=%d path=%s", 17,
                                         "a\nfake ERROR\x1b[31m\r\t\x7f\x85\u2028.csv"))
    assert line == ("2026-01-01T00:00:00.250Z INFO sftppush.pipeline uploaded id=17"
                    " path=a\\nfake ERROR\\x1b[31m\\r\\t\\x7f\\x85\\u2028.csv")


def test_json_escapes_what_could_end_a_line_and_still_decodes_to_the_value() -> None:
    name = "a\nb\x85c\u2028d\x7f"
    line = JsonFormatter().format(record("uploaded path=%s", name))
    assert escape(line) == line  # no raw control character left
    assert json.loads(line)["path"] == name


def test_under_journald_each_line_starts_with_its_priority() -> None:
    for level, priority in ((logging.DEBUG, 7), (logging.INFO, 6), (logging.WARNING, 4),
                            (logging.ERROR, 3), (logging.CRITICAL, 2)):
        for formatter in (TextFormatter(journal=True), JsonFormatter(journal=True)):
            assert formatter.format(record("x id=%d", 1, level=level)).startswith(
                f"<{priority}>")
    assert not TextFormatter().format(record("x")).startswith("<")


def test_a_traceback_only_at_debug_and_folded_into_its_line() -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError as exc:
        caught = exc
    made = record("unexpected error id=%d", 5, level=logging.ERROR, exc=caught)
    quiet = TextFormatter().format(made)
    assert quiet.endswith("unexpected error id=5 exception=ValueError: boom\\nsecond line")
    loud = TextFormatter(debug=True).format(made)
    assert "\n" not in loud and "exception=Traceback (most recent call last):\\n" in loud
    data = json.loads(JsonFormatter().format(made))
    assert data["exception"] == "ValueError: boom\nsecond line"
    assert "Traceback" in json.loads(JsonFormatter(debug=True).format(made))["exception"]
    assert sys.exc_info() == (None, None, None)
