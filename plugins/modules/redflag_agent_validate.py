#!/usr/bin/python
"""Documentation only: redflag_agent_validate is an action plugin
(plugins/action/redflag_agent_validate.py) that runs on the controller; its rules are in
plugins/plugin_utils/redflag_agent_inputs.py."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: redflag_agent_validate
short_description: Check the redflag_agent role's inputs, then probe the host read-only
description:
  - The redflag.agent.redflag_agent role's preflight in one task. The input checks run on the
    controller, one rule each, for what C(meta/argument_specs.yml) cannot say (URL shape and
    port, version format, an artifact needs a version, I(force_reregister) and
    I(require_token) need a token, a canary rollback needs I(keep_versions) 2 or more).
  - Then the role's read-only shell probe (I(probe)) runs on the host as
    M(ansible.builtin.raw) would run it, with no Python needed there. It installs python3
    with dnf or apt only when I(install_python) allows it, every input check passed and not
    in check mode.
  - Then the host checks (python3 3.9+, systemd as PID 1) judge what it found. The task
    fails with every message at once, each naming the variable, the bad value and the fix;
    a probe that fails is reported with the host's stderr and the next step.
  - Meant for the role; the messages name the role's variables (C(redflag_agent_*)).
options:
  probe:
    description: The shell probe to run (the role's C(templates/probe.sh.j2), rendered).
    type: str
    required: true
  state:
    description: C(redflag_agent_state).
    type: raw
    default: present
  server_url:
    description: C(redflag_agent_server_url); http(s)://host[:port] with no path.
    type: raw
    default: ""
  check_in_interval:
    description: C(redflag_agent_check_in_interval); a positive number of seconds.
    type: raw
    default: 300
  version:
    description: C(redflag_agent_version); empty or a version such as 0.2.0.
    type: raw
    default: ""
  artifact:
    description: C(redflag_agent_artifact); needs I(version).
    type: raw
    default: ""
  resolved_version:
    description: The version that will be installed (I(version), else the source tree's).
    type: raw
    default: ""
  source_dir:
    description: C(redflag_agent_source_dir), named in the message about its version.
    type: raw
    default: ""
  keep_versions:
    description: C(redflag_agent_keep_versions); 1 or more, 2 or more with I(rollback).
    type: raw
    default: 2
  require_token:
    description: C(redflag_agent_require_token).
    type: bool
    default: false
  force_reregister:
    description: C(redflag_agent_force_reregister).
    type: bool
    default: false
  token_given:
    description: Whether C(redflag_agent_registration_token) is set (never the token).
    type: bool
    default: false
  rollback:
    description: C(redflag_agent_rollback).
    type: bool
    default: false
  python:
    description: C(redflag_agent_python); empty means the host's python3.
    type: raw
    default: ""
  install_python:
    description: C(redflag_agent_install_python).
    type: bool
    default: true
author:
  - redflag-provision developers (!UNKNOWN)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: The probe runs in check mode too (it only reads); it never installs python3 then.
  diff_mode:
    support: none
  platform:
    platforms: posix
    details: The probe needs /bin/sh on the host; Linux hosts with systemd are supported.
"""

EXAMPLES = r"""
- name: Check the inputs, probe the host read-only
  redflag.agent.redflag_agent_validate:
    probe: "{{ lookup('ansible.builtin.template', 'probe.sh.j2') }}"
    state: present
    server_url: https://redflag.example.org:8443
    token_given: "{{ redflag_agent__token_given }}"
  register: redflag_agent__probe
"""

RETURN = r"""
rc:
  description: The probe's exit code (-1 when the connection could not run it).
  returned: always
  type: int
  sample: 0
stdout:
  description: The probe's key=value lines.
  returned: always
  type: str
  sample: "python=/usr/bin/python3\npython_version=3.11\nsystemd=1\nselinux=0\n"
stdout_lines:
  description: I(stdout) split into lines.
  returned: always
  type: list
  elements: str
stderr:
  description: The probe's stderr.
  returned: always
  type: str
stderr_lines:
  description: I(stderr) split into lines.
  returned: always
  type: list
  elements: str
probed:
  description: The probe's key=value lines as a dict (python, python_version, systemd, selinux,
    machine_id, machine_id_source, python_installed, install_error).
  returned: always
  type: dict
  sample: {"python": "/usr/bin/python3", "python_version": "3.11", "systemd": "1", "selinux": "0"}
python_ok:
  description: Whether the probe found a python3 3.9+ for the agent.
  returned: always
  type: bool
input_errors:
  description: The input checks' messages (the task fails when there are any).
  returned: always
  type: list
  elements: str
msg:
  description: Every failed check's message, joined with " | ".
  returned: failure
  type: str
"""
