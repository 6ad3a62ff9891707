"""Fixtures: a stand-in server per test on 127.0.0.1, port 0, with a controllable clock."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Optional

import pytest

from redflag_devserver.api import DevServer, Settings, make_server
from redflag_devserver.store import Store


class Clock:
    """Starts at real time (so ISO renderings look sane) and only moves when told."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str]


class Client:
    def __init__(self, port: int) -> None:
        self.port = port

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        bearer: Optional[str] = None,
        raw: Optional[bytes] = None,
        headers: Optional[dict[str, str]] = None,
    ) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            sent_headers = dict(headers or {})
            if bearer is not None:
                sent_headers["Authorization"] = f"Bearer {bearer}"
            payload = (
                raw if raw is not None else (None if body is None else json.dumps(body).encode())
            )
            if payload is not None:
                sent_headers.setdefault("Content-Type", "application/json")
            conn.request(method, path, body=payload, headers=sent_headers)
            resp = conn.getresponse()
            data = resp.read()
            return Reply(resp.status, json.loads(data) if data else None, dict(resp.headers))
        finally:
            conn.close()

    # Shorthands for the common calls.

    def register(self, token: str, hostname: str = "host1", **extra: Any) -> Reply:
        body = {"hostname": hostname, "os_type": "linux", "agent_version": "0.2.0", **extra}
        return self.call("POST", "/api/v1/agents/register", body, bearer=token)

    def mint(self, **body: Any) -> str:
        reply = self.call("POST", "/admin/tokens", body)
        assert reply.status == 201, reply.body
        return reply.body["token"]

    def agents(self) -> list[dict[str, Any]]:
        reply = self.call("GET", "/admin/agents")
        assert reply.status == 200, reply.body
        return reply.body["agents"]


@dataclass
class Running:
    server: DevServer
    store: Store
    clock: Clock
    client: Client
    settings: Settings


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def start_server(tmp_path, clock) -> Iterator[Any]:
    started: list[tuple[DevServer, threading.Thread]] = []

    def start(db_name: str = "devserver.db", **settings: Any) -> Running:
        # Pinned: most tests here encode the 0.1.18 answers; the generation tests say theirs.
        settings.setdefault("generation", "0.1.18")
        store = Store(str(tmp_path / db_name), create=True)
        config = Settings(clock=clock, **settings)
        server = make_server("127.0.0.1", 0, store, config)
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        thread.start()
        started.append((server, thread))
        return Running(server, store, clock, Client(server.server_address[1]), config)

    yield start
    for server, thread in started:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def running(start_server) -> Running:
    return start_server()
