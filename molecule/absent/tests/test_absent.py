"""Removal: deregistered on the server, unit/artifact/config gone, purge decides the rest."""

from __future__ import annotations

import pytest
import rfcheck

CONVERGE = "molecule/shared/converge.yml"
UNIT_PATHS = (
    "/etc/systemd/system/redflag-agent.service",
    "/usr/lib/systemd/system/redflag-agent.service",
    rfcheck.MIGRATE_UNIT_PATH,
)


COMMAND = "/usr/local/sbin/redflag-agent"


def failed_redflag_units(host) -> list[str]:
    """`systemctl --failed` lines of our units (a failed unit keeps the host degraded)."""
    out = rfcheck.run_ok(host, "systemctl list-units --all --failed --plain --no-legend")
    return [line for line in out.splitlines() if "redflag-agent" in line]


@pytest.fixture(scope="module")
def installed():
    return {}


def test_installed_and_registered(host, installed):
    status = rfcheck.wait_for(lambda: rfcheck.checked_in_status(host), 30, what="a check-in")
    installed["agent_id"] = status["agent_id"]
    (agent,) = rfcheck.server_agents()
    assert agent["agent_id"] == status["agent_id"]
    assert agent["deregistered_at"] is None


def test_absent_removes_and_deregisters(host, installed):
    rc, _out, recap = rfcheck.run_playbook(CONVERGE, {"redflag_agent_state": "absent"})
    assert rc == 0, "converge with state absent failed; see playbook-runs.log"
    assert recap[rfcheck.inventory_name(host)]["changed"] > 0
    for path in (*UNIT_PATHS, "/opt/redflag-agent", "/etc/redflag-agent", COMMAND):
        assert not host.file(path).exists, f"{path} still exists"
    assert failed_redflag_units(host) == []
    for unit in (rfcheck.UNIT, rfcheck.MIGRATE_UNIT):
        load = rfcheck.run_ok(host, f"systemctl show {unit} -p LoadState --value")
        assert load.strip() == "not-found", unit
    assert rfcheck.MIGRATE_UNIT not in rfcheck.run_ok(host, "systemctl list-units --all --failed")
    (agent,) = rfcheck.server_agents()
    assert agent["agent_id"] == installed["agent_id"]
    assert agent["deregistered_at"] is not None, "the agent is still registered on the server"
    # Without purge the state directory and the user stay.
    assert host.file(rfcheck.STATE_DIR).is_directory
    assert host.user("redflag-agent").exists


def test_absent_again_changes_nothing(host):
    rc, _out, recap = rfcheck.run_playbook(CONVERGE, {"redflag_agent_state": "absent"})
    assert rc == 0
    assert recap[rfcheck.inventory_name(host)]["changed"] == 0


def test_purge_removes_state_and_user(host):
    rc, _out, recap = rfcheck.run_playbook(
        CONVERGE, {"redflag_agent_state": "absent", "redflag_agent_purge": True}
    )
    assert rc == 0
    assert recap[rfcheck.inventory_name(host)]["changed"] > 0
    assert not host.file(rfcheck.STATE_DIR).exists
    assert not host.user("redflag-agent").exists
    assert not host.group("redflag-agent").exists


def test_absent_after_a_waiting_agent_leaves_no_failed_unit(host):
    # Issue 16: an agent waiting for a token (exit 78, failed, not restarted) was listed as
    # `redflag-agent.service not-found failed` after removal, the host left degraded.
    rc, _out, _recap = rfcheck.run_playbook(CONVERGE, {"rf_token_name": ""})
    assert rc == 0, "converge without a token failed; see playbook-runs.log"
    assert rfcheck.unit_props(host, "ActiveState")["ActiveState"] == "failed"
    assert failed_redflag_units(host), "the waiting agent's unit should be failed before removal"
    assert host.file(COMMAND).exists
    rc, _out, _recap = rfcheck.run_playbook(CONVERGE, {"redflag_agent_state": "absent"})
    assert rc == 0, "state absent after a waiting agent failed; see playbook-runs.log"
    assert failed_redflag_units(host) == []
    assert not host.file(COMMAND).exists
