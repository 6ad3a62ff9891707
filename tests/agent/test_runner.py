"""Runner edge cases in-process: a broken migration step must not become a restart loop."""

from __future__ import annotations

import json
import logging

import pytest

from redflag_agent import migration
from redflag_agent.runner import EX_CONFIG, EX_NOPERM, Runner

from .sleep_recorder import SleepRecorder

LOG = logging.getLogger("redflag.test")


def write_cfg(paths, cfg):
    paths.config_dir.mkdir(parents=True, exist_ok=True)
    paths.state_dir.mkdir(parents=True, exist_ok=True)
    paths.config_file.write_text(json.dumps(cfg))


def test_plan_crash_is_logged_and_run_continues(tmp_root, monkeypatch, caplog):
    write_cfg(tmp_root, {"version": "6", "server_url": "http://127.0.0.1:9"})

    def boom(_paths):
        raise RuntimeError("state unreadable")

    monkeypatch.setattr(migration, "plan", boom)
    with caplog.at_level(logging.INFO):
        code = Runner(tmp_root, LOG, SleepRecorder(stop_after=1)).run()
    assert code == EX_CONFIG  # the normal "no token" answer, not a crash
    assert "cannot decide whether a migration is needed (RuntimeError: state unreadable)" \
        in caplog.text


def test_execute_crash_still_reaches_registration(tmp_root, monkeypatch, caplog, fake_server):
    fake_server.on("POST", "/api/v1/agents/register", (401, {"error": "invalid token"}))
    write_cfg(tmp_root, {"version": "6", "server_url": fake_server.url,
                         "registration_token": "T"})

    fake_plan = migration.Plan(phases=["config"], reasons={"config": "schema 5 -> 6"})

    def boom(*_a, **_k):
        raise OSError("disk on fire")

    monkeypatch.setattr(migration, "plan", lambda _p: fake_plan)
    monkeypatch.setattr(migration, "execute", boom)
    with caplog.at_level(logging.INFO):
        code = Runner(tmp_root, LOG, SleepRecorder(stop_after=1)).run()
    assert code == EX_NOPERM
    assert "migration crashed: OSError: disk on fire" in caplog.text


@pytest.mark.parametrize("url", ["", "ftp://x", "not a url"])
def test_bad_server_url_exits_78(tmp_root, url, caplog):
    write_cfg(tmp_root, {"version": "6", "server_url": url, "registration_token": "T"})
    with caplog.at_level(logging.INFO):
        assert Runner(tmp_root, LOG, SleepRecorder(stop_after=1)).run() == EX_CONFIG
    assert "server_url" in caplog.text


@pytest.mark.parametrize(("plan", "fragment"), [
    (migration.Plan(blocked={"config": {"attempts": 3, "reason": "disk full"}},
                    reasons={"config": "schema 5 -> 6"}),
     "migration phase 'config' failed 3 times (last: disk full)"),
    (migration.Plan(error="the legacy config cannot be migrated: truncated"),
     "cannot migrate: the legacy config cannot be migrated: truncated"),
])
def test_blocked_or_impossible_migration_is_logged_once(tmp_root, monkeypatch, caplog, plan,
                                                        fragment):
    write_cfg(tmp_root, {"version": "6", "server_url": "http://127.0.0.1:9"})
    monkeypatch.setattr(migration, "plan", lambda _p: plan)
    with caplog.at_level(logging.INFO):
        code = Runner(tmp_root, LOG, SleepRecorder(stop_after=1)).run()
    assert code == EX_CONFIG  # then the usual "no token" answer: the agent is not stuck on it
    assert caplog.text.count(fragment) == 1
    if plan.blocked:
        assert "redflag-agent migrate --retry-failed" in caplog.text
