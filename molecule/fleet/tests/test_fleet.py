"""Fleet rollout with serial 1 and a bad token on the 2nd host: the health gate stops
the rollout after fleet-2 with a clear message; fleet-3 is never touched. Then the same
gate under `--tags redflag_agent_service`, `--skip-tags always` refused, the fleet table
(status.yml) under the JSON result format with its last-error column, and an agent the
server deleted, in the table and at the gate."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
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


# --- the gate under --tags, the fleet table (issue 16) -----------------------------------
# After the rollout above: fleet-1 registered, fleet-2 stopped with its token rejected,
# fleet-3 untouched. Each run below leaves fleet-3 untouched too.


def _play(playbook: str, *args: str, **env: str) -> tuple[int, str, dict]:
    """A playbook against the scenario's hosts with extra CLI arguments and environment."""
    inventory = Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent
    path = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"]) / "playbooks" / playbook
    cmd = ["ansible-playbook", "--inventory", str(inventory), str(path), *args]
    run_env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", **env)
    result = subprocess.run(cmd, capture_output=True, text=True, env=run_env, check=False,
                            timeout=600)  # fmt: skip
    output = result.stdout + result.stderr
    log = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "playbook-runs.log"
    with open(log, "a") as fh:
        fh.write(f"==== {' '.join(cmd)} -> {result.returncode}\n{output}\n")
    return result.returncode, output, rfcheck.parse_recap(output)


def test_the_gate_stops_a_rejected_token_under_tags_redflag_agent_service():
    rc, out, recap = _play("site.yml", "--extra-vars", "redflag_rollout_serial=1",
                           "--tags", "redflag_agent_service")  # fmt: skip
    text = " ".join(out.split())
    assert rc == 2, "site.yml passed under --tags redflag_agent_service with a rejected token"
    assert "batch 2 of 3: fleet-2; the gate waits up to" in text
    assert ("rollout stopped at batch 2 of 3: hosts fleet-2 failed the health gate: fleet-2: "
            "rejected: the server rejected the agent's token (exit 77)") in text  # fmt: skip
    # The module's own advice, once (the gate no longer adds its generic one).
    gate = text[text.index("rollout stopped at batch 2 of 3"):]
    gate = gate[: gate.index("re-run.") + len("re-run.")]
    assert "; next: mint a new registration token on the server" in gate
    assert gate.count("mint a new registration token") == 1, gate
    assert "next step" not in gate
    assert re.search(r"3 of 3\s+not started\s+fleet-3", out), "no summary row for fleet-3"
    assert "fleet-3" not in recap
    test_third_host_untouched()


def test_skip_tags_always_is_refused_before_any_host_is_touched():
    rc, out, recap = _play("site.yml", "--skip-tags", "always")
    assert rc != 0
    assert "--skip-tags always would skip site.yml's batch counter, health gate" in out
    assert recap == {}, "a host was in the play"


def _status_rows(out: str) -> dict[str, str]:
    """The fleet table's lines under the JSON result format: one quoted entry per line."""
    rows = {}
    for line in out.splitlines():
        match = re.match(r'\s*"((fleet-\d|HOST)\s.*)",?$', line)
        if match:
            rows[match.group(2)] = match.group(1)
    return rows


def test_the_fleet_table_shows_the_rejected_token_under_the_json_format():
    rc, out, _recap = _play("status.yml", ANSIBLE_CALLBACK_RESULT_FORMAT="json",
                            ANSIBLE_STDOUT_CALLBACK="default")  # fmt: skip
    assert rc == 0, out[-2000:]
    rows = _status_rows(out)
    assert rows["HOST"].endswith("LAST CHECK-IN         LAST ERROR"), rows
    col = rows["HOST"].index("LAST ERROR")
    assert rows["fleet-1"][col:] == "-"
    assert rows["fleet-2"][col:].startswith(
        "exit 77: token rejected: the server rejected the registration token"
    ), rows["fleet-2"]
    assert "not installed" in rows["fleet-3"]


def test_an_agent_the_server_deleted_shows_in_the_table_and_fails_the_gate():
    sys.path.insert(0, str(Path(os.environ["MOLECULE_PROJECT_DIRECTORY"]) / "agent_src"))
    from redflag_devserver.store import Store  # noqa: PLC0415 - the stand-in's own store

    host = _host("fleet-1")
    agent_id = rfcheck.agent_status(host)["agent_id"]
    Store(str(rfcheck.state_dir() / "devserver.db")).deregister(agent_id, time.time())
    rfcheck.run_ok(host, "systemctl restart redflag-agent")  # checks in at once: 404
    rfcheck.wait_for(
        lambda: rfcheck.unit_props(host, "ActiveState")["ActiveState"] == "failed", 30,
        interval=0.5, what="fleet-1 to stop after the server deleted it",
    )  # fmt: skip
    _rc, out, _recap = _play("status.yml", ANSIBLE_CALLBACK_RESULT_FORMAT="json")
    row = _status_rows(out)["fleet-1"]
    assert f"exit 77: token rejected: the server does not know agent {agent_id} any more" in row

    rc, out, _recap = _play("site.yml", "--tags", "redflag_agent_service", "--limit", "fleet-1")
    text = " ".join(out.split())
    assert rc == 2, "site.yml passed with an agent the server deleted"
    assert "hosts fleet-1 failed the health gate: fleet-1: rejected:" in text
    assert "the server does not know agent" in text
    assert ("add -e redflag_agent_force_reregister=true when the host was registered before, "
            "e.g. the server deleted its agent") in text  # fmt: skip


def test_a_bad_role_variable_stops_at_the_gate_with_its_summary_line_and_touches_nothing():
    # Before, Ansible's implicit argument-spec check failed the host outside the role's
    # block: the batch ended with no gate message and no summary.
    rc, out, recap = _play("site.yml", "--limit", "fleet-3", "--extra-vars",
                           "redflag_agent_state=sideways",
                           ANSIBLE_CALLBACK_RESULT_FORMAT="json")  # fmt: skip
    text = " ".join(out.split())
    assert rc == 2, out[-3000:]
    assert ("hosts fleet-3 failed the health gate: fleet-3: failed: the role's variables do not "
            "match its argument spec (meta/argument_specs.yml): value of redflag_agent_state "
            "must be one of: present, absent, image, got: sideways; next: correct "
            "redflag_agent_state for fleet-3") in text  # fmt: skip
    assert re.search(r'"1 of 1\s+STOPPED\s+fleet-3\s+0/1\s+0/1\s', out), out[-3000:]
    assert '"batch 1 of 1: fleet-3: failed; next: correct redflag_agent_state for fleet-3' in out
    assert recap["fleet-3"]["rescued"] == 1
    test_third_host_untouched()
