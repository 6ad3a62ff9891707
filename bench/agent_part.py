"""Agent benchmarks: bench/agent_bench.py (start-up, migration, idle RSS) plus the CPU time
a running agent spends over 10 check-ins against the stand-in server."""

from __future__ import annotations

import http.client
import json
import os
import signal
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from common import BENCH, WORK, BenchError, DevServer, python, run

CHECKINS = 10
CHECKIN_WAIT_S = 60.0


def parse_agent_bench(stdout: str) -> list[dict]:
    """Pure: the rows of agent_bench.py's markdown table."""
    rows = []
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[0] in ("measure", "---") or cells[1].startswith("-"):
            continue
        try:
            value = float(cells[1])
            target = float(cells[2].lstrip("<= ").strip())
        except ValueError:
            continue
        rows.append({"measure": cells[0], "median": value, "target": target,
                     "ok": value <= target})
    return rows


def cpu_seconds(stat_line: str, ticks: int) -> float:
    """Pure: utime + stime from a /proc/PID/stat line (comm may hold spaces)."""
    fields = stat_line[stat_line.rindex(")") + 2:].split()
    # After "pid (comm) ": state is field 3, so utime (14) and stime (15) are at 11 and 12.
    return (int(fields[11]) + int(fields[12])) / ticks


class Recorder:
    """A loopback pass-through proxy that timestamps every check-in request it forwards."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.split("//", 1)[1]
        self.cond = threading.Condition()
        self.checkins: list[float] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if self.command == "GET" and self.path.endswith("/commands"):
                    with recorder.cond:
                        recorder.checkins.append(time.monotonic())
                        recorder.cond.notify_all()
                conn = http.client.HTTPConnection(recorder.upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                try:
                    self.send_response(resp.status)
                    for key in ("Content-Type", "Retry-After"):
                        if resp.getheader(key):
                            self.send_header(key, resp.getheader(key))
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the agent was stopped mid-request at the end of a run

            do_GET = do_POST = do_DELETE = _forward  # noqa: N815

            def log_message(self, *_a: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def wait_for(self, count: int, proc: subprocess.Popen) -> None:
        deadline = time.monotonic() + CHECKIN_WAIT_S
        with self.cond:
            while len(self.checkins) < count:
                if proc.poll() is not None:
                    raise BenchError(f"the agent exited with {proc.returncode} before "
                                     f"check-in {count}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchError(f"no check-in {count} within {CHECKIN_WAIT_S:.0f} s")
                self.cond.wait(min(left, 0.5))

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _write_private(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(obj, fh)


def cpu_run(server: DevServer, pyz: Path, base: Path) -> dict:
    """One agent from a token-only config: CPU to the first check-in, then over 10 more."""
    ticks = os.sysconf("SC_CLK_TCK")
    recorder = Recorder(server.url)
    root = Path(tempfile.mkdtemp(dir=base))
    _write_private(root / "etc/redflag-agent/config.json",
                   {"version": "6", "server_url": recorder.url,
                    "registration_token": server.mint(1), "check_in_interval": 1})
    (root / "var/lib/redflag-agent").mkdir(parents=True)
    # each run is its own host: the stand-in binds an agent to its machine ID (CONTRACT 4b),
    # so runs sharing the hostname fallback would be refused as clones after the first
    (root / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "REDFLAG_ROOT": str(root)}
    proc = subprocess.Popen([python(), "-I", str(pyz), "run"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stat = Path(f"/proc/{proc.pid}/stat")
    try:
        recorder.wait_for(1, proc)
        first = cpu_seconds(stat.read_text(), ticks)
        t1 = recorder.checkins[0]
        recorder.wait_for(1 + CHECKINS, proc)
        last = cpu_seconds(stat.read_text(), ticks)
        span = recorder.checkins[CHECKINS] - t1
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        recorder.close()
    return {"cpu_to_first_ms": first * 1000, "cpu_10_ms": (last - first) * 1000,
            "span_s": span}


def bench(runs: int, cpu_runs: int, pyz: Path, log=print) -> dict:
    log(f"agent: agent_bench.py --runs {runs} ...")
    res = run([python(), str(BENCH / "agent_bench.py"), "--runs", str(runs)], timeout=600)
    rows = parse_agent_bench(res.stdout)
    if len(rows) != 3:
        raise BenchError(f"agent_bench.py printed {len(rows)} rows, expected 3:\n{res.stdout}")
    log(f"agent: CPU over {CHECKINS} check-ins, {cpu_runs} runs ...")
    base = WORK / "agent"
    base.mkdir(parents=True, exist_ok=True)
    samples = []
    with tempfile.TemporaryDirectory(dir=base) as tmp, \
            DevServer(Path(tmp) / "devserver") as server:
        for _ in range(cpu_runs):
            samples.append(cpu_run(server, pyz, Path(tmp)))
    cpu10 = statistics.median(s["cpu_10_ms"] for s in samples)
    out = {
        "runs": runs, "cpu_runs": cpu_runs, "rows": rows,
        "cpu_10_checkins_ms": round(cpu10, 1),
        "cpu_per_checkin_ms": round(cpu10 / CHECKINS, 2),
        "cpu_to_first_checkin_ms": round(statistics.median(s["cpu_to_first_ms"]
                                                           for s in samples), 1),
        "span_s": round(statistics.median(s["span_s"] for s in samples), 1),
        "python": run([python(), "--version"], timeout=30).stdout.strip(),
    }
    log(f"agent: {json.dumps(out)}")
    return out
