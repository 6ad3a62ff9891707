"""Config parsing, validation, schema upgrade, merge and save: tables of pure cases."""

from __future__ import annotations

import fcntl
import json
import os

import pytest

from redflag_agent import config as c

V6 = {"version": "6", "server_url": "http://127.0.0.1:1"}


def b(obj) -> bytes:
    return json.dumps(obj).encode()


@pytest.mark.parametrize(("data", "fragment"), [
    (b"", "empty"),
    (b"  \n", "empty"),
    (b"\xef\xbb\xbf" + b(V6), "byte order mark"),
    (b"\xef\xbb\xbf\x00junk", "byte order mark"),
    (b'{"server_url": "http://x", "agent_id": ', "truncated"),
    (b"\x00\x01\x02\xff\xfe binary", "not UTF-8"),
    (b"{not json}", "invalid JSON"),
    (b"[1, 2]", "top level must be a JSON object"),
    (b'"a string"', "top level must be a JSON object"),
    (b(dict(V6, check_in_interval="abc")), "'check_in_interval' must be a positive integer"),
    (b(dict(V6, check_in_interval=0)), "'check_in_interval' must be a positive integer"),
    (b(dict(V6, check_in_interval=True)), "'check_in_interval'"),
    (b(dict(V6, server_url=5)), "'server_url' must be a string"),
    (b(dict(V6, tags="a,b")), "'tags' must be a list of strings"),
    (b(dict(V6, proxy="http://p:3128")), "'proxy' must be an object"),
    (b(dict(V6, network={"timeout": "slow"})), "network.timeout must be a number"),
    (b(dict(V6, agent_id=42)), "'agent_id' must be a string or null"),
    (b(dict(V6, version="six")), "'version' must be a schema number"),
    (b(dict(V6, version=[6])), "'version' must be a schema number"),
])
def test_parse_rejects_with_precise_message(data, fragment):
    with pytest.raises(c.ConfigError) as exc:
        c.parse_config_bytes(data, "/etc/redflag-agent/config.json")
    msg = str(exc.value)
    assert fragment in msg
    assert "/etc/redflag-agent/config.json" in msg


@pytest.mark.parametrize("cfg", [
    V6,
    {"server_url": "u", "proxy": "http://p:3128", "tags": "a, b", "check_in_interval": "60"},
    {"version": 5, "proxy": "http://p"},
    {"version": "5", "tags": "x"},
    dict(V6, machine_id="m-1", network={"timeout": 10, "extra": True}),
])
def test_parse_accepts(cfg):
    assert c.parse_config_bytes(b(cfg)) == cfg


@pytest.mark.parametrize(("cfg", "version", "upgrade"), [
    ({}, None, True),
    ({"version": None}, None, True),
    ({"version": 5}, 5, True),
    ({"version": "5"}, 5, True),
    ({"version": " 5 "}, 5, True),
    ({"version": 5.0}, 5, True),
    ({"version": "6"}, 6, False),
    ({"version": 6}, 6, False),
    ({"version": "7"}, 7, False),
])
def test_schema_version_table(cfg, version, upgrade):
    assert c.schema_version_of(cfg) == version
    assert c.needs_schema_upgrade(cfg) is upgrade


def test_agent_version_is_never_read_as_schema():
    with pytest.raises(c.ConfigError):
        c.schema_version_of({"version": "0.1.23.6"})


def test_upgrade_keeps_unknown_keys_order_and_converts_legacy_shapes():
    legacy = {"server_url": "http://s", "machine_id": "abc", "agent_id": "id-1",
              "token": "jwt", "refresh_token": "rt", "proxy": "http://p:3128",
              "tags": "web, db ,", "check_in_interval": "120", "logging": {"level": "debug"},
              "metadata": {"rack": 4}}
    before = json.dumps(legacy)
    up = c.upgrade_to_current(legacy)
    assert json.dumps(legacy) == before, "must not mutate its input"
    assert up["version"] == "6"
    assert list(up)[:7] == ["server_url", "machine_id", "agent_id", "token", "refresh_token",
                            "proxy", "tags"]
    assert up["machine_id"] == "abc"
    assert up["proxy"]["enabled"] is True and up["proxy"]["https"] == "http://p:3128"
    assert up["tags"] == ["web", "db"]
    assert up["check_in_interval"] == 120
    assert up["logging"]["level"] == "debug" and up["logging"]["max_backups"] == 3
    assert up["metadata"] == {"rack": "4"}
    assert set(up["tls"]) == set(c.SUB_DEFAULTS["tls"])
    c.validate(up)
    assert c.upgrade_to_current(up) == up, "idempotent"


def test_upgrade_does_not_invent_check_in_interval():
    assert "check_in_interval" not in c.upgrade_to_current({"server_url": "u"})


