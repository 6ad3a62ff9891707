"""An accepted registration is never lost and never repeated (issue 12), in-process:
the pure decisions as tables, then `perform` and the runner against a local fake server."""

from __future__ import annotations

import errno
import json
import logging
import threading
import time
import urllib.error

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
from redflag_agent.runner import EX_CONFIG, EX_OK, Runner
from redflag_agent.signals import Terminated, Terminator
from redflag_agent.status import report

LOG = logging.getLogger("redflag.test")
AID = "4b3f0c1e-0000-4000-8000-000000000001"
REG = "/api/v1/agents/register"
CMDS = f"/api/v1/agents/{AID}/commands"
TOKEN = "REGTOKEN-1"
OK = (200, {"agent_id": AID, "token": "JWT-A", "refresh_token": "REFRESH-A",
            "config": {"check_in_interval": 1}})
FAST = {"REDFLAG_BACKOFF_BASE": "0.01", "REDFLAG_BACKOFF_CAP": "0.05"}


# --- pure decisions ----------------------------------------------------------------------
MARKER = {"started": "2026-01-01T00:00:00Z", "server_url": "http://s",
          "token_sha256": r.token_fingerprint(TOKEN), "pid": 1}


@pytest.mark.parametrize(("attempt", "registered", "token", "verdict"), [
    (None, False, TOKEN, r.NO_ATTEMPT),
    (None, True, None, r.NO_ATTEMPT),
    (MARKER, True, None, r.STALE_ATTEMPT),  # saved; only the marker's removal was lost
    (MARKER, True, "other", r.STALE_ATTEMPT),
    (MARKER, False, TOKEN, r.PENDING_ATTEMPT),  # the same token: a seat may be spent
    (MARKER, False, None, r.PENDING_ATTEMPT),
    (MARKER, False, "another-token", r.SUPERSEDED_ATTEMPT),  # the operator gave a new one
    ({"error": "not valid JSON"}, False, TOKEN, r.PENDING_ATTEMPT),  # unreadable counts
    ({**MARKER, "token_sha256": None}, False, "another-token", r.PENDING_ATTEMPT),
])
def test_decide_attempt(attempt, registered, token, verdict):
    assert r.decide_attempt(attempt, registered, token) == verdict


def _raised_from(cause: BaseException) -> Unreachable:
    """An Unreachable raised the way the client raises it: inside the except, `from None`."""
    try:
        try:
            raise cause
        except BaseException:
            raise Unreachable("cannot reach") from None
    except Unreachable as exc:
        return exc


@pytest.mark.parametrize(("exc", "outcome"), [
    (Unauthorized("invalid or expired registration token"), r.NOT_REGISTERED),
    (BadRequest("could not be consumed"), r.NOT_REGISTERED),
    (BadRequest("hostname is required"), r.NOT_REGISTERED),
    (RateLimited(3.0), r.NOT_REGISTERED),
    (NotFound(), r.NOT_REGISTERED),
    (ServerError(500, "db down"), r.NOT_REGISTERED),
    (ServerError(503), r.NOT_REGISTERED),
    (Terminated("SIGTERM"), r.NOT_REGISTERED),  # a stop is the operator's (see the module)
    (KeyboardInterrupt(), r.NOT_REGISTERED),
    (_raised_from(urllib.error.URLError(ConnectionRefusedError(111, "refused"))),
     r.NOT_REGISTERED),
    (_raised_from(urllib.error.URLError(TimeoutError("connect timed out"))), r.NOT_REGISTERED),
    # sent, no complete answer in time: retried (see request_outcome for why)
    (_raised_from(TimeoutError("timed out")), r.NOT_REGISTERED),
    (_raised_from(ConnectionResetError(104, "reset")), r.NOT_REGISTERED),
    # an answer the client refused: no identity to keep, retried as the issue asks
    (ServerError(200, "registration answer lacks agent_id"), r.NOT_REGISTERED),
    (ServerError(0, "malformed HTTP answer (BadStatusLine)"), r.NOT_REGISTERED),
    # not an answer the client understood at all: the server may have committed the agent
    (ValueError("something unexpected"), r.MAYBE_REGISTERED),
    (RecursionError(), r.MAYBE_REGISTERED),
])
def test_request_outcome(exc, outcome):
    assert r.request_outcome(exc) == outcome


def test_fingerprint_is_short_and_not_the_token():
    fp = r.token_fingerprint(TOKEN)
    assert len(fp) == 12 and TOKEN not in fp and fp != r.token_fingerprint(TOKEN + "x")


