"""Table tests for the pure decisions: parsing, validation, token and client judgements."""

from __future__ import annotations

import pytest

from redflag_devserver import render, rules
from redflag_devserver.ratelimit import decide
from redflag_devserver.server import bind_refusal

ANY_V4 = "0.0.0.0"  # noqa: S104 - the address the checks must refuse


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("10m", 600), ("24h", 86400), ("7d", 604800), ("45", 45), (" 2h ", 7200)],
)
def test_parse_duration(text, seconds):
    assert rules.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "0s", "-5s", "1w", "1.5h", "h", "10 minutes", "1h30m"])
def test_parse_duration_rejects(text):
    with pytest.raises(rules.InvalidInput, match="30s, 10m, 24h, 7d|greater than zero"):
        rules.parse_duration(text)


@pytest.mark.parametrize(
    ("text", "expected"), [("5/60", (5, 60)), ("1/1m", (1, 60)), ("100/1", (100, 1))]
)
def test_parse_rate_limit(text, expected):
    assert rules.parse_rate_limit(text) == expected


@pytest.mark.parametrize("text", ["", "5", "0/60", "x/60", "5/", "5/0", "-1/60", "5/60/2"])
def test_parse_rate_limit_rejects(text):
    with pytest.raises(rules.InvalidInput):
        rules.parse_rate_limit(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("[::1]:9000", ("::1", 9000)),
        ("localhost:80", ("localhost", 80)),
    ],
)
def test_parse_listen(text, expected):
    assert rules.parse_listen(text) == expected


@pytest.mark.parametrize("text", ["", "8080", ":8080", "127.0.0.1:", "127.0.0.1:99999", "h:p"])
def test_parse_listen_rejects(text):
    with pytest.raises(rules.InvalidInput, match="HOST:PORT"):
        rules.parse_listen(text)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("localhost", True),
        (ANY_V4, False),
        ("10.0.0.5", False),
        ("192.168.1.2", False),
        ("::", False),
        ("::ffff:10.0.0.1", False),
        ("fe80::1%eth0", False),
        ("example.org", False),
        ("", False),
    ],
)
def test_is_loopback_address(host, loopback):
    """The admin API's gate: only loopback clients get an answer."""
    assert rules.is_loopback_address(host) is loopback


@pytest.mark.parametrize(
    ("host", "allow_remote", "refused"),
    [
        ("127.0.0.1", False, False),
        ("::1", False, False),
        (ANY_V4, False, True),
        ("10.1.2.3", False, True),
        (ANY_V4, True, False),
    ],
)
def test_bind_refusal(host, allow_remote, refused):
    reason = bind_refusal(host, allow_remote)
    assert (reason is not None) is refused
    if refused:
        assert "--allow-remote" in reason


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, (None, None)),
        ("", (None, None)),
        ("Bearer abc", ("abc", None)),
        ("bearer abc", ("abc", None)),
        ("Bearer  abc ", ("abc", None)),
        ("Basic abc", (None, "bad")),
        ("Bearer", (None, "bad")),
        ("Bearer a b", (None, "bad")),
        ("abc", (None, "bad")),
    ],
)
def test_bearer_token(header, expected):
    token, error = rules.bearer_token(header)
    assert token == expected[0]
    assert (error is not None) == (expected[1] == "bad")


NOW = 1_000_000.0


@pytest.mark.parametrize(
    ("state", "refusal", "status"),
    [
        (rules.TokenState(1, 0, NOW + 1, False), None, "active"),
        (rules.TokenState(10, 9, NOW + 1, False), None, "active"),
        (rules.TokenState(10, 10, NOW + 1, False), "all seats used", "used"),
        (rules.TokenState(1, 0, NOW, False), "token expired", "expired"),
        (rules.TokenState(1, 1, NOW - 1, False), "token expired", "expired"),
        (rules.TokenState(1, 0, NOW + 1, True), "token revoked", "revoked"),
        (rules.TokenState(1, 1, NOW - 1, True), "token revoked", "revoked"),
    ],
)
def test_token_refusal(state, refusal, status):
    assert rules.token_refusal(state, NOW) == refusal
    assert rules.token_status(state, NOW) == status


