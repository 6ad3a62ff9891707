"""The runner's exits, messages and sleeps, pinned exactly (issue 15: mutation testing).

The registration retry loop must sleep the backoff between tries: without it an outage
turns every host into a hot loop against the server.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from pathlib import Path

import pytest

from redflag_agent import backoff, binding, migration
from redflag_agent import checkin as checkin_mod
from redflag_agent import client as client_mod
from redflag_agent import config as c
from redflag_agent import registration as r
from redflag_agent import runner as runner_mod
from redflag_agent.lock import InstanceLock, LockHeld
from redflag_agent.paths import Paths
from redflag_agent.runner import (
    EX_CONFIG,
    EX_NOPERM,
    EX_OK,
    EX_TEMPFAIL,
    Runner,
    backoff_settings,
    make_client,
)

from . import migration_fixtures as mf
from .sleep_recorder import SleepRecorder

LOG = logging.getLogger("redflag.test.mutrun")
AID = "4b3f0c1e-0000-4000-8000-000000000001"
REG = "/api/v1/agents/register"
CMDS = f"/api/v1/agents/{AID}/commands"
OK = (200, {"agent_id": AID, "token": "JWT-A", "refresh_token": "REFRESH-A"})
SLOW = {"REDFLAG_BACKOFF_BASE": "2", "REDFLAG_BACKOFF_CAP": "60"}


def bounded():
    """Every start here ends: a mutant that wanders into a retry loop stops at its first
    sleep (a plain Terminator would sleep for real, and mutmut would only time out)."""
    return SleepRecorder(stop_after=1)


def write_cfg(paths, cfg):
    paths.config_dir.mkdir(parents=True, exist_ok=True)
    paths.state_dir.mkdir(parents=True, exist_ok=True)
    paths.config_file.write_text(json.dumps(cfg))


@pytest.mark.parametrize(("root", "environ", "expect"), [
    ("/tmp/x", {}, (2.0, 300.0)),
    ("/tmp/x", {"REDFLAG_BACKOFF_BASE": "0.5", "REDFLAG_BACKOFF_CAP": "7"}, (0.5, 7.0)),
    ("/tmp/x", {"REDFLAG_BACKOFF_BASE": "0.5"}, (0.5, 300.0)),
    ("/tmp/x", {"REDFLAG_BACKOFF_CAP": "7"}, (2.0, 7.0)),
    ("/tmp/x", {"REDFLAG_BACKOFF_BASE": "fast", "REDFLAG_BACKOFF_CAP": "7"}, (2.0, 300.0)),
    ("/tmp/x", {"REDFLAG_BACKOFF_BASE": "0.5", "REDFLAG_BACKOFF_CAP": "x"}, (2.0, 300.0)),
    ("/", {"REDFLAG_BACKOFF_BASE": "0.5", "REDFLAG_BACKOFF_CAP": "7"}, (2.0, 300.0)),
])
def test_backoff_settings(root, environ, expect):
    assert backoff_settings(Paths(Path(root)), environ) == expect


def test_backoff_settings_reads_the_process_environment(monkeypatch):
    monkeypatch.setenv("REDFLAG_BACKOFF_BASE", "0.25")
    monkeypatch.setenv("REDFLAG_BACKOFF_CAP", "3")
    assert backoff_settings(Paths(Path("/tmp/x"))) == (0.25, 3.0)


@pytest.mark.parametrize(("cfg", "timeout"), [
    ({"server_url": "http://127.0.0.1:9"}, 30.0),
    ({"server_url": "http://127.0.0.1:9", "network": {"timeout": 5}}, 5.0),
    ({"server_url": "http://127.0.0.1:9", "network": {"timeout": 7_000_000_000}}, 7.0),
    ({"server_url": "http://127.0.0.1:9", "network": "x"}, 30.0),
    ({"server_url": "http://127.0.0.1:9", "network": {"timeout": 0}}, 30.0),
])
def test_make_client_timeout(cfg, timeout):
    client = make_client(cfg, "m" * 32)
    assert client.timeout == timeout
    assert client.base == "http://127.0.0.1:9"
    assert client.machine_id == "m" * 32


def test_registration_retry_loop_sleeps_the_backoff(tmp_root, fake_server, caplog):
    fake_server.on("POST", REG, (500, {"error": "db"}), (503, {"error": "down"}),
                   (500, {"error": "db"}), OK)
    fake_server.on("GET", CMDS, (200, {"commands": []}))
    write_cfg(tmp_root, {"version": "6", "server_url": fake_server.url,
                         "registration_token": "T", "check_in_interval": 60})
    term = SleepRecorder(stop_after=4)
    runner = Runner(tmp_root, LOG, term, rand=lambda: 0.5, environ=SLOW)
    with caplog.at_level(logging.INFO):
        assert runner.run() == EX_OK
    # three failed registrations: attempts 0, 1, 2 at rand 0.5; then the check-in interval
    assert term.slept == [1.0, 2.0, 4.0, 60.0]
    assert len(fake_server.seen("POST", REG)) == 4
    failed = [m for m in caplog.messages if m.startswith("registration failed: ")]
    assert len(failed) == 3
    assert "; retry 1 in 1.0 s (at " in failed[0]
    assert "; retry 3 in 4.0 s (at " in failed[2]
    status = json.loads(tmp_root.status_file.read_text())
    assert status["last_exit_reason"].endswith(" stopped by SIGTERM")


def test_cannot_save_is_retried_with_a_sleep_and_logged_as_error(tmp_root, fake_server,
                                                                  monkeypatch, caplog):
    fake_server.on("POST", REG, OK)
    write_cfg(tmp_root, {"version": "6", "server_url": fake_server.url,
                         "registration_token": "T"})
    term = SleepRecorder(stop_after=2)

    def full(directory, _size):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(r, "probe_room", full)
    runner = Runner(tmp_root, LOG, term, rand=lambda: 0.5, environ=SLOW)
    with caplog.at_level(logging.INFO):
        assert runner.run() == EX_OK
    assert term.slept == [1.0, 2.0]
    errors = [rec for rec in caplog.records if rec.getMessage().startswith(
        "registration failed: cannot register yet")]
    assert [rec.levelno for rec in errors] == [logging.ERROR] * 2
    assert fake_server.seen() == []
    status = json.loads(tmp_root.status_file.read_text())
    assert "registration: cannot register yet" in status["last_error"]


def test_no_config_exits_78_with_the_fix(tmp_root, caplog):
    with caplog.at_level(logging.INFO):
        assert Runner(tmp_root, LOG, bounded()).run() == EX_CONFIG
    assert caplog.messages[-1] == (
        f"no config at {tmp_root.config_file}: install the agent with the playbook (it writes "
        "server_url and the registration token) or `redflag-agent config apply`")
    assert not tmp_root.state_dir.exists()


def test_no_token_exits_78_with_the_fix_and_writes_nothing(tmp_root, caplog):
    tmp_root.config_dir.mkdir(parents=True)
    tmp_root.config_file.write_text(json.dumps({"version": "6", "server_url": "http://s"}))
    with caplog.at_level(logging.INFO):
        assert Runner(tmp_root, LOG, bounded()).run() == EX_CONFIG
    assert caplog.messages[-1] == r.missing_token_message(tmp_root)
    assert not tmp_root.state_dir.exists()


@pytest.mark.parametrize("url", [None, "   ", 7])
def test_no_server_url_exits_78_with_the_fix(tmp_root, caplog, url):
    cfg = {"version": "6", "registration_token": "T"}
    if url is not None:
        cfg["server_url"] = url
    write_cfg(tmp_root, cfg)
    with caplog.at_level(logging.INFO):
        assert Runner(tmp_root, LOG, bounded()).run() == EX_CONFIG
    if url == 7:
        assert "field 'server_url' must be a string (URL)" in caplog.messages[-1]
    else:
        assert caplog.messages[-1] == (
            f"{tmp_root.config_file} has no server_url: set redflag_agent_server_url in the "
            "playbook (or `redflag-agent register --server URL`)")


def test_backoff_defaults_used_by_a_runner(tmp_root):
    runner = Runner(tmp_root, LOG, bounded(), environ={})
    assert (runner.backoff_base, runner.backoff_cap) == (backoff.DEFAULT_BASE,
                                                         backoff.DEFAULT_CAP)


# --- a cloned identity set aside before enrolling ------------------------------------------
CLONED = {"version": "6", "server_url": "http://s", "agent_id": AID, "token": "J",
          "refresh_token": "R", "machine_id": "a" * 64, "registration_token": "T"}


def set_aside_runner(tmp_root, monkeypatch, outcomes, stop_after=10):
    from redflag_agent import binding  # noqa: PLC0415
    from redflag_agent.machine_id import MachineId  # noqa: PLC0415

    seen = []

    def set_aside(paths, cfg, host, reason, shield):
        seen.append((cfg, host, reason))
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    monkeypatch.setattr(binding, "set_aside", set_aside)
    term = SleepRecorder(stop_after=stop_after)
    runner = Runner(tmp_root, LOG, term, rand=lambda: 0.5, environ=SLOW)
    return runner, term, seen, MachineId("b" * 64, "etc/machine-id")


def test_set_aside_retries_with_sleeps_then_enrolls(tmp_root, monkeypatch, caplog):
    backup = tmp_root.state_dir / "identity_backups" / "x.json"
    runner, term, seen, host = set_aside_runner(
        tmp_root, monkeypatch, [OSError(28, "No space left on device"), OSError("plain"),
                                backup])
    with caplog.at_level(logging.INFO):
        out = runner._set_aside(dict(CLONED), host)
    assert out == {"version": "6", "server_url": "http://s", "registration_token": "T"}
    assert term.slept == [1.0, 2.0]
    assert seen[0][2] == (f"registered on another machine (recorded machine ID {'a' * 64}); "
                          f"this host ({'b' * 64}) enrolls as a new agent")
    assert seen[0][1] is host and len(seen) == 3
    assert caplog.messages == [
        f"cannot set the copied identity of agent {AID} aside (No space left on device); "
        "nothing was changed; retry 1 in 1.0 s",
        f"cannot set the copied identity of agent {AID} aside (plain); nothing was changed; "
        "retry 2 in 2.0 s",
        f"the identity of agent {AID} was registered on another machine (this host is a "
        f"clone): set aside in {backup}; enrolling this host as a new agent with the "
        "registration token"]
    assert [r.levelno for r in caplog.records] == [logging.ERROR, logging.ERROR,
                                                   logging.WARNING]


def test_set_aside_config_error_exits_78(tmp_root, monkeypatch, caplog):
    from redflag_agent import config as c  # noqa: PLC0415

    runner, term, _, host = set_aside_runner(tmp_root, monkeypatch,
                                             [c.ConfigError("planted symlink")])
    with caplog.at_level(logging.INFO):
        assert runner._set_aside(dict(CLONED), host) == EX_CONFIG
    assert term.slept == []
    assert caplog.messages == ["cannot set the copied identity aside: planted symlink"]


def test_set_aside_lost_race_exits_75(tmp_root, monkeypatch, caplog):
    from redflag_agent.runner import EX_TEMPFAIL  # noqa: PLC0415

    runner, _, _, host = set_aside_runner(tmp_root, monkeypatch, [None])
    with caplog.at_level(logging.INFO):
        assert runner._set_aside(dict(CLONED), host) == EX_TEMPFAIL
    assert caplog.messages == [f"{tmp_root.config_file} changed while the agent started "
                               "(another identity is there now); starting again"]


def test_set_aside_backoff_respects_the_configured_cap(tmp_root, monkeypatch):
    runner, term, _, host = set_aside_runner(
        tmp_root, monkeypatch, [OSError("a"), OSError("b"), tmp_root.state_dir / "backup"])
    runner.backoff_cap = 1.5
    runner._set_aside(dict(CLONED), host)
    assert term.slept == [0.75, 0.75]


# --- a whole start, in-process: what the operator reads, the files, the sleeps -------------
# The tests above stop before the check-in loop or pin messages by fragment; these drive
# Runner.run through migration, registration and the loop and pin every line exactly.
RAW = b"0123456789abcdef0123456789abcdef"
HOST = hashlib.sha256(RAW).hexdigest()
NEW = "4b3f0c1e-0000-4000-8000-0000000000aa"
RENEW = "/api/v1/agents/renew"
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ "


@pytest.fixture(autouse=True)
def _fresh_machine_id():
    binding.forget_host_machine_id()
    yield
    binding.forget_host_machine_id()


@pytest.fixture
def log_levels():
    """logs.set_level changes process-wide loggers: put them back."""
    names = ("redflag", "redflag_agent")
    saved = [logging.getLogger(n).level for n in names]
    yield
    for name, level in zip(names, saved):
        logging.getLogger(name).setLevel(level)


class Snapshots(SleepRecorder):
    """A SleepRecorder that also keeps config.json and status.json as they are at each sleep
    (what a loop wrote before it waits), then runs `hook`."""

    def __init__(self, paths, stop_after, hook=None):
        super().__init__(stop_after)
        self.paths = paths
        self.hook = hook
        self.configs = []
        self.statuses = []

    def sleep(self, seconds):
        for path, into in ((self.paths.config_file, self.configs),
                           (self.paths.status_file, self.statuses)):
            into.append(json.loads(path.read_text()) if path.exists() else None)
        if self.hook is not None:
            self.hook(len(self.configs))
        super().sleep(seconds)


def with_machine_id(paths):
    (paths.root / "etc").mkdir(parents=True, exist_ok=True)
    (paths.root / "etc" / "machine-id").write_bytes(RAW + b"\n")


def lines(caplog, name=LOG.name):
    return [(rec.levelno, rec.getMessage()) for rec in caplog.records if rec.name == name]


def status(paths):
    return json.loads(paths.status_file.read_text())


def stamped(value, text):
    """A status field `<UTC time> text`."""
    assert re.fullmatch(STAMP + re.escape(text), value), value
    return True


def registered(url, **extra):
    return {"version": "6", "server_url": url, "agent_id": AID, "token": "JWT",
            "refresh_token": "REFRESH", **extra}


def test_legacy_host_migrates_registers_and_checks_in(tmp_root, fake_server, caplog):
    """The whole start: the plan as the operator reads it, the migration's own logger,
    migrated_from in the registration and every check-in, the loop's backoff settings."""
    fake_server.on("POST", REG, OK)
    fake_server.on("GET", CMDS, (500, {"error": "db"}), (500, {"error": "db"}),
                   (200, {"commands": []}))
    with_machine_id(tmp_root)
    mf.make_legacy(tmp_root, mf.legacy_config(
        server_url=fake_server.url, agent_id=mf.DROP, token=mf.DROP, refresh_token=mf.DROP,
        machine_id=mf.DROP, check_in_interval="120"))
    plan = migration.plan(tmp_root).describe()
    term = SleepRecorder(stop_after=3)
    runner = Runner(tmp_root, LOG, term, rand=lambda: 0.5,
                    environ={"REDFLAG_BACKOFF_BASE": "8", "REDFLAG_BACKOFF_CAP": "10"})
    with caplog.at_level(logging.INFO):
        assert runner.run() == EX_OK
    # check-in retries at base 8, cap 10 (4.0, then 5.0 capped), then the 120 s interval
    assert term.slept == [4.0, 5.0, 120.0]
    assert plan.startswith("migration needed: directory, config, security\n")
    assert lines(caplog) == [
        (logging.INFO, plan),
        (logging.INFO, f"agent {AID} checking in with {fake_server.url} every 120 s"),
        (logging.INFO, "stopping on SIGTERM")]
    moved = lines(caplog, LOG.name + ".migration")
    assert moved[0] == (logging.INFO, "migrating: directory, config, security")
    assert moved[-1][1].startswith("migrated from 0.1.18: directory, config, security")
    assert lines(caplog, "redflag.registration") == [
        (logging.INFO, f"registered with {fake_server.url} as agent {AID}")]
    failed = lines(caplog, "redflag.checkin")
    assert [m.split(" (at ")[0] for _, m in failed] == [
        "check-in failed: server error 500: db; retry 1 in 4.0 s",
        "check-in failed: server error 500: db; retry 2 in 5.0 s"]
    [reg] = fake_server.seen("POST", REG)
    assert reg.headers["Authorization"] == f"Bearer {mf.REG_TOKEN}"
    assert reg.body["metadata"]["migrated_from"] == "0.1.18"
    checkins = fake_server.seen("GET", CMDS)
    assert [s.body["metadata"]["migrated_from"] for s in checkins] == ["0.1.18"] * 3
    assert c.read_config(tmp_root.config_file)["agent_id"] == AID
    assert stamped(status(tmp_root)["last_exit_reason"], "stopped by SIGTERM")


