"""The real agent against the stand-in: register, check in, renew, report updates, stop.

Both run as separate processes on 127.0.0.1 and share nothing but the HTTP contract.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from .conftest import Client
from .process import AGENT_SRC, ServerProcess, cli, env

pytestmark = pytest.mark.slow

DEADLINE_S = 45  # generous for a loaded 2-core CI box; a healthy run takes a few seconds


def _seconds_until_token_expires(saved: dict) -> float:
    """Seconds until the saved access token has expired, so unregister must renew first."""
    payload = saved["token"].split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return claims["exp"] - time.time() + 0.1


def _wait_for(what, probe, deadline, diagnostics):
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting until {what}\n{diagnostics()}")


def test_agent_registers_checks_in_renews_and_reports(tmp_path):
    if not (AGENT_SRC / "redflag_agent" / "cli.py").exists():
        pytest.fail("agent_src/redflag_agent/cli.py is missing: the agent is required here")
    db = tmp_path / "server.db"
    server = ServerProcess(tmp_path, db, "--jwt-ttl", "2", "--check-in-interval", "1")
    admin = Client(server.port)
    token = cli("mint-token", "--db", str(db), "--note", "e2e").stdout.strip()
    assert len(token) == 64

    root = tmp_path / "root"
    config_dir = root / "etc" / "redflag-agent"
    config_dir.mkdir(parents=True, mode=0o750)
    config_file = config_dir / "config.json"
    fd = os.open(config_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(
            {
                "version": "6",
                "server_url": server.url,
                "registration_token": token,
                "check_in_interval": 1,
            },
            handle,
        )

    agent_log = tmp_path / "agent.log"
    agent_env = env()
    agent_env.update(
        {"REDFLAG_ROOT": str(root), "REDFLAG_BACKOFF_BASE": "0.2", "REDFLAG_BACKOFF_CAP": "1"}
    )
    agent_env.pop("REDFLAG_REGISTRATION_TOKEN", None)
    with open(agent_log, "wb") as log_handle:
        agent = subprocess.Popen(
            [sys.executable, "-m", "redflag_agent", "run"],
            stdin=subprocess.DEVNULL,
            stdout=log_handle,
            stderr=subprocess.STDOUT,
            env=agent_env,
        )

    def diagnostics() -> str:
        agents = admin.call("GET", "/admin/agents").body
        return (
            f"agent exit: {agent.poll()}\n--- agent log ---\n"
            f"{agent_log.read_text(errors='replace')}\n--- server log ---\n{server.log()}\n"
            f"--- agents ---\n{json.dumps(agents, indent=1)}"
        )

    deadline = time.monotonic() + DEADLINE_S
    try:
        try:
            [registered] = _wait_for("the agent registered", admin.agents, deadline, diagnostics)
            agent_id = registered["agent_id"]
            queued = admin.call(
                "POST", f"/admin/agents/{agent_id}/commands", {"type": "scan_updates"}
            )
            assert queued.status == 201

            def renewed_and_checked_in():
                [info] = admin.agents()
                return info["renewals"] >= 1 and (info["checkins_since_renewal"] or 0) >= 1

            _wait_for(
                "the agent renewed its 2 s token and checked in again",
                renewed_and_checked_in,
                deadline,
                diagnostics,
            )
            reports = _wait_for(
                "an update report was stored",
                lambda: admin.call("GET", f"/admin/agents/{agent_id}/updates").body["reports"],
                deadline,
                diagnostics,
            )
            assert reports[0]["command_id"] == queued.body["id"]
            for update in reports[0]["updates"]:
                assert update["package_type"] in ("apt", "dnf")
            [command] = admin.call("GET", f"/admin/agents/{agent_id}/commands").body["commands"]
            assert command["status"] == "completed"
        finally:
            if agent.poll() is None:
                agent.send_signal(signal.SIGTERM)
            try:
                code = agent.wait(20)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
                code = "killed after SIGTERM was ignored"
        assert code == 0, diagnostics()

        [info] = admin.agents()
        assert info["status"] == "active"
        assert info["agent_version"]
        saved = json.loads(config_file.read_text())
        assert saved["agent_id"] == agent_id
        assert "registration_token" not in saved

        # The agent's unregister (its 2 s token has expired by now: renew, then DELETE).
        time.sleep(max(0.0, _seconds_until_token_expires(saved)))
        unregister = subprocess.run(
            [sys.executable, "-m", "redflag_agent", "unregister", "--json"],
            capture_output=True,
            text=True,
            env=agent_env,
            timeout=60,
            check=False,
        )
        assert unregister.returncode == 0, unregister.stdout + unregister.stderr
        [after] = admin.agents()
        assert after["status"] == "deregistered"
        assert after["renewals"] == info["renewals"] + 1
    finally:
        server_code = server.stop()
    assert server_code == 0
    # None of the secrets that crossed the wire may show in the server's log.
    log = server.log()
    for secret in (token, saved["refresh_token"], saved["token"]):
        assert secret not in log


# --- machine binding and refresh-token rotation (CONTRACT 4b), per server generation -------
GRACE_FAULT = {"REDFLAG_FAULT_INJECT": "renew:answered"}


class Host:
    """One agent root with its own /etc/machine-id, run as `python -m redflag_agent`."""

    def __init__(self, base, name: str, machine: bytes) -> None:
        self.root = base / name
        (self.root / "etc").mkdir(parents=True)
        (self.root / "etc" / "machine-id").write_bytes(machine + b"\n")
        self.config = self.root / "etc" / "redflag-agent" / "config.json"
        self.log = base / f"{name}.log"

    def env(self, **extra: str) -> dict:
        out = env()
        out.update({"REDFLAG_ROOT": str(self.root), "REDFLAG_BACKOFF_BASE": "0.2",
                    "REDFLAG_BACKOFF_CAP": "1", **extra})
        out.pop("REDFLAG_REGISTRATION_TOKEN", None)
        return out

    def write(self, cfg: dict) -> None:
        self.config.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        self.config.write_text(json.dumps(cfg))
        os.chmod(self.config, 0o600)

    def read(self) -> dict:
        return json.loads(self.config.read_text())

    def run(self, *args: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "redflag_agent", *args],
                              capture_output=True, text=True, env=self.env(**extra),
                              timeout=DEADLINE_S, stdin=subprocess.DEVNULL, check=False)

    def start(self, **extra: str) -> subprocess.Popen:
        handle = open(self.log, "ab")  # noqa: SIM115 - the child holds it; closed at stop
        proc = subprocess.Popen([sys.executable, "-m", "redflag_agent", "run"],
                                stdin=subprocess.DEVNULL, stdout=handle,
                                stderr=subprocess.STDOUT, env=self.env(**extra))
        handle.close()
        return proc

    def status(self) -> dict:
        res = self.run("status", "--json")
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)


def _stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return -9


def _server(tmp_path, generation: str, *extra: str):
    return ServerProcess(tmp_path, tmp_path / "server.db", "--generation", generation,
                         "--rate-limit", "off", "--jwt-ttl", "1", "--check-in-interval", "1",
                         *extra)


def _mint(tmp_path) -> str:
    return cli("mint-token", "--db", str(tmp_path / "server.db")).stdout.strip()


def _enroll(host: Host, server, token: str) -> dict:
    """Register with `run`, wait for the first check-in, stop: -> the agent on the server."""
    admin = Client(server.port)
    host.write({"version": "6", "server_url": server.url, "registration_token": token,
                "check_in_interval": 1})
    proc = host.start()
    try:
        deadline = time.monotonic() + DEADLINE_S
        info = _wait_for("the host registered and checked in", lambda: [
            a for a in admin.agents() if a["agent_id"] == host.read().get("agent_id")
            and a["checkins"] >= 1] if host.config.exists() else None, deadline,
            lambda: host.log.read_text() + server.log())
    finally:
        assert _stop(proc) == 0, host.log.read_text()
    return info[0]


def _agent(server, agent_id: str) -> dict:
    return next(a for a in Client(server.port).agents() if a["agent_id"] == agent_id)


@pytest.mark.parametrize("generation", ["0.1.18", "0.1.23"])
def test_servers_without_rotation_keep_the_refresh_token(tmp_path, generation):
    server = _server(tmp_path, generation)
    try:
        host = Host(tmp_path, "host", b"11111111111111111111111111111111")
        info = _enroll(host, server, _mint(tmp_path))
        first = host.read()
        assert first["machine_id"] == host.status()["machine_id"]
        bound = first["machine_id"] if generation != "0.1.18" else None
        assert info["machine_id"] == bound
        proc = host.start()
        try:
            _wait_for("a renewal and a check-in after it",
                      lambda: _agent(server, info["agent_id"])["renewals"] >= 1
                      and (_agent(server, info["agent_id"])["checkins_since_renewal"] or 0) >= 1,
                      time.monotonic() + DEADLINE_S, host.log.read_text)
        finally:
            assert _stop(proc) == 0, host.log.read_text()
        after = host.read()
        assert after["refresh_token"] == first["refresh_token"]
        assert after["token"] != first["token"]
        assert _agent(server, info["agent_id"])["status"] == "active"
        st = host.status()
        assert st["identity_on_this_machine"] is True
        assert st["identity_machine_id"] == st["machine_id"]
    finally:
        assert server.stop() == 0


def test_rotation_across_restarts_kill_before_save_and_reuse(tmp_path):
    server = _server(tmp_path, "0.2")
    try:
        host = Host(tmp_path, "host", b"22222222222222222222222222222222")
        info = _enroll(host, server, _mint(tmp_path))
        agent_id = info["agent_id"]
        stale = host.config.read_bytes()  # R0: the refresh token handed out at registration

        def diagnostics() -> str:
            return host.log.read_text() + "\n--- server ---\n" + server.log()

        # two runs, each renewing (rotating) at least once: every new token is saved
        seen = {json.loads(stale)["refresh_token"]}
        for run_no in (1, 2):
            proc = host.start()
            try:
                _wait_for(f"a rotation in run {run_no}",
                          lambda: host.read()["refresh_token"] not in seen,
                          time.monotonic() + DEADLINE_S, diagnostics)
                _wait_for(f"a check-in after the rotation in run {run_no}",
                          lambda: (_agent(server, agent_id)["checkins_since_renewal"] or 0) >= 1,
                          time.monotonic() + DEADLINE_S, diagnostics)
            finally:
                assert _stop(proc) == 0, diagnostics()
            seen.add(host.read()["refresh_token"])
        assert _agent(server, agent_id)["grace_replays"] == 0
        assert _agent(server, agent_id)["status"] == "active"

        # kill -9 between the server's rotation and the save: the next start replays once
        before = host.config.read_bytes()
        time.sleep(1.1)  # the access token has lapsed: the first check-in renews
        killed = host.run("run", **GRACE_FAULT)
        assert killed.returncode == 137, killed.stderr
        assert host.config.read_bytes() == before, "nothing saved before the kill"
        proc = host.start()
        try:
            _wait_for("the restart renews with the previous refresh token (grace) and checks in",
                      lambda: _agent(server, agent_id)["grace_replays"] == 1
                      and (_agent(server, agent_id)["checkins_since_renewal"] or 0) >= 1,
                      time.monotonic() + DEADLINE_S, diagnostics)
        finally:
            assert _stop(proc) == 0, diagnostics()
        assert host.read()["refresh_token"] not in seen
        assert _agent(server, agent_id)["status"] == "active"

        # an old copy of the config (R0, long exchanged) presented again: reuse, exit 77
        host.config.write_bytes(stale)
        time.sleep(1.1)
        reused = host.run("run")
        assert reused.returncode == 77, reused.stderr
        assert "reuse detected" in reused.stderr and "already exchanged" in reused.stderr
        assert "force_reregister=true" in reused.stderr
        assert json.loads(stale)["refresh_token"] not in reused.stderr
        assert _agent(server, agent_id)["status"] == "revoked"
    finally:
        assert server.stop() == 0
    for secret in seen:
        assert secret not in server.log()


def test_clone_sharing_a_machine_id_is_refused_409_and_named(tmp_path):
    server = _server(tmp_path, "0.2")
    try:
        golden = Host(tmp_path, "golden", b"33333333333333333333333333333333")
        info = _enroll(golden, server, _mint(tmp_path))
        clone = Host(tmp_path, "clone", b"33333333333333333333333333333333")
        token = _mint(tmp_path)
        clone.write({"version": "6", "server_url": server.url, "registration_token": token})
        res = clone.run("run")
        assert res.returncode == 78, res.stderr
        assert info["agent_id"] in res.stderr and info["hostname"] in res.stderr
        assert "/etc/machine-id" in res.stderr and "delete agent" in res.stderr
        assert token not in res.stderr
        assert len(Client(server.port).agents()) == 1
        assert clone.read()["registration_token"] == token  # the operator's next try
        again = clone.run("run")
        assert again.returncode == 78 and len(Client(server.port).agents()) == 1
    finally:
        assert server.stop() == 0


def test_config_copied_to_another_machine(tmp_path):
    server = _server(tmp_path, "0.2")
    try:
        original = Host(tmp_path, "original", b"44444444444444444444444444444444")
        info = _enroll(original, server, _mint(tmp_path))
        copied = original.config.read_bytes()
        checkins = _agent(server, info["agent_id"])["checkins"]

        # the copy records the original's machine ID: stop before any call (78)
        other = Host(tmp_path, "other", b"55555555555555555555555555555555")
        other.write(json.loads(copied))
        res = other.run("run")
        assert res.returncode == 78, res.stderr
        assert "registered on another machine" in res.stderr
        assert _agent(server, info["agent_id"])["checkins"] == checkins
        st = other.status()
        assert st["identity_on_this_machine"] is False
        assert st["identity_machine_id"] == json.loads(copied)["machine_id"] != st["machine_id"]

        # without the recorded ID (an older agent's copy), the server says mismatch (77)
        older = Host(tmp_path, "older", b"66666666666666666666666666666666")
        older.write({k: v for k, v in json.loads(copied).items() if k != "machine_id"})
        time.sleep(1.1)
        res = older.run("run")
        assert res.returncode == 77, res.stderr
        assert "machine ID mismatch" in res.stderr and "rebind" in res.stderr
        assert "machine_id" not in older.read(), "a refused machine ID is never recorded"

        # with a registration token the copy is set aside and the host enrolls as itself
        token = _mint(tmp_path)
        other.write(dict(json.loads(copied), registration_token=token))
        proc = other.start()
        try:
            _wait_for("the copy enrolled as a new agent and checked in",
                      lambda: len(Client(server.port).agents()) == 2
                      and Client(server.port).agents()[1]["checkins"] >= 1,
                      time.monotonic() + DEADLINE_S, other.log.read_text)
        finally:
            assert _stop(proc) == 0, other.log.read_text()
        new = other.read()
        assert new["agent_id"] != info["agent_id"]
        assert new["machine_id"] == other.status()["machine_id"]
        [backup] = (other.root / "var/lib/redflag-agent/identity_backups").iterdir()
        assert json.loads(backup.read_text())["agent_id"] == info["agent_id"]
        assert os.stat(backup).st_mode & 0o777 == 0o600
        assert _agent(server, info["agent_id"])["checkins"] == checkins
        assert _agent(server, info["agent_id"])["status"] == "active"
    finally:
        assert server.stop() == 0


def test_agent_below_the_servers_minimum_version_stops_426(tmp_path):
    server = _server(tmp_path, "0.2", "--min-agent-version", "9.9")
    try:
        host = Host(tmp_path, "host", b"77777777777777777777777777777777")
        host.write({"version": "6", "server_url": server.url,
                    "registration_token": _mint(tmp_path)})
        t0 = time.monotonic()
        res = host.run("run")
        assert res.returncode == 78, res.stderr
        assert time.monotonic() - t0 < DEADLINE_S
        assert "9.9 or newer" in res.stderr and "upgrade redflag-agent" in res.stderr
        [info] = Client(server.port).agents()
        assert info["checkins"] == 0
        assert "exit 78" in host.status()["last_exit_reason"]
    finally:
        assert server.stop() == 0
