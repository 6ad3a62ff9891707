"""Every CONTRACT 4b answer, per server generation, against a server on 127.0.0.1.

0.1.18: no binding, renew answers a token only. 0.1.23: machine binding (409, 403, 426) and
strict token answers. 0.2: 0.1.23 plus refresh-token rotation, reuse detection, grace replay.
"""

from __future__ import annotations

import re

import pytest

from redflag_devserver import rules
from redflag_devserver.store import iso

MID_A = "a" * 64
MID_B = "b" * 64
ALL = ("0.1.18", "0.1.23", "0.2")
BINDING = ("0.1.23", "0.2")
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\Z")
MISSING = "missing machine ID header - agent version too old or tampered"
NOT_BOUND = "agent not bound to machine - re-registration required"
MISMATCH = "machine ID mismatch - config file copied to different machine"


def _register(running, token=None, hostname="h1", machine_id=MID_A, version="0.2.0", **extra):
    token = token or running.client.mint()
    body = {"hostname": hostname, "os_type": "linux", "agent_version": version, **extra}
    if machine_id is not None:
        body["machine_id"] = machine_id
    return running.client.call("POST", "/api/v1/agents/register", body, bearer=token)


def _agent(running, **kwargs):
    reply = _register(running, **kwargs)
    assert reply.status == 200, reply.body
    return reply.body


def _hdr(machine_id):
    return {} if machine_id is None else {"X-Machine-ID": machine_id}


def _checkin(running, agent, machine_id=MID_A, body=None):
    return running.client.call(
        "GET",
        f"/api/v1/agents/{agent['agent_id']}/commands",
        body,
        bearer=agent["token"],
        headers=_hdr(machine_id),
    )


def _renew(running, agent, refresh=None, machine_id=MID_A, version=None):
    body = {"agent_id": agent["agent_id"], "refresh_token": refresh or agent["refresh_token"]}
    if version is not None:
        body["agent_version"] = version
    return running.client.call("POST", "/api/v1/agents/renew", body, headers=_hdr(machine_id))


def _info(running, agent_id):
    [info] = [a for a in running.client.agents() if a["agent_id"] == agent_id]
    return info


# Registration


@pytest.mark.parametrize("generation", ALL)
@pytest.mark.parametrize("machine_id", [MID_A, None])
def test_register_with_and_without_machine_id(start_server, generation, machine_id):
    running = start_server(generation=generation)
    agent = _agent(
        running,
        machine_id=machine_id,
        public_key_fingerprint="",
        os_distro="debian",
        available_scanners=["apt"],
    )
    assert set(agent) >= {"agent_id", "token", "refresh_token", "config"}
    info = _info(running, agent["agent_id"])
    assert info["status"] == "active"
    # A 0.1.18 server ignores the fields it does not know: nothing is bound.
    binds = generation in BINDING
    assert info["machine_id"] == (machine_id if binds else None)
    assert info["os_distro"] == ("debian" if binds else None)
    assert info["available_scanners"] == (["apt"] if binds else None)


@pytest.mark.parametrize("generation", ALL)
def test_duplicate_machine_id(start_server, generation):
    running = start_server(generation=generation)
    token = running.client.mint(seats=3)
    first = _agent(running, token=token, hostname="golden")
    running.clock.advance(90)
    assert _checkin(running, first).status == 200
    seen = running.clock()
    running.clock.advance(30)
    clone = _register(running, token=token, hostname="clone")
    if generation == "0.1.18":
        assert clone.status == 200  # no binding: the clone becomes a twin
        return
    assert clone.status == 409
    assert clone.body == {
        "error": "machine ID already registered to another agent",
        "existing_agent_id": first["agent_id"],
        "existing_hostname": "golden",
        "existing_last_seen": iso(seen),
        "remediation": rules.MACHINE_CONFLICT_REMEDIATION,
    }
    assert RFC3339.match(clone.body["existing_last_seen"])
    # The refusal spent no seat, and another machine registers fine.
    [info] = running.client.call("GET", "/admin/tokens").body["tokens"]
    assert info["seats_used"] == 1
    assert _register(running, token=token, hostname="other", machine_id=MID_B).status == 200
    # Removing the old agent on the server frees the machine ID.
    reply = running.client.call("POST", f"/admin/agents/{first['agent_id']}/deregister")
    assert reply.status == 200
    assert _register(running, token=token, hostname="clone").status == 200


