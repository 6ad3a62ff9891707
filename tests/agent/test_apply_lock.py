"""`config apply` that drops an identity (reregister, forget_identity) takes the instance lock,
as `unregister` does: under a running service it exits 75 and changes nothing, because the
running agent renews and saves tokens in config.json. Every other apply runs beside the
service as before."""

from __future__ import annotations

import json

import pytest

from redflag_agent import cli as climod
from redflag_agent.exits import EX_CONFIG, EX_OK, EX_TEMPFAIL
from redflag_agent.paths import Paths

from .test_cli import AID, cli, registered_cfg, snapshot, write_config
from .test_unregister_lock import held_lock, lock_is_free

URL = "http://127.0.0.1:9"


@pytest.mark.parametrize(("current", "reregister", "forget", "expect"), [
    (None, True, False, False),                       # nothing on disk
    ({}, True, True, False),
    ({"registration_token": "T"}, True, False, False),  # a token is no identity
    ({"agent_id": AID}, False, False, False),           # a plain settings apply
    ({"agent_id": AID}, True, False, True),
    ({"agent_id": AID}, False, True, True),
    ({"refresh_token": "R"}, True, False, True),
    ({"token": "J"}, False, True, True),
    ({"agent_id": ""}, True, True, False),               # an empty value holds nothing
])
def test_drops_identity(current, reregister, forget, expect):
    assert climod.drops_identity(current, reregister, forget) is expect


def test_locked_message_names_the_service_and_the_fix():
    assert climod.apply_locked_message(Paths("/r")) == (
        "the agent service redflag-agent.service (or another `redflag-agent run`) is running "
        "on this host and holds the lock on /r/var/lib/redflag-agent: it renews and saves the "
        "tokens in /r/etc/redflag-agent/config.json, so dropping the identity under it could "
        "bring it back. Stop it first (`systemctl stop redflag-agent`), then apply again; "
        "nothing was changed")


@pytest.mark.parametrize("doc", [
    {"settings": {}, "registration_token": "NEW-TOKEN", "reregister": True},
    {"settings": {}, "forget_identity": True},
])
def test_dropping_the_identity_under_the_service_exits_75_and_changes_nothing(
        tmp_root, agent_env, doc):
    write_config(tmp_root, registered_cfg(URL))
    before = snapshot(tmp_root.root)
    with held_lock(tmp_root.state_dir):
        res = cli(tmp_root, agent_env, "config", "apply", "--json", stdin=json.dumps(doc))
    assert res.returncode == EX_TEMPFAIL, res.stderr
    assert climod.apply_locked_message(tmp_root) in res.stderr
    assert res.stdout == ""
    assert snapshot(tmp_root.root) == before
    assert "JWT-SECRET" not in res.stderr + res.stdout
    assert "REFRESH-SECRET" not in res.stderr + res.stdout


def test_check_mode_and_settings_apply_run_beside_the_service(tmp_root, agent_env):
    write_config(tmp_root, registered_cfg(URL))
    drop = {"settings": {}, "registration_token": "NEW-TOKEN", "reregister": True}
    with held_lock(tmp_root.state_dir):
        check = cli(tmp_root, agent_env, "config", "apply", "--check", "--json",
                    stdin=json.dumps(drop))
        settings = cli(tmp_root, agent_env, "config", "apply", "--json",
                       stdin=json.dumps({"settings": {"check_in_interval": 120}}))
    assert check.returncode == EX_OK, check.stderr
    assert json.loads(check.stdout)["changed"] is True
    assert settings.returncode == EX_OK, settings.stderr
    assert json.loads(tmp_root.config_file.read_text())["check_in_interval"] == 120


def test_with_the_service_stopped_the_identity_is_dropped_and_the_lock_released(
        tmp_root, agent_env):
    write_config(tmp_root, registered_cfg(URL))
    doc = {"settings": {}, "registration_token": "NEW-TOKEN", "reregister": True}
    res = cli(tmp_root, agent_env, "config", "apply", "--json", stdin=json.dumps(doc))
    assert res.returncode == EX_OK, res.stderr
    cfg = json.loads(tmp_root.config_file.read_text())
    assert "agent_id" not in cfg or not cfg["agent_id"]
    assert cfg["registration_token"] == "NEW-TOKEN"
    assert lock_is_free(tmp_root.state_dir)


def test_no_state_directory_means_no_running_instance(tmp_root, agent_env):
    write_config(tmp_root, registered_cfg(URL), state_dir=False)
    doc = {"settings": {}, "forget_identity": True}
    res = cli(tmp_root, agent_env, "config", "apply", "--json", stdin=json.dumps(doc))
    assert res.returncode == EX_OK, res.stderr
    assert not json.loads(tmp_root.config_file.read_text()).get("agent_id")


def test_a_symlinked_state_dir_refuses_to_drop_the_identity(tmp_root, agent_env, tmp_path):
    write_config(tmp_root, registered_cfg(URL), state_dir=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    tmp_root.state_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_root.state_dir.symlink_to(elsewhere)
    before = snapshot(tmp_root.root)
    doc = {"settings": {}, "forget_identity": True}
    res = cli(tmp_root, agent_env, "config", "apply", "--json", stdin=json.dumps(doc))
    assert res.returncode == EX_CONFIG, res.stderr
    assert "not dropping the identity: the instance lock cannot be taken: " in res.stderr
    assert "nothing was changed" in res.stderr
    assert snapshot(tmp_root.root) == before
    assert list(elsewhere.iterdir()) == []
