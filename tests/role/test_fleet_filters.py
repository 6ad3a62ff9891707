"""Playbook filters: the rollout health gate and the fleet table."""

from __future__ import annotations

import json

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


def test_unhealthy_says_why_and_what_next(fleet_filters):
    bad = fleet_filters.redflag_unhealthy(["bad", "gone"], HOSTVARS)
    assert bad[0]["text"].startswith("bad: rejected: invalid token; next: mint a new ")
    assert "re-run the playbook with -l bad" in bad[0]["next"]
    assert "no outcome recorded" in bad[1]["reason"]
    assert bad[1]["next"].startswith("check that gone is reachable (ansible gone -m ping)")


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


REJECTED_STATUS = {
    "registered": False, "agent_id": None, "agent_version": "0.2.0", "config_version": "6",
    "migrations_completed": [], "last_checkin": None,
    "last_error": "2026-12-02T03:46:16Z the server rejected the registration token (invalid or "
    "expired registration token). It is invalid, expired, revoked or its seats are used up. Fix: "
    "mint a new token on the server",
    "last_exit_reason": "2026-12-02T03:46:16Z exit 77: token rejected",
}  # fmt: skip
DELETED_STATUS = {
    **REJECTED_STATUS, "registered": True, "agent_id": "7f3e",
    "last_error": "2026-12-02T04:00:00Z the server does not know agent 7f3e any more (agent not "
    "found). Fix: re-enroll this host",
}  # fmt: skip
STOPPED_77 = "ActiveState=failed\nSubState=failed\nExecMainStatus=77\n"
RUNNING = "ActiveState=active\nSubState=running\nExecMainStatus=0\n"


def _cmd(rc=0, stdout="", stderr="", **extra):
    return {"rc": rc, "stdout": stdout, "stderr": stderr, **extra}


@pytest.mark.parametrize(
    ("status_cmd", "unit", "fields"),
    [
        (_cmd(stdout=json.dumps(REJECTED_STATUS)), STOPPED_77,
         {"registered": False, "service": "failed/failed (exit 77)",
          "last_error": "exit 77: token rejected: the server rejected the registration token "
                        "(invalid or expired registration token)"}),
        (_cmd(stdout=json.dumps(DELETED_STATUS)), STOPPED_77,
         {"agent_id": "7f3e", "last_error": "exit 77: token rejected: the server does not know "
                                            "agent 7f3e any more (agent not found)"}),
        # running again: an old exit is history, the error (if any) is not
        (_cmd(stdout=json.dumps({**REJECTED_STATUS, "last_error": None})), RUNNING,
         {"service": "active/running", "last_error": ""}),
        (_cmd(rc=2, stderr="python3: can't open file '/opt/redflag-agent/current/"
                           "redflag-agent.pyz': [Errno 2] No such file or directory"),
         "ActiveState=inactive\nSubState=dead\n",
         {"agent_version": "not installed", "service": "inactive/dead", "last_error": ""}),
        # the command module's words when the interpreter is not there
        (_cmd(rc=2, msg="Error executing command.", cmd="/usr/bin/python3.12 -I x.pyz status"),
         "", {"service": "unknown", "agent_version": "?",
              "last_error": "status --json failed: cannot run /usr/bin/python3.12; set "
                            "redflag_agent_python to the host's python3 3.9+ (empty: python3 on "
                            "PATH)"}),
        (_cmd(rc=78, stderr="redflag-agent: config.json: not valid JSON"), "",
         {"last_error": "status --json failed (exit 78): redflag-agent: config.json: not valid "
                        "JSON"}),
        (_cmd(stdout="[]"), RUNNING, {"last_error": "status --json printed no JSON object"}),
    ],
)  # fmt: skip
def test_status_row(fleet_filters, status_cmd, unit, fields):
    row = fleet_filters.redflag_status_row("h1", status_cmd, {"stdout": unit})
    assert {key: row[key] for key in fields} == fields


@pytest.mark.parametrize(
    ("text", "cell"),
    [
        (None, ""),
        ("2026-12-02T03:46:16Z check-in: connection refused", "check-in: connection refused"),
        ("no stamp. Second sentence", "no stamp"),
        ("version 0.4.1. Fix: upgrade", "version 0.4.1"),  # a dotted number is not a sentence
        ("x" * 200, "x" * 117 + "..."),
    ],
)
def test_short_error(fleet_filters, text, cell):
    assert fleet_filters.short_error(text) == cell


