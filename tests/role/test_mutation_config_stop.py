"""redflag_agent_config stops the service before it replaces a registered identity: the
agent's `unregister` takes the instance lock and refuses (exit 75) while the running agent
holds it. Stopped only when active, never in check mode, never when nothing is replaced;
the role's service step (after configure in main.yml) starts it again.

In-process, with the scripted AnsibleModule of test_mutation_config_module (so the
mutation run of the module selects these tests too)."""

from __future__ import annotations

import json

import pytest
import test_mutation_config_module as base
from test_mutation_config_module import APPLIED, STATUS_NEW, STATUS_REG, TOKEN, UNCHANGED, ok

from conftest import ROLE, load_yaml

run_main = base.run_main  # the scripted module.main() fixture

UNIT = "redflag-agent.service"
SHOW = f"systemctl show {UNIT} -p ActiveState"
STOP = f"systemctl stop {UNIT}"
ACTIVE = (0, "ActiveState=active\n", "")
REENROLL = {"registration_token": TOKEN, "force_reregister": True}
UNREGISTERED = {"unregistered": True, "agent_id": "A1", "server_knew": True, "backup": "/b"}
LOCKED = ("[ERROR] [unregister] the agent service redflag-agent.service (or another "
          "`redflag-agent run`) is running\n")


def commands(module) -> list[str]:
    """Each call as the test scripts it: a systemctl line whole, an agent call by command."""
    return [" ".join(argv) if argv[0] == "systemctl" else " ".join(argv[3:])
            for argv, _ in module.calls]


def test_reenrolling_a_running_host_stops_it_before_unregister(run_main):
    module, kind, result = run_main({
        "status --json": ok(STATUS_REG), SHOW: ACTIVE, STOP: (0, "", ""),
        "unregister --json": ok(UNREGISTERED), "config apply --json": ok(APPLIED)}, **REENROLL)
    assert kind == "Exit", result
    assert commands(module) == ["status --json", SHOW, STOP, "unregister --json",
                                "config apply --json"]
    assert result["service_stopped"] is True and result["changed"] is True
    assert result["unregistered"] == UNREGISTERED and module.warnings == []
    assert json.loads(module.calls[-1][1]["data"])["reregister"] is True
    # systemctl runs as it is: no agent environment, no stdin
    assert module.calls[1][1] == {} and module.calls[2][1] == {}


@pytest.mark.parametrize(("show", "stops"), [
    ((0, "ActiveState=active\n", ""), True),
    ((0, "ActiveState=activating\n", ""), True),  # auto-restart: about to run again
    ((0, "ActiveState=reloading\n", ""), True),
    ((0, "ActiveState=deactivating\n", ""), True),  # stop waits until it is gone
    ((0, "ActiveState=refreshing\n", ""), True),
    ((0, "ActiveState=inactive\n", ""), False),
    ((0, "ActiveState=failed\n", ""), False),
    ((0, "ActiveState=maintenance\n", ""), False),
    ((0, "", ""), False),
    ((1, "ActiveState=active\n", "no bus"), False),  # no systemd: the agent's lock decides
])
def test_stopped_only_when_it_runs(run_main, show, stops):
    module, kind, result = run_main({
        "status --json": ok(STATUS_REG), SHOW: show, STOP: (0, "", ""),
        "unregister --json": ok(UNREGISTERED), "config apply --json": ok(APPLIED)}, **REENROLL)
    assert kind == "Exit"
    assert (STOP in commands(module)) is stops
    assert result["service_stopped"] is stops


def test_the_given_unit_is_the_one_stopped(run_main):
    module, _, result = run_main({
        "status --json": ok(STATUS_REG), "systemctl show rf.service -p ActiveState": ACTIVE,
        "systemctl stop rf.service": (0, "", ""), "unregister --json": ok(UNREGISTERED),
        "config apply --json": ok(APPLIED)}, unit="rf.service", **REENROLL)
    assert commands(module)[1:3] == ["systemctl show rf.service -p ActiveState",
                                     "systemctl stop rf.service"]
    assert result["service_stopped"] is True


def test_a_golden_image_of_a_running_template_stops_it_before_unregister(run_main):
    module, kind, result = run_main({
        "status --json": ok(STATUS_REG), SHOW: ACTIVE, STOP: (0, "", ""),
        "unregister --json": ok(UNREGISTERED), "config apply --json": ok(APPLIED)},
        forget_identity=True)
    assert kind == "Exit"
    assert commands(module) == ["status --json", SHOW, STOP, "unregister --json",
                                "config apply --json"]
    assert result["service_stopped"] is True


