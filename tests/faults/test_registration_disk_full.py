"""An accepted registration is never lost and never repeated (issue 12), for real: the config
directory is a tiny tmpfs filled to the last page, the server is the stand-in, the agent the
built zipapp. Before the fix three starts left three agents on the server and spent three
seats (save_config raised ENOSPC after the server accepted, exit 1, restart, register...)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from .conftest import stop, wait_until, write_config

FAST = {"REDFLAG_BACKOFF_BASE": "0.05", "REDFLAG_BACKOFF_CAP": "0.3"}
MARKER = "var/lib/redflag-agent/registration_attempt.json"


@pytest.fixture
def small_config_dir(agent):
    """REDFLAG_ROOT/etc/redflag-agent on its own 256 KiB tmpfs."""
    mnt = agent.root / "etc/redflag-agent"
    mnt.mkdir(parents=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0750", "tmpfs",
                          str(mnt)], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs at {mnt} ({res.stderr.strip()}): this case needs "
                    "root and mount(8); run the suite as root (CI does)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def fill(mnt: Path) -> Path:
    """Take every free page of the filesystem."""
    filler = mnt / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (65536, 4096, 1):
            chunk = b"\0" * size
            try:
                while True:
                    os.write(fd, chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return filler


def status_json(agent) -> dict:
    path = agent.root / "var/lib/redflag-agent/status.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def last_error(agent) -> str:
    return status_json(agent).get("last_error") or ""


def saved_identity(agent) -> dict:
    cfg = json.loads((agent.root / "etc/redflag-agent/config.json").read_text())
    return {k: cfg.get(k) for k in ("agent_id", "refresh_token", "registration_token")}


class HoldingProxy:
    """127.0.0.1 TCP relay to the stand-in server that can hold back the answer to a
    registration: the server has registered the agent, the agent has not heard yet."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.hold = threading.Event()
        self.release = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(conn,), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def _relay(self, conn: socket.socket) -> None:
        with conn, socket.create_connection(("127.0.0.1", self.upstream_port)) as up:
            first = conn.recv(65536)
            up.sendall(first)
            threading.Thread(target=self._pump, args=(conn, up), daemon=True).start()
            answer = up.recv(65536)
            if first.startswith(b"POST /api/v1/agents/register") and self.hold.is_set():
                self.release.wait(30)
            if answer:
                conn.sendall(answer)
                self._pump(up, conn)

    def close(self) -> None:
        self.release.set()
        self.sock.close()


def test_full_config_dir_before_registering(agent, devserver, small_config_dir, case):
    row = case("config directory full when the agent registers",
               "config dir on a 256 KiB tmpfs filled to the last page; stand-in server, token "
               "with 5 seats (a repeated registration would succeed); `run` started three "
               "times (each stopped once it reported the problem), `register` once; then a "
               "fourth start during which the filler is removed; then two more starts",
               "no exit 1; no request reaches the server while the disk is full (0 agents); "
               "status.json last_error names the directory and 'No space left on device'; "
               "`register` exits 75 saying nothing was sent; after freeing, the same start "
               "registers, saves the identity and checks in; later starts check in as the "
               "same agent: exactly 1 agent on the server")
    devserver.start()
    token = devserver.mint(seats=5)
    write_config(agent, {"version": "6", "server_url": devserver.url,
                         "registration_token": token, "check_in_interval": 1})
    filler = fill(small_config_dir)
    for _ in range(3):
        # this start's own report, not the last one's
        (agent.root / "var/lib/redflag-agent/status.json").unlink(missing_ok=True)
        proc = agent.start("run", **FAST)
        try:
            wait_until(lambda: "No space left on device" in last_error(agent),
                       what="the disk problem in status.json")
            assert proc.poll() is None, "the agent exited on a full disk"
        finally:
            code, _, err = stop(proc)
        assert code == 0, err
        assert str(small_config_dir) in err and "nothing was sent to the server" in err
        assert devserver.agents() == []
        assert not (agent.root / MARKER).exists()
    once = agent.run("register")
    assert once.returncode == 75, once.stderr
    assert "nothing was sent to the server" in once.stderr and token not in once.stderr
    assert devserver.agents() == []

    (agent.root / "var/lib/redflag-agent/status.json").unlink()
    proc = agent.start("run", **FAST)
    try:
        wait_until(lambda: "No space left on device" in last_error(agent),
                   what="the disk problem in status.json")
        filler.unlink()
        freed = time.monotonic()
        wait_until(lambda: saved_identity(agent)["refresh_token"], what="the saved identity")
        took = time.monotonic() - freed
        wait_until(lambda: devserver.agents() and devserver.agents()[0]["checkins"] >= 1,
                   what="the first check-in")
    finally:
        code, _, err = stop(proc)
    assert code == 0, err
    ident = saved_identity(agent)
    assert ident["registration_token"] is None
    agents = devserver.agents()
    assert [a["agent_id"] for a in agents] == [ident["agent_id"]]
    for _ in range(2):
        before = devserver.agents()[0]["checkins"]
        proc = agent.start("run", **FAST)
        try:
            wait_until(lambda b=before: devserver.agents()[0]["checkins"] > b,
                       what="a check-in as the same agent")
        finally:
            code, _, err = stop(proc)
        assert code == 0 and "registered with" not in err, err
    assert [a["agent_id"] for a in devserver.agents()] == [ident["agent_id"]]
    st = agent.status()
    assert st["registered"] and st["registration_attempt"] is None
    row.note(f"0 agents after 3 starts on a full disk; registered and saved "
             f"{took:.1f} s after space was freed, in the same start; 1 agent after 6 starts")


