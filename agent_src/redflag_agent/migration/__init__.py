"""One-time migration of legacy and older installs, decided purely from what is on disk.

plan() and summary() only read. execute() writes only when plan() has phases: then it takes
exactly one backup, records each completed phase, and rolls back on failure.
"""

from __future__ import annotations

from typing import Any, Optional

from ..paths import Paths
from .backup import list_backups
from .decide import decide
from .executor import execute
from .model import MAX_ATTEMPTS, PHASES, MigrationError, Plan, Report
from .snapshot import read_snapshot
from .state import load_state

__all__ = ["MAX_ATTEMPTS", "PHASES", "MigrationError", "Plan", "Report", "execute",
           "migrated_from", "plan", "summary"]


def plan(paths: Paths) -> Plan:
    return decide(read_snapshot(paths))


def summary(paths: Paths) -> dict[str, Any]:
    """For `status`: completed, pending, failures, backups (and a decision error, if any)."""
    snap = read_snapshot(paths)
    p = decide(snap)
    failures = {phase: {"attempts": info["attempts"], "reason": info.get("reason", "")}
                for phase, info in snap.state.get("failures", {}).items()}
    return {
        "completed": list(snap.state.get("completed", [])),
        "pending": p.pending,
        "failures": failures,
        "backups": list_backups(paths),
        "error": p.error,
    }


def migrated_from(paths: Paths) -> Optional[str]:
    state, _ = load_state(paths)
    value = state.get("migrated_from")
    return value if isinstance(value, str) else None
