"""Rollout benchmark: first converge and idempotent re-run of playbooks/site.yml (the real
role) against the baseline playbook, on the same fresh systemd containers, per fleet size."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import podfleet
import recap
from common import REPO, WORK, BenchError, python, run, tool_env

DEVSERVER = REPO / "molecule" / "shared" / "devserver.py"
SITE = REPO / "playbooks" / "site.yml"
BASELINE = REPO / "bench" / "baseline.yml"
PLAYBOOK_TIMEOUT_S = 900
# Re-runs are idempotent, so they are repeated (baseline and role interleaved) and quoted
# as medians; a first converge needs a fresh fleet and is measured once per size.
RERUNS = 3


def inventory(names: list[str], url: str, token_file: Path, artifact: Path,
              *, ports: dict[str, int] | None = None, key: Path | None = None) -> dict:
    """Pure: the inventory (YAML-compatible JSON). The token stays in its file; Ansible
    reads it with a lookup, so it is never on argv or in this inventory. With ports, the
    hosts are reached over SSH on 127.0.0.1 (pipelining, ControlPersist from ansible.cfg);
    without, with the podman connection."""
    common = {
        "ansible_python_interpreter": "/usr/bin/python3",
        # root already (podman exec, or SSH as root); the image has no sudo.
        "ansible_become": False,
        "redflag_agent_server_url": url,
        "redflag_agent_registration_token":
            "{{ lookup('ansible.builtin.file', '" + str(token_file) + "') }}",
        "rf_bench_artifact": str(artifact),
        # Both playbooks ship the same prebuilt bytes: the source tree may change between
        # the first run and the re-run while others work on it.
        "redflag_agent_artifact": str(artifact),
        "redflag_agent_version": artifact.name[len("redflag-agent-"):-len(".pyz")],
    }
    if ports:
        hosts = {n: {"ansible_host": "127.0.0.1", "ansible_port": ports[n]} for n in names}
        common.update({
            "ansible_connection": "ssh",
            "ansible_user": "root",
            "ansible_ssh_private_key_file": str(key),
            # Throw-away containers on loopback that share one host key.
            "ansible_ssh_host_key_checking": False,
            "ansible_ssh_common_args": "-o StrictHostKeyChecking=no "
                                       "-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
        })
    else:
        hosts = {n: {} for n in names}
        common["ansible_connection"] = "containers.podman.podman"
    return {"all": {"children": {"redflag_agents": {"hosts": hosts, "vars": common}}}}


def _playbook(label: str, inv: Path, playbook: Path, logdir: Path,
              extra: tuple[str, ...] = ()) -> dict:
    # profile_tasks on both playbooks: per-task times in the logs, same overhead for both.
    env = dict(tool_env(), ANSIBLE_CALLBACKS_ENABLED="ansible.posix.profile_tasks")
    t0 = time.monotonic()
    res = run(["ansible-playbook", "-i", str(inv), str(playbook), *extra],
              timeout=PLAYBOOK_TIMEOUT_S, check=False, env=env)
    wall = time.monotonic() - t0
    (logdir / f"{label}.log").write_text(res.stdout + res.stderr)
    hosts = recap.parse(res.stdout)
    tot = recap.totals(hosts)
    if res.returncode != 0 or tot["failed"] or tot["unreachable"]:
        raise BenchError(f"{label}: ansible-playbook exit {res.returncode}, recap {tot}; "
                         f"see {logdir / (label + '.log')}")
    return {"wall_s": round(wall, 2), "changed": tot["changed"], "hosts": len(hosts),
            "tasks_per_host": round(tot["ok"] / max(1, len(hosts)), 1),
            "slowest": recap.task_times(res.stdout)[:6]}


def _warm(inv: Path) -> None:
    """Untimed: every host answered just before each timed run, so each playbook finds
    the same state (SSH control masters open, python warm in the page cache)."""
    run(["ansible", "redflag_agents", "-i", str(inv), "-m", "ansible.builtin.ping"],
        timeout=300)


def one_size(size: int, artifact: Path, serial: str, transport: str) -> dict:
    names = podfleet.names_for(size)
    base = WORK / "rollout" / f"n{size}"
    logdir = base / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    state = base / "devserver"
    podfleet.remove(names)  # leftovers of an interrupted run
    ports = {n: podfleet.free_port() for n in names} if transport == "ssh" else None
    image = podfleet.sshd_image() if transport == "ssh" else podfleet.IMAGE
    try:
        boot = podfleet.create(names, image, ports)
        started = json.loads(run([python(), str(DEVSERVER), "start", "--state-dir", str(state)],
                                 timeout=60).stdout)
        run([python(), str(DEVSERVER), "mint", "--state-dir", str(state), "--out",
             "registration_token", "--seats", str(size)], timeout=60)
        inv = base / "inventory.yml"
        inv.write_text(json.dumps(inventory(
            names, started["url"], state / "registration_token", artifact, ports=ports,
            key=podfleet.ssh_key() if ports else None), indent=1))
        site_extra = ("-e", f"redflag_rollout_serial={serial}")
        # Interleaved so both see the same load (agents idle in the containers).
        plan = [("baseline-first", BASELINE, ()), ("role-first", SITE, site_extra)]
        for i in range(1, RERUNS + 1):
            plan += [(f"baseline-rerun{i}", BASELINE, ()), (f"role-rerun{i}", SITE, site_extra)]
        runs = {}
        for label, playbook, extra in plan:
            _warm(inv)
            runs[label] = _playbook(label, inv, playbook, logdir, extra)
        b1, r1 = runs["baseline-first"], runs["role-first"]
        b_re = [runs[f"baseline-rerun{i}"] for i in range(1, RERUNS + 1)]
        r_re = [runs[f"role-rerun{i}"] for i in range(1, RERUNS + 1)]
        agents = json.loads(run([python(), str(DEVSERVER), "agents", "--state-dir",
                                 str(state)], timeout=60).stdout)
        hostnames = [a.get("hostname") for a in agents]
        return {
            "n": size, "serial": serial, "transport": transport, "boot_s": round(boot, 1),
            "baseline_first_s": b1["wall_s"], "role_first_s": r1["wall_s"],
            "baseline_rerun_s": round(statistics.median(r["wall_s"] for r in b_re), 2),
            "role_rerun_s": round(statistics.median(r["wall_s"] for r in r_re), 2),
            "baseline_rerun_all_s": [r["wall_s"] for r in b_re],
            "role_rerun_all_s": [r["wall_s"] for r in r_re],
            "role_first_changed": r1["changed"],
            "role_rerun_changed": max(r["changed"] for r in r_re),
            "baseline_rerun_changed": max(r["changed"] for r in b_re),
            "role_tasks_per_host": r1["tasks_per_host"],
            "role_first_slowest": r1["slowest"], "role_rerun_slowest": r_re[-1]["slowest"],
            "baseline_tasks_per_host": b1["tasks_per_host"],
            "registered": len(agents), "registered_ok": sorted(hostnames) == sorted(names),
        }
    finally:
        run([python(), str(DEVSERVER), "stop", "--state-dir", str(state)], timeout=60,
            check=False)
        podfleet.remove(names)


def ratios(row: dict) -> dict:
    """Pure: role/baseline ratios for one size."""
    return {
        "first_ratio": round(row["role_first_s"] / row["baseline_first_s"], 2),
        "rerun_ratio": round(row["role_rerun_s"] / row["baseline_rerun_s"], 2),
    }


def bench(sizes: list[int], artifact: Path, serial: str, transport: str = "ssh",
          log=print) -> dict:
    podfleet.require_image()
    rows = []
    for size in sizes:
        log(f"rollout: N={size} over {transport} ...")
        try:
            row = one_size(size, artifact, serial, transport)
        except BenchError as exc:
            # Keep the other sizes' figures; the report shows what failed here.
            log(f"rollout: N={size} failed: {exc}")
            rows.append({"n": size, "error": str(exc)})
            continue
        row.update(ratios(row))
        log(f"rollout: N={size}: first {row['role_first_s']} s vs {row['baseline_first_s']} s"
            f" ({row['first_ratio']}x), re-run {row['role_rerun_s']} s vs "
            f"{row['baseline_rerun_s']} s ({row['rerun_ratio']}x), re-run changed="
            f"{row['role_rerun_changed']}, registered {row['registered']}/{size}")
        rows.append(row)
    return {"rows": rows, "serial": serial, "transport": transport, "reruns": RERUNS}
