"""Canary rollouts with playbooks/site.yml (canary 1, then batches of 2: two batches).

Run in order: the fleet on X; broken Y fails the canary, which goes back to X with its
identity while nobody else is touched; good Z goes through every batch; W, whose config
X... Z cannot read, is refused a rollback. Figures (wall time of each rollout, rollback
time per host) go to $RF_FIGURES_FILE when set.
"""

from __future__ import annotations

import json
import os
import re
import time

import pytest
import rfcheck
import testinfra

X, Y, Z, W = "0.4.0", "0.4.1", "0.4.2", "0.4.3"
HOSTS = ["canary-1", "canary-2", "canary-3"]
SITE = "playbooks/site.yml"
# A healthy agent checks in within a second or two of its start; Y and W never do, so
# this budget is what the canary's failure costs (poll_delays: 7.75 s).
GATE = {"redflag_agent_verify_retries": 4, "redflag_agent_verify_delay": 2}
ROLLBACK_RE = re.compile(r"(canary-\d) (\S+) -> (\S+): (\w+), ([0-9.]+) s")


def _host(name: str):
    return testinfra.get_host("podman://" + rfcheck.container(name))


def _artifact(version: str) -> str:
    return f"{os.environ['MOLECULE_EPHEMERAL_DIRECTORY']}/artifacts/redflag-agent-{version}.pyz"


def _snapshot(name: str) -> dict:
    """What 'untouched' means: version link, config bytes, the running process."""
    host = _host(name)
    props = rfcheck.unit_props(host, "InvocationID", "ExecMainPID", "ExecMainStartTimestamp")
    return {
        "current": rfcheck.run_ok(host, "readlink /opt/redflag-agent/current").strip(),
        "config_sha256": rfcheck.run_ok(host, f"sha256sum {rfcheck.CONFIG}").split()[0],
        **props,
    }


def _rollout(version: str, **extra) -> dict:
    """site.yml with canary 1 and batches of 2; returns rc, output, recap, seconds."""
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    t0 = time.monotonic()
    rc, output, recap = rfcheck.run_playbook(
        SITE,
        {
            "redflag_rollout_canary": 1,
            "redflag_rollout_serial": 2,
            "redflag_agent_version": version,
            "redflag_agent_artifact": _artifact(version),
            **GATE,
            **extra,
        },
    )
    # The YAML callback wraps long messages: compare text with whitespace collapsed.
    return {"rc": rc, "output": output, "text": " ".join(output.split()), "recap": recap,
            "started": started, "seconds": round(time.monotonic() - t0, 1)}  # fmt: skip


def _gate(text: str) -> str:
    """The gate's message, once (Ansible prints a failure twice)."""
    start = text.index("rollout stopped at batch 1 of 2")
    end = text.find("Origin:", start)
    return text[start : end if end > 0 else None]


def _figures(key: str, value) -> None:
    path = os.environ.get("RF_FIGURES_FILE")
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps({key: value}) + "\n")


def _checked_in_since(name: str, since: str, version: str) -> dict:
    host = _host(name)

    def fresh():
        status = rfcheck.agent_status(host)
        ok = status.get("agent_version") == version and (status.get("last_checkin") or "") >= since
        return status if ok else None

    return rfcheck.wait_for(fresh, 30, interval=0.5, what=f"{name} to check in on {version}")


@pytest.fixture(scope="module")
def fleet() -> dict:
    """Shared between the steps: identities and snapshots."""
    return {}


def test_fleet_runs_x(fleet):
    fleet["ids"] = {}
    for name in HOSTS:
        status = rfcheck.wait_for(
            lambda n=name: rfcheck.checked_in_status(_host(n)), 30, what=f"{name} check-in"
        )
        assert status["agent_version"] == X
        fleet["ids"][name] = status["agent_id"]
    fleet["before_y"] = {name: _snapshot(name) for name in HOSTS}
    assert len(set(fleet["ids"].values())) == len(HOSTS)


