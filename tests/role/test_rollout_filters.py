"""site.yml's canary rollout decisions (plugins/filter/redflag_rollout.py), as tables."""

from __future__ import annotations

import pytest

from conftest import FILTERS, load_source

R = load_source("redflag_rollout", FILTERS / "redflag_rollout.py")
HOSTS = [f"h{i}" for i in range(1, 11)]


@pytest.mark.parametrize(
    ("canary", "serial", "expected"),
    [
        ("", "20%", ["20%"]),
        (None, 5, [5]),
        (1, "20%", [1, "20%"]),
        ("1", "2", [1, 2]),
        ("10%", 3, ["10%", 3]),
        (" 2 ", "100%", [2, "100%"]),
        (1, [2, "50%"], [1, 2, "50%"]),
    ],
)
def test_serial(canary, serial, expected):
    assert R.redflag_serial(canary, serial) == expected


@pytest.mark.parametrize(
    ("canary", "serial", "names"),
    [
        (0, "20%", "redflag_rollout_canary"),
        ("0%", "20%", "redflag_rollout_canary"),
        ("101%", "20%", "redflag_rollout_canary"),
        ("one", "20%", "redflag_rollout_canary"),
        (-1, "20%", "redflag_rollout_canary"),
        (True, "20%", "redflag_rollout_canary"),
        ("", "0", "redflag_rollout_serial"),
        ("", "x%", "redflag_rollout_serial"),
        ("", [], "redflag_rollout_serial"),
    ],
)
def test_serial_refuses_bad_input_naming_the_variable(canary, serial, names):
    with pytest.raises(Exception, match=names):
        R.redflag_serial(canary, serial)


@pytest.mark.parametrize(
    ("hosts", "serial", "sizes"),
    [
        (HOSTS, [1, "20%"], [1, 2, 2, 2, 2, 1]),
        (HOSTS, ["20%"], [2, 2, 2, 2, 2]),
        (HOSTS, ["10%", 3], [1, 3, 3, 3]),
        (HOSTS, [1, "5%"], [1] * 10),  # 5% of 10 rounds down to 0, at least 1
        (HOSTS, [20], [10]),
        (HOSTS, [1, 2, 3], [1, 2, 3, 3, 1]),
        (HOSTS[:4], [1, 2], [1, 2, 1]),
        (HOSTS[:1], [1, "20%"], [1]),
        ([], [1], []),
        (HOSTS[:3], [], [3]),
    ],
)
def test_batches_are_cut_as_ansible_cuts_them(hosts, serial, sizes):
    batches = R.redflag_batches(hosts, serial)
    assert [len(b) for b in batches] == sizes
    assert [h for b in batches for h in b] == hosts


def _hv(switched=True, previous="0.4.0", version="0.4.1", status="registered"):
    return {
        "redflag_agent__versions": {
            "switched": switched,
            "previous_version": previous,
            "version": version,
        },
        "redflag_agent_outcome": {"status": status, "reason": "r"},
    }


HOSTVARS = {
    "up": _hv(),  # upgraded, healthy
    "bad": _hv(status="failed"),  # upgraded, failed the gate
    "fresh": _hv(previous=None, version="0.4.1", status="failed"),  # first install
    "same": {"redflag_agent__versions": {"skipped": True}, "redflag_agent_outcome": {}},
    "gone": _hv(status="failed"),  # upgraded, then unreachable
}


def bad_of(*hosts):
    return [
        {"host": h, "status": "failed", "next": f"fix {h}", "text": f"{h}: failed: r"}
        for h in hosts
    ]


