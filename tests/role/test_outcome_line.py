"""Each host's outcome line carries its advice once: `HOST: STATE: reason; next: advice`.

The service module ends its reasons with its own `next: ...`; the gate, the summary and
the role's rescue keep that advice and add the generic one (by state) only to a reason
without one (plugins/filter/redflag_fleet.py: split_next, outcome_line)."""

from __future__ import annotations

import pytest

from conftest import FILTERS, load_source

R = load_source("redflag_rollout", FILTERS / "redflag_rollout.py")

OWN = "the server rejected the agent's token (exit 77): invalid; next: mint a token and re-run"


@pytest.mark.parametrize(
    ("reason", "what", "own"),
    [
        (OWN, "the server rejected the agent's token (exit 77): invalid",
         "mint a token and re-run"),
        ("exit 1: no such file", "exit 1: no such file", ""),
        ("next: nothing to do", "", "nothing to do"),
        ("check mode;next:run without --check", "check mode", "run without --check"),
        # the first `; next:` splits: a second one stays in the advice, nothing is lost
        ("a; next: b; next: c", "a", "b; next: c"),
        # `next` as a word of the reason is not advice
        ("the next check-in failed", "the next check-in failed", ""),
        ("", "", ""),
        (None, "", ""),
    ],
)  # fmt: skip
def test_split_next(fleet_filters, reason, what, own):
    assert fleet_filters.split_next(reason) == (what, own)


@pytest.mark.parametrize(
    ("status", "reason", "step", "line"),
    [
        # the reason's own advice wins over the one given
        ("rejected", OWN, "generic advice",
         "h1: rejected: the server rejected the agent's token (exit 77): invalid; "
         "next: mint a token and re-run"),
        ("failed", "exit 1: boom.", "fix it", "h1: failed: exit 1: boom; next: fix it"),
        # no advice at all: the generic one for the state
        ("failed", "exit 1", "", "h1: failed: exit 1; next: read `journalctl -u redflag-agent` "
         "and `redflag-agent status` on h1 (or run playbooks/status.yml -l h1), fix the cause "
         "named there, then re-run the playbook with -l h1"),
        ("failed", "", "x", "h1: failed: no reason recorded; next: x"),
    ],
)  # fmt: skip
def test_outcome_line(fleet_filters, status, reason, step, line):
    assert fleet_filters.outcome_line("h1", status, reason, step) == line


def test_a_rejected_token_reads_its_advice_once_in_gate_summary_and_rescue(
    fleet_filters, service_module
):
    unit = {"ActiveState": "failed", "SubState": "failed", "ExecMainStatus": "77"}
    state, reason = service_module.decide({"registered": True, "last_error": "gone"}, unit, False)
    assert state == "rejected" and reason.count("next:") == 1
    # the role's rescue (the module failed the task with its outcome)
    record = fleet_filters.redflag_failure_outcome(
        {"msg": "x", "outcome": {"status": state, "reason": reason}}, "Start", "h1"
    )
    assert record["next"] == service_module.NEXT_REJECTED.removeprefix("next: ")
    assert record["text"] == f"h1: rejected: {reason}"
    # the gate and the summary row
    bad = fleet_filters.redflag_unhealthy(["h1"], {"h1": {"redflag_agent_outcome": record}})
    assert bad[0]["text"] == record["text"]
    assert bad[0]["reason"] == reason.split("; next:")[0]
    row = R.redflag_batch_row(1, 1, ["h1"], {}, bad, {"rollback": [], "kept": []}, 1.0)
    lines = R.redflag_summary_table([row], block=False)
    for text in (bad[0]["text"], R.redflag_gate_message(1, [["h1"]], bad, {}, {}), *lines):
        assert text.count("mint a new registration token") <= 1, text
        assert "next step" not in text, text
    assert f"batch 1 of 1: h1: rejected; next: {record['next']}" in lines


def test_every_final_reason_of_the_service_module_keeps_one_next(fleet_filters, service_module):
    units = [
        {"ActiveState": "failed", "SubState": "failed", "ExecMainStatus": code, "NRestarts": n}
        for code in ("77", "78", "1", "0") for n in ("0", "3")
    ]  # fmt: skip
    for unit in units:
        for status in ({"registered": True}, {"registered": False}):
            state, reason = service_module.decide(status, unit, False)
            if state not in ("rejected", "failed"):
                continue
            hostvars = {"h1": {"redflag_agent_outcome": {"status": state, "reason": reason}}}
            text = fleet_filters.redflag_unhealthy(["h1"], hostvars)[0]["text"]
            assert text.count("next:") == 1, text


def test_a_reason_without_advice_gets_the_recorded_or_the_generic_one(fleet_filters):
    hostvars = {
        "a": {"redflag_agent_outcome": {"status": "failed", "reason": "x", "next": "do y"}},
        "b": {"redflag_agent_outcome": {"status": "rejected", "reason": "invalid token"}},
    }
    a, b = fleet_filters.redflag_unhealthy(["a", "b"], hostvars)
    assert a["text"] == "a: failed: x; next: do y"
    assert b["text"].startswith("b: rejected: invalid token; next: mint a new registration token")
    assert b["next"].endswith("when the server deleted a registered agent)")


ARG_ERRORS = {
    "failed": True,
    "msg": "Validation of arguments failed:\nargument 'redflag_agent_check_in_interval' is of "
           "type str and we were unable to convert to int",
    "argument_errors": [
        "argument 'redflag_agent_check_in_interval' is of type str and we were unable to "
        "convert to int: \"'often'\" cannot be converted to an int",
        "argument 'enabled' is of type str found in 'redflag_agent_proxy'. and we were unable "
        "to convert to bool",
    ],
}  # fmt: skip


def test_a_variable_that_fails_the_argument_spec_is_named_with_what_to_do(fleet_filters):
    record = fleet_filters.redflag_failure_outcome(ARG_ERRORS, "Validate the variables", "h1")
    assert record["status"] == "failed"
    assert record["reason"] == (
        f"{fleet_filters.INVALID_VARS}: argument 'redflag_agent_check_in_interval' is of type "
        "str and we were unable to convert to int: \"'often'\" cannot be converted to an int; "
        "argument 'enabled' is of type str found in 'redflag_agent_proxy'. and we were unable "
        "to convert to bool"
    )
    assert record["next"] == (
        "correct redflag_agent_check_in_interval, redflag_agent_proxy for h1 (host_vars, "
        "group_vars or -e; `ansible-doc -t role redflag.agent.redflag_agent` gives each type), "
        "then re-run the playbook with -l h1"
    )
    assert record["text"] == f"h1: failed: {record['reason']}; next: {record['next']}"


@pytest.mark.parametrize(
    ("errors", "names"),
    [(["missing required arguments: x"], "the variables the reason names"),
     (["value of redflag_agent_state must be one of: present, absent, image, got: on"],
      "redflag_agent_state")],
)  # fmt: skip
def test_argument_errors_name_each_variable_once(fleet_filters, errors, names):
    record = fleet_filters.redflag_failure_outcome({"argument_errors": errors}, "V", "h1")
    assert record["next"].startswith(f"correct {names} for h1 ")
