"""Check mode: safe on a fresh host, silent on a converged one."""

from __future__ import annotations

import rfcheck

CONVERGE = "molecule/shared/converge.yml"
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


def test_check_on_fresh_host_errors_nothing_and_changes_nothing(host):
    rc, _out, recap = rfcheck.run_playbook(CONVERGE, check=True)
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
