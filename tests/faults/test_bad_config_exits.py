"""No input reaches exit 1: every bad config.json, through every command that reads it, ends
in a documented exit code (78; `status` 0 with config_valid false), a message that names the
field, no traceback, and not one byte or mtime changed. Also `config apply` on a full disk."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from .conftest import AGENT_SRC, PYTHON, tree, write_config

URL = "http://127.0.0.1:9"
AID = "4b3f0c1e-0000-4000-8000-000000000001"
IDENT = {"agent_id": AID, "token": "JWT-SECRET-1", "refresh_token": "REFRESH-SECRET-1"}
SECRETS = ("JWT-SECRET-1", "REFRESH-SECRET-1", "REG-SECRET-1")


def cfg(**fields) -> bytes:
    base = {"version": "6", "server_url": URL, "registration_token": "REG-SECRET-1"}
    base.update(fields)
    return json.dumps(base).encode()


def raw(body: str) -> bytes:
    """A config whose bad value json.dumps cannot write (NaN, 1e400, literal digits)."""
    return ('{"version": "6", "server_url": "' + URL + '", ' + body + "}").encode()


# (case id, config bytes, fragments the message must hold)
BAD = [
    ("100000 nested [", b"[" * 100_000, ["nested too deeply"]),
    ("100000 nested {", b'{"a": ' * 100_000, ["nested too deeply"]),
    ("40 levels under a key", raw('"extra": ' + "[" * 40 + "]" * 40),
     ["nested too deeply", "extra"]),
    ("NaN timeout", raw('"network": {"timeout": NaN}'), ["network.timeout", "NaN"]),
    ("Infinity interval", raw('"check_in_interval": Infinity'),
     ["check_in_interval", "Infinity"]),
    ("-Infinity retry_delay", raw('"network": {"retry_delay": -Infinity}'),
     ["network.retry_delay", "-Infinity"]),
    ("interval -1", cfg(check_in_interval=-1), ["check_in_interval", "-1", "1 to 86400"]),
    ("interval 0", cfg(check_in_interval=0), ["check_in_interval", "found 0", "1 to 86400"]),
    ("interval 10**12", cfg(check_in_interval=10**12),
     ["check_in_interval", "1000000000000", "1 to 86400"]),
    ("interval 1e400", raw('"check_in_interval": 1e400'), ["check_in_interval", "1e400"]),
    ("interval 10**400", raw('"check_in_interval": 1' + "0" * 400),
     ["check_in_interval", "more than 30 digits"]),
    ("interval 5000 digits", raw('"check_in_interval": ' + "9" * 5000),
     ["check_in_interval", "more than 30 digits"]),
    ("interval a string", cfg(check_in_interval="300"), ["check_in_interval", "a string"]),
    ("interval true", cfg(check_in_interval=True), ["check_in_interval", "true"]),
    ("timeout -1", cfg(network={"timeout": -1}), ["network.timeout", "-1", "3600"]),
    ("timeout a string", cfg(network={"timeout": "30s"}), ["network.timeout", "a string"]),
    ("timeout 10**29", cfg(network={"timeout": 10**29}), ["network.timeout", "3600"]),
    ("retry_count -1", cfg(network={"retry_count": -1}), ["network.retry_count", "0 to 100"]),
    ("retry_count 10**12", cfg(network={"retry_count": 10**12}),
     ["network.retry_count", "1000000000000"]),
    ("max_idle_conn 2.5", cfg(network={"max_idle_conn": 2.5}),
     ["network.max_idle_conn", "2.5"]),
    ("logging.max_size -1", cfg(logging={"max_size": -1}), ["logging.max_size", "-1"]),
    ("logging.max_age 10**12", cfg(logging={"max_age": 10**12}), ["logging.max_age"]),
    ("proxy.enabled a string", cfg(proxy={"enabled": "yes"}),
     ["proxy.enabled", "true or false"]),
    ("tls.insecure_skip_verify 1", cfg(tls={"insecure_skip_verify": 1}),
     ["tls.insecure_skip_verify", "true or false"]),
    ("server_url a number", cfg(server_url=5), ["server_url", "found 5"]),
    ("tags a string at schema 6", cfg(tags="a,b"), ["tags", "a list of strings"]),
    ("version unicode digit", cfg(version="\u00b2"), ["version", "schema number"]),
    ("newer schema \"7\", registered", cfg(version="7", **IDENT),
     ["config schema 7", "schema 6 and older", "backup"]),
    ("newer schema 99 (number)", cfg(version=99), ["config schema 99", "newer redflag-agent"]),
]
COMMANDS = [("migrate",), ("run",), ("config", "apply"), ("register",), ("unregister",)]


@pytest.mark.parametrize(("kind", "data", "fragments"), BAD, ids=[b[0] for b in BAD])
def test_bad_config_exits_78_names_the_field_and_changes_nothing(agent, case, kind, data,
                                                                 fragments):
    case("bad config.json x every command",
         f"config.json holding one of {len(BAD)} bad inputs (" + ", ".join(b[0] for b in BAD)
         + "); then `migrate`, `run`, `config apply` (settings: server_url), `register` "
         "(token in the environment), `unregister`, `status --json`",
         "every command exits 78, stderr names the field (or the nesting, or the schema found "
         "and the one supported), no traceback, no secret; `status` exits 0 with config_valid "
         "false and the same reason; every file under the root byte- and mtime-identical")
    path = write_config(agent, raw=data)
    before = tree(agent.root)
    stdin = {"config": json.dumps({"settings": {"server_url": "http://127.0.0.1:8"}})}
    for command in COMMANDS:
        res = agent.run(*command, stdin=stdin.get(command[0], ""),
                        REDFLAG_REGISTRATION_TOKEN="REG-SECRET-1")
        label = " ".join(command)
        assert res.returncode == 78, (label, res.returncode, res.stderr[-2000:])
        assert "Traceback" not in res.stderr, (label, res.stderr[-2000:])
        assert str(path) in res.stderr, (label, res.stderr[-2000:])
        for fragment in fragments:
            assert fragment in res.stderr, (label, fragment, res.stderr[-2000:])
        assert not any(s in res.stdout + res.stderr for s in SECRETS), label
    st = agent.run("status", "--json")
    assert st.returncode == 0, st.stderr
    assert "Traceback" not in st.stderr
    report = json.loads(st.stdout)
    assert report["config_valid"] is False
    assert all(f in report["config_error"] for f in fragments), report["config_error"]
    assert tree(agent.root) == before
    assert path.read_bytes() == data


# --- config apply on a full disk ---------------------------------------------------------
@pytest.fixture
def small_config_dir(agent):
    """The agent's config directory on a 64 KiB tmpfs (root only, as CI runs)."""
    cdir = agent.root / "etc/redflag-agent"
    cdir.mkdir(parents=True, mode=0o750)
    (agent.root / "var/lib/redflag-agent").mkdir(parents=True, mode=0o750)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0750", "tmpfs",
                          str(cdir)], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs at {cdir} ({res.stderr.strip()}): this case needs "
                    "root and mount(8); run the suite as root (CI does)")
    try:
        yield cdir
    finally:
        subprocess.run(["umount", str(cdir)], check=True)