def test_the_stop_alone_is_a_change(run_main):
    _, _, result = run_main({
        "status --json": ok(STATUS_REG), SHOW: ACTIVE, STOP: (0, "", ""),
        "unregister --json": ok(UNREGISTERED), "config apply --json": ok(UNCHANGED)},
        **REENROLL)
    assert result["changed"] is True


@pytest.mark.parametrize(("check_mode", "status", "params"), [
    (True, STATUS_REG, REENROLL),  # check mode: would re-enroll, stops nothing
    (True, STATUS_REG, {"forget_identity": True}),
    (False, STATUS_REG, {"registration_token": TOKEN}),  # registered, not forced
    (False, STATUS_NEW, REENROLL),  # nothing registered to replace
    (False, STATUS_NEW, {"registration_token": TOKEN}),  # first enrollment
    (False, STATUS_NEW, {"forget_identity": True}),  # an image of an unregistered host
])
def test_nothing_replaced_or_check_mode_asks_systemd_nothing(run_main, check_mode, status,
                                                             params):
    apply = "config apply --json" + (" --check" if check_mode else "")
    module, kind, result = run_main({"status --json": ok(status), SHOW: ACTIVE,
                                     STOP: (0, "", ""), apply: ok(APPLIED)},
                                    check_mode=check_mode, **params)
    assert kind == "Exit"
    assert commands(module) == ["status --json", apply]
    assert result["service_stopped"] is False


def test_second_converge_with_force_left_on_stops_nothing(run_main, config_module):
    """force_reregister is one-shot: the identity enrolled with this token stays, the
    service runs on, and the run reports no change."""
    status = dict(STATUS_REG, enrolled_token_sha256=config_module.token_fingerprint(TOKEN))
    module, _, result = run_main({"status --json": ok(status), SHOW: ACTIVE,
                                  STOP: (0, "", ""), "config apply --json": ok(UNCHANGED)},
                                 **REENROLL)
    assert commands(module) == ["status --json", "config apply --json"]
    assert result["changed"] is False and result["service_stopped"] is False


def test_a_failed_stop_fails_before_anything_is_unregistered(run_main):
    module, kind, result = run_main({
        "status --json": ok(STATUS_REG), SHOW: ACTIVE,
        STOP: (1, "", " Job for redflag-agent.service canceled. \n")}, **REENROLL)
    assert kind == "Fail"
    assert result == {"migrated": [], "msg": (
        "systemctl stop redflag-agent.service failed (exit 1: Job for redflag-agent.service "
        "canceled.) before the identity could be replaced; nothing was unregistered or "
        "re-enrolled. See systemctl status redflag-agent.service and journalctl -u "
        "redflag-agent.service, fix it and re-run")}
    assert commands(module) == ["status --json", SHOW, STOP]


@pytest.mark.parametrize(("out", "err", "detail"), [
    ("", "", "no output"),
    ("stopping", "", "stopping"),
    ("out", "err", "err"),
    ("", "e" * 700, "e" * 600),
])
def test_stop_failed_detail(run_main, out, err, detail):
    _, _, result = run_main({"status --json": ok(STATUS_REG), SHOW: ACTIVE,
                             STOP: (5, out, err)}, **REENROLL)
    assert result["msg"].startswith(f"systemctl stop {UNIT} failed (exit 5: {detail}) before")


def test_unregister_finding_the_lock_held_fails_and_re_enrolls_nothing(run_main):
    """Stopped, yet another instance holds the lock (a `redflag-agent run` by hand):
    re-enrolling anyway would be the race the lock exists for."""
    module, kind, result = run_main({
        "status --json": ok(STATUS_REG), SHOW: ACTIVE, STOP: (0, "", ""),
        "unregister --json": (75, "", LOCKED)}, **REENROLL)
    assert kind == "Fail"
    assert result == {"migrated": [], "msg": (
        "redflag-agent unregister exited 75: the agent service redflag-agent.service (or "
        "another `redflag-agent run`) is running; another redflag-agent instance still runs "
        "on this host: stop it and re-run (nothing was unregistered or re-enrolled); "
        "redflag-agent.service was stopped to replace the identity and is left stopped")}
    assert commands(module) == ["status --json", SHOW, STOP, "unregister --json"]
    assert module.warnings == []


def test_lock_held_with_the_unit_inactive_says_nothing_of_a_stop(run_main):
    module, kind, result = run_main({
        "status --json": ok(STATUS_REG), "unregister --json": (75, "", LOCKED)},
        forget_identity=True)
    assert kind == "Fail"
    assert result["msg"].endswith("(nothing was unregistered or re-enrolled)")
    assert "config apply --json" not in commands(module)


