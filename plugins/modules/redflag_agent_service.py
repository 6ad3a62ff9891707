#!/usr/bin/python
"""Ansible module: bring the service to its state, then wait for and classify the outcome.

First, before any systemctl action (and in check mode), the drop-ins on the unit are judged
(module_utils/redflag_agent_dropins.check): one that would undo the hardened unit fails the
call, harmless ones are warnings. Folded in here rather than a module task of its own: each
module task costs every host a round trip. Then `plan()` (pure) picks the systemctl
actions: daemon-reload when the unit changed, enable, restart when the artifact, config or
unit changed, start when the agent can do something (registered, or a token was just
embedded). Then it polls `status --json` and
`systemctl show` until the outcome is final and classifies it with `decide()` (pure). With
`require_checkin` (site.yml's health gate) a (re)started agent is healthy only once it has
checked in after that start (`gate_checkin()`, pure). A failed outcome is returned, not
raised: the role decides what it means.
"""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: redflag_agent_service
short_description: Apply the RedFlag agent's service state and classify the outcome
description:
  - First, with I(check_dropins), judges the systemd drop-ins of I(unit) (from
    C(systemctl show -p DropInPaths) and the drop-in directories on disk, those systemd has
    not loaded yet too), before any systemctl action and in check mode as well. One that sets
    anything but description, ordering, resource, timeout, logging or [Install] directives
    (C(ExecStart), C(User), C(NoNewPrivileges), C(Environment), C(ProtectSystem),
    C(Restart), an unknown directive), one a non-root user can write, or a symlink fails the
    task with C(outcome.status=failed), naming the file and the directives (never their
    values) and what to do next; nothing is run or changed. A harmless one is a warning.
  - Runs C(systemctl daemon-reload), C(enable), C(restart) or C(start) as needed (check mode
    only reports them).
  - Then, with I(verify), polls C(python3 -I PYZ status --json) and C(systemctl show UNIT) until
    the agent is registered and active, or has stopped for good (exit 77 or 78), or the wait
    (I(retries) x I(delay) seconds) runs out. Polls start 0.25 s apart and back off to I(delay).
  - Returns C(outcome.status) one of registered, waiting-for-token, rejected, failed
    (unverified in check mode or without I(verify)).
options:
  daemon_reload:
    description: The unit file changed; reload systemd first.
    type: bool
    default: false
  restart:
    description:
      - The artifact, the config or the unit changed; restart (or start) the service.
      - A running process that started before the last change of I(current) or I(unit_path)
        is restarted as well, so a restart lost to a failed run is made up.
    type: bool
    default: false
  should_run:
    description:
      - The agent can do something (registered, or a token was just embedded); start it.
      - Omitted (the configure step did not run), the agent's status decides.
    type: bool
  current:
    description: The C(current) version link; a running process older than it is restarted.
    type: path
    default: /opt/redflag-agent/current
  unit_path:
    description: The unit file; a running process older than it is restarted.
    type: path
    default: /etc/systemd/system/redflag-agent.service
  migrate_unit_path:
    description: The migration unit's file; a running process older than it is restarted too.
    type: path
  verify:
    description: Wait for and classify the outcome.
    type: bool
    default: true
  unit:
    description: The systemd unit.
    type: str
    default: redflag-agent.service
  token_embedded:
    description: A registration token was written to config.json by this run.
    type: bool
    default: false
  retries:
    description: With I(delay), the longest wait (retries x delay seconds).
    type: int
    default: 20
  delay:
    description: Longest pause between polls, in seconds.
    type: int
    default: 3
  host:
    description: Host name used in the waiting-for-token warning.
    type: str
    default: this host
  require_checkin:
    description:
      - When this run (re)starts the agent, it is healthy only after a successful check-in
        newer than that start (C(last_checkin) in C(status --json)), not merely registered
        and active; an agent that exits after the start fails at once (exit 75 excepted).
    type: bool
    default: false
  reset_failed:
    description: Clear the unit's failed state and start counter before restarting (a rollback).
    type: bool
    default: false
  check_dropins:
    description:
      - Judge the drop-ins on I(unit) first and fail, before any systemctl action, on one that
        would undo the hardened unit. Only reads; never follows a symlink.
    type: bool
    default: true
  dropins_ignore:
    description:
      - Drop-ins the takeover sets aside in this run (in check mode they are still there).
    type: list
    elements: path
    default: []
  dropin_dirs:
    description:
      - Drop-in directories to look in besides what systemd reports.
      - Default, the unit's own, dash-prefix and type-wide (C(service.d)) directories under
        /etc/systemd/system.control, /run/systemd/system.control, /etc/systemd/system,
        /run/systemd/system, /usr/local/lib/systemd/system, /usr/lib/systemd/system and
        /lib/systemd/system.
    type: list
    elements: path
