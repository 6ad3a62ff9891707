"""Fault suite fixtures: the built zipapp run as the unit runs it, the real stand-in server as
a separate process, and the recorder that turns each case into a row of docs/RELIABILITY.md."""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import pytest

from .reliability import case, finish, pytest_runtest_makereport

REPO = Path(__file__).resolve().parents[2]
AGENT_SRC = REPO / "agent_src"
# another interpreter (e.g. a Python 3.9) can be checked with REDFLAG_TEST_PYTHON
PYTHON = os.environ.get("REDFLAG_TEST_PYTHON", sys.executable)
__all__ = ["case", "pytest_runtest_makereport"]  # re-exported for pytest


def pytest_sessionfinish(session, exitstatus):
    context = (f"agent run as the unit runs it (`python3 -I redflag-agent.pyz`) with "
               f"{platform.python_implementation()} {platform.python_version()}, "
               f"{platform.system()} {platform.release()}")
    finish("unit", "Unit level: real agent CLI, real stand-in server, temporary roots",
           context, REPO)


# --- the agent ---------------------------------------------------------------------------
@pytest.fixture(scope="session")
def zipapp(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run([PYTHON, str(AGENT_SRC / "build_zipapp.py"), "--out", str(out)],
                           capture_output=True, text=True, check=True, timeout=120)
    return Path(built.stdout.split()[0])


def clean_env(root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
           and not k.startswith("REDFLAG_") and k != "container"}
    env["REDFLAG_ROOT"] = str(root)
    env.update(extra)
    return env


class Agent:
    """The agent CLI exactly as the unit starts it, against one temporary root."""

    def __init__(self, root: Path, pyz: Path) -> None:
        self.root = root
        self.pyz = pyz

    def argv(self, *args: str) -> list[str]:
        return [PYTHON, "-I", str(self.pyz), *args]

    def run(self, *args: str, stdin: str = "", timeout: float = 60,
            **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*args), input=stdin, capture_output=True, text=True,
                              timeout=timeout, env=clean_env(self.root, **env), check=False)

    def start(self, *args: str, **env: str) -> subprocess.Popen:
        return subprocess.Popen(self.argv(*args), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                env=clean_env(self.root, **env))

    def status(self) -> dict[str, Any]:
        res = self.run("status", "--json")
        assert res.returncode == 0, res.stderr  # noqa: S101
        return json.loads(res.stdout)


def stop(proc: subprocess.Popen, timeout: float = 10) -> tuple[int, str, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@pytest.fixture
def make_agent(tmp_path, zipapp):
    def make(name: str = "root") -> Agent:
        root = tmp_path / name
        root.mkdir()
        return Agent(root, zipapp)
    return make


@pytest.fixture
def agent(make_agent) -> Agent:
    return make_agent()


# --- the stand-in server -----------------------------------------------------------------
class DevServer:
    """`python3 -m redflag_devserver serve` in its own process; restartable on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.db = workdir / "server.db"
        self.port: Optional[int] = None
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = workdir / "devserver.log"

    def _cmd(self, *args: str) -> list[str]:
        return [PYTHON, "-m", "redflag_devserver", *args]

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REDFLAG_")}
        env["PYTHONPATH"] = str(AGENT_SRC)
        return env

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *extra: str) -> DevServer:
        port_file = self.workdir / "port"
        port_file.unlink(missing_ok=True)
        listen = f"127.0.0.1:{self.port or 0}"
        if "--rate-limit" not in extra:
            # the default generation (0.2) allows 5 registrations a minute from one address;
            # these tests register many agents from 127.0.0.1
            extra = ("--rate-limit", "off", *extra)
        log = open(self.log_path, "a")  # noqa: SIM115 - kept open for the child's lifetime
        self.proc = subprocess.Popen(
            self._cmd("serve", "--listen", listen, "--db", str(self.db), "--port-file",
                      str(port_file), *extra),
            stdout=log, stderr=log, env=self._env())
        log.close()
        deadline = time.monotonic() + 15
        while not port_file.is_file():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"stand-in server did not start: "
                                     f"{self.log_path.read_text()[-2000:]}")
            time.sleep(0.02)
        self.port = int(port_file.read_text())
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)
        self.proc = None

    def admin(self, *args: str, stdin: str = "") -> str:
        res = subprocess.run(self._cmd(*args, "--db", str(self.db)), input=stdin,
                             capture_output=True, text=True, timeout=30, env=self._env(),
                             check=False)
        assert res.returncode == 0, res.stderr  # noqa: S101
        return res.stdout

    def mint(self, seats: int = 1, expires: str = "24h") -> str:
        return self.admin("mint-token", "--seats", str(seats), "--expires", expires).strip()

    def agents(self) -> list[dict[str, Any]]:
        return json.loads(self.admin("agents", "--json"))

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.is_file() else ""


@pytest.fixture
def devserver(tmp_path):
    workdir = tmp_path / "devserver"
    workdir.mkdir()
    server = DevServer(workdir)
    yield server
    server.stop()


# --- on-disk helpers ---------------------------------------------------------------------
def write_config(agent: Agent, cfg: Optional[dict[str, Any]] = None, *, raw: Optional[bytes] = None,
                 state_dir: bool = True) -> Path:
    """What the role lays down: config dir 0750, config 0600, state dir 0750."""
    cdir = agent.root / "etc/redflag-agent"
    cdir.mkdir(parents=True, exist_ok=True, mode=0o750)
    if state_dir:
        (agent.root / "var/lib/redflag-agent").mkdir(parents=True, exist_ok=True, mode=0o750)
    path = cdir / "config.json"
    path.write_bytes(raw if raw is not None else json.dumps(cfg, indent=2).encode())
    os.chmod(path, 0o600)
    return path


def tree(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry under root with its kind, mode, mtime and bytes: any write shows."""
    out: dict[str, tuple[Any, ...]] = {}
    if not root.exists():
        return out
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        data = p.read_bytes() if p.is_file() and not p.is_symlink() else None
        out[str(p.relative_to(root))] = (st.st_mode, st.st_mtime_ns, st.st_size, data)
    return out


def wait_until(predicate, timeout: float = 15.0, interval: float = 0.02, what: str = ""):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what or predicate}")
        time.sleep(interval)
