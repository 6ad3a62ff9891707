"""Drop-ins, 0.2.x helper state and privileged bits in the takeover, and the service phase's
drop-in check: the rule (pure tables), then the takeover and the service module (which runs
the check first, in its one call) over a temporary tree."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from ansible_collections.redflag.agent.plugins.module_utils import (
    redflag_agent_systemd as sd,
)

from conftest import FILTERS, MODULES, load_source

tk = load_source("redflag_agent_takeover", MODULES / "redflag_agent_takeover.py")
sv = load_source("redflag_agent_service", MODULES / "redflag_agent_service.py")
fleet = load_source("redflag_fleet", FILTERS / "redflag_fleet.py")

PYZ = "/opt/redflag-agent/current/redflag-agent.pyz"
UNIT = "redflag-agent.service"
OURS = f"[Service]\nExecStart=/usr/bin/python3 -I {PYZ} run\n"
UPSTREAM = "[Service]\nUser=redflag-agent\nExecStart=/usr/local/bin/redflag-agent\n"
SECRET = "tok-3f9c0ffee"
OVERRIDE = (
    "[Service]\nExecStart=\nExecStart=/usr/local/bin/redflag-agent -debug\nUser=root\n"
    f"NoNewPrivileges=no\nEnvironment=REDFLAG_TOKEN={SECRET}\n"
)
LIMITS = "[Service]\nMemoryMax=200M\nCPUQuota=20%\n[Unit]\nAfter=network-online.target\n"
LOADED_UPSTREAM = tk.Loaded(
    "loaded", "active", "enabled", "{ path=/usr/local/bin/redflag-agent ; }"
)
LOADED_OURS = tk.Loaded(
    "loaded", "active", "enabled", f"{{ argv[]=/usr/bin/python3 -I {PYZ} run ; }}"
)
CAPS = b"\x01\x00\x00\x02\x00\x00\x08\x00" + bytes(12)  # cap_sys_ptrace=ep, as upstream's setcap


# ---- the rule (pure) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("unit", "type_wide", "names"),
    [
        (UNIT, False, ["redflag-agent.service.d", "redflag-.service.d"]),
        (UNIT, True, ["redflag-agent.service.d", "redflag-.service.d", "service.d"]),
        ("a-b-c.service", False, ["a-b-c.service.d", "a-b-.service.d", "a-.service.d"]),
        ("plain.service", True, ["plain.service.d", "service.d"]),
    ],
)
def test_dropin_dir_names(unit, type_wide, names):
    assert sd.dropin_dir_names(unit, type_wide) == names


def test_dropin_dirs_cover_every_base_and_dropin_paths_parse():
    dirs = sd.dropin_dirs(UNIT)
    assert "/etc/systemd/system/redflag-agent.service.d" in dirs
    assert "/run/systemd/system/redflag-.service.d" in dirs
    assert "/etc/systemd/system.control/redflag-agent.service.d" in dirs
    assert "/usr/lib/systemd/system/redflag-agent.service.d" in dirs
    assert not any(d.endswith("/service.d") for d in dirs)
    props = {"DropInPaths": "/etc/a.conf /run/b.conf"}
    assert sd.dropin_paths(props) == ["/etc/a.conf", "/run/b.conf"]
    assert sd.dropin_paths({}) == [] and sd.dropin_paths({"DropInPaths": ""}) == []


@pytest.mark.parametrize(
    ("text", "found"),
    [
        (OVERRIDE, [("Service", "ExecStart"), ("Service", "ExecStart"), ("Service", "User"),
                    ("Service", "NoNewPrivileges"), ("Service", "Environment")]),
        ("# User=root\n; Group=root\n\n[Unit]\n Description = x \n", [("Unit", "Description")]),
        ("[Service]\nEnvironment=A=1 \\\n  User=root\nNice=5\n",  # continued value, not User
         [("Service", "Environment"), ("Service", "Nice")]),
        ("[Service]\nnot an assignment\n", []),
    ],
)  # fmt: skip
def test_directives(text, found):
    assert sd.directives(text) == found


def dropin(text="", kind="file", uid=0, mode=0o644, target=""):
    return sd.DropIn("/etc/systemd/system/redflag-agent.service.d/x.conf", kind, uid, mode,
                     text, target)  # fmt: skip


FAIL, WARN, IGNORE = sd.FAIL, sd.WARN, sd.IGNORE


@pytest.mark.parametrize(
    ("d", "verdict", "why"),
    [
        (dropin(LIMITS), WARN, "sets only After, CPUQuota, MemoryMax"),
        (dropin("[Install]\nWantedBy=multi-user.target\n"), WARN, "sets only WantedBy"),
        (dropin("# nothing\n"), WARN, "sets nothing"),
        # Fedora's vendor /usr/lib/systemd/system/service.d/10-timeout-abort.conf
        (dropin("[Service]\nTimeoutStopFailureMode=abort\n"), WARN, "sets only TimeoutStop"),
        (dropin(OVERRIDE), FAIL, "sets Environment, ExecStart, NoNewPrivileges, User"),
        (dropin("[Service]\nExecStart=\n"), FAIL, "sets ExecStart"),
        (dropin("[Service]\nProtectSystem=no\n"), FAIL, "sets ProtectSystem"),
        (dropin("[Service]\nEnvironmentFile=/var/lib/redflag-agent/env\n"), FAIL,
         "sets EnvironmentFile"),
        (dropin("[Service]\nRestart=always\nRestartSec=1\n"), FAIL, "sets Restart, RestartSec"),
        (dropin("[Service]\nSomeFutureSandboxKnob=no\n"), FAIL, "sets SomeFutureSandboxKnob"),
        (dropin("[Unit]\nDescription=x\nOnFailure=evil.service\n"), FAIL, "[Unit] OnFailure"),
        (dropin("[X-Vendor]\nMemoryMax=1G\n"), FAIL, "[X-Vendor] MemoryMax"),
        # the same harmless key in the wrong section is not harmless
        (dropin("[Unit]\nMemoryMax=1G\n"), FAIL, "[Unit] MemoryMax"),
        (dropin(LIMITS, uid=997), FAIL, "owned by uid 997 with mode 0644"),
        (dropin(LIMITS, mode=0o664), FAIL, "with mode 0664"),
        (dropin(LIMITS, mode=0o646), FAIL, "with mode 0646"),
        (dropin(kind="symlink", target="/var/lib/redflag-agent/x.conf"), FAIL,
         "a symlink to /var/lib/redflag-agent/x.conf"),
        (dropin(kind="symlink", target="/dev/null"), IGNORE, "masked"),
        (dropin(kind="directory"), FAIL, "a directory, not a regular file"),
    ],
)  # fmt: skip
def test_judge_dropin(d, verdict, why):
    got, reason = sd.judge_dropin(d)
    assert (got, why in reason) == (verdict, True), reason
    assert SECRET not in reason


# ---- the takeover module over a temporary tree --------------------------------------------


class Failed(Exception):
    pass


class Exited(Exception):
    pass


class FakeModule:
    """What both modules use of AnsibleModule; `systemctl show` answers with `props`, the
    agent's `status --json` with `status`."""

    def __init__(self, params, check=False, props=None, status=None):
        self.params = params
        self.check_mode = check
        self._diff = True
        self.props = props or {}
        self.status = status or {}
        self.calls: list[list[str]] = []
        self.warnings: list[str] = []
        self.result: dict = {}

    def run_command(self, argv, **_kw):
        self.calls.append(argv)
        if argv[:2] == ["systemctl", "show"]:
            return 0, "".join(f"{k}={v}\n" for k, v in self.props.items()), ""
        if argv[-2:] == ["status", "--json"]:
            return 0, json.dumps(self.status), ""
        return 0, "", ""

    def fail_json(self, msg, **kw):
        self.result = {"msg": msg, "failed": True, **kw}
        raise Failed(msg)

    def exit_json(self, **kw):
        self.result = kw
        raise Exited

    def warn(self, msg):
        self.warnings.append(msg)

    def actions(self):
        return [c for c in self.calls if c[:2] != ["systemctl", "show"]]


