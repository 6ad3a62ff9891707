"""Values the migration package passes around: the disk snapshot, the plan, the report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from ..paths import Paths

# takeover (0.1.19-0.1.23, 0.2) runs before directory (0.1.18): each merges its upstream
# configs into the current one with the current winning, so the newer layout's settings win
# over the older one's, and on an identity tie the newer layout's identity is kept.
# litter runs last, once everything before it succeeded.
PHASES = ("takeover", "directory", "config", "docker_secrets", "security", "litter")
# A phase that failed this many times is left to the operator (no retry every 30 s).
MAX_ATTEMPTS = 3
# A migration interrupted (kill -9, OOM, power) this many times counts as a failure.
MAX_RESUMES = 3
DEFAULT_RETENTION = 3
# The upstream layouts of CONTRACT section 2, oldest first (see layouts.py).
LAYOUT_0118 = "0.1.18"
LAYOUT_0119 = "0.1.19-0.1.23"
LAYOUT_02 = "0.2"
LAYOUTS = (LAYOUT_0118, LAYOUT_0119, LAYOUT_02)
# The last agent release that used /etc/aggregator; what a legacy install reports it came from.
LEGACY_LAYOUT_VERSION = LAYOUT_0118
# Keys of a 0.2 config that describe the upstream agent itself: after the takeover they would
# be false (agent_version: that agent's version) or be taken for this agent's own migration
# record (migration_state; ours is migration_state.json). Dropped from the migrated config;
# the original file, with them, stays in the migration backup.
UPSTREAM_BOOKKEEPING_KEYS = ("agent_version", "migration_state")

# Legacy state files the new layout takes over (CONTRACT section 2).
LEGACY_STATE_NAMES = ("pending_acks.json", "agent.key")
LEGACY_STATE_SUFFIXES = (".crt", ".key", ".pem")

# Docker secret file names under /run/secrets: ours first, then upstream's plain names.
SECRET_TOKEN_NAMES = ("redflag_registration_token", "registration_token")
SECRET_URL_NAMES = ("redflag_server_url", "server_url")


class MigrationError(Exception):
    """A migration step that cannot go on. The message says what is wrong and what to do."""


@dataclass(frozen=True)
class UpstreamNames:
    """Top-level names in the later upstream layouts' directories (read when they exist)."""

    etc: tuple[str, ...] = ()  # /etc/redflag
    v02_config: tuple[str, ...] = ()  # /etc/redflag/agent
    v02_state: tuple[str, ...] = ()  # /var/lib/redflag/agent
    v02_state_sub: tuple[str, ...] = ()  # /var/lib/redflag/agent/state


@dataclass(frozen=True)
class Snapshot:
    """What is on disk, read once; decide() is a pure function of it."""

    paths: Paths
    legacy_config_dir_present: bool = False
    legacy_state_dir_present: bool = False
    legacy_config_present: bool = False
    legacy_config: Optional[dict[str, Any]] = field(default=None, repr=False)
    legacy_config_error: Optional[str] = None
    # top-level names in the legacy directories (only read when they exist)
    legacy_config_names: tuple[str, ...] = ()
    legacy_state_names: tuple[str, ...] = ()
    current_config_present: bool = False
    current_config: Optional[dict[str, Any]] = field(default=None, repr=False)
    current_config_error: Optional[str] = None
    state: dict[str, Any] = field(default_factory=dict)
    state_error: Optional[str] = None
    in_container: bool = False
    # secret values never appear in repr or logs
    secret_token: Optional[str] = field(default=None, repr=False)
    secret_server_url: Optional[str] = field(default=None, repr=False)
    # the later upstream layouts: probe -> safefs.kind, their configs (version and 0.2's
    # agent_id file folded in), errors reading them, names, and the loop's litter
    probes: dict[str, str] = field(default_factory=dict)
    upstream_configs: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    upstream_errors: dict[str, str] = field(default_factory=dict)
    upstream_names: UpstreamNames = field(default_factory=UpstreamNames)
    litter: tuple[tuple[str, str], ...] = ()

    @property
    def legacy_present(self) -> bool:
        return self.legacy_config_dir_present or self.legacy_state_dir_present


@dataclass
class Plan:
    phases: list[str] = field(default_factory=list)
    # why each needed phase is needed (also those held back by a blocked one)
    reasons: dict[str, str] = field(default_factory=dict)
    # phases that are needed but were given up after MAX_ATTEMPTS failures
    blocked: dict[str, dict[str, Any]] = field(default_factory=dict)
    error: Optional[str] = None
    warnings: list[str] = field(default_factory=list)
    resume: bool = False
    migrated_from: Optional[str] = None
    # the layout the host came from (layouts.primary_layout), and every one present
    upstream_layout: Optional[str] = None
    upstream_layouts: tuple[str, ...] = ()

    @property
    def pending(self) -> list[str]:
        """Every phase still to do, runnable or blocked, in run order."""
        return [p for p in PHASES if p in self.phases or p in self.blocked or p in self.reasons]

    def describe(self) -> str:
        lines: list[str] = []
        if self.error:
            lines.append(f"cannot migrate: {self.error}")
        elif self.blocked:
            for phase, info in self.blocked.items():
                lines.append(f"migration phase {phase!r} failed {info.get('attempts')} times "
                             f"(last: {info.get('reason')}); it is left to the operator: "
                             "fix the cause, then run `redflag-agent migrate --retry-failed` "
                             "as root")
        elif not self.phases:
            lines.append("nothing to migrate")
        else:
            head = "resuming an interrupted migration" if self.resume else "migration needed"
            lines.append(f"{head}: {', '.join(self.phases)}")
            lines.extend(f"  {p}: {self.reasons[p]}" for p in self.phases if p in self.reasons)
            lines.append("  a backup is taken before the first change")
        lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(lines)


@dataclass
class Report:
    ok: bool
    phases_done: list[str] = field(default_factory=list)
    backup: Optional[str] = None
    message: str = ""
    config_usable: bool = False
    dry_run: bool = False
    phases_planned: list[str] = field(default_factory=list)
    failed_phase: Optional[str] = None
    # the litter phase's figures: removed, bytes_freed, kept ([{path, reason}])
    litter: Optional[dict[str, Any]] = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "dry_run": self.dry_run,
            "phases_planned": list(self.phases_planned),
            "phases_done": list(self.phases_done),
            "failed_phase": self.failed_phase,
            "backup": self.backup,
            "message": self.message,
            "config_usable": self.config_usable,
            "litter": self.litter,
        }
