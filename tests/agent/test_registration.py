"""Registration: the pure decision and config update, and requests against a local server."""

from __future__ import annotations

import json
import logging
import socket

import pytest

from redflag_agent import config as c
from redflag_agent import registration as r
from redflag_agent.client import (
    BadRequest,
    Client,
    NotFound,
    RateLimited,
    ServerError,
    Unauthorized,
    Unreachable,
)

LOG = logging.getLogger("redflag.test")
REG = "/api/v1/agents/register"
OK = (200, {"agent_id": "4b3f0c1e-0000-4000-8000-000000000001", "token": "JWT-A",
            "refresh_token": "REFRESH-A", "config": {"check_in_interval": 120,
                                                     "server_url": "x"}})


@pytest.mark.parametrize(("cfg", "token", "action"), [
    (None, False, r.CANNOT_REGISTER),
    ({}, True, r.REGISTER),
    ({"server_url": "u"}, False, r.CANNOT_REGISTER),
    ({"agent_id": "a"}, False, r.CANNOT_REGISTER),
    ({"agent_id": "a", "refresh_token": "rt"}, False, r.REGISTERED),
    ({"agent_id": "a", "refresh_token": "rt", "registration_token": "t"}, True, r.REGISTERED),
])
def test_decide_registration(cfg, token, action):
    assert r.decide_registration(cfg, token).action == action


@pytest.mark.parametrize(("cfg", "interval"), [
    ({"server_url": "u", "registration_token": "t"}, 120),          # none set: take server's
    ({"server_url": "u", "registration_token": "t", "check_in_interval": 300}, 300),  # role's
])
def test_apply_registration(cfg, interval):
    new = r.apply_registration(dict(cfg, machine_id="m"), OK[1])
    assert new["agent_id"] == OK[1]["agent_id"]
    assert (new["token"], new["refresh_token"]) == ("JWT-A", "REFRESH-A")
    assert "registration_token" not in new
    assert new["check_in_interval"] == interval
    assert new["machine_id"] == "m"


@pytest.mark.parametrize(("exc", "rejected"), [
    (Unauthorized("invalid or expired registration token"), True),
    (BadRequest("registration token could not be consumed"), True),
    (BadRequest("all seats used"), True),
    (BadRequest("hostname is required"), False),
    (ServerError(500), False),
    (RateLimited(None), False),
    (Unreachable("x"), False),
    (NotFound(), False),
])
def test_is_token_rejection(exc, rejected):
    assert r.is_token_rejection(exc) is rejected


def _setup(tmp_root, server_url):
    cfg = c.merge_desired(None, {"server_url": server_url}, "REGTOKEN-1", False)
    c.save_config(tmp_root, cfg)
    tmp_root.state_dir.mkdir(parents=True)  # `run` and `register` create it before this
    return cfg


def test_register_200_writes_identity_and_drops_token(tmp_root, fake_server):
    fake_server.on("POST", REG, OK)
    cfg = _setup(tmp_root, fake_server.url)
    new = r.perform(Client(fake_server.url), tmp_root, "REGTOKEN-1", cfg, LOG,
                    migrated_from="0.1.18")
    req = fake_server.seen("POST", REG)[0]
    assert req.headers["Authorization"] == "Bearer REGTOKEN-1"
    assert {"hostname", "os_type", "agent_version", "metadata"} <= set(req.body)
    assert req.body["metadata"]["migrated_from"] == "0.1.18"
    assert "REGTOKEN-1" not in json.dumps(req.body), "token goes in the header only"
    on_disk = c.read_config(tmp_root.config_file)
    assert on_disk == new
    assert c.is_registered(on_disk) and "registration_token" not in on_disk
    assert on_disk["check_in_interval"] == 120


@pytest.mark.parametrize("answer", [
    (401, {"error": "invalid or expired registration token"}),
    (400, {"error": "registration token could not be consumed: all seats used"}),
])
def test_register_rejected_raises_and_keeps_config(tmp_root, fake_server, answer):
    fake_server.on("POST", REG, answer)
    cfg = _setup(tmp_root, fake_server.url)
    before = tmp_root.config_file.read_bytes()
    with pytest.raises(r.TokenRejected) as exc:
        r.perform(Client(fake_server.url), tmp_root, "REGTOKEN-1", cfg, LOG)
    assert "redflag_agent_registration_token" in str(exc.value)
    assert "REGTOKEN-1" not in str(exc.value)
    assert tmp_root.config_file.read_bytes() == before


@pytest.mark.parametrize(("answer", "exc_type"), [
    ((429, {"error": "rate limited"}), RateLimited),
    ((500, {"error": "db down"}), ServerError),
    ((503, b"<html>bad gateway</html>"), ServerError),
    ((200, b"not json"), ServerError),
    ((200, {"agent_id": "x"}), ServerError),  # missing tokens in the answer
])
def test_register_retryable_failures(tmp_root, fake_server, answer, exc_type):
    fake_server.on("POST", REG, answer)
    cfg = _setup(tmp_root, fake_server.url)
    before = tmp_root.config_file.read_bytes()
    with pytest.raises(exc_type) as exc:
        r.perform(Client(fake_server.url), tmp_root, "REGTOKEN-1", cfg, LOG)
    assert exc.value.retryable
    assert tmp_root.config_file.read_bytes() == before
    assert not r.attempt_path(tmp_root).exists(), "nothing to keep: retried"


def test_register_connection_refused_is_unreachable(tmp_root):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    url = f"http://127.0.0.1:{port}"
    cfg = _setup(tmp_root, url)
    with pytest.raises(Unreachable) as exc:
        r.perform(Client(url, timeout=2), tmp_root, "REGTOKEN-1", cfg, LOG)
    assert "REGTOKEN-1" not in str(exc.value)


def test_client_rejects_non_http_urls():
    for url in ("file:///etc/passwd", "ftp://x", "127.0.0.1:8080", ""):
        with pytest.raises(ValueError):
            Client(url)


def test_client_ignores_environment_proxies(fake_server, monkeypatch):
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:1")
    fake_server.on("POST", REG, OK)
    assert Client(fake_server.url).register("T", {})["agent_id"]
