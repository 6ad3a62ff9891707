"""An identity the server gave us that the disk refused (issue 15: mutation testing).

The server accepted a registration (or rotated the refresh token) but config.json could not
be written: the runner keeps the identity in memory, checks in with it, retries the save on
a backoff before check-ins and once more at stop, and says in status.json what is at stake.
Exit codes, messages, the retry schedule and the status are pinned exactly; no token may
appear in a log, in status.json or in the registration attempt marker.

A fake clock stands in for the runner's time.monotonic so the schedule is exact:
REDFLAG_BACKOFF_BASE=1, CAP=6 and rand 0.3 give the save retries 0.5, 0.6, 1.2, 1.8, 1.8 s
(the defaults, base 2 and cap 300, would give 0.6, 1.2, 2.4).
"""

from __future__ import annotations

import json
import logging
import signal
import time as real_time

import pytest

from redflag_agent import config as c
from redflag_agent import registration as r
from redflag_agent import runner as runner_mod
from redflag_agent.exits import EX_CONFIG, EX_NOPERM
from redflag_agent.lock import InstanceLock
from redflag_agent.runner import EX_OK, LockRefused, Runner
from redflag_agent.signals import Terminated, Terminator
from redflag_agent.status import StatusFile, read_state

LOG = logging.getLogger("redflag.test.unsaved")
REG_LOG = "redflag.registration"
AID = "4b3f0c1e-0000-4000-8000-000000000001"
OTHER = "4b3f0c1e-0000-4000-8000-0000000000ff"
REG = "/api/v1/agents/register"
CMDS = f"/api/v1/agents/{AID}/commands"
ENV = {"REDFLAG_BACKOFF_BASE": "1", "REDFLAG_BACKOFF_CAP": "6"}
NOW = "2026-12-02T07:00:00Z"
ENOSPC = "No space left on device"
SECRETS = ("JWT-SECRET-A", "REFRESH-SECRET-A", "REG-TOKEN-SECRET", "REFRESH-SECRET-OLD")


def identity(**extra):
    return {"version": "6", "server_url": "http://127.0.0.1:9", "agent_id": AID,
            "token": "JWT-SECRET-A", "refresh_token": "REFRESH-SECRET-A", **extra}


class Clock:
    """The runner's `time`: a settable monotonic clock, the rest the real module."""

    def __init__(self, now: float) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now

    def __getattr__(self, name):
        return getattr(real_time, name)


class Disk:
    """config.save_config that fails while `full` (ENOSPC, or the error given)."""

    def __init__(self) -> None:
        self.full = True
        self.error: BaseException = OSError(28, ENOSPC)
        self.calls = 0
        self.real = c.save_config
        self.before_write = None

    def save(self, paths, cfg):
        self.calls += 1
        if self.before_write is not None:
            self.before_write()
        if self.full:
            raise self.error
        self.real(paths, cfg)


class StopAfter(Terminator):
    """Records sleeps, advances the clock by each, and stops as SIGTERM would after N."""

    def __init__(self, clock: Clock, stop_after: int) -> None:
        super().__init__()
        self.clock = clock
        self.stop_after = stop_after
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.clock.now += seconds
        if len(self.slept) >= self.stop_after:
            self.signal_name = "SIGTERM"
            self.request_stop()
            raise Terminated("SIGTERM")


@pytest.fixture
def clock(monkeypatch):
    clk = Clock(1000.0)
    monkeypatch.setattr(runner_mod, "time", clk)
    monkeypatch.setattr(runner_mod, "utc_now", lambda: NOW)
    return clk


@pytest.fixture
def disk(monkeypatch):
    d = Disk()
    monkeypatch.setattr(c, "save_config", d.save)
    return d


@pytest.fixture
def runner(tmp_root, clock):
    tmp_root.config_dir.mkdir(parents=True)
    tmp_root.state_dir.mkdir(parents=True)
    run = Runner(tmp_root, LOG, Terminator(), rand=lambda: 0.3, environ=ENV)
    run._acquire()
    run.status = StatusFile(tmp_root, LOG)
    yield run
    run.lock.release()