author:
  - redflag-provision developers (!UNKNOWN)
extends_documentation_fragment:
  - redflag.agent.agent_cli
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details:
      - Reports the systemctl actions it would run; the outcome is C(unverified).
      - The drop-in check runs (it only reads) and fails the task as without check mode.
  diff_mode:
    support: none
  platform:
    platforms: posix
    details: Linux hosts with systemd (Debian, Ubuntu, RHEL and its rebuilds, Fedora).
"""

EXAMPLES = r"""
- name: Start the agent after a config change and wait for it to register
  redflag.agent.redflag_agent_service:
    python: /usr/bin/python3
    pyz: /opt/redflag-agent/current/redflag-agent.pyz
    restart: "{{ config is changed }}"
    should_run: "{{ config.status.registered or config.token_embedded }}"
    token_embedded: "{{ config.token_embedded }}"
    # The drop-ins the takeover set aside in this run are not judged again.
    dropins_ignore: "{{ takeover.dropins | default([]) }}"
  register: service

- name: Fail unless the agent registered (waiting for a token passes)
  ansible.builtin.assert:
    that: service.outcome.status in ['registered', 'waiting-for-token', 'unverified']
    fail_msg: "{{ inventory_hostname }}: {{ service.outcome.reason }}"

- name: Health gate after an upgrade - healthy only once it checked in after the restart
  redflag.agent.redflag_agent_service:
    python: /usr/bin/python3
    pyz: /opt/redflag-agent/current/redflag-agent.pyz
    restart: true
    should_run: true
    require_checkin: true
    retries: 40
    delay: 3
"""

RETURN = r"""
actions:
  description: systemctl actions done (or, in check mode, that would be done).
  type: list
  elements: str
  returned: always
outcome:
  description:
    - status (registered, waiting-for-token, rejected, failed), reason, and the facts read.
    - With I(require_checkin) also restarted_at (when this run started the agent) and
      last_checkin; seconds is the time from the systemctl actions to the outcome.
  type: dict
  returned: always
dropins:
  description:
    - Every drop-in found on the unit, with its verdict (fail, warn, ignore) and why; empty
      without I(check_dropins).
  type: list
  elements: dict
  returned: always
  sample:
    - path: /etc/systemd/system/redflag-agent.service.d/limits.conf
      verdict: warn
      why: sets only MemoryMax (ordering, resources, timeouts or logging)
