"""Detection table: what is on disk -> which migration phases. plan() must write nothing."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from redflag_agent import migration
from redflag_agent.migration.decide import decide
from redflag_agent.migration.model import MAX_ATTEMPTS, Snapshot
from redflag_agent.migration.snapshot import read_snapshot
from redflag_agent.paths import Paths

from .migration_fixtures import (
    AGENT_ID,
    SECRETS,
    SERVER,
    fresh_config,
    legacy_config,
    make_current,
    make_fresh_install,
    make_legacy,
    tree,
    write_json,
)


@pytest.fixture(autouse=True)
def _not_in_container(monkeypatch):
    monkeypatch.delenv("container", raising=False)


def _state(paths: Paths, **state) -> None:
    base = {"format": 1, "completed": [], "failures": {}}
    base.update(state)
    write_json(paths.migration_state_file, base)


def _secrets(paths: Paths, token: str = "", url: str = "", container: bool = True) -> None:
    paths.secrets_dir.mkdir(parents=True, exist_ok=True)
    if token:
        (paths.secrets_dir / "redflag_registration_token").write_text(token + "\n")
    if url:
        (paths.secrets_dir / "redflag_server_url").write_text(url)
    if container:
        (paths.root / ".dockerenv").write_text("")


ALL_DONE = ["directory", "config", "docker_secrets", "security"]

# (case id, builder, expected phases)
CASES = [
    ("bare host, nothing installed", lambda p: None, []),
    ("fresh v6 unregistered", make_fresh_install, []),
    ("fresh v6 registered", lambda p: make_fresh_install(p, registered=True), []),
    ("restart at the same version (state recorded, v6)",
     lambda p: (make_fresh_install(p, registered=True), _state(p, completed=ALL_DONE)), []),
    ("legacy 0.1.18", make_legacy, ["directory", "config", "security"]),
    ("legacy state dir only, current v6",
     lambda p: (make_fresh_install(p, registered=True),
                make_legacy(p, config_file=False)), ["directory", "security"]),
    ("half-migrated: legacy and current v6 both present",
     lambda p: (make_legacy(p), make_current(p, fresh_config(registered=False))),
     ["directory", "config", "security"]),
    ("half-migrated: legacy and current v5 both present",
     lambda p: (make_legacy(p), make_current(p, {"version": 5, "server_url": SERVER})),
     ["directory", "config", "security"]),
    ("already migrated (recorded), legacy gone",
     lambda p: (make_current(p, fresh_config(True)),
                _state(p, completed=["directory", "config", "security"])), []),
    ("recorded directory phase is never run again, even if legacy dirs reappear",
     lambda p: (make_current(p, fresh_config(True)), make_legacy(p),
                _state(p, completed=["directory", "config", "security"])), []),
    ("numeric version 5", lambda p: make_current(p, fresh_config(version=5)),
     ["config", "security"]),
    ("string version \"5\"", lambda p: make_current(p, fresh_config(version="5")),
     ["config", "security"]),
    ("numeric version 6", lambda p: make_current(p, fresh_config(version=6)), []),
    ("missing version (upstream install script)",
     lambda p: make_current(p, {"server_url": SERVER, "registration_token": "x"}),
     ["config", "security"]),
    ("unknown keys do not trigger anything",
     lambda p: make_current(p, fresh_config(True, machine_id="m1", extra={"a": 1})), []),
    ("config phase recorded, version 5 written later: not run again",
     lambda p: (make_current(p, fresh_config(version=5)),
                _state(p, completed=["config", "security"])), []),
    ("in a container: secrets to take in",
     lambda p: (make_current(p, fresh_config(registration_token=None)),
                _secrets(p, token="tok-from-secret", url=SERVER)),
     ["docker_secrets", "security"]),
    ("in a container: secrets already in the config",
     lambda p: (make_current(p, fresh_config()), _secrets(p, token=SECRETS[0], url=SERVER)),
     []),
    ("in a container: registered host ignores a registration token secret",
     lambda p: (make_current(p, fresh_config(True)), _secrets(p, token="new-token")), []),
    ("secrets directory outside a container is ignored",
     lambda p: (make_current(p, fresh_config(registration_token=None)),
                _secrets(p, token="tok", container=False)), []),
    ("container marker /run/.containerenv, no config yet, only secrets",
     lambda p: (_secrets(p, token="tok", url=SERVER, container=False),
                (p.root / "run" / ".containerenv").write_text("")),
     ["docker_secrets", "security"]),
    ("failed twice: retried",
     lambda p: (make_current(p, fresh_config(version=5)),
                _state(p, failures={"config": {"attempts": MAX_ATTEMPTS - 1, "reason": "x"}})),
     ["config", "security"]),
    ("failed MAX_ATTEMPTS times: left to the operator",
     lambda p: (make_current(p, fresh_config(version=5)),
                _state(p, failures={"config": {"attempts": MAX_ATTEMPTS, "reason": "x"}})),
     []),
    ("interrupted migration resumes its remaining phases",
     lambda p: (make_current(p, fresh_config(True, version="6")),
                _state(p, completed=["directory", "config"],
                       in_progress={"backup": "20260101T000000Z",
                                    "phases": ["directory", "config", "security"],
                                    "completed_before": []})),
     ["security"]),
]


@pytest.mark.parametrize(("builder", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_detection_table(tmp_root, builder, expected):
    builder(tmp_root)
    before = tree(tmp_root.root)
    plan = migration.plan(tmp_root)
    assert plan.error is None
    assert plan.phases == expected
    assert tree(tmp_root.root) == before, "plan() must not write anything"
    text = plan.describe()
    assert not any(s in text for s in SECRETS)
    if not expected:
        assert "nothing to migrate" in text or plan.blocked


def test_blocked_phase_is_reported_pending_with_operator_hint(tmp_root):
    make_current(tmp_root, fresh_config(version=5))
    _state(tmp_root, failures={"config": {"attempts": 3, "reason": "disk full"}})
    plan = migration.plan(tmp_root)
    assert plan.phases == []
    assert list(plan.blocked) == ["config"]
    assert plan.pending == ["config", "security"]
    assert "--retry-failed" in plan.describe() and "disk full" in plan.describe()
    # the operator's explicit retry runs it again
    assert decide(read_snapshot(tmp_root), retry_failed=True).phases == ["config", "security"]


@pytest.mark.parametrize("where", ["current", "legacy"])
@pytest.mark.parametrize("garbage", [b"{not json", b"", b"[1, 2]", b'{"version": "six"}',
                                     b'{"agent_id": 42}'])
def test_corrupt_config_is_a_clear_error_and_no_plan(tmp_root, where, garbage):
    if where == "current":
        tmp_root.config_dir.mkdir(parents=True)
        target = tmp_root.config_file
    else:
        make_legacy(tmp_root)
        target = tmp_root.legacy_config_file
    target.write_bytes(garbage)
    plan = migration.plan(tmp_root)
    assert plan.phases == []
    assert plan.error is not None
    assert str(target) in plan.error
    assert "fix" in plan.error


def test_corrupt_state_file_is_a_warning_not_a_blocker(tmp_root):
    make_fresh_install(tmp_root, registered=True)
    tmp_root.migration_state_file.write_text("{torn")
    plan = migration.plan(tmp_root)
    assert plan.phases == [] and plan.error is None
    assert any("migration_state.json" in w for w in plan.warnings)


def test_decide_is_pure_on_a_snapshot_value(tmp_root):
    """The same decision from a hand-built Snapshot: no disk involved at all."""
    snap = Snapshot(paths=Paths("/nonexistent-root"),
                    legacy_config_dir_present=True, legacy_state_dir_present=True,
                    legacy_config_present=True, legacy_config=legacy_config(),
                    state={"completed": [], "failures": {}})
    plan = decide(snap)
    assert plan.phases == ["directory", "config", "security"]
    assert plan.migrated_from == "0.1.18"
    current_v6 = replace(snap, legacy_config_dir_present=False, legacy_state_dir_present=False,
                         legacy_config=None, current_config_present=True,
                         current_config=fresh_config(True))
    assert decide(current_v6).phases == []
    with_version = replace(snap, legacy_config=legacy_config(agent_version="0.1.17"))
    assert decide(with_version).migrated_from == "0.1.17"


def test_snapshot_repr_never_shows_secrets(tmp_root):
    make_legacy(tmp_root)
    make_current(tmp_root, fresh_config(registration_token=None))
    _secrets(tmp_root, token="tok-secret-value", url=SERVER)
    snap = read_snapshot(tmp_root)
    assert snap.secret_token == "tok-secret-value"
    text = repr(snap)
    assert "tok-secret-value" not in text
    assert not any(s in text for s in SECRETS)
    assert AGENT_ID not in text  # configs are not in the repr at all


def test_upstream_secret_names_are_accepted(tmp_root):
    make_current(tmp_root, fresh_config(registration_token=None))
    tmp_root.secrets_dir.mkdir(parents=True)
    (tmp_root.secrets_dir / "registration_token").write_text("upstream-name-token")
    snap = read_snapshot(tmp_root, environ={"container": "podman"})
    assert snap.in_container and snap.secret_token == "upstream-name-token"
    assert decide(snap).phases == ["docker_secrets", "security"]


def test_plan_reads_little(tmp_root, monkeypatch):
    """plan() runs at every start: on a fresh host it opens the config and the state file and
    lists no directory at all (not the backups, not the state directory). Every read goes
    through safefs (no symlink followed), so that is where reads are counted."""
    import builtins
    import os

    from redflag_agent import safefs

    make_fresh_install(tmp_root, registered=True)
    for i in range(50):
        (tmp_root.state_dir / f"junk{i}").write_text(json.dumps(i))
    listed, opened = [], []
    real_listdir, real_open, real_read = os.listdir, builtins.open, safefs.read_bytes
    monkeypatch.setattr(os, "listdir", lambda p=".": listed.append(p) or real_listdir(p))
    monkeypatch.setattr(builtins, "open",
                        lambda f, *a, **k: opened.append(str(f)) or real_open(f, *a, **k))
    monkeypatch.setattr(safefs, "read_bytes",
                        lambda f, *a, **k: opened.append(str(f)) or real_read(f, *a, **k))
    plan = migration.plan(tmp_root)
    monkeypatch.undo()
    assert plan.phases == []
    assert listed == []
    assert sorted(opened) == sorted([str(tmp_root.config_file),
                                     str(tmp_root.migration_state_file)])
