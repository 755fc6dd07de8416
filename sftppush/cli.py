"""The command line: parse, load config, call one function, map errors to exit codes.

Commands stay short; the work lives in the rooms, imported inside each command so that
`sftppush --help` and `config check` stay fast. Exit status: 0 ok, 1 runtime failure,
2 usage or configuration error — always one line on stderr, a traceback (folded into one more
line) only at debug.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from sftppush import __version__
from sftppush.config import Config, load
from sftppush.errors import ConfigError, SftppushError
from sftppush.values import parse_duration

if TYPE_CHECKING:  # imported lazily: most commands never open the queue
    from sftppush.queue.queue import Queue


class _Group(click.Group):
    """Turns our errors into one line and an exit status, in one place."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except ConfigError as exc:
            _fail(ctx, exc, 2)
        except SftppushError as exc:
            _fail(ctx, exc, 1)
        except Exception as exc:  # an unexpected failure is still one line unless debugging
            _fail(ctx, exc, 1, prefix=f"{type(exc).__name__}: ")


def _fail(ctx: click.Context, exc: BaseException, code: int, prefix: str = "") -> None:
    import traceback

    from sftppush import logs

    if (ctx.obj or {}).get("log_level") == "debug":  # folded into one line, as logs.py does
        logs.line("sftppush: " + "".join(traceback.format_exception(exc)).strip(),
                  logging.DEBUG)
    message = " ".join(str(exc).split()) or type(exc).__name__
    logs.line(f"sftppush: {prefix}{message}")
    ctx.exit(code)


def _config(ctx: click.Context, *, sources: tuple[str, ...] = (), need_sources: bool = True,
            check_dirs: bool = False, **flags: Any) -> Config:
    """Load the effective config with this invocation's flags, and set up logging."""
    from sftppush import logs

    obj = ctx.obj
    flags = {"defaults.log.level": obj["log_level"], "defaults.log.format": obj["log_format"],
             **flags}
    cfg = load(obj["config"], flags=flags, sources=list(sources), need_sources=need_sources,
               check_dirs=check_dirs)
    logs.setup(cfg.defaults.log)
    return cfg


def _open_queue(cfg: Config, create: bool = False) -> Queue:
    from sftppush.queue.queue import Queue

    return Queue(cfg.queue.path, create=create)


_source_option = click.option(
    "--source", "sources", multiple=True, metavar="S",
    help='A source as "name=NAME,paths=/a /b[,s3target=BUCKET/PREFIX]"; repeatable; '
         "replaces the config file's sources.")
_workers_option = click.option("--workers", type=click.IntRange(min=1), default=None,
                               help="Worker threads per consumer process.")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="YAML config (default: $SFTPPUSH_CONFIG, ~/.sftppush/config.yaml, "
                   "/etc/sftppush/config.yaml).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default=None)
@click.option("--log-format", type=click.Choice(["text", "json"]), default=None)
@click.version_option(__version__, prog_name="sftppush")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, log_level: str | None,
        log_format: str | None) -> None:
    """Move every finished upload of an SFTP server into S3, decompressed, losing nothing."""
    ctx.obj = {"config": config_path, "log_level": log_level, "log_format": log_format}


@cli.command()
@_source_option
@click.option("--no-rescan", is_flag=True, help="Skip the start-up scan for missed files.")
@click.pass_context
def watch(ctx: click.Context, sources: tuple[str, ...], no_rescan: bool) -> None:
    """Run the watcher: turn finished files into queue entries."""
    from sftppush.source import watcher

    watcher.run(_config(ctx, sources=sources), rescan=not no_rescan)


@cli.command()
@_workers_option
@click.option("--drain", is_flag=True, help="Exit 0 once nothing is pending or claimed.")
@_source_option
@click.pass_context
def consume(ctx: click.Context, workers: int | None, drain: bool,
            sources: tuple[str, ...]) -> None:
    """Run a consumer: claim entries, upload them, delete the local files."""
    from sftppush import progress
    from sftppush.queue.owners import owner_token
    from sftppush.runtime import consumer

    cfg = _config(ctx, sources=sources, **{"consumer.workers": workers})
    with progress.Reporter(cfg.queue.path, owner_token()):  # a line per large upload / 30 s
        consumer.run(cfg, drain=drain, own_process=True)


