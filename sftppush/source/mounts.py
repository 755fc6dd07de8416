"""The mount points of this process's mount namespace (/proc/self/mountinfo), and which
appeared or went away since the last look: the kernel marks the file POLLPRI when anything
is mounted or unmounted, so a poll() loop learns of it at once.

Owns reading and comparing the table only: it never mounts, and never touches a watch or
the queue (what a change means for the watches is the watcher's business).
"""

from __future__ import annotations

import logging
import re

log = logging.getLogger("sftppush.watcher")

MOUNTINFO = "/proc/self/mountinfo"
_ESCAPE = re.compile(rb"\\([0-7]{3})")  # mountinfo writes space, tab, newline, \ as \ooo


class MountTable:
    """/proc/self/mountinfo, open for poll(POLLPRI) on its fileno()."""

    def __init__(self, path: str = MOUNTINFO) -> None:
        self._file = open(path, "rb", buffering=0)  # noqa: SIM115 (closed by close())
        self.mounts = self._read()

    def fileno(self) -> int:
        return self._file.fileno()

    def changed(self) -> tuple[set[bytes], set[bytes]]:
        """The mount points mounted and unmounted since the last call (a point mounted
        over, or unmounted from, another mount counts too)."""
        now = self._read()
        added = {point for mount_id, point in now.items() if self.mounts.get(mount_id) != point}
        removed = {point for mount_id, point in self.mounts.items()
                   if now.get(mount_id) != point}
        self.mounts = now
        return added, removed

    def _read(self) -> dict[int, bytes]:
        """Mount id -> mount point."""
        self._file.seek(0)
        mounts = {}
        for line in self._file.readall().splitlines():
            fields = line.split(b" ", 5)
            if len(fields) > 4:
                mounts[int(fields[0])] = _ESCAPE.sub(lambda m: bytes([int(m[1], 8)]),
                                                     fields[4])
        return mounts

    def close(self) -> None:
        self._file.close()


def mount_table() -> MountTable | None:
    """The mount table, or None (logged) where /proc is not there to read."""
    try:
        return MountTable()
    except OSError as exc:
        log.warning("mounts not followed: cannot read %s error=%s", MOUNTINFO,
                    exc.strerror or exc)
        return None


def below(point: bytes, top: bytes) -> bool:
    """`point` is `top` or inside it."""
    return point == top or point.startswith(top.rstrip(b"/") + b"/")
