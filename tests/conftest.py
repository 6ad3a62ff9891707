"""Generic fixtures: a temporary REDFLAG_ROOT and a scriptable fake server on 127.0.0.1."""

from __future__ import annotations

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
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
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