@pytest.mark.parametrize("generation", BINDING)
def test_409_last_seen_is_registration_time_before_any_checkin(start_server, generation):
    running = start_server(generation=generation)
    _agent(running, hostname="golden")
    registered = running.clock()
    running.clock.advance(5)
    reply = _register(running)
    assert reply.status == 409
    assert reply.body["existing_last_seen"] == iso(registered)


@pytest.mark.parametrize("generation", BINDING)
@pytest.mark.parametrize(
    "machine_id", ["A" * 64, "a" * 32, "a" * 63 + "g", 12, ["a" * 64]], ids=repr
)
def test_register_refuses_a_malformed_machine_id(start_server, generation, machine_id):
    running = start_server(generation=generation)
    token = running.client.mint()
    reply = _register(running, token=token, machine_id=machine_id)
    assert reply.status == 400
    assert "machine_id" in reply.body["error"]
    assert _register(running, token=token).status == 200  # the refusal cost no seat


@pytest.mark.parametrize("generation", BINDING)
def test_register_empty_machine_id_means_none(start_server, generation):
    running = start_server(generation=generation)
    agent = _agent(running, machine_id="")
    assert _info(running, agent["agent_id"])["machine_id"] is None


@pytest.mark.parametrize(
    ("field", "value"),
    [("available_scanners", "apt"), ("available_scanners", [1]), ("os_distro", 3)],
)
def test_register_checks_binding_field_types(start_server, field, value):
    running = start_server(generation="0.2")
    reply = _register(running, **{field: value})
    assert reply.status == 400
    assert field in reply.body["error"]


def _token_case(running, case):
    if case == "unknown":
        return "f" * 64
    if case == "expired":
        token = running.client.mint(expires="10m")
        running.clock.advance(601)
        return token
    token = running.client.mint()
    if case == "revoked":
        assert running.client.call("POST", f"/admin/tokens/{token}/revoke").status == 200
    else:  # used up
        assert _register(running, token=token, machine_id=MID_B).status == 200
    return token


@pytest.mark.parametrize(
    ("generation", "case", "status", "error"),
    [
        ("0.1.18", "unknown", 401, "invalid or expired registration token"),
        ("0.1.18", "revoked", 400, "registration token could not be consumed: token revoked"),
        ("0.1.18", "expired", 400, "registration token could not be consumed: token expired"),
        ("0.1.18", "used", 400, "registration token could not be consumed: all seats used"),
        *(
            (generation, case, 401, "invalid or expired registration token")
            for generation in BINDING
            for case in ("unknown", "revoked", "expired", "used")
        ),
    ],
)
def test_registration_token_answers(start_server, generation, case, status, error):
    running = start_server(generation=generation)
    token = _token_case(running, case)
    reply = _register(running, token=token)
    assert (reply.status, reply.body) == (status, {"error": error})


# Binding on every agent route and on renew


def _call_route(running, route, agent, machine_id):
    headers = _hdr(machine_id)
    path = f"/api/v1/agents/{agent['agent_id']}"
    if route == "commands":
        return running.client.call(
            "GET", path + "/commands", bearer=agent["token"], headers=headers
        )
    if route == "updates":
        return running.client.call(
            "POST", path + "/updates", {"updates": []}, bearer=agent["token"], headers=headers
        )
    if route == "unregister":
        return running.client.call("DELETE", path, bearer=agent["token"], headers=headers)
    return _renew(running, agent, machine_id=machine_id)


ROUTES = ("commands", "updates", "unregister", "renew")


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    "case",  # (generation, machine ID bound at registration, X-Machine-ID sent, status, error)
    [
        ("0.1.18", MID_A, None, 200, None),
        ("0.1.18", MID_A, MID_B, 200, None),
        *(
            row
            for generation in BINDING
            for row in (
                (generation, MID_A, MID_A, 200, None),
                (generation, MID_A, None, 403, MISSING),
                (generation, MID_A, "", 403, MISSING),
                (generation, MID_A, MID_B, 403, MISMATCH),
                (generation, MID_A, MID_A.upper(), 403, MISMATCH),  # compared exactly
                (generation, None, MID_A, 403, NOT_BOUND),
                (generation, None, None, 403, MISSING),
            )
        ),
    ],
)
def test_binding_answers(start_server, route, case):
    generation, bound, sent, status, error = case
    running = start_server(generation=generation)
    agent = _agent(running, machine_id=bound)
    reply = _call_route(running, route, agent, sent)
    assert reply.status == status, reply.body
    if error is not None:
        assert reply.body["error"] == error
        assert reply.body["hint"]
        # A refusal changes nothing: the agent is still there, unbound or bound as before.
        info = _info(running, agent["agent_id"])
        assert (info["status"], info["machine_id"], info["renewals"]) == ("active", bound, 0)


