"""What `migrate` tells the operator when a phase fails: the exact message (attempt N of 3, or
given up and where the originals are; rolled back or not; whether the agent can start), the
report's fields and what is recorded for the next start. Written to kill the mutants that
survived `make mutate` on migration/executor.py (docs/MUTATION.md)."""

from __future__ import annotations

import os

import pytest

from redflag_agent import migration
from redflag_agent.migration import executor
from redflag_agent.migration import litter as littermod
from redflag_agent.migration.backup import RestoreError, list_backups
from redflag_agent.migration.faults import FAULT_ENV
from redflag_agent.migration.model import MAX_ATTEMPTS

from .migration_fixtures import (
    contents,
    make_legacy,
    make_v0119,
    quiet_logger,
    read_json,
)

ENOSPC = "[Errno 28] No space left on device (injected at config)"
# made before the backup (it lives in the second): a rollback leaves them, empty of anything else
OURS = {"etc/redflag-agent", "var/lib/redflag-agent"}
RETRY = ("gave up after 3 attempts; the agent will not retry it on its own: fix the cause, "
         "then run `redflag-agent migrate --retry-failed` as root")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv("container", raising=False)
    monkeypatch.delenv(FAULT_ENV, raising=False)


def _run(paths, **environ):
    return migration.execute(paths, quiet_logger(), environ=environ)


def test_a_failed_phase_is_rolled_back_counted_then_given_up(tmp_root):
    make_legacy(tmp_root)
    before = contents(tmp_root.root)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        report = _run(tmp_root, **{FAULT_ENV: "config:enospc"})
        name = list_backups(tmp_root)[-1]
        assert (report.ok, report.failed_phase, report.backup, report.config_usable) == (
            False, "config", name, False)
        assert report.phases_planned == ["directory", "config", "security"]
        after = {k: v for k, v in contents(tmp_root.root).items() if k not in OURS}
        assert after == before  # rolled back, every time
        state = read_json(tmp_root.migration_state_file)
        assert state["completed"] == [] and "in_progress" not in state
        assert state["failures"]["config"]["attempts"] == attempt
        assert state["failures"]["config"]["reason"] == ENOSPC
        if attempt < MAX_ATTEMPTS:
            assert report.message == (
                f"migration phase 'config' failed: {ENOSPC}; attempt {attempt} of "
                f"{MAX_ATTEMPTS}; it is retried at the next start; and there is no usable "
                f"config in {tmp_root.config_file}")
        else:
            assert report.message == (
                f"migration phase 'config' failed: {ENOSPC}; {RETRY}; the originals are in "
                f"{tmp_root.backups_dir / name}; and there is no usable config in "
                f"{tmp_root.config_file}")
    # given up: no further attempt, and the report says what blocks it
    blocked = _run(tmp_root)
    assert (blocked.ok, blocked.failed_phase, blocked.phases_planned) == (False, "config", [])
    assert blocked.message.startswith("migration phase 'config' failed 3 times (last: ")


def test_a_failure_beside_a_usable_config_says_the_agent_starts_with_it(tmp_root):
    make_v0119(tmp_root)
    report = _run(tmp_root, **{FAULT_ENV: "security:enospc"})
    assert report.failed_phase == "security" and report.config_usable is False
    # the 0.1.19 host had no config of ours: nothing usable after the rollback either
    assert report.message.endswith(f"and there is no usable config in {tmp_root.config_file}")


def test_a_rollback_that_cannot_finish_keeps_the_intent_and_says_so(tmp_root, monkeypatch):
    make_legacy(tmp_root)

    def broken(*_a, **_k):
        raise RestoreError("restore from X incomplete: disk gone")

    monkeypatch.setattr(executor, "restore", broken)
    report = _run(tmp_root, **{FAULT_ENV: "config:enospc"})
    assert report.message == (
        f"migration phase 'config' failed: {ENOSPC}; rollback incomplete: restore from X "
        "incomplete: disk gone; attempt 1 of 3; it is retried at the next start; starting with "
        "the current config")
    state = read_json(tmp_root.migration_state_file)
    # the next start goes on forward with the same backup
    assert state["in_progress"]["backup"] == report.backup
    assert state["completed"] == ["directory"]


def test_an_exception_without_text_is_named_by_its_type():
    assert executor._reason(ValueError()) == "ValueError"
    assert executor._reason(ValueError("  why  ")) == "why"


