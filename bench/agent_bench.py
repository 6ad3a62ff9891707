#!/usr/bin/env python3
"""Agent benchmarks (not a timed test): medians of repeated runs of the built zipapp.

- start to first check-in request, registered config (target <= 150 ms)
- a legacy 0.1.18 migration via `migrate` (target <= 100 ms)
- idle RSS of a running agent after its first check-in (target <= 25 MiB)

Usage: python3 bench/agent_bench.py [--runs N] [--python PATH]
Loopback only: the check-in server is a tiny in-process HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
AID = "4b3f0c1e-0000-4000-8000-000000000001"


class Arrivals:
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.times: list[float] = []

    def wait(self, count: int, timeout: float = 10.0) -> float:
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.times) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError("agent did not check in")
                self.cond.wait(left)
            return self.times[count - 1]


def serve(arrivals: Arrivals) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            now = time.monotonic()
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            with arrivals.cond:
                arrivals.times.append(now)
                arrivals.cond.notify_all()
            body = b'{"commands": []}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_a: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def write(path: Path, obj: object, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    os.chmod(path, mode)


def registered_root(base: Path, url: str) -> Path:
    root = Path(tempfile.mkdtemp(dir=base))
    write(root / "etc/redflag-agent/config.json",
          {"version": "6", "server_url": url, "agent_id": AID, "token": "bench-jwt",
           "refresh_token": "bench-refresh", "check_in_interval": 300})
    (root / "var/lib/redflag-agent").mkdir(parents=True)
    return root


def legacy_root(base: Path) -> Path:
    root = Path(tempfile.mkdtemp(dir=base))
    write(root / "etc/aggregator/config.json",
          {"server_url": "http://127.0.0.1:9", "agent_id": AID, "token": "bench-jwt",
           "refresh_token": "bench-refresh", "check_in_interval": 300,
           "proxy": {"enabled": False}, "machine_id": "bench"})
    write(root / "var/lib/aggregator/pending_acks.json", [])
    write(root / "var/lib/aggregator/agent.key", {"k": "x"})
    (root / "etc/redflag-agent").mkdir(parents=True)
    (root / "var/lib/redflag-agent").mkdir(parents=True)
    return root


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=5)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=9)
    p.add_argument("--python", default=sys.executable)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        built = subprocess.run([sys.executable, str(REPO / "agent_src/build_zipapp.py"),
                                "--out", str(base / "dist")], capture_output=True, text=True,
                               check=True)
        pyz = built.stdout.split()[0]
        env_base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        arrivals = Arrivals()
        httpd = serve(arrivals)
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        startup, rss = [], []
        for i in range(args.runs):
            root = registered_root(base, url)
            env = dict(env_base, REDFLAG_ROOT=str(root))
            t0 = time.monotonic()
            proc = subprocess.Popen([args.python, "-I", pyz, "run"], env=env,
                                    stderr=subprocess.DEVNULL)
            startup.append((arrivals.wait(i + 1) - t0) * 1000)
            time.sleep(1.0)  # idle after the first check-in
            rss.append(rss_kib(proc.pid) / 1024)
            stop(proc)
        httpd.shutdown()
        migrate = []
        for _ in range(args.runs):
            root = legacy_root(base)
            env = dict(env_base, REDFLAG_ROOT=str(root))
            t0 = time.monotonic()
            res = subprocess.run([args.python, "-I", pyz, "migrate"], env=env,
                                 capture_output=True, text=True, check=False)
            migrate.append((time.monotonic() - t0) * 1000)
            cfg = json.loads((root / "etc/redflag-agent/config.json").read_text())
            if res.returncode != 0 or cfg.get("version") != "6" or cfg.get("agent_id") != AID:
                print(f"migration did not complete: exit {res.returncode}\n{res.stderr}",
                      file=sys.stderr)
                return 1
    version = subprocess.run([args.python, "--version"], capture_output=True, text=True,
                             check=False).stdout.strip()
    rows = [
        ("start to first check-in request (ms)", statistics.median(startup), 150.0),
        ("legacy migration via `migrate` (ms)", statistics.median(migrate), 100.0),
        ("idle RSS after first check-in (MiB)", statistics.median(rss), 25.0),
    ]
    print(f"Agent benchmarks: {version}, zipapp, median of {args.runs} runs\n")
    print("| measure | median | target | ok |")
    print("|---|---:|---:|---|")
    for name, value, target in rows:
        print(f"| {name} | {value:.1f} | <= {target:g} | {'yes' if value <= target else 'NO'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
