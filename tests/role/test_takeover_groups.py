"""The agent user's root-equivalent groups in the takeover: upstream's installers put it in
docker (`usermod -aG docker`, 0.1.x and 0.2.x), which it leaves on a host that ran upstream;
anything else root-equivalent is only warned about. The rule (pure tables), the report, the
manifest, then the module over a temporary tree. Also: the module owns the upstream lists."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from test_takeover_dropins import (  # one loaded module and one fake for both files
    LOADED_OURS,
    LOADED_UPSTREAM,
    OURS,
    PYZ,
    UNIT,
    FakeModule,
    params,
    props_of,
    tk,
    upstream_host,
    write,
)

from conftest import ROLE, load_yaml

USER = "redflag-agent"
DOCKER = tk.Membership("docker", 998)
WHEEL = tk.Membership("wheel", 10)
LOGS = (tk.Membership("adm", 4), tk.Membership("systemd-journal", 999))
LOCAL = tk.Membership("redflag-local", 990)
NONE = tk.Earlier()
OLD_TAKEOVER = tk.Earlier(1, (), False)  # a backup from a role version without this rule
REMOVED_ONCE = tk.Earlier(1, ("docker",), True)
HANDLED = tk.Earlier(1, (), True)
WHY_DOCKER = "root-equivalent; this agent does not use docker"
LINE = f"removed {USER} from group docker ({WHY_DOCKER})"


def warning(group: str, why: str) -> str:
    return (
        f"WARNING: {USER} is in group {group} ({tk.ROOT_EQUIVALENT[group]}: root-equivalent) "
        f"and this agent needs no such group; left as it is ({why}): remove it with "
        f"`gpasswd -d {USER} {group}` unless it is meant"
    )


DELIBERATE = "no upstream agent was found on this host, so it may be deliberate"
BACK = "an earlier takeover removed it and it is back, so it looks deliberate"
NOT_UPSTREAMS = "upstream's installers do not add it, so it may be deliberate"

# (memberships, upstream found now, earlier takeovers, groups left, warnings)
DECISIONS = {
    "upstream found, in docker: it leaves docker": ((DOCKER,), True, NONE, ["docker"], []),
    "no upstream, never taken over: docker may be the operator's": (
        (DOCKER,), False, NONE, [], [warning("docker", DELIBERATE)]),
    "taken over by a role without this rule: docker is upstream's": (
        (DOCKER,), False, OLD_TAKEOVER, ["docker"], []),
    "removed once and back: deliberate": (
        (DOCKER,), False, REMOVED_ONCE, [], [warning("docker", BACK)]),
    "taken over by this rule, docker added since: deliberate": (
        (DOCKER,), False, HANDLED, [], [warning("docker", DELIBERATE)]),
    "upstream reinstalled after a takeover: its installer added docker again": (
        (DOCKER,), True, REMOVED_ONCE, ["docker"], []),
    "wheel is never upstream's: a warning even with upstream found": (
        (WHEEL, DOCKER), True, NONE, ["docker"], [warning("wheel", NOT_UPSTREAMS)]),
    "log groups and redflag-local are no way to root: no word": (
        LOGS + (LOCAL,), True, OLD_TAKEOVER, [], []),
    "in no group": ((), True, NONE, [], []),
}  # fmt: skip


@pytest.mark.parametrize("name", DECISIONS)
def test_membership_decision(name):
    memberships, upstream, earlier, leaves, warnings = DECISIONS[name]
    leave, warn = tk.membership_decision(memberships, upstream, earlier, USER)
    assert [(a.op, a.target, a.user) for a in leave] == [("leave", g, USER) for g in leaves]
    assert all(a.detail == WHY_DOCKER for a in leave)
    assert warn == warnings


def test_every_group_upstream_adds_is_root_equivalent_and_log_groups_are_not():
    assert set(tk.UPSTREAM_ADDED) <= set(tk.ROOT_EQUIVALENT)
    assert not {"adm", "systemd-journal", "redflag-local"} & set(tk.ROOT_EQUIVALENT)


# ---- plan, report, manifest (pure) --------------------------------------------------------

UP_BIN = tk.Piece("binary", "/usr/local/bin/redflag-agent", "file", (1, 2))
HELPER_DIR = tk.Piece("helper_dir", "/var/lib/redflag/helper", "directory", (1, 3))
SUDO = tk.Piece("sudoers", "/etc/sudoers.d/redflag-agent", "file", (1, 4))
NO_GROUP = tk.Group("redflag-local", False)
BK = "/var/lib/redflag-agent-takeover/20261202T010203Z"


NOT_LOADED = tk.Loaded()


def plan(pieces, loaded=NOT_LOADED, memberships=(DOCKER,), earlier=NONE):
    return tk.plan(pieces, loaded, NO_GROUP, USER, PYZ, memberships=memberships,
                   earlier=earlier)  # fmt: skip


def test_the_plan_takes_the_user_out_of_docker_only_where_upstream_was_found():
    found = plan([UP_BIN])
    assert [(a.op, a.target) for a in found.actions] == [("move", UP_BIN.path),
                                                         ("leave", "docker")]  # fmt: skip
    assert tk.needs_backup(found) and found.warnings == ()
    # Upstream's unit still loaded, nothing on disk: upstream too.
    stopped = plan([], LOADED_UPSTREAM)
    assert [a.op for a in stopped.actions] == ["stop", "disable", "leave"]
    # A symlink where upstream's binary was is left alone: no proof of upstream.
    link = plan([tk.Piece("binary", UP_BIN.path, "symlink", (1, 9))])
    assert [a.op for a in link.actions] == [] and link.warnings == (warning("docker", DELIBERATE),)
    # Only an old takeover's backup: the membership alone needs a backup for its manifest.
    old = plan([], earlier=OLD_TAKEOVER)
    assert [a.op for a in old.actions] == ["leave"] and tk.needs_backup(old)


def test_summary_says_removed_from_docker_and_moved_for_helper_directories():
    p = plan([UP_BIN, HELPER_DIR, SUDO])
    assert tk.summary(p, UNIT, BK, check=False) == (
        f"upstream agent taken over: moved /usr/local/bin/redflag-agent, helper directory "
        f"/var/lib/redflag/helper to {BK}; removed sudoers file /etc/sudoers.d/redflag-agent "
        f"(sudo rights this agent does not need) (copies in {BK}); {LINE}"
    )
    check = tk.summary(p, UNIT, BK, check=True)
    assert check.endswith(f"; would {LINE.replace('removed', 'remove', 1)}")
    assert "would move /usr/local/bin/redflag-agent, helper directory" in check
    assert tk.change_lines(p, UNIT, BK, check=False)[-1] == f"remove {USER} from group docker"


def test_summary_carries_the_warnings_with_or_without_a_takeover():
    alone = plan([], memberships=(WHEEL,))
    assert tk.summary(alone, UNIT, None, check=False) == warning("wheel", NOT_UPSTREAMS)
    both = plan([UP_BIN], memberships=(WHEEL,))
    assert tk.summary(both, UNIT, BK, check=False).endswith(
        f"to {BK}; " + warning("wheel", NOT_UPSTREAMS)
    )
    assert tk.summary(plan([], memberships=()), UNIT, None, check=False) == ""


def test_manifest_records_each_membership_and_how_to_put_it_back():
    p = plan([UP_BIN])
    m = tk.manifest(p, UNIT, LOADED_UPSTREAM, NO_GROUP, {}, gids={"docker": 998})
    assert m["memberships"] == [{"user": USER, "group": "docker", "gid": 998, "why": WHY_DOCKER}]
    assert "gpasswd -a USER GROUP" in m["restore"]
    assert tk.manifest(plan([UP_BIN], memberships=()), UNIT, LOADED_UPSTREAM, NO_GROUP,
                       {})["memberships"] == []  # fmt: skip


# ---- earlier takeovers' manifests (I/O) -----------------------------------------------------


def backup_root(tmp_path: Path) -> Path:
    root = tmp_path / "takeover"
    root.mkdir(mode=0o700)
    root.chmod(0o700)
    return root


def manifest_in(root: Path, name: str, data) -> Path:
    (root / name).mkdir(mode=0o700)
    return write(root / name / "manifest.json", json.dumps(data), 0o600)


def test_find_earlier_reads_root_only_manifests_and_never_follows(tmp_path):
    root = backup_root(tmp_path)
    assert tk.find_earlier(str(root)) == NONE
    assert tk.find_earlier(str(tmp_path / "absent")) == NONE
    manifest_in(root, "20250101T000000Z", {"format": 1, "files": []})
    assert tk.find_earlier(str(root)) == OLD_TAKEOVER
    manifest_in(root, "20260101T000000Z", {"format": 1, "memberships": [
        {"user": USER, "group": "docker", "gid": 998}, "junk", {"group": 5}]})  # fmt: skip
    assert tk.find_earlier(str(root)) == tk.Earlier(2, ("docker",), True)
    # Not a manifest: a symlink (to one claiming a removal), bad JSON, no manifest, a file.
    lure = write(tmp_path / "lure.json", json.dumps({"memberships": [{"group": "wheel"}]}))
    (root / "link").mkdir()
    (root / "link" / "manifest.json").symlink_to(lure)
    manifest_in(root, "bad", {}).write_text("{")
    (root / "empty").mkdir()
    write(root / "stray", "x")
    assert tk.find_earlier(str(root)) == tk.Earlier(2, ("docker",), True)
    # A backup root others can write is not read at all.
    root.chmod(0o770)
    assert tk.find_earlier(str(root)) == NONE


# ---- the module over a temporary tree ------------------------------------------------------


@pytest.fixture
def tree(tmp_path) -> Path:
    # The same tree as test_takeover_dropins.py's (its params() and upstream_host() use it).
    for d in ("etc/systemd/system", "run/systemd/system", "usr/local/bin", "var/lib/redflag",
              "etc/redflag"):  # fmt: skip
        (tmp_path / d).mkdir(parents=True)
    return tmp_path


class GroupHost(FakeModule):
    """A host whose agent user is in `groups`; gpasswd -d takes it out."""

    def __init__(self, p, groups, **kw):
        super().__init__(p, **kw)
        self.groups = list(groups)
        self.manifest_at_gpasswd: list[bool] = []

    def run_command(self, argv):
        if argv[:2] == ["gpasswd", "-d"]:
            # The manifest must already say what is removed, so it can be put back.
            root = Path(self.params["backup_root"])
            self.manifest_at_gpasswd.append(any(root.glob("*/manifest.json")))
            self.groups = [m for m in self.groups if m.group != argv[3]]
        return super().run_command(argv)


@pytest.fixture
def members(monkeypatch):
    def install(module: GroupHost) -> GroupHost:
        monkeypatch.setattr(tk, "find_memberships", lambda user: tuple(module.groups))
        return module

    return install


def test_upstream_host_leaves_docker_once_recorded_and_a_second_run_is_quiet(tree, members):
    files = upstream_host(tree)
    host = members(GroupHost(params(tree), [DOCKER, *LOGS], props=props_of(LOADED_UPSTREAM)))
    result = tk.takeover(host)
    assert ["gpasswd", "-d", USER, "docker"] in host.actions()
    assert host.manifest_at_gpasswd == [True]
    assert host.groups == list(LOGS)
    assert result["memberships_removed"] == ["docker"]
    assert result["summary"].endswith(LINE) and host.warnings == []
    assert f"{USER} in group docker" in result["diff"]["before"]
    assert "docker" not in result["diff"]["after"]
    m = json.loads((Path(result["backup_dir"]) / "manifest.json").read_text())
    assert m["memberships"] == [{"user": USER, "group": "docker", "gid": 998, "why": WHY_DOCKER}]
    assert not files["agent"].exists()

    write(files["unit"], OURS)
    again = members(GroupHost(params(tree), host.groups, props=props_of(LOADED_OURS)))
    second = tk.takeover(again)
    assert (second["changed"], second["summary"], again.actions()) == (False, "", [])
    assert again.warnings == [] and len(os.listdir(tree / "var/lib/redflag-agent-takeover")) == 1


def test_check_mode_only_says_it(tree, members):
    upstream_host(tree)
    host = members(GroupHost(params(tree), [DOCKER], check=True, props=props_of(LOADED_UPSTREAM)))
    result = tk.takeover(host)
    assert host.actions() == [] and host.groups == [DOCKER]
    assert result["summary"].endswith(f"would remove {USER} from group docker ({WHY_DOCKER})")
    assert result["memberships_removed"] == ["docker"]


def test_a_host_that_never_ran_upstream_keeps_docker_with_a_warning(tree, members):
    write(tree / "etc/systemd/system" / UNIT, OURS)
    host = members(GroupHost(params(tree), [DOCKER], props=props_of(LOADED_OURS)))
    result = tk.takeover(host)
    assert host.actions() == [] and host.groups == [DOCKER] and result["changed"] is False
    assert host.warnings == [warning("docker", DELIBERATE)]
    assert result["summary"] == warning("docker", DELIBERATE)
    assert result["backup_dir"] is None


def test_taken_over_before_this_rule_leaves_docker_then_a_readded_one_stays(tree, members):
    root = Path(params(tree)["backup_root"])
    root.mkdir(mode=0o700)
    root.chmod(0o700)
    manifest_in(root, "20250101T000000Z", {"format": 1, "files": [], "group": None})
    write(tree / "etc/systemd/system" / UNIT, OURS)
    host = members(GroupHost(params(tree), [DOCKER], props=props_of(LOADED_OURS)))
    result = tk.takeover(host)
    assert host.actions() == [["gpasswd", "-d", USER, "docker"]]
    assert result["summary"] == f"upstream agent taken over: {LINE}"
    # The operator puts it back: this time it is theirs.
    back = members(GroupHost(params(tree), [DOCKER], props=props_of(LOADED_OURS)))
    again = tk.takeover(back)
    assert back.actions() == [] and back.warnings == [warning("docker", BACK)]
    assert again["changed"] is False


# ---- who owns the list of upstream files ------------------------------------------------------


def test_the_module_owns_the_upstream_lists_and_the_role_passes_only_its_layout():
    tasks = yaml.safe_load((ROLE / "tasks" / "takeover.yml").read_text())
    (args,) = [t["redflag.agent.redflag_agent_takeover"] for t in tasks
               if "redflag.agent.redflag_agent_takeover" in t]  # fmt: skip
    assert sorted(args) == ["agent_user", "backup_root", "pyz", "unit"]
    assert not [k for k in load_yaml(ROLE / "vars" / "main.yml") if "upstream" in k]
    # The role's old list had /usr/lib and /lib too: nothing is lost with it.
    assert tk.ARGUMENT_SPEC["unit_paths"]["default"] == [
        f"/etc/systemd/system/{UNIT}", f"/usr/lib/systemd/system/{UNIT}",
        f"/lib/systemd/system/{UNIT}"]  # fmt: skip


def test_documentation_gives_the_defaults_the_module_uses():
    options = yaml.safe_load(tk.DOCUMENTATION)["options"]
    assert sorted(options) == sorted(tk.ARGUMENT_SPEC)
    for name, spec in tk.ARGUMENT_SPEC.items():
        assert options[name].get("default") == spec.get("default"), name
