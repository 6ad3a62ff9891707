"""Corrupt config under systemd: exit 78, no restart loop, the file untouched."""

from __future__ import annotations

import faultkit
import pytest
import rfcheck

CORRUPT = [("truncated JSON", '{"version": "6", "server_url": "http://127.0.0.1:9'),
           ("UTF-8 BOM", '\ufeff{"version": "6"}')]


@pytest.mark.parametrize(("kind", "text"), CORRUPT, ids=[c[0] for c in CORRUPT])
def test_corrupt_config_stops_with_78_and_no_loop(host, case, kind, text):
    case("corrupt config.json under systemd",
         "config.json overwritten with broken bytes (" + ", ".join(c[0] for c in CORRUPT)
         + "), `systemctl restart`, then waited past RestartSec (30 s)",
         "the unit ends failed with status 78; NRestarts 0 after RestartSec; the journal "
         "names the file; config.json byte-identical to the broken bytes")
    original = host.file(rfcheck.CONFIG).content
    try:
        rfcheck.run_ok(host, f"cp -p {rfcheck.CONFIG} /root/config.json.orig")
        host.run(f"printf '%s' '{text}' > {rfcheck.CONFIG}")
        broken = faultkit.snapshot(host, rfcheck.CONFIG)
        faultkit.restart(host)
        faultkit.wait_settled(host)
        props = faultkit.past_restart_sec(host)
        assert props["NRestarts"] == "0", f"systemd restarted the agent: {props}"
        assert props["ActiveState"] in ("inactive", "failed"), props
        journal = rfcheck.journal_text(host)
        assert rfcheck.CONFIG in journal
        assert "status=78" in journal, "no process of the unit exited 78"
        assert faultkit.snapshot(host, rfcheck.CONFIG) == broken
    finally:
        rfcheck.run_ok(host, f"cp -p /root/config.json.orig {rfcheck.CONFIG}")
    assert host.file(rfcheck.CONFIG).content == original
