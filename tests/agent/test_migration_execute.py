"""execute(): each phase, one backup, retention, rollback, bounded retries, no-op writes nothing."""

from __future__ import annotations

import json
import logging
import os
import stat

import pytest

from redflag_agent import migration
from redflag_agent.migration import phases as phases_mod
from redflag_agent.migration.backup import list_backups, load_manifest, prune
from redflag_agent.migration.faults import FAULT_ENV, crash_point, write_point
from redflag_agent.migration.model import MAX_ATTEMPTS
from redflag_agent.paths import Paths

from .migration_fixtures import (
    AGENT_ID,
    JWT,
    OTHER_ID,
    REFRESH,
    REG_TOKEN,
    SECRETS,
    SERVER,
    contents,
    fresh_config,
    legacy_config,
    make_current,
    make_fresh_install,
    make_legacy,
    read_json,
    tree,
)

LOG = logging.getLogger("test.migration")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv("container", raising=False)
    monkeypatch.delenv(FAULT_ENV, raising=False)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _no_secret_in(text: str) -> None:
    for s in SECRETS:
        assert s not in text


def test_legacy_0118_full_migration(tmp_root, caplog):
    caplog.set_level(logging.DEBUG)
    make_legacy(tmp_root)
    originals = {p: p.read_bytes() for p in (tmp_root.legacy_config_file,
                                             tmp_root.legacy_state_dir / "agent.key",
                                             tmp_root.legacy_state_dir / "cache.db")}
    report = migration.execute(tmp_root, LOG)
    assert report.ok, report.message
    assert report.phases_done == ["directory", "config", "security"]
    assert report.config_usable
    cfg = read_json(tmp_root.config_file)
    # identity, tokens and unknown keys kept; legacy shapes upgraded
    assert (cfg["agent_id"], cfg["token"], cfg["refresh_token"]) == (AGENT_ID, JWT, REFRESH)
    assert "registration_token" not in cfg  # never beside a complete identity
    assert cfg["machine_id"] == "m-0123456789"
    assert cfg["version"] == "6"
    assert cfg["check_in_interval"] == 300
    assert cfg["tags"] == ["web", "prod"]
    assert cfg["network"]["timeout"] == 20 and cfg["network"]["retry_count"] == 5
    assert cfg["tls"]["ca_file"] == "/etc/redflag-agent/ca.pem"
    assert (tmp_root.config_dir / "ca.pem").read_bytes().startswith(b"-----BEGIN")
    # state files moved
    assert (tmp_root.state_dir / "agent.key").read_bytes() == originals[
        tmp_root.legacy_state_dir / "agent.key"]
    assert (tmp_root.state_dir / "pending_acks.json").read_text() == '[{"id": "c1"}]'
    assert (tmp_root.state_dir / "client.crt").read_bytes() == b"CERT"
    # legacy directories gone
    assert not tmp_root.legacy_config_dir.exists()
    assert not tmp_root.legacy_state_dir.exists()
    # exactly one backup, holding the originals byte for byte (the unknown file too)
    assert list_backups(tmp_root) == [report.backup]
    files = tmp_root.backups_dir / report.backup / "files"
    for path, data in originals.items():
        assert (files / path.relative_to(tmp_root.root)).read_bytes() == data
    # modes
    assert _mode(tmp_root.config_file) == 0o600
    assert _mode(tmp_root.config_dir) == 0o750
    assert _mode(tmp_root.state_dir) == 0o750
    assert _mode(tmp_root.backups_dir) == 0o700
    assert _mode(tmp_root.backups_dir / report.backup) == 0o700
    assert _mode(tmp_root.state_dir / "agent.key") == 0o600
    # recorded
    summary = migration.summary(tmp_root)
    assert summary["completed"] == ["directory", "config", "security"]
    assert summary["pending"] == [] and summary["failures"] == {}
    assert summary["backups"] == [report.backup]
    assert migration.migrated_from(tmp_root) == "0.1.18"
    assert "in_progress" not in read_json(tmp_root.migration_state_file)
    _no_secret_in(caplog.text + report.message + json.dumps(report.to_dict()))


