"""Preflight rejects bad input before any change, naming the variable and the fix.

Runs the real role with `--tags redflag_agent_preflight` against this machine over the local
connection; preflight only reads (one shell probe), so nothing is changed here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

GOOD = {"redflag_agent_server_url": "http://127.0.0.1:8080"}


def run_preflight(extra: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    vars_file = tmp_path / "vars.json"
    vars_file.write_text(json.dumps({**GOOD, "ansible_become": False, **extra}))
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
    }
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i", "localhost,", "-c", "local",
            "-e", f"ansible_python_interpreter={sys.executable}",
            "-e", f"@{vars_file}",
            "--tags", "redflag_agent_preflight",
            str(REPO / "playbooks" / "install.yml"),
        ],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False,
    )  # fmt: skip


CASES = [
    ({"redflag_agent_server_url": "ftp://x"}, "redflag_agent_server_url is 'ftp://x'; set it to"),
    ({"redflag_agent_server_url": ""}, "redflag_agent_server_url is ''; set it to"),
    ({"redflag_agent_server_url": "http://h/api"}, "with no path"),
    (
        {"redflag_agent_server_url": "http://h:99999"},
        "redflag_agent_server_url is 'http://h:99999'",
    ),
    ({"redflag_agent_check_in_interval": 0}, "redflag_agent_check_in_interval is '0'"),
    ({"redflag_agent_version": "latest"}, "redflag_agent_version is 'latest'"),
    ({"redflag_agent_artifact": "/x.pyz"}, "set redflag_agent_version to the version of /x.pyz"),
    ({"redflag_agent_keep_versions": 0}, "redflag_agent_keep_versions is '0'"),
    ({"redflag_agent_require_token": True}, "redflag_agent_require_token is true but"),
    ({"redflag_agent_force_reregister": True}, "redflag_agent_force_reregister is true but"),
    ({"redflag_agent_state": "gone"}, "redflag_agent_state"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("extra", "message"), CASES, ids=[c[1][:40] for c in CASES])
def test_bad_input_is_rejected(extra, message, tmp_path):
    proc = run_preflight(extra, tmp_path)
    assert proc.returncode != 0, proc.stdout[-2000:]
    out = " ".join((proc.stdout + proc.stderr).split())
    assert message in out, out[-3000:]


PID1_IS_SYSTEMD = Path("/proc/1/comm").read_text().strip() == "systemd"


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra",
    [{}, {"redflag_agent_server_url": "https://[::1]:8443"}, {"redflag_agent_version": "0.2.0"}],
)
def test_good_input_passes(extra, tmp_path):
    proc = run_preflight(extra, tmp_path)
    out = " ".join((proc.stdout + proc.stderr).split())
    # No input check and no python3 check fails; only the host's service manager may.
    for _extra, fragment in CASES:
        assert fragment not in out, out[-3000:]
    assert "usable python3" not in out, out[-3000:]
    if PID1_IS_SYSTEMD:
        assert proc.returncode == 0, out[-3000:]
    else:
        # This machine does not boot systemd: the one failure is the systemd check.
        assert proc.returncode != 0
        assert "Check systemd is PID 1: the host's service manager is" in out, out[-3000:]


@pytest.mark.slow
def test_a_failed_probe_quotes_the_hosts_error_and_the_next_step(tmp_path):
    # become through a sudo the host does not have: the failure quotes the host's stderr
    # (not only "non-zero return code") and says what to do.
    proc = run_preflight({"ansible_become": True, "ansible_become_user": "nobody",
                          "ansible_become_exe": "/nonexistent/redflag-sudo"}, tmp_path)
    out = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode != 0
    fatal = out[out.index("fatal:"):]
    assert "The read-only host probe (/bin/sh as nobody via sudo)" in fatal, fatal[:3000]
    assert "/nonexistent/redflag-sudo: not found" in fatal, fatal[:3000]
    assert "Next: the play becomes nobody with sudo" in fatal, fatal[:3000]
    assert "non-zero return code" not in out
