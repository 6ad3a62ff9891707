"""The migration plan as the operator reads it (`redflag-agent migrate --dry-run`): which
phases, why each one (the exact lines), what blocks it, what it is resumed from. decide() is
pure, so these are tables over Snapshots; written to kill the mutants that survived
`make mutate` on migration/decide.py (docs/MUTATION.md)."""

from __future__ import annotations

from typing import Any

import pytest

from redflag_agent.migration.decide import decide, stranded_identity
from redflag_agent.migration.model import MAX_ATTEMPTS, Snapshot
from redflag_agent.paths import Paths

from .migration_fixtures import (
    AGENT_ID,
    JWT,
    OTHER_ID,
    REFRESH,
    fresh_config,
    legacy_config,
    v0119_config,
    v02_config,
)

P = Paths("/h")
SECURITY = "  security: config 0600, directories 0750/0700, owner redflag-agent"
BACKUP = "  a backup is taken before the first change"
V02_PROBES = {"v02_config_dir": "dir", "v02_agent_id": "file", "v02_server": "dir",
              "v02_state": "dir"}
LITTER = (("migration_backups_2025-01-01-000000", "sibling"),
          ("migration_backups_2025-01-01-000001", "sibling"))


def snap(**kw: Any) -> Snapshot:
    return Snapshot(paths=P, **kw)


def legacy(**kw: Any) -> dict[str, Any]:
    return dict(legacy_config_dir_present=True, legacy_state_dir_present=True,
                legacy_config_present=True, legacy_config=legacy_config(),
                probes={"aggregator_etc": "dir", "aggregator_lib": "dir"}, **kw)


# (id, snapshot, the exact `describe()` lines)
DESCRIBE = [
    ("legacy 0.1.18, both dirs", snap(**legacy()), [
        "migration needed: directory, config, security",
        "  directory: legacy layout present (/h/etc/aggregator, /h/var/lib/aggregator)",
        "  config: config schema missing -> 6", SECURITY, BACKUP]),
    ("legacy config dir only", snap(legacy_config_dir_present=True), [
        "migration needed: directory, security",
        "  directory: legacy layout present (/h/etc/aggregator)", SECURITY, BACKUP]),
    ("legacy state dir only", snap(legacy_state_dir_present=True), [
        "migration needed: directory, security",
        "  directory: legacy layout present (/h/var/lib/aggregator)", SECURITY, BACKUP]),
    ("current schema 5", snap(current_config=fresh_config(version=5)), [
        "migration needed: config, security",
        "  config: config schema 5 -> 6", SECURITY, BACKUP]),
    ("current schema \"4\"", snap(current_config=fresh_config(version="4")), [
        "migration needed: config, security",
        "  config: config schema 4 -> 6", SECURITY, BACKUP]),
    ("current schema 6: nothing", snap(current_config=fresh_config()), ["nothing to migrate"]),
    ("0.1.19-0.1.23 with the loop's litter",
     snap(probes={"v0119_config": "file"}, upstream_configs={"0.1.19-0.1.23": v0119_config()},
          litter=LITTER), [
        "migration needed: takeover, config, security, litter",
        "  takeover: upstream 0.1.19-0.1.23 layout present (/h/etc/redflag/config.json)",
        "  config: config schema 5 -> 6", SECURITY,
        "  litter: 2 directories left by the upstream agent's restart loop (removed once the "
        "rest succeeded; any holding the only copy of an identity is kept)", BACKUP]),
    ("0.2 and 0.1.19-0.1.23 side by side",
     snap(probes={"v0119_config": "file", **V02_PROBES},
          upstream_configs={"0.1.19-0.1.23": v0119_config(), "0.2": v02_config()}), [
        "migration needed: takeover, config, security",
        "  takeover: upstream 0.1.19-0.1.23 and 0.2 layout present (/h/etc/redflag/config.json, "
        "/h/etc/redflag/agent, /h/etc/redflag/agent_id, /h/etc/redflag/server, "
        "/h/var/lib/redflag/agent)",
        "  config: config schema 5 -> 6", SECURITY, BACKUP]),
    ("0.2 with only its state dir left", snap(probes={"v02_state": "dir", "v02_logs": "dir"}), [
        "migration needed: takeover, security",
        "  takeover: upstream 0.2 layout present (/h/var/lib/redflag/agent)", SECURITY, BACKUP]),
    ("container secrets to take in",
     snap(current_config=fresh_config(), in_container=True, secret_token="tok"), [
        "migration needed: docker_secrets, security",
        "  docker_secrets: container secrets in /h/run/secrets to take in", SECURITY, BACKUP]),
    ("interrupted migration: its phases come back, security keeps its own reason",
     snap(current_config=fresh_config(),
          state={"completed": ["directory"],
                 "in_progress": {"phases": ["directory", "config", "security"]}}), [
        "resuming an interrupted migration: config, security",
        "  config: unfinished in the interrupted migration",
        "  security: unfinished in the interrupted migration", BACKUP]),
    ("a corrupt current config stops everything",
     snap(**legacy(), current_config_error="/h/etc/redflag-agent/config.json: not JSON"), [
        "cannot migrate: /h/etc/redflag-agent/config.json: not JSON. Nothing was migrated and "
        "nothing was written over it"]),
    ("a corrupt legacy config stops everything",
     snap(legacy_config_dir_present=True, legacy_config_present=True,
          legacy_config_error="/h/etc/aggregator/config.json: not JSON"), [
        "cannot migrate: the legacy config cannot be migrated: "
        "/h/etc/aggregator/config.json: not JSON. Nothing was changed; fix that file, or move "
        "it out of /h/etc/aggregator if it holds nothing worth keeping, then start the agent "
        "again"]),
    ("a corrupt upstream config stops everything",
     snap(probes={"v0119_config": "file"}, upstream_errors={"0.1.19-0.1.23": "not JSON"}), [
        "cannot migrate: the upstream 0.1.19-0.1.23 config cannot be taken over: not JSON. "
        "Nothing was changed; fix that file, or move it away if it holds nothing worth "
        "keeping, then start the agent again"]),
    ("an unreadable state file is a warning, not a stop",
     snap(current_config=fresh_config(), state_error="migration state unreadable: reset"),
     ["nothing to migrate", "warning: migration state unreadable: reset"]),
]


