#!/usr/bin/python
"""Ansible module: take over the upstream RedFlag agent's OS pieces before ours goes down.

Upstream's agent (CONTRACT section 2) runs under the same unit name, `redflag-agent.service`,
from a Go binary in /usr/local/bin, with a sudoers file (0.1.x: `apt-get install -y *`, a root
shell for the agent user), and in 0.2.x a root helper, a polkit rule and the group
`redflag-local`. This module stops and disables that unit, copies every upstream file into a
root-only backup and removes it from its place, and deletes the group when no one but the agent
user is in it. The agent's own files (config, state, the loop's litter) are the agent's job.

Drop-ins: they are applied to whatever unit carries the name, ours too, so the drop-ins found
while upstream's unit is taken over are upstream's and go into the backup with it (each named
with the directives it sets, never their values). Drop-ins found when the unit is already ours
are the operator's: left for the service phase (redflag_agent_service judges them before
any systemctl action).

Upstream 0.2.x's helper (read from upstream's installers; it runs as a transient unit through
`systemd-run`, so it has no unit, socket or tmpfiles entry of its own) leaves: the binary, the
sudoers line and polkit rule (moved as above), the group (above), root-owned state directories
(/var/lib/redflag/helper: replay records and staged upgrades; /var/lib/redflag/journal on
standalone hosts; /etc/redflag/trusted-keys: the keys it trusts; /etc/redflag/backups: the
installer's config copies, tokens included), moved whole into the backup with rename(2) (left,
and reported, when on another filesystem); and files (the standalone host's sudoers file
redflag-agent-mint and authority key, /var/lib/redflag/agent_id, the optional desktop binary
and its autostart entry), moved like the binaries. Left on purpose: /etc/redflag/agent_id and
/etc/redflag/server/ (the agent's migration reads the agent_id as identity and keeps both in its
own backup), and upstream's logs.

Group memberships: both upstream installers (0.1.x install.sh, 0.2.x linux.sh.tmpl) run
`usermod -aG docker redflag-agent` whenever a docker group exists, and membership of docker is
root-equivalent (the socket starts privileged containers); this agent never talks to docker.
So on a host that ran upstream (its pieces found now, or an earlier takeover's backup from a
role version that did not handle memberships) the agent user leaves docker with
`gpasswd -d`, recorded in the manifest. A membership the takeover already removed once and
that is back, or docker on a host that never ran upstream, may be deliberate: only a warning,
like the other root-equivalent groups upstream never adds (wheel, sudo, admin, disk, root,
lxd, incus-admin, libvirt). Log-reading groups (adm, systemd-journal) and redflag-local
(handled above) are left without comment: they give no way to root.

Kept copies are never a way up: a copy is a new file created 0600 and then given the original's
mode without setuid/setgid, and with no extended attributes (so no file capabilities, which
0.2.x's installer sets on its agent binary: cap_sys_ptrace); and before the original is
unlinked its setuid/setgid bits and capabilities are dropped through the open descriptor, so
another hard link to it keeps none either. The backup itself is root:root 0700.

`plan()` decides from what was found (pure, table-tested in tests/role); the rest is thin I/O.
Nothing is followed: each file is lstat'ed, opened with O_NOFOLLOW, checked to be the same
regular file, copied, and only then unlinked. A symlink or anything else is left alone and
reported.
"""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: redflag_agent_takeover
short_description: Stop the upstream RedFlag agent and set its OS pieces aside
description:
  - Stops and disables I(unit) when it is upstream's (its unit file, or the loaded unit, runs
    something other than I(pyz)).
  - Moves upstream's binaries, sudoers files, polkit rules and unit files (those not running
    I(pyz)) into a new root-only directory under I(backup_root), with a C(manifest.json).
  - Deletes I(group) when it exists and has no member other than I(agent_user) and is no
    user's primary group.
  - Moves the drop-ins of I(unit) (I(dropin_dirs)) into the backup when upstream's unit is
    taken over; drop-ins found when the unit is already ours are left (the service phase's
    M(redflag.agent.redflag_agent_service) judges them before any (re)start).
  - Moves upstream's helper files (I(helper_files)) and, with rename(2), its state directories
    (I(helper_dirs)) into the backup.
  - Removes I(agent_user) from the group C(docker) (root-equivalent; upstream's installers add
    it, this agent does not use docker) when the host ran upstream (upstream pieces found now,
    or an earlier takeover backup that did not handle memberships); C(manifest.json) records
    it. A membership removed once that is back, docker on a host that never ran upstream, and
    the other root-equivalent groups (wheel, sudo, admin, disk, root, lxd, incus-admin,
    libvirt) are only warned about.
  - Drops setuid/setgid bits and file capabilities from what it keeps and from the originals
    before unlinking them.
  - Never follows a symlink; a symlink or a non-regular file is left alone and reported.
  - Supports check mode (reports what it would do) and diff mode (the upstream pieces).
