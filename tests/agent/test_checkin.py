"""Check-in: renewal on 401, commands, backoff on outages; in-process against a local server."""

from __future__ import annotations

import logging
import threading

import pytest

from redflag_agent import backoff
from redflag_agent import checkin as ck
from redflag_agent import config as c
from redflag_agent.checkin import Agent
from redflag_agent.client import Client, ServerError
from redflag_agent.registration import TokenRejected
from redflag_agent.signals import Terminated, Terminator
from redflag_agent.status import StatusFile, read_state

LOG = logging.getLogger("redflag.test")
AID = "4b3f0c1e-0000-4000-8000-000000000001"
CMDS = f"/api/v1/agents/{AID}/commands"
RENEW = "/api/v1/agents/renew"
UPDATES = f"/api/v1/agents/{AID}/updates"


def make_agent(tmp_root, server, lister=None, term=None, **cfg_extra):
    cfg = {"version": "6", "server_url": server.url, "agent_id": AID, "token": "OLD-JWT",
           "refresh_token": "REFRESH-1", "check_in_interval": 300, "machine_id": "m"}
    cfg.update(cfg_extra)
    tmp_root.state_dir.mkdir(parents=True)
    c.save_config(tmp_root, cfg)
    kwargs = {"lister": lister} if lister else {}
    return Agent(tmp_root, dict(cfg), Client(server.url), LOG, terminator=term or Terminator(),
                 status=StatusFile(tmp_root, LOG), backoff_base=0.01, backoff_cap=0.05,
                 migrated_from="0.1.18", **kwargs)


def test_checkin_sends_metrics_and_version(tmp_root, fake_server):
    fake_server.on("GET", CMDS, (200, {"commands": []}))
    agent = make_agent(tmp_root, fake_server)
    assert agent.check_in_once() == []
    req = fake_server.seen("GET", CMDS)[0]
    assert req.headers["Authorization"] == "Bearer OLD-JWT"
    assert req.body["version"] == "0.2.0"
    assert req.body["metadata"]["migrated_from"] == "0.1.18"
    assert {"cpu_percent", "memory_percent", "disk_percent", "uptime"} <= set(req.body)
    assert read_state(tmp_root)["last_checkin"]


def test_401_renews_once_saves_token_and_retries(tmp_root, fake_server):
    fake_server.on("GET", CMDS, (401, {"error": "token expired"}), (200, {"commands": []}))
    fake_server.on("POST", RENEW, (200, {"token": "NEW-JWT"}))
    agent = make_agent(tmp_root, fake_server)
    agent.check_in_once()
    checkins = fake_server.seen("GET", CMDS)
    assert [r.headers["Authorization"] for r in checkins] == ["Bearer OLD-JWT", "Bearer NEW-JWT"]
    renew = fake_server.seen("POST", RENEW)[0]
    # CONTRACT 4b: renew reports the agent's version (the server's 426 floor reads it)
    assert renew.body == {"agent_id": AID, "refresh_token": "REFRESH-1",
                          "agent_version": "0.2.0"}
    on_disk = c.read_config(tmp_root.config_file)
    assert on_disk["token"] == "NEW-JWT" and on_disk["machine_id"] == "m"


@pytest.mark.parametrize("answer", [(401, {"error": "invalid or expired refresh token"}),
                                    (404, {"error": "agent not found"})])
def test_renewal_refused_is_token_rejected(tmp_root, fake_server, answer):
    fake_server.on("GET", CMDS, (401, {"error": "expired"}))
    fake_server.on("POST", RENEW, answer)
    agent = make_agent(tmp_root, fake_server)
    before = tmp_root.config_file.read_bytes()
    with pytest.raises(TokenRejected) as exc:
        agent.check_in_once()
    assert "REFRESH-1" not in str(exc.value)
    assert tmp_root.config_file.read_bytes() == before


def test_401_right_after_renewal_is_retryable_not_fatal(tmp_root, fake_server):
    fake_server.on("GET", CMDS, (401, {"error": "nope"}))
    fake_server.on("POST", RENEW, (200, {"token": "NEW-JWT"}))
    with pytest.raises(ServerError):
        make_agent(tmp_root, fake_server).check_in_once()
    assert len(fake_server.seen("POST", RENEW)) == 1, "renew once, not in a loop"


def test_missing_access_token_renews_first(tmp_root, fake_server):
    fake_server.on("GET", CMDS, (200, {"commands": []}))
    fake_server.on("POST", RENEW, (200, {"token": "NEW-JWT"}))
    agent = make_agent(tmp_root, fake_server, token=None)
    agent.check_in_once()
    assert fake_server.seen("GET", CMDS)[0].headers["Authorization"] == "Bearer NEW-JWT"


