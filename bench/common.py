"""Shared bench plumbing: repo paths, bounded subprocess runs, the stand-in server process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
WORK = BENCH / "work"
RESULTS = BENCH / "results"
AGENT_SRC = REPO / "agent_src"
VENV_BIN = REPO / ".venv" / "bin"


class BenchError(Exception):
    """A failure with a message that says what went wrong and what to do."""


def tool_env() -> dict[str, str]:
    """Environment for podman and Ansible: the project's containers.conf and ansible.cfg."""
    env = dict(os.environ)
    env["CONTAINERS_CONF"] = str(REPO / "molecule" / "containers.conf")
    env["ANSIBLE_CONFIG"] = str(REPO / "ansible.cfg")
    env["ANSIBLE_NOCOLOR"] = "1"
    env["ANSIBLE_FORCE_COLOR"] = "0"
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", "/usr/bin:/bin")])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(AGENT_SRC), env.get("PYTHONPATH")]))
    return env


def run(cmd: list[str], *, timeout: float, env: dict[str, str] | None = None,
        check: bool = True, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run with a hard timeout; on failure raise with the command's stderr tail."""
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                             env=env or tool_env(), cwd=cwd, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{' '.join(cmd[:3])} ... did not finish within {timeout:.0f} s") from exc
    if check and res.returncode != 0:
        tail = "\n  ".join(res.stderr.strip().splitlines()[-15:])
        raise BenchError(f"{' '.join(cmd[:4])} ... failed (exit {res.returncode}):\n  {tail}")
    return res


def python() -> str:
    return sys.executable


def build_zipapp(out: Path) -> Path:
    """Build the agent zipapp once per bench run (role, baseline, agent CPU); its path."""
    res = run([python(), str(AGENT_SRC / "build_zipapp.py"), "--out", str(out)], timeout=60)
    return Path(res.stdout.split()[0])


class DevServer:
    """`python3 -m redflag_devserver serve` on 127.0.0.1:0 with its own database."""

    def __init__(self, state_dir: Path, extra: tuple[str, ...] = ()) -> None:
        self.state_dir = state_dir
        self.db = state_dir / "devserver.db"
        self.extra = extra
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def __enter__(self) -> DevServer:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        port_file = self.state_dir / "port"
        port_file.unlink(missing_ok=True)
        with open(self.state_dir / "devserver.log", "ab") as log:
            self.proc = subprocess.Popen(
                [python(), "-m", "redflag_devserver", "serve", "--listen", "127.0.0.1:0",
                 "--db", str(self.db), "--port-file", str(port_file), *self.extra],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=tool_env())
        deadline = time.monotonic() + 15
        while not port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise BenchError("the stand-in server did not start; see "
                                 f"{self.state_dir / 'devserver.log'}")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{int(port_file.read_text())}"
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def mint(self, seats: int) -> str:
        """A fresh registration token; held in memory only, never printed."""
        res = run([python(), "-m", "redflag_devserver", "mint-token", "--db", str(self.db),
                   "--seats", str(seats), "--note", "bench"], timeout=30)
        token = res.stdout.strip()
        if not token or len(token.splitlines()) != 1:
            raise BenchError("mint-token printed no single token")
        return token

    def agents(self) -> list[dict]:
        res = run([python(), "-m", "redflag_devserver", "agents", "--db", str(self.db),
                   "--json"], timeout=60)
        return list(json.loads(res.stdout))