@pytest.mark.parametrize("generation", BINDING)
def test_renew_proves_the_token_before_judging_the_binding(start_server, generation):
    running = start_server(generation=generation)
    agent = _agent(running)
    reply = _renew(running, agent, refresh="0" * 64, machine_id=None)
    assert (reply.status, reply.body) == (401, {"error": "invalid or expired refresh token"})


# 426: agent version below the server's minimum


@pytest.mark.parametrize(
    ("generation", "version", "status"),
    [
        ("0.1.18", "0.1.0", 200),
        *(
            (generation, version, status)
            for generation in BINDING
            for version, status in (
                ("0.1.21", 426),
                ("0.1.21.9", 426),
                ("unknown", 426),
                ("0.1.22", 200),
                ("0.1.23.6", 200),
                ("0.2.0", 200),
            )
        ),
    ],
)
def test_version_floor(start_server, generation, version, status):
    running = start_server(generation=generation)
    agent = _agent(running, version=version)
    for route in ("commands", "updates"):
        reply = _call_route(running, route, agent, MID_A)
        assert reply.status == status, (route, reply.body)
        if status == 426:
            assert reply.body == {
                "error": "agent version too old - upgrade required for security",
                "current_version": version,
                "minimum_version": "0.1.22",
                "upgrade_instructions": reply.body["upgrade_instructions"],
            }


def test_426_comes_before_the_binding_checks(start_server):
    running = start_server(generation="0.2")
    agent = _agent(running, version="0.1.18")
    assert _call_route(running, "commands", agent, None).status == 426


def test_version_floor_follows_the_last_reported_version(start_server):
    running = start_server(generation="0.2")
    agent = _agent(running, version="0.1.21")
    assert _checkin(running, agent).status == 426
    # The check-in that reports the upgrade is judged by what it reports, and remembered.
    assert _checkin(running, agent, body={"version": "0.2.0"}).status == 200
    assert _checkin(running, agent).status == 200
    assert _info(running, agent["agent_id"])["agent_version"] == "0.2.0"
    # Renewal records agent_version too.
    assert _checkin(running, agent, body={"version": "0.1.20"}).status == 426
    renewed = _renew(running, agent, version="0.1.23")
    assert renewed.status == 200
    assert _info(running, agent["agent_id"])["agent_version"] == "0.1.23"
    assert _checkin(running, agent).status == 200


def test_min_agent_version_setting(start_server):
    running = start_server(generation="0.1.23", min_agent_version="0.3")
    agent = _agent(running, version="0.2.0")
    reply = _checkin(running, agent)
    assert reply.status == 426
    assert (reply.body["current_version"], reply.body["minimum_version"]) == ("0.2.0", "0.3")


# Renewal: plain (0.1.18, 0.1.23) and rotating (0.2)


@pytest.mark.parametrize("generation", ("0.1.18", "0.1.23"))
def test_renew_without_rotation_answers_a_token_only(start_server, generation):
    running = start_server(generation=generation)
    agent = _agent(running)
    for _ in range(3):  # the same refresh token keeps working
        reply = _renew(running, agent, version="0.2.0")
        assert reply.status == 200
        assert set(reply.body) == {"token", "message"}
    running.clock.advance(80 * 86400)
    assert _renew(running, agent).status == 200
    running.clock.advance(80 * 86400)  # past the first 90 days: the expiry slid
    assert _renew(running, agent).status == 200
    assert _info(running, agent["agent_id"])["renewals"] == 5