def props_of(loaded):
    return {"LoadState": loaded.load_state, "ActiveState": loaded.active_state,
            "UnitFileState": loaded.unit_file_state, "ExecStart": loaded.exec_start}  # fmt: skip


@pytest.fixture
def tree(tmp_path) -> Path:
    for d in ("etc/systemd/system", "run/systemd/system", "usr/local/bin", "var/lib/redflag",
              "etc/redflag"):  # fmt: skip
        (tmp_path / d).mkdir(parents=True)
    return tmp_path


def params(tree: Path) -> dict:
    bases = (str(tree / "etc/systemd/system"), str(tree / "run/systemd/system"))
    return {
        "unit": UNIT,
        "unit_paths": [str(tree / "etc/systemd/system" / UNIT)],
        "pyz": PYZ,
        "binaries": [str(tree / "usr/local/bin/redflag-agent")],
        "sudoers": [],
        "polkit_rules": [],
        "helper_files": [str(tree / "etc/redflag/authority_local.key")],
        "helper_dirs": [str(tree / "var/lib/redflag/helper")],
        "dropin_dirs": sd.dropin_dirs(UNIT, bases=bases),
        "group": "redflag-test-no-such-group",
        "agent_user": "redflag-agent",
        "backup_root": str(tree / "var/lib/redflag-agent-takeover"),
    }  # fmt: skip


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def upstream_host(tree: Path) -> dict[str, Path]:
    return {
        "unit": write(tree / "etc/systemd/system" / UNIT, UPSTREAM),
        "override": write(tree / f"etc/systemd/system/{UNIT}.d/override.conf", OVERRIDE),
        "prefix": write(
            tree / "run/systemd/system/redflag-.service.d/10-env.conf",
            "[Service]\nProtectSystem=false\n",
        ),  # fmt: skip
        "agent": write(tree / "usr/local/bin/redflag-agent", "#!/bin/sh\nexit 1\n", 0o755),
    }


