"""redflag_agent_state=image passes the role's input checks (argument_specs and preflight).

An image is installed and configured as present (the URL and settings are checked) but
enrolls nothing, so the token checks do not apply to it. Runs the real role with
`--tags redflag_agent_preflight` over the local connection (read-only)."""

from __future__ import annotations

import pytest
from test_preflight import PID1_IS_SYSTEMD, run_preflight

IMAGE = {"redflag_agent_state": "image"}
TOKEN_CHECKS = ("redflag_agent_require_token is true but",
                "redflag_agent_force_reregister is true but")


def flat(proc) -> str:
    return " ".join((proc.stdout + proc.stderr).split())


@pytest.mark.slow
def test_image_is_an_accepted_state_and_needs_no_token(tmp_path):
    proc = run_preflight({**IMAGE, "redflag_agent_require_token": True,
                          "redflag_agent_force_reregister": True}, tmp_path)
    out = flat(proc)
    assert "redflag_agent_state is" not in out and "value of redflag_agent_state" not in out, out
    for fragment in TOKEN_CHECKS:
        assert fragment not in out, out[-3000:]
    if PID1_IS_SYSTEMD:
        assert proc.returncode == 0, out[-3000:]
    else:
        # an image runs the agent's unit like present: a host without systemd is refused
        assert proc.returncode != 0
        assert "Check systemd is PID 1" in out, out[-3000:]


@pytest.mark.slow
def test_image_checks_the_settings_like_present(tmp_path):
    proc = run_preflight({**IMAGE, "redflag_agent_server_url": "ftp://x"}, tmp_path)
    assert proc.returncode != 0
    assert "redflag_agent_server_url is 'ftp://x'; set it to" in flat(proc)


@pytest.mark.slow
def test_unknown_state_names_image_as_a_choice(tmp_path):
    proc = run_preflight({"redflag_agent_state": "gone"}, tmp_path)
    out = flat(proc)
    assert proc.returncode != 0 and "image" in out.split("redflag_agent_state", 1)[1][:400], out
