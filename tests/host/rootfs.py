"""The Debian rootfs the host suite boots: built once with debootstrap, cached outside the clone.

Owns the package list, the cache key and the build. The cache lives in
/var/cache/sftppush-host/<hash of the package list and this builder>/rootfs, is built when
missing, and is never written after that (a boot gets an overlay on top of it). Run
`python -m tests.host.rootfs` to build it ahead of the tests.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

SUITE = "bookworm"  # Python 3.11 inside, like the host's wheels; systemd 252
PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "openssh-server", "openssh-sftp-server",
    "python3", "python3-venv", "inotify-tools", "iproute2", "procps",
    "sudo", "acl", "curl",  # the install's commands: sudo -u sftppush, setfacl, curl
)
# Bump when the build steps below change, so that older caches are not reused.
BUILDER_VERSION = "1"
CACHE = Path(os.environ.get("SFTPPUSH_HOST_CACHE", "/var/cache/sftppush-host"))


def cache_key() -> str:
    text = "\n".join([SUITE, BUILDER_VERSION, *sorted(PACKAGES)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def apt_mirror(suite: str = SUITE) -> str:
    """The Debian mirror this machine's apt already uses for `suite` (not -security)."""
    sources = Path("/etc/apt/sources.list.d")
    stanzas: list[tuple[list[str], list[str]]] = []
    for path in sorted(sources.glob("*.sources")):
        for block in re.split(r"\n\s*\n", path.read_text()):
            fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", block, re.M))
            if fields.get("Enabled", "yes").lower() != "no":
                stanzas.append((fields.get("URIs", "").split(), fields.get("Suites", "").split()))
    lists = [Path("/etc/apt/sources.list"), *sorted(sources.glob("*.list"))]
    for path in lists:
        if path.is_file():
            for m in re.finditer(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", path.read_text(), re.M):
                stanzas.append(([m[1]], [m[2]]))
    for uris, suites in stanzas:
        if suite in suites and uris and "security" not in uris[0]:
            return uris[0]
    raise RuntimeError(f"no apt source for Debian {suite} on this machine")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def rootfs() -> Path:
    """The cached rootfs, built now if missing (about a minute); safe to call concurrently."""
    base = CACHE / cache_key()
    done = base / "rootfs" / ".sftppush-rootfs-complete"
    if done.exists():
        return base / "rootfs"
    with _locked(base / "lock"):
        if not done.exists():
            _build(base)
    return base / "rootfs"


def _build(base: Path) -> None:
    started = time.monotonic()
    if (base / "rootfs").exists():
        shutil.rmtree(base / "rootfs")
    work = Path(tempfile.mkdtemp(prefix="build-", dir=base))
    try:
        subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
             SUITE, str(work), apt_mirror()],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # The packages' .debs and apt lists are half the size and never used again.
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for f in (work / junk).glob("*"):
                if f.is_file():
                    f.unlink()
        # A machine id per boot of an overlay (systemd makes one when the file is empty).
        (work / "etc/machine-id").write_text("")
        (work / ".sftppush-rootfs-complete").write_text(f"{SUITE} {' '.join(PACKAGES)}\n")
        work.rename(base / "rootfs")
    except subprocess.CalledProcessError as exc:
        tail = exc.stderr.decode(errors="replace")[-2000:]
        raise RuntimeError(f"debootstrap failed: {tail}") from None
    finally:
        if work.exists():
            _unmount_under(work)  # a failed debootstrap can leave /proc, /sys mounted in it
            shutil.rmtree(work)
    print(f"rootfs built in {time.monotonic() - started:.0f}s: {base / 'rootfs'}", file=sys.stderr)


def _unmount_under(path: Path) -> None:
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(f"{path}/")), reverse=True):
        subprocess.run(["umount", "--lazy", mount], check=False)


if __name__ == "__main__":
    print(rootfs())