def _register_into_a_full_disk(agent, devserver, small_config_dir):
    """Start `run`; the server registers it; the disk fills before the answer arrives."""
    devserver.start()
    proxy = HoldingProxy(devserver.port)
    proxy.hold.set()
    token = devserver.mint(seats=5)
    write_config(agent, {"version": "6", "server_url": proxy.url,
                         "registration_token": token, "check_in_interval": 1})
    proc = agent.start("run", **FAST)
    wait_until(devserver.agents, what="the server's registration")
    filler = fill(small_config_dir)
    proxy.release.set()
    wait_until(lambda: (status_json(agent).get("identity_unsaved") or {}).get("agent_id"),
               what="identity_unsaved in status.json")
    return proc, proxy, filler, token


def test_full_disk_after_the_server_accepted_then_freed(agent, devserver, small_config_dir,
                                                        case):
    row = case("config directory fills between the server's answer and the save",
               "config dir on a 256 KiB tmpfs; a 127.0.0.1 relay holds back the server's "
               "answer to the registration until the test has filled the tmpfs; then the "
               "answer goes through; later the filler is removed while the agent runs; then "
               "the agent is restarted",
               "the agent keeps running and checks in with the identity in memory; `status "
               "--json` shows identity_unsaved (agent_id, 'No space left on device') and the "
               "registration_attempt; once space is freed the same start saves the identity "
               "(no registration token left), clears both; the restart checks in as the same "
               "agent: 1 agent on the server")
    proc, proxy, filler, token = _register_into_a_full_disk(agent, devserver, small_config_dir)
    try:
        agent_id = devserver.agents()[0]["agent_id"]
        wait_until(lambda: devserver.agents()[0]["checkins"] >= 2,
                   what="check-ins with the identity in memory")
        st = agent.status()
        assert st["registered"] is False
        assert st["identity_unsaved"]["agent_id"] == agent_id
        assert "No space left on device" in st["identity_unsaved"]["error"]
        assert st["registration_attempt"]["agent_id"] == agent_id
        assert saved_identity(agent)["agent_id"] is None
        filler.unlink()
        freed = time.monotonic()
        wait_until(lambda: saved_identity(agent)["agent_id"] == agent_id,
                   what="the identity saved in the same start")
        took = time.monotonic() - freed
        wait_until(lambda: agent.status()["identity_unsaved"] is None, what="status cleared")
        assert proc.poll() is None
    finally:
        code, _, err = stop(proc)
    try:
        assert code == 0, err
        assert saved_identity(agent)["registration_token"] is None
        st = agent.status()
        assert st["registered"] and st["agent_id"] == agent_id
        assert st["registration_attempt"] is None
        assert token not in json.dumps(st) + err
        before = devserver.agents()[0]["checkins"]
        proc = agent.start("run", **FAST)
        try:
            wait_until(lambda: devserver.agents()[0]["checkins"] > before, what="a check-in")
        finally:
            code, _, err = stop(proc)
    finally:
        proxy.close()
    assert code == 0 and "registered with" not in err, err
    assert [a["agent_id"] for a in devserver.agents()] == [agent_id]
    row.note(f"identity saved {took:.1f} s after space was freed (backoff cap "
             f"{FAST['REDFLAG_BACKOFF_CAP']} s, check-in interval 1 s)")