def reg_messages(caplog):
    return [(rec.levelno, rec.getMessage()) for rec in caplog.records if rec.name == REG_LOG]


def assert_no_secret(paths, caplog):
    texts = [caplog.text]
    for f in (paths.status_file, r.attempt_path(paths)):
        if f.exists():
            texts.append(f.read_text())
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


def unsaved_status(reason=ENOSPC, kind="registration"):
    return {"agent_id": AID, "since": NOW, "error": reason, "kind": kind}


# --- keep_unsaved / _record_unsaved / _schedule_save_retry -------------------------------
def test_keep_unsaved_records_status_and_schedules_the_first_retry(runner, tmp_root, caplog):
    cfg = identity()
    runner.keep_unsaved(cfg, ENOSPC)
    assert runner.unsaved is cfg
    assert (runner.unsaved_kind, runner.unsaved_replaces, runner.unsaved_since) == (
        "registration", None, NOW)
    assert runner.unsaved_attempt == 1
    assert runner.unsaved_next == pytest.approx(1000.5)
    state = read_state(tmp_root)
    assert state["identity_unsaved"] == unsaved_status()
    assert state["last_error"] == (f"{NOW} registration: identity of agent {AID} not saved to "
                                   f"{tmp_root.config_file}: {ENOSPC}")
    assert_no_secret(tmp_root, caplog)


def test_keep_unsaved_of_rotated_tokens(runner, tmp_root):
    runner.keep_unsaved(identity(), "quota", "rotation", (AID, "REFRESH-SECRET-OLD"))
    assert (runner.unsaved_kind, runner.unsaved_replaces) == (
        "rotation", (AID, "REFRESH-SECRET-OLD"))
    state = read_state(tmp_root)
    assert state["identity_unsaved"] == unsaved_status("quota", "rotation")
    assert state["last_error"] == (f"{NOW} rotation: identity of agent {AID} not saved to "
                                   f"{tmp_root.config_file}: quota")


def test_keep_unsaved_before_the_status_file_exists_is_memory_only(runner, tmp_root):
    runner.status = None
    cfg = identity()
    runner.keep_unsaved(cfg, ENOSPC)
    assert runner.unsaved is cfg
    assert not tmp_root.status_file.exists()


def test_record_unsaved_with_nothing_unsaved_writes_nothing(runner, tmp_root):
    runner._record_unsaved(ENOSPC)
    assert not tmp_root.status_file.exists()


# --- retry_identity_save ----------------------------------------------------------------
def test_save_retries_follow_the_backoff_until_the_space_is_back(runner, tmp_root, clock, disk,
                                                                caplog):
    cfg = identity()
    with caplog.at_level(logging.INFO):
        runner.keep_unsaved(cfg, ENOSPC)
        expected = []
        for attempt, delay in ((2, 0.6), (3, 1.2), (4, 1.8), (5, 1.8)):
            due = runner.unsaved_next
            clock.now = due - 0.01
            runner.retry_identity_save(cfg)  # not due: not even tried
            assert disk.calls == attempt - 2
            clock.now = due  # due at exactly the scheduled time
            runner.retry_identity_save(cfg)
            assert disk.calls == attempt - 1
            assert runner.unsaved_attempt == attempt
            assert runner.unsaved_next == pytest.approx(due + delay)
            expected.append((logging.WARNING, (
                f"still cannot save the identity of agent {AID} to {tmp_root.config_file} "
                f"({ENOSPC}); retry {attempt} in {delay:.1f} s")))
        assert reg_messages(caplog) == expected
        assert read_state(tmp_root)["identity_unsaved"] == unsaved_status()
        disk.full = False
        clock.now = runner.unsaved_next
        runner.retry_identity_save(cfg)
    assert reg_messages(caplog)[len(expected):] == [(logging.INFO, (
        f"identity of agent {AID} saved to {tmp_root.config_file} (kept in memory since "
        f"{NOW})"))]
    assert runner.unsaved is None and runner.unsaved_replaces is None
    on_disk = c.read_config(tmp_root.config_file)
    assert (on_disk["agent_id"], on_disk["token"], on_disk["refresh_token"]) == (
        AID, "JWT-SECRET-A", "REFRESH-SECRET-A")
    state = read_state(tmp_root)
    assert (state["identity_unsaved"], state["last_error"]) == (None, None)
    calls = disk.calls
    runner.retry_identity_save(cfg, force=True)  # saved: nothing more to do
    assert disk.calls == calls
    assert_no_secret(tmp_root, caplog)


