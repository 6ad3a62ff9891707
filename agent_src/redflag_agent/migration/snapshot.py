"""Read what the migration decision needs from disk into a Snapshot. Cheap: runs at every start."""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

from .. import safefs
from ..config import ConfigError, parse_config_bytes, read_config
from ..paths import Paths
from .layouts import PROBES, litter_names, takeover_layouts
from .model import (
    LAYOUT_0119,
    SECRET_TOKEN_NAMES,
    SECRET_URL_NAMES,
    Snapshot,
    UpstreamNames,
)
from .state import load_state

MAX_SECRET_BYTES = 64 * 1024
MAX_AGENT_ID_FILE = 4096
_AGENT_ID_RE = re.compile(r"^[0-9A-Fa-f]{8}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?"
                          r"[0-9A-Fa-f]{12}$")


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


def parse_upstream_config(data: bytes, path: Path) -> dict[str, Any]:
    """An upstream config (0.1.19-0.1.23, 0.2) as this agent reads configs, without its
    `version`: upstream numbers its config schema after its own agent version (CONTRACT 3),
    so a 0.2 "7" is no newer schema of ours; dropped, the config phase maps every field to
    schema 6 from scratch."""
    try:
        raw = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raw = None  # parse_config_bytes words the error
    if isinstance(raw, dict) and "version" in raw:
        raw.pop("version")
        data = json.dumps(raw).encode("utf-8")
    return parse_config_bytes(data, path)


def read_upstream_config(path: Path) -> Optional[dict[str, Any]]:
    """None when missing; ConfigError (caused by UnsafePath for a planted object) otherwise."""
    try:
        data = safefs.read_bytes(path, safefs.MAX_SMALL_FILE)
    except safefs.UnsafePath as exc:
        raise ConfigError(str(exc)) from exc
    return None if data is None else parse_upstream_config(data, path)


def read_agent_id_file(path: Path) -> Optional[str]:
    """0.2's /etc/redflag/agent_id: the UUID, or None (missing, planted or not a UUID)."""
    try:
        data = safefs.read_bytes(path, MAX_AGENT_ID_FILE)
        text = data.decode("utf-8").strip() if data is not None else ""
    except (OSError, UnicodeDecodeError, safefs.UnsafePath):
        return None
    return text if _AGENT_ID_RE.match(text) else None


def upstream_config(paths: Paths, layout: str) -> Optional[dict[str, Any]]:
    """A layout's config as the takeover sees it: 0.2's agent_id file fills an agent_id its
    config lacks (or stands alone when there is no config)."""
    if layout == LAYOUT_0119:
        return read_upstream_config(paths.v0119_config_file)
    cfg = read_upstream_config(paths.v02_config_file)
    file_id = read_agent_id_file(paths.v02_agent_id_file)
    if file_id and not (cfg or {}).get("agent_id"):
        cfg = {**(cfg or {}), "agent_id": file_id}
    return cfg


def _upstream(paths: Paths, kinds: dict[str, str]
              ) -> tuple[dict[str, dict[str, Any]], dict[str, str], UpstreamNames]:
    configs: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    for layout in takeover_layouts(kinds):
        try:
            cfg = upstream_config(paths, layout)
        except ConfigError as exc:
            if safefs.caused_by(exc) is None:
                errors[layout] = str(exc)
            continue  # a planted object: the takeover refuses it before any change (78)
        if cfg is not None:
            configs[layout] = cfg
    return configs, errors, upstream_names(paths, kinds)


def upstream_names(paths: Paths, kinds: Mapping[str, str]) -> UpstreamNames:
    if not takeover_layouts(kinds):
        return UpstreamNames()
    state = kinds.get("v02_state") == "dir"
    return UpstreamNames(
        etc=_names(paths.upstream_etc_dir),
        v02_config=_names(paths.v02_config_dir) if kinds.get("v02_config_dir") == "dir" else (),
        v02_state=_names(paths.v02_state_dir) if state else (),
        v02_state_sub=_names(paths.v02_state_dir / "state") if state else ())


def kind_of(path: Path) -> str:
    try:
        return safefs.kind(path)
    except (OSError, safefs.UnsafePath):
        return "other"  # something planted on the way: present, refused later


def _other_subdirs(paths: Paths) -> bool:
    """Whether the state directory may hold subdirectories besides our migration_backups,
    from its link count (2 + subdirectories), without listing it: plan() runs at every
    start. A filesystem that does not count (btrfs: 1) always says yes."""
    try:
        st = safefs.lstat(paths.state_dir)
        if st is None or not stat.S_ISDIR(st.st_mode):
            return False
        if st.st_nlink < 2:
            return True
        # ours: the migration's backups and the identities set aside (a clone's, a golden
        # image's): an agent start that creates one must not make the litter look due
        ours = sum(1 for d in (paths.backups_dir, paths.identity_backups_dir)
                   if safefs.kind(d) == "dir")
    except (OSError, safefs.UnsafePath):
        return False  # the migration's preflight reports a planted state directory
    return st.st_nlink - 2 - ours > 0


def subdir_names(directory: Path) -> tuple[str, ...]:
    """Names of the directories and symlinks in `directory` (plain files skipped): what a
    surplus backup of the old agent can be; [] when missing or refused."""
    try:
        fd = safefs.open_dir(directory)
    except (OSError, safefs.UnsafePath):
        return ()
    try:
        out = []
        for name in sorted(os.listdir(fd)):
            st = safefs.lstat_at(fd, name)
            if st is not None and (stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                out.append(name)
        return tuple(out)
    finally:
        os.close(fd)


def find_litter(paths: Paths) -> list[tuple[str, str]]:
    return litter_names(_names(paths.state_dir), subdir_names(paths.backups_dir),
                        _names(paths.v02_backups_dir))


def read_litter(paths: Paths, kinds: Mapping[str, str], state: Mapping[str, Any]
                ) -> tuple[tuple[str, str], ...]:
    """The loop's litter, looked for only while its removal is not recorded and there is a
    sign of an upstream agent (a layout to take over, or subdirectories that are not ours)."""
    if "litter" in state.get("completed", []):
        return ()
    if not (takeover_layouts(kinds) or _other_subdirs(paths)):
        return ()
    return tuple(find_litter(paths))


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
    kinds = {probe: kind_of(getattr(paths, attr)) for probe, attr in PROBES.items()}
    configs, errors, names = _upstream(paths, kinds)
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
        probes=kinds,
        upstream_configs=configs,
        upstream_errors=errors,
        upstream_names=names,
        litter=read_litter(paths, kinds, state),
    )
