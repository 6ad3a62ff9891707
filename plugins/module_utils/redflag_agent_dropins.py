"""The drop-ins on the agent's unit, found and judged before the service is (re)started.

systemd applies every drop-in of `redflag-agent.service` (its own directory, the dash-prefix
`redflag-.service.d`, the type-wide `service.d`, `systemctl set-property`'s system.control) on
top of the role's hardened unit: an `ExecStart=` reset, `User=root`, `NoNewPrivileges=no` or an
`Environment=` line would silently undo it. The takeover sets upstream's drop-ins aside;
redflag_agent_service runs `check()` first, in the same call as its systemctl actions (one
module task per host, not two), so the operator's drop-ins are judged on every run.

The rule is redflag_agent_systemd.judge_dropin (pure, table-tested). Nothing is followed: a
symlinked drop-in or drop-in directory is returned itself and judged (systemd reads through
it, the role does not).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from typing import Optional

from ansible_collections.redflag.agent.plugins.module_utils.redflag_agent_systemd import (
    FAIL,
    WARN,
    DropIn,
    dropin_dirs,
    judge_dropin,
)

MAX_BYTES = 1 << 20

# The outcome shape: the role's rescue and site.yml's gate split a reason at its first
# `; next:` (redflag_fleet.split_next), so the advice is said once, after it.
NEXT_STEP = (
    "next: move each file out of the drop-in directory (for example `mv FILE /root/`), run "
    "`systemctl daemon-reload` and re-run the play; a setting the agent needs belongs in the "
    "role's variables, not in a drop-in"
)


def read_dropin(path: str) -> DropIn:
    """One drop-in as found: lstat, readlink, or the text of a regular file opened without
    following and checked to be the file lstat saw."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return DropIn(path, "absent")
    if stat.S_ISLNK(st.st_mode):
        return DropIn(path, "symlink", st.st_uid, st.st_mode, target=os.readlink(path))
    if stat.S_ISDIR(st.st_mode):
        return DropIn(path, "directory", st.st_uid, st.st_mode)
    if not stat.S_ISREG(st.st_mode):
        return DropIn(path, "special file", st.st_uid, st.st_mode)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        now = os.fstat(handle.fileno())
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            return DropIn(path, "file replaced while read", st.st_uid, st.st_mode)
        text = handle.read(MAX_BYTES).decode("utf-8", "replace")
    return DropIn(path, "file", now.st_uid, now.st_mode, text)


def scan(directories: Iterable[str]) -> list[str]:
    """The *.conf entries of each drop-in directory; a directory that is a symlink is
    returned itself (systemd follows it, so it is judged, never entered)."""
    found = []
    for directory in directories:
        try:
            st = os.lstat(directory)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if not stat.S_ISDIR(st.st_mode):
            found.append(directory)
            continue
        found += [os.path.join(directory, n) for n in sorted(os.listdir(directory))
                  if n.endswith(".conf")]  # fmt: skip
    return found


def failure_reason(unit: str, bad: list[dict[str, str]]) -> str:
    """The outcome reason for drop-ins that fail the run (pure): what, then `; next:`."""
    named = "; ".join(f"{d['path']}: {d['why']}" for d in bad)
    return (
        f"{len(bad)} drop-in(s) on {unit} would change what the role's hardened unit runs or "
        f"how: {named}; {NEXT_STEP}"
    )


def warning(unit: str, d: dict[str, str]) -> str:
    """The warning for a harmless drop-in (pure)."""
    return f"drop-in {d['path']} on {unit} {d['why']}; applied on top of the unit"


def judge_all(paths: Iterable[str]) -> list[dict[str, str]]:
    """Every drop-in in `paths` with its verdict (fail, warn, ignore) and why; one that is
    gone is left out (systemd's list names one removed since: gone at the next reload)."""
    dropins = []
    for path in paths:
        try:
            found = read_dropin(path)
        except OSError as exc:
            dropins.append({"path": path, "verdict": FAIL, "why": f"unreadable ({exc})"})
            continue
        if found.kind == "absent":
            continue
        verdict, why = judge_dropin(found)
        dropins.append({"path": path, "verdict": verdict, "why": why})
    return dropins


def check(
    unit: str,
    loaded: Iterable[str],
    directories: Optional[Iterable[str]] = None,
    ignore: Iterable[str] = (),
) -> tuple[list[dict[str, str]], Optional[str], list[str]]:
    """(every drop-in with its verdict, the failure reason or None, the warnings).

    `loaded` is what systemd reports (DropInPaths); `directories` (default: every drop-in
    directory of the unit, type-wide included) are scanned for those not loaded yet;
    `ignore` are the ones the takeover sets aside in this run (in check mode still there).
    Only reads."""
    if directories is None:
        directories = dropin_dirs(unit, type_wide=True)
    skip = set(ignore)
    paths = [p for p in dict.fromkeys([*loaded, *scan(directories)]) if p not in skip]
    dropins = judge_all(paths)
    bad = [d for d in dropins if d["verdict"] == FAIL]
    reason = failure_reason(unit, bad) if bad else None
    warnings = [warning(unit, d) for d in dropins if d["verdict"] == WARN]
    return dropins, reason, warnings
