"""The server refuses the registration token (unknown, seats used up, expired): `run` exits
77, which the unit lists in RestartPreventExitStatus, and keeps the token for the operator."""

from __future__ import annotations

import json
import time

import pytest

from .conftest import stop, tree, wait_until, write_config


def _enroll(agent, url: str, token: str) -> None:
    write_config(agent, {"version": "6", "server_url": url, "check_in_interval": 300,
                         "registration_token": token})


@pytest.mark.parametrize("why", ["unknown token", "seats used up", "expired", "revoked"])
def test_rejected_token_exits_77(make_agent, devserver, case, why):
    case("registration token rejected by the server",
         "agent with a token the stand-in server refuses: never minted; its one seat taken by "
         "another host first; minted with --expires 1s and used 1.5 s later; revoked; `run` "
         "started three times (what systemd would do without RestartPreventExitStatus)",
         "every `run` exits 77 within seconds with a message naming the cause and the fix, "
         "no token in the output; the config keeps the token (byte-identical); the server "
         "has no agent for this host; status.json records the exit reason")
    devserver.start()
    if why == "unknown token":
        token = "rf-never-minted-" + "0" * 24
    elif why == "seats used up":
        token = devserver.mint(seats=1)
        first = make_agent("first")
        _enroll(first, devserver.url, token)
        proc = first.start("run")
        try:
            wait_until(devserver.agents, what="the first host's registration")
        finally:
            stop(proc)
    elif why == "expired":
        token = devserver.mint(expires="1s")
        time.sleep(1.5)
    else:
        token = devserver.mint()
        devserver.admin("revoke-token", stdin=token + "\n")
    agents_before = devserver.agents()
    agent = make_agent("host")
    config = write_config(agent, {"version": "6", "server_url": devserver.url,
                                  "registration_token": token})
    cfg_bytes = config.read_bytes()
    for _ in range(3):
        t0 = time.monotonic()
        res = agent.run("run", timeout=30)
        took = time.monotonic() - t0
        assert res.returncode == 77, res.stderr
        assert "rejected the registration token" in res.stderr and "mint a new token" in res.stderr
        assert token not in res.stderr + res.stdout
        assert took < 10
    assert config.read_bytes() == cfg_bytes
    assert devserver.agents() == agents_before
    status = json.loads((agent.root / "var/lib/redflag-agent/status.json").read_text())
    assert "77" in status["last_exit_reason"] and "rejected" in status["last_error"]
    assert token not in json.dumps(status)
    before = tree(agent.root)
    assert agent.run("run").returncode == 77
    after = tree(agent.root)
    assert set(after) == set(before), "a 77 start created or removed files"
    changed = {k for k, v in after.items() if before[k] != v and v[3] is not None}
    assert changed <= {"var/lib/redflag-agent/status.json"}, changed


def test_refresh_token_rejected_exits_77(make_agent, devserver, case):
    case("refresh token rejected (agent deleted on the server)",
         "registered agent; the server deletes it (a copy of the host unregisters); `run` "
         "once its access token has lapsed (server --jwt-ttl 1s)",
         "exit 77 naming the refresh token and the fix; config.json byte-identical")
    devserver.start("--jwt-ttl", "1s")
    agent = make_agent("host")
    _enroll(agent, devserver.url, devserver.mint())
    assert agent.run("register").returncode == 0
    cfg = (agent.root / "etc/redflag-agent/config.json").read_bytes()
    # a copy of the host unregisters, so the server no longer knows this identity
    twin = make_agent("twin")
    write_config(twin, raw=cfg)
    assert twin.run("unregister").returncode == 0
    time.sleep(1.2)
    res = agent.run("run", timeout=30)
    assert res.returncode == 77, res.stderr
    assert "refresh token" in res.stderr
    assert (agent.root / "etc/redflag-agent/config.json").read_bytes() == cfg