@cli.command()
@_workers_option
@click.option("--consumers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Consumer processes.")
@_source_option
@click.pass_context
def run(ctx: click.Context, workers: int | None, consumers: int,
        sources: tuple[str, ...]) -> None:
    """Run the watcher and consumers together under one parent (small hosts, trying it out)."""
    from sftppush.runtime import supervisor

    cfg = _config(ctx, sources=sources, **{"consumer.workers": workers})
    supervisor.run(cfg, global_args=_global_args(ctx), sources=sources, consumers=consumers)


def _global_args(ctx: click.Context) -> list[str]:
    """This invocation's global options, for `run` to start its children with."""
    obj = ctx.obj
    return [*(("--config", obj["config"]) if obj["config"] else ()),
            *(("--log-level", obj["log_level"]) if obj["log_level"] else ()),
            *(("--log-format", obj["log_format"]) if obj["log_format"] else ())]


@cli.command()
@click.option("--dir", "directory", type=click.Path(file_okay=False), default="var/demo",
              show_default=True, help="Where the demo keeps its S3 objects, source and queue.")
@click.pass_context
def demo(ctx: click.Context, directory: str) -> None:
    """Try it: a local S3 on 127.0.0.1, a source, sample files, live uploads. Ctrl-C stops."""
    from sftppush import demo as demo_room

    demo_room.run(Path(directory), log_level=ctx.obj["log_level"] or "info")


@cli.command()
@click.option("--source", "source_name", default=None, metavar="NAME",
              help="Only this configured source.")
@click.option("--dry-run", is_flag=True, help="Report what would be enqueued; change nothing.")
@click.pass_context
def rescan(ctx: click.Context, source_name: str | None, dry_run: bool) -> None:
    """Backfill: enqueue files on disk that are not queued yet."""
    from sftppush.source import scan

    cfg = _config(ctx)
    if source_name and cfg.source(source_name) is None:
        raise ConfigError(f"rescan: no source named {source_name!r} in the config")
    with _open_queue(cfg, create=True) as queue:
        summary = scan.rescan(cfg, queue, source_name=source_name, dry_run=dry_run,
                              progress=sys.stderr.isatty())
    click.echo(summary.line(dry_run))


@cli.group()
def queue() -> None:
    """Inspect and repair the queue."""


@queue.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.option("--prometheus", is_flag=True, help="Text format for node_exporter's textfile "
                                                 "collector.")
@click.pass_context
def queue_status(ctx: click.Context, as_json: bool, prometheus: bool) -> None:
    """Counts per state, oldest pending age, recent throughput, top errors."""
    from sftppush import status

    if as_json and prometheus:
        raise click.UsageError("--json and --prometheus exclude each other")
    cfg = _config(ctx, need_sources=False)
    with _open_queue(cfg) as q:
        stats = status.read(q)
    if as_json:
        click.echo(json.dumps(stats.to_json()))
    elif prometheus:
        click.echo(status.prometheus(stats), nl=False)
    else:
        click.echo(status.text(stats, cfg.queue.path))


@queue.command("list")
@click.option("--state", type=click.Choice(["pending", "claimed", "done", "failed"]),
              default=None)
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def queue_list(ctx: click.Context, state: str | None, limit: int, as_json: bool) -> None:
    """Entries, newest first: state, attempts, when a pending one is tried again, path, key,
    and the error while it stands."""
    from sftppush import status
    from sftppush.progress import in_flight
    from sftppush.queue.entries import State

    now = time.time()
    with _open_queue(_config(ctx, need_sources=False)) as q:
        entries = q.list(State(state) if state else None, limit)
        with q.reading() as db:
            going = {p.id: p for p in in_flight(db, now)}
    for entry in entries:
        shown = going.get(entry.id)
        click.echo(json.dumps(status.entry_json(entry, now, shown)) if as_json
                   else status.entry_line(entry, now, shown))


