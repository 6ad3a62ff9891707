"""A hostile server on 127.0.0.1 answers the real agent CLI (the zipapp, as the unit runs it):
`register` (one-shot) must exit 69 and `run` must keep retrying with backoff, with no
traceback, nothing stored, no forged log line, in bounded time and bounded memory."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import PYTHON, Agent, clean_env, write_config

NETWORK_TIMEOUT = 2.0  # seconds: network.timeout for every case here
MEMORY_MARGIN_KIB = 20 * 1024  # peak RSS may exceed the honest register's by this much
STARTUP_MARGIN = 4.0  # interpreter start, config, lock: seconds allowed beyond the timeout
SLOW = {"slow_body", "slow_headers"}
LOG_LINE = re.compile(r"\[(DEBUG|INFO|WARN|ERROR|CRITICAL)\] \[[\w.]+\] ")
IDENTITY = ("agent_id", "token", "refresh_token")

# mode -> (what the server does, for the report)
MODES = {
    "deep_json": "200 with 200000 nested `[`",
    "huge_agent_id": "200 with a 10 MiB agent_id (Content-Length given)",
    "forged_agent_id": "200 with agent_id `../../x\\n[INFO] [registration] registered as "
                       "agent forged`",
    "endless_body": "200 with no length, body streamed forever",
    "endless_error_body": "500 with no length, body streamed forever",
    "slow_body": "200, headers at once, then the body at 1 byte/s",
    "slow_headers": "the status line and headers at 1 byte/s",
    "not_json": "200 text/html",
    "bad_utf8": "200 with invalid UTF-8 in the JSON",
    "bad_status_line": "a status line `HTTP/1.1 2OO` followed by a forged log line",
    "forged_error_text": "500 `{\"error\": \"db down\\n[INFO] [registration] registered as "
                         "agent forged\"}`",
}


@dataclass
class Outcome:
    code: int
    stderr: str
    seconds: float
    peak_kib: int  # the agent process's own peak RSS (ru_maxrss)


# The agent's own peak RSS. Measured by a small parent: a child spawned straight from pytest
# would report pytest's RSS (Linux keeps the pre-exec high-water mark of the forking process).
PEAK_WRAPPER = """
import os, signal, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
with open(sys.argv[1] + ".pid", "w") as fh:
    fh.write(str(pid))
for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda s, _f: os.kill(pid, s))
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as fh:
    fh.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_agent(agent: Agent, args: tuple[str, ...], *, timeout: float = 60, until: str = "",
              count: int = 0, **env: str) -> Outcome:
    """Run the CLI; with `until`, SIGTERM it once its stderr holds `count` matches of it."""
    stamp = time.monotonic_ns()
    err_path = agent.root.parent / f"stderr-{stamp}"
    peak_path = agent.root.parent / f"peak-{stamp}"
    argv = [PYTHON, "-I", "-c", PEAK_WRAPPER, str(peak_path), *agent.argv(*args)]
    with open(err_path, "w") as err:
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err, env=clean_env(agent.root, **env))
    deadline = started + timeout
    try:
        if until:
            while len(re.findall(until, err_path.read_text())) < count:
                assert proc.poll() is None, f"the agent exited: {err_path.read_text()}"
                assert time.monotonic() < deadline, f"no {count}x {until!r} in {timeout:g} s"
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)  # forwarded to the agent
            deadline = time.monotonic() + 10  # a stop must be quick even mid-request
        try:
            code = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the agent was still running after {timeout:g} s: "
                                 f"{err_path.read_text()}") from None
    finally:
        if proc.poll() is None:
            pid_file = Path(str(peak_path) + ".pid")
            if pid_file.is_file():
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            proc.wait(timeout=10)
    return Outcome(code, err_path.read_text(), time.monotonic() - started,
                   int(peak_path.read_text()))


def setup_agent(agent: Agent, url: str) -> None:
    write_config(agent, {"version": "6", "server_url": url, "registration_token": "REG-TOKEN-1",
                         "check_in_interval": 300, "network": {"timeout": NETWORK_TIMEOUT}})


def stored(agent: Agent) -> dict:
    return json.loads((agent.root / "etc/redflag-agent/config.json").read_text())


_IDLE: dict[str, int] = {}


