"""Issue 16: an outcome the service module did not name showed `Action failed: Unknown
error.` (the server down; a stale status record after the token was removed). Every final
outcome and the module's msg name the host, the state and the next step."""

from __future__ import annotations

import json

import pytest

SERVER = "http://127.0.0.1:9"
DOWN = f"2026-12-02T10:00:05Z check-in: server unreachable: {SERVER}: Connection refused"
REG = {"registered": True, "agent_id": "a-1", "server_url": SERVER, "last_error": DOWN,
       "last_checkin": "2026-12-02T09:00:00Z"}  # fmt: skip
ENROLLING = {"registered": False, "agent_id": None, "server_url": SERVER,
             "last_error": "2026-12-02T10:00:05Z registration: server unreachable"}  # fmt: skip
STALE = {"registered": False, "agent_id": None, "registration_token_present": False,
         "last_error": "2026-11-30T08:00:00Z registration: invalid or expired registration token"}


def unit(active, sub="", code=0, restarts=0, result="success"):
    return {"ActiveState": active, "SubState": sub, "ExecMainStatus": str(code),
            "NRestarts": str(restarts), "Result": result}  # fmt: skip


FINAL = [
    (REG, unit("active", "running"), False),
    (STALE, unit("failed", "failed", 77, 0, "exit-code"), False),
    (ENROLLING, unit("failed", "failed", 78, 0, "exit-code"), True),
    (ENROLLING, unit("failed", "failed", 78, 3, "exit-code"), False),
    (ENROLLING, unit("inactive", "dead"), False),
    (REG, unit("failed", "failed", 1, 0, "exit-code"), False),
    (REG, unit("inactive", "dead"), False),
]


@pytest.mark.parametrize(("status", "props", "embedded"), FINAL)
def test_every_final_outcome_message_names_host_state_and_next_step(
    service_module, status, props, embedded
):
    state, reason = service_module.decide(status, props, embedded)
    assert state != "pending"
    msg = service_module.outcome_message("web-1", state, reason)
    assert msg.startswith(f"web-1: {state}: ")
    assert "next:" in msg or "and re-run" in msg, msg


def test_server_down_after_a_restart_names_the_server(service_module):
    # Registered and active, but no check-in since the restart (health gate) until the
    # wait runs out: what was waited for, and to check the server.
    state, reason = service_module.decide(REG, unit("active", "running"), False)
    state, reason = service_module.gate_checkin(
        state, reason, REG, unit("active", "running"), 1796212800.0, REG["last_checkin"]
    )
    assert state == "pending"
    state, reason = service_module.timed_out(reason, REG, unit("active", "running"), 21, 60.0)
    msg = service_module.outcome_message("web-1", state, reason)
    assert state == "failed"
    assert "no successful check-in since the start" in msg
    assert f"next: check that {SERVER} is up and reachable from the host" in msg
    assert "checks in once it answers" in msg


def test_server_down_while_enrolling_names_the_server(service_module):
    props = unit("active", "running")
    state, reason = service_module.decide(ENROLLING, props, True)
    assert state == "pending"
    state, reason = service_module.timed_out(reason, ENROLLING, props, 21, 60.0)
    assert (state, "registers once it answers" in reason, SERVER in reason) == (
        "failed", True, True,
    )  # fmt: skip


def test_status_without_answer_says_how_to_ask(service_module):
    state, reason = service_module.timed_out("gave no answer", None, unit("active"), 3, 1.0)
    assert state == "failed" and "run `redflag-agent status --json` on the host" in reason


def test_crash_loop_points_at_the_journal(service_module):
    props = unit("activating", "auto-restart", 1, 2)
    _state, reason = service_module.decide(REG, props, False)
    _state, reason = service_module.timed_out(reason, REG, props, 3, 1.0)
    assert "next: the agent keeps exiting; see `journalctl -u redflag-agent`" in reason


def test_stale_rejection_is_marked_as_the_last_runs(service_module):
    # The token was removed from the inventory after a rejection: nothing is started, the
    # unit still shows exit 77 and status.json the old error.
    state, reason = service_module.decide(STALE, unit("failed", "failed", 77), False)
    stale = service_module.final_reason(state, reason, acted=False)
    assert state == "rejected"
    assert "invalid or expired registration token" in stale
    assert service_module.STALE_NOTE + "; next: mint a new registration token" in stale
    assert service_module.final_reason(state, reason, acted=True) == reason
    assert service_module.final_reason("registered", "ok", acted=False) == "ok"


# ---- the module's result: msg always set, even on an unexpected error -------------------


class Exited(Exception):
    pass


class FakeModule:
    """AnsibleModule's surface the service module uses; systemctl and the agent scripted."""

    def __init__(self, status, props, **params):
        self.params = {
            "python": "/usr/bin/python3", "pyz": "/opt/x.pyz", "unit": "redflag-agent.service",
            "daemon_reload": False, "restart": True, "should_run": True,
            "current": "/nonexistent/current", "unit_path": "/nonexistent/unit",
            "migrate_unit_path": None, "verify": True, "token_embedded": False,
            "retries": 1, "delay": 0, "host": "web-1", "require_checkin": False,
            "reset_failed": False, "check_dropins": False, "dropins_ignore": [],
            "dropin_dirs": [], **params,
        }  # fmt: skip
        self.check_mode = False
        self.status, self.props = status, props
        self.result: dict = {}
        self.warnings: list[str] = []

    def run_command(self, argv, **_kw):
        if argv[:2] == ["systemctl", "show"]:
            return 0, "\n".join(f"{k}={v}" for k, v in self.props.items()), ""
        if argv[:2] == ["systemctl", "restart"]:
            return (1, "", "Failed to restart: boom") if self.params["host"] == "boom" else (
                0, "", "")
        if "status" in argv:
            if isinstance(self.status, Exception):
                raise self.status
            return (0, json.dumps(self.status), "") if self.status else (1, "", "no python")
        return 0, "", ""

    def exit_json(self, **kw):
        self.result = kw
        raise Exited

    def fail_json(self, **kw):
        self.result = {**kw, "failed": True}
        raise Exited

    def warn(self, msg):
        self.warnings.append(msg)


@pytest.mark.parametrize(
    ("status", "props", "params", "want"),
    [
        (REG, unit("active", "running"), {}, "web-1: registered: registered as a-1"),
        (STALE, unit("failed", "failed", 77), {"restart": False, "should_run": False},
         "(the agent's last run: this run did not start it); next: mint"),
        (None, unit("active", "running"), {}, "run `redflag-agent status --json`"),
        (REG, unit("active", "running"), {"host": "boom"}, "boom: failed: systemctl restart"),
        (OSError("fork failed"), unit("active", "running"), {},
         "web-1: failed: the service step stopped on an unexpected error (OSError: fork failed)"),
    ],
)  # fmt: skip
def test_module_result_always_has_a_named_msg(service_module, status, props, params, want):
    module = FakeModule(status, props, **params)
    with pytest.raises(Exited):
        service_module.run(module) if not isinstance(status, Exception) else (
            _main_with(service_module, module))
    msg = module.result.get("msg", "")
    assert want in msg, msg
    assert "next:" in msg, msg
    if module.result.get("failed"):
        assert module.result["outcome"]["status"] == "failed"


def _main_with(service_module, module):
    """main()'s catch-all around run(), with the fake module in place of AnsibleModule."""
    original = service_module.AnsibleModule
    service_module.AnsibleModule = lambda **_kw: module
    try:
        service_module.main()
    finally:
        service_module.AnsibleModule = original
