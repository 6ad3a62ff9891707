"""Every endpoint's success and failure cases against a server on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import sqlite3

import pytest

from redflag_devserver import jwt_hs256
from redflag_devserver.ratelimit import RateLimiter
from redflag_devserver.store import hash_secret


def _registered(running, **extra):
    token = running.client.mint()
    reply = running.client.register(token, **extra)
    assert reply.status == 200, reply.body
    return reply.body


# Health and routing


def test_health(running):
    reply = running.client.call("GET", "/health")
    assert reply.status == 200
    assert reply.body == {"status": "healthy"}


def test_unknown_path_and_wrong_method(running):
    assert running.client.call("GET", "/nope").status == 404
    reply = running.client.call("GET", "/api/v1/agents/register")
    assert reply.status == 405
    assert "GET" in reply.body["error"]


# Register


def test_register_with_bearer_token(running):
    token = running.client.mint()
    reply = running.client.register(
        token, os_version="12", os_architecture="x86_64", metadata={"migrated_from": "0.1.18"}
    )
    assert reply.status == 200
    body = reply.body
    assert set(body) >= {"agent_id", "token", "refresh_token", "config"}
    assert body["config"]["check_in_interval"] == 300
    assert body["config"]["server_url"] == f"http://127.0.0.1:{running.client.port}"
    claims = jwt_hs256.decode(body["token"], running.server.jwt_secret, running.clock())
    assert claims["agent_id"] == body["agent_id"]
    assert claims["exp"] == int(running.clock()) + 86400
    [agent] = running.client.agents()
    assert agent["agent_id"] == body["agent_id"]
    assert agent["status"] == "active"
    assert agent["migrated_from"] == "0.1.18"
    assert agent["os_architecture"] == "x86_64"


def test_register_with_body_token_fallback(running):
    token = running.client.mint()
    reply = running.client.call(
        "POST",
        "/api/v1/agents/register",
        {
            "hostname": "h",
            "os_type": "linux",
            "agent_version": "0.2.0",
            "registration_token": token,
        },
    )
    assert reply.status == 200, reply.body


def test_bearer_header_wins_over_body_token(running):
    good = running.client.mint()
    reply = running.client.call(
        "POST",
        "/api/v1/agents/register",
        {"hostname": "h", "os_type": "linux", "agent_version": "0.2.0", "registration_token": good},
        bearer="0" * 64,
    )
    assert reply.status == 401
    assert reply.body == {"error": "invalid or expired registration token"}


def test_register_without_token(running):
    reply = running.client.call(
        "POST",
        "/api/v1/agents/register",
        {"hostname": "h", "os_type": "linux", "agent_version": "0.2.0"},
    )
    assert reply.status == 401
    assert reply.body == {"error": "registration token required"}


def test_register_with_unknown_token(running):
    reply = running.client.register("f" * 64)
    assert reply.status == 401
    assert reply.body == {"error": "invalid or expired registration token"}


def test_register_with_malformed_authorization_header(running):
    reply = running.client.call(
        "POST",
        "/api/v1/agents/register",
        {"hostname": "h", "os_type": "linux", "agent_version": "0.2.0"},
        headers={"Authorization": "Basic abc"},
    )
    assert reply.status == 401
    assert "Bearer" in reply.body["error"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"os_type": "linux", "agent_version": "0.2.0"}, "hostname"),
        ({"hostname": "h", "agent_version": "0.2.0"}, "os_type"),
        ({"hostname": "h", "os_type": "linux"}, "agent_version"),
        ({"hostname": " ", "os_type": "linux", "agent_version": "1"}, "hostname"),
        (
            {"hostname": "h", "os_type": "linux", "agent_version": "1", "metadata": {"a": 1}},
            "metadata",
        ),
        ([1, 2], "JSON object"),
        (None, "JSON object"),
    ],
)
def test_register_bad_body(running, body, fragment):
    token = running.client.mint()
    reply = running.client.call("POST", "/api/v1/agents/register", body, bearer=token)
    assert reply.status == 400
    assert fragment in reply.body["error"]
    # A rejected body must not cost a seat.
    assert running.client.register(token).status == 200


def test_register_invalid_json(running):
    token = running.client.mint()
    reply = running.client.call("POST", "/api/v1/agents/register", raw=b"{not json", bearer=token)
    assert reply.status == 400
    assert reply.body["error"].startswith("invalid JSON body")


def test_register_expired_token(running):
    token = running.client.mint(expires="10m")
    running.clock.advance(601)
    reply = running.client.register(token)
    assert reply.status == 400
    assert reply.body == {"error": "registration token could not be consumed: token expired"}


def test_register_revoked_token(running):
    token = running.client.mint(seats=5)
    assert running.client.register(token).status == 200
    reply = running.client.call("POST", f"/admin/tokens/{token}/revoke")
    assert reply.status == 200
    reply = running.client.register(token)
    assert reply.status == 400
    assert reply.body == {"error": "registration token could not be consumed: token revoked"}


def test_register_seats_used_up(running):
    token = running.client.mint(seats=2)
    assert running.client.register(token, "a").status == 200
    assert running.client.register(token, "b").status == 200
    reply = running.client.register(token, "c")
    assert reply.status == 400
    assert reply.body == {"error": "registration token could not be consumed: all seats used"}
    [info] = running.client.call("GET", "/admin/tokens").body["tokens"]
    assert (info["seats"], info["seats_used"], info["status"]) == (2, 2, "used")
    assert [a["hostname"] for a in running.client.agents()] == ["a", "b"]


def test_register_rate_limit(start_server):
    running = start_server(rate_limiter=RateLimiter(3, 60))
    token = running.client.mint(seats=10)
    assert [running.client.register(token).status for _ in range(3)] == [200] * 3
    reply = running.client.register(token)
    assert reply.status == 429
    assert "rate limit" in reply.body["error"]
    assert reply.headers["Retry-After"] == "60"
    running.clock.advance(61)
    assert running.client.register(token).status == 200
    # Refused attempts cost no seat: 4 of 10 used.
    [info] = running.client.call("GET", "/admin/tokens").body["tokens"]
    assert info["seats_used"] == 4


def test_rate_limit_off_by_default(running):
    token = running.client.mint(seats=20)
    assert {running.client.register(token).status for _ in range(20)} == {200}


# Renew


def test_renew_success_slides_refresh_expiry(running):
    agent = _registered(running)
    running.clock.advance(80 * 86400)
    reply = running.client.call(
        "POST",
        "/api/v1/agents/renew",
        {"agent_id": agent["agent_id"], "refresh_token": agent["refresh_token"]},
    )
    assert reply.status == 200
    claims = jwt_hs256.decode(reply.body["token"], running.server.jwt_secret, running.clock())
    assert claims["agent_id"] == agent["agent_id"]
    # 80 + 80 days is past the original 90 days: only the slide makes this work.
    running.clock.advance(80 * 86400)
    reply = running.client.call(
        "POST",
        "/api/v1/agents/renew",
        {"agent_id": agent["agent_id"], "refresh_token": agent["refresh_token"]},
    )
    assert reply.status == 200
    [info] = running.client.agents()
    assert info["renewals"] == 2


def test_renew_expired_refresh_token(running):
    agent = _registered(running)
    running.clock.advance(90 * 86400 + 1)
    reply = running.client.call(
        "POST",
        "/api/v1/agents/renew",
        {"agent_id": agent["agent_id"], "refresh_token": agent["refresh_token"]},
    )
    assert reply.status == 401
    assert reply.body == {"error": "invalid or expired refresh token"}


def test_renew_wrong_refresh_token(running):
    agent = _registered(running)
    other = _registered(running)
    reply = running.client.call(
        "POST",
        "/api/v1/agents/renew",
        {"agent_id": agent["agent_id"], "refresh_token": other["refresh_token"]},
    )
    assert reply.status == 401
    assert reply.body == {"error": "invalid or expired refresh token"}


def test_renew_unknown_agent(running):
    reply = running.client.call(
        "POST",
        "/api/v1/agents/renew",
        {"agent_id": "00000000-0000-4000-8000-000000000000", "refresh_token": "x"},
    )
    assert reply.status == 404
    assert reply.body == {"error": "agent not found"}


@pytest.mark.parametrize("body", [None, {}, {"agent_id": "x"}, {"refresh_token": "y"}, "s"])
def test_renew_bad_body(running, body):
    reply = running.client.call("POST", "/api/v1/agents/renew", body)
    assert reply.status == 400
    assert reply.body["error"]


def test_refresh_tokens_are_stored_hashed(running, tmp_path):
    agent = _registered(running)
    blobs = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("devserver"))
    assert agent["refresh_token"].encode() not in blobs
    with sqlite3.connect(running.store.path) as conn:
        [(stored,)] = conn.execute("SELECT token_hash FROM refresh_tokens").fetchall()
    assert stored == hash_secret(agent["refresh_token"])


# Check-in


def test_checkin_records_metrics_version_and_metadata(running):
    agent = _registered(running, metadata={"site": "a"})
    reply = running.client.call(
        "GET",
        f"/api/v1/agents/{agent['agent_id']}/commands",
        {
            "cpu_percent": 12.5,
            "uptime": 100,
            "version": "0.2.1",
            "metadata": {"migrated_from": "0.1.18"},
        },
        bearer=agent["token"],
    )
    assert reply.status == 200
    assert reply.body == {"commands": []}
    [info] = running.client.agents()
    assert info["agent_version"] == "0.2.1"
    assert info["migrated_from"] == "0.1.18"
    assert info["metadata"] == {"site": "a", "migrated_from": "0.1.18"}
    assert info["checkins"] == 1
    assert info["last_seen"] is not None


def test_checkin_without_body(running):
    agent = _registered(running)
    reply = running.client.call(
        "GET", f"/api/v1/agents/{agent['agent_id']}/commands", bearer=agent["token"]
    )
    assert reply.status == 200
    assert reply.body == {"commands": []}


def test_pending_commands_are_returned_once(running):
    agent = _registered(running)
    agent_id = agent["agent_id"]
    for kind, params in (("scan_updates", {}), ("enable_heartbeat", {"duration_minutes": 10})):
        reply = running.client.call(
            "POST", f"/admin/agents/{agent_id}/commands", {"type": kind, "params": params}
        )
        assert reply.status == 201
    first = running.client.call("GET", f"/api/v1/agents/{agent_id}/commands", bearer=agent["token"])
    assert [(c["type"], c["params"]) for c in first.body["commands"]] == [
        ("scan_updates", {}),
        ("enable_heartbeat", {"duration_minutes": 10}),
    ]
    second = running.client.call(
        "GET", f"/api/v1/agents/{agent_id}/commands", bearer=agent["token"]
    )
    assert second.body == {"commands": []}
    states = running.client.call("GET", f"/admin/agents/{agent_id}/commands").body["commands"]
    assert [c["status"] for c in states] == ["sent", "sent"]


def test_checkin_with_expired_jwt_then_renew(running):
    agent = _registered(running)
    path = f"/api/v1/agents/{agent['agent_id']}/commands"
    running.clock.advance(86400)
    reply = running.client.call("GET", path, bearer=agent["token"])
    assert reply.status == 401
    assert reply.body == {"error": "invalid or expired token"}
    renewed = running.client.call(
        "POST",
        "/api/v1/agents/renew",
        {"agent_id": agent["agent_id"], "refresh_token": agent["refresh_token"]},
    )
    assert renewed.status == 200
    assert running.client.call("GET", path, bearer=renewed.body["token"]).status == 200
    [info] = running.client.agents()
    assert info["checkins_since_renewal"] == 1


def test_jwt_ttl_setting(start_server):
    running = start_server(jwt_ttl=5)
    agent = _registered(running)
    path = f"/api/v1/agents/{agent['agent_id']}/commands"
    running.clock.advance(4)
    assert running.client.call("GET", path, bearer=agent["token"]).status == 200
    running.clock.advance(1)
    assert running.client.call("GET", path, bearer=agent["token"]).status == 401


def _forge(claims, secret=b"not the server's secret", alg="HS256"):
    def enc(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    if alg != "HS256":
        return f"{enc({'alg': alg, 'typ': 'JWT'})}.{enc(claims)}."
    return jwt_hs256.encode(claims, secret)


@pytest.mark.parametrize(
    "case", ["missing", "not-bearer", "garbage", "wrong-secret", "alg-none", "tampered"]
)
def test_checkin_rejects_bad_jwt(running, case):
    agent = _registered(running)
    agent_id = agent["agent_id"]
    claims = {"agent_id": agent_id, "exp": running.clock() + 999}
    headers = {}
    if case == "not-bearer":
        headers["Authorization"] = f"Token {agent['token']}"
    elif case == "garbage":
        headers["Authorization"] = "Bearer abc.def"
    elif case == "wrong-secret":
        headers["Authorization"] = f"Bearer {_forge(claims)}"
    elif case == "alg-none":
        headers["Authorization"] = f"Bearer {_forge(claims, alg='none')}"
    elif case == "tampered":
        head, _, sig = agent["token"].split(".")
        forged_body = (
            base64.urlsafe_b64encode(
                json.dumps({**claims, "exp": running.clock() + 10**9}).encode()
            )
            .rstrip(b"=")
            .decode()
        )
        headers["Authorization"] = f"Bearer {head}.{forged_body}.{sig}"
    reply = running.client.call("GET", f"/api/v1/agents/{agent_id}/commands", headers=headers)
    assert reply.status == 401, case
    assert reply.body["error"]


def test_checkin_with_another_agents_jwt(running):
    one = _registered(running)
    two = _registered(running)
    reply = running.client.call(
        "GET", f"/api/v1/agents/{one['agent_id']}/commands", bearer=two["token"]
    )
    assert reply.status == 403


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [(b"[]", "object"), (b"{", "invalid JSON"), (b'{"cpu_percent": "high"}', "cpu_percent")],
)
def test_checkin_bad_body(running, raw, fragment):
    agent = _registered(running)
    reply = running.client.call(
        "GET", f"/api/v1/agents/{agent['agent_id']}/commands", raw=raw, bearer=agent["token"]
    )
    assert reply.status == 400
    assert fragment in reply.body["error"]


def test_oversized_body_is_refused(running):
    agent = _registered(running)
    reply = running.client.call(
        "GET",
        f"/api/v1/agents/{agent['agent_id']}/commands",
        raw=b"{}",
        bearer=agent["token"],
        # Only the announced length matters: the server must refuse before reading.
        headers={"Content-Length": str(1024 * 1024 + 1)},
    )
    assert reply.status == 413


# Update reports


def test_update_report_is_stored_and_completes_its_command(running):
    agent = _registered(running)
    agent_id = agent["agent_id"]
    command = running.client.call(
        "POST", f"/admin/agents/{agent_id}/commands", {"type": "scan_updates"}
    ).body
    running.client.call("GET", f"/api/v1/agents/{agent_id}/commands", bearer=agent["token"])
    updates = [
        {
            "package_type": "apt",
            "package_name": "curl",
            "current_version": "7.88",
            "available_version": "7.88.1",
            "severity": "important",
            "repository_source": "bookworm-security",
            "size_bytes": 1234,
        },
        {"package_type": "dnf", "package_name": "bash", "available_version": "5.2"},
    ]
    reply = running.client.call(
        "POST",
        f"/api/v1/agents/{agent_id}/updates",
        {"command_id": command["id"], "timestamp": "2026-11-28T21:00:00Z", "updates": updates},
        bearer=agent["token"],
    )
    assert reply.status == 200
    assert reply.body["count"] == 2
    [report] = running.client.call("GET", f"/admin/agents/{agent_id}/updates").body["reports"]
    assert report["command_id"] == command["id"]
    assert report["timestamp"] == "2026-11-28T21:00:00Z"
    assert report["updates"][0]["size_bytes"] == 1234
    assert report["updates"][0]["repository_source"] == "bookworm-security"
    assert [u["package_name"] for u in report["updates"]] == ["curl", "bash"]
    [state] = running.client.call("GET", f"/admin/agents/{agent_id}/commands").body["commands"]
    assert state["status"] == "completed"


def test_empty_update_report_is_stored(running):
    agent = _registered(running)
    reply = running.client.call(
        "POST",
        f"/api/v1/agents/{agent['agent_id']}/updates",
        {"updates": []},
        bearer=agent["token"],
    )
    assert reply.status == 200
    reports = running.client.call("GET", f"/admin/agents/{agent['agent_id']}/updates").body[
        "reports"
    ]
    assert len(reports) == 1
    assert reports[0]["updates"] == []


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({}, "updates must be a list"),
        ({"updates": [{"package_type": "apt", "package_name": "x"}]}, "available_version"),
        (
            {"updates": [{"package_type": "snap", "package_name": "x", "available_version": "1"}]},
            "snap",
        ),
        ({"updates": ["x"]}, "updates[0]"),
    ],
)
def test_update_report_bad_body(running, body, fragment):
    agent = _registered(running)
    reply = running.client.call(
        "POST", f"/api/v1/agents/{agent['agent_id']}/updates", body, bearer=agent["token"]
    )
    assert reply.status == 400
    assert fragment in reply.body["error"]
    assert (
        running.client.call("GET", f"/admin/agents/{agent['agent_id']}/updates").body["reports"]
        == []
    )


def test_update_report_needs_jwt(running):
    agent = _registered(running)
    reply = running.client.call(
        "POST", f"/api/v1/agents/{agent['agent_id']}/updates", {"updates": []}
    )
    assert reply.status == 401


# Unregister


def test_unregister_then_api_refuses_the_agent(running):
    agent = _registered(running)
    agent_id = agent["agent_id"]
    assert (
        running.client.call("DELETE", f"/api/v1/agents/{agent_id}", bearer=agent["token"]).status
        == 200
    )
    [info] = running.client.agents()
    assert info["status"] == "deregistered"
    checkin = running.client.call(
        "GET", f"/api/v1/agents/{agent_id}/commands", bearer=agent["token"]
    )
    assert checkin.status == 404
    renew = running.client.call(
        "POST",
        "/api/v1/agents/renew",
        {"agent_id": agent_id, "refresh_token": agent["refresh_token"]},
    )
    assert renew.status == 404
    again = running.client.call("DELETE", f"/api/v1/agents/{agent_id}", bearer=agent["token"])
    assert again.status == 404
    queued = running.client.call(
        "POST", f"/admin/agents/{agent_id}/commands", {"type": "scan_updates"}
    )
    assert queued.status == 404


def test_unregister_needs_jwt(running):
    agent = _registered(running)
    assert running.client.call("DELETE", f"/api/v1/agents/{agent['agent_id']}").status == 401
    assert running.client.agents()[0]["status"] == "active"


# Admin


def test_admin_mint_validation(running):
    for body, fragment in (
        ({"seats": 0}, "seats"),
        ({"seats": "3"}, "seats"),
        ({"expires": "soon"}, "duration"),
        ({"note": 5}, "note"),
    ):
        reply = running.client.call("POST", "/admin/tokens", body)
        assert reply.status == 400, body
        assert fragment in reply.body["error"]
    reply = running.client.call(
        "POST", "/admin/tokens", {"seats": 3, "expires": "7d", "note": "lab"}
    )
    assert reply.status == 201
    assert reply.body["seats"] == 3
    [info] = running.client.call("GET", "/admin/tokens").body["tokens"]
    assert info["note"] == "lab"
    assert "token" not in info
    assert reply.body["token"] not in json.dumps(running.client.call("GET", "/admin/tokens").body)


def test_admin_revoke_unknown_token(running):
    assert running.client.call("POST", f"/admin/tokens/{'a' * 64}/revoke").status == 404


def test_admin_queue_validation(running):
    agent = _registered(running)
    base = f"/admin/agents/{agent['agent_id']}/commands"
    assert running.client.call("POST", base, {"type": "format_disk"}).status == 400
    assert running.client.call("POST", base, {"type": "reboot", "params": []}).status == 400
    assert running.client.call("POST", base, None).status == 400
    missing = "/admin/agents/00000000-0000-4000-8000-000000000000/commands"
    assert running.client.call("POST", missing, {"type": "reboot"}).status == 404
    assert (
        running.client.call(
            "GET", "/admin/agents/00000000-0000-4000-8000-000000000000/updates"
        ).status
        == 404
    )


def test_every_admin_route_is_gated_on_the_client_address(running, monkeypatch):
    """Wiring check: with the decision saying 'not loopback', all of /admin answers 403."""
    agent = _registered(running)
    token = running.client.mint()
    monkeypatch.setattr("redflag_devserver.api.rules.is_loopback_address", lambda _host: False)
    agent_path = f"/admin/agents/{agent['agent_id']}"
    for method, path, body in (
        ("GET", "/admin/agents", None),
        ("GET", "/admin/tokens", None),
        ("POST", "/admin/tokens", {"seats": 1}),
        ("POST", f"/admin/tokens/{token}/revoke", None),
        ("POST", f"{agent_path}/commands", {"type": "scan_updates"}),
        ("GET", f"{agent_path}/commands", None),
        ("GET", f"{agent_path}/updates", None),
    ):
        reply = running.client.call(method, path, body)
        assert reply.status == 403, (method, path)
        assert reply.body == {"error": "the admin API answers loopback clients only"}
    # Nothing changed behind the refusals, and the agent API is not gated.
    assert running.client.register(token).status == 200
    assert running.store.list_commands(agent["agent_id"]) == []
    assert len(running.store.list_tokens(running.clock())) == 2
