"""Restart storm on an unregistered host (converged without a token): 50 starts by
`systemctl restart` (each running the sandboxed migration unit first) write zero bytes
under /var/lib/redflag-agent and make zero backups."""

from __future__ import annotations

import time

import faultkit
import rfcheck

STARTS = 50


def test_fifty_restarts_write_nothing(host, case):
    row = case("restart storm under systemd (50 x `systemctl restart`), unregistered",
               "host converged without a token (agent waits, exit 78); 50 times: "
               "`systemctl reset-failed; systemctl restart redflag-agent`, each start run to "
               "its end (redflag-agent-migrate.service: migrate as root in its sandbox, "
               "then run)",
               "every start runs the migration unit once (exit 0) and ends with exit 78 "
               "and NRestarts 0; /var/lib/redflag-agent identical (sizes, mtimes, modes, "
               "sha256) after all 50; zero backups; the config untouched")
    first = faultkit.wait_settled(host)
    assert first["ExecMainStatus"] == "78", first
    before = faultkit.snapshot(host, rfcheck.STATE_DIR, rfcheck.CONFIG)
    t0 = time.monotonic()
    loop = (f"for i in $(seq {STARTS}); do systemctl reset-failed {rfcheck.UNIT}; "
            f"systemctl restart {rfcheck.UNIT}; "
            f"while s=$(systemctl show -p ActiveState --value {rfcheck.UNIT}); "
            "[ \"$s\" = active ] || [ \"$s\" = activating ]; do sleep 0.05; done; "
            f"echo $(systemctl show -p ExecMainStatus --value {rfcheck.UNIT}) "
            f"$(systemctl show -p ExecMainStartTimestampMonotonic -p ExecMainStatus "
            f"--value {rfcheck.MIGRATE_UNIT}); done")
    rows = [line.split() for line in rfcheck.run_ok(host, loop).splitlines()]
    took = time.monotonic() - t0
    assert [r[0] for r in rows] == ["78"] * STARTS, rows
    # The migration unit ran at every start (a new start time each), and found nothing to do.
    assert len({r[1] for r in rows}) == STARTS, rows
    assert [r[2] for r in rows] == ["0"] * STARTS, rows
    props = rfcheck.unit_props(host, "NRestarts", "ExecMainStatus")
    assert props == {"NRestarts": "0", "ExecMainStatus": "78"}
    assert faultkit.snapshot(host, rfcheck.STATE_DIR, rfcheck.CONFIG) == before
    assert rfcheck.backups(host) == [] and rfcheck.legacy_style_backups(host) == []
    row.note(f"{STARTS} starts in {took:.0f} s, all exit 78, 0 bytes written, 0 backups")
