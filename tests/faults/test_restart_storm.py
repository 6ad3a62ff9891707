"""A restart storm (what `Restart=always` does to an agent that cannot work): 50 starts of an
unregistered agent without a token write zero bytes under the state dir, zero backups."""

from __future__ import annotations

import time

import pytest

from agent.migration_fixtures import make_legacy
from redflag_agent.paths import Paths

from .conftest import tree, write_config

STARTS = 50


def _storm(agent, paths: Paths) -> tuple[float, set[str]]:
    t0 = time.monotonic()
    messages: set[str] = set()
    for _ in range(STARTS):
        mig = agent.run("migrate")  # redflag-agent-migrate.service (root, sandboxed)
        assert mig.returncode == 0, mig.stderr
        res = agent.run("run")
        assert res.returncode == 78, res.stderr
        messages.add(res.stderr.strip())
    return time.monotonic() - t0, messages


@pytest.mark.parametrize("host", ["fresh install", "migrated earlier, identity dropped"])
def test_fifty_starts_of_an_unregistered_agent_write_nothing(agent, case, host):
    row = case("restart storm: 50 starts, unregistered, no token",
               "50 unit starts (`migrate` then `run`) on: a fresh install as the role lays it "
               "down (config with server_url, no token); a host migrated from 0.1.18 earlier "
               "whose identity was since removed",
               "every `migrate` exits 0 and every `run` exits 78 with the same single message; "
               "the state dir (/var/lib/redflag-agent) is identical, mtimes included, after "
               "all 50; backups before == after")
    paths = Paths(agent.root)
    if host == "fresh install":
        write_config(agent, {"version": "6", "server_url": "http://127.0.0.1:9",
                             "check_in_interval": 300})
    else:
        make_legacy(paths)
        paths.config_dir.mkdir(parents=True)
        paths.state_dir.mkdir(parents=True)
        assert agent.run("migrate").returncode == 0
        cfg = paths.config_file.read_text()
        for key in ("agent_id", "token", "refresh_token"):
            assert key in cfg
        assert "registration_token" not in cfg  # never beside a complete identity
        import json  # noqa: PLC0415

        data = json.loads(cfg)
        for key in ("agent_id", "token", "refresh_token"):
            data.pop(key)
        write_config(agent, data)
    backups_before = sorted(p.name for p in paths.backups_dir.glob("*"))
    state_before = tree(paths.state_dir)
    config_before = tree(paths.config_dir)
    elapsed, messages = _storm(agent, paths)
    assert tree(paths.state_dir) == state_before, "the storm wrote under the state dir"
    assert tree(paths.config_dir) == config_before
    assert sorted(p.name for p in paths.backups_dir.glob("*")) == backups_before
    assert len(messages) == 1 and "not registered and no registration token" in messages.pop()
    row.note(f"{host}: {STARTS} starts in {elapsed:.1f} s, 0 bytes written, "
             f"{len(backups_before)} backup(s) before and after")
