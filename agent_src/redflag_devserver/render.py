"""Plain-text tables for the admin commands."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [
        ["-" if v is None else str(v) for v in row] for row in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def agents_table(agents: Sequence[dict[str, Any]]) -> str:
    return table(
        (
            "HOSTNAME",
            "AGENT_ID",
            "VERSION",
            "STATUS",
            "MACHINE_ID",
            "LAST_SEEN",
            "MIGRATED_FROM",
            "REGISTERED_AT",
        ),
        [
            (
                a["hostname"],
                a["agent_id"],
                a["agent_version"],
                a["status"],
                # The first 16 hex characters tell machines apart; --json has all 64.
                a["machine_id"][:16] if a["machine_id"] else None,
                a["last_seen"],
                a["migrated_from"],
                a["registered_at"],
            )
            for a in agents
        ],
    )


def tokens_table(tokens: Sequence[dict[str, Any]]) -> str:
    return table(
        ("ID", "STATUS", "SEATS_USED", "SEATS", "EXPIRES_AT", "NOTE"),
        [
            (t["id"], t["status"], t["seats_used"], t["seats"], t["expires_at"], t["note"])
            for t in tokens
        ],
    )


def updates_table(reports: Sequence[dict[str, Any]]) -> str:
    rows = [
        (
            r["report_id"],
            r["received_at"],
            u["package_type"],
            u["package_name"],
            u["current_version"],
            u["available_version"],
            u["severity"],
        )
        for r in reports
        for u in r["updates"]
    ]
    text = table(
        ("REPORT", "RECEIVED_AT", "TYPE", "PACKAGE", "CURRENT", "AVAILABLE", "SEVERITY"), rows
    )
    empty = [r for r in reports if not r["updates"]]
    if empty:
        text += f"\n({len(empty)} report(s) listed no updates)"
    return text
