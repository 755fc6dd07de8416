"""The test SFTP server behaves like OpenSSH's sftp-server where the watcher depends on it.

Uploads come from real clients: OpenSSH's `sftp -b` and paramiko. What the filesystem sees
is checked with inotify, the same way the watcher sees it.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from inotify_simple import INotify, flags

WATCHED = (flags.CREATE | flags.OPEN | flags.MODIFY | flags.CLOSE_WRITE | flags.MOVED_FROM
           | flags.MOVED_TO | flags.DELETE)


class Events:
    """inotify on one directory; names() drains events into {name: {"CREATE", ...}}."""

    def __init__(self, directory: Path):
        self._ino = INotify()
        self._ino.add_watch(directory, WATCHED)

    def names(self) -> dict[str, set[str]]:
        seen: dict[str, set[str]] = {}
        # The server answers only after the syscall, so every event is queued by now.
        while batch := self._ino.read(timeout=100):
            for event in batch:
                for flag in flags.from_mask(event.mask):
                    seen.setdefault(event.name, set()).add(flag.name)
        return seen

    def close(self) -> None:
        self._ino.close()


@pytest.fixture
def upload(sftp_server) -> Path:
    directory = sftp_server.roots["sftpuser1"] / "upload"
    directory.mkdir()
    return directory


@pytest.fixture
def events(upload):
    watch = Events(upload)
    yield watch
    watch.close()


@pytest.fixture
def local_file(tmp_path) -> Path:
    path = tmp_path / "local.bin"
    path.write_bytes(os.urandom(300_000))
    return path


def test_openssh_put_in_place_ends_with_close_write(sftp_server, upload, events, local_file):
    sftp_server.batch("sftpuser1", [f"put {local_file} upload/a.bin"])

    assert {"CREATE", "CLOSE_WRITE"} <= events.names()["a.bin"]
    assert (upload / "a.bin").read_bytes() == local_file.read_bytes()


def test_plain_rename_of_filepart_is_link_then_unlink(sftp_server, upload, events, local_file):
    sftp_server.batch("sftpuser1", [f"put {local_file} upload/b.csv.filepart",
                                    "rename -l upload/b.csv.filepart upload/b.csv"])

    seen = events.names()  # before our own reads add IN_OPEN
    assert (upload / "b.csv").read_bytes() == local_file.read_bytes()
    assert not (upload / "b.csv.filepart").exists()
    assert seen["b.csv"] == {"CREATE"}  # no open, no close-write, no moved-to: a new link
    assert {"CLOSE_WRITE", "DELETE"} <= seen["b.csv.filepart"]


def test_plain_rename_keeps_the_inode_and_leaves_one_link(sftp_server, upload):
    with sftp_server.paramiko("sftpuser1") as sftp:
        sftp.putfo(io.BytesIO(b"x" * 1000), "/upload/c.txt.part")
        inode = (upload / "c.txt.part").stat().st_ino
        sftp.rename("/upload/c.txt.part", "/upload/c.txt")

    st = (upload / "c.txt").stat()
    assert (st.st_ino, st.st_nlink, st.st_size) == (inode, 1, 1000)


def test_posix_rename_extension_is_a_real_rename(sftp_server, upload, events, local_file):
    sftp_server.batch("sftpuser1", [f"put {local_file} upload/d.tmp",
                                    "rename upload/d.tmp upload/d.bin"])  # openssh prefers it
    with sftp_server.paramiko("sftpuser1") as sftp:
        sftp.putfo(io.BytesIO(b"e"), "/upload/e.tmp")
        sftp.posix_rename("/upload/e.tmp", "/upload/e.bin")

    seen = events.names()
    assert seen["d.bin"] == {"MOVED_TO"}
    assert seen["e.bin"] == {"MOVED_TO"}
    assert (upload / "d.bin").read_bytes() == local_file.read_bytes()


def test_rename_mode_can_be_plain_rename(start_sftp, tmp_path):
    root = tmp_path / "plain"
    root.mkdir()
    server = start_sftp({"sftpuser1": root}, rename="rename")
    watch = Events(root)
    try:
        with server.paramiko("sftpuser1") as sftp:
            sftp.putfo(io.BytesIO(b"f"), "/f.filepart")
            sftp.rename("/f.filepart", "/f")
        assert watch.names()["f"] == {"MOVED_TO"}
    finally:
        watch.close()


def test_plain_rename_onto_an_existing_file_fails_like_openssh(sftp_server, upload):
    (upload / "taken").write_bytes(b"old")
    with sftp_server.paramiko("sftpuser1") as sftp:
        sftp.putfo(io.BytesIO(b"new"), "/upload/taken.filepart")
        with pytest.raises(OSError):
            sftp.rename("/upload/taken.filepart", "/upload/taken")

    assert (upload / "taken").read_bytes() == b"old"
    assert (upload / "taken.filepart").read_bytes() == b"new"


def test_mkdir_then_put_into_the_new_dirs(sftp_server, upload, local_file):
    sftp_server.batch("sftpuser1", ["mkdir upload/2026", "mkdir upload/2026/05",
                                    f"put {local_file} upload/2026/05/g.bin"])
    with sftp_server.paramiko("sftpuser1") as sftp:
        sftp.mkdir("/upload/dev7")
        sftp.putfo(io.BytesIO(b"h" * 10), "/upload/dev7/h.bin")

    assert (upload / "2026/05/g.bin").read_bytes() == local_file.read_bytes()
    assert (upload / "dev7/h.bin").read_bytes() == b"h" * 10


def test_clients_stay_inside_their_root(sftp_server, tmp_path):
    with sftp_server.paramiko("sftpuser1") as sftp:
        sftp.putfo(io.BytesIO(b"i"), "/../../escape.txt")

    assert (sftp_server.roots["sftpuser1"] / "escape.txt").read_bytes() == b"i"
    assert not (tmp_path / "escape.txt").exists()
    assert not (tmp_path / "home" / "escape.txt").exists()
