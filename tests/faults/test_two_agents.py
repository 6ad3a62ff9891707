"""Two agents started at once on one host: one runs, the other exits 75 and says why; the
host is never enrolled twice."""

from __future__ import annotations

import pytest

from .conftest import stop, wait_until, write_config


@pytest.mark.parametrize("host", ["registered", "fresh, token, no state dir yet"])
def test_two_agents_started_together(agent, devserver, case, host):
    case("two agents started at once",
         "two `run` processes started back to back on the same root: a registered host, and "
         "a fresh host with a token whose state dir does not exist yet (both race to create "
         "it and to register)",
         "exactly one keeps running and checks in; the other exits 75 within seconds with "
         "'another redflag-agent instance is running' and the fix; the server has exactly "
         "one agent for the host")
    devserver.start()
    token = devserver.mint(seats=5)  # seats to spare: a double enrollment would succeed
    write_config(agent, {"version": "6", "server_url": devserver.url,
                         "registration_token": token},
                 state_dir=host == "registered")
    if host == "registered":
        assert agent.run("register").returncode == 0
    procs = [agent.start("run"), agent.start("run")]
    try:
        loser = wait_until(lambda: [p for p in procs if p.poll() is not None], timeout=20,
                           what="one of the two to exit")
        assert len(loser) == 1
        code, _, err = stop(loser[0])
        assert code == 75, err
        assert "another redflag-agent instance is running" in err
        assert "systemctl stop redflag-agent" in err
        winner = next(p for p in procs if p is not loser[0])
        wait_until(lambda: devserver.agents() and devserver.agents()[0]["checkins"] >= 1,
                   what="the winner's check-in")
        assert winner.poll() is None
    finally:
        results = [stop(p) for p in procs if p.poll() is None]
    assert [r[0] for r in results] == [0]
    assert len(devserver.agents()) == 1
    assert token not in err