def test_state_dir_is_created_0750_with_its_parents_for_the_agent_user(tmp_root, fake_server,
                                                                        monkeypatch, caplog):
    """Created only once there is work, then handed to redflag-agent; a rejected token then
    stops with 77, the exact reason in the log and the status file."""
    fake_server.on("POST", REG, (401, {"error": "invalid registration token"}))
    with_machine_id(tmp_root)
    mf.make_current(tmp_root, {"version": "6", "server_url": fake_server.url,
                               "registration_token": "T"})
    assert not tmp_root.state_dir.parent.exists()
    handed = []
    monkeypatch.setattr(runner_mod, "chown_to_agent", handed.append)
    old = os.umask(0o022)
    try:
        with caplog.at_level(logging.INFO):
            assert Runner(tmp_root, LOG, bounded()).run() == EX_NOPERM
    finally:
        os.umask(old)
    assert tmp_root.state_dir.is_dir()
    assert tmp_root.state_dir.stat().st_mode & 0o7777 == 0o750
    assert handed == [tmp_root.state_dir]
    [(level, message)] = lines(caplog)
    assert level == logging.ERROR
    assert message == r.rejection_message(client_mod.Unauthorized("invalid registration token"))
    state = status(tmp_root)
    assert stamped(state["last_exit_reason"], "exit 77: token rejected")
    assert stamped(state["last_error"], message)


