"""Start, stop and query the stand-in RedFlag server for one Molecule scenario.

Everything lives in one state directory under the scenario's ephemeral
directory: the SQLite database, the server log, `server.json` (url, pid, db)
and token files (mode 0600). Tokens are written to files, never printed.

    devserver.py start  --state-dir DIR
    devserver.py mint   --state-dir DIR --out NAME [--seats N] [--revoke]
    devserver.py agents --state-dir DIR
    devserver.py stop   --state-dir DIR
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
AGENT_SRC = REPO / "agent_src"
STATE_FILE = "server.json"
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0


class DevServerError(Exception):
    """A failure with a message that says what to do next."""


def _server_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(AGENT_SRC), env.get("PYTHONPATH")]))
    return env


def _devserver_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "redflag_devserver", *args]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=1) as resp:  # noqa: S310 (loopback URL we built)
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _pid_is_devserver(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"redflag_devserver" in cmdline


def _load_state(state_dir: Path) -> dict | None:
    path = state_dir / STATE_FILE
    if not path.exists():
        return None
    return json.loads(path.read_text())


def _write_private(path: Path, data: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(data)
    os.replace(tmp, path)


def start(state_dir: Path) -> dict:
    state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(state_dir, 0o700)
    state = _load_state(state_dir)
    if state and _pid_is_devserver(state["pid"]) and _healthy(state["url"]):
        return state  # already running for this scenario: keep it (create is re-runnable)

    db = state_dir / "devserver.db"
    log_path = state_dir / "devserver.log"
    for _attempt in range(3):
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                # every test container registers from 127.0.0.1: upstream's 5/min per address
                # would throttle a fleet converge; binding and rotation stay on (0.2)
                _devserver_cmd("serve", "--listen", f"127.0.0.1:{port}", "--db", str(db),
                               "--rate-limit", "off"),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=_server_env(),
                start_new_session=True,  # outlive the Ansible task that started it
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None:
            if _healthy(url):
                state = {"url": url, "pid": proc.pid, "db": str(db), "log": str(log_path)}
                _write_private(state_dir / STATE_FILE, json.dumps(state, indent=2) + "\n")
                return state
            time.sleep(0.1)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    tail = log_path.read_text(errors="replace").splitlines()[-15:] if log_path.exists() else []
    raise DevServerError(
        "the stand-in server did not answer /health within "
        f"{START_TIMEOUT_S:.0f} s (3 attempts); its log ends with:\n  "
        + "\n  ".join(tail)
        + f"\nCheck that 'python3 -m redflag_devserver serve' works from {AGENT_SRC}."
    )


def _require_running(state_dir: Path) -> dict:
    state = _load_state(state_dir)
    if not state:
        raise DevServerError(
            f"no stand-in server state in {state_dir}; "
            "run 'molecule create' for this scenario first"
        )
    return state


def mint(state_dir: Path, out_name: str, seats: int, revoke: bool) -> Path:
    state = _require_running(state_dir)
    if "/" in out_name or out_name.startswith("."):
        raise DevServerError(f"--out must be a plain file name, got {out_name!r}")
    result = subprocess.run(
        _devserver_cmd(
            "mint-token",
            "--db",
            state["db"],
            "--seats",
            str(seats),
            "--note",
            "molecule:" + out_name,
        ),
        capture_output=True,
        text=True,
        env=_server_env(),
        check=False,
    )
    token = result.stdout.strip()
    if result.returncode != 0 or not token or len(token.splitlines()) != 1:
        # stdout may hold the token: show only stderr.
        raise DevServerError(
            f"mint-token failed (exit {result.returncode}): {result.stderr.strip()}"
        )
    if revoke:
        rev = subprocess.run(
            _devserver_cmd("revoke-token", "--db", state["db"], token),
            capture_output=True,
            text=True,
            env=_server_env(),
            check=False,
        )
        if rev.returncode != 0:
            raise DevServerError(
                f"revoke-token failed (exit {rev.returncode}): {rev.stderr.strip()}"
            )
    path = state_dir / out_name
    _write_private(path, token + "\n")
    return path


def agents(state_dir: Path) -> list:
    state = _require_running(state_dir)
    result = subprocess.run(
        _devserver_cmd("agents", "--db", state["db"], "--json"),
        capture_output=True,
        text=True,
        env=_server_env(),
        check=False,
    )
    if result.returncode != 0:
        raise DevServerError(f"agents failed (exit {result.returncode}): {result.stderr.strip()}")
    data = json.loads(result.stdout)
    if isinstance(data, dict) and "agents" in data:
        data = data["agents"]
    return list(data)


def stop(state_dir: Path) -> bool:
    """Stop the server and delete its state (db, tokens). True when one was running."""
    state = _load_state(state_dir)
    was_running = False
    if state and _pid_is_devserver(state["pid"]):
        was_running = True
        os.kill(state["pid"], signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline and _pid_is_devserver(state["pid"]):
            time.sleep(0.1)
        if _pid_is_devserver(state["pid"]):
            os.kill(state["pid"], signal.SIGKILL)
    if state_dir.exists():
        shutil.rmtree(state_dir)
    return was_running


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("start", "mint", "agents", "stop"):
        p = sub.add_parser(name)
        p.add_argument("--state-dir", required=True, type=Path)
        if name == "mint":
            p.add_argument("--out", required=True, help="token file name inside the state dir")
            p.add_argument("--seats", type=int, default=1)
            p.add_argument("--revoke", action="store_true", help="revoke it at once (a bad token)")
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            print(json.dumps(start(args.state_dir)))
        elif args.command == "mint":
            path = mint(args.state_dir, args.out, args.seats, args.revoke)
            print(json.dumps({"token_file": str(path)}))
        elif args.command == "agents":
            print(json.dumps(agents(args.state_dir), indent=2))
        else:
            print(json.dumps({"stopped": stop(args.state_dir)}))
    except DevServerError as exc:
        print(f"devserver: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
