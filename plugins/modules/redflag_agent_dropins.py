#!/usr/bin/python
"""Ansible module: judge the systemd drop-ins on the agent's unit before it is (re)started.

systemd applies every drop-in of `redflag-agent.service` (its own directory, the dash-prefix
`redflag-.service.d`, the type-wide `service.d`, `systemctl set-property`'s system.control) on
top of the role's hardened unit: an `ExecStart=` reset, `User=root`, `NoNewPrivileges=no` or an
`Environment=` line would silently undo it. The takeover sets upstream's drop-ins aside; this
module looks at what is there when the service phase runs, the operator's included.

The rule (redflag_agent_systemd.judge_dropin, pure, table-tested): a drop-in that only sets
description, ordering, resource, timeout, logging or [Install] directives, in a root-owned file
nobody else can write, is a warning; anything else (an unknown directive too) fails the run
naming the file and the directives; a drop-in masked by a symlink to /dev/null is ignored.
Nothing is followed: a symlinked drop-in or drop-in directory fails (systemd reads through it).
"""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: redflag_agent_dropins
short_description: Fail when a systemd drop-in would undo the agent unit's hardening
description:
  - Finds the drop-ins of I(unit), from C(systemctl show -p DropInPaths) and from the drop-in
    directories on disk (also those systemd has not loaded yet).
  - A drop-in that sets only description, ordering, resource, timeout, logging or [Install]
    directives, in a root-owned file no one else can write, is returned as a warning.
  - Any other drop-in (one that sets C(ExecStart), C(User), C(NoNewPrivileges),
    C(Environment), C(ProtectSystem), C(Restart) or any directive not on that list, one
    writable by a non-root user, a symlink) fails the task, naming the file, the directives
    (never their values) and how to proceed.
  - Never changes anything; never follows a symlink.
options:
  unit:
    description: The agent's unit.
    type: str
    default: redflag-agent.service
  dropin_dirs:
    description:
      - Drop-in directories to look in besides what systemd reports.
      - Default, the unit's own, dash-prefix and type-wide (C(service.d)) directories under
        /etc/systemd/system.control, /run/systemd/system.control, /etc/systemd/system,
        /run/systemd/system, /usr/local/lib/systemd/system, /usr/lib/systemd/system and
        /lib/systemd/system.
    type: list
    elements: path
  ignore:
    description:
      - Drop-ins the takeover sets aside in this run (in check mode they are still there).
    type: list
    elements: path
    default: []
author:
  - redflag-provision developers (!UNKNOWN)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  platform:
    platforms: posix
    details: Linux hosts with systemd.
"""

EXAMPLES = r"""
- name: Check the drop-ins on the agent's unit
  redflag.agent.redflag_agent_dropins:
    unit: redflag-agent.service
    ignore: "{{ redflag_agent__takeover.dropins | default([]) }}"
"""

RETURN = r"""
dropins:
  description: Every drop-in found, with its verdict (fail, warn, ignore) and why.
  type: list
  elements: dict
  returned: always
  sample:
    - path: /etc/systemd/system/redflag-agent.service.d/limits.conf
      verdict: warn
      why: sets only MemoryMax (ordering, resources, timeouts or logging)
"""

import os
import stat
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.redflag.agent.plugins.module_utils.redflag_agent_systemd import (
    FAIL,
    WARN,
    DropIn,
    dropin_dirs,
    dropin_paths,
    judge_dropin,
    show,
)

MAX_BYTES = 1 << 20


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


def scan(directories: list[str]) -> list[str]:
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


def failure(unit: str, bad: list[dict[str, str]]) -> str:
    """The message for drop-ins that fail the run (pure)."""
    named = "; ".join(f"{d['path']}: {d['why']}" for d in bad)
    return (
        f"{len(bad)} drop-in(s) on {unit} would change what the role's hardened unit runs or "
        f"how: {named}. Move each file out of the drop-in directory (for example "
        f"`mv FILE /root/`), run `systemctl daemon-reload` and re-run the play; a setting the "
        f"agent needs belongs in the role's variables, not in a drop-in."
    )


def check(module: Any) -> dict[str, Any]:
    params = module.params
    unit = params["unit"]
    directories = params["dropin_dirs"]
    if directories is None:
        directories = dropin_dirs(unit, type_wide=True)
    loaded = dropin_paths(show(module, unit, ("DropInPaths",)))
    ignore = set(params["ignore"])
    paths = [p for p in dict.fromkeys(loaded + scan(directories)) if p not in ignore]
    dropins = []
    for path in paths:
        try:
            found = read_dropin(path)
        except OSError as exc:
            dropins.append({"path": path, "verdict": FAIL, "why": f"unreadable ({exc})"})
            continue
        if found.kind == "absent":
            continue  # systemd's list names one removed since: gone at the next reload
        verdict, why = judge_dropin(found)
        dropins.append({"path": path, "verdict": verdict, "why": why})
    bad = [d for d in dropins if d["verdict"] == FAIL]
    if bad:
        module.fail_json(msg=failure(unit, bad), dropins=dropins)
    for d in dropins:
        if d["verdict"] == WARN:
            module.warn(f"drop-in {d['path']} on {unit} {d['why']}; applied on top of the unit")
    return {"changed": False, "dropins": dropins}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "unit": {"type": "str", "default": "redflag-agent.service"},
            "dropin_dirs": {"type": "list", "elements": "path"},
            "ignore": {"type": "list", "elements": "path", "default": []},
        },
        supports_check_mode=True,
    )
    module.exit_json(**check(module))


if __name__ == "__main__":
    main()
