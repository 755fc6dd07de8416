"""Log lines: one event each, fields lifted into JSON even when values hold spaces."""

from __future__ import annotations

import json
import logging

from sftppush.logs import JsonFormatter, TextFormatter


def test_json_lines_lift_fields_with_spaces() -> None:
    record = logging.LogRecord("sftppush.pipeline", logging.INFO, __file__, 1,
                               "uploaded id=%d key=%s path=%s ms=%d", (17, "u/a b.csv",
                                                                        "/home/u/a b.csv", 42),
                               None)
    data = json.loads(JsonFormatter().format(record))
    assert data["event"] == "uploaded"
    assert (data["id"], data["key"], data["path"], data["ms"]) == \
        ("17", "u/a b.csv", "/home/u/a b.csv", "42")
    assert data["level"] == "info" and data["message"].startswith("uploaded id=17")


def test_text_lines_read_as_loggings_default_format() -> None:
    default = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    ours = TextFormatter()
    for created in (1_767_225_600.25, 1_767_225_600.999, 1_767_225_601.0, 1_767_225_599.5):
        record = logging.LogRecord("sftppush.pipeline", logging.INFO, __file__, 1,
                                   "uploaded id=%d key=%s", (17, "u/a.csv"), None)
        record.created, record.msecs = created, created % 1 * 1000
        assert ours.format(record) == default.format(record)
