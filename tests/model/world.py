"""The model's SFTP users and what they did: real files in a real tree, and the truth about
every version of every file that the model's invariants are checked against.

A version is one writer's session on one file (open ... close) or one whole write; its
content is unique (a counter is written into it), so the content of any object in the store
says which version it came from, or that it came from none: a half-written file, a corrupted
body. Versions keep every intermediate content a reader could have seen.
"""

from __future__ import annotations

import fcntl
import gzip
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

SOURCE = "u1"
DIRS = (b"a", b"b")
# Names that meet: x.csv and x.csv.gz share a key, so do p%E9 and the raw byte name; "rep "
# ends in a space that HTTP trims from header values; a newline in a name could forge a log
# line; big.bin takes a multipart upload (parts of 1 MiB in the model).
NAMES = (b"x.csv", b"x.csv.gz", b"rep ", b"p%E9", b"p\xe9", b"n\nl.txt", b"big.bin")
BIG = 1_300_000
_IOC_GETFLAGS, _IOC_SETFLAGS, _IMMUTABLE = 0x80086601, 0x40086602, 0x10


@dataclass
class Version:
    n: int
    states: list[bytes]        # decompressed content after each write; the last is current
    finished: bool
    gz: bool
    paths: set[bytes] = field(default_factory=set)  # every path it has had on disk
    fate: str = "on disk"      # on disk, superseded, deleted (by sftppush), away

    @property
    def content(self) -> bytes:
        return self.states[-1]


@dataclass
class Writer:
    """A client session holding a file open for writing across the model's steps."""

    fd: int
    path: bytes
    version: Version | None = None  # None until its first write
    inode: int = 0


