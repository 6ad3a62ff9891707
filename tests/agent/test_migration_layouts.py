"""Every upstream layout: the pure rules (tables), then detection on disk, one fixture per
layout and per combination (plan() writes nothing)."""

from __future__ import annotations

import json

import pytest

from redflag_agent import migration
from redflag_agent.migration.layouts import (
    LAYOUT_0118,
    LAYOUT_0119,
    LAYOUT_02,
    SIBLING,
    SURPLUS,
    V02_BACKUP,
    FoundConfig,
    detect,
    keep_reason,
    litter_names,
    migrated_from,
    primary_layout,
    takeover_layouts,
)
from redflag_agent.migration.merge import choose_identity_among, merge_upstream
from redflag_agent.migration.snapshot import parse_upstream_config, read_snapshot

from .migration_fixtures import (
    AGENT_ID,
    OTHER_ID,
    REFRESH,
    SECRETS,
    V02_ID,
    V02_REFRESH,
    fresh_config,
    legacy_config,
    make_current,
    make_fresh_install,
    make_legacy,
    make_litter,
    make_v0119,
    make_v02,
    tree,
    v0119_config,
    v02_config,
    write_json,
)


@pytest.fixture(autouse=True)
def _not_in_container(monkeypatch):
    monkeypatch.delenv("container", raising=False)


# --- pure: detect --------------------------------------------------------------------------
P = "dir"
DETECT = [
    ({}, 0, ()),
    ({"aggregator_etc": P}, 0, (LAYOUT_0118,)),
    ({"aggregator_lib": P}, 0, (LAYOUT_0118,)),
    ({"v0119_config": "file"}, 0, (LAYOUT_0119,)),
    ({}, 3, (LAYOUT_0119,)),  # the loop's litter alone: its state dir is ours
    ({"v02_config_dir": P}, 0, (LAYOUT_02,)),
    ({"v02_agent_id": "file"}, 0, (LAYOUT_02,)),
    ({"v02_server": P}, 0, (LAYOUT_02,)),
    ({"v02_state": P}, 0, (LAYOUT_02,)),
    ({"v02_logs": P}, 0, ()),  # logs alone: nothing to take over
    ({"v0119_config": "symlink"}, 0, (LAYOUT_0119,)),  # planted: present, refused later
    ({"aggregator_etc": P, "v0119_config": "file", "v02_config_dir": P}, 5,
     (LAYOUT_0118, LAYOUT_0119, LAYOUT_02)),
    ({"v0119_config": "missing", "v02_state": "missing"}, 0, ()),
]


@pytest.mark.parametrize(("kinds", "litter", "expected"), DETECT)
def test_detect_table(kinds, litter, expected):
    assert detect(kinds, litter) == expected


def test_takeover_layouts_leave_0118_and_litter_to_their_phases():
    assert takeover_layouts({"aggregator_etc": P}) == ()
    assert takeover_layouts({"v02_logs": P}) == ()
    assert takeover_layouts({"v0119_config": "file", "v02_state": P}) == (LAYOUT_0119,
                                                                          LAYOUT_02)


# --- pure: which layout the host came from ---------------------------------------------
COMPLETE = {"agent_id": AGENT_ID, "refresh_token": "r"}
TOKEN_ONLY = {"agent_id": OTHER_ID, "token": "t"}
PRIMARY = [
    ((), {}, None),
    ((LAYOUT_0118,), {}, LAYOUT_0118),
    ((LAYOUT_0118, LAYOUT_0119, LAYOUT_02), {}, LAYOUT_02),  # no identity: the newest
    ((LAYOUT_0118, LAYOUT_02), {LAYOUT_0118: COMPLETE, LAYOUT_02: TOKEN_ONLY}, LAYOUT_0118),
    ((LAYOUT_0118, LAYOUT_02), {LAYOUT_0118: COMPLETE, LAYOUT_02: COMPLETE}, LAYOUT_02),
    ((LAYOUT_0119, LAYOUT_02), {LAYOUT_0119: COMPLETE, LAYOUT_02: None}, LAYOUT_0119),
]


@pytest.mark.parametrize(("present", "configs", "expected"), PRIMARY)
def test_primary_layout_table(present, configs, expected):
    assert primary_layout(present, configs) == expected


@pytest.mark.parametrize(("layout", "cfg", "expected"), [
    (LAYOUT_02, {"agent_version": "0.2.4"}, "0.2.4"),
    (LAYOUT_02, {}, LAYOUT_02),
    (LAYOUT_0119, {"agent_version": ""}, LAYOUT_0119),
    (LAYOUT_02, {"agent_version": 7}, LAYOUT_02),
    (None, None, None),
])
def test_migrated_from_table(layout, cfg, expected):
    assert migrated_from(layout, cfg) == expected


# --- pure: the identity rule over N configs ---------------------------------------------
def _cfg(agent_id=None, token=None, refresh=None):
    return {k: v for k, v in (("agent_id", agent_id), ("token", token),
                              ("refresh_token", refresh)) if v}


