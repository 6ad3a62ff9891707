"""Backoff timing and the check-in loop, pinned exactly (issue 15: mutation testing).

Table tests for the pure timing and parsing functions, and the loop's sleeps: a check-in
loop that stops sleeping hammers the server, and nothing else would notice.
"""

from __future__ import annotations

import logging

import pytest

from redflag_agent import backoff
from redflag_agent import checkin as ck
from redflag_agent import config as c
from redflag_agent.checkin import Agent
from redflag_agent.client import Client
from redflag_agent.signals import Terminated, Terminator
from redflag_agent.status import StatusFile, read_state

from .sleep_recorder import SleepRecorder

LOG = logging.getLogger("redflag.test.mut")
AID = "4b3f0c1e-0000-4000-8000-000000000001"
CMDS = f"/api/v1/agents/{AID}/commands"
RENEW = "/api/v1/agents/renew"
UPDATES = f"/api/v1/agents/{AID}/updates"


# --- backoff -----------------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "expect"), [
    ({"attempt": 0, "rand": 0.5}, 1.0),
    ({"attempt": 0, "rand": 0.0}, 0.5),  # full jitter drew 0: never spin
    ({"attempt": 3, "rand": 0.5}, 8.0),
    ({"attempt": 3, "rand": 0.0}, 0.5),
    ({"attempt": 10, "rand": 0.99}, 297.0),  # capped at 300 before the jitter
    ({"attempt": 5000, "rand": 0.5}, 150.0),  # no float overflow on a long outage
    ({"attempt": 0, "rand": 0.0, "base": 0.1}, 0.1),  # floor never above the base
    ({"attempt": 10, "rand": 0.5, "cap": 5.0}, 2.5),
    ({"attempt": 0, "rand": 0.1, "retry_after": 30.0}, 30.0),
    ({"attempt": 0, "rand": 0.1, "retry_after": 10_000.0}, 300.0),
    ({"attempt": 3, "rand": 0.5, "retry_after": 1.0}, 8.0),  # a floor, not a ceiling
    ({"attempt": 3, "rand": 0.5, "retry_after": 9.0}, 9.0),
    ({"attempt": 3, "rand": 0.5, "retry_after": 20.0, "cap": 12.0}, 12.0),
])
def test_retry_delay_exact(kwargs, expect):
    assert backoff.retry_delay(**kwargs) == pytest.approx(expect)


def test_retry_delay_defaults():
    assert (backoff.DEFAULT_BASE, backoff.DEFAULT_CAP, backoff.MIN_DELAY) == (2.0, 300.0, 0.5)
    assert backoff.retry_delay(1, 0.5) == 2.0


@pytest.mark.parametrize(("args", "expect"), [
    ((300, 0.0), 270.0),
    ((300, 0.5), 300.0),
    ((300, 1.0), 330.0),
    ((300, 0.25), 285.0),
    (("300", 0.5), 300.0),
    ((0.2, 0.5), 1.0),  # never below a second
    ((-5, 0.0), 0.9),
    ((100, 0.25, 0.2), 90.0),
])
def test_checkin_delay_exact(args, expect):
    assert backoff.checkin_delay(*args) == pytest.approx(expect)


@pytest.mark.parametrize(("args", "expect"), [
    ((300.0, True, 200.0, 100.0), 10.0),
    ((300.0, False, 200.0, 100.0), 300.0),
    ((300.0, True, None, 100.0), 300.0),
    ((300.0, True, 100.0, 100.0), 300.0),  # the window ended now
    ((300.0, True, 99.0, 100.0), 300.0),
    ((5.0, True, 200.0, 100.0), 5.0),  # rapid never slows a faster interval
])
def test_rapid_interval_exact(args, expect):
    assert backoff.rapid_interval(*args) == expect


# --- pure parsing ------------------------------------------------------------------------
@pytest.mark.parametrize(("prev", "cur", "expect"), [
    ((100, 1000), (150, 1100), 50.0),
    ((100, 1000), (200, 1100), 0.0),
    ((100, 1000), (100, 1100), 100.0),
    ((100, 1000), (133, 1300), 89.0),
    (None, (1, 2), 0.0),
    ((1, 2), None, 0.0),
    ((1, 1000), (1, 1000), 0.0),  # no time passed: no division by zero
    ((1, 1000), (1, 900), 0.0),
    ((100, 1000), (400, 1100), 0.0),  # idle beyond total (counter reset): clamped
])
def test_cpu_percent(prev, cur, expect):
    assert ck.cpu_percent(prev, cur) == expect


