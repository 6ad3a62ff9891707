"""Machine binding on the agent's side (CONTRACT 4b): the pure decisions and messages as
tables, the client's mapping of 403/409/426, rotated tokens in-process against a local server,
setting a copied identity aside, and the status keys."""

from __future__ import annotations

import json
import logging
import os
import stat

import pytest

from redflag_agent import binding
from redflag_agent import config as c
from redflag_agent import registration as r
from redflag_agent.checkin import Agent
from redflag_agent.client import (
    MISMATCH,
    MISSING_HEADER,
    NOT_BOUND,
    BadRequest,
    BindingRefused,
    Client,
    MachineConflict,
    Unauthorized,
    UpgradeRequired,
    binding_kind,
)
from redflag_agent.exits import EX_CONFIG, EX_NOPERM
from redflag_agent.machine_id import MachineId
from redflag_agent.registration import TokenRejected
from redflag_agent.signals import Terminator
from redflag_agent.status import MACHINE_KEYS, StatusFile, report

LOG = logging.getLogger("redflag.test")
AID = "4b3f0c1e-0000-4000-8000-000000000001"
OTHER = "4b3f0c1e-0000-4000-8000-000000000002"
CMDS = f"/api/v1/agents/{AID}/commands"
RENEW = "/api/v1/agents/renew"
REG = "/api/v1/agents/register"
HOST = "a" * 64
ELSEWHERE = "b" * 64


# --- whose identity is this? -----------------------------------------------------------------
@pytest.mark.parametrize(("recorded", "token", "action"), [
    (None, False, binding.ADOPT),  # taken over from upstream, or an older version of ours
    (None, True, binding.ADOPT),
    ("", False, binding.ADOPT),
    ("m-0123456789", False, binding.ADOPT),  # not a machine ID: someone else's key
    ("A" * 64, False, binding.ADOPT),  # upper case is not what upstream sends
    (17, True, binding.ADOPT),
    (HOST, False, binding.OURS),
    (HOST, True, binding.OURS),  # a token beside our own identity changes nothing
    (ELSEWHERE, True, binding.CLONE_ENROLL),
    (ELSEWHERE, False, binding.CLONE_STOP),
])
def test_decide_identity(recorded, token, action):
    assert binding.decide_identity(recorded, HOST, token).action == action


@pytest.mark.parametrize(("registered", "recorded", "expect"), [
    (True, HOST, True),
    (True, ELSEWHERE, False),
    (True, None, None),
    (True, "m-0123", None),
    (False, HOST, None),
])
def test_on_this_machine(registered, recorded, expect):
    assert binding.on_this_machine(registered, recorded, HOST) is expect


# --- the client's mapping of the binding answers ---------------------------------------------
@pytest.mark.parametrize(("text", "kind"), [
    ("missing machine ID header - agent version too old or tampered", MISSING_HEADER),
    ("agent not bound to machine - re-registration required", NOT_BOUND),
    ("machine ID mismatch - config file copied to different machine", MISMATCH),
    # upstream's renew words them slightly differently: prefixes, any case
    ("Machine ID mismatch", MISMATCH),
    ("  agent not bound to a machine", NOT_BOUND),
    ("Missing machine ID", MISSING_HEADER),
    ("token does not belong to this agent", None),
    ("", None),
])
def test_binding_kind(text, kind):
    assert binding_kind(text) == kind


def _raised(status, body, retry_after=None):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(Exception) as exc:
        Client._raise_for(status, raw, retry_after)
    return exc.value


@pytest.mark.parametrize(("status", "body", "cls"), [
    (403, {"error": "machine ID mismatch - config file copied to different machine"},
     BindingRefused),
    (403, {"error": "agent not bound to machine - re-registration required"}, BindingRefused),
    (403, {"error": "missing machine ID header - agent version too old or tampered"},
     BindingRefused),
    (403, {"error": "token does not belong to this agent"}, Unauthorized),  # renew and retry
    (401, {"error": "machine ID mismatch"}, Unauthorized),  # only a 403 is a binding refusal
    (426, {"error": "agent version too old - upgrade required for security",
           "current_version": "0.2.0", "minimum_version": "9.9"}, UpgradeRequired),
    (409, {"error": "machine ID already registered to another agent",
           "existing_agent_id": OTHER}, MachineConflict),
    (409, {"error": "something else"}, BadRequest),
])
def test_client_maps_binding_answers(status, body, cls):
    exc = _raised(status, body)
    assert type(exc) is cls
    assert not exc.retryable


