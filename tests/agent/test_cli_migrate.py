"""`migrate` and `register` at the CLI: blocked/impossible migrations, --retry-failed, and the
instance lock that keeps `register` from enrolling a host twice."""

from __future__ import annotations

import json

import pytest

from redflag_agent.cli import unchanged_exit
from redflag_agent.exits import EX_CONFIG, EX_OK
from redflag_agent.migration import Plan

from .migration_fixtures import fresh_config, make_current, make_legacy
from .test_cli import (
    CMDS,
    REG,
    REGISTERED_OK,
    cli,
    registered_cfg,
    snapshot,
    start,
    stop,
    write_config,
)

BLOCKED = {"config": {"attempts": 3, "reason": "disk full"}}


@pytest.mark.parametrize(("plan", "usable", "expected"), [
    (Plan(), True, (True, EX_OK)),
    (Plan(), False, (True, EX_OK)),  # nothing to migrate: `run` says what is missing
    (Plan(blocked=BLOCKED), True, (False, EX_OK)),
    (Plan(blocked=BLOCKED), False, (False, EX_CONFIG)),
    (Plan(error="config.json: truncated"), False, (False, EX_CONFIG)),
    (Plan(error="legacy config: truncated"), True, (False, EX_OK)),
])
def test_unchanged_exit_table(plan, usable, expected):
    assert unchanged_exit(plan, usable) == expected


def test_migrate_on_a_corrupt_config_exits_78_and_says_why(tmp_root, agent_env):
    write_config(tmp_root, None, raw=b'{"version": "6", "server_url": "http://127.0.0.1:9"')
    before = snapshot(tmp_root.root)
    res = cli(tmp_root, agent_env, "migrate")
    assert res.returncode == EX_CONFIG, res.stderr
    assert "cannot migrate" in res.stderr and str(tmp_root.config_file) in res.stderr
    assert "truncated" in res.stderr and "nothing to migrate" not in res.stdout + res.stderr
    as_json = cli(tmp_root, agent_env, "migrate", "--json")
    assert as_json.returncode == EX_CONFIG
    out = json.loads(as_json.stdout)
    assert out["ok"] is False and out["config_usable"] is False
    assert out["phases_done"] == [] and "truncated" in out["message"]
    assert snapshot(tmp_root.root) == before


def test_migrate_with_a_corrupt_legacy_config_but_usable_current_exits_0(tmp_root, agent_env):
    make_legacy(tmp_root, state_files=False, config_file=False)
    tmp_root.legacy_config_file.write_bytes(b"\x00\x01junk")
    make_current(tmp_root, fresh_config(registered=True))
    before = snapshot(tmp_root.root)
    res = cli(tmp_root, agent_env, "migrate", "--json")
    assert res.returncode == EX_OK, res.stderr
    out = json.loads(res.stdout)
    assert out["ok"] is False and out["config_usable"] is True
    assert "legacy config cannot be migrated" in out["message"]
    assert snapshot(tmp_root.root) == before


def test_blocked_migration_is_reported_then_retry_failed_completes(tmp_root, agent_env):
    make_current(tmp_root, fresh_config(True, version=5))
    tmp_root.state_dir.mkdir(parents=True)
    for attempt in (1, 2, 3):
        res = cli(tmp_root, agent_env, "migrate", REDFLAG_FAULT_INJECT="config:enospc")
        assert res.returncode == EX_OK, res.stderr  # failed, but the config is usable
        assert f"attempt {attempt} of 3" in res.stdout or "gave up" in res.stdout
    before = snapshot(tmp_root.root)
    blocked = cli(tmp_root, agent_env, "migrate")
    assert blocked.returncode == EX_OK
    assert "failed 3 times" in blocked.stderr and "--retry-failed" in blocked.stderr
    assert "nothing to migrate" not in blocked.stdout + blocked.stderr
    dry = json.loads(cli(tmp_root, agent_env, "migrate", "--dry-run", "--json").stdout)
    assert dry["phases"] == []
    assert snapshot(tmp_root.root) == before
    # the operator fixed the disk and asks for the retry
    retry_dry = cli(tmp_root, agent_env, "migrate", "--retry-failed", "--dry-run", "--json")
    assert json.loads(retry_dry.stdout)["phases"] == ["config", "security"]
    fixed = cli(tmp_root, agent_env, "migrate", "--retry-failed", "--json")
    assert fixed.returncode == EX_OK, fixed.stderr
    assert json.loads(fixed.stdout)["phases_done"] == ["config", "security"]
    assert json.loads(tmp_root.config_file.read_text())["version"] == "6"
    assert cli(tmp_root, agent_env, "migrate").stdout.strip() == "nothing to migrate"


def test_register_refuses_while_run_holds_the_lock(tmp_root, agent_env, fake_server):
    """`run` is retrying registration (server answers 503); `register` must not enroll too."""
    fake_server.on("POST", REG, (503, {"error": "down"}))
    write_config(tmp_root, {"version": "6", "server_url": fake_server.url,
                            "registration_token": "REGTOKEN-XYZ"})
    proc = start(tmp_root, agent_env, "run")
    try:
        fake_server.wait_for("POST", REG, count=2)
        config_before = tmp_root.config_file.read_bytes()
        res = cli(tmp_root, agent_env, "register", "--server", "http://127.0.0.1:9",
                  REDFLAG_REGISTRATION_TOKEN="REGTOKEN-XYZ")
        assert res.returncode == 75, res.stderr
        assert "agent service is running" in res.stderr and "enroll the host twice" in res.stderr
        assert "REGTOKEN-XYZ" not in res.stderr + res.stdout
        # refused before doing anything: --server was not even recorded
        assert tmp_root.config_file.read_bytes() == config_before
    finally:
        code, _ = stop(proc)
    assert code == 0
    fake_server.on("POST", REG, REGISTERED_OK)
    fake_server.on("GET", CMDS, (200, {"commands": []}))
    ok = cli(tmp_root, agent_env, "register", REDFLAG_REGISTRATION_TOKEN="REGTOKEN-XYZ")
    assert ok.returncode == 0, ok.stderr
    again = cli(tmp_root, agent_env, "register", REDFLAG_REGISTRATION_TOKEN="REGTOKEN-XYZ")
    assert again.returncode == 0 and "already registered" in again.stdout


def test_register_on_a_registered_host_while_run_holds_the_lock_says_so(tmp_root, agent_env,
                                                                        fake_server):
    fake_server.on("GET", CMDS, (200, {"commands": []}))
    write_config(tmp_root, registered_cfg(fake_server.url))
    proc = start(tmp_root, agent_env, "run")
    try:
        fake_server.wait_for("GET", CMDS)
        res = cli(tmp_root, agent_env, "register")
        assert res.returncode == 0 and "already registered" in res.stdout
    finally:
        stop(proc)
