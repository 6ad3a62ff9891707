#!/usr/bin/python
"""Ansible module: activate the copied zipapp version.

Points `current` at opt_dir/<version> (a new link renamed over the old one: atomic) and
prunes old versions (the previous one kept first, for rollback). The zipapp's content is
already proven by then: the role checks the artifact against its .sha256 on the
controller, `copy` checks its transfer, and redflag_agent_host checks a zipapp the copy
skipped. With `rollback`, the version is one already installed and it is asked first
whether it can read the config and state the newer one left (`status --json`); when it
cannot, nothing is switched and the answer says why. `versions_to_prune()` and
`rollback_blocker()` are pure and tested in tests/role.
"""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: redflag_agent_version
short_description: Activate and prune RedFlag agent versions
description:
  - Points C(opt_dir/current) at I(version) (atomic rename) once
    C(opt_dir/version/redflag-agent.pyz) exists, and removes versions beyond I(keep_versions).
  - Supports check mode (reports what would change).
options:
  version:
    description: The version being installed (a directory under I(opt_dir)).
    type: str
    required: true
  keep_versions:
    description: Versions kept under I(opt_dir), the current one included.
    type: int
    default: 2
  version_re:
    description: Regular expression a version directory name matches (only those are pruned).
    type: str
    required: true
  opt_dir:
    description: Root of the installed versions.
    type: path
    default: /opt/redflag-agent
  rollback:
    description:
      - Switch back to I(version), an already installed one (the canary rollback). First its
        own C(status --json) must read the config and state as they are now; when it cannot
        (for example a config schema written by a newer version), nothing is switched and
        C(refused) says why.
    type: bool
    default: false
  python:
    description: Interpreter that runs the agent (needed with I(rollback)).
    type: path
author:
  - redflag-provision developers (!UNKNOWN)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Reports the link switch and the versions it would prune.
  diff_mode:
    support: none
  platform:
    platforms: posix
    details: Linux hosts with systemd (Debian, Ubuntu, RHEL and its rebuilds, Fedora).
"""

EXAMPLES = r"""
- name: Activate 0.2.0 and keep the previous version for a rollback
  redflag.agent.redflag_agent_version:
    version: 0.2.0
    keep_versions: 2
    version_re: '^[0-9]+(\.[0-9]+){1,3}([-+.~][0-9A-Za-z.]+)?$'
  register: versions

- name: Roll back to 0.1.9 when it can still read the config the newer version left
  redflag.agent.redflag_agent_version:
    version: 0.1.9
    version_re: '^[0-9]+(\.[0-9]+){1,3}([-+.~][0-9A-Za-z.]+)?$'
    rollback: true
    python: /usr/bin/python3
  register: rollback

- name: Report a refused rollback
  ansible.builtin.debug:
    msg: "{{ rollback.refused }}"
  when: rollback.refused | length > 0
"""

RETURN = r"""
changes:
  description: What was (or in check mode would be) changed, one line each.
  type: list
  elements: str
  returned: always
switched:
  description: current now points at I(version) and did not before (the service must restart).
  type: bool
  returned: always
previous_version:
  description: Where current pointed before, or null.
  type: str
  returned: always
pruned:
  description: Version directories removed.
  type: list
  elements: str
  returned: always
version:
  description: The version current points at now (I(version), unless refused).
  type: str
  returned: always
refused:
  description: With I(rollback), why the switch back was not made; empty when it was.
  type: str
  returned: always
