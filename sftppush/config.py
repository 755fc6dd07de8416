"""The effective configuration: built-in defaults < YAML file < environment < flags.

Owns lookup order, the schema, validation and the frozen dataclasses every room receives.
It must never start anything: a bad config is one ConfigError line before any daemon runs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from typing import Any

import yaml

from sftppush.errors import ConfigError
from sftppush.values import check, parse_source_flag

ENV_PREFIX = "SFTPPUSH_"
SEARCH_PATH = ("~/.sftppush/config.yaml", "/etc/sftppush/config.yaml")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_SOURCE_NAME_RE = re.compile(r"^[^/\x00]+$")


@dataclass(frozen=True)
class Key:
    """One key of the config: its kind (see values.KINDS, or a tuple of allowed strings), built-in
    default (None: null is allowed), limits and secrecy; every key but a list has an `env`."""

    name: str
    kind: str | tuple[str, ...]
    default: Any
    low: float | None = None
    high: float | None = None
    secret: bool = False

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.replace(".", "_").upper()


_STORAGE_CLASSES = ("STANDARD", "REDUCED_REDUNDANCY", "STANDARD_IA", "ONEZONE_IA",
                    "INTELLIGENT_TIERING", "GLACIER", "DEEP_ARCHIVE", "OUTPOSTS", "GLACIER_IR",
                    "SNOW", "EXPRESS_ONEZONE")
KEYS = (
    Key("defaults.userpath", "str", "/home/"),
    Key("defaults.s3target", "str", None),
    Key("defaults.awsprofile", "str", None, secret=True),
    Key("defaults.awsregion", "str", None),
    Key("defaults.endpoint_url", "url", None),
    Key("defaults.log.format", ("text", "json"), "text"),
    Key("defaults.log.level", ("debug", "info", "warning", "error"), "info"),
    Key("defaults.log.location", "file", None),
    Key("watch.source", "sources", ()),
    Key("watch.ignore", "list", ("*.filepart", "*.part", "*.tmp", ".*")),
    Key("queue.path", "str", None),
    Key("queue.lease_seconds", "float", 300.0, low=1),
    Key("queue.keep_done", "duration", 7 * 86400.0, low=0),  # 0 = forever
    Key("consumer.workers", "int", 4, low=1),
    Key("consumer.delete_after_upload", "bool", True),
    # Delete where the kernel cannot tell whether a client still writes the file (no
    # CAP_LEASE, NFS): what a client writes after the delete is lost. See README.
    Key("consumer.delete_without_lease", "bool", False),
    Key("consumer.max_attempts", "int", 5, low=1),
    Key("consumer.max_decompressed_bytes", "int", 64 * 2**30, low=1),
    Key("consumer.min_age_seconds", "float", 0.0, low=0),
    Key("consumer.s3.storage_class", _STORAGE_CLASSES, None),
    Key("consumer.s3.sse", ("AES256", "aws:kms", "aws:kms:dsse"), None),
    Key("consumer.s3.sse_kms_key_id", "str", None, secret=True),
    Key("consumer.s3.part_size_mb", "int", 8, low=5, high=5120),  # S3's part: 5 MiB to 5 GiB
    Key("consumer.s3.checksum", ("when_supported", "when_required"), "when_supported"),
    # The most small-file PUTs one consumer keeps in flight (and connections it opens): the
    # window grows up to it while the link needs it. Lower it for stores that want fewer.
    Key("consumer.s3.max_in_flight", "int", 256, low=1, high=4096),
)
_KEY = {key.name: key for key in KEYS}
# Every dotted prefix of a key (defaults, defaults.log, ...): a mapping in the YAML file.
_SECTIONS = {key.name.rsplit(".", i)[0] for key in KEYS for i in range(1, key.name.count(".") + 1)}
_ENV_NAMES = {key.env: key.name for key in KEYS if key.kind not in ("list", "sources")}
_D = {key.name: key.default for key in KEYS}  # the dataclasses' defaults


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
        return tuple(self.root / p.strip("/") for p in self.paths)  # "/" is the root itself


@dataclass(frozen=True)
class LogConfig:
    format: str = _D["defaults.log.format"]
    level: str = _D["defaults.log.level"]
    location: str | None = _D["defaults.log.location"]


@dataclass(frozen=True)
class S3Config:
    storage_class: str | None = _D["consumer.s3.storage_class"]
    sse: str | None = _D["consumer.s3.sse"]
    sse_kms_key_id: str | None = _D["consumer.s3.sse_kms_key_id"]
    part_size_mb: int = _D["consumer.s3.part_size_mb"]
    checksum: str = _D["consumer.s3.checksum"]
    max_in_flight: int = _D["consumer.s3.max_in_flight"]


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
    keep_done: float = _D["queue.keep_done"]


@dataclass(frozen=True)
class ConsumerConfig:
    workers: int
    delete_after_upload: bool
    max_attempts: int
    max_decompressed_bytes: int
    min_age_seconds: float
    s3: S3Config
    delete_without_lease: bool = _D["consumer.delete_without_lease"]


@dataclass(frozen=True)
class Config:
    defaults: Defaults
    watch: WatchConfig
    queue: QueueConfig
    consumer: ConsumerConfig
    file: Path | None = None

    def source(self, name: str) -> Source | None:
        return next((s for s in self.watch.sources if s.name == name), None)


def config_file(explicit: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path | None:
    """The YAML file to read: --config, else $SFTPPUSH_CONFIG, else the first that exists."""
    given = explicit or env.get("SFTPPUSH_CONFIG")
    if not given:
        return next((p for s in SEARCH_PATH if (p := Path(s).expanduser()).is_file()), None)
    path = Path(given).expanduser()
    if not path.is_file():
        raise ConfigError(f"config: file {path} does not exist")
    return path


def load(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None,
         flags: Mapping[str, Any] | None = None,
         sources: list[str] | tuple[str, ...] | None = None, need_sources: bool = True,
         check_dirs: bool = False) -> Config:
    """Build and validate the effective config.

    `flags` maps dotted keys (`consumer.workers`) to values given on the command line;
    `sources` are `--source` strings, which replace the file's sources when given.
    `need_sources` is False for commands that only read the queue. `check_dirs`: each source
    dir must exist and be accessible (config check); a daemon starts without it, and the
    watcher waits for a missing dir.
    """
    env = os.environ if env is None else env
    file = config_file(path, env)
    raw: dict[str, Any] = {}
    for key in KEYS:
        _put(raw, key.name, list(key.default) if isinstance(key.default, tuple) else key.default)
    if file is not None:
        _merge(raw, _read_yaml(file), "")
    _merge(raw, _from_env(env), "")
    for dotted, value in (flags or {}).items():
        if dotted not in _KEY:
            raise ConfigError(f"config: unknown key '{dotted}'")
        if value is not None:
            _put(raw, dotted, value)
    if sources:
        raw["watch"]["source"] = [parse_source_flag(s) for s in sources]
    return _build(raw, file, env, need_sources, check_dirs)


def redacted(cfg: Config) -> dict[str, Any]:
    """The effective config as plain data for `config show`, secret keys replaced."""
    out: dict[str, Any] = {}
    for key in KEYS:
        if key.kind == "sources":
            value: Any = [{"name": s.name, "paths": list(s.paths), "s3target": str(s.target)}
                          for s in cfg.watch.sources]
        else:
            value = reduce(getattr, key.name.split("."), cfg)
        if key.secret and value:
            value = "***"
        elif isinstance(value, (Path, Target)):
            value = str(value)
        _put(out, key.name, list(value) if isinstance(value, tuple) else value)
    return out


def _put(into: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    reduce(lambda node, part: node.setdefault(part, {}), parents, into)[leaf] = value


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


def _merge(into: dict[str, Any], data: dict[str, Any], at: str) -> None:
    for key, value in data.items():
        dotted = f"{at}{key}"
        if dotted in _SECTIONS:
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"config: '{dotted}' must be a mapping")
            _merge(into[key], value, f"{dotted}.")
        elif dotted in _KEY:
            into[key] = value
        else:
            raise ConfigError(f"config: unknown key '{dotted}'")


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    sections = tuple(f"{ENV_PREFIX}{s.upper()}_" for s in _SECTIONS if "." not in s)
    for name, text in env.items():
        if not name.startswith(sections):
            continue
        if name not in _ENV_NAMES:
            raise ConfigError(f"config: unknown environment variable {name}")
        # Environment values are text; YAML's scalar rules give them types ("4" -> 4, "null").
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        _put(out, _ENV_NAMES[name], text if isinstance(value, (dict, list)) else value)
    return out


def _value(key: Key, raw: dict[str, Any]) -> Any:
    value = reduce(dict.__getitem__, key.name.split("."), raw)
    if value is None and key.default is None:
        return None
    value = check(value, key.kind, key.name)
    if key.low is not None and value < key.low:
        raise ConfigError(f"config: {key.name} must be at least {key.low:g}, got {value:g}")
    if key.high is not None and value > key.high:
        raise ConfigError(f"config: {key.name} must be at most {key.high:g}, got {value:g}")
    return value


def _section(values: dict[str, Any], section: str) -> dict[str, Any]:
    """The values of the keys right inside `section`, by their last name: a dataclass's fields."""
    return {k.rpartition(".")[2]: v for k, v in values.items() if k.rpartition(".")[0] == section}


