"""plugins/module_utils: what the modules share. Atomic root-owned writes through
AnsibleModule.atomic_move, systemctl show parsing, the agent's CLI and status answer,
checked system commands."""

from __future__ import annotations

import os
import stat

import pytest
from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.testing import patch_module_args
from ansible_collections.redflag.agent.plugins.module_utils import (
    redflag_agent_cli as cli,
)
from ansible_collections.redflag.agent.plugins.module_utils import (
    redflag_agent_commands as commands,
)
from ansible_collections.redflag.agent.plugins.module_utils import (
    redflag_agent_files as files,
)
from ansible_collections.redflag.agent.plugins.module_utils import (
    redflag_agent_systemd as systemd,
)

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="writes root:root files")


@pytest.fixture
def module() -> AnsibleModule:
    with patch_module_args({}):
        return AnsibleModule(argument_spec={})


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@root_only
def test_write_atomically_replaces_with_mode_0644(module, tmp_path):
    target = tmp_path / "redflag-agent.service"
    target.write_text("old\n")
    files.write_atomically(module, str(target), b"new\n")
    assert target.read_text() == "new\n" and mode(target) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["redflag-agent.service"]


@root_only
def test_a_wrong_mode_is_not_carried_over(module, tmp_path):
    # atomic_move's default copies the replaced file's mode: a 0666 unit would stay 0666.
    target = tmp_path / "redflag-agent.service"
    target.write_text("old\n")
    target.chmod(0o666)
    files.write_atomically(module, str(target), b"new\n")
    st = target.stat()
    assert (st.st_uid, st.st_gid, mode(target)) == (0, 0, 0o644)


@root_only
def test_a_new_file_is_0644_under_any_umask(module, tmp_path):
    target = tmp_path / "redflag-agent-migrate.service"
    old = os.umask(0)
    try:
        files.write_atomically(module, str(target), b"new\n")
        assert os.umask(0) == 0  # the caller's umask is back
    finally:
        os.umask(old)
    assert (target.read_text(), mode(target)) == ("new\n", 0o644)


@root_only
def test_write_atomically_leaves_no_temp_file_on_failure(module, tmp_path, monkeypatch):
    target = tmp_path / "redflag-agent.service"
    target.write_text("old\n")

    def refuse(*_args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "rename", refuse)
    with pytest.raises(Exception, match="Could not replace"):
        files.write_atomically(module, str(target), b"new\n")
    monkeypatch.undo()
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["redflag-agent.service"]


def test_fsync_dir_needs_a_directory(tmp_path):
    files.fsync_dir(str(tmp_path))
    (tmp_path / "f").write_text("")
    with pytest.raises(NotADirectoryError):
        files.fsync_dir(str(tmp_path / "f"))


@pytest.mark.parametrize(
    ("text", "props"),
    [
        ("ActiveState=failed\nExecMainStatus=78\nbroken line\n",
         {"ActiveState": "failed", "ExecMainStatus": "78"}),
        ("ExecStart={ path=/a ; argv[]=/a x=y }\n", {"ExecStart": "{ path=/a ; argv[]=/a x=y }"}),
        (" Key = v \n", {"Key": "v"}),
        ("", {}),
        (None, {}),
    ],
)  # fmt: skip
def test_parse_show(text, props):
    assert systemd.parse_show(text) == props


class Recorder:
    def __init__(self, rc=0, out="", err=""):
        self.answer = (rc, out, err)
        self.calls: list[tuple[list[str], dict]] = []
        self.failed: dict | None = None

    def run_command(self, argv, **kwargs):
        self.calls.append((argv, kwargs))
        return self.answer

    def fail_json(self, **kwargs):
        self.failed = kwargs
        raise SystemExit(1)


def test_show_asks_for_each_property_and_reads_nothing_when_systemctl_fails():
    rec = Recorder(0, "A=1\nB=2\n")
    assert systemd.show(rec, "u.service", ("A", "B")) == {"A": "1", "B": "2"}
    assert rec.calls[0][0] == ["systemctl", "show", "u.service", "-p", "A", "-p", "B"]
    assert systemd.show(Recorder(1, "A=1\n"), "u.service", ("A",)) == {}


def test_run_agent_isolated_and_in_the_c_locale():
    rec = Recorder()
    cli.run_agent(rec, "/usr/bin/python3", "/opt/a.pyz", "status", "--json", data="{}")
    argv, kwargs = rec.calls[0]
    assert argv == ["/usr/bin/python3", "-I", "/opt/a.pyz", "status", "--json"]
    assert kwargs == {"environ_update": {"LC_ALL": "C.UTF-8"}, "data": "{}"}


@pytest.mark.parametrize(
    ("rc", "out", "answer"),
    [
        (0, '{"registered": true}', {"registered": True}),
        (1, '{"registered": true}', None),  # an exit code is not an answer
        (0, "[1]", None),
        (0, "not json", None),
        (0, "", None),
    ],
)
def test_status_answer(rc, out, answer):
    assert cli.status_answer(rc, out) == answer


def test_agent_cli_args_match_the_doc_fragment():
    import yaml
    from ansible_collections.redflag.agent.plugins.doc_fragments.agent_cli import (
        ModuleDocFragment,
    )

    options = yaml.safe_load(ModuleDocFragment.DOCUMENTATION)["options"]
    assert {k: {"type": v["type"], "required": v["required"]} for k, v in options.items()} == (
        cli.AGENT_CLI_ARGS
    )


def test_run_checked_names_the_command_and_its_output():
    assert commands.run_checked(Recorder(0, "ok", ""), ["true"]) == ("ok", "")
    rec = Recorder(9, "", "groupdel: group 'x' does not exist\n")
    with pytest.raises(SystemExit):
        commands.run_checked(rec, ["groupdel", "x"], changes=["a"])
    assert rec.failed == {
        "msg": "groupdel x failed (exit 9): groupdel: group 'x' does not exist",
        "changes": ["a"],
    }


def test_run_checked_falls_back_to_stdout():
    rec = Recorder(1, "only stdout\n", "")
    with pytest.raises(SystemExit):
        commands.run_checked(rec, ["systemctl", "stop", "u"])
    assert rec.failed == {"msg": "systemctl stop u failed (exit 1): only stdout"}