@pytest.mark.skipif(os.geteuid() != 0, reason="the hint is for a non-root run")
def test_root_gets_no_hint_to_run_as_root():
    assert executor._root_hint(PermissionError(13, "denied")) == ""


def test_a_failed_litter_removal_is_reported_counted_and_given_up(tmp_root, monkeypatch):
    make_v0119(tmp_root, litter=2)

    def broken(*_a, **_k):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(littermod, "remove", broken)
    first = _run(tmp_root)
    assert (first.ok, first.failed_phase, first.config_usable) == (False, "litter", True)
    assert first.phases_done == ["takeover", "config", "security"]
    assert first.backup == list_backups(tmp_root)[-1]
    assert first.message.startswith("migrated: takeover, config, security; removing the "
                                    "upstream loop's litter failed: ")
    assert first.message.endswith(
        "(attempt 1 of 3, retried at the next start); nothing was rolled back, starting with "
        "the migrated config")
    for _ in range(MAX_ATTEMPTS - 1):
        last = migration.execute(tmp_root, quiet_logger(), environ={}, retry_failed=True)
    assert last.phases_done == []
    assert last.message.startswith("migrated: -; removing the upstream loop's litter failed: ")
    assert last.message.endswith(
        "(attempt 3 of 3, given up: fix the cause, then run `redflag-agent migrate "
        "--retry-failed` as root); nothing was rolled back, starting with the migrated config")
    assert read_json(tmp_root.migration_state_file)["failures"]["litter"]["attempts"] == 3


def test_dry_run_and_blocked_reports(tmp_root):
    make_legacy(tmp_root)
    dry = migration.execute(tmp_root, quiet_logger(), dry_run=True, environ={})
    assert (dry.ok, dry.dry_run, dry.phases_planned, dry.failed_phase, dry.backup) == (
        True, True, ["directory", "config", "security"], None, None)
    assert dry.message.startswith("migration needed: directory, config, security")
    assert not dry.config_usable
    tmp_root.legacy_config_file.write_text("{not json")
    bad = migration.execute(tmp_root, quiet_logger(), dry_run=True, environ={})
    assert (bad.ok, bad.dry_run, bad.failed_phase, bad.phases_planned) == (
        False, True, None, [])
    assert bad.message.startswith("cannot migrate: the legacy config cannot be migrated: ")


def test_a_planted_symlink_is_refused_before_any_change(tmp_root, tmp_path):
    make_legacy(tmp_root)
    target = tmp_path / "elsewhere.json"
    target.write_text("{}")
    tmp_root.legacy_config_file.unlink()
    tmp_root.legacy_config_file.symlink_to(target)
    before = contents(tmp_root.root)
    report = _run(tmp_root)
    assert (report.ok, report.config_usable, report.failed_phase) == (False, False, "directory")
    assert report.phases_planned == ["directory", "security"]
    assert report.message.startswith("migration refused, nothing was changed: ")
    assert str(tmp_root.legacy_config_file) in report.message
    assert contents(tmp_root.root) == before and target.read_text() == "{}"


def test_the_journal_tells_the_rollback_and_a_failure_that_could_not_be_recorded(
        tmp_root, monkeypatch, caplog):
    make_legacy(tmp_root)
    real_save = executor.save_state

    def no_failure_record(paths, state):
        if state.get("failures"):
            raise OSError(28, "No space left on device")
        return real_save(paths, state)

    monkeypatch.setattr(executor, "save_state", no_failure_record)
    caplog.set_level("INFO", logger="test.migration")
    report = _run(tmp_root, **{FAULT_ENV: "config:enospc"})
    lines = [r.getMessage() for r in caplog.records]
    where = tmp_root.backups_dir / report.backup
    assert f"migration phase 'config' failed ({ENOSPC}); restoring from {where}" in lines
    assert "restored everything from before the migration" in lines
    assert (f"could not record the migration failure in {tmp_root.migration_state_file}: "
            "[Errno 28] No space left on device") in lines
    assert lines[-1] == report.message


def test_a_backup_that_cannot_be_taken_is_given_up_without_originals_to_point_at(tmp_root):
    make_legacy(tmp_root)
    for _ in range(MAX_ATTEMPTS):
        report = _run(tmp_root, **{FAULT_ENV: "backup:enospc"})
    assert report.backup is None and report.failed_phase == "directory"
    assert report.message.startswith(
        f"migration phase 'directory' failed: could not take the backup in "
        f"{tmp_root.backups_dir}: ")
    assert report.message.endswith(
        f"; {RETRY}; and there is no usable config in {tmp_root.config_file}")
