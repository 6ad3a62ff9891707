"""`config apply` with forget_identity: the golden-image path (issue 14).

The image keeps its settings but no identity, token or machine binding; a registered
template's identity is kept in identity_backups before it is dropped."""

from __future__ import annotations

import json

import pytest

from redflag_agent import cli as agent_cli
from redflag_agent import config as c

from .test_cli import assert_no_secrets, cli, snapshot, write_config

AID = "4b3f0c1e-0000-4000-8000-000000000001"
SETTINGS = {"server_url": "http://127.0.0.1:9", "check_in_interval": 120, "tags": ["web"],
            "proxy": {"enabled": False, "custom": "keep"}}
IDENTITY = {"agent_id": AID, "token": "JWT-SECRET", "refresh_token": "REFRESH-SECRET",
            "registration_token": "REGTOKEN-XYZ", "machine_id": "a" * 64,
            c.ENROLLED_TOKEN_KEY: "b" * 64}


@pytest.mark.parametrize(("current", "dropped"), [
    # a registered template: every identity key goes
    ({"version": "6", **SETTINGS, **IDENTITY}, sorted(IDENTITY)),
    # waiting for a token: only the token goes
    ({"version": "6", **SETTINGS, "registration_token": "T"}, ["registration_token"]),
    # nothing to forget: unchanged
    ({"version": "6", **SETTINGS}, []),
    # no config yet: created from the settings, without identity
    (None, []),
])
def test_forget_identity_drops_identity_keeps_settings(current, dropped):
    merged = c.merge_desired(current, SETTINGS, None, False, forget_identity=True)
    for key in c.FORGET_KEYS:
        assert key not in merged, key
    assert merged["server_url"] == SETTINGS["server_url"]
    assert merged["check_in_interval"] == 120 and merged["tags"] == ["web"]
    assert merged["proxy"]["custom"] == "keep"
    if current is not None:
        assert sorted(set(current) - set(merged)) == dropped
    # idempotent: the second image run changes nothing
    assert c.merge_desired(merged, SETTINGS, None, False, forget_identity=True) == merged


def test_forget_keys_cover_identity_token_and_binding():
    assert set(c.FORGET_KEYS) == {"agent_id", "token", "refresh_token", "registration_token",
                                  "machine_id", c.ENROLLED_TOKEN_KEY}


def test_forget_identity_with_a_token_is_refused():
    with pytest.raises(c.ConfigError, match="exclude each other"):
        c.merge_desired(None, SETTINGS, "T", False, forget_identity=True)


@pytest.mark.parametrize(("data", "expect"), [
    ('{"settings": {}}', False),
    ('{"settings": {}, "forget_identity": true}', True),
    ('{"forget_identity": false}', False),
])
def test_parse_apply_input_forget_identity(data, expect):
    assert agent_cli.parse_apply_input(data)[3] is expect


def test_parse_apply_input_forget_identity_must_be_bool():
    with pytest.raises(c.ConfigError, match="'forget_identity' must be true or false"):
        agent_cli.parse_apply_input('{"forget_identity": "yes"}')


def backups(paths):
    d = paths.state_dir / "identity_backups"
    return sorted(d.iterdir()) if d.exists() else []


def test_cli_forget_identity_check_writes_nothing_then_keeps_a_backup(tmp_root, agent_env):
    write_config(tmp_root, {"version": "6", **SETTINGS, **IDENTITY})
    stdin = json.dumps({"settings": SETTINGS, "forget_identity": True})
    before = snapshot(tmp_root.root)
    check = cli(tmp_root, agent_env, "config", "apply", "--check", "--json", stdin=stdin)
    out = json.loads(check.stdout)
    assert check.returncode == 0 and out["changed"] is True
    assert set(IDENTITY) <= set(out["changed_keys"])  # plus filled-in sections
    assert snapshot(tmp_root.root) == before, "--check writes nothing"
    assert_no_secrets(check.stdout, check.stderr)

    res = cli(tmp_root, agent_env, "config", "apply", "--json", stdin=stdin)
    assert res.returncode == 0 and json.loads(res.stdout)["changed"] is True
    assert_no_secrets(res.stdout, res.stderr)
    cfg = json.loads(tmp_root.config_file.read_text())
    assert not set(IDENTITY) & set(cfg)
    assert cfg["server_url"] == SETTINGS["server_url"] and cfg["check_in_interval"] == 120
    [backup] = backups(tmp_root)
    record = json.loads(backup.read_text())
    assert record["agent_id"] == AID and record["refresh_token"] == "REFRESH-SECRET"
    assert record["reason"] == "image" and backup.stat().st_mode & 0o777 == 0o600

    again = cli(tmp_root, agent_env, "config", "apply", "--json", stdin=stdin)
    assert json.loads(again.stdout)["changed"] is False
    assert len(backups(tmp_root)) == 1, "nothing left to back up on the second run"


def test_cli_forget_identity_without_identity_writes_no_backup(tmp_root, agent_env):
    write_config(tmp_root, {"version": "6", **SETTINGS, "registration_token": "T"})
    res = cli(tmp_root, agent_env, "config", "apply", "--json",
              stdin=json.dumps({"settings": SETTINGS, "forget_identity": True}))
    assert res.returncode == 0 and "registration_token" in json.loads(res.stdout)["changed_keys"]
    assert "registration_token" not in json.loads(tmp_root.config_file.read_text())
    assert backups(tmp_root) == []