"""

import os
import re
import shutil
from typing import Optional

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.redflag.agent.plugins.module_utils.redflag_agent_cli import (
    run_agent,
    status_answer,
)

PYZ = "redflag-agent.pyz"


def versions_to_prune(
    installed: list[tuple[str, float]], this: str, previous: Optional[str], keep: int
) -> list[str]:
    """Version names to remove: keep `this`, then the previous one, then the newest (pure).

    `installed` is (name, mtime) for every version directory, `this` included or not.
    """
    others = sorted(
        (item for item in installed if item[0] != this), key=lambda item: item[1], reverse=True
    )
    names = [name for name, _mtime in others]
    if previous in names:
        names.remove(previous)
        names.insert(0, previous)
    return names[max(0, keep - 1) :]


def rollback_blocker(
    version: str, rc: int, out: str, err: str
) -> Optional[str]:
    """Why `version` must not be switched back to, from its own `status --json` (pure).

    The old version has to read the config and state the newer one left: a config it
    cannot read (a newer schema: the agent would stop with exit 78) would lose the host,
    so the rollback is refused and says why instead. None: safe to switch back.
    """
    status = status_answer(rc, out)
    if status is None:
        detail = (err or out or "").strip().splitlines()
        return (
            f"version {version} cannot report its status here (status --json exited {rc}"
            + (f": {detail[-1][:300]}" if detail else "")
            + "); it was left alone"
        )
    if status.get("config_present") and status.get("config_valid") is not True:
        return (
            f"version {version} cannot read {status.get('config_path') or 'config.json'}: "
            f"{status.get('config_error') or 'config_valid is not true in its status'}; "
            "switching back would stop the agent (exit 78), so the host stays on the newer "
            "version: fix the newer version, or restore a config the older one reads"
        )
    return None


class Versions:
    """The I/O side: each step records what it changed; check mode only records."""

    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
        self.p = module.params
        self.check = module.check_mode
        self.changes: list[str] = []

    def require_pyz(self, version_dir: str) -> None:
        pyz = os.path.join(version_dir, PYZ)
        if not os.path.isfile(pyz) and not self.check:
            self.module.fail_json(
                msg=f"{pyz} is missing after the copy step; current still points at the "
                "previous version: re-run the role without tags"
            )

    def link_current(self, version: str) -> Optional[str]:
        current = os.path.join(self.p["opt_dir"], "current")
        previous = os.readlink(current) if os.path.islink(current) else None
        if previous == version:
            return previous
        if os.path.exists(current) and not os.path.islink(current):
            self.module.fail_json(
                msg=f"{current} exists and is not a symlink; move it away and re-run"
            )
        self.changes.append(f"current -> {version} (was {previous or 'unset'})")
        if not self.check:
            tmp = f"{current}.tmp-{os.getpid()}"
            if os.path.lexists(tmp):
                os.unlink(tmp)
            os.symlink(version, tmp)
            os.rename(tmp, current)
        return previous

    def prune(self, version: str, previous: Optional[str]) -> list[str]:
        opt_dir, pattern = self.p["opt_dir"], re.compile(self.p["version_re"])
        installed = []
        for name in os.listdir(opt_dir) if os.path.isdir(opt_dir) else []:
            path = os.path.join(opt_dir, name)
            if pattern.search(name) and os.path.isdir(path) and not os.path.islink(path):
                installed.append((name, os.stat(path).st_mtime))
        doomed = versions_to_prune(installed, version, previous, self.p["keep_versions"])
        for name in doomed:
            self.changes.append(f"removed version {name}")
            if not self.check:
                shutil.rmtree(os.path.join(opt_dir, name))
        return doomed


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "version": {"type": "str", "required": True},
            "keep_versions": {"type": "int", "default": 2},
            "version_re": {"type": "str", "required": True},
            "opt_dir": {"type": "path", "default": "/opt/redflag-agent"},
            "rollback": {"type": "bool", "default": False},
            "python": {"type": "path"},
        },
        required_if=[("rollback", True, ("python",))],
        supports_check_mode=True,
    )
    p = module.params
    if p["keep_versions"] < 1:
        module.fail_json(msg="keep_versions must be 1 or more")
    versions = Versions(module)
    version_dir = os.path.join(p["opt_dir"], p["version"])
    if p["rollback"] and not os.path.isfile(os.path.join(version_dir, PYZ)):
        module.fail_json(
            msg=f"cannot roll back to {p['version']}: {version_dir}/{PYZ} is no longer "
            "installed (pruned: keep redflag_agent_keep_versions at 2 or more)"
        )
    versions.require_pyz(version_dir)
    if p["rollback"]:
        rc, out, err = run_agent(
            module, p["python"], os.path.join(version_dir, PYZ), "status", "--json"
        )
        refused = rollback_blocker(p["version"], rc, out, err)
        if refused:
            current = os.path.join(p["opt_dir"], "current")
            now = os.readlink(current) if os.path.islink(current) else None
            module.exit_json(
                changed=False, changes=[], switched=False, previous_version=now,
                pruned=[], version=now, refused=refused,
            )  # fmt: skip
    previous = versions.link_current(p["version"])
    pruned = versions.prune(p["version"], previous)
    module.exit_json(
        changed=bool(versions.changes),
        changes=versions.changes,
        switched=previous != p["version"],
        previous_version=previous,
        pruned=pruned,
        version=p["version"],
        refused="",
    )


if __name__ == "__main__":
    main()
