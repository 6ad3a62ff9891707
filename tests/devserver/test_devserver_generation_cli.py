"""The generation switches on the real command line, the rate limit per generation, and the
admin commands for bindings (`agents`, `rebind-agent`, `deregister-agent`)."""

from __future__ import annotations

import json
import sqlite3

import pytest

from redflag_devserver import rules
from redflag_devserver.store import Store, StoreError

from .conftest import Client
from .process import ServerProcess, cli

MID_A = "a" * 64
MID_B = "b" * 64


def _register(client, token, hostname, machine_id=None):
    body = {"hostname": hostname, "os_type": "linux", "agent_version": "0.2.0"}
    if machine_id:
        body["machine_id"] = machine_id
    return client.call("POST", "/api/v1/agents/register", body, bearer=token)


def _mint(db, seats=20):
    minted = cli("mint-token", "--db", str(db), "--seats", str(seats))
    assert minted.returncode == 0, minted.stderr
    return minted.stdout.strip()


def test_default_generation_is_the_documented_one():
    # The lead flips this to "0.2" once the agent sends machine IDs (rules.DEFAULT_GENERATION).
    assert rules.DEFAULT_GENERATION in rules.GENERATIONS
    help_text = cli("serve", "--help").stdout
    assert "--generation" in help_text
    assert f"(default {rules.DEFAULT_GENERATION})" in " ".join(help_text.split())


@pytest.mark.parametrize(
    ("args", "statuses"),
    [
        # 0.1.22+ servers limit registration to 5 a minute per address; 0.1.18 (as today) not.
        (("--generation", "0.1.18"), [200] * 7),
        (("--generation", "0.1.23"), [200] * 5 + [429] * 2),
        (("--generation", "0.2"), [200] * 5 + [429] * 2),
        # What the tests use when they register more: off, or a higher limit.
        (("--generation", "0.2", "--rate-limit", "off"), [200] * 7),
        (("--generation", "0.2", "--rate-limit", "6/60"), [200] * 6 + [429]),
        (("--generation", "0.1.18", "--rate-limit", "5/60"), [200] * 5 + [429] * 2),
    ],
)
def test_rate_limit_per_generation(tmp_path, args, statuses):
    db = tmp_path / "state.db"
    server = ServerProcess(tmp_path, db, *args)
    try:
        client = Client(server.port)
        token = _mint(db)
        replies = [
            _register(client, token, f"h{i}", f"{i:064x}" if "0.1.18" not in args else None)
            for i in range(len(statuses))
        ]
        assert [r.status for r in replies] == statuses
        for reply in replies:
            if reply.status == 429:
                assert 0 < int(reply.headers["Retry-After"]) <= 60
                assert "rate limit" in reply.body["error"]
    finally:
        server.stop()


def test_generation_switch_binds_and_rotates(tmp_path):
    db = tmp_path / "state.db"
    server = ServerProcess(tmp_path, db, "--generation", "0.2", "--min-agent-version", "0.1.23")
    try:
        client = Client(server.port)
        token = _mint(db)
        agent = _register(client, token, "web-1", MID_A).body
        twin = _register(client, token, "web-1-clone", MID_A)
        assert twin.status == 409
        renewed = client.call(
            "POST",
            "/api/v1/agents/renew",
            {"agent_id": agent["agent_id"], "refresh_token": agent["refresh_token"]},
            headers={"X-Machine-ID": MID_A},
        )
        assert set(renewed.body) >= {"token", "refresh_token"}
        old = _register(client, token, "old", MID_B).body
        checkin = client.call(
            "GET",
            f"/api/v1/agents/{old['agent_id']}/commands",
            {"version": "0.1.22"},
            bearer=old["token"],
            headers={"X-Machine-ID": MID_B},
        )
        assert (checkin.status, checkin.body["minimum_version"]) == (426, "0.1.23")
    finally:
        server.stop()
    log = server.log()
    assert "generation 0.2" in log
    for secret in (token, agent["refresh_token"], renewed.body["refresh_token"]):
        assert secret not in log


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--generation", "0.3"), "unknown server generation"),
        (("--generation", "0.1.22"), "0.1.18, 0.1.23, 0.2"),
        (("--min-agent-version", "soon"), "not a version"),
        (("--rate-limit", "none"), "invalid rate limit"),
    ],
)
def test_bad_generation_arguments(tmp_path, args, fragment):
    result = cli("serve", "--db", str(tmp_path / "x.db"), "--listen", "127.0.0.1:0", *args)
    assert result.returncode == 2
    assert fragment in result.stderr


