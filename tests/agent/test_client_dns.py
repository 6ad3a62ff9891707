"""Name resolution inside the request's deadline: getaddrinfo is bounded by no socket
timeout, so a dead resolver used to hold a request far past network.timeout."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from redflag_agent import client as cl
from redflag_agent.client import Client, Unreachable

from .test_client_proxy import AuthProxy

UUID = "4b3f0c1e-0000-4000-8000-000000000001"
GOOD = {"agent_id": UUID, "token": "eyJhbGciOi.J9.x-_", "refresh_token": "r" * 64}
BLOCKED = "dead-resolver.invalid"
REAL_GETADDRINFO = socket.getaddrinfo


class StuckResolver:
    """getaddrinfo that hangs for BLOCKED until released (at most 20 s: bounded), then
    answers 127.0.0.1; every other name resolves as usual. Counts the lookups of BLOCKED."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0
        self.finished = threading.Event()

    def __call__(self, host, port, *args, **kwargs):
        if host != BLOCKED:
            return REAL_GETADDRINFO(host, port, *args, **kwargs)
        self.calls += 1
        try:
            self.release.wait(20)
            return REAL_GETADDRINFO("127.0.0.1", port, *args, **kwargs)
        finally:
            self.finished.set()


@pytest.fixture
def stuck(monkeypatch):
    resolver = StuckResolver()
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    yield resolver
    resolver.release.set()
    if resolver.calls:
        resolver.finished.wait(5)
    end = time.monotonic() + 5  # the lookup thread takes itself out of the table
    while cl._LOOKUPS and time.monotonic() < end:
        time.sleep(0.01)
    assert not cl._LOOKUPS


@pytest.mark.parametrize("timeout", [0.5, 1.5])
def test_a_stuck_resolver_fails_within_the_deadline(stuck, fake_server, timeout):
    port = fake_server.httpd.server_address[1]
    started = time.monotonic()
    with pytest.raises(Unreachable) as exc:
        Client(f"http://{BLOCKED}:{port}", timeout=timeout).register("T", {})
    took = time.monotonic() - started
    assert timeout - 0.1 <= took <= timeout + 0.5, took  # was: as long as the resolver hung
    text = str(exc.value)
    assert f"looking up the address of {BLOCKED} took longer than {timeout:g} s" in text
    assert "network.timeout" in text and exc.value.retryable
    assert fake_server.seen() == []


def test_retries_share_one_stuck_lookup_and_use_its_late_answer(stuck, fake_server):
    fake_server.on("POST", "/api/v1/agents/register", (200, GOOD))
    client = Client(f"http://{BLOCKED}:{fake_server.httpd.server_address[1]}", timeout=0.3)
    for _ in range(3):
        with pytest.raises(Unreachable, match="looking up the address"):
            client.register("T", {})
    assert stuck.calls == 1  # one thread left waiting, not one per retry
    stuck.release.set()
    assert stuck.finished.wait(5)
    end = time.monotonic() + 5
    while cl._LOOKUPS and time.monotonic() < end:
        time.sleep(0.01)
    assert client.register("T", {})["agent_id"] == UUID


def test_a_stuck_proxy_name_fails_within_the_deadline(stuck, fake_server):
    proxy = {"enabled": True, "http": f"http://{BLOCKED}:3128"}
    started = time.monotonic()
    with pytest.raises(Unreachable, match=f"address of {BLOCKED} took longer than 1 s"):
        Client(fake_server.url, timeout=1, proxy=proxy).register("T", {})
    assert time.monotonic() - started <= 1.5


def test_through_a_proxy_only_the_proxy_name_is_resolved(stuck, fake_server):
    """The server's name is the proxy's to resolve: the agent never looks it up itself."""
    fake_server.on("POST", "/api/v1/agents/register", (200, GOOD))
    proxy = AuthProxy(None)
    try:
        port = fake_server.httpd.server_address[1]
        client = Client(f"http://{BLOCKED}:{port}", timeout=5,
                        proxy={"enabled": True, "http": proxy.url})
        assert client.register("T", {})["agent_id"] == UUID
        assert stuck.calls == 0
    finally:
        proxy.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_normal_resolution_still_works(fake_server, host):
    fake_server.on("POST", "/api/v1/agents/register", (200, GOOD))
    port = fake_server.httpd.server_address[1]
    assert Client(f"http://{host}:{port}", timeout=5).register("T", {})["agent_id"] == UUID


def test_every_address_is_tried_in_turn(monkeypatch, fake_server):
    """As socket.create_connection: a refused first address (::1, no listener) is not the
    end; the next one (127.0.0.1) answers."""
    fake_server.on("POST", "/api/v1/agents/register", (200, GOOD))
    port = fake_server.httpd.server_address[1]
    closed = socket.create_server(("127.0.0.1", 0))
    dead_port = closed.getsockname()[1]
    closed.close()  # nothing listens there now: connecting is refused at once

    def two_addresses(host, port_, *args, **kwargs):
        dead = REAL_GETADDRINFO("127.0.0.1", dead_port, *args, **kwargs)
        live = REAL_GETADDRINFO("127.0.0.1", port_, *args, **kwargs)
        return dead + live

    monkeypatch.setattr(socket, "getaddrinfo", two_addresses)
    assert Client(f"http://two.invalid:{port}", timeout=5).register("T", {})["agent_id"] == UUID
    monkeypatch.setattr(socket, "getaddrinfo",
                        lambda *a, **k: REAL_GETADDRINFO("127.0.0.1", dead_port, *a[2:], **k))
    with pytest.raises(Unreachable, match="Connection refused"):
        Client(f"http://two.invalid:{port}", timeout=5).register("T", {})


def test_a_failed_lookup_is_reported_as_before(monkeypatch):
    def fail(*_args, **_kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    with pytest.raises(Unreachable, match="Name or service not known"):
        Client("http://nowhere.invalid:8080", timeout=5).register("T", {})
    assert not cl._LOOKUPS