def test_scan_updates_posts_updates_and_skips_unknown(tmp_root, fake_server, caplog):
    update = {"package_type": "dnf", "package_name": "bash", "current_version": "5.2.25",
              "available_version": "5.2.26", "severity": "unknown", "repository_source": "u"}
    fake_server.on("GET", CMDS, (200, {"commands": [
        {"id": "c1", "type": "scan_updates", "params": {}},
        {"id": "c2", "type": "frobnicate", "params": {}},
        {"id": "c3", "type": "reboot", "params": {}}]}))
    fake_server.on("POST", UPDATES, (200, {"message": "ok"}))
    agent = make_agent(tmp_root, fake_server, lister=lambda: [update])
    with caplog.at_level(logging.INFO, logger="redflag.test"):
        for cmd in agent.check_in_once():
            agent.handle(cmd)
    posted = fake_server.seen("POST", UPDATES)[0].body
    assert posted["command_id"] == "c1" and posted["updates"] == [update]
    assert "unknown command type 'frobnicate'" in caplog.text
    assert "c3 (reboot) is not supported" in caplog.text


def test_loop_backs_off_through_outage_then_checks_in(tmp_root, fake_server, caplog):
    term = Terminator()

    def ok_then_stop(_req):
        term.request_stop()  # the sleep after this check-in ends the loop
        return 200, {"commands": []}

    fake_server.on("GET", CMDS, (500, {"error": "db"}), (429, {"error": "slow down"}),
                   (503, b"down"), ok_then_stop)
    agent = make_agent(tmp_root, fake_server, term=term)
    with caplog.at_level(logging.WARNING, logger="redflag.test"), pytest.raises(Terminated):
        agent.loop()
    assert len(fake_server.seen("GET", CMDS)) == 4
    assert caplog.text.count("check-in failed") == 3
    assert "retry 3 in" in caplog.text
    state = read_state(tmp_root)
    assert state["last_error"] is None and state["last_checkin"]


def test_check_in_404_agent_deleted_is_token_rejected_not_a_retry(tmp_root, fake_server):
    fake_server.on("GET", CMDS, (404, {"error": "agent not found"}))
    agent = make_agent(tmp_root, fake_server)
    before = tmp_root.config_file.read_bytes()
    with pytest.raises(TokenRejected, match="does not know agent") as exc:
        agent.check_in_once()
    assert "redflag_agent_force_reregister" in str(exc.value)
    assert len(fake_server.seen("GET", CMDS)) == 1
    assert fake_server.seen("POST", RENEW) == []
    assert tmp_root.config_file.read_bytes() == before


# --- server answers are checked before use ---------------------------------------------
CMD = {"id": "c1", "type": "scan_updates", "params": {}}


@pytest.mark.parametrize(("raw", "kept", "skipped"), [
    ([CMD], ["c1"], 0),
    (None, [], 0),
    ([], [], 0),
    ({"id": "c1"}, [], 1),  # not a list
    ([dict(CMD, params=None), {"id": "c2", "type": "reboot"}], ["c1", "c2"], 0),
    (["scan_updates", 7, None], [], 3),
    ([dict(CMD, id=7)], [], 1),
    ([dict(CMD, id="")], [], 1),
    ([dict(CMD, id="c1\n[INFO] forged")], [], 1),
    ([dict(CMD, id="x" * 129)], [], 1),
    ([dict(CMD, id="x" * 128)], ["x" * 128], 0),
    ([dict(CMD, type=["scan_updates"])], [], 1),
    ([dict(CMD, type="t" * 65)], [], 1),
    ([dict(CMD, params=[1, 2])], [], 1),
    ([dict(CMD, params="rm -rf")], [], 1),
    ([dict(CMD, id=f"c{i}") for i in range(ck.MAX_COMMANDS + 5)], None, 1),
])
def test_valid_commands(raw, kept, skipped):
    good, why = ck.valid_commands(raw)
    if kept is not None:
        assert [g["id"] for g in good] == kept
    else:
        assert len(good) == ck.MAX_COMMANDS
    assert all(isinstance(g["params"], dict) for g in good)
    assert len(why) == skipped
    assert all("\n" not in w for w in why)


