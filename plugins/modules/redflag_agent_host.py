#!/usr/bin/python
"""Ansible module: the agent's place on the host, in one call.

Service user and group, the directories (the new version's included, for the copy that
follows) and the systemd unit file; and, read-only, whether that version is already
installed intact and current, so the role skips the copy and the switch when it is. One
module run instead of six tasks, because on a fleet every task costs a round trip per host
(bench/results/RESULTS.md). The decisions (which directory needs fixing, which user
attributes, whether the zipapp is intact) are pure functions, tested in tests/role.
"""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: redflag_agent_host
short_description: Install the RedFlag agent's user, directories and unit file
description:
  - Creates the system group and user, the directories with their owners and modes
    (C(opt_dir/version) included) and writes the systemd unit file when its content or
    attributes differ (atomic rename).
  - Reports, without changing them, whether C(opt_dir/version/redflag-agent.pyz) matches
    I(sha256) (root:root 0644), where C(opt_dir/current) points and which versions are installed.
  - Writes the root migration's sandboxed unit (I(migrate_unit_path)) the same way.
  - Removes legacy directories (I(legacy_dirs)) that are empty; the migration unit's
    sandbox cannot remove them itself, so it leaves them empty (never follows a symlink).
  - Supports check mode (reports what would change) and diff mode (the unit files).
