"""The root migration's sandbox, proved on its own and against issue 12's attack.

1. The installed redflag-agent-migrate.service runs a probe instead of the agent (a
   runtime drop-in resets ExecStart; every sandbox setting stays): as root it cannot
   write to /etc, /usr, /opt or /root, nor through a symlink the agent user planted in
   its own state directory, and it can write where the migration must (agent and legacy
   directories). Independent of the agent's code.
2. The agent itself: `migration_backups` replaced by a symlink to a directory in /etc,
   `version` removed from config.json and migration_state.json deleted (all in the
   agent's own directories), then one agent start (the migration runs as root): nothing
   appears in or changes under the foreign directory.
"""

from __future__ import annotations

import shlex
import time

import faultkit
import rfcheck

DROPIN_DIR = f"/run/systemd/system/{rfcheck.MIGRATE_UNIT}.d"
PROBE = "/opt/rf-sandbox-probe.sh"
TARGET = "/etc/rf-sandbox-target"
# Each attempt prints "<name> ok" or "<name> denied"; run as root inside the sandbox.
PROBE_SCRIPT = r"""#!/bin/sh
try() { name=$1; shift; if "$@" 2>/dev/null; then echo "$name ok"; else echo "$name denied"; fi; }
try etc touch /etc/rf-sandbox-escape
try usr touch /usr/rf-sandbox-escape
try opt touch /opt/redflag-agent/rf-sandbox-escape
try root touch /root/rf-sandbox-escape
try symlink touch /var/lib/redflag-agent/rf-link/escape
try chown-through-symlink chown redflag-agent /var/lib/redflag-agent/rf-link/keep
try state touch /var/lib/redflag-agent/rf-sandbox-ok
try config touch /etc/redflag-agent/rf-sandbox-ok
try legacy touch /etc/aggregator/rf-sandbox-ok
try chown-own chown redflag-agent /var/lib/redflag-agent/rf-sandbox-ok
exit 0
"""
WANT = {
    "etc": "denied", "usr": "denied", "opt": "denied", "root": "denied",
    "symlink": "denied", "chown-through-symlink": "denied",
    "state": "ok", "config": "ok", "legacy": "ok", "chown-own": "ok",
}  # fmt: skip


def _start_migration_unit(host) -> tuple[dict[str, str], str]:
    host.run(f"systemctl reset-failed {rfcheck.MIGRATE_UNIT}")
    host.run(f"systemctl start {rfcheck.MIGRATE_UNIT}")
    props = rfcheck.unit_props(host, "InvocationID", "Result", "ExecMainStatus",
                               unit=rfcheck.MIGRATE_UNIT)
    cmd = f"journalctl _SYSTEMD_INVOCATION_ID={props['InvocationID']} --no-pager -o cat"

    def complete() -> str | None:
        out = rfcheck.run_ok(host, cmd)
        return out if "chown-own" in out else None

    # journald may write the last lines a moment after the unit finished
    journal = rfcheck.wait_for(complete, 10, interval=0.5, what="the probe's output")
    return props, journal


def test_the_migration_sandbox_itself(host, case):
    row = case("root migration sandbox, on its own",
               "the installed redflag-agent-migrate.service with its ExecStart replaced by a "
               "probe (runtime drop-in, every sandbox setting kept), run as root: writes to "
               "/etc, /usr, /opt, /root and through a symlink the agent user planted "
               "(/var/lib/redflag-agent/rf-link -> /etc/rf-sandbox-target); then writes and "
               "chown in the agent's and a legacy directory",
               "every write outside the agent's and legacy directories is refused, nothing "
               "appears there; the writes the migration needs succeed")
    script = shlex.quote(PROBE_SCRIPT)
    rfcheck.run_ok(host, f"printf %s {script} > {PROBE} && chmod 0755 {PROBE}")
    rfcheck.run_ok(host, f"mkdir -p {TARGET} && touch {TARGET}/keep && "
                         "install -d -o redflag-agent -g redflag-agent /etc/aggregator && "
                         f"ln -sfn {TARGET} /var/lib/redflag-agent/rf-link && "
                         "chown -h redflag-agent: /var/lib/redflag-agent/rf-link")
    rfcheck.run_ok(host, f"mkdir -p {DROPIN_DIR} && printf '[Service]\\nExecStart=\\n"
                         f"ExecStart={PROBE}\\n' > {DROPIN_DIR}/probe.conf && "
                         "systemctl daemon-reload")
    before = faultkit.snapshot(host, TARGET)
    try:
        props, journal = _start_migration_unit(host)
        got = dict(line.split(" ", 1) for line in journal.splitlines()
                   if line.split(" ", 1)[0] in WANT)
        assert props["Result"] == "success", (props, journal)
        assert got == WANT, journal
        assert faultkit.snapshot(host, TARGET) == before
        leaked = host.run("ls -d /etc/rf-sandbox-escape /usr/rf-sandbox-escape "
                          "/opt/redflag-agent/rf-sandbox-escape /root/rf-sandbox-escape "
                          f"{TARGET}/escape 2>/dev/null").stdout.split()
        assert leaked == []
    finally:
        host.run(f"rm -rf {DROPIN_DIR} {PROBE} /var/lib/redflag-agent/rf-link "
                 "/var/lib/redflag-agent/rf-sandbox-ok /etc/redflag-agent/rf-sandbox-ok "
                 f"/etc/aggregator {TARGET}; systemctl daemon-reload; "
                 f"systemctl reset-failed {rfcheck.MIGRATE_UNIT}")
    row.note(f"{sum(v == 'denied' for v in WANT.values())} writes refused, "
             f"{sum(v == 'ok' for v in WANT.values())} allowed as planned; nothing outside")


