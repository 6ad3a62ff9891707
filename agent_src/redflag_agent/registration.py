"""Registration: pure decisions, a pure config update, and the thin code that performs it.

An accepted registration spends a seat of the token and creates an agent on the server, so it
must be neither lost nor repeated:
- before calling the server, the config directory must take the new config (a probe file
  is written, fsynced and removed) and the attempt is recorded in a marker file in the state
  directory (when, which server, a fingerprint of the token, pid);
- the marker is removed once the identity is saved, or when the server's answer proves that
  nothing was registered (an error status, a connection that never carried the request,
  SIGTERM while waiting);
- a start that finds a marker and no saved identity stops (exit 78) instead of spending
  another seat: an agent may exist on the server.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from . import config as cfgmod
from .atomic import atomic_write_json, fsync_dir
from .exits import EX_CONFIG, EX_TEMPFAIL
from .owner import chown_to_agent
from .paths import Paths
from .signals import Terminated
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
    fields: dict[str, str] = {}
    try:
        with open("/etc/os-release", encoding="utf-8") as fh:
            # stripped whole: a CRLF or trailing blank would keep the value's quotes
            fields = dict(line.strip().split("=", 1) for line in fh if "=" in line)
        pretty = fields.get("PRETTY_NAME", "").strip('"')
        if pretty:
            os_version = pretty
    except (OSError, UnicodeDecodeError):  # not UTF-8: the kernel's facts still do
        pass
    facts = {
        "hostname": socket.gethostname() or uname.nodename,
        "os_type": uname.sysname.lower() or "linux",
        "os_version": os_version,
        "os_architecture": uname.machine,
    }
    distro = fields.get("ID", "").strip('"') if fields else ""
    if distro:
        facts["os_distro"] = distro
    return facts


def available_scanners() -> list[str]:
    """The package managers this agent can scan (scan.py): 0.1.22+ servers list them."""
    import shutil  # noqa: PLC0415

    return [name for name, tool in (("apt", "apt"), ("dnf", "dnf")) if shutil.which(tool)]


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
                      migrated_from: Optional[str], machine_id: Optional[str] = None,
                      scanners: Optional[list[str]] = None) -> dict[str, Any]:
    body: dict[str, Any] = dict(facts)
    body["agent_version"] = AGENT_VERSION
    body["metadata"] = metadata_for(cfg, migrated_from)
    if machine_id:
        # 0.1.22+ bind the agent to it (CONTRACT 4b); older servers ignore the fields
        body["machine_id"] = machine_id
    if scanners is not None:
        body["available_scanners"] = scanners
    return body


def apply_registration(cfg: dict[str, Any], answer: dict[str, Any],
                       machine_id: Optional[str] = None,
                       token: Optional[str] = None) -> dict[str, Any]:
    """Pure: the config after a successful registration; the machine ID it was registered
    with is recorded next to agent_id (a clone of this config then knows it is one), and a
    fingerprint of the registration token (never the token): the role's evidence that a
    forced re-enrollment with this token already happened."""
    out = copy.deepcopy(cfg)
    out["agent_id"] = answer["agent_id"]
    out["token"] = answer["token"]
    out["refresh_token"] = answer["refresh_token"]
    if machine_id:
        out["machine_id"] = machine_id
    if token:
        out[cfgmod.ENROLLED_TOKEN_KEY] = token_fingerprint(token)
    out.pop("registration_token", None)
    server_cfg = answer.get("config")
    interval = server_cfg.get("check_in_interval") if isinstance(server_cfg, dict) else None
    # the role manages check_in_interval; take the server's only when the config has none
    if "check_in_interval" not in out and isinstance(interval, int) and not isinstance(
            interval, bool) and interval > 0:
        out["check_in_interval"] = interval
    return out


# --- the attempt marker ----------------------------------------------------------------------
ATTEMPT_FILE = "registration_attempt.json"
# room the probe asks for beyond today's config: the identity the answer adds (agent_id, a
# JWT, a refresh token: well under 4 KiB from upstream) with a wide margin
PROBE_MARGIN = 16 * 1024

# what a marker found at start means
NO_ATTEMPT = "none"
STALE_ATTEMPT = "stale"  # the identity was saved; only the marker's removal was lost
SUPERSEDED_ATTEMPT = "superseded"  # the operator gave another token since: enroll with it
PENDING_ATTEMPT = "pending"  # the server may have registered us: stop, do not spend a seat

# what a failed register request means for the server's side
NOT_REGISTERED = "not_registered"
MAYBE_REGISTERED = "maybe_registered"


def attempt_path(paths: Paths) -> Path:
    return paths.state_dir / ATTEMPT_FILE


def token_fingerprint(token: str) -> str:
    """Enough to tell two tokens apart, useless to anyone who wants the token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()[:12]


