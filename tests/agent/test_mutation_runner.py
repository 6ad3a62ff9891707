"""The runner's exits, messages and sleeps, pinned exactly (issue 15: mutation testing).

The registration retry loop must sleep the backoff between tries: without it an outage
turns every host into a hot loop against the server.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from redflag_agent import backoff
from redflag_agent import registration as r
from redflag_agent.paths import Paths
from redflag_agent.runner import EX_CONFIG, EX_OK, Runner, backoff_settings, make_client
from redflag_agent.signals import Terminator

from .sleep_recorder import SleepRecorder

LOG = logging.getLogger("redflag.test.mutrun")
AID = "4b3f0c1e-0000-4000-8000-000000000001"
REG = "/api/v1/agents/register"
CMDS = f"/api/v1/agents/{AID}/commands"
OK = (200, {"agent_id": AID, "token": "JWT-A", "refresh_token": "REFRESH-A"})
SLOW = {"REDFLAG_BACKOFF_BASE": "2", "REDFLAG_BACKOFF_CAP": "60"}




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
        assert Runner(tmp_root, LOG, Terminator()).run() == EX_CONFIG
    assert caplog.messages[-1] == (
        f"no config at {tmp_root.config_file}: install the agent with the playbook (it writes "
        "server_url and the registration token) or `redflag-agent config apply`")
    assert not tmp_root.state_dir.exists()


def test_no_token_exits_78_with_the_fix_and_writes_nothing(tmp_root, caplog):
    tmp_root.config_dir.mkdir(parents=True)
    tmp_root.config_file.write_text(json.dumps({"version": "6", "server_url": "http://s"}))
    with caplog.at_level(logging.INFO):
        assert Runner(tmp_root, LOG, Terminator()).run() == EX_CONFIG
    assert caplog.messages[-1] == r.missing_token_message(tmp_root)
    assert not tmp_root.state_dir.exists()


@pytest.mark.parametrize("url", [None, "   ", 7])
def test_no_server_url_exits_78_with_the_fix(tmp_root, caplog, url):
    cfg = {"version": "6", "registration_token": "T"}
    if url is not None:
        cfg["server_url"] = url
    write_cfg(tmp_root, cfg)
    with caplog.at_level(logging.INFO):
        assert Runner(tmp_root, LOG, Terminator()).run() == EX_CONFIG
    if url == 7:
        assert "field 'server_url' must be a string (URL)" in caplog.messages[-1]
    else:
        assert caplog.messages[-1] == (
            f"{tmp_root.config_file} has no server_url: set redflag_agent_server_url in the "
            "playbook (or `redflag-agent register --server URL`)")


def test_backoff_defaults_used_by_a_runner(tmp_root):
    runner = Runner(tmp_root, LOG, Terminator(), environ={})
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
