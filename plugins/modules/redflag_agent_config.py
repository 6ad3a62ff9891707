#!/usr/bin/python
"""Ansible module: everything the role asks of the agent before the service starts.

1. `status --json`: what the agent knows (registered? legacy data to migrate?).
2. `migrate --json` when the agent reports pending migrations (the agent moves legacy
   data; the role never does). A dry run in check mode.
3. The enrollment decision, `decide_enrollment()` below: THE place the role decides
   whether a host enrolls, from the agent's own status, never from files. A registered
   identity being replaced is unregistered first, with the service stopped (the agent's
   `unregister` refuses with exit 75 while the running agent holds its instance lock).
4. `config apply`: the agent owns the schema and the merge; this module hands it the
   settings on stdin (the token never goes on argv) and reports changed, created,
   changed_keys and a diff in which the agent has redacted secrets.
"""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: redflag_agent_config
short_description: Migrate, decide enrollment and apply settings to the RedFlag agent's config.json
description:
  - Reads C(python3 -I PYZ status --json); runs C(migrate --json) when migrations are pending
    (C(--dry-run) in check mode); decides whether the host enrolls (not registered, or
    I(force_reregister)); runs C(config apply --json) (with C(--check) in check mode) with the
    desired settings, and the token only when enrolling, as JSON on stdin.
  - Before a registered identity is replaced (I(force_reregister), I(forget_identity)) the
    service I(unit) is stopped when it is active (C(systemctl stop)), so the agent's
    C(unregister) can take the instance lock; the role's service step starts it again. Nothing
    is stopped in check mode or when no identity is replaced.
  - When the agent is not installed yet in check mode, reports that config.json would be created.
options:
  settings:
    description: Role-managed settings (server_url, check_in_interval, proxy, tls, tags, ...).
    type: dict
    required: true
  registration_token:
    description: Registration token, embedded only when the host enrolls.
    type: str
    default: ""
  force_reregister:
    description: Enroll even when registered (drops the agent identity; needs a token).
    type: bool
    default: false
  forget_identity:
    description:
      - A golden image - apply the settings but leave no identity, token or machine binding
        (C(config apply) with C(forget_identity)). A registered identity is unregistered on the
        server first (a warning when that fails) and kept in the agent's identity_backups.
      - Never enrolls; I(registration_token) and I(force_reregister) must be unset.
    type: bool
    default: false
  unit:
    description: The agent's systemd unit, stopped before a registered identity is replaced.
    type: str
    default: redflag-agent.service
author:
  - redflag-provision developers (!UNKNOWN)
extends_documentation_fragment:
  - redflag.agent.agent_cli
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Migrations run as C(--dry-run) and C(config apply) as C(--check); nothing is written.
  diff_mode:
    support: full
    details: The agent's own diff of config.json; the agent redacts the token and passwords.
  platform:
    platforms: posix
    details: Linux hosts with systemd (Debian, Ubuntu, RHEL and its rebuilds, Fedora).
"""

EXAMPLES = r"""
- name: Apply the settings; enroll with the token when the agent is not registered yet
  redflag.agent.redflag_agent_config:
    python: /usr/bin/python3
    pyz: /opt/redflag-agent/current/redflag-agent.pyz
    settings:
      server_url: https://redflag.example.com
      check_in_interval: 300
      tags: [web, production]
    registration_token: "{{ vault_redflag_registration_token }}"
  register: config

- name: Re-enroll a registered host with a new token (the old identity is unregistered first)
  redflag.agent.redflag_agent_config:
    python: /usr/bin/python3
    pyz: /opt/redflag-agent/current/redflag-agent.pyz
    settings:
      server_url: https://redflag.example.com
    registration_token: "{{ vault_redflag_registration_token }}"
    force_reregister: true

- name: Prepare a golden image - settings, but no identity and no token
  redflag.agent.redflag_agent_config:
    python: /usr/bin/python3
    pyz: /opt/redflag-agent/current/redflag-agent.pyz
    settings:
      server_url: https://redflag.example.com
    forget_identity: true
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
migrated:
  description: Migration phases done (in check mode, the phases that would run).
  type: list
  elements: str
  returned: always
status:
  description: The agent's status before config apply (after the migration); never a token.
  type: dict
  returned: always