def attempt_record(server_url: str, token: str, hostname: str, pid: int,
                   started: str) -> dict[str, Any]:
    return {"started": started, "server_url": server_url,
            "token_sha256": token_fingerprint(token), "hostname": hostname, "pid": pid,
            "agent_id": None}


def decide_attempt(attempt: Optional[dict[str, Any]], registered: bool,
                   token: Optional[str]) -> str:
    """Pure: what a start does about a marker left by an earlier registration attempt."""
    if attempt is None:
        return NO_ATTEMPT
    if registered:
        return STALE_ATTEMPT
    recorded = attempt.get("token_sha256")
    if token and isinstance(recorded, str) and recorded and recorded != token_fingerprint(token):
        return SUPERSEDED_ATTEMPT
    return PENDING_ATTEMPT


def request_outcome(exc: BaseException) -> str:
    """Pure: after the register request raised `exc`, may the server have registered us?

    The marker exists for what must never repeat: a registration the server completed
    and the agent could not save. Every ClientError is treated as "not registered" and
    retried (exit 69 for one-shot commands): an error status registered nothing; an answer
    the client refused (too large, too deep, not JSON, a bad agent_id) gives no identity to
    keep, and the issue's rule for refused answers is to retry; a timeout or reset after the
    request was sent is the judgement call: the server answers a registration in
    milliseconds, so no complete answer within network.timeout almost always means it was
    not processed (or the server is hostile), and with the default one-seat token a second
    try cannot create a second agent (the used token is refused: exit 77). A stop (SIGTERM,
    Ctrl-C) is the operator's: keeping the marker would turn every `systemctl stop` during
    an outage into a host that needs a hand. Anything else (a bug) means maybe. The window
    that keeps the marker is the process dying (kill -9, crash) between sending and saving."""
    from .client import ClientError  # noqa: PLC0415

    if isinstance(exc, (Terminated, KeyboardInterrupt, ClientError)):
        return NOT_REGISTERED
    return MAYBE_REGISTERED


def read_attempt(paths: Paths) -> Optional[dict[str, Any]]:
    """The marker's content, None when there is none. An unreadable marker still counts."""
    try:
        with open(attempt_path(paths), "rb") as fh:
            data = fh.read(64 * 1024)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return {"error": f"cannot read {attempt_path(paths)}: {exc.strerror or exc}"}
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {"error": f"{attempt_path(paths)} is not valid JSON"}
    return obj if isinstance(obj, dict) else {"error": f"{attempt_path(paths)} is not an object"}


def write_attempt(paths: Paths, record: dict[str, Any]) -> None:
    atomic_write_json(attempt_path(paths), record, 0o600)
    chown_to_agent(attempt_path(paths))


def clear_attempt(paths: Paths) -> bool:
    """Remove the marker (durably). True when there was one. Through safefs: `config apply`
    calls this as root, and a symlinked state dir must not lead it elsewhere (OSError)."""
    from . import safefs  # noqa: PLC0415

    try:
        if not safefs.remove(attempt_path(paths)):
            return False
    except FileNotFoundError:
        return False
    except safefs.UnsafePath as exc:
        raise OSError(str(exc)) from exc
    fsync_dir(paths.state_dir)
    return True


def pending_message(paths: Paths, attempt: dict[str, Any], why: str) -> str:
    """What the operator must know and do; names no secret."""
    when = attempt.get("started") or "an unknown time"
    server = attempt.get("server_url") or "the server"
    host = attempt.get("hostname") or "this host"
    agent = attempt.get("agent_id")
    who = (f"as agent {agent}" if agent else
           f"(look for hostname {host} registered around {when})")
    marker = attempt_path(paths)
    detail = f" ({attempt['error']})" if attempt.get("error") else ""
    return (f"{why}: a registration with {server} started at {when} (token sha256 "
            f"{attempt.get('token_sha256') or '?'}..., pid {attempt.get('pid') or '?'}) "
            f"never finished{detail}, and no identity is saved. The server may have "
            f"registered this host {who} and spent a seat of the token, so the agent does "
            "not register again on its own. Check the server's agent list; delete that "
            f"agent there if it exists; then remove {marker} and start the agent again, or "
            "give the host a new registration token (re-run the playbook with a fresh "
            "redflag_agent_registration_token and redflag_agent_force_reregister=true)")