@pytest.mark.parametrize(
    ("batch", "bad", "reachable", "scope", "rollback", "kept"),
    [
        # a healthy batch: nothing to do
        (["up"], [], ["up"], "batch", [], []),
        # the canary failed on its own
        (["bad"], bad_of("bad"), ["bad"], "batch", ["bad"], []),
        # batch scope: the whole batch goes back, failed or not
        (["up", "bad"], bad_of("bad"), ["up", "bad"], "batch", ["up", "bad"], []),
        # failed scope: only the failed host
        (["up", "bad"], bad_of("bad"), ["up", "bad"], "failed", ["bad"], []),
        # none: nothing, and the failed host is named with the reason
        (["up", "bad"], bad_of("bad"), ["up", "bad"], "none", [], ["bad"]),
        (["up", "bad"], bad_of("bad"), ["up", "bad"], False, [], ["bad"]),
        # a first install has nothing to go back to
        (["fresh", "up"], bad_of("fresh"), ["fresh", "up"], "batch", ["up"], ["fresh"]),
        # the play did not change the version (a config or token problem)
        (["same"], bad_of("same"), ["same"], "batch", [], ["same"]),
        # unreachable: cannot be switched back; named
        (["gone", "bad"], bad_of("gone", "bad"), ["bad"], "batch", ["bad"], ["gone"]),
        # a host with no facts at all (failed before the role ran)
        (["nohost"], bad_of("nohost"), [], "batch", [], ["nohost"]),
    ],
)
def test_rollback_plan(batch, bad, reachable, scope, rollback, kept):  # noqa: PLR0917
    plan = R.redflag_rollback_plan(batch, HOSTVARS, bad, reachable, scope)
    assert [r["host"] for r in plan["rollback"]] == rollback
    assert [k["host"] for k in plan["kept"]] == kept


def test_rollback_plan_goes_back_to_the_previous_version_and_says_why_not():
    plan = R.redflag_rollback_plan(["bad", "fresh"], HOSTVARS, bad_of("bad", "fresh"), ["bad"])
    assert plan["rollback"] == [{"host": "bad", "from": "0.4.1", "to": "0.4.0"}]
    assert plan["kept"] == [
        {"host": "fresh", "reason": "no earlier version on this host (first install)"}
    ]


@pytest.mark.parametrize(
    ("value", "scope"),
    [("batch", "batch"), ("FAILED", "failed"), ("none", "none"), (True, "batch"),
     (False, "none"), ("false", "none"), ("yes", "batch")],
)  # fmt: skip
def test_rollback_scope(value, scope):
    assert R.rollback_scope(value) == scope


def test_rollback_scope_refuses_other_values():
    with pytest.raises(Exception, match="redflag_rollout_rollback is 'all'"):
        R.rollback_scope("all")


def _rolled(status="healthy", seconds=3.2):
    return {"status": status, "reason": "registered as a-1", "seconds": seconds, "agent_id": "a-1"}


def test_batch_row_counts_changed_healthy_and_rollbacks():
    hostvars = {
        "c1": {**_hv(status="failed"), "redflag_agent__service": {"changed": True},
               "redflag_agent_rollback_result": _rolled()},
        "c2": {"redflag_agent__service": {"changed": False},
               "redflag_agent_outcome": {"status": "registered"}},
        "c3": {**_hv(), "redflag_agent__versions": {"changed": True, "switched": True,
                                                   "previous_version": "0.4.0",
                                                   "version": "0.4.1"}},
    }  # fmt: skip
    bad = bad_of("c1")
    plan = R.redflag_rollback_plan(["c1", "c2", "c3"], hostvars, bad, ["c1", "c2"], "failed")
    row = R.redflag_batch_row(2, 3, ["c1", "c2", "c3"], hostvars, bad, plan, 12.345)
    assert row == {
        "batch": "2 of 3",
        "hosts": ["c1", "c2", "c3"],
        "changed": ["c1", "c3"],
        "healthy": ["c2", "c3"],
        "rolled_back": [{"host": "c1", "status": "healthy"}],
        "seconds": 12.3,
        "result": "STOPPED",
        "notes": ["c1: failed; next: fix c1"],
    }


def test_batch_row_of_a_passed_batch():
    row = R.redflag_batch_row(1, 1, ["up"], HOSTVARS, [], {"rollback": [], "kept": []}, 1)
    assert (row["result"], row["healthy"], row["rolled_back"]) == ("passed", ["up"], [])


def test_a_planned_rollback_without_a_result_is_a_failure():
    plan = {"rollback": [{"host": "bad", "from": "0.4.1", "to": "0.4.0"}], "kept": []}
    row = R.redflag_batch_row(1, 2, ["bad"], HOSTVARS, bad_of("bad"), plan, 1)
    assert row["rolled_back"] == [{"host": "bad", "status": "failed"}]


