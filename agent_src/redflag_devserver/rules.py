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
    # 0.1.22+ only; a 0.1.18 server ignores these fields.
    machine_id: Optional[str] = None
    public_key_fingerprint: Optional[str] = None
    os_distro: Optional[str] = None
    available_scanners: Optional[list[str]] = None


def validate_registration(body: Any, binding: bool = False) -> Registration:
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
        **(_binding_fields(body) if binding else {}),
    )


def _binding_fields(body: dict[str, Any]) -> dict[str, Any]:
    machine_id = _optional_string(body, "machine_id") or None  # "" means none, as upstream
    if machine_id is not None and not is_machine_id(machine_id):
        raise InvalidInput(
            "machine_id must be 64 lowercase hex characters (the SHA-256 of the host's "
            "machine identifier), or absent"
        )
    scanners = body.get("available_scanners")
    if scanners is not None and (
        not isinstance(scanners, list) or not all(isinstance(x, str) for x in scanners)
    ):
        raise InvalidInput("available_scanners must be a list of strings")
    return {
        "machine_id": machine_id,
        "public_key_fingerprint": _optional_string(body, "public_key_fingerprint") or None,
        "os_distro": _optional_string(body, "os_distro") or None,
        "available_scanners": scanners,
    }


@dataclass(frozen=True)
class Renewal:
    agent_id: str
    refresh_token: str
    agent_version: Optional[str] = None


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
    return Renewal(
        agent_id=body["agent_id"],
        refresh_token=body["refresh_token"],
        agent_version=_optional_string(body, "agent_version") or None,
    )


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


# Server generations (CONTRACT 4 and 4b). The default behaves as a current server (binding and
# rotation); --generation 0.1.18 keeps the old answers tested.
GENERATIONS = ("0.1.18", "0.1.23", "0.2")
DEFAULT_GENERATION = "0.2"
DEFAULT_MIN_AGENT_VERSION = "0.1.22"
# Upstream's registration limit from 0.1.22 on: 5 requests per minute per client address.
BINDING_RATE_LIMIT = (5, 60)


@dataclass(frozen=True)
class Generation:
    name: str
    binds_machines: bool  # machine binding, 426, strict 401 token answers (0.1.22+)
    rotates_refresh: bool  # refresh-token rotation with reuse detection (0.2.x)


def parse_generation(text: str) -> Generation:
    if text not in GENERATIONS:
        raise InvalidInput(
            f"unknown server generation {text!r}: use one of " + ", ".join(GENERATIONS)
        )
    return Generation(text, binds_machines=text != "0.1.18", rotates_refresh=text == "0.2")


_MACHINE_ID = re.compile(r"[0-9a-f]{64}\Z")


def is_machine_id(value: Any) -> bool:
    """64 lowercase hex characters: a SHA-256 as the agent sends it."""
    return isinstance(value, str) and _MACHINE_ID.match(value) is not None


MISSING_MACHINE_ID = "missing machine ID header - agent version too old or tampered"
NOT_BOUND = "agent not bound to machine - re-registration required"
MACHINE_MISMATCH = "machine ID mismatch - config file copied to different machine"
_BINDING_HINTS = {
    MISSING_MACHINE_ID: "Please upgrade to the latest agent version (v0.1.22+)",
    NOT_BOUND: "This agent was registered before v0.1.22. Please re-register with a new "
    "registration token.",
    MACHINE_MISMATCH: "Agent configuration is bound to the original machine. Please register "
    "this machine with a new registration token.",
}


def binding_refusal(bound: Optional[str], header: Optional[str]) -> Optional[dict[str, str]]:
    """The 403 body for a request whose X-Machine-ID does not prove the binding, or None.

    Upstream's order: header missing, agent never bound, then an exact comparison.
    """
    if not header:
        error = MISSING_MACHINE_ID
    elif bound is None:
        error = NOT_BOUND
    elif header != bound:
        error = MACHINE_MISMATCH
    else:
        return None
    return {"error": error, "hint": _BINDING_HINTS[error]}


_VERSION_PREFIX = re.compile(r"v?(\d+(?:\.\d+)*)")


def version_key(version: Optional[str]) -> Optional[tuple[int, ...]]:
    """'0.1.23.6' -> (0, 1, 23, 6); a suffix such as '-dev' is ignored; None if no number."""
    match = _VERSION_PREFIX.match((version or "").strip())
    if match is None:
        return None
    parts = [int(p) for p in match.group(1).split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()  # 0.2 == 0.2.0
    return tuple(parts)


def version_below(version: Optional[str], minimum: str) -> bool:
    """True when version is older than minimum; a version we cannot read counts as older."""
    have, need = version_key(version), version_key(minimum)
    if need is None:
        return False
    return have is None or have < need


def upgrade_required(version: Optional[str], minimum: str) -> dict[str, Any]:
    return {
        "error": "agent version too old - upgrade required for security",
        "current_version": version,
        "minimum_version": minimum,
        "upgrade_instructions": "Please upgrade to the latest agent version and re-register",
    }


MACHINE_CONFLICT_REMEDIATION = (
    "Another agent on this server is bound to this machine ID. If this host is a clone, give "
    "it its own machine ID (regenerate /etc/machine-id) and register again; if the old agent "
    "is gone, remove it on the server first."
)


@dataclass(frozen=True)
class RefreshState:
    """One presented refresh token as the store found it, as plain values."""

    revoked: bool
    expires_at: float
    consumed: bool
    successor: Optional[str]  # None, "live", "consumed" or "revoked"


def refresh_verdict(state: Optional[RefreshState], now: float, rotating: bool) -> str:
    """'invalid', 'expired', 'accept', 'grace' or 'reuse' for a presented refresh token.

    Grace (upstream's accept-previous-once): a consumed token whose successor was never
    presented means the agent crashed after the server rotated but before it saved the new
    token; the server orphans that successor and issues a fresh one. Any other replay of a
    consumed token is reuse and costs the whole family.
    """
    if state is None or state.revoked:
        return "invalid"
    if now >= state.expires_at:
        return "expired"
    if not state.consumed:
        return "accept"
    if not rotating:
        return "invalid"  # a server without rotation never consumes; be safe on mixed files
    if state.successor == "live":
        return "grace"
    return "reuse"