def test_rotation_hands_out_a_new_refresh_token_each_time(start_server):
    running = start_server(generation="0.2")
    agent = _agent(running)
    seen = {agent["refresh_token"]}
    refresh = agent["refresh_token"]
    for _ in range(3):
        reply = _renew(running, agent, refresh=refresh)
        assert reply.status == 200
        assert set(reply.body) == {"token", "refresh_token", "message"}
        refresh = reply.body["refresh_token"]
        assert refresh not in seen and len(refresh) == 64
        seen.add(refresh)
        assert _checkin(running, {**agent, "token": reply.body["token"]}).status == 200
    info = _info(running, agent["agent_id"])
    assert (info["status"], info["renewals"], info["grace_replays"]) == ("active", 3, 0)


def test_rotated_token_lives_90_days_from_its_issue(start_server):
    running = start_server(generation="0.2")
    agent = _agent(running)
    running.clock.advance(80 * 86400)
    fresh = _renew(running, agent).body["refresh_token"]
    running.clock.advance(80 * 86400)
    assert _renew(running, agent, refresh=fresh).status == 200
    running.clock.advance(90 * 86400 + 1)
    assert _renew(running, agent, refresh=fresh).status == 401


def test_reuse_revokes_the_whole_family(start_server):
    running = start_server(generation="0.2")
    agent = _agent(running)
    r0 = agent["refresh_token"]
    r1 = _renew(running, agent, refresh=r0).body["refresh_token"]
    r2 = _renew(running, agent, refresh=r1).body["refresh_token"]  # r0's successor is used
    reply = _renew(running, agent, refresh=r0)
    assert (reply.status, reply.body) == (401, {"error": "refresh token reuse detected"})
    info = _info(running, agent["agent_id"])
    assert info["status"] == "revoked"
    assert info["revoked_at"] == iso(running.clock())
    # Every token of the family is dead, the current one included.
    for token in (r0, r1, r2):
        reply = _renew(running, agent, refresh=token)
        assert (reply.status, reply.body) == (401, {"error": "invalid or expired refresh token"})
    # The machine stays bound to the revoked agent until someone removes it on the server.
    assert _register(running).status == 409
    removed = running.client.call("POST", f"/admin/agents/{agent['agent_id']}/deregister")
    assert removed.status == 200
    assert _register(running).status == 200


def test_reuse_of_the_directly_replaced_token_after_the_new_one_was_used(start_server):
    running = start_server(generation="0.2")
    agent = _agent(running)
    r1 = _renew(running, agent).body["refresh_token"]
    r2 = _renew(running, agent, refresh=r1).body["refresh_token"]
    assert _renew(running, agent, refresh=r2).status == 200  # r1's successor is now used
    reply = _renew(running, agent, refresh=r1)
    assert (reply.status, reply.body["error"]) == (401, "refresh token reuse detected")


def test_a_replay_from_another_machine_revokes_nothing(start_server):
    running = start_server(generation="0.2")
    agent = _agent(running)
    r1 = _renew(running, agent).body["refresh_token"]
    assert _renew(running, agent, refresh=r1).status == 200
    reply = _renew(running, agent, machine_id=MID_B)  # a consumed token, the wrong machine
    assert (reply.status, reply.body["error"]) == (403, MISMATCH)
    assert _info(running, agent["agent_id"])["status"] == "active"


def test_grace_replay_after_a_lost_rotation(start_server):
    running = start_server(generation="0.2")
    agent = _agent(running)
    r0 = agent["refresh_token"]
    lost = _renew(running, agent, refresh=r0).body["refresh_token"]  # never saved
    running.clock.advance(3600)  # no time window: upstream has none
    again = _renew(running, agent, refresh=r0)
    assert again.status == 200
    r2 = again.body["refresh_token"]
    assert r2 not in (r0, lost)  # a fresh pair: the server keeps hashes, not tokens
    assert _checkin(running, {**agent, "token": again.body["token"]}).status == 200
    info = _info(running, agent["agent_id"])
    assert (info["status"], info["grace_replays"]) == ("active", 1)
    # The lost token was orphaned: refused, but it is no reuse and revokes nothing.
    reply = _renew(running, agent, refresh=lost)
    assert (reply.status, reply.body["error"]) == (401, "invalid or expired refresh token")
    assert _info(running, agent["agent_id"])["status"] == "active"
    # Once the reissued token is used, the old one is plain reuse.
    assert _renew(running, agent, refresh=r2).status == 200
    reply = _renew(running, agent, refresh=r0)
    assert (reply.status, reply.body["error"]) == (401, "refresh token reuse detected")


