"""redflag_agent_config: payload, argv and the reading of the agent's answer (tables)."""

from __future__ import annotations

import json

import pytest

SETTINGS = {"server_url": "http://127.0.0.1:8080", "check_in_interval": 300}


@pytest.mark.parametrize(
    ("token", "reregister", "expected"),
    [
        ("", False, {"settings": SETTINGS, "reregister": False}),
        (
            "tok-1",
            False,
            {"settings": SETTINGS, "reregister": False, "registration_token": "tok-1"},
        ),
        ("tok-1", True, {"settings": SETTINGS, "reregister": True, "registration_token": "tok-1"}),
    ],
)
def test_payload(config_module, token, reregister, expected):
    assert json.loads(config_module.build_payload(SETTINGS, token, reregister)) == expected


@pytest.mark.parametrize(
    ("check", "tail"),
    [(False, ["config", "apply", "--json"]), (True, ["config", "apply", "--json", "--check"])],
)
def test_argv_never_carries_the_token(config_module, check, tail):
    argv = config_module.build_argv("/usr/bin/python3", "/opt/x.pyz", check)
    assert argv == ["/usr/bin/python3", "-I", "/opt/x.pyz", *tail]


ANSWER = {
    "changed": True,
    "created": False,
    "path": "/etc/redflag-agent/config.json",
    "changed_keys": ["check_in_interval"],
    "diff": "-a\n+b",
}


@pytest.mark.parametrize(
    ("rc", "stdout", "expected"),
    [
        (
            0,
            json.dumps(ANSWER),
            {
                "changed": True,
                "created": False,
                "path": "/etc/redflag-agent/config.json",
                "changed_keys": ["check_in_interval"],
                "agent_diff": "-a\n+b",
            },
        ),
        (
            0,
            json.dumps({"changed": False, "created": False, "path": "/p", "changed_keys": []}),
            {
                "changed": False,
                "created": False,
                "path": "/p",
                "changed_keys": [],
                "agent_diff": "",
            },
        ),
        (
            0,
            json.dumps({"changed": True, "created": True}),
            {"changed": True, "created": True, "path": None, "changed_keys": [], "agent_diff": ""},
        ),
    ],
)
def test_interpret_answers(config_module, rc, stdout, expected):
    assert config_module.interpret(rc, stdout, "") == expected


@pytest.mark.parametrize(
    ("rc", "stdout", "stderr", "fragment"),
    [
        (
            78,
            "",
            "server_url: not a URL",
            "exited 78: server_url: not a URL; fix the role variables",
        ),
        (1, "", "", "exited 1: no output; check that the agent zipapp runs"),
        (0, "Traceback", "", "printed no JSON"),
        (0, json.dumps({"changed": "yes"}), "", "without a boolean 'changed'"),
        (0, json.dumps([1]), "", "without a boolean 'changed'"),
    ],
)
def test_interpret_errors(config_module, rc, stdout, stderr, fragment):
    with pytest.raises(config_module.ApplyError) as err:
        config_module.interpret(rc, stdout, stderr)
    assert fragment in str(err.value)


FULL_DISK = (
    "[ERROR] [config] cannot write /etc/redflag-agent/config.json: No space left on device "
    "(ENOSPC); nothing was changed: /etc/redflag-agent/config.json still holds the previous "
    "settings. Free space on the filesystem holding /etc/redflag-agent and apply again\n"
)


@pytest.mark.parametrize(
    ("rc", "stderr", "fragment"),
    [
        (78, FULL_DISK, "exited 78: cannot write /etc/redflag-agent/config.json: No space left"),
        (78, "[INFO] [x] note\n" + FULL_DISK, "exited 78: cannot write"),
        (78, "[ERROR] [agent] run stopped on an unexpected KeyError\n", "exited 78: run stopped"),
    ],
)
def test_interpret_passes_the_agents_message_through(config_module, rc, stderr, fragment):
    with pytest.raises(config_module.ApplyError) as err:
        config_module.interpret(rc, "", stderr)
    msg = str(err.value)
    assert fragment in msg
    assert "zipapp" not in msg and "[ERROR]" not in msg and "[INFO]" not in msg


