"""site.yml's gate under --tags/--skip-tags, and status.yml under any result format.

The static tests read the role's and site.yml's tags. The slow ones run the real
playbooks against this machine over the local connection: the role's preflight fails
here (systemd is not PID 1 in the test container), which is what the gate must catch
under `--tags redflag_agent_service`; nothing on this machine is changed. The rejected
token under the same tags is molecule/fleet's (tests/test_fleet.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FILTERS, PLAYBOOKS, REPO, ROLE, load_source, load_yaml

R = load_source("redflag_rollout", FILTERS / "redflag_rollout.py")
ROLE_TAGS = {
    "redflag_agent_preflight", "redflag_agent_install", "redflag_agent_takeover",
    "redflag_agent_configure", "redflag_agent_service", "redflag_agent_image",
    "redflag_agent_remove",
}  # fmt: skip


def _tags(item) -> set:
    tags = item.get("tags") or []
    return {tags} if isinstance(tags, str) else set(tags)


def test_the_role_tags_carry_its_name():
    block = load_yaml(ROLE / "tasks" / "main.yml")[0]
    seen = set()
    for task in block["block"]:
        include = task.get("ansible.builtin.include_tasks") or {}
        tags = _tags(task) | _tags(include.get("apply") or {})
        assert tags, f"untagged: {task['name']}"
        assert tags <= ROLE_TAGS | {"always"}, task["name"]
        seen |= tags
    assert seen == ROLE_TAGS | {"always"}
    # The rescue records the outcome the gate judges: it runs under any --tags.
    assert all("always" in _tags(task) for task in block["rescue"])
    service = [t for t in block["block"] if t.get("ansible.builtin.import_tasks") == "service.yml"]
    assert _tags(service[0]) == {R.SERVICE_TAG}


def test_every_task_of_site_yml_outside_the_role_runs_under_any_tags():
    play = load_yaml(PLAYBOOKS / "site.yml")[0]
    for task in play["pre_tasks"] + play["post_tasks"]:
        assert "always" in _tags(task), task["name"]
    assert "skip_tags=ansible_skip_tags" in play["vars"]["redflag_rollout__serial"]


def _env(tmp_path: Path, **extra: str) -> dict:
    return {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        **extra,
    }


def run_site(tmp_path: Path, *args: str, **env: str) -> tuple[int, str]:
    vars_file = tmp_path / "vars.json"
    vars_file.write_text(json.dumps({
        "redflag_agent_server_url": "http://127.0.0.1:9",
        "ansible_become": False,
        "redflag_rollout_hosts": "localhost",
    }))  # fmt: skip
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local",
         "-e", f"ansible_python_interpreter={sys.executable}", "-e", f"@{vars_file}",
         *args, str(PLAYBOOKS / "site.yml")],
        capture_output=True, text=True, env=_env(tmp_path, **env), cwd=tmp_path, timeout=180,
        check=False,
    )  # fmt: skip
    return proc.returncode, proc.stdout + proc.stderr


NOT_HERE = Path("/proc/1/comm").read_text().strip() == "systemd"


@pytest.mark.slow
@pytest.mark.skipif(NOT_HERE, reason="needs a machine where the role's preflight fails")
@pytest.mark.parametrize(
    "tags",
    [["--tags", "redflag_agent_service"],
     ["--tags", "redflag_agent_configure,redflag_agent_service"],
     ["--skip-tags", "redflag_agent_install,redflag_agent_takeover", "-v"]],
)  # fmt: skip
def test_the_gate_stops_a_failed_host_under_tags(tmp_path, tags):
    rc, out = run_site(tmp_path, *tags, ANSIBLE_CALLBACK_RESULT_FORMAT="json")
    assert rc == 2, out[-3000:]
    text = " ".join(out.split())
    assert "batch 1 of 1: localhost; the gate waits up to 60 s per host" in text
    polls = "(polls from 0.25 s backing off to 3 s: redflag_agent_verify_retries=20 x "
    assert (polls in text) is ("-v" in tags), "the polling is said in verbose mode only"
    assert re.search(r"rollout stopped at batch 1 of 1: hosts localhost failed the health gate: "
                     r"localhost: failed: .*systemd is PID 1.*; next: fix what the task", text)
    # The summary under the JSON result format: one list entry per line, not one "\n" string.
    assert '"BATCH   RESULT   HOSTS      CHANGED  HEALTHY  ROLLED BACK  SECONDS",' in out
    assert '"batch 1 of 1: localhost: failed; next: fix what the task' in out


@pytest.mark.slow
@pytest.mark.parametrize(
    ("tags", "message"),
    [(["--skip-tags", "always"], "--skip-tags always would skip site.yml's batch counter"),
     (["--tags", "service"], "use redflag_agent_service")],
)  # fmt: skip
def test_tags_that_would_skip_the_gate_are_refused_before_any_task(tmp_path, tags, message):
    rc, out = run_site(tmp_path, *tags)
    assert rc != 0
    assert message in out
    assert "TASK [" not in out, "a task ran"


def run_status(tmp_path: Path, **env: str) -> str:
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local",
         "-e", f"ansible_python_interpreter={sys.executable}", "-e", "ansible_become=false",
         "-e", "redflag_target=localhost", "-e", "redflag_agent_python=/nonexistent/python3",
         str(PLAYBOOKS / "status.yml")],
        capture_output=True, text=True, env=_env(tmp_path, **env), cwd=tmp_path, timeout=120,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:]
    return proc.stdout


HEADER = ("HOST       REGISTERED  AGENT_ID  AGENT  CONFIG  MIGRATIONS  SERVICE  LAST CHECK-IN  "
          "LAST ERROR")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("env", "first_line"),
    [({"ANSIBLE_CALLBACK_RESULT_FORMAT": "json", "ANSIBLE_STDOUT_CALLBACK": "default"},
      f'"{HEADER}",'),
     ({"ANSIBLE_CALLBACK_RESULT_FORMAT": "yaml", "ANSIBLE_STDOUT_CALLBACK": "default"}, HEADER),
     ({"ANSIBLE_STDOUT_CALLBACK": "json"}, f'"{HEADER}",')],
)  # fmt: skip
def test_status_table_is_one_line_per_host_under_any_callback(tmp_path, env, first_line):
    out = run_status(tmp_path, **env)
    lines = [line.strip() for line in out.splitlines()]
    assert first_line in lines, out[-2000:]
    row = lines[lines.index(first_line) + 1]
    # redflag_agent_python is the interpreter, and its failure is the last error
    assert row.startswith(('"localhost  ', "localhost  ")), row
    assert "status --json failed: cannot run /nonexistent/python3; set redflag_agent_python" in row