def test_a_failed_apply_after_the_stop_says_the_service_is_left_stopped(run_main):
    _, kind, result = run_main({
        "status --json": ok(STATUS_REG), SHOW: ACTIVE, STOP: (0, "", ""),
        "unregister --json": ok(UNREGISTERED),
        "config apply --json": (78, "", "[ERROR] [config] disk full\n")}, **REENROLL)
    assert kind == "Fail"
    assert result == {"migrated": [], "msg": (
        "redflag-agent config apply exited 78: disk full; redflag-agent.service was stopped "
        "to replace the identity and is left stopped")}


def test_other_unregister_failures_still_only_warn(run_main):
    # 69 (server unreachable) after the stop: a warning, and the re-enrollment goes on
    module, kind, result = run_main({
        "status --json": ok(STATUS_REG), SHOW: ACTIVE, STOP: (0, "", ""),
        "unregister --json": (69, "", "[ERROR] [unregister] down\n"),
        "config apply --json": ok(APPLIED)}, **REENROLL)
    assert kind == "Exit" and result["service_stopped"] is True
    assert len(module.warnings) == 1 and "(exit 69: down)" in module.warnings[0]


# --- pure pieces, exact --------------------------------------------------------------------
def test_running_states_exact(config_module):
    assert sorted(config_module.RUNNING_STATES) == ["activating", "active", "deactivating",
                                                    "refreshing", "reloading"]
    assert config_module.EX_TEMPFAIL == 75


def test_messages_exact(config_module):
    assert config_module.unregister_locked("held") == (
        "redflag-agent unregister exited 75: held; another redflag-agent instance still runs "
        "on this host: stop it and re-run (nothing was unregistered or re-enrolled)")
    assert config_module.stop_failed("u.service", 3, "") == (
        "systemctl stop u.service failed (exit 3: no output) before the identity could be "
        "replaced; nothing was unregistered or re-enrolled. See systemctl status u.service and "
        "journalctl -u u.service, fix it and re-run")


# --- the role: configure hands the unit over, the service step starts it again ---------------
def _task(tasks: list, module: str) -> dict:
    return next(t for t in tasks if module in t)


def test_configure_passes_the_unit_and_the_service_step_restarts_after_it():
    block = load_yaml(ROLE / "tasks" / "main.yml")[0]["block"]
    order = [t.get("ansible.builtin.import_tasks") for t in block]
    assert order.index("configure.yml") < order.index("service.yml")
    configure = load_yaml(ROLE / "tasks" / "configure.yml")
    config_task = _task(configure, "redflag.agent.redflag_agent_config")
    assert config_task["redflag.agent.redflag_agent_config"]["unit"] == "{{ redflag_agent__unit }}"
    assert config_task["register"] == "redflag_agent__config"
    service = _task(load_yaml(ROLE / "tasks" / "service.yml"),
                    "redflag.agent.redflag_agent_service")
    args = service["redflag.agent.redflag_agent_service"]
    # a re-enrollment changes config.json: the service step restarts (starts) the unit
    assert "(redflag_agent__config | default({}) is changed)" in args["restart"]
    assert args["unit"] == "{{ redflag_agent__unit }}"


def test_a_configure_only_run_starts_what_it_stopped():
    configure = load_yaml(ROLE / "tasks" / "configure.yml")
    start = _task(configure, "ansible.builtin.systemd_service")
    assert configure.index(start) == configure.index(
        _task(configure, "redflag.agent.redflag_agent_config")) + 1
    assert start["ansible.builtin.systemd_service"] == {"name": "{{ redflag_agent__unit }}",
                                                        "state": "started"}
    assert start["when"] == [
        "redflag_agent__config.service_stopped | default(false)",
        "ansible_run_tags | redflag.agent.redflag_service_skipped(ansible_skip_tags)"]


# --- survivors of the whole-file mutation run outside the stop (the settings' secrets) -------
@pytest.mark.parametrize(("proxy", "secrets"), [
    ({"http": "http://proxy:3128", "https": "http://u:pw-5@proxy:3128"}, ["pw-5"]),
    # an unparsable http URL does not end the search: the https one is still read
    ({"http": "http://u:x@[bad", "https": "http://u:pw-6@proxy:3128"}, ["pw-6"]),
])
def test_settings_secrets_reads_the_https_url_too(config_module, proxy, secrets):
    assert config_module.settings_secrets({"proxy": proxy}) == secrets


def test_main_masks_the_given_settings_secrets(run_main):
    settings = {"server_url": "http://127.0.0.1:8080", "proxy": {"password": "pw-7"}}
    module, kind, _ = run_main({"status --json": ok(STATUS_NEW),
                                "config apply --json": ok(UNCHANGED)}, settings=settings)
    assert kind == "Exit" and module.no_log_values == {"pw-7"}