def test_state_dir_made_by_a_concurrent_start_is_no_error(tmp_root, fake_server, monkeypatch):
    """Two starts at once: both see no state dir, the other creates it first."""

    class Os:
        environ = os.environ

        class path:  # noqa: N801 - stands in for os.path
            @staticmethod
            def lexists(p):
                p.mkdir(mode=0o750)  # the other start, right after this one looked
                return False

    fake_server.on("GET", CMDS, (200, {"commands": []}))
    with_machine_id(tmp_root)
    mf.make_current(tmp_root, registered(fake_server.url, machine_id=HOST))
    tmp_root.state_dir.parent.mkdir(parents=True)
    monkeypatch.setattr(runner_mod, "os", Os)
    term = SleepRecorder(stop_after=1)
    assert Runner(tmp_root, LOG, term, rand=lambda: 0.5, environ=SLOW).run() == EX_OK
    assert len(fake_server.seen("GET", CMDS)) == 1


FAKE_PLAN = migration.Plan(phases=["config"], reasons={"config": "schema 5 -> 6"})
NO_TOKEN = {"version": "6", "server_url": "http://127.0.0.1:9"}


def crash(_paths, _log):
    raise OSError("disk on fire")


@pytest.mark.parametrize(("outcome", "went_on", "after"), [
    (migration.Report(ok=True), True, []),
    (migration.Report(ok=False, message="disk full", config_usable=False), False,
     [(logging.ERROR, "migration failed: disk full")]),
    (migration.Report(ok=False, message="disk full", config_usable=True), True,
     [(logging.ERROR, "migration failed: disk full"),
      (logging.WARNING, "starting with the current config if it is usable")]),
    (crash, True,
     [(logging.ERROR, "migration crashed: OSError: disk on fire"),
      (logging.WARNING, "starting with the current config if it is usable")]),
])
def test_migration_outcome_is_reported_exactly(tmp_root, monkeypatch, caplog, outcome,  # noqa: PLR0917
                                               went_on, after):
    """A failed migration whose config is not usable stops (78); otherwise the start goes on
    (here to the "no token" stop, proof that it went on)."""
    write_cfg(tmp_root, NO_TOKEN)
    planned, executed = [], []
    monkeypatch.setattr(migration, "plan", lambda p: planned.append(p) or FAKE_PLAN)

    def execute(paths, log):
        executed.append((paths, log.name))
        return outcome(paths, log) if callable(outcome) else outcome

    monkeypatch.setattr(migration, "execute", execute)
    with caplog.at_level(logging.INFO):
        assert Runner(tmp_root, LOG, bounded()).run() == EX_CONFIG
    assert planned == [tmp_root]
    assert executed == [(tmp_root, LOG.name + ".migration")]
    then = [(logging.ERROR, r.missing_token_message(tmp_root))] if went_on else []
    assert lines(caplog) == [(logging.INFO, FAKE_PLAN.describe()), *after, *then]


