"""status.json (last check-in, last error, exit reason) and the `status --json` report."""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Optional

from . import config as cfgmod
from . import safefs
from .atomic import dumps_json
from .paths import Paths
from .version import AGENT_VERSION

STATE_KEYS = ("last_checkin", "last_error", "last_exit_reason", "identity_unsaved")
REPORT_KEYS = (
    "agent_version", "config_path", "config_present", "config_valid", "config_error",
    "config_version", "registered", "identity_source", "identity_kind", "agent_id",
    "server_url", "registration_token_present", "legacy_present", "migrations_completed",
    "migrations_pending", "migration_failures", "backups", "last_checkin", "last_error",
    "last_exit_reason", "identity_unsaved", "registration_attempt",
    "upstream_layout",
)
# the machine binding (CONTRACT 4b): this host's machine ID and the identity's
MACHINE_KEYS = ("machine_id", "machine_id_source", "identity_machine_id",
                "identity_on_this_machine", "enrolled_token_sha256")
REPORT_KEYS += MACHINE_KEYS


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def read_state(paths: Paths) -> dict[str, Any]:
    """status.json's content; {} when missing or unreadable. A planted object there (symlink,
    hard link, FIFO, ...) is not read: its description becomes `last_error`."""
    try:
        data = safefs.read_bytes(paths.status_file, safefs.MAX_SMALL_FILE)
        if data is None:
            return {}
        obj = json.loads(data.decode("utf-8"))
    except safefs.UnsafePath as exc:
        return {"last_error": str(exc)}
    except (OSError, ValueError, RecursionError):  # RecursionError: nested too deeply
        return {}
    return obj if isinstance(obj, dict) else {}


class StatusFile:
    """Writes status.json only when its content changes, and never creates the state dir."""

    def __init__(self, paths: Paths, log: logging.Logger) -> None:
        self.paths = paths
        self.log = log
        self.state = {k: read_state(paths).get(k) for k in STATE_KEYS}

    def update(self, **changes: Any) -> None:
        new = dict(self.state)
        new.update(changes)
        if new == self.state:
            return
        self.state = new
        if not self.paths.state_dir.is_dir():
            return
        try:
            # as root: owned by the agent user (set on the fd), never through a symlink
            safefs.write_bytes(self.paths.status_file, dumps_json(new), 0o600)
        except (OSError, safefs.UnsafePath) as exc:
            # status is informational: a full disk must not stop check-ins
            self.log.warning("cannot write %s: %s", self.paths.status_file, exc)


def _migration_summary(paths: Paths, log: logging.Logger) -> tuple[dict[str, Any], Any]:
    try:
        # lazy: a broken migration package must not stop `status` from answering
        from . import migration  # noqa: PLC0415
        return migration.summary(paths), migration
    except Exception as exc:  # status must always answer
        log.warning("cannot read migration state: %s", exc)
        return {}, None


def _legacy_identity(paths: Paths) -> Optional[dict[str, Any]]:
    try:
        return cfgmod.read_config(paths.legacy_config_file)
    except cfgmod.ConfigError:
        return None


def _choose_identity(cfg: Optional[dict[str, Any]], legacy: Optional[dict[str, Any]],
                     log: logging.Logger) -> Any:
    try:
        # the one rule, shared with the migration's merge, so both say the same
        from .migration.merge import choose_identity  # noqa: PLC0415
    except Exception as exc:  # status must always answer
        log.warning("cannot load the identity rule (%s); judging the current config alone",
                    exc)
        from types import SimpleNamespace  # noqa: PLC0415

        ok = cfgmod.is_registered(cfg)
        return SimpleNamespace(kind="complete" if ok else "unknown", registered=ok,
                               source="current" if ok else None,
                               identity={"agent_id": cfg.get("agent_id")} if ok and cfg else {})
    return choose_identity(cfg, legacy)


def _registration_attempt(paths: Paths) -> Optional[dict[str, Any]]:
    from . import registration  # noqa: PLC0415

    attempt = registration.read_attempt(paths)
    if attempt is None:
        return None
    keys = ("started", "server_url", "token_sha256", "hostname", "pid", "agent_id", "error")
    out = {k: attempt.get(k) for k in keys}
    out["path"] = str(registration.attempt_path(paths))
    return out


