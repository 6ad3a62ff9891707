"""kill -9 at every point of a migration (fault injection in a subprocess), then the next start
finishes the job: identity intact, legacy gone, exactly one backup, then nothing more."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from redflag_agent import migration
from redflag_agent.migration.backup import list_backups
from redflag_agent.migration.faults import FAULT_ENV, KILLED_STATUS

from .migration_fixtures import (
    AGENT_ID,
    JWT,
    REFRESH,
    contents,
    make_legacy,
    read_json,
    tree,
)

# another interpreter (e.g. a Python 3.9) can be checked with REDFLAG_TEST_PYTHON
PYTHON = os.environ.get("REDFLAG_TEST_PYTHON", sys.executable)
SCRIPT = (
    "import logging, sys\n"
    "from redflag_agent.migration import execute\n"
    "from redflag_agent.paths import Paths\n"
    "logging.basicConfig(level=logging.INFO)\n"
    "r = execute(Paths.from_env(), logging.getLogger('migration'))\n"
    "print(r.message)\n"
    "sys.exit(0 if r.ok else 1)\n"
)

POINTS = [
    "backup:before", "backup:mid", "backup:after",
    "directory:before", "directory:verified", "directory:removing", "directory:after",
    "config:before", "config:after",
    "security:before", "security:after",
]


def _run(root, make_env, fault: str = "") -> subprocess.CompletedProcess:
    extra = {FAULT_ENV: fault} if fault else {}
    env = make_env(root, **extra)
    env.pop("container", None)
    return subprocess.run([PYTHON, "-c", SCRIPT], env=env, capture_output=True, text=True,
                          timeout=60, check=False)


def _assert_finished(paths, legacy_before) -> None:
    cfg = read_json(paths.config_file)
    assert (cfg["agent_id"], cfg["token"], cfg["refresh_token"]) == (AGENT_ID, JWT, REFRESH)
    assert "registration_token" not in cfg  # never beside a complete identity
    assert cfg["machine_id"] == "m-0123456789" and cfg["version"] == "6"
    assert not paths.legacy_config_dir.exists() and not paths.legacy_state_dir.exists()
    backups = list_backups(paths)
    assert len(backups) == 1, backups
    assert sorted(os.listdir(paths.backups_dir)) == backups, "no partial backup left behind"
    # the one backup was taken before the first change: it holds the legacy originals
    files = paths.backups_dir / backups[0] / "files"
    for rel, info in legacy_before.items():
        if info[0] == "f":
            assert (files / rel).read_bytes() == info[2], rel
    state = read_json(paths.migration_state_file)
    assert state["completed"] == ["directory", "config", "security"]
    assert "in_progress" not in state and state["failures"] == {}
    assert migration.migrated_from(paths) == "0.1.18"


def _legacy_only(paths) -> dict:
    return {rel: info for rel, info in contents(paths.root).items()
            if rel.startswith(("etc/aggregator/", "var/lib/aggregator/"))}


@pytest.mark.parametrize("point", POINTS)
def test_kill_at_each_point_then_next_start_finishes(tmp_root, agent_env, point):
    make_legacy(tmp_root)
    legacy_before = _legacy_only(tmp_root)
    killed = _run(tmp_root.root, agent_env, fault=point)
    assert killed.returncode == KILLED_STATUS, killed.stderr
    # between the kill and the restart the host is readable: old state or new, never torn
    assert migration.plan(tmp_root).error is None
    done = _run(tmp_root.root, agent_env)
    assert done.returncode == 0, done.stdout + done.stderr
    _assert_finished(tmp_root, legacy_before)
    before = tree(tmp_root.root)
    again = _run(tmp_root.root, agent_env)
    assert again.returncode == 0 and "nothing to migrate" in again.stdout
    assert tree(tmp_root.root) == before


def test_killed_twice_at_different_points_still_one_backup(tmp_root, agent_env):
    make_legacy(tmp_root)
    legacy_before = _legacy_only(tmp_root)
    for point in ("directory:verified", "config:after"):
        assert _run(tmp_root.root, agent_env, fault=point).returncode == KILLED_STATUS
    assert _run(tmp_root.root, agent_env).returncode == 0
    _assert_finished(tmp_root, legacy_before)


def test_killed_at_every_start_gives_up_and_restores(tmp_root, agent_env):
    """A migration that dies at each start (OOM, a crashing phase) is not resumed forever."""
    make_legacy(tmp_root)
    tmp_root.config_dir.mkdir(parents=True)
    tmp_root.state_dir.mkdir(parents=True)
    before = contents(tmp_root.root)
    for _ in range(3):
        assert _run(tmp_root.root, agent_env, fault="config:before").returncode == KILLED_STATUS
    last = _run(tmp_root.root, agent_env, fault="config:before")
    assert last.returncode == 1
    assert "interrupted 3 times" in last.stdout
    assert contents(tmp_root.root) == before
    state = read_json(tmp_root.migration_state_file)
    assert state["failures"]["config"]["attempts"] == 1 and "in_progress" not in state
    assert len(list_backups(tmp_root)) == 1
