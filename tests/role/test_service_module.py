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


def test_parse_show(service_module):
    text = "ActiveState=failed\nSubState=failed\nExecMainStatus=78\nNRestarts=0\nbroken line\n"
    assert service_module.parse_show(text) == {
        "ActiveState": "failed",
        "SubState": "failed",
        "ExecMainStatus": "78",
        "NRestarts": "0",
    }
