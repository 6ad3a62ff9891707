"""Bad inventory input fails in preflight, naming the variable, before changing anything."""

from __future__ import annotations

import faultkit
import pytest
import rfcheck

BAD = [
    ("redflag_agent_server_url", "not a url"),
    ("redflag_agent_server_url", "http://127.0.0.1:8080/api/v1"),
    ("redflag_agent_check_in_interval", -5),
    ("redflag_agent_state", "sideways"),
]
WATCHED = (rfcheck.CONFIG, "/etc/redflag-agent", rfcheck.STATE_DIR, "/opt/redflag-agent",
           "/etc/systemd/system/redflag-agent.service")


@pytest.mark.parametrize(("var", "value"), BAD, ids=[f"{v}={x}" for v, x in BAD])
def test_bad_input_fails_in_preflight(host, case, var, value):
    case("bad inventory input",
         "converge with one bad variable each: " + "; ".join(f"{v}={x!r}" for v, x in BAD),
         "the play fails before any change (0 changed in the recap); the failure message "
         "names the variable and the bad value; agent files, unit file and unit state "
         "unchanged")
    before = faultkit.snapshot(host, *WATCHED)
    unit_before = rfcheck.unit_props(host, "ActiveState", "ExecMainStatus", "InvocationID")
    rc, output, _recap = rfcheck.run_playbook(faultkit.CONVERGE, {"rf_token_name": "",
                                                                  var: value})
    assert rc != 0, "the play accepted a bad value"
    fatal = output[output.index("fatal:"):]
    assert var in fatal and str(value) in fatal, fatal[:2000]
    hostname = host.check_output("hostname")
    assert _recap.get(hostname, {}).get("changed", 0) == 0, _recap
    assert faultkit.snapshot(host, *WATCHED) == before
    assert rfcheck.unit_props(host, "ActiveState", "ExecMainStatus", "InvocationID") == \
        unit_before
