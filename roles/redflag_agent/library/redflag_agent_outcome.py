#!/usr/bin/python
"""Ansible module: wait for and classify the agent's outcome after the service step.

Reads `redflag-agent status --json` and `systemctl show` (read-only), polls until the
outcome is final or the retries run out, and classifies it with `decide()`, a pure
function. It never fails by itself: the role decides what a failed outcome means.
"""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: redflag_agent_outcome
short_description: Wait for and classify the RedFlag agent's outcome
description:
  - Polls C(python3 -I PYZ status --json) and C(systemctl show UNIT) until the agent is
    registered and active, or has stopped for good (exit 77 or 78), or the retries run out.
  - Returns C(outcome.status) one of registered, waiting-for-token, rejected, failed.
options:
  python:
    description: Interpreter that runs the agent.
    type: path
    required: true
  pyz:
    description: The agent zipapp.
    type: path
    required: true
  unit:
    description: The systemd unit.
    type: str
    default: redflag-agent.service
  token_embedded:
    description: A registration token was written to config.json by this run.
    type: bool
    default: false
  retries:
    description: Polls before giving up.
    type: int
    default: 20
  delay:
    description: Seconds between polls.
    type: int
    default: 3
  host:
    description: Host name used in the waiting-for-token warning.
    type: str
    default: this host
"""

RETURN = r"""
outcome:
  description: status (registered, waiting-for-token, rejected, failed), reason, and the facts read.
  type: dict
  returned: always
"""

import json
import time
from typing import Any, Optional

from ansible.module_utils.basic import AnsibleModule

UNIT_PROPS = ("ActiveState", "SubState", "Result", "ExecMainStatus", "NRestarts")
RUNNING = ("active", "activating", "reloading")
EX_REJECTED = 77
EX_CONFIG = 78

WAITING_REASON = (
    "installed, NOT registered: no registration token; "
    "set redflag_agent_registration_token (vault) and re-run"
)


def parse_show(text: str) -> dict[str, str]:
    """`systemctl show -p A -p B` output (Key=Value lines) as a dict."""
    props: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            props[key.strip()] = value.strip()
    return props


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def decide(
    status: Optional[dict[str, Any]], unit: dict[str, str], token_embedded: bool
) -> tuple[str, str]:
    """Classify one observation: (state, reason). state 'pending' means poll again."""
    if status is None:
        return "pending", "redflag-agent status --json gave no answer"
    active = unit.get("ActiveState", "unknown")
    sub = unit.get("SubState", "")
    code = _int(unit.get("ExecMainStatus"))
    restarts = _int(unit.get("NRestarts"))
    registered = bool(status.get("registered"))
    last_error = status.get("last_error") or status.get("config_error")

    if active == "active" and registered:
        return "registered", f"registered as {status.get('agent_id')}, service active"
    if active in RUNNING or sub == "auto-restart":
        why = f"service {active}/{sub}"
        if sub == "auto-restart":
            why += f" after exit {code} (restarts so far: {restarts})"
        if last_error:
            why += f"; last error: {last_error}"
        return "pending", why
    # The service is stopped (failed or inactive) and systemd will not restart it.
    if code == EX_REJECTED:
        return "rejected", "the server rejected the token (exit 77): " + (
            last_error
            or "mint a new registration token, set redflag_agent_registration_token and "
            "re-run (add redflag_agent_force_reregister=true if the host was registered)"
        )
    if not registered and not token_embedded and code in (EX_CONFIG, 0):
        if restarts > 0:
            return "failed", (
                f"not registered and no token, but systemd restarted the agent {restarts} "
                "times; the unit must not restart exit 78 (RestartPreventExitStatus)"
            )
        return "waiting-for-token", WAITING_REASON
    if code == EX_CONFIG:
        return "failed", (
            f"the agent stopped with exit 78 (config invalid or not registered): "
            f"{last_error or 'see journalctl -u redflag-agent'}"
        )
    return "failed", (
        f"service {active}/{sub}, exit {code}, result {unit.get('Result', '?')}: "
        f"{last_error or 'see journalctl -u redflag-agent'}"
    )


def observe(module: AnsibleModule) -> tuple[Optional[dict[str, Any]], dict[str, str]]:
    p = module.params
    rc, out, _err = module.run_command([p["python"], "-I", p["pyz"], "status", "--json"])
    status: Optional[dict[str, Any]] = None
    if rc == 0:
        try:
            loaded = json.loads(out)
        except ValueError:
            loaded = None
        if isinstance(loaded, dict):
            status = loaded
    argv = ["systemctl", "show", p["unit"]]
    for prop in UNIT_PROPS:
        argv += ["-p", prop]
    _rc, show, _err = module.run_command(argv)
    return status, parse_show(show)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "python": {"type": "path", "required": True},
            "pyz": {"type": "path", "required": True},
            "unit": {"type": "str", "default": "redflag-agent.service"},
            "token_embedded": {"type": "bool", "default": False},
            "retries": {"type": "int", "default": 20},
            "delay": {"type": "int", "default": 3},
            "host": {"type": "str", "default": "this host"},
        },
        supports_check_mode=True,
    )
    p = module.params
    attempts = max(1, p["retries"])
    state, reason, status, unit = "pending", "", None, {}
    for attempt in range(attempts):
        status, unit = observe(module)
        state, reason = decide(status, unit, p["token_embedded"])
        if state != "pending":
            break
        if attempt + 1 < attempts:
            time.sleep(max(0, p["delay"]))
    if state == "pending":
        state = "failed"
        reason = f"no final outcome after {attempts} polls: {reason}"
    status = status or {}
    outcome = {
        "status": state,
        "reason": reason,
        "registered": bool(status.get("registered")),
        "agent_id": status.get("agent_id"),
        "agent_version": status.get("agent_version"),
        "last_error": status.get("last_error"),
        "migrations_completed": status.get("migrations_completed") or [],
        "active_state": unit.get("ActiveState"),
        "exec_main_status": _int(unit.get("ExecMainStatus")),
        "n_restarts": _int(unit.get("NRestarts")),
    }
    if state == "waiting-for-token":
        module.warn(f"{p['host']}: {WAITING_REASON}")
    module.exit_json(changed=False, outcome=outcome)


if __name__ == "__main__":
    main()
