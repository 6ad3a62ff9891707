"""One-time migration of legacy and older installs, decided purely from what is on disk.

plan() and summary() only read. execute() writes only when plan() has phases: then it takes
exactly one backup, records each completed phase, and rolls back on failure.

The executor and backup modules (shutil, hashlib, datetime, ...) are imported only when a
migration really runs: most starts only plan, and start-up time is paid on every start.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Optional

from .. import safefs
from ..paths import Paths
from .decide import blocked_identity, decide, stranded_identity
from .layouts import takeover_layouts
from .model import LAYOUT_0119, LAYOUT_02, MAX_ATTEMPTS, PHASES, MigrationError, Plan, Report
from .snapshot import read_snapshot
from .state import load_state, recorded_layout

__all__ = ["MAX_ATTEMPTS", "PHASES", "MigrationError", "Plan", "Report", "execute",
           "identity_left_behind", "migrated_from", "plan", "summary", "upstream_layout"]


def plan(paths: Paths, retry_failed: bool = False) -> Plan:
    return decide(read_snapshot(paths), retry_failed)


def execute(paths: Paths, log: logging.Logger, dry_run: bool = False, **kwargs: Any) -> Report:
    """See executor.execute (retry_failed, retention, environ)."""
    from .executor import execute as _execute  # noqa: PLC0415 - deferred, see module doc

    return _execute(paths, log, dry_run, **kwargs)


def summary(paths: Paths) -> dict[str, Any]:
    """For `status`: completed, pending, failures, backups (and a decision error, if any)."""
    from .backup import list_backups  # noqa: PLC0415 - deferred, see module doc

    snap = read_snapshot(paths)
    p = decide(snap)
    failures = {phase: {"attempts": info["attempts"], "reason": info.get("reason", "")}
                for phase, info in snap.state.get("failures", {}).items()}
    litter = snap.state.get("litter")
    return {
        "completed": list(snap.state.get("completed", [])),
        "pending": p.pending,
        "failures": failures,
        "backups": list_backups(paths),
        "error": p.error,
        # recorded once migrated, detected while pending (see upstream_layout())
        "upstream_layout": recorded_layout(snap.state) or p.upstream_layout,
        "litter": litter if isinstance(litter, dict) else None,
    }


def upstream_layout(paths: Paths) -> Optional[str]:
    """The upstream layout this host came from: "0.1.18", "0.1.19-0.1.23", "0.2" or None.
    From the migration state once migrated, from detection while a takeover is pending."""
    return summary(paths)["upstream_layout"]


def migrated_from(paths: Paths) -> Optional[str]:
    state, _ = load_state(paths)
    value = state.get("migrated_from")
    return value if isinstance(value, str) else None


def _raw_json(path: Any) -> Any:
    try:
        data = safefs.read_bytes(path, safefs.MAX_SMALL_FILE)
        return None if data is None else json.loads(data.decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError, safefs.UnsafePath):
        return None


def identity_left_behind(paths: Paths) -> Optional[str]:
    """Where a usable identity sits that the migration has not taken over (see
    decide.stranded_identity, and decide.blocked_identity for a config the migration
    refuses), only when no migration is pending to take it over."""
    snap = read_snapshot(paths)
    p = decide(snap)
    if p.phases:
        return None
    if p.error:
        refused = [paths.legacy_config_file] if snap.legacy_config_error else []
        files = {LAYOUT_0119: paths.v0119_config_file, LAYOUT_02: paths.v02_config_file}
        refused += [files[layout] for layout in sorted(snap.upstream_errors) if layout in files]
        # the refusal holds the other layouts back too: their identities are not taken over
        completed = snap.state.get("completed", [])
        if "takeover" not in completed:
            refused += [files[layout] for layout in takeover_layouts(snap.probes)
                        if layout in files]
        if "directory" not in completed and snap.legacy_present:
            refused.append(paths.legacy_config_file)
        where = blocked_identity([(str(f), _raw_json(f)) for f in dict.fromkeys(refused)])
        if where is not None:
            return where
    return stranded_identity(snap)
