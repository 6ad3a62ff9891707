"""What `migrate` tells the operator when a phase fails: the exact message (attempt N of 3, or
given up and where the originals are; rolled back or not; whether the agent can start), the
report's fields and what is recorded for the next start. Written to kill the mutants that
survived `make mutate` on migration/executor.py (docs/MUTATION.md)."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest

from redflag_agent import migration, safefs
from redflag_agent.migration import executor, faults
from redflag_agent.migration import litter as littermod
from redflag_agent.migration.backup import RestoreError, list_backups
from redflag_agent.migration.faults import FAULT_ENV
from redflag_agent.migration.model import MAX_ATTEMPTS

from .migration_fixtures import (
    contents,
    make_fresh_install,
    make_legacy,
    make_litter,
    make_v0119,
    quiet_logger,
    read_json,
)

ENOSPC = "[Errno 28] No space left on device (injected at config)"
# made before the backup (it lives in the second): a rollback leaves them, empty of anything else
OURS = {"etc/redflag-agent", "var/lib/redflag-agent"}
NAME = "20260101T000000Z"
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


# --- the journal an operator reads, kill points taken in-process (os._exit made an exception,
# so mutmut sees which function each test reaches; test_migration_crash.py does it for real)

class _Killed(BaseException):
    """os._exit at a fault point; BaseException, so no `except Exception` catches it."""


def _journal(caplog) -> list[str]:
    """The executor's own lines (the phases' lines are tested with the phases)."""
    return [r.getMessage() for r in caplog.records if r.module == "executor"]


@pytest.fixture
def killable(monkeypatch, caplog):
    def kill(status):
        raise _Killed(status)

    monkeypatch.setattr(faults.os, "_exit", kill)
    caplog.set_level("DEBUG", logger="test.migration")
    return caplog


def _run_killed(paths, fault):
    with pytest.raises(_Killed):
        _run(paths, **{FAULT_ENV: fault})


LEGACY_PHASES = "directory, config, security"


def test_a_clean_migration_tells_what_it_did(tmp_root, killable):
    make_legacy(tmp_root)
    report = _run(tmp_root)
    name = list_backups(tmp_root)[-1]
    origin = read_json(tmp_root.migration_state_file)["migrated_from"]
    assert report.message == f"migrated from {origin}: {LEGACY_PHASES} (backup {name})"
    assert (report.ok, report.backup, report.phases_done, report.phases_planned) == (
        True, name, ["directory", "config", "security"], ["directory", "config", "security"])
    assert _journal(killable) == [f"migrating: {LEGACY_PHASES}",
                                  f"backup taken in {tmp_root.backups_dir / name}",
                                  report.message]


@pytest.mark.parametrize("point, backup_whole, left", [
    ("backup:before", False, LEGACY_PHASES), ("backup:mid", False, LEGACY_PHASES),
    ("backup:after", True, LEGACY_PHASES),
    # killed before its completion was recorded: the phase runs again
    ("directory:after", True, LEGACY_PHASES),
    ("config:before", True, "config, security")])
def test_killed_at_a_point_then_the_next_start_resumes_with_the_same_backup(
        tmp_root, killable, point, backup_whole, left):
    make_legacy(tmp_root)
    before = contents(tmp_root.root)
    _run_killed(tmp_root, point)
    ip = read_json(tmp_root.migration_state_file)["in_progress"]
    name = ip["backup"]
    assert (ip["resumes"], ip["completed_before"], ip["phases"]) == (
        0, [], ["directory", "config", "security"])
    assert ip["started_at"].endswith("Z")
    assert list_backups(tmp_root) == ([name] if backup_whole else [])
    # made before the backup, with the mode the unit's agent user needs
    for d in (tmp_root.config_dir, tmp_root.state_dir):
        assert stat.S_IMODE(d.stat().st_mode) == 0o750
    taken = [f"backup taken in {tmp_root.backups_dir / name}"]
    assert _journal(killable) == [f"migrating: {LEGACY_PHASES}"] + (
        taken if backup_whole else [])
    killable.clear()
    report = _run(tmp_root)
    assert report.ok and report.backup == name and list_backups(tmp_root) == [name]
    state = read_json(tmp_root.migration_state_file)
    assert state["completed"] == ["directory", "config", "security"]
    assert "in_progress" not in state
    # the backup is taken once: a resumed run reuses it
    assert _journal(killable) == [
        f"resuming a migration interrupted earlier (backup {name})",
        f"migrating: {left}"] + ([] if backup_whole else taken) + [report.message]
    assert report.phases_done == left.split(", ")
    # and it holds the host as it was before the first attempt
    assert restore_check(tmp_root, name, before)


def restore_check(paths, name, before):
    from redflag_agent.migration.backup import load_manifest, restore
    restore(paths, name, load_manifest(paths, name))
    return {k: v for k, v in contents(paths.root).items() if k not in OURS} == before


def test_killed_at_every_start_gives_up_and_rolls_back(tmp_root, killable):
    make_legacy(tmp_root)
    before = contents(tmp_root.root)
    for resumes, fault in enumerate(["backup:after", "directory:after", "config:before"]):
        _run_killed(tmp_root, fault)
        assert read_json(tmp_root.migration_state_file)["in_progress"]["resumes"] == resumes
    name = list_backups(tmp_root)[-1]
    killable.clear()
    report = _run(tmp_root)
    why = "the migration was interrupted 3 times (killed or out of memory?) during 'config'"
    assert report.message == (
        f"migration phase 'config' failed: {why}; attempt 1 of 3; it is retried at the next "
        f"start; and there is no usable config in {tmp_root.config_file}")
    assert (report.ok, report.failed_phase, report.backup) == (False, "config", name)
    assert _journal(killable) == [
        f"resuming a migration interrupted earlier (backup {name})",
        "migrating: config, security",
        f"migration phase 'config' failed ({why}); restoring from {tmp_root.backups_dir / name}",
        "restored everything from before the migration",
        report.message]
    assert {k: v for k, v in contents(tmp_root.root).items() if k not in OURS} == before
    state = read_json(tmp_root.migration_state_file)
    assert state["completed"] == [] and state["failures"]["config"]["reason"] == why


def test_a_litter_removal_killed_every_time_is_given_up_without_a_rollback(tmp_root, killable):
    make_v0119(tmp_root, litter=1)
    for _ in range(3):
        _run_killed(tmp_root, "litter:before")
    killable.clear()
    report = _run(tmp_root)
    assert report.message == (
        "migrated: -; removing the upstream loop's litter failed: the litter removal was "
        "interrupted 3 times (killed or out of memory?) (attempt 1 of 3, retried at the next "
        "start); nothing was rolled back, starting with the migrated config")
    assert (report.ok, report.failed_phase, report.config_usable, report.phases_done) == (
        False, "litter", True, [])
    assert report.phases_planned == ["litter"]
    state = read_json(tmp_root.migration_state_file)
    assert state["completed"] == ["takeover", "config", "security"]
    assert state["failures"]["litter"]["attempts"] == 1
    # the next start removes it, and says nothing about where the host came from again
    killable.clear()
    done = _run(tmp_root, **{FAULT_ENV: ""})
    name = done.backup
    assert done.message == (f"migrated: litter (backup {name}); litter: 1 removed, "
                            f"{done.litter['bytes_freed']} bytes freed, 0 kept")
    assert done.litter["removed"] == 1 and done.litter["bytes_freed"] > 0


def test_a_full_upstream_takeover_names_where_it_came_from_and_the_litter(tmp_root, killable):
    make_v0119(tmp_root, litter=2)
    report = _run(tmp_root)
    figures = report.litter
    assert (figures["removed"], figures["kept"]) == (2, 0)
    assert report.message == (
        f"migrated from 0.1.19-0.1.23: takeover, config, security, litter (backup "
        f"{report.backup}); litter: 2 removed, {figures['bytes_freed']} bytes freed, 0 kept")
    assert _journal(killable)[-1] == report.message


def test_old_backups_beyond_the_retention_are_removed_and_said(tmp_root, killable):
    olds = []
    for _ in range(3):
        make_legacy(tmp_root)
        assert _run(tmp_root).ok
        olds.append(list_backups(tmp_root)[-1])
        tmp_root.migration_state_file.unlink()
        for d in (tmp_root.config_dir,):
            shutil.rmtree(d)
    killable.clear()
    make_legacy(tmp_root)
    report = migration.execute(tmp_root, quiet_logger(), environ={}, retention=2)
    assert report.ok
    assert list_backups(tmp_root) == olds[2:] + [report.backup]
    lines = _journal(killable)
    assert [ln for ln in lines if ln.startswith("old ")] == [
        f"old migration backup {n} removed (keeping 2)" for n in olds[:2]]


def test_a_backup_directory_that_cannot_be_pruned_does_not_fail_the_migration(
        tmp_root, killable, monkeypatch):
    make_legacy(tmp_root)

    def broken(*_a, **_k):
        raise OSError(13, "Permission denied")

    monkeypatch.setattr(executor, "prune", broken)
    report = _run(tmp_root)
    assert report.ok
    assert (f"could not prune old migration backups in {tmp_root.backups_dir}: "
            "[Errno 13] Permission denied") in _journal(killable)


def test_an_unusable_state_file_is_set_aside_and_said(tmp_root, killable):
    make_legacy(tmp_root)
    tmp_root.state_dir.mkdir(parents=True, exist_ok=True)
    tmp_root.migration_state_file.write_text("{not json")
    report = _run(tmp_root)
    assert report.ok
    aside = [p for p in tmp_root.state_dir.iterdir()
             if p.name.startswith(tmp_root.migration_state_file.name + ".")]
    assert len(aside) == 1 and aside[0].read_text() == "{not json"
    assert f"unusable migration state set aside as {aside[0].name}" in _journal(killable)


def test_a_refusal_is_in_the_journal(tmp_root, tmp_path, killable):
    make_legacy(tmp_root)
    target = tmp_path / "elsewhere.json"
    target.write_text("{}")
    tmp_root.legacy_config_file.unlink()
    tmp_root.legacy_config_file.symlink_to(target)
    report = _run(tmp_root)
    assert _journal(killable) == [report.message]


def test_a_non_root_run_is_told_to_run_as_root(monkeypatch):
    monkeypatch.setattr(executor.os, "geteuid", lambda: 1000)
    hint = (" (the migration needs root: the unit runs `redflag-agent migrate` as root before "
            "the agent starts; run that by hand)")
    assert executor._root_hint(PermissionError(13, "denied")) == hint
    assert executor._root_hint(OSError(28, "No space left on device")) == ""


def _usable_host_needing_security(paths):
    make_fresh_install(paths, registered=True)
    make_litter(paths, 1)  # the litter phase is planned, and security with it


def test_a_planted_object_met_by_a_phase_leaves_no_usable_config(tmp_root, killable,
                                                                  monkeypatch):
    _usable_host_needing_security(tmp_root)
    assert migration.execute(tmp_root, quiet_logger(), dry_run=True,
                             environ={}).phases_planned == ["security", "litter"]

    def planted(_ctx):
        raise safefs.UnsafePath(tmp_root.config_file, "a symlink", "a regular file")

    monkeypatch.setitem(executor.RUNNERS, "security", planted)
    report = _run(tmp_root)
    # the config is there, but the agent must not start on tampered directories
    assert (report.ok, report.config_usable, report.failed_phase) == (False, False, "security")
    assert report.message.endswith(f"; and there is no usable config in {tmp_root.config_file}")
    # the same when the rollback cannot finish either
    monkeypatch.setattr(executor, "restore", lambda *_a: (_ for _ in ()).throw(
        RestoreError("restore incomplete")))
    again = _run(tmp_root)
    assert (again.ok, again.config_usable) == (False, False)
    assert "; rollback incomplete: restore incomplete; attempt 2 of 3;" in again.message


def test_a_planted_object_in_the_backups_leaves_no_usable_config(tmp_root, killable,
                                                                 monkeypatch):
    _usable_host_needing_security(tmp_root)

    def planted(*_a, **_k):
        raise safefs.UnsafePath(tmp_root.backups_dir, "a symlink", "a directory")

    monkeypatch.setattr(executor, "create_backup", planted)
    report = _run(tmp_root)
    assert (report.ok, report.config_usable, report.failed_phase, report.backup) == (
        False, False, "security", None)
    assert report.message.startswith(
        f"migration phase 'security' failed: could not take the backup in "
        f"{tmp_root.backups_dir}: {tmp_root.backups_dir}: found a symlink where a directory "
        "belongs")
    state = read_json(tmp_root.migration_state_file)
    assert state["completed"] == [] and state["failures"]["security"]["attempts"] == 1


def test_permission_errors_carry_the_hint_as_non_root(tmp_root, killable, monkeypatch):
    monkeypatch.setattr(executor.os, "geteuid", lambda: 1000)
    hint = executor._root_hint(PermissionError(13, "x"))
    make_legacy(tmp_root)

    def denied(*_a, **_k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setitem(executor.RUNNERS, "config", denied)
    report = _run(tmp_root)
    assert report.message.startswith(
        f"migration phase 'config' failed: [Errno 13] Permission denied{hint}; attempt 1")
    assert (f"migration phase 'config' failed ([Errno 13] Permission denied{hint}); "
            "restoring from ") in _journal(killable)[2]
    monkeypatch.setattr(executor, "create_backup", denied)
    shutil.rmtree(tmp_root.backups_dir)
    again = _run(tmp_root)
    assert again.message.startswith(
        f"migration phase 'directory' failed: could not take the backup in "
        f"{tmp_root.backups_dir}: [Errno 13] Permission denied{hint}; attempt 1 of 3")


def test_a_litter_failure_that_cannot_be_recorded_is_said(tmp_root, killable, monkeypatch):
    make_v0119(tmp_root, litter=1)
    monkeypatch.setattr(executor.os, "geteuid", lambda: 1000)
    hint = executor._root_hint(PermissionError(13, "x"))

    def denied(*_a, **_k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(littermod, "remove", denied)
    real_save = executor.save_state

    def no_failure_record(paths, state):
        if state.get("failures"):
            raise OSError(28, "No space left on device")
        return real_save(paths, state)

    monkeypatch.setattr(executor, "save_state", no_failure_record)
    report = _run(tmp_root)
    assert report.message == (
        "migrated: takeover, config, security; removing the upstream loop's litter failed: "
        f"[Errno 13] Permission denied{hint} (attempt 1 of 3, retried at the next start); "
        "nothing was rolled back, starting with the migrated config")
    assert report.phases_planned == ["takeover", "config", "security", "litter"]
    assert _journal(killable)[-2:] == [
        f"could not record the failure in {tmp_root.migration_state_file}: "
        "[Errno 28] No space left on device", report.message]


def test_what_each_finished_phase_records_for_the_next_start(tmp_root, killable):
    make_v0119(tmp_root, litter=1)
    _run_killed(tmp_root, "config:before")
    state = read_json(tmp_root.migration_state_file)
    # the takeover is recorded with where the host came from, before the next phase starts
    assert state["completed"] == ["takeover"]
    assert (state["migrated_from"], state["upstream_layout"]) == ("0.1.19-0.1.23",) * 2
    assert state["completed_at"]["takeover"].endswith("Z")
    report = _run(tmp_root)
    state = read_json(tmp_root.migration_state_file)
    assert state["completed"] == ["takeover", "config", "security", "litter"]
    assert "in_progress" not in state and state["failures"] == {}
    litter = dict(state["litter"])
    assert litter.pop("at").endswith("Z")
    assert litter == report.litter and report.litter["removed"] == 1


def test_a_legacy_host_records_its_origin_with_the_directory_phase(tmp_root, killable):
    make_legacy(tmp_root)
    _run_killed(tmp_root, "config:before")
    state = read_json(tmp_root.migration_state_file)
    assert state["completed"] == ["directory"]
    assert state["migrated_from"] == state["upstream_layout"] == "0.1.18"


def test_an_intent_recorded_without_counters_is_resumed_from_zero(tmp_root, killable):
    """A state file written by hand (or an older agent): only the backup name and phases."""
    make_legacy(tmp_root)
    tmp_root.state_dir.mkdir(parents=True, exist_ok=True)
    phases = ["directory", "config", "security"]
    tmp_root.migration_state_file.write_text(json.dumps(
        {"format": 1, "completed": [], "failures": {},
         "in_progress": {"backup": NAME, "phases": phases}}))
    report = _run(tmp_root)
    assert report.ok and report.backup == NAME
    # no origin recorded in that intent: none is claimed
    assert report.message == f"migrated: {LEGACY_PHASES} (backup {NAME})"
    assert _journal(killable)[0] == f"resuming a migration interrupted earlier (backup {NAME})"


def test_an_intent_without_counters_counts_its_first_resume(tmp_root, killable):
    make_legacy(tmp_root)
    tmp_root.state_dir.mkdir(parents=True, exist_ok=True)
    tmp_root.migration_state_file.write_text(json.dumps(
        {"format": 1, "completed": [], "failures": {},
         "in_progress": {"backup": NAME, "phases": ["directory", "config", "security"]}}))
    _run_killed(tmp_root, "backup:after")
    assert read_json(tmp_root.migration_state_file)["in_progress"]["resumes"] == 1
