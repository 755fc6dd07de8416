"""A Debian machine booted with systemd-nspawn, systemd as its PID 1, driven from the host.

Owns the overlay over the cached rootfs (so the cache is never written), the cgroup the
container lives in, booting, running commands inside (nsenter), waiting for units, a clean
shutdown or reboot, and a hard power cut (cgroup.kill). It never touches anything of the host
but its own directory, mount and cgroup, and always tears them down.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
import uuid
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
# Inside the machine: a login-like environment, none of pytest's variables.
INSIDE_ENV = ["env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
              "HOME=/root", "LANG=C.UTF-8", "TERM=dumb", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0"]


def unavailable() -> str | None:
    """Why this host cannot boot a machine, or None if it can."""
    if os.geteuid() != 0:
        return "needs root (systemd-nspawn, overlay mounts, cgroups)"
    for tool in ("systemd-nspawn", "debootstrap", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install systemd-container debootstrap)"
    if not (CGROUP_ROOT / "unified" / "cgroup.procs").exists() and \
            not (CGROUP_ROOT / "cgroup.controllers").exists():
        return "no cgroup2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified"
    return None


def require_bootable() -> None:
    """Skip the calling test module, with the reason, on a host that cannot boot a machine;
    on CI (CI=true), whose machine can, that is an error instead."""
    import pytest

    reason = unavailable()
    if reason and os.environ.get("CI") == "true":
        pytest.fail(f"host suite cannot run on CI: {reason}", pytrace=False)
    if reason:
        pytest.skip(f"host suite: {reason}", allow_module_level=True)


class Machine:
    def __init__(self, lower: Path, workdir: Path) -> None:
        self.name = f"sftppush-host-{uuid.uuid4().hex[:8]}"
        self.workdir = workdir
        self.root = workdir / "root"
        self.console = workdir / "console.log"
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.pid1: int | None = None
        for d in ("upper", "work", "root"):
            (workdir / d).mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={lower},upperdir={workdir / 'upper'},"
                        f"workdir={workdir / 'work'}", str(self.root)], check=True)
        # A cgroup of our own in each hierarchy nspawn uses, so that its supervisor/payload
        # groups are ours to kill and remove, not created at the root of the host's tree.
        self.cgroups = [p / self.name for p in self._hierarchies()]
        for cg in self.cgroups:
            cg.mkdir()

    @staticmethod
    def _hierarchies() -> list[Path]:
        if (CGROUP_ROOT / "cgroup.controllers").exists():
            return [CGROUP_ROOT]  # pure cgroup2
        return [p for p in (CGROUP_ROOT / "systemd", CGROUP_ROOT / "unified") if p.is_dir()]

    @property
    def unified(self) -> Path:
        return next(cg for cg in self.cgroups if (cg / "cgroup.kill").exists()
                    or cg.parent == CGROUP_ROOT or cg.parent.name == "unified")

    # --- life -------------------------------------------------------------------------------

    def boot(self, timeout: float = 60) -> None:
        assert self.nspawn is None or self.nspawn.poll() is not None, "already running"
        cgroups = [cg / "cgroup.procs" for cg in self.cgroups]

        def enter_cgroup() -> None:
            for procs in cgroups:
                procs.write_text(str(os.getpid()))

        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}  # DevicePolicy= needs it
        with open(self.console, "ab") as console:
            self.nspawn = subprocess.Popen(
                ["systemd-nspawn", "--quiet", "--boot", f"--directory={self.root}",
                 f"--machine={self.name}", "--register=no", "--keep-unit",
                 "--private-network", "--system-call-filter=bpf", "--console=read-only"],
                stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT, env=env,
                preexec_fn=enter_cgroup)
        self.pid1 = self._find_pid1(timeout)
        self.wait_running(timeout)

    def _find_pid1(self, timeout: float) -> int:
        assert self.nspawn is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.nspawn.poll() is not None:
                raise AssertionError(f"systemd-nspawn exited {self.nspawn.returncode}:\n"
                                     f"{self.console_tail()}")
            for child in self._children(self.nspawn.pid):
                try:
                    if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                        return child
                except OSError:
                    pass
            time.sleep(0.05)
        raise AssertionError(f"no systemd in the container after {timeout}s")

    @staticmethod
    def _children(pid: int) -> list[int]:
        try:
            text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split()]

    def wait_running(self, timeout: float = 60) -> None:
        """Until `systemctl is-system-running` says running (a failed unit fails the test)."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
            if state == "running":
                return
            if state == "degraded":
                failed = self.run("systemctl", "--failed", "--no-legend", check=False).stdout
                raise AssertionError(f"the machine booted degraded:\n{failed}")
            time.sleep(0.1)
        raise AssertionError(f"system state {state!r} after {timeout}s:\n{self.console_tail()}")

    def shutdown(self, verb: str = "poweroff", timeout: float = 90) -> int:
        """A clean `systemctl poweroff` or `reboot`; nspawn's exit status (reboot: 133)."""
        assert self.nspawn is not None
        self.run("systemctl", "--no-block", verb)
        status = self.nspawn.wait(timeout)
        self.pid1 = None
        return status

    def reboot(self, timeout: float = 90) -> None:
        # nspawn exits 133 on a reboot of its container instead of starting it again.
        status = self.shutdown("reboot", timeout)
        assert status == 133, f"reboot: systemd-nspawn exited {status}"
        self.boot()

    def power_cut(self) -> None:
        """Every process of the machine and nspawn itself killed at once, no shutdown at all."""
        assert self.nspawn is not None
        (self.unified / "cgroup.kill").write_text("1")
        self.nspawn.wait(30)
        self.pid1 = None

    def close(self) -> None:
        if self.nspawn is not None and self.nspawn.poll() is None:
            try:
                self.shutdown(timeout=60)
            except Exception:
                self.power_cut()
        for cg in self.cgroups:
            # nspawn leaves its (now empty) supervisor/payload groups behind.
            for sub in sorted(cg.rglob("*"), key=lambda p: -len(p.parts)):
                if sub.is_dir():
                    try:
                        sub.rmdir()
                    except OSError:
                        pass
            try:
                cg.rmdir()
            except OSError:
                pass
        subprocess.run(["umount", str(self.root)], check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)

    # --- inside -----------------------------------------------------------------------------

    def run(self, *argv: str, check: bool = True, input: str | bytes | None = None,
            timeout: float = 120, text: bool = True) -> subprocess.CompletedProcess:
        """Run a command in all of the machine's namespaces, as root, with a clean env."""
        assert self.pid1 is not None, "the machine is not running"
        if isinstance(input, bytes):
            text = False
        result = subprocess.run(["nsenter", "-t", str(self.pid1), "-a", *INSIDE_ENV, *argv],
                                input=input, capture_output=True, text=text, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"inside: {shlex.join(argv)} exited {result.returncode}\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def sh(self, script: str, check: bool = True, timeout: float = 300) -> str:
        """Run a bash script inside, in /root; its stdout."""
        return self.run("bash", "-euo", "pipefail", "-c", f"cd /root\n{script}",
                        check=check, timeout=timeout).stdout

    def net(self, *argv: str, **kwargs) -> subprocess.CompletedProcess:
        """Run a host program in the machine's network namespace only (its 127.0.0.1)."""
        assert self.pid1 is not None
        kwargs.setdefault("capture_output", True)
        return subprocess.run(["nsenter", f"--net=/proc/{self.pid1}/ns/net", *argv], **kwargs)

    def path(self, inside: str) -> Path:
        """The host path of a path inside the machine (through the overlay)."""
        return self.root / inside.lstrip("/")

    def unit_property(self, unit: str, prop: str) -> str:
        return self.run("systemctl", "show", "-P", prop, unit).stdout.strip()

    def main_pid(self, unit: str) -> int:
        return int(self.unit_property(unit, "MainPID"))

    def wait_active(self, *units: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        for unit in units:
            while (state := self.unit_property(unit, "ActiveState")) != "active":
                if time.monotonic() > deadline:
                    raise AssertionError(f"{unit} is {state} after {timeout}s:\n"
                                         f"{self.journal(unit)[-3000:]}")
                time.sleep(0.1)

    def journal(self, *units: str, since: str | None = None) -> str:
        argv = ["journalctl", "--no-pager", "-o", "cat"]
        for unit in units:
            argv += ["-u", unit]
        if since:
            argv += ["--since", since]
        return self.run(*argv, check=False).stdout

    def console_tail(self, n: int = 4000) -> str:
        try:
            return self.console.read_text(errors="replace")[-n:]
        except OSError:
            return ""
