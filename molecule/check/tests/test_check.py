"""Check mode: safe on a fresh host, silent on a converged one; writes nothing on the
controller; --diff shows the agent's config diff with no secret in it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import rfcheck

CONVERGE = "molecule/shared/converge.yml"
# The role's default redflag_agent_build_dir (roles/redflag_agent/../../dist).
BUILD_DIR = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", ".")) / "dist"
PROXY_PASSWORD = "pw-check-5e0c71"  # noqa: S105 - a fake secret looked for in the output
FOOTPRINT = (
    "/opt/redflag-agent",
    "/etc/redflag-agent",
    rfcheck.STATE_DIR,
    "/etc/systemd/system/redflag-agent.service",
)


def _snapshot(host) -> str:
    """Modes, owners, mtimes and sizes of what the role manages, and the unit's invocation.

    status.json is left out: the running agent rewrites it at every check-in."""
    listing = rfcheck.run_ok(
        host,
        "find /opt/redflag-agent /etc/redflag-agent /var/lib/redflag-agent "
        "/etc/systemd/system/redflag-agent.service -printf '%p %m %u %T@ %s\\n' 2>/dev/null "
        "| grep -v '/status.json ' | sort; sha256sum /etc/redflag-agent/config.json",
    )
    invocation = rfcheck.unit_props(host, "InvocationID")["InvocationID"]
    return listing + "\ninvocation " + invocation


def _controller_listing() -> tuple[list, list]:
    """The build directory (names, mtimes) and the check-mode temp dirs on the controller."""
    built = (
        sorted((p.name, p.stat().st_mtime_ns) for p in BUILD_DIR.glob("*"))
        if (BUILD_DIR.is_dir())
        else []
    )
    temps = sorted(Path(tempfile.gettempdir()).glob("redflag-agent-check-*"))
    return built, temps


def test_check_on_fresh_host_errors_nothing_and_changes_nothing(host):
    controller_before = _controller_listing()
    rc, _out, recap = rfcheck.run_playbook(CONVERGE, check=True)
    assert _controller_listing() == controller_before, "check mode wrote on the controller"
    stats = recap[rfcheck.inventory_name(host)]
    assert rc == 0, "check mode on a fresh host failed; see playbook-runs.log"
    assert stats["failed"] == 0
    for path in FOOTPRINT:
        assert not host.file(path).exists, f"check mode created {path}"
    assert not host.user("redflag-agent").exists, "check mode created the user"
    assert rfcheck.server_agents() == [], "check mode registered the agent"


def test_converge_for_real(host):
    rc, _out, _recap = rfcheck.run_playbook(CONVERGE)
    assert rc == 0, "converge failed; see playbook-runs.log"
    rfcheck.wait_for(lambda: rfcheck.checked_in_status(host), 30, what="a check-in")


def test_check_on_converged_host_reports_no_changes(host):
    before = _snapshot(host)
    rc, _out, recap = rfcheck.run_playbook(CONVERGE, check=True)
    stats = recap[rfcheck.inventory_name(host)]
    assert rc == 0, "check mode on a converged host failed; see playbook-runs.log"
    assert (stats["failed"], stats["changed"]) == (0, 0)
    assert _snapshot(host) == before, "check mode touched the host"
    assert host.service("redflag-agent").is_running
    assert len(rfcheck.server_agents()) == 1


def test_check_diff_shows_the_config_change_and_no_secret(host, monkeypatch):
    # -vvv --check --diff with a changed interval and a proxy password: the agent's diff
    # is shown (secrets as ********); neither the token nor the password appears anywhere.
    before = _snapshot(host)
    controller_before = _controller_listing()
    monkeypatch.setenv("ANSIBLE_VERBOSITY", "3")
    monkeypatch.setenv("ANSIBLE_DIFF_ALWAYS", "1")
    proxy = {"enabled": False, "http": "", "https": "", "no_proxy": "", "password": PROXY_PASSWORD}
    rc, out, recap = rfcheck.run_playbook(
        CONVERGE, {"redflag_agent_check_in_interval": 123, "redflag_agent_proxy": proxy}, check=True
    )
    assert rc == 0, "check mode with --diff failed; see playbook-runs.log"
    assert recap[rfcheck.inventory_name(host)]["failed"] == 0
    token = rfcheck.token_file_text()
    assert token not in out, "the registration token appears in the -vvv --diff output"
    assert PROXY_PASSWORD not in out, "the proxy password appears in the -vvv --diff output"
    assert '+  "check_in_interval": 123,' in out, "--diff did not show the config change"
    assert '"password": "********"' in out
    assert _snapshot(host) == before, "check mode touched the host"
    assert _controller_listing() == controller_before, "check mode wrote on the controller"