def _build(raw: dict[str, Any], file: Path | None, env: Mapping[str, str],
           need_sources: bool, check_dirs: bool) -> Config:
    v = {key.name: _value(key, raw) for key in KEYS}
    userpath = Path(v["defaults.userpath"]).expanduser()
    s3target = v["defaults.s3target"]
    default_target = Target.parse(s3target, "defaults.s3target") if s3target else None
    if v["queue.path"]:
        queue_path = Path(v["queue.path"]).expanduser()
    elif env.get("STATE_DIRECTORY"):
        # systemd may pass several colon-separated state directories; the first is ours.
        queue_path = Path(env["STATE_DIRECTORY"].split(":")[0]) / "queue.db"
    else:
        queue_path = Path("var") / "queue.db"
    defaults = {**_section(v, "defaults"), "userpath": userpath, "s3target": default_target}
    return Config(
        defaults=Defaults(**defaults, log=LogConfig(**_section(v, "defaults.log"))),
        watch=WatchConfig(_build_sources(v["watch.source"], userpath, default_target,
                                         need_sources, check_dirs), v["watch.ignore"]),
        queue=QueueConfig(**{**_section(v, "queue"), "path": queue_path.absolute()}),
        consumer=ConsumerConfig(**_section(v, "consumer"),
                                s3=S3Config(**_section(v, "consumer.s3"))),
        file=file,
    )