A, B, C = AGENT_ID, OTHER_ID, V02_ID
AMONG = [
    # (candidates in preference order, winning source, winning agent_id)
    ([("current", None), ("0.2", None)], None, None),
    ([("current", _cfg()), ("0.2", _cfg(C, "t", "r"))], "0.2", C),
    ([("current", _cfg(A, "t", "r")), ("0.2", _cfg(C, "t", "r"))], "current", A),  # tie
    ([("current", _cfg(A, "t")), ("0.2", _cfg(C, "t", "r"))], "0.2", C),  # usable wins
    ([("current", None), ("0.2", _cfg(C, "t", "r")), ("0.1.19-0.1.23", _cfg(B, "t", "r"))],
     "0.2", C),  # tie: the newer layout
    ([("current", None), ("0.2", _cfg(C, "t")), ("0.1.19-0.1.23", _cfg(B, "t", "r"))],
     "0.1.19-0.1.23", B),
    ([("current", _cfg(A)), ("0.2", _cfg(C, "t")), ("0.1.19-0.1.23", _cfg(B, "t", "r")),
      ("0.1.18", _cfg(A, "t", "r"))], "0.1.19-0.1.23", B),
    # the same agent in two files is one agent: gaps filled, the earlier source named
    ([("current", _cfg(A, "t")), ("0.2", _cfg(A, None, "r"))], "current", A),
]


@pytest.mark.parametrize(("candidates", "source", "agent_id"), AMONG)
def test_choose_identity_among_table(candidates, source, agent_id):
    choice = choose_identity_among(candidates)
    assert choice.source == source
    assert choice.identity.get("agent_id") == agent_id
    if choice.note:
        assert not any(s in choice.note for s in SECRETS)


def test_choose_identity_among_fills_gaps_of_the_same_agent():
    choice = choose_identity_among([("current", _cfg(A, "t")), ("0.2", _cfg(A, None, "r"))])
    assert choice.identity == {"agent_id": A, "token": "t", "refresh_token": "r"}
    assert choice.registered


# --- pure: merging upstream configs ---------------------------------------------------
def test_merge_upstream_current_settings_win_then_newer_layout_and_bookkeeping_dropped():
    current = fresh_config(registration_token=None, server_url="https://role.example")
    merged, notes = merge_upstream(current, [
        (LAYOUT_02, parse_upstream_config(
            json.dumps(v02_config()).encode(), "x")),
        (LAYOUT_0119, v0119_config(display_name="old", organization="org-19"))])
    assert merged["server_url"] == "https://role.example"
    assert merged["agent_id"] == V02_ID and merged["refresh_token"] == V02_REFRESH
    assert merged["organization"] == "org-19"  # only the older layout had it
    assert merged["command_signing"] == {"enabled": True, "enforcement_mode": "strict"}
    assert merged["polling"] == {"heartbeat_seconds": 10}
    assert "migration_state" not in merged and "agent_version" not in merged
    assert any(AGENT_ID in n and V02_ID in n for n in notes)


@pytest.mark.parametrize("version", ["7", 7, "6", 5, None])
def test_upstream_version_is_not_ours(version):
    """0.2 numbers its config after its own version: never refused as a newer schema."""
    cfg = parse_upstream_config(json.dumps(v02_config(version=version)).encode(),
                                "/etc/redflag/agent/config.json")
    assert "version" not in cfg


# --- pure: litter ---------------------------------------------------------------------
def test_litter_names_table():
    state = ["migration_backups_2025-01-01-000000", "migration_backups", "status.json",
             "migration_backups_2025-13-99-999999x", "migration_backups_2025-01-01-000030",
             "pending_acks.json"]
    ours = ["20260101T000000Z", "20260101T000000Z-2", ".20260101T000001Z.partial",
            "2025-01-01-000000", "upstream-old"]
    assert litter_names(state, ours, ["b1"]) == [
        (SIBLING, "migration_backups_2025-01-01-000000"),
        (SIBLING, "migration_backups_2025-01-01-000030"),
        (SURPLUS, "2025-01-01-000000"), (SURPLUS, "upstream-old"), (V02_BACKUP, "b1")]


MIGRATED = {"agent_id": A, "token": "t", "refresh_token": REFRESH}
KEEP = [
    ([], MIGRATED, False),
    ([FoundConfig("x/config.json", {"server_url": "u", "registration_token": "t"})],
     MIGRATED, False),  # the loop's unregistered copy
    ([FoundConfig("x/config.json", {"agent_id": A, "refresh_token": REFRESH})], MIGRATED,
     False),
    ([FoundConfig("x/config.json", {"agent_id": A, "token": "old"})], MIGRATED, False),
    ([FoundConfig("x/config.json", {"agent_id": B, "refresh_token": "r"})], MIGRATED, True),
    ([FoundConfig("x/config.json", {"agent_id": A, "refresh_token": "other"})], MIGRATED,
     True),
    ([FoundConfig("x/config.json", {"agent_id": A, "refresh_token": REFRESH})], None, True),
    ([FoundConfig("x/config.json", None, "not a JSON config")], MIGRATED, True),
    ([FoundConfig("a/config.json", {}), FoundConfig("b/config.json", {"agent_id": B})],
     MIGRATED, True),
]