@pytest.mark.parametrize(("text", "expect"), [
    ("MemTotal: 2097152 kB\nMemFree: 100 kB\nMemAvailable: 1048576 kB\n",
     {"memory_total_gb": 2.0, "memory_used_gb": 1.0, "memory_percent": 50.0}),
    ("MemTotal: 4194304 kB\nMemFree: 1048576 kB\n",
     {"memory_total_gb": 4.0, "memory_used_gb": 3.0, "memory_percent": 75.0}),
    ("MemTotal: 1048576 kB\nMemAvailable: 2097152 kB\n",
     {"memory_total_gb": 1.0, "memory_used_gb": 0.0, "memory_percent": 0.0}),
    ("MemTotal: 1048576 kB\n", {"memory_total_gb": 1.0, "memory_used_gb": 1.0,
                                "memory_percent": 100.0}),
    ("garbage\nMemTotal: lots kB\n", {"memory_total_gb": 0.0, "memory_used_gb": 0.0,
                                       "memory_percent": 0.0}),
    ("MemTotal:\n", {"memory_total_gb": 0.0, "memory_used_gb": 0.0, "memory_percent": 0.0}),
    ("MemTotal: 3000000 kB\nMemAvailable: 1000000 kB\n",
     {"memory_total_gb": 2.86, "memory_used_gb": 1.91, "memory_percent": 66.7}),
])
def test_parse_meminfo(text, expect):
    assert ck.parse_meminfo(text) == expect


def test_host_metrics_reports_every_field_from_this_host():
    metrics, cur = ck.host_metrics(None)
    assert set(metrics) == {"cpu_percent", "memory_total_gb", "memory_used_gb",
                            "memory_percent", "disk_total_gb", "disk_used_gb", "disk_percent",
                            "uptime"}
    assert metrics["cpu_percent"] == 0.0  # no earlier sample
    assert cur is not None and cur[1] >= cur[0] > 0
    assert metrics["memory_total_gb"] > 0 and metrics["disk_total_gb"] > 0
    assert 0 <= metrics["disk_used_gb"] <= metrics["disk_total_gb"]
    assert 0 < metrics["disk_percent"] <= 100
    assert isinstance(metrics["uptime"], int) and metrics["uptime"] > 0
    with open("/proc/uptime", encoding="ascii") as fh:
        assert abs(metrics["uptime"] - float(fh.read().split()[0])) < 5


@pytest.mark.parametrize(("value", "expect"), [
    ("2030-01-02T03:04:05Z", 1893553445.0),
    ("2030-01-02T03:04:05z", 1893553445.0),
    ("2030-01-02T03:04:05", 1893553445.0),  # no offset: UTC
    ("2030-01-02T03:04:05.5Z", 1893553445.0),
    ("2030-01-02T03:04:05+01:30", 1893553445.0 - 5400),
    ("2030-01-02T03:04:05-02:15", 1893553445.0 + 8100),
    ("  2030-01-02T03:04:05Z  ", 1893553445.0),
    ("2030-13-02T03:04:05Z", None),  # no month 13
    ("2030-01-02 03:04:05Z", None),
    ("", None),
    (None, None),
    (1893553445, None),
    ("2030-01-02T03:04:05Z" + " " * 50 + "x", 1893553445.0),  # only the first 64 read
    ("2030-01-02T03:04:05Z" + "x" * 50, None),
])
def test_parse_until(value, expect):
    assert ck.parse_until(value) == expect


@pytest.mark.parametrize(("item", "expect"), [
    ({"id": "c1", "type": "scan_updates"}, None),
    ({"id": "c1", "type": "scan_updates", "params": {}}, None),
    ("x", "not a JSON object"),
    ({"type": "t"}, "id is missing or not a string"),
    ({"id": "", "type": "t"}, "id is missing or not a string"),
    ({"id": "a b", "type": "t"},
     "id a b is not printable ASCII of at most 128 characters"),
    ({"id": "x" * 129, "type": "t"},
     f"id {'x' * 64}...[65 more chars] is not printable ASCII of at most 128 characters"),
    ({"id": "c1"}, "command c1: type is missing or not a string"),
    ({"id": "c1", "type": ""}, "command c1: type is missing or not a string"),
    ({"id": "c1", "type": "t" * 65}, "command c1: type is longer than 64 characters"),
    ({"id": "c1", "type": "t" * 64}, None),
    ({"id": "c1", "type": "t", "params": []}, "command c1: params is not a JSON object"),
])
def test_command_problem_messages(item, expect):
    assert ck.command_problem(item) == expect


def test_valid_commands_messages_and_params():
    raw = [{"id": "c1", "type": "scan_updates", "params": None}, 7,
           {"id": "c2", "type": "t", "params": {"a": 1}}]
    good, skipped = ck.valid_commands(raw)
    assert good == [{"id": "c1", "type": "scan_updates", "params": {}},
                    {"id": "c2", "type": "t", "params": {"a": 1}}]
    assert skipped == ["command #1: not a JSON object"]
    assert ck.valid_commands("x") == ([], ["'commands' is not a list"])
    many = [{"id": f"c{i}", "type": "t"} for i in range(ck.MAX_COMMANDS + 3)]
    good, skipped = ck.valid_commands(many)
    assert [g["id"] for g in good] == [f"c{i}" for i in range(ck.MAX_COMMANDS)]
    assert skipped == ["3 commands beyond the first 100"]


# --- the loop sleeps ---------------------------------------------------------------------


class BoundedRand:
    """rand() is drawn once per loop turn: a loop that stops sleeping fails fast here."""

    def __init__(self, value: float, limit: int = 20) -> None:
        self.value, self.limit, self.calls = value, limit, 0

    def __call__(self) -> float:
        self.calls += 1
        if self.calls > self.limit:
            raise AssertionError("the check-in loop ran without sleeping")
        return self.value


