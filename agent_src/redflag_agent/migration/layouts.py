"""Every upstream layout (CONTRACT section 2) and the restart loop's litter: pure rules.

Nothing here touches the disk: snapshot.py probes the paths and lists the directories,
these functions decide what that means. Table-tested in tests/agent/test_migration_layouts.py.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from .merge import identity_rank
from .model import LAYOUT_0118, LAYOUT_0119, LAYOUT_02, LAYOUTS

__all__ = ["LAYOUTS", "LAYOUT_02", "LAYOUT_0118", "LAYOUT_0119"]

# probe name -> the Paths attribute it looks at (snapshot.py reads safefs.kind of each)
PROBES: dict[str, str] = {
    "aggregator_etc": "legacy_config_dir",
    "aggregator_lib": "legacy_state_dir",
    "v0119_config": "v0119_config_file",
    "v02_config_dir": "v02_config_dir",
    "v02_agent_id": "v02_agent_id_file",
    "v02_server": "v02_server_dir",
    "v02_state": "v02_state_dir",
    "v02_logs": "v02_log_dir",
}
# what makes the takeover phase due: upstream files this agent takes over and removes.
# 0.2's logs are left in place (history, unbounded size, no identity): not a trigger.
TAKEOVER_PROBES = {LAYOUT_0119: ("v0119_config",),
                   LAYOUT_02: ("v02_config_dir", "v02_agent_id", "v02_server", "v02_state")}
# names in /etc/redflag that belong to 0.2, not to 0.1.19-0.1.23's config directory
V02_ETC_NAMES = ("agent", "agent_id", "server")

# the loop's litter (CONTRACT 1): one sibling of ours per restart
LITTER_SIBLING_RE = re.compile(r"^migration_backups_\d{4}-\d{2}-\d{2}-\d{6}$")
# our own backups (same as backup.NAME_RE; backup.py is loaded only when a migration runs)
OUR_BACKUP_RE = re.compile(r"^\d{8}T\d{6}Z(?:-\d+)?$|^\.\d{8}T\d{6}Z(?:-\d+)?\.partial$")

SIBLING = "sibling"  # /var/lib/redflag-agent/migration_backups_<stamp>
SURPLUS = "surplus"  # not ours, inside our /var/lib/redflag-agent/migration_backups
V02_BACKUP = "0.2-backup"  # inside 0.2's /var/lib/redflag/agent/migration_backups


def _present(kinds: Mapping[str, str], probe: str) -> bool:
    return kinds.get(probe, "missing") != "missing"


def takeover_layouts(kinds: Mapping[str, str]) -> tuple[str, ...]:
    """The layouts (oldest first) whose files the takeover phase takes over and removes.
    Anything standing at a probed path counts: a planted symlink is refused later (78)."""
    return tuple(layout for layout, probes in TAKEOVER_PROBES.items()
                 if any(_present(kinds, p) for p in probes))


def detect(kinds: Mapping[str, str], litter_count: int = 0) -> tuple[str, ...]:
    """Every upstream layout present, oldest first. 0.1.19-0.1.23 kept its state in
    /var/lib/redflag-agent (ours), so its loop's litter alone also shows it."""
    out = []
    if _present(kinds, "aggregator_etc") or _present(kinds, "aggregator_lib"):
        out.append(LAYOUT_0118)
    due = takeover_layouts(kinds)
    if LAYOUT_0119 in due or litter_count:
        out.append(LAYOUT_0119)
    if LAYOUT_02 in due:
        out.append(LAYOUT_02)
    return tuple(out)


def primary_layout(present: Sequence[str],
                   configs: Mapping[str, Optional[dict[str, Any]]]) -> Optional[str]:
    """The layout the host came from: the one whose identity gets furthest with the server
    (choose_identity's ranking), the newest on a tie or when none holds an identity."""
    best: Optional[str] = None
    for layout in reversed(LAYOUTS):
        if layout not in present:
            continue
        if best is None or identity_rank(configs.get(layout)) > identity_rank(configs.get(best)):
            best = layout
    return best


def migrated_from(layout: Optional[str], cfg: Optional[dict[str, Any]]) -> Optional[str]:
    """What the registration metadata says the host was migrated from: the upstream agent's
    own version when its config names one, else the layout (a version or a range)."""
    value = (cfg or {}).get("agent_version")
    if isinstance(value, str) and value.strip() and len(value) <= 64:
        return value.strip()
    return layout


def litter_names(state_names: Sequence[str], backup_names: Sequence[str],
                 v02_backup_names: Sequence[str]) -> list[tuple[str, str]]:
    """(group, name) of every litter entry, from the listings of /var/lib/redflag-agent, our
    migration_backups (its directories and symlinks only: a plain file there is no backup
    and is left alone) and 0.2's migration_backups."""
    out = [(SIBLING, n) for n in state_names if LITTER_SIBLING_RE.match(n)]
    out += [(SURPLUS, n) for n in backup_names if not OUR_BACKUP_RE.match(n)]
    out += [(V02_BACKUP, n) for n in v02_backup_names]
    return out


@dataclass(frozen=True)
class FoundConfig:
    """A config.json found inside a litter entry: its path there, and what it holds
    (None when it could not be read or parsed: `problem` says why)."""

    where: str
    cfg: Optional[dict[str, Any]] = None
    problem: str = ""


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def keep_reason(found: Sequence[FoundConfig], migrated: Optional[dict[str, Any]]
                ) -> Optional[str]:
    """None when a litter entry may go; otherwise why it is kept.

    It is kept when it may hold the only copy of an identity: a config.json with an
    agent_id other than the migrated config's, or the same agent_id with a refresh token the
    migrated config does not hold, or a config.json that cannot be read (we cannot tell).
    A config.json without agent_id (the loop's unregistered copies) holds no identity: its
    settings were the loop's, and the migrated config already has the host's settings."""
    mig = migrated or {}
    mig_id, mig_refresh = _text(mig.get("agent_id")), _text(mig.get("refresh_token"))
    for f in found:
        if f.cfg is None:
            return f"{f.where} cannot be inspected ({f.problem}); it may hold an identity"
        agent_id = _text(f.cfg.get("agent_id"))
        if not agent_id:
            continue
        if agent_id != mig_id:
            return (f"{f.where} holds agent_id {agent_id[:64]}, not the migrated config's "
                    f"({mig_id or 'none'})")
        refresh = _text(f.cfg.get("refresh_token"))
        if refresh and refresh != mig_refresh:
            return (f"{f.where} holds a refresh token for agent {agent_id[:64]} that the "
                    "migrated config does not")
    return None