def test_second_execute_after_success_writes_nothing(tmp_root):
    make_legacy(tmp_root)
    assert migration.execute(tmp_root, LOG).ok
    before = tree(tmp_root.root)
    for _ in range(3):
        report = migration.execute(tmp_root, LOG)
        assert report.ok and report.phases_done == [] and report.backup is None
    assert tree(tmp_root.root) == before


@pytest.mark.parametrize("registered", [False, True])
def test_fresh_install_20_starts_write_nothing(tmp_root, registered):
    make_fresh_install(tmp_root, registered=registered)
    before = tree(tmp_root.root)
    for _ in range(20):
        report = migration.execute(tmp_root, LOG)
        assert report.ok and report.phases_done == []
        assert report.config_usable
    assert tree(tmp_root.root) == before
    assert not tmp_root.backups_dir.exists()
    assert not tmp_root.migration_state_file.exists()


def test_bare_host_writes_nothing(tmp_root):
    before = tree(tmp_root.root)
    report = migration.execute(tmp_root, LOG)
    assert report.ok and not report.config_usable
    assert tree(tmp_root.root) == before == {}


def test_dry_run_writes_nothing(tmp_root):
    make_legacy(tmp_root)
    before = tree(tmp_root.root)
    report = migration.execute(tmp_root, LOG, dry_run=True)
    assert report.ok and report.dry_run
    assert report.phases_planned == ["directory", "config", "security"]
    assert report.phases_done == []
    assert tree(tmp_root.root) == before


def test_half_migrated_merge_keeps_legacy_identity_and_current_settings(tmp_root):
    make_legacy(tmp_root)
    make_current(tmp_root, {"version": "6", "server_url": "http://127.0.0.1:9999",
                            "check_in_interval": 120, "display_name": "role-set"})
    report = migration.execute(tmp_root, LOG)
    assert report.ok, report.message
    cfg = read_json(tmp_root.config_file)
    assert cfg["agent_id"] == AGENT_ID and cfg["refresh_token"] == REFRESH
    assert cfg["server_url"] == "http://127.0.0.1:9999"
    assert cfg["check_in_interval"] == 120 and cfg["display_name"] == "role-set"
    assert cfg["machine_id"] == "m-0123456789"


def test_half_migrated_different_identities_keep_current_and_warn(tmp_root, caplog):
    caplog.set_level(logging.WARNING)
    make_legacy(tmp_root)
    make_current(tmp_root, fresh_config(False, agent_id=OTHER_ID, refresh_token="r-other",
                                        token="t-other"))
    report = migration.execute(tmp_root, LOG)
    assert report.ok
    cfg = read_json(tmp_root.config_file)
    assert cfg["agent_id"] == OTHER_ID and cfg["refresh_token"] == "r-other"
    assert AGENT_ID in caplog.text and OTHER_ID in caplog.text
    # the legacy identity is not lost: it is in the backup
    backup_cfg = (tmp_root.backups_dir / report.backup / "files" / "etc" / "aggregator"
                  / "config.json")
    assert json.loads(backup_cfg.read_text())["agent_id"] == AGENT_ID


def test_existing_state_file_wins_over_a_different_legacy_one(tmp_root):
    make_legacy(tmp_root)
    tmp_root.state_dir.mkdir(parents=True)
    (tmp_root.state_dir / "pending_acks.json").write_text("[]")
    assert migration.execute(tmp_root, LOG).ok
    assert (tmp_root.state_dir / "pending_acks.json").read_text() == "[]"


