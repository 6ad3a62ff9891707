"""Pure decisions: parsing options, validating request bodies, judging tokens and clients.

Nothing here touches the network, the database or the clock; callers pass values in.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Optional

COMMAND_TYPES = (
    "scan_updates",
    "collect_specs",
    "install_updates",
    "dry_run_update",
    "confirm_dependencies",
    "enable_heartbeat",
    "disable_heartbeat",
    "update_agent",
    "reboot",
)
PACKAGE_TYPES = ("apt", "dnf", "docker")
METRIC_NUMBERS = (
    "cpu_percent",
    "memory_percent",
    "memory_used_gb",
    "memory_total_gb",
    "disk_used_gb",
    "disk_total_gb",
    "disk_percent",
    "uptime",
)
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class InvalidInput(ValueError):
    """Input that cannot be used; the message says what is wrong and what is expected."""


def parse_duration(text: str) -> int:
    """'30s', '10m', '24h', '7d' or plain seconds -> seconds (> 0)."""
    match = _DURATION.match(text or "")
    if not match:
        raise InvalidInput(
            f"invalid duration {text!r}: use a positive number with an optional unit "
            "s, m, h or d (for example 30s, 10m, 24h, 7d)"
        )
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise InvalidInput(f"invalid duration {text!r}: it must be greater than zero")
    return seconds


def parse_rate_limit(text: str) -> tuple[int, int]:
    """'N/SECONDS' -> (N, SECONDS); SECONDS may carry a unit ('5/1m')."""
    count, sep, window = (text or "").partition("/")
    if not sep or not count.strip().isdigit() or int(count) <= 0:
        raise InvalidInput(
            f"invalid rate limit {text!r}: use N/SECONDS, for example 5/60 "
            "(at most 5 registrations per client address per 60 seconds)"
        )
    return int(count), parse_duration(window)


def parse_listen(text: str) -> tuple[str, int]:
    """'HOST:PORT' or '[V6]:PORT' -> (host, port); port 0 means any free port."""
    host, sep, port = (text or "").rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise InvalidInput(
            f"invalid listen address {text!r}: use HOST:PORT, for example 127.0.0.1:8080 "
            "or [::1]:8080 (port 0 picks a free port)"
        )
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def is_loopback_address(host: str) -> bool:
    """True for loopback IPs (v4, v6, v4-mapped v6) and the name 'localhost'."""
    if host == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    if mapped is not None:
        addr = mapped
    return addr.is_loopback


def bearer_token(header: Optional[str]) -> tuple[Optional[str], Optional[str]]:
    """Authorization header -> (token, error). Both None when the header is absent."""
    if header is None or not header.strip():
        return None, None
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value or " " in value:
        return None, "invalid authorization header format (expected: Bearer <token>)"
    return value, None


@dataclass(frozen=True)
class TokenState:
    """What the store knows about a registration token, as plain values."""

    max_seats: int
    seats_used: int
    expires_at: float
    revoked: bool


def token_refusal(state: TokenState, now: float) -> Optional[str]:
    """Why a known registration token cannot be consumed now, or None if it can."""
    if state.revoked:
        return "token revoked"
    if now >= state.expires_at:
        return "token expired"
    if state.seats_used >= state.max_seats:
        return "all seats used"
    return None


def token_status(state: TokenState, now: float) -> str:
    refusal = token_refusal(state, now)
    return {
        None: "active",
        "token revoked": "revoked",
        "token expired": "expired",
        "all seats used": "used",
    }[refusal]


def _require_object(body: Any, what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidInput(f"{what} must be a JSON object")
    return body


def _optional_string(body: dict[str, Any], key: str) -> Optional[str]:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{key} must be a string")
    return value


def _string_map(value: Any, key: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise InvalidInput(f"{key} must be an object of string values")
    return dict(value)


@dataclass(frozen=True)
class Registration:
    hostname: str
    os_type: str
    os_version: Optional[str]
    os_architecture: Optional[str]
    agent_version: str
    metadata: dict[str, str]


def validate_registration(body: Any) -> Registration:
    body = _require_object(body, "request body")
    missing = [
        key
        for key in ("hostname", "os_type", "agent_version")
        if not isinstance(body.get(key), str) or not body[key].strip()
    ]
    if missing:
        raise InvalidInput(
            "missing or empty required field(s): "
            + ", ".join(missing)
            + " (hostname, os_type and agent_version are required strings)"
        )
    return Registration(
        hostname=body["hostname"].strip(),
        os_type=body["os_type"].strip(),
        os_version=_optional_string(body, "os_version"),
        os_architecture=_optional_string(body, "os_architecture"),
        agent_version=body["agent_version"].strip(),
        metadata=_string_map(body.get("metadata"), "metadata"),
    )


@dataclass(frozen=True)
class Renewal:
    agent_id: str
    refresh_token: str


def validate_renewal(body: Any) -> Renewal:
    body = _require_object(body, "request body")
    missing = [
        key
        for key in ("agent_id", "refresh_token")
        if not isinstance(body.get(key), str) or not body[key]
    ]
    if missing:
        raise InvalidInput(
            "missing or empty required field(s): "
            + ", ".join(missing)
            + " (agent_id and refresh_token are required strings)"
        )
    return Renewal(agent_id=body["agent_id"], refresh_token=body["refresh_token"])


@dataclass(frozen=True)
class CheckIn:
    version: Optional[str]
    metadata: dict[str, str]
    metrics: dict[str, float]


def validate_checkin(body: Any) -> CheckIn:
    """The optional metrics body of a check-in; None (no body) is an empty check-in."""
    if body is None:
        return CheckIn(version=None, metadata={}, metrics={})
    body = _require_object(body, "check-in body")
    metrics: dict[str, float] = {}
    for key in METRIC_NUMBERS:
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidInput(f"{key} must be a number")
        metrics[key] = value
    return CheckIn(
        version=_optional_string(body, "version"),
        metadata=_string_map(body.get("metadata"), "metadata"),
        metrics=metrics,
    )


@dataclass(frozen=True)
class UpdateReport:
    command_id: Optional[str]
    timestamp: Optional[str]
    updates: list[dict[str, Any]]


_UPDATE_REQUIRED = ("package_type", "package_name", "available_version")


def validate_update_report(body: Any) -> UpdateReport:
    body = _require_object(body, "request body")
    updates = body.get("updates")
    if not isinstance(updates, list):
        raise InvalidInput("updates must be a list (it may be empty)")
    for index, item in enumerate(updates):
        if not isinstance(item, dict):
            raise InvalidInput(f"updates[{index}] must be an object")
        missing = [
            key for key in _UPDATE_REQUIRED if not isinstance(item.get(key), str) or not item[key]
        ]
        if missing:
            raise InvalidInput(
                f"updates[{index}] is missing required field(s): " + ", ".join(missing)
            )
        if item["package_type"] not in PACKAGE_TYPES:
            raise InvalidInput(
                f"updates[{index}].package_type {item['package_type']!r} is not one of "
                + ", ".join(PACKAGE_TYPES)
            )
    return UpdateReport(
        command_id=_optional_string(body, "command_id"),
        timestamp=_optional_string(body, "timestamp"),
        updates=updates,
    )


def validate_command(command_type: Any, params: Any) -> tuple[str, dict[str, Any]]:
    if command_type not in COMMAND_TYPES:
        raise InvalidInput(
            f"unknown command type {command_type!r}; known types: " + ", ".join(COMMAND_TYPES)
        )
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise InvalidInput("params must be a JSON object")
    return command_type, params


MASK = "********"
_LONGEST_PLAIN_SEGMENT = 40  # a UUID (36) passes; tokens (64 hex) and JWTs do not


def loggable_path(path: str) -> str:
    """The request path as it may appear in a log: no query, no token-like segment."""
    path = path.split("?", 1)[0].split("#", 1)[0]
    segments = path.split("/")
    for index, segment in enumerate(segments):
        after_tokens = index == 3 and segments[1:3] == ["admin", "tokens"]
        if segment and (after_tokens or len(segment) > _LONGEST_PLAIN_SEGMENT):
            segments[index] = MASK
    path = "/".join(segments)
    if len(path) > 200:
        path = path[:200] + "..."
    return "".join(c if c.isprintable() and not c.isspace() else "?" for c in path)