def test_with_identity_drops_the_registration_token():
    base = {"server_url": "u", "registration_token": "t", "agent_id": "old", "x": 1}
    out = r.with_identity(base, {"agent_id": AID, "token": "j", "refresh_token": "rt"})
    assert out == {"server_url": "u", "agent_id": AID, "token": "j", "refresh_token": "rt",
                   "x": 1}
    assert base["agent_id"] == "old"


# --- perform against a fake server -------------------------------------------------------
def _setup(paths, url):
    cfg = c.merge_desired(None, {"server_url": url}, TOKEN, False)
    c.save_config(paths, cfg)
    paths.state_dir.mkdir(parents=True)
    return cfg


def test_success_leaves_no_marker(tmp_root, fake_server):
    fake_server.on("POST", REG, OK)
    cfg = _setup(tmp_root, fake_server.url)
    r.perform(Client(fake_server.url), tmp_root, TOKEN, cfg, LOG)
    assert not r.attempt_path(tmp_root).exists()
    assert c.is_registered(c.read_config(tmp_root.config_file))
    assert [p.name for p in tmp_root.config_dir.iterdir()] == ["config.json"], "probe left"


def test_marker_is_written_before_the_request(tmp_root, fake_server):
    seen_marker = []

    def answer(_seen):
        seen_marker.append(r.read_attempt(tmp_root))
        return OK

    fake_server.on("POST", REG, answer)
    cfg = _setup(tmp_root, fake_server.url)
    r.perform(Client(fake_server.url), tmp_root, TOKEN, cfg, LOG)
    marker = seen_marker[0]
    assert marker is not None, "the server was called before the attempt was recorded"
    assert marker["server_url"] == fake_server.url
    assert marker["token_sha256"] == r.token_fingerprint(TOKEN)
    assert TOKEN not in json.dumps(marker)


@pytest.mark.parametrize("answer", [
    (401, {"error": "invalid or expired registration token"}),
    (429, {"error": "slow down"}),
    (500, {"error": "db down"}),
])
def test_error_answers_clear_the_marker(tmp_root, fake_server, answer):
    fake_server.on("POST", REG, answer)
    cfg = _setup(tmp_root, fake_server.url)
    with pytest.raises((r.TokenRejected, RateLimited, ServerError)):
        r.perform(Client(fake_server.url), tmp_root, TOKEN, cfg, LOG)
    assert not r.attempt_path(tmp_root).exists()


def test_connection_refused_clears_the_marker(tmp_root):
    import socket  # noqa: PLC0415

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()
    cfg = _setup(tmp_root, url)
    with pytest.raises(Unreachable):
        r.perform(Client(url, timeout=2), tmp_root, TOKEN, cfg, LOG)
    assert not r.attempt_path(tmp_root).exists()


def test_timeout_after_sending_clears_the_marker(tmp_root, fake_server):
    release = threading.Event()

    def slow(_seen):
        release.wait(10)  # the server got the request and does not answer in time
        return OK

    fake_server.on("POST", REG, slow)
    cfg = _setup(tmp_root, fake_server.url)
    try:
        with pytest.raises(Unreachable):
            r.perform(Client(fake_server.url, timeout=0.5), tmp_root, TOKEN, cfg, LOG)
    finally:
        release.set()
    assert not r.attempt_path(tmp_root).exists()


def test_unexpected_error_keeps_the_marker(tmp_root, fake_server):
    fake_server.on("POST", REG, OK)
    cfg = _setup(tmp_root, fake_server.url)

    class BrokenClient(Client):
        def register(self, token, body):
            super().register(token, body)  # the server registers us...
            raise RecursionError("...and the answer breaks the agent")

    with pytest.raises(r.AttemptPending) as exc:
        r.perform(BrokenClient(fake_server.url), tmp_root, TOKEN, cfg, LOG)
    assert "outcome is unknown" in str(exc.value)
    assert r.attempt_path(tmp_root).exists()
    # and the next try does not call the server
    with pytest.raises(r.AttemptPending):
        r.perform(Client(fake_server.url), tmp_root, TOKEN, cfg, LOG)
    assert len(fake_server.seen("POST", REG)) == 1


def test_sigterm_during_the_request_clears_the_marker(tmp_root, fake_server):
    term = Terminator()
    release = threading.Event()

    def slow(_seen):
        release.wait(10)
        return OK

    fake_server.on("POST", REG, slow)
    cfg = _setup(tmp_root, fake_server.url)

    class StoppingClient(Client):
        def register(self, token, body):
            raise Terminated("SIGTERM")  # what the handler raises in the blocked read

    try:
        with pytest.raises(Terminated):
            r.perform(StoppingClient(fake_server.url), tmp_root, TOKEN, cfg, LOG,
                      shield=term.shielded)
    finally:
        release.set()
    assert not r.attempt_path(tmp_root).exists()