def test_agents_shows_machine_id_and_status_and_admin_commands(tmp_path):
    db = tmp_path / "state.db"
    server = ServerProcess(tmp_path, db, "--generation", "0.2", "--rate-limit", "off")
    try:
        client = Client(server.port)
        token = _mint(db)
        active = _register(client, token, "active", MID_A).body
        gone = _register(client, token, "gone", MID_B).body
        legacy = _register(client, token, "legacy").body
        revoked = _register(client, token, "revoked", "c" * 64).body
        renew = {"agent_id": revoked["agent_id"], "refresh_token": revoked["refresh_token"]}
        headers = {"X-Machine-ID": "c" * 64}
        r1 = client.call("POST", "/api/v1/agents/renew", renew, headers=headers).body
        client.call(
            "POST",
            "/api/v1/agents/renew",
            {**renew, "refresh_token": r1["refresh_token"]},
            headers=headers,
        )
        reuse = client.call("POST", "/api/v1/agents/renew", renew, headers=headers)
        assert reuse.body == {"error": "refresh token reuse detected"}
    finally:
        server.stop()

    result = cli("deregister-agent", "--db", str(db), gone["agent_id"])
    assert result.returncode == 0, result.stderr
    listed = json.loads(cli("agents", "--db", str(db), "--json").stdout)
    view = {a["hostname"]: (a["status"], a["machine_id"]) for a in listed}
    assert view == {
        "active": ("active", MID_A),
        "gone": ("deregistered", MID_B),
        "legacy": ("active", None),
        "revoked": ("revoked", "c" * 64),
    }
    table = cli("agents", "--db", str(db)).stdout.splitlines()
    assert table[0].split()[3:5] == ["STATUS", "MACHINE_ID"]
    rows = {line.split()[0]: line.split() for line in table[1:]}
    assert rows["active"][3:5] == ["active", "a" * 16]
    assert rows["legacy"][3:5] == ["active", "-"]
    assert rows["revoked"][3] == "revoked"

    # rebind-agent: the legacy agent gets the freed machine ID; a held one is refused.
    moved = cli("rebind-agent", "--db", str(db), legacy["agent_id"], MID_B)
    assert moved.returncode == 0, moved.stderr
    held = cli("rebind-agent", "--db", str(db), legacy["agent_id"], MID_A)
    assert held.returncode == 1
    assert active["agent_id"] in held.stderr and "deregister-agent" in held.stderr
    bad = cli("rebind-agent", "--db", str(db), legacy["agent_id"], "XYZ")
    assert bad.returncode == 2
    assert "64 lowercase hex" in bad.stderr
    missing = cli("rebind-agent", "--db", str(db), "nope", MID_B)
    assert (missing.returncode, "not found" in missing.stderr) == (1, True)
    again = cli("deregister-agent", "--db", str(db), gone["agent_id"])
    assert (again.returncode, "not found or deregistered" in again.stderr) == (1, True)
    listed = json.loads(cli("agents", "--db", str(db), "--json").stdout)
    assert {a["hostname"]: a["machine_id"] for a in listed}["legacy"] == MID_B


def test_a_schema_1_file_is_refused_and_left_alone(tmp_path):
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    conn.close()
    before = db.read_bytes()
    with pytest.raises(StoreError, match="schema version 1, this server knows 2"):
        Store(str(db))
    assert db.read_bytes() == before
    result = cli("agents", "--db", str(db))
    assert result.returncode == 1
    assert "a new --db" in result.stderr
