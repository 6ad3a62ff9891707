"""Config messages and pure helpers, pinned exactly (issue 15: mutation testing).

A config error is all an operator gets when the agent exits 78: the file, the field, what
was found and the fix are compared whole.
"""

from __future__ import annotations

import json
import os

import pytest

from redflag_agent import config as c
from redflag_agent.version import AGENT_VERSION

P = "/etc/redflag-agent/config.json"
HINT = (f"fix or remove {P} (re-run the playbook to rewrite it, or `redflag-agent config "
        "apply`)")
V6 = {"version": "6", "server_url": "http://127.0.0.1:1"}


def err(data: bytes, path=P) -> str:
    with pytest.raises(c.ConfigError) as exc:
        c.parse_config_bytes(data, path)
    return str(exc.value)


def b(obj) -> bytes:
    return json.dumps(obj).encode()


@pytest.mark.parametrize(("data", "message"), [
    (b"  ", f"{P}: the file is empty; {HINT}"),
    (b"\xef\xbb\xbf{}", f"{P}: the file starts with a UTF-8 byte order mark (BOM); save it "
                        "as plain UTF-8 without a BOM"),
    (b"{\"a\": \"\xff\"}", f"{P}: not UTF-8 text (invalid byte at offset 7); {HINT}"),
    (b"{\"a\": 1", f"{P}: truncated JSON (the file ends early): Expecting ',' delimiter at "
                   f"line 1 column 8; {HINT}"),
    (b"{\"a\": \"x", f"{P}: truncated JSON (the file ends early): Unterminated string "
                     f"starting at at line 1 column 7; {HINT}"),
    (b"{\"a\": x}", f"{P}: invalid JSON: Expecting value at line 1 column 7; {HINT}"),
    (b"[1] 2]", f"{P}: invalid JSON: Extra data at line 1 column 5; {HINT}"),
    (b"{\"a\": 1} x", f"{P}: truncated JSON (the file ends early): Extra data at line 1 "
                      f"column 10; {HINT}"),
    (b"[1]", f"{P}: the top level must be a JSON object, found list; {HINT}"),
    (b(dict(V6, check_in_interval=0)), f"{P}: field 'check_in_interval' must be a positive "
                                       f"integer from 1 to 86400 (seconds), found 0; {HINT}"),
    (b(dict(V6, tags=[1])), f"{P}: field 'tags' must be a list of strings, found a list; "
                            f"{HINT}"),
    (b(dict(V6, network={"retry_count": -1})),
     f"{P}: field network.retry_count must be an integer from 0 to 100, found -1; {HINT}"),
    (b(dict(V6, logging={"max_size": 1048577})),
     f"{P}: field logging.max_size must be an integer from 0 to 1048576 (MB), found 1048577; "
     f"{HINT}"),
    (b(dict(V6, logging={"max_age": 36501})),
     f"{P}: field logging.max_age must be an integer from 0 to 36500 (days), found 36501; "
     f"{HINT}"),
    (b(dict(V6, network={"timeout": 0})),
     f"{P}: field network.timeout must be more than 0 and at most 3600 seconds (or Go "
     f"nanoseconds), found 0; {HINT}"),
    (b(dict(V6, network={"retry_delay": 3601})),
     f"{P}: field network.retry_delay must be more than 0 and at most 3600 seconds (or Go "
     f"nanoseconds), found 3601; {HINT}"),
    (b(dict(V6, version=7)), c.newer_schema_message(7, P)),
    (b(dict(V6, version=-1)), f"{P}: field 'version' must be a schema number such as \"6\", "
                              f"found -1; {HINT}"),
    (b(dict(V6, version="six")), f"{P}: field 'version' must be a schema number such as "
                                 f"\"6\", found \"six\"; {HINT}"),
    (b"{\"a\": NaN}", f"{P}: field a: NaN is not JSON (NaN and Infinity are not numbers in "
                      f"JSON); use a plain number; {HINT}"),
    (b"{\"a\": [1e400]}", f"{P}: field a[0]: 1e400 is too large (it reads as infinity); use "
                          f"a plain number; {HINT}"),
    (b"{\"a\": " + b"9" * 31 + b"}", f"{P}: field a: {'9' * 31} has more than 30 digits; use a "
                                     f"plain number; {HINT}"),
])
def test_parse_messages_exact(data, message):
    assert err(data) == message