@pytest.mark.parametrize(("error", "reason"), [
    (OSError(28, ENOSPC), ENOSPC),
    (OSError("plain words"), "plain words"),
    (c.ConfigError("refusing to write through a symlink: config.json"),
     "refusing to write through a symlink: config.json"),
])
def test_save_failure_reason_in_log_and_status(runner, tmp_root, disk, caplog, *, error,
                                               reason):
    disk.error = error
    runner.keep_unsaved(identity(), "first")
    with caplog.at_level(logging.INFO):
        runner.retry_identity_save(runner.unsaved, force=True)
    assert reg_messages(caplog) == [(logging.WARNING, (
        f"still cannot save the identity of agent {AID} to {tmp_root.config_file} "
        f"({reason}); retry 2 in 0.6 s"))]
    state = read_state(tmp_root)
    assert state["identity_unsaved"] == unsaved_status(reason)
    assert state["last_error"] == (f"{NOW} registration: identity of agent {AID} not saved to "
                                   f"{tmp_root.config_file}: {reason}")


def test_retry_before_it_is_due_waits_unless_forced(runner, tmp_root, disk):
    disk.full = False
    cfg = identity()
    runner.keep_unsaved(cfg, ENOSPC)
    runner.retry_identity_save(cfg)
    assert disk.calls == 0 and runner.unsaved is cfg
    runner.retry_identity_save(cfg, force=True)
    assert disk.calls == 1 and runner.unsaved is None
    assert c.read_config(tmp_root.config_file)["agent_id"] == AID


def test_nothing_unsaved_saves_nothing(runner, disk):
    runner.retry_identity_save(identity(), force=True)
    assert disk.calls == 0


def test_rotated_tokens_replace_only_the_identity_they_renewed(runner, tmp_root, caplog):
    c.save_config(tmp_root, identity(refresh_token="REFRESH-SECRET-OLD"))
    runner.keep_unsaved(identity(), ENOSPC, "rotation", (AID, "REFRESH-SECRET-OLD"))
    runner.retry_identity_save(runner.unsaved, force=True)
    assert c.read_config(tmp_root.config_file)["refresh_token"] == "REFRESH-SECRET-A"
    assert runner.unsaved is None


def test_rotated_tokens_never_overwrite_another_identity(runner, tmp_root, caplog):
    other = identity(agent_id=OTHER, token="J-OTHER", refresh_token="R-OTHER")
    c.save_config(tmp_root, other)
    before = tmp_root.config_file.read_bytes()
    runner.keep_unsaved(identity(), ENOSPC, "rotation", (AID, "REFRESH-SECRET-OLD"))
    with caplog.at_level(logging.INFO):
        runner.retry_identity_save(runner.unsaved, force=True)
    assert tmp_root.config_file.read_bytes() == before
    assert reg_messages(caplog) == [(logging.WARNING, (
        f"not saving the tokens of agent {AID}: {tmp_root.config_file} now holds another "
        f"identity (agent {OTHER}) (changed by `config apply` or a re-enrollment); they stay "
        "in memory for this process only"))]
    assert runner.unsaved is None and runner.unsaved_replaces is None
    state = read_state(tmp_root)
    assert (state["identity_unsaved"], state["last_error"]) == (None, None)
    assert_no_secret(tmp_root, caplog)


# --- the shield: a stop during the save ---------------------------------------------------
def test_a_stop_during_a_save_waits_for_the_write(runner, tmp_root, disk):
    disk.full = False
    runner.keep_unsaved(identity(), ENOSPC)
    # SIGTERM arrives in the middle of the write: deferred to its end, then raised
    disk.before_write = lambda: runner.term._handle(signal.SIGTERM, None)
    with pytest.raises(Terminated):
        runner.retry_identity_save(runner.unsaved, force=True)
    assert c.read_config(tmp_root.config_file)["agent_id"] == AID


