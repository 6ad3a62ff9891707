"""migration_state.json: which phases completed, failures, the migration in progress.

normalize() is pure; load/save are the thin I/O around it. Every save is atomic.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
from typing import Any, Optional

from .. import safefs
from ..atomic import atomic_write_json
from ..paths import Paths
from .model import LAYOUT_0118, LAYOUTS, PHASES

# phases whose completion means the host's upstream layout was taken over (or cleaned up)
ORIGIN_PHASES = ("takeover", "directory", "litter")

STATE_FORMAT = 1


def empty_state() -> dict[str, Any]:
    return {"format": STATE_FORMAT, "completed": [], "failures": {}}


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def normalize(raw: Any) -> dict[str, Any]:
    """Pure: a validated copy of a parsed state file. ValueError says what is wrong."""
    if not isinstance(raw, dict):
        raise ValueError("the top level must be a JSON object")
    state = copy.deepcopy(raw)
    completed = state.get("completed", [])
    if not isinstance(completed, list) or not all(p in PHASES for p in completed):
        raise ValueError(f"'completed' must be a list of phase names from {list(PHASES)}")
    failures = state.get("failures", {})
    if not isinstance(failures, dict):
        raise ValueError("'failures' must be an object")
    for phase, info in failures.items():
        if phase not in PHASES or not isinstance(info, dict) or not isinstance(
                info.get("attempts"), int):
            raise ValueError(f"'failures.{phase}' must be {{\"attempts\": <int>, "
                             "\"reason\": <text>} for a known phase")
    ip = state.get("in_progress")
    if ip is not None and (
            not isinstance(ip, dict) or not isinstance(ip.get("backup"), str)
            or not isinstance(ip.get("phases"), list)
            or not all(p in PHASES for p in ip["phases"])):
        raise ValueError("'in_progress' must hold 'backup' (a name) and 'phases' (a list)")
    mf = state.get("migrated_from")
    if mf is not None and not isinstance(mf, str):
        raise ValueError("'migrated_from' must be a string")
    ul = state.get("upstream_layout")
    if ul is not None and ul not in LAYOUTS:
        raise ValueError(f"'upstream_layout' must be one of {list(LAYOUTS)}")
    state.setdefault("format", STATE_FORMAT)
    state["completed"] = [p for p in PHASES if p in completed]
    state["failures"] = failures
    if ip is None:
        state.pop("in_progress", None)
    return state


def load_state(paths: Paths) -> tuple[dict[str, Any], Optional[str]]:
    """(state, error). A missing file is an empty state; an unreadable one is reported."""
    try:
        data = safefs.read_bytes(paths.migration_state_file, safefs.MAX_SMALL_FILE)
    except safefs.UnsafePath as exc:
        # not read, and not set aside either: the migration refuses it before any change
        return empty_state(), str(exc)
    except OSError as exc:
        return empty_state(), f"{paths.migration_state_file}: cannot read: {exc.strerror}"
    if data is None:
        return empty_state(), None
    try:
        return normalize(json.loads(data.decode("utf-8"))), None
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        exc = exc if not isinstance(exc, RecursionError) else ValueError("nested too deeply")
        return empty_state(), (f"{paths.migration_state_file}: unusable ({exc}); it is treated "
                               "as empty and set aside at the next migration")


def set_aside_corrupt(paths: Paths) -> Optional[str]:
    """Move an unusable state file out of the way (kept, never overwritten). Returns new name."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = paths.migration_state_file.with_name(
        f"{paths.migration_state_file.name}.corrupt-{stamp}")
    if safefs.kind(paths.migration_state_file) != "file":
        return None  # missing; anything else was refused before the migration began
    with contextlib.suppress(FileNotFoundError):
        safefs.rename(paths.migration_state_file, target)
        return target.name
    return None


def save_state(paths: Paths, state: dict[str, Any]) -> None:
    """Atomic, 0600, owned by the agent user (as root), never through a planted object."""
    atomic_write_json(paths.migration_state_file, state, 0o600)


def record_completed(state: dict[str, Any], phase: str) -> dict[str, Any]:
    """Pure: the state with `phase` completed and its failure record cleared."""
    out = copy.deepcopy(state)
    if phase not in out["completed"]:
        out["completed"] = [p for p in PHASES if p in out["completed"] or p == phase]
    out.setdefault("completed_at", {})[phase] = utc_now()
    out["failures"].pop(phase, None)
    return out


def record_failure(state: dict[str, Any], phase: str, reason: str,
                   completed_before: list[str]) -> dict[str, Any]:
    """Pure: the state after a failed (and rolled back) migration."""
    out = copy.deepcopy(state)
    out["completed"] = [p for p in PHASES if p in completed_before]
    stamps = out.get("completed_at", {})
    out["completed_at"] = {p: t for p, t in stamps.items() if p in out["completed"]}
    if not out["completed_at"]:
        out.pop("completed_at")
    if "directory" not in out["completed"] and "takeover" not in out["completed"]:
        out.pop("migrated_from", None)  # that directory migration was rolled back
    if not any(p in out["completed"] for p in ORIGIN_PHASES):
        out.pop("upstream_layout", None)
    previous = out["failures"].get(phase, {})
    out["failures"][phase] = {
        "attempts": int(previous.get("attempts", 0)) + 1,
        "reason": reason,
        "last_at": utc_now(),
    }
    out.pop("in_progress", None)
    return out


def recorded_layout(state: dict[str, Any]) -> Optional[str]:
    """The upstream layout a migrated host came from, per its state. A host the previous
    release migrated (directory phase, no upstream_layout yet) came from 0.1.18: that
    release knew no other layout."""
    value = state.get("upstream_layout")
    if isinstance(value, str):
        return value
    if "directory" in state.get("completed", []):
        return LAYOUT_0118
    return None
