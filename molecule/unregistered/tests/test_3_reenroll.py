"""Re-enroll the running, registered host with a new token (force_reregister): the role
stops the service first (the agent's `unregister` refuses, exit 75, while the running agent
holds its instance lock), unregisters the old agent, enrolls the new one and starts the
service again. Forcing is one-shot: the same converge again changes nothing."""

from __future__ import annotations

import rfcheck

from devserver import mint

CONVERGE = "molecule/shared/converge.yml"
REENROLL = {"rf_token_name": "reenroll_token", "redflag_agent_force_reregister": True}


def test_force_reregister_of_the_running_host_replaces_its_identity(host):
    before = rfcheck.agent_status(host)
    assert before["registered"] is True and host.service("redflag-agent").is_running
    invocation = rfcheck.unit_props(host, "InvocationID")["InvocationID"]
    mint(rfcheck.state_dir(), "reenroll_token", 1, revoke=False)
    rc, output, recap = rfcheck.run_playbook(CONVERGE, REENROLL)
    hostname = rfcheck.inventory_name(host)
    assert rc == 0, output[-3000:]
    assert recap[hostname]["failed"] == 0
    assert "exited 75" not in output and "still runs on this host" not in output
    status = rfcheck.wait_for(lambda: rfcheck.checked_in_status(host), 30,
                              what="the re-enrolled agent to check in")
    assert status["registered"] is True and status["agent_id"] != before["agent_id"]
    assert host.service("redflag-agent").is_running
    # stopped and started again: a new invocation of the unit runs the new identity
    assert rfcheck.unit_props(host, "InvocationID")["InvocationID"] != invocation
    # the old agent was unregistered on the server (not left behind with a warning); the
    # stand-in server keeps its row, deregistered
    agents = rfcheck.server_agents_named(host.check_output("hostname"))
    assert {a["agent_id"]: a["status"] for a in agents} == {
        before["agent_id"]: "deregistered", status["agent_id"]: "active"}
    assert "could not unregister" not in output
    backups = rfcheck.run_ok(host, f"ls -1A {rfcheck.STATE_DIR}/identity_backups")
    assert len(backups.split()) == 1, backups


def test_force_left_on_changes_nothing_the_second_time(host):
    invocation = rfcheck.unit_props(host, "InvocationID")["InvocationID"]
    rc, output, recap = rfcheck.run_playbook(CONVERGE, REENROLL)
    hostname = rfcheck.inventory_name(host)
    assert rc == 0, output[-3000:]
    assert recap[hostname]["changed"] == 0, "force_reregister is not one-shot"
    assert rfcheck.unit_props(host, "InvocationID")["InvocationID"] == invocation
    assert [a["status"] for a in rfcheck.server_agents()].count("active") == 1
