"""Generic fixtures: a temporary REDFLAG_ROOT and a scriptable fake server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Optional, Union

import pytest

REPO = Path(__file__).resolve().parent.parent
AGENT_SRC = REPO / "agent_src"
if str(AGENT_SRC) not in sys.path:
    sys.path.insert(0, str(AGENT_SRC))


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    at: float


Response = Union[tuple[int, Any], Callable[[Seen], tuple[int, Any]]]


class FakeServer:
    """Routes (method, path) to a list of responses; the last one repeats. Records requests."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], list[Response]] = {}
        self.requests: list[Seen] = []
        self.cond = threading.Condition()
        handler = self._handler_class()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        # shutdown() waits out serve_forever's poll: 0.5 s by default, per test
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def on(self, method: str, path: str, *responses: Response) -> None:
        self.routes[(method, path)] = list(responses)

    def seen(self, method: Optional[str] = None, path: Optional[str] = None) -> list[Seen]:
        with self.cond:
            return [r for r in self.requests
                    if (method is None or r.method == method) and (path is None or r.path == path)]

    def wait_for(self, method: str, path: str, count: int = 1, timeout: float = 10.0) -> list[Seen]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                hits = [r for r in self.requests if r.method == method and r.path == path]
                if len(hits) >= count:
                    return hits
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {count}x {method} {path}; "
                                         f"seen: {[(r.method, r.path) for r in self.requests]}")
                self.cond.wait(left)

    def _respond(self, seen: Seen) -> tuple[int, Any]:
        queue = self.routes.get((seen.method, seen.path))
        if not queue:
            return 404, {"error": "no route in fake server"}
        item = queue.pop(0) if len(queue) > 1 else queue[0]
        return item(seen) if callable(item) else item

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw
                seen = Seen(self.command, self.path, dict(self.headers.items()), body,
                            time.monotonic())
                with server.cond:
                    server.requests.append(seen)
                    server.cond.notify_all()
                status, payload = server._respond(seen)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _serve  # noqa: N815

            def log_message(self, *_args: Any) -> None:
                pass

        return Handler

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake_server():
    server = FakeServer()
    yield server
    server.close()


@pytest.fixture
def tmp_root(tmp_path):
    from redflag_agent.paths import Paths

    root = tmp_path / "root"
    root.mkdir()
    return Paths(root)


def make_agent_env(root: Path, **extra: str) -> dict[str, str]:
    """Environment for running the agent CLI as a subprocess against a temporary root."""
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
           and not k.startswith("REDFLAG_")}
    env["PYTHONPATH"] = str(AGENT_SRC)
    env["REDFLAG_ROOT"] = str(root)
    env.update(extra)
    return env


@pytest.fixture
def agent_env():
    return make_agent_env


# --- a hostile server: answers no honest server gives ------------------------------------
HOSTILE_AGENT_ID = "4b3f0c1e-0000-4000-8000-00000000beef"
FORGED = "\n[INFO] [registration] registered as agent forged"


def _hostile_identity(**over: Any) -> bytes:
    answer = {"agent_id": HOSTILE_AGENT_ID, "token": "hostile-jwt",
              "refresh_token": "hostile-refresh", "config": {"check_in_interval": 300}}
    answer.update(over)
    return json.dumps(answer).encode()


class HostileServer:
    """Every request gets the current `mode`'s answer, written byte by byte as the mode says.

    Endless and slow modes stop when the client goes away, when the server is closed, or
    after `max_seconds`, so a test cannot leave a thread streaming forever."""

    FORGED = FORGED
    MODES = ("ok", "deep_json", "huge_agent_id", "forged_agent_id", "endless_body",
             "endless_error_body", "slow_body", "slow_headers", "not_json", "bad_utf8",
             "bad_status_line", "forged_error_text")

    def __init__(self, mode: str = "ok", max_seconds: float = 120.0) -> None:
        assert mode in self.MODES, mode  # noqa: S101
        self.mode = mode
        self.max_seconds = max_seconds
        self.stop = threading.Event()
        self.requests: list[tuple[str, str]] = []
        self.sent: list[int] = []  # bytes written per request
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.httpd.daemon_threads = True
        # shutdown() waits out serve_forever's poll: 0.5 s by default, per test
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                with server.lock:
                    server.requests.append((self.command, self.path))
                    index = len(server.sent)
                    server.sent.append(0)
                self._index = index
                self.close_connection = True
                # the client hanging up is what the bounded modes expect
                with contextlib.suppress(OSError):
                    getattr(self, "_mode_" + server.mode)()

            def _raw(self, data: bytes) -> None:
                self.wfile.write(data)
                self.wfile.flush()
                with server.lock:
                    server.sent[self._index] += len(data)

            def _answer(self, status: int, body: bytes, ctype: str = "application/json",
                        length: bool = True) -> None:
                head = f"HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nConnection: close\r\n"
                if length:
                    head += f"Content-Length: {len(body)}\r\n"
                self._raw(head.encode() + b"\r\n" + body)

            def _stream(self, status: int, first: bytes) -> None:
                self._answer(status, first, length=False)
                block = b"a" * 65536
                end = time.monotonic() + server.max_seconds
                while not server.stop.is_set() and time.monotonic() < end:
                    self._raw(block)

            def _trickle(self, data: bytes) -> None:
                end = time.monotonic() + server.max_seconds
                for i in range(len(data)):
                    if server.stop.wait(1.0) or time.monotonic() > end:
                        return
                    self._raw(data[i:i + 1])

            def _mode_ok(self) -> None:
                if self.command == "GET":
                    self._answer(200, b'{"commands": []}')
                else:
                    self._answer(200, _hostile_identity())

            def _mode_deep_json(self) -> None:
                self._answer(200, b"[" * 200_000)

            def _mode_huge_agent_id(self) -> None:
                self._answer(200, _hostile_identity(agent_id="a" * (10 * 1024 * 1024)))

            def _mode_forged_agent_id(self) -> None:
                self._answer(200, _hostile_identity(agent_id="../../x" + FORGED))

            def _mode_endless_body(self) -> None:
                self._stream(200, b'{"agent_id": "')

            def _mode_endless_error_body(self) -> None:
                self._stream(500, b'{"error": "')

            def _mode_slow_body(self) -> None:
                body = _hostile_identity()
                self._raw(f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(body)}\r\n\r\n".encode())
                self._trickle(body)

            def _mode_slow_headers(self) -> None:
                self._trickle(b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"s" * 4096 + b"\r\n")

            def _mode_not_json(self) -> None:
                self._answer(200, b"<html><body>502 Bad Gateway</body></html>", "text/html")

            def _mode_bad_utf8(self) -> None:
                self._answer(200, b'{"agent_id": "\xff\xfe\xfd", "token": "t", '
                                  b'"refresh_token": "r"}')

            def _mode_bad_status_line(self) -> None:
                self._raw(b"HTTP/1.1 2OO" + FORGED.encode() + b"\r\n\r\n")

            def _mode_forged_error_text(self) -> None:
                self._answer(500, json.dumps({"error": "db down" + FORGED}).encode())

            do_GET = do_POST = do_DELETE = _serve  # noqa: N815

            def log_message(self, *_args: Any) -> None:
                pass

        return Handler

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def hostile_server():
    servers: list[HostileServer] = []

    def make(mode: str = "ok", max_seconds: float = 120.0) -> HostileServer:
        servers.append(HostileServer(mode, max_seconds))
        return servers[-1]

    yield make
    for server in servers:
        server.close()
