"""systemd properties as the modules read them: `systemctl show UNIT -p A -p B`, parsed.

Shared by redflag_agent_service (the unit's state and the outcome), redflag_agent_takeover
(whether the loaded unit is upstream's, the drop-ins it sets aside) and module_utils
redflag_agent_dropins (the drop-ins on our unit, judged by judge_dropin before the service
module acts).
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple


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


# ---- drop-ins ----------------------------------------------------------------------------
# Where systemd looks for a unit's drop-ins, highest precedence first (systemd.unit(5));
# system.control is where `systemctl set-property` writes.
DROPIN_BASES = (
    "/etc/systemd/system.control",
    "/run/systemd/system.control",
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
)


def dropin_dir_names(unit: str, type_wide: bool = False) -> list[str]:
    """The drop-in directory names systemd reads for `unit` (pure): its own, one per dash
    prefix (redflag-agent.service -> redflag-.service.d) and, with type_wide, the one for
    every unit of its type (service.d)."""
    name, _dot, suffix = unit.rpartition(".")
    names = [f"{unit}.d"]
    parts = name.split("-")
    names += [f"{'-'.join(parts[:i])}-.{suffix}.d" for i in range(len(parts) - 1, 0, -1)]
    if type_wide:
        names.append(f"{suffix}.d")
    return names


def dropin_dirs(unit: str, type_wide: bool = False, bases: tuple[str, ...] = DROPIN_BASES
                ) -> list[str]:  # fmt: skip
    return [os.path.join(base, n) for base in bases for n in dropin_dir_names(unit, type_wide)]


def dropin_paths(props: dict[str, str]) -> list[str]:
    """`systemctl show -p DropInPaths`: space-separated absolute paths (pure)."""
    return [p for p in props.get("DropInPaths", "").split() if p.startswith("/")]


def directives(text: str) -> list[tuple[str, str]]:
    """(section, key) of every assignment in a unit file or drop-in, in order (pure).
    Values are not returned: an Environment= line may hold a token."""
    out: list[tuple[str, str]] = []
    section = ""
    continued = False
    for raw in text.splitlines():
        line = raw.strip()
        if continued:  # a value continued with a trailing backslash
            continued = line.endswith("\\")
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            continue
        key, sep, _value = line.partition("=")
        if sep:
            out.append((section, key.strip()))
        continued = line.endswith("\\")
    return out


# What a drop-in on our unit may set and only be warned about: description, ordering and
# dependencies, resource limits, timeouts, logging, [Install]. Nothing here decides what
# runs, as whom, with which privileges, capabilities, sandbox, paths or environment, or
# how the unit restarts (the restart policy is what stops the seed's loop, CONTRACT 1).
# Everything else, an unknown directive included, fails the run: systemd keeps adding
# sandbox settings, and a list of dangerous ones would miss the next.
HARMLESS_DIRECTIVES: dict[str, frozenset[str]] = {
    "Unit": frozenset({
        "Description", "Documentation", "After", "Before", "Wants", "Requires", "PartOf",
        "BindsTo", "Upholds", "Conflicts",
    }),
    "Service": frozenset({
        "CPUQuota", "CPUQuotaPeriodSec", "CPUWeight", "StartupCPUWeight", "CPUShares",
        "AllowedCPUs", "MemoryMin", "MemoryLow", "MemoryHigh", "MemoryMax", "MemorySwapMax",
        "MemoryLimit", "TasksMax", "IOWeight", "StartupIOWeight", "IOSchedulingClass",
        "IOSchedulingPriority", "Nice", "OOMScoreAdjust", "OOMPolicy", "LimitNOFILE",
        "LimitCORE", "CPUAccounting", "MemoryAccounting", "IOAccounting", "TasksAccounting",
        "Slice", "TimeoutSec", "TimeoutStartSec", "TimeoutStopSec", "TimeoutAbortSec",
        "TimeoutStartFailureMode", "TimeoutStopFailureMode",
        "LogLevelMax", "LogRateLimitIntervalSec", "LogRateLimitBurst", "SyslogIdentifier",
        "SyslogFacility", "SyslogLevel",
    }),
    "Install": frozenset({"WantedBy", "RequiredBy", "Alias", "Also"}),
}  # fmt: skip


class DropIn(NamedTuple):
    """One drop-in as found (lstat, and the text when it is a regular file)."""

    path: str
    kind: str  # file | symlink | other
    uid: int = 0
    mode: int = 0o644
    text: str = ""
    target: str = ""  # a symlink's target (read with readlink, never followed)


FAIL, WARN, IGNORE = "fail", "warn", "ignore"


def judge_dropin(d: DropIn) -> tuple[str, str]:
    """(FAIL | WARN | IGNORE, why) for a drop-in on our unit (pure). The rule: a drop-in that
    only sets HARMLESS_DIRECTIVES, in a root-owned file no one else can write, is warned
    about; one masked by a symlink to /dev/null is ignored (systemd ignores it too); any
    other is a failure."""
    if d.kind == "symlink":
        if d.target == "/dev/null":
            return IGNORE, "masked (a symlink to /dev/null)"
        return FAIL, (f"a symlink to {d.target or '?'}: systemd reads through it, the role does "
                      f"not, so what it sets cannot be checked")  # fmt: skip
    if d.kind != "file":
        return FAIL, f"a {d.kind}, not a regular file"
    if d.uid != 0 or d.mode & 0o022:
        return FAIL, (f"owned by uid {d.uid} with mode {d.mode & 0o7777:04o}: whoever can "
                      f"write it decides what this unit runs as root")  # fmt: skip
    found = directives(d.text)
    risky = sorted({f"{key}" if sec == "Service" else f"[{sec}] {key}" for sec, key in found
                    if key not in HARMLESS_DIRECTIVES.get(sec, frozenset())})  # fmt: skip
    if risky:
        why = "what runs, as whom, with which privileges, sandbox, environment or restart policy"
        return FAIL, f"sets {', '.join(risky)} ({why})"
    keys = sorted({key for _sec, key in found})
    if not keys:
        return WARN, "sets nothing"
    return WARN, f"sets only {', '.join(keys)} (ordering, resources, timeouts or logging)"
