"""The rendered unit: no restart loop, no token, and measured hardening."""

from __future__ import annotations

import shutil
import subprocess

import jinja2
import pytest

from conftest import ROLE, load_yaml

VARS = {
    **load_yaml(ROLE / "vars" / "main.yml"),
    "redflag_agent__python": "/usr/bin/python3",
    "ansible_managed": "Ansible managed",
}


@pytest.fixture(scope="module")
def unit_text() -> str:
    # A systemd unit, not HTML: autoescaping would corrupt it.
    env = jinja2.Environment(  # noqa: S701
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True
    )
    source = (ROLE / "templates" / "redflag-agent.service.j2").read_text()
    return env.from_string(source).render(**VARS)


def directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("Restart", "on-failure"),
        ("RestartSec", "30"),
        ("RestartPreventExitStatus", "77 78"),
        ("StartLimitBurst", "5"),
        ("StartLimitIntervalSec", "300"),
        ("User", "redflag-agent"),
        ("Group", "redflag-agent"),
        ("ExecStart", "/usr/bin/python3 -I /opt/redflag-agent/current/redflag-agent.pyz run"),
        ("ProtectSystem", "strict"),
        ("ReadWritePaths", "/etc/redflag-agent /var/lib/redflag-agent"),
        ("NoNewPrivileges", "true"),
        ("TimeoutStopSec", "10"),
        ("CapabilityBoundingSet", ""),
    ],
)
def test_directive(unit_text, key, value):
    assert directives(unit_text).get(key) == [value]


def test_migration_runs_first_in_its_own_unit(unit_text):
    d = directives(unit_text)
    # Wants, not Requires: a failed migration must not fail the start (run exits 78 instead).
    assert "redflag-agent-migrate.service" in " ".join(d.get("Wants", [])).split()
    assert "redflag-agent-migrate.service" in " ".join(d.get("After", [])).split()
    assert "Requires" not in d and "BindsTo" not in d and "Requisite" not in d
    # No command of this unit runs as root without the sandbox any more.
    execs = [v for k, vs in d.items() if k.startswith("Exec") for v in vs]
    assert [v for v in execs if v.lstrip("-@:").startswith(("+", "!"))] == []
    assert "ExecStartPre" not in d


def test_no_token_or_environment(unit_text):
    d = directives(unit_text)
    assert "Environment" not in d and "EnvironmentFile" not in d
    settings = [line for line in unit_text.splitlines() if not line.startswith("#")]
    assert [line for line in settings if "token" in line.lower()] == []


def test_security_exposure_at_most_3(unit_text, tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is needed for this check: apt-get install systemd"
    path = tmp_path / "redflag-agent.service"
    path.write_text(unit_text)
    # --threshold=30 means an exposure of 3.0; above it the command exits non-zero.
    proc = subprocess.run(
        [analyze, "security", "--offline=true", "--threshold=30", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-1500:] + proc.stderr[-500:]
    assert "Overall exposure level" in proc.stdout


def test_systemd_parses_every_line(unit_text, tmp_path):
    # verify exits 0 even for unknown keys, so any output at all is a finding.
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is needed for this check: apt-get install systemd"
    path = tmp_path / "redflag-agent.service"
    path.write_text(unit_text)
    proc = subprocess.run(
        [analyze, "verify", str(path)], capture_output=True, text=True, check=False
    )
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")
