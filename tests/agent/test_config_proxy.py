"""`config apply` and the proxy credentials: the role sends the proxy object, and credentials
it no longer sends leave config.json (they used to stay there, merged key by key)."""

from __future__ import annotations

import json

import pytest

from redflag_agent import config as c

from .test_cli import cli, write_config

SECRET = "pw-stored-5e21"  # noqa: S105 - a fake password the tests look for in output
STORED = {"version": "6", "server_url": "http://127.0.0.1:9", "agent_id": "id-1",
          "refresh_token": "rt",
          "proxy": {"enabled": True, "http": "http://p:3128", "https": "http://p:3128",
                    "no_proxy": "", "username": "agent", "password": SECRET, "custom": "keep"},
          "tls": {"insecure_skip_verify": False, "cert_file": "/c.pem", "key_file": "/k.pem",
                  "ca_file": ""}}
ROLE_DEFAULT = {"enabled": False, "http": "", "https": "", "no_proxy": ""}


@pytest.mark.parametrize(("settings", "proxy", "tls_cert"), [
    # the role's default proxy object: no credentials sent, none left behind
    ({"proxy": ROLE_DEFAULT},
     {**ROLE_DEFAULT, "username": "", "password": "", "custom": "keep"}, "/c.pem"),
    # credentials dropped from the inventory, the proxy kept
    ({"proxy": {"enabled": True, "http": "http://p:3128"}},
     {"enabled": True, "http": "http://p:3128", "username": "", "password": ""}, "/c.pem"),
    # a user name alone: the old password does not stay behind with it
    ({"proxy": {"enabled": True, "username": "other"}},
     {"username": "other", "password": ""}, "/c.pem"),
    # a password alone replaces the password and drops the user name (sent as ":new")
    ({"proxy": {"enabled": True, "password": "new"}}, {"username": "", "password": "new"},
     "/c.pem"),
    ({"proxy": {"enabled": True, "username": "u2", "password": "pw2"}},
     {"username": "u2", "password": "pw2", "https": "http://p:3128"}, "/c.pem"),
    ({"proxy": {"username": "u2", "password": None}}, {"username": "u2", "password": None},
     "/c.pem"),
    # no proxy object at all (a hand apply of other settings): the proxy is left alone
    ({"check_in_interval": 60}, {"username": "agent", "password": SECRET}, "/c.pem"),
    # other sections still merge key by key
    ({"proxy": ROLE_DEFAULT, "tls": {"ca_file": "/ca.pem"}}, {"password": ""}, "/c.pem"),
])
def test_proxy_credentials_are_set_as_a_group(settings, proxy, tls_cert):
    merged = c.merge_desired(STORED, settings, None, False)
    assert proxy.items() <= merged["proxy"].items()
    assert merged["tls"]["cert_file"] == tls_cert
    assert merged["agent_id"] == "id-1" and merged["refresh_token"] == "rt"
    assert STORED["proxy"]["password"] == SECRET  # pure: the caller's config is untouched
    assert c.merge_desired(merged, settings, None, False) == merged  # idempotent


def test_given_credentials_keep_their_place_in_the_file():
    merged = c.merge_desired(STORED, {"proxy": {"username": "u", "password": "p"}}, None, False)
    assert list(merged["proxy"]) == list(STORED["proxy"])


@pytest.mark.parametrize(("url", "shown"), [
    (f"http://agent:{SECRET}@p:3128", "http://agent:********@p:3128"),
    (f"agent:{SECRET}@p:3128", "agent:********@p:3128"),
    (f"http://agent:{SECRET}@host@p:3128", "http://agent:********@p:3128"),
    (f"http://agent:{SECRET}@[::1", "http://agent:********@[::1"),  # no URL: still masked
    ("http://agent@p:3128", "http://agent@p:3128"),
    (f"http://agent:{SECRET}#x@p:3128", "http://agent:********@p:3128"),
    (f"http://agent:{SECRET}\n@p:3128", "http://agent:********@p:3128"),
    ("http://p:3128/a@b", "http://p:********@b"),  # an "@" in a path: masked too, never shown
    ("p:3128", "p:3128"),
    ("http://p:3128", "http://p:3128"),
    (f"agent:{SECRET}://x@p:3128", "agent:********@p:3128"),
    ("", ""),
])
def test_redacted_masks_a_password_in_a_proxy_url(url, shown):
    red = c.redacted({"proxy": {"http": url, "https": url}})
    assert red["proxy"] == {"http": shown, "https": shown}


def test_apply_removes_the_stored_password_and_its_diff_stays_redacted(tmp_root, agent_env):
    stored = {**STORED, "proxy": {**STORED["proxy"],
                                  "https": f"http://agent:{SECRET}@p:3128"}}
    write_config(tmp_root, c.upgrade_to_current(stored))
    desired = json.dumps({"settings": {"proxy": ROLE_DEFAULT}})
    check = cli(tmp_root, agent_env, "config", "apply", "--check", "--json", stdin=desired)
    out = json.loads(check.stdout)
    assert check.returncode == 0 and out["changed_keys"] == ["proxy"]
    assert SECRET not in check.stdout + check.stderr
    assert '-    "password": "********",' in out["diff"]
    assert '+    "password": "",' in out["diff"]
    assert '-    "https": "http://agent:********@p:3128",' in out["diff"]
    assert json.loads(tmp_root.config_file.read_text())["proxy"]["password"] == SECRET
    res = cli(tmp_root, agent_env, "config", "apply", "--json", stdin=desired)
    assert res.returncode == 0 and SECRET not in res.stdout + res.stderr
    written = tmp_root.config_file.read_text()
    assert SECRET not in written
    assert json.loads(written)["proxy"]["username"] == ""


def test_a_user_name_with_a_colon_is_refused_at_apply():
    with pytest.raises(c.ConfigError, match=r"proxy.username must be a string without ':'"):
        c.merge_desired(STORED, {"proxy": {"username": "a:b", "password": SECRET}}, None, False)