def kept(result, path: Path) -> Path:
    return Path(result["backup_dir"]) / "files" / str(path).lstrip("/")


def test_upstream_dropins_go_into_the_backup_named_with_their_directives(tree):
    files = upstream_host(tree)
    module = FakeModule(params(tree), props=props_of(LOADED_UPSTREAM))
    result = tk.takeover(module)
    for key in ("override", "prefix"):
        assert not files[key].exists()
        assert kept(result, files[key]).is_file()
    assert kept(result, files["override"]).read_text() == OVERRIDE
    assert not files["override"].parent.exists(), "the emptied drop-in directory stays"
    assert result["dropins"] == [str(files["override"]), str(files["prefix"])]
    assert (f"drop-in {files['override']} (sets ExecStart, User, NoNewPrivileges, Environment)"
            in result["summary"])  # fmt: skip
    assert f"drop-in {files['prefix']} (sets ProtectSystem)" in result["summary"]
    text = json.dumps(result)
    assert SECRET not in text, "a drop-in's value reached the report"
    assert module.actions()[-1] == ["systemctl", "daemon-reload"]
    m = json.loads((Path(result["backup_dir"]) / "manifest.json").read_text())
    assert str(files["override"]) in [f["path"] for f in m["files"]]

    # Ours in place: a second run finds nothing and changes nothing.
    write(tree / "etc/systemd/system" / UNIT, OURS)
    again = FakeModule(params(tree), props=props_of(LOADED_OURS))
    second = tk.takeover(again)
    assert (second["changed"], second["summary"], second["dropins"]) == (False, "", [])
    assert again.actions() == []


