"""The root migration's own unit: sandboxed, minimal rights, ordered before the agent."""

from __future__ import annotations

import re
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
# Where root may write: the agent's directories (must exist) and every legacy layout's
# (CONTRACT section 2; "-": skipped when missing). Nothing else, no parent of them.
ALLOWED_WRITES = {
    "/etc/redflag-agent",
    "/var/lib/redflag-agent",
    "-/etc/aggregator",
    "-/var/lib/aggregator",
    "-/etc/redflag",
    "-/var/lib/redflag",
}
CAPABILITIES = {"CAP_CHOWN", "CAP_FOWNER", "CAP_DAC_OVERRIDE"}
# Agent-unit hardening the migration legitimately sets differently (or cannot use): it
# runs as root, needs chown and three capabilities, writes the legacy directories too and
# needs no socket at all.
DIFFERENT_ON_PURPOSE = {
    "User", "Group", "CapabilityBoundingSet", "ReadWritePaths", "SystemCallFilter",
    "RestrictAddressFamilies", "RemoveIPC",
}  # fmt: skip


def render(name: str) -> str:
    # A systemd unit, not HTML: autoescaping would corrupt it.
    env = jinja2.Environment(  # noqa: S701
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True
    )
    return env.from_string((ROLE / "templates" / name).read_text()).render(**VARS)


@pytest.fixture(scope="module")
def unit_text() -> str:
    return render("redflag-agent-migrate.service.j2")


@pytest.fixture(scope="module")
def agent_text() -> str:
    return render("redflag-agent.service.j2")


def sections(text: str) -> dict[str, dict[str, list[str]]]:
    out: dict[str, dict[str, list[str]]] = {}
    current = out.setdefault("", {})
    for line in text.splitlines():
        if line.startswith("[") and line.endswith("]"):
            current = out.setdefault(line[1:-1], {})
        elif "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            current.setdefault(key, []).append(value)
    return out


def service(text: str) -> dict[str, list[str]]:
    return sections(text)["Service"]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("Type", "oneshot"),
        ("ExecStart", "/usr/bin/python3 -I /opt/redflag-agent/current/redflag-agent.pyz migrate"),
        ("User", "root"),
        ("NoNewPrivileges", "true"),
        ("ProtectSystem", "strict"),
        ("AmbientCapabilities", ""),
        ("PrivateNetwork", "true"),
        ("IPAddressDeny", "any"),
        ("RestrictAddressFamilies", "none"),
        ("PrivateMounts", "true"),
        ("TimeoutStartSec", "300"),
    ],
)
def test_directive(unit_text, key, value):
    assert service(unit_text).get(key) == [value]


def test_writes_only_to_the_agent_and_legacy_directories(unit_text):
    (paths,) = service(unit_text)["ReadWritePaths"]
    assert set(paths.split()) == ALLOWED_WRITES
    assert len(paths.split()) == len(ALLOWED_WRITES)
    assert "ReadOnlyPaths" not in service(unit_text) and "BindPaths" not in service(unit_text)


def test_capabilities_are_the_three_it_needs(unit_text):
    (caps,) = service(unit_text)["CapabilityBoundingSet"]
    assert set(caps.split()) == CAPABILITIES and not caps.startswith("~")


def test_every_command_is_sandboxed(unit_text):
    # "+" and "!" would run a command without this sandbox (or with another one).
    execs = [(k, v) for k, vs in service(unit_text).items() if k.startswith("Exec") for v in vs]
    assert execs == [
        ("ExecStart", "/usr/bin/python3 -I /opt/redflag-agent/current/redflag-agent.pyz migrate")
    ]


def test_syscalls_allow_chown_and_deny_the_rest_of_privileged(unit_text):
    allow, deny = service(unit_text)["SystemCallFilter"]
    assert allow == "@system-service"
    assert deny.startswith("~")
    denied = set(deny[1:].split())
    assert {"@mount", "@setuid", "@module", "@raw-io", "@reboot", "@swap", "@clock"} <= denied
    assert {"@resources", "@debug", "@obsolete", "@cpu-emulation"} <= denied
    assert "@chown" not in denied and "@privileged" not in denied


def test_keeps_the_rest_of_the_agent_units_hardening(unit_text, agent_text):
    agent, migrate = service(agent_text), service(unit_text)
    start = agent_text.index("# Hardening")
    hardening = sections("[Service]\n" + agent_text[start:].split("[Install]")[0])["Service"]
    missing = {
        key: (values, migrate.get(key))
        for key, values in hardening.items()
        if key not in DIFFERENT_ON_PURPOSE and migrate.get(key) != values
    }
    assert missing == {}
    assert agent["SystemCallErrorNumber"] == migrate["SystemCallErrorNumber"]


def test_ordered_before_the_agent_and_only_pulled_in_by_it(unit_text, agent_text):
    unit = sections(unit_text)
    assert unit["Unit"]["Before"] == ["redflag-agent.service"]
    # Static: it runs only as part of an agent start, never on its own at boot.
    assert "Install" not in unit
    # Its own rate limit would skip the migration in a burst of agent restarts.
    assert unit["Unit"]["StartLimitIntervalSec"] == ["0"]
    assert "Restart" not in unit["Service"]
    agent = sections(agent_text)["Unit"]
    assert "redflag-agent-migrate.service" in " ".join(agent["Wants"]).split()
    assert "redflag-agent-migrate.service" in " ".join(agent["After"]).split()


def test_vars_name_the_same_unit(unit_text):
    assert VARS["redflag_agent__migrate_unit"] == "redflag-agent-migrate.service"
    assert VARS["redflag_agent__migrate_unit_path"].endswith("/redflag-agent-migrate.service")
    legacy = {"-" + d for d in VARS["redflag_agent__legacy_dirs"]}
    assert legacy == {p for p in ALLOWED_WRITES if p.startswith("-")}


def _analyze(*args: str) -> subprocess.CompletedProcess:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is needed for this check: apt-get install systemd"
    return subprocess.run([analyze, *args], capture_output=True, text=True, check=False)


def test_security_exposure_at_most_1_5(unit_text, tmp_path):
    path = tmp_path / "redflag-agent-migrate.service"
    path.write_text(unit_text)
    # --threshold=15 means an exposure of 1.5 (measured 1.2 with systemd 252).
    proc = _analyze("security", "--offline=true", "--threshold=15", str(path))
    assert proc.returncode == 0, proc.stdout[-2500:] + proc.stderr[-500:]
    assert re.search(r"Overall exposure level for \S+: 1\.[0-5]", proc.stdout), proc.stdout[-300:]


def test_systemd_parses_every_line(unit_text, agent_text, tmp_path):
    # verify exits 0 even for unknown keys, so any output at all is a finding.
    (tmp_path / "redflag-agent-migrate.service").write_text(unit_text)
    (tmp_path / "redflag-agent.service").write_text(agent_text)
    proc = _analyze(
        "verify",
        str(tmp_path / "redflag-agent-migrate.service"),
        str(tmp_path / "redflag-agent.service"),
    )
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")
