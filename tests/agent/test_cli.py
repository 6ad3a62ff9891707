"""The real CLI as a subprocess against a temporary REDFLAG_ROOT and a local server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from redflag_agent.machine_id import read_machine_id
from redflag_agent.paths import Paths
from redflag_agent.status import REPORT_KEYS

AID = "4b3f0c1e-0000-4000-8000-000000000001"
REG = "/api/v1/agents/register"
CMDS = f"/api/v1/agents/{AID}/commands"
RENEW = "/api/v1/agents/renew"
SECRETS = ("REGTOKEN-XYZ", "JWT-SECRET", "REFRESH-SECRET", "NEW-JWT-SECRET")
REGISTERED_OK = (200, {"agent_id": AID, "token": "JWT-SECRET", "refresh_token": "REFRESH-SECRET",
                       "config": {"check_in_interval": 60}})


def cli(paths: Paths, env_factory, *args, stdin="", timeout=20, **env):
    return subprocess.run([sys.executable, "-m", "redflag_agent", *args], input=stdin,
                          capture_output=True, text=True, timeout=timeout,
                          env=env_factory(paths.root, **env), check=False)


def start(paths: Paths, env_factory, *args, **env):
    return subprocess.Popen([sys.executable, "-m", "redflag_agent", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env_factory(paths.root, REDFLAG_BACKOFF_BASE="0.05",
                                            REDFLAG_BACKOFF_CAP="0.2", **env))


def stop(proc: subprocess.Popen, within: float = 2.0) -> tuple[int, str]:
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=10)
    elapsed = time.monotonic() - sent
    assert elapsed < within, f"took {elapsed:.2f}s to stop"
    return proc.returncode, err


def write_config(paths: Paths, cfg, *, state_dir=True, raw: bytes | None = None) -> None:
    paths.config_dir.mkdir(parents=True, exist_ok=True)
    if state_dir:
        paths.state_dir.mkdir(parents=True, exist_ok=True)
    paths.config_file.write_bytes(raw if raw is not None else json.dumps(cfg).encode())
    os.chmod(paths.config_file, 0o600)


def registered_cfg(url: str, **extra):
    cfg = {"version": "6", "server_url": url, "agent_id": AID, "token": "JWT-SECRET",
           "refresh_token": "REFRESH-SECRET", "check_in_interval": 300}
    cfg.update(extra)
    return cfg


def snapshot(root: Path) -> dict[str, tuple]:
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (st.st_mode, st.st_mtime_ns, st.st_size,
                                         p.read_bytes() if p.is_file() else None)
    return out


def assert_no_secrets(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"secret {secret} leaked"


# --- the restart loop this project exists to prevent ----------------------------------------
@pytest.mark.parametrize("state_dir", [True, False], ids=["installed", "bare"])
def test_twenty_starts_unregistered_without_token_write_nothing(tmp_root, agent_env, state_dir):
    write_config(tmp_root, {"version": "6", "server_url": "http://127.0.0.1:9"},
                 state_dir=state_dir)
    before = snapshot(tmp_root.root)
    for _ in range(20):
        res = cli(tmp_root, agent_env, "run")
        assert res.returncode == 78, res.stderr
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1, lines
        assert lines[0].startswith("[ERROR] [runner] not registered and no registration token")
        assert "Traceback" not in res.stderr
        assert str(tmp_root.config_file) in lines[0]
        assert "redflag_agent_registration_token" in lines[0]
        assert "redflag-agent register" in lines[0]
    assert snapshot(tmp_root.root) == before
    assert not tmp_root.backups_dir.exists()


def test_no_config_at_all_exits_78_and_writes_nothing(tmp_root, agent_env):
    res = cli(tmp_root, agent_env, "run")
    assert res.returncode == 78
    assert "no config at" in res.stderr
    assert list(tmp_root.root.iterdir()) == []


@pytest.mark.parametrize(("raw", "fragment"), [
    (b"", "empty"),
    (b'{"version": "6", "server_url": "http://127.0.0.1:9", "agent_id": "', "truncated"),
    (b"\x7fELF\x02\x01\x01\x00\x00\xff\xfe", "not UTF-8"),
    (b'\xef\xbb\xbf{"version": "6"}', "byte order mark"),
    (b'{"version": "6", "server_url": "http://127.0.0.1:9", "check_in_interval": "soon"}',
     "check_in_interval"),
    (b'{"version": "6", "server_url": ["x"]}', "server_url"),
])
def test_corrupt_config_exits_78_untouched(tmp_root, agent_env, raw, fragment):
    write_config(tmp_root, None, raw=raw)
    before = snapshot(tmp_root.root)
    res = cli(tmp_root, agent_env, "run")
    assert res.returncode == 78, res.stderr
    assert fragment in res.stderr and str(tmp_root.config_file) in res.stderr
    assert snapshot(tmp_root.root) == before
    # status reports it instead of failing
    st = cli(tmp_root, agent_env, "status", "--json")
    assert st.returncode == 0
    rep = json.loads(st.stdout)
    assert rep["config_valid"] is False and fragment in rep["config_error"]


# --- run: registration, check-in, lock, SIGTERM ----------------------------------------------
def test_run_registers_through_outages_then_checks_in(tmp_root, agent_env, fake_server):
    fake_server.on("POST", REG, (429, {"error": "rate limited"}), (500, {"error": "db"}),
                   REGISTERED_OK)
    fake_server.on("GET", CMDS, (200, {"commands": []}))
    write_config(tmp_root, {"version": "6", "server_url": fake_server.url,
                            "registration_token": "REGTOKEN-XYZ", "machine_id": "keep",
                            "unknown_key": "keep"})
    proc = start(tmp_root, agent_env, "run")
    checkin = fake_server.wait_for("GET", CMDS)[0]
    assert checkin.headers["Authorization"] == "Bearer JWT-SECRET"
    assert len(fake_server.seen("POST", REG)) == 3
    code, err = stop(proc)
    assert code == 0
    cfg = json.loads(tmp_root.config_file.read_text())
    assert cfg["agent_id"] == AID and "registration_token" not in cfg
    # the machine ID the agent registered with replaces a file's own machine_id (CONTRACT 4b)
    host = read_machine_id(tmp_root).value
    assert fake_server.seen("POST", REG)[-1].body["machine_id"] == host
    assert {k.lower(): v for k, v in checkin.headers.items()}["x-machine-id"] == host
    assert cfg["machine_id"] == host and cfg["unknown_key"] == "keep"
    assert cfg["check_in_interval"] == 60
    assert os.stat(tmp_root.config_file).st_mode & 0o777 == 0o600
    assert err.count("registration failed") == 2
    assert "rate limited (429)" in err and "server error 500" in err and "retry 2 in" in err
    assert f"registered with {fake_server.url} as agent {AID}" in err
    assert_no_secrets(err)
    # a restart at the same version: no migration, no backup, straight to check-in
    before_backups = sorted(os.listdir(tmp_root.state_dir))
    proc = start(tmp_root, agent_env, "run")
    fake_server.wait_for("GET", CMDS, count=2)
    assert stop(proc)[0] == 0
    assert len(fake_server.seen("POST", REG)) == 3
    assert sorted(os.listdir(tmp_root.state_dir)) == before_backups


@pytest.mark.parametrize("answer", [
    (401, {"error": "invalid or expired registration token"}),
    (400, {"error": "registration token could not be consumed: no seats left"}),
])
def test_run_token_rejected_exits_77(tmp_root, agent_env, fake_server, answer):
    fake_server.on("POST", REG, answer)
    write_config(tmp_root, {"version": "6", "server_url": fake_server.url,
                            "registration_token": "REGTOKEN-XYZ"})
    res = cli(tmp_root, agent_env, "run")
    assert res.returncode == 77, res.stderr
    assert "rejected the registration token" in res.stderr
    assert_no_secrets(res.stderr)
    state = json.loads(tmp_root.status_file.read_text())
    assert "rejected" in state["last_error"] and "77" in state["last_exit_reason"]
    assert "registration_token" in json.loads(tmp_root.config_file.read_text())


def test_run_refresh_rejected_exits_77(tmp_root, agent_env, fake_server):
    fake_server.on("GET", CMDS, (401, {"error": "expired"}))
    fake_server.on("POST", RENEW, (401, {"error": "invalid or expired refresh token"}))
    write_config(tmp_root, registered_cfg(fake_server.url))
    res = cli(tmp_root, agent_env, "run")
    assert res.returncode == 77
    assert "rejected the refresh token" in res.stderr
    assert_no_secrets(res.stderr)


def test_second_instance_exits_75_and_sigterm_stops_within_2s(tmp_root, agent_env, fake_server):
    fake_server.on("GET", CMDS, (200, {"commands": []}))
    write_config(tmp_root, registered_cfg(fake_server.url))
    proc = start(tmp_root, agent_env, "run")
    fake_server.wait_for("GET", CMDS)
    second = cli(tmp_root, agent_env, "run", timeout=10)
    assert second.returncode == 75
    assert "another redflag-agent instance is running" in second.stderr
    code, err = stop(proc)
    assert code == 0 and "stopping on SIGTERM" in err
    assert list(tmp_root.state_dir.iterdir()) == [tmp_root.status_file]


def test_sigterm_during_a_hanging_request(tmp_root, agent_env, fake_server):
    def hang(_req):
        time.sleep(8)
        return 200, {"commands": []}

    fake_server.on("GET", CMDS, hang)
    write_config(tmp_root, registered_cfg(fake_server.url))
    proc = start(tmp_root, agent_env, "run")
    fake_server.wait_for("GET", CMDS)
    assert stop(proc)[0] == 0


def test_sigterm_during_backoff_with_server_down(tmp_root, agent_env):
    write_config(tmp_root, registered_cfg("http://127.0.0.1:9"))
    proc = subprocess.Popen([sys.executable, "-m", "redflag_agent", "run"],
                            stderr=subprocess.PIPE, text=True, env=agent_env(tmp_root.root))
    time.sleep(1.0)
    code, err = stop(proc)
    assert code == 0
    assert "check-in failed: cannot reach http://127.0.0.1:9" in err and "retry 1 in" in err


# --- one-shot commands ----------------------------------------------------------------------
def test_status_json_keys_and_no_secrets(tmp_root, agent_env):
    write_config(tmp_root, registered_cfg("http://127.0.0.1:9", registration_token="REGTOKEN-XYZ"))
    res = cli(tmp_root, agent_env, "status", "--json")
    assert res.returncode == 0
    rep = json.loads(res.stdout)
    assert tuple(rep) == REPORT_KEYS
    assert rep["registered"] is True and rep["identity_source"] == "current"
    assert rep["agent_id"] == AID and rep["config_version"] == "6"
    assert rep["registration_token_present"] is True
    human = cli(tmp_root, agent_env, "status")
    assert_no_secrets(res.stdout, res.stderr, human.stdout, human.stderr)


def test_status_on_empty_host(tmp_root, agent_env):
    res = cli(tmp_root, agent_env, "status", "--json")
    rep = json.loads(res.stdout)
    assert res.returncode == 0 and rep["config_present"] is False
    assert rep["registered"] is False and rep["agent_version"] == "0.2.0"
    assert list(tmp_root.root.iterdir()) == []


def test_config_apply_create_then_unchanged_then_change(tmp_root, agent_env):
    desired = {"settings": {"server_url": "http://127.0.0.1:9", "check_in_interval": 120,
                            "tags": ["web"], "proxy": {"enabled": False}},
               "registration_token": "REGTOKEN-XYZ"}
    check = cli(tmp_root, agent_env, "config", "apply", "--check", "--json",
                stdin=json.dumps(desired))
    assert json.loads(check.stdout)["created"] is True
    assert list(tmp_root.root.iterdir()) == [], "--check writes nothing"
    res = cli(tmp_root, agent_env, "config", "apply", "--json", stdin=json.dumps(desired))
    out = json.loads(res.stdout)
    assert res.returncode == 0 and out["changed"] and out["created"]
    assert "registration_token" in out["changed_keys"] and "********" in out["diff"]
    assert_no_secrets(res.stdout, res.stderr)
    mtime = tmp_root.config_file.stat().st_mtime_ns
    data = tmp_root.config_file.read_bytes()
    again = json.loads(cli(tmp_root, agent_env, "config", "apply", "--json",
                           stdin=json.dumps(desired)).stdout)
    assert again["changed"] is False and again["diff"] == ""
    assert tmp_root.config_file.stat().st_mtime_ns == mtime
    assert tmp_root.config_file.read_bytes() == data
    desired["settings"]["check_in_interval"] = 60
    third = json.loads(cli(tmp_root, agent_env, "config", "apply", "--json",
                           stdin=json.dumps(desired)).stdout)
    assert third["changed"] and third["changed_keys"] == ["check_in_interval"]


@pytest.mark.parametrize(("stdin", "fragment"), [
    ("not json", "not valid JSON"),
    ("[]", "JSON object"),
    ('{"settings": {}, "extra": 1}', "unknown input keys extra"),
    ('{"settings": {"agent_id": "x"}}', "may not set agent_id"),
    ('{"settings": {"check_in_interval": -5}}', "check_in_interval"),
])
def test_config_apply_bad_input_exits_78_and_keeps_file(tmp_root, agent_env, stdin, fragment):
    write_config(tmp_root, registered_cfg("http://127.0.0.1:9"))
    before = snapshot(tmp_root.root)
    res = cli(tmp_root, agent_env, "config", "apply", "--json", stdin=stdin)
    assert res.returncode == 78 and fragment in res.stderr
    assert snapshot(tmp_root.root) == before


def test_config_apply_on_corrupt_config_exits_78(tmp_root, agent_env):
    write_config(tmp_root, None, raw=b"{trunc")
    res = cli(tmp_root, agent_env, "config", "apply", stdin='{"settings": {}}')
    assert res.returncode == 78 and tmp_root.config_file.read_bytes() == b"{trunc"


@pytest.mark.parametrize("how", ["env", "file", "stdin"])
def test_register_command_token_sources(tmp_root, agent_env, fake_server, tmp_path, how):
    fake_server.on("POST", REG, REGISTERED_OK)
    kwargs, args = {}, []
    if how == "env":
        kwargs["REDFLAG_REGISTRATION_TOKEN"] = "REGTOKEN-XYZ"
    elif how == "file":
        tf = tmp_path / "tok"
        tf.write_text("REGTOKEN-XYZ\n")
        args = ["--token-file", str(tf)]
    res = cli(tmp_root, agent_env, "register", "--server", fake_server.url, *args,
              stdin="REGTOKEN-XYZ\n" if how == "stdin" else "", **kwargs)
    assert res.returncode == 0, res.stderr
    assert fake_server.seen("POST", REG)[0].headers["Authorization"] == "Bearer REGTOKEN-XYZ"
    assert json.loads(tmp_root.config_file.read_text())["agent_id"] == AID
    assert_no_secrets(res.stdout, res.stderr)


def test_register_command_failures(tmp_root, agent_env, fake_server):
    fake_server.on("POST", REG, (401, {"error": "invalid or expired registration token"}))
    no_token = cli(tmp_root, agent_env, "register", "--server", fake_server.url)
    assert no_token.returncode == 78 and "never on the command line" in no_token.stderr
    rejected = cli(tmp_root, agent_env, "register", REDFLAG_REGISTRATION_TOKEN="REGTOKEN-XYZ")
    assert rejected.returncode == 77
    down = cli(tmp_root, agent_env, "register", "--server", "http://127.0.0.1:9",
               REDFLAG_REGISTRATION_TOKEN="REGTOKEN-XYZ")
    assert down.returncode == 69
    assert_no_secrets(no_token.stderr, rejected.stderr, down.stderr)


def test_unregister(tmp_root, agent_env, fake_server):
    write_config(tmp_root, registered_cfg("http://127.0.0.1:9", machine_id="keep"))
    down = cli(tmp_root, agent_env, "unregister")
    assert down.returncode == 69
    assert json.loads(tmp_root.config_file.read_text())["agent_id"] == AID
    write_config(tmp_root, registered_cfg(fake_server.url, machine_id="keep"))
    fake_server.on("DELETE", f"/api/v1/agents/{AID}", (401, {"error": "expired"}),
                   (200, {"message": "deleted"}))
    fake_server.on("POST", RENEW, (200, {"token": "NEW-JWT-SECRET"}))
    res = cli(tmp_root, agent_env, "unregister", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["unregistered"] is True
    deletes = fake_server.seen("DELETE", f"/api/v1/agents/{AID}")
    assert deletes[-1].headers["Authorization"] == "Bearer NEW-JWT-SECRET"
    cfg = json.loads(tmp_root.config_file.read_text())
    assert "agent_id" not in cfg and "refresh_token" not in cfg and cfg["machine_id"] == "keep"
    assert cli(tmp_root, agent_env, "unregister").returncode == 78
    assert_no_secrets(res.stdout, res.stderr)


def test_version(tmp_root, agent_env):
    res = cli(tmp_root, agent_env, "version")
    assert res.returncode == 0 and res.stdout.strip() == "0.2.0"


def test_unregister_of_an_agent_the_server_already_deleted_clears_it_locally(
        tmp_root, agent_env, fake_server):
    write_config(tmp_root, registered_cfg(fake_server.url, machine_id="keep"))
    fake_server.on("DELETE", f"/api/v1/agents/{AID}", (404, {"error": "agent not found"}))
    res = cli(tmp_root, agent_env, "unregister", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["server_knew"] is False
    cfg = json.loads(tmp_root.config_file.read_text())
    assert "agent_id" not in cfg and "refresh_token" not in cfg and cfg["machine_id"] == "keep"
    assert_no_secrets(res.stdout, res.stderr)
