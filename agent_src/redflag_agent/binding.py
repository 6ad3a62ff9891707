"""Machine binding on the agent's side (CONTRACT 4b): is the identity in config.json this
machine's, what each binding answer of the server means, and where a copied identity goes.

Decisions and messages are pure; the I/O at the bottom (the host's ID once per process, the
backup of a set-aside identity, recording the ID) is thin.

Exit codes: 77 when the server refuses this identity and the fix is to enroll again (403
mismatch, 403 not bound, refresh token reuse); 78 when the fix is on the host or the install
(409 machine ID taken, 426 agent too old, 403 header missing, a cloned identity and no token).
Both are in the unit's RestartPreventExitStatus: none of these answers changes on a retry.
"""

from __future__ import annotations

import contextlib
import copy
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from . import config as cfgmod
from . import safefs
from .atomic import dumps_json
from .exits import EX_CONFIG, EX_NOPERM
from .machine_id import MachineId, is_valid_machine_id, read_machine_id
from .paths import Paths
from .version import AGENT_VERSION

if TYPE_CHECKING:
    from .client import BindingRefused, MachineConflict, UpgradeRequired

# --- whose identity is this? ---------------------------------------------------------------
OURS = "ours"  # recorded machine ID is this host's
ADOPT = "adopt"  # nothing (usable) recorded: taken over or from an older agent; record ours
CLONE_ENROLL = "clone_enroll"  # recorded for another machine, token given: set aside, enroll
CLONE_STOP = "clone_stop"  # recorded for another machine, no token: stop (78)

REENROLL_FIX = ("re-run the playbook with a fresh redflag_agent_registration_token and "
                "redflag_agent_force_reregister=true (or clear the identity with `redflag-agent "
                "config apply` and `reregister: true`, then `redflag-agent register`)")


@dataclass(frozen=True)
class IdentityVerdict:
    action: str
    reason: str


def decide_identity(recorded: Any, host: str, token_available: bool) -> IdentityVerdict:
    """Pure: what a start does with a registered config, given the machine ID recorded with
    its identity (the config's `machine_id`, possibly absent) and this host's machine ID."""
    if recorded is None or recorded == "":
        return IdentityVerdict(ADOPT, "no machine ID is recorded with the identity (taken "
                                      "over from another agent, or registered by an older "
                                      "version): this host's is recorded once the server "
                                      "accepts it")
    if not is_valid_machine_id(recorded):
        # not ours to interpret (another agent's key of the same name?): replaced, as above
        return IdentityVerdict(ADOPT, "the recorded machine_id is not a 64-hex machine ID; "
                                      "this host's replaces it once the server accepts it")
    if recorded == host:
        return IdentityVerdict(OURS, "the identity was registered on this machine")
    if token_available:
        return IdentityVerdict(CLONE_ENROLL, "the identity was registered on another machine "
                                             "and a registration token is given")
    return IdentityVerdict(CLONE_STOP, "the identity was registered on another machine and "
                                       "no registration token is given")


def on_this_machine(registered: bool, recorded: Any, host: str) -> Optional[bool]:
    """Pure: for `status`: True/False when a machine ID is recorded, None when unknown."""
    if not registered or not is_valid_machine_id(recorded):
        return None
    return recorded == host


def short(machine_id: Optional[str]) -> str:
    return f"{machine_id[:16]}..." if machine_id else "?"


def clone_message(cfg: dict[str, Any], host: MachineId, paths: Paths) -> str:
    """Pure: why a start with a copied identity and no token stops, and the fix."""
    return (f"{paths.config_file} holds the identity of agent {cfg.get('agent_id')}, registered "
            f"on another machine (recorded machine ID {short(cfg.get('machine_id'))}; this "
            f"host's is {short(host.value)} from {host.source}): this host was cloned from an "
            "image or copy that held a registered agent, and the agent never checks in under "
            "a copied identity. Fix: give this host its own registration token (re-run the "
            "playbook with redflag_agent_registration_token): the copied identity is then set "
            f"aside in {paths.identity_backups_dir} and this host enrolls as a new agent. If "
            "this host is that agent and only its machine ID changed, rebind the agent to "
            f"machine ID {host.value} on the server and remove machine_id from "
            f"{paths.config_file}")


