"""The queue's numbers for operators: read once (`read`), shown as text, JSON or Prometheus
metrics (prometheus_client's registry and exposition), live over HTTP with `serve`.

Only reads: it opens the queue read-only for metrics and never writes a thing. The counters
it shows are those the queue keeps with each ack, never derived from done entries (purged).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sftppush import __version__, signals
from sftppush.errors import SftppushError
from sftppush.progress import Progress, in_flight
from sftppush.queue.entries import Entry, State
from sftppush.queue.queue import Queue

log = logging.getLogger("sftppush.status")

WINDOWS = {"minute": 60, "hour": 3600}


@dataclass(frozen=True)
class Backlog:
    """The entries in the queue now, by state, and the errors they failed with or wait out."""

    pending: int
    claimed: int
    done: int
    failed: int
    oldest_pending_age_s: float | None
    top_errors: list[tuple[str, int]] = field(default_factory=list)  # (error, entries)


@dataclass(frozen=True)
class Throughput:
    """Files uploaded and verified in a trailing window, and their source bytes."""

    uploads: int
    bytes: int


@dataclass(frozen=True)
class Totals:
    """Since the queue file was made: they survive purges and restarts."""

    uploads: int = 0
    bytes: int = 0
    last_upload_at: float | None = None
    failures: dict[str, int] = field(default_factory=dict)  # by reason class
    retries: dict[str, int] = field(default_factory=dict)   # by reason class


@dataclass(frozen=True)
class WatcherHealth:
    """The watcher as the queue last heard of it."""

    heartbeat_at: float | None = None
    unwatched_dirs: int = 0  # no watch (watch limit reached): scanned on a timer


@dataclass(frozen=True)
class Stats:
    """Everything `queue status` and the metrics show, read at one moment."""

    backlog: Backlog
    last_minute: Throughput
    last_hour: Throughput
    totals: Totals = field(default_factory=Totals)
    watcher: WatcherHealth = field(default_factory=WatcherHealth)
    file_bytes: int = 0  # the queue file with its WAL
    in_flight: list[Progress] = field(default_factory=list)  # multipart uploads under way

    def to_json(self) -> dict[str, Any]:
        """One flat object, its keys in this order: operators' scripts read them so, however
        the records above group them."""
        backlog, totals = self.backlog, self.totals
        return {
            "pending": backlog.pending, "claimed": backlog.claimed, "done": backlog.done,
            "failed": backlog.failed, "oldest_pending_age_s": backlog.oldest_pending_age_s,
            "uploaded_last_minute": self.last_minute.uploads,
            "uploaded_last_hour": self.last_hour.uploads,
            "bytes_last_minute": self.last_minute.bytes, "bytes_last_hour": self.last_hour.bytes,
            "top_errors": [{"error": e, "count": n} for e, n in backlog.top_errors],
            "uploads_total": totals.uploads, "uploaded_bytes_total": totals.bytes,
            "last_upload_at": totals.last_upload_at, "failures": dict(totals.failures),
            "retries": dict(totals.retries), "watcher_heartbeat_at": self.watcher.heartbeat_at,
            "file_bytes": self.file_bytes, "in_flight": [p.to_json() for p in self.in_flight],
            "watcher_unwatched_dirs": self.watcher.unwatched_dirs,
        }


def read(q: Queue, now: float | None = None) -> Stats:
    """Everything `queue status` and the metrics show, in one read transaction."""
    now = time.time() if now is None else now
    with q.reading() as db:
        counts = dict(db.execute("SELECT state, n FROM counts").fetchall())
        (oldest,) = db.execute(
            "SELECT min(enqueued_at) FROM entries WHERE state = 'pending'").fetchone()
        window = {name: Throughput(*db.execute(
            "SELECT coalesce(sum(uploads), 0), coalesce(sum(bytes), 0)"
            " FROM throughput WHERE second > ?", (int(now) - seconds,)).fetchone())
                  for name, seconds in WINDOWS.items()}
        # Errors of failed entries and of pending ones waiting out a retry delay.
        top = db.execute(
            "SELECT last_error, count(*) FROM entries WHERE last_error IS NOT NULL AND"
            " (state = 'failed' OR (state = 'pending' AND due > ?))"
            " GROUP BY last_error ORDER BY count(*) DESC LIMIT 5", (now,)).fetchall()
        counters: dict[str, dict[str, float]] = {}
        for name, label, value in db.execute("SELECT name, label, value FROM counters"):
            counters.setdefault(name, {})[label] = value
        beat = db.execute("SELECT at FROM heartbeats WHERE role = 'watcher'").fetchone()
        going = in_flight(db, now)
    return Stats(
        backlog=Backlog(pending=counts.get("pending", 0), claimed=counts.get("claimed", 0),
                        done=counts.get("done", 0), failed=counts.get("failed", 0),
                        oldest_pending_age_s=None if oldest is None else max(0.0, now - oldest),
                        top_errors=[(e, n) for e, n in top]),
        last_minute=window["minute"], last_hour=window["hour"],
        totals=Totals(uploads=int(counters.get("uploads", {}).get("", 0)),
                      bytes=int(counters.get("uploaded_bytes", {}).get("", 0)),
                      last_upload_at=counters.get("last_upload_at", {}).get(""),
                      failures={k: int(v) for k, v in counters.get("failures", {}).items()},
                      retries={k: int(v) for k, v in counters.get("retries", {}).items()}),
        watcher=WatcherHealth(
            heartbeat_at=beat[0] if beat else None,
            unwatched_dirs=int(counters.get("watcher_unwatched_dirs", {}).get("", 0))),
        file_bytes=file_bytes(q.file),
        in_flight=going,
    )


def file_bytes(path: Path) -> int:
    """The queue file's size on disk with its WAL: what keep_done keeps bounded."""
    size = 0
    for name in (path, path.with_name(path.name + "-wal")):
        with contextlib.suppress(FileNotFoundError):
            size += name.stat().st_size
    return size