options:
  unit:
    description: The unit upstream and this agent share.
    type: str
    default: redflag-agent.service
  unit_paths:
    description: Where an upstream unit file may lie (a unit running I(pyz) is kept).
    type: list
    elements: path
    default: [/etc/systemd/system/redflag-agent.service,
              /usr/lib/systemd/system/redflag-agent.service,
              /lib/systemd/system/redflag-agent.service]
  pyz:
    description: This agent's zipapp; a unit whose ExecStart runs it is ours.
    type: path
    required: true
  binaries:
    description: Upstream binaries to move into the backup.
    type: list
    elements: path
    default: [/usr/local/bin/redflag-agent, /usr/local/bin/redflag-helper]
  sudoers:
    description: Upstream sudoers files to remove (kept in the backup).
    type: list
    elements: path
    default: [/etc/sudoers.d/redflag-agent]
  polkit_rules:
    description: Upstream polkit rules to remove (kept in the backup).
    type: list
    elements: path
    default: [/etc/polkit-1/rules.d/50-redflag-agent.rules]
  dropin_dirs:
    description:
      - Drop-in directories of I(unit) whose files are upstream's when its unit is taken over.
      - Default, the unit's own and its dash-prefix directories (C(redflag-.service.d)) under
        /etc/systemd/system.control, /run/systemd/system.control, /etc/systemd/system,
        /run/systemd/system, /usr/local/lib/systemd/system, /usr/lib/systemd/system and
        /lib/systemd/system. Not C(service.d), which applies to every service on the host.
    type: list
    elements: path
  helper_files:
    description: Other upstream files to move into the backup (0.2.x helper, standalone and
      desktop pieces).
    type: list
    elements: path
    default: [/etc/sudoers.d/redflag-agent-mint, /etc/redflag/authority_local.key,
              /var/lib/redflag/agent_id, /usr/local/bin/redflag-desktop,
              /etc/xdg/autostart/redflag-desktop.desktop]
  helper_dirs:
    description: Upstream's root-owned state directories, moved whole (rename) into the backup.
    type: list
    elements: path
    default: [/var/lib/redflag/helper, /var/lib/redflag/journal, /etc/redflag/trusted-keys,
              /etc/redflag/backups]
  group:
    description: Upstream's local API group, deleted when only I(agent_user) is in it.
    type: str
    default: redflag-local
  agent_user:
    description:
      - The agent's service user (its membership in I(group) does not keep the group).
      - Its root-equivalent group memberships are removed or warned about (see above).
    type: str
    default: redflag-agent
  backup_root:
    description: Root-only directory that holds one timestamped directory per takeover.
    type: path
    default: /var/lib/redflag-agent-takeover
author:
  - redflag-provision developers (!UNKNOWN)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details: The upstream pieces found, before and after.
  platform:
    platforms: posix
    details: Linux hosts with systemd (Debian, Ubuntu, RHEL and its rebuilds, Fedora).
"""

EXAMPLES = r"""
- name: Set the upstream agent aside before installing this one
  redflag.agent.redflag_agent_takeover:
    pyz: /opt/redflag-agent/current/redflag-agent.pyz
  register: takeover

- name: Say what was taken over
  ansible.builtin.debug:
    msg: "{{ takeover.summary }}"
  when: takeover.summary | length > 0

- name: Upstream installed under other paths
  redflag.agent.redflag_agent_takeover:
    pyz: /opt/redflag-agent/current/redflag-agent.pyz
    unit_paths:
      - /etc/systemd/system/redflag-agent.service
      - /usr/lib/systemd/system/redflag-agent.service
    binaries: [/usr/local/bin/redflag-agent, /opt/redflag/bin/redflag-agent]
"""

RETURN = r"""
changes:
  description: One line per action taken (or, in check mode, that would be taken).
  type: list
  elements: str
  returned: always
summary:
  description: The per-host report fragment naming every piece, empty when nothing was found.
  type: str
  returned: always
backup_dir:
  description: The backup directory of this run (the one it would create in check mode), or null.
  type: str
  returned: always
left_alone:
  description: Upstream-looking pieces that were not touched, with the reason.
  type: list
  elements: str
  returned: always
dropins:
  description: The drop-ins moved into the backup (in check mode, that would be moved).
  type: list
  elements: str
  returned: always
memberships_removed:
  description: The groups I(agent_user) was removed from (in check mode, would be removed).
  type: list
  elements: str
  returned: always
  sample: [docker]
