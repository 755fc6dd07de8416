"""The real server the host suite shares: Debian booted by systemd-nspawn, sftppush installed
inside by the marked blocks of docs/operations.md, OpenSSH's sshd with two chrooted SFTP
users, and `rclone serve s3` as the store. `Server` uploads from the host through sshd and
reads the objects back from the store's directory. tests/host/conftest.py boots it once:
prepare(), then sftp_users() and install_as_the_docs_say() inside the running machine.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

from sftppush.locals3 import rclone_binary
from tests.conftest import FAKE_ACCESS_KEY, FAKE_SECRET_KEY, REPO
from tests.host.machine import Machine
from tests.host.readme import adapt, marked_blocks

USERS = ("sftpuser1", "sftpuser2")
BUCKET = "my-bucket"           # the install's s3target: my-bucket/incoming
PREFIX = "incoming"
S3_PORT = 9000
S3_DIR = "/var/lib/test-s3"
SFTPPUSH = "/opt/sftppush/bin/sftppush --config /etc/sftppush/config.yaml"
CONSUMERS = ("sftppush-consume@1.service", "sftppush-consume@2.service")
WATCH = "sftppush-watch.service"


S3_UNIT = f"""\
[Unit]
Description=the test's S3 store (rclone serve s3 on 127.0.0.1)
[Service]
ExecStart=/usr/local/bin/rclone serve s3 {S3_DIR} --addr 127.0.0.1:{S3_PORT} \
  --auth-key {FAKE_ACCESS_KEY},{FAKE_SECRET_KEY} --config /dev/null --log-level ERROR
[Install]
WantedBy=multi-user.target
"""

# Appended to Debian's sshd_config (a Match block must come last).
SSHD_CONFIG = f"""
# sftppush host suite: chrooted SFTP-only users, keys only, loopback only
ListenAddress 127.0.0.1
PasswordAuthentication no
KbdInteractiveAuthentication no
Match User {",".join(USERS)}
    ChrootDirectory /home/%u
    ForceCommand internal-sftp -u 0007
    AuthorizedKeysFile /etc/ssh/authorized_keys/%u
    AllowTcpForwarding no
    X11Forwarding no
"""

# sudoedit's editor for the install's credentials step: writes what an admin would type.
CREDENTIALS_EDITOR = f"""#!/bin/sh
cat > "$1" <<'EOF'
[default]
aws_access_key_id = {FAKE_ACCESS_KEY}
aws_secret_access_key = {FAKE_SECRET_KEY}
EOF
"""


def _copy_checkout(target: Path) -> None:
    """What an admin's checkout holds of the repository, without caches or the venv."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", ".venv", "build", "var")
    target.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, target / name)
    for name in ("sftppush", "systemd", "docs"):
        shutil.copytree(REPO / name, target / name, ignore=ignore)


