"""redflag_agent_config in-process: main() with a scripted AnsibleModule, and the pure
pieces' messages pinned exactly (issue 15: mutation testing).

The module is loaded through conftest's `config_module` fixture, so its move to
plugins/modules/ changes only conftest's path.
"""

from __future__ import annotations

import hashlib
import json

import pytest

PY, PYZ = "/usr/bin/python3", "/opt/redflag-agent/current/redflag-agent.pyz"
SETTINGS = {"server_url": "http://127.0.0.1:8080"}
TOKEN = "tok-1"
STATUS_NEW = {"registered": False, "installed": True, "migrations_pending": []}
STATUS_REG = {"registered": True, "installed": True, "migrations_pending": [],
              "agent_id": "A1"}
APPLIED = {"changed": True, "created": True, "path": "/etc/redflag-agent/config.json",
           "changed_keys": ["server_url"], "diff": "+server_url"}
# `systemctl show UNIT -p ActiveState` when a test does not script it: the unit is stopped
INACTIVE = (0, "ActiveState=inactive\n", "")
UNCHANGED = {"changed": False, "created": False, "path": "/etc/redflag-agent/config.json",
             "changed_keys": [], "diff": ""}


class Exit(Exception):
    pass


class Fail(Exception):
    pass


class FakeModule:
    """Stands in for AnsibleModule; `answers` maps an agent subcommand (or a whole systemctl
    command line) to (rc, out, err)."""

    instances: list[FakeModule] = []

    def __init__(self, params, answers, check_mode=False, diff=False):
        self.params = params
        self.answers = answers
        self.check_mode = check_mode
        self._diff = diff
        self.calls: list[tuple[list[str], dict]] = []
        self.warnings: list[str] = []
        self.spec = None
        self.no_log_values: set[str] = set()  # the module adds the settings' secrets here

    def run_command(self, argv, **kwargs):
        self.calls.append((argv, kwargs))
        key = " ".join(argv) if argv[0] == "systemctl" else " ".join(argv[3:])
        if key.startswith("systemctl show"):
            answer = self.answers.get(key, INACTIVE)
        else:
            answer = self.answers[key]
        if isinstance(answer, list):
            return answer.pop(0) if len(answer) > 1 else answer[0]
        return answer

    def warn(self, msg):
        self.warnings.append(msg)

    def exit_json(self, **result):
        raise Exit(result)

    def fail_json(self, **result):
        raise Fail(result)


def ok(obj):
    return 0, json.dumps(obj), ""


@pytest.fixture
def run_main(config_module, monkeypatch, tmp_path):
    pyz = tmp_path / "agent.pyz"
    pyz.write_text("")

    def run(answers, check_mode=False, diff=False, exists=True, **params):
        full = {"python": PY, "pyz": str(pyz) if exists else str(tmp_path / "missing.pyz"),
                "settings": SETTINGS, "registration_token": "", "force_reregister": False,
                "forget_identity": False, "unit": "redflag-agent.service", **params}
        module = FakeModule(full, answers, check_mode, diff)

        def factory(**spec):
            module.spec = spec
            return module

        monkeypatch.setattr(config_module, "AnsibleModule", factory)
        with pytest.raises((Exit, Fail)) as exc:
            config_module.main()
        return module, exc.type.__name__, exc.value.args[0]

    run.pyz = str(pyz)
    return run


def test_argument_spec_hides_the_token(run_main):
    module, kind, _ = run_main({}, registration_token=TOKEN, forget_identity=True)
    assert module.spec == {
        "argument_spec": {
            "python": {"type": "path", "required": True},
            "pyz": {"type": "path", "required": True},
            "settings": {"type": "dict", "required": True},
            "registration_token": {"type": "str", "default": "", "no_log": True},
            "force_reregister": {"type": "bool", "default": False},
            "forget_identity": {"type": "bool", "default": False},
            "unit": {"type": "str", "default": "redflag-agent.service"},
        },
        "supports_check_mode": True,
    }
    assert kind == "Fail"


