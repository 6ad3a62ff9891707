"""The migration decision: a pure function of a Snapshot. No I/O here."""

from __future__ import annotations

from typing import Any, Optional

from ..config import needs_schema_upgrade, schema_version_of
from ..version import CONFIG_SCHEMA_VERSION
from .layouts import detect, migrated_from, primary_layout, takeover_layouts
from .merge import apply_secrets, choose_identity, merge_legacy, merge_upstream
from .model import (
    LAYOUT_0118,
    LAYOUT_0119,
    LAYOUT_02,
    LEGACY_LAYOUT_VERSION,
    MAX_ATTEMPTS,
    PHASES,
    Plan,
    Snapshot,
)


def _legacy_version(legacy: Optional[dict[str, Any]]) -> str:
    value = (legacy or {}).get("agent_version")
    return value if isinstance(value, str) and value.strip() else LEGACY_LAYOUT_VERSION


def upstream_sources(s: Snapshot) -> list[tuple[str, Optional[dict[str, Any]]]]:
    """The takeover's configs, newest first (the order merge_upstream wants)."""
    return [(layout, s.upstream_configs.get(layout))
            for layout in reversed(takeover_layouts(s.probes))]


def effective_config(s: Snapshot, with_directory: bool, with_takeover: bool = False
                     ) -> Optional[dict[str, Any]]:
    """The config the later phases will see: the current one, merged with the upstream ones
    when the takeover runs first, then with the legacy one when the directory phase does."""
    cfg = s.current_config
    if with_takeover:
        cfg, _ = merge_upstream(cfg, upstream_sources(s))
    if with_directory:
        cfg, _ = merge_legacy(cfg, s.legacy_config)
    return cfg


def _origin(s: Snapshot, due: list[str]) -> tuple[Optional[str], Optional[str]]:
    """(upstream_layout, migrated_from) of the layouts this migration takes over."""
    configs = {LAYOUT_0118: s.legacy_config, **s.upstream_configs}
    layout = primary_layout(due, configs)
    if layout is None:
        return None, None
    if layout == LAYOUT_0118:
        return layout, _legacy_version(s.legacy_config)
    return layout, migrated_from(layout, configs.get(layout))


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

    takeover = takeover_layouts(s.probes)
    if "takeover" not in completed and takeover:
        if s.upstream_errors:
            layout, error = next(iter(s.upstream_errors.items()))
            plan.error = (f"the upstream {layout} config cannot be taken over: {error}. "
                          "Nothing was changed; fix that file, or move it away if it holds "
                          "nothing worth keeping, then start the agent again")
            return plan
        where = [str(getattr(s.paths, attr)) for probe, attr in (
            ("v0119_config", "v0119_config_file"), ("v02_config_dir", "v02_config_dir"),
            ("v02_agent_id", "v02_agent_id_file"), ("v02_server", "v02_server_dir"),
            ("v02_state", "v02_state_dir")) if s.probes.get(probe, "missing") != "missing"]
        needed["takeover"] = (f"upstream {' and '.join(takeover)} layout present "
                              f"({', '.join(where)})")

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

    effective = effective_config(s, "directory" in needed, "takeover" in needed)
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

    if "litter" not in completed and s.litter:
        needed["litter"] = (f"{len(s.litter)} directories left by the upstream agent's restart "
                            "loop (removed once the rest succeeded; any holding the only copy "
                            "of an identity is kept)")

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
    present = detect(s.probes, len(s.litter))
    plan.upstream_layouts = present
    due = [layout for layout, phase in ((LAYOUT_0118, "directory"), (LAYOUT_0119, "takeover"),
                                        (LAYOUT_02, "takeover"))
           if phase in needed and (layout in takeover or layout == LAYOUT_0118)]
    layout, origin = _origin(s, due)
    if in_progress and in_progress.get("migrated_from"):
        plan.migrated_from = in_progress["migrated_from"]
    elif origin is not None:
        plan.migrated_from = origin
    if in_progress and in_progress.get("upstream_layout"):
        plan.upstream_layout = in_progress["upstream_layout"]
    elif isinstance(state.get("upstream_layout"), str):
        plan.upstream_layout = state["upstream_layout"]
    else:
        plan.upstream_layout = layout or primary_layout(present, {})
    return plan


def stranded_identity(s: Snapshot) -> Optional[str]:
    """Pure: where an upstream or legacy config holds an identity that beats the current one
    (choose_identity) although no migration will take it over now (its phase is recorded
    done, or given up). `run` must not register a second agent over it."""
    current = s.current_config
    candidates: list[tuple[str, Optional[dict[str, Any]]]] = [
        (str(s.paths.legacy_config_file), s.legacy_config)]
    files = {LAYOUT_0119: s.paths.v0119_config_file, LAYOUT_02: s.paths.v02_config_file}
    candidates += [(str(files.get(layout, layout)), cfg)
                   for layout, cfg in sorted(s.upstream_configs.items())]
    for where, cfg in candidates:
        if cfg and choose_identity(current, cfg).source == "legacy":
            return where
    return None


def blocked_identity(raw: list[tuple[str, Any]]) -> Optional[str]:
    """Pure: the first legacy or upstream config (where, its parsed JSON) that the migration
    refused (a field fails validation) yet whose JSON names an agent with a token: no
    migration takes it over until it is fixed, and registering meanwhile would put a second
    agent on the server."""
    for where, obj in raw:
        if not isinstance(obj, dict):
            continue
        agent_id = obj.get("agent_id")
        if isinstance(agent_id, str) and agent_id.strip() and any(
                isinstance(obj.get(k), str) and obj[k] for k in ("refresh_token", "token")):
            return where
    return None