def test_conflict_fields_are_escaped_and_bounded():
    exc = _raised(409, {"error": "machine ID already registered to another agent",
                        "existing_agent_id": OTHER, "existing_hostname": "web\n01\x1b[31m",
                        "existing_last_seen": "2026-11-30T10:00:00Z",
                        "remediation": "x" * 5000})
    assert exc.existing_agent_id == OTHER and exc.existing_last_seen == "2026-11-30T10:00:00Z"
    assert "\n" not in exc.existing_hostname and "\x1b" not in exc.existing_hostname
    assert "web" in exc.existing_hostname and len(exc.remediation) < 300
    up = _raised(426, {"error": "too old", "current_version": "0.2.0",
                       "minimum_version": {"not": "a string"}})
    assert (up.current, up.minimum) == ("0.2.0", "")


# --- what each answer means: exit code and fix -----------------------------------------------
@pytest.mark.parametrize(("kind", "code", "fragments"), [
    (MISMATCH, EX_NOPERM, ("another machine", "redflag_agent_force_reregister=true",
                           "rebind the agent to machine ID " + HOST)),
    (NOT_BOUND, EX_NOPERM, ("before the server bound agents", "fresh "
                            "redflag_agent_registration_token")),
    (MISSING_HEADER, EX_CONFIG, ("proxy", "X-Machine-ID")),
])
def test_binding_refusal(kind, code, fragments):
    refused = binding.binding_refusal(BindingRefused(kind, "the server's text"), AID, HOST)
    assert refused.exit_code == code
    for fragment in fragments:
        assert fragment in str(refused)
    assert AID in str(refused) and "the server's text" in str(refused)


def test_conflict_refusal_names_the_owner_and_both_fixes():
    exc = MachineConflict("machine ID already registered to another agent", OTHER, "web-01",
                          "2026-11-30T10:00:00Z", "remove it first")
    refused = binding.conflict_refusal(exc, HOST)
    text = str(refused)
    assert refused.exit_code == EX_CONFIG
    for fragment in (OTHER, "web-01", "2026-11-30T10:00:00Z", "/etc/machine-id",
                     "systemd-machine-id-setup", f"delete agent {OTHER} on the server",
                     HOST[:16], "Nothing was registered", "remove it first"):
        assert fragment in text


def test_upgrade_refusal_names_the_minimum():
    refused = binding.upgrade_refusal(UpgradeRequired("agent version too old", "0.2.0", "9.9"))
    assert refused.exit_code == EX_CONFIG
    assert "9.9 or newer" in str(refused) and "upgrade redflag-agent" in str(refused)


@pytest.mark.parametrize(("detail", "fragment"), [
    ("refresh token reuse detected", "already exchanged"),
    ("invalid or expired refresh token", "invalid, expired or revoked"),
])
def test_renew_rejected_message(detail, fragment):
    text = binding.renew_rejected_message(AID, detail)
    assert fragment in text and detail in text and "force_reregister=true" in text


# --- rotated tokens: written only over the identity they belong to ---------------------------
@pytest.mark.parametrize(("on_disk", "rotated", "expect"), [
    ({"agent_id": AID, "refresh_token": "R1"}, True, binding.SAVE),
    ({"agent_id": AID, "refresh_token": "R1"}, False, binding.SAVE),
    ({"agent_id": AID, "refresh_token": "R0"}, True, binding.NOT_OURS),  # changed meanwhile
    ({"agent_id": AID, "refresh_token": "R0"}, False, binding.SAVE),  # no rotation: token only
    ({"agent_id": OTHER, "refresh_token": "R1"}, True, binding.NOT_OURS),  # re-enrolled
    ({"agent_id": OTHER, "refresh_token": "R1"}, False, binding.NOT_OURS),
    ({"server_url": "u"}, True, binding.NOT_OURS),  # `config apply` reregister dropped it
    (None, True, binding.NOT_OURS),
])
def test_token_save_decision(on_disk, rotated, expect):
    assert binding.token_save_decision(on_disk, AID, "R1", rotated) == expect


