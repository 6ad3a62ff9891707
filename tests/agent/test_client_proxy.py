"""The config's proxy (CONTRACT 3): no_proxy, proxy.username/password as Proxy-Authorization
for plain HTTP and for the CONNECT of an https tunnel, and never the environment's proxies.
Pure tables first, then the real client through a loopback proxy that demands credentials."""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import socket
import socketserver
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional
from urllib.parse import urlsplit

import pytest

from redflag_agent.client import (
    Client,
    ProxyRoute,
    Unreachable,
    bypasses_proxy,
    proxy_route,
)

UUID = "4b3f0c1e-0000-4000-8000-000000000001"
GOOD = {"agent_id": UUID, "token": "eyJhbGciOi.J9.x-_", "refresh_token": "r" * 64}
SECRET = "pw-proxy-7c1f"  # noqa: S105 - a fake password the tests look for in output


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# --- pure: no_proxy ------------------------------------------------------------------------
@pytest.mark.parametrize(("host", "port", "no_proxy", "bypass"), [
    ("redflag.example.com", 443, "", False),
    ("redflag.example.com", 443, None, False),
    ("redflag.example.com", 443, "*", True),
    ("redflag.example.com", 443, "other.org, *", True),
    ("redflag.example.com", 443, "redflag.example.com", True),
    ("redflag.example.com", 443, "example.com", True),  # a suffix: names under it
    ("redflag.example.com", 443, ".example.com", True),
    ("example.com", 443, ".example.com", True),  # a leading dot changes nothing (curl)
    ("redflag.example.com", 443, "*.example.com", True),
    ("redflag.example.com", 443, "EXAMPLE.COM", True),  # case-insensitive
    ("redflag.example.com.", 443, "example.com", True),  # a trailing dot too
    ("redflag.example.com", 443, "ample.com", False),  # only at a dot
    ("redflag.example.com", 443, "redflag.example", False),
    ("redflag.example.com", 443, "a.org,example.com", True),
    ("redflag.example.com", 443, "a.org example.com", True),  # blanks separate too
    ("redflag.example.com", 443, " a.org , , example.com ", True),
    ("redflag.example.com", 443, "example.com:443", True),
    ("redflag.example.com", 443, "example.com:8443", False),
    ("redflag.example.com", 443, "example.com:x", False),
    ("127.0.0.1", 8080, "127.0.0.1", True),
    ("127.0.0.1", 8080, "127.0.0.1:8080", True),
    ("127.0.0.1", 8080, "127.0.0.1:80", False),
    ("127.0.0.1", 8080, "127.0.0.0/8", True),  # CIDR, as curl
    ("10.1.2.3", 80, "127.0.0.0/8", False),
    ("127.0.0.1", 8080, "0.0.1", False),  # no suffix match on an address
    ("127.0.0.1", 8080, "localhost", False),  # nothing is resolved
    ("localhost", 8080, "127.0.0.1", False),
    ("::1", 8080, "::1", True),
    ("::1", 8080, "[::1]", True),
    ("::1", 8080, "[::1]:8080", True),
    ("::1", 8080, "[::1]:80", False),
    ("::1", 8080, "127.0.0.1", False),
    ("fd00::5", 443, "fd00::/8", True),
    ("redflag.example.com", 443, ":443", False),  # no host: matches nothing
])
def test_bypasses_proxy(host, port, no_proxy, bypass):
    assert bypasses_proxy(host, port, no_proxy) is bypass


# --- pure: the route -----------------------------------------------------------------------
P = {"enabled": True, "http": "http://proxy.example:3128", "https": "http://proxy.example:3129"}


