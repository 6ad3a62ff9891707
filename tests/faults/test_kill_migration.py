"""kill -9 during each migration phase, through the CLI the units run (`migrate` in
redflag-agent-migrate.service, then `run`): the next start completes, the identity is
intact, one backup."""

from __future__ import annotations

import json

import pytest

from agent.migration_fixtures import make_legacy, write_json
from agent.test_migration_crash import POINTS, _assert_finished, _legacy_only
from redflag_agent.migration.faults import FAULT_ENV, KILLED_STATUS
from redflag_agent.paths import Paths

from .conftest import stop, tree, wait_until

DONE = ("legacy 0.1.18 host; `migrate` (redflag-agent-migrate.service) killed with exit 137 "
        "at the fault point (os._exit, as kill -9); then the next start (`migrate` again)")
CHECKED = ("exit 137 at the point; next start exit 0; config v6 with the same agent_id/"
           "tokens and unknown keys kept; legacy dirs gone; exactly one backup holding the "
           "legacy originals byte for byte; a third start writes nothing")


@pytest.mark.parametrize("point", POINTS)
def test_kill_during_migrate_then_next_start_completes(agent, case, point):
    case("kill -9 during each migration phase (`migrate`)", DONE, CHECKED)
    paths = Paths(agent.root)
    make_legacy(paths)
    legacy_before = _legacy_only(paths)
    killed = agent.run("migrate", **{FAULT_ENV: point})
    assert killed.returncode == KILLED_STATUS, killed.stderr
    done = agent.run("migrate")
    assert done.returncode == 0, done.stderr
    _assert_finished(paths, legacy_before)
    before = tree(agent.root)
    again = agent.run("migrate")
    assert again.returncode == 0 and again.stdout.strip() == "nothing to migrate"
    assert tree(agent.root) == before
    case.note("11 fault points: backup before/mid/after, directory before/verified/removing/"
              "after, config and security before/after")


@pytest.mark.parametrize("point", ["backup:mid", "directory:removing", "config:after"])
def test_kill_during_run_then_run_checks_in_with_the_same_identity(make_agent, devserver, case,
                                                                   point):
    """The identity lives on the server: after the kill, the restarted agent checks in as the
    same agent and never registers again."""
    case("kill -9 during the migration inside `run`, then restart against the server",
         "host registered with the stand-in server under the legacy layout; `run` killed at "
         "the fault point while migrating; `run` started again",
         "the restart migrates once, checks in with the original agent_id (reported as migrated "
         "from 0.1.18); the server still has exactly one agent; no second registration; one "
         "backup")
    devserver.start()
    # a real identity from the server, then laid out as agent 0.1.18 kept it
    enroll = make_agent("enroll")
    enroll.run("config", "apply", stdin=json.dumps(
        {"settings": {"server_url": devserver.url}, "registration_token": devserver.mint()}))
    assert enroll.run("register").returncode == 0
    ident = json.loads((enroll.root / "etc/redflag-agent/config.json").read_text())
    agent = make_agent("host")
    paths = Paths(agent.root)
    make_legacy(paths, state_files=True)
    legacy = json.loads(paths.legacy_config_file.read_text())
    legacy.update(server_url=devserver.url, agent_id=ident["agent_id"], token=ident["token"],
                  refresh_token=ident["refresh_token"])
    legacy.pop("registration_token")
    legacy["tls"] = {}
    write_json(paths.legacy_config_file, legacy, 0o644)
    killed = agent.run("run", **{FAULT_ENV: point})
    assert killed.returncode == KILLED_STATUS, killed.stderr
    proc = agent.start("run")
    try:
        wait_until(lambda: devserver.agents()[0]["checkins"] >= 1,
                   what="the check-in after the restart")
    finally:
        code, _, err = stop(proc)
    assert code == 0, err
    agents = devserver.agents()
    assert len(agents) == 1 and agents[0]["agent_id"] == ident["agent_id"]
    assert agents[0]["migrated_from"] == "0.1.18"
    st = agent.status()
    assert st["agent_id"] == ident["agent_id"] and st["identity_source"] == "current"
    assert st["legacy_present"] is False and len(st["backups"]) == 1
    assert st["migrations_pending"] == [] and "registered with" not in err
