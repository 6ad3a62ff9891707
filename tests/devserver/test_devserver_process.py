"""The real command line: serve, admin commands on the same file, restart, signals, logs."""

from __future__ import annotations

import json
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest

from .conftest import Client
from .process import ServerProcess, cli, env

# These tests encode the 0.1.18 answers (no machine binding); the generations have their own.
OLD_SERVER = ("--generation", "0.1.18")


@pytest.fixture
def db(tmp_path):
    return tmp_path / "state.db"


def _register(client: Client, token: str, hostname: str) -> dict:
    reply = client.register(token, hostname=hostname, metadata={"migrated_from": "0.1.18"})
    assert reply.status == 200, reply.body
    return reply.body


def test_full_cycle_restart_and_no_secrets_in_logs(tmp_path, db):
    server = ServerProcess(tmp_path, db, *OLD_SERVER)
    assert server.pid_file.read_text().strip() == str(server.proc.pid)
    client = Client(server.port)

    minted = cli("mint-token", "--db", str(db), "--seats", "3", "--expires", "10m", "--note", "lab")
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    assert minted.stdout == token + "\n"
    assert len(token) == 64
    assert stat.S_IMODE(db.stat().st_mode) == 0o600

    first = _register(client, token, "web-1")
    queued = cli("queue-command", "--db", str(db), first["agent_id"], "scan_updates")
    assert queued.returncode == 0, queued.stderr
    command_id = queued.stdout.strip()
    checkin = client.call(
        "GET",
        f"/api/v1/agents/{first['agent_id']}/commands",
        {"version": "0.2.0"},
        bearer=first["token"],
    )
    assert [c["id"] for c in checkin.body["commands"]] == [command_id]
    report = client.call(
        "POST",
        f"/api/v1/agents/{first['agent_id']}/updates",
        {
            "command_id": command_id,
            "updates": [
                {"package_type": "apt", "package_name": "curl", "available_version": "8.0"}
            ],
        },
        bearer=first["token"],
    )
    assert report.status == 200
    renewed = client.call(
        "POST",
        "/api/v1/agents/renew",
        {"agent_id": first["agent_id"], "refresh_token": first["refresh_token"]},
    )
    assert renewed.status == 200
    # A wrong token in the revoke path must not reach the log either.
    assert client.call("POST", f"/admin/tokens/{'e' * 64}/revoke").status == 404

    assert server.stop() == 0
    assert not server.port_file.exists()
    assert not server.pid_file.exists()
    log = server.log()
    assert "POST /api/v1/agents/register 200" in log
    assert f"agent={first['agent_id']}" in log
    for secret in (token, first["token"], first["refresh_token"], renewed.body["token"], "e" * 64):
        assert secret not in log
    for part in first["token"].split("."):
        assert part not in log

    # The admin CLI works with the server stopped.
    listed = cli("agents", "--db", str(db), "--json")
    assert listed.returncode == 0, listed.stderr
    [agent] = json.loads(listed.stdout)
    assert set(agent) >= {
        "hostname",
        "agent_id",
        "agent_version",
        "status",
        "last_seen",
        "migrated_from",
        "registered_at",
    }
    assert (agent["hostname"], agent["status"], agent["migrated_from"]) == (
        "web-1",
        "active",
        "0.1.18",
    )
    table = cli("agents", "--db", str(db))
    assert table.stdout.splitlines()[0].split()[:4] == ["HOSTNAME", "AGENT_ID", "VERSION", "STATUS"]
    assert first["agent_id"] in table.stdout
    updates = cli("updates", "--db", str(db), first["agent_id"], "--json")
    [stored] = json.loads(updates.stdout)
    assert stored["updates"][0]["package_name"] == "curl"
    plain = cli("updates", "--db", str(db), first["agent_id"])
    assert plain.stdout.splitlines()[1].split()[2:] == ["apt", "curl", "-", "8.0", "-"]
    [command] = json.loads(cli("commands", "--db", str(db), first["agent_id"], "--json").stdout)
    assert (command["id"], command["status"]) == (command_id, "completed")

    # Restart: agents, the token's seats and the signing secret survive.
    server = ServerProcess(tmp_path, db, *OLD_SERVER)
    client = Client(server.port)
    try:
        again = client.call(
            "GET", f"/api/v1/agents/{first['agent_id']}/commands", bearer=renewed.body["token"]
        )
        assert again.status == 200
        assert again.body == {"commands": []}  # handed out once, before the restart
        _register(client, token, "web-2")
        _register(client, token, "web-3")
        full = client.register(token, hostname="web-4")
        assert full.status == 400
        assert full.body["error"].endswith("all seats used")
        assert [a["hostname"] for a in client.agents()] == ["web-1", "web-2", "web-3"]
    finally:
        assert server.stop(signal.SIGINT) == 0