@queue.command("replay")
@click.option("--failed", "all_failed", is_flag=True, help="Every failed entry.")
@click.argument("ids", nargs=-1, type=int)
@click.pass_context
def queue_replay(ctx: click.Context, all_failed: bool, ids: tuple[int, ...]) -> None:
    """Make failed entries pending again (attempts reset)."""
    if all_failed == bool(ids):
        raise click.UsageError("give either --failed or entry IDs")
    with _open_queue(_config(ctx, need_sources=False)) as q:
        for i in ids:
            entry = q.get(i)
            if entry is None or entry.state != "failed":
                what = "no such entry" if entry is None else f"it is {entry.state.value}"
                raise ConfigError(f"queue replay: entry {i} cannot be replayed: {what}")
        count = q.replay(ids=ids, failed=all_failed)
    click.echo(f"replayed {count} entr{'y' if count == 1 else 'ies'}")


@queue.command("purge")
@click.option("--done-older-than", "older_than", required=True, metavar="DURATION",
              help="e.g. 7d, 12h, 30m.")
@click.pass_context
def queue_purge(ctx: click.Context, older_than: str) -> None:
    """Drop done entries finished longer ago than DURATION (those of files kept by
    delete_after_upload: false only once the file is gone, those of files gone with their
    directory only once no private name of theirs can be left in it)."""
    from sftppush.source.scan import still_needed
    from sftppush.source.upkeep import PURGE_PAUSE

    seconds = parse_duration(older_than, "--done-older-than")
    with _open_queue(_config(ctx, need_sources=False)) as q:
        count = q.purge_done(seconds, pause=PURGE_PAUSE, still_there=still_needed)
    click.echo(f"purged {count} done entr{'y' if count == 1 else 'ies'}")


@cli.command()
@click.option("--listen", default="127.0.0.1:9464", show_default=True, metavar="HOST:PORT",
              help="Address to serve /metrics on ([::1]:PORT for IPv6).")
@click.pass_context
def metrics(ctx: click.Context, listen: str) -> None:
    """Serve Prometheus /metrics from the queue, read-only, until SIGTERM."""
    from sftppush import status

    host, port = _host_port(listen)
    cfg = _config(ctx, need_sources=False)
    status.serve(cfg.queue.path, host, port)


def _host_port(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--listen: {listen!r} is not HOST:PORT, e.g. 127.0.0.1:9464")
    return host, int(port)


@cli.group("config")
def config_group() -> None:
    """Validate or print the effective configuration."""


@config_group.command("check")
@_source_option
@click.option("--no-environment", is_flag=True,
              help="Validate the configuration only: do not check the buckets, "
                   "permissions, leases and modules as the running user.")
@click.pass_context
def config_check(ctx: click.Context, sources: tuple[str, ...], no_environment: bool) -> None:
    """Validate the configuration, its source trees included (exit 2 with one line naming the
    problem), then check the environment as the running user: each bucket with the
    credentials, each source directory's permissions and leases, the queue directory and the
    modules (exit 1, one line per problem)."""
    from sftppush import checks, logs
    from sftppush.queue.owners import user_name
    from sftppush.source import scan

    cfg = _config(ctx, sources=sources, check_dirs=True)
    trees = scan.check_sources(cfg)
    for warning in trees.warnings:
        logs.line(f"sftppush: warning: {warning}", logging.WARNING)
    for problem in trees.problems[:-1]:
        logs.line(f"sftppush: {problem}")
    if trees.problems:
        raise ConfigError(trees.problems[-1])
    names = ", ".join(s.name for s in cfg.watch.sources)
    click.echo(f"config ok: {cfg.file or 'no file'}; sources: {names}; queue: {cfg.queue.path}")
    if no_environment:
        return
    findings, fine = checks.environment(cfg)
    for finding in findings:
        logs.line(f"sftppush: {'problem' if finding.problem else 'note'}: {finding.text}",
                  logging.ERROR if finding.problem else logging.WARNING)
    problems = sum(f.problem for f in findings)
    if problems:
        raise SftppushError(f"config check: {problems} problem{'s' * (problems > 1)} in the"
                            f" environment of user {user_name()}")
    click.echo(f"environment ok for user {user_name()}: {'; '.join(fine)}")


@config_group.command("show")
@_source_option
@click.pass_context
def config_show(ctx: click.Context, sources: tuple[str, ...]) -> None:
    """Print the effective configuration as YAML, secrets redacted."""
    import yaml

    from sftppush.config import redacted

    cfg = _config(ctx, sources=sources, need_sources=False)
    click.echo(yaml.safe_dump(redacted(cfg), sort_keys=False), nl=False)


def main() -> None:
    cli(prog_name="sftppush")
