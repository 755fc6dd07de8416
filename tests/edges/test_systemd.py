"""The systemd units in systemd/: they verify without a word, stay under the exposure budget,
enable as the README says, and every ExecStart parses against the real command line.

Nothing here needs systemd as PID 1: `systemd-analyze verify`, `systemd-analyze security
--offline=true` and `systemctl --root=DIR enable` all work on unit files alone.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "systemd"
INSTALLED_ENTRY_POINT = "/opt/sftppush/bin/sftppush"
INSTALLED_CONFIG = "/etc/sftppush/config.yaml"
SYSTEMD_ANALYZE = "/usr/bin/systemd-analyze"
SYSTEMCTL = "/usr/bin/systemctl"
SERVICES = ["sftppush-watch.service", "sftppush-consume@.service", "sftppush-rescan.service",
            "sftppush-metrics.service"]
ALL_UNITS = [*SERVICES, "sftppush-rescan.timer", "sftppush.target"]
METRICS = "sftppush-metrics.service"
CONSUMER = "sftppush-consume@.service"
COMMANDS = {"watch", "consume", "rescan", "metrics"}
MAX_EXPOSURE = 3.0


@pytest.fixture(scope="module")
def entry_point(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The console script pip would install from pyproject's [project.scripts], for this
    checkout and this interpreter: what /opt/sftppush/bin/sftppush is on a server."""
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = scripts["sftppush"].split(":")
    script = tmp_path_factory.mktemp("opt-sftppush") / "bin" / "sftppush"
    script.parent.mkdir()
    script.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from {module} import {func}
        sys.exit({func}())
        """))
    script.chmod(0o755)
    return script


@pytest.fixture
def site(tmp_path: Path) -> dict[str, Path]:
    """A real config for a real upload tree, and a state directory, under tmp."""
    home = tmp_path / "home"
    (home / "sftpuser1" / "upload").mkdir(parents=True)
    (tmp_path / "state").mkdir()
    config = tmp_path / "config.yaml"
    config.write_text(textwrap.dedent(f"""\
        defaults:
          userpath: {home}
          s3target: my-bucket
        watch:
          source:
            - name: sftpuser1
              paths: [/upload]
        """))
    return {"config": config, "state": tmp_path / "state"}


def install_units(target: Path, replacements: dict[str, str]) -> Path:
    """Copy the shipped units into `target`, rewriting installed paths to test ones."""
    target.mkdir(parents=True, exist_ok=True)
    for name in ALL_UNITS:
        text = (UNITS / name).read_text()
        for old, new in replacements.items():
            text = text.replace(old, new)
        (target / name).write_text(text)
    return target


def verify(*paths: Path) -> str:
    """`systemd-analyze verify`; everything it says (stdout and stderr) is a finding."""
    result = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", *map(str, paths)],
                            capture_output=True, text=True, timeout=60)
    return (result.stdout + result.stderr + (f"exit {result.returncode}" if result.returncode
                                             else "")).strip()


def exec_start(unit: Path) -> list[str]:
    lines = [line.split("=", 1)[1] for line in unit.read_text().splitlines()
             if line.startswith("ExecStart=")]
    assert len(lines) == 1, f"{unit.name}: expected one ExecStart=, got {lines}"
    argv = shlex.split(lines[0])
    assert not any("%" in arg for arg in argv), f"{unit.name}: specifiers in ExecStart {argv}"
    return argv


def test_every_unit_is_shipped() -> None:
    assert sorted(p.name for p in UNITS.iterdir()) == sorted(ALL_UNITS)


@pytest.mark.parametrize("name", [*ALL_UNITS, "sftppush-consume@1.service"])
def test_unit_verifies_without_any_warning(name: str, entry_point: Path, tmp_path: Path) -> None:
    units = install_units(tmp_path / "units", {INSTALLED_ENTRY_POINT: str(entry_point)})
    assert verify(units / name) == ""


def test_verify_check_reports_what_systemd_only_warns_about(tmp_path: Path) -> None:
    # systemd-analyze exits 0 on an unknown key; the check above must still catch it.
    unit = tmp_path / "typo.service"
    unit.write_text("[Service]\nExecStart=/bin/true\nProtectSytem=strict\n")
    assert "Unknown key 'ProtectSytem'" in verify(unit)


@pytest.mark.parametrize("name", SERVICES)
def test_service_exposure_is_within_budget(name: str, entry_point: Path, tmp_path: Path) -> None:
    units = install_units(tmp_path / "units", {INSTALLED_ENTRY_POINT: str(entry_point)})
    result = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=true", "--no-pager",
                             str(units / name)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout
    exposure = float(match.group(1))
    print(f"exposure {name}: {exposure}")
    assert exposure <= MAX_EXPOSURE, result.stdout


@pytest.mark.parametrize("name", SERVICES)
def test_exec_start_parses_against_the_cli(name: str, entry_point: Path, site: dict[str, Path],
                                           tmp_path: Path) -> None:
    units = install_units(tmp_path / "units", {INSTALLED_ENTRY_POINT: str(entry_point),
                                               INSTALLED_CONFIG: str(site["config"])})
    argv = exec_start(units / name)
    assert argv[0] == str(entry_point)
    command = next(i for i, arg in enumerate(argv) if arg in COMMANDS)
    env = {"PATH": "/usr/bin:/bin", "STATE_DIRECTORY": str(site["state"])}

    helped = subprocess.run([*argv, "--help"], capture_output=True, text=True, env=env,
                            timeout=60)
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith(f"Usage: sftppush {argv[command]} "), helped.stdout

    # The global options (the config above all) are good enough to start on: the same
    # options validate a real config, and the queue lands in systemd's StateDirectory.
    checked = subprocess.run([*argv[:command], "config", "check", "--no-environment"],
                             capture_output=True, text=True, env=env, timeout=60)
    assert checked.returncode == 0, checked.stderr
    assert f"queue: {site['state'] / 'queue.db'}" in checked.stdout


def test_the_consumer_checks_its_environment_before_each_start(entry_point: Path,
                                                               site: dict[str, Path],
                                                               tmp_path: Path) -> None:
    """Its ExecStartPre= is `config check` with the same global options as its ExecStart=,
    and it parses against the real command line."""
    units = install_units(tmp_path / "units", {INSTALLED_ENTRY_POINT: str(entry_point),
                                               INSTALLED_CONFIG: str(site["config"])})
    text = (units / CONSUMER).read_text()
    (pre,) = [line.split("=", 1)[1] for line in text.splitlines()
              if line.startswith("ExecStartPre=")]
    argv = shlex.split(pre)
    start = exec_start(units / CONSUMER)
    assert argv[argv.index("config"):] == ["config", "check"]
    assert argv[:argv.index("config")] == start[:start.index("consume")]
    helped = subprocess.run([*argv, "--help"], capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin"})
    assert helped.returncode == 0 and "--no-environment" in helped.stdout, helped.stderr
    for name in SERVICES:
        if name != CONSUMER:  # the others have no network (watcher) or only read the queue
            assert "ExecStartPre=" not in (UNITS / name).read_text(), name


def test_documentation_points_at_the_projects_own_docs_as_installed() -> None:
    """Documentation= names this project's docs where the install copies them, not the Go
    tool's repository."""
    install = (REPO / "docs" / "operations.md").read_text()
    assert "sudo cp README.md docs/*.md /usr/share/doc/sftppush/" in install
    for name in ALL_UNITS:
        (line,) = [line for line in (UNITS / name).read_text().splitlines()
                   if line.startswith("Documentation=")]
        for uri in line.split("=", 1)[1].split():
            assert uri.startswith("file:/usr/share/doc/sftppush/"), (name, uri)
            shipped = uri.rsplit("/", 1)[1]
            assert (REPO / shipped).is_file() or (REPO / "docs" / shipped).is_file(), uri