def _build_wheels(target: Path) -> None:
    """The project's dependencies as wheels, for a machine without network: `pip install .`
    inside finds everything here (its /etc/pip.conf says no index)."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(target),
                    str(REPO), "setuptools>=68"], check=True, capture_output=True)


@dataclass
class Upload:
    """A file sent by an SFTP user: where it lands, and what its object must hold."""

    user: str
    remote: str          # path in the user's jail, e.g. /upload/a.csv.gz
    key_name: str        # remote path as the object key has it (one compression suffix less)
    sha256: str          # of the decompressed content
    size: int

    @property
    def local(self) -> str:
        """Its path on the server."""
        return f"/home/{self.user}{self.remote}"

    @property
    def key(self) -> str:
        return f"{PREFIX}/{self.user}{self.key_name}"


class Server:
    """The booted machine with sftppush installed, seen from the host."""

    def __init__(self, machine: Machine, workdir: Path) -> None:
        self.m = machine
        self.workdir = workdir
        self.key = workdir / "id_ed25519"
        self.outbox = workdir / "outbox"
        self.outbox.mkdir(exist_ok=True)
        self.sent: list[Upload] = []
        self._n = 0

    # --- making files and sending them --------------------------------------------------------

    def make_file(self, name: str, content: bytes, gz: bool = True) -> Path:
        """A local file to upload: `content`, gzip-compressed when `gz`."""
        path = self.outbox / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gzip.compress(content, compresslevel=1) if gz else content)
        return path

    def batch(self, user: str, count: int, size: int = 4096, subdir: str = "") -> list[Upload]:
        """`count` gzip files of random content, put one after another in one sftp session."""
        lines, uploads = [], []
        for _ in range(count):
            self._n += 1
            name = f"{subdir}/f{self._n:06d}.csv.gz" if subdir else f"f{self._n:06d}.csv.gz"
            content = os.urandom(size)
            local = self.make_file(f"{user}/{name}", content)
            lines.append(f"put {local} /upload/{name}")
            uploads.append(self.expect(user, f"/upload/{name}", content))
        self.sftp(user, "\n".join(lines))
        return uploads

    def expect(self, user: str, remote: str, content: bytes) -> Upload:
        key_name = remote[:-3] if remote.endswith(".gz") else remote
        upload = Upload(user, remote, key_name, hashlib.sha256(content).hexdigest(),
                        len(content))
        self.sent.append(upload)
        return upload

    def sftp(self, user: str, commands: str, timeout: float = 300) -> str:
        """Run `sftp -b -` (the host's OpenSSH client) as `user` against the server's sshd."""
        result = self.m.net(
            "sftp", "-b", "-", "-i", str(self.key), "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", f"{user}@127.0.0.1",
            input=commands + "\n", text=True, timeout=timeout)
        assert result.returncode == 0, f"sftp as {user} failed:\n{result.stdout}{result.stderr}"
        return result.stdout

    def paramiko(self, user: str, script: str, timeout: float = 120) -> str:
        """Run `script` with `sftp` (a paramiko SFTPClient logged in as `user`) bound."""
        prelude = textwrap.dedent(f"""\
            import paramiko
            client = paramiko.SSHClient()
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
            client.connect("127.0.0.1", username={user!r}, key_filename={str(self.key)!r},
                           look_for_keys=False, allow_agent=False)
            sftp = client.open_sftp()
            """)
        result = self.m.net(sys.executable, "-c", prelude + textwrap.dedent(script),
                            text=True, timeout=timeout)
        assert result.returncode == 0, f"paramiko as {user} failed:\n{result.stderr}"
        return result.stdout

    # --- what arrived -----------------------------------------------------------------------

    def object_path(self, key: str) -> Path:
        return self.m.path(f"{S3_DIR}/{BUCKET}/{key}")

    def delivered(self, upload: Upload) -> bool:
        """Its object holds exactly the content sent, and its file is gone from the server."""
        obj = self.object_path(upload.key)
        if self.m.path(upload.local).exists() or not obj.is_file():
            return False
        if obj.stat().st_size != upload.size:
            return False
        digest = hashlib.sha256()
        with obj.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        return digest.hexdigest() == upload.sha256

    def wait_delivered(self, uploads: list[Upload] | None = None, timeout: float = 120) -> None:
        """Until every upload (default: all sent so far) is delivered; fail at the deadline."""
        waiting = list(self.sent if uploads is None else uploads)
        deadline = time.monotonic() + timeout
        while waiting:
            waiting = [u for u in waiting if not self.delivered(u)]
            if not waiting:
                break
            if time.monotonic() > deadline:
                sample = [(u.local, self.m.path(u.local).exists(),
                           self.object_path(u.key).exists()) for u in waiting[:5]]
                raise AssertionError(
                    f"{len(waiting)} uploads not delivered after {timeout}s "
                    f"(path, file left, object there): {sample}\n"
                    f"{self.operator('queue status')}\n{self.logs()[-4000:]}")
            time.sleep(0.5)

    def files_left(self) -> list[str]:
        """Every file under the users' upload trees on the server."""
        found = []
        for user in USERS:
            root = self.m.path(f"/home/{user}/upload")
            found += [str(p.relative_to(self.m.root)) for p in root.rglob("*") if not p.is_dir()]
        return sorted(found)

    def assert_all_delivered(self, timeout: float = 120, keep: tuple[str, ...] = ()) -> None:
        """Every file sent so far is in the store, byte-exact, and none is left on disk
        (but the paths in `keep`)."""
        self.wait_delivered(timeout=timeout)
        left = [f for f in self.files_left() if "/" + f not in keep]
        assert not left, f"files left on the server: {left[:10]}"

    # --- operating it -------------------------------------------------------------------------

    def operator(self, command: str, check: bool = True) -> str:
        """`sftppush COMMAND` as the docs say to run it: as the service user."""
        return self.m.sh(f"sudo -u sftppush {SFTPPUSH} {command}", check=check)

    def logs(self) -> str:
        return self.m.run("journalctl", "--no-pager", "-o", "short-monotonic",
                          "-u", "sftppush-*", check=False).stdout

    def restarts(self, unit: str) -> int:
        return int(self.m.unit_property(unit, "NRestarts"))

    def wait_sftppush_up(self, timeout: float = 60) -> None:
        self.m.wait_active(WATCH, *CONSUMERS, "test-s3.service", timeout=timeout)


def prepare(m: Machine, server: Server) -> None:
    """Files put into the machine before its first boot: the checkout, the wheels, the S3
    store's unit and binary, sshd's set-up and the SFTP users' keys."""
    _copy_checkout(m.path("/root/sftppush"))
    _build_wheels(m.path("/root/wheels"))
    m.path("/etc/pip.conf").write_text("[global]\nno-index = true\nfind-links = /root/wheels\n")
    shutil.copy2(rclone_binary(), m.path("/usr/local/bin/rclone"))
    m.path(f"{S3_DIR}/{BUCKET}").mkdir(parents=True)
    m.path("/etc/systemd/system/test-s3.service").write_text(S3_UNIT)
    wants = m.path("/etc/systemd/system/multi-user.target.wants")
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "test-s3.service").symlink_to("/etc/systemd/system/test-s3.service")
    m.path("/etc/hostname").write_text("sftppush-host\n")
    with m.path("/etc/hosts").open("a") as f:
        f.write("127.0.1.1 sftppush-host\n")
    with m.path("/etc/ssh/sshd_config").open("a") as f:
        f.write(SSHD_CONFIG)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(server.key)],
                   check=True)
    keys = m.path("/etc/ssh/authorized_keys")
    keys.mkdir()
    for user in USERS:
        shutil.copy(f"{server.key}.pub", keys / user)
    editor = m.path("/root/write-credentials")
    editor.write_text(CREDENTIALS_EDITOR)
    editor.chmod(0o755)