def test_the_last_save_at_stop_is_not_cut_short_by_the_stop(runner, tmp_root, disk, caplog):
    disk.full = False
    runner.keep_unsaved(identity(), ENOSPC)
    runner.term.request_stop()
    with caplog.at_level(logging.INFO):
        runner._stop_with_unsaved_identity()  # would raise Terminated if still shielded
    assert c.read_config(tmp_root.config_file)["agent_id"] == AID
    assert read_state(tmp_root)["identity_unsaved"] is None


# --- _stop_with_unsaved_identity --------------------------------------------------------
def test_stop_with_an_unsaved_registration_says_it_is_lost(runner, tmp_root, disk, caplog):
    runner.keep_unsaved(identity(), ENOSPC)
    with caplog.at_level(logging.INFO):
        runner._stop_with_unsaved_identity()
    assert disk.calls == 1, "one last try at stop, even before the retry is due"
    assert reg_messages(caplog) == [
        (logging.WARNING, f"still cannot save the identity of agent {AID} to "
                          f"{tmp_root.config_file} ({ENOSPC}); retry 2 in 0.6 s"),
        (logging.ERROR, (
            f"stopping with the identity of agent {AID} still unsaved: it is lost. The next "
            f"start stops (exit 78) instead of registering again; delete agent {AID} on the "
            f"server, free space on {tmp_root.config_dir}, then remove "
            f"{r.attempt_path(tmp_root)}"))]
    assert_no_secret(tmp_root, caplog)


def test_stop_with_unsaved_rotated_tokens_names_the_grace_replay(runner, tmp_root, disk,
                                                                caplog):
    disk.real(tmp_root, identity(refresh_token="REFRESH-SECRET-OLD"))
    runner.keep_unsaved(identity(), ENOSPC, "rotation", (AID, "REFRESH-SECRET-OLD"))
    with caplog.at_level(logging.INFO):
        runner._stop_with_unsaved_identity()
    assert disk.calls == 1
    assert reg_messages(caplog)[1:] == [(logging.ERROR, (
        f"stopping with the rotated refresh token of agent {AID} unsaved: the next start "
        "renews with the previous one, which the server accepts once (grace replay); free "
        f"space on {tmp_root.config_dir} before that"))]


@pytest.mark.parametrize("kind", ["registration", "rotation"])
def test_stop_after_the_space_came_back_saves_and_says_so(runner, tmp_root, disk, caplog, kind):
    disk.full = False
    replaces = None
    if kind == "rotation":
        disk.real(tmp_root, identity(refresh_token="REFRESH-SECRET-OLD"))
        replaces = (AID, "REFRESH-SECRET-OLD")
    runner.keep_unsaved(identity(), ENOSPC, kind, replaces)
    with caplog.at_level(logging.INFO):
        runner._stop_with_unsaved_identity()
    assert reg_messages(caplog) == [(logging.INFO, (
        f"identity of agent {AID} saved to {tmp_root.config_file} (kept in memory since "
        f"{NOW})"))]
    on_disk = c.read_config(tmp_root.config_file)
    assert (on_disk["agent_id"], on_disk["refresh_token"]) == (AID, "REFRESH-SECRET-A")
    assert runner.unsaved is None


def test_stop_with_nothing_unsaved_does_nothing(runner, disk, caplog):
    with caplog.at_level(logging.INFO):
        runner._stop_with_unsaved_identity()
    assert disk.calls == 0 and reg_messages(caplog) == []


@pytest.mark.parametrize("code", [EX_NOPERM, EX_CONFIG, EX_OK])
def test_any_exit_with_an_unsaved_identity_tries_once_more_and_says_so(
        runner, disk, caplog, monkeypatch, code):
    def ends(self):
        self.keep_unsaved(identity(), ENOSPC)
        return code

    monkeypatch.setattr(Runner, "_run", ends)
    with caplog.at_level(logging.INFO):
        assert runner.run() == code
    assert disk.calls == 1
    assert reg_messages(caplog)[-1][1].startswith(
        f"stopping with the identity of agent {AID} still unsaved: it is lost.")