def test_pending_rows_are_the_batches_not_started():
    rows = R.redflag_pending_rows([["a"], ["b", "c"], ["d"]], 1)
    assert [(r["batch"], r["hosts"], r["result"]) for r in rows] == [
        ("2 of 3", ["b", "c"], "not started"),
        ("3 of 3", ["d"], "not started"),
    ]


def test_summary_table():
    rows = [
        {"batch": "1 of 3", "hosts": ["c1"], "changed": ["c1"], "healthy": [],
         "rolled_back": [{"host": "c1", "status": "healthy"}], "seconds": 21.04,
         "result": "STOPPED"},
        *R.redflag_pending_rows([["c1"], ["c2", "c3"], ["c4"]], 1),
    ]  # fmt: skip
    rows[0]["notes"] = ["c1: failed; next: fix c1"]
    lines = [
        "BATCH   RESULT       HOSTS  CHANGED  HEALTHY  ROLLED BACK  SECONDS",
        "1 of 3  STOPPED      c1     1/1      0/1      c1(healthy)  21.0",
        "2 of 3  not started  c2,c3  -        -        -            -",
        "3 of 3  not started  c4     -        -        -            -",
        "batch 1 of 3: c1: failed; next: fix c1",
        "the rollout stops here (batch 1 of 3 failed); not started: c2, c3, c4 (untouched); "
        "fix the hosts named above and re-run the playbook",
    ]
    assert R.redflag_summary_table(rows).splitlines() == lines
    # Any other result format than YAML: a list, which prints one line per entry.
    assert R.redflag_summary_table(rows, block=False) == lines


def test_summary_of_a_rollout_that_passed_says_what_next():
    rows = [R.redflag_batch_row(1, 1, ["up"], HOSTVARS, [], {"rollback": [], "kept": []}, 1)]
    assert R.redflag_summary_table(rows, block=False)[-1] == (
        "all 1 batches passed; next: playbooks/status.yml shows each agent"
    )


def test_gate_message_names_failures_rollbacks_their_health_and_the_untouched():
    hostvars = {**HOSTVARS, "bad": {**HOSTVARS["bad"], "redflag_agent_rollback_result": _rolled()}}
    bad = [{"host": "bad", "text": "bad: failed: no successful check-in since the start"},
           {"host": "fresh", "text": "fresh: failed: exit 1"}]  # fmt: skip
    plan = R.redflag_rollback_plan(["bad", "fresh"], hostvars, bad, ["bad", "fresh"])
    text = R.redflag_gate_message(1, [["bad", "fresh"], ["c2"], ["c3"]], bad, plan, hostvars)
    assert text.startswith(
        "rollout stopped at batch 1 of 3: hosts bad, fresh failed the health gate: "
        "bad: failed: no successful check-in since the start; fresh: failed: exit 1."
    )
    assert "Rollback to the version each ran before: bad 0.4.1 -> 0.4.0: healthy, 3.2 s" in text
    assert "Not rolled back: fresh: no earlier version on this host (first install)." in text
    assert text.endswith("Later batches were not touched (c2, c3); fix the cause named above "
                         "and re-run.")  # fmt: skip


def test_gate_message_without_rollback_and_on_the_last_batch():
    plan = R.redflag_rollback_plan(["same"], HOSTVARS, bad_of("same"), ["same"])
    text = R.redflag_gate_message("2", [["x"], ["same"]], bad_of("same"), plan, HOSTVARS)
    assert "No host was rolled back." in text
    assert "This was the last batch" in text


def test_a_gate_under_tags_without_the_service_step_counts_reachable_hosts_unverified():
    fleet = load_source("redflag_fleet", FILTERS / "redflag_fleet.py")
    hostvars = {"staged": {"redflag_agent__versions": {"switched": True}}, "gone": {}}
    batch = ["staged", "gone"]
    assert [b["host"] for b in fleet.redflag_unhealthy(batch, hostvars)] == ["staged", "gone"]
    skipped = fleet.redflag_unhealthy(batch, hostvars, service_skipped=True, reachable=["staged"])
    assert [b["host"] for b in skipped] == ["gone"]


def _ansible_runs(tags, only, skip):
    """Ansible's own tag rule (Taggable.evaluate_tags), on a stand-in task."""
    from types import SimpleNamespace

    from ansible.playbook.taggable import Taggable

    task = SimpleNamespace(
        tags=list(tags), _loader=None, untagged=Taggable.untagged,
        _get_all_taggable_objects=lambda: [],
    )  # fmt: skip
    return Taggable.evaluate_tags(task, set(only), set(skip), {})