@pytest.mark.parametrize(("cfg", "registered"), [
    (None, False), ({}, False), ({"agent_id": "a"}, False), ({"refresh_token": "r"}, False),
    ({"agent_id": "", "refresh_token": "r"}, False),
    ({"agent_id": "a", "refresh_token": ""}, False),
    ({"agent_id": "a", "refresh_token": "r"}, True),
    ({"agent_id": "a", "refresh_token": "r", "token": None}, True),
])
def test_is_registered(cfg, registered):
    assert c.is_registered(cfg) is registered


def test_redacted_hides_every_secret_and_copies():
    cfg = {"registration_token": "RT1", "token": "JWT1", "refresh_token": "RF1",
           "proxy": {"password": "PW1", "username": "u"}, "agent_id": "id"}
    red = c.redacted(cfg)
    text = json.dumps(red)
    for secret in ("RT1", "JWT1", "RF1", "PW1"):
        assert secret not in text
    assert red["agent_id"] == "id" and red["proxy"]["username"] == "u"
    assert cfg["token"] == "JWT1"


CURRENT = {"version": "6", "server_url": "http://old", "agent_id": "id-1", "token": "jwt",
           "refresh_token": "rt", "check_in_interval": 300, "machine_id": "keep-me",
           "proxy": {"enabled": False, "http": "", "custom": "keep"},
           "migration": {"completed": ["config"]}}


@pytest.mark.parametrize(("current", "settings", "token", "rereg", "expect"), [
    # create from nothing
    (None, {"server_url": "http://new"}, "T", False,
     {"version": "6", "server_url": "http://new", "registration_token": "T"}),
    # settings replace role-managed keys; identity and unknown keys kept
    (CURRENT, {"server_url": "http://new", "check_in_interval": 60}, None, False,
     {"server_url": "http://new", "check_in_interval": 60, "agent_id": "id-1", "token": "jwt",
      "refresh_token": "rt", "machine_id": "keep-me", "migration": {"completed": ["config"]}}),
    # dict settings merge key by key, unknown sub-keys survive
    (CURRENT, {"proxy": {"enabled": True, "http": "http://p"}}, None, False,
     {"proxy": {"enabled": True, "http": "http://p", "custom": "keep"}}),
    # reregister drops identity and writes the new token
    (CURRENT, {}, "NEW", True,
     {"registration_token": "NEW", "machine_id": "keep-me"}),
    # a legacy numeric version becomes "6"
    ({"version": 5, "server_url": "u"}, {}, None, False, {"version": "6"}),
])
def test_merge_desired_table(current, settings, token, rereg, expect):
    merged = c.merge_desired(current, settings, token, rereg)
    for key, value in expect.items():
        if isinstance(value, dict) and key in ("proxy", "tls", "network", "logging"):
            assert value.items() <= merged[key].items(), key  # plus filled-in defaults
        else:
            assert merged[key] == value, key
    if rereg:
        for key in c.IDENTITY_KEYS:
            assert key not in merged
    assert merged["version"] == "6"
    # applying the same input again changes nothing: idempotence for the role
    assert c.merge_desired(merged, settings, token, rereg) == merged


@pytest.mark.parametrize(("settings", "token", "fragment"), [
    ({"token": "x"}, None, "may not set token"),
    ({"agent_id": "x", "version": "5"}, None, "agent_id, version"),
    ({}, "", "non-empty string"),
    ({}, 5, "non-empty string"),
    ({"check_in_interval": "often"}, None, "check_in_interval"),
    ("not a dict", None, "must be a JSON object"),
])
def test_merge_desired_rejects(settings, token, fragment):
    with pytest.raises(c.ConfigError) as exc:
        c.merge_desired(CURRENT, settings, token, False)
    assert fragment in str(exc.value)


def test_merge_does_not_mutate_current():
    snapshot = json.dumps(CURRENT)
    c.merge_desired(CURRENT, {"proxy": {"enabled": True}}, "T", True)
    assert json.dumps(CURRENT) == snapshot


def test_save_config_is_0600_deterministic_and_leaves_no_temp(tmp_root):
    cfg = c.merge_desired(None, {"server_url": "http://s"}, "T", False)
    c.save_config(tmp_root, cfg)
    first = tmp_root.config_file.read_bytes()
    c.save_config(tmp_root, json.loads(first))
    assert tmp_root.config_file.read_bytes() == first
    assert os.stat(tmp_root.config_file).st_mode & 0o777 == 0o600
    assert os.listdir(tmp_root.config_dir) == ["config.json"]
    assert c.read_config(tmp_root.config_file) == cfg


def test_read_config_missing_is_none(tmp_root):
    assert c.read_config(tmp_root.config_file) is None


def test_config_lock_creates_nothing_and_excludes(tmp_root):
    tmp_root.config_dir.mkdir(parents=True)
    before = sorted(p.name for p in tmp_root.root.rglob("*"))
    with c.config_lock(tmp_root):
        fd = os.open(tmp_root.config_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    assert sorted(p.name for p in tmp_root.root.rglob("*")) == before


def test_config_lock_on_bare_root_creates_nothing(tmp_root):
    with c.config_lock(tmp_root):
        pass
    assert list(tmp_root.root.iterdir()) == []