@pytest.mark.parametrize(("params", "msg"), [
    ({"forget_identity": True, "registration_token": TOKEN},
     "forget_identity (a golden image) enrolls nothing: leave registration_token and "
     "force_reregister unset"),
    ({"forget_identity": True, "force_reregister": True},
     "forget_identity (a golden image) enrolls nothing: leave registration_token and "
     "force_reregister unset"),
    ({"force_reregister": True},
     "force_reregister needs a registration token (it drops the agent's identity); set "
     "redflag_agent_registration_token"),
])
def test_refused_parameter_combinations(run_main, params, msg):
    module, kind, result = run_main({}, **params)
    assert (kind, result) == ("Fail", {"msg": msg})
    assert module.calls == []


def test_registration_token_none_is_no_token(run_main):
    _, kind, result = run_main({}, force_reregister=True, registration_token=None)
    assert kind == "Fail" and result["msg"].startswith("force_reregister needs")


def test_missing_pyz_fails_outside_check_mode(run_main, tmp_path):
    _, kind, result = run_main({}, exists=False)
    assert (kind, result) == ("Fail", {"msg": f"{tmp_path / 'missing.pyz'} does not exist; the "
                                              "install step should have put it there: re-run "
                                              "the role without tags, or check "
                                              "/opt/redflag-agent/current"})


@pytest.mark.parametrize(("params", "enroll", "embedded"), [
    ({"registration_token": TOKEN}, True, True),
    ({}, True, False),
    ({"forget_identity": True}, False, False),
])
def test_missing_pyz_in_check_mode_would_create(run_main, config_module, params, enroll,
                                                embedded):
    module, kind, result = run_main({}, check_mode=True, exists=False, **params)
    missing = module.params["pyz"]
    assert missing.endswith("missing.pyz")
    assert kind == "Exit"
    assert result == dict(config_module.not_installed_result(missing), enroll=enroll,
                          token_embedded=embedded)
    assert module.calls == []


def test_first_enrollment_sends_the_token_on_stdin_only(run_main):
    module, kind, result = run_main({"status --json": ok(STATUS_NEW),
                                     "config apply --json": ok(APPLIED)},
                                    registration_token=TOKEN)
    assert kind == "Exit"
    assert result == {"changed": True, "created": True, "path": APPLIED["path"],
                      "changed_keys": ["server_url"], "migrated": [], "status": STATUS_NEW,
                      "enroll": True, "token_embedded": True, "unregistered": {},
                      "service_stopped": False}
    (status_argv, status_kw), (apply_argv, apply_kw) = module.calls
    assert status_argv == [PY, "-I", run_main.pyz, "status", "--json"]
    assert status_kw == {"environ_update": {"LC_ALL": "C.UTF-8"}}
    assert apply_argv == [PY, "-I", run_main.pyz, "config", "apply", "--json"]
    assert apply_kw == {"data": json.dumps({"registration_token": TOKEN, "reregister": False,
                                            "settings": SETTINGS}, sort_keys=True),
                        "binary_data": True, "environ_update": {"LC_ALL": "C.UTF-8"}}
    assert all(TOKEN not in " ".join(argv) for argv, _ in module.calls)


def test_check_mode_passes_check_and_diff_shows_the_agents_diff(run_main):
    module, _, result = run_main({"status --json": ok(STATUS_REG),
                                  "config apply --json --check": ok(APPLIED)},
                                 check_mode=True, diff=True, registration_token=TOKEN)
    assert result["diff"] == {"prepared": "+server_url"}
    assert result["token_embedded"] is False and result["enroll"] is False
    assert json.loads(module.calls[1][1]["data"]) == {"settings": SETTINGS,
                                                      "reregister": False}


def test_no_diff_key_without_diff_mode_or_without_a_diff(run_main):
    _, _, result = run_main({"status --json": ok(STATUS_REG),
                             "config apply --json": ok(UNCHANGED)}, diff=True)
    assert "diff" not in result and result["changed"] is False
    _, _, result = run_main({"status --json": ok(STATUS_REG),
                             "config apply --json": ok(APPLIED)})
    assert "diff" not in result


def test_pending_migration_runs_then_status_is_read_again(run_main):
    pending = dict(STATUS_NEW, migrations_pending=["config"])
    module, _, result = run_main({
        "status --json": [ok(pending), ok(STATUS_REG)],
        "migrate --json": ok({"phases_done": ["config", 7], "phases": ["ignored"]}),
        "config apply --json": ok(UNCHANGED)})
    assert [argv[3:] for argv, _ in module.calls] == [
        ["status", "--json"], ["migrate", "--json"], ["status", "--json"],
        ["config", "apply", "--json"]]
    assert result["migrated"] == ["config", "7"]
    assert result["changed"] is True  # the migration changed the host
    assert result["status"] == STATUS_REG


