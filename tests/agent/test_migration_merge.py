"""Pure config decisions: legacy/current merge, legacy file moves, docker secrets."""

from __future__ import annotations

import pytest

from redflag_agent.migration.merge import (
    apply_secrets,
    legacy_moves,
    merge_legacy,
    rewrite_tls_paths,
)
from redflag_agent.paths import Paths

from .migration_fixtures import AGENT_ID, JWT, OTHER_ID, REFRESH, REG_TOKEN

IDENT = {"agent_id": AGENT_ID, "token": JWT, "refresh_token": REFRESH}


# (id, current, legacy, expected subset, keys that must be absent)
MERGE_CASES = [
    ("no legacy config: current unchanged",
     {"version": "6", "server_url": "a"}, None, {"version": "6", "server_url": "a"}, []),
    ("no current: the legacy config as is",
     None, {"server_url": "a", **IDENT, "x": 1}, {"server_url": "a", **IDENT, "x": 1},
     ["version"]),
    ("no current, legacy without identity: its registration token kept",
     None, {"server_url": "a", "registration_token": REG_TOKEN},
     {"registration_token": REG_TOKEN}, ["agent_id"]),
    ("current lacks identity: legacy identity taken, current settings win",
     {"version": "6", "server_url": "new", "check_in_interval": 600},
     {"server_url": "old", "check_in_interval": 300, **IDENT, "machine_id": "m"},
     {"server_url": "new", "check_in_interval": 600, **IDENT, "machine_id": "m"},
     ["version"]),
    ("current identity wins as a whole over a different legacy one",
     {"version": "6", "agent_id": OTHER_ID, "token": "t2", "refresh_token": "r2"},
     {**IDENT}, {"agent_id": OTHER_ID, "token": "t2", "refresh_token": "r2"}, ["version"]),
    ("same agent_id: missing current tokens are filled from legacy",
     {"version": "6", "agent_id": AGENT_ID, "token": "newer-jwt"},
     {**IDENT}, {"agent_id": AGENT_ID, "token": "newer-jwt", "refresh_token": REFRESH}, []),
    # was: the incomplete current identity kept, the host unregistered (issue 12)
    ("different agent_id: a complete legacy identity beats an incomplete current one",
     {"version": "6", "agent_id": OTHER_ID, "registration_token": "cur"},
     {**IDENT}, {**IDENT}, ["registration_token"]),
    ("different agent_id: tokens of the two agents never mixed",
     {"version": "6", "agent_id": OTHER_ID, "token": "t2"},
     {"agent_id": AGENT_ID, "token": JWT}, {"agent_id": OTHER_ID, "token": "t2"},
     ["refresh_token"]),
    ("no registration token beside a complete identity: current token dropped",
     {"version": "6", "registration_token": "cur"}, {**IDENT},
     {**IDENT}, ["registration_token"]),
    ("no registration token beside a complete identity: legacy token dropped",
     {"version": "6", "agent_id": OTHER_ID, "refresh_token": "r2"},
     {**IDENT, "registration_token": REG_TOKEN},
     {"agent_id": OTHER_ID, "refresh_token": "r2"}, ["registration_token", "token"]),
    ("no registration token beside a complete identity: legacy config alone",
     None, {**IDENT, "registration_token": REG_TOKEN}, {**IDENT}, ["registration_token"]),
    ("an incomplete identity keeps the registration token (the host must enroll)",
     {"version": "6", "agent_id": OTHER_ID}, {"registration_token": REG_TOKEN},
     {"agent_id": OTHER_ID, "registration_token": REG_TOKEN}, ["token", "refresh_token"]),
    ("registration token: current wins, legacy fills a gap",
     {"version": "6"}, {"registration_token": REG_TOKEN},
     {"registration_token": REG_TOKEN}, []),
    ("registration token: a current one wins",
     {"version": "6", "registration_token": "cur"}, {"registration_token": REG_TOKEN},
     {"registration_token": "cur"}, []),
    ("nested objects merge key by key, current wins",
     {"version": "6", "network": {"timeout": 5}},
     {"network": {"timeout": 30, "retry_count": 9, "custom": True}},
     {"network": {"timeout": 5, "retry_count": 9, "custom": True}}, []),
    ("both versioned: the older one stays so the config phase runs",
     {"version": "6"}, {"version": 5}, {"version": 5}, []),
    ("unknown keys of both survive",
     {"version": "6", "cur_only": [1]}, {"leg_only": {"a": "b"}},
     {"cur_only": [1], "leg_only": {"a": "b"}}, []),
]


