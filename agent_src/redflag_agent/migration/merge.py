"""Pure decisions about config content: legacy/current merge, legacy file moves, docker secrets."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Optional

from ..config import IDENTITY_KEYS, is_registered, schema_version_of
from ..paths import Paths
from .model import LEGACY_STATE_NAMES, LEGACY_STATE_SUFFIXES

TLS_FILE_KEYS = ("cert_file", "key_file", "ca_file")


def _has(cfg: dict[str, Any], key: str) -> bool:
    return bool(cfg.get(key))


def _older_version(current: dict[str, Any], legacy: dict[str, Any]) -> tuple[bool, Any]:
    """(present, value): the lower schema version of the two; a missing one is the lowest."""
    lv, cv = schema_version_of(legacy), schema_version_of(current)
    if lv is None or cv is None:
        return False, None
    return True, legacy["version"] if lv < cv else current["version"]


def merge_legacy(current: Optional[dict[str, Any]], legacy: Optional[dict[str, Any]]
                 ) -> tuple[Optional[dict[str, Any]], list[str]]:
    """The config after moving a legacy config next to (or into) the current one.

    Identity (agent_id with its tokens) and registration_token come from the legacy config
    when the current lacks them; for every other key the current value wins; nested objects
    merge key by key; unknown keys of both survive. The version becomes the older of the two
    (missing counts as oldest) so that the config phase normalizes legacy field shapes.
    Returns (merged, notes); notes explain choices worth logging (no secret values).
    """
    notes: list[str] = []
    if legacy is None:
        return (copy.deepcopy(current) if current is not None else None), notes
    if current is None:
        return copy.deepcopy(legacy), notes
    out = copy.deepcopy(legacy)
    for key, value in current.items():
        if key in IDENTITY_KEYS or key in ("registration_token", "version"):
            continue
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **copy.deepcopy(value)}
        else:
            out[key] = copy.deepcopy(value)

    cur_id, leg_id = current.get("agent_id"), legacy.get("agent_id")
    if cur_id:
        # the current identity wins as a whole; never mix tokens of two agents
        for key in IDENTITY_KEYS:
            if _has(current, key):
                out[key] = current[key]
            elif leg_id == cur_id and _has(legacy, key):
                out[key] = legacy[key]
            else:
                out.pop(key, None)
        if leg_id and leg_id != cur_id:
            notes.append(f"the legacy config holds another agent_id ({leg_id}) than the "
                         f"current one ({cur_id}); the current identity is kept and the "
                         "legacy one stays in the migration backup")
    else:
        for key in IDENTITY_KEYS:
            if not _has(legacy, key) and key in current:
                out[key] = current[key]
    # a current token wins; a current explicit null only fills a gap
    if _has(current, "registration_token") or (
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
