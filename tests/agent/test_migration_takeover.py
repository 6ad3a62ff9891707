"""Taking over each upstream layout: identity kept, schema 6, unknown keys kept, one backup
holding the upstream originals, upstream files removed, a second run writes nothing."""

from __future__ import annotations

import json

import pytest

from redflag_agent import migration, status
from redflag_agent.migration.backup import list_backups, load_manifest
from redflag_agent.migration.faults import FAULT_ENV
from redflag_agent.migration.layouts import LAYOUT_0118, LAYOUT_0119, LAYOUT_02

from .migration_fixtures import (
    AGENT_ID,
    JWT,
    OTHER_ID,
    REFRESH,
    SECRETS,
    V02_ID,
    V02_JWT,
    V02_REFRESH,
    contents,
    fresh_config,
    legacy_config,
    make_current,
    make_legacy,
    make_v0119,
    make_v02,
    quiet_logger,
    read_json,
    tree,
    upstream_files,
    v0119_config,
    v02_config,
    write_json,
)


@pytest.fixture(autouse=True)
def _not_in_container(monkeypatch):
    monkeypatch.delenv("container", raising=False)


def _run(paths, **kw):
    return migration.execute(paths, quiet_logger(), **kw)


def _backup_files(paths, name):
    """path below the root -> bytes, of every file the one backup stored."""
    manifest = load_manifest(paths, name)
    base = paths.backups_dir / name
    return {e["path"]: (base / e["stored"]).read_bytes() for e in manifest["entries"]
            if e["type"] == "file" and e["existed"]}


LAYOUT_CASES = [
    # (id, builder, identity expected, upstream_layout, migrated_from)
    ("0.1.19-0.1.23", make_v0119, (AGENT_ID, JWT, REFRESH), LAYOUT_0119, LAYOUT_0119),
    ("0.2", make_v02, (V02_ID, V02_JWT, V02_REFRESH), LAYOUT_02, "0.2.4"),
]


@pytest.mark.parametrize(("builder", "expected"), [(c[1], c[2:]) for c in LAYOUT_CASES],
                         ids=[c[0] for c in LAYOUT_CASES])
def test_takeover_of_each_layout(tmp_root, builder, expected, caplog):
    identity, layout, origin = expected
    builder(tmp_root)
    originals = upstream_files(tmp_root)
    report = _run(tmp_root)
    assert report.ok, report.message
    assert report.phases_done == ["takeover", "config", "security"]
    cfg = read_json(tmp_root.config_file)
    assert (cfg["agent_id"], cfg["token"], cfg["refresh_token"]) == identity
    assert cfg["version"] == "6"
    assert cfg["machine_id"]  # unknown keys survive (a 0.1.22+ machine binding included)
    if layout == LAYOUT_02:
        assert cfg["command_signing"] == {"enabled": True, "enforcement_mode": "strict"}
        assert cfg["polling"] == {"heartbeat_seconds": 10}
        assert "migration_state" not in cfg and "agent_version" not in cfg
        assert cfg["network"]["timeout"] == 30000000000  # read as ns by the client
        assert read_json(tmp_root.state_dir / "pending_acks.json") == [{"id": "v02-ack"}]
        assert tmp_root.v02_log_dir.is_dir(), "upstream logs are history: left in place"
    else:
        assert cfg["tls"]["ca_file"] == "/etc/redflag-agent/ca.pem"
        assert (tmp_root.config_dir / "ca.pem").read_bytes().endswith(b"CA19\n")
    # upstream files gone, their originals byte for byte in the one backup
    assert upstream_files(tmp_root) == {}
    assert not tmp_root.upstream_etc_dir.exists() and not tmp_root.upstream_lib_dir.exists()
    assert list_backups(tmp_root) == [report.backup]
    stored = _backup_files(tmp_root, report.backup)
    assert {k: stored[k] for k in originals} == originals
    state = read_json(tmp_root.migration_state_file)
    assert state["upstream_layout"] == layout and state["migrated_from"] == origin
    assert status.report(tmp_root, quiet_logger())["upstream_layout"] == layout
    text = caplog.text + report.message
    assert not any(s in text for s in SECRETS + (V02_JWT, V02_REFRESH))
    # a second migrate writes nothing at all
    before = tree(tmp_root.root)
    again = _run(tmp_root)
    assert again.ok and again.phases_done == [] and "nothing to migrate" in again.message
    assert tree(tmp_root.root) == before