# --- can the identity be saved? ----------------------------------------------------------
def probe_room(directory: Path, size: int) -> None:
    """Raise OSError unless `directory` takes a file of `size` bytes right now.

    A real write, fsync and remove: statvfs misjudges quotas, reserved blocks and tmpfs."""
    name = directory / f".config.json.probe.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW,
                 0o600)
    try:
        try:
            # random bytes: zeros may be compressed or left sparse and prove nothing
            view = memoryview(os.urandom(size))
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


# --- errors that stop or pause a registration ---------------------------------------------
class RegistrationStopped(Exception):
    """A registration that must not go on now; `exit_code` for one-shot commands."""

    exit_code = EX_CONFIG


class CannotSave(RegistrationStopped):
    """The identity could not be saved, so the server was not asked. `run` retries later."""

    exit_code = EX_TEMPFAIL

    def __init__(self, directory: Path, error: OSError, what: str) -> None:
        super().__init__(
            f"cannot register yet: {directory} cannot take {what} "
            f"({error.strerror or error}); nothing was sent to the server. Fix: free space "
            f"on the filesystem holding {directory} (or make it writable for the agent)")
        self.directory = directory
        self.error = error


class AttemptPending(RegistrationStopped):
    """An earlier attempt may have registered this host: enrolling again would spend a seat."""

    def __init__(self, message: str, attempt: dict[str, Any]) -> None:
        super().__init__(message)
        self.attempt = attempt


class IdentityUnsaved(RegistrationStopped):
    """The server registered us but the identity could not be written; it lives in `cfg`."""

    def __init__(self, cfg: dict[str, Any], paths: Paths, error: BaseException) -> None:
        reason = getattr(error, "strerror", None) or str(error)
        super().__init__(
            f"the server registered this host as agent {cfg['agent_id']}, but the identity "
            f"could not be saved to {paths.config_file} ({reason}). While this process runs "
            "it is kept in memory; once it ends the identity is lost: free space, and if the "
            f"agent did not save it by then, delete agent {cfg['agent_id']} on the server and "
            f"remove {attempt_path(paths)} before registering again")
        self.cfg = cfg
        self.error = error
        self.reason = reason


# --- performing -------------------------------------------------------------------------
def with_identity(base: dict[str, Any], source: dict[str, Any]) -> dict[str, Any]:
    """Pure: `base` with the identity of `source`, and no registration token beside it."""
    out = copy.deepcopy(base)
    for key in cfgmod.IDENTITY_KEYS:
        if source.get(key):
            out[key] = source[key]
        else:
            out.pop(key, None)
    for key in ("machine_id", cfgmod.ENROLLED_TOKEN_KEY):  # recorded with the identity
        if source.get(key):
            out[key] = source[key]
    out.pop("registration_token", None)
    return out


def _save(paths: Paths, fallback: dict[str, Any],
          build: Callable[[dict[str, Any]], dict[str, Any]],
          shield: Callable[[], Any]) -> dict[str, Any]:
    with shield(), cfgmod.config_lock(paths):
        # re-read under the lock: `config apply` may have changed other keys meanwhile
        on_disk = cfgmod.read_config(paths.config_file)
        new = build(on_disk if on_disk is not None else fallback)
        cfgmod.save_config(paths, new)
    with shield(), contextlib.suppress(OSError):
        # a marker left behind is only stale: the next start sees the identity and drops it
        clear_attempt(paths)
    return new


class IdentityChanged(Exception):
    """config.json holds another identity than the one an unsaved identity replaces."""


def save_identity(paths: Paths, cfg: dict[str, Any], shield: Callable[[], Any]
                  = contextlib.nullcontext,
                  replaces: Optional[tuple[str, str]] = None) -> dict[str, Any]:
    """Write cfg's identity into the config on disk, then drop the attempt marker.

    `replaces` (agent_id, refresh_token): write only over that identity (or cfg's own), as
    for rotated tokens; otherwise IdentityChanged and nothing is written. Raises OSError or
    ConfigError when the config cannot be written."""
    def build(base: dict[str, Any]) -> dict[str, Any]:
        if replaces is not None:
            found = (base.get("agent_id"), base.get("refresh_token"))
            if found not in (replaces, (cfg.get("agent_id"), cfg.get("refresh_token"))):
                raise IdentityChanged(f"{paths.config_file} now holds another identity "
                                      f"(agent {base.get('agent_id')})")
        return with_identity(base, cfg)

    return _save(paths, {} if replaces is not None else cfg, build, shield)


