"""Registration: a pure decision, a pure config update, and the thin code that performs it."""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

from . import config as cfgmod
from .paths import Paths
from .version import AGENT_VERSION

if TYPE_CHECKING:
    from .client import Client

REGISTER = "register"
REGISTERED = "registered"
CANNOT_REGISTER = "no_token"


@dataclass(frozen=True)
class Decision:
    action: str  # REGISTER, REGISTERED or CANNOT_REGISTER
    reason: str


def decide_registration(cfg: Optional[dict[str, Any]], token_available: bool) -> Decision:
    if cfgmod.is_registered(cfg):
        return Decision(REGISTERED, "config holds agent_id and refresh_token")
    if token_available:
        return Decision(REGISTER, "not registered; a registration token is available")
    return Decision(CANNOT_REGISTER, "not registered and no registration token")


def missing_token_message(paths: Paths) -> str:
    return (f"not registered and no registration token: {paths.config_file} has no agent_id/"
            "refresh_token and no registration_token. Fix: set the playbook variable "
            "redflag_agent_registration_token and re-run the playbook, or run "
            "`redflag-agent register --token-file FILE` on this host")


class TokenRejected(Exception):
    """The server refused a registration or refresh token: exit 77, do not loop."""


def rejection_message(exc: Exception) -> str:
    detail = getattr(exc, "message", "") or str(exc)
    return (f"the server rejected the registration token ({detail}). It is invalid, expired, "
            "revoked or its seats are used up. Fix: mint a new token on the server, set "
            "redflag_agent_registration_token and re-run the playbook (or `redflag-agent "
            "register --token-file FILE`)")


def is_token_rejection(exc: Exception) -> bool:
    """401, or the 400 the server returns when a token could not be consumed."""
    from .client import BadRequest, Unauthorized  # noqa: PLC0415 - urllib/ssl only when needed

    if isinstance(exc, Unauthorized):
        return True
    if isinstance(exc, BadRequest):
        text = (exc.message or "").lower()
        return exc.status == 400 and ("consume" in text or "token" in text or "seat" in text)
    return False


def host_facts() -> dict[str, str]:
    import socket  # noqa: PLC0415 - only when registering

    uname = os.uname()
    os_version = uname.release
    try:
        with open("/etc/os-release", encoding="utf-8") as fh:
            fields = dict(line.rstrip("\n").split("=", 1) for line in fh if "=" in line)
        pretty = fields.get("PRETTY_NAME", "").strip('"')
        if pretty:
            os_version = pretty
    except OSError:
        pass
    return {
        "hostname": socket.gethostname() or uname.nodename,
        "os_type": uname.sysname.lower() or "linux",
        "os_version": os_version,
        "os_architecture": uname.machine,
    }


def metadata_for(cfg: dict[str, Any], migrated_from: Optional[str]) -> dict[str, str]:
    meta: dict[str, str] = {}
    raw = cfg.get("metadata")
    if isinstance(raw, dict):
        meta.update({str(k): str(v) for k, v in raw.items()})
    if cfg.get("display_name"):
        meta["display_name"] = str(cfg["display_name"])
    if cfg.get("organization"):
        meta["organization"] = str(cfg["organization"])
    if migrated_from:
        meta["migrated_from"] = migrated_from
    return meta


def registration_body(cfg: dict[str, Any], facts: dict[str, str],
                      migrated_from: Optional[str]) -> dict[str, Any]:
    body: dict[str, Any] = dict(facts)
    body["agent_version"] = AGENT_VERSION
    body["metadata"] = metadata_for(cfg, migrated_from)
    return body


def apply_registration(cfg: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    """Pure: the config after a successful registration."""
    out = copy.deepcopy(cfg)
    out["agent_id"] = answer["agent_id"]
    out["token"] = answer["token"]
    out["refresh_token"] = answer["refresh_token"]
    out.pop("registration_token", None)
    server_cfg = answer.get("config")
    interval = server_cfg.get("check_in_interval") if isinstance(server_cfg, dict) else None
    # the role manages check_in_interval; take the server's only when the config has none
    if "check_in_interval" not in out and isinstance(interval, int) and not isinstance(
            interval, bool) and interval > 0:
        out["check_in_interval"] = interval
    return out


def perform(client: Client, paths: Paths, token: str, cfg: dict[str, Any],
            log: logging.Logger, *, migrated_from: Optional[str] = None,
            shield: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
            ) -> dict[str, Any]:
    """Register once. Raises TokenRejected, or the client's retryable errors for the caller."""
    from .client import BadRequest, Unauthorized  # noqa: PLC0415

    body = registration_body(cfg, host_facts(), migrated_from)
    try:
        answer = client.register(token, body)
    except (Unauthorized, BadRequest) as exc:
        if is_token_rejection(exc):
            raise TokenRejected(rejection_message(exc)) from None
        raise
    # the request may be interrupted by SIGTERM; the write may not
    with shield(), cfgmod.config_lock(paths):
        # re-read under the lock: `config apply` may have changed other keys meanwhile
        on_disk = cfgmod.read_config(paths.config_file)
        base = on_disk if on_disk is not None else cfg
        new = apply_registration(base, answer)
        cfgmod.save_config(paths, new)
    log.info("registered with %s as agent %s", client.base, new["agent_id"])
    return new