def test_plan_crash_and_blocked_plan_are_logged_exactly(tmp_root, monkeypatch, caplog):
    write_cfg(tmp_root, NO_TOKEN)

    def boom(_paths):
        raise RuntimeError("state unreadable")

    monkeypatch.setattr(migration, "plan", boom)
    with caplog.at_level(logging.INFO):
        assert Runner(tmp_root, LOG, bounded()).run() == EX_CONFIG
    blocked = migration.Plan(blocked={"config": {"attempts": 3, "reason": "disk full"}},
                             reasons={"config": "schema 5 -> 6"})
    monkeypatch.setattr(migration, "plan", lambda _p: blocked)
    with caplog.at_level(logging.INFO):
        assert Runner(tmp_root, LOG, bounded()).run() == EX_CONFIG
    missing = (logging.ERROR, r.missing_token_message(tmp_root))
    assert lines(caplog) == [
        (logging.ERROR, "cannot decide whether a migration is needed (RuntimeError: state "
                        "unreadable); starting without migrating"), missing,
        (logging.ERROR, blocked.describe()), missing]


def test_stop_during_the_migration_before_any_status(tmp_root, monkeypatch, caplog):
    """Stopped at the end of the shielded migration: no status file is open yet, so there is
    no exit reason to record, and the stop is a clean 0."""
    write_cfg(tmp_root, NO_TOKEN)
    term = bounded()
    monkeypatch.setattr(migration, "plan", lambda _p: FAKE_PLAN)

    def execute(_paths, _log):
        term.request_stop()
        return migration.Report(ok=True)

    monkeypatch.setattr(migration, "execute", execute)
    with caplog.at_level(logging.INFO):
        assert Runner(tmp_root, LOG, term).run() == EX_OK
    assert lines(caplog)[-1] == (logging.INFO, "stopping on stop")
    assert not tmp_root.status_file.exists()