def test_table_has_a_last_error_column_and_a_list_form(fleet_filters):
    rows = [
        fleet_filters.redflag_status_row("web02", _cmd(stdout=json.dumps(REJECTED_STATUS)),
                                         {"stdout": STOPPED_77}),
        fleet_filters.redflag_status_row("db01", _cmd(stdout=json.dumps(
            {**REJECTED_STATUS, "registered": True, "agent_id": "4f1c", "last_error": None})),
            {"stdout": RUNNING}),
    ]  # fmt: skip
    lines = fleet_filters.redflag_fleet_table(rows, block=False)
    assert lines == fleet_filters.redflag_fleet_table(rows).splitlines()
    assert lines[0].endswith("LAST CHECK-IN  LAST ERROR")
    col = lines[0].index("LAST ERROR")
    assert lines[1][col:] == "-"
    assert lines[2][col:].startswith("exit 77: token rejected: the server rejected the ")


FAILED_TASK = "Probe the host (python3 for the agent, systemd, SELinux; read-only)"


@pytest.mark.parametrize(
    ("result", "task", "reason", "next_starts"),
    [
        # the service module classified it: its outcome is kept, with a next step
        ({"msg": "Task failed: Action failed: Unknown error.",
          "outcome": {"status": "rejected", "reason": "the server rejected the token (exit 77)"}},
         "Start the service", "the server rejected the token (exit 77)", "mint a new registration"),
        # Ansible's bare words get the output's last line (sudo missing on the host)
        ({"msg": "non-zero return code", "rc": 127, "stdout": "",
          "stderr": "/bin/sh: 1: sudo: not found\n"},
         FAILED_TASK,
         f"{FAILED_TASK}: non-zero return code (exit 127: /bin/sh: 1: sudo: not found)",
         f"fix what the task '{FAILED_TASK}' reported on h1"),
        ({"msg": "Task failed: Action failed: Unknown error.",
          "outcome": {"status": "pending", "reason": "status --json gave no answer"}},
         "Start the service", "Start the service: Task failed: Action failed: Unknown error. "
         "(status --json gave no answer)", "fix what the task 'Start the service'"),
        ({"msg": "MODULE FAILURE\nSee stdout/stderr for the exact error",
          "module_stderr": "Traceback...\nOSError: [Errno 28] No space left on device"},
         "Install", "Install: MODULE FAILURE See stdout/stderr for the exact error (OSError: "
         "[Errno 28] No space left on device)", "fix what the task 'Install'"),
        # a message that says it all is left alone
        ({"msg": "redflag_agent_server_url is 'ftp://x'; set it to http(s)://HOST[:PORT]"},
         "Check the inputs", "Check the inputs: redflag_agent_server_url is 'ftp://x'; set it "
         "to http(s)://HOST[:PORT]", "fix what the task 'Check the inputs'"),
        ({}, None, "a task: failed", "fix what the task 'a task'"),
    ],
)  # fmt: skip
def test_failure_outcome_names_state_reason_and_next_step(
    fleet_filters, result, task, reason, next_starts
):
    outcome = fleet_filters.redflag_failure_outcome(result, task, "h1")
    assert outcome["reason"] == reason
    assert outcome["status"] in ("rejected", "failed")
    assert outcome["next"].startswith(next_starts)
    assert "-l h1" in outcome["next"]


@pytest.mark.parametrize(
    ("status", "reason", "words"),
    [
        ("rejected", "", ["mint a new registration token", "-l h1", "force_reregister"]),
        ("waiting-for-token", "", ["set redflag_agent_registration_token for h1",
                                   "redflag_rollout_allow_waiting=true"]),
        ("failed", "no outcome recorded (the host failed or was "
         "unreachable before the role finished)", ["ansible h1 -m ping", "-l h1"]),
        ("failed", "no successful check-in", ["journalctl -u redflag-agent", "status.yml -l h1"]),
    ],
)  # fmt: skip
def test_next_step_by_state(fleet_filters, status, reason, words):
    text = fleet_filters.next_step("h1", status, reason)
    for word in words:
        assert word in text
