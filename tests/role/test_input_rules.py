"""The role's preflight rules (plugins/plugin_utils/redflag_agent_inputs.py), one table each.

Pure functions: no Ansible runs here. The messages are the ones the Jinja checks printed
before they moved to Python (variable, bad value, fix), so they are quoted in full.
tests/role/test_preflight.py runs the same checks through a real playbook.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import replace

import jinja2
import pytest

from conftest import REPO, ROLE, load_source, load_yaml

R = load_source("redflag_agent_inputs",
                REPO / "plugins" / "plugin_utils" / "redflag_agent_inputs.py")

GOOD = R.Inputs(server_url="http://127.0.0.1:8080", resolved_version="0.2.0", source_dir="/src")


def url(value: str) -> str:
    return (f"redflag_agent_server_url is '{value}'; set it to the aggregator's base URL as "
            "http(s)://host[:port] with no path, for example https://redflag.example.org:8443")


def interval(value: str) -> str:
    return (f"redflag_agent_check_in_interval is '{value}'; set it to a positive number of "
            "seconds (default 300).")


def inputs(**kw) -> R.Inputs:
    return replace(GOOD, **kw)


# rule, inputs, the message (None: passes)
CASES = [
    (R.state_rule, {}, None),
    (R.state_rule, {"state": "image"}, None),
    (R.state_rule, {"state": "absent"}, None),
    (R.state_rule, {"state": "gone"},
     "redflag_agent_state is 'gone'; set it to 'present' (install), 'absent' (remove) or "
     "'image' (prepare a golden image)."),
    (R.server_url_rule, {}, None),
    (R.server_url_rule, {"server_url": "https://[::1]:8443"}, None),
    (R.server_url_rule, {"server_url": "https://redflag.example.org:65535/"}, None),
    (R.server_url_rule, {"server_url": "ftp://x"}, url("ftp://x")),
    (R.server_url_rule, {"server_url": ""}, url("")),
    (R.server_url_rule, {"server_url": "http://h/api"}, url("http://h/api")),
    (R.server_url_rule, {"server_url": "http://h:65536"}, url("http://h:65536")),
    (R.server_url_rule, {"server_url": None}, url("None")),
    (R.server_url_rule, {"server_url": 8080}, url("8080")),
    (R.server_url_rule, {"server_url": "", "state": "image"}, url("")),
    (R.server_url_rule, {"server_url": "", "state": "absent"}, None),
    (R.check_in_interval_rule, {"check_in_interval": "60"}, None),
    (R.check_in_interval_rule, {"check_in_interval": 0}, interval("0")),
    (R.check_in_interval_rule, {"check_in_interval": -5}, interval("-5")),
    (R.check_in_interval_rule, {"check_in_interval": "5m"}, interval("5m")),
    (R.check_in_interval_rule, {"check_in_interval": 0, "state": "absent"}, None),
    (R.version_rule, {"version": ""}, None),
    (R.version_rule, {"version": "1.10.2-rc1"}, None),
    (R.version_rule, {"version": "latest"},
     "redflag_agent_version is 'latest'; set it to a version such as 0.2.0 (digits and dots, "
     "optional suffix), or leave it empty to use the source tree's."),
    (R.version_rule, {"version": "1"},
     "redflag_agent_version is '1'; set it to a version such as 0.2.0 (digits and dots, "
     "optional suffix), or leave it empty to use the source tree's."),
    (R.artifact_needs_version_rule, {"artifact": "/x.pyz", "version": "0.2.0"}, None),
    (R.artifact_needs_version_rule, {"artifact": "/x.pyz"},
     "redflag_agent_artifact is set but redflag_agent_version is empty; set "
     "redflag_agent_version to the version of /x.pyz."),
    (R.artifact_needs_version_rule, {"artifact": "/x.pyz", "state": "absent"}, None),
    (R.source_version_rule, {"resolved_version": "(unreadable)", "version": "0.2.0"}, None),
    (R.source_version_rule, {"resolved_version": "(unreadable)"},
     "The agent version '(unreadable)' is not a version; set redflag_agent_version, or fix "
     "AGENT_VERSION in /src/redflag_agent/version.py."),
    (R.keep_versions_rule, {"keep_versions": 1}, None),
    (R.keep_versions_rule, {"keep_versions": "0"},
     "redflag_agent_keep_versions is '0'; set it to 1 or more (2 keeps the previous version "
     "for rollback)."),
    (R.keep_versions_rule, {"keep_versions": "x"},
     "redflag_agent_keep_versions is 'x'; set it to 1 or more (2 keeps the previous version "
     "for rollback)."),
    (R.require_token_rule, {"require_token": True, "token_given": True}, None),
    (R.require_token_rule, {"require_token": True, "state": "image"}, None),
    (R.require_token_rule, {"require_token": "yes"},
     "redflag_agent_require_token is true but redflag_agent_registration_token is empty; set "
     "redflag_agent_registration_token (in a vault, see inventory/example/README.md) or set "
     "redflag_agent_require_token to false to install and wait for a token."),
    (R.force_needs_token_rule, {"force_reregister": True, "token_given": True}, None),
    (R.force_needs_token_rule, {"force_reregister": True, "state": "image"}, None),
    (R.force_needs_token_rule, {"force_reregister": True},
     "redflag_agent_force_reregister is true but redflag_agent_registration_token is empty; "
     "re-registering drops the agent's identity, so set a fresh registration token (in a "
     "vault) or set redflag_agent_force_reregister to false."),
    (R.rollback_keeps_previous_rule, {"rollback": True, "keep_versions": 2}, None),
    (R.rollback_keeps_previous_rule, {"rollback": False, "keep_versions": 1}, None),
    (R.rollback_keeps_previous_rule, {"rollback": True, "keep_versions": 1, "state": "image"},
     None),
    (R.rollback_keeps_previous_rule, {"rollback": True, "keep_versions": 1},
     "redflag_agent_rollback is true (site.yml's canary rollback) but "
     "redflag_agent_keep_versions is '1': the version to roll back to would be pruned; set "
     "redflag_agent_keep_versions to 2 or more, or run site.yml with -e "
     "redflag_rollout_rollback=none."),
]


@pytest.mark.parametrize(("rule", "kw", "message"), CASES,
                         ids=[f"{c[0].__name__}-{c[1]}" for c in CASES])
def test_input_rule(rule, kw, message):
    assert rule(inputs(**kw)) == message


def test_every_input_rule_is_run_and_in_order():
    assert set(R.INPUT_RULES) == {c[0] for c in CASES}
    bad = inputs(server_url="ftp://x", keep_versions=0, force_reregister=True, rollback=True)
    assert [m.split(" ", 1)[0] for m in R.input_errors(bad)] == [
        "redflag_agent_server_url", "redflag_agent_keep_versions",
        "redflag_agent_force_reregister", "redflag_agent_rollback"]
    assert R.input_errors(GOOD) == []


def test_version_pattern_is_the_one_the_modules_get():
    assert load_yaml(ROLE / "vars" / "main.yml")["redflag_agent__version_re"] == R.VERSION_RE


@pytest.mark.parametrize(("kw", "errors", "allowed"), [
    ({}, [], True),
    ({"state": "image"}, [], True),
    ({"state": "absent"}, [], False),
    ({}, ["an input error"], False),
    ({"check_mode": True}, [], False),
    ({"python": "/opt/py/bin/python3"}, [], False),
    ({"install_python": False}, [], False),
])
def test_the_probe_installs_python_only_when_allowed_and_inputs_pass(kw, errors, allowed):
    assert R.may_install_python(inputs(**kw), errors) is allowed


OK_PROBE = {"python": "/usr/bin/python3", "python_version": "3.11", "systemd": "1"}
NO_PY = {"python": "none", "python_version": "0.0", "systemd": "1"}


@pytest.mark.parametrize(("kw", "probed", "errors", "message"), [
    ({}, OK_PROBE, [], None),
    ({}, {**OK_PROBE, "python_version": "3.10"}, [], None),
    ({"state": "absent"}, NO_PY, [], None),
    ({"check_mode": True}, NO_PY, [], None),
    # an input error kept the probe from installing python3: the input error is the news
    ({}, NO_PY, ["bad url"], None),
    ({}, {**NO_PY, "install_error": "dnf exited 1"}, [],
     "The host has no usable python3 3.9+ (found none 0.0). Installing it with dnf/apt did not "
     "give one (dnf exited 1); install python3 3.9+ by hand or set redflag_agent_python."),
    ({}, NO_PY, [],
     "The host has no usable python3 3.9+ (found none 0.0). Installing it with dnf/apt did not "
     "give one (see the probe output); install python3 3.9+ by hand or set redflag_agent_python."),
    ({"install_python": False}, {**NO_PY, "python": "/usr/bin/python3", "python_version": "3.6"},
     ["bad url"],
     "The host has no usable python3 3.9+ (found /usr/bin/python3 3.6). Install python3 3.9+ on "
     "the host, or set redflag_agent_install_python to true."),
    ({"python": "/opt/py"}, {**NO_PY, "python": "/opt/py"}, [],
     "redflag_agent_python is /opt/py, which is not a usable python3 3.9+ (found /opt/py 0.0). "
     "Point redflag_agent_python at a python3 3.9+ or leave it empty to use the host python3."),
    ({}, {**OK_PROBE, "python": "python3"}, [],
     "The host has no usable python3 3.9+ (found python3 3.11). Installing it with dnf/apt did "
     "not give one (see the probe output); install python3 3.9+ by hand or set "
     "redflag_agent_python."),
])
def test_python_rule(kw, probed, errors, message):
    assert R.python_rule(inputs(**kw), R.Probe(probed=probed), errors) == message


SYSTEMD = ("Check systemd is PID 1: the host's service manager is not systemd "
           "(/run/systemd/system is missing); the agent runs as a systemd unit, so this host is "
           "not supported (in a container, boot /sbin/init with systemd).")


@pytest.mark.parametrize(("kw", "probed", "message"), [
    ({}, OK_PROBE, None),
    ({}, {**OK_PROBE, "systemd": "0"}, SYSTEMD),
    ({}, {}, SYSTEMD),
    ({"state": "image"}, {**OK_PROBE, "systemd": "0"}, SYSTEMD),
    ({"state": "absent"}, {**OK_PROBE, "systemd": "0"}, None),
])
def test_systemd_rule(kw, probed, message):
    assert R.systemd_rule(inputs(**kw), R.Probe(probed=probed)) == message


SUDO = R.Probe(rc=127, stderr="/bin/sh: 1: sudo: not found\n", become=True)


@pytest.mark.parametrize(("probe", "fragments"), [
    (SUDO, ["The read-only host probe (/bin/sh as root via sudo) exited 127: /bin/sh: 1: sudo: "
            "not found.", "Next: the play becomes root with sudo: install sudo on the host",
            "ansible_become=false"]),
    (R.Probe(error="Premature end of stream waiting for become success.\n>>> Standard Error\n"
                   "sh: doas: not found", become=True, become_method="doas", become_user="admin"),
     ["probe (/bin/sh as admin via doas) could not run: Premature end of stream waiting for "
      "become success. stderr: sh: doas: not found.", "install doas on the host"]),
    (R.Probe(rc=2, stderr=""), ["The read-only host probe (/bin/sh) exited 2: it wrote nothing "
                                "to stderr.", "POSIX /bin/sh"]),
    (R.Probe(rc=1, stderr="x" * 1000 + " the end"), ["exited 1: ..." + "x" * 392 + " the end."]),
])
def test_a_failed_probe_quotes_the_hosts_stderr_and_the_next_step(probe, fragments):
    message = R.probe_failed_rule(GOOD, probe)
    for fragment in fragments:
        assert fragment in message, message
    assert "non-zero return code" not in message


def test_a_probe_that_ran_is_not_a_failure():
    assert R.probe_failed_rule(GOOD, R.Probe(probed=OK_PROBE)) is None


def test_preflight_errors_inputs_first_and_a_failed_probe_replaces_the_host_checks():
    bad = inputs(keep_versions=0)
    assert R.preflight_errors(bad, R.Probe(probed={**NO_PY, "systemd": "0"})) == [
        R.keep_versions_rule(bad), SYSTEMD]
    failed = R.preflight_errors(bad, SUDO)
    assert failed[0] == R.keep_versions_rule(bad)
    assert len(failed) == 2 and failed[1].startswith("The read-only host probe")
    assert R.preflight_errors(GOOD, R.Probe(probed=OK_PROBE)) == []


def test_parse_probe_keeps_key_value_lines_and_the_last_value():
    out = ("python=none\npython_version=0.0\nnoise line\npython_installed=1\n"
           "python=/usr/bin/python3\n")
    assert R.parse_probe(out) == {"python": "/usr/bin/python3", "python_version": "0.0",
                                  "python_installed": "1"}


@pytest.mark.parametrize(("value", "as_int", "as_bool"), [
    (2, 2, False), ("2", 2, False), ("2.7", 2, False), ("x", 0, False), (None, 0, False),
    (True, 1, True), ("yes", 0, True), ("True", 0, True), (1, 1, True), ("1", 1, True),
    ("no", 0, False),
])
def test_int_and_bool_read_values_as_the_jinja_filters_did(value, as_int, as_bool):
    assert (R.to_int(value), R.to_bool(value)) == (as_int, as_bool)


# --- the wiring: the task passes what the plugin reads; the probe obeys install_python ----

def test_the_preflight_task_passes_every_plugin_argument():
    sys.path.insert(0, str(REPO / ".collections"))
    try:
        from ansible_collections.redflag.agent.plugins.action import redflag_agent_validate
    finally:
        sys.path.remove(str(REPO / ".collections"))
    tasks = load_yaml(ROLE / "tasks" / "preflight.yml")
    args = tasks[0]["redflag.agent.redflag_agent_validate"]
    assert set(args) == set(redflag_agent_validate.ARGUMENT_SPEC)
    assert "registration_token" not in str(args)  # only whether it is set (vars/main.yml)


def render_probe(python: str) -> str:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)  # noqa: S701 - a shell script
    env.filters["quote"] = shlex.quote
    source = (ROLE / "templates" / "probe.sh.j2").read_text()
    return env.from_string(source).render(redflag_agent_python=python, redflag_agent_state="absent")


@pytest.mark.parametrize(("install", "ran"), [(0, False), (1, True), (None, False)])
def test_the_probe_installs_python_only_when_told(install, ran, tmp_path):
    # A fake dnf records that it ran and fails, so nothing is installed here.
    (tmp_path / "dnf").write_text(f"#!/bin/sh\ntouch {tmp_path}/dnf-ran\nexit 3\n")
    (tmp_path / "dnf").chmod(0o755)
    prefix = "" if install is None else f"install_python={install}\n"
    script = prefix + render_probe(str(tmp_path / "no-python"))
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ.get('PATH', '')}"}
    out = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, env=env,
                         timeout=30, check=True).stdout
    assert (tmp_path / "dnf-ran").exists() is ran
    assert ("install_error=dnf exited 3" in out) is ran
    assert f"python={tmp_path}/no-python" in out
