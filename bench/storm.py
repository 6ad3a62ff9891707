"""Registration storm: many simulated agents (threads, one real HTTP register call each,
retrying 429/5xx/connection errors with the agent's own backoff) against the stand-in
server, all at once and with start-up jitter. Loopback only; every loop is bounded."""

from __future__ import annotations

import http.client
import json
import random
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from common import AGENT_SRC, WORK, BenchError, DevServer

sys.path.insert(0, str(AGENT_SRC))
from redflag_agent import backoff  # noqa: E402  (the agent's own retry timing)

REQUEST_TIMEOUT_S = 30.0
MAX_ATTEMPTS = 12
RUN_DEADLINE_S = 180.0
REGISTER = "/api/v1/agents/register"
RETRYABLE = frozenset({429, 500, 502, 503, 504})


@dataclass
class Outcome:
    hostname: str
    result: str = "failed"  # registered | rejected | failed
    status: int | None = None
    attempts: int = 0
    done_at: float = 0.0
    sends: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)


def jitter_schedule(count: int, spread_s: float, seed: int) -> list[float]:
    """Pure: start-up delays, uniform over [0, spread_s); all zero without spread."""
    rng = random.Random(seed)
    return [rng.uniform(0.0, spread_s) if spread_s > 0 else 0.0 for _ in range(count)]


def per_second(times: list[float]) -> dict[int, int]:
    """Pure: requests per 1-s bucket (seconds since the start)."""
    return dict(sorted(Counter(int(t) for t in times).items()))


def percentile(values: list[float], q: float) -> float:
    """Pure: nearest-rank percentile of sorted values; 0.0 for none."""
    if not values:
        return 0.0
    return values[min(len(values) - 1, max(0, int(round(q * len(values))) - 1))]


def verdict(outcomes: list[Outcome], server_agents: list[dict], seats: int) -> dict:
    """Pure: what the server and the clients agree on, and whether the storm passed."""
    registered = {o.hostname for o in outcomes if o.result == "registered"}
    rejected = [o for o in outcomes if o.result == "rejected"]
    hostnames = [a.get("hostname") for a in server_agents]
    ids = [a.get("agent_id") for a in server_agents]
    extra = len(outcomes) - seats
    checks = {
        "registered_clients": len(registered),
        "rejected_clients": len(rejected),
        "rejected_with_400": sum(1 for o in rejected if o.status == 400),
        "failed_clients": sum(1 for o in outcomes if o.result == "failed"),
        "server_agents": len(server_agents),
        "unique_hostnames": len(set(hostnames)),
        "duplicates": len(hostnames) - len(set(hostnames)),
        "unique_agent_ids": len(set(ids)),
        "server_matches_clients": set(hostnames) == registered,
    }
    checks["ok"] = (
        checks["registered_clients"] == seats
        and checks["server_agents"] == seats
        and checks["unique_hostnames"] == seats
        and checks["unique_agent_ids"] == seats
        and checks["duplicates"] == 0
        and checks["rejected_clients"] == extra
        and checks["rejected_with_400"] == extra
        and checks["failed_clients"] == 0
        and checks["server_matches_clients"]
    )
    return checks