def test_validate_registration_keeps_optional_fields():
    reg = rules.validate_registration(
        {
            "hostname": " h ",
            "os_type": "linux",
            "agent_version": "0.2.0",
            "os_version": "12",
            "metadata": {"migrated_from": "0.1.18"},
            "unknown": 1,
        }
    )
    assert reg.hostname == "h"
    assert reg.os_version == "12"
    assert reg.os_architecture is None
    assert reg.metadata == {"migrated_from": "0.1.18"}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (None, "JSON object"),
        ({}, "hostname, os_type, agent_version"),
        ({"hostname": "h", "os_type": "linux", "agent_version": 2}, "agent_version"),
        (
            {"hostname": "h", "os_type": "linux", "agent_version": "1", "os_version": 12},
            "os_version",
        ),
        ({"hostname": "h", "os_type": "linux", "agent_version": "1", "metadata": []}, "metadata"),
    ],
)
def test_validate_registration_rejects(body, fragment):
    with pytest.raises(rules.InvalidInput, match=fragment):
        rules.validate_registration(body)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (None, rules.CheckIn(None, {}, {})),
        ({}, rules.CheckIn(None, {}, {})),
        (
            {"cpu_percent": 1, "uptime": 5.5, "version": "0.2.0", "other": "kept out"},
            rules.CheckIn("0.2.0", {}, {"cpu_percent": 1, "uptime": 5.5}),
        ),
        (
            {"metadata": {"migrated_from": "0.1.18"}},
            rules.CheckIn(None, {"migrated_from": "0.1.18"}, {}),
        ),
    ],
)
def test_validate_checkin(body, expected):
    assert rules.validate_checkin(body) == expected


@pytest.mark.parametrize(
    "body", [[], {"cpu_percent": True}, {"uptime": "1"}, {"version": 1}, {"metadata": {"a": 1}}]
)
def test_validate_checkin_rejects(body):
    with pytest.raises(rules.InvalidInput):
        rules.validate_checkin(body)


@pytest.mark.parametrize(
    ("command_type", "params", "ok"),
    [
        ("scan_updates", None, True),
        ("reboot", {"delay": 5}, True),
        ("rm_rf", {}, False),
        (None, {}, False),
        ("scan_updates", [], False),
    ],
)
def test_validate_command(command_type, params, ok):
    if ok:
        assert rules.validate_command(command_type, params) == (command_type, params or {})
    else:
        with pytest.raises(rules.InvalidInput):
            rules.validate_command(command_type, params)


@pytest.mark.parametrize(
    ("path", "logged"),
    [
        ("/health", "/health"),
        ("/admin/tokens/abcdef0123/revoke", "/admin/tokens/********/revoke"),
        ("/admin/tokens/abcdef0123", "/admin/tokens/********"),
        ("/admin/tokens", "/admin/tokens"),
        (
            "/api/v1/agents/4edf72fd-1fd6-4400-bc1b-7de223e70641/commands",
            "/api/v1/agents/4edf72fd-1fd6-4400-bc1b-7de223e70641/commands",
        ),
        ("/api/v1/agents/" + "e" * 64 + "/commands", "/api/v1/agents/********/commands"),
        ("/admin/tokens/abcdef0123/revoke/", "/admin/tokens/********/revoke/"),
        ("/api/v1/agents/register?token=secret", "/api/v1/agents/register"),
        ("/x y\n", "/x?y?"),
        ("/" + "/".join(["abcdefghij"] * 30), "/" + "/".join(["abcdefghij"] * 30)[:199] + "..."),
    ],
)
def test_loggable_path(path, logged):
    assert rules.loggable_path(path) == logged


@pytest.mark.parametrize(
    ("history", "now", "allowed", "kept", "retry"),
    [
        ([], 100.0, True, [100.0], 0.0),
        ([50.0, 60.0], 100.0, True, [50.0, 60.0, 100.0], 0.0),
        ([50.0, 60.0, 70.0], 100.0, False, [50.0, 60.0, 70.0], 10.0),
        ([30.0, 60.0, 70.0], 100.0, True, [60.0, 70.0, 100.0], 0.0),
        ([40.0, 60.0, 70.0], 100.0, True, [60.0, 70.0, 100.0], 0.0),
    ],
)
def test_rate_limit_decide(history, now, allowed, kept, retry):
    assert decide(history, now, limit=3, window=60) == (allowed, kept, retry)


def test_agents_table_aligns_columns():
    text = render.agents_table(
        [
            {
                "hostname": "web-1",
                "agent_id": "id-1",
                "agent_version": "0.2.0",
                "status": "active",
                "machine_id": "ab" * 32,
                "last_seen": None,
                "migrated_from": "0.1.18",
                "registered_at": "2026-01-01T00:00:00Z",
            },
            {
                "hostname": "a-much-longer-name",
                "agent_id": "id-2",
                "agent_version": "0.2.0",
                "status": "deregistered",
                "machine_id": None,
                "last_seen": "2026-01-02T00:00:00Z",
                "migrated_from": None,
                "registered_at": "2026-01-01T00:00:00Z",
            },
        ]
    )
    lines = text.splitlines()
    assert lines[0].split() == [
        "HOSTNAME",
        "AGENT_ID",
        "VERSION",
        "STATUS",
        "MACHINE_ID",
        "LAST_SEEN",
        "MIGRATED_FROM",
        "REGISTERED_AT",
    ]
    starts = {line.index("id-") for line in lines[1:]}
    assert starts == {lines[0].index("AGENT_ID")}
    assert lines[1].split()[4] == "ab" * 8  # 16 of the 64 characters
    assert lines[1].split()[5] == "-"
    assert lines[2].split()[4] == "-"
