"""`unregister` takes the instance lock: while the service (or any `run`) holds it, it exits
75 naming the service and leaves config.json byte for byte as it was, asks nothing of the
server and keeps no backup (the running agent renews and saves tokens in config.json, so an
unregister under it could resurrect the forgotten identity or drop a fresh one)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time

import pytest

from redflag_agent import cli as climod
from redflag_agent.exits import EX_CONFIG, EX_OK, EX_TEMPFAIL
from redflag_agent.paths import Paths

from .test_cli import AID, CMDS, cli, registered_cfg, snapshot, start, stop, write_config

DELETE = f"/api/v1/agents/{AID}"


@contextlib.contextmanager
def held_lock(directory):
    """The instance lock as `run` holds it: flock on the state directory itself."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)


def lock_is_free(directory) -> bool:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def test_locked_message_names_the_service_and_the_fix():
    paths = Paths("/r")
    assert climod.unregister_locked_message(paths) == (
        "the agent service redflag-agent.service (or another `redflag-agent run`) is running "
        "on this host and holds the lock on /r/var/lib/redflag-agent: it renews and saves the "
        "tokens in /r/etc/redflag-agent/config.json, so unregistering under it could bring "
        "the identity back or drop a fresh one. Stop it first (`systemctl stop "
        "redflag-agent`), then unregister; nothing was changed")


@pytest.mark.parametrize("args", [("unregister",), ("unregister", "--json")])
def test_unregister_while_the_lock_is_held_exits_75_and_changes_nothing(
        tmp_root, agent_env, fake_server, args):
    fake_server.on("DELETE", DELETE, (200, {"message": "deleted"}))
    write_config(tmp_root, registered_cfg(fake_server.url, machine_id="keep"))
    config_before = tmp_root.config_file.read_bytes()
    before = snapshot(tmp_root.root)
    with held_lock(tmp_root.state_dir):
        res = cli(tmp_root, agent_env, *args)
    assert res.returncode == EX_TEMPFAIL, res.stderr
    assert res.stdout == ""
    assert "redflag-agent.service" in res.stderr and "systemctl stop redflag-agent" in res.stderr
    assert str(tmp_root.state_dir) in res.stderr and "nothing was changed" in res.stderr
    assert "Traceback" not in res.stderr
    assert "JWT-SECRET" not in res.stderr and "REFRESH-SECRET" not in res.stderr
    # refused before anything: no backup, no request, config.json byte for byte
    assert tmp_root.config_file.read_bytes() == config_before
    assert snapshot(tmp_root.root) == before
    assert fake_server.seen() == []
    # the holder went away: the same command now unregisters
    res = cli(tmp_root, agent_env, *args)
    assert res.returncode == EX_OK, res.stderr
    assert "agent_id" not in json.loads(tmp_root.config_file.read_text())
    assert len(fake_server.seen("DELETE", DELETE)) == 1


def test_unregister_while_run_holds_the_lock(tmp_root, agent_env, fake_server):
    """A real `run` checking in as the registered agent: unregister refuses until it stops."""
    fake_server.on("GET", CMDS, (200, {"commands": []}))
    fake_server.on("DELETE", DELETE, (200, {"message": "deleted"}))
    write_config(tmp_root, registered_cfg(fake_server.url))
    proc = start(tmp_root, agent_env, "run")
    try:
        fake_server.wait_for("GET", CMDS)
        # `run` records the machine ID it binds the identity to (its one write here)
        deadline = time.monotonic() + 10
        while "machine_id" not in json.loads(tmp_root.config_file.read_text()):
            assert time.monotonic() < deadline, "run never recorded the machine ID"
            time.sleep(0.05)
        config_before = tmp_root.config_file.read_bytes()
        res = cli(tmp_root, agent_env, "unregister", "--json")
        assert res.returncode == EX_TEMPFAIL, res.stderr
        assert "redflag-agent.service" in res.stderr
        assert tmp_root.config_file.read_bytes() == config_before
        assert fake_server.seen("DELETE", DELETE) == []
    finally:
        code, _ = stop(proc)
    assert code == 0
    res = cli(tmp_root, agent_env, "unregister", "--json")
    assert res.returncode == EX_OK, res.stderr
    assert json.loads(res.stdout)["unregistered"] is True


def test_not_registered_says_so_even_while_locked_and_creates_nothing(tmp_root, agent_env):
    write_config(tmp_root, {"version": "6", "server_url": "http://127.0.0.1:9"},
                 state_dir=False)
    before = snapshot(tmp_root.root)
    res = cli(tmp_root, agent_env, "unregister")
    assert res.returncode == EX_CONFIG and "not registered" in res.stderr
    assert snapshot(tmp_root.root) == before  # no state dir made for nothing
    tmp_root.state_dir.mkdir(parents=True)
    with held_lock(tmp_root.state_dir):
        res = cli(tmp_root, agent_env, "unregister")
    assert res.returncode == EX_CONFIG and "not registered" in res.stderr


def test_state_dir_that_is_a_symlink_is_refused_before_the_server(tmp_root, agent_env,
                                                                  fake_server, tmp_path):
    fake_server.on("DELETE", DELETE, (200, {"message": "deleted"}))
    write_config(tmp_root, registered_cfg(fake_server.url), state_dir=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    tmp_root.state_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_root.state_dir.symlink_to(elsewhere)
    config_before = tmp_root.config_file.read_bytes()
    res = cli(tmp_root, agent_env, "unregister")
    assert res.returncode == EX_CONFIG, res.stderr
    assert "instance lock cannot be taken" in res.stderr and "nothing was changed" in res.stderr
    assert tmp_root.config_file.read_bytes() == config_before
    assert fake_server.seen() == [] and list(elsewhere.iterdir()) == []


def test_in_process_unregister_releases_the_lock(tmp_root, fake_server, monkeypatch):
    fake_server.on("DELETE", DELETE, (200, {"message": "deleted"}))
    write_config(tmp_root, registered_cfg(fake_server.url))
    monkeypatch.setenv("REDFLAG_ROOT", str(tmp_root.root))
    assert climod.main(["unregister"]) == EX_OK
    assert lock_is_free(tmp_root.state_dir)
    assert climod.main(["unregister"]) == EX_CONFIG  # nothing left to unregister
    assert lock_is_free(tmp_root.state_dir)
