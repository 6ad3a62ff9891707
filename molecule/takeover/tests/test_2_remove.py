"""Uninstall keeps the takeover backup and says where it is; purge removes it. Runs last:
it removes the agent from the seed host."""

from __future__ import annotations

import re

import rfcheck

CONVERGE = "molecule/shared/converge.yml"
BACKUP_ROOT = "/var/lib/redflag-agent-takeover"


def test_uninstall_keeps_the_backup_and_says_where(host):
    if rfcheck.inventory_name(host) != "seed":
        return
    rc, out, _recap = rfcheck.run_playbook(
        CONVERGE, {"redflag_agent_state": "absent"}, limit="seed"
    )
    assert rc == 0, "converge with state absent failed; see playbook-runs.log"
    text = re.sub(r"\s+", " ", out)
    assert f"the upstream agent files the takeover set aside are kept in {BACKUP_ROOT}" in text
    assert host.file(BACKUP_ROOT).is_directory
    assert host.file(
        f"{BACKUP_ROOT}/{rfcheck.run_ok(host, f'ls -1A {BACKUP_ROOT}').split()[0]}"
        "/files/usr/local/bin/redflag-agent"
    ).is_file


def test_purge_removes_the_backup(host):
    if rfcheck.inventory_name(host) != "seed":
        return
    rc, out, _recap = rfcheck.run_playbook(
        CONVERGE, {"redflag_agent_state": "absent", "redflag_agent_purge": True}, limit="seed"
    )
    assert rc == 0
    assert "the upstream agent files the takeover set aside were removed" in re.sub(
        r"\s+", " ", out
    )
    assert not host.file(BACKUP_ROOT).exists