@pytest.mark.parametrize(("snapshot", "lines"), [c[1:] for c in DESCRIBE],
                         ids=[c[0] for c in DESCRIBE])
def test_the_plan_the_operator_reads(snapshot, lines):
    assert decide(snapshot).describe().split("\n") == lines


# (id, snapshot, phases) for a state file written by an older agent or by hand: keys missing
PARTIAL_STATE = [
    ("no completed key", snap(**legacy(), state={"failures": {}}),
     ["directory", "config", "security"]),
    ("no failures key", snap(**legacy(), state={"completed": []}),
     ["directory", "config", "security"]),
    ("in_progress without phases", snap(**legacy(), state={"in_progress": {"started": "x"}}),
     ["directory", "config", "security"]),
    ("a failure without an attempts count is not a given-up phase",
     snap(**legacy(), state={"failures": {"directory": {"reason": "EIO"}}}),
     ["directory", "config", "security"]),
]


@pytest.mark.parametrize(("snapshot", "phases"), [c[1:] for c in PARTIAL_STATE],
                         ids=[c[0] for c in PARTIAL_STATE])
def test_a_state_file_with_keys_missing_still_plans(snapshot, phases):
    assert decide(snapshot).phases == phases


# (id, snapshot, phases): what is recorded done, or not wanted, is not planned
NOT_PLANNED = [
    ("secrets outside a container are not ours to take",
     snap(current_config=fresh_config(), secret_token="tok"), []),
    ("secrets already taken in", snap(current_config=fresh_config(), in_container=True,
                                      secret_token="tok",
                                      state={"completed": ["docker_secrets"]}), []),
    ("a server URL secret equal to the config's is nothing to take in",
     snap(current_config=fresh_config(), in_container=True,
          secret_server_url=fresh_config()["server_url"]), []),
    ("a different server URL secret is taken in",
     snap(current_config=fresh_config(), in_container=True,
          secret_server_url="https://other.example:8443"), ["docker_secrets", "security"]),
    ("litter already removed once is not planned again",
     snap(current_config=fresh_config(), litter=LITTER, state={"completed": ["litter"]}), []),
    ("security recorded done rides along no more",
     snap(current_config=fresh_config(version=5), state={"completed": ["security"]}),
     ["config"]),
]


@pytest.mark.parametrize(("snapshot", "phases"), [c[1:] for c in NOT_PLANNED],
                         ids=[c[0] for c in NOT_PLANNED])
def test_what_is_not_planned(snapshot, phases):
    assert decide(snapshot).phases == phases


def _failed(attempts: int) -> dict[str, Any]:
    return {"completed": [], "failures": {"config": {"attempts": attempts, "reason": "ENOSPC"}}}


