"""Filters for the role's clone check (tasks/clones.yml): which hosts share a machine ID.

Hosts copied from one image share /etc/machine-id, so the agent computes one machine ID for
all of them: enrolled, they become twins on a pre-0.1.22 server and are refused (409) by a
binding one after the first. The check runs on the controller before any host enrolls.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

_MACHINE_ID = re.compile(r"[0-9a-f]{64}\Z")


def probe_machine_id(stdout_lines: Any) -> tuple[str, str]:
    """(machine_id, source) from the probe's key=value lines; ("", "") when it has none."""
    found: dict[str, str] = {}
    for line in stdout_lines if isinstance(stdout_lines, list) else []:
        key, sep, value = str(line).partition("=")
        if sep and key in ("machine_id", "machine_id_source"):
            found[key] = value.strip()
    mid = found.get("machine_id", "")
    return (mid, found.get("machine_id_source", "")) if _MACHINE_ID.match(mid) else ("", "")


def clone_groups(machine_ids: Mapping[str, str]) -> dict[str, list[str]]:
    """Pure: {host: machine ID} -> {host: every host sharing its ID, sorted}, only for hosts
    that share one. Hosts without an ID ("") never match each other."""
    by_id: dict[str, list[str]] = {}
    for host, mid in machine_ids.items():
        if mid:
            by_id.setdefault(mid, []).append(host)
    return {host: sorted(hosts) for hosts in by_id.values() if len(hosts) > 1 for host in hosts}


def clone_message(host: str, group: Iterable[str], machine_id: str, source: str) -> str:
    others = [h for h in group if h != host]
    return (
        f"{host} shares its machine ID {machine_id[:12]}... (from {source or 'the host'}) with "
        f"{', '.join(others)}: these hosts are clones of one image. Nothing was installed or "
        "enrolled on them (the server would see one machine: twins, or a 409 refusal). Fix: on "
        "each clone run `rm -f /etc/machine-id && systemd-machine-id-setup`, and remove "
        "/var/lib/dbus/machine-id too when it is a separate file (not a link to "
        "/etc/machine-id); then run the play again. Build images with "
        "redflag_agent_state=image so that clones come up with their own ID."
    )


def redflag_clones(hosts: Iterable[str], hostvars: Mapping[str, Any],
                   probe_var: str = "redflag_agent__probe") -> dict[str, str]:
    """{host: message} for each host of `hosts` whose probe found a machine ID that another
    host of `hosts` also has. Hosts not probed (a later batch, unreachable) are left out."""
    ids: dict[str, str] = {}
    sources: dict[str, str] = {}
    for host in hosts:
        if host not in hostvars:
            continue
        probe = hostvars[host].get(probe_var)
        if not isinstance(probe, Mapping):
            continue
        ids[host], sources[host] = probe_machine_id(probe.get("stdout_lines"))
    return {host: clone_message(host, group, ids[host], sources[host])
            for host, group in clone_groups(ids).items()}


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"redflag_clones": redflag_clones}
