"""Helpers for the scenarios' testinfra tests: the agent's view, the unit's view
and the stand-in server's view of a test host. Nothing here prints a token."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import devserver  # noqa: E402

AGENT = "python3 -I /opt/redflag-agent/current/redflag-agent.pyz"
UNIT = "redflag-agent.service"
MIGRATE_UNIT = "redflag-agent-migrate.service"
MIGRATE_UNIT_PATH = "/etc/systemd/system/" + MIGRATE_UNIT
CONFIG = "/etc/redflag-agent/config.json"
STATE_DIR = "/var/lib/redflag-agent"
BACKUP_DIR = STATE_DIR + "/migration_backups"
LEGACY_DIRS = ("/etc/aggregator", "/var/lib/aggregator")


def container(inventory_name: str) -> str:
    """The podman container (and host name) behind an inventory host (shared/create.yml)."""
    return f"rf-{os.environ['MOLECULE_SCENARIO_NAME']}-{inventory_name}"


def inventory_name(host) -> str:
    """The inventory name of a test host, as play recaps and gate messages show it."""
    hostname = host.check_output("hostname")
    prefix = container("")
    assert hostname.startswith(prefix), f"{hostname} is not a container of this scenario"
    return hostname[len(prefix) :]


def state_dir() -> Path:
    """The scenario's stand-in server directory (see shared/create.yml)."""
    eph = os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY")
    if not eph:
        raise RuntimeError(
            "MOLECULE_EPHEMERAL_DIRECTORY is not set: run the tests via 'molecule verify'"
        )
    return Path(eph) / "devserver"


def server_agents() -> list[dict]:
    return devserver.agents(state_dir())


def server_agents_named(hostname: str) -> list[dict]:
    return [a for a in server_agents() if a.get("hostname") == hostname]


def token_file_text(name: str = "registration_token") -> str:
    return (state_dir() / name).read_text().strip()


def run_ok(host, cmd: str) -> str:
    """Run on the host (as root: podman exec); fail with the command's stderr.

    The commands used here print no secrets."""
    result = host.run(cmd)
    assert result.rc == 0, f"{cmd!r} exited {result.rc}: {result.stderr.strip()}"
    return result.stdout


def agent_status(host) -> dict:
    return json.loads(run_ok(host, AGENT + " status --json"))


def unit_props(host, *names: str, unit: str = UNIT) -> dict[str, str]:
    args = " ".join("-p " + shlex.quote(n) for n in names)
    out = run_ok(host, f"systemctl show {unit} {args}")
    props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    missing = [n for n in names if n not in props]
    assert not missing, f"systemctl show gave no {missing}"
    return props


def read_config(host) -> dict:
    return json.loads(run_ok(host, "cat " + CONFIG))


def backups(host) -> list[str]:
    out = run_ok(host, f"if [ -d {BACKUP_DIR} ]; then ls -1A {BACKUP_DIR}; fi")
    return [line for line in out.splitlines() if line]


def legacy_style_backups(host) -> list[str]:
    """Backup dirs the broken upstream agent made (the restart-loop symptom)."""
    out = run_ok(host, f"ls -1d {STATE_DIR}/migration_backups_* 2>/dev/null || true")
    return [line for line in out.splitlines() if line]


def file_contains(host, path: str, secret: str) -> bool:
    """True when `secret` occurs in the file, without putting it on any command line."""
    f = host.file(path)
    if not f.exists:
        return False
    return secret in f.content_string


def journal_text(host) -> str:
    return run_ok(host, f"journalctl -u {UNIT} --no-pager -o cat || true")


def checked_in_status(host) -> dict | None:
    """The agent's status once it has checked in at least once, else None."""
    status = agent_status(host)
    return status if status.get("last_checkin") else None


def assert_file(host, path: str, kind: str, owner: str, mode: int) -> None:
    """Owner and group are both `owner` (the project's layout has no mixed pairs)."""
    f = host.file(path)
    assert f.exists, f"{path} missing"
    assert getattr(f, "is_" + kind), f"{path} is not a {kind}"
    got = (f.user, f.group, f.mode)
    assert got == (owner, owner, mode), (
        f"{path}: {got[0]}:{got[1]} {oct(got[2])}, want {owner}:{owner} {oct(mode)}"
    )


def wait_for(predicate, timeout: float, interval: float = 1.0, what: str = "condition"):
    """Poll until predicate() returns a truthy value; return it, or fail naming `what`."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def service_restart_and_settle(host, timeout: float = 30.0) -> None:
    """Restart the unit; wait for a new invocation that is active and has checked in since."""
    before = unit_props(host, "InvocationID")["InvocationID"]
    # Host and container share the kernel clock; compare at second resolution.
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    # The unit allows 5 starts per StartLimitIntervalSec; the converge's own starts
    # count too, so clear the counter: these restarts are deliberate, not a crash loop.
    run_ok(host, f"systemctl reset-failed {UNIT}; systemctl restart {UNIT}")

    def settled() -> bool:
        props = unit_props(host, "InvocationID", "ActiveState")
        if props["InvocationID"] == before or props["ActiveState"] != "active":
            return False
        last = agent_status(host).get("last_checkin") or ""
        return last[:19] >= since

    wait_for(settled, timeout, interval=0.5, what="the restarted agent to be active and check in")


def run_playbook(
    playbook: str,
    extra_vars: dict | None = None,
    limit: str | None = None,
    check: bool = False,
):
    """Run a playbook against the scenario's hosts, the way Molecule runs converge.

    Extra vars travel in a file, not on argv. Returns (rc, output, recap per host).
    """
    inventory = Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent
    path = Path(playbook)
    if not path.is_absolute():
        path = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"]) / path
    cmd = ["ansible-playbook", "--inventory", str(inventory), str(path)]
    if extra_vars:
        vars_file = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "extra_vars.json"
        vars_file.write_text(json.dumps(extra_vars))
        cmd += ["--extra-vars", "@" + str(vars_file)]
    if limit:
        cmd += ["--limit", limit]
    if check:
        cmd += ["--check"]
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    output = result.stdout + result.stderr
    log = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "playbook-runs.log"
    with open(log, "a") as fh:
        fh.write(f"==== {' '.join(cmd)} -> {result.returncode}\n{output}\n")
    return result.returncode, output, parse_recap(output)


def parse_recap(output: str) -> dict[str, dict[str, int]]:
    """{'host': {'ok': 3, 'changed': 0, ...}} from the PLAY RECAP lines."""
    recap: dict[str, dict[str, int]] = {}
    for match in re.finditer(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", output, re.MULTILINE):
        counts = dict(kv.split("=") for kv in match.group(2).split())
        recap[match.group(1)] = {k: int(v) for k, v in counts.items()}
    return recap