def make_agent(tmp_root, server, term, rand=0.5, **cfg_extra):
    cfg = {"version": "6", "server_url": server.url, "agent_id": AID, "token": "OLD-JWT",
           "refresh_token": "REFRESH-1", "check_in_interval": 300, "machine_id": "m"}
    cfg.update(cfg_extra)
    tmp_root.state_dir.mkdir(parents=True)
    c.save_config(tmp_root, cfg)
    return Agent(tmp_root, dict(cfg), Client(server.url), LOG, terminator=term,
                 status=StatusFile(tmp_root, LOG), backoff_base=2.0, backoff_cap=60.0,
                 rand=BoundedRand(rand))


def test_loop_sleeps_the_backoff_after_each_failure_and_the_interval_after_success(
        tmp_root, fake_server, caplog):
    fake_server.on("GET", CMDS, (500, {"error": "db"}), (503, {"error": "down"}),
                   (500, {"error": "db"}), (200, {"commands": []}), (500, {"error": "db"}))
    term = SleepRecorder(stop_after=5)
    agent = make_agent(tmp_root, fake_server, term)
    with caplog.at_level(logging.WARNING, logger=LOG.name), pytest.raises(Terminated):
        agent.loop()
    # attempts 0, 1, 2 at rand 0.5 (base 2), then the interval, then attempt 0 again
    assert term.slept == [1.0, 2.0, 4.0, 300.0, 1.0]
    assert len(fake_server.seen("GET", CMDS)) == 5
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 4
    assert warnings[0].startswith("check-in failed: ")
    assert "; retry 1 in 1.0 s (at " in warnings[0]
    assert "; retry 3 in 4.0 s (at " in warnings[2]
    assert "; retry 1 in 1.0 s (at " in warnings[3]  # the count restarts after a success
    assert read_state(tmp_root)["last_error"].endswith(warnings[3].split(": ", 1)[1].split(
        "; retry")[0])


def test_loop_sleep_is_bounded_by_max_sleep(tmp_root, fake_server):
    fake_server.on("GET", CMDS, (200, {"commands": []}))
    term = SleepRecorder(stop_after=1)
    agent = make_agent(tmp_root, fake_server, term, rand=1.0,
                       check_in_interval=86400)
    agent.cfg["check_in_interval"] = 10 ** 9  # as a hand-edited, in-memory config could
    with pytest.raises(Terminated):
        agent.loop()
    assert term.slept == [ck.MAX_SLEEP]


def test_loop_sleeps_the_rapid_interval(tmp_root, fake_server):
    fake_server.on("GET", CMDS, (200, {"commands": [], "rapid_polling": {
        "enabled": True, "until": "9999-12-31T23:59:59Z"}}))
    term = SleepRecorder(stop_after=2)
    agent = make_agent(tmp_root, fake_server, term)
    with pytest.raises(Terminated):
        agent.loop()
    assert term.slept == [backoff.RAPID_POLL_INTERVAL] * 2


# --- tokens, machine ID and commands, with a scripted client -------------------------------
class StubClient:
    """What the Agent calls on a Client; each answer scripted, each call recorded."""

    machine_id = "f" * 32
    base = "http://127.0.0.1:9"

    def __init__(self, renew=None, check_in=None, report=None):
        self.answers = {"renew": renew, "check_in": check_in, "report": report}
        self.calls: list[tuple] = []

    def _answer(self, name, *args):
        self.calls.append((name, *args))
        answer = self.answers[name]
        if isinstance(answer, BaseException):
            raise answer
        return answer(*args) if callable(answer) else answer

    def renew(self, agent_id, refresh_token):
        return self._answer("renew", agent_id, refresh_token)

    def check_in(self, agent_id, jwt, body):
        return self._answer("check_in", agent_id, jwt, body)

    def report_updates(self, agent_id, jwt, body):
        return self._answer("report", agent_id, jwt, body)


def stub_agent(tmp_root, client, on_disk=None, lister=None, adopt=None, **cfg_extra):
    cfg = {"version": "6", "server_url": "http://127.0.0.1:9", "agent_id": AID,
           "token": "OLD-JWT", "refresh_token": "REFRESH-1", **cfg_extra}
    tmp_root.state_dir.mkdir(parents=True, exist_ok=True)
    c.save_config(tmp_root, cfg if on_disk is None else on_disk)
    return Agent(tmp_root, dict(cfg), client, LOG, terminator=Terminator(),
                 status=StatusFile(tmp_root, LOG), lister=lister, adopt_machine_id=adopt)


def test_binding_refusal_names_this_agent_and_machine(tmp_root):
    from redflag_agent import binding  # noqa: PLC0415
    from redflag_agent.client import MISMATCH, BindingRefused  # noqa: PLC0415

    exc = BindingRefused(MISMATCH, "machine id mismatch")
    agent = stub_agent(tmp_root, StubClient(check_in=exc))
    with pytest.raises(binding.Refused) as got:
        agent.check_in_once()
    want = binding.binding_refusal(exc, AID, "f" * 32)
    assert (str(got.value), got.value.exit_code) == (str(want), want.exit_code)
    assert AID in str(got.value) and "f" * 32 in str(got.value)


