"""Session fixtures of the property suite: hypothesis profiles, the built zipapp, the stand-in
server of each generation as a process, and the example counter."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings

from .hosts import (
    AGENT_SRC,
    GENERATIONS,
    PYTHON,
    Fleet,
    World,
    http_json,
)

# Every example starts three or four agent processes (0.3-0.7 s): no per-example deadline;
# a fixed seed and a bounded count in `make test` (about 50 s of CPU on 2 cores: 1 min wall
# when idle, 3-4 min at load 12); `make prove` (HYPOTHESIS_PROFILE=prove, PROVE_EXAMPLES=N,
# default 600) explores new random states.
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


def _start_server(work: Path, generation: str) -> tuple[subprocess.Popen, Path]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDFLAG_")}
    env["PYTHONPATH"] = str(AGENT_SRC)
    port_file = work / "port"
    with open(work / "server.log", "ab") as log:
        proc = subprocess.Popen(
            [PYTHON, "-m", "redflag_devserver", "serve", "--listen", "127.0.0.1:0",
             "--db", str(work / "server.db"), "--port-file", str(port_file),
             "--generation", generation, "--rate-limit", "off"],
            stdout=log, stderr=log, env=env)
    return proc, port_file


@pytest.fixture(scope="session")
def fleet(tmp_path_factory, zipapp) -> Iterator[Fleet]:
    """A stand-in server per generation (0.1.18, 0.1.23, 0.2), each with a real
    registration token; the examples register their own agents (World.begin)."""
    started = {}
    for generation in GENERATIONS:
        work = tmp_path_factory.mktemp(f"devserver-{generation}")
        started[generation] = (work, *_start_server(work, generation))
    worlds = {}
    try:
        deadline = time.monotonic() + 15
        for generation, (work, proc, port_file) in started.items():
            while not port_file.is_file():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError((work / "server.log").read_text()[-2000:])
                time.sleep(0.02)
            url = f"http://127.0.0.1:{int(port_file.read_text())}"
            token = http_json(f"{url}/admin/tokens", {"seats": 100000, "expires": "24h"})
            worlds[generation] = World(url, work / "server.db", generation, token["token"])
        yield Fleet(worlds)
    finally:
        for _work, proc, _port in started.values():
            proc.send_signal(signal.SIGTERM)
        for _work, proc, _port in started.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