def test_parse_without_a_path_names_the_config():
    assert err(b"", None) == ("<config>: the file is empty; fix or remove <config> (re-run the "
                              "playbook to rewrite it, or `redflag-agent config apply`)")


def test_thirty_digit_integers_still_parse():
    assert c.parse_config_bytes(b"{\"x\": " + b"9" * 30 + b", \"y\": -" + b"9" * 30 + b"}") == {
        "x": int("9" * 30), "y": -int("9" * 30)}
    assert c.parse_config_bytes(b"{\"x\": 1.5e300}") == {"x": 1.5e300}


def test_deep_nesting_message_names_the_top_field():
    deep = "{\"outer\": " + "[" * 40 + "]" * 40 + "}"
    assert err(deep.encode()) == (f"{P}: nested too deeply (more than 32 levels of [ and {{ "
                                  f"under field outer); {HINT}")
    ok = "{\"outer\": " + "[" * 31 + "]" * 31 + "}"
    assert c.parse_config_bytes(ok.encode())["outer"]


def test_loads_json_recursion_message():
    with pytest.raises(c.ConfigError) as exc:
        c.loads_json("[" * 100_000 + "]" * 100_000, "input", "; hint")
    assert str(exc.value) == "input: nested too deeply (more than 32 levels of [ and {); hint"


def test_check_tree_messages_for_values_built_in_python():
    with pytest.raises(c.ConfigError) as exc:
        c.validate({"a": {"b": [float("inf")]}}, P)
    assert str(exc.value) == f"{P}: field a.b[0]: inf is not a finite number; use a plain " \
                             f"number; {HINT}"
    with pytest.raises(c.ConfigError) as exc:
        c.validate({"a": 2 ** 100}, P)
    assert str(exc.value) == (f"{P}: field a: an integer with more than 30 digits is out of "
                              f"range; use a plain number; {HINT}")
    c.validate({"a": 2 ** 100 - 1}, P)
    with pytest.raises(c.ConfigError) as exc:
        c.validate(float("nan"), P)  # the top level itself
    assert str(exc.value).startswith(f"{P}: the top level: nan is not a finite number")


def test_check_tree_reports_the_first_bad_value_in_file_order():
    with pytest.raises(c.ConfigError) as exc:
        c.loads_json("{\"a\": [1, NaN], \"b\": Infinity}", "w")
    assert str(exc.value) == ("w: field a[1]: NaN is not JSON (NaN and Infinity are not numbers "
                              "in JSON); use a plain number")


def test_printable_escapes_and_bounds():
    assert c._printable("a\nb") == "a\\nb"
    assert c._printable("x" * 81) == "x" * 80 + "..."
    assert c._printable("x" * 80) == "x" * 80
    assert c._printable("abcdef", 3) == "abc..."


@pytest.mark.parametrize(("value", "text"), [
    (None, "null"), (True, "true"), (False, "false"), (7, "7"), (-3, "-3"),
    (2 ** 101, "an integer with more than 30 digits"), (2 ** 100 - 1, str(2 ** 100 - 1)),
    (1.5, "1.5"), ("secret", "a string"), ([1], "a list"), ({}, "an object"),
    ((1,), "tuple"),
])
def test_describe_never_shows_a_string(value, text):
    assert c._describe(value) == text


def test_newer_schema_message_exact():
    assert c.newer_schema_message(9, "/x") == (
        f"/x: config schema 9 was written by a newer redflag-agent; this agent ({AGENT_VERSION})"
        " knows config schema 6 and older, so it neither uses nor rewrites this file. Install "
        "the agent version that wrote it (or a newer one), or restore the older config from a "
        "backup (the migration backups under /var/lib/redflag-agent/migration_backups), then "
        "start again")


