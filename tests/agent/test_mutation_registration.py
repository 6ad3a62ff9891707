"""Registration, pinned exactly (issue 15: mutation testing).

The operator reads these messages to decide what to do with a host (mint a token, delete an
agent, free space), the server reads the body, and the marker decides whether a seat is
spent twice: each is compared whole, not by a fragment.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import stat
from pathlib import Path

import pytest

from redflag_agent import config as c
from redflag_agent import registration as r
from redflag_agent.client import BadRequest, Client, ServerError, Unauthorized
from redflag_agent.paths import Paths
from redflag_agent.signals import Terminated
from redflag_agent.version import AGENT_VERSION

LOG = logging.getLogger("redflag.test.mutreg")
AID = "4b3f0c1e-0000-4000-8000-000000000001"
REG = "/api/v1/agents/register"
TOKEN = "REGTOKEN-1"
OK = (200, {"agent_id": AID, "token": "JWT-A", "refresh_token": "REFRESH-A",
            "config": {"check_in_interval": 1}})


# --- messages ------------------------------------------------------------------------------
def test_missing_token_message_exact():
    paths = Paths(Path("/r"))
    assert r.missing_token_message(paths) == (
        "not registered and no registration token: /r/etc/redflag-agent/config.json has no "
        "agent_id/refresh_token and no registration_token. Fix: set the playbook variable "
        "redflag_agent_registration_token and re-run the playbook, or run `redflag-agent "
        "register --token-file FILE` on this host")


@pytest.mark.parametrize(("exc", "detail"), [
    (Unauthorized("token expired"), "token expired"),
    (ValueError("plain"), "plain"),
])
def test_rejection_message_exact(exc, detail):
    assert r.rejection_message(exc) == (
        f"the server rejected the registration token ({detail}). It is invalid, expired, "
        "revoked or its seats are used up. Fix: mint a new token on the server, set "
        "redflag_agent_registration_token and re-run the playbook (or `redflag-agent "
        "register --token-file FILE`)")


@pytest.mark.parametrize(("exc", "rejected"), [
    (BadRequest("Token could not be CONSUMED"), True),
    (BadRequest("could not be consumed"), True),
    (BadRequest("no seat left"), True),
    (BadRequest("bad TOKEN"), True),
    (BadRequest(""), False),
    (BadRequest("hostname is required"), False),
    (ServerError(400, "token"), False),  # not a BadRequest
    (Unauthorized(""), True),
])
def test_is_token_rejection_table(exc, rejected):
    assert r.is_token_rejection(exc) is rejected


def test_is_token_rejection_needs_status_400():
    exc = BadRequest("token could not be consumed")
    exc.status = 422
    assert r.is_token_rejection(exc) is False


def test_decision_reasons():
    assert r.decide_registration({"agent_id": "a", "refresh_token": "t"}, False) == r.Decision(
        r.REGISTERED, "config holds agent_id and refresh_token")
    assert r.decide_registration({}, True) == r.Decision(
        r.REGISTER, "not registered; a registration token is available")
    assert r.decide_registration(None, False) == r.Decision(
        r.CANNOT_REGISTER, "not registered and no registration token")


MARKER = {"started": "2026-01-01T00:00:00Z", "server_url": "http://s", "token_sha256": "abc",
          "pid": 42, "hostname": "web1", "agent_id": None}
TAIL = (" and no identity is saved. The server may have registered this host {who} and "
        "spent a seat of the token, so the agent does not register again on its own. Check "
        "the server's agent list; delete that agent there if it exists; then remove "
        "/r/var/lib/redflag-agent/registration_attempt.json and start the agent again, or give "
        "the host a new registration token (re-run the playbook with a fresh "
        "redflag_agent_registration_token and redflag_agent_force_reregister=true)")


@pytest.mark.parametrize(("attempt", "head", "who"), [
    (MARKER, "why: a registration with http://s started at 2026-01-01T00:00:00Z (token sha256 "
             "abc..., pid 42) never finished,",
     "(look for hostname web1 registered around 2026-01-01T00:00:00Z)"),
    (dict(MARKER, agent_id=AID), "why: a registration with http://s started at "
     "2026-01-01T00:00:00Z (token sha256 abc..., pid 42) never finished,", f"as agent {AID}"),
    ({"error": "x is not valid JSON"}, "why: a registration with the server started at an "
     "unknown time (token sha256 ?..., pid ?) never finished (x is not valid JSON),",
     "(look for hostname this host registered around an unknown time)"),
])
def test_pending_message_exact(attempt, head, who):
    assert r.pending_message(Paths(Path("/r")), attempt, "why") == head + TAIL.format(who=who)


def test_cannot_save_message_and_code():
    exc = r.CannotSave(Path("/d"), OSError(errno.ENOSPC, "No space left on device"), "the thing")
    assert str(exc) == ("cannot register yet: /d cannot take the thing (No space left on "
                        "device); nothing was sent to the server. Fix: free space on the "
                        "filesystem holding /d (or make it writable for the agent)")
    assert exc.exit_code == 75 and exc.directory == Path("/d")
    assert exc.error.errno == errno.ENOSPC
    assert str(r.CannotSave(Path("/d"), OSError("plain"), "x")).startswith(
        "cannot register yet: /d cannot take x (plain);")


def test_attempt_pending_keeps_the_attempt_and_exits_78():
    exc = r.AttemptPending("msg", MARKER)
    assert (str(exc), exc.attempt, exc.exit_code) == ("msg", MARKER, 78)


def test_identity_unsaved_message():
    paths = Paths(Path("/r"))
    exc = r.IdentityUnsaved({"agent_id": AID}, paths, OSError(errno.ENOSPC, "disk full"))
    assert str(exc) == (
        f"the server registered this host as agent {AID}, but the identity could not be saved "
        "to /r/etc/redflag-agent/config.json (disk full). While this process runs it is kept "
        "in memory; once it ends the identity is lost: free space, and if the agent did not "
        f"save it by then, delete agent {AID} on the server and remove "
        "/r/var/lib/redflag-agent/registration_attempt.json before registering again")
    assert (exc.reason, exc.cfg, exc.exit_code) == ("disk full", {"agent_id": AID}, 78)
    assert r.IdentityUnsaved({"agent_id": AID}, paths, c.ConfigError("bad")).reason == "bad"


# --- what is sent --------------------------------------------------------------------------
def test_host_facts_from_os_release(monkeypatch, tmp_path):
    release = tmp_path / "os-release"
    release.write_text('NAME="Debian"\nPRETTY_NAME="Debian GNU/Linux 12"\nID=debian\nBAD\n')
    real_open = open

    def fake_open(path, *a, **k):
        return real_open(release if path == "/etc/os-release" else path, *a, **k)

    monkeypatch.setattr("builtins.open", fake_open)
    monkeypatch.setattr(r.os, "uname", lambda: os.uname_result(
        ("Linux", "node1", "6.1.0", "#1", "x86_64")))
    monkeypatch.setattr("socket.gethostname", lambda: "web1")
    assert r.host_facts() == {"hostname": "web1", "os_type": "linux",
                              "os_version": "Debian GNU/Linux 12", "os_architecture": "x86_64",
                              "os_distro": "debian"}
    release.write_text('ID=""\n')
    monkeypatch.setattr("socket.gethostname", lambda: "")
    monkeypatch.setattr(r.os, "uname", lambda: os.uname_result(
        ("", "node1", "6.1.0", "#1", "aarch64")))
    assert r.host_facts() == {"hostname": "node1", "os_type": "linux", "os_version": "6.1.0",
                              "os_architecture": "aarch64"}
    release.unlink()
    assert r.host_facts()["os_version"] == "6.1.0"


def test_available_scanners(monkeypatch):
    import shutil  # noqa: PLC0415

    monkeypatch.setattr(shutil, "which", lambda tool: f"/usr/bin/{tool}")
    assert r.available_scanners() == ["apt", "dnf"]
    monkeypatch.setattr(shutil, "which", lambda tool: "/usr/bin/dnf" if tool == "dnf" else None)
    assert r.available_scanners() == ["dnf"]


@pytest.mark.parametrize(("cfg", "migrated", "expect"), [
    ({}, None, {}),
    ({"metadata": {"a": 1, "b": "x"}, "display_name": "Web", "organization": "Ops"}, "0.1.18",
     {"a": "1", "b": "x", "display_name": "Web", "organization": "Ops",
      "migrated_from": "0.1.18"}),
    ({"metadata": "x", "display_name": "", "organization": None}, "", {}),
])
def test_metadata_for(cfg, migrated, expect):
    assert r.metadata_for(cfg, migrated) == expect


def test_registration_body_exact():
    facts = {"hostname": "h", "os_type": "linux"}
    assert r.registration_body({"display_name": "W"}, facts, None, "m" * 32, ["apt"]) == {
        "hostname": "h", "os_type": "linux", "agent_version": AGENT_VERSION,
        "metadata": {"display_name": "W"}, "machine_id": "m" * 32,
        "available_scanners": ["apt"]}
    assert r.registration_body({}, facts, "0.1", None, None) == {
        "hostname": "h", "os_type": "linux", "agent_version": AGENT_VERSION,
        "metadata": {"migrated_from": "0.1"}}
    assert r.registration_body({}, facts, None, "", [])["available_scanners"] == []
    assert facts == {"hostname": "h", "os_type": "linux"}


@pytest.mark.parametrize(("cfg", "server_cfg", "interval"), [
    ({}, {"check_in_interval": 120}, 120),
    ({"check_in_interval": 300}, {"check_in_interval": 120}, 300),
    ({}, {"check_in_interval": 0}, None),
    ({}, {"check_in_interval": True}, None),
    ({}, {"check_in_interval": "120"}, None),
    ({}, "x", None),
    ({}, None, None),
])
def test_apply_registration_exact(cfg, server_cfg, interval):
    base = dict(cfg, server_url="u", registration_token="t")
    answer = {"agent_id": AID, "token": "J", "refresh_token": "R", "config": server_cfg}
    out = r.apply_registration(base, answer, "mid", TOKEN)
    expect = dict(cfg, server_url="u", agent_id=AID, token="J", refresh_token="R",
                  machine_id="mid", enrolled_token_sha256=r.token_fingerprint(TOKEN))
    if interval is not None:
        expect["check_in_interval"] = interval
    assert out == expect
    assert base["registration_token"] == "t"  # pure
    bare = r.apply_registration({}, answer)
    assert "machine_id" not in bare and c.ENROLLED_TOKEN_KEY not in bare


def test_token_fingerprint_and_attempt_record_exact():
    fingerprint = hashlib.sha256(TOKEN.encode()).hexdigest()[:12]
    assert r.token_fingerprint(TOKEN) == fingerprint
    assert r.attempt_record("http://s", TOKEN, "web1", 42, "2026") == {
        "started": "2026", "server_url": "http://s", "token_sha256": fingerprint,
        "hostname": "web1", "pid": 42, "agent_id": None}


@pytest.mark.parametrize(("attempt", "registered", "token", "verdict"), [
    ({"token_sha256": ""}, False, "other", r.PENDING_ATTEMPT),
    ({"token_sha256": 7}, False, "other", r.PENDING_ATTEMPT),
    ({"token_sha256": "3b207d8114a5"}, False, "", r.PENDING_ATTEMPT),
    ({"token_sha256": "3b207d8114a5"}, False, "other", r.SUPERSEDED_ATTEMPT),
    ({"token_sha256": "3b207d8114a5"}, False, TOKEN, r.PENDING_ATTEMPT),
    ({}, True, "other", r.STALE_ATTEMPT),
])
def test_decide_attempt_edges(attempt, registered, token, verdict):
    assert r.decide_attempt(attempt, registered, token) == verdict


# --- the marker on disk -----------------------------------------------------------------
def test_marker_round_trip_mode_and_removal(tmp_root):
    tmp_root.state_dir.mkdir(parents=True)
    assert r.read_attempt(tmp_root) is None
    assert r.clear_attempt(tmp_root) is False
    r.write_attempt(tmp_root, MARKER)
    path = tmp_root.state_dir / "registration_attempt.json"
    assert r.attempt_path(tmp_root) == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert r.read_attempt(tmp_root) == MARKER
    assert r.clear_attempt(tmp_root) is True
    assert not path.exists()


@pytest.mark.parametrize(("content", "error"), [
    (b"{not json", "{p} is not valid JSON"),
    (b"\xff\xfe", "{p} is not valid JSON"),
    (b"[1]", "{p} is not an object"),
])
def test_read_attempt_unreadable_still_counts(tmp_root, content, error):
    tmp_root.state_dir.mkdir(parents=True)
    path = r.attempt_path(tmp_root)
    path.write_bytes(content)
    assert r.read_attempt(tmp_root) == {"error": error.format(p=path)}


def test_read_attempt_directory_is_an_error(tmp_root):
    r.attempt_path(tmp_root).mkdir(parents=True)
    assert r.read_attempt(tmp_root) == {
        "error": f"cannot read {r.attempt_path(tmp_root)}: Is a directory"}


def test_read_attempt_reads_at_most_64k(tmp_root):
    tmp_root.state_dir.mkdir(parents=True)
    r.attempt_path(tmp_root).write_text(json.dumps({"pad": "x" * 70_000}))
    assert r.read_attempt(tmp_root) == {
        "error": f"{r.attempt_path(tmp_root)} is not valid JSON"}


def test_clear_attempt_refuses_a_symlinked_state_dir(tmp_root, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / r.ATTEMPT_FILE).write_text("keep")
    tmp_root.state_dir.parent.mkdir(parents=True)
    tmp_root.state_dir.symlink_to(elsewhere)
    with pytest.raises(OSError):
        r.clear_attempt(tmp_root)
    assert (elsewhere / r.ATTEMPT_FILE).read_text() == "keep"


def test_probe_room_writes_the_size_then_removes_it(tmp_path, monkeypatch):
    written = []
    synced = []
    real_write, real_fsync = os.write, os.fsync

    def write(fd, data):
        n = real_write(fd, bytes(data[:1000]))
        written.append(n)
        return n

    monkeypatch.setattr(r.os, "write", write)
    monkeypatch.setattr(r.os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    r.probe_room(tmp_path, 2500)
    assert written == [1000, 1000, 500]
    assert len(synced) == 1
    assert list(tmp_path.iterdir()) == []


# --- identity writes ------------------------------------------------------------------------
@pytest.mark.parametrize(("base", "source", "expect"), [
    ({"a": 1, "agent_id": "old", "token": "t", "refresh_token": "rt", "machine_id": "m0"},
     {"agent_id": "new", "refresh_token": "rt2", "machine_id": "m1",
      "enrolled_token_sha256": "fp"},
     {"a": 1, "agent_id": "new", "refresh_token": "rt2", "machine_id": "m1",
      "enrolled_token_sha256": "fp"}),
    ({"machine_id": "m0", "registration_token": "x"}, {"agent_id": "n", "machine_id": ""},
     {"machine_id": "m0", "agent_id": "n"}),
])
def test_with_identity_table(base, source, expect):
    assert r.with_identity(base, source) == expect


def _registered(paths, **extra):
    cfg = {"version": "6", "server_url": "http://s", "agent_id": AID, "token": "J",
           "refresh_token": "R", **extra}
    c.save_config(paths, cfg)
    return cfg


def test_save_identity_writes_over_the_replaced_identity(tmp_root):
    _registered(tmp_root, check_in_interval=60)
    tmp_root.state_dir.mkdir(parents=True)
    r.write_attempt(tmp_root, MARKER)
    mine = {"agent_id": AID, "token": "J2", "refresh_token": "R2"}
    out = r.save_identity(tmp_root, mine, replaces=(AID, "R"))
    assert out == c.read_config(tmp_root.config_file)
    assert (out["token"], out["refresh_token"], out["check_in_interval"]) == ("J2", "R2", 60)
    assert r.read_attempt(tmp_root) is None


def test_save_identity_over_cfgs_own_identity(tmp_root):
    _registered(tmp_root)
    mine = {"agent_id": AID, "token": "J2", "refresh_token": "R"}
    assert r.save_identity(tmp_root, mine, replaces=(AID, "OTHER"))["token"] == "J2"


def test_save_identity_refuses_another_identity(tmp_root):
    _registered(tmp_root, agent_id="someone-else")
    before = tmp_root.config_file.read_bytes()
    with pytest.raises(r.IdentityChanged) as exc:
        r.save_identity(tmp_root, {"agent_id": AID, "token": "J2", "refresh_token": "R2"},
                        replaces=(AID, "R"))
    assert str(exc.value) == (f"{tmp_root.config_file} now holds another identity "
                              "(agent someone-else)")
    assert tmp_root.config_file.read_bytes() == before


def test_save_identity_without_a_config_writes_cfg_or_nothing(tmp_root):
    mine = {"server_url": "http://s", "agent_id": AID, "token": "J", "refresh_token": "R"}
    with pytest.raises(r.IdentityChanged):
        r.save_identity(tmp_root, mine, replaces=(AID, "OLD"))
    assert not tmp_root.config_file.exists()
    assert r.save_identity(tmp_root, mine) == mine
    assert c.read_config(tmp_root.config_file) == mine


def test_note_agent_id_and_its_failure(tmp_root, caplog, monkeypatch):
    tmp_root.state_dir.mkdir(parents=True)
    r._note_agent_id(tmp_root, MARKER, AID, LOG)
    assert r.read_attempt(tmp_root) == dict(MARKER, agent_id=AID)

    def full(*_a):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(r, "write_attempt", full)
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        r._note_agent_id(tmp_root, MARKER, "x", LOG)
    assert caplog.messages == [f"cannot note agent x in {r.attempt_path(tmp_root)}: No space "
                               "left on device"]


def test_clear_after_refusal_says_when_the_marker_stays(tmp_root, caplog, monkeypatch):
    shields = []

    class Shield:
        def __enter__(self):
            shields.append("in")

        def __exit__(self, *exc):
            shields.append("out")

    def stuck(_paths):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(r, "clear_attempt", stuck)
    with caplog.at_level(logging.ERROR, logger=LOG.name):
        r._clear_after_refusal(tmp_root, LOG, Shield)
    assert caplog.messages == [f"cannot remove {r.attempt_path(tmp_root)} (Read-only file "
                               "system); nothing was registered: remove it by hand"]
    assert shields == ["in", "out"]


# --- perform ---------------------------------------------------------------------------------
def _setup(paths, url):
    cfg = c.merge_desired(None, {"server_url": url}, TOKEN, False)
    c.save_config(paths, cfg)
    paths.state_dir.mkdir(parents=True)
    return cfg


def test_perform_sends_the_body_and_logs(tmp_root, fake_server, caplog):
    fake_server.on("POST", REG, OK)
    cfg = _setup(tmp_root, fake_server.url)
    client = Client(fake_server.url, machine_id="a" * 32)
    with caplog.at_level(logging.INFO, logger=LOG.name):
        new = r.perform(client, tmp_root, TOKEN, cfg, LOG, migrated_from="0.1.18")
    seen = fake_server.seen("POST", REG)
    assert len(seen) == 1
    body = seen[0].body
    assert body["machine_id"] == "a" * 32
    assert body["metadata"] == {"migrated_from": "0.1.18"}
    assert body["agent_version"] == AGENT_VERSION
    assert body["hostname"] == r.host_facts()["hostname"]
    assert body["available_scanners"] == r.available_scanners()
    assert seen[0].headers["Authorization"] == f"Bearer {TOKEN}"
    assert new == c.read_config(tmp_root.config_file)
    assert (new["agent_id"], new["machine_id"], new[c.ENROLLED_TOKEN_KEY]) == (
        AID, "a" * 32, r.token_fingerprint(TOKEN))
    assert caplog.messages == [f"registered with {fake_server.url} as agent {AID}"]


def test_perform_pending_marker_stops_with_its_message(tmp_root, fake_server):
    cfg = _setup(tmp_root, fake_server.url)
    r.write_attempt(tmp_root, dict(MARKER, token_sha256=r.token_fingerprint(TOKEN)))
    with pytest.raises(r.AttemptPending) as exc:
        r.perform(Client(fake_server.url), tmp_root, TOKEN, cfg, LOG)
    assert str(exc.value).startswith("not registering again: a registration with http://s")
    assert exc.value.attempt["pid"] == 42
    assert fake_server.seen() == []


def test_perform_superseded_marker_is_set_aside_with_a_warning(tmp_root, fake_server, caplog):
    fake_server.on("POST", REG, OK)
    cfg = _setup(tmp_root, fake_server.url)
    r.write_attempt(tmp_root, dict(MARKER, token_sha256="0" * 12))
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        r.perform(Client(fake_server.url), tmp_root, TOKEN, cfg, LOG)
    assert caplog.messages == [
        "an unfinished registration (started 2026-01-01T00:00:00Z with another token) is set "
        "aside: a new registration token was given; registering with it"]
    assert len(fake_server.seen("POST", REG)) == 1


def test_perform_probe_size_and_no_request_without_room(tmp_root, fake_server, monkeypatch):
    cfg = _setup(tmp_root, fake_server.url)
    asked = []

    def probe(directory, size):
        asked.append((directory, size))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(r, "probe_room", probe)
    with pytest.raises(r.CannotSave) as exc:
        r.perform(Client(fake_server.url), tmp_root, TOKEN, cfg, LOG)
    assert asked == [(tmp_root.config_dir, len(c.serialize(cfg)) + 16 * 1024)]
    assert exc.value.directory == tmp_root.config_dir
    assert "cannot take the new config (No space left on device)" in str(exc.value)
    assert fake_server.seen() == [] and r.read_attempt(tmp_root) is None


def test_perform_marker_write_failure_is_cannot_save(tmp_root, fake_server, monkeypatch):
    cfg = _setup(tmp_root, fake_server.url)

    def full(*_a):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(r, "write_attempt", full)
    with pytest.raises(r.CannotSave) as exc:
        r.perform(Client(fake_server.url), tmp_root, TOKEN, cfg, LOG)
    assert exc.value.directory == tmp_root.state_dir
    assert "cannot take the registration attempt record" in str(exc.value)
    assert fake_server.seen() == []


def test_perform_stopped_while_recording_clears_the_marker(tmp_root, fake_server, monkeypatch):
    cfg = _setup(tmp_root, fake_server.url)
    real = r.write_attempt

    def then_stop(paths, record):
        real(paths, record)
        raise Terminated("SIGTERM")

    monkeypatch.setattr(r, "write_attempt", then_stop)
    with pytest.raises(Terminated):
        r.perform(Client(fake_server.url), tmp_root, TOKEN, cfg, LOG)
    assert r.read_attempt(tmp_root) is None and fake_server.seen() == []


def test_perform_marker_records_this_attempt(tmp_root, fake_server):
    seen = []

    def answer(_req):
        seen.append(r.read_attempt(tmp_root))
        return OK

    fake_server.on("POST", REG, answer)
    cfg = _setup(tmp_root, fake_server.url)
    r.perform(Client(fake_server.url), tmp_root, TOKEN, cfg, LOG)
    marker = seen[0]
    assert marker["pid"] == os.getpid()
    assert marker["hostname"] == r.host_facts()["hostname"]
    assert marker["agent_id"] is None
    assert len(marker["started"]) == 20 and marker["started"].endswith("Z")


def test_perform_unknown_outcome_keeps_the_marker(tmp_root, fake_server, monkeypatch):
    cfg = _setup(tmp_root, fake_server.url)
    client = Client(fake_server.url)

    def boom(*_a):
        raise RuntimeError("bug")

    monkeypatch.setattr(client, "register", boom)
    with pytest.raises(r.AttemptPending) as exc:
        r.perform(client, tmp_root, TOKEN, cfg, LOG)
    assert "the registration's outcome is unknown (bug)" in str(exc.value)
    assert r.read_attempt(tmp_root)["token_sha256"] == r.token_fingerprint(TOKEN)


def test_perform_identity_unsaved_names_the_agent(tmp_root, fake_server, monkeypatch):
    fake_server.on("POST", REG, OK)
    cfg = _setup(tmp_root, fake_server.url)

    def full(*_a, **_k):
        raise c.ConfigError("disk says no")

    monkeypatch.setattr(c, "save_config", full)
    with pytest.raises(r.IdentityUnsaved) as exc:
        r.perform(Client(fake_server.url), tmp_root, TOKEN, cfg, LOG)
    assert exc.value.reason == "disk says no"
    assert exc.value.cfg[c.ENROLLED_TOKEN_KEY] == r.token_fingerprint(TOKEN)
    assert r.read_attempt(tmp_root)["agent_id"] == AID


def test_perform_token_rejected_message(tmp_root, fake_server):
    fake_server.on("POST", REG, (400, {"error": "registration token could not be consumed"}))
    cfg = _setup(tmp_root, fake_server.url)
    with pytest.raises(r.TokenRejected) as exc:
        r.perform(Client(fake_server.url), tmp_root, TOKEN, cfg, LOG)
    assert str(exc.value).startswith("the server rejected the registration token (")
    assert r.read_attempt(tmp_root) is None


class Killed(BaseException):
    pass


def test_register_crash_point_is_after_the_answer_before_the_save(tmp_root, fake_server,
                                                                   monkeypatch):
    from redflag_agent.migration import faults  # noqa: PLC0415

    def exit_(status):
        raise Killed(status)

    monkeypatch.setattr(faults.os, "_exit", exit_)
    monkeypatch.setenv(faults.FAULT_ENV, "register:answered")
    fake_server.on("POST", REG, OK)
    cfg = _setup(tmp_root, fake_server.url)
    before = tmp_root.config_file.read_bytes()
    with pytest.raises(Killed):
        r.perform(Client(fake_server.url), tmp_root, TOKEN, cfg, LOG)
    assert len(fake_server.seen("POST", REG)) == 1
    assert tmp_root.config_file.read_bytes() == before
    assert r.read_attempt(tmp_root)["agent_id"] is None  # the marker stays: maybe registered


# --- the whole-file run's survivors -----------------------------------------------------------
@pytest.fixture()
def os_release(monkeypatch, tmp_path):
    """/etc/os-release as the test writes it, on a fixed kernel."""
    release = tmp_path / "os-release"
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(
        release if path == "/etc/os-release" else path, *a, **k))
    monkeypatch.setattr(r.os, "uname", lambda: os.uname_result(
        ("Linux", "node1", "6.1.0", "#1", "x86_64")))
    monkeypatch.setattr("socket.gethostname", lambda: "web1")
    return release


KERNEL = {"hostname": "web1", "os_type": "linux", "os_version": "6.1.0",
          "os_architecture": "x86_64"}


@pytest.mark.parametrize(("content", "extra"), [
    # only quotes are stripped; a value may hold "="; CRLF and trailing blanks are no part
    (b'NAME="Xubuntu"\nPRETTY_NAME="Xubuntu 22.04 (a=b)" \r\nID="xubuntuX"\r\nBAD\n',
     {"os_version": "Xubuntu 22.04 (a=b)", "os_distro": "xubuntuX"}),
    (b"NAME=x\n", {}),  # no PRETTY_NAME, no ID: the kernel's release, no distro
    (b"PRETTY_NAME=\"D\xe9bian\"\n", {}),  # not UTF-8: ignored, never a traceback
    (None, {}),  # no file
])
def test_host_facts_table(os_release, content, extra):
    if content is not None:
        os_release.write_bytes(content)
    assert r.host_facts() == {**KERNEL, **extra}


def test_host_facts_reads_utf8_whatever_the_locale(os_release):
    import locale  # noqa: PLC0415

    os_release.write_bytes('PRETTY_NAME="Débian 12"\nID=debian\n'.encode())
    before = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")  # an ASCII locale, as under a bare systemd unit
    try:
        facts = r.host_facts()
    finally:
        locale.setlocale(locale.LC_CTYPE, before)
    assert facts == {**KERNEL, "os_version": "Débian 12", "os_distro": "debian"}


def test_available_scanners_asks_for_each_tool_by_name(monkeypatch):
    import shutil  # noqa: PLC0415

    monkeypatch.setattr(shutil, "which", lambda tool: "/usr/bin/apt" if tool == "apt" else None)
    assert r.available_scanners() == ["apt"]


def test_apply_registration_takes_a_one_second_interval_and_is_pure():
    base = {"network": {"timeout": 1}}
    out = r.apply_registration(base, {"agent_id": AID, "token": "J", "refresh_token": "R",
                                      "config": {"check_in_interval": 1}})
    assert out["check_in_interval"] == 1
    out["network"]["timeout"] = 2
    assert base == {"network": {"timeout": 1}}


def test_with_identity_is_pure():
    base = {"network": {"timeout": 1}}
    r.with_identity(base, {"agent_id": "a"})["network"]["timeout"] = 2
    assert base == {"network": {"timeout": 1}}


def test_clear_attempt_without_a_state_dir_and_its_refusal_message(tmp_root, tmp_path):
    assert r.clear_attempt(tmp_root) is False  # not even the directory
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    tmp_root.state_dir.parent.mkdir(parents=True)
    tmp_root.state_dir.symlink_to(elsewhere)
    with pytest.raises(OSError) as exc:
        r.clear_attempt(tmp_root)
    assert str(exc.value) == str(exc.value.__cause__)
    assert str(tmp_root.state_dir) in str(exc.value)


def test_write_attempt_hands_the_marker_to_the_agent_user(tmp_root, monkeypatch):
    owned = []
    monkeypatch.setattr(r, "chown_to_agent", owned.append)
    tmp_root.state_dir.mkdir(parents=True)
    r.write_attempt(tmp_root, MARKER)
    assert owned == [r.attempt_path(tmp_root)]


@pytest.mark.parametrize(("size", "parsed"), [(64 * 1024, True), (64 * 1024 + 4, False)])
def test_read_attempt_limit_is_exactly_64k(tmp_root, size, parsed):
    tmp_root.state_dir.mkdir(parents=True)
    text = json.dumps({"pad": ""})
    text = text[:-2] + "x" * (size - len(text)) + text[-2:]
    r.attempt_path(tmp_root).write_text(text)
    got = r.read_attempt(tmp_root)
    assert (got == {"pad": "x" * (size - len(json.dumps({"pad": ""})))}) is parsed
    if not parsed:
        assert got == {"error": f"{r.attempt_path(tmp_root)} is not valid JSON"}


def test_probe_room_opens_a_fresh_private_file(tmp_path, monkeypatch):
    import re  # noqa: PLC0415

    opened = []
    real_open = os.open

    def record(name, flags, *mode):
        opened.append((Path(name), flags, mode))
        return real_open(name, flags, *mode)

    monkeypatch.setattr(r.os, "open", record)
    r.probe_room(tmp_path, 10)
    (name, flags, mode), = opened
    assert flags == os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    assert mode == (0o600,)
    assert name.parent == tmp_path
    assert re.fullmatch(rf"\.config\.json\.probe\.{os.getpid()}\.[0-9a-f]{{8}}\.tmp", name.name)


def test_probe_room_whose_file_vanished(tmp_path, monkeypatch):
    real_fsync = os.fsync

    def fsync_then_gone(fd):
        real_fsync(fd)
        for p in tmp_path.iterdir():
            p.unlink()

    monkeypatch.setattr(r.os, "fsync", fsync_then_gone)
    r.probe_room(tmp_path, 10)
    assert list(tmp_path.iterdir()) == []


def test_save_survives_a_marker_it_cannot_remove(tmp_root, monkeypatch):
    def stuck(_paths):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(r, "clear_attempt", stuck)
    mine = {"server_url": "http://s", "agent_id": AID, "token": "J", "refresh_token": "R"}
    assert r.save_identity(tmp_root, mine) == mine
    assert c.read_config(tmp_root.config_file) == mine


def test_identity_unsaved_keeps_its_error():
    error = OSError(errno.ENOSPC, "disk full")
    assert r.IdentityUnsaved({"agent_id": AID}, Paths(Path("/r")), error).error is error


# --- perform, each branch's exact outcome ----------------------------------------------------
def test_perform_with_a_stale_marker_registers(tmp_root, fake_server):
    """A marker beside a saved identity is stale: it never blocks (decide_attempt)."""
    fake_server.on("POST", REG, OK)
    cfg = _setup(tmp_root, fake_server.url)
    cfg.update(agent_id="old", refresh_token="OLD")
    r.write_attempt(tmp_root, dict(MARKER, token_sha256=r.token_fingerprint(TOKEN)))
    assert r.perform(Client(fake_server.url), tmp_root, TOKEN, cfg, LOG)["agent_id"] == AID


def test_perform_superseded_marker_that_cannot_be_removed(tmp_root, fake_server, caplog,
                                                          monkeypatch):
    fake_server.on("POST", REG, OK)
    cfg = _setup(tmp_root, fake_server.url)
    r.write_attempt(tmp_root, dict(MARKER, token_sha256="0" * 12))
    real = r.clear_attempt
    calls = []

    def stuck_once(paths):
        calls.append(1)
        if len(calls) == 1:
            raise OSError(errno.EROFS, "Read-only file system")
        return real(paths)

    monkeypatch.setattr(r, "clear_attempt", stuck_once)
    with caplog.at_level(logging.ERROR, logger=LOG.name):
        assert r.perform(Client(fake_server.url), tmp_root, TOKEN, cfg, LOG)["agent_id"] == AID
    assert caplog.messages == [f"cannot remove {r.attempt_path(tmp_root)} (Read-only file "
                               "system); nothing was registered: remove it by hand"]


def test_perform_refused_and_the_marker_stays(tmp_root, fake_server, caplog, monkeypatch):
    fake_server.on("POST", REG, (500, {"error": "db"}))
    cfg = _setup(tmp_root, fake_server.url)

    def stuck(_paths):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(r, "clear_attempt", stuck)
    with caplog.at_level(logging.ERROR, logger=LOG.name), pytest.raises(ServerError):
        r.perform(Client(fake_server.url), tmp_root, TOKEN, cfg, LOG)
    assert caplog.messages == [f"cannot remove {r.attempt_path(tmp_root)} (Read-only file "
                               "system); nothing was registered: remove it by hand"]


def test_perform_stopped_while_recording_even_if_the_marker_stays(tmp_root, fake_server,
                                                                  monkeypatch):
    cfg = _setup(tmp_root, fake_server.url)

    def stop(*_a):
        raise Terminated("SIGTERM")

    def stuck(_paths):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(r, "write_attempt", stop)
    monkeypatch.setattr(r, "clear_attempt", stuck)
    with pytest.raises(Terminated):
        r.perform(Client(fake_server.url), tmp_root, TOKEN, cfg, LOG)
    assert fake_server.seen() == []


def test_perform_unknown_outcome_carries_the_record(tmp_root, fake_server, monkeypatch):
    cfg = _setup(tmp_root, fake_server.url)
    client = Client(fake_server.url)

    def boom(*_a):
        raise RuntimeError("bug")

    monkeypatch.setattr(client, "register", boom)
    with pytest.raises(r.AttemptPending) as exc:
        r.perform(client, tmp_root, TOKEN, cfg, LOG)
    assert exc.value.attempt == r.read_attempt(tmp_root)
    assert exc.value.attempt["token_sha256"] == r.token_fingerprint(TOKEN)


def test_perform_400_that_is_no_token_problem_is_not_a_rejection(tmp_root, fake_server):
    fake_server.on("POST", REG, (400, {"error": "hostname is required"}))
    cfg = _setup(tmp_root, fake_server.url)
    with pytest.raises(BadRequest) as exc:
        r.perform(Client(fake_server.url), tmp_root, TOKEN, cfg, LOG)
    assert exc.value.message == "hostname is required"
    assert r.read_attempt(tmp_root) is None


def test_perform_token_rejected_message_exact(tmp_root, fake_server):
    fake_server.on("POST", REG, (401, {"error": "token expired"}))
    cfg = _setup(tmp_root, fake_server.url)
    with pytest.raises(r.TokenRejected) as exc:
        r.perform(Client(fake_server.url), tmp_root, TOKEN, cfg, LOG)
    assert str(exc.value) == r.rejection_message(Unauthorized("token expired"))
    assert "(token expired)" in str(exc.value)


def _refused(tmp_root, fake_server, monkeypatch, raised):
    cfg = _setup(tmp_root, fake_server.url)
    client = Client(fake_server.url, machine_id="a" * 32)

    def refuse(*_a):
        raise raised

    monkeypatch.setattr(client, "register", refuse)
    from redflag_agent import binding  # noqa: PLC0415

    with pytest.raises(binding.Refused) as exc:
        r.perform(client, tmp_root, TOKEN, cfg, LOG)
    assert r.read_attempt(tmp_root) is None
    return exc.value


def test_perform_machine_conflict_names_both(tmp_root, fake_server, monkeypatch):
    from redflag_agent import binding  # noqa: PLC0415
    from redflag_agent.client import MachineConflict  # noqa: PLC0415

    raised = MachineConflict("bound", "agent-9", "web9", "yesterday", "delete it")
    got = _refused(tmp_root, fake_server, monkeypatch, raised)
    assert str(got) == str(binding.conflict_refusal(raised, "a" * 32))
    assert "agent agent-9 (hostname web9" in str(got) and "a" * 16 in str(got)


def test_perform_upgrade_required(tmp_root, fake_server, monkeypatch):
    from redflag_agent import binding  # noqa: PLC0415
    from redflag_agent.client import UpgradeRequired  # noqa: PLC0415

    raised = UpgradeRequired("too old", "0.1", "0.2.0")
    got = _refused(tmp_root, fake_server, monkeypatch, raised)
    assert str(got) == str(binding.upgrade_refusal(raised))


def test_perform_binding_refused_names_this_agent_and_machine(tmp_root, fake_server,
                                                              monkeypatch):
    from redflag_agent import binding  # noqa: PLC0415
    from redflag_agent.client import MISMATCH, BindingRefused  # noqa: PLC0415

    raised = BindingRefused(MISMATCH, "machine id mismatch")
    got = _refused(tmp_root, fake_server, monkeypatch, raised)
    assert (str(got), got.exit_code) == (str(binding.binding_refusal(raised, None, "a" * 32)),
                                         binding.binding_refusal(raised, None, "a" * 32)
                                         .exit_code)
    assert str(got).startswith("the server refuses this agent on this machine: machine id "
                               "mismatch")
    assert f"rebind the agent to machine ID {'a' * 32} on the server" in str(got)


def test_perform_without_a_config_file_saves_cfg_with_the_identity(tmp_root, fake_server):
    fake_server.on("POST", REG, OK)
    cfg = _setup(tmp_root, fake_server.url)
    tmp_root.config_file.unlink()  # only the directory: cfg came from elsewhere
    new = r.perform(Client(fake_server.url), tmp_root, TOKEN, cfg, LOG)
    assert new == c.read_config(tmp_root.config_file)
    assert (new["server_url"], new["agent_id"]) == (fake_server.url, AID)


def test_perform_identity_unsaved_keeps_the_machine_id(tmp_root, fake_server, caplog,
                                                       monkeypatch):
    fake_server.on("POST", REG, OK)
    cfg = _setup(tmp_root, fake_server.url)

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    real, writes = r.write_attempt, []

    def second_fails(paths, record):
        writes.append(record)
        return full() if len(writes) > 1 else real(paths, record)

    monkeypatch.setattr(c, "save_config", full)
    monkeypatch.setattr(r, "write_attempt", second_fails)
    with caplog.at_level(logging.WARNING, logger=LOG.name), \
            pytest.raises(r.IdentityUnsaved) as exc:
        r.perform(Client(fake_server.url, machine_id="a" * 32), tmp_root, TOKEN, cfg, LOG)
    assert exc.value.cfg["machine_id"] == "a" * 32
    assert caplog.messages == [f"cannot note agent {AID} in {r.attempt_path(tmp_root)}: No "
                               "space left on device"]


def test_perform_marker_time_is_utc(tmp_root, fake_server, monkeypatch):
    import time  # noqa: PLC0415

    seen = []

    def answer(_req):
        seen.append(r.read_attempt(tmp_root)["started"])
        return OK

    fake_server.on("POST", REG, answer)
    cfg = _setup(tmp_root, fake_server.url)
    monkeypatch.setenv("TZ", "XXX-5:30")
    time.tzset()
    try:
        before = time.time()
        r.perform(Client(fake_server.url), tmp_root, TOKEN, cfg, LOG)
        after = time.time()
    finally:
        monkeypatch.undo()
        time.tzset()
    import calendar  # noqa: PLC0415

    started = calendar.timegm(time.strptime(seen[0], "%Y-%m-%dT%H:%M:%SZ"))
    assert int(before) - 1 <= started <= after + 1


def test_clear_attempt_of_a_marker_removed_meanwhile(tmp_root, monkeypatch):
    from redflag_agent import safefs  # noqa: PLC0415

    def raced(_path):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory")

    monkeypatch.setattr(safefs, "remove", raced)
    assert r.clear_attempt(tmp_root) is False
