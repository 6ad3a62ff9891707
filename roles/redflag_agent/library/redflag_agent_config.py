#!/usr/bin/python
"""Ansible module: merge role settings into the agent's config.json via the agent itself.

The agent owns the schema and the merge (`redflag-agent config apply`); this module only
hands it the desired settings on stdin (the token never goes on argv) and reports its
answer: changed, created, changed_keys and a diff in which the agent has redacted secrets.
"""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: redflag_agent_config
short_description: Apply desired settings to the RedFlag agent's config.json
description:
  - Runs C(python3 -I PYZ config apply --json) (with C(--check) in check mode) with the
    desired settings as JSON on stdin and returns the agent's answer.
  - When the agent is not installed yet in check mode, reports that config.json would be created.
options:
  python:
    description: Interpreter that runs the agent.
    type: path
    required: true
  pyz:
    description: The agent zipapp.
    type: path
    required: true
  settings:
    description: Role-managed settings (server_url, check_in_interval, proxy, tls, tags, ...).
    type: dict
    required: true
  registration_token:
    description: Registration token to embed; empty or omitted embeds none.
    type: str
    default: ""
  reregister:
    description: Drop the agent identity so it enrolls again with the token.
    type: bool
    default: false
"""

RETURN = r"""
created:
  description: config.json did not exist before.
  type: bool
  returned: always
changed_keys:
  description: Top-level keys that changed (names only).
  type: list
  elements: str
  returned: always
path:
  description: The config file.
  type: str
  returned: when the agent answered
"""

import json
import os
from typing import Any

from ansible.module_utils.basic import AnsibleModule


class ApplyError(Exception):
    """The agent refused or failed; the message says why and what to do."""


def build_payload(settings: dict[str, Any], registration_token: str, reregister: bool) -> str:
    """The JSON document `config apply` reads on stdin; the token only when given."""
    doc: dict[str, Any] = {"settings": settings, "reregister": bool(reregister)}
    if registration_token:
        doc["registration_token"] = registration_token
    return json.dumps(doc, sort_keys=True)


def build_argv(python: str, pyz: str, check: bool) -> list[str]:
    argv = [python, "-I", pyz, "config", "apply", "--json"]
    if check:
        argv.append("--check")
    return argv


def interpret(rc: int, stdout: str, stderr: str) -> dict[str, Any]:
    """Turn the agent's answer into the module result, or raise ApplyError."""
    detail = (stderr or stdout or "").strip()
    if rc != 0:
        hint = (
            "fix the role variables it names (or the config file it names) and re-run"
            if rc == 78
            else "check that the agent zipapp runs on this host"
        )
        raise ApplyError(f"redflag-agent config apply exited {rc}: {detail or 'no output'}; {hint}")
    try:
        answer = json.loads(stdout)
    except ValueError as exc:
        raise ApplyError(
            f"redflag-agent config apply printed no JSON ({exc}): {detail[:500] or 'no output'}"
        ) from exc
    if not isinstance(answer, dict) or not isinstance(answer.get("changed"), bool):
        raise ApplyError(
            "redflag-agent config apply answered without a boolean 'changed'; "
            "the installed agent does not match this role's version"
        )
    return {
        "changed": answer["changed"],
        "created": bool(answer.get("created", False)),
        "path": answer.get("path"),
        "changed_keys": list(answer.get("changed_keys") or []),
        "agent_diff": answer.get("diff") or "",
    }


def not_installed_result(pyz: str) -> dict[str, Any]:
    """Check mode before the first install: the honest answer is 'would create'."""
    return {
        "changed": True,
        "created": True,
        "path": None,
        "changed_keys": [],
        "agent_diff": "",
        "msg": f"{pyz} is not installed yet; config.json would be created",
    }


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "python": {"type": "path", "required": True},
            "pyz": {"type": "path", "required": True},
            "settings": {"type": "dict", "required": True},
            "registration_token": {"type": "str", "default": "", "no_log": True},
            "reregister": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    params = module.params
    if not os.path.exists(params["pyz"]):
        if module.check_mode:
            module.exit_json(**not_installed_result(params["pyz"]))
        module.fail_json(
            msg=f"{params['pyz']} does not exist; the install step should have put it there: "
            "re-run the role without tags, or check /opt/redflag-agent/current"
        )
    if params["reregister"] and not params["registration_token"]:
        module.fail_json(
            msg="reregister needs a registration token (it drops the agent's identity); "
            "set redflag_agent_registration_token"
        )
    payload = build_payload(params["settings"], params["registration_token"], params["reregister"])
    rc, out, err = module.run_command(
        build_argv(params["python"], params["pyz"], module.check_mode),
        data=payload,
        binary_data=True,
        environ_update={"LC_ALL": "C.UTF-8"},
    )
    try:
        result = interpret(rc, out, err)
    except ApplyError as exc:
        module.fail_json(msg=str(exc), rc=rc)
    agent_diff = result.pop("agent_diff")
    if module._diff and agent_diff:
        result["diff"] = {"prepared": agent_diff}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
