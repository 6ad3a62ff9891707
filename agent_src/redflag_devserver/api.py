"""The HTTP side: routing, authentication, JSON in and out, one log line per request."""

from __future__ import annotations

import json
import logging
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

from redflag_devserver import jwt_hs256, rules
from redflag_devserver.ratelimit import RateLimiter
from redflag_devserver.store import (
    AgentNotFound,
    BindingRefused,
    MachineConflict,
    RefreshInvalid,
    SeatNotConsumed,
    Store,
    TokenRefused,
    TokenUnknown,
)

log = logging.getLogger("redflag_devserver")

MAX_BODY = 1024 * 1024
ISSUER = "redflag-devserver"


@dataclass
class Settings:
    jwt_ttl: int = 86400
    check_in_interval: int = 300
    public_url: Optional[str] = None
    rate_limiter: Optional[RateLimiter] = None
    clock: Callable[[], float] = field(default=time.time)
    generation: str = rules.DEFAULT_GENERATION
    min_agent_version: str = rules.DEFAULT_MIN_AGENT_VERSION


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        headers: Optional[dict[str, str]] = None,
        extra: Optional[dict[str, Any]] = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.extra = extra or {}  # further fields of the JSON answer (409, 426, hints)


Response = tuple[int, Any]


class DevServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # bursts of concurrent registrations must not be dropped

    def __init__(self, address: tuple[str, int], store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.generation = rules.parse_generation(settings.generation)
        self.jwt_secret = store.jwt_secret()
        super().__init__(address, Handler)


class DevServer6(DevServer):
    address_family = socket.AF_INET6


class BindError(Exception):
    """The listen address cannot be bound; str() says which and why."""


def make_server(host: str, port: int, store: Store, settings: Settings) -> DevServer:
    cls = DevServer6 if ":" in host else DevServer
    try:
        return cls((host, port), store, settings)
    except OSError as exc:
        raise BindError(f"cannot listen on {host} port {port}: {exc.strerror or exc}") from exc


class Handler(BaseHTTPRequestHandler):
    server: DevServer
    server_version = "redflag-devserver"
    timeout = 30  # a stalled client must not hold a thread forever
    sys_version = ""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    # Plumbing

    def _dispatch(self, method: str) -> None:
        started = time.monotonic()
        self.log_agent: Optional[str] = None
        path = self.path.split("?", 1)[0]
        headers: dict[str, str] = {}
        try:
            handler, args = _route(method, path)
            status, payload = handler(self, *args)
        except ApiError as exc:
            status, payload, headers = exc.status, {"error": exc.message, **exc.extra}, exc.headers
        except Exception:
            log.exception("internal error on %s %s", method, rules.loggable_path(path))
            status, payload = 500, {"error": "internal server error (see the server log)"}
        self._send(status, payload, headers)
        log.info(
            "%s %s %s %d agent=%s %.1fms",
            self.client_address[0],
            method,
            rules.loggable_path(path),
            status,
            self.log_agent or "-",
            (time.monotonic() - started) * 1000,
        )

    def _send(self, status: int, payload: Any, headers: dict[str, str]) -> None:
        body = json.dumps(payload).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            log.warning("%s client went away before the response was sent", self.client_address[0])

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        """Replaced by the line _dispatch writes (the default one echoes the raw path)."""

    def log_error(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        # The stdlib message may quote the raw request line, which can hold a token.
        if format.startswith("code %d") and args:
            try:
                phrase = HTTPStatus(args[0]).phrase
            except ValueError:
                phrase = ""
            log.warning(
                "%s request rejected before routing: %s %s", self.client_address[0], args[0], phrase
            )
        else:
            log.warning(
                "%s request failed before routing (details withheld)", self.client_address[0]
            )

    def _now(self) -> float:
        return self.server.settings.clock()

    def _read_json(self) -> Any:
        """The JSON body, or None when there is none."""
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise ApiError(411, "chunked bodies are not supported; send Content-Length")
        raw_length = self.headers.get("Content-Length")
        if raw_length is None or raw_length.strip() == "0":
            return None
        if not raw_length.strip().isdigit():
            self.close_connection = True
            raise ApiError(400, "invalid Content-Length header")
        length = int(raw_length)
        if length > MAX_BODY:
            self.close_connection = True
            raise ApiError(413, f"request body too large (limit {MAX_BODY} bytes)")
        raw = self.rfile.read(length)
        if not raw.strip():
            return None
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            # The parser's message names a position, never the content.
            raise ApiError(400, f"invalid JSON body: {exc}") from exc

    def _authenticate(self, agent_id: str) -> None:
        token, error = rules.bearer_token(self.headers.get("Authorization"))
        if error:
            raise ApiError(401, error)
        if token is None:
            raise ApiError(401, "authorization required")
        try:
            claims = jwt_hs256.decode(token, self.server.jwt_secret, self._now())
        except jwt_hs256.JWTError as exc:
            log.info("%s access token rejected: %s", self.client_address[0], exc)
            raise ApiError(401, "invalid or expired token") from exc
        if claims.get("agent_id") != agent_id:
            raise ApiError(403, "token does not belong to this agent")

    def _check_binding(self, agent_id: str, reported_version: Optional[str] = None) -> None:
        """0.1.22+: after the JWT, the version floor (426), then the machine binding (403)."""
        if not self.server.generation.binds_machines:
            return
        try:
            binding = self.server.store.binding(agent_id)
        except AgentNotFound as exc:
            raise ApiError(404, "agent not found") from exc
        version = reported_version or binding.agent_version
        minimum = self.server.settings.min_agent_version
        if rules.version_below(version, minimum):
            body = rules.upgrade_required(version, minimum)
            raise ApiError(426, body.pop("error"), extra=body)
        refused = rules.binding_refusal(binding.machine_id, self.headers.get("X-Machine-ID"))
        if refused is not None:
            raise ApiError(403, refused.pop("error"), extra=refused)

    def _require_loopback(self) -> None:
        if not rules.is_loopback_address(self.client_address[0]):
            raise ApiError(403, "the admin API answers loopback clients only")

    def _issue_jwt(self, agent_id: str) -> str:
        now = int(self._now())
        claims = {
            "agent_id": agent_id,
            "sub": agent_id,
            "iss": ISSUER,
            "iat": now,
            "exp": now + self.server.settings.jwt_ttl,
        }
        return jwt_hs256.encode(claims, self.server.jwt_secret)

    # Agent API

    def health(self) -> Response:
        return 200, {"status": "healthy"}

    def register(self) -> Response:
        limiter = self.server.settings.rate_limiter
        if limiter is not None:
            allowed, retry_after = limiter.check(self.client_address[0], self._now())
            if not allowed:
                wait = max(1, int(retry_after + 0.999))
                raise ApiError(
                    429, f"rate limit exceeded; retry in {wait} s", {"Retry-After": str(wait)}
                )
        body = self._read_json()
        binds = self.server.generation.binds_machines
        try:
            reg = rules.validate_registration(body, binding=binds)
        except rules.InvalidInput as exc:
            raise ApiError(400, str(exc)) from exc
        token, error = rules.bearer_token(self.headers.get("Authorization"))
        if error:
            raise ApiError(401, error)
        if token is None:
            fallback = body.get("registration_token")
            token = fallback if isinstance(fallback, str) and fallback else None
        if token is None:
            raise ApiError(401, "registration token required")
        try:
            agent_id, refresh = self.server.store.register(token, reg, self._now())
        except TokenUnknown as exc:
            raise ApiError(401, "invalid or expired registration token") from exc
        except SeatNotConsumed as exc:
            message = "registration token could not be consumed"
            raise ApiError(400, message if binds else f"{message}: {exc}") from exc
        except TokenRefused as exc:
            if binds:  # 0.1.22+ answers revoked, expired and used-up tokens like unknown ones
                raise ApiError(401, "invalid or expired registration token") from exc
            raise ApiError(400, f"registration token could not be consumed: {exc}") from exc
        except MachineConflict as exc:
            raise ApiError(
                409,
                str(exc),
                extra={**exc.existing, "remediation": rules.MACHINE_CONFLICT_REMEDIATION},
            ) from exc
        self.log_agent = agent_id
        server_url = self.server.settings.public_url or "http://" + (
            self.headers.get("Host") or "{}:{}".format(*self.server.server_address[:2])
        )
        return 200, {
            "agent_id": agent_id,
            "token": self._issue_jwt(agent_id),
            "refresh_token": refresh,
            "message": "agent registered successfully",
            "config": {
                "check_in_interval": self.server.settings.check_in_interval,
                "server_url": server_url,
            },
        }

    def renew(self) -> Response:
        try:
            renewal = rules.validate_renewal(self._read_json())
        except rules.InvalidInput as exc:
            raise ApiError(400, str(exc)) from exc
        self.log_agent = renewal.agent_id
        generation = self.server.generation
        try:
            renewed = self.server.store.renew(
                renewal.agent_id,
                renewal.refresh_token,
                self._now(),
                rotate=generation.rotates_refresh,
                check_binding=generation.binds_machines,
                machine_header=self.headers.get("X-Machine-ID"),
                agent_version=renewal.agent_version if generation.binds_machines else None,
            )
        except AgentNotFound as exc:
            raise ApiError(404, "agent not found") from exc
        except RefreshInvalid as exc:
            raise ApiError(401, "invalid or expired refresh token") from exc
        except BindingRefused as exc:
            body = dict(exc.body)
            raise ApiError(403, body.pop("error"), extra=body) from exc
        if renewed.verdict == "reuse":
            log.warning(
                "%s refresh token reuse: agent %s, token family revoked",
                self.client_address[0],
                renewal.agent_id,
            )
            raise ApiError(401, "refresh token reuse detected")
        if renewed.verdict == "grace":
            log.warning(
                "%s refresh token grace replay: agent %s lost its rotated token; reissued",
                self.client_address[0],
                renewal.agent_id,
            )
        answer = {
            "token": self._issue_jwt(renewal.agent_id),
            "message": "token renewed successfully",
        }
        if renewed.refresh is not None:
            answer["refresh_token"] = renewed.refresh
        return 200, answer

    def commands(self, agent_id: str) -> Response:
        self.log_agent = agent_id
        self._authenticate(agent_id)
        try:
            checkin = rules.validate_checkin(self._read_json())
        except rules.InvalidInput as exc:
            raise ApiError(400, str(exc)) from exc
        # The version this check-in reports counts, so an upgraded agent is not held at 426.
        self._check_binding(agent_id, checkin.version)
        try:
            handed_out = self.server.store.check_in(agent_id, checkin, self._now())
        except AgentNotFound as exc:
            raise ApiError(404, "agent not found") from exc
        return 200, {"commands": handed_out}

    def updates(self, agent_id: str) -> Response:
        self.log_agent = agent_id
        self._authenticate(agent_id)
        self._check_binding(agent_id)
        try:
            report = rules.validate_update_report(self._read_json())
        except rules.InvalidInput as exc:
            raise ApiError(400, str(exc)) from exc
        try:
            self.server.store.store_updates(agent_id, report, self._now())
        except AgentNotFound as exc:
            raise ApiError(404, "agent not found") from exc
        return 200, {"message": "updates recorded", "count": len(report.updates)}

    def unregister(self, agent_id: str) -> Response:
        self.log_agent = agent_id
        self._authenticate(agent_id)
        self._check_binding(agent_id)
        try:
            self.server.store.deregister(agent_id, self._now())
        except AgentNotFound as exc:
            raise ApiError(404, "agent not found") from exc
        return 200, {"message": "agent unregistered"}

    # Admin API (loopback clients only)

    def admin_agents(self) -> Response:
        self._require_loopback()
        return 200, {"agents": self.server.store.list_agents()}

    def admin_tokens(self) -> Response:
        self._require_loopback()
        return 200, {"tokens": self.server.store.list_tokens(self._now())}

    def admin_mint(self) -> Response:
        self._require_loopback()
        body = self._read_json()
        body = {} if body is None else body
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object")
        seats = body.get("seats", 1)
        expires = body.get("expires", "24h")
        note = body.get("note")
        try:
            if isinstance(seats, bool) or not isinstance(seats, int) or seats <= 0:
                raise rules.InvalidInput("seats must be a positive integer")
            if isinstance(expires, int) and not isinstance(expires, bool):
                expires = str(expires)
            if not isinstance(expires, str):
                raise rules.InvalidInput("expires must be a duration such as 24h, or seconds")
            if note is not None and not isinstance(note, str):
                raise rules.InvalidInput("note must be a string")
            minted = self.server.store.mint_token(
                seats, rules.parse_duration(expires), note, self._now()
            )
        except rules.InvalidInput as exc:
            raise ApiError(400, str(exc)) from exc
        return 201, minted

    def admin_revoke(self, token: str) -> Response:
        self._require_loopback()
        try:
            token_id = self.server.store.revoke_token(self._now(), token=token)
        except TokenUnknown as exc:
            raise ApiError(404, "registration token not found") from exc
        return 200, {"revoked": True, "id": token_id}

    def admin_queue(self, agent_id: str) -> Response:
        self._require_loopback()
        self.log_agent = agent_id
        body = self._read_json()
        if not isinstance(body, dict):
            raise ApiError(400, 'request body must be a JSON object: {"type": ..., "params": {}}')
        try:
            command = self.server.store.queue_command(
                agent_id, body.get("type"), body.get("params"), self._now()
            )
        except rules.InvalidInput as exc:
            raise ApiError(400, str(exc)) from exc
        except AgentNotFound as exc:
            raise ApiError(404, "agent not found (or deregistered)") from exc
        return 201, command

    def admin_rebind(self, agent_id: str) -> Response:
        """Bind an agent to a new machine ID (upstream: an admin action; the agent cannot)."""
        self._require_loopback()
        self.log_agent = agent_id
        body = self._read_json()
        if not isinstance(body, dict) or not isinstance(body.get("machine_id"), str):
            raise ApiError(400, 'request body must be a JSON object: {"machine_id": "<64 hex>"}')
        try:
            old = self.server.store.rebind(agent_id, body["machine_id"], self._now())
        except rules.InvalidInput as exc:
            raise ApiError(400, str(exc)) from exc
        except AgentNotFound as exc:
            raise ApiError(404, "agent not found (or deregistered)") from exc
        except MachineConflict as exc:
            raise ApiError(409, "machine ID is bound to another agent", extra=exc.existing) from exc
        return 200, {
            "agent_id": agent_id,
            "old_machine_id": old,
            "new_machine_id": body["machine_id"],
        }

    def admin_deregister(self, agent_id: str) -> Response:
        """Remove an agent on the server (frees its machine ID), as an operator would."""
        self._require_loopback()
        self.log_agent = agent_id
        try:
            self.server.store.deregister(agent_id, self._now())
        except AgentNotFound as exc:
            raise ApiError(404, "agent not found (or already deregistered)") from exc
        return 200, {"agent_id": agent_id, "status": "deregistered"}

    def admin_commands(self, agent_id: str) -> Response:
        self._require_loopback()
        self.log_agent = agent_id
        try:
            return 200, {"commands": self.server.store.list_commands(agent_id)}
        except AgentNotFound as exc:
            raise ApiError(404, "agent not found") from exc

    def admin_updates(self, agent_id: str) -> Response:
        self._require_loopback()
        self.log_agent = agent_id
        try:
            return 200, {"reports": self.server.store.list_updates(agent_id)}
        except AgentNotFound as exc:
            raise ApiError(404, "agent not found") from exc


_AGENT = r"/api/v1/agents/([^/]+)"
_ROUTES: list[tuple[str, re.Pattern[str], Callable[..., Response]]] = [
    (m, re.compile(p + r"/?\Z"), h)
    for m, p, h in (
        ("GET", r"/health", Handler.health),
        ("POST", r"/api/v1/agents/register", Handler.register),
        ("POST", r"/api/v1/agents/renew", Handler.renew),
        ("GET", _AGENT + r"/commands", Handler.commands),
        ("POST", _AGENT + r"/updates", Handler.updates),
        ("DELETE", _AGENT, Handler.unregister),
        ("GET", r"/admin/agents", Handler.admin_agents),
        ("GET", r"/admin/tokens", Handler.admin_tokens),
        ("POST", r"/admin/tokens", Handler.admin_mint),
        ("POST", r"/admin/tokens/([^/]+)/revoke", Handler.admin_revoke),
        ("POST", r"/admin/agents/([^/]+)/commands", Handler.admin_queue),
        ("GET", r"/admin/agents/([^/]+)/commands", Handler.admin_commands),
        ("GET", r"/admin/agents/([^/]+)/updates", Handler.admin_updates),
        ("POST", r"/admin/agents/([^/]+)/rebind", Handler.admin_rebind),
        ("POST", r"/admin/agents/([^/]+)/deregister", Handler.admin_deregister),
    )
]


def _route(method: str, path: str) -> tuple[Callable[..., Response], tuple[str, ...]]:
    path_matched = False
    for route_method, pattern, handler in _ROUTES:
        match = pattern.match(path)
        if match is None:
            continue
        if route_method == method:
            return handler, match.groups()
        path_matched = True
    if path_matched:
        raise ApiError(405, f"method {method} not allowed on this path")
    raise ApiError(404, "not found")