# --- _record_exit -----------------------------------------------------------------------
def test_record_exit_with_and_without_an_error(runner, tmp_root):
    runner._record_exit("exit 77: token rejected", "the token was refused")
    state = read_state(tmp_root)
    assert state["last_exit_reason"] == f"{NOW} exit 77: token rejected"
    assert state["last_error"] == f"{NOW} the token was refused"
    runner.status.update(last_error="earlier")
    runner._record_exit("stopped by SIGTERM")
    state = read_state(tmp_root)
    assert (state["last_exit_reason"], state["last_error"]) == (
        f"{NOW} stopped by SIGTERM", "earlier")


def test_record_exit_without_the_lock_writes_nothing(tmp_root, clock):
    tmp_root.state_dir.mkdir(parents=True)
    run = Runner(tmp_root, LOG, Terminator(), environ=ENV)
    run.status = StatusFile(tmp_root, LOG)
    run._record_exit("stopped by SIGTERM", "x")
    assert not tmp_root.status_file.exists()
    run.status = None
    run._record_exit("stopped by SIGTERM")  # no status yet: nothing to do, no error


# --- _drop_stale_attempt ----------------------------------------------------------------
def write_marker(paths):
    r.write_attempt(paths, r.attempt_record("http://s", "REG-TOKEN-SECRET", "h", 7,
                                            "2026-01-01T00:00:00Z"))


def test_stale_attempt_beside_a_saved_identity_is_removed(runner, tmp_root, caplog):
    write_marker(tmp_root)
    with caplog.at_level(logging.INFO):
        runner._drop_stale_attempt()
    assert r.read_attempt(tmp_root) is None
    assert caplog.messages == [
        "the registration started at 2026-01-01T00:00:00Z finished (the identity is saved); "
        "removed its record"]


@pytest.mark.parametrize(("error", "shown"), [
    (OSError(13, "Permission denied"), "Permission denied"),
    (OSError("planted symlink"), "planted symlink"),
])
def test_stale_attempt_that_cannot_be_removed_is_a_warning(runner, tmp_root, caplog, *,
                                                           monkeypatch, error, shown):
    write_marker(tmp_root)

    def refuse(paths):
        assert paths is tmp_root
        raise error

    monkeypatch.setattr(r, "clear_attempt", refuse)
    with caplog.at_level(logging.INFO):
        runner._drop_stale_attempt()
    assert [(rec.levelno, rec.getMessage()) for rec in caplog.records] == [(logging.WARNING, (
        f"cannot remove the finished registration record {r.attempt_path(tmp_root)}: "
        f"{shown}"))]
    assert r.read_attempt(tmp_root) is not None


def test_no_attempt_nothing_to_drop(runner, caplog, monkeypatch):
    monkeypatch.setattr(r, "clear_attempt", lambda paths: pytest.fail("nothing to clear"))
    with caplog.at_level(logging.INFO):
        runner._drop_stale_attempt()
    assert caplog.messages == []


# --- _acquire -----------------------------------------------------------------------------
def test_acquire_refused_names_why(tmp_root):
    tmp_root.state_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_root.state_dir.write_text("")
    probe = InstanceLock(tmp_root.state_dir)
    probe.acquire()
    assert probe.refused
    run = Runner(tmp_root, LOG, Terminator(), environ=ENV)
    with pytest.raises(LockRefused) as err:
        run._acquire()
    assert str(err.value) == probe.refused


# --- the whole start: registered, not saved, checked in from memory ----------------------
def start(tmp_root, fake_server, clock, stop_after):
    fake_server.on("POST", REG, (200, {"agent_id": AID, "token": "JWT-SECRET-A",
                                       "refresh_token": "REFRESH-SECRET-A"}))
    fake_server.on("GET", CMDS, (200, {"commands": []}))
    tmp_root.config_dir.mkdir(parents=True)
    tmp_root.state_dir.mkdir(parents=True)
    tmp_root.config_file.write_text(json.dumps({
        "version": "6", "server_url": fake_server.url, "registration_token": "REG-TOKEN-SECRET",
        "check_in_interval": 60}))
    term = StopAfter(clock, stop_after)
    return Runner(tmp_root, LOG, term, rand=lambda: 0.3, environ=ENV), term


