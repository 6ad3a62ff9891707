"""Helpers to run the stand-in server and its admin CLI as real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

AGENT_SRC = Path(__file__).resolve().parents[2] / "agent_src"


def env() -> dict[str, str]:
    result = dict(os.environ)
    result["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(AGENT_SRC), result.get("PYTHONPATH")) if p
    )
    return result


def cli(*args: str, stdin: Optional[str] = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "redflag_devserver", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env(),
        timeout=60,
        check=False,
    )


class ServerProcess:
    """`serve` on 127.0.0.1 port 0; stderr goes to a file the test can read."""

    def __init__(self, workdir: Path, db: Path, *extra: str) -> None:
        self.port_file = workdir / "port"
        self.pid_file = workdir / "pid"
        self.log_path = workdir / "server.log"
        for path in (self.port_file, self.pid_file):
            path.unlink(missing_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "redflag_devserver",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--db",
                str(db),
                "--port-file",
                str(self.port_file),
                "--pid-file",
                str(self.pid_file),
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            env=env(),
        )
        deadline = time.monotonic() + 15
        while not self.port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"server did not start:\n{self.log()}")
            time.sleep(0.02)
        self.port = int(self.port_file.read_text())
        self.url = f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, signum: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        try:
            return self.proc.wait(15)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._log.close()