class Refused(Exception):
    """A server answer (or a local finding) that no retry changes: stop with exit_code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def conflict_refusal(exc: MachineConflict, host: Optional[str]) -> Refused:
    """Pure: 409 on register: this machine ID is bound to another agent."""
    owner = (f"agent {exc.existing_agent_id or '?'} (hostname {exc.existing_hostname or '?'}, "
             f"last seen {exc.existing_last_seen or '?'})")
    hint = f" The server says: {exc.remediation}" if exc.remediation else ""
    return Refused(
        f"the server refused to register this host: its machine ID {short(host)} is already "
        f"registered to {owner}. Nothing was registered. This host is a clone of that "
        "machine, or that agent is this host's own earlier registration. Fix: on a clone, "
        "give it its own machine ID (`rm -f /etc/machine-id /var/lib/dbus/machine-id && "
        "systemd-machine-id-setup`, then reboot or restart the agent); if the old agent is "
        f"gone (or is this host's old registration), delete agent "
        f"{exc.existing_agent_id or '?'} on the server, then start the agent again.{hint}",
        EX_CONFIG)


def binding_refusal(exc: BindingRefused, agent_id: Optional[str], host: Optional[str]
                    ) -> Refused:
    """Pure: 403 from a binding server, by its kind."""
    from .client import MISMATCH, NOT_BOUND  # noqa: PLC0415

    who = f"agent {agent_id}" if agent_id else "this agent"
    if exc.kind == MISMATCH:
        return Refused(
            f"the server refuses {who} on this machine: {exc.message} (the identity was "
            "registered on another machine; config.json was copied or the host cloned). Fix: "
            f"enroll this host as a new agent: {REENROLL_FIX}; or, if this host is that agent "
            f"and only its machine ID changed, rebind the agent to machine ID {host} on the "
            "server", EX_NOPERM)
    if exc.kind == NOT_BOUND:
        return Refused(
            f"the server refuses {who}: {exc.message} (it was registered before the server "
            "bound agents to machines, 0.1.22). Fix: enroll it again: " + REENROLL_FIX,
            EX_NOPERM)
    return Refused(
        f"the server refuses {who}: {exc.message}, although this agent sends its machine ID "
        "in X-Machine-ID: something between the agent and the server (a proxy) drops that "
        "header. Fix: let the proxy pass the X-Machine-ID header", EX_CONFIG)


def upgrade_refusal(exc: UpgradeRequired) -> Refused:
    """Pure: 426: the server's minimum agent version is above ours."""
    minimum = exc.minimum or "a newer version"
    return Refused(
        f"the server requires agent version {minimum} or newer ({exc.message}); this agent "
        f"is {AGENT_VERSION}. Fix: upgrade redflag-agent (re-run the playbook with a newer "
        "redflag_agent_version), then start it again", EX_CONFIG)


def renew_rejected_message(agent_id: str, detail: str) -> str:
    """Pure: a refused refresh token (exit 77), reuse named as such."""
    if "reuse" in detail.lower():
        why = ("the server saw a refresh token it had already exchanged and revoked this "
               "agent's tokens (a config restored from an old copy, or a second host using the "
               "same identity)")
    else:
        why = "the refresh token is invalid, expired or revoked, or the agent was deleted"
    detail = detail or "no reason given"
    return (f"the server rejected the refresh token of agent {agent_id} ({detail}): {why}. "
            f"Fix: re-enroll this host: {REENROLL_FIX}")


# --- rotated tokens ------------------------------------------------------------------------
SAVE = "save"
NOT_OURS = "not_ours"  # config.json now holds another identity (or none): never overwrite


def token_save_decision(on_disk: Optional[dict[str, Any]], agent_id: str,
                        renewed_with: str, rotated: bool) -> str:
    """Pure: may renewed tokens be written into the config now on disk?

    Only over the identity they belong to: the same agent_id and, when the refresh token
    rotated, the refresh token that was renewed with (`config apply` or a re-enrollment may
    have put another identity there meanwhile)."""
    if on_disk is None or on_disk.get("agent_id") != agent_id:
        return NOT_OURS
    if rotated and on_disk.get("refresh_token") != renewed_with:
        return NOT_OURS
    return SAVE


