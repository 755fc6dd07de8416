"""Log lines: one event each, fields lifted into JSON even when values hold spaces."""

from __future__ import annotations

import json
import logging

from sftppush.logs import JsonFormatter


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
