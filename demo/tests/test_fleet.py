"""Tables for demo/fleet.py: recap parsing, the re-run verdict, the status table, the
per-host verdict, and the generated inventory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

DEMO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(DEMO))

import fleet  # noqa: E402

HOSTS = ["rf-demo-fresh", "rf-demo-legacy", "rf-demo-notoken"]
FRESH_ID = "a63ab77d-6b14-41c8-90c0-8e76fe19dfe2"
LEGACY_ID = "eb1c48aa-e8d3-4190-8b63-0cca03ce23a0"
NEW_ID = "11111111-2222-3333-4444-555555555555"

COUNTERS = "unreachable=0    failed=0    skipped=23   rescued=0    ignored=0   "
RECAP_LOG = (
    "PLAY [Roll out the RedFlag agent] ****************************************\n\n"
    "TASK [Gathering] *********************************************************\n"
    "ok: [rf-demo-fresh]\n\n"
    "PLAY RECAP ***************************************************************\n"
    f"rf-demo-fresh              : ok=47   changed=0    {COUNTERS}\n"
    f"rf-demo-legacy             : ok=44   changed={{legacy}}    {COUNTERS}\n"
    f"rf-demo-notoken            : ok=43   changed=0    {COUNTERS}\n\n"
)


# -- recap ---------------------------------------------------------------------------------


def test_parse_recap_reads_every_host():
    recap = fleet.parse_recap(RECAP_LOG.format(legacy=2))
    assert sorted(recap) == HOSTS
    assert recap["rf-demo-legacy"]["changed"] == 2
    assert recap["rf-demo-fresh"] == {
        "ok": 47, "changed": 0, "unreachable": 0, "failed": 0,
        "skipped": 23, "rescued": 0, "ignored": 0,
    }


def test_parse_recap_uses_the_last_recap_and_strips_colour():
    first = RECAP_LOG.format(legacy=9)
    second = "\x1b[0;33m" + RECAP_LOG.format(legacy=0).replace(
        "rf-demo-fresh              :", "\x1b[0;32mrf-demo-fresh\x1b[0m              :"
    )
    recap = fleet.parse_recap(first + second)
    assert recap["rf-demo-legacy"]["changed"] == 0
    assert "rf-demo-fresh" in recap


def test_parse_recap_without_recap_is_empty():
    assert fleet.parse_recap("fatal: [x]: UNREACHABLE!\n") == {}


@pytest.mark.parametrize(
    ("legacy_changed", "hosts", "ok", "text"),
    [
        (0, HOSTS, True, "second run: no changes"),
        (3, HOSTS, False, "second run: changes on rf-demo-legacy (changed=3)"),
        (0, [*HOSTS, "rf-demo-extra"], False, "second run: no recap for rf-demo-extra"),
    ],
)
def test_rerun_verdict(legacy_changed, hosts, ok, text):
    recap = fleet.parse_recap(RECAP_LOG.format(legacy=legacy_changed))
    assert fleet.rerun_verdict(recap, hosts) == (ok, text)


@pytest.mark.parametrize(
    ("recap", "expected"),
    [
        # the role rescued a failure on legacy; the health gate then failed on fresh
        ({"rf-demo-fresh": {"failed": 1, "rescued": 0}, "rf-demo-legacy": {"rescued": 1},
          "rf-demo-notoken": {"failed": 0}}, ["rf-demo-legacy"]),
        ({"a": {"unreachable": 1}, "b": {"failed": 1}, "c": {"failed": 0}}, ["a", "b"]),
        ({"a": {"failed": 0, "rescued": 0}}, []),
        ({}, []),
    ],
)
def test_culprits(recap, expected):
    assert fleet.culprits(recap) == expected


# -- status table --------------------------------------------------------------------------

STATUS_LOG = """\
TASK [Read the service state] **************************************************
ok: [rf-demo-fresh]

TASK [Print the fleet table] ***************************************************
ok: [rf-demo-fresh -> localhost] =>
    msg: |-
        HOST           REGISTERED
        rf-demo-fresh  yes
          indented     kept

