"""The host's `redflag-agent` command: a root-owned 0755 wrapper the host module installs
(tasks/install.yml), which runs the current zipapp as the unit does, and remove.yml deletes;
outside the upstream binary paths the takeover moves aside (else every run would move it)."""

from __future__ import annotations

import os
import shlex
import subprocess
from types import SimpleNamespace

import jinja2
import pytest
import yaml
from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.testing import patch_module_args

from conftest import MODULES, ROLE, load_source, load_yaml

VARS = load_yaml(ROLE / "vars" / "main.yml")
TASKS = ROLE / "tasks"


def render(python: str = "/usr/bin/python3") -> str:
    # A shell script, not HTML: autoescaping would corrupt it.
    env = jinja2.Environment(  # noqa: S701
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True
    )
    env.filters["quote"] = shlex.quote  # what Ansible's quote filter does
    source = (ROLE / "templates" / "redflag-agent.sh.j2").read_text()
    values = {**VARS, "redflag_agent__python": python, "ansible_managed": "Ansible managed"}
    return env.from_string(source).render(**values)


def _host_task() -> dict:
    tasks = yaml.safe_load((TASKS / "install.yml").read_text())
    (task,) = [t for t in tasks if "redflag.agent.redflag_agent_host" in t]
    return task["redflag.agent.redflag_agent_host"]


def test_wrapper_runs_the_current_zipapp_isolated_with_all_arguments(tmp_path):
    # A stand-in "python" that prints its argv shows exactly what the wrapper runs.
    fake = tmp_path / "py thon"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do printf "[%s]" "$a"; done\n')
    fake.chmod(0o755)
    script = tmp_path / "redflag-agent"
    script.write_text(render(str(fake)))
    out = subprocess.run(
        ["sh", str(script), "status", "--json", "a b"], capture_output=True, text=True, check=True
    ).stdout
    assert out == f"[-I][{VARS['redflag_agent__current_pyz']}][status][--json][a b]"


def test_wrapper_is_valid_sh():
    assert subprocess.run(["sh", "-n", "-c", render()], check=False).returncode == 0


def test_install_passes_path_and_template_and_remove_deletes_the_same_path():
    args = _host_task()
    assert "redflag-agent.sh.j2" in args["command_content"]
    tasks = yaml.safe_load((TASKS / "remove.yml").read_text())
    removed = [p for t in tasks if "ansible.builtin.file" in t for p in t.get("loop", [])]
    assert args["command_path"] in removed


def test_command_is_not_an_upstream_path_the_takeover_moves():
    # takeover.yml moves every file at these paths into its backup: our command there would
    # be moved away on every run (no idempotence) and the host left without it.
    assert _host_task()["command_path"] == "{{ redflag_agent__command_path }}"
    path = VARS["redflag_agent__command_path"]
    # The upstream paths are the takeover module's defaults (the role passes none).
    module = load_source("redflag_agent_takeover", MODULES / "redflag_agent_takeover.py")
    options = yaml.safe_load(module.DOCUMENTATION)["options"]
    assert path not in options["binaries"]["default"] + options["helper_files"]["default"]
    assert os.path.basename(path) == "redflag-agent"


def test_reset_failed_covers_both_units():
    tasks = yaml.safe_load((TASKS / "remove.yml").read_text())
    argv = [t["ansible.builtin.command"]["argv"] for t in tasks if "ansible.builtin.command" in t]
    reset = [a for a in argv if a[:2] == ["systemctl", "reset-failed"]]
    assert reset == [
        [
            "systemctl",
            "reset-failed",
            "{{ redflag_agent__unit }}",
            "{{ redflag_agent__migrate_unit }}",
        ]
    ]


# ---- the host module writes it (root: the file is root:root) -------------------------------


@pytest.fixture
def run_command(host_module, tmp_path):
    def run(check: bool = False, content: str | None = "#!/bin/sh\nexec true\n", path=None):
        params = {
            "command_path": str(path or tmp_path / "sbin" / "redflag-agent"),
            "command_content": content,
        }
        with patch_module_args({}):  # the file goes through AnsibleModule.atomic_move
            real = AnsibleModule(argument_spec={})
        module = SimpleNamespace(params=params, check_mode=check, warn=lambda _m: None,
                                 atomic_move=real.atomic_move)
        host = host_module.Host(module)
        diffs = host.command()
        return host.changes, diffs

    return run


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="writes a root:root file")


@needs_root
def test_command_written_0755_then_left_alone(run_command, tmp_path):
    target = tmp_path / "sbin" / "redflag-agent"
    changes, diffs = run_command()
    assert changes[-1] == f"{target} written" and len(diffs) == 1
    st = target.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, 0, 0o755)
    assert (tmp_path / "sbin").stat().st_mode & 0o7777 == 0o755
    assert target.read_text() == "#!/bin/sh\nexec true\n"
    assert run_command() == ([], [])
    target.chmod(0o644)  # a wrong mode is fixed
    assert run_command()[0] == [f"{target} written"]
    assert target.stat().st_mode & 0o7777 == 0o755


@needs_root
def test_command_check_mode_writes_nothing(run_command, tmp_path):
    changes, _ = run_command(check=True)
    assert f"{tmp_path / 'sbin' / 'redflag-agent'} written" in changes
    assert not (tmp_path / "sbin").exists()


def test_command_left_alone_without_content(run_command, tmp_path):
    assert run_command(content=None) == ([], [])
    assert not (tmp_path / "sbin").exists()


@needs_root
def test_a_symlink_at_the_path_is_replaced_not_followed(run_command, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    (tmp_path / "sbin").mkdir()
    link = tmp_path / "sbin" / "redflag-agent"
    link.symlink_to(victim)
    run_command()
    assert victim.read_text() == "keep\n"
    assert not link.is_symlink() and link.read_text() == "#!/bin/sh\nexec true\n"


def test_wrapper_quotes_an_odd_interpreter_path():
    assert "exec '/opt/my python/bin/python3' -I " in render("/opt/my python/bin/python3")
