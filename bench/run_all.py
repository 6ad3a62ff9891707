#!/usr/bin/env python3
"""Run the benchmarks and write bench/results/RESULTS.md and rollout.png.

    .venv/bin/python bench/run_all.py                          # everything (make bench)
    .venv/bin/python bench/run_all.py --only rollout --sizes 1,5
    .venv/bin/python bench/run_all.py --only agent,storm

Parts not run keep their previous figures in results.json (each part carries its own time).
Only containers named rf-bench-* are created and removed; all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import json
import os
import platform
import shlex
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import agent_part  # noqa: E402
import podfleet  # noqa: E402
import report  # noqa: E402
import rollout  # noqa: E402
import storm  # noqa: E402
from common import RESULTS, WORK, BenchError, build_zipapp, run  # noqa: E402

PARTS = ("agent", "storm", "rollout")  # quietest first: rollout loads the machine most


def _csv(kind, allowed=None):
    def parse(text: str) -> list:
        try:
            items = [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            items = []
        if not items or (allowed and any(i not in allowed for i in items)):
            hint = f"one or more of {', '.join(allowed)}" if allowed else "numbers like 1,5,10"
            raise argparse.ArgumentTypeError(f"{text!r}: give a comma-separated list, {hint}")
        return items
    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", type=_csv(str, PARTS), default=list(PARTS),
                   help="parts to run: agent,storm,rollout (default all)")
    p.add_argument("--sizes", type=_csv(int), default=[1, 5, 10, 20],
                   help="rollout fleet sizes (default 1,5,10,20)")
    p.add_argument("--serial", default="100%",
                   help="site.yml batch size (redflag_rollout_serial; default 100%%)")
    p.add_argument("--transport", choices=("ssh", "podman"), default="ssh",
                   help="how Ansible reaches the containers: ssh (sshd in each container, "
                        "pipelining; default) or podman (podman exec, no pipelining)")
    p.add_argument("--agent-runs", type=int, default=9, help="agent_bench.py runs (default 9)")
    p.add_argument("--cpu-runs", type=int, default=3, help="CPU-over-10-check-ins runs")
    p.add_argument("--storm-agents", type=int, default=1000)
    p.add_argument("--storm-extra", type=int, default=50,
                   help="agents beyond the token's seats, all to be refused (default 50)")
    p.add_argument("--jitter", type=float, default=10.0, help="start-up spread, seconds")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--render-only", action="store_true",
                   help="measure nothing: rewrite RESULTS.md and rollout.png from results.json")
    args = p.parse_args(argv)
    if any(n < 1 or n > 50 for n in args.sizes):
        p.error("--sizes: each size must be between 1 and 50")
    if min(args.agent_runs, args.cpu_runs, args.storm_agents) < 1 or args.storm_extra < 0:
        p.error("--agent-runs, --cpu-runs and --storm-agents must be >= 1, --storm-extra >= 0")
    if not 0 <= args.jitter <= 120:
        p.error("--jitter must be between 0 and 120 seconds")
    return args


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def machine() -> dict:
    mem_kib = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                       if line.startswith("MemTotal:")))
    ansible = run(["ansible", "--version"], timeout=60, check=False).stdout.splitlines()
    podman = run(["podman", "--version"], timeout=60, check=False).stdout.strip()
    return {"cpus": os.cpu_count(), "mem_gib": round(mem_kib / 2**20, 1),
            "kernel": f"{platform.system()} {platform.release()}",
            "ansible": ansible[0].split("[core ")[-1].rstrip("]") if ansible else "?",
            "podman": podman or "podman ?"}


def load_previous(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        print(f"run_all: {path} is not valid JSON; starting a fresh one", file=sys.stderr)
        return {}


def render_only(out: Path) -> int:
    results = load_previous(out / "results.json")
    if not results:
        print(f"run_all: no results in {out / 'results.json'}; run the benchmarks first",
              file=sys.stderr)
        return 1
    (out / "RESULTS.md").write_text(report.markdown(results))
    if "rollout" in results:
        report.plot(results["rollout"], out / "rollout.png")
    print(f"run_all: rewrote {out / 'RESULTS.md'}")
    return 0


def _stop(signum: int, _frame: object) -> None:
    raise SystemExit(f"run_all: stopped by signal {signum}; cleaning up")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render_only:
        return render_only(args.out)
    WORK.mkdir(parents=True, exist_ok=True)
    # One run at a time: a second one would remove the first one's containers.
    lock = open(WORK / ".run_all.lock", "w")  # noqa: SIM115 (held until exit)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("run_all: another bench/run_all.py is running; wait for it to finish",
              file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _stop)
    started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    store = args.out / "results.json"
    results = load_previous(store)
    results["machine"] = machine()
    given = sys.argv[1:] if argv is None else argv
    results["command"] = " ".join(["bench/run_all.py", *(shlex.quote(a) for a in given)])
    try:
        pyz = build_zipapp(WORK / "dist")
        for part in (p for p in PARTS if p in args.only):
            stamp = {"at": now(), "load": load()}
            t0 = time.monotonic()
            if part == "agent":
                sec = agent_part.bench(args.agent_runs, args.cpu_runs, pyz)
            elif part == "storm":
                sec = storm.bench(args.storm_agents, args.storm_extra, args.jitter)
                for r in sec["runs"]:
                    r["buckets"] = {str(k): v for k, v in r["buckets"].items()}
            else:
                podfleet.remove_all_ours()
                sec = rollout.bench(args.sizes, pyz, args.serial, args.transport)
            sec.update(stamp, took_s=round(time.monotonic() - t0, 1))
            results[part] = sec
            results["written"] = now()
            store.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
            (args.out / "RESULTS.md").write_text(report.markdown(results))
            if part == "rollout":
                report.plot(sec, args.out / "rollout.png")
            print(f"run_all: {part} done in {time.monotonic() - t0:.0f} s", flush=True)
    except BenchError as exc:
        print(f"run_all: {exc}", file=sys.stderr)
        return 1
    finally:
        if "rollout" in args.only:
            podfleet.remove_all_ours()
    print(f"run_all: all done in {time.monotonic() - started:.0f} s; "
          f"see {args.out / 'RESULTS.md'}")
    failed = [r for r in results.get("storm", {}).get("runs", []) if not r["ok"]]
    failed += [r for r in results.get("rollout", {}).get("rows", [])
               if "error" in r or r["role_rerun_changed"] != 0 or not r["registered_ok"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