def test_full_disk_after_the_server_accepted_then_stopped(agent, devserver, small_config_dir,
                                                         case):
    row = case("identity unsaved and the agent stopped: restarts do not register again",
               "as above, but the agent is stopped (SIGTERM) while the disk is still full, "
               "then started three times in a row (what systemd would do)",
               "the stop exits 0 and logs that the identity is lost; each start exits 78 "
               "(RestartPreventExitStatus) within seconds naming when, which server, the "
               "agent id, how to check and how to clear; 1 agent on the server (before the "
               "fix: one per start); no token in any output")
    proc, proxy, _filler, token = _register_into_a_full_disk(agent, devserver,
                                                             small_config_dir)
    try:
        agent_id = devserver.agents()[0]["agent_id"]
    finally:
        code, _, err = stop(proc)
        proxy.close()
    assert code == 0, err
    assert "still unsaved: it is lost" in err
    took = []
    for _ in range(3):
        t0 = time.monotonic()
        res = agent.run("run", timeout=30, **FAST)
        took.append(time.monotonic() - t0)
        assert res.returncode == 78, res.stderr
        text = res.stderr
        for part in (f"may have registered this host as agent {agent_id}", proxy.url,
                     str(agent.root / MARKER), "delete that agent",
                     "redflag_agent_force_reregister"):
            assert part in text, part
        assert token not in text + res.stdout
    assert [a["agent_id"] for a in devserver.agents()] == [agent_id]
    st = agent.status()
    assert st["registration_attempt"]["agent_id"] == agent_id
    assert "unfinished registration" in st["last_exit_reason"]
    row.note(f"3 starts: exit 78 in {max(took):.2f} s at most; 1 agent on the server")


def test_killed_between_answer_and_save(agent, devserver, case):
    row = case("agent killed between the server's answer and the save",
               "test-only fault point (REDFLAG_FAULT_INJECT=register:answered, inert on a "
               "production root): os._exit(137) right after the register answer, as a kill "
               "-9 would; then `run` twice and `register` once",
               "each later start exits 78 with the message (when, which server, how to check "
               "and clear), sends no registration; 1 agent on the server; `status --json` "
               "shows registration_attempt and registered false; the config is unchanged")
    devserver.start()
    token = devserver.mint(seats=5)
    config = write_config(agent, {"version": "6", "server_url": devserver.url,
                                  "registration_token": token, "check_in_interval": 1})
    before = config.read_bytes()
    killed = agent.run("run", REDFLAG_FAULT_INJECT="register:answered", **FAST)
    assert killed.returncode == 137, killed.stderr
    assert len(devserver.agents()) == 1
    for args in (("run",), ("run",), ("register",)):
        res = agent.run(*args, timeout=30, **FAST)
        assert res.returncode == 78, res.stderr
        assert "never finished" in res.stderr and devserver.url in res.stderr
        assert "may have registered this host" in res.stderr
        assert token not in res.stderr + res.stdout
    assert len(devserver.agents()) == 1
    assert config.read_bytes() == before
    st = agent.status()
    assert st["registered"] is False and st["registration_attempt"]["server_url"] == \
        devserver.url
    assert st["registration_attempt"]["token_sha256"] and token not in json.dumps(st)
    row.note("1 agent after the kill and 3 more starts (exit 78 each)")
