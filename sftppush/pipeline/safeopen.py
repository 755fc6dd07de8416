"""Open a queued file without ever following a symlink, at any depth (SPEC 7).

Owns the resolution beneath the source root's directory fd (one openat2 with
RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS where the kernel has it, else `openat(O_NOFOLLOW)` on
every component), the regular-file, inside-root and link-count checks, and the guarded delete.
It must never read file contents or decide what happens to a queue entry.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import errno
import fcntl
import functools
import logging
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sftppush.errors import PermanentError
from sftppush.queue.entries import shown

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO for reading must not wait for a writer; it is refused after fstat.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
# A link count above one may be the middle of an sftp-server link()+unlink() rename.
NLINK_RETRY_SECONDS = 2.0
# The name a file is renamed to while it is checked and deleted; never queued (scan.py).
DELETING_PREFIX = b".sftppush-deleting."
RENAME_NOREPLACE = 1  # linux/fs.h

log = logging.getLogger("sftppush.safeopen")


class Vanished(Exception):
    """The file (or a directory on its way) no longer exists: nothing to upload."""


# What a read lease says of a file: someone has it open for writing (the kernel refused the
# lease with EAGAIN). Any other refusal means the kernel cannot say (see `_writers_held_off`).
WRITING = "writing"


@dataclass(frozen=True)
class Kept:
    """Why `unlink()` left a file: `reason` is "replaced" (the name holds a newer version,
    which has an entry of its own), WRITING, "no_lease" or "cannot_delete"; `detail` says
    what the kernel said."""

    reason: str
    detail: str = ""


@dataclass
class SafeFile:
    """An open regular file inside its source root, with the directory it was found in.

    Keeps the parent directory fd so the file can be deleted by name relative to that same
    directory after upload, even if someone swaps a directory above it for a symlink meanwhile.
    """

    fd: int
    dir_fd: int
    name: bytes
    st: os.stat_result

    def close(self) -> None:
        for fd in (self.fd, self.dir_fd):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> SafeFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def unchanged(self) -> bool:
        """True if the name still points at the file we opened, same size, mtime and ctime."""
        try:
            now = os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return same_version(now, self.st)

    def writing(self) -> str | None:
        """WRITING if someone has the file open for writing now, None if nobody has, else
        why the kernel cannot say (no lease for this file or file system)."""
        with _writers_held_off(self.fd) as state:
            return state

    def unlink(self, without_lease: bool = False) -> Kept | None:
        """Delete the file in its directory if it is still the version we opened (and
        uploaded), under a read lease: only while nobody has it open for writing. None when
        deleted; else why it was kept. `without_lease`: delete where the kernel cannot say
        (the operator's opt-in, consumer.delete_without_lease).

        The name may now hold a different file or version: a newer version has its own queue
        entry and must stay. A check of the name and an unlink by name would leave a moment
        in which a newer version renamed over the name is the one deleted; so the name is
        first renamed to a private one, and what was renamed is checked there, deleted if it
        is our inode, else put back.
        """
        with _writers_held_off(self.fd) as state:
            if state == WRITING:
                return Kept(WRITING)
            if state is not None and not without_lease:
                return Kept("no_lease", state)
            # ctime can be checked only here: the rename below sets the inode's ctime. The
            # name's stat is our inode's when it names our file, so it checks both at once.
            if not self.unchanged():
                return Kept("replaced")
            try:
                return None if self._delete_set_aside() else Kept("replaced")
            except OSError as exc:
                if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                    return Kept("cannot_delete", exc.strerror or str(exc))
                raise

    def _delete_set_aside(self) -> bool:
        private = self._set_aside()
        if private is None:
            return False
        try:
            aside = os.stat(private, dir_fd=self.dir_fd, follow_symlinks=False)
        except FileNotFoundError:  # removed by someone else meanwhile
            return False
        if (aside.st_dev, aside.st_ino, aside.st_size, aside.st_mtime_ns) == \
                (self.st.st_dev, self.st.st_ino, self.st.st_size, self.st.st_mtime_ns):
            os.unlink(private, dir_fd=self.dir_fd)
            return True
        self._put_back(private)
        return False

    def _set_aside(self) -> bytes | None:
        """Rename the name to a private one in the same directory; None if the name is gone.
        The private name is the inode's, so that a retry after a consumer killed right here
        finds it (remove_set_aside)."""
        private = set_aside_name(self.st.st_ino)
        try:
            os.rename(self.name, private, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        except FileNotFoundError:
            return None
        return private

    def _put_back(self, private: bytes) -> None:
        """Return a newer version set aside by mistake to its name, unless an even newer file
        took the name meanwhile: that one stays, and this one stays aside, logged, not lost."""
        try:
            _rename_noreplace(self.dir_fd, private, self.name)
        except FileExistsError:
            log.warning("set aside name=%s kept_as=%s reason=name taken by a newer file",
                        shown(self.name), shown(private))


@contextlib.contextmanager
def _writers_held_off(fd: int) -> Iterator[str | None]:
    """A read lease on the file while the block runs: the kernel grants it only while no one
    has the file open for writing, and while it is held an open for writing waits (the
    consumer ignores SIGIO, the lease-break signal). Yields None under the lease; WRITING
    when someone has the file open for writing; else why there is no lease: EACCES, neither
    the file's owner nor CAP_LEASE (the consumer unit grants it); EINVAL, a file system
    without leases (NFS). Then nobody can tell whether the file is still being written."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as exc:
        yield WRITING if exc.errno == errno.EAGAIN else \
            f"{errno.errorcode.get(exc.errno or 0, '?')}: {exc.strerror}"
        return
    try:
        yield None
    finally:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)


