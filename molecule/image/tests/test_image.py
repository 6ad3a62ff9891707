"""A golden image: installed, no identity, no machine ID, not enabled; then a clone's first
boot (a fresh machine ID) enrolls it as its own agent with a token."""

from __future__ import annotations

import rfcheck

CONVERGE = "molecule/shared/converge.yml"


def test_image_has_the_agent_but_no_identity_and_no_machine_id(host):
    assert host.file("/opt/redflag-agent/current/redflag-agent.pyz").is_file
    svc = host.service("redflag-agent")
    assert not svc.is_enabled
    assert not svc.is_running
    config = rfcheck.read_config(host)
    assert config.get("server_url")
    for key in ("agent_id", "token", "refresh_token", "registration_token", "machine_id"):
        assert not config.get(key), f"{key} left in the image's config.json"
    assert host.file("/etc/machine-id").size == 0
    assert rfcheck.server_agents() == []


def test_clone_first_boot_enrolls_as_its_own_agent(host):
    # what systemd does at a clone's first boot with an empty /etc/machine-id
    host.run_expect([0], "systemd-machine-id-setup")
    machine_id = host.file("/etc/machine-id").content_string.strip()
    assert len(machine_id) == 32
    rc, _output, recap = rfcheck.run_playbook(
        CONVERGE, {"rf_token_name": "registration_token", "redflag_agent_state": "present"})
    name = rfcheck.inventory_name(host)
    assert rc == 0, "converge with a token failed; see playbook-runs.log in the ephemeral dir"
    assert recap[name]["failed"] == 0
    status = rfcheck.wait_for(lambda: rfcheck.checked_in_status(host), 30, what="a check-in")
    assert status["registered"] is True
    assert status["identity_on_this_machine"] is True
    assert host.service("redflag-agent").is_enabled
    agents = rfcheck.server_agents()
    assert [a["agent_id"] for a in agents] == [status["agent_id"]]
