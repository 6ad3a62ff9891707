"""A legacy or upstream config the migration refuses, holding an identity: `run` must not
register a second agent over it (found by tests/property, invariant 6)."""

from __future__ import annotations

import json

import pytest

from redflag_agent import migration
from redflag_agent.migration.decide import blocked_identity
from redflag_agent.paths import Paths

from .migration_fixtures import (
    AGENT_ID,
    OTHER_ID,
    fresh_config,
    legacy_config,
    make_current,
    write_json,
)

BLOCKED = [
    ([], None),
    ([("a", None)], None),  # not JSON
    ([("a", ["agent_id"])], None),
    ([("a", {"agent_id": AGENT_ID})], None),  # no token: nothing to authenticate with
    ([("a", {"agent_id": "", "refresh_token": "r"})], None),
    ([("a", {"agent_id": 7, "refresh_token": "r"})], None),
    ([("a", {"agent_id": AGENT_ID, "refresh_token": ""})], None),
    ([("a", {"agent_id": AGENT_ID, "refresh_token": "r"})], "a"),
    ([("a", {"agent_id": AGENT_ID, "token": "t"})], "a"),
    ([("a", {"server_url": "u"}), ("b", {"agent_id": AGENT_ID, "refresh_token": "r"})], "b"),
]


@pytest.mark.parametrize(("raw", "expected"), BLOCKED)
def test_blocked_identity_table(raw, expected):
    assert blocked_identity(raw) == expected


@pytest.fixture(autouse=True)
def _not_in_container(monkeypatch):
    monkeypatch.delenv("container", raising=False)


def test_refused_legacy_config_holding_an_identity_is_left_behind(tmp_path):
    paths = Paths(tmp_path)
    # schema "6" claimed, 0.1.18's string check_in_interval kept: the migration refuses it
    write_json(paths.legacy_config_file, legacy_config(version="6"), 0o644)
    make_current(paths, fresh_config())
    assert migration.plan(paths).error
    assert migration.identity_left_behind(paths) == str(paths.legacy_config_file)


def test_refused_legacy_config_without_identity_is_not(tmp_path):
    paths = Paths(tmp_path)
    paths.legacy_config_dir.mkdir(parents=True)
    paths.legacy_config_file.write_text(json.dumps({"version": "6", "check_in_interval": "x"}))
    make_current(paths, fresh_config())
    assert migration.plan(paths).error
    assert migration.identity_left_behind(paths) is None


def test_a_refused_legacy_config_holds_back_the_upstream_identity_too(tmp_path):
    """make prove, invariant 6: the refused legacy config stops the whole migration, so the
    0.1.19 config's identity is not taken over either: `run` must not enroll anew over it."""
    paths = Paths(tmp_path)
    paths.legacy_config_dir.mkdir(parents=True)
    paths.legacy_config_file.write_text(json.dumps({"version": 6, "check_in_interval": -5}))
    write_json(paths.v0119_config_file, {
        "version": "6", "server_url": "http://127.0.0.1:9", "agent_id": AGENT_ID,
        "token": "JWT", "refresh_token": "REFRESH", "check_in_interval": 300}, 0o600)
    # the current config holds an identity too (a clone's copy): it wins the tie
    make_current(paths, dict(fresh_config(), agent_id=OTHER_ID, token="J2",
                             refresh_token="R2"))
    assert migration.plan(paths).error
    assert migration.identity_left_behind(paths) == str(paths.v0119_config_file)