def _attempt(port: int, body: bytes, token: str) -> tuple[int | None, float | None, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
    try:
        conn.request("POST", REGISTER, body=body, headers={
            "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        after = resp.getheader("Retry-After")
        return resp.status, float(after) if after and after.isdigit() else None, ""
    except (OSError, http.client.HTTPException) as exc:
        return None, None, type(exc).__name__
    finally:
        conn.close()


def _agent(out: Outcome, *, delay: float, port: int, token: str, go: threading.Event,
           t0: list[float], seed: int) -> None:
    rng = random.Random(seed)
    body = json.dumps({"hostname": out.hostname, "os_type": "linux", "os_version": "bench",
                       "os_architecture": "x86_64", "agent_version": "0.2.0"}).encode()
    go.wait()
    time.sleep(delay)
    while out.attempts < MAX_ATTEMPTS:
        out.attempts += 1
        out.sends.append(time.monotonic() - t0[0])
        status, retry_after, error = _attempt(port, body, token)
        out.status = status
        if status == 200:
            out.result, out.done_at = "registered", time.monotonic() - t0[0]
            return
        if status is not None and status not in RETRYABLE:
            out.result, out.done_at = "rejected", time.monotonic() - t0[0]
            return
        out.errors[error or str(status)] += 1
        wait = backoff.retry_delay(out.attempts - 1, rng.random(), retry_after=retry_after)
        if time.monotonic() - t0[0] + wait > RUN_DEADLINE_S:
            break
        time.sleep(wait)
    out.done_at = time.monotonic() - t0[0]


def one_storm(mode: str, agents: int, extra: int, spread_s: float, seed: int) -> dict:
    total = agents + extra
    state = WORK / "storm" / mode
    state.mkdir(parents=True, exist_ok=True)
    (state / "devserver.db").unlink(missing_ok=True)
    # pinned to the 0.1.18 answers this storm judges (400 for a used-up token, no binding,
    # no rate limit); the stand-in's default generation is 0.2
    with DevServer(state, ("--generation", "0.1.18")) as server:
        token = server.mint(agents)
        port = int(server.url.rsplit(":", 1)[1])
        delays = jitter_schedule(total, spread_s, seed)
        outcomes = [Outcome(f"storm-{mode}-{i:04d}") for i in range(total)]
        go, t0 = threading.Event(), [0.0]
        threading.stack_size(256 * 1024)
        threads = [threading.Thread(target=_agent, daemon=True, args=(o,), kwargs={
            "delay": d, "port": port, "token": token, "go": go, "t0": t0,
            "seed": seed * 100003 + i}) for i, (o, d) in enumerate(zip(outcomes, delays))]
        for t in threads:
            t.start()
        t0[0] = time.monotonic()
        go.set()
        for t in threads:
            t.join(timeout=max(0.1, RUN_DEADLINE_S + REQUEST_TIMEOUT_S + 5
                               - (time.monotonic() - t0[0])))
        if any(t.is_alive() for t in threads):
            raise BenchError(f"storm {mode}: clients still running after the deadline")
        server_agents = server.agents()
    sends = [s for o in outcomes for s in o.sends]
    buckets = per_second(sends)
    errors: Counter = Counter()
    for o in outcomes:
        errors.update(o.errors)
    done = [o.done_at for o in outcomes if o.result == "registered"]
    latency = sorted(o.done_at - o.sends[-1] for o in outcomes if o.sends)
    result = {
        "mode": mode, "agents": agents, "extra": extra, "spread_s": spread_s,
        "requests": len(sends), "peak_rps": max(buckets.values()) if buckets else 0,
        "time_all_registered_s": round(max(done), 2) if done else None,
        "time_all_answered_s": round(max(o.done_at for o in outcomes), 2),
        "peak_answered_ps": max(per_second([o.done_at for o in outcomes]).values()),
        "latency_p50_s": round(percentile(latency, 0.5), 3),
        "latency_p95_s": round(percentile(latency, 0.95), 3),
        "retries": dict(errors), "buckets": buckets,
    }
    result.update(verdict(outcomes, server_agents, agents))
    return result


def bench(agents: int, extra: int, spread_s: float, seed: int = 8, log=print) -> dict:
    runs = []
    for mode, spread in (("together", 0.0), ("jitter", spread_s)):
        log(f"storm: {agents}+{extra} agents, {mode} ...")
        r = one_storm(mode, agents, extra, spread, seed)
        log(f"storm: {mode}: peak {r['peak_rps']} req/s, all registered in "
            f"{r['time_all_registered_s']} s, {r['requests']} requests, retries {r['retries']},"
            f" latency p50/p95 {r['latency_p50_s']}/{r['latency_p95_s']} s,"
            f" server agents {r['server_agents']}, duplicates {r['duplicates']}, rejected "
            f"{r['rejected_with_400']}/{extra}, ok={r['ok']}")
        runs.append(r)
    return {"runs": runs}


if __name__ == "__main__":
    bench(int(sys.argv[1]) if len(sys.argv) > 1 else 1000, 50, 10.0)
