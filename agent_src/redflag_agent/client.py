"""HTTP to the aggregator (CONTRACT section 4) with urllib; failures become typed exceptions.

No environment proxies (only the config's proxy, its no_proxy and credentials), no redirects
(a Bearer token must not follow one), and no token or proxy password ever appears in an
exception message. A server is not trusted: answers are bounded (size, nesting, an overall
deadline per request, name resolution included) and checked before anything is stored, and
its text is escaped before it can reach a log line.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import ipaddress
import json
import math
import re
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable, NamedTuple, Optional
from urllib.parse import quote, unquote, urlsplit

from .logs import clean
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


class BindingRefused(ClientError):
    """403 from a server that binds agents to machines (CONTRACT 4b). `kind` is one of
    MISSING_HEADER, NOT_BOUND, MISMATCH. Terminal: renewing cannot change the answer."""

    def __init__(self, kind: str, message: str = "") -> None:
        super().__init__(f"refused (403): {message or kind}")
        self.kind = kind
        self.message = message


class UpgradeRequired(ClientError):
    """426: the server requires a newer agent. Versions are the server's text, escaped."""

    def __init__(self, message: str = "", current: str = "", minimum: str = "") -> None:
        super().__init__(f"upgrade required (426): {message or 'no reason given'}")
        self.message = message
        self.current = current
        self.minimum = minimum


class MachineConflict(ClientError):
    """409 on register: this machine ID is bound to another agent. Fields escaped, bounded."""

    def __init__(self, message: str = "", existing_agent_id: str = "",
                 existing_hostname: str = "", existing_last_seen: str = "",
                 remediation: str = "") -> None:
        super().__init__(f"conflict (409): {message or 'no reason given'}")
        self.message = message
        self.existing_agent_id = existing_agent_id
        self.existing_hostname = existing_hostname
        self.existing_last_seen = existing_last_seen
        self.remediation = remediation


MISSING_HEADER = "missing_header"
NOT_BOUND = "not_bound"
MISMATCH = "mismatch"
# prefixes of the 403 texts (lowercase); upstream's renew words them slightly differently
_BINDING_PREFIXES = (
    ("missing machine id", MISSING_HEADER),
    ("agent not bound", NOT_BOUND),
    ("machine id mismatch", MISMATCH),
)


def binding_kind(text: str) -> Optional[str]:
    """Pure: which machine-binding refusal a 403 error text is, or None for another 403."""
    low = text.strip().lower()
    for prefix, kind in _BINDING_PREFIXES:
        if low.startswith(prefix):
            return kind
    return None


class InvalidAnswer(ServerError):
    """The server answered, but not with something the agent may use: too large, too deep,
    not JSON, or fields of the wrong form. Retryable: the next answer may be fine."""

    def __init__(self, status: int, message: str) -> None:
        ClientError.__init__(self, f"refused the server's answer (HTTP {status}): {message}")
        self.status = status
        self.message = message


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        return None


# --- bounds on what a server can make the agent hold or wait for ---------------------------
MAX_BODY = 1024 * 1024  # a JSON answer; real ones are a few KiB
MAX_ERROR_BODY = 16 * 1024  # an error answer is only read for its "error" text
MAX_DEPTH = 32  # JSON nesting; real answers nest 3 deep
MAX_INT_DIGITS = 64  # int() of a huge digit string is quadratic before Python 3.11
MAX_TOKEN = 8192
# a server-suggested check_in_interval above this is ignored; equal to config's upper bound so a
# stored value never makes the next start refuse the config (test_client_bounds checks it)
MAX_SERVER_INTERVAL = 86400
ERROR_TEXT_LIMIT = 200
_CHUNK = 64 * 1024
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_TOKEN = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no space
# a JSON string (possibly cut short) or a bracket: brackets inside strings do not nest
_JSON_NESTING = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[\]{}]', re.S)


def json_depth(text: str, limit: int = MAX_DEPTH) -> int:
    """Pure: the nesting depth of JSON text, counting no further than limit + 1."""
    depth = deepest = 0
    for match in _JSON_NESTING.finditer(text):
        ch = match.group()
        if ch in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    break
        elif ch in "]}":
            depth -= 1
    return deepest