@pytest.mark.parametrize(("exc", "detail"), [
    ("unauthorized", "refresh token expired"),
    ("not_found", "not found (404): no reason given"),
])
def test_refused_renewal_message_names_the_agent(tmp_root, exc, detail):
    from redflag_agent import binding  # noqa: PLC0415
    from redflag_agent.client import NotFound, Unauthorized  # noqa: PLC0415
    from redflag_agent.registration import TokenRejected  # noqa: PLC0415

    raised = Unauthorized("refresh token expired") if exc == "unauthorized" else NotFound("")
    agent = stub_agent(tmp_root, StubClient(renew=raised))
    with pytest.raises(TokenRejected) as got:
        agent.renew()
    assert str(got.value) == binding.renew_rejected_message(AID, detail)


@pytest.mark.parametrize(("refresh", "suffix"), [("REFRESH-2", " (refresh token rotated)"),
                                                 (None, "")])
def test_renew_saves_and_says_so(tmp_root, caplog, refresh, suffix):
    from redflag_agent.client import Renewal  # noqa: PLC0415

    client = StubClient(renew=Renewal("NEW-JWT", refresh))
    agent = stub_agent(tmp_root, client, check_in_interval=60)
    with caplog.at_level(logging.INFO, logger=LOG.name):
        assert agent.renew() == "NEW-JWT"
    assert client.calls == [("renew", AID, "REFRESH-1")]
    on_disk = c.read_config(tmp_root.config_file)
    assert (on_disk["token"], on_disk["refresh_token"]) == ("NEW-JWT", refresh or "REFRESH-1")
    assert (agent.cfg["token"], agent.cfg["refresh_token"]) == ("NEW-JWT",
                                                                refresh or "REFRESH-1")
    assert on_disk["check_in_interval"] == 60
    assert caplog.messages == [f"access token renewed for agent {AID}{suffix}"]


def test_renewed_tokens_never_overwrite_another_identity(tmp_root, caplog):
    from redflag_agent.client import Renewal  # noqa: PLC0415

    other = {"version": "6", "server_url": "http://s", "agent_id": "other",
             "refresh_token": "R-OTHER", "token": "J-OTHER"}
    agent = stub_agent(tmp_root, StubClient(renew=Renewal("NEW-JWT", "REFRESH-2")),
                       on_disk=other)
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        agent.renew()
    assert c.read_config(tmp_root.config_file) == other
    assert caplog.messages == [
        f"{tmp_root.config_file} now holds another identity than agent {AID} (changed by "
        "`config apply` or a re-enrollment); the renewed tokens stay in memory for this "
        "process only"]


