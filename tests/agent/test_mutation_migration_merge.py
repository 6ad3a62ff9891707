"""What a migration writes into config.json, exactly: merged settings, the identity kept, the
registration token kept or dropped, the schema version, the notes it logs, and which files
move where. merge.py is pure, so these are tables; written to kill the mutants that survived
`make mutate` on migration/merge.py (docs/MUTATION.md)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from redflag_agent.migration.merge import (
    apply_secrets,
    choose_identity_among,
    legacy_moves,
    logical,
    merge_legacy,
    merge_upstream,
    rewrite_tls_paths,
    strip_bookkeeping,
    takeover_moves,
)
from redflag_agent.migration.model import UpstreamNames
from redflag_agent.paths import Paths

A, B = "aaaaaaaa-0000-4000-8000-000000000001", "bbbbbbbb-0000-4000-8000-000000000002"
DROPPED = ("the registration token is dropped: the host keeps its complete identity "
           "(agent_id and refresh token), and enrolling again would spend a seat")
P = Paths("/h")


def complete(agent_id: str = A, **kw):
    return {"agent_id": agent_id, "token": f"jwt-{agent_id[:4]}",
            "refresh_token": f"ref-{agent_id[:4]}", **kw}


# (id, current, legacy, merged config, notes)
MERGE = [
    ("no legacy: the current as it is", {"version": "6", "x": 1}, None,
     {"version": "6", "x": 1}, []),
    ("nothing at all", None, None, None, []),
    ("legacy alone, complete: its registration token goes",
     None, {**complete(), "registration_token": "reg"}, complete(), [DROPPED]),
    ("legacy alone, token only: its registration token stays",
     None, {"agent_id": A, "token": "t", "registration_token": "reg"},
     {"agent_id": A, "token": "t", "registration_token": "reg"}, []),
    ("settings: the current wins, nested objects merge key by key, unknown keys survive",
     {"version": 6, "server_url": "https://new", "network": {"timeout": 30}, "mine": 1},
     {"server_url": "https://old", "network": {"timeout": 20, "retry_count": 5}, "theirs": 2},
     {"server_url": "https://new", "network": {"timeout": 30, "retry_count": 5}, "mine": 1,
      "theirs": 2}, []),
    ("a current object over a legacy scalar replaces it",
     {"proxy": {"enabled": True}}, {"proxy": "none"}, {"proxy": {"enabled": True}}, []),
    ("a missing version is the oldest: the merged config has none", {"x": 1}, {"version": 5},
     {"x": 1}, []),
    ("no identity anywhere: a legacy token is not overwritten by a current null",
     {"token": None}, {"token": "t"}, {"token": "t"}, []),
    ("no identity anywhere: an empty current agent_id is kept as it is",
     {"agent_id": ""}, {"x": 1}, {"x": 1, "agent_id": ""}, []),
    ("a legacy registration token beside a complete current identity is dropped, and said",
     complete(A), {"registration_token": "old"}, complete(A), [DROPPED]),
    ("the older version wins: the legacy one", {"version": "6"}, {"version": 5},
     {"version": 5}, []),
    ("the older version wins: the current one", {"version": 5}, {"version": "6"},
     {"version": 5}, []),
    ("the same version: the current file's spelling of it", {"version": 6}, {"version": "6"},
     {"version": 6}, []),
    ("no identity anywhere: explicit nulls of the current survive",
     {"agent_id": None, "token": None, "registration_token": None}, {"server_url": "u"},
     {"server_url": "u", "agent_id": None, "token": None, "registration_token": None}, []),
    ("the legacy's own null is kept over the current's",
     {"token": None}, {"token": None, "server_url": "u"}, {"token": None, "server_url": "u"}, []),
    ("the complete legacy beats a token-only current: its keys, no registration token",
     {"agent_id": B, "token": "cur", "registration_token": "reg"},
     {**complete(), "registration_token": "old"}, complete(),
     [f"the current config holds another agent_id ({B}, identity token_only) than the legacy "
      f"one ({A}, identity complete); the legacy identity is kept and the current one stays in "
      "the migration backup", DROPPED]),
    ("a complete current keeps its identity; the legacy's keys are removed",
     complete(B), {"agent_id": A, "token": "old-jwt"}, complete(B),
     [f"the legacy config holds another agent_id ({A}, identity token_only) than the current "
      f"one ({B}, identity complete); the current identity is kept and the legacy one stays "
      "in the migration backup"]),
    ("a registration token of the current alone is dropped beside a complete identity",
     {**complete(), "registration_token": "reg"}, complete(), complete(), [DROPPED]),
    ("unregistered: the current registration token wins",
     {"registration_token": "cur"}, {"registration_token": "old"},
     {"registration_token": "cur"}, []),
    ("unregistered: a current explicit null only fills a gap",
     {"registration_token": None}, {"registration_token": "old"},
     {"registration_token": "old"}, []),
    ("unregistered: a current explicit null fills the gap",
     {"registration_token": None}, {"server_url": "u"},
     {"server_url": "u", "registration_token": None}, []),
]


@pytest.mark.parametrize(("current", "legacy", "merged", "notes"), [c[1:] for c in MERGE],
                         ids=[c[0] for c in MERGE])
def test_merge_legacy_table(current, legacy, merged, notes):
    before = copy.deepcopy((current, legacy))
    out, said = merge_legacy(current, legacy)
    assert (out, said) == (merged, notes)
    assert (current, legacy) == before  # inputs untouched: the files they came from stay


def test_the_merged_config_shares_nothing_with_the_files_it_came_from():
    current = {"network": {"tls": {"a": 1}}, "tags": [["x"]], "n": {"k": [1]}}
    legacy = {"proxy": {"e": {"b": 1}}, "network": {"t": 1}, "list": [[1]]}
    before = copy.deepcopy((current, legacy))
    out, _ = merge_legacy(current, legacy)
    out["network"]["tls"]["a"] = 2
    out["tags"][0].append("y")
    out["n"]["k"].append(2)
    out["proxy"]["e"]["b"] = 2
    out["list"][0].append(2)
    assert (current, legacy) == before


def test_merge_legacy_returns_a_copy_of_the_current():
    current = {"network": {"timeout": 1}}
    out, _ = merge_legacy(current, None)
    out["network"]["timeout"] = 2
    assert current == {"network": {"timeout": 1}}


def test_merge_upstream_words_its_notes_for_the_upstream_layout():
    out, notes = merge_upstream(complete(A), [("0.2", {**complete(B), "agent_version": "0.2.4",
                                                        "migration_state": {}, "keep": 1}),
                                              ("0.1.19-0.1.23", None)])
    assert out == {**complete(A), "keep": 1}
    assert notes == [
        f"the upstream 0.2 config holds another agent_id ({B}, identity complete) than the "
        f"current (or a newer upstream) one ({A}, identity complete); the current (or a newer "
        "upstream) identity is kept and the upstream 0.2 one stays in the migration backup"]
    assert merge_upstream(None, []) == (None, [])
    alone = {"n": {"x": 1}}
    got, _ = merge_upstream(alone, [])
    got["n"]["x"] = 2
    assert alone == {"n": {"x": 1}}
    # a layout without a config is skipped, the next one still merged
    assert merge_upstream(None, [("0.2", None), ("0.1.19-0.1.23", {"x": 1})]) == ({"x": 1}, [])


def test_strip_bookkeeping():
    assert strip_bookkeeping(None) is None
    assert strip_bookkeeping({"agent_version": "0.2.4", "migration_state": {}, "a": 1}) == {
        "a": 1}


# (id, candidates, source, agent_id, note)
AMONG = [
    ("nothing", [("current", None), ("0.2", None)], None, None, None),
    ("the first wins a tie and the loser is named",
     [("current", complete(A)), ("0.2", complete(B))], "current", A,
     "0.2 holds another agent_id than current; current's identity is kept and 0.2's stays in "
     "the migration backup"),
    ("a later complete one beats an earlier token-only one",
     [("current", {"agent_id": A, "token": "t"}), ("0.2", complete(B))], "0.2", B,
     "current holds another agent_id than 0.2; 0.2's identity is kept and current's stays in "
     "the migration backup"),
    ("a skipped None keeps the fold going",
     [("current", None), ("0.2", complete(B)), ("0.1.19-0.1.23", {"agent_id": A})], "0.2", B,
     "0.1.19-0.1.23 holds another agent_id than 0.2; 0.2's identity is kept and "
     "0.1.19-0.1.23's stays in the migration backup"),
    ("two set aside: both named",
     [("current", complete(A)), ("0.2", complete(B)), ("0.1.19-0.1.23", {"agent_id": B[::-1]})],
     "current", A,
     "0.2 holds another agent_id than current; current's identity is kept and 0.2's stays in "
     "the migration backup; 0.1.19-0.1.23 holds another agent_id than current; current's "
     "identity is kept and 0.1.19-0.1.23's stays in the migration backup"),
    ("same agent in two: one agent, no note",
     [("current", {"agent_id": A, "token": "t"}), ("0.2", {"agent_id": A, "refresh_token": "r"})],
     "current", A, None),
]


@pytest.mark.parametrize(("candidates", "source", "agent_id", "note"), [c[1:] for c in AMONG],
                         ids=[c[0] for c in AMONG])
def test_choose_identity_among_table(candidates, source, agent_id, note):
    choice = choose_identity_among(candidates)
    assert (choice.source, choice.identity.get("agent_id"), choice.note) == (
        source, agent_id, note)


# (id, config, token secret, URL secret, result)
SECRETS = [
    ("no config: both taken", None, "tok", "https://s", {"server_url": "https://s",
                                                          "registration_token": "tok"}),
    ("the same URL: nothing", {"server_url": "https://s"}, None, "https://s",
     {"server_url": "https://s"}),
    ("a registered host takes no token", complete(), "tok", None, complete()),
    ("a token-only host still takes it", {"agent_id": A, "token": "t"}, "tok", None,
     {"agent_id": A, "token": "t", "registration_token": "tok"}),
    ("empty secrets are none", {"server_url": "u"}, "", "", {"server_url": "u"}),
]


@pytest.mark.parametrize(("cfg", "token", "url", "result"), [c[1:] for c in SECRETS],
                         ids=[c[0] for c in SECRETS])
def test_apply_secrets_table(cfg, token, url, result):
    before = copy.deepcopy(cfg)
    assert apply_secrets(cfg, token, url) == result
    assert cfg == before


def test_logical_is_the_path_the_host_sees():
    assert logical(P, Path("/h/etc/aggregator/ca.pem")) == "/etc/aggregator/ca.pem"


def test_legacy_moves_take_state_certs_and_named_files_only():
    cfg = {"tls": {"ca_file": "/etc/aggregator/my-ca", "cert_file": "/var/lib/aggregator/c",
                   "other": "/etc/aggregator/notes.txt", "key_file": 5}}
    moves = legacy_moves(P, ("config.json", "ca.pem", "my-ca", "notes.txt", "x.crt"),
                         ("pending_acks.json", "agent.key", "c", "cache.db", "a.pem"), cfg)
    assert moves == [
        (Path("/h/var/lib/aggregator/pending_acks.json"), P.state_dir / "pending_acks.json"),
        (Path("/h/var/lib/aggregator/agent.key"), P.state_dir / "agent.key"),
        (Path("/h/var/lib/aggregator/c"), P.state_dir / "c"),
        (Path("/h/var/lib/aggregator/a.pem"), P.state_dir / "a.pem"),
        (Path("/h/etc/aggregator/ca.pem"), P.config_dir / "ca.pem"),
        (Path("/h/etc/aggregator/my-ca"), P.config_dir / "my-ca"),
        (Path("/h/etc/aggregator/x.crt"), P.config_dir / "x.crt"),
    ]
    # a state name in the config dir is not state: it stays (only certificates move)
    assert legacy_moves(P, ("pending_acks.json",), (), None) == []
    assert legacy_moves(P, ("notes.txt",), ("cache.db",), {"tls": "off"}) == []


def test_rewrite_tls_paths_points_at_the_moved_copies():
    moves = [(Path("/h/etc/aggregator/ca.pem"), P.config_dir / "ca.pem")]
    cfg = {"tls": {"ca_file": "/etc/aggregator/ca.pem", "cert_file": "/elsewhere.crt",
                   "key_file": None}}
    out = rewrite_tls_paths(cfg, P, moves)
    assert out["tls"] == {"ca_file": "/etc/redflag-agent/ca.pem", "cert_file": "/elsewhere.crt",
                          "key_file": None}
    assert cfg["tls"]["ca_file"] == "/etc/aggregator/ca.pem"
    assert rewrite_tls_paths({"tls": "off"}, P, moves) == {"tls": "off"}


def test_takeover_moves_newest_first_and_only_what_is_ours_to_keep():
    names = UpstreamNames(etc=("config.json", "agent", "agent_id", "server", "ca.pem",
                               "named", "readme"),
                          v02_config=("config.json", "client.crt", "ref", "notes"),
                          v02_state=("agent.key", "cache"),
                          v02_state_sub=("pending_acks.json", "other.json"))
    v02 = {"tls": {"ca_file": "/etc/redflag/agent/ref"}}
    v0119 = {"tls": {"cert_file": "/etc/redflag/named"}}
    assert takeover_moves(P, names, v0119, v02) == [
        (P.v02_config_dir / "client.crt", P.config_dir / "client.crt"),
        (P.v02_config_dir / "ref", P.config_dir / "ref"),
        (P.v02_state_dir / "state" / "pending_acks.json", P.state_dir / "pending_acks.json"),
        (P.v02_state_dir / "agent.key", P.state_dir / "agent.key"),
        (P.upstream_etc_dir / "ca.pem", P.config_dir / "ca.pem"),
        (P.upstream_etc_dir / "named", P.config_dir / "named"),
    ]
    # a file 0.1.19's config names is not 0.2's to keep, and the reverse
    assert takeover_moves(P, UpstreamNames(etc=("ref",)), None, v02) == []


def test_takeover_never_moves_the_layouts_own_files_even_when_tls_names_them():
    names = UpstreamNames(etc=("config.json", "agent", "agent_id", "server", "notes"),
                          v02_config=("config.json",))
    v0119 = {"tls": {"ca_file": "/etc/redflag/config.json", "cert_file": "/etc/redflag/agent",
                     "key_file": "/etc/redflag/agent_id"}}
    v02 = {"tls": {"ca_file": "/etc/redflag/agent/config.json"}}
    assert takeover_moves(P, names, v0119, v02) == []
    assert takeover_moves(P, UpstreamNames(etc=("server",)),
                          {"tls": {"ca_file": "/etc/redflag/server"}}, None) == []
    # only the tls file settings count: another string naming a file moves nothing
    assert takeover_moves(P, names, {"tls": {"min_version": "/etc/redflag/notes"}}, None) == []