def _bounded_int(text: str) -> int:
    if len(text) > MAX_INT_DIGITS:
        raise ValueError("number too long")
    return int(text)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_answer(raw: bytes, status: int = 200) -> Any:
    """Pure: an answer body -> its JSON value, or InvalidAnswer. Empty means {}."""
    if len(raw) > MAX_BODY:
        raise InvalidAnswer(status, f"answer larger than {MAX_BODY} bytes")
    if not raw.strip():
        return {}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidAnswer(status, "answer is not UTF-8 text") from None
    if json_depth(text) > MAX_DEPTH:
        raise InvalidAnswer(status, f"answer nests deeper than {MAX_DEPTH} levels")
    try:
        return json.loads(text, parse_int=_bounded_int, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise InvalidAnswer(status, "answer is not JSON") from None


def token_problem(value: Any, name: str) -> Optional[str]:
    """Pure: why value cannot be stored as a token, or None. Never quotes the value."""
    if not isinstance(value, str) or not value:
        return f"{name} is missing or not a string"
    if len(value) > MAX_TOKEN:
        return f"{name} is longer than {MAX_TOKEN} characters"
    if not _TOKEN.fullmatch(value):
        return f"{name} holds characters other than printable ASCII without spaces"
    return None


def agent_id_problem(value: Any) -> Optional[str]:
    """Pure: why value is not a canonical UUID (8-4-4-4-12 hex digits), or None."""
    if not isinstance(value, str) or not value:
        return "agent_id is missing or not a string"
    if not _UUID.fullmatch(value):
        return "agent_id is not a UUID (8-4-4-4-12 hex digits)"
    return None


def registration_answer(resp: Any) -> dict[str, Any]:
    """Pure: the fields of a 200 register answer the agent may store, or InvalidAnswer."""
    if not isinstance(resp, dict):
        raise InvalidAnswer(200, "registration answer is not a JSON object; nothing was stored")
    problems = [p for p in (agent_id_problem(resp.get("agent_id")),
                            token_problem(resp.get("token"), "token"),
                            token_problem(resp.get("refresh_token"), "refresh_token")) if p]
    if problems:
        raise InvalidAnswer(200, "registration answer: " + "; ".join(problems)
                            + "; nothing was stored")
    out = {k: resp[k] for k in ("agent_id", "token", "refresh_token")}
    server_cfg = resp.get("config")
    interval = server_cfg.get("check_in_interval") if isinstance(server_cfg, dict) else None
    if (isinstance(interval, int) and not isinstance(interval, bool)
            and 0 < interval <= MAX_SERVER_INTERVAL):
        out["config"] = {"check_in_interval": interval}
    return out


class Renewal(NamedTuple):
    token: str
    refresh_token: Optional[str]  # only from a rotating (0.2.x) server


def renewal_answer(resp: Any) -> Renewal:
    """Pure: the tokens of a 200 renew answer, or InvalidAnswer."""
    if not isinstance(resp, dict):
        raise InvalidAnswer(200, "renewal answer is not a JSON object")
    problem = token_problem(resp.get("token"), "token")
    rotated = "refresh_token" in resp  # 0.2.x rotates it
    if problem is None and rotated:
        problem = token_problem(resp.get("refresh_token"), "refresh_token")
    if problem:
        raise InvalidAnswer(200, f"renewal answer: {problem}; nothing was stored")
    return Renewal(str(resp["token"]), str(resp["refresh_token"]) if rotated else None)


def _error_obj(body: bytes) -> tuple[str, dict[str, Any]]:
    """The server's `error` text, escaped and bounded for the log lines it reaches, and the
    answer's other fields (raw: callers take them through _field)."""
    try:
        obj = parse_answer(body, 0)
    except InvalidAnswer:
        return clean(body[:ERROR_TEXT_LIMIT].decode("utf-8", "replace").strip(),
                     ERROR_TEXT_LIMIT), {}
    if not isinstance(obj, dict):
        return "", {}
    text = clean(obj["error"], ERROR_TEXT_LIMIT) if isinstance(obj.get("error"), str) else ""
    return text, obj


def _error_text(body: bytes) -> str:
    return _error_obj(body)[0]


def _field(obj: dict[str, Any], key: str, limit: int = 100) -> str:
    """A string field of an error answer, escaped and bounded ('' when absent or no string)."""
    value = obj.get(key)
    return clean(value, limit) if isinstance(value, str) else ""


def _retry_after(value: Optional[str]) -> Optional[float]:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


class _Deadline:
    """One request's overall deadline. A per-read socket timeout alone lets a server that
    sends a byte every few seconds hold the agent forever; at the deadline a timer thread
    shuts the socket down, which ends any blocked connect-handshake/send/receive."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self.expired = False
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._closed = False
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def left(self) -> float:
        return self.end - time.monotonic()

    def watch(self, sock: socket.socket) -> None:
        # a duplicate: TLS wrapping detaches the original, and shutdown reaches the
        # connection through any descriptor of it
        with self._lock:
            self._socks.append(sock.dup())
            if self.expired:
                self._shutdown()

    def _shutdown(self) -> None:
        for sock in self._socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _fire(self) -> None:
        with self._lock:
            if self._closed:
                return
            self.expired = True
            self._shutdown()

    def close(self) -> None:
        self._timer.cancel()
        with self._lock:
            self._closed = True
            for sock in self._socks:
                sock.close()
            self._socks.clear()


class _ResolveTimeout(OSError):
    """getaddrinfo did not answer within what was left of the request's deadline."""

    def __init__(self, host: str) -> None:
        super().__init__(f"name resolution of {clean(host, 100)} did not finish in time")
        self.host = host


class _Lookup:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: list[Any] = []
        self.error: Optional[BaseException] = None


# lookups still running, by (host, port): a request that finds one waits for it instead of
# starting another, so a dead resolver holds at most one thread per name, not one per retry
_LOOKUPS: dict[tuple[str, int], _Lookup] = {}
_LOOKUPS_LOCK = threading.Lock()


def _lookup(key: tuple[str, int], lookup: _Lookup) -> None:
    try:
        lookup.result = socket.getaddrinfo(key[0], key[1], 0, socket.SOCK_STREAM)
    except Exception as exc:  # gaierror, or UnicodeError for a name IDNA cannot encode
        lookup.error = exc
    finally:
        with _LOOKUPS_LOCK:
            if _LOOKUPS.get(key) is lookup:
                del _LOOKUPS[key]
        lookup.done.set()


def resolve(host: str, port: int, wait: float) -> list[Any]:
    """getaddrinfo bounded by `wait` seconds, which no socket timeout bounds: it runs in a
    daemon thread (it cannot be cancelled; one is left behind per name until the resolver
    gives up). _ResolveTimeout when it does not answer in time."""
    key = (host, port)
    with _LOOKUPS_LOCK:
        lookup = _LOOKUPS.get(key)
        if lookup is None:
            lookup = _LOOKUPS[key] = _Lookup()
            threading.Thread(target=_lookup, args=(key, lookup), daemon=True,
                             name="redflag-resolve").start()
    if not lookup.done.wait(max(0.0, wait)):
        raise _ResolveTimeout(host)
    if lookup.error is not None:
        raise lookup.error
    return lookup.result


def _connect(deadline: _Deadline, address: tuple[str, int], timeout: Any,
             source_address: Any) -> socket.socket:
    """socket.create_connection with the name resolution inside the deadline as well."""
    host, port = address
    infos = resolve(host, port, deadline.left())
    error: Optional[OSError] = None
    for family, kind, proto, _name, addr in infos:
        left = deadline.left()
        if left <= 0:
            raise socket.timeout("deadline")
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(min(timeout, left) if isinstance(timeout, (int, float)) else left)
            if source_address:
                sock.bind(source_address)
            sock.connect(addr)
            return sock
        except OSError as exc:
            error = exc
            sock.close()
    raise error or OSError(f"no address found for {clean(host, 100)}")


class _WatchedConnection:
    """Mixin: the connection's socket is handed to the request's deadline once created."""

    def __init__(self, *args: Any, deadline: _Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        self._redflag_deadline = deadline
        self._create_connection = self._create_watched

    def _create_watched(self, address: Any, timeout: Any = None,
                        source_address: Any = None) -> socket.socket:
        deadline = self._redflag_deadline
        sock = _connect(deadline, address, timeout, source_address)
        deadline.watch(sock)
        return sock


class _HTTPConnection(_WatchedConnection, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_WatchedConnection, http.client.HTTPSConnection):
    pass


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: Callable[[], _Deadline]) -> None:
        super().__init__()
        self._deadline = deadline

    def http_open(self, req: Any) -> Any:
        return self.do_open(_HTTPConnection, req, deadline=self._deadline())


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: Callable[[], _Deadline], context: ssl.SSLContext) -> None:
        super().__init__(context=context)
        self._deadline = deadline

    def https_open(self, req: Any) -> Any:
        return self.do_open(_HTTPSConnection, req, context=self._context,
                            deadline=self._deadline())


