"""Configuration: lookup order, precedence, validation (SPEC section 2)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sftppush.config import Target, load
from sftppush.errors import ConfigError
from tests.conftest import SourceTree

# (what is wrong, YAML text with {userpath} filled in, a fragment the error line must name)
MALFORMED = [
    ("unknown top-level key", "defaults: {{userpath: {userpath}, s3target: b1b}}\nwatcher: {{}}",
     "unknown key 'watcher'"),
    ("unknown nested key", "defaults: {{userpath: {userpath}, s3target: b1b, regionn: x}}",
     "unknown key 'defaults.regionn'"),
    ("unknown source key", "defaults: {{userpath: {userpath}, s3target: b1b}}\n"
     "watch: {{source: [{{name: sftpuser1, paths: [/upload], path: /x}}]}}",
     "watch.source[0].path"),
    ("wrong type int", "defaults: {{userpath: {userpath}, s3target: b1b}}\n"
     "consumer: {{workers: four}}", "consumer.workers must be an integer"),
    ("wrong type bool", "defaults: {{userpath: {userpath}, s3target: b1b}}\n"
     "consumer: {{delete_after_upload: maybe}}", "consumer.delete_after_upload"),
    ("wrong choice", "defaults: {{userpath: {userpath}, s3target: b1b, log: {{format: xml}}}}",
     "defaults.log.format must be one of text, json"),
    ("missing bucket", "defaults: {{userpath: {userpath}}}", "no S3 bucket for source 'sftpuser1'"),
    ("bad s3target", "defaults: {{userpath: {userpath}, s3target: 'My Bucket/x'}}",
     "defaults.s3target 'My Bucket/x'"),
    ("missing source dir", "defaults: {{userpath: {userpath}, s3target: b1b}}\n"
     "watch: {{source: [{{name: sftpuser1, paths: [/nope]}}]}}",
     "upload_missing"),
    ("not yaml", "defaults: [unclosed", "is not valid YAML"),
    ("not a mapping", "- just\n- a list", "must be a mapping"),
    ("section not a mapping", "defaults: 3", "'defaults' must be a mapping"),
    ("part size too small", "defaults: {{userpath: {userpath}, s3target: b1b}}\n"
     "consumer: {{s3: {{part_size_mb: 1}}}}", "consumer.s3.part_size_mb must be at least 5"),
    ("no sources", "defaults: {{userpath: {userpath}, s3target: b1b}}\nwatch: {{source: []}}",
     "no sources"),
    ("path escapes the source", "defaults: {{userpath: {userpath}, s3target: b1b}}\n"
     "watch: {{source: [{{name: sftpuser1, paths: [/../../etc]}}]}}", "must stay inside"),
    ("source twice", "defaults: {{userpath: {userpath}, s3target: b1b}}\n"
     "watch: {{source: [{{name: sftpuser1, paths: [/upload]}}, "
     "{{name: sftpuser1, paths: [/upload]}}]}}", "given twice"),
    ("lease not a number", "defaults: {{userpath: {userpath}, s3target: b1b}}\n"
     "queue: {{lease_seconds: .nan}}", "queue.lease_seconds must be a finite number"),
    ("lease infinite", "defaults: {{userpath: {userpath}, s3target: b1b}}\n"
     "queue: {{lease_seconds: .inf}}", "queue.lease_seconds must be a finite number"),
    ("part size over S3's 5 GiB", "defaults: {{userpath: {userpath}, s3target: b1b}}\n"
     "consumer: {{s3: {{part_size_mb: 5121}}}}", "consumer.s3.part_size_mb must be at most 5120"),
    ("unknown storage class", "defaults: {{userpath: {userpath}, s3target: b1b}}\n"
     "consumer: {{s3: {{storage_class: GLACIER_DEEP}}}}", "consumer.s3.storage_class must be"),
    ("unknown sse", "defaults: {{userpath: {userpath}, s3target: b1b}}\n"
     "consumer: {{s3: {{sse: AES-256}}}}", "consumer.s3.sse must be one of AES256, aws:kms"),
    ("endpoint without scheme", "defaults: {{userpath: {userpath}, s3target: b1b, "
     "endpoint_url: 'localhost:9000'}}", "defaults.endpoint_url must be an http(s) URL"),
    ("endpoint not http", "defaults: {{userpath: {userpath}, s3target: b1b, "
     "endpoint_url: 'ftp://127.0.0.1:9000'}}", "defaults.endpoint_url"),
    ("endpoint without host", "defaults: {{userpath: {userpath}, s3target: b1b, "
     "endpoint_url: 'http:///bucket'}}", "defaults.endpoint_url"),
    ("endpoint with a bad port", "defaults: {{userpath: {userpath}, s3target: b1b, "
     "endpoint_url: 'http://127.0.0.1:port'}}", "defaults.endpoint_url"),
    ("log location is a directory", "defaults: {{userpath: {userpath}, s3target: b1b, "
     "log: {{location: {userpath}}}}}", "defaults.log.location"),
    ("log location in a missing directory", "defaults: {{userpath: {userpath}, s3target: b1b, "
     "log: {{location: {userpath}/nope/sftppush.log}}}}", "defaults.log.location"),
    ("keep_done negative", "defaults: {{userpath: {userpath}, s3target: b1b}}\n"
     "queue: {{keep_done: -1}}", "queue.keep_done must be at least 0"),
    ("keep_done not a number", "defaults: {{userpath: {userpath}, s3target: b1b}}\n"
     "queue: {{keep_done: .nan}}", "queue.keep_done"),
    ("keep_done negative duration", "defaults: {{userpath: {userpath}, s3target: b1b}}\n"
     "queue: {{keep_done: -7d}}", "queue.keep_done '-7d' is not a duration"),
    ("keep_done unknown unit", "defaults: {{userpath: {userpath}, s3target: b1b}}\n"
     "queue: {{keep_done: 7 days}}", "queue.keep_done '7 days' is not a duration"),
]
DEFAULT_SOURCES = "\nwatch: {{source: [{{name: sftpuser1, paths: [/upload]}}]}}"


@pytest.mark.parametrize(("problem", "text", "named"), MALFORMED,
                         ids=[m[0].replace(" ", "-") for m in MALFORMED])
def test_malformed_config_is_one_line_and_exit_2(source_tree: SourceTree, run_cli, problem: str,
                                                  text: str, named: str) -> None:
    if "watch:" not in text and text.startswith("defaults: {"):
        text += DEFAULT_SOURCES
    if named == "upload_missing":
        named = str(source_tree.userpath / "sftpuser1" / "nope")
    source_tree.config_path.write_text(text.format(userpath=source_tree.userpath))
    result = run_cli("--config", source_tree.config_path, "config", "check")
    assert result.returncode == 2, (problem, result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, (problem, result.stderr)
    assert named in lines[0], (problem, lines[0])
    assert "Traceback" not in result.stderr


def test_env_beats_file_and_flag_beats_env(source_tree: SourceTree, run_cli) -> None:
    cfg = source_tree.write_config(defaults={"log": {"level": "warning"}, "awsregion": "eu-west-1"},
                                   consumer={"workers": 3})
    env = {"SFTPPUSH_DEFAULTS_AWSREGION": "us-east-2", "SFTPPUSH_CONSUMER_WORKERS": "7",
           "SFTPPUSH_DEFAULTS_LOG_LEVEL": "error"}
    shown = yaml.safe_load(run_cli("--config", cfg, "config", "show", env=env).stdout)
    assert shown["defaults"]["awsregion"] == "us-east-2"
    assert shown["consumer"]["workers"] == 7
    assert shown["defaults"]["log"]["level"] == "error"
    flagged = run_cli("--config", cfg, "--log-level", "debug", "config", "show",
                      "--source", "name=other,paths=/in /out,s3target=flag-bucket/p", env=env)
    shown = yaml.safe_load(flagged.stdout)
    assert shown["defaults"]["log"]["level"] == "debug"
    assert shown["watch"]["source"] == [{"name": "other", "paths": ["/in", "/out"],
                                         "s3target": "flag-bucket/p"}]


def test_lookup_order_flag_then_env_var_then_home(source_tree: SourceTree, tmp_path: Path) -> None:
    by_env = source_tree.write_config(bucket="env-bucket")
    home = tmp_path / "fakehome"
    (home / ".sftppush").mkdir(parents=True)
    (home / ".sftppush" / "config.yaml").write_text(
        yaml.safe_dump(source_tree.config(bucket="home-bucket")))
    env = {"HOME": str(home)}
    assert load(env={**env, "SFTPPUSH_CONFIG": str(by_env)}).defaults.s3target.bucket == \
        "env-bucket"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))
        assert load(env={}).defaults.s3target.bucket == "home-bucket"
        other = tmp_path / "other.yaml"
        other.write_text(yaml.safe_dump(source_tree.config(bucket="flag-bucket")))
        assert load(other, env={"SFTPPUSH_CONFIG": str(by_env)}).defaults.s3target.bucket == \
            "flag-bucket"


def test_go_tool_config_loads_unchanged(tmp_path: Path) -> None:
    (tmp_path / "home" / "sftpuser1" / "upload").mkdir(parents=True)
    (tmp_path / "home" / "sftpuser1" / "data").mkdir()
    (tmp_path / "home" / "sftpuser2" / "in").mkdir(parents=True)
    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text(f"""
