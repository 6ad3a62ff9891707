"""Parse an ansible-playbook PLAY RECAP. Pure."""

from __future__ import annotations

import re

_LINE = re.compile(r"^(?P<host>\S+)\s*:\s*(?P<counts>(?:[a-z]+=\d+\s*)+)$")
KEYS = ("ok", "changed", "unreachable", "failed", "skipped", "rescued", "ignored")


def parse(output: str) -> dict[str, dict[str, int]]:
    """Per-host counts from the last PLAY RECAP block; {} when there is none."""
    lines = output.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("PLAY RECAP")]
    if not starts:
        return {}
    hosts: dict[str, dict[str, int]] = {}
    for line in lines[starts[-1] + 1:]:
        m = _LINE.match(line.strip())
        if not m:
            if line.strip():
                break
            continue
        counts = dict.fromkeys(KEYS, 0)
        for pair in m.group("counts").split():
            key, _, value = pair.partition("=")
            counts[key] = int(value)
        hosts[m.group("host")] = counts
    return hosts


_TASK = re.compile(r"^(?P<name>.+?) -+ (?P<secs>\d+(?:\.\d+)?)s$")


def task_times(output: str) -> list[tuple[str, float]]:
    """(task, seconds) from the profile_tasks callback's TASKS RECAP, slowest first."""
    lines = output.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("TASKS RECAP")]
    if not starts:
        return []
    out = []
    for line in lines[starts[-1] + 1:]:
        m = _TASK.match(line.strip())
        if m:
            out.append((m.group("name"), float(m.group("secs"))))
    return sorted(out, key=lambda t: -t[1])


def totals(hosts: dict[str, dict[str, int]]) -> dict[str, int]:
    return {k: sum(h.get(k, 0) for h in hosts.values()) for k in KEYS}
