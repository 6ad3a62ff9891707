"""The restart loop's litter: removed after the migration succeeded (never followed), kept
when it may hold the only copy of an identity, reported, recorded, bounded in time."""

from __future__ import annotations

import json
import os
import time

import pytest

from redflag_agent import migration
from redflag_agent.migration import litter as littermod
from redflag_agent.migration.backup import list_backups

from .migration_fixtures import (
    AGENT_ID,
    OTHER_ID,
    REFRESH,
    SECRETS,
    V02_ID,
    fresh_config,
    make_current,
    make_litter,
    make_v0119,
    make_v02,
    quiet_logger,
    read_json,
    tree,
    write_json,
)
from .test_cli import cli


@pytest.fixture(autouse=True)
def _not_in_container(monkeypatch):
    monkeypatch.delenv("container", raising=False)


def _run(paths, **kw):
    return migration.execute(paths, quiet_logger(), **kw)


def _litter_left(paths):
    return sorted(n for n in os.listdir(paths.state_dir) if n.startswith("migration_backups_"))


def test_seed_host_litter_removed_reported_and_recorded(tmp_root):
    make_v0119(tmp_root, litter=40)
    report = _run(tmp_root)
    assert report.ok, report.message
    assert report.phases_done == ["takeover", "config", "security", "litter"]
    assert report.litter["removed"] == 40 and report.litter["kept"] == 0
    assert report.litter["bytes_freed"] >= 40 * 3 * 4096 // 8  # 3 small files each, at least
    assert _litter_left(tmp_root) == []
    assert "40 removed" in report.message
    state = read_json(tmp_root.migration_state_file)
    assert "litter" in state["completed"] and state["litter"]["removed"] == 40
    # the identity survived: the litter's copies held none
    assert read_json(tmp_root.config_file)["agent_id"] == AGENT_ID
    # litter is not in the backup (copies of copies); the upstream config is
    assert list_backups(tmp_root) == [report.backup]
    backup = tmp_root.backups_dir / report.backup
    assert not any("migration_backups_" in str(p) for p in backup.rglob("*"))
    # the next start does no work, and lists nothing
    before = tree(tmp_root.root)
    again = _run(tmp_root)
    assert again.ok and again.phases_done == [] and again.litter is None
    assert tree(tmp_root.root) == before


def test_litter_holding_the_only_copy_of_an_identity_is_kept(tmp_root):
    make_v0119(tmp_root, litter=3)
    foreign = make_litter(tmp_root, 1, {"agent_id": OTHER_ID, "refresh_token": "r-other"},
                          start=100)[0]
    same = make_litter(tmp_root, 1, {"agent_id": AGENT_ID, "refresh_token": REFRESH},
                       start=200)[0]
    newer_token = make_litter(tmp_root, 1, {"agent_id": AGENT_ID, "refresh_token": "r-2"},
                              start=300)[0]
    broken = make_litter(tmp_root, 1, start=400)[0]
    (broken / "config.json").write_text("{torn")
    nested = make_litter(tmp_root, 1, start=500)[0]
    write_json(nested / "etc" / "config.json", {"agent_id": V02_ID, "token": "t"})
    report = _run(tmp_root)
    assert report.ok, report.message
    kept = {e["path"].rsplit("/", 1)[1]: e["reason"] for e in report.litter["kept_entries"]}
    assert set(kept) == {foreign.name, newer_token.name, broken.name, nested.name}
    assert OTHER_ID in kept[foreign.name] and "refresh token" in kept[newer_token.name]
    assert "cannot be inspected" in kept[broken.name]
    assert report.litter["removed"] == 4  # 3 loop copies + the one with the same identity
    assert not same.exists() and foreign.exists() and broken.exists()
    assert not any(s in json.dumps(report.to_dict()) for s in SECRETS)
    # recorded with the reasons: the kept ones are not looked at again
    state = read_json(tmp_root.migration_state_file)
    assert state["litter"]["kept"] == 4
    assert migration.plan(tmp_root).phases == []


def test_symlinked_litter_entry_is_unlinked_never_followed(tmp_root, tmp_path):
    """A litter entry that is a symlink to a directory outside (with a config.json holding
    another identity, and files): the link goes, the target stays byte for byte."""
    make_v0119(tmp_root, litter=2)
    decoy = tmp_path / "outside"
    decoy.mkdir()
    write_json(decoy / "config.json", {"agent_id": OTHER_ID, "refresh_token": "decoy"})
    (decoy / "precious").write_text("do not touch")
    link = tmp_root.state_dir / "migration_backups_2025-02-01-000000"
    link.symlink_to(decoy)
    # inside a real litter dir: a config.json symlink and a subdir symlink, both outside
    inner = make_litter(tmp_root, 1, start=50)[0]
    (inner / "config.json").unlink()
    (inner / "config.json").symlink_to(decoy / "config.json")
    (inner / "sub").symlink_to(decoy)
    decoy_before = tree(decoy)
    report = _run(tmp_root)
    assert report.ok, report.message
    assert report.litter["removed"] == 4 and report.litter["kept"] == 0
    assert not os.path.lexists(link) and not inner.exists()
    assert tree(decoy) == decoy_before