def test_check_mode_names_the_dropins_and_moves_nothing(tree):
    files = upstream_host(tree)
    module = FakeModule(params(tree), check=True, props=props_of(LOADED_UPSTREAM))
    result = tk.takeover(module)
    assert result["changed"] is True
    assert result["dropins"] == [str(files["override"]), str(files["prefix"])]
    assert f"would move drop-in {files['override']} (sets ExecStart" in "\n".join(result["changes"])
    assert module.actions() == [] and all(p.exists() for p in files.values())
    assert not (tree / "var/lib/redflag-agent-takeover").exists()


def test_dropins_on_our_unit_are_left_for_the_service_phase(tree):
    write(tree / "etc/systemd/system" / UNIT, OURS)
    mine = write(tree / f"etc/systemd/system/{UNIT}.d/limits.conf", LIMITS)
    result = tk.takeover(FakeModule(params(tree), props=props_of(LOADED_OURS)))
    assert (result["changed"], result["dropins"], result["left_alone"]) == (False, [], [])
    assert mine.read_text() == LIMITS


def test_a_symlinked_dropin_directory_is_reported_not_entered(tree):
    upstream_host(tree)
    elsewhere = write(tree / "var/lib/redflag-agent/evil.conf", OVERRIDE)
    link = tree / "run/systemd/system" / f"{UNIT}.d"
    link.symlink_to(elsewhere.parent)
    result = tk.takeover(FakeModule(params(tree), props=props_of(LOADED_UPSTREAM)))
    assert (
        f"{link} left alone: a symlink, not a regular file (never followed)" in result["left_alone"]
    )
    assert elsewhere.read_text() == OVERRIDE and link.is_symlink()


def test_kept_binaries_carry_no_setuid_and_no_capabilities(tree):
    files = upstream_host(tree)
    agent = files["agent"]
    agent.chmod(0o4755)
    os.setxattr(agent, tk.CAPS_XATTR, CAPS)
    other_link = tree / "var/lib/redflag-agent-hardlink"
    os.link(agent, other_link)  # a second name the unlink would leave privileged
    result = tk.takeover(FakeModule(params(tree), props=props_of(LOADED_UPSTREAM)))
    copy = kept(result, agent)
    assert stat.S_IMODE(copy.stat().st_mode) == 0o755
    assert tk.CAPS_XATTR not in os.listxattr(copy)
    assert stat.S_IMODE(other_link.stat().st_mode) == 0o755, "the inode kept its setuid bit"
    assert tk.CAPS_XATTR not in os.listxattr(other_link), "the inode kept its capabilities"
    assert f"{agent} (setuid and file capabilities dropped on the kept copy)" in result["summary"]
    m = json.loads((Path(result["backup_dir"]) / "manifest.json").read_text())
    entry = next(f for f in m["files"] if f["path"] == str(agent))
    assert (entry["mode"], entry["dropped"]) == ("0o4755", "setuid and file capabilities")


def test_helper_state_is_moved_whole_without_following_anything(tree):
    files = upstream_host(tree)
    helper = tree / "var/lib/redflag/helper"
    write(helper / "consumed-tokens", "t1\n", 0o600)
    target = write(tree / "etc/shadow-standin", "root:x\n", 0o600)
    (helper / "mutations").mkdir()
    (helper / "mutations" / "link").symlink_to(target)
    helper.chmod(0o700)
    key = write(tree / "etc/redflag/authority_local.key", "seed\n", 0o600)
    result = tk.takeover(FakeModule(params(tree), props=props_of(LOADED_UPSTREAM)))
    moved = kept(result, helper)
    assert not helper.exists() and not key.exists()
    assert (moved / "consumed-tokens").read_text() == "t1\n"
    assert os.readlink(moved / "mutations" / "link") == str(target)
    assert target.read_text() == "root:x\n"
    assert stat.S_IMODE(moved.stat().st_mode) == 0o700
    assert kept(result, key).read_text() == "seed\n"
    m = json.loads((Path(result["backup_dir"]) / "manifest.json").read_text())
    entry = next(f for f in m["files"] if f["path"] == str(helper))
    assert (entry["type"], entry["mode"]) == ("directory", "0o700")
    assert f"helper directory {helper}" in result["summary"]
    assert files["unit"].exists() is False