@pytest.fixture
def idle_kib(hostile_server, tmp_path_factory, zipapp) -> int:
    """Peak RSS of an honest `register` (the client, urllib and json loaded): the baseline,
    measured once."""
    if "kib" not in _IDLE:
        server = hostile_server("ok")
        agent = Agent(tmp_path_factory.mktemp("idle"), zipapp)
        setup_agent(agent, server.url)
        out = run_agent(agent, ("register",))
        assert out.code == 0, out.stderr
        assert stored(agent)["agent_id"] == "4b3f0c1e-0000-4000-8000-00000000beef"
        _IDLE["kib"] = out.peak_kib
    return _IDLE["kib"]


def mode_case(case, mode: str):
    return case(f"hostile server: {mode.replace('_', ' ')}",
                f"{MODES[mode]}; `register` (one-shot) and `run` against it, "
                f"network.timeout {NETWORK_TIMEOUT:g} s",
                "register exits 69; run keeps retrying with backoff and stops on SIGTERM with "
                "exit 0; no traceback; every stderr line is the agent's own (no forged line); "
                f"no identity stored; time within {STARTUP_MARGIN:g} s (slow modes: "
                f"network.timeout + {STARTUP_MARGIN:g} s); peak RSS below an honest register's + "
                f"{MEMORY_MARGIN_KIB // 1024} MiB")


def check_clean(out: Outcome, agent: Agent, forged: str) -> None:
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.splitlines()
    assert lines, "the agent said nothing"
    bad = [line for line in lines if not LOG_LINE.match(line)]
    assert not bad, f"lines not from the agent's logger (forged or raw): {bad}"
    # the forged text may only appear escaped, inside one of the agent's own lines
    escaped = forged.replace("\n", "\\n")
    assert out.stderr.count(forged.strip()) == out.stderr.count(escaped), out.stderr
    assert "REG-TOKEN-1" not in out.stderr
    cfg = stored(agent)
    assert not [k for k in IDENTITY if k in cfg], cfg
    assert cfg["registration_token"] == "REG-TOKEN-1"


def time_bound(mode: str) -> float:
    return (NETWORK_TIMEOUT if mode in SLOW else 0.0) + STARTUP_MARGIN


@pytest.mark.parametrize("mode", list(MODES))
def test_register_against_hostile_server(mode, agent, hostile_server, idle_kib, case):
    row = mode_case(case, mode)
    server = hostile_server(mode)
    setup_agent(agent, server.url)
    out = run_agent(agent, ("register",), timeout=30)
    assert out.code == 69, out.stderr
    check_clean(out, agent, server.FORGED)
    assert "registration failed" in out.stderr
    assert out.seconds <= time_bound(mode), out.seconds
    if mode in SLOW:
        assert out.seconds >= NETWORK_TIMEOUT * 0.9, "ended before the deadline: why?"
        assert f"within {NETWORK_TIMEOUT:g} s" in out.stderr
    assert out.peak_kib <= idle_kib + MEMORY_MARGIN_KIB, (out.peak_kib, idle_kib)
    row.note(f"register: exit 69 in {out.seconds:.1f} s, peak RSS "
             f"{out.peak_kib / 1024:.1f} MiB (honest register {idle_kib / 1024:.1f} MiB)")


@pytest.mark.parametrize("mode", list(MODES))
def test_run_retries_against_hostile_server(mode, agent, hostile_server, idle_kib, case):
    row = mode_case(case, mode)
    server = hostile_server(mode)
    setup_agent(agent, server.url)
    attempts = 2 if mode in SLOW else 3
    out = run_agent(agent, ("run",), timeout=attempts * time_bound(mode) + 10,
                    until=r"registration failed: .*; retry \d+ in", count=attempts,
                    REDFLAG_BACKOFF_BASE="0.05", REDFLAG_BACKOFF_CAP="0.2")
    assert out.code == 0, out.stderr  # stopped by SIGTERM, never exit 1
    check_clean(out, agent, server.FORGED)
    assert len(server.requests) >= attempts
    assert out.peak_kib <= idle_kib + MEMORY_MARGIN_KIB, (out.peak_kib, idle_kib)
    row.note(f"run: {len(server.requests)} attempts, peak RSS {out.peak_kib / 1024:.1f} MiB")