def text(stats: Stats, path: Path) -> str:
    backlog, totals, watcher = stats.backlog, stats.totals, stats.watcher
    minute, hour = stats.last_minute, stats.last_hour
    age = "-" if backlog.oldest_pending_age_s is None else f"{backlog.oldest_pending_age_s:.0f}s"
    beat = ("never" if watcher.heartbeat_at is None
            else f"{max(0.0, time.time() - watcher.heartbeat_at):.0f}s ago")
    lines = [
        f"queue {path} ({stats.file_bytes / 2**20:.1f} MiB with WAL)",
        f"  pending {backlog.pending}  claimed {backlog.claimed}  done {backlog.done}"
        f"  failed {backlog.failed}  oldest pending {age}",
        f"  uploaded last minute {minute.uploads} ({minute.bytes} bytes)"
        f"  last hour {hour.uploads} ({hour.bytes} bytes)",
        f"  uploaded in all {totals.uploads} ({totals.bytes} bytes)"
        f"  last upload {_when(totals.last_upload_at)}  watcher heartbeat {beat}"
        f"  unwatched dirs {watcher.unwatched_dirs}",
    ]
    if totals.failures:
        lines.append("  failures ever (since the queue file was made), by reason: " + "  ".join(
            f"{reason} {n}" for reason, n in sorted(totals.failures.items()))
            + f"  (failed now: {backlog.failed}, see queue list --state failed)")
    if stats.in_flight:
        lines.append("  uploads in flight:")
        lines += [f"    id {p.id}: {p.text()}  {p.path}" for p in stats.in_flight]
    if backlog.top_errors:
        lines.append("  top errors:")
        lines += [f"    {count:>6}  {error}" for error, count in backlog.top_errors]
    return "\n".join(lines)