@dataclass
class World:
    """The tree the model's clients write, and what is true about it."""

    upload: bytes                      # the source's watched dir
    away: bytes                        # outside the source: where dirs go when renamed away
    versions: dict[int, Version] = field(default_factory=dict)
    files: dict[bytes, tuple[int, int]] = field(default_factory=dict)  # path -> inode, version
    parked: dict[bytes, tuple[int, int]] = field(default_factory=dict)  # the same, moved away
    writers: list[Writer] = field(default_factory=list)
    immutable: set[bytes] = field(default_factory=set)  # dirs no one can add to or delete in
    counter: int = 0

    # --- the tree ---------------------------------------------------------------------------

    def dir(self, d: bytes) -> bytes:
        return os.path.join(self.upload, d)

    def present(self, d: bytes) -> bool:
        return os.path.isdir(self.dir(d))

    def writable(self, d: bytes) -> bool:
        return self.present(d) and d not in self.immutable

    def held(self, path: bytes) -> bool:
        return any(w.path == path for w in self.writers)

    def _new(self, content: bytes, gz: bool, finished: bool = True) -> Version:
        self.counter += 1
        v = Version(self.counter, [content], finished, gz)
        self.versions[v.n] = v
        return v

    def content(self, size: int) -> bytes:
        """Unique bytes: a counter, then filler that compresses."""
        self.counter += 1
        head = b"#%d#" % self.counter
        line = b"line of version %d\n" % self.counter
        return (head + line * (size // len(line) + 1))[:max(size, len(head))]

    def _placed(self, path: bytes, v: Version) -> None:
        """`v` is now the file at `path`; what was there before is superseded."""
        old = self.files.get(path)
        if old is not None and old[1] != v.n:
            self.versions[old[1]].fate = "superseded"
        v.paths.add(path)
        v.fate = "on disk"
        self.files[path] = (os.lstat(path).st_ino, v.n)

    # --- what clients do ------------------------------------------------------------------------

    def write(self, d: bytes, name: bytes, size: int) -> None:
        """Create or overwrite in place (O_TRUNC), in one go."""
        path = os.path.join(self.dir(d), name)
        gz = name.endswith(b".gz")
        content = self.content(BIG if name == b"big.bin" else size)
        with open(path, "wb") as f:
            f.write(gzip.compress(content, compresslevel=1, mtime=0) if gz else content)
        self._placed(path, self._new(content, gz))

    def rename_over(self, d: bytes, name: bytes, size: int) -> None:
        """Write a temporary name (ignored by the watcher), then rename it over the name."""
        path = os.path.join(self.dir(d), name)
        temp = os.path.join(self.dir(d), b"." + name.replace(b"\n", b"_") + b".tmp")
        gz = name.endswith(b".gz")
        content = self.content(BIG if name == b"big.bin" else size)
        with open(temp, "wb") as f:
            f.write(gzip.compress(content, compresslevel=1, mtime=0) if gz else content)
        os.rename(temp, path)
        self._placed(path, self._new(content, gz))

    def resend(self, path: bytes) -> None:
        """`sftp put -p` of new content of the same size over a plain file: O_TRUNC, write,
        then the old mtime restored; only ctime tells the versions apart."""
        st = os.lstat(path)
        content = self.content(st.st_size)[:st.st_size]
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, content)
        finally:
            os.close(fd)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        self._placed(path, self._new(content, False))

    def hold(self, d: bytes, name: bytes) -> Writer:
        """Open a plain file for appending and keep it open; one that is absent is created
        and written a first chunk (its content unique from the start)."""
        path = os.path.join(self.dir(d), name)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        w = Writer(fd, path, inode=os.fstat(fd).st_ino)
        self.writers.append(w)
        if path not in self.files:  # created: a version that is still being written
            w.version = self._new(b"", False, finished=False)
            self._placed(path, w.version)
            self.append(w)
        return w

    def append(self, w: Writer) -> bool:
        """One more write of a held file; False if the file was unlinked under the writer
        by someone else than the client: that write is lost."""
        chunk = self.content(4000)
        os.write(w.fd, chunk)
        if w.version is None:
            where = next((m for m in (self.files, self.parked)
                          if m.get(w.path, (0,))[0] == w.inode), None)
            before = self.versions[where[w.path][1]] if where is not None else None
            w.version = self._new(before.content if before else b"", False, finished=False)
            if where is not None and before is not None:
                before.fate = "superseded"
                if where is self.files:  # a parked name is not a source path: its path
                    w.version.paths.add(w.path)  # is added when its directory comes back
                w.version.fate = "on disk" if where is self.files else "away"
                where[w.path] = (w.inode, w.version.n)
        w.version.states.append(w.version.content + chunk)
        return os.fstat(w.fd).st_nlink > 0

    def close(self, w: Writer) -> None:
        os.close(w.fd)
        self.writers.remove(w)
        if w.version is not None:
            w.version.finished = True

    def move_dir(self, d: bytes, away: bool) -> None:
        """Rename a directory out of the source and back, as clients do with batches."""
        src, dst = (self.dir(d), os.path.join(self.away, d)) if away else \
            (os.path.join(self.away, d), self.dir(d))
        os.rename(src, dst)
        prefix = src + b"/"
        for path in [p for p in self.files if p.startswith(prefix)]:
            inode, n = self.files.pop(path)
            moved = dst + path[len(src):]
            if away:
                self.versions[n].fate = "away"
                self.parked[moved] = (inode, n)
            else:
                self._placed(moved, self.versions[n])
        if not away:
            for moved in [p for p in self.parked if p.startswith(prefix)]:
                inode, n = self.parked.pop(moved)
                path = dst + moved[len(src):]
                self.versions[n].paths.add(path)
                self.versions[n].fate = "on disk"
                self.files[path] = (inode, n)
        for w in self.writers:
            if w.path.startswith(prefix):
                w.path = dst + w.path[len(src):]

    def set_immutable(self, d: bytes, on: bool) -> None:
        """chattr +i / -i: nobody, root included, can add, rename or delete names in it."""
        fd = os.open(self.dir(d), os.O_RDONLY | os.O_DIRECTORY)
        try:
            flags = struct.unpack("i", fcntl.ioctl(fd, _IOC_GETFLAGS, b"\0" * 4))[0]
            flags = flags | _IMMUTABLE if on else flags & ~_IMMUTABLE
            fcntl.ioctl(fd, _IOC_SETFLAGS, struct.pack("i", flags))
        finally:
            os.close(fd)
        (self.immutable.add if on else self.immutable.discard)(d)

    def release_all(self) -> None:
        """Close every writer and lift every immutable flag (the end of a run)."""
        for w in list(self.writers):
            self.close(w)
        for d in list(self.immutable):
            if os.path.isdir(self.dir(d)):
                self.set_immutable(d, False)
            self.immutable.discard(d)

    # --- what is on disk ------------------------------------------------------------------------

    def vanished(self) -> list[tuple[bytes, Version]]:
        """Files the clients left on disk that are gone now: deleted by a consumer."""
        gone = []
        for path, (inode, n) in list(self.files.items()):
            try:
                there = os.lstat(path).st_ino == inode
            except FileNotFoundError:
                there = False
            if not there:
                del self.files[path]
                gone.append((path, self.versions[n]))
        return gone

    def leftovers(self, prefix: bytes) -> list[bytes]:
        """Names starting with `prefix` anywhere in the tree."""
        found = []
        for top, _, names in os.walk(self.upload):
            found += [os.path.join(top, n) for n in names if n.startswith(prefix)]
        return found


def new_world(base: Path) -> World:
    upload = base / "home" / SOURCE / "up"
    for d in DIRS:
        (upload / os.fsdecode(d)).mkdir(parents=True)
    (base / "away").mkdir()
    return World(os.fsencode(upload), os.fsencode(base / "away"))