def make_agent(tmp_root, server, **cfg_extra):
    cfg = {"version": "6", "server_url": server.url, "agent_id": AID, "token": "OLD-JWT",
           "refresh_token": "REFRESH-1", "check_in_interval": 300}
    cfg.update(cfg_extra)
    tmp_root.state_dir.mkdir(parents=True, exist_ok=True)
    c.save_config(tmp_root, cfg)
    return Agent(tmp_root, dict(cfg), Client(server.url, machine_id=HOST), LOG,
                 terminator=Terminator(), status=StatusFile(tmp_root, LOG),
                 backoff_base=0.01, backoff_cap=0.05)


def test_rotated_refresh_token_is_saved_before_the_new_access_token_is_used(tmp_root,
                                                                            fake_server):
    seen_on_disk = []

    def checkin(req):
        seen_on_disk.append(c.read_config(tmp_root.config_file))
        return (401, {"error": "expired"}) if len(seen_on_disk) == 1 else (200, {"commands": []})

    fake_server.on("GET", CMDS, checkin)
    fake_server.on("POST", RENEW, (200, {"token": "JWT-2", "refresh_token": "REFRESH-2"}))
    agent = make_agent(tmp_root, fake_server, unknown="kept")
    agent.check_in_once()
    renew = fake_server.seen("POST", RENEW)[0]
    headers = {k.lower(): v for k, v in renew.headers.items()}
    assert headers["x-machine-id"] == HOST
    assert renew.body == {"agent_id": AID, "refresh_token": "REFRESH-1",
                          "agent_version": "0.2.0"}
    # when the server first sees the new access token, both new tokens are on disk
    assert seen_on_disk[1]["token"] == "JWT-2"
    assert seen_on_disk[1]["refresh_token"] == "REFRESH-2"
    assert seen_on_disk[1]["unknown"] == "kept"
    assert agent.cfg["refresh_token"] == "REFRESH-2"


def test_rotated_tokens_never_overwrite_another_identity(tmp_root, fake_server, caplog):
    fake_server.on("GET", CMDS, (401, {"error": "expired"}), (200, {"commands": []}))
    agent = make_agent(tmp_root, fake_server)

    def renew(_req):
        # `config apply` re-enrolled the host while the renewal was on the wire
        c.save_config(tmp_root, {"version": "6", "server_url": "u", "agent_id": OTHER,
                                 "refresh_token": "THEIRS"})
        return 200, {"token": "JWT-2", "refresh_token": "REFRESH-2"}

    fake_server.on("POST", RENEW, renew)
    with caplog.at_level(logging.WARNING, logger="redflag.test"):
        agent.check_in_once()
    on_disk = c.read_config(tmp_root.config_file)
    assert (on_disk["agent_id"], on_disk["refresh_token"]) == (OTHER, "THEIRS")
    assert "holds another identity" in caplog.text