@pytest.mark.parametrize(("proxy", "url", "route"), [
    (None, "http://s", None),
    ({**P, "enabled": False}, "http://s", None),
    (P, "http://s", ProxyRoute("proxy.example:3128", None)),
    (P, "https://s", ProxyRoute("proxy.example:3129", None)),
    ({**P, "https": ""}, "https://s", None),  # no proxy for the server's scheme
    ({**P, "https": None}, "https://s", None),
    ({**P, "no_proxy": "s"}, "http://s:8080", None),
    ({**P, "no_proxy": "s:8080"}, "http://s:8080", None),
    ({**P, "no_proxy": "s:80"}, "http://s", None),  # the scheme's default port
    ({**P, "no_proxy": "s:443"}, "http://s", ProxyRoute("proxy.example:3128", None)),
    ({**P, "http": "proxy.example:3128"}, "http://s", ProxyRoute("proxy.example:3128", None)),
    ({**P, "http": "http://proxy.example"}, "http://s", ProxyRoute("proxy.example:80", None)),
    ({**P, "http": "https://proxy.example"}, "http://s", ProxyRoute("proxy.example:443", None)),
    ({**P, "http": "http://[::1]:3128/"}, "http://s", ProxyRoute("[::1]:3128", None)),
    # credentials: the fields, else the URL's (percent-decoded); the fields win over the URL
    ({**P, "username": "u", "password": "p w:x"}, "http://s",
     ProxyRoute("proxy.example:3128", basic("u", "p w:x"))),
    ({**P, "username": "u", "password": None}, "http://s",
     ProxyRoute("proxy.example:3128", basic("u", ""))),
    ({**P, "http": "http://a%40b:p%3Aw@proxy.example:3128"}, "http://s",
     ProxyRoute("proxy.example:3128", basic("a@b", "p:w"))),
    ({**P, "http": "http://a@proxy.example:3128"}, "http://s",
     ProxyRoute("proxy.example:3128", basic("a", ""))),
    ({**P, "http": "http://url:urlpw@proxy.example:3128", "username": "u", "password": "pw"},
     "http://s", ProxyRoute("proxy.example:3128", basic("u", "pw"))),
    ({**P, "http": "http://url:urlpw@proxy.example:3128", "username": "", "password": ""},
     "http://s", ProxyRoute("proxy.example:3128", basic("url", "urlpw"))),
    ({**P, "username": "", "password": ""}, "http://s", ProxyRoute("proxy.example:3128", None)),
    # a password alone is sent with an empty user name (curl -U :pw, Go)
    ({**P, "http": "http://url:urlpw@proxy.example:3128", "password": "pw"}, "http://s",
     ProxyRoute("proxy.example:3128", basic("", "pw"))),
    ({**P, "http": "http://:urlpw@proxy.example:3128"}, "http://s",
     ProxyRoute("proxy.example:3128", basic("", "urlpw"))),
    ({**P, "username": "ü", "password": "ß"}, "https://s",
     ProxyRoute("proxy.example:3129", basic("ü", "ß"))),  # UTF-8, as curl sends it
])
def test_proxy_route(proxy, url, route):
    assert proxy_route(proxy, url) == route


@pytest.mark.parametrize(("proxy", "fragment"), [
    ({**P, "http": f"socks5://u:{SECRET}@proxy.example:1080"}, "proxy.http: proxy scheme "
                                                              "socks5:// is not supported"),
    ({**P, "http": f"http://u:{SECRET}@proxy.example:31x8"}, "proxy.http is not a proxy URL"),
    ({**P, "http": f"http://u:{SECRET}@:3128"}, "proxy.http is not a proxy URL"),
    ({**P, "http": f"http://u:{SECRET}@[::1"}, "proxy.http is not a proxy URL"),
    ({**P, "username": "a:b", "password": SECRET}, "proxy.username holds a ':'"),
    ({**P, "http": f"http://a%3Ab:{SECRET}@proxy.example:1"}, "the proxy URL's user name holds"),
])
def test_unusable_proxy_is_a_clear_error_without_the_password(proxy, fragment):
    with pytest.raises(ValueError) as exc:
        proxy_route(proxy, "http://s")
    assert fragment in str(exc.value)
    assert SECRET not in str(exc.value) and SECRET not in repr(exc.value)
    with pytest.raises(ValueError):  # the client refuses it when built: exit 78 at start
        Client("http://s", proxy=proxy)


def test_server_url_with_a_bad_port_is_refused():
    with pytest.raises(ValueError, match="has no valid port"):
        Client("http://127.0.0.1:80x")


