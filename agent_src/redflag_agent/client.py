"""HTTP to the aggregator (CONTRACT section 4) with urllib; failures become typed exceptions.

No environment proxies (only the config's proxy), no redirects (a Bearer token must not follow
one), and no token ever appears in an exception message.
"""

from __future__ import annotations

import json
import socket
import ssl
import urllib.error
import urllib.request
from typing import Any, Optional
from urllib.parse import quote, urlsplit

from .version import AGENT_VERSION


class ClientError(Exception):
    retryable = False


class Unreachable(ClientError):
    retryable = True


class ServerError(ClientError):
    retryable = True

    def __init__(self, status: int, message: str = "") -> None:
        super().__init__(f"server error {status}" + (f": {message}" if message else ""))
        self.status = status
        self.message = message


class RateLimited(ClientError):
    retryable = True

    def __init__(self, retry_after: Optional[float], message: str = "") -> None:
        super().__init__("rate limited (429)" + (f": {message}" if message else ""))
        self.retry_after = retry_after
        self.message = message


class Unauthorized(ClientError):
    def __init__(self, message: str = "") -> None:
        super().__init__(f"unauthorized (401): {message or 'no reason given'}")
        self.message = message


class BadRequest(ClientError):
    def __init__(self, message: str = "", status: int = 400) -> None:
        super().__init__(f"rejected ({status}): {message or 'no reason given'}")
        self.message = message
        self.status = status


class NotFound(ClientError):
    def __init__(self, message: str = "") -> None:
        super().__init__(f"not found (404): {message or 'no reason given'}")
        self.message = message


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        return None


def _error_text(body: bytes) -> str:
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return body[:200].decode("utf-8", "replace").strip()
    if isinstance(obj, dict) and isinstance(obj.get("error"), str):
        return obj["error"]
    return ""


def _retry_after(value: Optional[str]) -> Optional[float]:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class Client:
    def __init__(self, server_url: str, timeout: float = 30.0,
                 proxy: Optional[dict[str, Any]] = None,
                 tls: Optional[dict[str, Any]] = None) -> None:
        parts = urlsplit(server_url.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"server_url {server_url!r} is not an http(s) URL "
                             "(expected e.g. https://redflag.example:8080)")
        self.base = server_url.strip().rstrip("/")
        self.timeout = timeout
        handlers: list[Any] = [_NoRedirect(), self._proxy_handler(proxy)]
        if parts.scheme == "https":
            handlers.append(urllib.request.HTTPSHandler(context=self._ssl_context(tls or {})))
        self._opener = urllib.request.build_opener(*handlers)

    @staticmethod
    def _proxy_handler(proxy: Optional[dict[str, Any]]) -> urllib.request.ProxyHandler:
        if not proxy or not proxy.get("enabled"):
            return urllib.request.ProxyHandler({})
        table = {k: proxy[k] for k in ("http", "https") if proxy.get(k)}
        return urllib.request.ProxyHandler(table)

    @staticmethod
    def _ssl_context(tls: dict[str, Any]) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=tls.get("ca_file") or None)
        if tls.get("insecure_skip_verify"):
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if tls.get("cert_file"):
            ctx.load_cert_chain(tls["cert_file"], tls.get("key_file") or None)
        return ctx

    def _request(self, method: str, path: str, bearer: Optional[str] = None,
                 body: Optional[dict[str, Any]] = None) -> Any:
        data = json.dumps(body).encode("utf-8") if body is not None else None
        # scheme checked in __init__: http or https only
        req = urllib.request.Request(self.base + path, data=data, method=method)  # noqa: S310
        req.add_header("User-Agent", f"redflag-agent/{AGENT_VERSION}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if bearer:
            req.add_header("Authorization", f"Bearer {bearer}")
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            raw = exc.read() if exc.fp is not None else b""
            self._raise_for(exc.code, raw, exc.headers.get("Retry-After") if exc.headers else None)
        except (urllib.error.URLError, socket.timeout, ConnectionError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Unreachable(f"cannot reach {self.base}: {reason}") from None
        if not raw.strip():
            return {}
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise ServerError(status, "response is not JSON") from None

    @staticmethod
    def _raise_for(status: int, raw: bytes, retry_after: Optional[str]) -> None:
        text = _error_text(raw)
        if status == 429:
            raise RateLimited(_retry_after(retry_after), text)
        if status in (401, 403):
            raise Unauthorized(text)
        if status == 404:
            raise NotFound(text)
        if status >= 500:
            raise ServerError(status, text)
        raise BadRequest(text, status)

    # --- API -----------------------------------------------------------------------------
    def register(self, registration_token: str, body: dict[str, Any]) -> dict[str, Any]:
        resp = self._request("POST", "/api/v1/agents/register", registration_token, body)
        ok = isinstance(resp, dict) and all(
            isinstance(resp.get(k), str) and resp.get(k)
            for k in ("agent_id", "token", "refresh_token"))
        if not ok:
            raise ServerError(200, "registration answer lacks agent_id, token or refresh_token")
        return resp

    def renew(self, agent_id: str, refresh_token: str) -> str:
        resp = self._request("POST", "/api/v1/agents/renew", None,
                             {"agent_id": agent_id, "refresh_token": refresh_token})
        token = resp.get("token") if isinstance(resp, dict) else None
        if not isinstance(token, str) or not token:
            raise ServerError(200, "renewal answer lacks token")
        return token

    def check_in(self, agent_id: str, jwt: str, metrics: dict[str, Any]) -> dict[str, Any]:
        resp = self._request("GET", f"/api/v1/agents/{quote(agent_id, safe='')}/commands",
                             jwt, metrics)
        if not isinstance(resp, dict):
            raise ServerError(200, "check-in answer is not a JSON object")
        return resp

    def report_updates(self, agent_id: str, jwt: str, body: dict[str, Any]) -> Any:
        return self._request("POST", f"/api/v1/agents/{quote(agent_id, safe='')}/updates",
                             jwt, body)

    def unregister(self, agent_id: str, jwt: str) -> Any:
        return self._request("DELETE", f"/api/v1/agents/{quote(agent_id, safe='')}", jwt)