def _build_sources(items: Any, userpath: Path, default_target: Target | None,
                   need_sources: bool, check_dirs: bool) -> tuple[Source, ...]:
    if not isinstance(items, list):
        raise ConfigError("config: watch.source must be a list of sources")
    if need_sources and not items:
        raise ConfigError("config: no sources: set watch.source in the config file or give "
                          "--source")
    sources: list[Source] = []
    for i, item in enumerate(items):
        source = _build_source(item, f"watch.source[{i}]", userpath, default_target)
        if any(s.name == source.name for s in sources):
            raise ConfigError(f"config: watch.source[{i}].name {source.name!r} is given twice")
        problem = _unusable(source.dirs) if check_dirs else None
        if problem:
            raise ConfigError(f"config: watch.source[{i}] ({source.name}): {problem}")
        sources.append(source)
    return tuple(sources)


def _unusable(dirs: tuple[Path, ...]) -> str | None:
    """Why one of a source's directories cannot be watched, or None. Commands that only read
    the queue do not ask (the metrics unit cannot even see /home)."""
    for path in dirs:
        try:
            if not path.is_dir():
                return f"directory {path} does not exist"
        except PermissionError:
            return f"directory {path} is not accessible (permission denied)"
    return None


def _build_source(item: Any, at: str, userpath: Path, default_target: Target | None) -> Source:
    if not isinstance(item, dict):
        raise ConfigError(f"config: {at} must be a mapping with name and paths")
    unknown = set(item) - {"name", "paths", "s3target"}
    if unknown:
        raise ConfigError(f"config: unknown key '{at}.{sorted(unknown)[0]}'")
    name = check(item.get("name"), "str", f"{at}.name")
    if not _SOURCE_NAME_RE.match(name) or name in (".", ".."):
        raise ConfigError(f"config: {at}.name {name!r} must be one directory name")
    paths = item.get("paths", ["/"])
    paths = check(paths.split() if isinstance(paths, str) else paths, "list", f"{at}.paths")
    if not paths:
        raise ConfigError(f"config: {at}.paths must name at least one directory")
    if any(".." in Path(p).parts for p in paths):
        raise ConfigError(f"config: {at}.paths must stay inside {userpath / name}")
    if item.get("s3target"):
        target = Target.parse(check(item["s3target"], "str", f"{at}.s3target"),
                              f"{at}.s3target")
    elif default_target is not None:
        target = default_target
    else:
        raise ConfigError(f"config: no S3 bucket for source '{name}': set defaults.s3target "
                          f"or {at}.s3target")
    return Source(name, userpath / name, paths, target)
