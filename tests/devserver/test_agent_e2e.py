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