def test_config_problems_are_logged_exactly(tmp_root, caplog):
    write_cfg(tmp_root, {"version": "6", "server_url": "ftp://x", "registration_token": "T"})
    with caplog.at_level(logging.INFO):
        assert Runner(tmp_root, LOG, bounded()).run() == EX_CONFIG
    tmp_root.config_file.write_text("{not json")
    with pytest.raises(c.ConfigError) as bad:
        c.read_config(tmp_root.config_file)
    with caplog.at_level(logging.INFO):
        assert Runner(tmp_root, LOG, bounded()).run() == EX_CONFIG
    # the plan says it cannot migrate the corrupt file, then the config itself is refused
    url, plan, corrupt = lines(caplog)
    assert url == (logging.ERROR, f"{tmp_root.config_file}: server_url 'ftp://x' is not an "
                                  "http(s) URL (expected e.g. https://redflag.example:8080)")
    assert plan[1].startswith("cannot migrate: ")
    assert corrupt == (logging.ERROR, f"cannot use the config: {bad.value}")


@pytest.mark.parametrize(("env", "expect"), [(None, logging.ERROR), ("debug", logging.WARNING)])
def test_config_log_level_applies_unless_the_environment_sets_one(tmp_root, monkeypatch,
                                                                  log_levels, env, expect):
    if env is None:
        monkeypatch.delenv("REDFLAG_LOG_LEVEL", raising=False)
    else:
        monkeypatch.setenv("REDFLAG_LOG_LEVEL", env)
    for name in ("redflag", "redflag_agent"):
        logging.getLogger(name).setLevel(logging.WARNING)
    write_cfg(tmp_root, dict(NO_TOKEN, logging={"level": "error"}))
    assert Runner(tmp_root, LOG, bounded()).run() == EX_CONFIG
    assert [logging.getLogger(n).level for n in ("redflag", "redflag_agent")] == [expect] * 2


def test_an_old_schema_is_upgraded_in_memory(tmp_root, fake_server, monkeypatch):
    """The migration did not upgrade it (blocked here): the start runs on an upgraded copy."""
    fake_server.on("POST", REG, (401, {"error": "invalid registration token"}))
    with_machine_id(tmp_root)
    write_cfg(tmp_root, {"version": "5", "server_url": fake_server.url,
                         "registration_token": "T", "check_in_interval": 60})
    monkeypatch.setattr(migration, "plan", lambda _p: migration.Plan(
        blocked={"config": {"attempts": 3, "reason": "disk full"}}))
    assert Runner(tmp_root, LOG, bounded()).run() == EX_NOPERM
    assert json.loads(tmp_root.config_file.read_text())["version"] == "5"
    assert len(fake_server.seen("POST", REG)) == 1


UNREGISTERED = {"version": "6", "registration_token": "T"}


def test_identity_left_behind_stops_before_registering(tmp_root, fake_server, monkeypatch,
                                                      caplog):
    asked = []

    def left(paths):
        asked.append(paths)
        return str(paths.legacy_config_file)

    monkeypatch.setattr(migration, "identity_left_behind", left)
    write_cfg(tmp_root, dict(UNREGISTERED, server_url=fake_server.url))
    with caplog.at_level(logging.INFO):
        assert Runner(tmp_root, LOG, bounded()).run() == EX_CONFIG
    where = tmp_root.legacy_config_file
    assert lines(caplog) == [(logging.ERROR, (
        f"a usable agent identity is in {where}, but no migration will take it over (its phase "
        "is recorded as done, was given up, or the file cannot be migrated: see the error "
        "above); registering now would put a second agent on the server. Fix: fix that file, "
        "or run `redflag-agent migrate --retry-failed` as root to take it over, or move "
        f"{where} away if that identity is stale; then start again"))]
    assert asked == [tmp_root]
    assert fake_server.seen() == []


def test_identity_left_behind_is_not_asked_for_a_registered_host(tmp_root, fake_server,
                                                                 monkeypatch):
    asked = []
    monkeypatch.setattr(migration, "identity_left_behind", asked.append)
    fake_server.on("GET", CMDS, (200, {"commands": []}))
    with_machine_id(tmp_root)
    write_cfg(tmp_root, registered(fake_server.url, machine_id=HOST))
    assert Runner(tmp_root, LOG, SleepRecorder(stop_after=1), environ=SLOW).run() == EX_OK
    assert asked == []