def _read_capped(stream: Any, cap: int) -> tuple[bytes, bool]:
    """Read in chunks, never holding more than cap + one chunk: (body, cut short)."""
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = stream.read(min(_CHUNK, cap + 1 - total))
        if not chunk:
            return b"".join(chunks), False
        chunks.append(chunk)
        total += len(chunk)
        if total > cap:
            return b"", True


def _declared_length(headers: Any) -> Optional[int]:
    try:
        return int(headers.get("Content-Length"))
    except (TypeError, ValueError):
        return None


_TUNNEL_407 = re.compile(r"Tunnel connection failed: 407\b")  # http.client's words, CONNECT

# --- proxy: the config's only. urllib's own ProxyHandler also asks the environment's
# no_proxy (proxy_bypass); this one reads proxy.no_proxy and nothing else. ------------------
_DEFAULT_PORTS = {"http": 80, "https": 443}
_PROXY_URL_HINT = ("expected http://proxy.example:3128; credentials go in proxy.username and "
                   "proxy.password, or in the URL as http://user:password@proxy.example:3128")


class ProxyRoute(NamedTuple):
    hostport: str  # the proxy as host:port, credentials stripped: safe in a message
    auth: Optional[str]  # the Proxy-Authorization value (HTTP Basic), or None


def _port_of(text: str) -> int:
    return int(text) if text.isascii() and text.isdigit() else -1  # -1: matches no port