# --- a loopback proxy that demands credentials -------------------------------------------
class AuthProxy:
    """A tiny threaded HTTP proxy on 127.0.0.1: absolute-URI requests forwarded, CONNECT
    tunnelled; 407 unless Proxy-Authorization equals `expect` (None: no auth needed). It only
    ever connects to 127.0.0.1 (the port from the request; the host name is not resolved)."""

    def __init__(self, expect: Optional[str]) -> None:
        self.expect = expect
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        proxy = self

        class Handler(socketserver.StreamRequestHandler):
            timeout = 10  # every read and write of a test is bounded

            def handle(self) -> None:
                proxy._handle(self)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def _handle(self, h: Any) -> None:
        line = h.rfile.readline(8192).decode("latin-1").rstrip("\r\n")
        headers: dict[str, str] = {}
        for _ in range(100):
            raw = h.rfile.readline(8192).decode("latin-1").rstrip("\r\n")
            if not raw:
                break
            name, _, value = raw.partition(":")
            headers[name.strip().lower()] = value.strip()
        method, target, _version = line.split(" ", 2)
        self.seen.append((method, target, headers))
        if self.expect is not None and headers.get("proxy-authorization") != self.expect:
            h.wfile.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                          b'Proxy-Authenticate: Basic realm="test"\r\nContent-Length: 0\r\n'
                          b"Connection: close\r\n\r\n")
            return
        if method == "CONNECT":
            port = int(target.rsplit(":", 1)[1])
            with socket.create_connection(("127.0.0.1", port), timeout=10) as upstream:
                h.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                h.wfile.flush()
                self._splice(h.connection, upstream)
            return
        parts = urlsplit(target)
        length = int(headers.get("content-length") or 0)
        body = h.rfile.read(length) if length else b""
        kept = "".join(f"{k}: {v}\r\n" for k, v in headers.items()
                       if k not in ("proxy-authorization", "proxy-connection", "connection"))
        head = f"{method} {parts.path} HTTP/1.1\r\n{kept}Connection: close\r\n\r\n"
        with socket.create_connection(("127.0.0.1", parts.port or 80), timeout=10) as upstream:
            upstream.sendall(head.encode("latin-1") + body)
            while chunk := upstream.recv(65536):
                h.wfile.write(chunk)

    @staticmethod
    def _splice(client: socket.socket, upstream: socket.socket) -> None:
        def pump(src: socket.socket, dst: socket.socket) -> None:
            with contextlib.suppress(OSError):
                while chunk := src.recv(65536):
                    dst.sendall(chunk)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

        back = threading.Thread(target=pump, args=(upstream, client), daemon=True)
        back.start()
        pump(client, upstream)
        back.join(10)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def auth_proxy():
    proxies: list[AuthProxy] = []

    def make(expect: Optional[str] = basic("agent", SECRET)) -> AuthProxy:
        proxies.append(AuthProxy(expect))
        return proxies[-1]

    yield make
    for proxy in proxies:
        proxy.close()


def _register_route(fake_server):
    fake_server.on("POST", "/api/v1/agents/register", (200, GOOD))


# --- plain HTTP through the proxy ----------------------------------------------------------
def test_http_request_carries_the_configured_credentials(auth_proxy, fake_server):
    _register_route(fake_server)
    proxy = auth_proxy()
    cfg = {"enabled": True, "http": proxy.url, "username": "agent", "password": SECRET}
    assert Client(fake_server.url, timeout=10, proxy=cfg).register("T", {})["agent_id"] == UUID
    method, target, headers = proxy.seen[0]
    assert (method, target) == ("POST", fake_server.url + "/api/v1/agents/register")
    assert headers["proxy-authorization"] == basic("agent", SECRET)
    origin = {k.lower(): v for k, v in fake_server.seen("POST")[0].headers.items()}
    assert origin["authorization"] == "Bearer T"


def test_url_credentials_still_work(auth_proxy, fake_server):
    _register_route(fake_server)
    proxy = auth_proxy()
    url = proxy.url.replace("http://", f"http://agent:{SECRET}@")
    assert Client(fake_server.url, timeout=10,
                  proxy={"enabled": True, "http": url}).register("T", {})["agent_id"] == UUID


def test_fields_win_over_url_credentials(auth_proxy, fake_server):
    _register_route(fake_server)
    proxy = auth_proxy()
    url = proxy.url.replace("http://", "http://stale:old-pw@")
    cfg = {"enabled": True, "http": url, "username": "agent", "password": SECRET}
    assert Client(fake_server.url, timeout=10, proxy=cfg).register("T", {})["agent_id"] == UUID
    assert proxy.seen[0][2]["proxy-authorization"] == basic("agent", SECRET)


@pytest.mark.parametrize("creds", [{}, {"username": "agent", "password": "wrong-" + SECRET}])
def test_http_407_is_a_clear_retryable_error_without_the_password(auth_proxy, fake_server,
                                                                  creds):
    _register_route(fake_server)
    proxy = auth_proxy()
    client = Client(fake_server.url, timeout=10, proxy={"enabled": True, "http": proxy.url,
                                                        **creds})
    with pytest.raises(Unreachable) as exc:
        client.register("T", {})
    text = str(exc.value)
    assert "proxy 127.0.0.1:" in text and "407 Proxy Authentication Required" in text
    assert "proxy.username and proxy.password" in text
    assert exc.value.retryable and SECRET not in text and SECRET not in repr(exc.value)
    assert fake_server.seen() == []