def test_failing_checks_are_warnings_and_registering_goes_on(tmp_root, fake_server,
                                                            monkeypatch, caplog):
    """Neither the left-behind check nor the migrated_from metadata may stop a start."""
    def left(_paths):
        raise OSError("snapshot unreadable")

    def origin(_paths):
        raise ValueError("state unreadable")

    monkeypatch.setattr(migration, "identity_left_behind", left)
    monkeypatch.setattr(migration, "migrated_from", origin)
    fake_server.on("POST", REG, (401, {"error": "invalid registration token"}))
    with_machine_id(tmp_root)
    write_cfg(tmp_root, dict(UNREGISTERED, server_url=fake_server.url))
    with caplog.at_level(logging.INFO):
        assert Runner(tmp_root, LOG, bounded()).run() == EX_NOPERM
    assert lines(caplog)[:2] == [
        (logging.WARNING, "cannot check for an identity the migration left behind: "
                          "snapshot unreadable"),
        (logging.WARNING, "cannot read migration state for metadata: state unreadable")]
    [reg] = fake_server.seen("POST", REG)
    assert "migrated_from" not in reg.body["metadata"]


def test_migrated_from_reaches_the_registration_from_the_state(tmp_root, fake_server,
                                                              monkeypatch):
    asked = []
    monkeypatch.setattr(migration, "migrated_from", lambda p: asked.append(p) or "0.1.19")
    fake_server.on("POST", REG, (401, {"error": "invalid registration token"}))
    with_machine_id(tmp_root)
    write_cfg(tmp_root, dict(UNREGISTERED, server_url=fake_server.url))
    assert Runner(tmp_root, LOG, bounded()).run() == EX_NOPERM
    assert asked == [tmp_root]
    [reg] = fake_server.seen("POST", REG)
    assert reg.body["metadata"]["migrated_from"] == "0.1.19"


def test_clone_without_token_is_logged_and_recorded_exactly(tmp_root, caplog):
    cfg = registered("http://127.0.0.1:9", machine_id="b" * 64)
    with_machine_id(tmp_root)
    write_cfg(tmp_root, cfg)
    message = binding.clone_message(cfg, binding.host_machine_id(tmp_root), tmp_root)
    with caplog.at_level(logging.INFO):
        assert Runner(tmp_root, LOG, bounded()).run() == EX_CONFIG
    assert lines(caplog) == [(logging.ERROR, message)]
    state = status(tmp_root)
    assert stamped(state["last_exit_reason"], "exit 78: identity of another machine")
    assert stamped(state["last_error"], message)


def test_adopted_identity_is_announced_and_recorded(tmp_root, fake_server, caplog):
    fake_server.on("GET", CMDS, (200, {"commands": []}))
    with_machine_id(tmp_root)
    write_cfg(tmp_root, registered(fake_server.url, check_in_interval=60))
    with caplog.at_level(logging.INFO):
        assert Runner(tmp_root, LOG, SleepRecorder(stop_after=1), environ=SLOW).run() == EX_OK
    reason = binding.decide_identity(None, HOST, False).reason
    assert lines(caplog) == [
        (logging.INFO, reason),
        (logging.INFO, f"agent {AID} checking in with {fake_server.url} every 60 s"),
        (logging.INFO, "stopping on SIGTERM")]
    assert c.read_config(tmp_root.config_file)["machine_id"] == HOST


def test_default_interval_is_announced(tmp_root, fake_server, caplog):
    fake_server.on("GET", CMDS, (200, {"commands": []}))
    with_machine_id(tmp_root)
    write_cfg(tmp_root, registered(fake_server.url, machine_id=HOST))
    with caplog.at_level(logging.INFO):
        assert Runner(tmp_root, LOG, SleepRecorder(stop_after=1), environ=SLOW).run() == EX_OK
    assert lines(caplog)[0] == (logging.INFO, f"agent {AID} checking in with {fake_server.url} "
                                              f"every {c.DEFAULT_CHECK_IN_INTERVAL} s")


def test_unfinished_attempt_stops_78_logged_and_recorded_exactly(tmp_root, fake_server,
                                                                 caplog):
    with_machine_id(tmp_root)
    write_cfg(tmp_root, dict(UNREGISTERED, server_url=fake_server.url))
    attempt = r.attempt_record(fake_server.url, "T", "h", 1, "then")
    r.write_attempt(tmp_root, attempt)
    message = r.pending_message(tmp_root, attempt, "not registering again")
    with caplog.at_level(logging.INFO):
        assert Runner(tmp_root, LOG, bounded()).run() == EX_CONFIG
    assert lines(caplog) == [(logging.ERROR, message)]
    state = status(tmp_root)
    assert stamped(state["last_exit_reason"], "exit 78: unfinished registration attempt")
    assert stamped(state["last_error"], message)
    assert fake_server.seen() == []


def test_refusal_at_check_in_is_logged_and_recorded_exactly(tmp_root, fake_server, caplog):
    fake_server.on("GET", CMDS, (426, {"error": "agent version too old - upgrade required "
                                                "for security", "minimum_version": "9.9"}))
    with_machine_id(tmp_root)
    write_cfg(tmp_root, registered(fake_server.url, machine_id=HOST))
    with caplog.at_level(logging.INFO):
        assert Runner(tmp_root, LOG, bounded()).run() == EX_CONFIG
    announced, (level, message) = lines(caplog)
    assert level == logging.ERROR and "9.9 or newer" in message
    state = status(tmp_root)
    assert stamped(state["last_exit_reason"], "exit 78: refused by the server")
    assert stamped(state["last_error"], message)


