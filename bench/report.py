"""Render results.json as RESULTS.md (pure text) and rollout.png (matplotlib)."""

from __future__ import annotations

from pathlib import Path

_TRANSPORT = {"ssh": "SSH on 127.0.0.1 (one sshd per container, ControlPersist)",
              "podman": "the podman connection (`podman exec`, no pipelining)"}
FIRST_TARGET = 2.0
RERUN_TARGET = 1.5


def _yes(ok: bool) -> str:
    return "yes" if ok else "**NO**"


def _miss(value: float, target: float) -> str:
    if value <= target:
        return "met"
    return f"missed by {value / target:.1f}x ({value:.2f}x vs {target}x)"


def rollout_md(sec: dict) -> list[str]:
    out = [
        "## Rollout: playbooks/site.yml (the role) vs bench/baseline.yml",
        "",
        f"Measured {sec['at']}, load average at start {sec['load']}. Fresh containers per N; "
        f"site.yml with `redflag_rollout_serial={sec['serial']}` (all hosts in one batch, as "
        "the baseline); both playbooks ship the same prebuilt zipapp "
        "(`redflag_agent_artifact`), use the repository's ansible.cfg (forks 50, pipelining) "
        f"and reach the containers over {_TRANSPORT.get(sec.get('transport', 'podman'))}. "
        "An untimed `ansible -m ping` precedes each timed run. Wall time of "
        "`ansible-playbook`, seconds; boot = start the containers until systemd (and sshd) run. "
        "The first converge is measured once per fresh fleet; the idempotent re-run "
        f"{sec.get('reruns', 1)} times per playbook, interleaved, and quoted as the median.",
        "",
        "| N | boot | baseline first | role first | ratio (<= 2.0) | baseline re-run (median) | "
        "role re-run (median) | ratio (<= 1.5) | re-run changed (most) | "
        "tasks/host role : baseline | registered |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    errors = [r for r in sec["rows"] if "error" in r]
    rows = [r for r in sec["rows"] if "error" not in r]
    for r in rows:
        out.append(
            f"| {r['n']} | {r['boot_s']} | {r['baseline_first_s']} | {r['role_first_s']} | "
            f"{r['first_ratio']} {_yes(r['first_ratio'] <= FIRST_TARGET)} | "
            f"{r['baseline_rerun_s']} | {r['role_rerun_s']} | "
            f"{r['rerun_ratio']} {_yes(r['rerun_ratio'] <= RERUN_TARGET)} | "
            f"{r['role_rerun_changed']} {_yes(r['role_rerun_changed'] == 0)} | "
            f"{r['role_tasks_per_host']} : {r['baseline_tasks_per_host']} | "
            f"{r['registered']}/{r['n']} {_yes(r['registered_ok'])} |")
    for r in errors:
        out.append(f"| {r['n']} | **failed**: {r['error'].splitlines()[0]} |" + " |" * 9)
    if rows:
        worst_first = max(r["first_ratio"] for r in rows)
        worst_rerun = max(r["rerun_ratio"] for r in rows)
        out += ["",
                f"Worst first-converge ratio {worst_first}x: target "
                f"{_miss(worst_first, FIRST_TARGET)}. Worst re-run ratio {worst_rerun}x: "
                f"target {_miss(worst_rerun, RERUN_TARGET)}.",
                "",
                f"What the extra time buys: the role runs {rows[-1]['role_tasks_per_host']:g} "
                f"tasks per host on a first converge against the baseline's "
                f"{rows[-1]['baseline_tasks_per_host']:g}: all input checks in one local task, "
                "one shell probe of the host, user + directories + unit in one module, the copy "
                "checked against its sha256 and switched in atomically, the agent's status, "
                "migration, enrollment decision and config in one module, and the service "
                "step that waits until the agent is registered. Each task pays a fixed cost "
                "(a controller worker, an SSH round trip, a Python start on the host), so the "
                "ratio follows the module count and stays roughly flat in N. See ../NOTES.md.",
                "", "![rollout time against N](rollout.png)"]
        big = max(rows, key=lambda r: r["n"])
        for key, what in (("role_first_slowest", "first converge"),
                          ("role_rerun_slowest", "re-run")):
            if big.get(key):
                tasks = "; ".join(f"{name} {secs:.1f} s" for name, secs in big[key])
                out += ["", f"Slowest role tasks, {what} at N={big['n']} (profile_tasks, "
                            f"wall per task across all hosts): {tasks}."]
    return out


def agent_md(sec: dict) -> list[str]:
    out = [
        "## Agent (bench/agent_bench.py plus CPU over 10 check-ins)",
        "",
        f"Measured {sec['at']}, load average at start {sec['load']}; {sec['python']}, the "
        f"built zipapp; medians of {sec['runs']} runs (CPU: {sec['cpu_runs']} runs, "
        "check_in_interval 1 s against the stand-in server; /proc/PID/stat utime+stime, "
        "10 ms clock ticks).",
        "",
        "| measure | median | target | ok |",
        "|---|---:|---:|---|",
    ]
    for r in sec["rows"]:
        out.append(f"| {r['measure']} | {r['median']:.1f} | <= {r['target']:g} | "
                   f"{_yes(r['ok'])} |")
    out += [
        f"| CPU from start to first check-in, incl. registration (ms) | "
        f"{sec['cpu_to_first_checkin_ms']} | none set | - |",
        f"| CPU over the next 10 check-ins (ms; {sec['span_s']} s wall) | "
        f"{sec['cpu_10_checkins_ms']} | none set | - |",
        f"| CPU per check-in (ms) | {sec['cpu_per_checkin_ms']} | none set | - |",
    ]
    return out


def storm_md(sec: dict) -> list[str]:
    out = [
        "## Registration storm (stand-in server, threads in one client process)",
        "",
        f"Measured {sec['at']}, load average at start {sec['load']}. One token with "
        "as many seats as agents; the extra agents with the same token start in the same storm "
        "and must all be refused (400). Retries on 429/5xx/connection errors use the agent's "
        "backoff (redflag_agent.backoff). Requests per second are counted client-side in "
        "1-s buckets; the stand-in server runs without a rate limit (its default).",
        "",
        "| start | agents + extra | requests | peak req/s | peak answers/s | all registered "
        "(s) | latency p50 / p95 (s) | retries | server agents | unique hostnames | "
        "duplicates | extra refused | ok |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in sec["runs"]:
        start = "together" if r["spread_s"] == 0 else f"jitter 0-{r['spread_s']:g} s"
        retries = ", ".join(f"{k} {v}" for k, v in sorted(r["retries"].items())) or "none"
        out.append(
            f"| {start} | {r['agents']} + {r['extra']} | {r['requests']} | {r['peak_rps']} | "
            f"{r['peak_answered_ps']} | {r['time_all_registered_s']} | "
            f"{r['latency_p50_s']} / {r['latency_p95_s']} | {retries} | "
            f"{r['server_agents']} | {r['unique_hostnames']} | {r['duplicates']} | "
            f"{r['rejected_with_400']}/{r['extra']} | {_yes(r['ok'])} |")
    return out


def markdown(results: dict) -> str:
    machine = results.get("machine", {})
    lines = [
        "# Benchmark results",
        "",
        f"Written by `bench/run_all.py` ({results.get('command', '')}) on "
        f"{results.get('written', '?')}. Machine: {machine.get('cpus', '?')} CPUs, "
        f"{machine.get('mem_gib', '?')} GiB, {machine.get('kernel', '?')}, "
        f"ansible-core {machine.get('ansible', '?')}, {machine.get('podman', '?')}.",
        "",
        "**The machine is shared**: other engineers' test containers and test suites may run "
        "while these numbers are taken (each section gives the load average at its start). "
        "Absolute times are noisy; quote the ratios and medians, and re-run `make bench` on a "
        "quiet machine for absolute figures. Sections measured in different runs carry their "
        "own time.",
        "",
    ]
    took = {k: results[k].get("took_s") for k in ("agent", "storm", "rollout") if k in results}
    if took and all(took.values()):
        lines += [f"Time taken: {sum(took.values()) / 60:.1f} min in all ("
                  + ", ".join(f"{k} {v:.0f} s" for k, v in took.items())
                  + "), plus about a minute to build the sshd test image the first time.", ""]
    for key, render in (("rollout", rollout_md), ("agent", agent_md), ("storm", storm_md)):
        if key in results:
            lines += render(results[key]) + [""]
        else:
            lines += [f"## {key}", "", "Not measured yet: `python bench/run_all.py "
                      f"--only {key}`.", ""]
    lines += ["Settings and how to run the same playbooks from AWX / Ansible Automation "
              "Platform: [../NOTES.md](../NOTES.md).", ""]
    return "\n".join(lines)


def plot(rollout: dict, path: Path) -> None:
    # Imported here: only the plot needs the bench extra, the table does not.
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    rows = sorted((r for r in rollout["rows"] if "error" not in r), key=lambda r: r["n"])
    ns = [r["n"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5.4))
    for key, label, style, color in (
        ("role_first_s", "role: first converge", "o-", "C0"),
        ("baseline_first_s", "baseline: first run", "o--", "C0"),
        ("role_rerun_s", "role: re-run", "s-", "C1"),
        ("baseline_rerun_s", "baseline: re-run", "s--", "C1"),
    ):
        ax1.plot(ns, [r[key] for r in rows], style, color=color, label=label)
    ax1.set(xlabel="hosts (N systemd containers)", ylabel="wall time (s)",
            title="Rollout wall time against fleet size", xticks=ns)
    ax1.set_ylim(bottom=0)
    ax1.grid(alpha=0.3)
    ax1.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize="small")
    ax2.plot(ns, [r["first_ratio"] for r in rows], "o-", color="C0",
             label="first converge / baseline")
    ax2.plot(ns, [r["rerun_ratio"] for r in rows], "s-", color="C1",
             label="re-run / baseline re-run")
    ax2.axhline(FIRST_TARGET, color="C0", ls=":", label=f"target first <= {FIRST_TARGET}x")
    ax2.axhline(RERUN_TARGET, color="C1", ls=":", label=f"target re-run <= {RERUN_TARGET}x")
    ax2.set(xlabel="hosts (N systemd containers)", ylabel="ratio (role / baseline)",
            title="Role cost relative to the baseline", xticks=ns)
    ax2.set_ylim(bottom=0)
    ax2.grid(alpha=0.3)
    # Below the axes: inside, it hides either a ratio line or a target line.
    ax2.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize="small")
    fig.suptitle(f"redflag-provision rollout benchmark, {rollout.get('transport', 'podman')} "
                 f"transport ({rollout['at']}, shared 2-core machine)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