"""

import calendar
import os
import time
from typing import Any, Optional

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.redflag.agent.plugins.module_utils.redflag_agent_cli import (
    AGENT_CLI_ARGS,
    run_agent,
    status_answer,
)
from ansible_collections.redflag.agent.plugins.module_utils.redflag_agent_dropins import (
    check as check_dropins,
)
from ansible_collections.redflag.agent.plugins.module_utils.redflag_agent_systemd import (
    dropin_paths,
    show,
)

UNIT_PROPS = ("ActiveState", "SubState", "Result", "ExecMainStatus", "NRestarts")
STATE_PROPS = (
    "ActiveState",
    "UnitFileState",
    "NeedDaemonReload",
    "ExecMainPID",
    "ExecMainStartTimestampMonotonic",
)
STALE_SLACK_S = 1.0
FIRST_POLL = 0.25
RUNNING = ("active", "activating", "reloading")
EX_REJECTED = 77
EX_CONFIG = 78
EX_TEMPFAIL = 75  # another instance holds the lock: systemd's restart may still succeed
CHECKIN_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # status.json's last_checkin (UTC, whole seconds)

WAITING_REASON = (
    "installed, NOT registered: no registration token; "
    "set redflag_agent_registration_token (vault) and re-run"
)
# Every final reason ends with what to do next (issue 16: "Unknown error." told nothing).
JOURNAL = "see `journalctl -u redflag-agent` and `redflag-agent status` on the host"
# The gate keeps this advice as it is (redflag_fleet.outcome_line), so it is complete here.
NEXT_REJECTED = (
    "next: mint a new registration token on the server, set redflag_agent_registration_token "
    "(vault) and re-run (add -e redflag_agent_force_reregister=true when the host was "
    "registered before, e.g. the server deleted its agent)"
)
STALE_NOTE = " (the agent's last run: this run did not start it)"


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
        return "rejected", (
            f"the server rejected the agent's token (exit 77): "
            f"{last_error or 'no error recorded'}; {NEXT_REJECTED}"
        )
    if not registered and not token_embedded and code in (EX_CONFIG, 0):
        if restarts > 0:
            return "failed", (
                f"not registered and no token, but systemd restarted the agent {restarts} "
                "times; the unit must not restart exit 78 (RestartPreventExitStatus); next: "
                "re-run the role without --tags so it rewrites redflag-agent.service"
            )
        return "waiting-for-token", WAITING_REASON
    if code == EX_CONFIG:
        return "failed", (
            f"the agent stopped with exit 78 (config invalid or not registered): "
            f"{last_error or 'no error recorded'}; next: fix what it names ({JOURNAL}) "
            "and re-run"
        )
    return "failed", (
        f"service {active}/{sub}, exit {code}, result {unit.get('Result', '?')}: "
        f"{last_error or 'no error recorded'}; next: {JOURNAL}, fix the cause and re-run"
    )


def pending_next_step(status: Optional[dict[str, Any]], unit: dict[str, str]) -> str:
    """What to do about an outcome that never became final (pure): the last observation
    says whether the agent could not be asked, keeps exiting, or waits for the server."""
    if status is None:
        return ("next: run `redflag-agent status --json` on the host and fix what keeps it "
                "from answering, then re-run")
    if unit.get("SubState") == "auto-restart":
        return f"next: the agent keeps exiting; {JOURNAL}, fix the cause and re-run"
    if unit.get("ActiveState") in RUNNING:
        server = status.get("server_url") or "the server (redflag_agent_server_url)"
        done = "checks in" if status.get("registered") else "registers"
        return (f"next: check that {server} is up and reachable from the host (the agent "
                f"keeps retrying and {done} once it answers), then re-run")
    return f"next: {JOURNAL}, then re-run"


def timed_out(reason: str, status: Optional[dict[str, Any]], unit: dict[str, str],
              polls: int, waited: float) -> tuple[str, str]:
    """The outcome when the wait ran out while still pending (pure): failed, with why and
    what to do."""
    return "failed", (f"no final outcome after {polls} polls in {waited:.0f} s: {reason}; "
                      f"{pending_next_step(status, unit)}")


def final_reason(state: str, reason: str, acted: bool) -> str:
    """A failure this run did not cause is the agent's last run's (pure): a unit left failed
    (exit 77 or 78) with its status.json from then, say a token removed since. Said so,
    so the operator does not look for a failure in this run."""
    if acted or state not in ("rejected", "failed"):
        return reason
    what, sep, step = reason.partition("; next:")
    return f"{what}{STALE_NOTE}{sep}{step}"


def outcome_message(host: str, state: str, reason: str) -> str:
    """The task's msg (pure): host, state, reason with its next step. A failed_when on a
    result without msg shows Ansible's 'Action failed: Unknown error.' instead."""
    step = "" if "next:" in reason or state == "waiting-for-token" else "; next: nothing to do"
    return f"{host}: {state}: {reason}{step}"


def _utc(when: float) -> str:
    return time.strftime(CHECKIN_FORMAT, time.gmtime(when))


def checked_in_since(last_checkin: Any, since: float, before: Any) -> bool:
    """A successful check-in happened after `since` (pure).

    last_checkin has whole seconds, so a stamp in the second of the restart counts only
    when it differs from the one read before the restart (the old process's)."""
    if not isinstance(last_checkin, str):
        return False
    try:
        at = calendar.timegm(time.strptime(last_checkin, CHECKIN_FORMAT))
    except ValueError:
        return False
    return at >= int(since) and last_checkin != before


def gate_checkin(  # noqa: PLR0913, PLR0917 - one observation has this many facts
    state: str,
    reason: str,
    status: Optional[dict[str, Any]],
    unit: dict[str, str],
    since: Optional[float],
    before: Any,
) -> tuple[str, str]:
    """decide()'s answer, held to the health gate after a (re)start at `since` (pure).

    Registered and active is not enough: the agent must have checked in since. A process
    that exited after the start fails now rather than when the wait runs out.
    """
    if since is None:
        return state, reason
    status = status or {}
    last_error = status.get("last_error") or status.get("config_error")
    if state == "registered":
        last = status.get("last_checkin")
        if checked_in_since(last, since, before):
            return state, f"{reason}, checked in at {last} (after the start at {_utc(since)})"
        return "pending", (
            f"registered and active, but no successful check-in since the start at "
            f"{_utc(since)} (last check-in {last or 'never'}; last error: {last_error or 'none'})"
        )
    code = _int(unit.get("ExecMainStatus"))
    if state == "pending" and unit.get("SubState") == "auto-restart" and code != EX_TEMPFAIL:
        return "failed", (
            f"the agent exited with status {code} after the start at {_utc(since)} "
            "(systemd restarts it after RestartSec): "
            f"{last_error or 'no error recorded'}; next: {JOURNAL}, fix the cause and re-run"
        )
    return state, reason


