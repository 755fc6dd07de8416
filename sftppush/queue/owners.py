"""Who holds a claim: owner tokens that name host, pid and process start time.

Owns making this process's token, the name of the user it runs as (for messages), and telling
whether the process behind a token of this host has died (or its pid now names another
process). It never touches the queue file.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pwd
import socket


def owner_token() -> str:
    """This process as the owner of its claims: host:pid:start time (clock ticks after boot,
    /proc/self/stat field 22), so that a claim whose process died, or whose pid now names
    another process, can be told from a live one."""
    return _token(os.getpid())


@functools.cache
def user_name() -> str:
    """The user this process runs as (its effective uid), as messages name it."""
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


@functools.cache
def _token(pid: int) -> str:
    _, started = _process(pid) or ("", -1)
    return f"{socket.gethostname()}:{pid}:{started}"


def _process(pid: int) -> tuple[str, int] | None:
    """(state, start time) of a process of this host, or None if there is none."""
    with contextlib.suppress(OSError):  # gone, or hidden from us (hidepid): ask the kernel
        with open(f"/proc/{pid}/stat", "rb") as f:
            # After the command name, which may hold spaces and parentheses, come fields 3...
            after = f.read().rpartition(b")")[2].split()
        return after[0].decode(), int(after[19])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return "?", -1  # runs, start time unknown


def died(owner: str, host: str) -> bool:
    """Did the process that made this claim die? Only a token of owner_token()'s form, of
    this host, can tell; any other claim waits for its lease to expire."""
    process = owner.rpartition("/")[0]
    if process == owner_token():  # this process, which runs: no need to ask /proc
        return False
    name, _, rest = process.partition(":")
    pid, _, started = rest.partition(":")
    if name != host or not (pid.isdigit() and started.isdigit()):
        return False
    running = _process(int(pid))
    if running is None:
        return True
    state, start = running
    # A zombie has not been reaped yet, but it will never renew or ack.
    return state in ("Z", "X") or start not in (-1, int(started))