def test_pending_migration_in_check_mode_is_a_dry_run(run_main):
    pending = dict(STATUS_NEW, migrations_pending=["config"])
    module, _, result = run_main({
        "status --json": ok(pending),
        "migrate --dry-run --json": ok({"phases": ["config"], "phases_done": ["x"]}),
        "config apply --json --check": ok(UNCHANGED)}, check_mode=True)
    assert [argv[3:] for argv, _ in module.calls] == [
        ["status", "--json"], ["migrate", "--dry-run", "--json"],
        ["config", "apply", "--json", "--check"]]
    assert result["migrated"] == ["config"] and result["status"] == pending


def test_migration_with_nothing_done_reads_status_once(run_main):
    pending = dict(STATUS_NEW, migrations_pending=["config"])
    module, _, result = run_main({"status --json": ok(pending),
                                  "migrate --json": ok({"phases_done": None}),
                                  "config apply --json": ok(UNCHANGED)})
    assert len(module.calls) == 3 and result["migrated"] == [] and result["changed"] is False


def test_failed_migration_fails_with_where_the_data_is(run_main):
    pending = dict(STATUS_NEW, migrations_pending=["config"])
    _, kind, result = run_main({"status --json": ok(pending),
                                "migrate --json": (78, "", "[ERROR] [migration] disk full\n")})
    assert kind == "Fail"
    assert result == {"migrated": [], "msg": (
        "The agent's migration failed and the config is unusable: redflag-agent migrate "
        "exited 78: disk full. Legacy data and backups are kept under /etc/aggregator, "
        "/var/lib/aggregator and /var/lib/redflag-agent/migration_backups; fix the cause "
        "named above and re-run.")}


def test_failed_status_fails_the_task(run_main):
    _, kind, result = run_main({"status --json": (69, "", "boom")})
    assert (kind, result) == ("Fail", {"msg": "redflag-agent status --json exited 69: boom",
                                       "migrated": []})


def test_failed_apply_fails_with_the_agents_reason(run_main):
    _, kind, result = run_main({
        "status --json": ok(STATUS_NEW),
        "config apply --json": (75, "", "[ERROR] [config] disk full. Fix: free space\n")})
    assert (kind, result) == ("Fail", {
        "msg": "redflag-agent config apply exited 75: disk full. Fix: free space",
        "migrated": []})


def test_forced_reenrollment_unregisters_first(run_main):
    module, _, result = run_main({
        "status --json": ok(STATUS_REG),
        "unregister --json": ok({"unregistered": "A1"}),
        "config apply --json": ok(APPLIED)}, registration_token=TOKEN, force_reregister=True)
    # the unit is asked first (it is inactive here, so nothing is stopped)
    assert [argv[3:] if argv[0] != "systemctl" else argv for argv, _ in module.calls] == [
        ["status", "--json"],
        ["systemctl", "show", "redflag-agent.service", "-p", "ActiveState"],
        ["unregister", "--json"], ["config", "apply", "--json"]]
    assert result["unregistered"] == {"unregistered": "A1"}
    assert result["enroll"] is True and result["token_embedded"] is True
    assert result["service_stopped"] is False
    assert json.loads(module.calls[-1][1]["data"])["reregister"] is True
    assert module.warnings == []


def test_failed_unregister_warns_and_re_enrolls(run_main):
    module, kind, result = run_main({
        "status --json": ok(STATUS_REG),
        "unregister --json": (69, "", "[ERROR] [cli] server unreachable\n"),
        "config apply --json": ok(APPLIED)}, registration_token=TOKEN, force_reregister=True)
    assert kind == "Exit" and result["unregistered"] == {}
    assert module.warnings == [
        "could not unregister the replaced agent A1 on the server (exit 69: server "
        "unreachable); re-enrolling anyway. Delete agent A1 on the server by hand; its "
        "identity is kept under /var/lib/redflag-agent/identity_backups"]