def test_enabling_the_target_pulls_in_watcher_timer_and_consumers(tmp_path: Path) -> None:
    root = tmp_path / "root"
    system = install_units(root / "etc" / "systemd" / "system", {})
    for args in (["sftppush.target"],
                 ["sftppush-consume@1.service", "sftppush-consume@2.service"]):
        result = subprocess.run([SYSTEMCTL, f"--root={root}", "enable", *args],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
    wanted = sorted(p.name for p in (system / "sftppush.target.wants").iterdir())
    assert wanted == ["sftppush-consume@1.service", "sftppush-consume@2.service",
                      "sftppush-rescan.timer", "sftppush-watch.service"]
    assert (system / "multi-user.target.wants" / "sftppush.target").is_symlink()


def test_enabling_the_bare_template_enables_instance_1(tmp_path: Path) -> None:
    root = tmp_path / "root"
    system = install_units(root / "etc" / "systemd" / "system", {})
    result = subprocess.run([SYSTEMCTL, f"--root={root}", "enable", "sftppush-consume@.service"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert [p.name for p in (system / "sftppush.target.wants").iterdir()] == [
        "sftppush-consume@1.service"]


def test_units_run_as_the_service_user_with_the_state_directory() -> None:
    for name in SERVICES:
        text = (UNITS / name).read_text()
        state = ("Environment=STATE_DIRECTORY=/var/lib/sftppush" if name == METRICS
                 else "StateDirectory=sftppush")
        # The consumer keeps one capability: CAP_LEASE, to tell a file still being written.
        caps = "CapabilityBoundingSet=CAP_LEASE\n" if name == CONSUMER else \
            "CapabilityBoundingSet=\n"
        for line in ("User=sftppush", "Group=sftppush", state,
                     "ProtectSystem=strict", "NoNewPrivileges=yes", "PrivateTmp=yes",
                     caps, "UMask=0077"):
            assert f"\n{line}" in text, f"{name} lacks {line.strip()}"


def test_the_metrics_unit_can_write_nothing_and_reach_only_loopback() -> None:
    text = (UNITS / METRICS).read_text()
    settings = [line.split("=", 1) for line in text.splitlines()
                if "=" in line and not line.startswith("#")]
    keys = {k for k, _ in settings}
    # A StateDirectory=, ReadWritePaths= or writable /tmp would be somewhere to write.
    assert not keys & {"StateDirectory", "ReadWritePaths", "RuntimeDirectory", "CacheDirectory",
                       "LogsDirectory"}
    assert ["TemporaryFileSystem", "/tmp:ro /var/tmp:ro"] in settings
    assert ["ProtectHome", "yes"] in settings and ["ProtectSystem", "strict"] in settings
    assert ["IPAddressDeny", "any"] in settings and ["IPAddressAllow", "localhost"] in settings
    assert "--listen 127.0.0.1:9464" in exec_start_line(text)


def exec_start_line(text: str) -> str:
    return next(line for line in text.splitlines() if line.startswith("ExecStart="))

