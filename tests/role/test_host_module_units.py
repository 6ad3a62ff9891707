"""redflag_agent_host: both unit files (the agent's and the sandboxed migration's)
installed, kept, shown in check and diff mode; empty legacy directories removed, anything
else left alone. Drives the module's Host class as main() does (root needed for the unit
files' root:root owner; no user or group is touched)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.testing import patch_module_args

from conftest import ROLE

AGENT_UNIT = "[Unit]\nDescription=agent\n"
MIGRATE_UNIT = "[Unit]\nDescription=migrate\n[Service]\nType=oneshot\n"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="writes root:root unit files")


@pytest.fixture
def tree(tmp_path) -> Path:
    (tmp_path / "units").mkdir()
    return tmp_path


@pytest.fixture
def run_module(host_module, tree):
    """One module run over the units and legacy dirs: the result main() would return."""

    def run(check: bool = False, **extra) -> dict:
        params = {
            "unit_path": str(tree / "units" / "redflag-agent.service"),
            "unit_content": AGENT_UNIT,
            "migrate_unit_path": str(tree / "units" / "redflag-agent-migrate.service"),
            "migrate_unit_content": MIGRATE_UNIT,
            "legacy_dirs": [],
            **extra,
        }
        warnings: list[str] = []
        with patch_module_args({}):  # the unit files go through AnsibleModule.atomic_move
            real = AnsibleModule(argument_spec={})
        module = SimpleNamespace(params=params, check_mode=check, warn=warnings.append,
                                 atomic_move=real.atomic_move)
        host = host_module.Host(module)
        for path in params["legacy_dirs"]:
            host.legacy_dir(path)
        diffs = host.units()
        return {"changed": bool(host.changes), "changes": host.changes,
                "unit_changed": bool(diffs), "diff": diffs, "warnings": warnings}

    return run


def test_installs_both_units_then_changes_nothing(tree, run_module):
    first = run_module()
    migrate = tree / "units" / "redflag-agent-migrate.service"
    assert first["unit_changed"] is True
    assert f"{migrate} written" in first["changes"]
    assert migrate.read_text() == MIGRATE_UNIT
    st = migrate.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, 0, 0o644)
    second = run_module()
    assert (second["changed"], second["unit_changed"], second["changes"]) == (False, False, [])


def test_a_changed_migration_unit_alone_counts_as_unit_changed(tree, run_module):
    run_module()
    again = run_module(migrate_unit_content=MIGRATE_UNIT + "User=root\n")
    migrate = str(tree / "units" / "redflag-agent-migrate.service")
    assert again["unit_changed"] is True and again["changes"] == [f"{migrate} written"]
    # Diff mode shows that unit only, before and after.
    (diff,) = again["diff"]
    assert (diff["after_header"], diff["before"]) == (migrate, MIGRATE_UNIT)
    assert diff["after"] == MIGRATE_UNIT + "User=root\n"


def test_wrong_mode_is_fixed(tree, run_module):
    run_module()
    migrate = tree / "units" / "redflag-agent-migrate.service"
    migrate.chmod(0o666)
    assert run_module()["unit_changed"] is True
    assert migrate.stat().st_mode & 0o777 == 0o644


def test_check_mode_reports_and_writes_nothing(tree, run_module):
    result = run_module(check=True)
    assert result["changed"] is True and result["unit_changed"] is True
    assert [d["after"] for d in result["diff"]] == [AGENT_UNIT, MIGRATE_UNIT]
    assert sorted(p.name for p in (tree / "units").iterdir()) == []


def test_without_migrate_content_that_unit_is_left_alone(tree, run_module):
    result = run_module(migrate_unit_content=None)
    assert sorted(p.name for p in (tree / "units").iterdir()) == ["redflag-agent.service"]
    assert result["unit_changed"] is True


@pytest.fixture
def legacy(tree) -> dict[str, Path]:
    base = tree / "legacy"
    dirs = {name: base / name for name in ("empty", "full", "missing", "link", "target")}
    for name in ("empty", "full", "target"):
        dirs[name].mkdir(parents=True)
    (dirs["full"] / "config.json").write_text("{}")
    dirs["link"].symlink_to(dirs["target"])  # an empty directory behind a symlink
    return dirs


def test_only_empty_legacy_directories_are_removed(legacy, run_module):
    listed = [str(legacy[n]) for n in ("empty", "full", "missing", "link")]
    result = run_module(legacy_dirs=listed)
    removed = [c for c in result["changes"] if c.endswith("legacy directory removed")]
    assert removed == [f"{legacy['empty']}: empty legacy directory removed"]
    assert not legacy["empty"].exists()
    assert legacy["full"].is_dir() and (legacy["full"] / "config.json").exists()
    # a symlink is never a legacy directory to remove, nor is its (empty) target
    assert legacy["link"].is_symlink() and legacy["target"].is_dir()
    again = run_module(legacy_dirs=listed)
    assert again["changed"] is False and again["warnings"] == []


def test_legacy_check_mode_removes_nothing(legacy, run_module):
    result = run_module(check=True, legacy_dirs=[str(legacy["empty"])])
    assert f"{legacy['empty']}: empty legacy directory removed" in result["changes"]
    assert legacy["empty"].is_dir()


@pytest.mark.parametrize(
    ("have", "names", "remove"),
    [
        ((True, True), [], True),
        ((True, True), ["config.json"], False),
        ((True, False), None, False),  # a file, or a symlink (lstat)
        ((False, False), None, False),
        ((True, True), None, False),  # unreadable
    ],
)
def test_empty_legacy_dir(host_module, have, names, remove):
    have = host_module.Have(*have, "root", "root", 0o755)
    assert host_module.empty_legacy_dir(have, names) is remove


def test_remove_deletes_both_unit_files():
    tasks = yaml.safe_load((ROLE / "tasks" / "remove.yml").read_text())
    (files,) = [t for t in tasks if t["name"] == "Remove the unit files"]
    assert files["ansible.builtin.file"]["state"] == "absent"
    assert set(files["loop"]) == {
        "{{ redflag_agent__unit_path }}",
        "{{ redflag_agent__migrate_unit_path }}",
    }
    (stop,) = [t for t in tasks if t["name"] == "Stop the migration unit"]
    assert stop["ansible.builtin.systemd_service"] == {
        "name": "{{ redflag_agent__migrate_unit }}",
        "state": "stopped",
    }


def test_install_passes_the_migration_unit_and_legacy_dirs():
    tasks = yaml.safe_load((ROLE / "tasks" / "install.yml").read_text())
    (host,) = [t for t in tasks if "redflag.agent.redflag_agent_host" in t]
    args = host["redflag.agent.redflag_agent_host"]
    assert args["migrate_unit_path"] == "{{ redflag_agent__migrate_unit_path }}"
    assert "redflag-agent-migrate.service.j2" in args["migrate_unit_content"]
    assert args["legacy_dirs"] == "{{ redflag_agent__legacy_dirs }}"
