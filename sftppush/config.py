"""The effective configuration: built-in defaults < YAML file < environment < flags.

Owns lookup order, the schema, validation and the frozen dataclasses every room receives.
It must never start anything: a bad config is one ConfigError line before any daemon runs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sftppush.errors import ConfigError

ENV_PREFIX = "SFTPPUSH_"
SEARCH_PATH = ("~/.sftppush/config.yaml", "/etc/sftppush/config.yaml")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_SOURCE_NAME_RE = re.compile(r"^[^/\x00]+$")


@dataclass(frozen=True)
class Target:
    """Where a source's objects go: a bucket and an optional key prefix (no slashes at its ends)."""

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, text: str, key: str) -> Target:
        bucket, _, prefix = text.strip().partition("/")
        prefix = prefix.strip("/")
        if not _BUCKET_RE.match(bucket) or ".." in bucket:
            raise ConfigError(f"config: {key} {text!r} does not start with a valid bucket name")
        return cls(bucket, prefix)

    def key_for(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def __str__(self) -> str:
        return f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket


@dataclass(frozen=True)
class Source:
    """One SFTP user's tree: `root` = userpath/name; `dirs` are the watched directories in it."""

    name: str
    root: Path
    paths: tuple[str, ...]
    target: Target

    @property
    def dirs(self) -> tuple[Path, ...]:
        return tuple(self.root / p.strip("/") if p.strip("/") else self.root for p in self.paths)


@dataclass(frozen=True)
class LogConfig:
    format: str = "text"
    level: str = "info"
    location: str | None = None


@dataclass(frozen=True)
class S3Config:
    storage_class: str | None = None
    sse: str | None = None
    sse_kms_key_id: str | None = None
    part_size_mb: int = 64
    checksum: str = "when_supported"


@dataclass(frozen=True)
class Defaults:
    userpath: Path
    s3target: Target | None
    awsprofile: str | None
    awsregion: str | None
    endpoint_url: str | None
    log: LogConfig


@dataclass(frozen=True)
class WatchConfig:
    sources: tuple[Source, ...]
    ignore: tuple[str, ...]


@dataclass(frozen=True)
class QueueConfig:
    path: Path
    lease_seconds: float


@dataclass(frozen=True)
class ConsumerConfig:
    workers: int
    delete_after_upload: bool
    max_attempts: int
    max_decompressed_bytes: int
    min_age_seconds: float
    s3: S3Config


@dataclass(frozen=True)
class Config:
    defaults: Defaults
    watch: WatchConfig
    queue: QueueConfig
    consumer: ConsumerConfig
    file: Path | None = None

    def source(self, name: str) -> Source | None:
        return next((s for s in self.watch.sources if s.name == name), None)


# The schema: every key the YAML file may hold, with its type and built-in default.
# Types: "str", "int", "float", "bool", "path", a tuple of allowed strings, "str?" etc. for
# optional (null allowed), "list" (of strings), "sources", or a nested dict.
SCHEMA: dict[str, Any] = {
    "defaults": {
        "userpath": ("path", "/home/"),
        "s3target": ("str?", None),
        "awsprofile": ("str?", None),
        "awsregion": ("str?", None),
        "endpoint_url": ("str?", None),
        "log": {
            "format": (("text", "json"), "text"),
            "level": (("debug", "info", "warning", "error"), "info"),
            "location": ("str?", None),
        },
    },
    "watch": {
        "source": ("sources", []),
        "ignore": ("list", ["*.filepart", "*.part", "*.tmp", ".*"]),
    },
    "queue": {
        "path": ("str?", None),
        "lease_seconds": ("float", 300),
    },
    "consumer": {
        "workers": ("int", 4),
        "delete_after_upload": ("bool", True),
        "max_attempts": ("int", 5),
        "max_decompressed_bytes": ("int", 64 * 2**30),
        "min_age_seconds": ("float", 0),
        "s3": {
            "storage_class": ("str?", None),
            "sse": ("str?", None),
            "sse_kms_key_id": ("str?", None),
            "part_size_mb": ("int", 64),
            "checksum": (("when_supported", "when_required"), "when_supported"),
        },
    },
}
SECRET_KEYS = ("awsprofile", "sse_kms_key_id")


def config_file(explicit: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path | None:
    """The YAML file to read: --config, else $SFTPPUSH_CONFIG, else the first that exists."""
    if explicit:
        path = Path(explicit).expanduser()
    elif env.get("SFTPPUSH_CONFIG"):
        path = Path(env["SFTPPUSH_CONFIG"]).expanduser()
    else:
        return next((p for p in map(lambda s: Path(s).expanduser(), SEARCH_PATH) if p.is_file()),
                    None)
    if not path.is_file():
        raise ConfigError(f"config: file {path} does not exist")
    return path


def load(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    sources: list[str] | tuple[str, ...] | None = None,
    need_sources: bool = True,
) -> Config:
    """Build and validate the effective config.

    `flags` maps dotted keys (`consumer.workers`) to values given on the command line;
    `sources` are `--source` strings, which replace the file's sources when given.
    `need_sources` is False for commands that only read the queue.
    """
    env = os.environ if env is None else env
    file = config_file(path, env)
    raw = _defaults(SCHEMA)
    if file is not None:
        _merge(raw, _read_yaml(file), SCHEMA, "")
    _merge(raw, _from_env(env), SCHEMA, "")
    for dotted, value in (flags or {}).items():
        if value is not None:
            _set(raw, dotted, value)
    if sources:
        raw["watch"]["source"] = [_parse_source_flag(s) for s in sources]
    return _build(raw, file, env, need_sources)


def redacted(cfg: Config) -> dict[str, Any]:
    """The effective config as plain data for `config show`, secrets replaced."""
    d = cfg.defaults
    return {
        "defaults": {
            "userpath": str(d.userpath),
            "s3target": str(d.s3target) if d.s3target else None,
            "awsprofile": "***" if d.awsprofile else None,
            "awsregion": d.awsregion,
            "endpoint_url": d.endpoint_url,
            "log": vars(d.log).copy(),
        },
        "watch": {
            "source": [
                {"name": s.name, "paths": list(s.paths), "s3target": str(s.target)}
                for s in cfg.watch.sources
            ],
            "ignore": list(cfg.watch.ignore),
        },
        "queue": {"path": str(cfg.queue.path), "lease_seconds": cfg.queue.lease_seconds},
        "consumer": {
            **{k: v for k, v in vars(cfg.consumer).items() if k != "s3"},
            "s3": {
                **vars(cfg.consumer.s3),
                "sse_kms_key_id": "***" if cfg.consumer.s3.sse_kms_key_id else None,
            },
        },
    }


def _defaults(schema: dict[str, Any]) -> dict[str, Any]:
    return {k: _defaults(v) if isinstance(v, dict) else _copy(v[1]) for k, v in schema.items()}


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value


def _read_yaml(file: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"config: cannot read {file}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"config: {file} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config: {file} must be a mapping of sections")
    return data


def _merge(into: dict[str, Any], data: dict[str, Any], schema: dict[str, Any], at: str) -> None:
    for key, value in data.items():
        dotted = f"{at}{key}"
        if key not in schema:
            raise ConfigError(f"config: unknown key '{dotted}'")
        if isinstance(schema[key], dict):
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"config: '{dotted}' must be a mapping")
            _merge(into[key], value, schema[key], f"{dotted}.")
        else:
            into[key] = value


def _set(raw: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node, schema = raw, SCHEMA
    for part in parents:
        node, schema = node[part], schema[part]
    if leaf not in schema:
        raise ConfigError(f"config: unknown key '{dotted}'")
    node[leaf] = value


def _scalar_env_names(schema: dict[str, Any], at: tuple[str, ...] = ()) -> dict[str, str]:
    names: dict[str, str] = {}
    for key, spec in schema.items():
        if isinstance(spec, dict):
            names.update(_scalar_env_names(spec, (*at, key)))
        elif spec[0] not in ("list", "sources"):
            names[ENV_PREFIX + "_".join((*at, key)).upper()] = ".".join((*at, key))
    return names


_ENV_NAMES = _scalar_env_names(SCHEMA)


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    sections = tuple(f"{ENV_PREFIX}{s.upper()}_" for s in SCHEMA)
    for name, text in env.items():
        if not name.startswith(sections):
            continue
        dotted = _ENV_NAMES.get(name)
        if dotted is None:
            raise ConfigError(f"config: unknown environment variable {name}")
        node = out
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        # Environment values are text; YAML's scalar rules give them types ("4" -> 4, "null").
        try:
            node[leaf] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            node[leaf] = text
        if isinstance(node[leaf], (dict, list)):
            node[leaf] = text
    return out


def _parse_source_flag(text: str) -> dict[str, Any]:
    """`name=sftpuser1,paths=/upload /data[,s3target=bucket/prefix]` as in the original tool."""
    fields: dict[str, Any] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in ("name", "paths", "s3target"):
            raise ConfigError(
                f"--source {text!r}: expected name=NAME,paths=/a /b[,s3target=BUCKET/PREFIX]"
            )
        fields[key] = value.split() if key == "paths" else value.strip()
    return fields


def _check(value: Any, kind: Any, key: str) -> Any:
    if value is None and (isinstance(kind, str) and kind.endswith("?")):
        return None
    base = kind.rstrip("?") if isinstance(kind, str) else kind
    if isinstance(base, tuple):
        if value not in base:
            raise ConfigError(f"config: {key} must be one of {', '.join(base)}, got {value!r}")
        return value
    if base == "bool":
        if isinstance(value, bool):
            return value
    elif base == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif base == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif base in ("str", "path"):
        if isinstance(value, str) and value:
            return value
    elif base == "list" and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    noun = {"int": "an integer", "float": "a number", "bool": "true or false",
            "list": "a list of strings"}.get(base, "a non-empty string")
    raise ConfigError(f"config: {key} must be {noun}, got {value!r}")


def _walk(raw: dict[str, Any], schema: dict[str, Any], at: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, spec in schema.items():
        if isinstance(spec, dict):
            out[key] = _walk(raw[key], spec, f"{at}{key}.")
        elif spec[0] == "sources":
            out[key] = raw[key]
        else:
            out[key] = _check(raw[key], spec[0], f"{at}{key}")
    return out


def _positive(value: float, key: str, minimum: float = 1) -> None:
    if value < minimum:
        raise ConfigError(f"config: {key} must be at least {minimum:g}, got {value:g}")


def _build(raw: dict[str, Any], file: Path | None, env: Mapping[str, str],
           need_sources: bool) -> Config:
    v = _walk(raw, SCHEMA, "")
    d, w, q, c = v["defaults"], v["watch"], v["queue"], v["consumer"]
    userpath = Path(d["userpath"]).expanduser()
    default_target = Target.parse(d["s3target"], "defaults.s3target") if d["s3target"] else None
    sources = _build_sources(w["source"], userpath, default_target, need_sources)
    for key, value, minimum in (("queue.lease_seconds", q["lease_seconds"], 1),
                                ("consumer.workers", c["workers"], 1),
                                ("consumer.max_attempts", c["max_attempts"], 1),
                                ("consumer.max_decompressed_bytes",
                                 c["max_decompressed_bytes"], 1),
                                ("consumer.min_age_seconds", c["min_age_seconds"], 0),
                                ("consumer.s3.part_size_mb", c["s3"]["part_size_mb"], 5)):
        _positive(value, key, minimum)
    if q["path"]:
        queue_path = Path(q["path"]).expanduser()
    elif env.get("STATE_DIRECTORY"):
        # systemd may pass several colon-separated state directories; the first is ours.
        queue_path = Path(env["STATE_DIRECTORY"].split(":")[0]) / "queue.db"
    else:
        queue_path = Path("var") / "queue.db"
    return Config(
        defaults=Defaults(userpath, default_target, d["awsprofile"], d["awsregion"],
                          d["endpoint_url"], LogConfig(**d["log"])),
        watch=WatchConfig(sources, w["ignore"]),
        queue=QueueConfig(queue_path.absolute(), q["lease_seconds"]),
        consumer=ConsumerConfig(
            workers=c["workers"],
            delete_after_upload=c["delete_after_upload"],
            max_attempts=c["max_attempts"],
            max_decompressed_bytes=c["max_decompressed_bytes"],
            min_age_seconds=c["min_age_seconds"],
            s3=S3Config(**c["s3"]),
        ),
        file=file,
    )


def _build_sources(items: Any, userpath: Path, default_target: Target | None,
                   need_sources: bool) -> tuple[Source, ...]:
    if not isinstance(items, list):
        raise ConfigError("config: watch.source must be a list of sources")
    if need_sources and not items:
        raise ConfigError("config: no sources: set watch.source in the config file or give "
                          "--source")
    sources: list[Source] = []
    for i, item in enumerate(items):
        at = f"watch.source[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"config: {at} must be a mapping with name and paths")
        unknown = set(item) - {"name", "paths", "s3target"}
        if unknown:
            raise ConfigError(f"config: unknown key '{at}.{sorted(unknown)[0]}'")
        name = _check(item.get("name"), "str", f"{at}.name")
        if not _SOURCE_NAME_RE.match(name) or name in (".", ".."):
            raise ConfigError(f"config: {at}.name {name!r} must be one directory name")
        if any(s.name == name for s in sources):
            raise ConfigError(f"config: {at}.name {name!r} is given twice")
        paths = item.get("paths", ["/"])
        if isinstance(paths, str):
            paths = paths.split()
        paths = _check(paths, "list", f"{at}.paths")
        if not paths:
            raise ConfigError(f"config: {at}.paths must name at least one directory")
        if any(".." in Path(p).parts for p in paths):
            raise ConfigError(f"config: {at}.paths must stay inside {userpath / name}")
        if item.get("s3target"):
            target = Target.parse(_check(item["s3target"], "str", f"{at}.s3target"),
                                  f"{at}.s3target")
        elif default_target is not None:
            target = default_target
        else:
            raise ConfigError(
                f"config: no S3 bucket for source '{name}': set defaults.s3target or {at}.s3target"
            )
        source = Source(name, userpath / name, paths, target)
        if need_sources:
            for p in source.dirs:
                if not p.is_dir():
                    raise ConfigError(f"config: {at} ({name}): directory {p} does not exist")
        sources.append(source)
    return tuple(sources)