def sftp_users(m: Machine) -> None:
    """Two SFTP-only users, each jailed in /home/USER (root-owned, as ChrootDirectory wants)
    with an upload directory of their own."""
    for user in USERS:
        m.sh(f"""
            useradd --no-create-home --home-dir /home/{user} --shell /usr/sbin/nologin {user}
            install -d -m 0755 -o root -g root /home/{user}
            install -d -m 0755 -o {user} -g {user} /home/{user}/upload
        """)


def install_as_the_docs_say(m: Machine) -> None:
    """The install's marked blocks, in order, in the checkout. Changes are made by `adapt()`
    only: the S3 endpoint of this machine, a second source, two consumers instead of four."""
    blocks = marked_blocks()
    expected = ["service-user", "program", "config", "credentials", "upload-tree",
                "upload-tree-acl", "inotify-watches", "config-check", "units", "metrics"]
    assert list(blocks) == expected, f"the install's marked blocks changed: {list(blocks)}"

    def run(name: str, script: str, prelude: str = "") -> None:
        try:
            m.sh(f"cd /root/sftppush\n{prelude}\n{script}", timeout=600)
        except Exception as exc:
            raise AssertionError(f"the install's block {name} failed in the container:"
                                 f"\n{exc}") from exc

    run("service-user", blocks["service-user"])
    run("program", blocks["program"])
    config = adapt(blocks["config"], "  awsregion: eu-central-1\n",
                   f"  awsregion: eu-central-1\n  endpoint_url: http://127.0.0.1:{S3_PORT}\n")
    config = adapt(config, "      paths: [/upload]\n",
                   "      paths: [/upload]\n    - name: sftpuser2\n      paths: [/upload]\n")
    run("config", config)
    run("credentials", blocks["credentials"], prelude="export SUDO_EDITOR=/root/write-credentials")
    for user in USERS:
        for name in ("upload-tree", "upload-tree-acl"):
            block = blocks[name]
            assert "sftpuser1" in block
            run(name, block.replace("sftpuser1", user))
    # A container may not set kernel parameters (/proc/sys is read-only in it): the drop-in
    # must be written and read, and refusals are the only errors allowed.
    result = m.run("bash", "-euo", "pipefail", "-c", blocks["inotify-watches"], check=False)
    assert "Applying /etc/sysctl.d/90-sftppush.conf" in result.stdout, result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("sysctl:")]
    assert all("permission denied on key" in line for line in errors), result.stderr
    # Consumer 1 starts alone first: its ExecStartPre runs `config check`, which must pass.
    run("config-check", blocks["config-check"])
    run("units", adapt(blocks["units"], "sftppush-consume@{1..4}.service",
                       "sftppush-consume@{1..2}.service"))
    # The endpoint answers once the unit has bound its port: wait for it, then run the block.
    m.sh("for i in $(seq 50); do curl -sf http://127.0.0.1:9464/metrics >/dev/null && break;"
         " [ $i -gt 1 ] || systemctl start sftppush-metrics.service; sleep 0.2; done; true")
    try:
        run("metrics", blocks["metrics"])
    except AssertionError:
        raise AssertionError(m.run("journalctl", "--no-pager", "-u", "sftppush-metrics.service",
                                   check=False).stdout[-3000:]) from None