def set_aside_name(inode: int) -> bytes:
    return DELETING_PREFIX + str(inode).encode()


class Aside(enum.Enum):
    """What `remove_set_aside` found under a version's private name."""

    NONE = "none"  # not that version (or nothing)
    REMOVED = "removed"
    KEPT = "kept"  # that version, which stays: the directory cannot be written (now)


def remove_set_aside(root: bytes | str, path: bytes | str, inode: int, size: int,
                     mtime_ns: int) -> Aside:
    """Delete the file version (inode, size, mtime) that a consumer killed between set-aside
    and unlink left under its private name next to `path`. Only an uploaded, verified
    version is ever set aside."""
    parent, name = os.path.split(os.path.normpath(os.fsencode(path)))
    try:
        # Walked to like any queued file: no symlink at any depth, inside the root.
        safe = open_in_root(root, os.path.join(parent, set_aside_name(inode)))
    except (Vanished, PermanentError):
        return Aside.NONE
    with safe:
        if (safe.st.st_ino, safe.st.st_size, safe.st.st_mtime_ns) != (inode, size, mtime_ns):
            return Aside.NONE
        try:
            os.unlink(safe.name, dir_fd=safe.dir_fd)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            # A directory the service cannot write (now): the entry's note (NAME_KEPT)
            # keeps it through purges, and the first rescan after the fix hands it back.
            log.warning("set-aside kept name=%s kept_as=%s reason=%s", shown(name),
                        shown(set_aside_name(inode)), exc.strerror)
            return Aside.KEPT
    log.info("removed set-aside name=%s kept_as=%s", shown(name),
             shown(set_aside_name(inode)))
    return Aside.REMOVED


def same_version(a: os.stat_result, b: os.stat_result) -> bool:
    """Same inode, size, mtime and ctime: ctime catches an in-place rewrite that restored
    the old mtime."""
    return (a.st_ino, a.st_size, a.st_mtime_ns, a.st_ctime_ns) == \
        (b.st_ino, b.st_size, b.st_mtime_ns, b.st_ctime_ns)


def _rename_noreplace(dir_fd: int, old: bytes, new: bytes) -> None:
    """Rename `old` to `new` in `dir_fd`, raising FileExistsError rather than replacing `new`.

    renameat2(RENAME_NOREPLACE) where libc and the filesystem have it, else link() (which
    never replaces) then unlink() of the old name.
    """
    renameat2 = _renameat2()
    if renameat2 is not None:
        if renameat2(dir_fd, old, dir_fd, new, RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL):  # EINVAL: the filesystem lacks the flag
            raise OSError(err, os.strerror(err), os.fsdecode(new))
    os.link(old, new, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    os.unlink(old, dir_fd=dir_fd)


@functools.cache
def _renameat2() -> Callable[..., int] | None:
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a libc without it (glibc < 2.28)
        return None
    renameat2.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint)
    renameat2.restype = ctypes.c_int
    return renameat2


