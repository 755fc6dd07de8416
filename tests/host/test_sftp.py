"""Files sent through OpenSSH's sshd (internal-sftp, chrooted users, umask 0007) by the real
clients people use arrive in S3 byte-exact, and nothing is left on the server."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import time

import pytest

from tests.host.machine import require_bootable
from tests.host.server import USERS, Server

require_bootable()


def test_chrooted_user_sees_only_the_jail_and_gets_no_shell(server: Server) -> None:
    listing = server.sftp("sftpuser1", "ls -1 /")
    assert [line for line in listing.splitlines() if not line.startswith("sftp>")] == ["/upload"]
    shell = server.m.net("ssh", "-i", str(server.key), "-o", "BatchMode=yes",
                         "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                         "sftpuser1@127.0.0.1", "id", text=True, timeout=60)
    assert "uid=" not in shell.stdout
    assert "only" in shell.stdout + shell.stderr  # "This service allows sftp connections only."


def test_openssh_sftp_uploads_every_way(server: Server) -> None:
    """Plain put, put to a .part name then rename (posix-rename: MOVED_TO), `rename -l` (the
    legacy rename: link + unlink, an IN_CREATE with no close-write), mkdir + put."""
    sent = []
    for user in USERS:
        content = {name: os.urandom(20_000) for name in ("plain", "part", "legacy", "nested")}
        local = {name: server.make_file(f"{user}/ways/{name}.csv.gz", data)
                 for name, data in content.items()}
        text = os.urandom(3000).hex().encode()  # not compressed: uploaded byte for byte
        local_text = server.make_file(f"{user}/ways/notes.txt", text, gz=False)
        server.sftp(user, "\n".join([
            f"put {local['plain']} /upload/plain.csv.gz",
            f"put {local_text} /upload/notes.txt",
            f"put {local['part']} /upload/part.csv.gz.part",
            "rename /upload/part.csv.gz.part /upload/part.csv.gz",
            f"put {local['legacy']} /upload/legacy.csv.gz.tmp",
            "rename -l /upload/legacy.csv.gz.tmp /upload/legacy.csv.gz",
            "mkdir /upload/2026",
            f"put {local['nested']} /upload/2026/nested.csv.gz",
        ]))
        sent += [server.expect(user, f"/upload/{name}.csv.gz", data)
                 for name, data in content.items() if name != "nested"]
        sent.append(server.expect(user, "/upload/2026/nested.csv.gz", content["nested"]))
        sent.append(server.expect(user, "/upload/notes.txt", text))
    server.wait_delivered(sent, timeout=60)
    server.assert_all_delivered()


def test_winscp_like_upload_filepart_then_legacy_rename(server: Server) -> None:
    """paramiko as WinSCP does it: write NAME.filepart, set its mtime, SSH_FXP_RENAME."""
    content = os.urandom(100_000)
    local = server.make_file("sftpuser2/winscp.csv.gz", content)
    server.paramiko("sftpuser2", f"""
        part = "/upload/winscp.csv.gz.filepart"
        with open({str(local)!r}, "rb") as src, sftp.open(part, "wb") as dst:
            dst.write(src.read())
        sftp.utime(part, (1700000000, 1700000000))
        sftp.rename(part, "/upload/winscp.csv.gz")
        """)
    upload = server.expect("sftpuser2", "/upload/winscp.csv.gz", content)
    server.wait_delivered([upload], timeout=60)
    server.assert_all_delivered()


def test_a_300_mb_gzip_arrives_whole(server: Server) -> None:
    local = server.outbox / "sftpuser1" / "big.bin.gz"
    local.parent.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    with gzip.open(local, "wb", compresslevel=1) as out:
        for _ in range(300):
            chunk = os.urandom(1 << 20)
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
    server.sftp("sftpuser1", f"put {local} /upload/big.bin.gz")
    upload = server.expect("sftpuser1", "/upload/big.bin.gz", b"")
    upload.sha256, upload.size = digest.hexdigest(), size
    server.wait_delivered([upload], timeout=180)
    local.unlink()
    server.assert_all_delivered()
    assert "parts=" in server.logs()


def test_operator_sees_the_counts_and_the_upload_lines(server: Server) -> None:
    """`queue status` and `queue list --state failed`, run as the service user as the docs
    says, match what happened; the journal has an upload line for every file sent."""
    server.assert_all_delivered()
    status = json.loads(server.operator("queue status --json"))
    assert status["pending"] == 0 and status["claimed"] == 0, status
    assert status["failed"] == 0 and status["done"] >= len(server.sent), status
    assert server.operator("queue list --state failed").strip() == ""
    journal = server.m.run("journalctl", "--no-pager", "-o", "cat", "-u", "sftppush-*").stdout
    for upload in server.sent:
        assert f"key={upload.key} " in journal, upload.key
    # CAP_LEASE works under the unit's hardening: the consumer can tell, for files the
    # chrooted users own, whether one is still open for writing before deleting it.
    assert "cannot tell whether a file is still open for writing" not in journal


def test_two_names_for_one_key_never_overwrite(server: Server) -> None:
    """a.csv then a.csv.gz: the second ends failed with `key collision`, stays on disk, and
    the operator sees it in `queue list --state failed`; then does what the README's
    troubleshooting table says."""
    first = os.urandom(5000)
    server.sftp("sftpuser1", f"put {server.make_file('sftpuser1/dup.csv', first, gz=False)} "
                             "/upload/dup.csv")
    upload = server.expect("sftpuser1", "/upload/dup.csv", first)
    server.wait_delivered([upload], timeout=60)
    second_body = os.urandom(3000)
    server.sftp("sftpuser1", f"put {server.make_file('sftpuser1/dup.csv.gz', second_body)} "
                             "/upload/dup.csv.gz")
    deadline = time.monotonic() + 30
    while True:
        entries = [json.loads(line) for line in
                   server.operator("queue list --json --limit 5").splitlines()]
        second = [e for e in entries if e["path"].endswith("/dup.csv.gz")]
        if second and second[0]["state"] in ("done", "failed"):
            break
        assert time.monotonic() < deadline, entries
        time.sleep(0.2)
    assert server.delivered(upload), "the first name's object was replaced"
    assert second[0]["state"] == "failed", second
    assert server.m.path("/home/sftpuser1/upload/dup.csv.gz").exists()
    assert "key collision" in server.operator("queue list --state failed")
    # The troubleshooting table: rename the file that failed, then replay its entry to retire it.
    server.sftp("sftpuser1", "rename /upload/dup.csv.gz /upload/dup2.csv.gz")
    renamed = server.expect("sftpuser1", "/upload/dup2.csv.gz", second_body)
    server.operator(f"queue replay {second[0]['id']}")
    server.wait_delivered([upload, renamed], timeout=60)
    assert json.loads(server.operator("queue status --json"))["failed"] == 0


@pytest.mark.parametrize("user", USERS)
def test_uploads_by_both_users_stay_in_their_own_prefix(server: Server, user: str) -> None:
    uploads = server.batch(user, 20)
    server.wait_delivered(uploads, timeout=60)
    assert all(u.key.startswith(f"incoming/{user}/upload/") for u in uploads)
    server.assert_all_delivered()
