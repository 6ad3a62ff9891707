"""Session fixtures of the property suite: hypothesis profiles, the built zipapp, the stand-in
server as a process, a pool of agents registered with it, and the example counter."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings

from .hosts import (
    AGENT_SRC,
    POOL_MACHINE_ID,
    POOL_SIZE,
    PYTHON,
    Identity,
    World,
    http_json,
    run_agent,
)

# Every example starts three or four agent processes (0.3-0.7 s): no per-example deadline;
# a fixed seed and a bounded count in `make test` (40-80 s on 2 cores); `make prove`
# (HYPOTHESIS_PROFILE=prove, PROVE_EXAMPLES=N, default 600) explores new random states.
_COMMON = {"deadline": None, "database": None, "print_blob": True,
           "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}
settings.register_profile("ci", max_examples=100, derandomize=True, **_COMMON)
settings.register_profile("prove", max_examples=int(os.environ.get("PROVE_EXAMPLES", "600")),
                          derandomize=False, **_COMMON)
# for mutation runs: the same fixed examples, first failure reported unshrunk (fast)
settings.register_profile("mutation", max_examples=100, derandomize=True,
                          phases=[Phase.explicit, Phase.reuse, Phase.generate], **_COMMON)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)

STATS = {"examples": 0, "seconds": 0.0}


def pytest_terminal_summary(terminalreporter):
    if STATS["examples"]:
        terminalreporter.write_line(
            f"property suite ({PROFILE} profile): {STATS['examples']} generated host states "
            f"in {STATS['seconds']:.1f} s")


@pytest.fixture(scope="session")
def zipapp(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run([PYTHON, str(AGENT_SRC / "build_zipapp.py"), "--out", str(out)],
                           capture_output=True, text=True, check=True, timeout=120)
    return Path(built.stdout.split()[0])


@pytest.fixture(scope="session")
def server_url(tmp_path_factory):
    work = tmp_path_factory.mktemp("devserver")
    port_file = work / "port"
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDFLAG_")}
    env["PYTHONPATH"] = str(AGENT_SRC)
    generation = os.environ.get("REDFLAG_PROPERTY_GENERATION", "0.1.18")
    with open(work / "server.log", "ab") as log:
        proc = subprocess.Popen(
            [PYTHON, "-m", "redflag_devserver", "serve", "--listen", "127.0.0.1:0",
             "--db", str(work / "server.db"), "--port-file", str(port_file),
             "--generation", generation, "--rate-limit", "off"],
            stdout=log, stderr=log, env=env)
    deadline = time.monotonic() + 15
    while not port_file.is_file():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError((work / "server.log").read_text()[-2000:])
        time.sleep(0.02)
    yield f"http://127.0.0.1:{int(port_file.read_text())}"
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def world(server_url, zipapp) -> World:
    """POOL_SIZE agents registered once, by the agent itself, on a host with POOL_MACHINE_ID."""
    token = http_json(f"{server_url}/admin/tokens", {"seats": 100000, "expires": "24h"})
    pool = []
    for _ in range(POOL_SIZE):
        with tempfile.TemporaryDirectory(prefix="redflag-pool-") as tmp:
            root = Path(tmp)
            (root / "etc").mkdir()
            (root / "etc" / "machine-id").write_bytes(POOL_MACHINE_ID)
            ran = run_agent(zipapp, root, "register", "--server", server_url,
                            REDFLAG_REGISTRATION_TOKEN=token["token"])
            assert ran.rc == 0, ran.err
            cfg = json.loads((root / "etc/redflag-agent/config.json").read_text())
            pool.append(Identity(cfg["agent_id"], cfg["token"], cfg["refresh_token"]))
    return World(server_url, pool, token["token"])