defaults:
  userpath: {tmp_path}/home/
  s3target: my-bucket
  awsprofile: my-profile
  awsregion: eu-central-1
watch:
  source:
    - name: sftpuser1
      paths:
        - /upload
        - /data
    - name: sftpuser2
      paths:
        - /in
""")
    cfg = load(cfg_file, env={})
    assert [s.name for s in cfg.watch.sources] == ["sftpuser1", "sftpuser2"]
    assert cfg.watch.sources[0].dirs == (tmp_path / "home/sftpuser1/upload",
                                         tmp_path / "home/sftpuser1/data")
    assert cfg.defaults.awsprofile == "my-profile"
    assert cfg.watch.sources[1].target == Target("my-bucket", "")


def test_per_source_target_and_prefix(source_tree: SourceTree) -> None:
    data = source_tree.config()
    data["watch"]["source"][0]["s3target"] = "other-bucket/in/"
    source_tree.config_path.write_text(yaml.safe_dump(data))
    (source,) = load(source_tree.config_path, env={}).watch.sources
    assert source.target == Target("other-bucket", "in")
    assert source.target.key_for("sftpuser1/a.csv") == "in/sftpuser1/a.csv"


def test_queue_path_follows_state_directory(source_tree: SourceTree) -> None:
    data = source_tree.config()
    del data["queue"]
    source_tree.config_path.write_text(yaml.safe_dump(data))
    cfg = load(source_tree.config_path, env={"STATE_DIRECTORY": "/var/lib/sftppush"})
    assert cfg.queue.path == Path("/var/lib/sftppush/queue.db")


def test_unknown_environment_variable_is_an_error(source_tree: SourceTree) -> None:
    with pytest.raises(ConfigError, match="SFTPPUSH_CONSUMER_WORKRES"):
        load(source_tree.write_config(), env={"SFTPPUSH_CONSUMER_WORKRES": "2"})


@pytest.mark.parametrize("text", ["nan", ".nan", ".inf", "-.inf"])
def test_lease_seconds_from_env_must_be_finite(source_tree: SourceTree, run_cli,
                                              text: str) -> None:
    result = run_cli("--config", source_tree.write_config(), "config", "check",
                     env={"SFTPPUSH_QUEUE_LEASE_SECONDS": text})
    assert result.returncode == 2, result
    (line,) = result.stderr.strip().splitlines()
    assert "queue.lease_seconds must be a finite number" in line


@pytest.mark.parametrize(("given", "seconds"), [(None, 7 * 86400), (0, 0), (90, 90), (1.5, 1.5),
                                                ("12h", 43200), ("1d12h", 129600), ("30M", 1800)])
def test_keep_done_is_seconds_or_a_duration(source_tree: SourceTree, given, seconds) -> None:
    path = source_tree.write_config(queue={} if given is None else {"keep_done": given})
    assert load(path, env={}).queue.keep_done == seconds


def test_keep_done_from_env(source_tree: SourceTree) -> None:
    path = source_tree.write_config()
    assert load(path, env={"SFTPPUSH_QUEUE_KEEP_DONE": "30m"}).queue.keep_done == 1800
    assert load(path, env={"SFTPPUSH_QUEUE_KEEP_DONE": "0"}).queue.keep_done == 0
    with pytest.raises(ConfigError, match=r"queue\.keep_done 'nan' is not a duration"):
        load(path, env={"SFTPPUSH_QUEUE_KEEP_DONE": "nan"})


def test_queue_only_commands_do_not_look_at_source_directories(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The metrics unit cannot see /home at all (ProtectHome=yes): looking at a source's
    # directory raises PermissionError there. Root here is never refused, so the refusal is
    # made up: no look at the sources for a queue-only load, one clear ConfigError otherwise.
    (tmp_path / "home" / "u" / "upload").mkdir(parents=True)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"defaults: {{userpath: {tmp_path / 'home'}, s3target: bucket1}}\n"
                   "watch: {source: [{name: u, paths: [/upload]}]}\n")
    is_dir = Path.is_dir

    def refused(self: Path) -> bool:
        if self.is_relative_to(tmp_path / "home"):
            raise PermissionError(13, "Permission denied", str(self))
        return is_dir(self)

    monkeypatch.setattr(Path, "is_dir", refused)
    assert load(cfg, env={}, need_sources=False).watch.sources[0].name == "u"
    assert load(cfg, env={}).watch.sources[0].name == "u"  # a daemon starts
    with pytest.raises(ConfigError, match=r"directory .*upload is not accessible"):
        load(cfg, env={}, check_dirs=True)
