"""How the queue's state is shown to operators: text, Prometheus exposition, entry lines.

Owns presentation only; the numbers come from `Queue.stats()` and `Queue.list()`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from sftppush.queue import Entry, Stats


def text(stats: Stats, path: Path) -> str:
    age = "-" if stats.oldest_pending_age_s is None else f"{stats.oldest_pending_age_s:.0f}s"
    lines = [
        f"queue {path}",
        f"  pending {stats.pending}  claimed {stats.claimed}  done {stats.done}"
        f"  failed {stats.failed}  oldest pending {age}",
        f"  uploaded last minute {stats.uploaded_last_minute} ({stats.bytes_last_minute} bytes)"
        f"  last hour {stats.uploaded_last_hour} ({stats.bytes_last_hour} bytes)",
    ]
    if stats.top_errors:
        lines.append("  top errors:")
        lines += [f"    {count:>6}  {error}" for error, count in stats.top_errors]
    return "\n".join(lines)


def prometheus(stats: Stats) -> str:
    """The text exposition format, for node_exporter's textfile collector."""
    registry = CollectorRegistry()
    entries = Gauge("sftppush_queue_entries", "Queue entries per state.", ["state"],
                    registry=registry)
    for state in ("pending", "claimed", "done", "failed"):
        entries.labels(state).set(getattr(stats, state))
    Gauge("sftppush_oldest_pending_age_seconds",
          "Age of the oldest pending entry (0 when none).",
          registry=registry).set(stats.oldest_pending_age_s or 0)
    uploads = Gauge("sftppush_uploads", "Files uploaded in the trailing window.", ["window"],
                    registry=registry)
    volume = Gauge("sftppush_uploaded_bytes", "Source bytes uploaded in the trailing window.",
                   ["window"], registry=registry)
    for window in ("minute", "hour"):
        uploads.labels(window).set(getattr(stats, f"uploaded_last_{window}"))
        volume.labels(window).set(getattr(stats, f"bytes_last_{window}"))
    return generate_latest(registry).decode()


def entry_line(entry: Entry) -> str:
    when = datetime.fromtimestamp(entry.enqueued_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    extra = "".join(f" {k}={v!r}" for k, v in (("error", entry.last_error),
                                               ("note", entry.note)) if v)
    return (f"{entry.id:>8} {entry.state.value:<8} attempts={entry.attempts} {when}"
            f" source={entry.source} path={entry.display_path!r}{extra}")
