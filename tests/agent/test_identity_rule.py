"""Which identity a host keeps (issue 12): one pure rule, choose_identity, used by the
migration's merge and by `status`, so what status promises is what migrate keeps."""

from __future__ import annotations

import logging

import pytest

from redflag_agent import migration, status
from redflag_agent.migration.merge import (
    ABSENT,
    COMPLETE,
    INCOMPLETE,
    TOKEN_ONLY,
    choose_identity,
    identity_kind,
    merge_legacy,
)

from .migration_fixtures import AGENT_ID, OTHER_ID, SERVER, make_current, make_legacy, read_json

LOG = logging.getLogger("redflag.test")
A, B = AGENT_ID, OTHER_ID


def ident(kind: str, agent_id: str, tag: str) -> dict:
    """An identity of the given kind; `tag` makes each side's token values distinct."""
    if kind == ABSENT:
        return {}
    out = {"agent_id": agent_id}
    if kind in (COMPLETE, TOKEN_ONLY):
        out["token"] = f"jwt-{tag}"
    if kind == COMPLETE:
        out["refresh_token"] = f"refresh-{tag}"
    return out


@pytest.mark.parametrize(("cfg", "kind"), [
    (None, ABSENT),
    ({}, ABSENT),
    ({"token": "j", "refresh_token": "r"}, ABSENT),  # tokens of no agent
    ({"agent_id": ""}, ABSENT),
    ({"agent_id": A}, INCOMPLETE),
    ({"agent_id": A, "token": None, "refresh_token": ""}, INCOMPLETE),
    ({"agent_id": A, "token": "j"}, TOKEN_ONLY),
    ({"agent_id": A, "refresh_token": "r"}, COMPLETE),  # renews its own access token
    ({"agent_id": A, "token": "j", "refresh_token": "r"}, COMPLETE),
])
def test_identity_kind(cfg, kind):
    assert identity_kind(cfg) == kind


# Different agent_ids: (current kind, legacy kind) -> winner. The one that gets further with
# the server wins (complete > token only > incomplete > absent); the current one on a tie.
WINNER = {
    (COMPLETE, COMPLETE): "current", (COMPLETE, TOKEN_ONLY): "current",
    (COMPLETE, INCOMPLETE): "current", (COMPLETE, ABSENT): "current",
    (TOKEN_ONLY, COMPLETE): "legacy", (TOKEN_ONLY, TOKEN_ONLY): "current",
    (TOKEN_ONLY, INCOMPLETE): "current", (TOKEN_ONLY, ABSENT): "current",
    (INCOMPLETE, COMPLETE): "legacy", (INCOMPLETE, TOKEN_ONLY): "legacy",
    (INCOMPLETE, INCOMPLETE): "current", (INCOMPLETE, ABSENT): "current",
    (ABSENT, COMPLETE): "legacy", (ABSENT, TOKEN_ONLY): "legacy",
    (ABSENT, INCOMPLETE): "legacy", (ABSENT, ABSENT): None,
}


@pytest.mark.parametrize(("cur_kind", "leg_kind"), list(WINNER), ids=[f"{c}-vs-{lg}" for c, lg
                                                                       in WINNER])
def test_different_agent_ids(cur_kind, leg_kind):
    current, legacy = ident(cur_kind, A, "cur"), ident(leg_kind, B, "leg")
    choice = choose_identity(current, legacy)
    winner = WINNER[(cur_kind, leg_kind)]
    assert choice.source == winner
    expected = {"current": current, "legacy": legacy, None: {}}[winner]
    assert choice.identity == expected  # whole, never mixed with the other agent's tokens
    assert choice.kind == identity_kind(expected)
    assert choice.registered is (choice.kind == COMPLETE)
    loser = legacy if winner == "current" else current
    if winner and loser.get("agent_id"):
        assert A in choice.note and B in choice.note and "backup" in choice.note
        assert "jwt-" not in choice.note and "refresh-" not in choice.note
    else:
        assert choice.note is None