def test_config_error_in_the_loop_stops_78(tmp_root, fake_server, monkeypatch, caplog):
    def planted(_self):
        raise c.ConfigError("planted")

    monkeypatch.setattr(checkin_mod.Agent, "check_in_once", planted)
    with_machine_id(tmp_root)
    write_cfg(tmp_root, registered(fake_server.url, machine_id=HOST))
    with caplog.at_level(logging.INFO):
        assert Runner(tmp_root, LOG, bounded()).run() == EX_CONFIG
    assert lines(caplog)[-1] == (logging.ERROR, "cannot use the config: planted")


def test_lock_held_and_refused_are_logged_exactly(tmp_root, caplog):
    write_cfg(tmp_root, NO_TOKEN)
    other = InstanceLock(tmp_root.state_dir)
    other.acquire()
    try:
        with pytest.raises(LockHeld) as held:
            InstanceLock(tmp_root.state_dir).acquire()
        with caplog.at_level(logging.INFO):
            assert Runner(tmp_root, LOG, bounded()).run() == EX_TEMPFAIL
    finally:
        other.release()
    os.rmdir(tmp_root.state_dir)
    tmp_root.state_dir.write_text("")
    # registered: the start gets as far as locking the state dir before anything else
    with_machine_id(tmp_root)
    tmp_root.config_file.write_text(json.dumps(registered("http://127.0.0.1:9",
                                                          machine_id=HOST)))
    refused = InstanceLock(tmp_root.state_dir)
    refused.acquire()
    with caplog.at_level(logging.INFO):
        assert Runner(tmp_root, LOG, bounded()).run() == EX_CONFIG
    assert lines(caplog) == [
        (logging.ERROR, str(held.value)),
        (logging.ERROR, f"not starting: the instance lock cannot be taken: {refused.refused}. "
                        "Fix: remove it and re-run the playbook (it creates "
                        f"{tmp_root.state_dir} as a directory owned by redflag-agent)")]


def test_status_write_failure_is_a_warning_of_the_runner_log(tmp_root, fake_server, caplog):
    fake_server.on("GET", CMDS, (200, {"commands": []}))
    with_machine_id(tmp_root)
    write_cfg(tmp_root, registered(fake_server.url, machine_id=HOST))
    tmp_root.status_file.mkdir()
    with caplog.at_level(logging.INFO):
        assert Runner(tmp_root, LOG, SleepRecorder(stop_after=1), environ=SLOW).run() == EX_OK
    assert any(level == logging.WARNING and m.startswith(f"cannot write {tmp_root.status_file}")
               for level, m in lines(caplog))


@pytest.mark.parametrize(("proxy", "tls"), [
    ({"url": "http://proxy:3128"}, {"ca_file": "/etc/ca.pem"}),
    ("http://proxy:3128", ["ca"]),
])
def test_make_client_passes_proxy_and_tls_sections(monkeypatch, proxy, tls):
    made = []

    class Recorder:
        def __init__(self, url, **kwargs):
            made.append((url, kwargs))

    monkeypatch.setattr(client_mod, "Client", Recorder)
    make_client({"server_url": "http://s", "proxy": proxy, "tls": tls}, "m")
    [(url, kwargs)] = made
    assert url == "http://s"
    # only a section (a dict) is passed on; anything else is no proxy / default TLS
    assert kwargs["proxy"] == (proxy if isinstance(proxy, dict) else None)
    assert kwargs["tls"] == (tls if isinstance(tls, dict) else None)