def test_a_helper_file_where_a_directory_is_expected_is_left_alone(tree):
    write(tree / "var/lib/redflag/helper", "not a dir\n")
    result = tk.takeover(FakeModule(params(tree), props=props_of(tk.Loaded())))
    assert result["left_alone"] == [
        f"{tree}/var/lib/redflag/helper left alone: a file, not a directory (never followed)"
    ]


def test_a_helper_directory_on_another_filesystem_is_left_with_a_reason():
    piece = tk.Piece("helper_dir", "/var/lib/redflag/helper", "directory", (7, 42))
    moved = tk.plan([piece], tk.Loaded(), tk.Group("g", False), "redflag-agent", PYZ,
                    backup_dev=7)  # fmt: skip
    assert [(a.op, a.target) for a in moved.actions] == [("move", piece.path)]
    left = tk.plan([piece], tk.Loaded(), tk.Group("g", False), "redflag-agent", PYZ,
                   backup_dev=8)  # fmt: skip
    assert left.actions == ()
    assert left.left_alone == (
        "/var/lib/redflag/helper left alone: on another filesystem than the takeover backup "
        "(moved only by rename); remove it after review",
    )


def test_a_helper_directory_swapped_before_the_move_is_not_moved(tree, monkeypatch):
    upstream_host(tree)
    helper = tree / "var/lib/redflag/helper"
    helper.mkdir()
    real = tk.find_pieces

    def swapped(p):
        found = real(p)
        helper.rmdir()
        helper.symlink_to(tree / "etc")
        return found

    monkeypatch.setattr(tk, "find_pieces", swapped)
    with pytest.raises(Failed, match="helper changed during the takeover; it was not moved"):
        tk.takeover(FakeModule(params(tree), props=props_of(LOADED_UPSTREAM)))
    assert helper.is_symlink() and (tree / "etc/redflag").is_dir()


# ---- the service phase's drop-in check, in redflag_agent_service's one call ---------------

HOST = "web-1"
# The unit as it is once the role installed it: enabled, running, nothing pending.
RUNNING = {"ActiveState": "active", "SubState": "running", "UnitFileState": "enabled",
           "NeedDaemonReload": "no", "ExecMainPID": "0", "ExecMainStatus": "0", "NRestarts": "0"}
REGISTERED = {"registered": True, "agent_id": "a-1", "last_error": None}


def check_params(tree: Path, ignore=(), **over) -> dict:
    bases = (str(tree / "etc/systemd/system"), str(tree / "run/systemd/system"))
    return {
        "python": "/usr/bin/python3", "pyz": PYZ, "unit": UNIT, "daemon_reload": False,
        "restart": True, "should_run": True, "current": str(tree / "no-current"),
        "unit_path": str(tree / "no-unit"), "migrate_unit_path": None, "verify": False,
        "token_embedded": False, "retries": 1, "delay": 0, "host": HOST,
        "require_checkin": False, "reset_failed": False, "check_dropins": True,
        "dropins_ignore": list(ignore), "dropin_dirs": sd.dropin_dirs(UNIT, True, bases),
        **over,
    }  # fmt: skip


def service(module: FakeModule) -> dict:
    """redflag_agent_service.run; its result when it exits, Failed when it fails."""
    with pytest.raises(Exited):
        sv.run(module)
    return module.result


def failing(module: FakeModule) -> str:
    """The reason a failing run gives, checked to be in the module's outcome shape."""
    with pytest.raises(Failed):
        sv.run(module)
    result = module.result
    reason = result["outcome"]["reason"]
    assert result["outcome"] == {"status": "failed", "reason": reason}
    assert result["msg"] == sv.outcome_message(HOST, "failed", reason)
    assert result["actions"] == [] and module.actions() == [], "acted before the check"
    what, advice = fleet.split_next(reason)
    assert advice.startswith("move each file out of the drop-in directory"), advice
    assert "run `systemctl daemon-reload` and re-run the play" in advice
    assert fleet.outcome_line(HOST, "failed", reason) == f"{HOST}: failed: {what}; next: {advice}"
    assert [d for d in result["dropins"] if d["verdict"] == FAIL]
    return reason


