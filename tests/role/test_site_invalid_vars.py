"""A host whose role variable fails meta/argument_specs.yml takes the path of every other
failure in site.yml: the role's rescue records it, the gate names it with what to do, the
summary has its line, the later batches stay untouched and the play ends with rc 2.

Before, Ansible's implicit check ran outside the role's block: max_fail_percentage 0
ended the play at once, with no gate message, rollback accounting or summary. The slow
test runs site.yml over the local connection; the host with the bad variable stops at
the validation (nothing on this machine is touched) and the other is never started.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_playbook_tags import _env

from conftest import PLAYBOOKS, ROLE, load_yaml

INTERVAL_ERROR = (
    "argument 'redflag_agent_check_in_interval' is of type str and we were unable to convert "
    "to int"
)


def test_site_yml_leaves_the_validation_to_the_role_block():
    play = load_yaml(PLAYBOOKS / "site.yml")[0]
    assert "roles" not in play, "under roles: Ansible validates outside the role's block"
    imports = [t["ansible.builtin.import_role"] for t in play["tasks"]
               if "ansible.builtin.import_role" in t]  # fmt: skip
    assert imports == [{"name": "redflag.agent.redflag_agent", "rolespec_validate": False}]
    first = load_yaml(ROLE / "tasks" / "main.yml")[0]["block"][0]
    spec = first["ansible.builtin.validate_argument_spec"]
    assert "/meta/argument_specs.yml" in spec["argument_spec"]
    assert ".argument_specs.main.options" in " ".join(spec["argument_spec"].split())
    assert "always" in first["tags"]


def run_site(tmp_path: Path, *args: str) -> tuple[int, str]:
    python = sys.executable
    host = {"ansible_connection": "local", "ansible_python_interpreter": python,
            "ansible_become": False, "redflag_agent_server_url": "http://127.0.0.1:9"}  # fmt: skip
    inventory = tmp_path / "hosts.json"
    inventory.write_text(json.dumps({"all": {"hosts": {
        "bad": {**host, "redflag_agent_check_in_interval": "often"},
        "good": host,
    }}}))  # fmt: skip
    proc = subprocess.run(
        [str(Path(python).parent / "ansible-playbook"), "-i", str(inventory),
         "-e", "redflag_rollout_hosts=all", *args, str(PLAYBOOKS / "site.yml")],
        capture_output=True, text=True, env=_env(tmp_path, ANSIBLE_CALLBACK_RESULT_FORMAT="json"),
        cwd=tmp_path, timeout=180, check=False,
    )  # fmt: skip
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.slow
def test_a_bad_variable_on_the_canary_stops_the_rollout_with_gate_and_summary(tmp_path):
    rc, out = run_site(tmp_path, "-e", "redflag_rollout_canary=1", "-e", "redflag_rollout_serial=1")
    text = " ".join(out.split())
    assert rc == 2, out[-3000:]
    assert "batch 1 of 2 (canary): bad;" in text
    gate = text[text.index("rollout stopped at batch 1 of 2"):]
    assert gate.startswith(
        "rollout stopped at batch 1 of 2: hosts bad failed the health gate: bad: failed: the "
        "role's variables do not match its argument spec (meta/argument_specs.yml): "
        + INTERVAL_ERROR
    ), gate[:600]
    advice = ("next: correct redflag_agent_check_in_interval for bad (host_vars, group_vars or "
              "-e; `ansible-doc -t role redflag.agent.redflag_agent` gives each type), then "
              "re-run the playbook with -l bad")  # fmt: skip
    assert advice in gate
    assert "Not rolled back: bad: this play did not change its agent version." in gate
    assert "Later batches were not touched (good)" in gate
    # The summary (one list entry per line under the JSON result format).
    assert '"1 of 2  STOPPED      bad    0/1      0/1      -' in out
    assert '"2 of 2  not started  good   -        -        -            -",' in out
    assert f'"batch 1 of 2: bad: failed; {advice}",' in out
    assert "not started: good (untouched)" in text
    recap = out[out.index("PLAY RECAP"):]
    assert "rescued=1" in recap and "good" not in recap, recap
