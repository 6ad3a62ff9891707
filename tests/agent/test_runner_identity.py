"""`run` and `config apply` around the identity, in-process against a local fake server: a
cloned identity is never used, an adopted one gets this host's machine ID, binding answers
stop with their exit code, a refused instance lock stops the start, and `config apply` with
reregister forgets an unfinished registration."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import sys
import threading
import time

import pytest

from redflag_agent import binding, cli
from redflag_agent import config as c
from redflag_agent import registration as r
from redflag_agent.exits import EX_CONFIG, EX_NOPERM, EX_OK
from redflag_agent.runner import Runner
from redflag_agent.signals import Terminator
from redflag_agent.status import read_state

LOG = logging.getLogger("redflag.test")
AID = "4b3f0c1e-0000-4000-8000-000000000001"
NEW = "4b3f0c1e-0000-4000-8000-0000000000aa"
CMDS = f"/api/v1/agents/{AID}/commands"
NEW_CMDS = f"/api/v1/agents/{NEW}/commands"
REG = "/api/v1/agents/register"
RAW = b"0123456789abcdef0123456789abcdef"
HOST = hashlib.sha256(RAW).hexdigest()
ELSEWHERE = "b" * 64


@pytest.fixture(autouse=True)
def _fresh_machine_id():
    binding.forget_host_machine_id()
    yield
    binding.forget_host_machine_id()


def setup_host(paths, cfg):
    (paths.root / "etc").mkdir(parents=True, exist_ok=True)
    (paths.root / "etc" / "machine-id").write_bytes(RAW + b"\n")
    paths.state_dir.mkdir(parents=True, exist_ok=True)
    c.save_config(paths, cfg)


def registered(url, **extra):
    return {"version": "6", "server_url": url, "agent_id": AID, "token": "JWT",
            "refresh_token": "REFRESH", **extra}


def _holds(predicate) -> bool:
    """predicate(), where a config.json caught mid-swap (read_config refuses the replaced,
    unlinked file it opened) means "not yet"."""
    try:
        return bool(predicate())
    except c.ConfigError:
        return False


def run_until(paths, predicate, timeout=15.0):
    """Run in a thread; stop it once predicate() holds (or at timeout: a start that should
    have stopped by itself then ends with 0 and fails the test). -> exit code."""
    term = Terminator()
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault(
        "code", Runner(paths, LOG, term).run()), daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while thread.is_alive() and time.monotonic() < deadline and not _holds(predicate):
        time.sleep(0.02)
    term.request_stop()
    thread.join(timeout)
    assert not thread.is_alive()
    return out["code"]


def test_clone_without_token_stops_78_and_never_calls_the_server(tmp_root, fake_server, caplog):
    setup_host(tmp_root, registered(fake_server.url, machine_id=ELSEWHERE))
    before = tmp_root.config_file.read_bytes()
    with caplog.at_level(logging.INFO):
        assert run_until(tmp_root, lambda: False) == EX_CONFIG
    assert fake_server.seen() == []
    assert tmp_root.config_file.read_bytes() == before
    assert "registered on another machine" in caplog.text and AID in caplog.text
    assert "redflag_agent_registration_token" in caplog.text
    assert "78" in read_state(tmp_root)["last_exit_reason"]


def test_clone_with_token_sets_the_identity_aside_and_enrolls(tmp_root, fake_server):
    fake_server.on("POST", REG, (200, {"agent_id": NEW, "token": "JWT-N",
                                       "refresh_token": "REFRESH-N"}))
    fake_server.on("GET", NEW_CMDS, (200, {"commands": []}))
    setup_host(tmp_root, registered(fake_server.url, machine_id=ELSEWHERE,
                                    registration_token="REG"))
    code = run_until(tmp_root, lambda: fake_server.seen("GET", NEW_CMDS))
    assert code == EX_OK
    assert fake_server.seen("GET", CMDS) == [], "never checked in as the copied agent"
    cfg = c.read_config(tmp_root.config_file)
    assert (cfg["agent_id"], cfg["machine_id"]) == (NEW, HOST)
    [backup] = (tmp_root.state_dir / "identity_backups").iterdir()
    kept = json.loads(backup.read_text())
    assert (kept["agent_id"], kept["refresh_token"], kept["machine_id"]) == (
        AID, "REFRESH", ELSEWHERE)


def test_identity_without_machine_id_is_adopted_after_the_server_accepts(tmp_root,
                                                                        fake_server):
    fake_server.on("GET", CMDS, (200, {"commands": []}))
    setup_host(tmp_root, registered(fake_server.url))
    assert run_until(tmp_root, lambda: "machine_id" in c.read_config(
        tmp_root.config_file)) == EX_OK
    assert c.read_config(tmp_root.config_file)["machine_id"] == HOST
    [checkin] = fake_server.seen("GET", CMDS)[:1]
    assert {k.lower(): v for k, v in checkin.headers.items()}["x-machine-id"] == HOST


@pytest.mark.parametrize(("status", "body", "code", "fragment"), [
    (403, {"error": "machine ID mismatch - config file copied to different machine"},
     EX_NOPERM, "rebind the agent"),
    (403, {"error": "agent not bound to machine - re-registration required"}, EX_NOPERM,
     "before the server bound agents"),
    (426, {"error": "agent version too old - upgrade required for security",
           "minimum_version": "9.9"}, EX_CONFIG, "9.9 or newer"),
])
def test_binding_answer_stops_run(tmp_root, fake_server, caplog, status, body, code,  # noqa: PLR0917
                                  fragment):
    fake_server.on("GET", CMDS, (status, body))
    setup_host(tmp_root, registered(fake_server.url, machine_id=HOST))
    with caplog.at_level(logging.INFO):
        assert run_until(tmp_root, lambda: False) == code
    assert len(fake_server.seen("GET", CMDS)) == 1, "no retry loop"
    assert fragment in caplog.text
    assert f"exit {code}" in read_state(tmp_root)["last_exit_reason"]


def test_409_on_register_stops_78_after_one_request(tmp_root, fake_server, caplog):
    fake_server.on("POST", REG, (409, {"error": "machine ID already registered to another "
                                                "agent", "existing_agent_id": AID,
                                       "existing_hostname": "golden-image",
                                       "existing_last_seen": "2026-11-30T10:00:00Z"}))
    setup_host(tmp_root, {"version": "6", "server_url": fake_server.url,
                          "registration_token": "REG"})
    with caplog.at_level(logging.INFO):
        assert run_until(tmp_root, lambda: False) == EX_CONFIG
    assert len(fake_server.seen("POST", REG)) == 1
    assert "golden-image" in caplog.text and "/etc/machine-id" in caplog.text
    assert r.read_attempt(tmp_root) is None


@pytest.mark.parametrize("plant", ["symlink", "file"])
def test_refused_instance_lock_stops_run_with_78(tmp_path, tmp_root, fake_server, caplog,
                                                 plant):
    fake_server.on("GET", CMDS, (200, {"commands": []}))
    setup_host(tmp_root, registered(fake_server.url, machine_id=HOST))
    os.rmdir(tmp_root.state_dir)
    if plant == "symlink":
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        tmp_root.state_dir.symlink_to(elsewhere)
    else:
        tmp_root.state_dir.write_text("")
    with caplog.at_level(logging.INFO):
        assert run_until(tmp_root, lambda: False) == EX_CONFIG
    assert fake_server.seen() == [], "never runs without the lock"
    assert "instance lock cannot be taken" in caplog.text


@pytest.mark.parametrize(("check", "reregister", "cleared"), [
    (False, True, True),
    (True, True, False),  # --check writes nothing
    (False, False, False),
])
def test_config_apply_reregister_forgets_the_attempt(tmp_root, monkeypatch, check, reregister,
                                                     cleared):
    setup_host(tmp_root, {"version": "6", "server_url": "http://s",
                          "registration_token": "OLD"})
    r.write_attempt(tmp_root, r.attempt_record("http://s", "OLD", "h", 1, "then"))
    stdin = json.dumps({"settings": {"server_url": "http://s"}, "registration_token": "OLD",
                        "reregister": reregister})
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode())))
    argv = ["config", "apply", *(["--check"] if check else [])]
    # a change is needed for a write: the token is new to the file in the reregister case
    c.save_config(tmp_root, {"version": "6", "server_url": "http://s", "agent_id": AID,
                             "refresh_token": "R"})
    monkeypatch.setenv("REDFLAG_ROOT", str(tmp_root.root))
    assert cli.main(argv) == EX_OK
    assert (r.read_attempt(tmp_root) is None) is cleared


def test_rotated_tokens_unsaved_are_kept_and_saved_later(tmp_root, fake_server, monkeypatch,
                                                         caplog):
    """A full disk when the rotated refresh token arrives: the pair is used from memory and
    saved by the runner's retry (the mechanism of an unsaved registration)."""
    renew = "/api/v1/agents/renew"
    fake_server.on("GET", CMDS, (401, {"error": "expired"}), (200, {"commands": []}))
    fake_server.on("POST", renew, (200, {"token": "JWT-2", "refresh_token": "REFRESH-2"}))
    setup_host(tmp_root, registered(fake_server.url, machine_id=HOST, check_in_interval=1))
    real_save = c.save_config
    failures = []

    def full_once(paths, cfg):
        if not failures:
            failures.append(1)
            raise OSError(28, "No space left on device")
        real_save(paths, cfg)

    monkeypatch.setattr(c, "save_config", full_once)
    monkeypatch.setenv("REDFLAG_BACKOFF_BASE", "0.01")
    monkeypatch.setenv("REDFLAG_BACKOFF_CAP", "0.05")
    with caplog.at_level(logging.INFO):
        code = run_until(tmp_root, lambda: c.read_config(tmp_root.config_file)[
            "refresh_token"] == "REFRESH-2")
    assert code == EX_OK and failures == [1]
    on_disk = c.read_config(tmp_root.config_file)
    assert (on_disk["token"], on_disk["refresh_token"]) == ("JWT-2", "REFRESH-2")
    assert len(fake_server.seen("POST", renew)) == 1
    assert "cannot save the rotated refresh token" in caplog.text
    assert read_state(tmp_root)["identity_unsaved"] is None
