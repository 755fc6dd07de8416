"""What SFTP users send in the end-to-end runs, and what S3 must hold afterwards.

Every file is deterministic from its index, so a run can be checked byte for byte:
mixed compressions (gzip, multi-member gzip, bzip2, xz, zip, plain), new nested directories,
and the three ways clients finish a file (write in place, `.filepart` + plain rename,
`.tmp` + posix-rename).
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import posixpath
import random
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.sftp_server import SftpServer

STYLES = ("put", "put", "filepart", "filepart", "posix")  # in place / link+unlink / rename


@dataclass(frozen=True)
class Upload:
    remote: str                 # final SFTP path, e.g. /upload/b03/d1/f000123.csv.gz
    data: bytes                 # what the client writes
    expected: bytes             # what the object must contain
    key: str                    # the object key it must land under
    style: str                  # "put" | "filepart" | "posix"

    @property
    def temp(self) -> str | None:
        return {"put": None, "filepart": self.remote + ".filepart",
                "posix": self.remote + ".tmp"}[self.style]


def _content(i: int, rng: random.Random) -> bytes:
    lines = rng.randint(1, 300)
    return "".join(f"device={i % 97},seq={i},line={n},value={rng.random():.6f}\n"
                   for n in range(lines)).encode()


def _encode(kind: str, raw: bytes, name: str) -> bytes:
    if kind == "gzip":
        return gzip.compress(raw, mtime=0)
    if kind == "gzip2":  # multi-member, as `cat a.gz b.gz` produces
        half = len(raw) // 2
        return gzip.compress(raw[:half], mtime=0) + gzip.compress(raw[half:], mtime=0)
    if kind == "bzip2":
        return bz2.compress(raw)
    if kind == "xz":
        return lzma.compress(raw)
    if kind == "zip":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr(name.removesuffix(".zip"), raw)
        return buf.getvalue()
    return raw


# kind, file suffix, whether it is decompressed on the way, and the suffix the key loses
KINDS = (
    ("gzip", ".csv.gz", True, ".gz"),
    ("gzip", ".csv.gz", True, ".gz"),
    ("gzip2", ".log.gz", True, ".gz"),
    ("bzip2", ".json.bz2", True, ".bz2"),
    ("xz", ".txt.xz", True, ".xz"),
    ("plain", ".csv", False, ""),
    ("zip", ".zip", False, ""),
    ("gzip", ".bin", True, ""),        # detected by magic, name has no suffix to lose
    ("plain", ".fake.gz", False, ""),  # named .gz but not gzip: byte for byte, name kept
)


def make_uploads(count: int, source: str = "sftpuser1", base: str = "/upload",
                 files_per_dir: int = 40, seed: int = 8) -> list[Upload]:
    """`count` files spread over new nested dirs under `base` (which must exist)."""
    rng = random.Random(seed)
    uploads = []
    for i in range(count):
        kind, suffix, decompressed, loses = KINDS[i % len(KINDS)]
        group = i // files_per_dir
        directory = f"{base}/b{group // 4:03d}/d{group % 4}"
        name = f"f{i:06d}{suffix}"
        raw = _content(i, rng)
        data = _encode(kind, raw, name)
        remote = f"{directory}/{name}"
        key_path = remote.removesuffix(loses) if loses else remote
        uploads.append(Upload(remote=remote, data=data,
                              expected=raw if decompressed else data,
                              key=f"{source}{key_path}",
                              style=STYLES[rng.randrange(len(STYLES))]))
    return uploads


def new_dirs(uploads: Sequence[Upload], base: str = "/upload") -> Iterator[str]:
    """Directories to mkdir, parents first, each once, in upload order."""
    made = {base}
    for u in uploads:
        parts = posixpath.dirname(u.remote).split("/")
        for n in range(2, len(parts) + 1):
            d = "/".join(parts[:n])
            if d not in made:
                made.add(d)
                yield d


def send_with_paramiko(server: SftpServer, user: str, uploads: Sequence[Upload]) -> None:
    """One SFTP session, files in order, mkdir of each new directory just before its first file."""
    with server.paramiko(user) as sftp:
        made: set[str] = set()
        for u in uploads:
            for d in new_dirs([u]):
                if d not in made:
                    made.add(d)
                    try:
                        sftp.mkdir(d)
                    except OSError:
                        pass  # another session made it first
            target = u.temp or u.remote
            sftp.putfo(io.BytesIO(u.data), target, confirm=False)
            if u.style == "filepart":
                sftp.rename(target, u.remote)  # plain SSH_FXP_RENAME: link + unlink
            elif u.style == "posix":
                sftp.posix_rename(target, u.remote)


def send_with_openssh(server: SftpServer, user: str, uploads: Sequence[Upload],
                      staging: Path) -> None:
    """One `sftp -b` batch: put, `rename -l` (plain rename) or `rename` (posix-rename)."""
    staging.mkdir(parents=True, exist_ok=True)
    commands = [f"-mkdir {d}" for d in new_dirs(uploads)]  # "-": may exist already
    for n, u in enumerate(uploads):
        local = staging / f"{n:06d}"
        local.write_bytes(u.data)
        target = u.temp or u.remote
        commands.append(f"put {local} {target}")
        if u.style == "filepart":
            commands.append(f"rename -l {target} {u.remote}")
        elif u.style == "posix":
            commands.append(f"rename {target} {u.remote}")
    server.batch(user, commands, timeout=600)
