"""redflag_agent_takeover: what is upstream's, what is moved, what is removed, the report
lines (pure tables), then the module's run over a temporary tree: files copied into the
backup before they are removed, nothing followed, check mode and a second run change nothing."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from ansible_collections.redflag.agent.plugins.module_utils.redflag_agent_systemd import (
    parse_show,
)

from conftest import MODULES, load_source

tk = load_source("redflag_agent_takeover", MODULES / "redflag_agent_takeover.py")

PYZ = "/opt/redflag-agent/current/redflag-agent.pyz"
UNIT = "redflag-agent.service"
OURS = f"# Ansible managed\n[Service]\nExecStart=/usr/bin/python3 -I {PYZ} run\n"
UPSTREAM_018 = (
    "[Unit]\nDescription=RedFlag Update Agent\n[Service]\nUser=redflag-agent\n"
    "ExecStart=/usr/local/bin/redflag-agent\nRestart=always\nRestartSec=30\n"
)
UPSTREAM_02 = UPSTREAM_018.replace(
    "Restart=always", "SupplementaryGroups=redflag-local\nRestart=always"
)
SUDOERS = "redflag-agent ALL=(root) NOPASSWD: /usr/bin/apt-get install -y *\n"
POLKIT = "polkit.addRule(function(action, subject) { return polkit.Result.YES; });\n"
LOADED_UPSTREAM = tk.Loaded(
    "loaded", "activating", "enabled", "{ path=/usr/local/bin/redflag-agent ; }"
)
LOADED_OURS = tk.Loaded(
    "loaded",
    "active",
    "enabled",
    f"{{ path=/usr/bin/python3 ; argv[]=/usr/bin/python3 -I {PYZ} run ; }}",
)
NOT_FOUND = tk.Loaded("not-found", "inactive", "", "")
NO_GROUP = tk.Group("redflag-local", False)


# ---- pure decisions ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ours"),
    [
        (OURS, True),
        (UPSTREAM_018, False),
        (UPSTREAM_02, False),
        (
            f"# was {PYZ}\nExecStart=/usr/local/bin/redflag-agent\n",
            False,
        ),  # a comment is not ExecStart
        (f"  ExecStart=/usr/bin/python3.11 -I {PYZ} run  \n", True),
        ("", False),
    ],
)
def test_unit_text_is_ours(text, ours):
    assert tk.unit_text_is_ours(text, PYZ) is ours


@pytest.mark.parametrize(
    ("loaded", "upstream"),
    [
        (LOADED_UPSTREAM, True),
        (LOADED_OURS, False),
        (NOT_FOUND, False),
        (tk.Loaded("loaded", "inactive", "disabled", ""), False),  # nothing to run: not a judgement
    ],
)
def test_loaded_is_upstream(loaded, upstream):
    assert tk.loaded_is_upstream(loaded, PYZ) is upstream


def test_parse_show():
    text = (
        "LoadState=loaded\nActiveState=activating\nUnitFileState=enabled\n"
        "ExecStart={ path=/a ; argv[]=/a x=y }\n"
    )
    assert tk.loaded_of(parse_show(text)) == tk.Loaded(
        "loaded", "activating", "enabled", "{ path=/a ; argv[]=/a x=y }"
    )
    assert tk.loaded_of(parse_show("")) == tk.Loaded()


@pytest.mark.parametrize(
    ("group", "delete", "why"),
    [
        (NO_GROUP, False, ""),
        (tk.Group("redflag-local", True, 990, ("redflag-agent",)), True, ""),
        (tk.Group("redflag-local", True, 990, ()), True, ""),
        (tk.Group("redflag-local", True, 990, ("redflag-agent", "alice")), False,
         "group redflag-local kept: members alice"),
        (tk.Group("redflag-local", True, 990, (), ("desk",)), False,
         "group redflag-local kept: primary group of desk"),
    ],
)  # fmt: skip
def test_group_decision(group, delete, why):
    assert tk.group_decision(group, "redflag-agent") == (delete, why)


U_ETC = "/etc/systemd/system/redflag-agent.service"
U_USR = "/usr/lib/systemd/system/redflag-agent.service"
U_LIB = "/lib/systemd/system/redflag-agent.service"
BIN = "/usr/local/bin/redflag-agent"
HELPER = "/usr/local/bin/redflag-helper"
SUDO = "/etc/sudoers.d/redflag-agent"
POL = "/etc/polkit-1/rules.d/50-redflag-agent.rules"
EXEC_UP = "{ path=/usr/local/bin/redflag-agent ; }"
NEVER = "not a regular file (never followed)"


def piece(kind, path, found="file", ident=None, ours=False):
    if found == "absent":
        ident = (0, 0)
    return tk.Piece(kind, path, found, ident or (1, hash(path) & 0xFFFF), ours)


SEED = [
    piece("unit", U_ETC),
    piece("unit", U_USR, "absent"),
    piece("binary", BIN),
    piece("binary", HELPER, "absent"),
    piece("sudoers", SUDO),
    piece("polkit", POL, "absent"),
]
V02 = [
    piece("unit", U_ETC),
    piece("binary", BIN),
    piece("binary", HELPER),
    piece("sudoers", SUDO),
    piece("polkit", POL),
]
V02_GROUP = tk.Group("redflag-local", True, 990, ("redflag-agent",))
CONVERGED = [
    piece("unit", U_ETC, ours=True),
    piece("binary", BIN, "absent"),
    piece("sudoers", SUDO, "absent"),
]
STOP = [("stop", ""), ("disable", "")]


def ops(p):
    return [(a.op, a.target) for a in p.actions]


def moves(*paths):
    return [("move", path) for path in paths]


PLAN_CASES = {
    "the seed's looping host": (
        SEED, LOADED_UPSTREAM, NO_GROUP, STOP + moves(U_ETC, BIN, SUDO), []),
    "a 0.2 host": (
        V02, tk.Loaded("loaded", "active", "enabled", EXEC_UP), V02_GROUP,
        STOP + moves(U_ETC, BIN, HELPER, SUDO, POL) + [("groupdel", "redflag-local")], []),
    "converged: ours, nothing upstream left": (CONVERGED, LOADED_OURS, NO_GROUP, [], []),
    "upstream stopped and disabled: only its files go": (
        SEED, tk.Loaded("loaded", "inactive", "disabled", EXEC_UP), NO_GROUP,
        moves(U_ETC, BIN, SUDO), []),
    # An earlier run wrote our unit but died before the reload: systemd still runs upstream's.
    "our file, upstream still loaded": (CONVERGED, LOADED_UPSTREAM, NO_GROUP, STOP, []),
    # Our unit running, the old binary and sudoers still there (an earlier role version).
    "leftovers beside our agent": (
        [CONVERGED[0], piece("binary", BIN), piece("sudoers", SUDO)], LOADED_OURS, NO_GROUP,
        moves(BIN, SUDO), []),
    "symlinks and directories are never followed": (
        [piece("binary", BIN, "symlink"), piece("sudoers", SUDO, "directory")], NOT_FOUND,
        NO_GROUP, [],
        [f"{BIN} left alone: a symlink, {NEVER}", f"{SUDO} left alone: a directory, {NEVER}"]),
    "/lib is /usr/lib: one file, moved once": (
        [piece("unit", U_USR, ident=(7, 7)), piece("unit", U_LIB, ident=(7, 7))], NOT_FOUND,
        NO_GROUP, moves(U_USR), []),
    "a group someone else is in stays": (
        CONVERGED, LOADED_OURS, tk.Group("redflag-local", True, 990, ("redflag-agent", "alice")),
        [], ["group redflag-local kept: members alice"]),
}  # fmt: skip


@pytest.mark.parametrize("name", PLAN_CASES)
def test_plan(name):
    pieces, loaded, group, want, left = PLAN_CASES[name]
    p = tk.plan(pieces, loaded, group, "redflag-agent", PYZ)
    assert ops(p) == want
    assert list(p.left_alone) == left


def test_backup_name():
    import datetime

    now = datetime.datetime(2026, 12, 2, 1, 2, 3, tzinfo=datetime.timezone.utc)
    assert tk.backup_name(now, set()) == "20261202T010203Z"
    assert tk.backup_name(now, {"20261202T010203Z"}) == "20261202T010203Z-1"
    assert tk.backup_name(now, {"20261202T010203Z", "20261202T010203Z-1"}) == "20261202T010203Z-2"


V02_PLAN = tk.plan(V02, LOADED_UPSTREAM, V02_GROUP, "redflag-agent", PYZ)
BK = "/var/lib/redflag-agent-takeover/20261202T010203Z"


def test_summary_names_every_piece():
    assert tk.summary(V02_PLAN, UNIT, BK, check=False) == (
        "upstream agent taken over: stopped and disabled the upstream redflag-agent.service; "
        f"moved /usr/local/bin/redflag-agent, /usr/local/bin/redflag-helper to {BK}; "
        "removed unit file /etc/systemd/system/redflag-agent.service, "
        "sudoers file /etc/sudoers.d/redflag-agent (sudo rights this agent does not need), "
        f"polkit rule {POL} (copies in {BK}), group redflag-local"
    )


def test_summary_in_check_mode_says_would():
    text = tk.summary(V02_PLAN, UNIT, BK, check=True)
    assert text.startswith(
        "would take over the upstream agent: would stop and disable the upstream"
    )
    assert f"would move /usr/local/bin/redflag-agent, /usr/local/bin/redflag-helper to {BK}" in text
    assert "would remove unit file" in text and text.endswith("group redflag-local")


def test_summary_of_nothing_is_empty_and_left_alone_is_reported():
    assert tk.summary(tk.Plan((), ()), UNIT, None, check=False) == ""
    kept = tk.Plan((), ("group redflag-local kept: members alice",))
    assert (
        tk.summary(kept, UNIT, None, check=False)
        == "upstream agent: group redflag-local kept: members alice"
    )


def test_change_lines():
    p = tk.plan(SEED, LOADED_UPSTREAM, NO_GROUP, "redflag-agent", PYZ)
    assert tk.change_lines(p, UNIT, BK, check=False) == [
        "stop the upstream redflag-agent.service",
        "disable the upstream redflag-agent.service",
        f"move unit file /etc/systemd/system/redflag-agent.service to {BK}",
        f"move binary /usr/local/bin/redflag-agent to {BK}",
        f"move sudoers file /etc/sudoers.d/redflag-agent to {BK}",
    ]
    assert tk.change_lines(V02_PLAN, UNIT, BK, check=True)[-1] == "would delete group redflag-local"


def test_manifest_records_unit_state_files_and_group():
    files = {"/usr/local/bin/redflag-agent": {"path": "/usr/local/bin/redflag-agent"}}
    m = tk.manifest(V02_PLAN, UNIT, LOADED_UPSTREAM, V02_GROUP, files)
    assert m["unit"] == {"name": UNIT, "was_active": True, "was_enabled": True,
                         "exec_start": LOADED_UPSTREAM.exec_start}  # fmt: skip
    assert m["files"] == [{"path": "/usr/local/bin/redflag-agent"}]
    assert m["group"] == {"name": "redflag-local", "gid": 990, "members": ["redflag-agent"]}
    seed = tk.plan(SEED, LOADED_UPSTREAM, NO_GROUP, "redflag-agent", PYZ)
    assert tk.manifest(seed, UNIT, LOADED_UPSTREAM, NO_GROUP, {})["group"] is None


# ---- the module over a temporary tree --------------------------------------------------


class Failed(Exception):
    pass


class FakeModule:
    """What takeover() uses of AnsibleModule; systemctl answers as `loaded` says."""

    def __init__(self, params, check=False, loaded=LOADED_UPSTREAM):
        self.params = params
        self.check_mode = check
        self._diff = True
        self.loaded = loaded
        self.calls: list[list[str]] = []
        self.warnings: list[str] = []

    def run_command(self, argv):
        self.calls.append(argv)
        if argv[:2] == ["systemctl", "show"]:
            lo = self.loaded
            out = (
                f"LoadState={lo.load_state}\nActiveState={lo.active_state}\n"
                f"UnitFileState={lo.unit_file_state}\nExecStart={lo.exec_start}\n"
            )
            return 0, out, ""
        return 0, "", ""

    def fail_json(self, msg, **_kw):
        raise Failed(msg)

    def warn(self, msg):
        self.warnings.append(msg)

    def actions(self):
        return [c for c in self.calls if c[:2] != ["systemctl", "show"]]


@pytest.fixture
def tree(tmp_path) -> Path:
    for d in ("etc/systemd/system", "usr/lib/systemd/system", "usr/local/bin", "etc/sudoers.d",
              "etc/polkit-1/rules.d", "var/lib"):  # fmt: skip
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "lib").symlink_to("usr/lib")  # merged /usr, as on Debian 12 and Fedora
    return tmp_path


def params(tree: Path) -> dict:
    return {
        "unit": UNIT,
        "unit_paths": [str(tree) + p for p in (U_ETC, U_USR, U_LIB)],
        "pyz": PYZ,
        "binaries": [str(tree) + BIN, str(tree) + HELPER],
        "sudoers": [str(tree) + SUDO],
        "polkit_rules": [str(tree) + POL],
        "group": "redflag-test-no-such-group",
        "agent_user": "redflag-agent",
        "backup_root": str(tree / "var/lib/redflag-agent-takeover"),
        "dropin_dirs": [],
        "helper_files": [],
        "helper_dirs": [],
    }  # fmt: skip


def write(path: Path, text: str, mode: int) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def seed_host(tree: Path) -> dict[str, Path]:
    return {
        "unit": write(tree / "etc/systemd/system/redflag-agent.service", UPSTREAM_018, 0o644),
        "agent": write(tree / "usr/local/bin/redflag-agent", "#!/bin/sh\nexit 1\n", 0o755),
        "helper": write(tree / "usr/local/bin/redflag-helper", "#!/bin/sh\n", 0o755),
        "sudoers": write(tree / "etc/sudoers.d/redflag-agent", SUDOERS, 0o440),
        "polkit": write(tree / "etc/polkit-1/rules.d/50-redflag-agent.rules", POLKIT, 0o644),
    }


def test_takeover_moves_everything_into_one_backup_then_finds_nothing(tree):
    files = seed_host(tree)
    module = FakeModule(params(tree))
    result = tk.takeover(module)
    backup = Path(result["backup_dir"])
    assert result["changed"] is True
    assert module.actions() == [["systemctl", "stop", UNIT], ["systemctl", "disable", UNIT],
                                ["systemctl", "daemon-reload"]]  # fmt: skip
    for path in files.values():
        assert not path.exists(), path
        kept = backup / "files" / str(path).lstrip("/")
        assert kept.is_file(), kept
    agent = backup / "files" / str(files["agent"]).lstrip("/")
    assert agent.read_text() == "#!/bin/sh\nexit 1\n"
    assert stat.S_IMODE(agent.stat().st_mode) == 0o755
    sudoers = backup / "files" / str(files["sudoers"]).lstrip("/")
    assert stat.S_IMODE(sudoers.stat().st_mode) == 0o440
    root = backup.parent
    assert (
        stat.S_IMODE(root.stat().st_mode) == 0o700 and stat.S_IMODE(backup.stat().st_mode) == 0o700
    )
    m = json.loads((backup / "manifest.json").read_text())
    assert sorted(f["path"] for f in m["files"]) == sorted(str(p) for p in files.values())
    assert str(files["agent"]) in result["summary"] and str(files["polkit"]) in result["summary"]
    assert result["diff"]["after"] == ""

    # Ours is in place now and systemd has forgotten upstream's unit: nothing to do.
    write(tree / "etc/systemd/system/redflag-agent.service", OURS, 0o644)
    again = FakeModule(params(tree), loaded=LOADED_OURS)
    second = tk.takeover(again)
    assert (second["changed"], second["summary"], second["backup_dir"]) == (False, "", None)
    assert again.actions() == []
    assert sorted(os.listdir(root)) == [backup.name]


def test_check_mode_reports_and_changes_nothing(tree):
    files = seed_host(tree)
    module = FakeModule(params(tree), check=True)
    result = tk.takeover(module)
    assert result["changed"] is True
    assert result["summary"].startswith(
        "would take over the upstream agent: would stop and disable"
    )
    assert module.actions() == []
    assert all(p.exists() for p in files.values())
    assert not (tree / "var/lib/redflag-agent-takeover").exists()


def test_a_unit_under_lib_and_usr_lib_is_moved_once(tree):
    unit = write(tree / "usr/lib/systemd/system/redflag-agent.service", UPSTREAM_02, 0o644)
    result = tk.takeover(FakeModule(params(tree), loaded=NOT_FOUND))
    assert not unit.exists()
    assert result["changes"] == [f"move unit file {unit} to {result['backup_dir']}"]


def test_symlinks_are_left_alone_and_never_followed(tree):
    target = write(tree / "precious", "keep me\n", 0o644)
    link = tree / "usr/local/bin/redflag-agent"
    link.symlink_to(target)
    (tree / "etc/sudoers.d/redflag-agent").symlink_to(target)
    result = tk.takeover(FakeModule(params(tree), loaded=NOT_FOUND))
    assert result["changed"] is False
    assert link.is_symlink() and target.read_text() == "keep me\n"
    assert result["left_alone"] == [
        f"{link} left alone: a symlink, {NEVER}",
        f"{tree}{SUDO} left alone: a symlink, {NEVER}",
    ]
    assert not (tree / "var/lib/redflag-agent-takeover").exists()


def test_a_file_swapped_after_it_was_found_is_not_removed(tree, monkeypatch):
    files = seed_host(tree)
    real = tk.find_pieces

    def swapped(p):
        found = real(p)
        files["agent"].unlink()
        files["agent"].symlink_to(tree / "etc/sudoers.d/redflag-agent")
        return found

    monkeypatch.setattr(tk, "find_pieces", swapped)
    with pytest.raises(Failed, match="could not copy .*redflag-agent.*nothing was removed"):
        tk.takeover(FakeModule(params(tree)))
    assert files["sudoers"].exists() and files["polkit"].exists() and files["unit"].exists()


def test_a_backup_root_others_can_write_is_refused(tree):
    files = seed_host(tree)
    root = tree / "var/lib/redflag-agent-takeover"
    root.mkdir(mode=0o777)
    root.chmod(0o777)
    with pytest.raises(Failed, match="is not a root-only directory"):
        tk.takeover(FakeModule(params(tree)))
    assert all(p.exists() for p in files.values())


def test_the_group_is_deleted_with_groupdel(tree, monkeypatch):
    monkeypatch.setattr(
        tk, "find_group", lambda name: tk.Group(name, True, 990, ("redflag-agent",))
    )
    module = FakeModule(params(tree), loaded=NOT_FOUND)
    result = tk.takeover(module)
    assert module.actions() == [["groupdel", "redflag-test-no-such-group"]]
    m = json.loads((Path(result["backup_dir"]) / "manifest.json").read_text())
    assert m["group"] == {
        "name": "redflag-test-no-such-group",
        "gid": 990,
        "members": ["redflag-agent"],
    }
    assert (
        result["summary"] == "upstream agent taken over: removed group redflag-test-no-such-group"
    )