# --- I/O -----------------------------------------------------------------------------------
_HOST_IDS: dict[str, MachineId] = {}


def host_machine_id(paths: Paths) -> MachineId:
    """This host's machine ID, computed once per process (per root)."""
    key = str(paths.root)
    if key not in _HOST_IDS:
        _HOST_IDS[key] = read_machine_id(paths)
    return _HOST_IDS[key]


def forget_host_machine_id() -> None:
    """Tests: recompute on the next call."""
    _HOST_IDS.clear()


_SAFE_ID = re.compile(r"[0-9A-Za-z-]{1,64}")


def backup_path(paths: Paths, agent_id: Any, when: float) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(when))
    name = agent_id if isinstance(agent_id, str) and _SAFE_ID.fullmatch(agent_id) else "unknown"
    return paths.identity_backups_dir / f"{stamp}-{name}.json"


def backup_record(cfg: dict[str, Any], host: MachineId, reason: str, when: str
                  ) -> dict[str, Any]:
    """Pure: what a set-aside identity's backup holds (its secrets too: mode 0600)."""
    record: dict[str, Any] = {"set_aside_at": when, "reason": reason,
                              "host_machine_id": host.value, "server_url": cfg.get("server_url")}
    record.update({k: cfg.get(k) for k in (*cfgmod.IDENTITY_KEYS, "machine_id")})
    return record


def without_identity(cfg: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(cfg)
    for key in (*cfgmod.IDENTITY_KEYS, "machine_id"):
        out.pop(key, None)
    return out


def write_backup(paths: Paths, cfg: dict[str, Any], host: MachineId, reason: str) -> Path:
    """Keep cfg's identity in a backup file (0600, dir 0700); its path. Raises
    OSError/ConfigError."""
    now = time.time()
    target = backup_path(paths, cfg.get("agent_id"), now)
    record = backup_record(cfg, host, reason,
                           time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)))
    try:
        safefs.write_bytes(target, dumps_json(record), 0o600, create_dirs=True, dir_mode=0o700)
    except safefs.UnsafePath as exc:
        raise cfgmod.ConfigError(str(exc)) from exc
    return target


def set_aside(paths: Paths, cfg: dict[str, Any], host: MachineId, reason: str,
              shield: Callable[[], Any] = contextlib.nullcontext) -> Optional[Path]:
    """Keep the copied identity in a backup (0600, dir 0700), then drop it from config.json.

    Returns the backup's path, or None when config.json meanwhile holds another identity
    than `cfg` (nothing is dropped then). Raises OSError/ConfigError when a write fails."""
    with shield():
        # the backup first: a crash before the config is rewritten only repeats this
        target = write_backup(paths, cfg, host, reason)
    with shield(), cfgmod.config_lock(paths):
        on_disk = cfgmod.read_config(paths.config_file)
        if on_disk is None or any(on_disk.get(k) != cfg.get(k)
                                  for k in ("agent_id", "refresh_token")):
            return None
        cfgmod.save_config(paths, without_identity(on_disk))
    return target


def record_machine_id(paths: Paths, agent_id: str, machine_id: str,
                      shield: Callable[[], Any] = contextlib.nullcontext) -> bool:
    """Write machine_id next to agent_id if config.json still holds that agent and no valid
    machine ID. True when config.json holds it afterwards. Raises OSError/ConfigError."""
    with shield(), cfgmod.config_lock(paths):
        on_disk = cfgmod.read_config(paths.config_file)
        if on_disk is None or on_disk.get("agent_id") != agent_id:
            return False
        if on_disk.get("machine_id") == machine_id:
            return True
        if is_valid_machine_id(on_disk.get("machine_id")):
            return False  # someone recorded another one meanwhile: not ours to replace
        on_disk["machine_id"] = machine_id
        cfgmod.save_config(paths, on_disk)
    return True
