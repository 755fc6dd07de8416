"""What `config check` asks of the environment it runs in, as the user it runs as: each bucket
reachable with the credentials and writable, each source directory readable and writable
with leases available, the queue directory writable, the optional modules.

Each finding is one line that names the bucket, endpoint, directory or user and, where there
is one, the fix. Probes leave nothing behind: a file it creates and removes, a multipart
upload it creates and aborts (no object, so no version and no event). It never reads or
touches the queue or a file it did not create.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import importlib.metadata
import os
import pwd
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sftppush.config import Config, Target
from sftppush.errors import ConfigError, PermanentError, TransientError
from sftppush.queue.owners import user_name
from sftppush.sink.answers import HINTS
from sftppush.sink.client import make_client, make_session, options
from sftppush.sink.s3 import Sink
from sftppush.sink.transfer import RetryPolicy, Transfer

CAP_LEASE = 28  # linux/capability.h
PROBE = ".sftppush-check"  # a dot name: the watcher's default ignore globs skip it
# What a check may wait for: an endpoint that does not answer is a finding, not a hang.
TRANSFER = Transfer(connect_timeout=5.0, read_timeout=15.0, retry=RetryPolicy(attempts=1),
                    fast=False)
# (module, extra, what its absence costs, whether that is a problem or a note)
MODULES = (("awscrt", "crt", "small files go through boto3 alone, several times slower", False),
           ("isal", None, "gzip is inflated by zlib, about 3x slower", False),
           ("zstandard", None, "zstd files are refused (a broken install: it is a dependency)",
            True))


@dataclass(frozen=True)
class Finding:
    """One line of `config check`: a problem (exit status 1), or a note (nothing wrong)."""

    text: str
    problem: bool = True


DENIED = Finding("HeadBucket forbidden")  # see _head_bucket


def environment(cfg: Config, transfer: Transfer = TRANSFER) -> tuple[list[Finding], list[str]]:
    """(findings, what was checked and found fine), as the running user."""
    findings: list[Finding] = []
    fine: list[str] = []
    for check in (_buckets(cfg, transfer), _sources(cfg), _queue_dir(cfg.queue.path),
                  _modules()):
        for item in check:
            (findings.append if isinstance(item, Finding) else fine.append)(item)
    return findings, fine


# --- buckets -------------------------------------------------------------------------------

def _buckets(cfg: Config, transfer: Transfer) -> Iterator[Finding | str]:
    targets = list(dict.fromkeys(s.target for s in cfg.watch.sources))
    if not targets:
        return
    try:
        session = make_session(cfg.defaults)
    except ConfigError as exc:
        yield Finding(f"{exc}: check AWS_CONFIG_FILE and AWS_SHARED_CREDENTIALS_FILE")
        return
    sink = Sink(make_client(session, cfg.defaults, cfg.consumer.s3, transfer),
                cfg.consumer.s3, transfer)
    heads: dict[str, Finding | None] = {}
    try:
        for target in targets:
            seen = target.bucket in heads
            if not seen:
                heads[target.bucket] = _head_bucket(sink, target.bucket)
            head = heads[target.bucket]
            if head is None or head is DENIED:
                yield from _write_probe(sink, cfg, target, denied=head is DENIED)
            elif not seen:  # no bucket, or no answer: said once, nothing more to learn
                yield head
    finally:
        sink.close()


def _head_bucket(sink: Sink, bucket: str) -> Finding | None:
    """None when HeadBucket answers; DENIED when it was forbidden, which tells no more (the
    write probe's answer, which has a body, says why); else what it found."""
    where = sink.where(bucket)
    try:
        sink.call("head_bucket", Bucket=bucket)
    except PermanentError as exc:
        if _code(exc) in ("404", "NoSuchBucket", "NotFound"):
            return Finding(f"S3 HeadBucket{where}: "
                           + HINTS["NoSuchBucket"].format(bucket=bucket,
                                                          endpoint=where.endpoint))
        if _code(exc) in ("403", "AccessDenied"):
            return DENIED
        return Finding(str(exc))
    except TransientError as exc:
        return Finding(str(exc))
    return None


def _write_probe(sink: Sink, cfg: Config, target: Target,
                 denied: bool) -> Iterator[Finding | str]:
    """Whether these credentials may write under the target: a multipart upload created with
    the options every upload uses (storage class, encryption, checksum) and aborted at once.
    `denied`: HeadBucket was forbidden."""
    where = sink.where(target.bucket)
    key = target.key_for(f"{PROBE}-{socket.gethostname()}-{os.getpid()}")
    checksum = sink.checksum
    create = {"ChecksumAlgorithm": checksum.name.upper(), "ChecksumType": "FULL_OBJECT"} \
        if checksum else {}
    try:
        upload_id = sink.call("create_multipart_upload", Bucket=target.bucket, Key=key,
                              **options(cfg.consumer.s3), **create)["UploadId"]
    except (PermanentError, TransientError) as exc:
        yield Finding(str(exc))
        return
    try:
        sink.call("abort_multipart_upload", Bucket=target.bucket, Key=key, UploadId=upload_id)
    except (PermanentError, TransientError) as exc:
        yield Finding(f"{exc}: the probe upload of {key} stays open until the bucket's"
                      " AbortIncompleteMultipartUpload rule ends it")
    if denied:
        yield Finding(f"S3 HeadBucket{where}: 403: these credentials may write but not look"
                      " up the bucket: grant s3:ListBucket (without it a missing object"
                      " cannot be told from a denied one)")
    else:
        yield f"bucket {target}{where.endpoint and ' at ' + where.endpoint} (write)"


def _code(exc: BaseException) -> str | None:
    from sftppush.sink.answers import error_code

    return error_code(exc)


# --- directories and leases ----------------------------------------------------------------

def _sources(cfg: Config) -> Iterator[Finding | str]:
    who = user_name()
    for source in cfg.watch.sources:
        for directory in source.dirs:
            problem = _directory(directory, who)
            if problem:
                yield Finding(f"source {source.name}: {problem}")
            else:
                yield f"{directory} (read, write, leases)"


def _directory(directory: Path, who: str) -> str | None:
    """Why `directory` does not work as a source for the running user, or None."""
    try:
        with os.scandir(directory) as entries:
            next(entries, None)
    except FileNotFoundError:
        return f"directory {directory} does not exist"
    except OSError as exc:
        return (f"directory {directory} is not readable by user {who} ({exc.strerror}):"
                f" give {who} read and execute on it (group or ACL: docs/operations.md,"
                " install step 4)")
    try:
        with _probe(directory) as fd:
            return _lease(directory, fd, who)
    except OSError as exc:
        return (f"directory {directory} is not writable by user {who} ({exc.strerror}):"
                f" each file is deleted once uploaded, so without it every file is uploaded"
                f" and kept (failed, cannot delete); give {who} write on it (group or ACL:"
                " docs/operations.md, install step 4; under systemd, check the unit's"
                " ReadWritePaths=)")


@contextlib.contextmanager
def _probe(directory: Path) -> Iterator[int]:
    """A file of ours in `directory`, open read-only (as the consumer opens what it deletes),
    removed again on the way out."""
    path = directory / f"{PROBE}-{os.getpid()}"
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDONLY | os.O_NOFOLLOW, 0o600)
    try:
        yield fd
    finally:
        os.close(fd)
        os.unlink(path)