@pytest.mark.parametrize(("refresh", "expect"), [
    ("REFRESH-2", (logging.ERROR,
     "cannot save the rotated refresh token of agent {aid} to {path} (No space left on "
     "device); if the agent stops before it is saved, its next renewal relies on the server's "
     "one grace replay")),
    (None, (logging.WARNING,
     "cannot save the renewed access token to {path} (No space left on device); it is "
     "renewed again when needed")),
])
def test_unsaved_renewal_is_logged(tmp_root, caplog, monkeypatch, refresh, expect):
    level, message = expect
    from redflag_agent.client import Renewal  # noqa: PLC0415

    agent = stub_agent(tmp_root, StubClient(renew=Renewal("NEW-JWT", refresh)))
    before = tmp_root.config_file.read_bytes()

    def full(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(c, "save_config", full)
    with caplog.at_level(logging.INFO, logger=LOG.name):
        agent.renew()
    assert tmp_root.config_file.read_bytes() == before
    assert [(r.levelno, r.getMessage()) for r in caplog.records][0] == (
        level, message.format(aid=AID, path=tmp_root.config_file))


def test_adopted_machine_id_is_recorded_once_the_server_accepts(tmp_root, caplog):
    client = StubClient(check_in={"commands": []})
    agent = stub_agent(tmp_root, client, adopt="a" * 32)
    with caplog.at_level(logging.INFO, logger=LOG.name):
        agent.check_in_once()
    assert c.read_config(tmp_root.config_file)["machine_id"] == "a" * 32
    assert agent.cfg["machine_id"] == "a" * 32 and agent.adopt_machine_id is None
    assert caplog.messages == [f"recorded machine ID {'a' * 16}... with agent {AID} (the "
                               "server accepted it)"]


def test_adopt_is_dropped_when_another_identity_is_there(tmp_root, caplog):
    other = {"version": "6", "server_url": "http://s", "agent_id": "other",
             "refresh_token": "R"}
    agent = stub_agent(tmp_root, StubClient(check_in={"commands": []}), on_disk=other,
                       adopt="a" * 32)
    with caplog.at_level(logging.INFO, logger=LOG.name):
        agent.check_in_once()
    assert agent.adopt_machine_id is None and "machine_id" not in agent.cfg
    assert c.read_config(tmp_root.config_file) == other
    assert caplog.messages == []


def test_adopt_failure_is_retried_after_the_next_check_in(tmp_root, caplog, monkeypatch):
    from redflag_agent import binding  # noqa: PLC0415

    def full(*_a):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(binding, "record_machine_id", full)
    agent = stub_agent(tmp_root, StubClient(check_in={"commands": []}), adopt="a" * 32)
    with caplog.at_level(logging.INFO, logger=LOG.name):
        agent.check_in_once()
    assert agent.adopt_machine_id == "a" * 32
    assert caplog.messages == [
        f"cannot record machine ID {'a' * 16}... with agent {AID} in {tmp_root.config_file} "
        "(No space left on device); retrying after the next check-in"]


def test_handle_messages(tmp_root, caplog):
    agent = stub_agent(tmp_root, StubClient())
    with caplog.at_level(logging.INFO, logger=LOG.name):
        agent.handle({"id": "c1", "type": "reboot", "params": {}})
        agent.handle({"id": "c2", "type": "frob\nx", "params": {}})
    assert caplog.messages == ["command c1 (reboot) is not supported by this agent; skipped",
                               "unknown command type 'frob\\nx' (id c2); skipped"]


def test_scan_updates_reports_with_the_jwt_and_logs(tmp_root, caplog):
    update = {"package_name": "bash", "available_version": "5.2"}
    client = StubClient(report={"message": "ok"})
    agent = stub_agent(tmp_root, client, lister=lambda: [update])
    with caplog.at_level(logging.INFO, logger=LOG.name):
        agent.handle({"id": "c1", "type": "scan_updates", "params": {}})
    (name, aid, jwt, body), = client.calls
    assert (name, aid, jwt) == ("report", AID, "OLD-JWT")
    assert set(body) == {"command_id", "timestamp", "updates"}
    assert (body["command_id"], body["updates"]) == ("c1", [update])
    assert body["timestamp"].endswith("Z")
    assert caplog.messages == ["scan_updates c1: reported 1 available updates"]


@pytest.mark.parametrize("error", ["scan", "os", "subprocess"])
def test_failed_scan_is_logged_and_nothing_reported(tmp_root, caplog, error):
    import subprocess  # noqa: PLC0415

    from redflag_agent import scan  # noqa: PLC0415

    exc = {"scan": scan.ScanError("dnf broke"), "os": OSError("dnf broke"),
           "subprocess": subprocess.TimeoutExpired("dnf", 1)}[error]

    def lister():
        raise exc

    client = StubClient()
    agent = stub_agent(tmp_root, client, lister=lister)
    with caplog.at_level(logging.INFO, logger=LOG.name):
        agent.scan_updates("c9")
    assert client.calls == []
    assert caplog.messages == [f"scan_updates c9 failed: {exc}"]


class Killed(BaseException):
    pass


def test_renew_crash_point_is_after_the_answer_before_the_save(tmp_root, monkeypatch):
    """The kill -9 window the crash tests use: the server rotated, nothing saved yet."""
    from redflag_agent.client import Renewal  # noqa: PLC0415
    from redflag_agent.migration import faults  # noqa: PLC0415

    def exit_(status):
        raise Killed(status)

    monkeypatch.setattr(faults.os, "_exit", exit_)
    monkeypatch.setenv(faults.FAULT_ENV, "renew:answered")
    client = StubClient(renew=Renewal("NEW-JWT", "REFRESH-2"))
    agent = stub_agent(tmp_root, client)
    before = tmp_root.config_file.read_bytes()
    with pytest.raises(Killed):
        agent.renew()
    assert client.calls == [("renew", AID, "REFRESH-1")]
    assert tmp_root.config_file.read_bytes() == before


# --- edges the first mutation run left standing -------------------------------------------
def test_cpu_sample_reads_idle_and_iowait_of_the_cpu_line(monkeypatch, tmp_path):
    stat_file = tmp_path / "stat"
    stat_file.write_text("cpu  10 20 30 400 50 6 7 8 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(
        stat_file if path == "/proc/stat" else path, *a, **k))
    assert ck._cpu_sample() == (450, 531)
    stat_file.write_text("cpu  10 20 30 400\n")  # an old kernel: no iowait column
    assert ck._cpu_sample() == (400, 460)
    stat_file.write_text("cpu  x y\n")
    assert ck._cpu_sample() is None


@pytest.mark.parametrize(("value", "expect"), [
    ("2030-01-02T03:04:05+11:00", 1893553445.0 - 11 * 3600),
    ("2030-01-02T03:04:05Z" + " " * 44 + "x", 1893553445.0),  # char 65 is never read
    ("2030-01-02T03:04:05Z" + " " * 43 + "x", None),
])
def test_parse_until_edges(value, expect):
    assert ck.parse_until(value) == expect


def test_parse_until_is_utc_whatever_the_local_zone(monkeypatch):
    import time  # noqa: PLC0415

    monkeypatch.setenv("TZ", "XXX-5:30")
    time.tzset()
    try:
        assert ck.parse_until("2030-01-02T03:04:05Z") == 1893553445.0
    finally:
        monkeypatch.undo()
        time.tzset()


NOW_RAPID = 1_800_000_000.0