def test_a_phase_is_given_up_at_max_attempts_and_stops_the_whole_migration():
    below = decide(snap(**legacy(), state=_failed(MAX_ATTEMPTS - 1)))
    assert below.phases == ["directory", "config", "security"] and not below.blocked
    given_up = decide(snap(**legacy(), state=_failed(MAX_ATTEMPTS)))
    assert given_up.phases == [] and given_up.pending == ["directory", "config", "security"]
    assert given_up.blocked == {"config": {"attempts": MAX_ATTEMPTS, "reason": "ENOSPC"}}
    assert given_up.describe().startswith(
        f"migration phase 'config' failed {MAX_ATTEMPTS} times (last: ENOSPC)")
    # decide() alone does not retry what was given up; --retry-failed does
    assert decide(snap(**legacy(), state=_failed(MAX_ATTEMPTS)), True).phases == [
        "directory", "config", "security"]


def test_resume_flag_needs_both_an_interrupted_migration_and_work_left():
    interrupted = {"completed": [], "in_progress": {"phases": ["config"]}}
    assert decide(snap(current_config=fresh_config(version=5), state=interrupted)).resume
    assert not decide(snap(current_config=fresh_config(version=5))).resume
    done = {"completed": ["config"], "in_progress": {"phases": ["config"]}}
    assert not decide(snap(current_config=fresh_config(), state=done)).resume


def test_origin_and_layout_come_from_the_interrupted_migration_first():
    state = {"completed": [], "in_progress": {"phases": ["config"], "migrated_from": "0.1.20",
                                              "upstream_layout": "0.1.19-0.1.23"}}
    plan = decide(snap(**legacy(), state=state))
    assert (plan.migrated_from, plan.upstream_layout) == ("0.1.20", "0.1.19-0.1.23")
    fresh = decide(snap(**legacy()))
    assert (fresh.migrated_from, fresh.upstream_layout) == ("0.1.18", "0.1.18")
    assert fresh.upstream_layouts == ("0.1.18",)


def test_a_recorded_layout_is_kept_once_the_takeover_is_done():
    probes = {"v0119_config": "file", **V02_PROBES}
    done = {"completed": ["takeover", "config", "security"]}
    plan = decide(snap(probes=probes, state={**done, "upstream_layout": "0.1.19-0.1.23"}))
    assert plan.phases == [] and plan.upstream_layout == "0.1.19-0.1.23"
    # no record: the newest present layout, neither holding an identity
    plan = decide(snap(probes=probes, state=done))
    assert plan.upstream_layout == "0.2"
    assert plan.upstream_layouts == ("0.1.19-0.1.23", "0.2")


def test_the_merged_config_is_what_the_schema_is_judged_on():
    # the older schema of the two wins the merge, so the config phase normalizes its shapes:
    # a current schema 5 beside a schema 6 legacy/upstream config still needs the config phase
    plan = decide(snap(**{**legacy(), "legacy_config": legacy_config(version="6")},
                       current_config=fresh_config(version=5)))
    assert plan.phases == ["directory", "config", "security"]
    plan = decide(snap(current_config=fresh_config(version=5), probes={"v0119_config": "file"},
                       upstream_configs={"0.1.19-0.1.23": v0119_config(version="6")}))
    assert plan.phases == ["takeover", "config", "security"]


# (id, current config, legacy config, upstream configs, where the stranded identity is)
STRANDED = [
    ("nothing anywhere", None, None, {}, None),
    ("current registered, legacy unregistered", fresh_config(True),
     legacy_config(agent_id=None, token=None, refresh_token=None), {}, None),
    ("current unregistered, legacy registered", fresh_config(), legacy_config(), {},
     "/h/etc/aggregator/config.json"),
    ("same agent in both: nothing stranded", fresh_config(True), legacy_config(), {}, None),
    ("0.2 holds a complete identity the current lacks", fresh_config(), None,
     {"0.2": v02_config()}, "/h/etc/redflag/agent/config.json"),
    ("0.1.19 holds one", fresh_config(), None, {"0.1.19-0.1.23": v0119_config()},
     "/h/etc/redflag/config.json"),
    ("a token-only current loses to a complete legacy",
     {"version": "6", "agent_id": OTHER_ID, "token": JWT}, legacy_config(), {},
     "/h/etc/aggregator/config.json"),
    ("a complete current keeps its own", {"version": "6", "agent_id": OTHER_ID, "token": JWT,
                                          "refresh_token": REFRESH},
     legacy_config(agent_id=AGENT_ID), {}, None),
]


@pytest.mark.parametrize(("current", "legacy_cfg", "upstream", "where"),
                         [c[1:] for c in STRANDED], ids=[c[0] for c in STRANDED])
def test_stranded_identity_names_the_file_run_must_not_register_over(current, legacy_cfg,
                                                                      upstream, where):
    s = snap(current_config=current, legacy_config=legacy_cfg, upstream_configs=upstream)
    assert stranded_identity(s) == where