options:
  version:
    description: The version being installed (a directory under I(opt_dir)).
    type: str
    required: true
  user:
    description: Service user.
    type: str
    default: redflag-agent
  group:
    description: Service group.
    type: str
    default: redflag-agent
  opt_dir:
    description: Root of the installed versions.
    type: path
    default: /opt/redflag-agent
  etc_dir:
    description: Config directory.
    type: path
    default: /etc/redflag-agent
  state_dir:
    description: State directory (the user's home).
    type: path
    default: /var/lib/redflag-agent
  unit_path:
    description: Where the unit file goes.
    type: path
    default: /etc/systemd/system/redflag-agent.service
  unit_content:
    description: The unit file's content (rendered on the controller).
    type: str
    required: true
  migrate_unit_path:
    description: Where the migration unit file goes (written with I(migrate_unit_content)).
    type: path
    default: /etc/systemd/system/redflag-agent-migrate.service
  migrate_unit_content:
    description: The migration unit's content; omitted, that unit is left alone.
    type: str
  command_path:
    description: Where the host's C(redflag-agent) command goes (root:root 0755).
    type: path
    default: /usr/local/sbin/redflag-agent
  command_content:
    description: The command's content (runs the current zipapp); omitted, it is left alone.
    type: str
  legacy_dirs:
    description: Legacy directories to remove when they exist and are empty.
    type: list
    elements: path
    default: []
  sha256:
    description: Expected sha256 of the version's zipapp; empty counts as not intact.
    type: str
    default: ""
  version_re:
    description: Regular expression a version directory name matches.
    type: str
    default: '^[0-9]+(\.[0-9]+){1,3}([-+.~][0-9A-Za-z.]+)?$'
author:
  - redflag-provision developers (!UNKNOWN)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details: The unit files, before and after.
  platform:
    platforms: posix
    details: Linux hosts with systemd (Debian, Ubuntu, RHEL and its rebuilds, Fedora).
"""

EXAMPLES = r"""
- name: User, directories and unit files for version 0.2.0
  redflag.agent.redflag_agent_host:
    version: 0.2.0
    unit_content: "{{ lookup('ansible.builtin.template', 'redflag-agent.service.j2') }}"
    migrate_unit_content: "{{ lookup('ansible.builtin.template', 'migrate.service.j2') }}"
    legacy_dirs: [/etc/aggregator, /var/lib/aggregator]
    sha256: "{{ lookup('ansible.builtin.file', 'dist/redflag-agent-0.2.0.pyz.sha256').split()[0] }}"
  register: host

- name: Copy the zipapp only when the installed one is not intact
  ansible.builtin.copy:
    src: dist/redflag-agent-0.2.0.pyz
    dest: /opt/redflag-agent/0.2.0/redflag-agent.pyz
    owner: root
    group: root
    mode: "0644"
  when: not host.pyz_intact
"""

RETURN = r"""
changes:
  description: What was (or in check mode would be) changed, one line each.
  type: list
  elements: str
  returned: always
unit_changed:
  description: A unit file (the agent's or the migration's) was written (systemd must reload).
  type: bool
  returned: always
pyz_intact:
  description: The version's zipapp exists, matches I(sha256) and is root:root 0644.
  type: bool
  returned: always
current_version:
  description: Where C(opt_dir/current) points, or null.
  type: str
  returned: always
installed_versions:
  description: Version directories under I(opt_dir).
  type: list
  elements: str
  returned: always
"""

import grp
import hashlib
import os
import pwd
import re
import shutil
import stat
from typing import Any, NamedTuple, Optional

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.redflag.agent.plugins.module_utils.redflag_agent_commands import (
    run_checked,
)
from ansible_collections.redflag.agent.plugins.module_utils.redflag_agent_files import (
    write_atomically,
)

NOLOGIN = "/usr/sbin/nologin"
COMMENT = "RedFlag update agent"


class Want(NamedTuple):
    path: str
    owner: str
    group: str
    mode: int


class Have(NamedTuple):
    exists: bool
    is_dir: bool
    owner: Optional[str]
    group: Optional[str]
    mode: Optional[int]


def dir_fixes(want: Want, have: Have) -> list[str]:
    """What must change for one directory: 'create', 'owner', 'mode' (pure)."""
    if not have.exists:
        return ["create", "owner", "mode"]
    if not have.is_dir:
        return ["not-a-directory"]
    fixes = []
    if (have.owner, have.group) != (want.owner, want.group):
        fixes.append("owner")
    if have.mode != want.mode:
        fixes.append("mode")
    return fixes


def user_fixes(entry: Optional[Any], gid: Optional[int], home: str) -> list[str]:
    """usermod options needed for an existing user (pure); [] when it is as wanted."""
    if entry is None:
        return []
    opts = []
    if gid is not None and entry.pw_gid != gid:
        opts += ["-g", str(gid)]
    if entry.pw_shell != NOLOGIN:
        opts += ["-s", NOLOGIN]
    if entry.pw_dir != home:
        opts += ["-d", home]
    return opts


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def pyz_intact(have: Have, actual_sha256: Optional[str], expected_sha256: str) -> bool:
    """The installed zipapp needs no copy (pure): right content, root:root 0644."""
    return (
        have.exists
        and not have.is_dir
        and (have.owner, have.group, have.mode) == ("root", "root", 0o644)
        and bool(expected_sha256)
        and actual_sha256 == expected_sha256.strip().lower()
    )


def installed(opt_dir: str, version_re: str) -> tuple[Optional[str], list[str]]:
    """Where current points and the version directories (read-only)."""
    current = os.path.join(opt_dir, "current")
    target = os.readlink(current) if os.path.islink(current) else None
    pattern = re.compile(version_re)
    names = []
    if os.path.isdir(opt_dir):
        for name in sorted(os.listdir(opt_dir)):
            path = os.path.join(opt_dir, name)
            if pattern.search(name) and os.path.isdir(path) and not os.path.islink(path):
                names.append(name)
    return target, names


def _have(path: str, follow: bool = False) -> Have:
    try:
        st = os.stat(path) if follow else os.lstat(path)
    except FileNotFoundError:
        return Have(False, False, None, None, None)
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return Have(True, stat.S_ISDIR(st.st_mode), owner, group, stat.S_IMODE(st.st_mode))


def empty_legacy_dir(have: Have, names: Optional[list[str]]) -> bool:
    """A legacy directory to remove (pure): a real directory (lstat), with nothing in it."""
    return have.exists and have.is_dir and names == []


class Host:
    """The I/O side: each step records what it changed; check mode only records."""

    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
        self.p = module.params
        self.check = module.check_mode
        self.changes: list[str] = []

    def run(self, argv: list[str]) -> None:
        run_checked(self.module, argv, changes=self.changes)

    def group(self) -> Optional[int]:
        name = self.p["group"]
        try:
            return grp.getgrnam(name).gr_gid
        except KeyError:
            pass
        self.changes.append(f"group {name} created")
        if self.check:
            return None
        self.run(["groupadd", "--system", name])
        return grp.getgrnam(name).gr_gid

    def user(self, gid: Optional[int]) -> None:
        name, home = self.p["user"], self.p["state_dir"]
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            entry = None
        if entry is None:
            self.changes.append(f"user {name} created")
            if not self.check:
                self.run(
                    ["useradd", "--system", "--gid", self.p["group"], "--shell", NOLOGIN,
                     "--home-dir", home, "--no-create-home", "--comment", COMMENT, name]
                )  # fmt: skip
            return
        opts = user_fixes(entry, gid, home)
        if opts:
            self.changes.append(f"user {name} updated ({' '.join(opts[::2])})")
            if not self.check:
                self.run(["usermod", *opts, name])

    def directory(self, want: Want) -> None:
        # Followed: a directory may be a symlink to another disk (as the file module allows).
        fixes = dir_fixes(want, _have(want.path, follow=True))
        if not fixes:
            return
        if fixes == ["not-a-directory"]:
            self.module.fail_json(
                msg=f"{want.path} exists and is not a directory; move it away and re-run",
                changes=self.changes,
            )
        self.changes.append(f"{want.path}: {', '.join(fixes)}")
        if self.check:
            return
        if "create" in fixes:
            os.makedirs(want.path, exist_ok=True)
        shutil.chown(want.path, want.owner, want.group)
        os.chmod(want.path, want.mode)

    def legacy_dir(self, path: str) -> None:
        # lstat: a symlink is not a directory here, and rmdir never follows one.
        have = _have(path)
        try:
            names = os.listdir(path) if have.is_dir else None
        except OSError:
            names = None
        if not empty_legacy_dir(have, names):
            return
        if self.check:
            self.changes.append(f"{path}: empty legacy directory removed")
            return
        try:
            os.rmdir(path)
        except OSError as exc:  # leftover housekeeping: never fails the run
            self.module.warn(f"could not remove the empty legacy directory {path}: {exc}")
            return
        self.changes.append(f"{path}: empty legacy directory removed")

    def units(self) -> list[dict[str, str]]:
        """Both unit files (the migration's only when given); the diffs of those written."""
        wanted = [(self.p["unit_path"], self.p["unit_content"])]
        if self.p["migrate_unit_content"] is not None:
            wanted.append((self.p["migrate_unit_path"], self.p["migrate_unit_content"]))
        diffs = []
        for path, content in wanted:
            changed, diff = self.unit(path, content)
            if changed:
                diffs.append(diff)
        return diffs

    def command(self) -> list[dict[str, str]]:
        """The host's `redflag-agent` command (when given): root:root 0755; its diff when written.

        Not in units(): a changed wrapper needs no daemon-reload and no restart."""
        content = self.p["command_content"]
        if content is None:
            return []
        path = self.p["command_path"]
        parent = os.path.dirname(path)
        if not os.path.isdir(parent):  # /usr/local/sbin on a minimal image
            self.directory(Want(parent, "root", "root", 0o755))
        changed, diff = self.unit(path, content, 0o755)
        return [diff] if changed else []

    def unit(self, path: str, content: str, mode: int = 0o644) -> tuple[bool, dict[str, str]]:
        try:
            with open(path, encoding="utf-8") as handle:
                before = handle.read()
        except FileNotFoundError:
            before = ""
        have = _have(path)
        same_attrs = have.exists and (have.owner, have.group, have.mode) == ("root", "root", mode)
        diff = {"before_header": path, "after_header": path, "before": before, "after": content}
        if before == content and same_attrs:
            return False, diff
        self.changes.append(f"{path} written")
        if not self.check:
            write_atomically(self.module, path, content.encode("utf-8"), mode)
        return True, diff


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "version": {"type": "str", "required": True},
            "user": {"type": "str", "default": "redflag-agent"},
            "group": {"type": "str", "default": "redflag-agent"},
            "opt_dir": {"type": "path", "default": "/opt/redflag-agent"},
            "etc_dir": {"type": "path", "default": "/etc/redflag-agent"},
            "state_dir": {"type": "path", "default": "/var/lib/redflag-agent"},
            "unit_path": {"type": "path", "default": "/etc/systemd/system/redflag-agent.service"},
            "unit_content": {"type": "str", "required": True},
            "migrate_unit_path": {
                "type": "path",
                "default": "/etc/systemd/system/redflag-agent-migrate.service",
            },
            "migrate_unit_content": {"type": "str"},
            "command_path": {"type": "path", "default": "/usr/local/sbin/redflag-agent"},
            "command_content": {"type": "str"},
            "legacy_dirs": {"type": "list", "elements": "path", "default": []},
            "sha256": {"type": "str", "default": ""},
            "version_re": {
                "type": "str",
                "default": r"^[0-9]+(\.[0-9]+){1,3}([-+.~][0-9A-Za-z.]+)?$",
            },
        },
        supports_check_mode=True,
    )
    p = module.params
    host = Host(module)
    gid = host.group()
    host.user(gid)
    user, group = p["user"], p["group"]
    version_dir = os.path.join(p["opt_dir"], p["version"])
    for want in (
        Want(p["opt_dir"], "root", "root", 0o755),
        Want(version_dir, "root", "root", 0o755),
        Want(p["etc_dir"], user, group, 0o750),
        Want(p["state_dir"], user, group, 0o750),
    ):
        host.directory(want)
    for path in p["legacy_dirs"]:
        host.legacy_dir(path)
    diffs = host.units()
    unit_changed = bool(diffs)
    diffs += host.command()
    pyz = os.path.join(version_dir, "redflag-agent.pyz")
    pyz_have = _have(pyz)
    actual = sha256_of(pyz) if pyz_have.exists and not pyz_have.is_dir else None
    current_version, versions = installed(p["opt_dir"], p["version_re"])
    result: dict[str, Any] = {
        "changed": bool(host.changes),
        "changes": host.changes,
        "unit_changed": unit_changed,
        "pyz_intact": pyz_intact(pyz_have, actual, p["sha256"]),
        "current_version": current_version,
        "installed_versions": versions,
    }
    if module._diff and diffs:
        result["diff"] = diffs
    module.exit_json(**result)


if __name__ == "__main__":
    main()
