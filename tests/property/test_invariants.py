"""The agent's invariants over generated host states (issue 15).

For each generated state, in a temporary REDFLAG_ROOT, the real zipapp runs as the unit runs
it: `migrate`, `run` against the stand-in server (SIGTERM right after its first check-in, or
after 2 s), `migrate` again. Then:
  1. at most one backup per real migration, none when nothing is migrated;
  2. the second `migrate` writes nothing (paths, bytes, modes, mtimes), except the bounded
     retry of a migration that failed (it reports the failure), which settles within
     MAX_ATTEMPTS further runs;
  3. every identity that could authenticate before is still there after: in config.json, in a
     backup, or untouched where it was;
  4. no token in any output, nor in any file but config.json, the backups and files the
     state already held unchanged (migration_state/status never);
  5. exit codes only from the documented set, never a traceback;
  6. a host that held a complete identity that authenticates never registers again.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import currently_in_test_context, event, example, given

from .conftest import STATS
from .hosts import (
    BACKUPS,
    CONFIG,
    DOCUMENTED_EXITS,
    MAX_ATTEMPTS,
    CurrentSpec,
    HostState,
    IdentitySpec,
    LegacySpec,
    MigrationStateSpec,
    Ran,
    World,
    backup_names,
    build,
    host_states,
    http_json,
    run_agent,
    run_service,
    tokens_in_config,
    tree,
    tree_diff,
)

pytestmark = pytest.mark.property


# States that hit a counterexample already written down (xfail strict) in
# test_counterexamples.py: the property skips only that invariant for them, so the search
# goes on. Remove an entry when its counterexample turns into an XPASS failure (fixed).
KNOWN: dict[int, tuple[Callable[[HostState], bool], ...]] = {}


def known(invariant: int, state: HostState, exempt: bool) -> bool:
    return exempt and any(pred(state) for pred in KNOWN.get(invariant, ()))


MIGRATING = re.compile(r"^\[INFO\] \[[\w.]*migration\] migrating: ", re.M)


def note(text: str) -> None:
    """hypothesis.event(), also callable from the plain table tests."""
    if currently_in_test_context():
        event(text)


def agent_count(world: World) -> int:
    return len(http_json(f"{world.server_url}/admin/agents")["agents"])


def report_of(ran: Ran) -> dict[str, Any]:
    try:
        rep = json.loads(ran.out)
    except ValueError:
        return {}
    return rep if isinstance(rep, dict) else {}


def show(runs: list[Ran]) -> str:
    return "\n".join(f"--- {r.what}: exit {r.rc}\n{r.out[-1500:]}{r.err[-3000:]}" for r in runs)


def identity_files(t: dict[str, tuple[Any, ...]]) -> list[bytes]:
    """config.json and every file in a complete backup (a `.partial` one does not count)."""
    complete = tuple(f"{BACKUPS}/{name}/" for name in backup_names(t))
    return [info[3] for rel, info in t.items()
            if info[0] == "f" and (rel == CONFIG or rel.startswith(complete))]


def holds_identity(data: bytes, agent_id: str, refresh: str) -> bool:
    try:
        cfg = json.loads(data)
    except ValueError:
        return False
    return isinstance(cfg, dict) and cfg.get("agent_id") == agent_id and cfg.get(
        "refresh_token") == refresh


def check_host(root: Path, world: World, pyz: Path, state: HostState,
               exempt: bool = True) -> None:
    """Run the sequence on `state` and assert the invariants (exempt: skip KNOWN ones)."""
    root.mkdir()
    built = build(root, world, state)
    as_built = tree(root)
    runs: list[Ran] = []
    if state.crash_at:
        # an earlier migration killed (kill -9) at this point: part of the generated state
        runs.append(run_agent(pyz, root, "migrate", "--json",
                              REDFLAG_FAULT_INJECT=state.crash_at))
    before = tree(root)
    agents_before = agent_count(world)

    checked: list[Ran] = [run_agent(pyz, root, "migrate", "--json")]
    after_migrate = tree(root)
    checked.append(run_service(pyz, root))
    after_run = tree(root)
    checked.append(run_agent(pyz, root, "migrate", "--json"))
    snapshots = [before, after_migrate, after_run, tree(root)]
    after = snapshots[-1]

    # 2. the second migrate writes nothing, but a failed migration's bounded retries
    prev, last = after_run, checked[-1]
    for _ in range(MAX_ATTEMPTS):
        if after == prev:
            break
        rep = report_of(last)
        assert rep.get("ok") is False and rep.get("failed_phase"), (
            "invariant 2: the second `migrate` wrote without reporting a failed migration:\n"
            + "\n".join(tree_diff(prev, after)) + "\n" + show(checked))
        last = run_agent(pyz, root, "migrate", "--json")
        checked.append(last)
        prev, after = after, tree(root)
        snapshots.append(after)
    assert after == prev, ("invariant 2: `migrate` keeps writing after "
                           f"{MAX_ATTEMPTS} retries:\n" + "\n".join(tree_diff(prev, after))
                           + "\n" + show(checked))
    runs += checked

    # what the example exercised (`make prove` prints these with the statistics)
    note(f"exits migrate/run/migrate: {checked[0].rc}/{checked[1].rc}/{checked[2].rc}")

    # 5. documented exit codes only, never a traceback
    for r in checked:
        assert r.rc in DOCUMENTED_EXITS, f"invariant 5: `{r.what}` exit {r.rc}\n{show(checked)}"
        assert "Traceback" not in r.err + r.out, f"invariant 5: traceback\n{show(checked)}"

    # 1. at most one backup per real migration
    migrations = sum(len(MIGRATING.findall(r.err)) for r in checked)
    new = backup_names(after) - backup_names(before)
    note(f"real migrations: {migrations}")
    assert len(new) <= migrations, (
        f"invariant 1: {len(new)} new backups {sorted(new)} for {migrations} migrations\n"
        + show(checked))
    if migrations == 0:
        created = sorted(p for p in set(after) - set(before) if p.startswith(BACKUPS))
        assert not created, f"invariant 1: nothing migrated, yet {created}\n{show(checked)}"
        litter = sorted(p for p in set(after) - set(before)
                        if "migration_backups_" in p and p.count("/") == 3)
        assert not litter, f"invariant 1: upstream-style backup dirs {litter}"

    # 3. every identity that could authenticate is still there
    for where, agent_id, refresh in built.live_identities:
        original = ("etc/aggregator/config.json" if where == "legacy" else CONFIG)
        in_place = after.get(original) == as_built.get(original)
        kept = in_place or any(holds_identity(d, agent_id, refresh)
                               for d in identity_files(after))
        assert kept, (f"invariant 3: the {where} identity {agent_id} is gone from config.json, "
                      f"the backups and {original}\n" + show(checked))

    # 4. no token in any output or in any file but config.json and the backups
    secrets = set(built.secrets)
    for ident in world.pool:
        secrets.update((ident.token, ident.refresh_token))
    secrets.add(world.real_reg_token)
    for snap in snapshots:
        for data in identity_files(snap):
            secrets |= tokens_in_config(data)
    for r in runs:
        leaked = sorted(s for s in secrets if s in r.out or s in r.err)
        assert not leaked, f"invariant 4: a token in the output of `{r.what}`\n{show(runs)}"
    for snap in snapshots:
        for rel, info in snap.items():
            if info[0] != "f" or rel == CONFIG or rel.startswith(BACKUPS + "/"):
                continue
            bookkeeping = rel.startswith("var/lib/redflag-agent/migration_state") or rel.endswith(
                "status.json")
            prior = as_built.get(rel)
            if not bookkeeping and prior is not None and prior[3] == info[3]:
                continue  # the generated state put it there, unchanged
            hits = sorted(s for s in secrets if s.encode() in info[3])
            assert not hits, f"invariant 4: a token in {rel}\n{show(checked)}"

    # 4 (and 6). a registration token is one-time: once the host registered, it is gone
    grown = agent_count(world) - agents_before
    note("registered a new agent" if grown else "registered no new agent")
    if grown:
        final = tokens_in_config(after.get(CONFIG, ("f", 0, 0, b""))[3])
        used = {world.real_reg_token} & final
        assert not used, ("invariant 4: registered, yet config.json keeps the used "
                          f"registration token\n{show(checked)}")

    # 6. a registered host never registers again
    if built.registered and not known(6, state, exempt):
        held = [(w, a) for w, a, _ in built.live_identities]
        assert grown == 0, (f"invariant 6: the host held an authenticating identity {held} "
                            f"and registered {grown} more agent(s)\n" + show(checked))


def _real(index: int, access: str = "valid") -> IdentitySpec:
    return IdentitySpec("real", index=index, access=access)


# Corners always run besides the generated states: two identities on one host, a migration
# killed between verifying and removing the legacy layout, legacy state only, a given-up phase.
CORNERS = (
    HostState(LegacySpec("both", "no_version", identity=_real(0), reg_token="real",
                         state_files=("agent.key", "pending_acks.json")),
              CurrentSpec("complete", identity=_real(1, "stale")), MigrationStateSpec("none"),
              backups=3),
    HostState(LegacySpec("config_dir", "numeric", version=5, identity=_real(2)),
              CurrentSpec("token_only", reg_token="real"), MigrationStateSpec("none"),
              crash_at="directory:verified"),
    HostState(LegacySpec("state_dir", state_files=("client.crt", "cache.db")),
              CurrentSpec("fresh", state_dir=False), MigrationStateSpec("none"),
              upstream_litter=2, machine_id="changed"),
    HostState(LegacySpec("none"), CurrentSpec("complete", identity=_real(3, "missing"),
                                              reg_token="fake"),
              MigrationStateSpec("failed", failed_phase="config", attempts=3), backups=4,
              stale_partial=True),
)


def _corners(fn: Callable[..., None]) -> Callable[..., None]:
    for corner in CORNERS:
        fn = example(state=corner)(fn)
    return fn


@given(state=host_states)
@_corners
def test_invariants_hold_on_generated_host_states(state: HostState, world: World,
                                                  zipapp: Path) -> None:
    start = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="redflag-prop-") as tmp:
            check_host(Path(tmp) / "root", world, zipapp, state)
    finally:
        STATS["examples"] += 1
        STATS["seconds"] += time.monotonic() - start
