"""Playbook filters: the rollout health gate and the fleet table."""

from __future__ import annotations

import pytest

HOSTVARS = {
    "ok": {"redflag_agent_outcome": {"status": "registered", "reason": "registered as x"}},
    "wait": {"redflag_agent_outcome": {"status": "waiting-for-token", "reason": "no token"}},
    "bad": {"redflag_agent_outcome": {"status": "rejected", "reason": "invalid token"}},
    "gone": {},
    "check": {"redflag_agent_outcome": {"status": "unverified", "reason": "check mode"}},
}


@pytest.mark.parametrize(
    ("batch", "allow_waiting", "bad_hosts"),
    [
        (["ok", "check"], True, []),
        (["ok", "wait"], True, []),
        (["ok", "wait"], False, ["wait"]),
        (["ok", "bad", "gone"], True, ["bad", "gone"]),
        ([], True, []),
    ],
)
def test_unhealthy(fleet_filters, batch, allow_waiting, bad_hosts):
    bad = fleet_filters.redflag_unhealthy(batch, HOSTVARS, allow_waiting=allow_waiting)
    assert [b["host"] for b in bad] == bad_hosts


def test_unhealthy_says_why(fleet_filters):
    bad = fleet_filters.redflag_unhealthy(["bad", "gone"], HOSTVARS)
    assert bad[0]["text"] == "bad: rejected: invalid token"
    assert "no outcome recorded" in bad[1]["reason"]


def test_table_is_aligned_and_sorted(fleet_filters):
    rows = [
        {
            "host": "web02",
            "registered": False,
            "agent_id": None,
            "agent_version": "0.2.0",
            "config_version": "6",
            "migrations": [],
            "service": "failed (exit 78)",
            "last_checkin": None,
        },
        {
            "host": "db01",
            "registered": True,
            "agent_id": "4f1c",
            "agent_version": "0.2.0",
            "config_version": "6",
            "migrations": ["directory", "config"],
            "service": "active/running",
            "last_checkin": "2026-11-28T21:45:00Z",
        },
    ]
    lines = fleet_filters.redflag_fleet_table(rows).splitlines()
    assert lines[0].split()[:3] == ["HOST", "REGISTERED", "AGENT_ID"]
    assert [line.split()[0] for line in lines[1:]] == ["db01", "web02"]
    col = lines[0].index("AGENT_ID")
    assert lines[1][col:].startswith("4f1c") and lines[2][col:].startswith("-")
    assert "directory,config" in lines[1] and "failed (exit 78)" in lines[2]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "ActiveState=active\nSubState=running\n",
            {"ActiveState": "active", "SubState": "running"},
        ),  # noqa: E501
        ("ExecMainStatus=78\nnoise\n", {"ExecMainStatus": "78"}),
        ("", {}),
        ("Description=a=b", {"Description": "a=b"}),
    ],
)
def test_systemd_props(fleet_filters, text, expected):
    assert fleet_filters.redflag_systemd_props(text) == expected