def test_rotated_tokens_that_cannot_be_saved_are_handed_on(tmp_root, fake_server, monkeypatch):
    fake_server.on("GET", CMDS, (401, {"error": "expired"}), (200, {"commands": []}))
    fake_server.on("POST", RENEW, (200, {"token": "JWT-2", "refresh_token": "REFRESH-2"}))
    agent = make_agent(tmp_root, fake_server)
    handed = []
    agent.tokens_unsaved = lambda renewed_with, reason: handed.append((renewed_with, reason))

    def full(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(c, "save_config", full)
    agent.check_in_once()
    assert handed == [("REFRESH-1", "No space left on device")]
    assert agent.cfg["refresh_token"] == "REFRESH-2"  # kept in memory, used from now on


@pytest.mark.parametrize(("status", "body", "code"), [
    (403, {"error": "machine ID mismatch - config file copied to different machine"},
     EX_NOPERM),
    (403, {"error": "agent not bound to machine - re-registration required"}, EX_NOPERM),
    (426, {"error": "agent version too old - upgrade required for security",
           "current_version": "0.2.0", "minimum_version": "9.9"}, EX_CONFIG),
])
def test_binding_answers_on_check_in_and_renew_stop(tmp_root, fake_server, status, body, code):
    fake_server.on("GET", CMDS, (status, body))
    with pytest.raises(binding.Refused) as exc:
        make_agent(tmp_root, fake_server).check_in_once()
    assert exc.value.exit_code == code
    assert fake_server.seen("POST", RENEW) == [], "a binding answer is not a token problem"
    # the same answers to a renewal
    fake_server.on("GET", CMDS, (401, {"error": "expired"}))
    fake_server.on("POST", RENEW, (status, body))
    with pytest.raises(binding.Refused) as exc:
        Agent(tmp_root, c.read_config(tmp_root.config_file), Client(fake_server.url), LOG,
              terminator=Terminator(), status=StatusFile(tmp_root, LOG)).check_in_once()
    assert exc.value.exit_code == code


def test_reuse_detected_is_token_rejected_with_the_fix(tmp_root, fake_server):
    fake_server.on("GET", CMDS, (401, {"error": "expired"}))
    fake_server.on("POST", RENEW, (401, {"error": "refresh token reuse detected"}))
    with pytest.raises(TokenRejected) as exc:
        make_agent(tmp_root, fake_server).check_in_once()
    assert "already exchanged" in str(exc.value) and "REFRESH-1" not in str(exc.value)


def test_adopted_identity_records_the_machine_id_after_the_server_accepted_it(tmp_root,
                                                                             fake_server):
    fake_server.on("GET", CMDS, (500, {"error": "db"}), (200, {"commands": []}))
    agent = make_agent(tmp_root, fake_server, machine_id="m-0123456789")
    agent.adopt_machine_id = HOST
    with pytest.raises(Exception):  # noqa: B017,PT011 - the 500
        agent.check_in_once()
    assert c.read_config(tmp_root.config_file)["machine_id"] == "m-0123456789"
    agent.check_in_once()
    assert c.read_config(tmp_root.config_file)["machine_id"] == HOST
    assert agent.adopt_machine_id is None


@pytest.mark.parametrize(("on_disk", "recorded", "kept"), [
    ({"agent_id": AID}, HOST, True),
    ({"agent_id": AID, "machine_id": "m-1"}, HOST, True),
    ({"agent_id": AID, "machine_id": HOST}, HOST, True),
    ({"agent_id": AID, "machine_id": ELSEWHERE}, ELSEWHERE, False),  # not ours to replace
    ({"agent_id": OTHER}, None, False),  # another identity now
])
def test_record_machine_id(tmp_root, on_disk, recorded, kept):
    c.save_config(tmp_root, dict(on_disk, version="6", server_url="u"))
    assert binding.record_machine_id(tmp_root, AID, HOST) is kept
    assert c.read_config(tmp_root.config_file).get("machine_id") == recorded


# --- a copied identity set aside -------------------------------------------------------------
def test_set_aside_keeps_the_identity_in_a_private_backup(tmp_root):
    cfg = {"version": "6", "server_url": "http://s", "agent_id": AID, "token": "JWT",
           "refresh_token": "REFRESH", "machine_id": ELSEWHERE, "registration_token": "REG",
           "tags": ["a"]}
    c.save_config(tmp_root, cfg)
    host = MachineId(HOST, "etc/machine-id")
    backup = binding.set_aside(tmp_root, cfg, host, "cloned")
    assert backup is not None and backup.parent == tmp_root.state_dir / "identity_backups"
    assert backup.name.endswith(f"-{AID}.json")
    assert stat.S_IMODE(os.stat(backup).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(backup.parent).st_mode) == 0o700
    kept = json.loads(backup.read_text())
    assert (kept["agent_id"], kept["refresh_token"], kept["machine_id"]) == (
        AID, "REFRESH", ELSEWHERE)
    assert kept["host_machine_id"] == HOST and kept["reason"] == "cloned"
    left = c.read_config(tmp_root.config_file)
    assert left == {"version": "6", "server_url": "http://s", "registration_token": "REG",
                    "tags": ["a"]}


def test_set_aside_leaves_a_config_that_changed_meanwhile(tmp_root):
    cfg = {"version": "6", "server_url": "http://s", "agent_id": AID, "refresh_token": "R"}
    c.save_config(tmp_root, dict(cfg, agent_id=OTHER))
    before = tmp_root.config_file.read_bytes()
    assert binding.set_aside(tmp_root, cfg, MachineId(HOST, "etc/machine-id"), "x") is None
    assert tmp_root.config_file.read_bytes() == before


@pytest.mark.parametrize("agent_id", ["../../etc/passwd", "", None, "a/b"])
def test_backup_name_never_leaves_the_backup_dir(tmp_root, agent_id):
    path = binding.backup_path(tmp_root, agent_id, 0)
    assert path.parent == tmp_root.state_dir / "identity_backups"
    assert path.name == "19700101T000000Z-unknown.json"


# --- registration: 409/426 stop after one request ---------------------------------------------
@pytest.mark.parametrize(("status", "body", "code", "fragment"), [
    (409, {"error": "machine ID already registered to another agent",
           "existing_agent_id": OTHER, "existing_hostname": "golden",
           "existing_last_seen": "2026-11-30T10:00:00Z"}, EX_CONFIG, "golden"),
    (426, {"error": "agent version too old", "minimum_version": "9.9"}, EX_CONFIG, "9.9"),
])
def test_registration_refusals_stop_and_clear_the_marker(tmp_root, fake_server, status, body,  # noqa: PLR0917
                                                         code, fragment):
    fake_server.on("POST", REG, (status, body))
    tmp_root.state_dir.mkdir(parents=True)
    cfg = {"version": "6", "server_url": fake_server.url, "registration_token": "REG"}
    c.save_config(tmp_root, cfg)
    with pytest.raises(binding.Refused) as exc:
        r.perform(Client(fake_server.url, machine_id=HOST), tmp_root, "REG", cfg, LOG)
    assert exc.value.exit_code == code and fragment in str(exc.value)
    [sent] = fake_server.seen("POST", REG)
    assert sent.body["machine_id"] == HOST and isinstance(sent.body["available_scanners"], list)
    assert r.read_attempt(tmp_root) is None, "the server's answer proves nothing registered"


def test_registration_records_the_machine_id_with_the_identity(tmp_root, fake_server):
    fake_server.on("POST", REG, (200, {"agent_id": AID, "token": "JWT",
                                       "refresh_token": "REFRESH"}))
    tmp_root.state_dir.mkdir(parents=True)
    cfg = {"version": "6", "server_url": fake_server.url, "registration_token": "REG",
           "machine_id": "m-legacy"}
    c.save_config(tmp_root, cfg)
    new = r.perform(Client(fake_server.url, machine_id=HOST), tmp_root, "REG", cfg, LOG)
    assert new["machine_id"] == HOST == c.read_config(tmp_root.config_file)["machine_id"]


# --- status ---------------------------------------------------------------------------------
def _write_machine_id(root, raw: bytes) -> None:
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "machine-id").write_bytes(raw)


@pytest.mark.parametrize(("recorded", "registered", "on_this"), [
    ("host", True, True),
    (ELSEWHERE, True, False),
    (None, True, None),
    ("host", False, None),
])
def test_status_machine_keys(tmp_root, recorded, registered, on_this):
    import hashlib

    _write_machine_id(tmp_root.root, b"0123456789abcdef0123456789abcdef\n")
    host = hashlib.sha256(b"0123456789abcdef0123456789abcdef").hexdigest()
    cfg = {"version": "6", "server_url": "u"}
    if registered:
        cfg.update(agent_id=AID, refresh_token="R")
    if recorded:
        cfg["machine_id"] = host if recorded == "host" else recorded
    c.save_config(tmp_root, cfg)
    rep = report(tmp_root, LOG)
    assert rep["machine_id"] == host and rep["machine_id_source"] == "etc/machine-id"
    assert rep["identity_on_this_machine"] is on_this
    expect = cfg.get("machine_id") if registered else None
    assert rep["identity_machine_id"] == expect
    assert set(MACHINE_KEYS) <= set(rep)
