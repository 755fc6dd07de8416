"""Safe open: never a symlink at any depth, only regular files inside the root, one link."""

import os
from pathlib import Path

import pytest

from sftppush.errors import PermanentError
from sftppush.safeopen import Vanished, open_in_root


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "home" / "sftpuser1"
    (root / "upload" / "sub").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"shadow")
    return root, outside


def test_regular_file_opens_and_reads(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    f = root / "upload" / "sub" / "a.csv"
    f.write_bytes(b"data")
    with open_in_root(root, bytes(f)) as safe:
        assert os.read(safe.fd, 10) == b"data"
        assert safe.st.st_ino == f.stat().st_ino


def test_symlink_to_a_file_outside_is_refused(tree: tuple[Path, Path]) -> None:
    root, outside = tree
    link = root / "upload" / "link.csv"
    link.symlink_to(outside / "secret")
    with pytest.raises(PermanentError, match="symlink"):
        open_in_root(root, bytes(link))


def test_directory_swapped_for_a_symlink_is_refused(tree: tuple[Path, Path]) -> None:
    root, outside = tree
    (root / "upload" / "dirlink").symlink_to(outside)
    with pytest.raises(PermanentError, match="dirlink is a symlink"):
        open_in_root(root, bytes(root / "upload" / "dirlink" / "secret"))


def test_path_outside_the_root_is_refused(tree: tuple[Path, Path]) -> None:
    root, outside = tree
    with pytest.raises(PermanentError, match="outside the source root"):
        open_in_root(root, bytes(outside / "secret"))
    with pytest.raises(PermanentError, match="outside the source root"):
        open_in_root(root, os.fsencode(root) + b"/../../outside/secret")
    # A sibling whose name starts with the root's (sftpuser1 vs sftpuser10), and the root.
    sibling = root.parent / (root.name + "0")
    sibling.mkdir()
    (sibling / "f").write_bytes(b"other user")
    with pytest.raises(PermanentError, match="outside the source root"):
        open_in_root(root, bytes(sibling / "f"))
    with pytest.raises(PermanentError, match="outside the source root"):
        open_in_root(root, bytes(root) + b"/")


def test_hard_link_is_refused_with_a_short_retry(tree: tuple[Path, Path]) -> None:
    root, outside = tree
    link = root / "upload" / "hard"
    os.link(outside / "secret", link)
    with pytest.raises(PermanentError, match="2 hard links") as info:
        open_in_root(root, bytes(link), nlink_retry_after=0.5)
    assert info.value.retry_after == 0.5


def test_fifo_is_refused_without_blocking(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    fifo = root / "upload" / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(PermanentError, match="is a FIFO, not a regular file"):
        open_in_root(root, bytes(fifo))


def test_missing_file_or_directory_is_vanished(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    with pytest.raises(Vanished):
        open_in_root(root, bytes(root / "upload" / "gone.csv"))
    with pytest.raises(Vanished):
        open_in_root(root, bytes(root / "nodir" / "gone.csv"))


def test_unlink_deletes_only_the_version_that_was_opened(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    f = root / "upload" / "a.csv"
    f.write_bytes(b"v1")
    with open_in_root(root, bytes(f)) as safe:
        replacement = root / "upload" / "a.csv.new"
        replacement.write_bytes(b"v2 longer")
        os.rename(replacement, f)
        assert not safe.unlink()
    assert f.read_bytes() == b"v2 longer"
    with open_in_root(root, bytes(f)) as safe:
        assert safe.unlink()
    assert not f.exists()