enroll:
  description: The host enrolls (not registered, or force_reregister).
  type: bool
  returned: always
token_embedded:
  description: The registration token was handed to config apply.
  type: bool
  returned: always
unregistered:
  description: The agent's answer to C(unregister --json) when a forced re-enrollment replaced
    a registered identity (agent_id, server_knew, backup); empty otherwise.
  type: dict
  returned: always
service_stopped:
  description: The module stopped I(unit) (it was active) before unregistering the replaced
    identity; the role's service step starts it again. Never in check mode.
  type: bool
  returned: when the agent is installed
"""

import hashlib
import json
import os
import re
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.redflag.agent.plugins.module_utils.redflag_agent_cli import (
    AGENT_CLI_ARGS,
    AGENT_ENV,
    run_agent,
)
from ansible_collections.redflag.agent.plugins.module_utils.redflag_agent_systemd import show

NOT_INSTALLED = {"registered": False, "installed": False, "migrations_pending": []}
EX_TEMPFAIL = 75  # the agent's exit when another instance holds its instance lock
# ActiveState values in which the agent runs or is about to (it may hold the lock)
RUNNING_STATES = frozenset({"active", "activating", "reloading", "deactivating", "refreshing"})


class ApplyError(Exception):
    """The agent refused or failed; the message says why and what to do."""


class Enrollment(NamedTuple):
    enroll: bool  # the host should (re-)register
    embed_token: bool  # the token goes into config.json
    reregister: bool  # the agent drops its identity first
    replaces: bool = False  # a registered identity is replaced: unregister it first


def decide_enrollment(registered: bool, force_reregister: bool, token_given: bool,
                      enrolled_with_this_token: bool = False) -> Enrollment:
    """THE enrollment decision: enroll when the agent says it is not registered, or when
    the operator forces it. The token is embedded only then, so a registered host never
    gets a token written again (and never re-registers by accident). Forcing is one-shot:
    an identity the agent enrolled with this very token (its recorded fingerprint) is not
    replaced again, so force_reregister left in the inventory changes nothing."""
    forced = bool(force_reregister) and not (registered and enrolled_with_this_token)
    enroll = forced or not registered
    reregister = forced and token_given
    return Enrollment(enroll, enroll and token_given, reregister, reregister and registered)


def token_fingerprint(token: str) -> str:
    """The agent's own fingerprint (registration.token_fingerprint): tells tokens apart,
    useless to anyone who wants the token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()[:12]


def enrolled_with(status: dict[str, Any], token: str) -> bool:
    recorded = status.get("enrolled_token_sha256")
    return bool(token) and isinstance(recorded, str) and recorded == token_fingerprint(token)


def unregister_warning(agent_id: Any, rc: int, detail: str,
                       then: str = "re-enrolling anyway") -> str:
    return (f"could not unregister the replaced agent {agent_id} on the server (exit {rc}: "
            f"{detail or 'no output'}); {then}. Delete agent {agent_id} on the "
            "server by hand; its identity is kept under /var/lib/redflag-agent/identity_backups")


def unregister_locked(detail: str) -> str:
    """Why the module stops when `unregister` found the instance lock held although the
    service is stopped: re-enrolling under a running agent is the race the lock prevents."""
    return (f"redflag-agent unregister exited {EX_TEMPFAIL}: {detail}; another redflag-agent "
            "instance still runs on this host: stop it and re-run (nothing was unregistered "
            "or re-enrolled)")


def stop_failed(unit: str, rc: int, detail: str) -> str:
    return (f"systemctl stop {unit} failed (exit {rc}: {detail or 'no output'}) before the "
            f"identity could be replaced; nothing was unregistered or re-enrolled. See "
            f"systemctl status {unit} and journalctl -u {unit}, fix it and re-run")


_LOG_PREFIX = re.compile(r"^\[ERROR\] \[[^\]]*\] ")


def agent_error(stderr: str) -> str:
    """The agent's own error lines (`[ERROR] [component] message`) without the prefix: its
    message names the file or field and the fix, so the play shows it as it is."""
    lines = [_LOG_PREFIX.sub("", ln).strip() for ln in (stderr or "").splitlines()
             if ln.startswith("[ERROR] ")]
    return " | ".join(ln for ln in lines if ln)[:2000]


