"""Pure decisions about config content: legacy/current merge, legacy file moves, docker secrets."""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..config import IDENTITY_KEYS, is_registered, schema_version_of
from ..paths import Paths
from .model import (
    LEGACY_STATE_NAMES,
    LEGACY_STATE_SUFFIXES,
    UPSTREAM_BOOKKEEPING_KEYS,
    UpstreamNames,
)

TLS_FILE_KEYS = ("cert_file", "key_file", "ca_file")


def _has(cfg: dict[str, Any], key: str) -> bool:
    return bool(cfg.get(key))


def _older_version(current: dict[str, Any], legacy: dict[str, Any]) -> tuple[bool, Any]:
    """(present, value): the lower schema version of the two; a missing one is the lowest."""
    lv, cv = schema_version_of(legacy), schema_version_of(current)
    if lv is None or cv is None:
        return False, None
    return True, legacy["version"] if lv < cv else current["version"]


# How far an identity gets with the server (CONTRACT 4): a refresh token renews the access
# token for 90 days at a time, so agent_id + refresh_token can authenticate; agent_id + an
# access token works only until that JWT lapses (24 h) and cannot renew; agent_id alone
# cannot authenticate at all.
COMPLETE = "complete"
TOKEN_ONLY = "token_only"  # noqa: S105 - a kind of identity, not a secret
INCOMPLETE = "incomplete"
ABSENT = "absent"
_RANK = {ABSENT: 0, INCOMPLETE: 1, TOKEN_ONLY: 2, COMPLETE: 3}


def identity_kind(cfg: Optional[dict[str, Any]]) -> str:
    cfg = cfg or {}
    if not _has(cfg, "agent_id"):
        return ABSENT
    if _has(cfg, "refresh_token"):
        return COMPLETE
    if _has(cfg, "token"):
        return TOKEN_ONLY
    return INCOMPLETE


def identity_rank(cfg: Optional[dict[str, Any]]) -> int:
    return _RANK[identity_kind(cfg)]


@dataclass(frozen=True)
class IdentityChoice:
    source: Optional[str]  # "current", "legacy", or None when neither holds an agent_id
    kind: str  # identity_kind of the chosen identity
    identity: dict[str, Any]  # the identity keys to keep (only the non-empty ones)
    note: Optional[str] = None  # why another identity was set aside (names ids, no secrets)

    @property
    def registered(self) -> bool:
        return self.kind == COMPLETE


def _identity_of(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: cfg[k] for k in IDENTITY_KEYS if _has(cfg, k)}


def choose_identity(current: Optional[dict[str, Any]], legacy: Optional[dict[str, Any]]
                    ) -> IdentityChoice:
    """Pure: which identity a host keeps when it has a current and a legacy config.

    - Same agent_id in both: one agent; each key from the current config, gaps filled from
      the legacy one (a newer JWT beside the legacy refresh token is still that agent's).
    - Otherwise the identity that gets further with the server wins (complete > token only
      > incomplete > absent), the current one on a tie; tokens of two agents never mix.
    The loser stays in the migration backup (which copies both files)."""
    cur, leg = current or {}, legacy or {}
    cur_id, leg_id = cur.get("agent_id"), leg.get("agent_id")
    if cur_id and cur_id == leg_id:
        combined = {**_identity_of(leg), **_identity_of(cur)}
        source = "current" if combined == _identity_of(cur) else "legacy"
        return IdentityChoice(source, identity_kind(combined), combined)
    cur_kind, leg_kind = identity_kind(cur), identity_kind(leg)
    if cur_kind == ABSENT and leg_kind == ABSENT:
        return IdentityChoice(None, ABSENT, {})
    if _RANK[leg_kind] > _RANK[cur_kind]:
        winner, loser, source = leg, cur, "legacy"
    else:
        winner, loser, source = cur, leg, "current"
    note = None
    if loser.get("agent_id"):
        other = "legacy" if source == "current" else "current"
        note = (f"the {other} config holds another agent_id ({loser['agent_id']}, identity "
                f"{identity_kind(loser)}) than the {source} one ({winner['agent_id']}, "
                f"identity {identity_kind(winner)}); the {source} identity is kept and the "
                f"{other} one stays in the migration backup")
    return IdentityChoice(source, identity_kind(winner), _identity_of(winner), note)