def open_in_root(root: bytes | str, path: bytes | str,
                 nlink_retry_after: float = NLINK_RETRY_SECONDS) -> SafeFile:
    """Open `path` for reading, walking from `root` with O_NOFOLLOW on every component.

    Raises Vanished if a component is gone, PermanentError for a symlink, a path outside the
    root, anything but a regular file, or a file with more than one hard link (the last with
    `retry_after=nlink_retry_after`).
    """
    root_b = os.path.normpath(os.fsencode(root))
    path_b = os.path.normpath(os.fsencode(path))
    # normpath has resolved every ".." it can, so a path inside the root starts with it.
    inside = root_b.rstrip(b"/") + b"/"
    parts = path_b[len(inside):].split(b"/")
    if not path_b.startswith(inside) or path_b == inside or b".." in parts:
        raise PermanentError(f"refused: {os.fsdecode(path_b)} is outside the source root",
                             reason="refused")
    try:
        # The root itself is the operator's configuration and may be a symlink (e.g. /home).
        dir_fd = os.open(root_b, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise Vanished(f"source root {os.fsdecode(root_b)} is gone") from None
    dir_fd = _open_parent(parts, dir_fd, path_b)
    try:
        fd = _open_component(parts[-1], dir_fd, _FILE_FLAGS, path_b)
    except BaseException:
        os.close(dir_fd)
        raise
    safe = SafeFile(fd, dir_fd, parts[-1], os.fstat(fd))
    try:
        _check(safe.st, path_b, nlink_retry_after)
        os.set_blocking(fd, True)
    except BaseException:
        safe.close()
        raise
    return safe


def _open_parent(parts: list[bytes], root_fd: int, path: bytes) -> int:
    """The fd of the directory that holds the file; `root_fd` is consumed (closed, or
    returned if the file is in the root). One openat2 that resolves beneath the root and
    refuses symlinks and magic links where the kernel has it; else, or on any refusal, a walk
    of openat calls with O_NOFOLLOW on every component, which also names what was refused."""
    dir_fd = root_fd
    try:
        if len(parts) > 1 and _openat2 is not None:
            how = _OpenHow(_DIR_FLAGS, 0, _RESOLVE)
            fd = _openat2(root_fd, b"/".join(parts[:-1]), ctypes.byref(how),
                          ctypes.sizeof(how))
            if fd >= 0:
                os.close(root_fd)
                return fd
            if ctypes.get_errno() == errno.ENOENT:
                raise Vanished(f"{os.fsdecode(path)} is gone")
        for part in parts[:-1]:
            next_fd = _open_component(part, dir_fd, _DIR_FLAGS, path)
            os.close(dir_fd)
            dir_fd = next_fd
        return dir_fd
    except BaseException:
        os.close(dir_fd)
        raise


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64))


# linux/openat2.h: no "..", no absolute path, no symlink and no /proc magic link on the way.
_RESOLVE = 0x08 | 0x04 | 0x02  # RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS


def _find_openat2() -> Callable[..., int] | None:
    """openat2(2) through libc's syscall(), where this kernel has it (Linux >= 5.6)."""
    number = {"x86_64": 437, "aarch64": 437}.get(os.uname().machine)
    if number is None:
        return None
    syscall = ctypes.CDLL(None, use_errno=True).syscall
    syscall.restype = ctypes.c_long

    def openat2(dir_fd: int, path: bytes, how: Any, size: int) -> int:
        return syscall(number, dir_fd, path, how, ctypes.c_size_t(size))

    probe = _OpenHow(_DIR_FLAGS, 0, _RESOLVE)
    fd = openat2(-100, b".", ctypes.byref(probe), ctypes.sizeof(probe))  # AT_FDCWD
    if fd < 0:
        return None  # ENOSYS (old kernel), or a seccomp filter that refuses it
    os.close(fd)
    return openat2


# SFTPPUSH_OPENAT2=0 keeps the walk (the tests run both ways).
_openat2 = None if os.environ.get("SFTPPUSH_OPENAT2") == "0" else _find_openat2()


def _open_component(name: bytes, dir_fd: int, flags: int, path: bytes) -> int:
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        raise Vanished(f"{os.fsdecode(path)} is gone") from None
    except OSError as exc:
        # O_DIRECTORY|O_NOFOLLOW on a symlink fails with ENOTDIR, not ELOOP: look which it was.
        if exc.errno == errno.ELOOP or (exc.errno == errno.ENOTDIR and _is_symlink(name, dir_fd)):
            raise PermanentError(
                f"refused: {os.fsdecode(path)}: {os.fsdecode(name)} is a symlink",
                reason="refused") from None
        if exc.errno == errno.ENOTDIR:
            raise PermanentError(
                f"refused: {os.fsdecode(path)}: {os.fsdecode(name)} is not a directory",
                reason="refused") from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise PermanentError(f"cannot open {os.fsdecode(path)}: permission denied",
                                 reason="permission") from None
        raise PermanentError(f"cannot open {os.fsdecode(path)}: {exc.strerror}",
                             reason="unreadable") from None


def _is_symlink(name: bytes, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _check(st: os.stat_result, path: bytes, nlink_retry_after: float) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a device",
                stat.S_IFBLK: "a device", stat.S_IFDIR: "a directory"}.get(
                    stat.S_IFMT(st.st_mode), "not a regular file")
        raise PermanentError(f"refused: {os.fsdecode(path)} is {kind}, not a regular file",
                             reason="refused")
    if st.st_nlink > 1:
        raise PermanentError(
            f"refused: {os.fsdecode(path)} has {st.st_nlink} hard links",
            retry_after=nlink_retry_after, reason="refused")
