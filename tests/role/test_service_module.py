"""redflag_agent_service.decide: one observation -> outcome (table)."""

from __future__ import annotations

import pytest

REG = {"registered": True, "agent_id": "a-1", "last_error": None}
UNREG = {"registered": False, "agent_id": None, "last_error": None}
REJECTED = {
    "registered": False,
    "agent_id": None,
    "last_error": "invalid or expired registration token",
}


def unit(active, sub="", code=0, restarts=0, result="success"):
    return {
        "ActiveState": active,
        "SubState": sub,
        "ExecMainStatus": str(code),
        "NRestarts": str(restarts),
        "Result": result,
    }


@pytest.mark.parametrize(
    ("status", "props", "token_embedded", "state", "fragment"),
    [
        (REG, unit("active", "running"), False, "registered", "a-1"),
        (REG, unit("active", "running"), True, "registered", "a-1"),
        (UNREG, unit("active", "running"), True, "pending", "service active/running"),
        (UNREG, unit("activating", "start-pre"), True, "pending", "activating"),
        (UNREG, unit("activating", "auto-restart", 1, 1), True, "pending", "after exit 1"),
        (
            REJECTED,
            unit("failed", "failed", 77, 0, "exit-code"),
            True,
            "rejected",
            "invalid or expired",
        ),
        (UNREG, unit("failed", "failed", 77), True, "rejected", "mint a new registration token"),
        (
            UNREG,
            unit("failed", "failed", 78, 0, "exit-code"),
            False,
            "waiting-for-token",
            "NOT registered",
        ),
        (UNREG, unit("inactive", "dead", 0, 0), False, "waiting-for-token", "NOT registered"),
        (
            UNREG,
            unit("failed", "failed", 78, 2, "exit-code"),
            False,
            "failed",
            "restarted the agent 2 times",
        ),
        (UNREG, unit("failed", "failed", 78, 0, "exit-code"), True, "failed", "exit 78"),
        (REG, unit("failed", "failed", 78, 0, "exit-code"), False, "failed", "exit 78"),
        (REG, unit("failed", "failed", 1, 0, "exit-code"), False, "failed", "exit 1"),
        (REG, unit("inactive", "dead", 0, 0), False, "failed", "inactive/dead"),
        (None, unit("active", "running"), False, "pending", "no answer"),
    ],
)
def test_decide(service_module, status, props, token_embedded, state, fragment):  # noqa: PLR0917
    got_state, reason = service_module.decide(status, props, token_embedded)
    assert (got_state, fragment in reason) == (state, True), reason


def test_parse_show():
    # The service module's systemctl show parser lives in module_utils now.
    from ansible_collections.redflag.agent.plugins.module_utils.redflag_agent_systemd import (
        parse_show,
    )

    text = "ActiveState=failed\nSubState=failed\nExecMainStatus=78\nNRestarts=0\nbroken line\n"
    assert parse_show(text) == {
        "ActiveState": "failed",
        "SubState": "failed",
        "ExecMainStatus": "78",
        "NRestarts": "0",
    }


def state(active="inactive", enabled="enabled", reload_="no"):
    return {"ActiveState": active, "UnitFileState": enabled, "NeedDaemonReload": reload_}


@pytest.mark.parametrize(
    ("unit_state", "daemon_reload", "restart", "should_run", "actions"),
    [
        # Fresh install: the unit was just written, nothing runs yet.
        (state("inactive", ""), True, True, True, ["daemon-reload", "enable", "restart"]),
        # Re-run, nothing changed, registered and running: nothing to do.
        (state("active"), False, False, True, []),
        # Registered but stopped (someone stopped it): start, no restart.
        (state("failed"), False, False, True, ["start"]),
        # Waiting for a token, nothing changed: left stopped, so re-runs report no change.
        (state("failed"), False, False, False, []),
        # Waiting for a token but the config changed: run once (it stops with 78).
        (state("failed"), False, True, False, ["restart"]),
        # Unit edited on disk behind systemd's back: reload even if the role wrote nothing.
        (state("active", reload_="yes"), False, False, True, ["daemon-reload"]),
        (state("active", "disabled"), False, False, True, ["enable"]),
        (state("activating"), False, False, True, []),
    ],
)
def test_plan(service_module, unit_state, daemon_reload, restart, should_run, actions):  # noqa: PLR0917
    assert service_module.plan(unit_state, daemon_reload, restart, should_run) == actions


def test_poll_delays_back_off_within_the_budget(service_module):
    pauses = service_module.poll_delays(20, 3)
    assert pauses[:5] == [0.25, 0.5, 1.0, 2.0, 3.0]
    assert max(pauses) == 3 and sum(pauses) <= 60
    assert sum(pauses) > 57  # the whole budget is used before giving up


def test_poll_delays_edge_cases(service_module):
    assert service_module.poll_delays(5, 0) == []
    assert service_module.poll_delays(1, 1) == [0.25, 0.5]


@pytest.mark.parametrize(
    ("started", "changed", "stale"),
    [
        (1000.0, 900.0, False),  # started after the last switch: nothing to make up
        (1000.0, 1000.5, False),  # within the slack (same second)
        (1000.0, 1100.0, True),  # switched after it started, restart was lost
        (None, 1100.0, False),  # not running: start/restart rules apply instead
        (1000.0, None, False),
    ],
)
def test_is_stale(service_module, started, changed, stale):
    assert service_module.is_stale(started, changed) is stale


def test_started_at_only_for_a_running_main_process(service_module):
    props = {"ActiveState": "active", "ExecMainPID": "42", "ExecMainStartTimestampMonotonic": "5"}
    assert service_module.started_at(props) is not None
    assert service_module.started_at({**props, "ActiveState": "failed"}) is None
    assert service_module.started_at({**props, "ExecMainPID": "0"}) is None


def test_watched_paths_include_the_migration_unit(service_module):
    # A process older than the migration unit's file predates that unit too: restart it.
    unit, migrate = "/etc/systemd/system/redflag-agent.service", "/etc/x/migrate.service"
    watched = service_module.watched_paths("/opt/redflag-agent/current", unit, migrate)
    assert watched == ["/opt/redflag-agent/current", unit, migrate]
    assert service_module.watched_paths("/c", unit, None) == ["/c", unit]