def test_harmless_dropins_are_warnings(tree):
    limits = write(tree / f"etc/systemd/system/{UNIT}.d/limits.conf", LIMITS)
    write(tree / f"etc/systemd/system/{UNIT}.d/notes.txt", OVERRIDE)  # not *.conf: not read
    module = FakeModule(check_params(tree, restart=False, should_run=False), props=RUNNING)
    result = service(module)
    assert result["changed"] is False
    assert result["dropins"] == [{"path": str(limits), "verdict": WARN, "why":
                                  "sets only After, CPUQuota, MemoryMax (ordering, resources, "
                                  "timeouts or logging)"}]  # fmt: skip
    assert module.warnings == [f"drop-in {limits} on {UNIT} {result['dropins'][0]['why']}; "
                               "applied on top of the unit"]  # fmt: skip
    assert module.actions() == []


def test_harmless_dropins_do_not_stop_the_restart_and_the_outcome_carries_them(tree):
    write(tree / f"etc/systemd/system/{UNIT}.d/limits.conf", LIMITS)
    module = FakeModule(check_params(tree, verify=True), props=RUNNING, status=REGISTERED)
    result = service(module)
    assert (result["outcome"]["status"], result["actions"]) == ("registered", ["restart"])
    assert [d["verdict"] for d in result["dropins"]] == [WARN]
    assert ["systemctl", "restart", UNIT] in module.calls and len(module.warnings) == 1


def test_a_dropin_that_undoes_the_hardening_fails_naming_file_and_fix(tree):
    write(tree / f"etc/systemd/system/{UNIT}.d/limits.conf", LIMITS)
    bad = write(tree / "run/systemd/system/service.d/override.conf", OVERRIDE)
    module = FakeModule(check_params(tree), props=RUNNING)
    msg = failing(module)
    assert f"{bad}: sets Environment, ExecStart, NoNewPrivileges, User" in msg
    assert "mv FILE /root/" in msg and "systemctl daemon-reload" in msg
    assert "limits.conf" not in msg and SECRET not in msg
    assert SECRET not in json.dumps(module.result)
    assert module.warnings == [], "a failing run warns about nothing"


def test_the_check_runs_before_any_systemctl_action(tree, monkeypatch):
    """Order, on a passing run: the check, then daemon-reload/enable/restart; on a failing
    one, nothing but the read-only `systemctl show` ran."""
    write(tree / f"etc/systemd/system/{UNIT}.d/limits.conf", LIMITS)
    props = {**RUNNING, "UnitFileState": "disabled", "NeedDaemonReload": "yes"}
    module = FakeModule(check_params(tree, daemon_reload=True), props=props)
    real = sv.check_dropins

    def noted(*args, **kwargs):
        module.calls.append(["<drop-in check>"])
        return real(*args, **kwargs)

    monkeypatch.setattr(sv, "check_dropins", noted)
    assert service(module)["actions"] == ["daemon-reload", "enable", "restart"]
    assert [c[:2] for c in module.calls] == [
        ["systemctl", "show"], ["<drop-in check>"], ["systemctl", "daemon-reload"],
        ["systemctl", "enable"], ["systemctl", "restart"]]  # fmt: skip
    assert "DropInPaths" in module.calls[0], "the check's systemd list comes with the state"

    write(tree / f"etc/systemd/system/{UNIT}.d/user.conf", "[Service]\nUser=root\n")
    again = FakeModule(check_params(tree, daemon_reload=True), props=props)
    failing(again)
    assert [c[:2] for c in again.calls] == [["systemctl", "show"]]