def test_rate_limited_registration_waits_the_servers_retry_after(tmp_root, fake_server,
                                                                monkeypatch, caplog):
    """A client error is a warning (a save problem is an error); Retry-After is honoured and
    the log says when the next try is."""
    real = r.perform
    calls = []

    def perform(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise client_mod.RateLimited(45.0, "slow down")
        return real(*args, **kwargs)

    monkeypatch.setattr(r, "perform", perform)
    fake_server.on("POST", REG, OK)
    fake_server.on("GET", CMDS, (200, {"commands": []}))
    with_machine_id(tmp_root)
    write_cfg(tmp_root, dict(UNREGISTERED, server_url=fake_server.url, check_in_interval=60))
    term = SleepRecorder(stop_after=2)
    runner = Runner(tmp_root, LOG, term, rand=lambda: 0.5, environ=SLOW)
    before = time.time()
    with caplog.at_level(logging.INFO):
        assert runner.run() == EX_OK
    after = time.time()
    assert term.slept == [45.0, 60.0]
    first = [rec for rec in caplog.records if rec.name == "redflag.registration"][0]
    assert first.levelno == logging.WARNING
    at = {time.strftime("%H:%M:%S", time.gmtime(t + 45)) for t in range(int(before),
                                                                         int(after) + 2)}
    assert first.getMessage() in {"registration failed: rate limited (429): slow down; retry 1 "
                                  f"in 45.0 s (at {hms})" for hms in at}


def test_stop_during_registration_is_shielded_until_the_identity_is_saved(tmp_root,
                                                                         fake_server, caplog):
    """A stop that arrives while the server registers us waits for the save, then stops:
    the identity is on disk and no check-in is made."""
    term = bounded()

    def answer(_seen):
        term.request_stop()
        return OK

    fake_server.on("POST", REG, answer)
    fake_server.on("GET", CMDS, (200, {"commands": []}))
    with_machine_id(tmp_root)
    write_cfg(tmp_root, dict(UNREGISTERED, server_url=fake_server.url))
    with caplog.at_level(logging.INFO):
        assert Runner(tmp_root, LOG, term, environ=SLOW).run() == EX_OK
    assert c.read_config(tmp_root.config_file)["agent_id"] == AID
    assert fake_server.seen("GET", CMDS) == []
    assert lines(caplog) == [(logging.INFO, "stopping on stop")]


def fail_saves(monkeypatch, count):
    """config.json cannot be written the first `count` times (a full disk)."""
    real = c.save_config
    failures = []

    def save(paths, cfg):
        if len(failures) < count:
            failures.append(1)
            raise OSError(28, "No space left on device")
        real(paths, cfg)

    monkeypatch.setattr(c, "save_config", save)
    return failures


def test_unsaved_registration_is_saved_with_the_rotated_tokens_at_once(tmp_root, fake_server,
                                                                      monkeypatch):
    """Registered but not saved (disk full), then the refresh token rotates: the identity
    held in memory is saved right then, not at the next scheduled retry."""
    fake_server.on("POST", REG, OK)
    fake_server.on("GET", CMDS, (401, {"error": "expired"}), (200, {"commands": []}))
    fake_server.on("POST", RENEW, (200, {"token": "JWT-B", "refresh_token": "REFRESH-B"}))
    with_machine_id(tmp_root)
    write_cfg(tmp_root, dict(UNREGISTERED, server_url=fake_server.url))
    assert fail_saves(monkeypatch, 1) == []
    term = Snapshots(tmp_root, stop_after=1)
    # the scheduled save retry is 30 s away (base 60, rand 0.5)
    runner = Runner(tmp_root, LOG, term, rand=lambda: 0.5,
                    environ={"REDFLAG_BACKOFF_BASE": "60", "REDFLAG_BACKOFF_CAP": "60"})
    assert runner.run() == EX_OK
    [saved] = term.configs
    assert (saved["agent_id"], saved["token"], saved["refresh_token"]) == (
        AID, "JWT-B", "REFRESH-B")
    assert term.statuses[0]["identity_unsaved"] is None


def test_unsaved_rotation_is_kept_with_its_reason_and_never_saved_over_another(
        tmp_root, fake_server, monkeypatch, caplog):
    """The rotated refresh token cannot be saved: the status says so (kind rotation, the
    reason); when config.json meanwhile holds another identity, it is not written over."""
    fake_server.on("GET", CMDS, (401, {"error": "expired"}), (200, {"commands": []}))
    fake_server.on("POST", RENEW, (200, {"token": "JWT-B", "refresh_token": "REFRESH-B"}))
    with_machine_id(tmp_root)
    write_cfg(tmp_root, registered(fake_server.url, machine_id=HOST))
    fail_saves(monkeypatch, 1)
    other = registered(fake_server.url, machine_id=HOST, agent_id=NEW,
                       refresh_token="REFRESH-N")

    def reenrolled(_n):  # `config apply` re-enrolls the host meanwhile
        c.save_config(tmp_root, dict(other))

    term = Snapshots(tmp_root, stop_after=1, hook=reenrolled)
    runner = Runner(tmp_root, LOG, term, rand=lambda: 0.5,
                    environ={"REDFLAG_BACKOFF_BASE": "60", "REDFLAG_BACKOFF_CAP": "60"})
    with caplog.at_level(logging.INFO):
        assert runner.run() == EX_OK
    unsaved = term.statuses[0]["identity_unsaved"]
    assert unsaved == {"agent_id": AID, "since": unsaved["since"],
                       "error": "No space left on device", "kind": "rotation"}
    assert (logging.ERROR, (
        f"cannot save the rotated refresh token of agent {AID} to {tmp_root.config_file} (No "
        "space left on device); if the agent stops before it is saved, its next renewal "
        "relies on the server's one grace replay")) in lines(caplog, "redflag.checkin")
    on_disk = c.read_config(tmp_root.config_file)
    assert (on_disk["agent_id"], on_disk["refresh_token"]) == (NEW, "REFRESH-N")


def test_a_clone_does_not_enroll_anew_while_an_identity_waits(tmp_root, fake_server,
                                                              monkeypatch, caplog):
    """make prove, invariant 6: a registered copy of another machine's identity is set aside
    only when no layout the migration has not taken over holds a usable identity."""
    where = str(tmp_root.v0119_config_file)
    asked = []
    monkeypatch.setattr(migration, "identity_left_behind",
                        lambda paths: asked.append(paths) or where)
    with_machine_id(tmp_root)
    cfg = registered(fake_server.url, machine_id="a" * 64, registration_token="T")
    write_cfg(tmp_root, cfg)
    before = tmp_root.config_file.read_bytes()
    with caplog.at_level(logging.INFO):
        assert Runner(tmp_root, LOG, bounded()).run() == EX_CONFIG
    assert (logging.ERROR, runner_mod.left_behind_message(where)) in lines(caplog)
    assert tmp_root.config_file.read_bytes() == before
    assert not tmp_root.identity_backups_dir.exists()
    assert fake_server.seen() == []
    assert asked == [tmp_root]