def test_agent_error_joins_lines_and_bounds_them(config_module):
    text = "[ERROR] [a] one\n[WARN] [b] skip\n[ERROR] [c] two\n"
    assert config_module.agent_error(text) == "one | two"
    assert len(config_module.agent_error("[ERROR] [a] " + "x" * 5000)) == 2000
    assert config_module.agent_error("Traceback (most recent call last):\n") == ""


def test_not_installed_in_check_mode_would_create(config_module):
    result = config_module.not_installed_result("/opt/redflag-agent/current/redflag-agent.pyz")
    assert result["changed"] is True and result["created"] is True
    assert "would be created" in result["msg"]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ((False, False, True, False), (True, True, False, False)),
        ((False, False, False, False), (True, False, False, False)),
        ((True, False, True, False), (False, False, False, False)),
        ((True, False, False, False), (False, False, False, False)),
        # forced: the registered identity is replaced (unregistered first)
        ((True, True, True, False), (True, True, True, True)),
        ((False, True, True, False), (True, True, True, False)),
        # one-shot: already enrolled with this very token, so forcing again changes nothing
        ((True, True, True, True), (False, False, False, False)),
        ((True, False, True, True), (False, False, False, False)),
        # not registered (e.g. that enrollment was set aside): enroll again
        ((False, True, True, True), (True, True, True, False)),
        ((False, False, True, True), (True, True, False, False)),
    ],
)
def test_decide_enrollment(config_module, given, expected):
    """given: registered, force_reregister, token given, enrolled with this token."""
    got = config_module.decide_enrollment(*given)
    assert tuple(got) == expected


def test_token_fingerprint_is_the_agents(config_module):
    from redflag_agent.registration import token_fingerprint

    for token in ("t", "tok-e2e-7f3a9c", "ü" * 80):
        assert config_module.token_fingerprint(token) == token_fingerprint(token)
        assert token not in config_module.token_fingerprint(token)


@pytest.mark.parametrize(
    ("status", "token", "expected"),
    [
        ({"enrolled_token_sha256": "9a6f6e0f1d3e"}, "x", False),
        ({}, "x", False),
        ({"enrolled_token_sha256": None}, "x", False),
        ({"enrolled_token_sha256": ""}, "", False),
    ],
)
def test_enrolled_with(config_module, status, token, expected):
    assert config_module.enrolled_with(status, token) is expected


def test_enrolled_with_matches_the_recorded_fingerprint(config_module):
    fp = config_module.token_fingerprint("tok")
    assert config_module.enrolled_with({"enrolled_token_sha256": fp}, "tok") is True
    assert config_module.enrolled_with({"enrolled_token_sha256": fp}, "tok2") is False


@pytest.mark.parametrize(
    ("rc", "stdout", "fragment"),
    [(1, "", "exited 1"), (0, "not json", "printed no JSON"), (0, "[1]", "not an object")],
)
def test_parse_json_answer_errors(config_module, rc, stdout, fragment):
    with pytest.raises(config_module.ApplyError) as err:
        config_module.parse_json_answer("status --json", rc, stdout, "")
    assert fragment in str(err.value) and "status --json" in str(err.value)


@pytest.mark.parametrize(
    ("settings", "secrets"),
    [
        ({"proxy": {"enabled": True, "password": "pw-1"}}, ["pw-1"]),
        ({"proxy": {"http": "http://u:pw-2@proxy:3128", "https": "http://proxy:3128"}}, ["pw-2"]),
        ({"proxy": {"password": "", "http": "http://u@proxy:3128"}}, []),
        ({"proxy": {"http": "http://u:pw-3@[bad", "password": "pw-4"}}, ["pw-4"]),
        ({"proxy": "http://legacy:3128"}, []),
        ({"server_url": "http://s"}, []),
        (None, []),
    ],
)
def test_settings_secrets(config_module, settings, secrets):
    assert config_module.settings_secrets(settings) == secrets