@pytest.mark.parametrize(("wall_now", "end"), [
    (NOW_RAPID, None),  # ends right now: no window
    (NOW_RAPID - 0.5, 5_000.5),  # half a second left is still a window
])
def test_rapid_window_edges(wall_now, end):
    from datetime import datetime, timezone  # noqa: PLC0415

    until = datetime.fromtimestamp(NOW_RAPID, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    window = ck.rapid_window({"enabled": True, "until": until}, wall_now, 5_000.0, None)
    assert (window[1] if window else None) == end


def test_unknown_command_id_is_bounded_in_the_log(tmp_root, caplog):
    agent = stub_agent(tmp_root, StubClient())
    with caplog.at_level(logging.INFO, logger=LOG.name):
        agent.handle({"id": "c" * 100, "type": "frob", "params": {}})
    assert caplog.messages == [f"unknown command type 'frob' (id {'c' * 64}...[36 more chars]); "
                               "skipped"]


def test_loop_honours_the_servers_retry_after(tmp_root, monkeypatch, caplog):
    from redflag_agent.client import RateLimited  # noqa: PLC0415

    monkeypatch.setattr(ck.time, "time", lambda: 1_800_000_000.0)
    term = SleepRecorder(stop_after=1)
    agent = stub_agent(tmp_root, StubClient(check_in=RateLimited(30.0, "slow down")))
    agent.term = term
    agent.rand = BoundedRand(0.5)
    with caplog.at_level(logging.WARNING, logger=LOG.name), pytest.raises(Terminated):
        agent.loop()
    assert term.slept == [30.0]
    assert caplog.messages == ["check-in failed: rate limited (429): slow down; retry 1 in "
                               "30.0 s (at 08:00:30)"]


def test_loop_handles_the_commands_it_gets(tmp_root):
    update = {"package_name": "bash"}
    client = StubClient(check_in={"commands": [{"id": "c1", "type": "scan_updates"}]},
                        report={"message": "ok"})
    agent = stub_agent(tmp_root, client, lister=lambda: [update])
    agent.term = SleepRecorder(stop_after=1)
    agent.rand = BoundedRand(0.5)
    with pytest.raises(Terminated):
        agent.loop()
    assert [call[0] for call in client.calls] == ["check_in", "report"]
    assert client.calls[1][3]["command_id"] == "c1"


class ShieldCounter(Terminator):
    def __init__(self) -> None:
        super().__init__()
        self.shields = 0

    def shielded(self):
        self.shields += 1
        return super().shielded()


def test_machine_id_is_recorded_under_the_shield(tmp_root, monkeypatch):
    from redflag_agent import binding  # noqa: PLC0415

    term = ShieldCounter()
    agent = stub_agent(tmp_root, StubClient(), adopt="a" * 32)
    agent.term = term
    real = binding.record_machine_id
    during = []

    def record(paths, agent_id, machine_id, shield):
        with shield():
            during.append(term._shield_depth)
        return real(paths, agent_id, machine_id, shield)

    monkeypatch.setattr(binding, "record_machine_id", record)
    agent.record_machine_id()
    assert during == [1]


@pytest.mark.parametrize(("exc", "reason"), [
    (c.ConfigError("config.json is a symlink"), "config.json is a symlink"),
    (OSError("plain"), "plain"),
])
def test_failed_saves_name_any_error(tmp_root, caplog, monkeypatch, exc, reason):
    from redflag_agent import binding  # noqa: PLC0415
    from redflag_agent.client import Renewal  # noqa: PLC0415

    def fail(*_a, **_k):
        raise exc

    agent = stub_agent(tmp_root, StubClient(renew=Renewal("NEW-JWT", None)), adopt="a" * 32)
    monkeypatch.setattr(binding, "record_machine_id", fail)
    monkeypatch.setattr(c, "save_config", fail)
    with caplog.at_level(logging.INFO, logger=LOG.name):
        agent.record_machine_id()
        agent.renew()
    assert caplog.messages[:2] == [
        f"cannot record machine ID {'a' * 16}... with agent {AID} in {tmp_root.config_file} "
        f"({reason}); retrying after the next check-in",
        f"cannot save the renewed access token to {tmp_root.config_file} ({reason}); it is "
        "renewed again when needed"]


def test_rotated_tokens_not_written_over_a_re_enrolled_refresh_token(tmp_root):
    from redflag_agent.client import Renewal  # noqa: PLC0415

    on_disk = {"version": "6", "server_url": "http://s", "agent_id": AID,
               "refresh_token": "REFRESH-NEWER", "token": "J"}
    agent = stub_agent(tmp_root, StubClient(renew=Renewal("NEW-JWT", "REFRESH-2")),
                       on_disk=on_disk)
    agent.renew()
    assert c.read_config(tmp_root.config_file) == on_disk


# --- metrics from fixed /proc and statvfs figures (the whole-file run's survivors) ---------
class FakeHost:
    """/proc/stat, /proc/meminfo, /proc/uptime and statvfs("/") as the test says."""

    def __init__(self, monkeypatch, tmp_path):
        self.dir = tmp_path / "proc"
        self.dir.mkdir()
        self.vfs = (3_000_000, 4096, 1_000_000)  # f_blocks, f_frsize, f_bavail
        real_open = open
        files = {"/proc/stat": "stat", "/proc/meminfo": "meminfo", "/proc/uptime": "uptime"}

        def fake_open(path, *a, **k):
            name = files.get(path) if isinstance(path, str) else None
            return real_open(self.dir / name if name else path, *a, **k)

        def statvfs(path):
            assert path == "/"
            blocks, frsize, bavail = self.vfs
            return type("VFS", (), {"f_blocks": blocks, "f_frsize": frsize,
                                    "f_bavail": bavail})()

        monkeypatch.setattr("builtins.open", fake_open)
        monkeypatch.setattr(ck.os, "statvfs", statvfs)
        self.write(stat="cpu  10 20 30 400 50 6 7 8 0 0\n",
                   meminfo="MemTotal: 100000000 kB\nMemFree: 1 kB\nMemAvailable: 25000000 kB\n",
                   uptime="12345.67 999.00\n")

    def write(self, **files):
        for name, text in files.items():
            (self.dir / name).write_text(text)


@pytest.fixture()
def fake_host(monkeypatch, tmp_path):
    return FakeHost(monkeypatch, tmp_path)


def test_host_metrics_exact_from_fixed_figures(fake_host):
    # cpu: idle 400+50 of 531 now, 400 of 431 before: 50 idle of 100 ticks
    metrics, cur = ck.host_metrics((400, 431))
    assert cur == (450, 531)
    # disk: 12.288e9 bytes, 4.096e9 free; memory: 95.37 GiB, a quarter available
    assert metrics == {"cpu_percent": 50.0,
                       "memory_total_gb": 95.37, "memory_used_gb": 71.53,
                       "memory_percent": 75.0,
                       "disk_total_gb": 11.44, "disk_used_gb": 7.63, "disk_percent": 66.7,
                       "uptime": 12345}


def test_host_metrics_empty_filesystem_is_zero_percent(fake_host):
    fake_host.vfs = (0, 4096, 0)
    metrics, _ = ck.host_metrics(None)
    assert (metrics["disk_total_gb"], metrics["disk_used_gb"], metrics["disk_percent"]) == (
        0.0, 0.0, 0.0)


def test_cpu_sample_with_iowait_as_the_last_column(fake_host):
    fake_host.write(stat="cpu  10 20 30 400 50\n")  # exactly five columns: iowait counts
    assert ck._cpu_sample() == (450, 510)


@pytest.mark.parametrize(("prev", "cur", "expect"), [
    ((0, 0), (1, 3), 66.7),  # one decimal, not a whole number, not two decimals
    ((200, 1000), (100, 1100), 100.0),  # idle went back (counter reset): never above 100
])
def test_cpu_percent_rounding_and_ceiling(prev, cur, expect):
    assert ck.cpu_percent(prev, cur) == expect


@pytest.mark.parametrize(("text", "expect"), [
    ("MemTotal: 2097152\nMemAvailable: 1048576\n",  # no unit column: still read
     {"memory_total_gb": 2.0, "memory_used_gb": 1.0, "memory_percent": 50.0}),
    ("MemTotal: 10 kB\n",  # neither MemAvailable nor MemFree: nothing available
     {"memory_total_gb": 0.0, "memory_used_gb": 0.0, "memory_percent": 100.0}),
    ("MemTotal: 1 kB\nMemAvailable: 2 kB\n",  # more available than total: none used
     {"memory_total_gb": 0.0, "memory_used_gb": 0.0, "memory_percent": 0.0}),
    ("MemTotal: 100000000 kB\nMemAvailable: 25000000 kB\n",  # kB are 1024 bytes
     {"memory_total_gb": 95.37, "memory_used_gb": 71.53, "memory_percent": 75.0}),
    ("MemTotal: 2097152 kB\nMemFreeX: 2097152 kB\n",  # only the exact key counts
     {"memory_total_gb": 2.0, "memory_used_gb": 2.0, "memory_percent": 100.0}),
])
def test_parse_meminfo_edges(text, expect):
    assert ck.parse_meminfo(text) == expect


def test_first_check_in_measures_cpu_since_the_agent_started(fake_host, tmp_root):
    fake_host.write(stat="cpu  10 20 1 400 0\n")  # sampled by Agent(): idle 400 of 431
    agent = stub_agent(tmp_root, StubClient())
    fake_host.write(stat="cpu  10 20 30 400 50 6 7 8 0 0\n")
    assert agent.metrics_body()["cpu_percent"] == 50.0
    assert agent._cpu == (450, 531)


# --- renewal and refusals inside a check-in --------------------------------------------------
class SeqClient(StubClient):
    """A StubClient whose check_in answers one after the other."""

    def __init__(self, check_ins, **kwargs):
        super().__init__(check_in=lambda *_a: self._next(), **kwargs)
        self.check_ins = list(check_ins)

    def _next(self):
        answer = self.check_ins.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


def test_authed_renews_once_on_401_and_says_so(tmp_root, caplog):
    from redflag_agent.client import Renewal, Unauthorized  # noqa: PLC0415

    client = SeqClient([Unauthorized("expired"), {"commands": []}],
                       renew=Renewal("NEW-JWT", None))
    agent = stub_agent(tmp_root, client)
    with caplog.at_level(logging.INFO, logger=LOG.name):
        assert agent.check_in_once() == []
    assert [call[:3] for call in client.calls] == [
        ("check_in", AID, "OLD-JWT"), ("renew", AID, "REFRESH-1"), ("check_in", AID, "NEW-JWT")]
    assert caplog.messages == ["access token refused (401); renewing",
                               f"access token renewed for agent {AID}"]


def test_authed_401_after_a_fresh_renewal_is_a_server_error(tmp_root):
    from redflag_agent.client import Renewal, ServerError, Unauthorized  # noqa: PLC0415

    client = SeqClient([Unauthorized("expired"), Unauthorized("still no")],
                       renew=Renewal("NEW-JWT", None))
    with pytest.raises(ServerError) as got:
        stub_agent(tmp_root, client).check_in_once()
    assert (got.value.status, got.value.message, str(got.value)) == (
        401, "refused even after a fresh renewal: still no",
        "server error 401: refused even after a fresh renewal: still no")


def test_binding_refused_after_a_renewal_names_this_agent(tmp_root):
    from redflag_agent import binding  # noqa: PLC0415
    from redflag_agent.client import MISMATCH, BindingRefused, Renewal, Unauthorized  # noqa: PLC0415

    exc = BindingRefused(MISMATCH, "machine id mismatch")
    client = SeqClient([Unauthorized("expired"), exc], renew=Renewal("NEW-JWT", None))
    with pytest.raises(binding.Refused) as got:
        stub_agent(tmp_root, client).check_in_once()
    assert str(got.value) == str(binding.binding_refusal(exc, AID, "f" * 32))


def test_binding_refused_renewal_names_this_agent(tmp_root):
    from redflag_agent import binding  # noqa: PLC0415
    from redflag_agent.client import NOT_BOUND, BindingRefused  # noqa: PLC0415

    exc = BindingRefused(NOT_BOUND, "agent not bound")
    with pytest.raises(binding.Refused) as got:
        stub_agent(tmp_root, StubClient(renew=exc)).renew()
    want = binding.binding_refusal(exc, AID, "f" * 32)
    assert (str(got.value), got.value.exit_code) == (str(want), want.exit_code)


def test_upgrade_required_at_check_in(tmp_root):
    from redflag_agent import binding  # noqa: PLC0415
    from redflag_agent.client import UpgradeRequired  # noqa: PLC0415

    exc = UpgradeRequired("too old", "0.1.0", "0.2.0")
    with pytest.raises(binding.Refused) as got:
        stub_agent(tmp_root, StubClient(check_in=exc)).check_in_once()
    assert str(got.value) == str(binding.upgrade_refusal(exc))
    assert "0.2.0 or newer (too old)" in str(got.value)


@pytest.mark.parametrize(("message", "detail"), [
    ("agent deleted", "agent deleted"),
    ("", "not found (404): no reason given"),
])
def test_check_in_404_message_exact(tmp_root, message, detail):
    from redflag_agent.client import NotFound  # noqa: PLC0415
    from redflag_agent.registration import TokenRejected  # noqa: PLC0415

    with pytest.raises(TokenRejected) as got:
        stub_agent(tmp_root, StubClient(check_in=NotFound(message))).check_in_once()
    assert str(got.value) == (
        f"the server does not know agent {AID} any more ({detail}). Fix: re-enroll this "
        "host: run the playbook with redflag_agent_force_reregister=true and a fresh "
        "redflag_agent_registration_token (or `redflag-agent register`)")


def test_rapid_polling_is_logged_once_when_it_starts(tmp_root, caplog, monkeypatch):
    from datetime import datetime, timezone  # noqa: PLC0415

    monkeypatch.setattr(ck.time, "time", lambda: NOW_RAPID)
    monkeypatch.setattr(ck.time, "monotonic", lambda: 5_000.0)
    until = datetime.fromtimestamp(NOW_RAPID + 120, timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")
    rapid = {"commands": [], "rapid_polling": {"enabled": True, "until": until}}
    agent = stub_agent(tmp_root, SeqClient([rapid, rapid, {"commands": []}]))
    with caplog.at_level(logging.INFO, logger=LOG.name):
        agent.check_in_once()
        assert caplog.messages == ["rapid polling requested for 120 s"]
        agent.check_in_once()  # the same request again: not new, not logged
        agent.check_in_once()  # no rapid polling any more: nothing to say
    assert caplog.messages == ["rapid polling requested for 120 s"]
    assert agent._rapid is None


def test_malformed_command_is_skipped_with_its_reason(tmp_root, caplog):
    answer = {"commands": [7, {"id": "c1", "type": "scan_updates"}]}
    agent = stub_agent(tmp_root, StubClient(check_in=answer))
    with caplog.at_level(logging.INFO, logger=LOG.name):
        commands = agent.check_in_once()
    assert commands == [{"id": "c1", "type": "scan_updates", "params": {}}]
    assert caplog.messages == ["skipped a malformed command in the check-in answer: "
                               "command #0: not a JSON object"]


def test_unsaved_rotation_hands_the_used_refresh_token_to_the_hook(tmp_root, monkeypatch):
    """The runner's override keeps (agent_id, renewed_with) to retry the save."""
    from redflag_agent.client import Renewal  # noqa: PLC0415

    agent = stub_agent(tmp_root, StubClient(renew=Renewal("NEW-JWT", "REFRESH-2")))
    seen = []
    monkeypatch.setattr(agent, "tokens_unsaved", lambda *args: seen.append(args))

    def full(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(c, "save_config", full)
    agent.renew()
    assert seen == [("REFRESH-1", "No space left on device")]