def report(paths: Paths, log: logging.Logger) -> dict[str, Any]:
    """Pure of side effects: reads files, writes nothing."""
    out: dict[str, Any] = dict.fromkeys(REPORT_KEYS)
    out["agent_version"] = AGENT_VERSION
    out["config_path"] = str(paths.config_file)
    out["config_present"] = paths.config_file.exists()
    cfg: Optional[dict[str, Any]] = None
    try:
        cfg = cfgmod.read_config(paths.config_file)
        out["config_valid"] = cfg is not None
    except cfgmod.ConfigError as exc:
        out["config_valid"] = False
        out["config_error"] = str(exc)
    if cfg is not None:
        version = cfgmod.schema_version_of(cfg)
        out["config_version"] = str(version) if version is not None else None
        out["server_url"] = cfg.get("server_url")
        out["registration_token_present"] = bool(cfg.get("registration_token"))
    else:
        out["registration_token_present"] = False
    legacy_present = paths.legacy_config_dir.exists() or paths.legacy_state_dir.exists()
    out["legacy_present"] = legacy_present
    summary, _ = _migration_summary(paths, log)
    out["migrations_completed"] = list(summary.get("completed") or [])
    out["migrations_pending"] = list(summary.get("pending") or [])
    out["migration_failures"] = dict(summary.get("failures") or {})
    out["backups"] = list(summary.get("backups") or [])
    # "0.1.18" | "0.1.19-0.1.23" | "0.2" | None: recorded once migrated, detected while pending
    out["upstream_layout"] = summary.get("upstream_layout")
    # the legacy identity counts only while the directory migration, which merges it with
    # the same rule (choose_identity), is still to come
    legacy = (_legacy_identity(paths)
              if legacy_present and "directory" not in out["migrations_completed"] else None)
    choice = _choose_identity(cfg, legacy, log)
    out["identity_kind"] = choice.kind
    out["registered"] = choice.registered
    if choice.registered:
        out["identity_source"] = choice.source
        out["agent_id"] = choice.identity.get("agent_id")
        if out["server_url"] is None and choice.source == "legacy" and legacy is not None:
            out["server_url"] = legacy.get("server_url")
    state = read_state(paths)
    for key in STATE_KEYS:
        out[key] = state.get(key)
    if not out["registered"]:
        # beside a saved identity a marker is stale (the next start removes it)
        out["registration_attempt"] = _registration_attempt(paths)
    holder = {"current": cfg, "legacy": legacy}.get(choice.source or "") or {}
    recorded = holder.get("machine_id") if out["registered"] else None
    out.update(_machine(paths, out["registered"], recorded, log))
    # the role's evidence for one-shot re-enrollment (a fingerprint, never the token)
    out["enrolled_token_sha256"] = holder.get(cfgmod.ENROLLED_TOKEN_KEY)  # {} unregistered
    return out


def _machine(paths: Paths, registered: bool, recorded: Any, log: logging.Logger
             ) -> dict[str, Any]:
    try:
        from . import binding  # noqa: PLC0415
        from .machine_id import is_valid_machine_id, read_machine_id  # noqa: PLC0415

        host = read_machine_id(paths)
    except Exception as exc:  # status must always answer
        log.warning("cannot compute the machine ID: %s", exc)
        return dict.fromkeys(MACHINE_KEYS)
    return {
        "machine_id": host.value,
        "machine_id_source": host.source,
        "identity_machine_id": recorded if is_valid_machine_id(recorded) else None,
        "identity_on_this_machine": binding.on_this_machine(registered, recorded, host.value),
    }


def human(rep: dict[str, Any]) -> str:
    lines = [
        f"agent version:   {rep['agent_version']}",
        f"config:          {rep['config_path']} ("
        + ("missing" if not rep["config_present"] else
           "valid" if rep["config_valid"] else "INVALID") + ")",
    ]
    if rep["config_error"]:
        lines.append(f"config error:    {rep['config_error']}")
    lines += [
        f"config version:  {rep['config_version']}",
        f"registered:      {'yes' if rep['registered'] else 'no'}"
        + (f" ({rep['identity_source']} config)" if rep["identity_source"] else "")
        + (f" (identity {rep['identity_kind']})" if rep.get("identity_kind") not in (
            None, "complete", "absent") else ""),
        f"agent id:        {rep['agent_id']}",
        f"server:          {rep['server_url']}",
        f"reg. token set:  {'yes' if rep['registration_token_present'] else 'no'}",
        f"legacy present:  {'yes' if rep['legacy_present'] else 'no'}",
        f"upstream layout: {rep.get('upstream_layout') or '-'}",
        f"migrations done: {', '.join(rep['migrations_completed']) or '-'}",
        f"pending:         {', '.join(rep['migrations_pending']) or '-'}",
        f"backups:         {', '.join(rep['backups']) or '-'}",
        f"last check-in:   {rep['last_checkin']}",
        f"last error:      {rep['last_error']}",
        f"last exit:       {rep['last_exit_reason']}",
        f"machine ID:      {rep.get('machine_id')} ({rep.get('machine_id_source')})",
    ]
    if rep.get("identity_on_this_machine") is False:
        lines.append(f"IDENTITY OF ANOTHER MACHINE: registered with machine ID "
                     f"{rep.get('identity_machine_id')}; the agent does not check in with it "
                     "(give this host a registration token to enroll it as a new agent)")
    unsaved = rep.get("identity_unsaved")
    if isinstance(unsaved, dict):
        lines.append(f"IDENTITY UNSAVED: agent {unsaved.get('agent_id')} registered "
                     f"{unsaved.get('since')}, kept in memory only: {unsaved.get('error')}")
    attempt = rep.get("registration_attempt")
    if isinstance(attempt, dict):
        lines.append(f"UNFINISHED REGISTRATION: started {attempt.get('started')} with "
                     f"{attempt.get('server_url')}"
                     + (f" (agent {attempt['agent_id']})" if attempt.get("agent_id") else "")
                     + "; an agent may exist on the server for this host; after checking, "
                     f"remove {attempt.get('path')}")
    if rep["migration_failures"]:
        for phase, info in rep["migration_failures"].items():
            lines.append(f"migration failed: {phase}: {info}")
    return "\n".join(lines)