TAG_CHOICES = [[], ["all"], ["tagged"], ["untagged"], ["always"], ["never"],
               ["redflag_agent_service"], ["redflag_agent_install", "always"],
               ["service"], ["all", "redflag_agent_service"]]  # fmt: skip


@pytest.mark.parametrize(
    "task_tags",
    [[], ["always"], ["redflag_agent_service"], ["redflag_agent_install", "redflag_agent_takeover"],
     ["never"], ["never", "redflag_agent_service"], ["redflag_agent_preflight", "always"]],
)  # fmt: skip
@pytest.mark.parametrize("only", TAG_CHOICES)
@pytest.mark.parametrize("skip", TAG_CHOICES[:7])
def test_task_runs_is_ansibles_own_rule(task_tags, only, skip):
    assert R.task_runs(task_tags, only, skip) == _ansible_runs(task_tags, only, skip)


@pytest.mark.parametrize(
    ("run_tags", "skip_tags", "skipped"),
    [
        (["all"], [], False),  # no --tags
        (["redflag_agent_service"], [], False),
        (["redflag_agent_configure", "redflag_agent_service"], [], False),
        (["tagged"], [], False),
        (["service"], [], True),  # the old name selects nothing of the role now
        (["redflag_agent_install"], [], True),
        (["always"], [], True),
        (["all"], ["redflag_agent_service"], True),
        (["all"], ["redflag_agent_install", "redflag_agent_configure"], False),
        (["all"], ["all"], True),
        (["redflag_agent_service"], ["redflag_agent_service"], True),
    ],
)
def test_service_skipped_under_tags(run_tags, skip_tags, skipped):
    assert R.redflag_service_skipped(run_tags, skip_tags) is skipped


@pytest.mark.parametrize("skip_tags", [["always"], ["tagged"], ["redflag_agent_install", "always"]])
def test_serial_refuses_skip_tags_that_would_skip_the_gate(skip_tags):
    with pytest.raises(Exception, match="would skip site.yml's batch counter, health gate"):
        R.redflag_serial("", "20%", skip_tags=skip_tags)


@pytest.mark.parametrize(
    ("run_tags", "skip_tags", "names"),
    [(["service"], [], "redflag_agent_service"),
     (["all"], ["install", "configure"], "redflag_agent_install, redflag_agent_configure"),
     (["redflag_agent_service", "preflight"], [], "redflag_agent_preflight")],
)  # fmt: skip
def test_serial_refuses_the_old_tag_names(run_tags, skip_tags, names):
    with pytest.raises(Exception, match="the role's tags carry its name now; use " + names):
        R.redflag_serial("", "20%", skip_tags=skip_tags, run_tags=run_tags)


@pytest.mark.parametrize(
    ("run_tags", "skip_tags"),
    [(["all"], []), ([], []), (["all"], ["all"]), (["all"], ["redflag_agent_service"]),
     (["redflag_agent_service"], ["untagged"]), (["my_own_tag"], [])],
)  # fmt: skip
def test_serial_takes_tags_that_leave_the_gate(run_tags, skip_tags):
    assert R.redflag_serial(1, "20%", skip_tags=skip_tags, run_tags=run_tags) == [1, "20%"]


def test_gate_message_gives_a_next_step_for_a_rollback_that_did_not_come_back():
    refused = {"status": "refused", "reason": "config schema 7", "version": "0.4.1"}
    hostvars = {**HOSTVARS, "bad": {**HOSTVARS["bad"], "redflag_agent_rollback_result": refused}}
    plan = R.redflag_rollback_plan(["bad"], hostvars, bad_of("bad"), ["bad"])
    text = R.redflag_gate_message(1, [["bad"]], bad_of("bad"), plan, hostvars)
    assert "bad 0.4.1 -> 0.4.0: refused (config schema 7); next: bad runs 0.4.1: fix" in text
    healthy = {**HOSTVARS["bad"], "redflag_agent_rollback_result": _rolled()}
    text = R.redflag_gate_message(1, [["bad"]], bad_of("bad"), plan, {**hostvars, "bad": healthy})
    assert "healthy, 3.2 s (registered as a-1)." in text
