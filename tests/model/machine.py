"""The model test's state machine: SFTP clients, a store that fails and lies, consumers that
die at any step, purges, rescans and a clock, all played at once, with sftppush's promises
checked after every step (SPEC 3, 4 and 9).

What is real: the files and directories (tmpfs), inotify and the watcher, the queue file, the
consumer's claim/settle loop, the pipeline, safe open and the delete, the sink with its
verification, multipart uploads and error classification. What is played: the store (an
in-process S3, tests/model/store.py) and time (one clock for the queue, the consumers and the
watcher). Consumers are stepped one action at a time, so every interleaving the rules allow is
one Hypothesis can find, and shrink.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from inotify_simple import INotify

from sftppush.config import load
from sftppush.logs import JsonFormatter, TextFormatter
from sftppush.pipeline import safeopen
from sftppush.pipeline.keys import object_key
from sftppush.queue.entries import State
from sftppush.queue.queue import Queue
from sftppush.runtime import consumer as consumer_mod
from sftppush.sink.s3 import Sink
from sftppush.sink.transfer import RetryPolicy, Transfer
from sftppush.source.scan import rescan
from sftppush.source.watcher import Watcher
from tests.model.store import Client, Inline, Killed, Store, Transport
from tests.model.world import DIRS, NAMES, SOURCE, Version, World, new_world

BUCKET = "model"
LEASE = 30.0
REQUEST_TIMEOUT = 10.0  # a PUT has its answer or fails within this (the lease is longer)
TMP_ROOT = "/dev/shm" if os.path.isdir("/dev/shm") else None
ACTIONS = ("claim", "work", "deliver", "verify", "settle", "flush")
# Failed reasons a file may end with: each names why it stays on disk (SPEC 4 and 6).
REASONS = ("key collision:", "cannot delete:", "no lease:", "corrupt ")


class Clock:
    """The one clock of a run: the queue's wall clock and every consumer's timers."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Lines(logging.Handler):
    """Formats every record as the text and the JSON log would, and keeps the output."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.text, self.json = TextFormatter(), JsonFormatter()
        self.out: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:  # a traceback is a bug report of its own, checked apart
            self.out.append(f"TRACEBACK {record.getMessage()}")
            return
        self.out += [self.text.format(record), self.json.format(record)]


class Violation(AssertionError):
    """A promise sftppush made did not hold."""


class _Os:
    """`os` for safeopen, with a death between the set-aside rename and the unlink."""

    def __init__(self, machine: Model) -> None:
        self._machine = machine

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def unlink(self, path: Any, *args: Any, **kwargs: Any) -> None:
        if self._machine.die_at_unlink and os.fsencode(path).startswith(
                safeopen.DELETING_PREFIX):
            self._machine.die_at_unlink = False
            raise Killed("killed between the set-aside rename and the unlink")
        os.unlink(path, *args, **kwargs)


class _Fcntl:
    """`fcntl` for safeopen, on a file system without leases when the model says so."""

    def __init__(self, machine: Model) -> None:
        self._machine = machine
        import fcntl
        self._fcntl = fcntl

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fcntl, name)

    def fcntl(self, fd: int, cmd: int, arg: Any = 0) -> Any:
        if cmd == self._fcntl.F_SETLEASE and not self._machine.leases \
                and arg != self._fcntl.F_UNLCK:
            raise OSError(errno.EINVAL, "Invalid argument")
        return self._fcntl.fcntl(fd, cmd, arg)


def _tracked(opened: dict[int, safeopen.SafeFile]) -> type[safeopen.SafeFile]:
    """safeopen's SafeFile, kept in `opened` until it is closed: what a consumer the model
    killed still held (the kernel would close it on a real kill -9) is closed at teardown,
    or a long run of many sequences runs out of file descriptors."""

    class Tracked(safeopen.SafeFile):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            opened[id(self)] = self

        def close(self) -> None:
            opened.pop(id(self), None)
            super().close()

    return Tracked


class Consumer:
    """One consumer process, stepped by the model: sftppush's Consumer with a pool, a
    verifier and a transport whose work runs only when the model says so."""

    def __init__(self, model: Model, n: int) -> None:
        self.n = n
        self.pool = Inline()
        self.verify = Inline()
        self.transport = Transport(model.store, model.clock, REQUEST_TIMEOUT) \
            if model.crt else None
        sink = model.sink(self.transport, self.verify)
        self.c = consumer_mod.Consumer(
            model.cfg, model.queue, sink, 1, model.tuning, model.stop, model.cancel,
            owner=f"model-consumer-{n}", pool=self.pool, monotonic=model.clock)

    def can(self, action: str) -> bool:
        return {"claim": True, "work": bool(self.pool.waiting),
                "deliver": bool(self.transport and self.transport.pending),
                "verify": bool(self.verify.waiting),
                "settle": not self.c.inbox.empty(), "flush": bool(self.c.acks)}[action]

    def act(self, action: str) -> None:
        if action == "claim":
            self.c.leases.renew_if_due()
            self.c._claim()
        elif action == "work":
            self.pool.run_one()
        elif action == "deliver":
            assert self.transport is not None
            self.transport.deliver()
        elif action == "verify":
            self.verify.run_one()
        elif action == "settle":
            self.c._settle(0)
        else:
            self.c._flush_acks()

    def busy(self) -> bool:
        return any(self.can(a) for a in ACTIONS[1:])


class Model(RuleBasedStateMachine):
    """See the module docstring."""

    part_mb = 1  # a real S3 API refuses parts under 5 MiB but the last
    sequences = steps = 0  # how much a profile ran (tests/model/test_model.py says)

    def __init__(self) -> None:
        super().__init__()
        Model.sequences += 1
        self.base = Path(tempfile.mkdtemp(prefix="sftppush-model-", dir=TMP_ROOT))
        self.world: World = new_world(self.base)
        self.clock = Clock()
        self.consumers: list[Consumer] = []
        self.born = 0
        self.die_at_unlink = False
        self.leases = True
        self.lines = Lines()
        self.dup_ok = False      # a crash, a lost answer or a lie may upload a version again
        self.leases_always = True
        self.ever_kept = False   # delete_after_upload was false at some point
        self.purged = False
        self.kept_versions: set[int] = set()
        # (key, path) -> the newest version of that path deleted after its upload to key
        self.deleted: dict[tuple[str, bytes], int] = {}
        self.owner: dict[str, str] = {}    # key -> the path (shown) whose content it holds
        self.seen_writes = 0
        self.patches = contextlib.ExitStack()

    def check(self) -> None:
        """Every invariant, as Hypothesis checks them after each step (for pinned runs)."""
        self.objects_hold_whole_versions_of_their_own_path()
        self.files_are_deleted_only_once_their_content_is_stored()
        self.queue_counters_equal_its_entries()
        self.log_lines_are_single_events()

    # --- set-up --------------------------------------------------------------------------

    @initialize(crt=st.booleans(), conditional=st.booleans(),
                checksums=st.sampled_from(("validate", "echo", "ignore")),
                opaque=st.booleans(), delete=st.booleans())
    def setup(self, crt: bool, conditional: bool, checksums: str, opaque: bool,
              delete: bool) -> None:
        self.start(Store(conditional=conditional, checksums=checksums, opaque_etags=opaque),
                   crt, opaque, delete, "http://store.invalid")

    def sink(self, transport: Transport | None, verify: Inline) -> Sink:
        """A consumer's sink, on the model's store: its HEADs and its resends of failed fast
        PUTs wait in the consumer's stepped pool, so the model decides when each runs."""
        return Sink(Client(self.store), self.cfg.consumer.s3, self.transfer,
                    transport, verify_pool=verify,  # type: ignore[arg-type]
                    resend_pool=verify)  # type: ignore[arg-type]

    def start(self, store: Any, crt: bool, opaque: bool, delete: bool, endpoint: str,
              bucket: str = BUCKET) -> None:
        """The tree, the config, the queue, the watcher and a first consumer."""
        self.bucket = bucket
        self.crt = crt
        self.ever_kept = not delete
        self.store = store
        cfg_file = self.base / "config.yaml"
        consumer = {"delete_after_upload": delete, "max_attempts": 3}
        if opaque:
            consumer["s3"] = {"sse": "aws:kms"}
        cfg_file.write_text(yaml.safe_dump({
            "defaults": {"userpath": str(self.base / "home"), "s3target": self.bucket,
                         "endpoint_url": endpoint, "awsregion": "us-east-1"},
            "watch": {"source": [{"name": SOURCE, "paths": ["/up"]}]},
            "queue": {"path": str(self.base / "queue.db"), "lease_seconds": LEASE,
                      "keep_done": 0},
            "consumer": consumer}))
        cfg = load(cfg_file, env={})
        # Parts of 1 MiB (S3 wants 5): big.bin goes multipart without writing 5 MiB files.
        self.cfg = replace(cfg, consumer=replace(
            cfg.consumer, s3=replace(cfg.consumer.s3, part_size_mb=self.part_mb)))
        self.transfer = Transfer(retry=RetryPolicy(attempts=2, initial=0.0, maximum=0.0),
                                 part_memory=2**20, fast=crt, max_small=2**20)
        self.tuning = consumer_mod.Tuning.of(
            retry=self.transfer.retry, transient_delay=1.0, transient_delay_max=8.0,
            permanent_delay=1.0, permanent_delay_max=8.0, claim_batch=4, crt=crt,
            nlink_retry_after=1.0)
        self.queue = Queue(self.cfg.queue.path, clock=self.clock)
        import threading
        self.stop, self.cancel = threading.Event(), threading.Event()
        self.inotify = INotify(nonblocking=True)
        self.watcher = Watcher(self.cfg, self.queue, self.inotify, clock=self.clock)
        self.watcher.start(rescan=False)
        # Every DEBUG line goes to the model's own handler alone: passed on, pytest's log
        # capture kept each of a long run's millions of lines (GBs in ten minutes).
        log = logging.getLogger("sftppush")
        self.patches.callback(setattr, log, "propagate", log.propagate)
        self.patches.callback(log.setLevel, log.level)
        self.patches.callback(log.removeHandler, self.lines)
        log.addHandler(self.lines)
        log.setLevel(logging.DEBUG)
        log.propagate = False
        self.patches.enter_context(_patched(safeopen, "os", _Os(self)))
        self.patches.enter_context(_patched(safeopen, "fcntl", _Fcntl(self)))
        self.opened: dict[int, safeopen.SafeFile] = {}
        self.patches.enter_context(_patched(safeopen, "SafeFile", _tracked(self.opened)))
        self.start_consumer()

    def teardown(self) -> None:
        try:
            if hasattr(self, "queue"):
                self.quiesce()
        finally:
            self.world.release_all()
            self.patches.close()
            for left in list(getattr(self, "opened", {}).values()):
                left.close()
            if hasattr(self, "queue"):
                self.watcher.poll.close()  # its mount table
                self.inotify.close()
                self.queue.close()
            shutil.rmtree(self.base, ignore_errors=True)

    # --- clients -------------------------------------------------------------------------

    def _free(self, d: bytes, name: bytes) -> bool:
        return self.world.writable(d) and not self.world.held(os.path.join(self.world.dir(d),
                                                                          name))

    @rule(d=st.sampled_from(DIRS), name=st.sampled_from(NAMES), size=st.sampled_from((300, 5000)))
    def write(self, d: bytes, name: bytes, size: int) -> None:
        if self._free(d, name):
            self.world.write(d, name, size)

    @rule(d=st.sampled_from(DIRS), name=st.sampled_from(NAMES), size=st.sampled_from((300, 5000)))
    def rename_over(self, d: bytes, name: bytes, size: int) -> None:
        if self._free(d, name):
            self.world.rename_over(d, name, size)

    @rule(d=st.sampled_from(DIRS), name=st.sampled_from(NAMES))
    def resend_keeping_mtime(self, d: bytes, name: bytes) -> None:
        path = os.path.join(self.world.dir(d), name)
        if self._free(d, name) and path in self.world.files and not name.endswith(b".gz") \
                and os.path.exists(path):
            self.world.resend(path)

    @rule(d=st.sampled_from(DIRS), name=st.sampled_from(NAMES[2:6]))
    def open_and_hold(self, d: bytes, name: bytes) -> None:
        path = os.path.join(self.world.dir(d), name)
        if self.world.present(d) and not self.world.held(path) and len(self.world.writers) < 2 \
                and (path in self.world.files or d not in self.world.immutable):
            self.world.hold(d, name)

    @precondition(lambda self: self.world.writers)
    @rule(which=st.integers(0, 1))
    def held_file_written(self, which: int) -> None:
        w = self.world.writers[which % len(self.world.writers)]
        if not self.world.append(w):
            raise Violation(f"{w.path!r} was deleted while a client still had it open for"
                            " writing: what it writes now is lost")

    @precondition(lambda self: self.world.writers)
    @rule(which=st.integers(0, 1), write_first=st.booleans())
    def held_file_closed(self, which: int, write_first: bool) -> None:
        w = self.world.writers[which % len(self.world.writers)]
        if write_first:
            self.held_file_written(which)
        self.world.close(w)

    @rule(d=st.sampled_from(DIRS))
    def dir_renamed_away(self, d: bytes) -> None:
        if self.world.present(d) and d not in self.world.immutable:
            self.world.move_dir(d, away=True)

    @rule(d=st.sampled_from(DIRS))
    def dir_renamed_back(self, d: bytes) -> None:
        if not self.world.present(d) and os.path.isdir(os.path.join(self.world.away, d)):
            self.world.move_dir(d, away=False)

    @rule(d=st.sampled_from(DIRS), on=st.booleans())
    def dir_unwritable(self, d: bytes, on: bool) -> None:
        if self.world.present(d) and (d in self.world.immutable) != on:
            self.world.set_immutable(d, on)

    # --- the store -----------------------------------------------------------------------

    @rule(n=st.integers(1, 3))
    def store_fails_next(self, n: int) -> None:
        self.store.faults.fail_next = n

    @rule(down=st.booleans())
    def store_down(self, down: bool) -> None:
        self.store.faults.down = down

    @rule()
    def store_slows_down(self) -> None:
        self.store.faults.slow_down_next = 2

    @rule()
    def store_loses_next_answer(self) -> None:
        self.store.faults.lose_next = 1
        self.dup_ok = True

    @rule()
    def store_lifecycle_aborts_uploads(self) -> None:
        self.store.lifecycle_abort()

    @rule(d=st.sampled_from(DIRS), name=st.sampled_from(NAMES))
    def someone_else_writes_the_key(self, d: bytes, name: bytes) -> None:
        key = self._key(os.path.join(self.world.dir(d), name), name.endswith(b".gz"))
        self.store.someone_writes(self.bucket, key, b"the Go tool was here\n")

    @rule(lie=st.sampled_from(("corrupt", "truncate", "clobber")))
    def store_lies_next(self, lie: str) -> None:
        """The next object is stored otherwise than received, while the store answers for
        what it holds; only where an honest answer can tell (a store that echoes the
        checksum it was sent, or keeps opaque ETags and no checksum, cannot be caught)."""
        s = self.store
        if lie == "clobber":  # someone else writes the key right after our PUT: HEAD tells
            if s.checksums == "ignore" and s.opaque_etags:
                s.faults.clobber_next = 1
                self.dup_ok = True
            return
        if s.checksums == "echo" or (s.checksums == "ignore" and s.opaque_etags):
            return
        s.faults.lie, s.faults.lie_next = lie, 1
        self.dup_ok = True

    # --- consumers and the rest of the system --------------------------------------------

    def start_consumer(self) -> None:
        self.born += 1
        self.consumers.append(Consumer(self, self.born))

    @precondition(lambda self: len(self.consumers) < 2)
    @rule()
    def consumer_started(self) -> None:
        self.start_consumer()

    @precondition(lambda self: self.consumers)
    @rule(which=st.integers(0, 1), action=st.sampled_from(ACTIONS))
    def consumer_steps(self, which: int, action: str) -> None:
        c = self.consumers[which % len(self.consumers)]
        if c.can(action):
            self._step(c, action)

    def _step(self, c: Consumer, action: str) -> None:
        try:
            c.act(action)
        except Killed:
            self._died(c, reached=False)
            return
        if self.store.faults.killed:  # died inside something that caught the exception
            self._died(c, reached=False)

    @precondition(lambda self: self.consumers)
    @rule()
    def consumers_run(self) -> None:
        """Every consumer claims and works until it waits on nothing it can do now."""
        for _ in range(200):
            busy = [c for c in self.consumers if c.busy()]
            for c in busy:
                self._step(c, next(a for a in ACTIONS[1:] if c.can(a)))
            if busy:
                continue
            for c in list(self.consumers):
                self._step(c, "claim")
            if not any(c.busy() for c in self.consumers):
                return

    @precondition(lambda self: self.consumers)
    @rule(which=st.integers(0, 1), when=st.sampled_from(("now", "unlink", "request")),
          after=st.integers(0, 4), reached=st.booleans())
    def consumer_killed(self, which: int, when: str, after: int, reached: bool) -> None:
        """kill -9: now, or between its set-aside rename and unlink, or at its store
        request `after` requests from now (mid-multipart, between upload and ack, ...)."""
        c = self.consumers[which % len(self.consumers)]
        if when == "unlink":
            self.die_at_unlink = True
        elif when == "request":
            self.store.faults.kill_after = after
        else:
            self._died(c, reached)

    def _died(self, c: Consumer, reached: bool) -> None:
        """A consumer is gone with whatever it held; its PUTs in flight reach the store or
        not (`reached`), and nobody hears their answers."""
        self.dup_ok = True
        self.die_at_unlink = False
        self.store.faults.kill_after = None
        self.store.faults.killed = False
        if c in self.consumers:
            self.consumers.remove(c)
        while c.transport and c.transport.pending:
            if reached:
                with contextlib.suppress(Exception, Killed):
                    put = c.transport.pending[0]
                    put.answered = lambda _answer: None
                    c.transport.deliver()
            else:
                c.transport.drop()
        c.pool.waiting.clear()
        c.verify.waiting.clear()

    @rule()
    def watcher_reads_events(self) -> None:
        self.watcher.step(wait=False)

    @rule()
    def rescan(self) -> None:
        rescan(self.cfg, self.queue)

    @rule()
    def done_entries_purged(self) -> None:
        before = {e.id: e for e in self.queue.list(limit=100_000)}
        self.queue.purge_done(older_than=0, now=self.clock.now + 1)
        after = {e.id for e in self.queue.list(limit=100_000)}
        lost = [e for i, e in before.items() if i not in after and e.state != State.DONE]
        if lost:
            raise Violation(f"purge dropped entries that were not done: {lost}")
        self.purged = True

    @rule()
    def failed_replayed(self) -> None:
        self.queue.replay(failed=True)

    @rule(seconds=st.sampled_from((0.5, 2.0, REQUEST_TIMEOUT, LEASE + 1)),
          reached=st.booleans())
    def time_passes(self, seconds: float, reached: bool) -> None:
        """Time passes: PUTs past the request timeout end (each reached the store or not),
        and leases run out (another consumer may then upload a version again)."""
        self.clock.now += seconds
        for c in list(self.consumers):
            if c.transport is not None:
                if reached and any(self.clock.now - p.started >= REQUEST_TIMEOUT
                                   for p in c.transport.pending):
                    self.dup_ok = True
                try:
                    c.transport.time_out(reached)
                except Killed:
                    self._died(c, reached=False)
                    continue
                if self.store.faults.killed:
                    self._died(c, reached=False)
        if seconds >= LEASE and any(c.c.inflight for c in self.consumers):
            self.dup_ok = True

    @rule(leases=st.booleans())
    def file_system_leases(self, leases: bool) -> None:
        """A file system (or a consumer without CAP_LEASE) where F_SETLEASE is refused."""
        self.leases = leases
        self.leases_always &= leases

    @rule()
    def delete_after_upload_switched(self) -> None:
        consumer = replace(self.cfg.consumer,
                           delete_after_upload=not self.cfg.consumer.delete_after_upload)
        self.cfg = replace(self.cfg, consumer=consumer)
        self.ever_kept |= not consumer.delete_after_upload
        for c in self.consumers:
            c.c.cfg = c.c.lane.cfg = self.cfg

    # --- what must hold after every step --------------------------------------------------

    def _key(self, path: bytes, gz: bool) -> str:
        source = self.cfg.source(SOURCE)
        assert source is not None
        return object_key(source, path, "gzip" if gz else None)

    def _version_of(self, body: bytes, key: str) -> Version | None:
        """The version one of whose states `body` is (its whole content, or what a reader saw
        mid-write), one of a path of `key` where there is one (files created empty share
        their first state); None: no client wrote these bytes."""
        found = [v for v in self.world.versions.values() if body in v.states]
        found.sort(key=lambda v: (not any(self._key(p, v.gz) == key for p in v.paths),
                                  body != v.content))
        return found[0] if found else None

    @invariant()
    def objects_hold_whole_versions_of_their_own_path(self) -> None:
        self.store.sync()
        writes = self.store.writes[self.seen_writes:]
        self.seen_writes = len(self.store.writes)
        for w in writes:
            if w.writer == "someone else":
                self.owner[w.key] = w.writer
            if w.writer != "sftppush":  # a lie: sftppush must not take it as verified
                continue
            v = self._version_of(w.body, w.key)
            if v is None:
                raise Violation(f"object {w.key!r} holds bytes that no client wrote")
            # Without leases nobody can tell a file still being written (SPEC 4): then a
            # half-written upload is replaced by the whole one, at its close-write.
            if self.leases_always and (not v.finished or w.body != v.content):
                raise Violation(f"object {w.key!r} holds version {v.n} half-written"
                                f" ({len(w.body)} of {len(v.content)} bytes so far)")
            self._owned(w.key, v)

    def _owned(self, key: str, v: Version) -> None:
        """One key, one local path: the object stays its first path's (SPEC 3), newest last."""
        paths = {p for p in v.paths if self._key(p, v.gz) == key}
        if not paths:
            raise Violation(f"object {key!r} holds version {v.n} of {v.paths}")
        path = min(paths).decode("utf-8", "backslashreplace")
        before = self.owner.get(key)
        # A store without conditional writes cannot catch an object the queue forgot.
        may_move = before in (None, "someone else") or (
            not self.store.conditional and self.purged)
        if before != path and not may_move:
            raise Violation(f"object {key!r} of {before!r} replaced by {path!r}")
        # Per path: where the key may move (above), another path's deletions say nothing.
        newest = max((self.deleted.get((key, p), 0) for p in paths), default=0)
        if before == path and newest > v.n:
            raise Violation(f"object {key!r}: version {v.n} landed after version"
                            f" {newest} was uploaded and deleted")
        self.owner[key] = path

    @invariant()
    def files_are_deleted_only_once_their_content_is_stored(self) -> None:
        self.store.sync()
        for path, v in self.world.vanished():
            if any(w.path == path for w in self.world.writers):
                raise Violation(f"{path!r} deleted while a client had it open for writing")
            key = self._key(path, v.gz)
            obj = self.store.objects.get((self.bucket, key))
            if obj is None or obj.body != v.content:
                raise Violation(f"{path!r} (version {v.n}) deleted, but the store holds"
                                f" {'nothing' if obj is None else len(obj.body)} at {key!r}")
            v.fate = "deleted"
            self.deleted[key, path] = max(self.deleted.get((key, path), 0), v.n)

    @invariant()
    def queue_counters_equal_its_entries(self) -> None:
        with self.queue.reading() as db:
            counted = dict(db.execute("SELECT state, n FROM counts").fetchall())
            real = dict(db.execute("SELECT state, count(*) FROM entries GROUP BY state"))
            claimed = db.execute("SELECT path FROM entries WHERE state = 'claimed'"
                                 " GROUP BY path HAVING count(*) > 1").fetchall()
        if {k: v for k, v in counted.items() if v} != real:
            raise Violation(f"queue counts {counted} != entries {real}")
        if claimed:
            raise Violation(f"two versions of one path claimed at once: {claimed}")

    @invariant()
    def steps_are_counted(self) -> None:
        Model.steps += 1

    @invariant()
    def log_lines_are_single_events(self) -> None:
        lines, self.lines.out = self.lines.out, []
        for line in lines:
            if line.startswith("TRACEBACK"):
                raise Violation(f"an unexpected error was logged: {line}")
            if any(c in line for c in "\n\r\x00\x1b"):
                raise Violation(f"a log line holds a control character: {line!r}")

    # --- quiescence: everything settles, then every file has its due end ------------------

    @rule()
    def quiesce(self) -> None:
        """Writers close, the store comes back honest, time passes every delay and lease,
        every event is read, a rescan runs, consumers drain; then every file that is still
        on disk must say why, and every version that left the disk must be in the store."""
        for w in list(self.world.writers):
            self.world.close(w)
        self.store.faults = type(self.store.faults)()
        self.leases = True
        self._drain()
        for round_ in range(30):
            self.clock.now += LEASE + 1  # past every delay and grace, and the dead's leases
            self._read_events()
            rescan(self.cfg, self.queue)
            self._drain()
            counts = self.queue.counts()
            if round_ and not counts[State.PENDING] and not counts[State.CLAIMED]:
                break
        else:
            raise Violation(f"the queue never drained: {self.queue.counts()}")
        self.objects_hold_whole_versions_of_their_own_path()
        self.files_are_deleted_only_once_their_content_is_stored()
        self._every_file_has_its_end()

    def _read_events(self) -> None:
        """The watcher reads what happened and finishes its scans, past its grace."""
        self.clock.now += 1
        self.watcher.step(wait=False)
        while self.watcher.scans:
            self.watcher.step(wait=False)
        self.clock.now += 1
        self.watcher.step(wait=False)

    def _drain(self) -> None:
        """Every consumer works until it holds nothing and finds nothing to claim."""
        self._read_events()
        for _ in range(10):
            if not self.consumers:  # systemd restarts a consumer that died
                self.start_consumer()
            self.consumers_run()
            if self.consumers and not any(c.busy() for c in self.consumers):
                return
        raise Violation("the consumers never settled")

    def _every_file_has_its_end(self) -> None:
        newest = {}
        for e in self.queue.list(limit=100_000):
            newest.setdefault(e.path, e)
        for path, (_, n) in self.world.files.items():
            self._kept_with_reason(path, self.world.versions[n], newest.get(path))
        # In a directory no one can write, a private name stays until it can be (the next
        # rescan after that hands its entry back); anywhere else it must be gone.
        left = [p for p in self.world.leftovers(safeopen.DELETING_PREFIX)
                if os.path.basename(os.path.dirname(p)) not in self.world.immutable]
        if left:
            raise Violation(f"private names left behind: {left}")
        for v in self.world.versions.values():
            if v.fate == "on disk" and not any(n == v.n for _, n in self.world.files.values()):
                raise Violation(f"version {v.n} of {v.paths} vanished without a trace")

    def _kept_with_reason(self, path: bytes, v: Version, entry: Any) -> None:
        """A file still on disk once all settled: failed with a reason that says why, or
        kept by config with its version in the store, uploaded once."""
        why = f"{path!r} (version {v.n}) is still on disk"
        if entry is None:
            raise Violation(f"{why} with no queue entry")
        if entry.state == State.FAILED:
            if not (entry.last_error or "").startswith(REASONS):
                raise Violation(f"{why}, failed without a reason: {entry.last_error!r}")
            if entry.last_error.startswith("key collision:") and self.owner.get(
                    self._key(path, v.gz)) == path.decode("utf-8", "backslashreplace"):
                raise Violation(f"{why}, failed as colliding with its own object")
            return
        if entry.state != State.DONE or not self.ever_kept:
            raise Violation(f"{why}, its entry {entry.id} is {entry.state.value}"
                            f" ({entry.note or entry.last_error})")
        key = self._key(path, v.gz)
        stretches = self._uploads_between_others(key, v.content)
        if not sum(stretches):
            raise Violation(f"{why}, kept, but never uploaded to {key!r}")
        if max(stretches) > 1 and not self.dup_ok:
            raise Violation(f"{why}, kept, and uploaded {max(stretches)} times")


    def _uploads_between_others(self, key: str, content: bytes) -> list[int]:
        """Uploads of `content` to `key`, counted between the writes of someone else to it:
        an object without sftppush's metadata is replaced (SPEC 3), so after one a kept
        file's version is rightly uploaded again (a replay finds its recorded object gone)."""
        stretches = [0]
        for w in self.store.writes:
            if w.key == key and w.writer == "someone else":
                stretches.append(0)
            elif w.key == key and w.body == content:
                stretches[-1] += 1
        return stretches


@contextlib.contextmanager
def _patched(module: Any, name: str, value: Any) -> Iterator[None]:
    saved = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, saved)