def plan(
    unit: dict[str, str],
    daemon_reload: bool,
    restart: bool,
    should_run: bool,
    reset_failed: bool = False,
) -> list[str]:
    """systemctl actions, in order, for the unit's current state (pure)."""
    actions = []
    if daemon_reload or unit.get("NeedDaemonReload") == "yes":
        actions.append("daemon-reload")
    if unit.get("UnitFileState") != "enabled":
        actions.append("enable")
    if reset_failed and restart:
        actions.append("reset-failed")
    if restart:
        actions.append("restart")
    elif should_run and unit.get("ActiveState") not in RUNNING:
        actions.append("start")
    return actions


def is_stale(started_at: Optional[float], newest_change: Optional[float]) -> bool:
    """The running process predates the current version or the unit file (pure).

    Evidence, not memory: a run that switched `current` and then failed before the
    restart leaves an old process behind; the next run sees it here and restarts it.
    """
    if started_at is None or newest_change is None:
        return False
    return newest_change > started_at + STALE_SLACK_S


def watched_paths(current: str, unit_path: str, migrate_unit_path: Optional[str]) -> list[str]:
    """What a running process must not be older than (pure): the version and both units."""
    return [current, unit_path] + ([migrate_unit_path] if migrate_unit_path else [])


def poll_delays(retries: int, delay: float) -> list[float]:
    """Pauses between polls: 0.25 s doubling up to `delay`, within retries x delay in all."""
    budget = max(1, retries) * max(0.0, delay)
    pauses, pause, total = [], min(FIRST_POLL, delay), 0.0
    while delay > 0 and total + pause <= budget + 1e-9:
        pauses.append(pause)
        total += pause
        pause = min(delay, pause * 2)
    return pauses


def started_at(unit: dict[str, str]) -> Optional[float]:
    """Wall-clock start of the running main process, from systemd's monotonic stamp."""
    mono_us = _int(unit.get("ExecMainStartTimestampMonotonic"))
    if unit.get("ActiveState") not in RUNNING or _int(unit.get("ExecMainPID")) <= 0 or mono_us <= 0:
        return None
    return time.time() - (time.clock_gettime(time.CLOCK_MONOTONIC) - mono_us / 1e6)


def newest_change(paths: list[str]) -> Optional[float]:
    """Latest mtime of the given paths (links themselves, not their targets)."""
    times = []
    for path in paths:
        try:
            times.append(os.lstat(path).st_mtime)
        except OSError:
            continue
    return max(times) if times else None


def apply_actions(module: AnsibleModule, unit: str, actions: list[str]) -> None:
    for action in actions:
        argv = ["systemctl", action] if action == "daemon-reload" else ["systemctl", action, unit]
        rc, out, err = module.run_command(argv)
        if rc != 0:
            reason = (
                f"systemctl {action} {unit} failed (exit {rc}): {(err or out).strip()}; "
                f"next: see systemctl status {unit} and journalctl -u {unit}, fix it and re-run"
            )
            module.fail_json(
                msg=outcome_message(module.params["host"], "failed", reason),
                actions=actions,
                outcome={"status": "failed", "reason": reason},
            )


def observe(module: AnsibleModule) -> tuple[Optional[dict[str, Any]], dict[str, str], str]:
    """The agent's status (None when it gave no JSON object), the unit, and why not."""
    p = module.params
    rc, out, err = run_agent(module, p["python"], p["pyz"], "status", "--json")
    status = status_answer(rc, out)
    why = "" if status is not None else f"exit {rc}: {(err or out or 'no output').strip()[:300]}"
    return status, show(module, p["unit"], UNIT_PROPS), why


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            **AGENT_CLI_ARGS,
            "unit": {"type": "str", "default": "redflag-agent.service"},
            "daemon_reload": {"type": "bool", "default": False},
            "restart": {"type": "bool", "default": False},
            "should_run": {"type": "bool"},
            "current": {"type": "path", "default": "/opt/redflag-agent/current"},
            "unit_path": {"type": "path", "default": "/etc/systemd/system/redflag-agent.service"},
            "migrate_unit_path": {"type": "path"},
            "verify": {"type": "bool", "default": True},
            "token_embedded": {"type": "bool", "default": False},
            "retries": {"type": "int", "default": 20},
            "delay": {"type": "int", "default": 3},
            "host": {"type": "str", "default": "this host"},
            "require_checkin": {"type": "bool", "default": False},
            "reset_failed": {"type": "bool", "default": False},
            "check_dropins": {"type": "bool", "default": True},
            "dropins_ignore": {"type": "list", "elements": "path", "default": []},
            "dropin_dirs": {"type": "list", "elements": "path"},
        },
        supports_check_mode=True,
    )
    try:
        run(module)
    except Exception as exc:  # noqa: BLE001 - even this outcome is classified and named
        reason = (
            f"the service step stopped on an unexpected error ({type(exc).__name__}: {exc}); "
            f"next: {JOURNAL}, then re-run"
        )
        module.fail_json(
            msg=outcome_message(module.params["host"], "failed", reason),
            outcome={"status": "failed", "reason": reason},
        )


