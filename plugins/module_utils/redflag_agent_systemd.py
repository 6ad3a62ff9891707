"""systemd properties as the modules read them: `systemctl show UNIT -p A -p B`, parsed.

Shared by redflag_agent_service (the unit's state and the outcome) and
redflag_agent_takeover (whether the loaded unit is upstream's).
"""

from __future__ import annotations

from typing import Any


def parse_show(text: str) -> dict[str, str]:
    """`systemctl show -p A -p B` output (Key=Value lines) as a dict."""
    props: dict[str, str] = {}
    for line in (text or "").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            props[key.strip()] = value.strip()
    return props


def show_argv(unit: str, props: tuple[str, ...]) -> list[str]:
    argv = ["systemctl", "show", unit]
    for prop in props:
        argv += ["-p", prop]
    return argv


def show(module: Any, unit: str, props: tuple[str, ...]) -> dict[str, str]:
    """The unit's properties; {} when systemctl fails (no systemd, no bus)."""
    rc, out, _err = module.run_command(show_argv(unit, props))
    return parse_show(out) if rc == 0 else {}