def parse_json_answer(what: str, rc: int, stdout: str, stderr: str) -> dict[str, Any]:
    """The agent's JSON answer, or ApplyError naming the command and its output."""
    detail = agent_error(stderr) or (stderr or stdout or "").strip()[:600]
    if rc != 0:
        raise ApplyError(f"redflag-agent {what} exited {rc}: {detail or 'no output'}")
    try:
        answer = json.loads(stdout)
    except ValueError as exc:
        raise ApplyError(f"redflag-agent {what} printed no JSON ({exc}): {detail}") from exc
    if not isinstance(answer, dict):
        raise ApplyError(f"redflag-agent {what} answered {type(answer).__name__}, not an object")
    return answer


def build_payload(settings: dict[str, Any], registration_token: str, reregister: bool,
                  forget_identity: bool = False) -> str:
    """The JSON document `config apply` reads on stdin; the token only when given."""
    doc: dict[str, Any] = {"settings": settings, "reregister": bool(reregister)}
    if registration_token:
        doc["registration_token"] = registration_token
    if forget_identity:
        doc["forget_identity"] = True
    return json.dumps(doc, sort_keys=True)


def settings_secrets(settings: Any) -> list[str]:
    """Secret values inside the settings (pure): the proxy password and any password in a
    proxy URL. The module adds them to its no_log values, so Ansible masks them wherever
    they would appear (module_args, the diff, messages) and the task needs no no_log."""
    proxy = settings.get("proxy") if isinstance(settings, dict) else None
    if not isinstance(proxy, dict):
        return []
    found = [proxy.get("password")]
    for key in ("http", "https"):
        url = proxy.get(key)
        if isinstance(url, str) and "@" in url:
            try:
                found.append(urlsplit(url).password)
            except ValueError:  # not a URL: the agent refuses it with its own message
                continue
    return sorted({v for v in found if isinstance(v, str) and v})


def build_argv(python: str, pyz: str, check: bool) -> list[str]:
    argv = [python, "-I", pyz, "config", "apply", "--json"]
    if check:
        argv.append("--check")
    return argv


def interpret(rc: int, stdout: str, stderr: str) -> dict[str, Any]:
    """Turn the agent's answer into the module result, or raise ApplyError."""
    detail = (stderr or stdout or "").strip()
    if rc != 0:
        message = agent_error(stderr)
        if message:
            # the agent said what failed and what to do (full disk, bad setting, ...)
            raise ApplyError(f"redflag-agent config apply exited {rc}: {message}")
        hint = (
            "fix the role variables it names (or the config file it names) and re-run"
            if rc == 78
            else "check that the agent zipapp runs on this host"
        )
        raise ApplyError(
            f"redflag-agent config apply exited {rc}: {detail[:600] or 'no output'}; {hint}"
        )
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
        "migrated": [],
        "status": dict(NOT_INSTALLED),
    }


MIGRATION_FAILED = (
    "The agent's migration failed and the config is unusable: {detail}. Legacy data and "
    "backups are kept under /etc/aggregator, /var/lib/aggregator and "
    "/var/lib/redflag-agent/migration_backups; fix the cause named above and re-run."
)


