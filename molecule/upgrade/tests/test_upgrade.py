"""Install A, upgrade to B, downgrade to A, with the agent's identity kept throughout."""

from __future__ import annotations

import os

import pytest
import rfcheck

A = "0.3.0"
B = "0.3.1"
CONVERGE = "molecule/shared/converge.yml"


def _artifact(version: str) -> str:
    return f"{os.environ['MOLECULE_EPHEMERAL_DIRECTORY']}/artifacts/redflag-agent-{version}.pyz"


def _converge(host, version: str) -> tuple[int, int]:
    """Converge to `version`; return (changed count, unit restarts seen)."""
    before = rfcheck.unit_props(host, "InvocationID")["InvocationID"]
    rc, _out, recap = rfcheck.run_playbook(
        CONVERGE, {"redflag_agent_version": version, "redflag_agent_artifact": _artifact(version)}
    )
    assert rc == 0, f"converge to {version} failed; see playbook-runs.log in the ephemeral dir"
    after = rfcheck.unit_props(host, "InvocationID")["InvocationID"]
    return recap[rfcheck.inventory_name(host)]["changed"], int(before != after)


def _assert_running(host, version: str, agent_id: str) -> None:
    status = rfcheck.wait_for(lambda: rfcheck.checked_in_status(host), 30, what="a check-in")
    assert status["agent_version"] == version
    assert status["agent_id"] == agent_id
    assert host.service("redflag-agent").is_running
    assert host.file("/opt/redflag-agent/current").linked_to == f"/opt/redflag-agent/{version}"
    assert rfcheck.backups(host) == []

    def server_sees_version():
        agents = rfcheck.server_agents()
        return agents if agents and agents[0]["agent_version"] == version else None

    agents = rfcheck.wait_for(server_sees_version, 30, what=f"the server to see {version}")
    assert [a["agent_id"] for a in agents] == [agent_id], "a second registration happened"


@pytest.fixture(scope="module")
def identity():
    return {}


def test_version_a_installed(host, identity):
    status = rfcheck.wait_for(lambda: rfcheck.checked_in_status(host), 30, what="a check-in")
    identity["agent_id"] = status["agent_id"]
    _assert_running(host, A, status["agent_id"])


def test_same_version_again_does_not_restart(host, identity):
    changed, restarted = _converge(host, A)
    assert (changed, restarted) == (0, 0)


def test_upgrade_to_b(host, identity):
    changed, restarted = _converge(host, B)
    assert changed > 0
    assert restarted == 1, "the service must restart when the artifact changes"
    _assert_running(host, B, identity["agent_id"])
    assert host.file(f"/opt/redflag-agent/{A}/redflag-agent.pyz").exists, "A not kept for rollback"


def test_downgrade_to_a(host, identity):
    changed, restarted = _converge(host, A)
    assert changed > 0
    assert restarted == 1
    _assert_running(host, A, identity["agent_id"])
    assert host.file(f"/opt/redflag-agent/{B}/redflag-agent.pyz").exists, "B not kept for rollback"


def test_a_restart_lost_to_a_failed_run_is_made_up(host, identity):
    # As if a run had switched current to B and then failed before the service step:
    # the A process keeps running, and nothing on disk differs from what B's converge
    # writes, so only the evidence (process older than current) can call for the restart.
    switch = (
        f"ln -sfn {B} /opt/redflag-agent/current.lost && "
        "mv -T /opt/redflag-agent/current.lost /opt/redflag-agent/current"
    )
    host.run_expect([0], f"sleep 1.5 && {switch}")
    changed, restarted = _converge(host, B)
    assert (changed, restarted) == (1, 1), "the old process must be restarted from the evidence"
    _assert_running(host, B, identity["agent_id"])
    assert _converge(host, B) == (0, 0)