"""

import contextlib
import datetime
import errno
import grp
import json
import os
import pwd
import stat
from typing import Any, NamedTuple, Optional

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.redflag.agent.plugins.module_utils.redflag_agent_commands import (
    run_checked,
)
from ansible_collections.redflag.agent.plugins.module_utils.redflag_agent_files import fsync_dir
from ansible_collections.redflag.agent.plugins.module_utils.redflag_agent_systemd import (
    directives,
    dropin_dirs,
    show,
)

MAX_UNIT_BYTES = 1 << 20
CHUNK = 1 << 20
RUNNING = ("active", "activating", "reloading", "deactivating")
SHOW_PROPS = ("LoadState", "ActiveState", "UnitFileState", "ExecStart")

# What each kind of piece is, for the report; why it goes.
KINDS = {
    "binary": "binary",
    "sudoers": "sudoers file",
    "polkit": "polkit rule",
    "unit": "unit file",
    "dropin": "drop-in",
    "helper": "helper file",
    "helper_dir": "helper directory",
}
CAPS_XATTR = "security.capability"
# Groups whose members are root or one step from it, and why.
ROOT_EQUIVALENT = {
    "docker": "its socket starts privileged containers",
    "lxd": "its socket starts privileged containers",
    "incus-admin": "its socket starts privileged containers",
    "libvirt": "qemu:///system gives VMs the host's disks",
    "disk": "raw access to the block devices",
    "root": "writes root's group-writable files",
    "wheel": "sudo rights in the default sudoers",
    "sudo": "sudo rights in the default sudoers",
    "admin": "sudo rights in Ubuntu's default sudoers",
}
# Groups upstream's installers add the agent user to for privilege, and why it goes
# (redflag-local, the local API group, is handled with the group option).
UPSTREAM_ADDED = {"docker": "root-equivalent; this agent does not use docker"}
MAX_MANIFEST_BYTES = 1 << 20


class Piece(NamedTuple):
    kind: str  # binary | sudoers | polkit | unit | dropin | helper | helper_dir
    path: str
    found: str  # file | symlink | directory | other | absent
    ident: tuple[int, int] = (0, 0)  # (st_dev, st_ino): /lib and /usr/lib may be one file
    ours: bool = False  # unit files only: its ExecStart runs our zipapp
    detail: str = ""  # drop-ins: the directives set; files: setuid, setgid, file capabilities


class Loaded(NamedTuple):
    load_state: str = ""
    active_state: str = ""
    unit_file_state: str = ""
    exec_start: str = ""


class Group(NamedTuple):
    name: str
    exists: bool
    gid: Optional[int] = None
    members: tuple[str, ...] = ()
    primary_of: tuple[str, ...] = ()


class Membership(NamedTuple):
    group: str
    gid: int


class Earlier(NamedTuple):
    """What earlier takeovers' manifests say (the backup root is root-only)."""

    takeovers: int = 0  # backups whose manifest was read
    removed: tuple[str, ...] = ()  # groups an earlier takeover took the agent user out of
    handled: bool = False  # some earlier manifest records memberships (this version's rule ran)


NO_EARLIER = Earlier()


class Action(NamedTuple):
    op: str  # stop | disable | move | groupdel | leave
    target: str  # unit, path or group name
    kind: str  # service | group | membership | one of Piece.kind
    detail: str = ""  # Piece.detail; membership: why it goes
    user: str = ""  # membership: who leaves the group


class Plan(NamedTuple):
    actions: tuple[Action, ...]
    left_alone: tuple[str, ...]
    warnings: tuple[str, ...] = ()

    def moves(self) -> list[Action]:
        return [a for a in self.actions if a.op == "move"]


# ---- pure decisions ------------------------------------------------------------------


def unit_text_is_ours(text: str, pyz: str) -> bool:
    """A unit file is ours when an ExecStart= line runs our zipapp (pure)."""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("ExecStart=") and pyz in line:
            return True
    return False


def loaded_is_upstream(loaded: Loaded, pyz: str) -> bool:
    """systemd has the unit loaded with a command that is not our zipapp (pure)."""
    return (
        loaded.load_state == "loaded" and bool(loaded.exec_start) and pyz not in loaded.exec_start
    )


def loaded_of(props: dict[str, str]) -> Loaded:
    """The unit as systemd has it loaded, from `systemctl show` properties (pure)."""
    return Loaded(
        props.get("LoadState", ""),
        props.get("ActiveState", ""),
        props.get("UnitFileState", ""),
        props.get("ExecStart", ""),
    )


def group_decision(group: Group, agent_user: str) -> tuple[bool, str]:
    """(delete it, why not) for upstream's group (pure)."""
    if not group.exists:
        return False, ""
    if group.primary_of:
        return False, f"group {group.name} kept: primary group of {', '.join(group.primary_of)}"
    others = sorted(set(group.members) - {agent_user})
    if others:
        return False, f"group {group.name} kept: members {', '.join(others)}"
    return True, ""


def membership_decision(
    memberships: tuple[Membership, ...], upstream_now: bool, earlier: Earlier, agent_user: str
) -> tuple[list[Action], list[str]]:
    """(groups the agent user leaves, warnings) for its supplementary groups (pure).

    Removed: a group upstream's installers add (docker) on a host that ran upstream: its
    pieces found now, or an earlier takeover that did not handle memberships (a role version
    before this rule). Warned about: any root-equivalent membership the rule leaves, because
    it may be the operator's doing (a host that never ran upstream; a membership removed once
    and back since; a group upstream never adds). Others (adm, systemd-journal: log reading)
    are no way to root and are left without comment."""
    leave: list[Action] = []
    warn: list[str] = []
    for m in sorted(memberships):
        if m.group in UPSTREAM_ADDED and (
            upstream_now or (earlier.takeovers and not earlier.handled)
        ):
            leave.append(
                Action("leave", m.group, "membership", UPSTREAM_ADDED[m.group], agent_user)
            )
            continue
        if m.group not in ROOT_EQUIVALENT:
            continue
        if m.group in earlier.removed:
            why = "an earlier takeover removed it and it is back, so it looks deliberate"
        elif m.group in UPSTREAM_ADDED:
            why = "no upstream agent was found on this host, so it may be deliberate"
        else:
            why = "upstream's installers do not add it, so it may be deliberate"
        warn.append(
            f"WARNING: {agent_user} is in group {m.group} ({ROOT_EQUIVALENT[m.group]}: "
            f"root-equivalent) and this agent needs no such group; left as it is ({why}): "
            f"remove it with `gpasswd -d {agent_user} {m.group}` unless it is meant"
        )
    return leave, warn


