"""Filters for the playbooks: the rollout health gate and the fleet status table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

OK_STATES = ("registered", "unverified", "absent", "image")
WAITING = "waiting-for-token"
NO_OUTCOME = "no outcome recorded (the host failed or was unreachable before the role finished)"

TABLE_COLUMNS = (
    ("host", "HOST"),
    ("registered", "REGISTERED"),
    ("agent_id", "AGENT_ID"),
    ("agent_version", "AGENT"),
    ("config_version", "CONFIG"),
    ("migrations", "MIGRATIONS"),
    ("service", "SERVICE"),
    ("last_checkin", "LAST CHECK-IN"),
)


def redflag_unhealthy(
    batch_hosts: Sequence[str],
    hostvars: Mapping[str, Any],
    allow_waiting: bool = True,
    service_skipped: bool = False,
    reachable: Sequence[str] = (),
) -> list[dict[str, str]]:
    """Hosts of a batch whose redflag_agent_outcome is not healthy, with the reason.

    service_skipped: --tags/--skip-tags left out the role's service step, so a reachable
    host has no outcome to judge; it counts as unverified (as in check mode), not failed.
    """
    ok = set(OK_STATES) | ({WAITING} if allow_waiting else set())
    bad = []
    for host in batch_hosts:
        outcome = (hostvars.get(host) or {}).get("redflag_agent_outcome")
        if not isinstance(outcome, Mapping) and service_skipped and host in reachable:
            continue
        if not isinstance(outcome, Mapping):
            status, reason = "failed", NO_OUTCOME
        else:
            status = str(outcome.get("status", "failed"))
            reason = str(outcome.get("reason") or "no reason recorded")
        if status in ok:
            continue
        if status == WAITING:
            reason = "no registration token (redflag_rollout_allow_waiting is false)"
        bad.append(
            {
                "host": host,
                "status": status,
                "reason": reason,
                "text": f"{host}: {status}: {reason}",
            }
        )
    return bad


def redflag_systemd_props(text: str) -> dict[str, str]:
    """`systemctl show -p A -p B` output (Key=Value lines) as a dict."""
    props = {}
    for line in (text or "").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            props[key.strip()] = value.strip()
    return props


def _cell(value: Any) -> str:
    if value is None or value in ("", []):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return " ".join(str(value).split())


def redflag_fleet_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """An aligned text table, one line per host, sorted by host name."""
    header = [title for _key, title in TABLE_COLUMNS]
    body = [
        [_cell(row.get(key)) for key, _title in TABLE_COLUMNS]
        for row in sorted(rows, key=lambda r: str(r.get("host", "")))
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
        for line in [header, *body]
    )


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "redflag_unhealthy": redflag_unhealthy,
            "redflag_fleet_table": redflag_fleet_table,
            "redflag_systemd_props": redflag_systemd_props,
        }