def test_silent_failed_unregister_still_warns(run_main):
    # exit 69 with no output at all: the operator must still learn the old agent is left
    module, kind, result = run_main({
        "status --json": ok(STATUS_REG),
        "unregister --json": (69, "", ""),
        "config apply --json": ok(APPLIED)}, registration_token=TOKEN, force_reregister=True)
    assert kind == "Exit" and result["unregistered"] == {}
    assert module.warnings == [
        "could not unregister the replaced agent A1 on the server (exit 69: no output); "
        "re-enrolling anyway. Delete agent A1 on the server by hand; its identity is kept "
        "under /var/lib/redflag-agent/identity_backups"]


def test_forget_identity_unregisters_a_registered_template(run_main):
    module, _, result = run_main({
        "status --json": ok(STATUS_REG),
        "unregister --json": (69, "not json", ""),
        "config apply --json": ok(APPLIED)}, forget_identity=True)
    assert module.warnings == [
        "could not unregister the replaced agent A1 on the server (exit 69: not json); "
        "forgetting it for the image anyway. Delete agent A1 on the server by hand; its "
        "identity is kept under /var/lib/redflag-agent/identity_backups"]
    assert json.loads(module.calls[-1][1]["data"]) == {"settings": SETTINGS, "reregister": False,
                                                      "forget_identity": True}
    assert result["enroll"] is False and result["token_embedded"] is False


def test_forget_identity_on_an_unregistered_host_unregisters_nothing(run_main):
    module, _, _ = run_main({"status --json": ok(STATUS_NEW),
                             "config apply --json": ok(UNCHANGED)}, forget_identity=True)
    assert [argv[3] for argv, _ in module.calls] == ["status", "config"]


def test_check_mode_never_unregisters(run_main):
    module, _, result = run_main({"status --json": ok(STATUS_REG),
                                  "config apply --json --check": ok(APPLIED)},
                                 check_mode=True, registration_token=TOKEN,
                                 force_reregister=True)
    assert [argv[3] for argv, _ in module.calls] == ["status", "config"]
    assert result["unregistered"] == {}


def test_one_shot_force_does_not_replace_again(run_main, config_module):
    status = dict(STATUS_REG, enrolled_token_sha256=config_module.token_fingerprint(TOKEN))
    module, _, result = run_main({"status --json": ok(status),
                                  "config apply --json": ok(UNCHANGED)},
                                 registration_token=TOKEN, force_reregister=True)
    assert [argv[3] for argv, _ in module.calls] == ["status", "config"]
    assert result["enroll"] is False and result["token_embedded"] is False


# --- pure pieces, exact --------------------------------------------------------------------
@pytest.mark.parametrize(("rc", "out", "err", "msg"), [
    (3, "", "", "redflag-agent status exited 3: no output"),
    (3, "out", "", "redflag-agent status exited 3: out"),
    (3, "out", " err ", "redflag-agent status exited 3: err"),
    (3, "", "[ERROR] [x] named\nnoise", "redflag-agent status exited 3: named"),
    (0, "nope", "", "redflag-agent status printed no JSON (Expecting value: line 1 column 1 "
                    "(char 0)): nope"),
    (0, "[1]", "", "redflag-agent status answered list, not an object"),
])
def test_parse_json_answer_messages(config_module, rc, out, err, msg):
    with pytest.raises(config_module.ApplyError) as exc:
        config_module.parse_json_answer("status", rc, out, err)
    assert str(exc.value) == msg


def test_parse_json_answer_bounds_the_detail(config_module):
    with pytest.raises(config_module.ApplyError) as exc:
        config_module.parse_json_answer("status", 1, "", "x" * 700)
    assert str(exc.value) == "redflag-agent status exited 1: " + "x" * 600
    assert config_module.parse_json_answer("s", 0, '{"a": 1}', "") == {"a": 1}