def choose_identity_among(candidates: Sequence[tuple[str, Optional[dict[str, Any]]]]
                          ) -> IdentityChoice:
    """Pure: choose_identity over N configs, given as (source name, config) in order of
    preference: an earlier one wins a tie, the same agent_id in two is one agent (gaps filled
    from the later). A fold of the two-config rule, so both always agree."""
    acc: Optional[dict[str, Any]] = None
    source: Optional[str] = None
    notes: list[str] = []
    for name, cfg in candidates:
        if cfg is None:
            continue
        choice = choose_identity(acc, cfg)
        same_agent = bool(acc) and _has(acc, "agent_id") and acc.get("agent_id") == cfg.get(
            "agent_id")
        winner = name if choice.source == "legacy" and not same_agent else source
        if choice.note:
            loser = source if winner == name else name
            notes.append(f"{loser} holds another agent_id than {winner}; {winner}'s identity "
                         f"is kept and {loser}'s stays in the migration backup")
        source = winner
        acc = choice.identity
    kind = identity_kind(acc)
    return IdentityChoice(source if kind != ABSENT else None, kind, dict(acc or {}),
                          "; ".join(notes) or None)


def strip_bookkeeping(cfg: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """An upstream config without the keys that describe the upstream agent itself."""
    if cfg is None:
        return None
    return {k: v for k, v in cfg.items() if k not in UPSTREAM_BOOKKEEPING_KEYS}


_DROPPED_NOTE = (
    "the registration token is dropped: the host keeps its complete identity "
    "(agent_id and refresh token), and enrolling again would spend a seat")


def merge_legacy(current: Optional[dict[str, Any]], legacy: Optional[dict[str, Any]]
                 ) -> tuple[Optional[dict[str, Any]], list[str]]:
    """The config after moving a legacy config next to (or into) the current one.

    The identity is the one choose_identity picks; beside a complete identity no
    registration_token is kept (it would only spend a seat). Otherwise a registration_token
    comes from the current config, or from the legacy one when the current lacks it. For
    every other key the current value wins; nested objects merge key by key; unknown keys of
    both survive. The version becomes the older of the two (missing counts as oldest) so
    that the config phase normalizes legacy field shapes.
    Returns (merged, notes); notes explain choices worth logging (no secret values).
    """
    notes: list[str] = []
    if legacy is None:
        return (copy.deepcopy(current) if current is not None else None), notes
    out = copy.deepcopy(legacy)
    if current is None:
        if identity_kind(legacy) == COMPLETE and "registration_token" in out:
            out.pop("registration_token")
            notes.append(_DROPPED_NOTE)
        return out, notes
    for key, value in current.items():
        if key in IDENTITY_KEYS or key in ("registration_token", "version"):
            continue
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **copy.deepcopy(value)}
        else:
            out[key] = copy.deepcopy(value)

    choice = choose_identity(current, legacy)
    if choice.source is None:
        # neither holds an agent_id: keep whatever identity keys (nulls) the files have
        for key in IDENTITY_KEYS:
            if not _has(legacy, key) and key in current:
                out[key] = current[key]
    else:
        for key in IDENTITY_KEYS:
            if key in choice.identity:
                out[key] = choice.identity[key]
            else:
                out.pop(key, None)
    if choice.note:
        notes.append(choice.note)
    if choice.registered:
        if _has(out, "registration_token") or _has(current, "registration_token"):
            notes.append(_DROPPED_NOTE)
        out.pop("registration_token", None)
    # a current token wins; a current explicit null only fills a gap
    elif _has(current, "registration_token") or (
            "registration_token" not in out and "registration_token" in current):
        out["registration_token"] = current["registration_token"]

    present, version = _older_version(current, legacy)
    if present:
        out["version"] = version
    else:
        out.pop("version", None)
    return out, notes


def logical(paths: Paths, path: Path) -> str:
    """The host path a config file would name: `path` without the REDFLAG_ROOT prefix."""
    return "/" + os.path.relpath(path, paths.root).replace(os.sep, "/")


def _is_state_name(name: str) -> bool:
    return name in LEGACY_STATE_NAMES or name.endswith(LEGACY_STATE_SUFFIXES)


def legacy_moves(paths: Paths, config_names: tuple[str, ...], state_names: tuple[str, ...],
                 legacy_cfg: Optional[dict[str, Any]]) -> list[tuple[Path, Path]]:
    """(source, destination) of every legacy file the new layout takes over."""
    moves: list[tuple[Path, Path]] = []
    referenced: set[str] = set()
    tls = (legacy_cfg or {}).get("tls")
    if isinstance(tls, dict):
        referenced = {v for k, v in tls.items() if k in TLS_FILE_KEYS and isinstance(v, str)}
    for name in state_names:
        src = paths.legacy_state_dir / name
        if _is_state_name(name) or logical(paths, src) in referenced:
            moves.append((src, paths.state_dir / name))
    for name in config_names:
        src = paths.legacy_config_dir / name
        if src == paths.legacy_config_file:
            continue
        if name.endswith(LEGACY_STATE_SUFFIXES) or logical(paths, src) in referenced:
            moves.append((src, paths.config_dir / name))
    return moves