class QueueCollector(Collector):
    """The metrics of one queue file, read afresh at each collect() (each scrape)."""

    def __init__(self, read_stats: Callable[[], Stats]) -> None:
        self.read_stats = read_stats

    def collect(self) -> Iterator[Metric]:
        try:
            stats: Stats | None = self.read_stats()
        except SftppushError as exc:  # missing, locked out, or being replaced: say so
            log.warning("queue unreadable error=%s", exc)
            stats = None
        info = GaugeMetricFamily("sftppush_build_info", "The sftppush serving these metrics.",
                                 labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        yield GaugeMetricFamily("sftppush_queue_up", "1 if the queue file could be read.",
                                value=int(stats is not None))
        if stats is not None:
            yield from metrics(stats)


def metrics(stats: Stats) -> Iterator[Metric]:
    """Every metric of `stats`; the names of `queue status --prometheus` before counters
    came are kept as they were."""
    entries = GaugeMetricFamily("sftppush_queue_entries", "Queue entries per state.",
                                labels=["state"])
    for state in ("pending", "claimed", "done", "failed"):
        entries.add_metric([state], getattr(stats.backlog, state))
    yield entries
    yield GaugeMetricFamily("sftppush_oldest_pending_age_seconds",
                            "Age of the oldest pending entry (0 when none).",
                            value=stats.backlog.oldest_pending_age_s or 0)
    uploads = GaugeMetricFamily("sftppush_uploads", "Files uploaded in the trailing window.",
                                labels=["window"])
    volume = GaugeMetricFamily("sftppush_uploaded_bytes",
                               "Source bytes uploaded in the trailing window.",
                               labels=["window"])
    for window, numbers in (("minute", stats.last_minute), ("hour", stats.last_hour)):
        uploads.add_metric([window], numbers.uploads)
        volume.add_metric([window], numbers.bytes)
    yield uploads
    yield volume
    yield CounterMetricFamily("sftppush_upload_files", "Files uploaded and verified.",
                              value=stats.totals.uploads)
    yield CounterMetricFamily("sftppush_upload_source_bytes",
                              "Source (on disk) bytes of the files uploaded.",
                              value=stats.totals.bytes)
    for name, what, by_reason in (("failures", "Entries failed, by reason class.",
                                   stats.totals.failures),
                                  ("retries", "Entries sent back to wait for another try,"
                                   " by reason class.", stats.totals.retries)):
        family = CounterMetricFamily(f"sftppush_{name}", what, labels=["reason"])
        for reason, n in sorted(by_reason.items()):
            family.add_metric([reason], n)
        yield family
    yield GaugeMetricFamily("sftppush_last_upload_timestamp_seconds",
                            "Unix time of the last successful upload (0: none yet).",
                            value=stats.totals.last_upload_at or 0)
    yield GaugeMetricFamily("sftppush_watcher_heartbeat_timestamp_seconds",
                            "Unix time of the watcher's last heartbeat (0: none yet).",
                            value=stats.watcher.heartbeat_at or 0)
    yield GaugeMetricFamily("sftppush_queue_file_bytes",
                            "Size of the queue file with its WAL.", value=stats.file_bytes)
    yield GaugeMetricFamily("sftppush_uploads_in_flight",
                            "Multipart uploads under way (a single PUT is not counted).",
                            value=len(stats.in_flight))
    yield GaugeMetricFamily("sftppush_in_flight_sent_bytes",
                            "Bytes the store took so far of the multipart uploads under way.",
                            value=sum(p.bytes_sent for p in stats.in_flight))
    yield GaugeMetricFamily("sftppush_watcher_unwatched_dirs",
                            "Directories without an inotify watch (the watch limit was"
                            " reached), scanned every few seconds instead.",
                            value=stats.watcher.unwatched_dirs)


def prometheus(stats: Stats) -> str:
    """The text exposition format, for node_exporter's textfile collector."""
    registry = CollectorRegistry()
    registry.register(QueueCollector(lambda: stats))
    return generate_latest(registry).decode()


def serve(queue_path: Path, host: str, port: int, stop: threading.Event | None = None,
          on_ready: Callable[[int], None] | None = None) -> None:
    """Serve /metrics of the queue at `queue_path` on host:port until SIGTERM/SIGINT or
    `stop`; each scrape opens the queue read-only and closes it again."""

    def read_now() -> Stats:
        with Queue(queue_path, readonly=True, timeout=5.0) as q:
            return read(q)

    registry = CollectorRegistry()
    registry.register(QueueCollector(read_now))
    stop = stop or threading.Event()
    with signals.on_stop(stop) as stopping:
        try:
            server, thread = start_http_server(port, host, registry)
        except OSError as exc:
            address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            fix = (f"another process holds it (ss -ltnp 'sport = :{port}'), or give another"
                   " with --listen" if exc.errno == errno.EADDRINUSE else
                   "give an address of this host with --listen")
            raise SftppushError(f"metrics: cannot listen on {address}: {exc.strerror}:"
                                f" {fix}") from None
        bound = server.server_address[1]
        log.info("serving metrics address=%s port=%d queue=%s", host, bound, queue_path)
        try:
            if on_ready is not None:
                on_ready(bound)
            while not stopping.wait(1.0):
                pass
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)
        log.info("metrics stopped")


def _when(at: float | None) -> str:
    return "never" if at is None else datetime.fromtimestamp(at, UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def current_error(entry: Entry) -> str | None:
    """The entry's last error while it still stands: not once the entry is done (an upload
    that succeeded after an outage keeps the outage's message in the queue)."""
    return None if entry.state == State.DONE else entry.last_error


def retry_in(entry: Entry, now: float) -> float | None:
    """Seconds until a pending entry is tried again (None when it is due, or not pending)."""
    if entry.state != State.PENDING or entry.due <= now:
        return None
    return entry.due - now


def entry_json(entry: Entry, now: float, going: Progress | None = None) -> dict[str, Any]:
    """`queue list --json`'s object: the entry as stored (`last_error` as it was last seen),
    with `error` (the current one), `retry_in_s` and `progress` (a multipart upload's)."""
    return {**entry.to_json(), "error": current_error(entry), "retry_in_s": retry_in(entry, now),
            "progress": going.to_json() if going else None}


def entry_line(entry: Entry, now: float | None = None, going: Progress | None = None) -> str:
    now = time.time() if now is None else now
    wait = retry_in(entry, now)
    extra = "".join(f" {k}={v!r}" for k, v in (("progress", going.text() if going else None),
                                               ("key", entry.key),
                                               ("error", current_error(entry)),
                                               ("note", entry.note)) if v)
    retry = f" retry_in={wait:.0f}s" if wait is not None else ""
    return (f"{entry.id:>8} {entry.state.value:<8} attempts={entry.attempts}{retry}"
            f" {_when(entry.enqueued_at)} source={entry.source} path={entry.display_path!r}"
            f"{extra}")