def _split_port(entry: str) -> tuple[str, Optional[int]]:
    """A no_proxy entry -> (host, port or None): 'h', 'h:80', '::1', '[::1]', '[::1]:80'."""
    if entry.startswith("["):
        inside, _bracket, rest = entry[1:].partition("]")
        return inside, _port_of(rest[1:]) if rest.startswith(":") else None
    if entry.count(":") == 1:
        name, _colon, port = entry.partition(":")
        return name, _port_of(port)
    return entry, None


def bypasses_proxy(host: str, port: int, no_proxy: Any) -> bool:
    """Pure: whether no_proxy (entries separated by commas or blanks) sends host:port direct,
    read as curl and urllib's proxy_bypass do: `*` matches every host; a name matches itself
    and every name under it (a leading `.` or `*.` changes nothing), case-insensitively; an IP
    address or CIDR network matches IP literals only (nothing is resolved); `entry:port`
    matches that port only."""
    if not isinstance(no_proxy, str):
        return False
    host = host.lower().rstrip(".")
    try:
        addr: Any = ipaddress.ip_address(host)
    except ValueError:
        addr = None
    for entry in re.split(r"[,\s]+", no_proxy):
        if entry == "*":
            return True
        name, want_port = _split_port(entry)
        if not name or (want_port is not None and want_port != port):
            continue
        try:
            net: Any = ipaddress.ip_network(name, strict=False)
        except ValueError:
            net = None
        if net is not None:
            if addr is not None and addr in net:
                return True
            continue
        name = name.lower().lstrip("*").lstrip(".").rstrip(".")
        if addr is None and name and (host == name or host.endswith("." + name)):
            return True
    return False


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _proxy_target(url: str, field: str) -> tuple[str, str, str]:
    """A proxy URL -> (host:port, user, password). ValueError naming the field and never
    quoting the URL, which may hold a password."""
    scheme = url.partition("://")[0].lower() if "://" in url else "http"
    if scheme not in _DEFAULT_PORTS:
        # https:// is spoken to as plain HTTP as well (CONNECT for an https server), as
        # urllib always did; a SOCKS proxy cannot be spoken to at all
        raise ValueError(f"{field}: proxy scheme {clean(scheme, 20)}:// is not "
                         f"supported; {_PROXY_URL_HINT}")
    try:  # urlsplit and .port raise ValueError, quoting the URL: never shown
        parts = urlsplit(url if "://" in url else "http://" + url)
        port = parts.port or _DEFAULT_PORTS[scheme]
        host = parts.hostname
    except ValueError:
        host = None
    if not host:
        raise ValueError(f"{field} is not a proxy URL with a host and a numeric port; "
                         f"{_PROXY_URL_HINT}")
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port}", unquote(parts.username or ""), unquote(parts.password or "")