class Agent:
    """Runs the agent's CLI; the token only ever goes to `config apply` on stdin."""

    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
        self.base = [module.params["python"], "-I", module.params["pyz"]]

    def call(self, args: list[str]) -> tuple[int, str, str]:
        return run_agent(self.module, self.base[0], self.base[2], *args)

    def apply(self, payload: str) -> tuple[int, str, str]:
        return self.module.run_command(
            build_argv(self.base[0], self.base[2], self.module.check_mode),
            data=payload,
            binary_data=True,
            environ_update=AGENT_ENV,
        )

    def status(self) -> dict[str, Any]:
        rc, out, err = self.call(["status", "--json"])
        return parse_json_answer("status --json", rc, out, err)

    def unregister(self) -> tuple[dict[str, Any], int, str]:
        """Unregister the identity being replaced (the agent keeps a backup first); a
        warning, not a failure, when the server cannot be reached or refuses."""
        rc, out, err = self.call(["unregister", "--json"])
        try:
            return parse_json_answer("unregister", rc, out, err), rc, ""
        except ApplyError:
            # never empty: an empty reason would drop the warning that the old agent is left
            return {}, rc, agent_error(err) or (err or out or "").strip()[:600] or "no output"

    def stop_service(self, unit: str) -> bool:
        """Stop the unit when it runs, so `unregister` finds the instance lock free; True
        when it was stopped. An unknown state (no systemd) stops nothing: the agent's lock
        still refuses then (exit 75)."""
        state = show(self.module, unit, ("ActiveState",)).get("ActiveState")
        if state not in RUNNING_STATES:
            return False
        rc, out, err = self.module.run_command(["systemctl", "stop", unit])
        if rc != 0:
            raise ApplyError(stop_failed(unit, rc, (err or out or "").strip()[:600]))
        return True

    def migrate(self, dry_run: bool) -> list[str]:
        args = ["migrate"] + (["--dry-run"] if dry_run else []) + ["--json"]
        rc, out, err = self.call(args)
        try:
            answer = parse_json_answer("migrate", rc, out, err)
        except ApplyError as exc:
            raise ApplyError(MIGRATION_FAILED.format(detail=exc)) from exc
        return [str(x) for x in answer.get("phases" if dry_run else "phases_done") or []]


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            **AGENT_CLI_ARGS,
            "settings": {"type": "dict", "required": True},
            "registration_token": {"type": "str", "default": "", "no_log": True},
            "force_reregister": {"type": "bool", "default": False},
            "forget_identity": {"type": "bool", "default": False},
            "unit": {"type": "str", "default": "redflag-agent.service"},
        },
        supports_check_mode=True,
    )
    params = module.params
    module.no_log_values.update(settings_secrets(params["settings"]))
    token = params["registration_token"] or ""
    forget = params["forget_identity"]
    if forget and (token or params["force_reregister"]):
        module.fail_json(
            msg="forget_identity (a golden image) enrolls nothing: leave registration_token "
            "and force_reregister unset"
        )
    if params["force_reregister"] and not token:
        module.fail_json(
            msg="force_reregister needs a registration token (it drops the agent's identity); "
            "set redflag_agent_registration_token"
        )
    if not os.path.exists(params["pyz"]):
        if module.check_mode:
            decision = decide_enrollment(False, params["force_reregister"], bool(token))
            module.exit_json(
                **not_installed_result(params["pyz"]),
                enroll=decision.enroll and not forget,
                token_embedded=decision.embed_token,
            )
        module.fail_json(
            msg=f"{params['pyz']} does not exist; the install step should have put it there: "
            "re-run the role without tags, or check /opt/redflag-agent/current"
        )
    agent = Agent(module)
    migrated: list[str] = []
    unregistered: dict[str, Any] = {}
    stopped = False
    try:
        status = agent.status()
        if status.get("migrations_pending"):
            migrated = agent.migrate(dry_run=module.check_mode)
            if migrated and not module.check_mode:
                status = agent.status()
        decision = decide_enrollment(
            bool(status.get("registered")), params["force_reregister"], bool(token),
            enrolled_with(status, token),
        )
        if forget:
            # an image enrolls nothing; a registered template leaves the server first
            decision = Enrollment(False, False, False, bool(status.get("registered")))
        if decision.replaces and not module.check_mode:
            # the running agent renews and saves tokens in config.json under its lock
            stopped = agent.stop_service(params["unit"])
            unregistered, rc, why = agent.unregister()
            if rc == EX_TEMPFAIL:
                raise ApplyError(unregister_locked(why))
            if why:
                module.warn(unregister_warning(
                    status.get("agent_id"), rc, why,
                    "forgetting it for the image anyway" if forget else "re-enrolling anyway"))
        payload = build_payload(
            params["settings"], token if decision.embed_token else "", decision.reregister,
            forget,
        )
        rc, out, err = agent.apply(payload)
        result = interpret(rc, out, err)
    except ApplyError as exc:
        left = (f"; {params['unit']} was stopped to replace the identity and is left stopped"
                if stopped else "")
        module.fail_json(msg=f"{exc}{left}", migrated=migrated)
    agent_diff = result.pop("agent_diff")
    result.update(
        changed=result["changed"] or bool(migrated) or stopped,
        migrated=migrated,
        status=status,
        enroll=decision.enroll,
        token_embedded=decision.embed_token,
        unregistered=unregistered,
        service_stopped=stopped,
    )
    if module._diff and agent_diff:
        result["diff"] = {"prepared": agent_diff}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