def test_pending_marker_stops_before_any_request(tmp_root, fake_server):
    fake_server.on("POST", REG, OK)
    cfg = _setup(tmp_root, fake_server.url)
    r.write_attempt(tmp_root, {**MARKER, "server_url": fake_server.url, "hostname": "h1"})
    with pytest.raises(r.AttemptPending) as exc:
        r.perform(Client(fake_server.url), tmp_root, TOKEN, cfg, LOG)
    text = str(exc.value)
    for part in ("2026-01-01T00:00:00Z", fake_server.url, "h1", str(r.attempt_path(tmp_root)),
                 "may have registered", "delete that agent", "redflag_agent_force_reregister"):
        assert part in text, part
    assert TOKEN not in text and exc.value.exit_code == EX_CONFIG
    assert fake_server.seen("POST", REG) == []


def test_a_new_token_supersedes_the_marker(tmp_root, fake_server):
    fake_server.on("POST", REG, OK)
    cfg = _setup(tmp_root, fake_server.url)
    r.write_attempt(tmp_root, {**MARKER, "token_sha256": r.token_fingerprint("old-token")})
    r.perform(Client(fake_server.url), tmp_root, TOKEN, cfg, LOG)
    assert len(fake_server.seen("POST", REG)) == 1
    assert not r.attempt_path(tmp_root).exists()


def test_no_room_means_no_request(tmp_root, fake_server, monkeypatch):
    fake_server.on("POST", REG, OK)
    cfg = _setup(tmp_root, fake_server.url)

    def full(_directory, _size):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(r, "probe_room", full)
    with pytest.raises(r.CannotSave) as exc:
        r.perform(Client(fake_server.url), tmp_root, TOKEN, cfg, LOG)
    assert str(tmp_root.config_dir) in str(exc.value)
    assert "No space left on device" in str(exc.value) and exc.value.exit_code == 75
    assert fake_server.seen("POST", REG) == []
    assert not r.attempt_path(tmp_root).exists()


def test_probe_asks_for_the_new_config_plus_margin(tmp_root, fake_server, monkeypatch):
    fake_server.on("POST", REG, OK)
    cfg = _setup(tmp_root, fake_server.url)
    asked = []
    real = r.probe_room
    monkeypatch.setattr(r, "probe_room", lambda d, n: (asked.append((d, n)), real(d, n)))
    r.perform(Client(fake_server.url), tmp_root, TOKEN, cfg, LOG)
    assert asked == [(tmp_root.config_dir, len(c.serialize(cfg)) + r.PROBE_MARGIN)]


def test_probe_room_fails_on_a_missing_directory(tmp_root):
    with pytest.raises(OSError):
        r.probe_room(tmp_root.config_dir, 10)


def test_save_failure_after_acceptance_keeps_identity_in_memory(tmp_root, fake_server,
                                                               monkeypatch):
    fake_server.on("POST", REG, OK)
    cfg = _setup(tmp_root, fake_server.url)
    before = tmp_root.config_file.read_bytes()

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(c, "save_config", full)
    with pytest.raises(r.IdentityUnsaved) as exc:
        r.perform(Client(fake_server.url), tmp_root, TOKEN, cfg, LOG)
    assert exc.value.cfg["agent_id"] == AID and exc.value.cfg["refresh_token"] == "REFRESH-A"
    assert "No space left on device" in str(exc.value) and "REFRESH-A" not in str(exc.value)
    assert tmp_root.config_file.read_bytes() == before
    assert r.read_attempt(tmp_root)["agent_id"] == AID, "the marker names the new agent"


# --- the runner -------------------------------------------------------------------------
def _runner_cfg(paths, url, **extra):
    cfg = {"version": "6", "server_url": url, "registration_token": TOKEN,
           "check_in_interval": 1, **extra}
    paths.config_dir.mkdir(parents=True)
    paths.state_dir.mkdir(parents=True)
    paths.config_file.write_text(json.dumps(cfg))


def _stop_when(term: Terminator, predicate, timeout: float = 15.0) -> threading.Thread:
    """Set the stop flag once predicate() holds: the runner's next wait raises Terminated."""
    def watch():
        deadline = time.monotonic() + timeout
        while not predicate() and time.monotonic() < deadline:
            time.sleep(0.02)
        term.request_stop()
        term.signal_name = "SIGTERM"

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def _status(paths):
    return json.loads(paths.status_file.read_text())


