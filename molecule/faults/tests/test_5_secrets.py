"""Secrets: a full converge at -vvv that enrolls the host; the token is nowhere but
config.json (and there only until registration)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import faultkit
import rfcheck

from devserver import mint


def test_token_appears_nowhere(host, case):
    row = case("secrets under systemd (full converge at -vvv)",
               "fresh token minted; full converge at -vvv (output captured to a file) that "
               "enrolls the waiting host; then scans",
               "the token is absent from the Ansible output, the whole journal, every "
               "/proc/*/cmdline and /proc/*/environ on the host and the controller, and "
               "every file on the host's disk (after registration config.json no longer "
               "holds it either); the agent is registered")
    eph = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
    mint(rfcheck.state_dir(), "secret_token", 1, revoke=False)
    token = rfcheck.token_file_text("secret_token")
    vars_file = eph / "secrets_vars.json"
    vars_file.write_text('{"rf_token_name": "secret_token", '
                         '"redflag_agent_force_reregister": true}')
    inventory = Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent
    playbook = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"]) / faultkit.CONVERGE
    log = eph / "converge-vvv.log"
    with open(log, "w") as fh:
        res = subprocess.run(["ansible-playbook", "-vvv", "--inventory", str(inventory),
                              str(playbook), "--extra-vars", "@" + str(vars_file)],
                             stdout=fh, stderr=subprocess.STDOUT, check=False,
                             env=dict(os.environ, ANSIBLE_NOCOLOR="1"))
    output = log.read_text()
    assert res.returncode == 0, output[-3000:]
    status = rfcheck.wait_for(lambda: rfcheck.checked_in_status(host), 60, what="a check-in")
    assert status["registered"] is True
    assert token not in output, f"token in the -vvv output ({log})"
    scan = faultkit.SecretScan(host, token, eph)
    try:
        assert scan.files() == [], "token in a file on the host"
        assert scan.processes() == [], "token on a command line or in an environment"
        assert scan.journal_hits() == 0, "token in the journal"
    finally:
        scan.close()
    local = [p for p in Path("/proc").glob("[0-9]*/cmdline") if _holds(p, token)]
    local += [p for p in Path("/proc").glob("[0-9]*/environ") if _holds(p, token)]
    assert local == [], local
    row.note(f"-vvv output {len(output) // 1024} KiB scanned")


def _holds(path: Path, secret: str) -> bool:
    try:
        return secret.encode() in path.read_bytes()
    except OSError:
        return False