@pytest.mark.parametrize(("cfg", "version"), [
    ({}, None), ({"version": None}, None), ({"version": 0}, 0), ({"version": 6}, 6),
    ({"version": 5.0}, 5), ({"version": " 5 "}, 5), ({"version": "005"}, 5),
])
def test_schema_version_of(cfg, version):
    assert c.schema_version_of(cfg) == version


@pytest.mark.parametrize(("value", "shown"), [
    (5.5, "5.5"), (-1.0, "-1.0"), (True, "true"), ("²", "\"\\\\u00b2\""), ("1" * 19, None),
    ({"a": 1}, "{\"a\": 1}"),
])
def test_schema_version_of_refuses(value, shown):
    with pytest.raises(c.ConfigError) as exc:
        c.schema_version_of({"version": value}, "/x")
    if shown is not None:
        assert str(exc.value) == (f"/x: field 'version' must be a schema number such as "
                                  f"\"6\", found {shown}; fix or remove /x (re-run the "
                                  "playbook to rewrite it, or `redflag-agent config apply`)")


@pytest.mark.parametrize(("cfg", "needs"), [
    ({}, True), ({"version": "5"}, True), ({"version": "6"}, False), ({"version": 6}, False),
])
def test_needs_schema_upgrade(cfg, needs):
    assert c.needs_schema_upgrade(cfg) is needs


def test_upgrade_to_current_exact():
    old = {"z": 1, "check_in_interval": " 60 ", "proxy": "http://p:3128",
           "tags": " a, ,b ,", "metadata": {"k": "v", "n": 1},
           "network": {"timeout": 10}, "tls": "bad"}
    out = c.upgrade_to_current(old)
    assert out == {
        "z": 1, "check_in_interval": 60,
        "proxy": {"enabled": True, "http": "http://p:3128", "https": "http://p:3128",
                  "no_proxy": "", "username": "", "password": ""},
        "tags": ["a", "b"], "metadata": {"k": "v", "n": "1"},
        "network": {"timeout": 10, "retry_count": 3, "retry_delay": 5, "max_idle_conn": 10},
        "tls": dict(c.SUB_DEFAULTS["tls"]), "version": "6",
        "logging": dict(c.SUB_DEFAULTS["logging"])}
    assert list(out["network"]) == ["timeout", "retry_count", "retry_delay", "max_idle_conn"]
    assert old["proxy"] == "http://p:3128"  # pure
    assert c.upgrade_to_current({"proxy": "  "})["proxy"]["enabled"] is False
    assert c.upgrade_to_current({"check_in_interval": "soon"})["check_in_interval"] == "soon"


@pytest.mark.parametrize(("cfg", "registered"), [
    (None, False), ({}, False), ({"agent_id": "a"}, False), ({"refresh_token": "r"}, False),
    ({"agent_id": "a", "refresh_token": ""}, False), ({"agent_id": "a", "refresh_token": "r"},
                                                      True),
])
def test_is_registered(cfg, registered):
    assert c.is_registered(cfg) is registered


def test_redacted_exact():
    cfg = {"registration_token": "t", "token": "", "refresh_token": "r", "x": "y",
           "proxy": {"password": "p", "username": "u"}}
    assert c.redacted(cfg) == {"registration_token": "********", "token": "",
                               "refresh_token": "********", "x": "y",
                               "proxy": {"password": "********", "username": "u"}}
    assert c.redacted({"proxy": "http://p"}) == {"proxy": "http://p"}
    assert c.redacted(["token"]) == ["token"]
    assert cfg["refresh_token"] == "r"