def test_broken_y_stops_at_the_canary_and_rolls_it_back(fleet):
    run = _rollout(Y)
    fleet["y"] = run
    out = run["text"]
    _figures("rollout_y_seconds", run["seconds"])
    assert run["rc"] != 0, "site.yml succeeded although Y never checks in"
    assert "batch 1 of 2 (canary): canary-1" in out
    assert "batch 2 of 2" not in out, "the rollout went on past the canary"
    gate = _gate(out)
    assert "canary-1 failed the health gate" in gate
    assert "no successful check-in since the start" in gate, "the reason is not named"
    rollbacks = ROLLBACK_RE.findall(gate)
    assert [r[:4] for r in rollbacks] == [("canary-1", Y, X, "healthy")], gate[:800]
    _figures("rollback_seconds_per_host", {r[0]: float(r[4]) for r in rollbacks})
    assert "Later batches were not touched (canary-2, canary-3)" in gate


def test_the_summary_has_one_row_per_batch(fleet):
    out = fleet["y"]["output"]
    rows = [
        " ".join(line.split())
        for line in out.splitlines()
        if re.search(r"\b[12] of 2\s+(STOPPED|passed|not started)", line)
    ]
    assert len(rows) == 2, rows
    assert re.match(r"1 of 2 STOPPED canary-1 1/1 0/1 canary-1\(healthy\) [0-9.]+$", rows[0])
    assert rows[1] == "2 of 2 not started canary-2,canary-3 - - - -"


def test_the_canary_is_back_on_x_with_its_identity(fleet):
    status = _checked_in_since("canary-1", fleet["y"]["started"], X)
    assert status["agent_id"] == fleet["ids"]["canary-1"], "the identity changed"
    host = _host("canary-1")
    assert host.service("redflag-agent").is_running
    assert rfcheck.run_ok(host, "readlink /opt/redflag-agent/current").strip() == X
    assert host.file(f"/opt/redflag-agent/{Y}/redflag-agent.pyz").exists, "Y should stay kept"
    agents = {a["hostname"]: a["agent_id"] for a in rfcheck.server_agents()}
    assert agents == {rfcheck.container(n): fleet["ids"][n] for n in HOSTS}, (
        "a host registered again"
    )


def test_no_other_host_was_touched(fleet):
    recap = fleet["y"]["recap"]
    for name in HOSTS[1:]:
        assert name not in recap, f"{name} was in the play"
        assert _snapshot(name) == fleet["before_y"][name], f"{name} changed"


def test_good_z_rolls_out_through_every_batch(fleet):
    run = _rollout(Z)
    _figures("rollout_z_seconds", run["seconds"])
    out = run["text"]
    assert run["rc"] == 0, run["output"][-3000:]
    for header in ("batch 1 of 2 (canary): canary-1", "batch 2 of 2: canary-2, canary-3"):
        assert header in out
    rows = [" ".join(line.split()) for line in run["output"].splitlines() if " passed " in line]
    assert [re.sub(r" [0-9.]+$", "", r) for r in rows if re.match(r"[12] of 2 passed", r)] == [
        "1 of 2 passed canary-1 1/1 1/1 -",
        "2 of 2 passed canary-2,canary-3 2/2 2/2 -",
    ], rows
    for name in HOSTS:
        status = _checked_in_since(name, run["started"], Z)
        assert status["agent_id"] == fleet["ids"][name]
        assert run["recap"][name]["failed"] == 0


def _snapshot_others(_fleet) -> dict:
    return {name: _snapshot(name) for name in HOSTS[1:]}


def test_a_rollback_that_would_lose_the_config_is_refused(fleet):
    # W's config migration (schema 6 -> 7) runs in the role's configure step, which the
    # running agent's lock refuses (exit 75); stopped first, W migrates and writes schema 7.
    rfcheck.run_ok(_host("canary-1"), f"systemctl stop {rfcheck.UNIT}")
    before = _snapshot_others(fleet)
    run = _rollout(W, redflag_agent_verify_retries=2)
    out = run["text"]
    _figures("rollout_w_seconds", run["seconds"])
    assert run["rc"] != 0
    gate = _gate(out)
    assert [r[:4] for r in ROLLBACK_RE.findall(gate)] == [("canary-1", W, Z, "refused")]
    assert "config schema 7 was written by a newer redflag-agent" in gate
    assert "stays on the newer version" in gate
    host = _host("canary-1")
    assert rfcheck.run_ok(host, "readlink /opt/redflag-agent/current").strip() == W
    assert str(rfcheck.read_config(host)["version"]) == "7"
    assert rfcheck.read_config(host)["agent_id"] == fleet["ids"]["canary-1"]
    assert _snapshot_others(fleet) == before, "a later batch was touched"
