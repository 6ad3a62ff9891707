"""The check-in loop: metrics, token renewal, commands (scan_updates), retry with backoff."""

from __future__ import annotations

import logging
import math
import os
import random
import re
import time
from typing import Any, Callable, Optional

from . import backoff, binding
from . import config as cfgmod
from .client import (
    BindingRefused,
    Client,
    ClientError,
    NotFound,
    ServerError,
    Unauthorized,
    UpgradeRequired,
)
from .logs import clean
from .paths import Paths
from .registration import TokenRejected, metadata_for
from .signals import Terminator
from .status import StatusFile, utc_now
from .version import AGENT_VERSION

GIB = 1024 ** 3
KNOWN_UNSUPPORTED = {"collect_specs", "install_updates", "dry_run_update",
                     "confirm_dependencies", "enable_heartbeat", "disable_heartbeat",
                     "update_agent", "reboot"}
MAX_RAPID_SECONDS = 3600.0  # rapid polling is asked for minutes; an hour at most
MAX_SLEEP = 24 * 3600.0  # threading's wait overflows near 2^33 s; check in at least daily
MAX_COMMANDS = 100  # per check-in answer; the rest waits for the next one
MAX_COMMAND_ID = 128
MAX_COMMAND_TYPE = 64
_COMMAND_ID = re.compile(r"[\x21-\x7e]+")  # printable ASCII: it goes back as command_id


def _cpu_sample() -> Optional[tuple[int, int]]:
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return idle, sum(fields)


def cpu_percent(prev: Optional[tuple[int, int]], cur: Optional[tuple[int, int]]) -> float:
    if prev is None or cur is None or cur[1] <= prev[1]:
        return 0.0
    didle, dtotal = cur[0] - prev[0], cur[1] - prev[1]
    return round(max(0.0, min(100.0, 100.0 * (1.0 - didle / dtotal))), 1)


def parse_meminfo(text: str) -> dict[str, float]:
    kib = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            kib[parts[0].rstrip(":")] = int(parts[1])
    total = kib.get("MemTotal", 0) * 1024
    avail = kib.get("MemAvailable", kib.get("MemFree", 0)) * 1024
    used = max(0, total - avail)
    return {
        "memory_total_gb": round(total / GIB, 2),
        "memory_used_gb": round(used / GIB, 2),
        "memory_percent": round(100.0 * used / total, 1) if total else 0.0,
    }


def host_metrics(prev_cpu: Optional[tuple[int, int]]) -> tuple[dict[str, Any], Any]:
    metrics: dict[str, Any] = {}
    cur = _cpu_sample()
    metrics["cpu_percent"] = cpu_percent(prev_cpu, cur)
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            metrics.update(parse_meminfo(fh.read()))
    except OSError:
        pass
    try:
        st = os.statvfs("/")
        total, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
        metrics["disk_total_gb"] = round(total / GIB, 2)
        metrics["disk_used_gb"] = round((total - free) / GIB, 2)
        metrics["disk_percent"] = round(100.0 * (total - free) / total, 1) if total else 0.0
    except OSError:
        pass
    try:
        with open("/proc/uptime", encoding="ascii") as fh:
            metrics["uptime"] = int(float(fh.read().split()[0]))
    except (OSError, ValueError, IndexError):
        pass
    return metrics, cur


_RFC3339 = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.\d{1,9})?"
                      r"(Z|[+-]\d{2}:\d{2})?", re.I)