def _note_agent_id(paths: Paths, record: dict[str, Any], agent_id: str,
                   log: logging.Logger) -> None:
    """Best effort: tell a later start which agent the server created."""
    try:
        write_attempt(paths, dict(record, agent_id=agent_id))
    except OSError as exc:
        log.warning("cannot note agent %s in %s: %s", agent_id, attempt_path(paths),
                    exc.strerror or exc)


def _clear_after_refusal(paths: Paths, log: logging.Logger,
                         shield: Callable[[], Any]) -> None:
    with shield():
        try:
            clear_attempt(paths)
        except OSError as exc:
            # the next start would take this for an unfinished attempt and stop: say so
            log.error("cannot remove %s (%s); nothing was registered: remove it by hand",
                      attempt_path(paths), exc.strerror or exc)


def perform(client: Client, paths: Paths, token: str, cfg: dict[str, Any],
            log: logging.Logger, *, migrated_from: Optional[str] = None,
            shield: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
            ) -> dict[str, Any]:
    """Register once and save the identity.

    Raises TokenRejected; the client's retryable errors (nothing registered); CannotSave
    (nothing sent); AttemptPending (an earlier or this attempt may have registered: stop);
    IdentityUnsaved (registered, kept in memory: the caller decides)."""
    from . import binding  # noqa: PLC0415
    from .client import (  # noqa: PLC0415
        BadRequest,
        BindingRefused,
        MachineConflict,
        Unauthorized,
        UpgradeRequired,
    )
    from .migration.faults import crash_point  # noqa: PLC0415

    attempt = read_attempt(paths)
    verdict = decide_attempt(attempt, cfgmod.is_registered(cfg), token)
    if verdict == PENDING_ATTEMPT:
        assert attempt is not None  # noqa: S101 - decide_attempt says so
        raise AttemptPending(pending_message(paths, attempt, "not registering again"), attempt)
    if verdict == SUPERSEDED_ATTEMPT:
        log.warning("an unfinished registration (started %s with another token) is set "
                    "aside: a new registration token was given; registering with it",
                    (attempt or {}).get("started"))
        _clear_after_refusal(paths, log, shield)
    facts = host_facts()
    machine_id = getattr(client, "machine_id", None)
    body = registration_body(cfg, facts, migrated_from, machine_id, available_scanners())
    try:
        probe_room(paths.config_dir, len(cfgmod.serialize(cfg)) + PROBE_MARGIN)
    except OSError as exc:
        raise CannotSave(paths.config_dir, exc, "the new config") from None
    record = attempt_record(client.base, token, facts["hostname"], os.getpid(),
                            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    try:
        with shield():
            write_attempt(paths, record)
    except OSError as exc:
        raise CannotSave(paths.state_dir, exc, "the registration attempt record") from None
    except Terminated:
        # stopped while recording (the shield deferred it): nothing was sent
        with contextlib.suppress(OSError):
            clear_attempt(paths)
        raise
    try:
        answer = client.register(token, body)
    except BaseException as exc:
        if request_outcome(exc) == MAYBE_REGISTERED:
            raise AttemptPending(pending_message(
                paths, record, f"the registration's outcome is unknown ({exc})"),
                record) from None
        _clear_after_refusal(paths, log, shield)
        if isinstance(exc, (Unauthorized, BadRequest)) and is_token_rejection(exc):
            raise TokenRejected(rejection_message(exc)) from None
        # answers no retry changes: stop, one request per start
        if isinstance(exc, MachineConflict):
            raise binding.conflict_refusal(exc, machine_id) from None
        if isinstance(exc, UpgradeRequired):
            raise binding.upgrade_refusal(exc) from None
        if isinstance(exc, BindingRefused):
            raise binding.binding_refusal(exc, None, machine_id) from None
        raise
    # test-only (inert on a production root): a kill -9 right after the server's answer
    crash_point(paths, "register", "answered")
    try:
        new = _save(paths, cfg, lambda base: apply_registration(base, answer, machine_id, token),
                    shield)
    except (OSError, cfgmod.ConfigError) as exc:
        unsaved = apply_registration(cfg, answer, machine_id, token)
        _note_agent_id(paths, record, str(unsaved["agent_id"]), log)
        raise IdentityUnsaved(unsaved, paths, exc) from None
    log.info("registered with %s as agent %s", client.base, new["agent_id"])
    return new