def plan(
    pieces: list[Piece],
    loaded: Loaded,
    group: Group,
    agent_user: str,
    pyz: str,
    *,
    backup_dev: Optional[int] = None,
    memberships: tuple[Membership, ...] = (),
    earlier: Earlier = NO_EARLIER,
) -> Plan:
    """What to do with what was found (pure). backup_dev: the backup root's filesystem (a
    helper directory is moved with rename, which cannot cross filesystems); memberships: the
    agent user's supplementary groups; earlier: what earlier takeovers recorded."""
    actions: list[Action] = []
    left: list[str] = []
    unit_files = [p for p in pieces if p.kind == "unit" and p.found == "file"]
    upstream_unit = any(not p.ours for p in unit_files) or loaded_is_upstream(loaded, pyz)
    if upstream_unit and loaded.load_state == "loaded":
        if loaded.active_state in RUNNING:
            actions.append(Action("stop", "", "service"))
        if loaded.unit_file_state.startswith("enabled"):
            actions.append(Action("disable", "", "service"))
    seen: set[tuple[int, int]] = set()
    for piece in pieces:
        if piece.found == "absent":
            continue
        if piece.kind == "dropin" and not upstream_unit:
            continue  # our unit's: the service phase judges it
        want = "directory" if piece.kind == "helper_dir" else "file"
        if piece.found != want:
            what = "a directory" if want == "directory" else "a regular file"
            left.append(f"{piece.path} left alone: a {piece.found}, not {what} (never followed)")
            continue
        if piece.kind == "unit" and piece.ours:
            continue
        if piece.kind == "helper_dir" and backup_dev is not None and piece.ident[0] != backup_dev:
            left.append(f"{piece.path} left alone: on another filesystem than the takeover "
                        f"backup (moved only by rename); remove it after review")  # fmt: skip
            continue
        if piece.ident != (0, 0):
            if piece.ident in seen:
                continue  # the same file under a second name (/lib -> /usr/lib)
            seen.add(piece.ident)
        actions.append(Action("move", piece.path, piece.kind, piece.detail))
    delete, why = group_decision(group, agent_user)
    if delete:
        actions.append(Action("groupdel", group.name, "group"))
    elif why:
        left.append(why)
    # Upstream found: anything to stop or set aside (a symlink left alone is not proof).
    leave, warn = membership_decision(memberships, bool(actions), earlier, agent_user)
    return Plan(tuple(actions + leave), tuple(left), tuple(warn))