def rewrite_tls_paths(cfg: dict[str, Any], paths: Paths,
                      moves: list[tuple[Path, Path]]) -> dict[str, Any]:
    """Point tls.* file settings at the moved copies, so removing the legacy dirs breaks nothing."""
    tls = cfg.get("tls")
    if not isinstance(tls, dict):
        return cfg
    mapping = {logical(paths, src): logical(paths, dst) for src, dst in moves}
    out = copy.deepcopy(cfg)
    for key in TLS_FILE_KEYS:
        value = tls.get(key)
        if isinstance(value, str) and value in mapping:
            out["tls"][key] = mapping[value]
    return out


def apply_secrets(cfg: Optional[dict[str, Any]], token: Optional[str],
                  server_url: Optional[str]) -> dict[str, Any]:
    """The config with docker secrets taken in: the server URL always, the registration token
    only while the host is not registered (a registered agent has no use for it)."""
    out = copy.deepcopy(cfg) if cfg is not None else {}
    if server_url and out.get("server_url") != server_url:
        out["server_url"] = server_url
    if token and not is_registered(out) and out.get("registration_token") != token:
        out["registration_token"] = token
    return out


def merge_upstream(current: Optional[dict[str, Any]],
                   sources: Sequence[tuple[str, Optional[dict[str, Any]]]]
                   ) -> tuple[Optional[dict[str, Any]], list[str]]:
    """The config after taking over upstream configs, given newest first. merge_legacy
    folded: the current config's settings win, then the newer layout's; the identity is
    choose_identity's, the earlier (current, then newer) winning a tie. Upstream bookkeeping
    keys are dropped (UPSTREAM_BOOKKEEPING_KEYS); every other unknown key survives."""
    acc = copy.deepcopy(current) if current is not None else None
    notes: list[str] = []
    for name, cfg in sources:
        if cfg is None:
            continue
        acc, more = merge_legacy(acc, strip_bookkeeping(cfg))
        # merge_legacy's words: its "legacy" is this layout, its "current" all merged so far
        notes.extend(n.replace("the legacy", f"the upstream {name}").replace(
            "the current", "the current (or a newer upstream)") for n in more)
    return acc, notes


def _cert_like(name: str) -> bool:
    return name.endswith(LEGACY_STATE_SUFFIXES)


def _referenced(cfg: Optional[dict[str, Any]]) -> set[str]:
    tls = (cfg or {}).get("tls")
    if not isinstance(tls, dict):
        return set()
    return {v for k, v in tls.items() if k in TLS_FILE_KEYS and isinstance(v, str)}


def takeover_moves(paths: Paths, names: UpstreamNames, v0119_cfg: Optional[dict[str, Any]],
                   v02_cfg: Optional[dict[str, Any]]) -> list[tuple[Path, Path]]:
    """(source, destination) of every upstream file the takeover keeps in our layout:
    certificates and keys (or files tls.* names) from the config directories into ours,
    legacy state files from 0.2's state directory into ours. 0.2 first: on a name clash
    the newer copy lands and the older one stays in the backup."""
    moves: list[tuple[Path, Path]] = []
    v02_refs, v0119_refs = _referenced(v02_cfg), _referenced(v0119_cfg)
    for name in names.v02_config:
        src = paths.v02_config_dir / name
        if name != "config.json" and (_cert_like(name) or logical(paths, src) in v02_refs):
            moves.append((src, paths.config_dir / name))
    for base, listed in ((paths.v02_state_dir / "state", names.v02_state_sub),
                         (paths.v02_state_dir, names.v02_state)):
        for name in listed:
            src = base / name
            if _is_state_name(name) or logical(paths, src) in v02_refs:
                moves.append((src, paths.state_dir / name))
    for name in names.etc:
        src = paths.upstream_etc_dir / name
        if name in ("config.json", "agent", "agent_id", "server"):
            continue
        if _cert_like(name) or logical(paths, src) in v0119_refs:
            moves.append((src, paths.config_dir / name))
    return moves