def test_run_waits_for_room_then_registers_once(tmp_root, fake_server, monkeypatch, caplog):
    fake_server.on("POST", REG, OK)
    fake_server.on("GET", CMDS, (200, {"commands": []}))
    _runner_cfg(tmp_root, fake_server.url)
    calls = []
    real = r.probe_room

    def full_three_times(directory, size):
        calls.append(size)
        if len(calls) <= 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(directory, size)

    monkeypatch.setattr(r, "probe_room", full_three_times)
    term = Terminator()
    _stop_when(term, lambda: fake_server.seen("GET", CMDS))
    with caplog.at_level(logging.INFO):
        code = Runner(tmp_root, LOG, term, environ=FAST).run()
    assert code == EX_OK
    assert len(calls) == 4 and len(fake_server.seen("POST", REG)) == 1
    assert caplog.text.count("No space left on device") == 3
    assert str(tmp_root.config_dir) in caplog.text
    assert c.is_registered(c.read_config(tmp_root.config_file))


def test_run_keeps_an_unsaved_identity_and_saves_it_later(tmp_root, fake_server, monkeypatch,
                                                         caplog):
    fake_server.on("POST", REG, OK)
    fake_server.on("GET", CMDS, (200, {"commands": []}))
    _runner_cfg(tmp_root, fake_server.url)
    real_save = c.save_config
    failures = {"left": 3}
    seen_status = []

    def flaky_save(paths, cfg):
        if failures["left"] > 0:
            failures["left"] -= 1
            seen_status.append(_status(tmp_root).get("identity_unsaved"))
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(paths, cfg)

    monkeypatch.setattr(c, "save_config", flaky_save)
    term = Terminator()
    _stop_when(term, lambda: failures["left"] == 0 and c.is_registered(
        c.read_config(tmp_root.config_file)) and len(fake_server.seen("GET", CMDS)) >= 3)
    with caplog.at_level(logging.INFO):
        code = Runner(tmp_root, LOG, term, environ=FAST).run()
    assert code == EX_OK
    assert len(fake_server.seen("POST", REG)) == 1, "registered again in the same start"
    # checked in with the in-memory identity while the save failed
    first = fake_server.seen("GET", CMDS)[0]
    assert first.headers["Authorization"] == "Bearer JWT-A"
    unsaved = seen_status[1]
    assert unsaved["agent_id"] == AID and "No space left on device" in unsaved["error"]
    saved = c.read_config(tmp_root.config_file)
    assert saved["agent_id"] == AID and "registration_token" not in saved
    assert not r.attempt_path(tmp_root).exists()
    assert _status(tmp_root)["identity_unsaved"] is None
    assert f"identity of agent {AID} saved to" in caplog.text
    assert "REFRESH-A" not in caplog.text and "JWT-A" not in caplog.text


def test_stop_with_unsaved_identity_then_next_start_exits_78(tmp_root, fake_server,
                                                            monkeypatch, caplog):
    fake_server.on("POST", REG, OK)
    fake_server.on("GET", CMDS, (200, {"commands": []}))
    _runner_cfg(tmp_root, fake_server.url)

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(c, "save_config", full)
        term = Terminator()
        _stop_when(term, lambda: fake_server.seen("GET", CMDS))
        with caplog.at_level(logging.INFO):
            assert Runner(tmp_root, LOG, term, environ=FAST).run() == EX_OK
    assert "still unsaved: it is lost" in caplog.text
    rep = report(tmp_root, LOG)
    assert rep["registered"] is False
    assert rep["registration_attempt"]["agent_id"] == AID
    assert rep["identity_unsaved"]["agent_id"] == AID  # until the next start clears it
    for _ in range(2):
        caplog.clear()
        with caplog.at_level(logging.INFO):
            assert Runner(tmp_root, LOG, Terminator(), environ=FAST).run() == EX_CONFIG
        assert f"may have registered this host as agent {AID}" in caplog.text
    assert len(fake_server.seen("POST", REG)) == 1
    st = _status(tmp_root)
    assert "78" in st["last_exit_reason"] and st["identity_unsaved"] is None
    assert report(tmp_root, LOG)["registration_attempt"]["path"] == str(
        r.attempt_path(tmp_root))


def test_stale_marker_beside_a_saved_identity_is_removed(tmp_root, fake_server, caplog):
    fake_server.on("GET", CMDS, (200, {"commands": []}))
    _runner_cfg(tmp_root, fake_server.url, agent_id=AID, token="JWT-A",
                refresh_token="REFRESH-A")
    r.write_attempt(tmp_root, MARKER)
    assert report(tmp_root, LOG)["registration_attempt"] is None  # stale: not reported
    term = Terminator()
    _stop_when(term, lambda: fake_server.seen("GET", CMDS))
    with caplog.at_level(logging.INFO):
        assert Runner(tmp_root, LOG, term, environ=FAST).run() == EX_OK
    assert not r.attempt_path(tmp_root).exists()
    assert "finished (the identity is saved); removed its record" in caplog.text
