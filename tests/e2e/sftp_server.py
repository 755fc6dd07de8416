"""A real SFTP server for end-to-end tests: asyncssh on 127.0.0.1, each user jailed in a directory.

It renames like OpenSSH's sftp-server, because that is the hard case for the watcher: a plain
SSH_FXP_RENAME of a regular file is link() then unlink() (no open, no close-write), only the
posix-rename extension is rename(). It never listens beyond loopback.

Run as its own process (so clients and product processes do not share its GIL):
    python tests/e2e/sftp_server.py --host-key F --authorized-keys F --user NAME=DIR [...]
prints `port N` on stdout once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncssh

SFTP = "/usr/bin/sftp"


class OpenSSHLikeSFTPServer(asyncssh.SFTPServer):
    """asyncssh's local-filesystem server, jailed per user, with OpenSSH's rename semantics."""

    def __init__(self, chan: asyncssh.SSHServerChannel, roots: dict[str, str], rename_mode: str):
        self._rename_mode = rename_mode
        super().__init__(chan, chroot=roots[chan.get_extra_info("username")].encode())

    def rename(self, oldpath: bytes, newpath: bytes) -> None:
        old = self.map_path(oldpath)
        new = self.map_path(newpath)
        if self._rename_mode == "link" and stat.S_ISREG(os.lstat(old).st_mode):
            # sftp-server.c process_rename(): "Race-free rename of regular files".
            os.link(old, new)
            try:
                os.unlink(old)
            except OSError:
                os.unlink(new)
                raise
            return
        if os.path.lexists(new):
            raise asyncssh.SFTPFailure("target exists")
        os.rename(old, new)

    def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
        os.rename(self.map_path(oldpath), self.map_path(newpath))


async def serve(host_key: str, authorized_keys: str, roots: dict[str, str],
                rename_mode: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def check_user(username: str) -> bool:
        return username in roots

    class Server(asyncssh.SSHServer):
        def begin_auth(self, username: str) -> bool:
            if not check_user(username):
                raise asyncssh.PermissionDenied(f"unknown user {username}")
            return True

    acceptor = await asyncssh.listen(
        "127.0.0.1", 0,
        server_factory=Server,
        server_host_keys=[host_key],
        authorized_client_keys=authorized_keys,
        sftp_factory=lambda chan: OpenSSHLikeSFTPServer(chan, roots, rename_mode),
        allow_scp=False,
    )
    print(f"port {acceptor.get_port()}", flush=True)
    await stop.wait()
    acceptor.close()
    await acceptor.wait_closed()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host-key", required=True)
    parser.add_argument("--authorized-keys", required=True)
    parser.add_argument("--user", action="append", required=True, metavar="NAME=DIR")
    parser.add_argument("--rename", choices=["link", "rename"], default="link")
    args = parser.parse_args(argv)
    roots = dict(u.split("=", 1) for u in args.user)
    asyncio.run(serve(args.host_key, args.authorized_keys, roots, args.rename))


# --- the test side: keys, the server process, and the two real clients -----------------------

@dataclass(frozen=True)
class SshKeys:
    host_key: Path
    client_key: Path          # OpenSSH private key format, mode 0600, for `sftp -i` and paramiko
    authorized_keys: Path

    @classmethod
    def generate(cls, directory: Path) -> SshKeys:
        directory.mkdir(parents=True, exist_ok=True)
        host = asyncssh.generate_private_key("ssh-ed25519")
        client = asyncssh.generate_private_key("ssh-ed25519")
        keys = cls(directory / "host_ed25519", directory / "client_ed25519",
                   directory / "authorized_keys")
        host.write_private_key(keys.host_key)
        client.write_private_key(keys.client_key)
        client.write_public_key(keys.authorized_keys)
        keys.host_key.chmod(0o600)
        keys.client_key.chmod(0o600)
        return keys


class SftpServer:
    """The server process. Started and stopped by the fixture that owns it."""

    def __init__(self, keys: SshKeys, roots: dict[str, Path], log: Path, rename: str = "link"):
        self.keys = keys
        self.roots = roots
        self.rename = rename
        self.log = log
        self.port: int | None = None
        self._proc: subprocess.Popen[str] | None = None

    def start(self) -> SftpServer:
        cmd = [sys.executable, __file__, "--host-key", str(self.keys.host_key),
               "--authorized-keys", str(self.keys.authorized_keys), "--rename", self.rename]
        for user, root in self.roots.items():
            cmd += ["--user", f"{user}={root}"]
        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
        line = self._proc.stdout.readline()
        if not line.startswith("port "):
            self.stop()
            raise RuntimeError(f"sftp server did not start: {line!r}; see {self.log}")
        self.port = int(line.split()[1])
        return self

    def stop(self) -> None:
        # Imported here: this file also runs as the server's own script, outside the package.
        from sftppush.locals3 import stop_process

        if self._proc is not None:
            stop_process(self._proc)
            self._proc.stdout.close()
        self._proc = None

    # OpenSSH's own client, in batch mode: every command must succeed or the batch aborts.
    def batch(self, user: str, commands: Sequence[str], cwd: Path | None = None,
              timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = [SFTP, "-b", "-", "-F", "/dev/null", "-P", str(self.port),
               "-i", str(self.keys.client_key),
               "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
               f"{user}@127.0.0.1"]
        done = subprocess.run(cmd, input="\n".join(commands) + "\n", capture_output=True,
                              text=True, cwd=cwd, timeout=timeout)
        if done.returncode != 0:
            raise AssertionError(f"sftp -b failed ({done.returncode}): {done.stderr.strip()}")
        return done

    @contextlib.contextmanager
    def paramiko(self, user: str) -> Iterator[object]:
        """A paramiko SFTPClient logged in as `user` (host key not checked: it is ours)."""
        import paramiko

        transport = paramiko.Transport(("127.0.0.1", self.port))
        try:
            transport.connect(username=user,
                              pkey=paramiko.Ed25519Key.from_private_key_file(
                                  str(self.keys.client_key)))
            client = paramiko.SFTPClient.from_transport(transport)
            try:
                yield client
            finally:
                client.close()
        finally:
            transport.close()


if __name__ == "__main__":
    main()
