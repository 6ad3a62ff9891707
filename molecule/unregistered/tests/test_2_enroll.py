"""Converge the waiting host again, now with a token: it registers and runs."""

from __future__ import annotations

import rfcheck

CONVERGE = "molecule/shared/converge.yml"


def test_converge_with_token_registers_and_starts(host):
    rc, output, recap = rfcheck.run_playbook(CONVERGE, {"rf_token_name": "registration_token"})
    hostname = rfcheck.inventory_name(host)
    assert rc == 0, "converge with a token failed; see playbook-runs.log in the ephemeral dir"
    assert recap[hostname]["changed"] > 0
    assert recap[hostname]["failed"] == 0
    hostname = host.check_output("hostname")
    status = rfcheck.wait_for(lambda: rfcheck.checked_in_status(host), 30, what="a check-in")
    assert status["registered"] is True
    assert host.service("redflag-agent").is_running
    agents = rfcheck.server_agents_named(hostname)
    assert [a["agent_id"] for a in agents] == [status["agent_id"]]
    config = rfcheck.read_config(host)
    assert not config.get("registration_token")
    assert rfcheck.backups(host) == []


def test_second_converge_with_token_changes_nothing(host):
    rc, _output, recap = rfcheck.run_playbook(CONVERGE, {"rf_token_name": "registration_token"})
    hostname = rfcheck.inventory_name(host)
    assert rc == 0
    assert recap[hostname]["changed"] == 0, "not idempotent after enrolling"
    assert len(rfcheck.server_agents()) == 1
