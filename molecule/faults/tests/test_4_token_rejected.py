"""A registration token the server refuses: the unit stops with 77 and is not restarted."""

from __future__ import annotations

import faultkit
import pytest
import rfcheck

from devserver import mint


@pytest.mark.parametrize("kind", ["revoked", "never minted"])
def test_rejected_token_stops_with_77(host, case, kind):
    case("token rejected under systemd",
         "converge with a registration token the stand-in server refuses (revoked; never "
         "minted), then waited past RestartSec",
         "the unit's main process exits 77; NRestarts 0 after RestartSec; the journal "
         "says the token was rejected and never shows it; the server has no agent")
    name = f"rejected_{kind.replace(' ', '_')}"
    if kind == "revoked":
        mint(rfcheck.state_dir(), name, 1, revoke=True)
    else:
        path = rfcheck.state_dir() / name
        path.write_text("rf-never-minted-0000000000000000\n")
        path.chmod(0o600)
    token = rfcheck.token_file_text(name)
    rc, output, _recap = rfcheck.run_playbook(faultkit.CONVERGE, {"rf_token_name": name})
    assert token not in output
    props = faultkit.wait_settled(host)
    assert props["ExecMainStatus"] == "77", (props, rc)
    props = faultkit.past_restart_sec(host)
    assert props["NRestarts"] == "0", f"systemd restarted the agent: {props}"
    journal = rfcheck.journal_text(host)
    assert token not in journal, "token in the journal"
    assert "rejected the registration token" in journal, journal[-3000:]
    assert rfcheck.server_agents() == []
