"""Safe open: never a symlink at any depth, only regular files inside the root, one link."""

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sftppush.errors import PermanentError
from sftppush.pipeline import safeopen
from sftppush.pipeline.safeopen import (
    DELETING_PREFIX,
    WRITING,
    Kept,
    SafeFile,
    Vanished,
    open_in_root,
)


@pytest.fixture(params=["openat2", "walk"])
def tree(tmp_path: Path, request: pytest.FixtureRequest,
         monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """Every test runs on both ways of resolving a path beneath the root."""
    if request.param == "walk":
        monkeypatch.setattr(safeopen, "_openat2", None)
    else:
        assert safeopen._openat2 is not None, "this kernel has openat2 (Linux >= 5.6)"
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
        assert safe.unlink() == Kept("replaced")
    assert f.read_bytes() == b"v2 longer"
    with open_in_root(root, bytes(f)) as safe:
        assert safe.unlink() is None
    assert not f.exists()


def newer_version(path: Path, data: bytes = b"v2, written while v1 was uploading") -> None:
    """A client re-sends the file the usual way: to a temporary name, then rename over it."""
    temp = path.with_name(path.name + ".filepart")
    temp.write_bytes(data)
    os.rename(temp, path)


def use_fallback_unless(noreplace: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not noreplace:
        monkeypatch.setattr(safeopen, "_renameat2", lambda: None)
    else:  # glibc >= 2.28 has it: Debian 12's 2.36, CI's machine
        assert safeopen._renameat2() is not None, "no renameat2 in this libc"


def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.is_file())


def opened_with(root: Path, path: Path, after_check: Callable[[], object] = lambda: None,
                after_set_aside: Callable[[], object] = lambda: None) -> SafeFile:
    """`path` opened, with something happening right after unlink's check of the name and
    right after it set the name aside: the moments a newer version could land."""

    class Unlucky(SafeFile):
        def unchanged(self) -> bool:
            still = super().unchanged()
            after_check()
            return still

        def _set_aside(self) -> bytes | None:
            private = super()._set_aside()
            after_set_aside()
            return private

    safe = open_in_root(root, bytes(path))
    return Unlucky(safe.fd, safe.dir_fd, safe.name, safe.st)


@pytest.mark.parametrize("noreplace", [True, False], ids=["renameat2", "link+unlink"])
def test_unlink_never_deletes_a_version_renamed_over_the_name_after_the_check(
        tree: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, noreplace: bool) -> None:
    # The race of SPEC 4/7: the name is checked, a newer version is renamed over it, then
    # the delete by name would remove the newer version, which has its own queue entry.
    # Set aside instead of v1, it goes back to its name (by either way of renaming).
    root, _ = tree
    f = root / "upload" / "a.csv"
    f.write_bytes(b"v1")
    use_fallback_unless(noreplace, monkeypatch)
    with opened_with(root, f, after_check=lambda: newer_version(f)) as safe:
        assert safe.unlink() == Kept("replaced")
    assert f.read_bytes() == b"v2, written while v1 was uploading"
    assert files_in(f.parent) == ["a.csv"]  # nothing left aside
    assert os.stat(f).st_nlink == 1


def test_unlink_deletes_the_opened_version_when_a_newer_one_arrives_after_the_set_aside(
        tree: tuple[Path, Path]) -> None:
    root, _ = tree
    f = root / "upload" / "a.csv"
    f.write_bytes(b"v1")
    with opened_with(root, f, after_set_aside=lambda: newer_version(f)) as safe:
        assert safe.unlink() is None
    assert f.read_bytes() == b"v2, written while v1 was uploading"
    assert files_in(f.parent) == ["a.csv"]


@pytest.mark.parametrize("noreplace", [True, False], ids=["renameat2", "link+unlink"])
def test_a_version_set_aside_by_mistake_never_clobbers_an_even_newer_one(
        tree: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, noreplace: bool,
        caplog: pytest.LogCaptureFixture) -> None:
    # v2 lands after the check and is set aside instead of v1; v3 lands before v2 can go back.
    # v3 keeps the name; v2 is not put back over it and not deleted either.
    root, _ = tree
    f = root / "upload" / "a.csv"
    f.write_bytes(b"v1")
    use_fallback_unless(noreplace, monkeypatch)
    with opened_with(root, f, after_check=lambda: newer_version(f, b"v2"),
                     after_set_aside=lambda: newer_version(f, b"v3")) as safe:
        assert safe.unlink() == Kept("replaced")
    assert f.read_bytes() == b"v3"
    kept = [p for p in f.parent.iterdir() if p.name.startswith(DELETING_PREFIX.decode())]
    assert [p.read_bytes() for p in kept] == [b"v2"]
    assert f"set aside name=a.csv kept_as={kept[0].name}" in caplog.text


def test_unlink_keeps_a_file_rewritten_in_place_with_its_old_mtime(
        tree: tuple[Path, Path]) -> None:
    # Same inode, size and mtime (a client that restores the mtime): only ctime tells.
    root, _ = tree
    f = root / "upload" / "a.csv"
    f.write_bytes(b"v1")
    with open_in_root(root, bytes(f)) as safe:
        time.sleep(0.05)  # ctime ticks with the kernel's coarse clock
        f.write_bytes(b"v2")
        os.utime(f, ns=(safe.st.st_atime_ns, safe.st.st_mtime_ns))
        assert safe.unlink() == Kept("replaced")
    assert f.read_bytes() == b"v2"


def test_a_version_left_aside_by_a_killed_consumer_is_removed_by_the_retry(
        tree: tuple[Path, Path]) -> None:
    # SIGKILL between the set-aside and the unlink (seen under systemd, tests/host): the
    # retry finds the name gone; the version it uploaded is still aside, under its inode.
    root, _ = tree
    f = root / "upload" / "a.csv"
    f.write_bytes(b"v1")
    with open_in_root(root, f) as safe:
        st = safe.st
        assert safe._set_aside() is not None  # ... and the consumer dies here
    other = root / "upload" / "b.csv"
    other.write_bytes(b"someone else's")
    none = safeopen.Aside.NONE
    assert safeopen.remove_set_aside(root, other, other.stat().st_ino, 15, 0) == none
    assert safeopen.remove_set_aside(root, f, st.st_ino, st.st_size, st.st_mtime_ns + 1) == none
    assert safeopen.remove_set_aside(root, f, st.st_ino, st.st_size, st.st_mtime_ns) == \
        safeopen.Aside.REMOVED
    assert files_in(f.parent) == ["b.csv"]


def test_a_set_aside_removed_under_a_name_not_utf8_is_logged_escaped(
        tree: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    # A name's bytes reach the log as escapes, never as lone surrogates that no UTF-8
    # stream (a journal, a log file, pytest-xdist's reports) can encode.
    root, _ = tree
    f = root / "upload" / os.fsdecode(b"p\xe9.csv")
    f.write_bytes(b"v1")
    with open_in_root(root, f) as safe:
        st = safe.st
        assert safe._set_aside() is not None
    with caplog.at_level("INFO", logger="sftppush.safeopen"):
        assert safeopen.remove_set_aside(root, f, st.st_ino, st.st_size, st.st_mtime_ns) == \
            safeopen.Aside.REMOVED
    [line] = [r.getMessage() for r in caplog.records if "removed set-aside" in r.message]
    assert "name=p\\xe9.csv" in line
    line.encode("utf-8")


def test_a_file_still_open_for_writing_is_never_deleted(tree: tuple[Path, Path]) -> None:
    # A client re-sending in place opened the file (O_TRUNC) and has not written yet: the
    # version we read (empty) is unchanged, but deleting it would lose what the client writes
    # next into an unlinked inode.
    root, _ = tree
    f = root / "upload" / "resend.csv"
    f.write_bytes(b"")
    writer = os.open(f, os.O_WRONLY | os.O_TRUNC)
    try:
        with open_in_root(root, bytes(f)) as safe:
            assert safe.unlink() == Kept(WRITING)
        assert f.exists()
    finally:
        os.write(writer, b"the re-send\n")
        os.close(writer)
    with open_in_root(root, bytes(f)) as safe:
        assert safe.unlink() is None
    assert not f.exists()
