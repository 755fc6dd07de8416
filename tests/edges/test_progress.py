"""Progress from a multipart upload's record (issue 25, item 3): pure arithmetic on the JSON
the queue keeps; tests/e2e/test_progress.py shows it end to end."""

from __future__ import annotations

import json

from sftppush.progress import of

MIB = 1 << 20
DETAIL = json.dumps({"bucket": "b", "part_size": 5 * MIB, "every": 1000, "started": 1000.0})


def parts(*ats: float) -> str:
    return json.dumps([{"number": n, "size": 5 * MIB, "etag": "e", "md5": "m",
                        "checksum": None, "at": at} for n, at in enumerate(ats, 1)])


def test_parts_total_of_a_file_sent_as_it_is_and_unknown_for_a_decompressed_one() -> None:
    plain = of(1, b"/h/u/upload/a.bin", 23 * MIB, "u/upload/a.bin", DETAIL, parts(1010), 1020)
    assert (plain.parts_done, plain.parts_total, plain.bytes_sent) == (1, 5, 5 * MIB)
    gz = of(2, b"/h/u/upload/a.csv.gz", 23 * MIB, "u/upload/a.csv", DETAIL, parts(1010), 1020)
    assert gz.parts_total is None
    # A compressed file whose name kept no suffix: its parts outnumber its size's, so unknown.
    odd = of(3, b"/h/u/upload/z", 6 * MIB, "u/upload/z", DETAIL, parts(1001, 1002, 1003), 1004)
    assert odd.parts_total is None and odd.text() == "parts 3/?, 15.0 MiB sent, 3.8 MiB/s"


def test_rate_counts_the_last_minute_and_the_start() -> None:
    young = of(1, b"/h/a", 100 * MIB, "a", DETAIL, parts(1005, 1010), 1010)
    assert young.bytes_per_s == 10 * MIB / 10  # since the upload started, 10 s ago
    old = of(1, b"/h/a", 100 * MIB, "a", DETAIL, parts(1005, 1010, 1100, 1130), 1150)
    assert old.bytes_per_s == 10 * MIB / 60  # the parts of the last 60 s
    stalled = of(1, b"/h/a", 100 * MIB, "a", DETAIL, parts(1005), 1500)
    assert stalled.bytes_per_s is None and stalled.text().endswith("MiB sent, -")
