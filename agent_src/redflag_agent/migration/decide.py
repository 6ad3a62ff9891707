"""The migration decision: a pure function of a Snapshot. No I/O here."""

from __future__ import annotations

from typing import Any, Optional

from ..config import needs_schema_upgrade, schema_version_of
from ..version import CONFIG_SCHEMA_VERSION
from .merge import apply_secrets, merge_legacy
from .model import LEGACY_LAYOUT_VERSION, MAX_ATTEMPTS, PHASES, Plan, Snapshot


def _legacy_version(legacy: Optional[dict[str, Any]]) -> str:
    value = (legacy or {}).get("agent_version")
    return value if isinstance(value, str) and value.strip() else LEGACY_LAYOUT_VERSION


def effective_config(s: Snapshot, with_directory: bool) -> Optional[dict[str, Any]]:
    """The config the later phases will see: the current one, merged with the legacy one
    when the directory phase runs first."""
    if with_directory:
        merged, _ = merge_legacy(s.current_config, s.legacy_config)
        return merged
    return s.current_config


def decide(s: Snapshot, retry_failed: bool = False) -> Plan:
    plan = Plan()
    if s.state_error:
        plan.warnings.append(s.state_error)
    if s.current_config_error:
        plan.error = (f"{s.current_config_error}. Nothing was migrated and nothing was "
                      "written over it")
        return plan
    state = s.state
    completed = set(state.get("completed", []))
    in_progress = state.get("in_progress")
    needed: dict[str, str] = {}

    if "directory" not in completed and s.legacy_present:
        if s.legacy_config_error:
            plan.error = (f"the legacy config cannot be migrated: {s.legacy_config_error}. "
                          "Nothing was changed; fix that file, or move it out of "
                          f"{s.paths.legacy_config_dir} if it holds nothing worth keeping, "
                          "then start the agent again")
            return plan
        where = [str(d) for d, present in ((s.paths.legacy_config_dir,
                                            s.legacy_config_dir_present),
                                           (s.paths.legacy_state_dir,
                                            s.legacy_state_dir_present)) if present]
        needed["directory"] = f"legacy layout present ({', '.join(where)})"

    effective = effective_config(s, "directory" in needed)
    if "config" not in completed and effective is not None and needs_schema_upgrade(effective):
        version = schema_version_of(effective)
        shown = "missing" if version is None else str(version)
        needed["config"] = f"config schema {shown} -> {CONFIG_SCHEMA_VERSION}"

    if ("docker_secrets" not in completed and s.in_container
            and (s.secret_token or s.secret_server_url)):
        applied = apply_secrets(effective, s.secret_token, s.secret_server_url)
        if applied != (effective or {}):
            needed["docker_secrets"] = f"container secrets in {s.paths.secrets_dir} to take in"

    if in_progress:
        for phase in in_progress.get("phases", []):
            if phase not in completed and phase not in needed:
                needed[phase] = "unfinished in the interrupted migration"

    # hardening only rides along with a real migration; fresh installs get modes from the role
    if needed and "security" not in completed and "security" not in needed:
        needed["security"] = "config 0600, directories 0750/0700, owner redflag-agent"

    ordered = [p for p in PHASES if p in needed]
    plan.reasons = {p: needed[p] for p in ordered}
    failures = state.get("failures", {})
    if not retry_failed:
        plan.blocked = {p: dict(failures[p]) for p in ordered
                        if failures.get(p, {}).get("attempts", 0) >= MAX_ATTEMPTS}
    # one migration is one unit (one backup, one rollback): a given-up phase stops all of it
    plan.phases = [] if plan.blocked else ordered
    plan.resume = bool(in_progress) and bool(plan.phases)
    if in_progress and in_progress.get("migrated_from"):
        plan.migrated_from = in_progress["migrated_from"]
    elif "directory" in needed:
        plan.migrated_from = _legacy_version(s.legacy_config)
    return plan