@pytest.mark.parametrize("version", [5, "5", None])
def test_config_phase_only(tmp_root, version):
    cfg = fresh_config(True, machine_id="keep-me", tags="a,b")
    if version is None:
        del cfg["version"]
    else:
        cfg["version"] = version
    make_current(tmp_root, cfg, mode=0o644)
    report = migration.execute(tmp_root, LOG)
    assert report.ok and report.phases_done == ["config", "security"]
    out = read_json(tmp_root.config_file)
    assert out["version"] == "6" and out["machine_id"] == "keep-me" and out["tags"] == ["a", "b"]
    assert out["agent_id"] == AGENT_ID
    assert _mode(tmp_root.config_file) == 0o600
    assert len(list_backups(tmp_root)) == 1
    assert migration.migrated_from(tmp_root) is None


def test_docker_secrets_phase(tmp_root, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("container", "podman")
    make_current(tmp_root, {"version": "6", "server_url": "http://127.0.0.1:1"})
    tmp_root.secrets_dir.mkdir(parents=True)
    (tmp_root.secrets_dir / "redflag_registration_token").write_text(REG_TOKEN + "\n")
    (tmp_root.secrets_dir / "redflag_server_url").write_text(SERVER + "\n")
    report = migration.execute(tmp_root, LOG)
    assert report.ok and report.phases_done == ["docker_secrets", "security"]
    cfg = read_json(tmp_root.config_file)
    assert cfg["registration_token"] == REG_TOKEN and cfg["server_url"] == SERVER
    _no_secret_in(caplog.text)
    # the registration module later drops the token; the phase must not put it back
    cfg.pop("registration_token")
    cfg.update(agent_id=AGENT_ID, refresh_token=REFRESH)
    tmp_root.config_file.write_text(json.dumps(cfg))
    before = tree(tmp_root.root)
    assert migration.execute(tmp_root, LOG).phases_done == []
    assert tree(tmp_root.root) == before


def test_docker_secrets_create_the_config_when_there_is_none(tmp_root, monkeypatch):
    monkeypatch.setenv("container", "docker")
    tmp_root.secrets_dir.mkdir(parents=True)
    (tmp_root.secrets_dir / "registration_token").write_text("upstream-name")
    (tmp_root.secrets_dir / "server_url").write_text(SERVER)
    report = migration.execute(tmp_root, LOG)
    assert report.ok and report.config_usable
    cfg = read_json(tmp_root.config_file)
    assert cfg["version"] == "6" and cfg["registration_token"] == "upstream-name"


def test_corrupt_current_config_is_not_written_over(tmp_root):
    make_legacy(tmp_root)
    tmp_root.config_dir.mkdir(parents=True)
    tmp_root.config_file.write_bytes(b'{"agent_id": "x", ')
    before = tree(tmp_root.root)
    report = migration.execute(tmp_root, LOG)
    assert not report.ok and not report.config_usable
    assert str(tmp_root.config_file) in report.message and "truncated" in report.message
    assert tree(tmp_root.root) == before


def test_corrupt_legacy_config_leaves_everything_and_current_is_usable(tmp_root):
    make_legacy(tmp_root)
    tmp_root.legacy_config_file.write_bytes(b"\x00\x01garbage")
    make_fresh_install(tmp_root, registered=True)
    before = tree(tmp_root.root)
    report = migration.execute(tmp_root, LOG)
    assert not report.ok and report.config_usable
    assert str(tmp_root.legacy_config_file) in report.message
    assert tree(tmp_root.root) == before


def _pre_create_dirs(paths: Paths) -> None:
    # the role lays these down before the agent first runs
    paths.config_dir.mkdir(parents=True, exist_ok=True)
    paths.state_dir.mkdir(parents=True, exist_ok=True)


@pytest.mark.parametrize("point", ["directory", "config", "security"])
def test_failure_restores_byte_identical_originals(tmp_root, point, caplog):
    caplog.set_level(logging.DEBUG)
    make_legacy(tmp_root)
    _pre_create_dirs(tmp_root)
    make_current(tmp_root, {"version": 5, "server_url": SERVER, "display_name": "cur"},
                 mode=0o640)
    before = contents(tmp_root.root)
    report = migration.execute(tmp_root, LOG, environ={FAULT_ENV: f"{point}:enospc"})
    assert not report.ok
    assert report.failed_phase == point
    assert "No space left on device" in report.message
    assert f"attempt 1 of {MAX_ATTEMPTS}" in report.message
    assert report.config_usable
    assert contents(tmp_root.root) == before
    state = read_json(tmp_root.migration_state_file)
    assert state["completed"] == []
    assert state["failures"][point]["attempts"] == 1
    assert "in_progress" not in state
    assert migration.summary(tmp_root)["failures"][point]["attempts"] == 1
    assert migration.migrated_from(tmp_root) is None, "the directory migration was rolled back"
    _no_secret_in(caplog.text + report.message)


def test_failed_migration_then_success_on_retry(tmp_root):
    make_legacy(tmp_root)
    bad = migration.execute(tmp_root, LOG, environ={FAULT_ENV: "config:enospc"})
    assert not bad.ok
    good = migration.execute(tmp_root, LOG, environ={})
    assert good.ok, good.message
    assert read_json(tmp_root.config_file)["agent_id"] == AGENT_ID
    assert migration.summary(tmp_root)["failures"] == {}
    # one backup per attempt that took one, bounded by retention
    assert len(list_backups(tmp_root)) == 2


def test_bounded_retries_then_left_to_the_operator(tmp_root, caplog):
    caplog.set_level(logging.DEBUG)
    make_current(tmp_root, fresh_config(True, version=5))
    fault = {FAULT_ENV: "config:enospc"}
    for attempt in range(1, MAX_ATTEMPTS + 1):
        report = migration.execute(tmp_root, LOG, environ=fault)
        assert not report.ok and report.config_usable
        assert read_json(tmp_root.migration_state_file)["failures"]["config"]["attempts"] == \
            attempt
    assert "--retry-failed" in report.message and "gave up" in report.message
    # from now on: no retry, no write, a clear message, and summary shows it
    before = tree(tmp_root.root)
    for _ in range(5):
        again = migration.execute(tmp_root, LOG, environ=fault)
        assert not again.ok and again.config_usable
        assert again.failed_phase == "config"
        assert "--retry-failed" in again.message
    assert tree(tmp_root.root) == before
    assert migration.plan(tmp_root).phases == []
    summary = migration.summary(tmp_root)
    assert summary["failures"]["config"]["attempts"] == MAX_ATTEMPTS
    assert summary["pending"] == ["config", "security"]
    assert len(summary["backups"]) == MAX_ATTEMPTS
    # the operator fixed the cause and retries explicitly
    fixed = migration.execute(tmp_root, LOG, retry_failed=True, environ={})
    assert fixed.ok, fixed.message
    assert read_json(tmp_root.config_file)["version"] == "6"
    assert migration.summary(tmp_root)["failures"] == {}


def test_legacy_dirs_kept_when_the_identity_check_fails(tmp_root, monkeypatch):
    make_legacy(tmp_root)
    _pre_create_dirs(tmp_root)
    before = contents(tmp_root.root)
    real = phases_mod.read_config

    def lossy(path):
        cfg = real(path)
        if cfg is not None and path == tmp_root.config_file:
            cfg = {k: v for k, v in cfg.items() if k != "agent_id"}
        return cfg

    monkeypatch.setattr(phases_mod, "read_config", lossy)
    report = migration.execute(tmp_root, LOG)
    assert not report.ok and report.failed_phase == "directory"
    assert "agent_id" in report.message
    assert contents(tmp_root.root) == before
    assert tmp_root.legacy_config_file.is_file()


def test_retention_four_migrations_keep_three_backups(tmp_root):
    names = []
    for i in range(4):
        make_current(tmp_root, fresh_config(True, version=5, display_name=f"n{i}"))
        tmp_root.migration_state_file.unlink(missing_ok=True)
        report = migration.execute(tmp_root, LOG)
        assert report.ok, report.message
        names.append(report.backup)
    assert len(set(names)) == 4
    assert list_backups(tmp_root) == names[1:]
    # the newest backup holds the config as it was before the 4th migration
    newest = load_manifest(tmp_root, names[-1])
    entry = next(e for e in newest["entries"] if e["path"] == "etc/redflag-agent/config.json")
    stored = (tmp_root.backups_dir / names[-1] / entry["stored"]).read_text()
    assert json.loads(stored)["display_name"] == "n3"


def test_prune_table(tmp_root):
    tmp_root.backups_dir.mkdir(parents=True)
    names = ["20260101T000000Z", "20260101T000000Z-2", "20260101T000000Z-10",
             "20260102T000000Z"]
    for n in names:
        (tmp_root.backups_dir / n).mkdir()
        (tmp_root.backups_dir / n / "manifest.json").write_text("{}")
    (tmp_root.backups_dir / "not-a-backup").mkdir()
    (tmp_root.backups_dir / ".20250101T000000Z.partial").mkdir()
    assert list_backups(tmp_root) == names
    removed = prune(tmp_root, 2, protect={"20260101T000000Z"})
    assert removed == ["20260101T000000Z-2", "20260101T000000Z-10"]
    assert sorted(os.listdir(tmp_root.backups_dir)) == [
        "20260101T000000Z", "20260102T000000Z", "not-a-backup"]


def test_summary_and_plan_write_nothing_even_with_pending_work(tmp_root):
    make_legacy(tmp_root)
    before = tree(tmp_root.root)
    summary = migration.summary(tmp_root)
    assert summary["pending"] == ["directory", "config", "security"]
    assert summary["completed"] == [] and summary["backups"] == []
    assert migration.migrated_from(tmp_root) is None
    assert tree(tmp_root.root) == before


def test_corrupt_state_is_set_aside_not_overwritten(tmp_root):
    make_current(tmp_root, fresh_config(True, version=5))
    tmp_root.state_dir.mkdir(parents=True)
    tmp_root.migration_state_file.write_text("{torn")
    report = migration.execute(tmp_root, LOG)
    assert report.ok
    kept = [n for n in os.listdir(tmp_root.state_dir) if ".corrupt-" in n]
    assert len(kept) == 1 and (tmp_root.state_dir / kept[0]).read_text() == "{torn"
    assert read_json(tmp_root.migration_state_file)["completed"] == ["config", "security"]


def test_fault_injection_is_inert_on_a_production_root():
    prod = Paths("/")
    assert prod.is_production
    env = {FAULT_ENV: "config:enospc"}
    write_point(prod, "config", env)  # would raise on a test root
    crash_point(prod, "config", "before", {FAULT_ENV: "config:before"})  # would _exit
    with pytest.raises(OSError, match="No space left"):
        write_point(Paths("/tmp/x"), "config", env)


def test_legacy_config_with_registration_token_only(tmp_root):
    """An old host that never registered: the token moves over, nothing invented."""
    make_legacy(tmp_root, cfg=legacy_config(agent_id=None, token=None, refresh_token=None))
    report = migration.execute(tmp_root, LOG)
    assert report.ok
    cfg = read_json(tmp_root.config_file)
    assert cfg["registration_token"] == REG_TOKEN and cfg.get("agent_id") is None


def test_ownership_goes_to_the_agent_user_when_root(tmp_root, monkeypatch):
    """As root with a redflag-agent user, everything the migration creates is the agent's;
    without root nothing is chowned (and nothing fails)."""
    from redflag_agent import owner

    fake = (65534, 65534)
    monkeypatch.setattr(owner, "agent_ids", lambda: fake)
    make_legacy(tmp_root)
    report = migration.execute(tmp_root, LOG)
    assert report.ok, report.message
    backup = tmp_root.backups_dir / report.backup
    created = [tmp_root.config_dir, tmp_root.config_file, tmp_root.state_dir,
               tmp_root.migration_state_file, tmp_root.state_dir / "agent.key",
               tmp_root.backups_dir, backup, backup / "manifest.json",
               backup / "files" / "etc" / "aggregator" / "config.json"]
    expected = fake if os.geteuid() == 0 else (os.geteuid(), os.getegid())
    for path in created:
        st = os.lstat(path)
        assert (st.st_uid, st.st_gid) == expected, path


def test_a_finished_but_unclosed_migration_is_not_resumed(tmp_root):
    """in_progress left behind after every phase completed: the next migration takes a new
    backup instead of reusing the stale one."""
    make_current(tmp_root, fresh_config(True, version=5))
    tmp_root.state_dir.mkdir(parents=True)
    stale = {"format": 1, "completed": ["security"], "failures": {},
             "in_progress": {"backup": "20200101T000000Z", "phases": ["security"],
                             "completed_before": []}}
    tmp_root.migration_state_file.write_text(json.dumps(stale))
    report = migration.execute(tmp_root, LOG)
    assert report.ok and report.backup != "20200101T000000Z"
    assert report.phases_done == ["config"]


def test_pruning_trouble_does_not_fail_the_migration(tmp_root, monkeypatch, caplog):
    from redflag_agent.migration import executor as execute_mod

    def broken(*_a, **_k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(execute_mod, "prune", broken)
    make_current(tmp_root, fresh_config(True, version=5))
    caplog.set_level(logging.WARNING)
    assert migration.execute(tmp_root, LOG).ok
    assert "could not prune" in caplog.text


def test_permission_problem_names_the_fix(tmp_root, monkeypatch):
    from redflag_agent.migration import executor as execute_mod

    monkeypatch.setattr(execute_mod.os, "geteuid", lambda: 1000)
    hint = execute_mod._root_hint(PermissionError(13, "Permission denied"))
    assert "redflag-agent migrate" in hint and "root" in hint
    assert execute_mod._root_hint(OSError(28, "No space")) == ""


def test_cannot_create_the_state_dir_reports_without_raising(tmp_root, monkeypatch):
    from redflag_agent.migration import executor as execute_mod

    def refuse(_paths):
        raise PermissionError(13, "Permission denied", str(tmp_root.state_dir))

    monkeypatch.setattr(execute_mod, "_ensure_dirs", refuse)
    make_legacy(tmp_root)
    before = tree(tmp_root.root)
    report = migration.execute(tmp_root, LOG)
    assert not report.ok and "nothing was changed" in report.message
    assert tree(tmp_root.root) == before


@pytest.mark.parametrize("err", ["EBUSY", "EROFS"])
def test_legacy_dirs_that_are_sandbox_mount_points_stay_empty(tmp_root, monkeypatch, err):
    """In redflag-agent-migrate.service's sandbox the legacy top directories are bind mounts
    in a read-only parent: rmdir fails. The migration empties them and succeeds (the role
    removes the empty directories); it must not roll back."""
    import errno as errno_mod

    from redflag_agent import safefs

    make_legacy(tmp_root)
    tops = {tmp_root.legacy_config_dir, tmp_root.legacy_state_dir}
    real_rmdir = safefs.rmdir

    def rmdir(path):
        if path in tops:
            raise OSError(getattr(errno_mod, err), os.strerror(getattr(errno_mod, err)))
        return real_rmdir(path)

    monkeypatch.setattr(safefs, "rmdir", rmdir)
    report = migration.execute(tmp_root, LOG)
    assert report.ok, report.message
    for d in tops:
        assert d.is_dir() and os.listdir(d) == []
    assert read_json(tmp_root.config_file)["agent_id"] == AGENT_ID