@pytest.mark.parametrize(("settings", "token", "forget", "message"), [
    ("x", None, False, "config apply: 'settings' must be a JSON object"),
    ({"token": "a", "agent_id": "b"}, None, False,
     "config apply: settings may not set agent_id, token: those keys belong to the agent "
     "(pass registration_token at the top level of the input instead)"),
    ({}, "  ", False, "config apply: 'registration_token' must be a non-empty string (omit it "
                      "when the host does not need to enroll)"),
    ({}, 5, False, "config apply: 'registration_token' must be a non-empty string (omit it "
                   "when the host does not need to enroll)"),
    ({}, "T", True, "config apply: 'forget_identity' and 'registration_token' exclude each "
                    "other (an image holds no token); drop one of them"),
])
def test_merge_desired_messages(settings, token, forget, message):
    with pytest.raises(c.ConfigError) as exc:
        c.merge_desired(None, settings, token, False, forget)
    assert str(exc.value) == message


IDENTITY = {"version": "6", "server_url": "http://s", "agent_id": "a", "token": "j",
            "refresh_token": "r", "registration_token": "old", "machine_id": "m",
            "enrolled_token_sha256": "fp", "network": {"timeout": 10, "retry_count": 3}}


@pytest.mark.parametrize(("token", "rereg", "forget", "gone", "kept"), [
    (None, False, False, [], ["agent_id", "token", "refresh_token", "machine_id",
                                  "enrolled_token_sha256", "registration_token"]),
    ("new", True, False, ["agent_id", "token", "refresh_token"],
     ["machine_id", "enrolled_token_sha256"]),
    (None, False, True, ["agent_id", "token", "refresh_token", "registration_token",
                             "machine_id", "enrolled_token_sha256"], []),
])
def test_merge_desired_identity_rules(token, rereg, forget, gone, kept):
    out = c.merge_desired(IDENTITY, {}, token, rereg, forget)
    assert [k for k in gone if k in out] == []
    assert {k: out[k] for k in kept} == {k: IDENTITY[k] for k in kept if k in IDENTITY} | (
        {"registration_token": token} if token and "registration_token" in kept else {})
    if token:
        assert out["registration_token"] == token


def test_merge_desired_merges_sections_and_copies():
    settings = {"network": {"retry_count": 5}, "tags": ["a"], "server_url": "http://n"}
    out = c.merge_desired(IDENTITY, settings, None, False)
    assert out["network"] == {"timeout": 10, "retry_count": 5, "retry_delay": 5,
                              "max_idle_conn": 10}
    assert out["server_url"] == "http://n" and out["tags"] == ["a"]
    settings["tags"].append("b")
    assert out["tags"] == ["a"]
    fresh = c.merge_desired(None, {"server_url": "http://n"}, "T", False)
    assert fresh["version"] == "6" and fresh["registration_token"] == "T"
    assert list(fresh)[:2] == ["version", "server_url"]
    with pytest.raises(c.ConfigError) as exc:
        c.merge_desired({"version": 9}, {}, None, False)
    assert str(exc.value) == c.newer_schema_message(9, "the current config")
    with pytest.raises(c.ConfigError) as exc:
        c.merge_desired(None, {"check_in_interval": 0}, None, False)
    assert str(exc.value).startswith("merged config: field 'check_in_interval' must be")


