"""Directories and names whose absolute path is longer than PATH_MAX (4,096 bytes), which a
user can make by working relative to a directory: the kernel refuses such a path in one
call (ENAMETOOLONG), so it is walked to a part at a time, each part relative to the
directory fd of the one before.

Owns that walk and what the watcher and the scans need through it: a directory's fd (to
list it, or to watch it by /proc/self/fd), and a name's lstat. It never opens a data file.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from typing import Any

_PART = 2048  # bytes of path per openat(): a part plus one name stays under PATH_MAX


def too_long(exc: OSError) -> bool:
    return exc.errno == errno.ENAMETOOLONG


def open_dir(path: bytes, flags: int = os.O_PATH) -> int:
    """The fd of the directory at the absolute `path`, opened a part at a time and resolved
    as the kernel resolves a shorter path; `flags` for the last part (O_RDONLY to list it)."""
    names = [n for n in path.split(b"/") if n]
    fd = os.open(b"/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        while names:
            part = [names.pop(0)]
            while names and len(part) + sum(map(len, part)) + len(names[0]) < _PART:
                part.append(names.pop(0))
            next_fd = os.open(b"/".join(part), (os.O_PATH if names else flags)
                              | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        return fd
    except BaseException:
        os.close(fd)
        raise


def lstat(path: bytes) -> os.stat_result:
    """os.lstat(), also of a name whose path is longer than PATH_MAX."""
    try:
        return os.lstat(path)
    except OSError as exc:
        if not too_long(exc):
            raise
    parent, name = path.rsplit(b"/", 1)
    fd = open_dir(parent)
    try:
        return os.lstat(name, dir_fd=fd)
    finally:
        os.close(fd)


class Listing:
    """os.scandir() of a directory whose path is longer than PATH_MAX, through its fd. Its
    entries have bytes names and full paths, as os.scandir() of a bytes path gives."""

    def __init__(self, directory: bytes) -> None:
        self.directory = directory
        self.fd = open_dir(directory, os.O_RDONLY)
        self.entries = os.scandir(self.fd)

    def __enter__(self) -> Listing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.entries.close()
        os.close(self.fd)

    def __iter__(self) -> Iterator[Entry]:
        for entry in self.entries:
            yield Entry(entry, self.directory)


class Entry:
    """One os.DirEntry of a Listing, named by bytes."""

    __slots__ = ("entry", "name", "path")

    def __init__(self, entry: os.DirEntry[str], directory: bytes) -> None:
        self.entry = entry
        self.name = os.fsencode(entry.name)
        self.path = directory + b"/" + self.name

    def is_dir(self, *, follow_symlinks: bool = True) -> bool:
        return self.entry.is_dir(follow_symlinks=follow_symlinks)

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        return self.entry.stat(follow_symlinks=follow_symlinks)


def scandir(directory: bytes) -> Any:
    """os.scandir(directory), or a Listing where the path is longer than PATH_MAX."""
    try:
        return os.scandir(directory)
    except OSError as exc:
        if not too_long(exc):
            raise
    return Listing(directory)