def test_existing_host_with_recorded_phases_runs_nothing(tmp_root):
    """A host the previous release migrated (0.1.18 phases recorded, old state format): the
    new phases do not make anything run again; the tree stays identical, mtimes included."""
    make_current(tmp_root, fresh_config(True))
    write_json(tmp_root.migration_state_file, {
        "format": 1, "completed": ["directory", "config", "security"], "failures": {},
        "completed_at": {"directory": "2026-01-01T00:00:00Z"}, "migrated_from": "0.1.18"})
    make_legacy(tmp_root)  # reappeared: still not run again
    before = tree(tmp_root.root)
    assert migration.plan(tmp_root).phases == []
    report = _run(tmp_root)
    assert report.ok and report.phases_done == []
    assert tree(tmp_root.root) == before
    assert status.report(tmp_root, quiet_logger())["upstream_layout"] == LAYOUT_0118


IDENTITY_CASES = [
    # (id, builder, agent_id kept, loser agent_id kept in the backup)
    ("0.2 and 0.1.19 both complete: the newer layout's",
     lambda p: (make_v0119(p), make_v02(p)), V02_ID, AGENT_ID),
    ("0.2 token only, 0.1.19 complete: the usable one",
     lambda p: (make_v0119(p), make_v02(p, v02_config(refresh_token=None))), AGENT_ID, V02_ID),
    ("current complete beats 0.2 complete (tie: current)",
     lambda p: (make_current(p, fresh_config(True, agent_id=OTHER_ID)), make_v02(p)),
     OTHER_ID, V02_ID),
    ("current unregistered, 0.2 complete: 0.2's",
     lambda p: (make_current(p, fresh_config()), make_v02(p)), V02_ID, None),
    ("0.1.18 complete, 0.2 without refresh token: 0.1.18's",
     lambda p: (make_legacy(p), make_v02(p, v02_config(refresh_token=None))), AGENT_ID, V02_ID),
    ("0.1.18 and 0.2 both complete: the newer layout's",
     lambda p: (make_legacy(p), make_v02(p)), V02_ID, AGENT_ID),
]


@pytest.mark.parametrize(("builder", "kept", "loser"), [c[1:] for c in IDENTITY_CASES],
                         ids=[c[0] for c in IDENTITY_CASES])
def test_identity_choice_across_layouts(tmp_root, builder, kept, loser):
    builder(tmp_root)
    report = _run(tmp_root)
    assert report.ok, report.message
    cfg = read_json(tmp_root.config_file)
    assert cfg["agent_id"] == kept and cfg["refresh_token"]
    assert "registration_token" not in cfg  # beside a complete identity it would spend a seat
    if loser:
        stored = b"".join(_backup_files(tmp_root, report.backup).values())
        assert loser.encode() in stored, "the other identity must stay in the backup"
    assert list_backups(tmp_root) == [report.backup]


def test_registration_token_kept_when_no_upstream_identity_is_usable(tmp_root):
    make_current(tmp_root, fresh_config())
    make_v0119(tmp_root, v0119_config(agent_id=None, token=None, refresh_token=None,
                                      registration_token=None))
    assert _run(tmp_root).ok
    cfg = read_json(tmp_root.config_file)
    assert cfg["registration_token"] == SECRETS[0] and not cfg.get("agent_id")


def test_failed_takeover_restores_every_upstream_file(tmp_root):
    make_v0119(tmp_root)
    make_v02(tmp_root)
    tmp_root.config_dir.mkdir()  # the run lays down our directories first; they stay
    before = contents(tmp_root.root)
    report = _run(tmp_root, environ={FAULT_ENV: "config:enospc"})
    assert not report.ok and report.failed_phase == "config"
    assert contents(tmp_root.root) == before
    state = read_json(tmp_root.migration_state_file)
    assert "upstream_layout" not in state and "migrated_from" not in state
    assert migration.plan(tmp_root).phases == ["takeover", "config", "security"]


def test_unknown_entries_in_etc_redflag_are_left_alone(tmp_root):
    make_v0119(tmp_root)
    (tmp_root.upstream_etc_dir / "operator-notes.txt").write_text("mine")
    assert _run(tmp_root).ok
    assert (tmp_root.upstream_etc_dir / "operator-notes.txt").read_text() == "mine"
    assert not tmp_root.v0119_config_file.exists()


def test_0118_host_unchanged_by_the_new_phases(tmp_root):
    make_legacy(tmp_root, legacy_config())
    report = _run(tmp_root)
    assert report.phases_done == ["directory", "config", "security"]
    assert read_json(tmp_root.migration_state_file)["upstream_layout"] == LAYOUT_0118
    assert json.loads(tmp_root.config_file.read_text())["agent_id"] == AGENT_ID
