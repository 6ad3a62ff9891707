"""redflag_agent_service's health gate after a (re)start: checked in since, not only
registered (gate_checkin, checked_in_since), and the rollback's reset-failed (plan)."""

from __future__ import annotations

import calendar
import time

import pytest

SINCE = calendar.timegm((2026, 12, 2, 10, 0, 0, 0, 0, 0)) + 0.6  # 10:00:00.6 UTC
AT_START = "2026-12-02T10:00:00Z"  # the second of the start
BEFORE = "2026-12-02T09:55:00Z"  # the old process's last check-in
LATER = "2026-12-02T10:00:01Z"


@pytest.mark.parametrize(
    ("last", "before", "ok"),
    [
        (LATER, BEFORE, True),
        (AT_START, BEFORE, True),  # same second, new stamp: the new process
        (AT_START, AT_START, False),  # same second, same stamp: the old process's
        (BEFORE, BEFORE, False),  # nothing new since the start
        ("2026-12-02T09:59:59Z", None, False),  # before the start
        (None, None, False),
        ("", None, False),
        ("yesterday", None, False),
        (1733133600, None, False),  # not the agent's format
    ],
)
def test_checked_in_since(service_module, last, before, ok):
    assert service_module.checked_in_since(last, SINCE, before) is ok


def unit(active="active", sub="running", code=0):
    return {"ActiveState": active, "SubState": sub, "ExecMainStatus": str(code)}


REG = {"registered": True, "agent_id": "a-1", "last_checkin": LATER, "last_error": None}
NO_CHECKIN = {**REG, "last_checkin": BEFORE, "last_error": "check-in: connection refused"}
NEVER = {**REG, "last_checkin": None}
STOPPED_78 = unit("failed", "failed", 78)


def crashed(code):
    """The main process exited; systemd waits RestartSec before the next start."""
    return unit("activating", "auto-restart", code)


@pytest.mark.parametrize(
    ("state", "status", "props", "since", "want", "fragment"),
    [
        # checked in after the start: healthy, and the reason says when
        ("registered", REG, unit(), SINCE, "registered", f"checked in at {LATER}"),
        # registered and active but no check-in since: keep polling, say why
        ("registered", NO_CHECKIN, unit(), SINCE, "pending", "connection refused"),
        ("registered", NEVER, unit(), SINCE, "pending", "last check-in never"),
        # exited after the start, systemd will restart it: fail now, not at the timeout
        ("pending", REG, crashed(1), SINCE, "failed", "exited with status 1"),
        ("pending", REG, crashed(0), SINCE, "failed", "status 0"),
        # lock held (75): systemd's next start may succeed; keep polling
        ("pending", REG, crashed(75), SINCE, "pending", "as decided"),
        # other answers of decide() pass through
        ("rejected", REG, unit("failed", "failed", 77), SINCE, "rejected", "as decided"),
        ("waiting-for-token", {}, STOPPED_78, SINCE, "waiting-for-token", "as decided"),
        ("pending", None, unit(), SINCE, "pending", "as decided"),
        # nothing was (re)started by this run: registered and active is enough, as before
        ("registered", NO_CHECKIN, unit(), None, "registered", "as decided"),
        ("pending", REG, crashed(1), None, "pending", "as decided"),
    ],
)  # fmt: skip
def test_gate_checkin(service_module, state, status, props, since, want, fragment):  # noqa: PLR0917
    got, reason = service_module.gate_checkin(state, "as decided", status, props, since, BEFORE)
    assert (got, fragment in reason) == (want, True), reason


def test_gate_names_the_start_time(service_module):
    _state, reason = service_module.gate_checkin("registered", "", NO_CHECKIN, unit(), SINCE, None)
    assert "since the start at 2026-12-02T10:00:00Z" in reason
    assert time.strftime("%Y", time.gmtime(SINCE)) == "2026"


@pytest.mark.parametrize(
    ("restart", "reset_failed", "actions"),
    [
        (True, True, ["reset-failed", "restart"]),
        (True, False, ["restart"]),
        (False, True, []),  # nothing to restart: nothing to reset either
    ],
)
def test_plan_resets_the_failed_state_before_a_rollback_restart(
    service_module, restart, reset_failed, actions
):
    unit_state = {"ActiveState": "active", "UnitFileState": "enabled", "NeedDaemonReload": "no"}
    assert service_module.plan(unit_state, False, restart, True, reset_failed) == actions