@pytest.mark.parametrize(("current", "legacy", "subset", "absent"),
                         [c[1:] for c in MERGE_CASES], ids=[c[0] for c in MERGE_CASES])
def test_merge_table(current, legacy, subset, absent):
    before = (repr(current), repr(legacy))
    merged, _notes = merge_legacy(current, legacy)
    assert merged is not None
    for key, value in subset.items():
        assert merged[key] == value, key
    for key in absent:
        assert key not in merged
    assert (repr(current), repr(legacy)) == before, "inputs must not be mutated"


def test_merge_conflict_note_names_ids_not_tokens():
    merged, notes = merge_legacy({"agent_id": OTHER_ID, "refresh_token": "r2"}, dict(IDENT))
    assert merged["agent_id"] == OTHER_ID
    assert len(notes) == 1 and AGENT_ID in notes[0] and OTHER_ID in notes[0]
    assert JWT not in notes[0] and REFRESH not in notes[0]


def test_merge_of_nothing():
    assert merge_legacy(None, None) == (None, [])


def test_legacy_moves_and_tls_rewrite():
    paths = Paths("/r")
    legacy_cfg = {"tls": {"ca_file": "/etc/aggregator/ca.pem",
                          "cert_file": "/var/lib/aggregator/client.cert",
                          "key_file": "/elsewhere/k.key"}}
    moves = legacy_moves(paths, ("config.json", "ca.pem", "notes.txt"),
                         ("pending_acks.json", "agent.key", "x.crt", "y.pem", "client.cert",
                          "cache.db"), legacy_cfg)
    got = {(str(s), str(d)) for s, d in moves}
    assert got == {
        ("/r/var/lib/aggregator/pending_acks.json", "/r/var/lib/redflag-agent/pending_acks.json"),
        ("/r/var/lib/aggregator/agent.key", "/r/var/lib/redflag-agent/agent.key"),
        ("/r/var/lib/aggregator/x.crt", "/r/var/lib/redflag-agent/x.crt"),
        ("/r/var/lib/aggregator/y.pem", "/r/var/lib/redflag-agent/y.pem"),
        # referenced by tls although its suffix is not a known one
        ("/r/var/lib/aggregator/client.cert", "/r/var/lib/redflag-agent/client.cert"),
        ("/r/etc/aggregator/ca.pem", "/r/etc/redflag-agent/ca.pem"),
    }
    out = rewrite_tls_paths(legacy_cfg, paths, moves)
    assert out["tls"] == {"ca_file": "/etc/redflag-agent/ca.pem",
                          "cert_file": "/var/lib/redflag-agent/client.cert",
                          "key_file": "/elsewhere/k.key"}
    assert legacy_cfg["tls"]["ca_file"] == "/etc/aggregator/ca.pem"


# (id, config, token, url, expected changes)
SECRET_CASES = [
    ("unregistered: both taken", {"server_url": "a"}, "tok", "b",
     {"server_url": "b", "registration_token": "tok"}),
    ("registered: token ignored, url taken", {"server_url": "a", **IDENT}, "tok", "b",
     {"server_url": "b", "registration_token": None}),
    ("nothing to change", {"server_url": "b", "registration_token": "tok"}, "tok", "b",
     {"server_url": "b", "registration_token": "tok"}),
    ("no config yet", None, "tok", None, {"registration_token": "tok", "server_url": None}),
]


@pytest.mark.parametrize(("cfg", "token", "url", "expected"), [c[1:] for c in SECRET_CASES],
                         ids=[c[0] for c in SECRET_CASES])
def test_apply_secrets_table(cfg, token, url, expected):
    out = apply_secrets(cfg, token, url)
    for key, value in expected.items():
        assert out.get(key) == value
