"""Preflight refuses a canary rollback that would have nothing to go back to (keep 1)."""

from __future__ import annotations

import pytest
from test_preflight import run_preflight

REFUSED = (
    "redflag_agent_rollback is true (site.yml's canary rollback) but "
    "redflag_agent_keep_versions is '1'"
)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("extra", "refused"),
    [
        ({"redflag_agent_rollback": True, "redflag_agent_keep_versions": 1}, True),
        ({"redflag_agent_rollback": True, "redflag_agent_keep_versions": 2}, False),
        ({"redflag_agent_rollback": False, "redflag_agent_keep_versions": 1}, False),
    ],
)
def test_rollback_needs_the_previous_version_kept(extra, refused, tmp_path):
    proc = run_preflight(extra, tmp_path)
    out = " ".join((proc.stdout + proc.stderr).split())
    assert (REFUSED in out) is refused, out[-3000:]
    if refused:
        assert proc.returncode != 0
        assert "set redflag_agent_keep_versions to 2 or more" in out
