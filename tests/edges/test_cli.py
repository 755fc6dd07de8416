"""The command line's contract: version, exit codes, one-line errors, redaction (SPEC 6)."""

from __future__ import annotations

from sftppush import __version__
from tests.conftest import REPO, SourceTree


def test_version(run_cli) -> None:
    result = run_cli("--version")
    assert result.returncode == 0 and __version__ in result.stdout


def test_config_show_redacts_secrets(source_tree: SourceTree, run_cli) -> None:
    cfg = source_tree.write_config(defaults={"awsprofile": "prod-admin"},
                                   consumer={"s3": {"sse": "aws:kms",
                                                    "sse_kms_key_id": "arn:aws:kms:key/1234"}})
    result = run_cli("--config", cfg, "config", "show")
    assert result.returncode == 0, result.stderr
    assert "prod-admin" not in result.stdout and "arn:aws:kms" not in result.stdout
    assert "aws:kms" in result.stdout and "'***'" in result.stdout


def test_config_check_of_the_syntax_alone_is_ok(source_tree: SourceTree, run_cli) -> None:
    # The environment's checks (the bucket above all) are tests/e2e/test_config_check.py's.
    result = run_cli("--config", source_tree.write_config(), "config", "check",
                     "--no-environment")
    assert result.returncode == 0 and "config ok" in result.stdout


def test_missing_config_file_is_exit_2(tmp_path, run_cli) -> None:
    result = run_cli("--config", tmp_path / "nope.yaml", "config", "check")
    assert result.returncode == 2
    expected = f"sftppush: config: file {tmp_path / 'nope.yaml'} does not exist"
    assert result.stderr.strip() == expected


def test_usage_error_is_exit_2(run_cli) -> None:
    assert run_cli("queue", "list", "--limit", "zero").returncode == 2
    assert run_cli("no-such-command").returncode == 2


def test_shell_completion_as_the_readme_sets_it_up(run_cli) -> None:
    line = 'eval "$(_SFTPPUSH_COMPLETE=bash_source sftppush)"'
    assert line in (REPO / "README.md").read_text()
    script = run_cli(env={"_SFTPPUSH_COMPLETE": "bash_source"})
    assert script.returncode == 0 and "complete -o nosort -F _sftppush_completion sftppush" \
        in script.stdout
    for words, cword, expected in (("sftppush qu", "1", "plain,queue"),
                                   ("sftppush queue li", "2", "plain,list"),
                                   ("sftppush config check --no-e", "3",
                                    "plain,--no-environment")):
        answer = run_cli(env={"_SFTPPUSH_COMPLETE": "bash_complete", "COMP_WORDS": words,
                              "COMP_CWORD": cword})
        assert answer.stdout.split() == [expected], (words, answer)
