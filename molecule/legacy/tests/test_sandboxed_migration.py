"""A 0.1.18 host migrated by the unit alone, under the migration unit's sandbox (issue 12).

The role migrates through its config module; the unit migrates when the agent starts on
its own (a reboot, a crash). Here the host is put back to the 0.1.18 layout with its
identity, and only `redflag-agent-migrate.service` runs: the identity moves over, the
legacy directories are emptied (inside the sandbox their parents are read-only, so the
directories themselves stay), and the role's next run removes the empty directories.
"""

from __future__ import annotations

import shlex

import pytest
import rfcheck

CONVERGE = "molecule/shared/converge.yml"
SAVE = "/root/rf-sandboxed-migration-save"


@pytest.fixture
def legacy_again(host):
    """The converged host turned back into a 0.1.18 layout; restored afterwards."""
    rfcheck.run_ok(host, f"systemctl stop {rfcheck.UNIT}")
    config = rfcheck.read_config(host)
    rfcheck.run_ok(host, f"rm -rf {SAVE} && mkdir -p {SAVE} && "
                         f"cp -a /etc/redflag-agent {SAVE}/etc && "
                         f"cp -a {rfcheck.STATE_DIR} {SAVE}/state")
    # 0.1.18 wrote no version key; the tokens stay on the host (never on a command line).
    to_legacy = ("import json; c = json.load(open('/etc/redflag-agent/config.json')); "
                 "c.pop('version', None); json.dump(c, open('/etc/aggregator/config.json', 'w'))")
    rfcheck.run_ok(host, "install -d -o redflag-agent -g redflag-agent -m 0755 "
                         "/etc/aggregator /var/lib/aggregator && "
                         f"python3 -c {shlex.quote(to_legacy)} && "
                         f"cp -a {rfcheck.STATE_DIR}/pending_acks.json /var/lib/aggregator/ && "
                         "chown -R redflag-agent: /etc/aggregator /var/lib/aggregator && "
                         "chmod 0644 /etc/aggregator/config.json && "
                         f"rm -rf /etc/redflag-agent/* {rfcheck.STATE_DIR}/*")
    yield config
    if host.file(SAVE).exists:  # the test did not finish: put the converged host back
        host.run(f"rm -rf /etc/aggregator /var/lib/aggregator /etc/redflag-agent "
                 f"{rfcheck.STATE_DIR} && cp -a {SAVE}/etc /etc/redflag-agent && "
                 f"cp -a {SAVE}/state {rfcheck.STATE_DIR} && rm -rf {SAVE}; "
                 f"systemctl reset-failed {rfcheck.MIGRATE_UNIT}; systemctl start {rfcheck.UNIT}")


def test_unit_migrates_a_legacy_host_inside_its_sandbox(host, legacy_again):
    host.run(f"systemctl reset-failed {rfcheck.MIGRATE_UNIT}")
    host.run(f"systemctl start {rfcheck.MIGRATE_UNIT}")
    props = rfcheck.unit_props(host, "Result", "ExecMainStatus", "InvocationID",
                               unit=rfcheck.MIGRATE_UNIT)
    journal = rfcheck.run_ok(host, f"journalctl _SYSTEMD_INVOCATION_ID={props['InvocationID']} "
                                   "--no-pager -o cat")
    assert (props["Result"], props["ExecMainStatus"]) == ("success", "0"), journal
    config = rfcheck.read_config(host)
    for key in ("agent_id", "refresh_token", "machine_id"):
        assert config[key] == legacy_again[key], key
    assert config["version"] == "6"
    assert len(rfcheck.backups(host)) == 1
    assert host.file(rfcheck.STATE_DIR + "/pending_acks.json").exists
    # Emptied, not removed: inside the sandbox /etc and /var/lib are read-only.
    for path in rfcheck.LEGACY_DIRS:
        left = host.run(f"ls -A {path} 2>/dev/null").stdout.split()
        assert left == [], f"{path} still holds {left}"

    rc, _out, recap = rfcheck.run_playbook(CONVERGE)
    assert rc == 0, "converge after the sandboxed migration failed; see playbook-runs.log"
    for path in rfcheck.LEGACY_DIRS:
        assert not host.file(path).exists, f"the role left the empty {path}"
    status = rfcheck.wait_for(lambda: rfcheck.checked_in_status(host), 30, what="a check-in")
    assert status["agent_id"] == legacy_again["agent_id"]
    assert status["legacy_present"] is False
    assert len(rfcheck.server_agents()) == 1, "the migrated host registered again"
    host.run(f"rm -rf {SAVE}")
