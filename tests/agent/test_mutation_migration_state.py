"""migration_state.json as the operator meets it: what an unusable file is reported as, what a
completed or failed migration records, what the host is said to have come from. Written to
kill the mutants that survived `make mutate` on migration/state.py (docs/MUTATION.md)."""

from __future__ import annotations

import errno
import json
import re
import time

import pytest

from redflag_agent.migration import state as st
from redflag_agent.migration.model import PHASES

PHASE_LIST = str(list(PHASES))
FAILURE_SHAPE = "must be {\"attempts\": <int>, \"reason\": <text>} for a known phase"
IN_PROGRESS = "'in_progress' must hold 'backup' (a name) and 'phases' (a list)"

# (id, parsed file, the exact error)
BAD = [
    ("a list", [], "the top level must be a JSON object"),
    ("completed not a list", {"completed": "directory"},
     f"'completed' must be a list of phase names from {PHASE_LIST}"),
    ("completed unknown phase", {"completed": ["directory", "reboot"]},
     f"'completed' must be a list of phase names from {PHASE_LIST}"),
    ("failures a list", {"failures": []}, "'failures' must be an object"),
    ("failure of an unknown phase", {"failures": {"reboot": {"attempts": 1}}},
     f"'failures.reboot' {FAILURE_SHAPE}"),
    ("failure not an object", {"failures": {"config": 3}}, f"'failures.config' {FAILURE_SHAPE}"),
    ("failure attempts text", {"failures": {"config": {"attempts": "3"}}},
     f"'failures.config' {FAILURE_SHAPE}"),
    ("in_progress a list", {"in_progress": []}, IN_PROGRESS),
    ("in_progress without backup", {"in_progress": {"phases": ["config"]}}, IN_PROGRESS),
    ("in_progress without phases", {"in_progress": {"backup": "b"}}, IN_PROGRESS),
    ("in_progress unknown phase", {"in_progress": {"backup": "b", "phases": ["reboot"]}},
     IN_PROGRESS),
    ("migrated_from a number", {"migrated_from": 18}, "'migrated_from' must be a string"),
    ("upstream_layout unknown", {"upstream_layout": "0.3"},
     "'upstream_layout' must be one of ['0.1.18', '0.1.19-0.1.23', '0.2']"),
]


