"""systemd-analyze security for the role's units: the agent 3.0 or lower, its root
migration 1.5 or lower."""

from __future__ import annotations

import re

import rfcheck


def test_exposure_at_most_3(host, case):
    row = case("unit hardening",
               "`systemd-analyze security redflag-agent.service` on the converged host",
               "overall exposure level <= 3.0")
    out = rfcheck.run_ok(host, f"systemd-analyze security {rfcheck.UNIT} --no-pager")
    match = re.search(r"Overall exposure level for \S+: ([\d.]+)", out)
    assert match, out[-500:]
    exposure = float(match.group(1))
    assert exposure <= 3.0, out
    row.note(f"exposure {exposure:.1f}")


def test_migration_unit_exposure_at_most_1_5(host, case):
    row = case("migration unit hardening",
               f"`systemd-analyze security {rfcheck.MIGRATE_UNIT}` on the converged host",
               "overall exposure level <= 1.5 (runs as root: only CAP_CHOWN, CAP_FOWNER, "
               "CAP_DAC_OVERRIDE; writes only to the agent's and the legacy directories)")
    out = rfcheck.run_ok(host, f"systemd-analyze security {rfcheck.MIGRATE_UNIT} --no-pager")
    match = re.search(r"Overall exposure level for \S+: ([\d.]+)", out)
    assert match, out[-500:]
    exposure = float(match.group(1))
    assert exposure <= 1.5, out
    row.note(f"exposure {exposure:.1f}")