@pytest.mark.parametrize(("rc", "out", "err", "msg"), [
    (78, "", "bad", "redflag-agent config apply exited 78: bad; fix the role variables it "
                    "names (or the config file it names) and re-run"),
    (1, "", "", "redflag-agent config apply exited 1: no output; check that the agent "
                "zipapp runs on this host"),
    (1, "x" * 700, "", "redflag-agent config apply exited 1: " + "x" * 600 + "; check that "
                       "the agent zipapp runs on this host"),
    (0, "", "", "redflag-agent config apply printed no JSON (Expecting value: line 1 column 1 "
                "(char 0)): no output"),
    (0, "{", "", "redflag-agent config apply printed no JSON (Expecting property name "
                 "enclosed in double quotes: line 1 column 2 (char 1)): {"),
    (0, "[]", "", "redflag-agent config apply answered without a boolean 'changed'; the "
                  "installed agent does not match this role's version"),
    (0, '{"changed": 1}', "", "redflag-agent config apply answered without a boolean "
                              "'changed'; the installed agent does not match this role's "
                              "version"),
])
def test_interpret_messages(config_module, rc, out, err, msg):
    with pytest.raises(config_module.ApplyError) as exc:
        config_module.interpret(rc, out, err)
    assert str(exc.value) == msg


def test_interpret_defaults(config_module):
    assert config_module.interpret(0, '{"changed": false}', "") == {
        "changed": False, "created": False, "path": None, "changed_keys": [], "agent_diff": ""}


def test_not_installed_result_exact(config_module):
    result = config_module.not_installed_result("/x.pyz")
    assert result == {"changed": True, "created": True, "path": None, "changed_keys": [],
                      "agent_diff": "", "msg": "/x.pyz is not installed yet; config.json "
                                               "would be created", "migrated": [],
                      "status": {"registered": False, "installed": False,
                                 "migrations_pending": []}}
    result["status"]["registered"] = True
    assert config_module.NOT_INSTALLED["registered"] is False


def test_build_payload_exact(config_module):
    assert config_module.build_payload({"a": 1}, "", 0) == (
        '{"reregister": false, "settings": {"a": 1}}')
    assert config_module.build_payload({"a": 1}, "t", 1, True) == (
        '{"forget_identity": true, "registration_token": "t", "reregister": true, '
        '"settings": {"a": 1}}')


def test_agent_error_exact(config_module):
    stderr = "[ERROR] [cli] one\n[INFO] [x] skip\n[ERROR] [] two\n[ERROR] [c]  \n[ERROR] x"
    assert config_module.agent_error(stderr) == "one | two | [ERROR] x"
    assert config_module.agent_error(None) == ""
    assert len(config_module.agent_error("[ERROR] [c] " + "y" * 3000)) == 2000


def test_unregister_warning_without_detail(config_module):
    assert config_module.unregister_warning("A", 1, "") == (
        "could not unregister the replaced agent A on the server (exit 1: no output); "
        "re-enrolling anyway. Delete agent A on the server by hand; its identity is kept "
        "under /var/lib/redflag-agent/identity_backups")


def test_enrollment_decision_fields(config_module):
    e = config_module.decide_enrollment
    assert e(True, True, True, False) == config_module.Enrollment(True, True, True, True)
    assert e(True, True, True, True) == config_module.Enrollment(False, False, False, False)
    assert e(False, True, True, True) == config_module.Enrollment(True, True, True, False)
    assert e(False, 0, False) == config_module.Enrollment(True, False, False, False)
    assert config_module.Enrollment(True, True, True).replaces is False
    assert config_module.token_fingerprint("tok-1") == hashlib.sha256(b"tok-1").hexdigest()[:12]


def test_enrollment_default_is_not_enrolled_with_this_token(config_module):
    assert config_module.decide_enrollment(True, True, True) == config_module.Enrollment(
        True, True, True, True)


def test_interpret_bounds_unparsable_output_to_500(config_module):
    with pytest.raises(config_module.ApplyError) as exc:
        config_module.interpret(0, "y" * 700, "")
    assert str(exc.value).endswith("): " + "y" * 500)


def test_failed_unregister_detail_is_bounded(run_main):
    detail = "z" * 600
    module, _, _ = run_main({"status --json": ok(STATUS_REG),
                             "unregister --json": (69, "", "z" * 700),
                             "config apply --json": ok(APPLIED)},
                            registration_token=TOKEN, force_reregister=True)
    assert module.warnings == [
        f"could not unregister the replaced agent A1 on the server (exit 69: {detail}); "
        "re-enrolling anyway. Delete agent A1 on the server by hand; its identity is kept "
        "under /var/lib/redflag-agent/identity_backups"]
