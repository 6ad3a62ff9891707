"""The four phases. Each re-reads the disk it needs (an earlier phase may have changed it),
writes only atomically, and is safe to run again after a crash."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from .. import owner, safefs
from ..atomic import atomic_write_bytes
from ..config import (
    ConfigError,
    needs_schema_upgrade,
    read_config,
    save_config,
    upgrade_to_current,
    validate,
)
from ..paths import Paths
from ..version import CONFIG_SCHEMA_VERSION
from . import litter
from .faults import crash_point, write_point
from .layouts import PROBES, takeover_layouts
from .litter import rmdir_if_empty
from .merge import (
    apply_secrets,
    legacy_moves,
    merge_legacy,
    merge_upstream,
    rewrite_tls_paths,
    takeover_moves,
)
from .model import LAYOUT_0119, LAYOUT_02, SECRET_TOKEN_NAMES, SECRET_URL_NAMES, MigrationError
from .snapshot import in_container, kind_of, read_secret, upstream_config, upstream_names


@dataclass
class Context:
    paths: Paths
    log: logging.Logger
    environ: Optional[Mapping[str, str]] = None
    # what phases report back (the litter figures)
    results: dict[str, Any] = field(default_factory=dict)


def _read(path: Path) -> Optional[dict[str, Any]]:
    try:
        return read_config(path)
    except ConfigError as exc:
        raise MigrationError(str(exc)) from exc  # the cause tells a planted object apart


def _names(directory: Path) -> tuple[str, ...]:
    return tuple(safefs.listdir(directory))


def _save(ctx: Context, phase: str, cfg: dict[str, Any]) -> None:
    write_point(ctx.paths, phase, ctx.environ)
    save_config(ctx.paths, cfg)


def _check_identity(ctx: Context, expected: dict[str, Any], what: str) -> None:
    """Load the written config back and compare the identity with what was meant."""
    reread = _read(ctx.paths.config_file)
    if reread is None:
        raise MigrationError(f"{ctx.paths.config_file} vanished right after {what}")
    for key in ("agent_id", "refresh_token", "registration_token"):
        if reread.get(key) != expected.get(key):
            raise MigrationError(f"{ctx.paths.config_file}: {key} read back after {what} "
                                 "differs from what was written (disk or filesystem "
                                 "problem?)")


def _remove_legacy(ctx: Context) -> None:
    """fd walks: a symlink in the legacy trees is removed, never followed."""
    paths = ctx.paths
    if safefs.kind(paths.legacy_state_dir) == "dir":
        for name in _names(paths.legacy_state_dir):
            safefs.remove(paths.legacy_state_dir / name)
        _rmdir_emptied(ctx, paths.legacy_state_dir)
    crash_point(paths, "directory", "removing", ctx.environ)
    if safefs.kind(paths.legacy_config_dir) == "dir":
        # the legacy config goes last: while it exists the identity is on disk twice
        for name in _names(paths.legacy_config_dir):
            p = paths.legacy_config_dir / name
            if p != paths.legacy_config_file:
                safefs.remove(p)
        safefs.remove(paths.legacy_config_file)
        _rmdir_emptied(ctx, paths.legacy_config_dir)


def _rmdir_emptied(ctx: Context, directory: Path) -> None:
    if not rmdir_if_empty(directory) and safefs.kind(directory) == "dir":
        ctx.log.info("%s emptied; the directory itself stays (a mount point in the migration "
                     "unit's sandbox); the role's next run removes it", directory)


def _copy_moves(ctx: Context, moves: list[tuple[Path, Path]], phase: str
                ) -> list[tuple[Path, Path]]:
    """Copy each (source, destination); an existing different destination is kept (the
    source stays in the backup). Returns the pairs copied or already identical."""
    paths, log = ctx.paths, ctx.log
    copied: list[tuple[Path, Path]] = []
    for src, dst in moves:
        # a planted object at either end was refused before the backup; read_bytes and
        # write_bytes refuse one planted since (UnsafePath rolls the migration back)
        data = safefs.read_bytes(src, safefs.MAX_FILE)
        if data is None:
            log.warning("%s vanished; left in the migration backup only", src)
            continue
        existing = safefs.read_bytes(dst, safefs.MAX_FILE)
        if existing is not None:
            if existing != data:
                log.warning("%s already exists and differs from %s; keeping the current one "
                            "(the upstream copy stays in the migration backup)", dst, src)
                continue
        else:
            safefs.make_dirs(dst.parent, 0o750)
            write_point(paths, phase, ctx.environ)
            atomic_write_bytes(dst, data, 0o600)
        copied.append((src, dst))
    return copied


def _carry_over(ctx: Context, current: Optional[dict[str, Any]],
                merge: tuple[Optional[dict[str, Any]], list[str]], moves: list[tuple[Path, Path]],
                *, phase: str, what: str
                ) -> tuple[Optional[dict[str, Any]], list[tuple[Path, Path]]]:
    """The step the directory and takeover phases share: save the merged config (TLS paths
    pointed at the copies), copy the files over, read the identity back. Returns the merged
    config and the pairs copied."""
    merged, notes = merge
    for note in notes:
        ctx.log.warning(note)
    if merged is not None:
        merged = rewrite_tls_paths(merged, ctx.paths, moves)
        if merged != current:
            _save(ctx, phase, merged)
    copied = _copy_moves(ctx, moves, phase)
    if merged is not None:
        _check_identity(ctx, merged, what)
    return merged, copied


def _verify_copies(copied: list[tuple[Path, Path]]) -> None:
    for src, dst in copied:
        if safefs.read_bytes(dst, safefs.MAX_FILE) != safefs.read_bytes(src, safefs.MAX_FILE):
            raise MigrationError(f"{dst} differs from {src} after copying; nothing removed")


def run_directory(ctx: Context) -> None:
    paths, log = ctx.paths, ctx.log
    legacy = (_read(paths.legacy_config_file)
              if safefs.kind(paths.legacy_config_dir) != "missing" else None)
    current = _read(paths.config_file)
    moves = legacy_moves(paths, _names(paths.legacy_config_dir), _names(paths.legacy_state_dir),
                         legacy)
    merged, copied = _carry_over(ctx, current, merge_legacy(current, legacy), moves,
                                 phase="directory", what="the directory migration")
    if merged is not None and legacy and legacy.get("agent_id") and not (
            current or {}).get("agent_id") and merged.get("agent_id") != legacy["agent_id"]:
        raise MigrationError("the migrated config lost the legacy agent_id; nothing removed")
    _verify_copies(copied)
    crash_point(paths, "directory", "verified", ctx.environ)
    _remove_legacy(ctx)
    log.info("moved the legacy layout into %s and %s (agent_id %s); legacy directories removed",
             paths.config_dir, paths.state_dir, (merged or {}).get("agent_id") or "none yet")


def _upstream_configs(ctx: Context, layouts: tuple[str, ...]
                      ) -> dict[str, Optional[dict[str, Any]]]:
    out: dict[str, Optional[dict[str, Any]]] = {}
    for layout in layouts:
        try:
            out[layout] = upstream_config(ctx.paths, layout)
        except ConfigError as exc:
            raise MigrationError(str(exc)) from exc  # the cause tells a planted object apart
    return out


def _remove_upstream(ctx: Context, moves: list[tuple[Path, Path]]) -> list[str]:
    """fd walks, never following a symlink. The configs go last: while one exists the
    identity is on disk twice. Returns what stays (unknown entries, 0.2's litter)."""
    paths = ctx.paths
    for name in _names(paths.v02_state_dir) if safefs.kind(paths.v02_state_dir) == "dir" else ():
        if name != paths.v02_backups_dir.name:
            safefs.remove(paths.v02_state_dir / name)
    if safefs.kind(paths.v02_state_dir) == "dir":
        safefs.fsync_dir(paths.v02_state_dir)
    for d in (paths.v02_backups_dir, paths.v02_state_dir, paths.upstream_lib_dir):
        if not rmdir_if_empty(d) and safefs.kind(d) != "missing":
            break  # 0.2's own backups are litter: the litter phase removes them, then these
    crash_point(paths, "takeover", "removing", ctx.environ)
    for p in (paths.v02_server_dir, paths.v02_agent_id_file,
              *(src for src, _dst in moves if src.parent == paths.upstream_etc_dir)):
        safefs.remove(p)
    for name in _names(paths.v02_config_dir) if safefs.kind(paths.v02_config_dir) == "dir" else ():
        if name != "config.json":
            safefs.remove(paths.v02_config_dir / name)
    safefs.remove(paths.v02_config_file)
    rmdir_if_empty(paths.v02_config_dir)
    safefs.remove(paths.v0119_config_file)
    left = [str(paths.upstream_etc_dir / n) for n in _names(paths.upstream_etc_dir)]
    if safefs.kind(paths.upstream_etc_dir) == "dir" and not rmdir_if_empty(paths.upstream_etc_dir):
        safefs.fsync_dir(paths.upstream_etc_dir)
    return left


def run_takeover(ctx: Context) -> None:
    """Take over the later upstream layouts (0.1.19-0.1.23's /etc/redflag/config.json, 0.2's
    /etc/redflag/agent, agent_id, server/ and /var/lib/redflag/agent): their configs merged
    into ours (merge_upstream: identity by choose_identity), certificates and state files
    copied over, the identity read back, then the upstream files removed (they are in the
    backup). Upstream binaries, units, sudoers and polkit rules are the role's."""
    paths, log = ctx.paths, ctx.log
    kinds = {probe: kind_of(getattr(paths, attr)) for probe, attr in PROBES.items()}
    layouts = takeover_layouts(kinds)
    configs = _upstream_configs(ctx, layouts)
    current = _read(paths.config_file)
    moves = takeover_moves(paths, upstream_names(paths, kinds), configs.get(LAYOUT_0119),
                           configs.get(LAYOUT_02))
    merged, copied = _carry_over(
        ctx, current, merge_upstream(current, [(lt, configs.get(lt)) for lt in reversed(layouts)]),
        moves, phase="takeover", what="the takeover")
    ids = [c.get("agent_id") for c in configs.values() if c and c.get("agent_id")]
    if ids and not (merged or {}).get("agent_id"):
        raise MigrationError("the migrated config lost the upstream agent_id; nothing removed")
    _verify_copies(copied)
    crash_point(paths, "takeover", "verified", ctx.environ)
    left = _remove_upstream(ctx, moves)
    if left:
        log.warning("left in place in %s (not the upstream agent's): %s",
                    paths.upstream_etc_dir, ", ".join(left))
    log.info("took over the upstream %s layout into %s (agent_id %s); upstream files removed "
             "(kept in the migration backup)%s", " and ".join(layouts), paths.config_dir,
             (merged or {}).get("agent_id") or "none yet",
             f"; upstream logs left in {paths.v02_log_dir}"
             if safefs.kind(paths.v02_log_dir) == "dir" else "")


def run_litter(ctx: Context) -> None:
    """Remove the restart loop's litter (litter.py), judged against the migrated config."""
    migrated = _read(ctx.paths.config_file)

    def hook(done: int, total: int) -> None:
        if done == max(1, total // 2):
            crash_point(ctx.paths, "litter", "removing", ctx.environ)

    ctx.results["litter"] = litter.remove(ctx.paths, migrated, ctx.log, hook).to_dict()


def run_config(ctx: Context) -> None:
    cfg = _read(ctx.paths.config_file)
    if cfg is None or not needs_schema_upgrade(cfg):
        return
    new = upgrade_to_current(cfg)
    try:
        validate(new, ctx.paths.config_file)
    except ConfigError as exc:
        raise MigrationError(f"the upgraded config would be invalid: {exc}") from None
    _save(ctx, "config", new)
    _check_identity(ctx, new, "the schema upgrade")
    reread = _read(ctx.paths.config_file) or {}
    if reread.get("version") != CONFIG_SCHEMA_VERSION:
        raise MigrationError(f"{ctx.paths.config_file}: version read back is not "
                             f"{CONFIG_SCHEMA_VERSION!r} after the upgrade")
    ctx.log.info("config schema upgraded to %s in %s", CONFIG_SCHEMA_VERSION,
                 ctx.paths.config_file)


def run_docker_secrets(ctx: Context) -> None:
    paths = ctx.paths
    env = os.environ if ctx.environ is None else ctx.environ
    if not in_container(paths, env):
        return
    token = read_secret(paths.secrets_dir, SECRET_TOKEN_NAMES)
    url = read_secret(paths.secrets_dir, SECRET_URL_NAMES)
    cfg = _read(paths.config_file)
    new = apply_secrets(cfg, token, url)
    if cfg is None:
        new = upgrade_to_current(new)
    if new == cfg:
        return
    _save(ctx, "docker_secrets", new)
    _check_identity(ctx, new, "taking in the container secrets")
    taken = [k for k in ("server_url", "registration_token")
             if new.get(k) != (cfg or {}).get(k)]
    ctx.log.info("took %s from container secrets in %s", " and ".join(taken), paths.secrets_dir)


def run_security(ctx: Context) -> None:
    paths = ctx.paths
    write_point(paths, "security", ctx.environ)
    plan: list[tuple[Path, int, str]] = [
        (paths.config_dir, 0o750, "dir"), (paths.state_dir, 0o750, "dir"),
        (paths.config_file, 0o600, "file"), (paths.backups_dir, 0o700, "dir")]
    plan += [(paths.backups_dir / name, 0o700, "dir") for name in _names(paths.backups_dir)]
    plan += [(paths.state_dir / name, 0o600, "file") for name in _names(paths.state_dir)]
    plan += [(paths.config_dir / name, 0o600, "file") for name in _names(paths.config_dir)]
    ids = owner.agent_ids() if os.geteuid() == 0 else None
    uid, gid = ids if ids is not None else (None, None)
    for path, mode, expect in plan:
        # only what is really a directory or plain file: symlinks and others are left alone,
        # and a hard-linked or foreign file is refused (UnsafePath) by set_attrs
        if safefs.kind(path) != expect:
            continue
        safefs.set_attrs(path, mode, uid, gid, expect=expect)
    ctx.log.info("permissions hardened: %s and %s 0750, config 0600, backups 0700",
                 paths.config_dir, paths.state_dir)


RUNNERS: dict[str, Callable[[Context], None]] = {
    "takeover": run_takeover,
    "directory": run_directory,
    "config": run_config,
    "docker_secrets": run_docker_secrets,
    "security": run_security,
    "litter": run_litter,
}