# Same agent_id: one agent; each key from current, gaps filled from legacy.
# (id, current, legacy, expected identity, source, kind)
SAME_ID = [
    ("both complete: current tokens", ident(COMPLETE, A, "cur"), ident(COMPLETE, A, "leg"),
     ident(COMPLETE, A, "cur"), "current", COMPLETE),
    ("current incomplete, legacy complete: legacy tokens", ident(INCOMPLETE, A, "cur"),
     ident(COMPLETE, A, "leg"), ident(COMPLETE, A, "leg"), "legacy", COMPLETE),
    ("current newer JWT, legacy refresh token: both", ident(TOKEN_ONLY, A, "cur"),
     ident(COMPLETE, A, "leg"), {"agent_id": A, "token": "jwt-cur", "refresh_token":
                                 "refresh-leg"}, "legacy", COMPLETE),
    ("current complete, legacy incomplete", ident(COMPLETE, A, "cur"),
     ident(INCOMPLETE, A, "leg"), ident(COMPLETE, A, "cur"), "current", COMPLETE),
    ("both incomplete", ident(INCOMPLETE, A, "cur"), ident(INCOMPLETE, A, "leg"),
     {"agent_id": A}, "current", INCOMPLETE),
    ("current token only, legacy incomplete", ident(TOKEN_ONLY, A, "cur"),
     ident(INCOMPLETE, A, "leg"), ident(TOKEN_ONLY, A, "cur"), "current", TOKEN_ONLY),
]


@pytest.mark.parametrize(("current", "legacy", "identity", "source", "kind"),
                         [c[1:] for c in SAME_ID], ids=[c[0] for c in SAME_ID])
def test_same_agent_id(current, legacy, identity, source, kind):
    choice = choose_identity(current, legacy)
    assert (choice.identity, choice.source, choice.kind) == (identity, source, kind)
    assert choice.note is None


@pytest.mark.parametrize(("current", "legacy", "source"), [
    (None, None, None),
    (ident(COMPLETE, A, "cur"), None, "current"),
    (None, ident(COMPLETE, B, "leg"), "legacy"),
    (None, ident(INCOMPLETE, B, "leg"), "legacy"),
])
def test_missing_configs(current, legacy, source):
    assert choose_identity(current, legacy).source == source


@pytest.mark.parametrize(("cur_kind", "leg_kind"), list(WINNER), ids=[f"{c}-vs-{lg}" for c, lg
                                                                       in WINNER])
def test_merge_keeps_the_chosen_identity(cur_kind, leg_kind):
    current = {"version": "6", "registration_token": "reg-cur", **ident(cur_kind, A, "cur")}
    legacy = {"registration_token": "reg-leg", **ident(leg_kind, B, "leg")}
    merged, _ = merge_legacy(current, legacy)
    choice = choose_identity(current, legacy)
    assert {k: merged[k] for k in ("agent_id", "token", "refresh_token")
            if merged.get(k)} == choice.identity
    if choice.kind == COMPLETE:
        assert "registration_token" not in merged
    else:
        assert merged["registration_token"] == "reg-cur"


# status before the migration == status after it: the identity status promised is kept
@pytest.mark.parametrize(("cur_kind", "leg_kind", "same"), [
    (INCOMPLETE, COMPLETE, False),  # the case of issue 12
    (INCOMPLETE, COMPLETE, True),
    (TOKEN_ONLY, COMPLETE, False),
    (COMPLETE, COMPLETE, False),
    (COMPLETE, INCOMPLETE, False),
    (ABSENT, COMPLETE, False),
    (INCOMPLETE, INCOMPLETE, False),
])
def test_status_promises_what_migrate_keeps(tmp_root, cur_kind, leg_kind, same):
    current = {"version": "6", "server_url": SERVER, "registration_token": "reg-cur",
               **ident(cur_kind, A, "cur")}
    legacy = {"server_url": SERVER, **ident(leg_kind, A if same else B, "leg")}
    make_legacy(tmp_root, cfg=legacy, state_files=False)
    make_current(tmp_root, current)
    tmp_root.state_dir.mkdir(parents=True)
    before = status.report(tmp_root, LOG)
    report = migration.execute(tmp_root, LOG)
    assert report.ok, report.message
    after = status.report(tmp_root, LOG)
    cfg = read_json(tmp_root.config_file)
    assert (after["registered"], after["agent_id"]) == (before["registered"],
                                                        before["agent_id"])
    assert after["identity_kind"] == before["identity_kind"]
    if before["registered"]:
        assert cfg["agent_id"] == before["agent_id"]
        assert "registration_token" not in cfg
        assert after["identity_source"] == "current"
        # the migration backup keeps the identity that lost
        backup = next(tmp_root.backups_dir.iterdir())
        texts = "".join(p.read_text() for p in backup.rglob("*.json"))
        for side in (current, legacy):
            for key in ("agent_id", "token", "refresh_token"):
                assert side.get(key, "") in texts, key
    else:
        assert not after["registered"] and cfg.get("registration_token") == "reg-cur"