def backup_name(now: datetime.datetime, existing: set[str]) -> str:
    """A new directory name: UTC time, with -N when that second is taken (pure)."""
    base = now.astimezone(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    name, n = base, 1
    while name in existing:
        name, n = f"{base}-{n}", n + 1
    return name


def needs_backup(p: Plan) -> bool:
    return any(a.op in ("move", "groupdel", "leave") for a in p.actions)


def _join(items: list[str]) -> str:
    return ", ".join(items)


def _named(a: Action, why: bool = True) -> str:
    """A moved piece as the report names it: kind, path, what it set or carried (pure)."""
    text = f"{KINDS[a.kind]} {a.target}"
    if a.kind == "dropin":
        return text + f" ({a.detail or 'sets nothing'})"
    if a.kind == "sudoers":
        return text + (" (sudo rights this agent does not need)" if why else "")
    if a.detail:
        return text + f" ({a.detail} dropped on the kept copy)"
    return text


def change_lines(p: Plan, unit: str, backup_dir: Optional[str], check: bool) -> list[str]:
    """One line per action (pure)."""
    would = "would " if check else ""
    lines = []
    for a in p.actions:
        if a.op in ("stop", "disable"):
            lines.append(f"{would}{a.op} the upstream {unit}")
        elif a.op == "move":
            lines.append(f"{would}move {_named(a, why=False)} to {backup_dir}")
        elif a.op == "leave":
            lines.append(f"{would}remove {a.user} from group {a.target}")
        else:
            lines.append(f"{would}delete group {a.target}")
    return lines


def summary(p: Plan, unit: str, backup_dir: Optional[str], check: bool) -> str:
    """The per-host report fragment, every piece by name, then the warnings; '' when nothing
    was found (pure)."""
    if not p.actions and not p.left_alone:
        return "; ".join(p.warnings)
    would = "would " if check else ""
    ops = {a.op for a in p.actions}
    parts = []
    verbs = [(v if check else done) for v, done in (("stop", "stopped"), ("disable", "disabled"))
             if v in ops]  # fmt: skip
    if verbs:
        parts.append(f"{would}{' and '.join(verbs)} the upstream {unit}")
    # Binaries and helper directories are moved whole (renamed, or copied then unlinked);
    # the other files are removed with a copy kept.
    moved = [
        (_named(a) if a.kind == "helper_dir" else
         a.target + (f" ({a.detail} dropped on the kept copy)" if a.detail else ""))
        for a in p.actions
        if a.op == "move" and a.kind in ("binary", "helper_dir")
    ]  # fmt: skip
    if moved:
        parts.append(f"{would}{'move' if check else 'moved'} {_join(moved)} to {backup_dir}")
    files = [_named(a) for a in p.actions
             if a.op == "move" and a.kind not in ("binary", "helper_dir")]  # fmt: skip
    removed = [f"{_join(files)} (copies in {backup_dir})"] if files else []
    removed += [f"group {a.target}" for a in p.actions if a.op == "groupdel"]
    if removed:
        parts.append(f"{would}{'remove' if check else 'removed'} {_join(removed)}")
    parts += [f"{would}{'remove' if check else 'removed'} {a.user} from group {a.target} "
              f"({a.detail})" for a in p.actions if a.op == "leave"]  # fmt: skip
    parts += list(p.left_alone) + list(p.warnings)
    head = "would take over the upstream agent: " if check else "upstream agent taken over: "
    if not p.actions:
        head = "upstream agent: "
    return head + "; ".join(parts)


def manifest(
    p: Plan,
    unit: str,
    loaded: Loaded,
    group: Group,
    files: dict[str, dict[str, Any]],
    *,
    gids: Optional[dict[str, int]] = None,
) -> dict[str, Any]:
    """What the backup holds and how to put it back (pure). gids: group name -> gid."""
    gids = gids or {}
    return {
        "format": 1,
        "unit": {
            "name": unit,
            "was_active": loaded.active_state in RUNNING,
            "was_enabled": loaded.unit_file_state.startswith("enabled"),
            "exec_start": loaded.exec_start,
        },
        "files": [files[a.target] for a in p.actions if a.op == "move" and a.target in files],
        "group": (
            {"name": group.name, "gid": group.gid, "members": list(group.members)}
            if any(a.op == "groupdel" for a in p.actions)
            else None
        ),
        "memberships": [
            {"user": a.user, "group": a.target, "gid": gids.get(a.target), "why": a.detail}
            for a in p.actions
            if a.op == "leave"
        ],
        "restore": (
            "stop this agent (systemctl disable --now " + unit + "), copy files/ back to / "
            "(cp -a files/. /), recreate the group with its gid and members if listed, put "
            "each user under memberships back in its group (gpasswd -a USER GROUP), then "
            "systemctl daemon-reload and enable --now " + unit + "; setuid/setgid bits and "
            "file capabilities listed as dropped are not in the copies"
        ),
    }


def diff_text(
    pieces: list[Piece],
    group: Group,
    p: Plan,
    after: bool,
    *,
    memberships: tuple[Membership, ...] = (),
    agent_user: str = "",
) -> str:
    gone = {a.target for a in p.actions if a.op in ("move", "groupdel")}
    left = {a.target for a in p.actions if a.op == "leave"}
    lines = [
        f"{piece.path} ({piece.found})"
        for piece in pieces
        if piece.found != "absent"
        and not (piece.kind == "unit" and piece.ours)
        and not (after and piece.path in gone)
    ]
    if group.exists and not (after and group.name in gone):
        lines.append(f"group {group.name} (members: {', '.join(group.members) or 'none'})")
    lines += [f"{agent_user} in group {m.group}" for m in sorted(memberships)
              if m.group in left and not after]  # fmt: skip
    return "\n".join(lines) + ("\n" if lines else "")


# ---- I/O -----------------------------------------------------------------------------


def lstat_kind(path: str) -> tuple[str, tuple[int, int]]:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "absent", (0, 0)
    except NotADirectoryError:
        return "absent", (0, 0)
    if stat.S_ISLNK(st.st_mode):
        kind = "symlink"
    elif stat.S_ISREG(st.st_mode):
        kind = "file"
    elif stat.S_ISDIR(st.st_mode):
        kind = "directory"
    else:
        kind = "other"
    return kind, (st.st_dev, st.st_ino)


def open_regular(path: str, ident: tuple[int, int]) -> tuple[int, os.stat_result]:
    """Open a regular file without following a symlink; it must still be the file lstat saw."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != ident:
        os.close(fd)
        raise OSError(f"{path} changed while it was being read (not the regular file found)")
    return fd, st


def read_unit(path: str, ident: tuple[int, int]) -> str:
    fd, _st = open_regular(path, ident)
    with os.fdopen(fd, "rb") as handle:
        return handle.read(MAX_UNIT_BYTES).decode("utf-8", "replace")


def special_bits(path: str) -> str:
    """What in a regular file found by lstat could raise privileges: setuid, setgid, file
    capabilities ('' for none). getxattr does not follow a symlink swapped in meanwhile."""
    st = os.lstat(path)
    found = [name for bit, name in ((stat.S_ISUID, "setuid"), (stat.S_ISGID, "setgid"))
             if st.st_mode & bit]  # fmt: skip
    try:
        os.getxattr(path, CAPS_XATTR, follow_symlinks=False)
        found.append("file capabilities")
    except OSError:
        pass  # ENODATA (none), or a filesystem without xattrs
    return " and ".join(found)


def dropin_detail(text: str) -> str:
    """The directives a drop-in sets, by name only (an Environment= value may be a token)."""
    keys = list(dict.fromkeys(key for _section, key in directives(text)))
    return ("sets " + ", ".join(keys)) if keys else "sets nothing"


def find_dropins(directory: str) -> list[Piece]:
    """Every entry of one drop-in directory (root's: /etc, /run, /usr/lib), not followed."""
    found, ident = lstat_kind(directory)
    if found == "absent":
        return []
    if found != "directory":
        return [Piece("dropin", directory, found, ident)]  # systemd would follow it: reported
    pieces = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        kind, ident = lstat_kind(path)
        detail = dropin_detail(read_unit(path, ident)) if kind == "file" else ""
        pieces.append(Piece("dropin", path, kind, ident, False, detail))
    return pieces


def find_pieces(params: dict[str, Any]) -> list[Piece]:
    pieces = []
    for kind, key in (("unit", "unit_paths"), ("binary", "binaries"), ("sudoers", "sudoers"),
                      ("polkit", "polkit_rules"), ("helper", "helper_files"),
                      ("helper_dir", "helper_dirs")):  # fmt: skip
        for path in params[key]:
            found, ident = lstat_kind(path)
            ours = False
            detail = ""
            if kind == "unit" and found == "file":
                ours = unit_text_is_ours(read_unit(path, ident), params["pyz"])
            elif found == "file":
                detail = special_bits(path)
            pieces.append(Piece(kind, path, found, ident, ours, detail))
    for directory in params["dropin_dirs"]:
        pieces += find_dropins(directory)
    return pieces


def backup_dev(root: str) -> int:
    """The filesystem the backup lies on: its root's, or its parent's before it exists."""
    try:
        return os.lstat(root).st_dev
    except FileNotFoundError:
        return os.lstat(os.path.dirname(root.rstrip("/")) or "/").st_dev


def find_group(name: str) -> Group:
    try:
        entry = grp.getgrnam(name)
    except KeyError:
        return Group(name, False)
    primary = tuple(sorted(u.pw_name for u in pwd.getpwall() if u.pw_gid == entry.gr_gid))
    return Group(name, True, entry.gr_gid, tuple(entry.gr_mem), primary)


def find_memberships(user: str) -> tuple[Membership, ...]:
    """The groups that list user as a member (its primary group is the host module's)."""
    return tuple(Membership(g.gr_name, g.gr_gid) for g in grp.getgrall() if user in g.gr_mem)


def find_earlier(root: str) -> Earlier:
    """What earlier takeovers' manifests record. Read only when root is a root-only directory
    (no one else could have put a manifest there); each one opened without following."""
    try:
        st = os.lstat(root)
    except OSError:
        return Earlier()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        return Earlier()
    takeovers, removed, handled = 0, set(), False
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name, "manifest.json")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue  # not a takeover directory, or no manifest (a run that failed early)
        try:
            with os.fdopen(fd, "rb") as handle:
                if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                    continue
                data = json.loads(handle.read(MAX_MANIFEST_BYTES))
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        takeovers += 1
        if isinstance(data.get("memberships"), list):
            handled = True
            removed |= {m["group"] for m in data["memberships"]
                        if isinstance(m, dict) and isinstance(m.get("group"), str)}  # fmt: skip
    return Earlier(takeovers, tuple(sorted(removed)), handled)


class Takeover:
    def __init__(self, module: Any) -> None:
        self.module = module
        self.p = module.params
        self.done: list[str] = []

    def fail(self, msg: str) -> None:
        self.module.fail_json(msg=msg, changes=self.done)

    def systemctl(self, *args: str) -> None:
        run_checked(self.module, ["systemctl", *args], changes=self.done)

    def loaded(self) -> Loaded:
        return loaded_of(show(self.module, self.p["unit"], SHOW_PROPS))

    def backup_root(self) -> None:
        """Create it root:root 0700, or check that it is a root-only real directory."""
        root = self.p["backup_root"]
        try:
            st = os.lstat(root)
        except FileNotFoundError:
            os.mkdir(root, 0o700)
            os.chmod(root, 0o700)
            return
        # Root's own (the caller's, so the tests can run it unprivileged too).
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
            self.fail(
                f"{root} is not a root-only directory (owner uid {st.st_uid}, mode "
                f"{stat.filemode(st.st_mode)}); the takeover keeps upstream's files there. "
                f"Move it away (or make it a root:root 0700 directory) and re-run."
            )

    def copy_into(self, backup: str, path: str, ident: tuple[int, int]) -> dict[str, Any]:
        """Copy a regular file into backup/files/<path>; owner, mode and mtime kept."""
        dest = os.path.join(backup, "files", path.lstrip("/"))
        os.makedirs(os.path.dirname(dest), mode=0o700, exist_ok=True)
        src, st = open_regular(path, ident)
        try:
            out = os.open(
                dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
            )
            try:
                while True:
                    chunk = os.read(src, CHUNK)
                    if not chunk:
                        break
                    os.write(out, chunk)
                os.fchown(out, st.st_uid, st.st_gid)
                os.fchmod(out, stat.S_IMODE(st.st_mode) & 0o777)  # no setuid in a backup
                os.fsync(out)
            finally:
                os.close(out)
        finally:
            os.close(src)
        os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
        return {"path": path, "stored": "files" + path, "uid": st.st_uid, "gid": st.st_gid,
                "mode": oct(stat.S_IMODE(st.st_mode)), "size": st.st_size}  # fmt: skip

    def move_dir(self, backup: str, path: str, ident: tuple[int, int]) -> dict[str, Any]:
        """rename(2) a helper directory into backup/files/<path>: nothing below it is opened,
        so nothing is followed; the directory moved must be the one found."""
        dest = os.path.join(backup, "files", path.lstrip("/"))
        os.makedirs(os.path.dirname(dest), mode=0o700, exist_ok=True)
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or (st.st_dev, st.st_ino) != ident:
            self.fail(f"{path} changed during the takeover; it was not moved; re-run")
        os.rename(path, dest)
        moved = lstat_kind(dest)[1]
        if moved != ident:
            self.fail(f"{path} was swapped while it was moved; what was moved is in {dest} "
                      f"(root-only); check it and re-run")  # fmt: skip
        self.done.append(f"{path} moved to {backup}")
        return {"path": path, "stored": "files" + path, "type": "directory", "uid": st.st_uid,
                "gid": st.st_gid, "mode": oct(stat.S_IMODE(st.st_mode))}  # fmt: skip

    def defuse(self, path: str, ident: tuple[int, int]) -> list[str]:
        """Drop setuid/setgid and file capabilities from the file about to be unlinked, through
        its descriptor: a second hard link to it would otherwise keep them."""
        fd, st = open_regular(path, ident)
        dropped = []
        try:
            if st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                os.fchmod(fd, stat.S_IMODE(st.st_mode) & 0o1777)
                dropped.append("setuid/setgid")
            try:
                os.removexattr(fd, CAPS_XATTR)
                dropped.append("file capabilities")
            except OSError as exc:
                if exc.errno not in (errno.ENODATA, errno.ENOTSUP):
                    raise
        finally:
            os.close(fd)
        return dropped

    def unlink_same(self, path: str, ident: tuple[int, int]) -> None:
        kind, now = lstat_kind(path)
        if kind != "file" or now != ident:
            self.fail(
                f"{path} changed during the takeover (now a {kind}); it was not removed; re-run"
            )
        os.unlink(path)

    def run(
        self,
        p: Plan,
        pieces: list[Piece],
        loaded: Loaded,
        group: Group,
        backup: str,
        *,
        gids: Optional[dict[str, int]] = None,
    ) -> None:
        unit = self.p["unit"]
        for a in p.actions:
            if a.op in ("stop", "disable"):
                self.systemctl(a.op, unit)
                self.done.append(f"{a.op} the upstream {unit}")
        if not needs_backup(p):
            return
        self.backup_root()
        os.mkdir(backup, 0o700)
        idents = {piece.path: piece.ident for piece in pieces}
        files: dict[str, dict[str, Any]] = {}
        moves = [a for a in p.moves() if a.kind != "helper_dir"]
        # Everything is copied and the manifest written before anything is removed.
        for a in moves:
            try:
                files[a.target] = self.copy_into(backup, a.target, idents[a.target])
            except OSError as exc:
                self.fail(f"could not copy {a.target} into {backup}: {exc}; nothing was removed")
            if a.detail and a.kind != "dropin":
                files[a.target]["dropped"] = a.detail
        for a in p.moves():
            if a.kind == "helper_dir":
                try:
                    files[a.target] = self.move_dir(backup, a.target, idents[a.target])
                except OSError as exc:
                    self.fail(f"could not move {a.target} into {backup}: {exc}; no file was "
                              f"removed")  # fmt: skip
        data = json.dumps(manifest(p, unit, loaded, group, files, gids=gids), indent=2) + "\n"
        fd = os.open(
            os.path.join(backup, "manifest.json"),
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
            0o600,
        )
        with os.fdopen(fd, "w") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        fsync_dir(backup)
        # Recorded above, so it can be put back; gpasswd edits only root's /etc/group and
        # /etc/gshadow (and flushes nscd), never a path the agent user can write.
        for a in p.actions:
            if a.op == "leave":
                run_checked(self.module, ["gpasswd", "-d", a.user, a.target], changes=self.done)
                self.done.append(f"{a.user} removed from group {a.target}")
        unit_moved = False
        for a in moves:
            if a.kind != "dropin":
                self.defuse(a.target, idents[a.target])
            self.unlink_same(a.target, idents[a.target])
            self.done.append(f"{a.target} moved to {backup}")
            unit_moved = unit_moved or a.kind in ("unit", "dropin")
        for directory in sorted({os.path.dirname(a.target) for a in moves if a.kind == "dropin"}):
            with contextlib.suppress(OSError):
                os.rmdir(directory)  # emptied drop-in directory; one with other files stays
        for a in p.actions:
            if a.op == "groupdel":
                run_checked(self.module, ["groupdel", a.target], changes=self.done)
                self.done.append(f"group {a.target} deleted")
        if unit_moved:
            self.systemctl("daemon-reload")


# The upstream lists are this module's defaults, the one place they are kept (the role
# passes none); DOCUMENTATION says the same (tests/role/test_takeover_groups.py).
ARGUMENT_SPEC: dict[str, dict[str, Any]] = {
    "unit": {"type": "str", "default": "redflag-agent.service"},
    "unit_paths": {
        "type": "list",
        "elements": "path",
        "default": [
            "/etc/systemd/system/redflag-agent.service",
            "/usr/lib/systemd/system/redflag-agent.service",
            "/lib/systemd/system/redflag-agent.service",
        ],
    },
    "pyz": {"type": "path", "required": True},
    "binaries": {
        "type": "list",
        "elements": "path",
        "default": ["/usr/local/bin/redflag-agent", "/usr/local/bin/redflag-helper"],
    },
    "sudoers": {
        "type": "list",
        "elements": "path",
        "default": ["/etc/sudoers.d/redflag-agent"],
    },
    "polkit_rules": {
        "type": "list",
        "elements": "path",
        "default": ["/etc/polkit-1/rules.d/50-redflag-agent.rules"],
    },
    "dropin_dirs": {"type": "list", "elements": "path"},
    "helper_files": {
        "type": "list",
        "elements": "path",
        "default": [
            "/etc/sudoers.d/redflag-agent-mint",
            "/etc/redflag/authority_local.key",
            "/var/lib/redflag/agent_id",
            "/usr/local/bin/redflag-desktop",
            "/etc/xdg/autostart/redflag-desktop.desktop",
        ],
    },
    "helper_dirs": {
        "type": "list",
        "elements": "path",
        "default": [
            "/var/lib/redflag/helper",
            "/var/lib/redflag/journal",
            "/etc/redflag/trusted-keys",
            "/etc/redflag/backups",
        ],
    },
    "group": {"type": "str", "default": "redflag-local"},
    "agent_user": {"type": "str", "default": "redflag-agent"},
    "backup_root": {"type": "path", "default": "/var/lib/redflag-agent-takeover"},
}


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    module.exit_json(**takeover(module))


def takeover(module: Any) -> dict[str, Any]:
    """Find, decide, act (unless check mode); the module's result."""
    params = dict(module.params)
    if params["dropin_dirs"] is None:
        params["dropin_dirs"] = dropin_dirs(params["unit"])
    work = Takeover(module)
    try:
        pieces = find_pieces(params)
    except OSError as exc:
        module.fail_json(msg=f"could not read an upstream unit file or drop-in: {exc}", changes=[])
    loaded = work.loaded()
    group = find_group(params["group"])
    memberships = find_memberships(params["agent_user"])
    decided = plan(pieces, loaded, group, params["agent_user"], params["pyz"],
                   backup_dev=backup_dev(params["backup_root"]), memberships=memberships,
                   earlier=find_earlier(params["backup_root"]))  # fmt: skip
    gids = {m.group: m.gid for m in memberships}
    backup = None
    if needs_backup(decided):
        root = params["backup_root"]
        existing = (
            set(os.listdir(root)) if os.path.isdir(root) and not os.path.islink(root) else set()
        )
        backup = os.path.join(
            root, backup_name(datetime.datetime.now(datetime.timezone.utc), existing)
        )
    if not module.check_mode:
        work.run(decided, pieces, loaded, group, backup or "", gids=gids)
    for text in decided.warnings:
        module.warn(text)
    result: dict[str, Any] = {
        "changed": bool(decided.actions),
        "changes": change_lines(decided, params["unit"], backup, module.check_mode),
        "summary": summary(decided, params["unit"], backup, module.check_mode),
        "backup_dir": backup,
        "left_alone": list(decided.left_alone),
        "dropins": [a.target for a in decided.moves() if a.kind == "dropin"],
        "memberships_removed": [a.target for a in decided.actions if a.op == "leave"],
    }
    if module._diff and decided.actions:
        who = {"memberships": memberships, "agent_user": params["agent_user"]}
        result["diff"] = {
            "before_header": "upstream agent pieces",
            "after_header": "upstream agent pieces",
            "before": diff_text(pieces, group, decided, after=False, **who),
            "after": diff_text(pieces, group, decided, after=True, **who),
        }
    return result


if __name__ == "__main__":
    main()