def test_revoke_token_from_stdin_while_serving(tmp_path, db):
    server = ServerProcess(tmp_path, db, *OLD_SERVER)
    try:
        token = cli("mint-token", "--db", str(db), "--seats", "5").stdout.strip()
        revoked = cli("revoke-token", "--db", str(db), stdin=token + "\n")
        assert revoked.returncode == 0, revoked.stderr
        assert token not in revoked.stdout + revoked.stderr
        reply = Client(server.port).register(token)
        assert reply.status == 400
        assert reply.body["error"].endswith("token revoked")
        tokens = json.loads(cli("tokens", "--db", str(db), "--json").stdout)
        assert [t["status"] for t in tokens] == ["revoked"]
        assert token not in json.dumps(tokens)
    finally:
        assert server.stop() == 0


def test_revoke_by_id_and_unknown(db):
    cli("mint-token", "--db", str(db))
    assert cli("revoke-token", "--db", str(db), "--id", "1").returncode == 0
    unknown = cli("revoke-token", "--db", str(db), "--id", "7")
    assert unknown.returncode == 1
    assert "no such registration token" in unknown.stderr
    empty = cli("revoke-token", "--db", str(db), stdin="")
    assert empty.returncode == 2
    assert "no token on stdin" in empty.stderr


def test_serve_without_subcommand(tmp_path, db):
    port_file = tmp_path / "p"
    """The issue's short form: `python3 -m redflag_devserver --listen ... --db ...`."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "redflag_devserver",
            "--listen",
            "127.0.0.1:0",
            "--db",
            str(db),
            "--port-file",
            str(port_file),
        ],
        stderr=subprocess.PIPE,
        env=env(),
    )
    try:
        deadline = time.monotonic() + 15
        while not port_file.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert Client(int(port_file.read_text())).call("GET", "/health").status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0


def test_port_in_use_and_unwritable_port_file(tmp_path, db):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = cli("serve", "--listen", f"127.0.0.1:{port}", "--db", str(db))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1 port {port}" in result.stderr
    missing = tmp_path / "no-such-dir" / "port"
    result = cli("serve", "--listen", "127.0.0.1:0", "--db", str(db), "--port-file", str(missing))
    assert result.returncode == 1
    assert "cannot write" in result.stderr


def test_refuses_non_loopback_listen(db):
    result = cli("serve", "--listen", "0.0.0.0:0", "--db", str(db))  # noqa: S104
    assert result.returncode == 2
    assert "--allow-remote" in result.stderr
    assert not db.exists()  # refused before anything was created


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["mint-token", "--expires", "tomorrow"], 2, "30s, 10m, 24h, 7d"),
        (["mint-token", "--seats", "0"], 2, "positive integer"),
        (["serve", "--rate-limit", "lots"], 2, "N/SECONDS"),
        (["serve", "--listen", "nowhere"], 2, "HOST:PORT"),
        (["agents"], 1, "no database at"),
    ],
)
def test_bad_arguments_are_explained(db, args, code, fragment):
    result = cli(*args, "--db", str(db))
    assert result.returncode == code
    assert fragment in result.stderr
    assert not db.exists()


def test_queue_command_errors(db):
    cli("mint-token", "--db", str(db))
    unknown = cli("queue-command", "--db", str(db), "0000", "scan_updates")
    assert unknown.returncode == 1
    assert "not found" in unknown.stderr
    bad_params = cli("queue-command", "--db", str(db), "0000", "scan_updates", "--params", "{oops")
    assert bad_params.returncode == 2
    assert "--params" in bad_params.stderr


def test_foreign_file_is_refused_and_left_alone(db):
    db.write_bytes(b"this is not sqlite, and it must survive" * 100)
    before = db.read_bytes()
    result = cli("agents", "--db", str(db))
    assert result.returncode == 1
    assert "not a usable stand-in server database" in result.stderr
    assert db.read_bytes() == before