def test_surplus_in_our_backups_dir_and_0_2_backups(tmp_root):
    make_v02(tmp_root, backups=3)
    make_litter(tmp_root, 2)
    tmp_root.backups_dir.mkdir(parents=True)
    (tmp_root.backups_dir / "2024-12-01-101010").mkdir()  # the old agent's, not ours
    write_json(tmp_root.backups_dir / "2024-12-01-101010" / "config.json",
               {"server_url": "x"})
    ours = tmp_root.backups_dir / "20260101T000000Z"
    ours.mkdir()
    write_json(ours / "manifest.json", {"format": 1, "name": ours.name, "entries": []})
    (tmp_root.backups_dir / "README.txt").write_text("a file: not litter")
    report = _run(tmp_root)
    assert report.ok, report.message
    assert report.litter["removed"] == 2 + 1 + 3, report.litter
    assert ours.is_dir() and (tmp_root.backups_dir / "README.txt").exists()
    assert not (tmp_root.backups_dir / "2024-12-01-101010").exists()
    assert not tmp_root.upstream_lib_dir.exists(), "0.2's state dir goes with its backups"
    assert read_json(tmp_root.config_file)["agent_id"] == V02_ID


def test_kept_0_2_backup_keeps_its_directory(tmp_root):
    make_v02(tmp_root)
    b = tmp_root.v02_backups_dir / "old"
    b.mkdir()
    write_json(b / "config.json", {"agent_id": OTHER_ID, "refresh_token": "r"})
    report = _run(tmp_root)
    assert report.ok and report.litter["kept"] == 1
    assert b.is_dir() and not (tmp_root.v02_state_dir / "cache").exists()


def test_a_failed_litter_removal_rolls_nothing_back_and_is_retried(tmp_root, monkeypatch):
    make_v0119(tmp_root, litter=3)

    def broken(*_a, **_k):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(littermod, "remove", broken)
    report = _run(tmp_root)
    assert not report.ok and report.failed_phase == "litter"
    assert report.config_usable and "nothing was rolled back" in report.message
    assert read_json(tmp_root.config_file)["agent_id"] == AGENT_ID
    assert not tmp_root.v0119_config_file.exists()
    state = read_json(tmp_root.migration_state_file)
    assert state["completed"] == ["takeover", "config", "security"]
    assert state["failures"]["litter"]["attempts"] == 1
    monkeypatch.undo()
    assert migration.plan(tmp_root).phases == ["litter"]
    again = _run(tmp_root)
    assert again.ok and again.litter["removed"] == 3 and _litter_left(tmp_root) == []


def test_migrate_json_reports_the_litter(tmp_root, agent_env):
    make_v0119(tmp_root, litter=5)
    res = cli(tmp_root, agent_env, "migrate", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["litter"]["removed"] == 5 and out["litter"]["kept"] == 0
    assert out["litter"]["bytes_freed"] > 0
    human = cli(tmp_root, agent_env, "migrate")
    assert human.returncode == 0 and human.stdout.strip() == "nothing to migrate"
    st = json.loads(cli(tmp_root, agent_env, "status", "--json").stdout)
    assert st["upstream_layout"] == "0.1.19-0.1.23" and st["registered"] is True


LITTER_DIRS = 3000
BOUND_SECONDS = 60.0  # generous: 2 shared cores; measured well below (see the report)


@pytest.mark.slow
def test_a_day_of_the_loop_is_removed_in_bounded_time(tmp_root, capsys):
    make_current(tmp_root, fresh_config(True))
    make_v0119(tmp_root, litter=LITTER_DIRS)
    t0 = time.monotonic()
    report = _run(tmp_root)
    took = time.monotonic() - t0
    assert report.ok and report.litter["removed"] == LITTER_DIRS
    assert _litter_left(tmp_root) == []
    with capsys.disabled():
        print(f"\n{LITTER_DIRS} litter dirs: migrate {took:.2f} s, "
              f"{report.litter['bytes_freed']} bytes freed")
    assert took < BOUND_SECONDS


# `make prove` found it: a surplus backup inside our own migration_backups, and no other sign of
# an upstream agent, was not looked for at the first start; a clone's set-aside identity then
# made identity_backups/ appear, the litter looked due, and the next start migrated (and took a
# backup) after all. The agent's own subdirectories are no sign of an upstream agent.
@pytest.mark.parametrize(("extra_dirs", "expect"), [
    ((), []),
    (("identity_backups",), []),
    (("identity_backups", "cache-of-someone-else"), ["litter", "security"]),
    (("cache-of-someone-else",), ["litter", "security"]),
])
def test_only_foreign_subdirs_make_surplus_backups_look_due(tmp_root, extra_dirs, expect):
    surplus = tmp_root.backups_dir / "2025-01-01-000030"
    surplus.mkdir(parents=True)
    write_json(surplus / "config.json", {"server_url": "x"})
    for name in extra_dirs:
        (tmp_root.state_dir / name).mkdir()
    assert sorted(migration.plan(tmp_root).phases) == sorted(expect)