def fill(directory: Path) -> None:
    """Fill the filesystem to the last block (64 KiB tmpfs: bounded)."""
    with open(directory / "filler", "wb", buffering=0) as fh:
        try:
            for _ in range(256):
                fh.write(b"\0" * 4096)
        except OSError:
            pass


def test_config_apply_on_a_full_disk_says_so_and_changes_nothing(agent, case,
                                                                 small_config_dir):
    row = case("full disk during `config apply`",
               "config dir on a 64 KiB tmpfs holding a registered config, filled to the "
               "last block; `config apply --json` with a changed server_url and 4 KiB of tags",
               "exit 78; stderr names config.json and 'No space left on device' and says "
               "nothing was changed; no traceback; config.json byte- and mtime-identical; "
               "no temp file left")
    path = write_config(agent, {"version": "6", "server_url": URL, **IDENT,
                                "check_in_interval": 300})
    fill(small_config_dir)
    before = path.stat()
    data = path.read_bytes()
    desired = {"settings": {"server_url": "http://127.0.0.1:8", "tags": ["t" * 4096]}}
    res = agent.run("config", "apply", "--json", stdin=json.dumps(desired))
    assert res.returncode == 78, res.stderr
    assert "Traceback" not in res.stderr
    assert f"cannot write {path}: No space left on device (ENOSPC)" in res.stderr
    assert "nothing was changed" in res.stderr
    assert res.stdout == ""
    # the directory's mtime moves (the temp file came and went); the file does not
    after = path.stat()
    assert path.read_bytes() == data
    assert (after.st_mtime_ns, after.st_ino, after.st_mode) == (
        before.st_mtime_ns, before.st_ino, before.st_mode)
    assert sorted(p.name for p in small_config_dir.iterdir()) == ["config.json", "filler"]
    row.note("stderr: " + res.stderr.strip().split("] ", 2)[-1]
             .replace(str(agent.root), "ROOT"))


# --- the safety net ----------------------------------------------------------------------
def test_an_unexpected_exception_exits_78_in_one_line(tmp_path):
    """A bug (here: a command made to raise) must not become exit 1 and a traceback that
    systemd restarts every 30 s; the traceback is one REDFLAG_LOG_LEVEL=debug away."""
    code = ("import sys, redflag_agent.cli as c\n"
            "def boom(paths, args):\n"
            "    raise KeyError('bug-marker')\n"
            "c.cmd_version = boom\n"
            "sys.exit(c.main(['version']))\n")
    env = {"PYTHONPATH": str(AGENT_SRC), "REDFLAG_ROOT": str(tmp_path)}
    res = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=30,
                         env=env, check=False)
    assert res.returncode == 78, res.stderr
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "unexpected KeyError: 'bug-marker'" in lines[0] and "in boom" in lines[0]
    debug = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=30,
                           env={**env, "REDFLAG_LOG_LEVEL": "debug"}, check=False)
    assert debug.returncode == 78
    assert "Traceback (most recent call last)" in debug.stderr


@pytest.mark.parametrize("name", ["migration_state.json", "status.json"])
def test_deeply_nested_state_files_are_reported_not_a_traceback(agent, name) -> None:
    """The agent's own state files are read by root too: nesting must not be a RecursionError."""
    write_config(agent, {"version": "6", "server_url": URL, **IDENT})
    state_dir = agent.root / "var" / "lib" / "redflag-agent"
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / name).write_bytes(b"[" * 100_000)
    for args in (("status", "--json"), ("migrate", "--json")):
        res = agent.run(*args)
        assert res.returncode == 0, (args, res.stderr)
        assert "Traceback" not in res.stderr and "RecursionError" not in res.stderr
        json.loads(res.stdout)