def _proxy_auth(proxy: dict[str, Any], url_user: str, url_password: str) -> Optional[str]:
    """The Proxy-Authorization value. proxy.username/password, when either is set, win over
    credentials in the URL: they are the fields the role keeps in a vault and masks. An
    empty user name or password is sent as such (as curl -U and Go do)."""
    user, password = _text(proxy.get("username")), _text(proxy.get("password"))
    where = "proxy.username"
    if not (user or password):
        user, password, where = url_user, url_password, "the proxy URL's user name"
    if not (user or password):
        return None
    if ":" in user:
        raise ValueError(f"{where} holds a ':', which HTTP Basic proxy authentication "
                         "cannot carry; fix the user name")
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def proxy_route(proxy: Optional[dict[str, Any]], server_url: str) -> Optional[ProxyRoute]:
    """Pure: None to reach server_url directly, else the proxy and its credentials.
    ValueError naming the field (never its value) when the setting cannot be used."""
    if not isinstance(proxy, dict) or not proxy.get("enabled"):
        return None
    parts = urlsplit(server_url)
    url = _text(proxy.get(parts.scheme)).strip()
    if not url:
        return None
    port = parts.port or _DEFAULT_PORTS[parts.scheme]
    if bypasses_proxy(parts.hostname or "", port, proxy.get("no_proxy")):
        return None
    hostport, url_user, url_password = _proxy_target(url, f"proxy.{parts.scheme}")
    return ProxyRoute(hostport, _proxy_auth(proxy, url_user, url_password))


class _ConfigProxy(urllib.request.ProxyHandler):
    """Sends every request through route; Proxy-Authorization is moved to the CONNECT of
    an https tunnel by urllib's do_open (never sent on to the server)."""

    def __init__(self, scheme: str, route: ProxyRoute) -> None:
        super().__init__({scheme: route.hostport})  # registers <scheme>_open -> proxy_open
        self._route = route

    def proxy_open(self, req: Any, proxy: str, type: str) -> None:  # noqa: A002 - urllib's name
        if self._route.auth:
            req.add_header("Proxy-authorization", self._route.auth)
        req.set_proxy(self._route.hostport, "http")
        # the http/https handler opens it: plain to the proxy, or a tunnel


