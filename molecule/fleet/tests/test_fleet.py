"""Fleet rollout with serial 1 and a bad token on the 2nd host: the health gate stops
the rollout after fleet-2 with a clear message; fleet-3 is never touched."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import rfcheck
import testinfra


def _host(name: str):
    """Each test names the host it is about: the hosts have different expectations."""
    return testinfra.get_host("podman://" + rfcheck.container(name))


@pytest.fixture(scope="module")
def rollout() -> dict:
    path = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "rollout.json"
    data = json.loads(path.read_text())
    data["recap"] = rfcheck.parse_recap(data["output"])
    return data


def test_rollout_failed(rollout):
    assert rollout["rc"] != 0, "site.yml succeeded although fleet-2 had a revoked token"


def test_gate_message_names_the_host(rollout):
    gate = [
        line for line in rollout["output"].splitlines() if re.search(r"rollout stopped", line, re.I)
    ]
    assert gate, "no 'rollout stopped' message from the health gate"
    text = rollout["output"][rollout["output"].lower().index("rollout stopped") :][:600]
    assert "fleet-2" in text, "the gate message does not name fleet-2"


def test_recap_batches(rollout):
    recap = rollout["recap"]
    assert recap["fleet-1"]["failed"] == 0
    assert "fleet-3" not in recap, "fleet-3 was in the play although the rollout stopped"


def test_first_host_registered_and_running():
    host = _host("fleet-1")
    status = rfcheck.wait_for(lambda: rfcheck.checked_in_status(host), 30, what="a check-in")
    assert status["registered"] is True
    assert host.service("redflag-agent").is_running


def test_bad_token_host_stopped_not_looping():
    host = _host("fleet-2")
    status = rfcheck.agent_status(host)
    assert status["registered"] is False
    props = rfcheck.unit_props(host, "ActiveState", "ExecMainStatus", "NRestarts")
    assert props["ActiveState"] in ("inactive", "failed")
    assert props["ExecMainStatus"] == "77", "a rejected token must exit 77"
    assert props["NRestarts"] == "0"
    assert rfcheck.backups(host) == []


def test_third_host_untouched():
    host = _host("fleet-3")
    for path in ("/opt/redflag-agent", "/etc/redflag-agent", rfcheck.STATE_DIR):
        assert not host.file(path).exists, f"{path} exists on fleet-3"
    assert not host.user("redflag-agent").exists
    load = rfcheck.run_ok(host, "systemctl show redflag-agent.service -p LoadState --value")
    assert load.strip() == "not-found"


def test_server_has_only_the_first_host():
    agents = rfcheck.server_agents()
    assert [a["hostname"] for a in agents] == [rfcheck.container("fleet-1")]