def test_issue_12_backup_symlink_attack_writes_nothing_outside(host, case):
    row = case("root migration through a planted migration_backups symlink",
               "as the agent user could: /var/lib/redflag-agent/migration_backups replaced by "
               f"a symlink to {TARGET} (holding a root-owned file), `version` removed from "
               "config.json, migration_state.json deleted; then one agent start (the "
               "migration unit runs as root first)",
               f"nothing created, removed or changed (content, owner, mode) under {TARGET}; "
               "the agent (registered by now) keeps running or stops with 78; not restarted")
    save = "/root/rf-attack-save"
    rfcheck.run_ok(host, f"rm -rf {save} && mkdir -p {save} && "
                         f"cp -a {rfcheck.STATE_DIR} {save}/state && "
                         f"cp -a {rfcheck.CONFIG} {save}/config.json")
    rfcheck.run_ok(host, f"mkdir -p {TARGET} && echo root-only > {TARGET}/keep && "
                         f"chmod 0600 {TARGET}/keep")
    before = faultkit.snapshot(host, TARGET)
    script = (
        f"rm -rf {rfcheck.BACKUP_DIR} {rfcheck.STATE_DIR}/migration_state.json && "
        f"ln -s {TARGET} {rfcheck.BACKUP_DIR} && "
        f"python3 -c \"import json,sys; p=sys.argv[1]; c=json.load(open(p)); "
        f"c.pop('version', None); json.dump(c, open(p, 'w'))\" {rfcheck.CONFIG}"
    )
    rfcheck.run_ok(host, f"runuser -u redflag-agent -- sh -c {shlex.quote(script)}")
    try:
        # `systemctl restart` returns once the start job is done: the migration unit ran.
        faultkit.restart(host)
        migrate = rfcheck.unit_props(host, "Result", "ExecMainStatus", unit=rfcheck.MIGRATE_UNIT)
        # `run` then tries the migration too (as its user, in its own sandbox): let it.
        started = rfcheck.unit_props(host, "InvocationID")["InvocationID"]
        rfcheck.wait_for(lambda: "migrat" in rfcheck.run_ok(
            host, f"journalctl _SYSTEMD_INVOCATION_ID={started} --no-pager -o cat"), 20,
            interval=0.5, what="the agent's own migration attempt")
        time.sleep(2)
        assert faultkit.snapshot(host, TARGET) == before
        assert host.run(f"ls -A {TARGET}").stdout.split() == ["keep"]
        # Running on (the attempt failed inside the sandbox) or stopped with 78 (the agent
        # refused the planted symlink): either way final, never a restart loop.
        agent = rfcheck.unit_props(host, "ActiveState", "ExecMainStatus", "NRestarts")
        assert agent["NRestarts"] == "0", agent
        assert agent["ActiveState"] == "active" or agent["ExecMainStatus"] == "78", agent
    finally:
        host.run(f"systemctl stop {rfcheck.UNIT}; "
                 f"rm -rf {rfcheck.BACKUP_DIR} {rfcheck.STATE_DIR} {TARGET} && "
                 f"cp -a {save}/state {rfcheck.STATE_DIR} && "
                 f"cp -a {save}/config.json {rfcheck.CONFIG} && rm -rf {save}; "
                 f"systemctl reset-failed {rfcheck.MIGRATE_UNIT}; systemctl start {rfcheck.UNIT}")
    state = "active" if agent["ActiveState"] == "active" else f"exit {agent['ExecMainStatus']}"
    row.note(f"nothing under {TARGET} changed; migration unit {migrate['Result']} "
             f"(exit {migrate['ExecMainStatus']}); agent {state}, 0 restarts")