def test_no_proxy_sends_the_server_direct(auth_proxy, fake_server):
    _register_route(fake_server)
    proxy = auth_proxy(None)
    cfg = {"enabled": True, "http": proxy.url, "no_proxy": "example.org, 127.0.0.1"}
    assert Client(fake_server.url, timeout=10, proxy=cfg).register("T", {})["agent_id"] == UUID
    assert proxy.seen == []
    cfg["no_proxy"] = "example.org"
    assert Client(fake_server.url, timeout=10, proxy=cfg).register("T", {})["agent_id"] == UUID
    assert len(proxy.seen) == 1


def test_environment_proxies_are_ignored(auth_proxy, fake_server, monkeypatch):
    _register_route(fake_server)
    env_proxy, cfg_proxy = auth_proxy(None), auth_proxy(None)
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "all_proxy"):
        monkeypatch.setenv(name, env_proxy.url)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "*")  # urllib's own ProxyHandler would go direct
    Client(fake_server.url, timeout=10).register("T", {})
    Client(fake_server.url, timeout=10,
           proxy={"enabled": True, "http": cfg_proxy.url}).register("T", {})
    assert env_proxy.seen == [] and len(cfg_proxy.seen) == 1


# --- https: the credentials go on the CONNECT only -------------------------------------
@pytest.fixture(scope="module")
def tls_origin(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    seen: list[dict[str, str]] = []

    class Honest(BaseHTTPRequestHandler):
        timeout = 10

        def do_POST(self):  # noqa: N802
            seen.append({k.lower(): v for k, v in self.headers.items()})
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = json.dumps(GOOD).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Honest)
    httpd.daemon_threads = True
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert), str(key))
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{httpd.server_address[1]}", str(cert), seen
    httpd.shutdown()
    httpd.server_close()


def test_https_tunnel_sends_the_credentials_on_connect_only(auth_proxy, tls_origin):
    url, ca_file, seen = tls_origin
    seen.clear()
    proxy = auth_proxy()
    cfg = {"enabled": True, "https": proxy.url, "username": "agent", "password": SECRET}
    client = Client(url, timeout=10, proxy=cfg, tls={"ca_file": ca_file})
    assert client.register("T", {})["agent_id"] == UUID
    method, target, headers = proxy.seen[0]
    assert (method, target) == ("CONNECT", url.removeprefix("https://"))
    assert headers["proxy-authorization"] == basic("agent", SECRET)
    # the server behind the tunnel never sees the proxy's credentials
    assert len(seen) == 1 and "proxy-authorization" not in seen[0]
    assert seen[0]["authorization"] == "Bearer T"


def test_https_tunnel_with_url_credentials(auth_proxy, tls_origin):
    url, ca_file, _seen = tls_origin
    proxy = auth_proxy()
    cfg = {"enabled": True, "https": proxy.url.replace("http://", f"http://agent:{SECRET}@")}
    client = Client(url, timeout=10, proxy=cfg, tls={"ca_file": ca_file})
    assert client.register("T", {})["agent_id"] == UUID


def test_https_tunnel_407_is_the_same_clear_error(auth_proxy, tls_origin):
    url, ca_file, seen = tls_origin
    seen.clear()
    proxy = auth_proxy()
    cfg = {"enabled": True, "https": proxy.url, "username": "agent",
           "password": "wrong-" + SECRET}
    with pytest.raises(Unreachable) as exc:
        Client(url, timeout=10, proxy=cfg, tls={"ca_file": ca_file}).register("T", {})
    text = str(exc.value)
    assert "407 Proxy Authentication Required" in text and "proxy.username" in text
    assert SECRET not in text and seen == []


def test_other_tunnel_failures_name_the_proxy(tls_origin):
    url, ca_file, _seen = tls_origin

    class Refusing(BaseHTTPRequestHandler):
        def do_CONNECT(self):  # noqa: N802
            self.send_error(403, "Forbidden")

        def log_message(self, *_args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        cfg = {"enabled": True, "https": f"http://127.0.0.1:{httpd.server_address[1]}",
               "username": "agent", "password": SECRET}
        with pytest.raises(Unreachable) as exc:
            Client(url, timeout=10, proxy=cfg, tls={"ca_file": ca_file}).register("T", {})
        text = str(exc.value)
        assert f"through the proxy 127.0.0.1:{httpd.server_address[1]}" in text
        assert "Tunnel connection failed: 403" in text and SECRET not in text
    finally:
        httpd.shutdown()
        httpd.server_close()