@pytest.mark.parametrize(("raw", "message"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_normalize_names_what_is_wrong(raw, message):
    with pytest.raises(ValueError) as err:
        st.normalize(raw)
    assert str(err.value) == message


GOOD = [
    ("empty object", {}, {"format": 1, "completed": [], "failures": {}}),
    ("completed put in run order, duplicates gone",
     {"completed": ["security", "directory", "security"]},
     {"format": 1, "completed": ["directory", "security"], "failures": {}}),
    ("an older format number is kept", {"format": 0, "completed": []},
     {"format": 0, "completed": [], "failures": {}}),
    ("in_progress null is dropped", {"in_progress": None},
     {"format": 1, "completed": [], "failures": {}}),
    ("a valid record passes whole",
     {"completed": ["takeover"], "failures": {"config": {"attempts": 2, "reason": "x"}},
      "in_progress": {"backup": "b", "phases": ["config"]}, "migrated_from": "0.2.4",
      "upstream_layout": "0.2", "unknown": True},
     {"format": 1, "completed": ["takeover"],
      "failures": {"config": {"attempts": 2, "reason": "x"}},
      "in_progress": {"backup": "b", "phases": ["config"]}, "migrated_from": "0.2.4",
      "upstream_layout": "0.2", "unknown": True}),
]


@pytest.mark.parametrize(("raw", "expected"), [c[1:] for c in GOOD], ids=[c[0] for c in GOOD])
def test_normalize_keeps_a_valid_record(raw, expected):
    before = json.dumps(raw, sort_keys=True)
    assert st.normalize(raw) == expected
    assert json.dumps(raw, sort_keys=True) == before  # the caller's copy is not touched


def test_load_state_reports_an_unusable_file_with_its_path(tmp_root):
    assert st.load_state(tmp_root) == (st.empty_state(), None)
    tmp_root.migration_state_file.parent.mkdir(parents=True, exist_ok=True)
    tmp_root.migration_state_file.write_text('{"completed": "x"}')
    state, error = st.load_state(tmp_root)
    assert state == {"format": 1, "completed": [], "failures": {}}
    assert error == (f"{tmp_root.migration_state_file}: unusable ('completed' must be a list of "
                     f"phase names from {PHASE_LIST}); it is treated as empty and set aside at "
                     "the next migration")
    tmp_root.migration_state_file.write_text("[" * 100_000)
    assert st.load_state(tmp_root)[1] == (
        f"{tmp_root.migration_state_file}: unusable (nested too deeply); it is treated as "
        "empty and set aside at the next migration")
    tmp_root.migration_state_file.write_text('{"completed": ["config"]}')
    assert st.load_state(tmp_root) == ({"format": 1, "completed": ["config"], "failures": {}},
                                       None)


def test_load_state_reports_an_unreadable_file(tmp_root, monkeypatch):
    # root reads a 0000 file, so the read error is injected
    def denied(*_a, **_k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(st.safefs, "read_bytes", denied)
    assert st.load_state(tmp_root) == (
        st.empty_state(), f"{tmp_root.migration_state_file}: cannot read: Permission denied")


def test_load_state_refuses_a_planted_symlink(tmp_root, tmp_path):
    target = tmp_path / "elsewhere.json"
    target.write_text('{"completed": ["config"]}')
    tmp_root.migration_state_file.parent.mkdir(parents=True, exist_ok=True)
    tmp_root.migration_state_file.symlink_to(target)
    state, error = st.load_state(tmp_root)
    assert state == st.empty_state() and error and str(tmp_root.migration_state_file) in error


def test_set_aside_keeps_the_corrupt_file_under_a_stamped_name(tmp_root):
    assert st.set_aside_corrupt(tmp_root) is None  # nothing there
    tmp_root.migration_state_file.parent.mkdir(parents=True, exist_ok=True)
    tmp_root.migration_state_file.write_text("not json")
    name = st.set_aside_corrupt(tmp_root)
    assert name and re.fullmatch(r"migration_state\.json\.corrupt-\d{8}T\d{6}Z", name)
    assert (tmp_root.migration_state_file.parent / name).read_text() == "not json"
    assert not tmp_root.migration_state_file.exists()
    tmp_root.migration_state_file.mkdir()  # not a file: left alone
    assert st.set_aside_corrupt(tmp_root) is None and tmp_root.migration_state_file.is_dir()


def test_save_state_is_0600_json(tmp_root):
    tmp_root.migration_state_file.parent.mkdir(parents=True, exist_ok=True)
    st.save_state(tmp_root, {"format": 1, "completed": ["config"], "failures": {}})
    assert json.loads(tmp_root.migration_state_file.read_text())["completed"] == ["config"]
    assert tmp_root.migration_state_file.stat().st_mode & 0o777 == 0o600


def test_record_completed_orders_stamps_and_clears_the_failure():
    before = {"format": 1, "completed": ["security"],
              "failures": {"config": {"attempts": 2, "reason": "x"}, "security": {"attempts": 1}}}
    out = st.record_completed(before, "config")
    assert out["completed"] == ["config", "security"]
    assert out["failures"] == {"security": {"attempts": 1}}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", out["completed_at"]["config"])
    assert before["completed"] == ["security"] and "config" in before["failures"]  # untouched
    again = st.record_completed(out, "config")
    assert again["completed"] == ["config", "security"]


def _failed_state(**extra):
    return {"format": 1, "completed": ["takeover", "directory", "config"],
            "completed_at": {"takeover": "t1", "directory": "t2", "config": "t3"},
            "failures": {"security": {"attempts": 1, "reason": "old"}},
            "in_progress": {"backup": "b", "phases": ["security"]},
            "migrated_from": "0.2.4", "upstream_layout": "0.2", **extra}


# (id, completed before the failed migration, keys expected gone, migrated_from/layout kept)
FAILURES = [
    ("nothing before: the origin goes with the rollback", [],
     {"completed_at", "migrated_from", "upstream_layout", "in_progress"}),
    ("directory before: origin kept", ["directory"], {"in_progress"}),
    ("takeover before: origin kept", ["takeover"], {"in_progress"}),
    ("only litter before: the layout stays, migrated_from goes", ["litter"],
     {"migrated_from", "in_progress", "completed_at"}),
    ("config before: both go", ["config"], {"migrated_from", "upstream_layout", "in_progress"}),
]


@pytest.mark.parametrize(("before", "gone"), [c[1:] for c in FAILURES],
                         ids=[c[0] for c in FAILURES])
def test_record_failure_rolls_the_record_back_with_the_migration(before, gone):
    state = _failed_state()
    out = st.record_failure(state, "security", "ENOSPC", before)
    assert out["completed"] == [p for p in PHASES if p in before]
    assert {k for k in state if k not in out} == gone
    if "completed_at" in out:
        assert out["completed_at"] == {p: t for p, t in state["completed_at"].items()
                                       if p in before}
    failure = out["failures"]["security"]
    assert (failure["attempts"], failure["reason"]) == (2, "ENOSPC")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", failure["last_at"])
    assert state["failures"]["security"]["attempts"] == 1  # the caller's copy is untouched


def test_record_failure_counts_from_one_for_a_new_phase():
    out = st.record_failure(st.empty_state(), "config", "EIO", [])
    assert out["failures"]["config"]["attempts"] == 1 and "completed_at" not in out


RECORDED = [
    ("recorded layout", {"upstream_layout": "0.2", "completed": ["takeover"]}, "0.2"),
    ("migrated by the previous release", {"completed": ["directory"]}, "0.1.18"),
    ("nothing migrated", {"completed": ["config"]}, None),
    ("no completed key", {}, None),
]


@pytest.mark.parametrize(("state", "layout"), [c[1:] for c in RECORDED],
                         ids=[c[0] for c in RECORDED])
def test_recorded_layout(state, layout):
    assert st.recorded_layout(state) == layout


def test_the_set_aside_name_is_stamped_in_utc(tmp_root, monkeypatch):
    # a host clock in another zone must not change the name (the logs say UTC)
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    try:
        tmp_root.migration_state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp_root.migration_state_file.write_text("not json")
        before = time.strftime("%Y%m%dT%H", time.gmtime())
        name = st.set_aside_corrupt(tmp_root)
        stamp = st.utc_now()
        after = time.strftime("%Y%m%dT%H", time.gmtime())
        assert name[len("migration_state.json.corrupt-"):][:11] in (before, after)
        # the completed_at/last_at stamps too
        assert stamp.replace("-", "").replace(":", "")[:11] in (before, after)
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_state_file_gone_before_the_rename_is_nothing_set_aside(tmp_root, monkeypatch):
    tmp_root.migration_state_file.parent.mkdir(parents=True, exist_ok=True)
    tmp_root.migration_state_file.write_text("not json")

    def vanished(*_a, **_k):
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(st.safefs, "rename", vanished)
    assert st.set_aside_corrupt(tmp_root) is None


def test_an_oversized_state_file_is_reported_not_read(tmp_root):
    tmp_root.migration_state_file.parent.mkdir(parents=True, exist_ok=True)
    # valid JSON, but larger than any state file the agent writes (the 1 MiB bound)
    tmp_root.migration_state_file.write_text(" " * (1024 * 1024) + "{}")
    state, error = st.load_state(tmp_root)
    assert state == st.empty_state()
    assert error and str(tmp_root.migration_state_file) in error