def test_check_mode_fails_on_a_bad_dropin_and_touches_nothing(tree):
    bad = write(tree / f"etc/systemd/system/{UNIT}.d/override.conf", OVERRIDE)
    before = {p: (p.stat().st_mtime_ns, p.read_text()) for p in tree.rglob("*") if p.is_file()}
    props = {**RUNNING, "UnitFileState": "disabled", "NeedDaemonReload": "yes"}
    module = FakeModule(check_params(tree, daemon_reload=True), check=True, props=props)
    msg = failing(module)
    assert f"{bad}: sets Environment, ExecStart, NoNewPrivileges, User" in msg
    assert [c[:2] for c in module.calls] == [["systemctl", "show"]]
    after = {p: (p.stat().st_mtime_ns, p.read_text()) for p in tree.rglob("*") if p.is_file()}
    assert after == before
    # Without the bad one, check mode reports what it would do, the drop-ins with it.
    bad.unlink()
    ok = FakeModule(check_params(tree, daemon_reload=True), check=True, props=props)
    result = service(ok)
    assert result["actions"] == ["daemon-reload", "enable", "restart"] and ok.actions() == []
    assert (result["outcome"]["status"], result["dropins"]) == ("unverified", [])


def test_check_dropins_off_skips_the_check(tree):
    write(tree / f"etc/systemd/system/{UNIT}.d/override.conf", OVERRIDE)
    module = FakeModule(check_params(tree, check_dropins=False), props=RUNNING)
    result = service(module)
    assert (result["dropins"], result["actions"]) == ([], ["restart"])


def test_dropins_systemd_reports_are_judged_too_and_ignored_ones_skipped(tree):
    loaded = write(tree / "elsewhere/50-user.conf", "[Service]\nUser=root\n")
    module = FakeModule(check_params(tree), props={**RUNNING, "DropInPaths": str(loaded)})
    assert "50-user.conf: sets User" in failing(module)
    result = service(FakeModule(check_params(tree, ignore=[str(loaded)]),
                                props={**RUNNING, "DropInPaths": str(loaded)}))  # fmt: skip
    assert result["dropins"] == []


def test_a_symlinked_dropin_or_directory_fails(tree):
    target = write(tree / "var/lib/redflag-agent/x.conf", LIMITS)
    link = tree / "etc/systemd/system/redflag-.service.d"
    link.symlink_to(target.parent)
    msg = failing(FakeModule(check_params(tree), props=RUNNING))
    assert f"{link}: a symlink to {target.parent}: systemd reads through it" in msg
    link.unlink()
    (tree / f"etc/systemd/system/{UNIT}.d").mkdir()
    (tree / f"etc/systemd/system/{UNIT}.d/x.conf").symlink_to(target)
    assert f"x.conf: a symlink to {target}" in failing(FakeModule(check_params(tree),
                                                                  props=RUNNING))  # fmt: skip


def test_a_dropin_the_agent_user_can_write_fails(tree):
    path = write(tree / f"etc/systemd/system/{UNIT}.d/limits.conf", LIMITS)
    os.chown(path, 997, 0)
    assert "owned by uid 997" in failing(FakeModule(check_params(tree), props=RUNNING))


def test_an_unreadable_dropin_fails_and_a_vanished_one_is_skipped(tree, monkeypatch):
    from ansible_collections.redflag.agent.plugins.module_utils import (
        redflag_agent_dropins as du,
    )

    gone = str(tree / "run/systemd/system/gone.conf")
    path = write(tree / f"etc/systemd/system/{UNIT}.d/limits.conf", LIMITS)
    real = du.read_dropin

    def denied(p):
        if p == str(path):
            raise PermissionError(13, "Permission denied")
        return real(p)

    monkeypatch.setattr(du, "read_dropin", denied)
    msg = failing(FakeModule(check_params(tree), props={**RUNNING, "DropInPaths": gone}))
    assert f"{path}: unreadable ([Errno 13] Permission denied)" in msg
    assert "gone.conf" not in msg
