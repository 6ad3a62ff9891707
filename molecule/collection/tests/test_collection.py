"""Converged from the installed artifact: the role and playbook came from the fresh
collections path (not the checkout), the install is untouched, and the zipapp was built in
the controller's per-user cache."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

import rfcheck

EPH = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent"))
INSTALLED = EPH / "collections" / "ansible_collections" / "redflag" / "agent"
CHECKOUT = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", "/nonexistent")).resolve()
CONVERGE = Path(__file__).resolve().parents[1] / "converge.yml"


def _installed_version() -> str:
    manifest = json.loads((INSTALLED / "MANIFEST.json").read_text())
    return manifest["collection_info"]["version"]


def test_tasks_come_from_the_installed_collection():
    """A third run at -vv prints every task's file: all are in the fresh install."""
    assert "ANSIBLE_CONFIG" in os.environ, "verify must run with the scenario's ansible.cfg"
    inventory = Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    result = subprocess.run(
        ["ansible-playbook", "-vv", "--inventory", str(inventory), str(CONVERGE)],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    with open(EPH / "playbook-runs.log", "a") as log:
        log.write(f"==== -vv converge -> {result.returncode}\n{output}\n")
    assert result.returncode == 0, output[-3000:]
    paths = [Path(p) for p in re.findall(r"^task path: (\S+?):\d+$", output, re.MULTILINE)]
    paths = [p for p in paths if p != CONVERGE]
    role_tasks = [p for p in paths if "roles/redflag_agent/tasks" in p.as_posix()]
    assert role_tasks, "no task of the role ran"
    outside = sorted({str(p) for p in paths if not p.is_relative_to(INSTALLED)})
    assert not outside, f"tasks loaded from outside {INSTALLED}: {outside}"
    assert not [p for p in paths if p.resolve().is_relative_to(CHECKOUT)]
    recap = rfcheck.parse_recap(output)
    assert recap["instance"]["changed"] == 0, recap


def test_installed_collection_unchanged():
    """The build wrote nothing into the install: its files are exactly FILES.json's."""
    listed = json.loads((INSTALLED / "FILES.json").read_text())["files"]
    expected = {e["name"]: e["chksum_sha256"] for e in listed if e["ftype"] == "file"}
    on_disk = {
        p.relative_to(INSTALLED).as_posix()
        for p in INSTALLED.rglob("*")
        if p.is_file() and p.name not in ("MANIFEST.json", "FILES.json")
    }
    assert on_disk == set(expected), f"added: {on_disk - set(expected)}"
    for name, digest in expected.items():
        assert hashlib.sha256((INSTALLED / name).read_bytes()).hexdigest() == digest, name


def test_zipapp_built_in_the_per_user_cache(host):
    """The role's default build dir: <XDG cache>/redflag.agent/<sha1 of the source dir>."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    source = os.path.realpath(INSTALLED / "roles" / "redflag_agent" / ".." / ".." / "agent_src")
    key = hashlib.sha1(source.encode()).hexdigest()[:12]  # noqa: S324 - a name, not security
    pyz = cache / "redflag.agent" / key / f"redflag-agent-{_installed_version()}.pyz"
    assert pyz.is_file(), f"no zipapp at {pyz}"
    on_host = host.file("/opt/redflag-agent/current/redflag-agent.pyz").sha256sum
    assert hashlib.sha256(pyz.read_bytes()).hexdigest() == on_host


def test_agent_running_and_registered(host):
    assert host.service("redflag-agent").is_running
    status = rfcheck.wait_for(lambda: rfcheck.checked_in_status(host), 30, what="a check-in")
    assert status["registered"] is True
    agents = rfcheck.server_agents_named(host.check_output("hostname"))
    assert len(agents) == 1
    assert status["agent_version"] == _installed_version()