def parse_until(value: Any) -> Optional[float]:
    """RFC 3339 timestamp -> epoch seconds, None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    from datetime import datetime, timedelta, timezone  # noqa: PLC0415 - rarely needed

    match = _RFC3339.fullmatch(value[:64].strip())
    if match is None:
        return None
    try:
        parsed = datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return None
    offset = match.group(2)
    shift = timedelta(0)
    if offset and offset.upper() != "Z":
        sign = -1 if offset[0] == "-" else 1
        shift = sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6]))
    try:
        return (parsed.replace(tzinfo=timezone.utc) - shift).timestamp()
    except (OverflowError, ValueError):
        return None


RapidWindow = tuple[str, float]  # (the server's `until` text, monotonic end)


def rapid_window(rapid: Any, wall_now: float, mono_now: float,
                 previous: Optional[RapidWindow]) -> Optional[RapidWindow]:
    """Pure: when rapid polling ends, on the monotonic clock, or None for no rapid polling.

    It lasts what the server asked for, counted from receipt (until - wall clock now), never
    more than MAX_RAPID_SECONDS, and a repeat of the same request does not extend it: a
    skewed or hostile timestamp cannot keep the agent polling fast, and a wall-clock jump
    after receipt changes nothing."""
    if not isinstance(rapid, dict) or rapid.get("enabled") is not True:
        return None
    text = rapid.get("until")
    until = parse_until(text)
    if until is None:
        return None
    if previous is not None and previous[0] == text:
        return previous
    seconds = min(until - wall_now, MAX_RAPID_SECONDS)
    if not seconds > 0:
        return None
    return str(text), mono_now + seconds


def interval_seconds(value: Any) -> float:
    """Pure: the configured check-in interval as a sleep the loop can do (1 s .. MAX_SLEEP)."""
    if isinstance(value, bool) or value is None:
        return float(cfgmod.DEFAULT_CHECK_IN_INTERVAL)
    try:
        seconds = float(value)
    except OverflowError:  # an int beyond any float
        return MAX_SLEEP
    except (TypeError, ValueError):
        return float(cfgmod.DEFAULT_CHECK_IN_INTERVAL)
    if math.isnan(seconds) or seconds <= 0:
        return float(cfgmod.DEFAULT_CHECK_IN_INTERVAL)
    return max(1.0, min(seconds, MAX_SLEEP))


def command_problem(item: Any) -> Optional[str]:
    """Pure: why a check-in command cannot be used, or None."""
    if not isinstance(item, dict):
        return "not a JSON object"
    cid, kind, params = item.get("id"), item.get("type"), item.get("params")
    if not isinstance(cid, str) or not cid:
        return "id is missing or not a string"
    if len(cid) > MAX_COMMAND_ID or not _COMMAND_ID.fullmatch(cid):
        return (f"id {clean(cid, 64)!s} is not printable ASCII of at most "
                f"{MAX_COMMAND_ID} characters")
    if not isinstance(kind, str) or not kind:
        return f"command {cid}: type is missing or not a string"
    if len(kind) > MAX_COMMAND_TYPE:
        return f"command {cid}: type is longer than {MAX_COMMAND_TYPE} characters"
    if params is not None and not isinstance(params, dict):
        return f"command {cid}: params is not a JSON object"
    return None


def valid_commands(raw: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """Pure: the usable commands of a check-in answer, and why each other one was skipped."""
    if raw is None:
        return [], []
    if not isinstance(raw, list):
        return [], ["'commands' is not a list"]
    good: list[dict[str, Any]] = []
    skipped: list[str] = []
    for index, item in enumerate(raw):
        if index >= MAX_COMMANDS:
            skipped.append(f"{len(raw) - index} commands beyond the first {MAX_COMMANDS}")
            break
        problem = command_problem(item)
        if problem is None:
            good.append(dict(item, params=item.get("params") or {}))
        else:
            skipped.append(f"command #{index}: {problem}")
    return good, skipped


def subprocess_error() -> type[Exception]:
    import subprocess  # noqa: PLC0415

    return subprocess.SubprocessError


class Agent:
    """One registered agent talking to its server. Raises TokenRejected or Terminated."""

    def __init__(self, paths: Paths, cfg: dict[str, Any], client: Client,
                 log: logging.Logger, *, terminator: Terminator, status: StatusFile,
                 migrated_from: Optional[str] = None, rand: Callable[[], float] = random.random,
                 backoff_base: float = backoff.DEFAULT_BASE,
                 backoff_cap: float = backoff.DEFAULT_CAP,
                 lister: Optional[Callable[[], list[dict[str, Any]]]] = None,
                 adopt_machine_id: Optional[str] = None) -> None:
        self.paths = paths
        self.cfg = cfg
        self.client = client
        self.log = log
        self.term = terminator
        self.status = status
        self.migrated_from = migrated_from
        self.rand = rand
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.lister = lister
        self._cpu = _cpu_sample()
        self._rapid: Optional[RapidWindow] = None
        # an identity with no machine ID recorded: record this host's once the server accepts
        # a call with it (see binding.decide_identity)
        self.adopt_machine_id = adopt_machine_id

    @property
    def agent_id(self) -> str:
        return str(self.cfg["agent_id"])

    # --- tokens --------------------------------------------------------------------------
    def refusal(self, exc: ClientError) -> binding.Refused:
        if isinstance(exc, BindingRefused):
            return binding.binding_refusal(exc, self.agent_id,
                                           getattr(self.client, "machine_id", None))
        assert isinstance(exc, UpgradeRequired)  # noqa: S101 - the only other caller's type
        return binding.upgrade_refusal(exc)

    def renew(self) -> str:
        renewed_with = str(self.cfg["refresh_token"])
        try:
            renewed = self.client.renew(self.agent_id, renewed_with)
        except (BindingRefused, UpgradeRequired) as exc:
            raise self.refusal(exc) from None
        except (Unauthorized, NotFound) as exc:
            raise TokenRejected(binding.renew_rejected_message(
                self.agent_id, getattr(exc, "message", "") or str(exc))) from None
        if not self.paths.is_production:
            from .migration.faults import crash_point  # noqa: PLC0415 - test-only

            # a kill -9 after the server rotated the refresh token, before it is saved
            crash_point(self.paths, "renew", "answered")
        self.cfg["token"] = renewed.token
        if renewed.refresh_token is not None:
            self.cfg["refresh_token"] = renewed.refresh_token
        # saved before the new access token is used: a rotated refresh token lost here
        # costs the identity at the next renewal (only one grace replay on the server)
        self.save_tokens(renewed_with, renewed.refresh_token is not None)
        self.log.info("access token renewed for agent %s%s", self.agent_id,
                      " (refresh token rotated)" if renewed.refresh_token else "")
        return renewed.token

    def save_tokens(self, renewed_with: str, rotated: bool) -> None:
        """Write the renewed tokens over the identity they belong to (never another)."""
        try:
            with self.term.shielded(), cfgmod.config_lock(self.paths):
                on_disk = cfgmod.read_config(self.paths.config_file)
                verdict = binding.token_save_decision(on_disk, self.agent_id, renewed_with,
                                                      rotated)
                if verdict == binding.SAVE:
                    assert on_disk is not None  # noqa: S101 - SAVE says so
                    on_disk["token"] = self.cfg["token"]
                    if rotated:
                        on_disk["refresh_token"] = self.cfg["refresh_token"]
                    cfgmod.save_config(self.paths, on_disk)
        except (OSError, cfgmod.ConfigError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            if rotated:
                self.tokens_unsaved(renewed_with, reason)
            else:
                self.log.warning("cannot save the renewed access token to %s (%s); it is "
                                 "renewed again when needed", self.paths.config_file, reason)
            return
        if verdict != binding.SAVE:
            self.log.warning("%s now holds another identity than agent %s (changed by `config "
                             "apply` or a re-enrollment); the renewed tokens stay in memory "
                             "for this process only", self.paths.config_file, self.agent_id)

    def tokens_unsaved(self, renewed_with: str, reason: str) -> None:
        """A rotated refresh token could not be saved. The runner keeps it and retries."""
        self.log.error("cannot save the rotated refresh token of agent %s to %s (%s); if the "
                       "agent stops before it is saved, its next renewal relies on the "
                       "server's one grace replay", self.agent_id, self.paths.config_file,
                       reason)

    def record_machine_id(self) -> None:
        """After the server accepted a call with X-Machine-ID: record it with the identity."""
        machine_id = self.adopt_machine_id
        if not machine_id:
            return
        try:
            kept = binding.record_machine_id(self.paths, self.agent_id, machine_id,
                                             self.term.shielded)
        except (OSError, cfgmod.ConfigError) as exc:
            self.log.warning("cannot record machine ID %s with agent %s in %s (%s); retrying "
                             "after the next check-in", binding.short(machine_id),
                             self.agent_id, self.paths.config_file,
                             getattr(exc, "strerror", None) or exc)
            return
        self.adopt_machine_id = None
        if kept:
            self.cfg["machine_id"] = machine_id
            self.log.info("recorded machine ID %s with agent %s (the server accepted it)",
                          binding.short(machine_id), self.agent_id)

    def authed(self, call: Callable[[str], Any]) -> Any:
        """Call with the JWT; on 401 renew once and retry."""
        token = self.cfg.get("token") or self.renew()
        try:
            return call(str(token))
        except Unauthorized:
            self.log.info("access token refused (401); renewing")
        except (BindingRefused, UpgradeRequired) as exc:
            raise self.refusal(exc) from None
        token = self.renew()
        try:
            return call(token)
        except Unauthorized as exc:
            raise ServerError(401, f"refused even after a fresh renewal: {exc.message}") from None
        except (BindingRefused, UpgradeRequired) as exc:
            raise self.refusal(exc) from None

    # --- one check-in ------------------------------------------------------------------
    def metrics_body(self) -> dict[str, Any]:
        body, self._cpu = host_metrics(self._cpu)
        body["version"] = AGENT_VERSION
        body["metadata"] = metadata_for(self.cfg, self.migrated_from)
        return body

    def check_in_once(self) -> list[dict[str, Any]]:
        body = self.metrics_body()
        try:
            answer = self.authed(lambda jwt: self.client.check_in(self.agent_id, jwt, body))
        except NotFound as exc:
            # The server deleted this agent: retrying until the JWT lapses would only loop.
            # (unregister handles its own 404: there it means "already gone".)
            raise TokenRejected(
                f"the server does not know agent {self.agent_id} any more "
                f"({exc.message or exc}). Fix: re-enroll this host: run the playbook with "
                "redflag_agent_force_reregister=true and a fresh "
                "redflag_agent_registration_token (or `redflag-agent register`)") from None
        was = self._rapid
        self._rapid = rapid_window(answer.get("rapid_polling"), time.time(), time.monotonic(),
                                   was)
        if self._rapid is not None and self._rapid != was:
            self.log.info("rapid polling requested for %.0f s",
                          self._rapid[1] - time.monotonic())
        with self.term.shielded():
            self.status.update(last_checkin=utc_now(), last_error=None)
        self.record_machine_id()
        commands, skipped = valid_commands(answer.get("commands"))
        for why in skipped:
            self.log.warning("skipped a malformed command in the check-in answer: %s", why)
        return commands

    def handle(self, command: dict[str, Any]) -> None:
        kind = command.get("type")
        cid = command.get("id")
        if kind == "scan_updates":
            self.scan_updates(cid)
        elif kind in KNOWN_UNSUPPORTED:
            self.log.warning("command %s (%s) is not supported by this agent; skipped", cid, kind)
        else:
            self.log.warning("unknown command type '%s' (id %s); skipped", clean(kind, 64),
                             clean(cid, 64))

    def scan_updates(self, command_id: Any) -> None:
        from . import scan  # noqa: PLC0415 - subprocess is only needed for scans

        try:
            updates = (self.lister or scan.list_updates)()
        except (scan.ScanError, OSError, subprocess_error()) as exc:
            self.log.error("scan_updates %s failed: %s", command_id, exc)
            return
        body = {"command_id": command_id, "timestamp": utc_now(), "updates": updates}
        self.authed(lambda jwt: self.client.report_updates(self.agent_id, jwt, body))
        self.log.info("scan_updates %s: reported %d available updates", command_id, len(updates))

    # --- forever -----------------------------------------------------------------------
    def interval(self) -> float:
        base = interval_seconds(self.cfg.get("check_in_interval"))
        if self._rapid is None:
            return base
        return backoff.rapid_interval(base, True, self._rapid[1], time.monotonic())

    def loop(self) -> None:
        attempt = 0
        while True:
            try:
                for command in self.check_in_once():
                    self.handle(command)
                attempt = 0
                delay = backoff.checkin_delay(self.interval(), self.rand())
            except ClientError as exc:
                delay = backoff.retry_delay(attempt, self.rand(), self.backoff_base,
                                            self.backoff_cap, getattr(exc, "retry_after", None))
                attempt += 1
                self.log.warning("check-in failed: %s; retry %d in %.1f s (at %s)", exc, attempt,
                                 delay, time.strftime("%H:%M:%S", time.gmtime(time.time() + delay)))
                with self.term.shielded():
                    self.status.update(last_error=f"{utc_now()} check-in: {exc}")
            self.term.sleep(min(delay, MAX_SLEEP))