@pytest.mark.parametrize(("old", "new", "keys"), [
    (None, {"a": 1}, ["a"]),
    ({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": None}, ["b", "c"]),
    ({"a": 1, "z": None}, {"a": 1}, ["z"]),
    ({"b": 1, "a": 1}, {}, ["a", "b"]),
    ({"a": 1}, {"a": 1}, []),
])
def test_changed_keys(old, new, keys):
    assert c.changed_keys(old, new) == keys


def test_read_config_permission_message(tmp_root, monkeypatch):
    def denied(*_a, **_k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(c.safefs, "read_bytes", denied)
    with pytest.raises(c.ConfigError) as exc:
        c.read_config(tmp_root.config_file)
    assert str(exc.value) == (f"{tmp_root.config_file}: permission denied; the agent runs as "
                              "redflag-agent: the file must be owned by it with mode 0600 "
                              "(re-run the playbook)")


def test_planted_symlink_is_a_config_error_for_read_save_and_lock(tmp_root, tmp_path):
    victim = tmp_path / "victim.json"
    victim.write_text(json.dumps(V6))
    tmp_root.config_dir.mkdir(parents=True)
    tmp_root.config_file.symlink_to(victim)
    with pytest.raises(c.ConfigError):
        c.read_config(tmp_root.config_file)
    with pytest.raises(c.ConfigError):
        c.save_config(tmp_root, V6)
    assert json.loads(victim.read_text()) == V6
    os.unlink(tmp_root.config_file)
    os.rmdir(tmp_root.config_dir)
    tmp_root.config_dir.symlink_to(tmp_path)
    with pytest.raises(c.ConfigError), c.config_lock(tmp_root):
        pass


def test_save_config_creates_the_directory_0750_and_file_0600(tmp_root):
    c.save_config(tmp_root, V6)
    assert oct(tmp_root.config_dir.stat().st_mode & 0o777) == "0o750"
    assert oct(tmp_root.config_file.stat().st_mode & 0o777) == "0o600"
    assert tmp_root.config_file.read_bytes() == c.serialize(V6)
    c.save_config(str(tmp_root.config_file), dict(V6, x=1))
    assert c.read_config(tmp_root.config_file) == dict(V6, x=1)


def test_describe_hides_31_digit_integers():
    assert c._describe(2 ** 100) == "an integer with more than 30 digits"


def test_redacted_and_merge_never_share_nested_values_with_their_input():
    cfg = {"proxy": {"password": "p"}, "list": [{"a": 1}]}
    out = c.redacted(cfg)
    assert cfg["proxy"]["password"] == "p"  # the caller's config still holds the secret
    out["list"][0]["a"] = 2
    assert cfg["list"][0]["a"] == 1
    listed = [{"a": 1}]
    c.redacted(listed)[0]["a"] = 2
    assert listed == [{"a": 1}]
    settings = {"network": {"extra": [1]}, "custom": {"k": [1]}}
    merged = c.merge_desired(None, settings, None, False)
    settings["network"]["extra"].append(2)
    settings["custom"]["k"].append(2)
    assert (merged["network"]["extra"], merged["custom"]["k"]) == ([1], [1])


# --- the whole-file run's survivors -----------------------------------------------------------
def test_network_durations_bounds_are_inclusive_and_nanoseconds_exact():
    c.validate(dict(V6, network={"timeout": 0.5, "retry_delay": 3600}), P)
    c.validate(dict(V6, network={"timeout": 3600.0, "retry_delay": 0.001}), P)
    assert c.duration_seconds(30_000_000_000) == 30.0  # Go's 30 s, exactly
    assert c.duration_seconds(1_500_000) == 0.0015


def test_bad_number_message_bounds_the_field_and_the_literal():
    key = "k" * 250
    data = b"{\"" + key.encode() + b"\": 1" + b"0" * 400 + b"}"
    assert err(data) == (f"{P}: field {'k' * 200}...: 1{'0' * 39}... has more than 30 digits; "
                         f"use a plain number; {HINT}")


def test_deep_nesting_names_the_top_field_of_a_dotted_path():
    deep = "{\"top key\": " + "{\"a\": " * 40 + "1" + "}" * 40 + "}"
    assert err(deep.encode()) == (f"{P}: nested too deeply (more than 32 levels of [ and {{ "
                                  f"under field top key); {HINT}")


def test_metadata_values_must_be_strings_at_schema_6():
    with pytest.raises(c.ConfigError) as exc:
        c.validate(dict(V6, metadata={"k": 1}), P)
    assert str(exc.value) == (f"{P}: field 'metadata' must be an object of strings, found an "
                              f"object; {HINT}")


@pytest.mark.parametrize(("interval", "ok"), [
    ("1", True), ("86400", True), ("0", False), ("86401", False)])
def test_legacy_string_interval_range_is_inclusive(interval, ok):
    legacy = {"server_url": "http://s", "check_in_interval": interval}
    if ok:
        assert c.parse_config_bytes(b(legacy), P)["check_in_interval"] == interval
    else:
        assert err(b(legacy)).startswith(f"{P}: field 'check_in_interval' must be a positive "
                                         "integer from 1 to 86400 (seconds), found a string;")


def test_a_legacy_field_does_not_end_the_checks():
    legacy = {"check_in_interval": "300", "display_name": 5}
    assert err(b(legacy)) == (f"{P}: field 'display_name' must be a string or null, found 5; "
                              f"{HINT}")


@pytest.mark.parametrize(("url", "shown"), [
    ("http://user:pass@proxy/?u=ftp://x", "http://user:********@proxy/?u=ftp://x"),
    ("socksX://u:p@h:1080", "socksX://u:********@h:1080"),
    ("http://Xuser:pass@h", "http://Xuser:********@h"),
])
def test_mask_url_password_more_shapes(url, shown):
    assert c._mask_url_password(url) == shown


@pytest.mark.parametrize(("data", "message"), [
    # a trailing newline after a complete-looking file: invalid, not truncated
    (b"{\"a\": 1,}\n", "invalid JSON: Expecting property name enclosed in double quotes at "
                       "line 1 column 9"),
    # ends in "}" but the error is at the very end: truncated
    (b"{\"a\": {}", "truncated JSON (the file ends early): Expecting ',' delimiter at line 1 "
                    "column 9"),
    # ends in "}" inside a string that never ends: truncated
    (b"{\"a\": \"b}", "truncated JSON (the file ends early): Unterminated string starting at "
                      "at line 1 column 7"),
])
def test_truncated_or_invalid_json(data, message):
    assert err(data) == f"{P}: {message}; {HINT}"


def test_read_config_names_its_file(tmp_root):
    tmp_root.config_dir.mkdir(parents=True)
    tmp_root.config_file.write_bytes(b"[1]")
    with pytest.raises(c.ConfigError) as exc:
        c.read_config(tmp_root.config_file)
    assert str(exc.value) == (f"{tmp_root.config_file}: the top level must be a JSON object, "
                              f"found list; fix or remove {tmp_root.config_file} (re-run the "
                              "playbook to rewrite it, or `redflag-agent config apply`)")


def test_planted_symlink_error_is_safefs_own_message(tmp_root, tmp_path):
    victim = tmp_path / "victim.json"
    victim.write_text(json.dumps(V6))
    tmp_root.config_dir.mkdir(parents=True)
    tmp_root.config_file.symlink_to(victim)
    for call in (lambda: c.read_config(tmp_root.config_file),
                 lambda: c.save_config(tmp_root, V6)):
        with pytest.raises(c.ConfigError) as exc:
            call()
        assert isinstance(exc.value.__cause__, c.safefs.UnsafePath)
        assert str(exc.value) == str(exc.value.__cause__)
        assert str(tmp_root.config_file) in str(exc.value)


@pytest.mark.parametrize(("value", "shown"), [
    (-(10 ** 40), "an integer with more than 30 digits"),  # by value, never its digits
    ("x" * 70, "\"" + "x" * 59 + "..."),
])
def test_schema_version_of_shows_a_bounded_value(value, shown):
    with pytest.raises(c.ConfigError) as exc:
        c.schema_version_of({"version": value}, "/x")
    assert str(exc.value) == (f"/x: field 'version' must be a schema number such as \"6\", "
                              f"found {shown}; fix or remove /x (re-run the playbook to "
                              "rewrite it, or `redflag-agent config apply`)")


def test_schema_version_zero_as_a_float():
    assert c.schema_version_of({"version": 0.0}) == 0


def test_upgrade_to_current_shares_nothing_with_its_input():
    cfg = {"version": "5", "tags": ["a"], "extra": {"k": [1]}}
    out = c.upgrade_to_current(cfg)
    out["tags"].append("b")
    out["extra"]["k"].append(2)
    assert cfg == {"version": "5", "tags": ["a"], "extra": {"k": [1]}}


def test_forget_identity_of_a_config_without_one():
    out = c.merge_desired(dict(V6), {}, None, True, True)
    assert [k for k in c.FORGET_KEYS if k in out] == []
    assert out["server_url"] == V6["server_url"]