def dropin_gate(module: AnsibleModule, unit_state: dict[str, str]) -> list[dict[str, str]]:
    """The drop-ins on the unit, judged; a failing one fails the call in the outcome shape
    (before any systemctl action: the caller runs this first), harmless ones are warnings."""
    p = module.params
    if not p["check_dropins"]:
        return []
    dropins, reason, warnings = check_dropins(
        p["unit"], dropin_paths(unit_state), p["dropin_dirs"], p["dropins_ignore"]
    )
    if reason:
        module.fail_json(
            msg=outcome_message(p["host"], "failed", reason),
            actions=[],
            outcome={"status": "failed", "reason": reason},
            dropins=dropins,
        )
    for text in warnings:
        module.warn(text)
    return dropins


def run(module: AnsibleModule) -> None:
    """Judge the drop-ins, apply the actions, wait for the outcome; exits through
    module.exit_json/fail_json."""
    p = module.params
    # DropInPaths in the same `systemctl show`: the drop-in check costs no extra call.
    unit_state = show(module, p["unit"], STATE_PROPS + ("DropInPaths",))
    dropins = dropin_gate(module, unit_state)
    watched = watched_paths(p["current"], p["unit_path"], p["migrate_unit_path"])
    stale = is_stale(started_at(unit_state), newest_change(watched))
    should_run = p["should_run"]
    if should_run is None:  # the configure step did not run (--tags): ask the agent
        status, _unit, _why = observe(module)
        should_run = bool(
            status and (status.get("registered") or status.get("registration_token_present"))
        )
    actions = plan(
        unit_state, p["daemon_reload"], p["restart"] or stale, should_run, p["reset_failed"]
    )
    since, before = None, None
    gated = p["require_checkin"] and p["verify"] and not module.check_mode
    if gated and ("restart" in actions or "start" in actions):
        before = (observe(module)[0] or {}).get("last_checkin")
        since = time.time()
    started = time.monotonic()
    if not module.check_mode:
        apply_actions(module, p["unit"], actions)
    if module.check_mode or not p["verify"]:
        why = (
            "check mode; next: run without --check to apply and verify" if module.check_mode
            else "redflag_agent_verify is false; next: nothing (the outcome is not checked)"
        )  # fmt: skip
        module.exit_json(
            changed=bool(actions), actions=actions, dropins=dropins,
            outcome={"status": "unverified", "reason": why},
            msg=outcome_message(p["host"], "unverified", why),
        )  # fmt: skip
    pauses = poll_delays(p["retries"], p["delay"])
    state, reason, status, unit = "pending", "", None, {}
    for attempt in range(len(pauses) + 1):
        status, unit, why = observe(module)
        state, reason = decide(status, unit, p["token_embedded"])
        if status is None:
            reason = f"{reason} ({why})"
        state, reason = gate_checkin(state, reason, status, unit, since, before)
        if state != "pending" or attempt == len(pauses):
            break
        time.sleep(pauses[attempt])
    if state == "pending":
        state, reason = timed_out(reason, status, unit, len(pauses) + 1, sum(pauses))
    reason = final_reason(state, reason, "restart" in actions or "start" in actions)
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
        "last_checkin": status.get("last_checkin"),
        "restarted_at": _utc(since) if since is not None else None,
        "seconds": round(time.monotonic() - started, 1),
    }
    if state == "waiting-for-token":
        module.warn(f"{p['host']}: {WAITING_REASON}")
    module.exit_json(
        changed=bool(actions), actions=actions, outcome=outcome, dropins=dropins,
        msg=outcome_message(p["host"], state, reason),
    )  # fmt: skip


if __name__ == "__main__":
    main()