def bearers(fake_server):
    return [{k.lower(): v for k, v in s.headers.items()}["authorization"]
            for s in fake_server.seen("GET", CMDS)]


def test_registered_but_unsaved_checks_in_from_memory_and_says_it_is_lost(
        tmp_root, fake_server, clock, disk, caplog):
    run, term = start(tmp_root, fake_server, clock, stop_after=1)
    during = []

    def checkin(_seen):
        during.append(read_state(tmp_root))
        return 200, {"commands": []}

    fake_server.on("GET", CMDS, checkin)
    written = tmp_root.config_file.read_bytes()
    with caplog.at_level(logging.INFO):
        assert run.run() == EX_OK
    assert len(fake_server.seen("POST", REG)) == 1
    assert bearers(fake_server) == ["Bearer JWT-SECRET-A"]
    assert tmp_root.config_file.read_bytes() == written
    unsaved = str(r.IdentityUnsaved({"agent_id": AID}, tmp_root, OSError(28, ENOSPC)))
    msgs = reg_messages(caplog)
    assert msgs[0] == (logging.ERROR, (
        f"{unsaved}; checking in with the identity in memory and retrying the save before "
        "check-ins, backing off up to 6 s between tries"))
    assert msgs[-1][1].startswith(f"stopping with the identity of agent {AID} still unsaved")
    # what status.json said while the agent checked in with the identity in memory
    assert [d["identity_unsaved"] for d in during] == [unsaved_status()]
    assert during[0]["last_error"] == (
        f"{NOW} registration: identity of agent {AID} not saved to {tmp_root.config_file}: "
        f"{ENOSPC}")
    # tried: at registration, then once more at stop (the first retry was not due yet)
    assert disk.calls == 2
    state = read_state(tmp_root)
    assert state["identity_unsaved"] == unsaved_status()
    assert state["last_exit_reason"] == f"{NOW} stopped by SIGTERM"
    marker = r.read_attempt(tmp_root)
    assert marker["agent_id"] == AID
    assert marker["token_sha256"] == r.token_fingerprint("REG-TOKEN-SECRET")
    assert_no_secret(tmp_root, caplog)


def test_the_identity_in_memory_is_the_one_saved_once_there_is_room(
        tmp_root, fake_server, clock, disk, caplog, *, monkeypatch):
    run, term = start(tmp_root, fake_server, clock, stop_after=2)
    real = disk.save

    def room_after_first(paths, cfg):
        if disk.calls >= 1:
            disk.full = False
        real(paths, cfg)

    monkeypatch.setattr(c, "save_config", room_after_first)
    with caplog.at_level(logging.INFO):
        assert run.run() == EX_OK
    # check-in 1 before the retry is due; the sleep moves the clock; check-in 2 saves first
    assert bearers(fake_server) == ["Bearer JWT-SECRET-A"] * 2
    assert term.slept == [pytest.approx(57.6)] * 2
    assert disk.calls == 2
    on_disk = c.read_config(tmp_root.config_file)
    assert {k: on_disk.get(k) for k in ("agent_id", "token", "refresh_token",
                                        "registration_token")} == {
        "agent_id": AID, "token": "JWT-SECRET-A", "refresh_token": "REFRESH-SECRET-A",
        "registration_token": None}
    assert r.read_attempt(tmp_root) is None
    assert reg_messages(caplog)[-1] == (logging.INFO, (
        f"identity of agent {AID} saved to {tmp_root.config_file} (kept in memory since "
        f"{NOW})"))
    state = read_state(tmp_root)
    assert state["identity_unsaved"] is None
    assert state["last_exit_reason"] == f"{NOW} stopped by SIGTERM"
    assert_no_secret(tmp_root, caplog)