PLAY RECAP *********************************************************************
rf-demo-fresh              : ok=4    changed=0    unreachable=0    failed=0
"""


def test_fleet_table_is_the_dedented_message():
    assert fleet.fleet_table(STATUS_LOG) == (
        "HOST           REGISTERED\nrf-demo-fresh  yes\n  indented     kept"
    )


@pytest.mark.parametrize(
    "text",
    [
        "",
        STATUS_LOG.replace("TASK [Print the fleet table]", "TASK [Something else]"),
        "TASK [Print the fleet table] ***\nskipping: [x]\n\nPLAY RECAP ***\n",
    ],
)
def test_fleet_table_missing(text):
    assert fleet.fleet_table(text) is None


# -- per-host verdict ----------------------------------------------------------------------


def status(registered=True, agent_id=FRESH_ID, source="current", token=False, **extra):
    base = {
        "config_present": True, "config_valid": True, "config_error": None,
        "registered": registered, "identity_source": source if registered else None,
        "agent_id": agent_id if registered else None,
        "registration_token_present": token, "last_error": None, "last_exit_reason": None,
    }
    base.update(extra)
    return base


def server(agent_id, migrated_from=None, state="active"):
    return {"hostname": "h", "agent_id": agent_id, "status": state,
            "migrated_from": migrated_from}


ACTIVE = {"ActiveState": "active", "SubState": "running", "ExecMainStatus": "0"}
STOPPED_78 = {"ActiveState": "failed", "SubState": "failed", "ExecMainStatus": "78"}
SERVER = [server(FRESH_ID), server(LEGACY_ID, "0.1.18")]

CASES = [
    # host, status, unit, token_given, agents, legacy id, expected state, ok, text fragment
    ("rf-demo-fresh", status(), ACTIVE, True, SERVER, None,
     "registered", True, f"registered as {FRESH_ID}, no check-in yet"),
    ("rf-demo-fresh", status(last_checkin="2026-11-28T22:04:26Z"), ACTIVE, True, SERVER, None,
     "registered", True, "last check-in 2026-11-28T22:04:26Z"),
    ("rf-demo-legacy", status(agent_id=LEGACY_ID), ACTIVE, True, SERVER, LEGACY_ID,
     "migrated", True, f"migrated from 0.1.18, kept its old identity {LEGACY_ID}"),
    ("rf-demo-notoken", status(registered=False), STOPPED_78, False, SERVER, None,
     "waiting", True, "last exit 78"),
    # legacy host that enrolled again instead of migrating
    ("rf-demo-legacy", status(agent_id=NEW_ID), ACTIVE, True, [*SERVER, server(NEW_ID)],
     LEGACY_ID, "problem", False, f"lost its 0.1.18 identity {LEGACY_ID}"),
    # kept its identity but never told the server it migrated
    ("rf-demo-legacy", status(agent_id=LEGACY_ID), ACTIVE, True, [server(LEGACY_ID)],
     LEGACY_ID, "problem", False, "no migrated_from"),
    # migration still pending: identity only in the legacy config
    ("rf-demo-legacy", status(agent_id=LEGACY_ID, source="legacy"), ACTIVE, True, SERVER,
     LEGACY_ID, "problem", False, "migration pending"),
    # the server forgot (or deregistered) the agent
    ("rf-demo-fresh", status(), ACTIVE, True, [server(FRESH_ID, state="deregistered")], None,
     "problem", False, "not an active agent"),
    ("rf-demo-fresh", status(), ACTIVE, True, [], None, "problem", False,
     "not an active agent"),
    # registered but the service is down
    ("rf-demo-fresh", status(), STOPPED_78, True, SERVER, None, "problem", False,
     "service is failed"),
    # had a token and still is not registered: the error is shown
    ("rf-demo-fresh", status(registered=False, token=True,
                             last_error="2026 registration: token rejected"),
     STOPPED_78, True, SERVER, None, "problem", False, "token rejected"),
    # no status at all (agent missing) and a corrupt config
    ("rf-demo-fresh", None, {}, True, SERVER, None, "problem", False, "no agent status"),
    ("rf-demo-fresh", status(config_valid=False, config_error="line 1: bad json"), ACTIVE,
     True, SERVER, None, "problem", False, "bad json"),
    # a host the demo expects to wait, but that registered: correct state, wrong host
    ("rf-demo-notoken", status(), ACTIVE, False, SERVER, None, "registered", False,
     "expected: waiting"),
    # an unknown host name has no expectation
    ("other", status(registered=False), STOPPED_78, False, SERVER, None, "waiting", True,
     "waiting for a token"),
]


@pytest.mark.parametrize("case", CASES)
def test_judge_host(case):
    host, st, unit, token, agents, legacy, state, ok, fragment = case
    verdict = fleet.judge_host(host, status=st, unit=unit, token_given=token, agents=agents,
                               legacy_agent_id=legacy)
    assert (verdict.state, verdict.ok) == (state, ok)
    assert fragment in verdict.text


def test_summary_counts():
    verdicts = [
        fleet.Verdict("a", "registered", "x", True),
        fleet.Verdict("b", "migrated", "y", True),
        fleet.Verdict("c", "waiting", "z", True),
    ]
    text = fleet.summary_text(verdicts)
    assert text.splitlines()[-1].strip() == (
        "2 registered (1 of them migrated with their old identity), 1 waiting for a token, "
        "0 with problems"
    )


# -- inventory -----------------------------------------------------------------------------


def test_inventory_refers_to_the_token_file_and_never_holds_a_token(tmp_path):
    token_file = tmp_path / "server" / "registration_token"
    text = fleet.render_inventory(
        "http://127.0.0.1:41234", str(token_file),
        [("rf-demo-fresh", True), ("rf-demo-legacy", True), ("rf-demo-notoken", False)],
    )
    inv = yaml.safe_load(text)
    group = inv["all"]["children"]["redflag_agents"]
    assert group["vars"]["redflag_agent_server_url"] == "http://127.0.0.1:41234"
    assert group["vars"]["rf_demo_token_file"] == str(token_file)
    assert group["vars"]["ansible_connection"] == "containers.podman.podman"
    hosts = group["hosts"]
    assert hosts["rf-demo-fresh"]["redflag_agent_registration_token"] == (
        "{{ lookup('ansible.builtin.file', rf_demo_token_file) }}"
    )
    assert hosts["rf-demo-notoken"]["redflag_agent_registration_token"] == ""


def test_inventory_quotes_odd_paths():
    text = fleet.render_inventory("http://127.0.0.1:1", '/srv/a "b": c #d', [("h", True)])
    assert yaml.safe_load(text)["all"]["children"]["redflag_agents"]["vars"][
        "rf_demo_token_file"] == '/srv/a "b": c #d'


# -- command line glue ---------------------------------------------------------------------


def run_cli(*args):
    return subprocess.run([sys.executable, str(DEMO / "fleet.py"), *args],
                          capture_output=True, text=True, check=False)


def write_facts(facts: Path, legacy_agent: str):
    facts.mkdir()
    (facts / "agents.json").write_text(json.dumps(SERVER))
    (facts / "legacy_identity.json").write_text(json.dumps(
        {"rf-demo-legacy": {"agent_id": LEGACY_ID, "refresh_token_sha256": "ab"}}))
    for host, st, unit in [
        ("rf-demo-fresh", status(), ACTIVE),
        ("rf-demo-legacy", status(agent_id=legacy_agent), ACTIVE),
        ("rf-demo-notoken", status(registered=False), STOPPED_78),
    ]:
        (facts / f"{host}.status.json").write_text(json.dumps(st))
        (facts / f"{host}.unit").write_text("".join(f"{k}={v}\n" for k, v in unit.items()))
    (facts / "rf-demo-fresh.token").touch()
    (facts / "rf-demo-legacy.token").touch()


def test_cli_summary_passes_on_the_promised_fleet(tmp_path):
    write_facts(tmp_path / "facts", LEGACY_ID)
    result = run_cli("summary", "--facts", str(tmp_path / "facts"), *HOSTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 registered (1 of them migrated" in result.stdout


def test_cli_summary_fails_when_the_legacy_host_lost_its_identity(tmp_path):
    write_facts(tmp_path / "facts", NEW_ID)
    result = run_cli("summary", "--facts", str(tmp_path / "facts"), *HOSTS)
    assert result.returncode == 1
    assert "lost its 0.1.18 identity" in result.stdout


def test_cli_summary_without_server_list_says_so(tmp_path):
    (tmp_path / "facts").mkdir()
    result = run_cli("summary", "--facts", str(tmp_path / "facts"), *HOSTS)
    assert result.returncode == 1
    assert "cannot read the server's agent list" in result.stderr


def test_cli_inventory_is_private(tmp_path):
    out = tmp_path / "inventory.yml"
    result = run_cli("inventory", "--out", str(out), "--server-url", "http://127.0.0.1:5",
                     "--token-file", "/x/token", "--host", "a:token", "--host", "b")
    assert result.returncode == 0, result.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    hosts = yaml.safe_load(out.read_text())["all"]["children"]["redflag_agents"]["hosts"]
    assert set(hosts) == {"a", "b"}


def test_cli_rerun_exit_codes(tmp_path):
    log = tmp_path / "site.log"
    log.write_text(RECAP_LOG.format(legacy=0))
    assert run_cli("rerun", str(log), *HOSTS).returncode == 0
    log.write_text(RECAP_LOG.format(legacy=1))
    result = run_cli("rerun", str(log), *HOSTS)
    assert (result.returncode, result.stdout.strip()) == (
        1, "second run: changes on rf-demo-legacy (changed=1)")
