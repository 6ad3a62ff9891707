"""`run`: lock -> migrate if needed -> load config -> register if needed -> check in forever.

The order matters: an unregistered host without a token must exit 78 having written nothing,
so nothing is created before we know there is work to do.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

from . import backoff, binding, logs, registration
from . import config as cfgmod
from .exits import EX_CONFIG, EX_NOPERM, EX_OK, EX_TEMPFAIL, EX_UNAVAILABLE
from .lock import InstanceLock, LockHeld
from .owner import chown_to_agent
from .paths import Paths
from .signals import Terminated, Terminator
from .status import StatusFile, utc_now

if TYPE_CHECKING:
    from .checkin import Agent
    from .client import Client

# The HTTP client (urllib, ssl) and the check-in loop are imported only once the agent knows
# it has work: a start that ends in 78 (the restart-storm case) stays cheap.

__all__ = ["EX_CONFIG", "EX_NOPERM", "EX_OK", "EX_TEMPFAIL", "EX_UNAVAILABLE", "Runner",
           "backoff_settings", "make_client"]


def backoff_settings(paths: Paths, environ: Optional[dict[str, str]] = None) -> tuple[float, float]:
    """Tests may shorten the backoff, but never on a production root."""
    env = os.environ if environ is None else environ
    if paths.is_production:
        return backoff.DEFAULT_BASE, backoff.DEFAULT_CAP
    try:
        base = float(env.get("REDFLAG_BACKOFF_BASE", backoff.DEFAULT_BASE))
        cap = float(env.get("REDFLAG_BACKOFF_CAP", backoff.DEFAULT_CAP))
    except ValueError:
        return backoff.DEFAULT_BASE, backoff.DEFAULT_CAP
    return base, cap


def make_client(cfg: dict[str, Any], machine_id: Optional[str] = None) -> Client:
    from .client import Client  # noqa: PLC0415 - see the note on imports above

    network = cfg.get("network") if isinstance(cfg.get("network"), dict) else {}
    timeout = cfgmod.duration_seconds(network.get("timeout") or 30)  # type: ignore[union-attr]
    return Client(str(cfg["server_url"]), timeout=timeout,
                  proxy=cfg.get("proxy") if isinstance(cfg.get("proxy"), dict) else None,
                  tls=cfg.get("tls") if isinstance(cfg.get("tls"), dict) else None,
                  machine_id=machine_id)


class LockRefused(Exception):
    """The state dir is not a real directory (InstanceLock.refused): never run unlocked."""


def identity_left_behind(paths: Paths, log: logging.Logger) -> Optional[str]:
    from . import migration  # noqa: PLC0415 - only on the way to registering
    try:
        return migration.identity_left_behind(paths)
    except Exception as exc:  # a check, never fatal: registering stays possible
        log.warning("cannot check for an identity the migration left behind: %s", exc)
        return None


def left_behind_message(left: str) -> str:
    """Pure: why `run` does not register while an identity waits in `left`."""
    return (f"a usable agent identity is in {left}, but no migration will take it over (its "
            "phase is recorded as done, was given up, or the file cannot be migrated: see the "
            "error above); registering now would put a second agent on the server. Fix: fix "
            "that file, or run `redflag-agent migrate --retry-failed` as root to take it over, "
            f"or move {left} away if that identity is stale; then start again")


def migrated_from_metadata(paths: Paths, log: logging.Logger) -> Optional[str]:
    from . import migration  # noqa: PLC0415 - the one subpackage the runner may defer
    try:
        return migration.migrated_from(paths)
    except Exception as exc:  # metadata only; never fatal
        log.warning("cannot read migration state for metadata: %s", exc)
        return None


class Runner:
    def __init__(self, paths: Paths, log: logging.Logger, terminator: Terminator, *,
                 rand: Callable[[], float] = random.random,
                 environ: Optional[dict[str, str]] = None) -> None:
        self.paths = paths
        self.log = log
        self.term = terminator
        self.rand = rand
        self.backoff_base, self.backoff_cap = backoff_settings(paths, environ)
        self.lock = InstanceLock(paths.state_dir)
        self.reg_log = logs.get("registration")
        self.status: Optional[StatusFile] = None
        # an identity the server gave us that is not on disk yet (see retry_identity_save)
        self.unsaved: Optional[dict[str, Any]] = None
        self.unsaved_since = ""
        self.unsaved_attempt = 0
        self.unsaved_next = 0.0
        # "registration", or "rotation": then only written over `unsaved_replaces`
        # (agent_id, refresh token renewed with), never over another identity
        self.unsaved_kind = "registration"
        self.unsaved_replaces: Optional[tuple[str, str]] = None

    def _acquire(self) -> None:
        self.lock.acquire()
        if self.lock.refused:
            raise LockRefused(self.lock.refused)

    def _ensure_state_dir_locked(self) -> None:
        """Create the state dir only once there is real work, then lock it."""
        if self.lock.held:
            return
        if not os.path.lexists(self.paths.state_dir):
            with self.term.shielded():
                self.paths.state_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
                chown_to_agent(self.paths.state_dir)
        self._acquire()  # a planted object there: LockRefused

    def _drop_stale_attempt(self) -> None:
        """The identity is saved: a marker left beside it only lost its removal."""
        attempt = registration.read_attempt(self.paths)
        if attempt is None:
            return
        try:
            with self.term.shielded():
                registration.clear_attempt(self.paths)
        except OSError as exc:
            self.log.warning("cannot remove the finished registration record %s: %s",
                             registration.attempt_path(self.paths), exc.strerror or exc)
            return
        self.log.info("the registration started at %s finished (the identity is saved); "
                      "removed its record", attempt.get("started"))

    def _record_exit(self, reason: str, error: Optional[str] = None) -> None:
        if self.status is None or not self.lock.held:
            return
        changes: dict[str, Any] = {"last_exit_reason": f"{utc_now()} {reason}"}
        if error is not None:
            changes["last_error"] = f"{utc_now()} {error}"
        self.status.update(**changes)

    def _stop_with_unsaved_identity(self) -> None:
        if self.unsaved is None:
            return
        cfg = self.unsaved
        self.retry_identity_save(cfg, force=True)  # one last try: the space may be back
        if self.unsaved is not None and self.unsaved_kind == "rotation":
            self.reg_log.error(
                "stopping with the rotated refresh token of agent %s unsaved: the next start "
                "renews with the previous one, which the server accepts once (grace replay); "
                "free space on %s before that", cfg["agent_id"], self.paths.config_dir)
        elif self.unsaved is not None:
            self.reg_log.error(
                "stopping with the identity of agent %s still unsaved: it is lost. The next "
                "start stops (exit 78) instead of registering again; delete agent %s on the "
                "server, free space on %s, then remove %s", cfg["agent_id"], cfg["agent_id"],
                self.paths.config_dir, registration.attempt_path(self.paths))

    def run(self) -> int:
        try:
            code = self._run()
            # any exit (77, 78, a refusal) with an identity still in memory: one last save
            self._stop_with_unsaved_identity()
            return code
        except LockHeld as exc:
            self.log.error("%s", exc)
            return EX_TEMPFAIL
        except LockRefused as exc:
            self.log.error("not starting: the instance lock cannot be taken: %s. Fix: remove "
                           "it and re-run the playbook (it creates %s as a directory owned by "
                           "redflag-agent)", exc, self.paths.state_dir)
            return EX_CONFIG
        except Terminated as exc:
            self.log.info("stopping on %s", exc)
            self._stop_with_unsaved_identity()
            self._record_exit(f"stopped by {exc}")
            return EX_OK
        finally:
            self.lock.release()

    def _run(self) -> int:
        if self.paths.state_dir.is_dir():
            self._acquire()
        from . import migration  # noqa: PLC0415 - keeps `version`/`status` start-up light

        try:
            plan = migration.plan(self.paths)
        except Exception as exc:
            # a bug or unreadable state must not become a restart loop: run on what we have
            self.log.error("cannot decide whether a migration is needed (%s: %s); starting "
                           "without migrating", type(exc).__name__, exc)
            plan = None
        if plan is not None and (plan.error or plan.blocked):
            # the agent still starts on what it has; the operator must hear why nothing migrates
            self.log.error("%s", plan.describe())
        if plan is not None and plan.phases:
            self._ensure_state_dir_locked()
            self.log.info("%s", plan.describe())  # describe() starts "migration needed: "
            try:
                with self.term.shielded():
                    report = migration.execute(self.paths, self.log.getChild("migration"))
            except Exception as exc:
                self.log.exception("migration crashed: %s: %s", type(exc).__name__, exc)
                report = None
            if report is None or not report.ok:
                if report is not None:
                    self.log.error("migration failed: %s", report.message)
                if report is not None and not report.config_usable:
                    return EX_CONFIG
                self.log.warning("starting with the current config if it is usable")
        try:
            cfg = cfgmod.read_config(self.paths.config_file)
        except cfgmod.ConfigError as exc:
            self.log.error("cannot use the config: %s", exc)
            return EX_CONFIG
        if cfg is None:
            self.log.error("no config at %s: install the agent with the playbook (it writes "
                           "server_url and the registration token) or `redflag-agent config "
                           "apply`", self.paths.config_file)
            return EX_CONFIG
        if not isinstance(cfg.get("server_url"), str) or not cfg["server_url"].strip():
            self.log.error("%s has no server_url: set redflag_agent_server_url in the playbook "
                           "(or `redflag-agent register --server URL`)", self.paths.config_file)
            return EX_CONFIG
        logging_cfg = cfg.get("logging")
        if isinstance(logging_cfg, dict) and not os.environ.get("REDFLAG_LOG_LEVEL"):
            logs.set_level(logging_cfg.get("level"))
        if cfgmod.needs_schema_upgrade(cfg):
            # migration did not (or could not) upgrade it: run on an in-memory upgrade
            cfg = cfgmod.upgrade_to_current(cfg)
        decision = registration.decide_registration(
            cfg, token_available=bool(cfg.get("registration_token")))
        if decision.action == registration.CANNOT_REGISTER:
            self.log.error("%s", registration.missing_token_message(self.paths))
            return EX_CONFIG
        if decision.action == registration.REGISTER:
            left = identity_left_behind(self.paths, self.log)
            if left is not None:
                self.log.error("%s", left_behind_message(left))
                return EX_CONFIG
        host = binding.host_machine_id(self.paths)
        try:
            client = make_client(cfg, host.value)
        except (ValueError, OSError) as exc:
            self.log.error("%s: %s", self.paths.config_file, exc)
            return EX_CONFIG
        self._ensure_state_dir_locked()
        self.status = StatusFile(self.paths, self.log)
        with self.term.shielded():
            # an identity a previous process held in memory died with it
            self.status.update(identity_unsaved=None)
        adopt: Optional[str] = None
        if decision.action == registration.REGISTERED:
            verdict = binding.decide_identity(cfg.get("machine_id"), host.value,
                                              bool(cfg.get("registration_token")))
            if verdict.action == binding.CLONE_STOP:
                message = binding.clone_message(cfg, host, self.paths)
                self.log.error("%s", message)
                with self.term.shielded():
                    self._record_exit("exit 78: identity of another machine", message)
                return EX_CONFIG
            if verdict.action == binding.CLONE_ENROLL:
                # enrolling anew: not while a usable identity waits in a layout the
                # migration has not taken over (it may be this host's own)
                left = identity_left_behind(self.paths, self.log)
                if left is not None:
                    self.log.error("%s", left_behind_message(left))
                    return EX_CONFIG
                stripped = self._set_aside(cfg, host)
                if isinstance(stripped, int):
                    return stripped
                cfg = stripped
                decision = registration.Decision(registration.REGISTER, verdict.reason)
            else:
                self._drop_stale_attempt()
                if verdict.action == binding.ADOPT:
                    adopt = host.value
                    self.log.info("%s", verdict.reason)
        migrated_from = migrated_from_metadata(self.paths, self.log)

        try:
            if decision.action == registration.REGISTER:
                cfg = self._register_until_done(client, cfg, migrated_from)
            agent = agent_class(self)(
                self.paths, cfg, client, logs.get("checkin"), terminator=self.term,
                status=self.status, migrated_from=migrated_from, rand=self.rand,
                backoff_base=self.backoff_base, backoff_cap=self.backoff_cap,
                adopt_machine_id=adopt)
            self.log.info("agent %s checking in with %s every %s s", agent.agent_id,
                          client.base, cfg.get("check_in_interval")
                          or cfgmod.DEFAULT_CHECK_IN_INTERVAL)
            agent.loop()
        except registration.TokenRejected as exc:
            self.log.error("%s", exc)
            with self.term.shielded():
                self._record_exit("exit 77: token rejected", str(exc))
            return EX_NOPERM
        except registration.AttemptPending as exc:
            self.log.error("%s", exc)
            with self.term.shielded():
                self._record_exit("exit 78: unfinished registration attempt", str(exc))
            return EX_CONFIG
        except binding.Refused as exc:
            self.log.error("%s", exc)
            with self.term.shielded():
                self._record_exit(f"exit {exc.exit_code}: refused by the server", str(exc))
            return exc.exit_code
        except cfgmod.ConfigError as exc:
            self.log.error("cannot use the config: %s", exc)
            return EX_CONFIG
        return EX_OK  # pragma: no cover - loop() only leaves by exception

    def _set_aside(self, cfg: dict[str, Any], host: Any) -> Any:
        """A copied identity and a token: keep the identity in a backup, drop it from the
        config, return the config to enroll with (or an exit code)."""
        reason = (f"registered on another machine (recorded machine ID "
                  f"{cfg.get('machine_id')}); this host ({host.value}) enrolls as a new agent")
        attempt = 0
        while True:
            try:
                backup = binding.set_aside(self.paths, cfg, host, reason, self.term.shielded)
                break
            except cfgmod.ConfigError as exc:
                self.log.error("cannot set the copied identity aside: %s", exc)
                return EX_CONFIG
            except OSError as exc:
                delay = backoff.retry_delay(attempt, self.rand(), self.backoff_base,
                                            self.backoff_cap)
                attempt += 1
                self.log.error("cannot set the copied identity of agent %s aside (%s); nothing "
                               "was changed; retry %d in %.1f s", cfg.get("agent_id"),
                               exc.strerror or exc, attempt, delay)
                self.term.sleep(delay)
        if backup is None:
            self.log.error("%s changed while the agent started (another identity is there "
                           "now); starting again", self.paths.config_file)
            return EX_TEMPFAIL
        self.log.warning("the identity of agent %s was registered on another machine (this "
                         "host is a clone): set aside in %s; enrolling this host as a new "
                         "agent with the registration token", cfg.get("agent_id"), backup)
        return binding.without_identity(cfg)

    def _register_until_done(self, client: Client, cfg: dict[str, Any],
                             migrated_from: Optional[str]) -> dict[str, Any]:
        """Register, retrying what registered nothing; never twice in one start."""
        from .client import ClientError  # noqa: PLC0415

        attempt = 0
        token = str(cfg["registration_token"])
        while True:
            try:
                return registration.perform(client, self.paths, token, cfg, self.reg_log,
                                            migrated_from=migrated_from,
                                            shield=self.term.shielded)
            except registration.IdentityUnsaved as exc:
                self._identity_unsaved(exc)
                return exc.cfg
            except (ClientError, registration.CannotSave) as exc:
                delay = backoff.retry_delay(attempt, self.rand(), self.backoff_base,
                                            self.backoff_cap, getattr(exc, "retry_after", None))
                attempt += 1
                log = (self.reg_log.error if isinstance(exc, registration.CannotSave)
                       else self.reg_log.warning)
                log("registration failed: %s; retry %d in %.1f s (at %s)", exc, attempt, delay,
                    time.strftime("%H:%M:%S", time.gmtime(time.time() + delay)))
                if self.status is not None:
                    with self.term.shielded():
                        self.status.update(last_error=f"{utc_now()} registration: {exc}")
                self.term.sleep(delay)

    # --- an accepted registration whose identity is not on disk yet ------------------------
    def _identity_unsaved(self, exc: registration.IdentityUnsaved) -> None:
        self.keep_unsaved(exc.cfg, exc.reason)
        self.reg_log.error("%s; checking in with the identity in memory and retrying the save "
                           "before check-ins, backing off up to %.0f s between tries", exc,
                           self.backoff_cap)

    def keep_unsaved(self, cfg: dict[str, Any], reason: str, kind: str = "registration",
                     replaces: Optional[tuple[str, str]] = None) -> None:
        """Hold an identity the server gave us in memory and retry its save (both after a
        registration and after a rotated refresh token: one mechanism)."""
        self.unsaved = cfg
        self.unsaved_kind = kind
        self.unsaved_replaces = replaces
        self.unsaved_since = utc_now()
        self.unsaved_attempt = 0
        self._schedule_save_retry()
        self._record_unsaved(reason)

    def _schedule_save_retry(self) -> None:
        delay = backoff.retry_delay(self.unsaved_attempt, self.rand(), self.backoff_base,
                                    self.backoff_cap)
        self.unsaved_attempt += 1
        self.unsaved_next = time.monotonic() + delay

    def _record_unsaved(self, reason: str) -> None:
        if self.status is None or self.unsaved is None:
            return
        error = (f"identity of agent {self.unsaved['agent_id']} not saved to "
                 f"{self.paths.config_file}: {reason}")
        with self._shield():
            self.status.update(
                identity_unsaved={"agent_id": self.unsaved["agent_id"],
                                  "since": self.unsaved_since, "error": reason,
                                  "kind": self.unsaved_kind},
                last_error=f"{utc_now()} {self.unsaved_kind}: {error}")

    def retry_identity_save(self, cfg: dict[str, Any], force: bool = False) -> None:
        """Called before each check-in (and at stop) while the identity is only in memory."""
        if self.unsaved is None or (not force and time.monotonic() < self.unsaved_next):
            return
        try:
            registration.save_identity(self.paths, cfg, self._shield, self.unsaved_replaces)
        except registration.IdentityChanged as exc:
            self.reg_log.warning("not saving the tokens of agent %s: %s (changed by `config "
                                 "apply` or a re-enrollment); they stay in memory for this "
                                 "process only", cfg["agent_id"], exc)
            self._saved()
            return
        except (OSError, cfgmod.ConfigError) as exc:
            self._schedule_save_retry()
            reason = getattr(exc, "strerror", None) or str(exc)
            self.reg_log.warning("still cannot save the identity of agent %s to %s (%s); "
                                 "retry %d in %.1f s", cfg["agent_id"], self.paths.config_file,
                                 reason, self.unsaved_attempt,
                                 max(0.0, self.unsaved_next - time.monotonic()))
            self._record_unsaved(reason)
            return
        self.reg_log.info("identity of agent %s saved to %s (kept in memory since %s)",
                          cfg["agent_id"], self.paths.config_file, self.unsaved_since)
        self._saved()

    def _saved(self) -> None:
        self.unsaved = None
        self.unsaved_replaces = None
        if self.status is not None:
            with self._shield():
                self.status.update(identity_unsaved=None, last_error=None)

    def _shield(self) -> contextlib.AbstractContextManager[Any]:
        # once stopping (the last save try at stop), a shield would only raise again on exit
        return contextlib.nullcontext() if self.term.stopping else self.term.shielded()


def agent_class(runner: Runner) -> type[Agent]:
    """The check-in Agent, trying to save an in-memory identity before each check-in."""
    from .checkin import Agent  # noqa: PLC0415 - see the note on imports above

    class SavingAgent(Agent):
        def check_in_once(self) -> list[dict[str, Any]]:
            runner.retry_identity_save(self.cfg)
            return super().check_in_once()

        def save_tokens(self, renewed_with: str, rotated: bool) -> None:
            if runner.unsaved is self.cfg:
                # the identity held in memory holds the new tokens too: save it all now
                runner.retry_identity_save(self.cfg, force=True)
                return
            super().save_tokens(renewed_with, rotated)

        def tokens_unsaved(self, renewed_with: str, reason: str) -> None:
            super().tokens_unsaved(renewed_with, reason)
            runner.keep_unsaved(self.cfg, reason, "rotation", (self.agent_id, renewed_with))

    return SavingAgent
