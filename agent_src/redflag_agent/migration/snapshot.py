"""Read what the migration decision needs from disk into a Snapshot. Cheap: runs at every start."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

from .. import safefs
from ..config import ConfigError, read_config
from ..paths import Paths
from .model import SECRET_TOKEN_NAMES, SECRET_URL_NAMES, Snapshot
from .state import load_state

MAX_SECRET_BYTES = 64 * 1024


def in_container(paths: Paths, environ: Mapping[str, str]) -> bool:
    markers = (paths.root / "run" / ".containerenv", paths.root / ".dockerenv")
    return bool(environ.get("container")) or any(m.exists() for m in markers)


def read_secret(directory: Path, names: tuple[str, ...]) -> Optional[str]:
    """The first non-empty secret among `names`, stripped; regular files only (a symlink or
    FIFO there is skipped, never followed), at most 64 KiB. /run/secrets is root's, so the
    owner and link count of a (bind-mounted) secret are not checked."""
    for name in names:
        try:
            data = safefs.read_bytes(directory / name, MAX_SECRET_BYTES, strict=False)
            value = data.decode("utf-8").strip() if data is not None else ""
        except (OSError, UnicodeDecodeError, safefs.UnsafePath):
            continue
        if value:
            return value
    return None


def _names(directory: Path) -> tuple[str, ...]:
    try:
        return tuple(safefs.listdir(directory))
    except (OSError, safefs.UnsafePath):
        return ()


def _config(path: Path, unsafe_is_error: bool = True
            ) -> tuple[bool, Optional[dict[str, Any]], Optional[str]]:
    try:
        cfg = read_config(path)
    except ConfigError as exc:
        if safefs.caused_by(exc) is not None and not unsafe_is_error:
            # a planted legacy config: the directory phase is due and refuses it (78)
            return True, None, None
        return True, None, str(exc)
    return cfg is not None, cfg, None


def _present(path: Path) -> bool:
    """A legacy directory counts as present when anything stands at its path: a planted
    symlink or file makes the directory phase due, and the migration refuses it (78)."""
    try:
        return safefs.kind(path) != "missing"
    except (OSError, safefs.UnsafePath):
        return True


def read_snapshot(paths: Paths, environ: Optional[Mapping[str, str]] = None) -> Snapshot:
    env = os.environ if environ is None else environ
    legacy_cfg_dir = _present(paths.legacy_config_dir)
    legacy_state_dir = _present(paths.legacy_state_dir)
    legacy_present, legacy_cfg, legacy_err = (False, None, None)
    if legacy_cfg_dir:
        legacy_present, legacy_cfg, legacy_err = _config(paths.legacy_config_file,
                                                         unsafe_is_error=False)
    cur_present, cur_cfg, cur_err = _config(paths.config_file)
    state, state_err = load_state(paths)
    container = in_container(paths, env)
    token = url = None
    if container:
        token = read_secret(paths.secrets_dir, SECRET_TOKEN_NAMES)
        url = read_secret(paths.secrets_dir, SECRET_URL_NAMES)
    return Snapshot(
        paths=paths,
        legacy_config_dir_present=legacy_cfg_dir,
        legacy_state_dir_present=legacy_state_dir,
        legacy_config_present=legacy_present,
        legacy_config=legacy_cfg,
        legacy_config_error=legacy_err,
        legacy_config_names=_names(paths.legacy_config_dir) if legacy_cfg_dir else (),
        legacy_state_names=_names(paths.legacy_state_dir) if legacy_state_dir else (),
        current_config_present=cur_present,
        current_config=cur_cfg,
        current_config_error=cur_err,
        state=state,
        state_error=state_err,
        in_container=container,
        secret_token=token,
        secret_server_url=url,
    )
