"""Clones: two hosts sharing one machine ID are named and failed before enrolling; after
the documented fix (regenerate the machine IDs) both enroll as separate agents."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import rfcheck
import testinfra

HOSTS = ("clone-1", "clone-2")
FIX = "rm -f /etc/machine-id && systemd-machine-id-setup"


def _host(name: str):
    return testinfra.get_host("podman://" + rfcheck.container(name))


@pytest.fixture(scope="module")
def rollout() -> dict:
    path = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "rollout.json"
    data = json.loads(path.read_text())
    return data


def test_both_clones_failed_by_name_with_the_fix(rollout):
    assert rollout["rc"] == 2, rollout["output"][-3000:]
    out = " ".join(rollout["output"].split())
    for name in HOSTS:
        assert re.search(rf"^{name}\s+:.*\bfailed=1\b", rollout["output"], re.M), out[-3000:]
        other = [h for h in HOSTS if h != name][0]
        assert f"{name} shares its machine ID" in out and f"with {other}:" in out, out[-3000:]
    assert FIX in out


def test_nothing_enrolled_nor_installed_on_the_clones(rollout):
    assert rfcheck.server_agents() == [], "a clone enrolled: a seat was spent"
    for name in HOSTS:
        host = _host(name)
        assert not host.file("/opt/redflag-agent").exists, f"{name}: the agent was installed"
        assert not host.file(rfcheck.CONFIG).exists


@pytest.fixture(scope="module")
def fixed(rollout) -> tuple[int, str, dict]:
    """The documented fix on both clones, then the same play again."""
    for name in HOSTS:
        host = _host(name)
        dbus = "/var/lib/dbus/machine-id"
        rfcheck.run_ok(host, f"{FIX} && if [ -f {dbus} ] && [ ! -L {dbus} ]; then rm -f {dbus}; fi")
    return rfcheck.run_playbook("molecule/shared/converge.yml")


def test_after_the_fix_both_enroll_as_separate_agents(fixed):
    rc, output, recap = fixed
    assert rc == 0, output[-3000:]
    agents = rfcheck.server_agents()
    assert len(agents) == 2, agents
    assert len({a["agent_id"] for a in agents}) == 2
    mids = {a.get("machine_id") for a in agents}
    assert len(mids) == 2 and None not in mids, agents
    for name in HOSTS:
        status = rfcheck.wait_for(lambda n=name: rfcheck.checked_in_status(_host(n)), 30,
                                  what=f"{name} to check in")
        assert status["registered"] is True
        assert status["identity_on_this_machine"] is True
        assert status["machine_id"] in mids
