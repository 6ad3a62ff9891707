"""Unregistered host without a token: stopped with exit 78, never restarted, nothing written."""

from __future__ import annotations

import time

import rfcheck

# The role's unit has RestartSec=30; wait past it to see that systemd does not restart.
RESTART_SEC = 30
MARGIN = 5


def test_stopped_with_exit_78(host):
    props = rfcheck.unit_props(host, "ActiveState", "SubState", "ExecMainStatus", "Result")
    assert props["ActiveState"] in ("inactive", "failed"), props
    assert props["ExecMainStatus"] == "78", props
    assert host.service("redflag-agent").is_enabled


def test_not_restarted_after_restart_sec(host):
    exited = rfcheck.unit_props(host, "ExecMainExitTimestampMonotonic")
    exited_s = int(exited["ExecMainExitTimestampMonotonic"]) / 1e6
    assert exited_s > 0, "the agent never exited"
    now_s = float(host.check_output("cut -d' ' -f1 /proc/uptime"))
    wait = exited_s + RESTART_SEC + MARGIN - now_s
    if wait > 0:
        time.sleep(wait)
    props = rfcheck.unit_props(host, "NRestarts", "ActiveState", "ExecMainStatus")
    assert props == {"NRestarts": "0", "ActiveState": props["ActiveState"], "ExecMainStatus": "78"}
    assert props["ActiveState"] in ("inactive", "failed")


def test_nothing_written(host):
    assert rfcheck.backups(host) == []
    assert rfcheck.legacy_style_backups(host) == []
    assert not host.file(rfcheck.STATE_DIR + "/migration_state.json").exists
    status = rfcheck.agent_status(host)
    assert status["registered"] is False
    assert status["backups"] == []
    assert status["migrations_completed"] == []


def test_config_has_server_but_no_identity(host):
    config = rfcheck.read_config(host)
    assert config["version"] == "6"
    assert config["server_url"].startswith("http://127.0.0.1:")
    for key in ("agent_id", "token", "refresh_token", "registration_token"):
        assert not config.get(key), f"{key} should be empty"


def test_log_says_what_is_missing(host):
    journal = rfcheck.journal_text(host)
    assert rfcheck.CONFIG in journal, "the exit-78 message should name the config file"
    assert "register" in journal.lower()


def test_server_knows_nothing(host):
    assert rfcheck.server_agents() == []
