"""Legacy 0.1.18 host: migrated once, same identity, no new registration, and
restarts do not migrate or back up again (the restart-loop bug)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import rfcheck

PENDING_ACKS = '["cmd-legacy-1", "cmd-legacy-2"]'


def _legacy_identity(host) -> dict:
    path = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "legacy_identity.json"
    return json.loads(path.read_text())[host.check_output("hostname")]


def test_service_active(host):
    assert host.service("redflag-agent").is_running
    rfcheck.wait_for(lambda: rfcheck.checked_in_status(host), 30, what="a check-in")


def test_same_identity(host):
    old = _legacy_identity(host)
    status = rfcheck.agent_status(host)
    assert status["registered"] is True
    assert status["identity_source"] == "current"
    assert status["agent_id"] == old["agent_id"]
    config = rfcheck.read_config(host)
    assert config["agent_id"] == old["agent_id"]
    digest = hashlib.sha256(config.get("refresh_token", "").encode()).hexdigest()
    assert digest == old["refresh_token_sha256"], "the refresh token changed in the migration"


def test_no_new_registration_on_server(host):
    old = _legacy_identity(host)
    agents = rfcheck.server_agents()
    assert [a["agent_id"] for a in agents] == [old["agent_id"]], (
        f"server lists {len(agents)} agents; want only the legacy one"
    )
    assert agents[0]["checkins"] >= 1
    assert agents[0]["migrated_from"], "the agent did not report itself as migrated"


def test_config_schema_6_and_unknown_keys_kept(host):
    config = rfcheck.read_config(host)
    assert config["version"] == "6"
    assert config["site_label"] == "molecule-legacy-site"
    # the taken-over identity had no machine ID recorded: adopted after its first check-in
    status = rfcheck.agent_status(host)
    assert config.get("machine_id") in (None, status["machine_id"])
    assert not config.get("registration_token")
    rfcheck.assert_file(host, rfcheck.CONFIG, "file", "redflag-agent", 0o600)


def test_exactly_one_backup(host):
    backups = rfcheck.backups(host)
    assert len(backups) == 1, f"backups: {backups}"
    assert rfcheck.agent_status(host)["backups"] == backups
    rfcheck.assert_file(
        host, f"{rfcheck.BACKUP_DIR}/{backups[0]}", "directory", "redflag-agent", 0o700
    )
    assert rfcheck.legacy_style_backups(host) == []


def test_legacy_directories_gone(host):
    for path in rfcheck.LEGACY_DIRS:
        assert not host.file(path).exists, f"{path} still exists"
    assert rfcheck.agent_status(host)["legacy_present"] is False


def test_legacy_state_carried_over(host):
    acks = host.file(rfcheck.STATE_DIR + "/pending_acks.json")
    assert acks.exists
    assert json.loads(acks.content_string) == json.loads(PENDING_ACKS)


def test_migration_recorded(host):
    status = rfcheck.agent_status(host)
    assert {"directory", "config"} <= set(status["migrations_completed"])
    assert status["migrations_pending"] == []
    assert not status["migration_failures"]
    assert host.file(rfcheck.STATE_DIR + "/migration_state.json").exists


def test_five_restarts_do_not_migrate_again(host):
    before = rfcheck.agent_status(host)
    backups_before = rfcheck.backups(host)
    state_mtime = host.file(rfcheck.STATE_DIR + "/migration_state.json").mtime
    for _ in range(5):
        rfcheck.service_restart_and_settle(host)
    after = rfcheck.agent_status(host)
    assert rfcheck.backups(host) == backups_before
    assert after["migrations_completed"] == before["migrations_completed"]
    assert after["agent_id"] == before["agent_id"]
    assert host.file(rfcheck.STATE_DIR + "/migration_state.json").mtime == state_mtime
    assert rfcheck.legacy_style_backups(host) == []
    assert len(rfcheck.server_agents()) == 1