def test_malformed_commands_skipped_with_an_escaped_warning(tmp_root, fake_server, caplog):
    fake_server.on("GET", CMDS, (200, {"commands": [
        {"id": "c1\n[INFO] forged", "type": "scan_updates"},
        {"id": "c2", "type": "unknown\n[INFO] forged too", "params": {}},
        {"id": "c3", "type": "scan_updates", "params": "x"}]}))
    agent = make_agent(tmp_root, fake_server)
    with caplog.at_level(logging.INFO, logger="redflag.test"):
        for cmd in agent.check_in_once():
            agent.handle(cmd)
    assert caplog.text.count("skipped a malformed command") == 2
    assert "unknown command type 'unknown\\n[INFO] forged too' (id c2)" in caplog.text
    assert not [r for r in caplog.records if "\n" in r.getMessage()]
    assert fake_server.seen("POST", UPDATES) == []


# (rapid_polling answer, wall now, monotonic now, previous) -> monotonic end or None
NOW, MONO = 1_800_000_000.0, 5_000.0


def at(seconds: float) -> str:
    from datetime import datetime, timezone  # noqa: PLC0415

    return datetime.fromtimestamp(NOW + seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize(("rapid", "previous", "end"), [
    ({"enabled": True, "until": at(600)}, None, MONO + 600),
    ({"enabled": True, "until": at(600)[:-1] + ".123456789Z"}, None, MONO + 600),
    ({"enabled": True, "until": at(600 + 7200)[:-1] + "+02:00"}, None, MONO + 600),
    ({"enabled": True, "until": "9999-12-31T23:59:59Z"}, None, MONO + ck.MAX_RAPID_SECONDS),
    ({"enabled": True, "until": at(-5)}, None, None),
    ({"enabled": False, "until": at(600)}, None, None),
    ({"enabled": "yes", "until": at(600)}, None, None),
    ({"enabled": True, "until": "soon"}, None, None),
    ({"enabled": True, "until": "x" * 100_000}, None, None),
    ({"enabled": True}, None, None),
    ("rapid", None, None),
    (None, (at(600), MONO - 100), None),
    # the same request repeated does not extend the window, even from a skewed server
    ({"enabled": True, "until": "9999-12-31T23:59:59Z"},
     ("9999-12-31T23:59:59Z", MONO - 3000), MONO - 3000),
    # a new request starts a new window
    ({"enabled": True, "until": at(60)}, (at(600), MONO - 3000), MONO + 60),
])
def test_rapid_window(rapid, previous, end):
    window = ck.rapid_window(rapid, NOW, MONO, previous)
    assert (window[1] if window else None) == end


def test_rapid_polling_ends_on_the_monotonic_clock(tmp_root, fake_server, monkeypatch):
    fake_server.on("GET", CMDS, (200, {"commands": [], "rapid_polling": {
        "enabled": True, "until": "9999-12-31T23:59:59Z"}}))
    agent = make_agent(tmp_root, fake_server)
    mono = [1000.0]
    monkeypatch.setattr(ck.time, "monotonic", lambda: mono[0])
    agent.check_in_once()
    assert agent.interval() == backoff.RAPID_POLL_INTERVAL
    mono[0] += ck.MAX_RAPID_SECONDS - 1
    agent.check_in_once()  # the same request again
    assert agent.interval() == backoff.RAPID_POLL_INTERVAL
    mono[0] += 2
    agent.check_in_once()
    assert agent.interval() == 300.0


@pytest.mark.parametrize(("value", "seconds"), [
    (300, 300.0), (None, float(c.DEFAULT_CHECK_IN_INTERVAL)),
    (0, float(c.DEFAULT_CHECK_IN_INTERVAL)), (-1, float(c.DEFAULT_CHECK_IN_INTERVAL)),
    (float("nan"), float(c.DEFAULT_CHECK_IN_INTERVAL)), (True, float(c.DEFAULT_CHECK_IN_INTERVAL)),
    ("300", 300.0), ("soon", float(c.DEFAULT_CHECK_IN_INTERVAL)), (0.2, 1.0),
    (10 ** 12, ck.MAX_SLEEP), (10 ** 400, ck.MAX_SLEEP),
    (float("inf"), ck.MAX_SLEEP),
])
def test_interval_seconds(value, seconds):
    assert ck.interval_seconds(value) == seconds


class RecordingTerminator(Terminator):
    def __init__(self) -> None:
        super().__init__()
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        # what the real sleep (Event.wait) does with it
        if seconds > threading.TIMEOUT_MAX:
            raise OverflowError("timeout value is too large")
        raise Terminated("test")


def test_huge_check_in_interval_does_not_crash_the_loop(tmp_root, fake_server):
    fake_server.on("GET", CMDS, (200, {"commands": []}))
    term = RecordingTerminator()
    agent = make_agent(tmp_root, fake_server, term=term, check_in_interval=10 ** 12)
    with pytest.raises(Terminated):
        agent.loop()
    assert term.slept and term.slept[0] <= ck.MAX_SLEEP