def test_grace_replay_repeats_while_the_successor_stays_unused(start_server):
    """An agent that crashes again before saving gets another chance, as upstream."""
    running = start_server(generation="0.2")
    agent = _agent(running)
    handed = [_renew(running, agent).body["refresh_token"] for _ in range(3)]
    assert len(set(handed)) == 3
    assert _info(running, agent["agent_id"])["grace_replays"] == 2
    assert _renew(running, agent, refresh=handed[-1]).status == 200
    for stale in handed[:-1]:
        assert _renew(running, agent, refresh=stale).status == 401
    assert _info(running, agent["agent_id"])["status"] == "active"


def test_grace_replay_needs_the_right_machine(start_server):
    running = start_server(generation="0.2")
    agent = _agent(running)
    assert _renew(running, agent).status == 200
    reply = _renew(running, agent, machine_id=None)
    assert (reply.status, reply.body["error"]) == (403, MISSING)
    assert _info(running, agent["agent_id"])["grace_replays"] == 0


def test_deregistered_agent_cannot_renew(start_server):
    running = start_server(generation="0.2")
    agent = _agent(running)
    path = f"/api/v1/agents/{agent['agent_id']}"
    headers = _hdr(MID_A)
    assert running.client.call("DELETE", path, bearer=agent["token"], headers=headers).status == 200
    assert _renew(running, agent).status == 404
    assert _info(running, agent["agent_id"])["status"] == "deregistered"
    assert _register(running).status == 200  # the machine is free again


# Admin rebind


def test_rebind_moves_the_binding(start_server):
    running = start_server(generation="0.2")
    agent = _agent(running)
    path = f"/admin/agents/{agent['agent_id']}/rebind"
    reply = running.client.call("POST", path, {"machine_id": MID_B})
    assert reply.status == 200
    assert reply.body == {
        "agent_id": agent["agent_id"],
        "old_machine_id": MID_A,
        "new_machine_id": MID_B,
    }
    assert _checkin(running, agent, MID_A).body["error"] == MISMATCH
    assert _checkin(running, agent, MID_B).status == 200
    assert _renew(running, agent, machine_id=MID_B).status == 200
    assert _info(running, agent["agent_id"])["machine_id"] == MID_B
    # The old machine ID is free for a new agent.
    assert _register(running, hostname="new").status == 200


def test_rebind_binds_an_agent_registered_before_binding(start_server):
    running = start_server(generation="0.1.23")
    agent = _agent(running, machine_id=None)
    assert _checkin(running, agent).body["error"] == NOT_BOUND
    path = f"/admin/agents/{agent['agent_id']}/rebind"
    assert running.client.call("POST", path, {"machine_id": MID_A}).status == 200
    assert _checkin(running, agent).status == 200


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"machine_id": "A" * 64}, 400),
        ({"machine_id": "abc"}, 400),
        ({}, 400),
        (None, 400),
        ({"machine_id": MID_B}, 409),  # held by the other agent
    ],
)
def test_rebind_refusals(start_server, body, status):
    running = start_server(generation="0.2")
    agent = _agent(running)
    other = _agent(running, hostname="other", machine_id=MID_B)
    reply = running.client.call("POST", f"/admin/agents/{agent['agent_id']}/rebind", body)
    assert reply.status == status, reply.body
    if status == 409:
        assert reply.body["existing_agent_id"] == other["agent_id"]
    assert _info(running, agent["agent_id"])["machine_id"] == MID_A


def test_rebind_and_deregister_unknown_agent(start_server):
    running = start_server(generation="0.2")
    missing = "/admin/agents/00000000-0000-4000-8000-000000000000"
    assert running.client.call("POST", missing + "/rebind", {"machine_id": MID_A}).status == 404
    assert running.client.call("POST", missing + "/deregister").status == 404


def test_admin_binding_routes_are_loopback_only(start_server, monkeypatch):
    running = start_server(generation="0.2")
    agent = _agent(running)
    monkeypatch.setattr("redflag_devserver.api.rules.is_loopback_address", lambda _host: False)
    base = f"/admin/agents/{agent['agent_id']}"
    assert running.client.call("POST", base + "/rebind", {"machine_id": MID_B}).status == 403
    assert running.client.call("POST", base + "/deregister").status == 403
    monkeypatch.undo()
    info = _info(running, agent["agent_id"])
    assert (info["status"], info["machine_id"]) == ("active", MID_A)
