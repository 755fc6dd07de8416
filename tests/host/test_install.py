"""The README's install, done on a real Debian with systemd as PID 1, leaves a running service
whose hardening holds when probed from inside it, not just on paper."""

from __future__ import annotations

import re

import pytest

from tests.host.conftest import CONSUMERS, WATCH, Server
from tests.host.machine import require_bootable

require_bootable()

MAX_EXPOSURE = 3.0


def test_readme_install_leaves_every_unit_running(server: Server) -> None:
    m = server.m
    for unit in (WATCH, *CONSUMERS, "sftppush-rescan.timer"):
        assert m.unit_property(unit, "ActiveState") == "active", unit
        assert m.unit_property(unit, "UnitFileState") in ("enabled", "indirect"), unit
    assert m.unit_property(WATCH, "User") == "sftppush"
    status = server.operator("queue status --json")
    assert '"failed": 0' in status, status


@pytest.mark.parametrize("unit", [WATCH, CONSUMERS[0], "sftppush-rescan.service"])
def test_live_security_exposure_is_within_budget(server: Server, unit: str) -> None:
    out = server.m.run("systemd-analyze", "security", "--no-pager", unit).stdout
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out)
    assert found, out[-2000:]
    assert float(found[1]) <= MAX_EXPOSURE, out