@pytest.mark.parametrize(("found", "migrated", "kept"), KEEP)
def test_keep_reason_table(found, migrated, kept):
    reason = keep_reason(found, migrated)
    assert (reason is not None) == kept
    if reason:
        assert "config.json" in reason and not any(s in reason for s in SECRETS)


# --- detection on disk: one fixture per layout and combination --------------------------
def _state(paths, **state):
    base = {"format": 1, "completed": [], "failures": {}}
    base.update(state)
    write_json(paths.migration_state_file, base)


def _v0119_registered(p):
    make_fresh_install(p)
    make_v0119(p, litter=3)


ON_DISK = [
    # (id, builder, phases, upstream_layout)
    ("0.1.18", make_legacy, ["directory", "config", "security"], LAYOUT_0118),
    ("0.1.19-0.1.23 with litter", lambda p: make_v0119(p, litter=3),
     ["takeover", "config", "security", "litter"], LAYOUT_0119),
    ("0.1.19-0.1.23 without litter", make_v0119, ["takeover", "config", "security"],
     LAYOUT_0119),
    ("0.1.19-0.1.23 litter only, config already ours",
     lambda p: (make_fresh_install(p, registered=True), make_litter(p, 2)),
     ["security", "litter"], LAYOUT_0119),
    ("0.2", make_v02, ["takeover", "config", "security"], LAYOUT_02),
    ("0.2 with its own backups", lambda p: make_v02(p, backups=2),
     ["takeover", "config", "security", "litter"], LAYOUT_02),
    ("0.2 agent_id file only", lambda p: p.upstream_etc_dir.mkdir(parents=True) or
     p.v02_agent_id_file.write_text(V02_ID), ["takeover", "config", "security"], LAYOUT_02),
    ("0.2 logs only", lambda p: p.v02_log_dir.mkdir(parents=True), [], None),
    ("half-done: 0.1.19 and current v6 both present", _v0119_registered,
     ["takeover", "config", "security", "litter"], LAYOUT_0119),
    ("half-done: 0.1.18 and 0.2 both present", lambda p: (make_legacy(p), make_v02(p)),
     ["takeover", "directory", "config", "security"], LAYOUT_02),
    ("every layout at once",
     lambda p: (make_legacy(p), make_v0119(p, litter=2), make_v02(p, backups=1),
                make_current(p, fresh_config())),
     ["takeover", "directory", "config", "security", "litter"], LAYOUT_02),
    ("0.1.18 identity wins over an unusable 0.2 one",
     lambda p: (make_legacy(p), make_v02(p, v02_config(refresh_token=None, token=None))),
     ["takeover", "directory", "config", "security"], LAYOUT_0118),
    ("taken over (recorded): nothing again, even if upstream files reappear",
     lambda p: (make_current(p, fresh_config(True)), make_v0119(p, litter=2), make_v02(p),
                _state(p, completed=["takeover", "config", "security", "litter"],
                       upstream_layout=LAYOUT_0119)), [], LAYOUT_0119),
    ("migrated by the previous release (0.1.18 phases recorded)",
     lambda p: (make_current(p, fresh_config(True)),
                _state(p, completed=["directory", "config", "security"],
                       migrated_from="0.1.18")), [], LAYOUT_0118),
    ("fresh install", make_fresh_install, [], None),
]


@pytest.mark.parametrize(("builder", "phases", "layout"), [c[1:] for c in ON_DISK],
                         ids=[c[0] for c in ON_DISK])
def test_detection_on_disk(tmp_root, builder, phases, layout):
    builder(tmp_root)
    before = tree(tmp_root.root)
    plan = migration.plan(tmp_root)
    assert plan.error is None, plan.error
    assert plan.phases == phases
    assert migration.summary(tmp_root)["upstream_layout"] == layout
    assert tree(tmp_root.root) == before, "plan() must not write anything"
    assert not any(s in plan.describe() for s in SECRETS)


def test_corrupt_upstream_config_is_a_clear_error(tmp_root):
    make_v02(tmp_root)
    tmp_root.v02_config_file.write_text('{"agent_id": ')
    plan = migration.plan(tmp_root)
    assert plan.phases == [] and str(tmp_root.v02_config_file) in plan.error
    assert "0.2" in plan.error and "fix" in plan.error


def test_v02_agent_id_file_fills_a_missing_agent_id(tmp_root):
    make_v02(tmp_root, v02_config(agent_id=None))
    tmp_root.v02_agent_id_file.write_text(V02_ID + "\n")
    snap = read_snapshot(tmp_root)
    assert snap.upstream_configs[LAYOUT_02]["agent_id"] == V02_ID
    tmp_root.v02_agent_id_file.write_text("not-a-uuid\n")
    assert read_snapshot(tmp_root).upstream_configs[LAYOUT_02].get("agent_id") is None


def test_legacy_0118_config_keeps_its_detection(tmp_root):
    make_legacy(tmp_root, legacy_config(agent_version="0.1.17"))
    assert migration.plan(tmp_root).migrated_from == "0.1.17"
