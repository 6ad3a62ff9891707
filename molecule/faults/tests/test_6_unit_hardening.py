"""systemd-analyze security for the role's unit: exposure 3.0 or lower."""

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