class Client:
    def __init__(self, server_url: str, timeout: float = 30.0,
                 proxy: Optional[dict[str, Any]] = None,
                 tls: Optional[dict[str, Any]] = None,
                 machine_id: Optional[str] = None) -> None:
        parts = urlsplit(server_url.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"server_url {server_url!r} is not an http(s) URL "
                             "(expected e.g. https://redflag.example:8080)")
        if not (isinstance(timeout, (int, float)) and 0 < timeout <= threading.TIMEOUT_MAX):
            raise ValueError(f"network.timeout {timeout!r} is not a positive number of seconds")
        try:
            parts.port  # noqa: B018 - raises ValueError for a port that is no number
        except ValueError:
            raise ValueError(f"server_url {server_url!r} has no valid port (expected e.g. "
                             "https://redflag.example:8080)") from None
        self.base = server_url.strip().rstrip("/")
        self.timeout = float(timeout)
        self.proxy = proxy_route(proxy, self.base)
        # sent as X-Machine-ID on every request (CONTRACT 4b); servers before 0.1.22 ignore it
        self.machine_id = machine_id
        self._deadline: Optional[_Deadline] = None
        direct = urllib.request.ProxyHandler({})  # {}: not the environment's proxies
        handlers: list[Any] = [_NoRedirect(),
                               _ConfigProxy(parts.scheme, self.proxy) if self.proxy else direct,
                               _HTTPHandler(self._current_deadline)]
        if parts.scheme == "https":
            handlers.append(_HTTPSHandler(self._current_deadline,
                                          self._ssl_context(tls or {})))
        self._opener = urllib.request.build_opener(*handlers)

    def _current_deadline(self) -> _Deadline:
        assert self._deadline is not None  # noqa: S101 - set by _request around every open
        return self._deadline

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
        if self.machine_id:
            req.add_header("X-Machine-ID", self.machine_id)
        deadline = self._deadline = _Deadline(self.timeout)
        try:
            status, raw, retry_after, failed = self._exchange(req)
            if deadline.expired:  # a shut-down socket can look like a short, complete body
                raise socket.timeout("deadline")
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, _ResolveTimeout):
                raise Unreachable(f"cannot reach {self.base}: looking up the address of "
                                  f"{clean(reason.host, 100)} took longer than "
                                  f"{self.timeout:g} s (network.timeout); check the DNS "
                                  "servers in /etc/resolv.conf") from None
            # also when a socket timeout beat the timer to it: the request's time is up
            if deadline.expired or deadline.left() <= 0:
                raise Unreachable(f"no complete answer from {self.base} within "
                                  f"{self.timeout:g} s (network.timeout)") from None
            if isinstance(exc, (http.client.HTTPException, ValueError)):
                # a broken status line, headers or chunking: its text is the server's
                raise InvalidAnswer(0, f"malformed HTTP answer ({type(exc).__name__})") from None
            text = str(reason)
            if _TUNNEL_407.match(text):
                raise self._proxy_refused() from None
            via = f" through the proxy {self.proxy.hostport}" if self.proxy else ""
            raise Unreachable(f"cannot reach {self.base}{via}: {clean(text)}") from None
        finally:
            self._deadline = None
            deadline.close()
        if failed and status == 407 and self.proxy:
            raise self._proxy_refused()
        if failed:
            self._raise_for(status, raw, retry_after)
        return parse_answer(raw, status)

    def _proxy_refused(self) -> Unreachable:
        # retryable like any unreachable server: the proxy's user directory may be down
        hostport = self.proxy.hostport if self.proxy else "?"
        return Unreachable(f"cannot reach {self.base}: the proxy {hostport} refused the "
                           "request (407 Proxy Authentication Required); set proxy.username "
                           "and proxy.password to credentials it accepts")

    def _exchange(self, req: urllib.request.Request) -> tuple[int, bytes, Optional[str], bool]:
        """(status, body, Retry-After, is an error status); bodies read within their cap."""
        try:
            resp = self._opener.open(req, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            with contextlib.closing(exc):
                raw = b""
                if exc.fp is not None:
                    raw, _cut = _read_capped(exc, MAX_ERROR_BODY)
            return exc.code, raw, exc.headers.get("Retry-After") if exc.headers else None, True
        with resp:
            declared = _declared_length(resp.headers)
            if declared is not None and declared > MAX_BODY:
                raise InvalidAnswer(resp.status, f"answer larger than {MAX_BODY} bytes "
                                                 f"(Content-Length {declared})")
            raw, cut = _read_capped(resp, MAX_BODY)
            if cut:
                raise InvalidAnswer(resp.status, f"answer larger than {MAX_BODY} bytes")
            return resp.status, raw, None, False

    @staticmethod
    def _raise_for(status: int, raw: bytes, retry_after: Optional[str]) -> None:
        text, obj = _error_obj(raw)
        if status == 429:
            raise RateLimited(_retry_after(retry_after), text)
        if status == 403 and binding_kind(text) is not None:
            raise BindingRefused(str(binding_kind(text)), text)
        if status == 426:
            raise UpgradeRequired(text, _field(obj, "current_version", 40),
                                  _field(obj, "minimum_version", 40))
        if status == 409 and obj.get("existing_agent_id") is not None:
            raise MachineConflict(text, _field(obj, "existing_agent_id", 64),
                                  _field(obj, "existing_hostname"),
                                  _field(obj, "existing_last_seen", 64),
                                  _field(obj, "remediation", ERROR_TEXT_LIMIT))
        if status in (401, 403):
            raise Unauthorized(text)
        if status == 404:
            raise NotFound(text)
        if status >= 500:
            raise ServerError(status, text)
        raise BadRequest(text, status)

    # --- API -----------------------------------------------------------------------------
    def register(self, registration_token: str, body: dict[str, Any]) -> dict[str, Any]:
        return registration_answer(
            self._request("POST", "/api/v1/agents/register", registration_token, body))

    def renew(self, agent_id: str, refresh_token: str) -> Renewal:
        return renewal_answer(self._request("POST", "/api/v1/agents/renew", None,
                                            {"agent_id": agent_id,
                                             "refresh_token": refresh_token,
                                             "agent_version": AGENT_VERSION}))

    def check_in(self, agent_id: str, jwt: str, metrics: dict[str, Any]) -> dict[str, Any]:
        resp = self._request("GET", f"/api/v1/agents/{quote(agent_id, safe='')}/commands",
                             jwt, metrics)
        if not isinstance(resp, dict):
            raise InvalidAnswer(200, "check-in answer is not a JSON object")
        return resp

    def report_updates(self, agent_id: str, jwt: str, body: dict[str, Any]) -> Any:
        return self._request("POST", f"/api/v1/agents/{quote(agent_id, safe='')}/updates",
                             jwt, body)

    def unregister(self, agent_id: str, jwt: str) -> Any:
        return self._request("DELETE", f"/api/v1/agents/{quote(agent_id, safe='')}", jwt)