def _lease(directory: Path, fd: int, who: str) -> str | None:
    """Why the consumer cannot lease the files written into `directory`, or None: the file
    system must grant leases (tried on the probe), and for files of other users the process
    needs CAP_LEASE."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        return (f"the file system of {directory} grants no leases ({exc.strerror}): sftppush"
                " cannot tell whether a file there is still open for writing, so it uploads"
                " each file but keeps it (failed, no lease); on NFS, opt in with"
                " consumer.delete_without_lease: true knowing the risk")
    owner = os.stat(directory).st_uid
    if owner == os.geteuid() or has_cap_lease():
        return None
    return (f"user {who} lacks CAP_LEASE and {directory} belongs to {_name(owner)}: sftppush"
            " cannot tell whether a file there is still open for writing, so it uploads each"
            " file but keeps it (failed, no lease); grant CAP_LEASE (the consumer unit does:"
            " AmbientCapabilities=CAP_LEASE) or run as the files' owner")


def has_cap_lease() -> bool:
    """CAP_LEASE in this process's effective capabilities (/proc/self/status)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return os.geteuid() == 0
    effective = next((line.split()[1] for line in status.splitlines()
                      if line.startswith("CapEff:")), "0")
    return bool(int(effective, 16) >> CAP_LEASE & 1)


def _name(uid: int) -> str:
    try:
        return f"user {pwd.getpwuid(uid).pw_name}"
    except KeyError:
        return f"uid {uid}"


# --- the queue -----------------------------------------------------------------------------

def _queue_dir(queue: Path) -> Iterator[Finding | str]:
    who = user_name()
    directory = queue.parent
    if not directory.exists():
        parent = next(p for p in directory.parents if p.exists())
        if os.access(parent, os.W_OK | os.X_OK):
            yield f"queue directory {directory} (will be made)"
        else:
            yield Finding(f"queue directory {directory} does not exist and user {who} cannot"
                          f" make it in {parent}: create it (install -d -o {who}"
                          f" {directory}); the units' StateDirectory= makes"
                          " /var/lib/sftppush")
        return
    for name in (queue, queue.with_name(queue.name + "-wal"),
                 queue.with_name(queue.name + "-shm")):
        try:
            os.close(os.open(name, os.O_WRONLY | os.O_NOFOLLOW))
        except FileNotFoundError:
            continue
        except OSError as exc:
            yield Finding(f"queue file {name} is not writable by user {who} ({exc.strerror},"
                          f" owner {_name(name.lstat().st_uid)}): chown it to {who}; run"
                          f" queue commands as {who}, never as root")
            return
    try:
        with _probe(directory):
            pass
    except OSError as exc:
        yield Finding(f"queue directory {directory} is not writable by user {who}"
                      f" ({exc.strerror}): SQLite makes its -wal and -shm files there; give"
                      f" {who} write on it")
        return
    yield f"queue directory {directory} (write)"


# --- modules ----------------------------------------------------------------------------

def _modules() -> Iterator[Finding | str]:
    for module, extra, without, needed in MODULES:
        try:
            version = importlib.metadata.version(module)
        except importlib.metadata.PackageNotFoundError:
            fix = f"pip install 'sftppush[{extra}]'" if extra else f"pip install {module}"
            yield Finding(f"module {module} is not installed: {without}; {fix}", problem=needed)
        else:
            yield f"{module} {version}"
