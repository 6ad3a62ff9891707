"""The agent's invariants over generated host states (issue 15).

For each generated state (every upstream layout, alone or together, the loop's litter, a
0.1.18, 0.1.23 or 0.2 server), in a temporary REDFLAG_ROOT, the real zipapp runs as the unit
runs it: `migrate`, `run` against the stand-in server (SIGTERM right after its first
check-in, or after 2 s), `migrate` again. Then:
  1. at most one backup per real migration, none when nothing is migrated;
  2. the second `migrate` writes nothing (paths, bytes, modes, mtimes), except the bounded
     retry of a migration that failed (it reports the failure), which settles within
     MAX_ATTEMPTS further runs;
  3. every identity that could authenticate before is still there after: in config.json, in a
     backup, a set-aside identity or where it was, with a refresh token the server still
     accepts (a 0.2 server consumes the old one on every renewal);
  4. no token in any output, nor in any file but config.json, the backups and files the
     state already held unchanged (migration_state/status never);
  5. exit codes only from the documented set, never a traceback;
  6. a host that held a complete identity that authenticates on it never registers again;
  7. on a server that binds machines, an identity this host cannot use ends as documented:
     recorded with another machine ID, set aside + enrolled with a token, exit 78 without
     one; recorded with none, exit 77 (the server's 403), config.json keeping it.
"""

from __future__ import annotations

import json
import re
import signal
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
from hypothesis import currently_in_test_context, event, example, given

from .conftest import STATS
from .hosts import (
    BACKUPS,
    CONFIG,
    DOCUMENTED_EXITS,
    IDENTITY_BACKUPS,
    MAX_ATTEMPTS,
    Built,
    Copy,
    CurrentSpec,
    Fleet,
    HostState,
    IdentitySpec,
    LegacySpec,
    MigrationStateSpec,
    Ran,
    UpstreamSpec,
    World,
    backup_names,
    build,
    host_machine_id,
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
    """config.json, every file in a complete backup (a `.partial` one does not count) and
    every identity set aside by the binding rules."""
    complete = tuple(f"{BACKUPS}/{name}/" for name in backup_names(t))
    return [info[3] for rel, info in t.items()
            if info[0] == "f" and (rel == CONFIG or rel.startswith(complete)
                                   or rel.startswith(IDENTITY_BACKUPS + "/"))]


def refresh_tokens_of(data: bytes, agent_id: str) -> list[Any]:
    try:
        cfg = json.loads(data)
    except ValueError:
        return []
    if isinstance(cfg, dict) and cfg.get("agent_id") == agent_id:
        return [cfg.get("refresh_token")]
    return []


def is_machine_id(value: Any) -> bool:
    return isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value) is not None


def recorded_elsewhere(recorded: Optional[str], host: str) -> bool:
    return bool(recorded) and is_machine_id(recorded) and recorded != host


def authenticates_here(world: World, built_copy: Copy, host: str) -> bool:
    """Could the agent check in with this copy on this host: its refresh token works (or is
    the one a 0.2 server accepts once more, rotated but its successor never used), the
    server binds it to this host's machine ID, and the config records no other machine."""
    ident = world.slots[built_copy.spec.index]
    refresh = (ident.previous_refresh if built_copy.spec.refresh == "previous"
               else ident.refresh_token)
    usable = world.alive(ident.agent_id, refresh) or (
        world.rotates and refresh == ident.previous_refresh)
    return (usable and (not world.binds or ident.machine_id == host)
            and not recorded_elsewhere(built_copy.recorded, host))


def check_host(root: Path, fleet: Fleet, pyz: Path, state: HostState,
               exempt: bool = True) -> None:
    """Run the sequence on `state` and assert the invariants (exempt: skip KNOWN ones).
    Every agent the example put on the server is deregistered afterwards."""
    world = fleet.world(state.server)
    agents_at_start = world.agent_ids()
    try:
        world.begin(state)
        _check_host(root, world, pyz, state, exempt)
    finally:
        world.deregister(world.agent_ids() - agents_at_start)


def _check_host(root: Path, world: World, pyz: Path, state: HostState, exempt: bool) -> None:
    root.mkdir()
    built = build(root, world, state)
    host = host_machine_id(state, world)
    as_built = tree(root)
    # which real identities work on the server now (whatever machine they are bound to)
    live = {c.spec.index: world.slots[c.spec.index].agent_id for c in built.copies
            if world.alive(world.slots[c.spec.index].agent_id,
                           world.identity(c.spec)["refresh_token"])}
    registered = [c for c in built.sources if authenticates_here(world, c, host)]
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
    note(f"server {state.server}; exits migrate/run/migrate: "
         f"{checked[0].rc}/{checked[1].rc}/{checked[2].rc}")
    layouts = [name for name, here in (
        ("0.1.18", state.legacy.layout != "none"), ("0.1.19", state.v0119.present),
        ("0.2", state.v02.present),
        ("litter", state.upstream_litter > 0 or state.surplus_litter)) if here]
    note(f"upstream layouts: {'+'.join(layouts) or 'none'}")

    # 5. documented exit codes only, never a traceback
    for r in checked:
        if r.signalled and r.rc == -signal.SIGTERM:
            # our SIGTERM landed where Python runs no handler: while the interpreter starts,
            # or tears down after the agent chose its exit code (seen under load ~10, on
            # its way out with 77). systemd counts death by its stop signal as a clean stop.
            note("run: ended by SIGTERM outside its handler")
            continue
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
    assert not litter, f"invariant 1: upstream-style backup dirs {litter}\n{show(checked)}"

    # 3. every identity that could authenticate is still there: some file the operator and
    # the agent look in (config.json, a backup, a set-aside identity, where it was) holds it
    # with a refresh token the server still accepts (a 0.2 server rotates them)
    holders = identity_files(after) + [after[c.where][3] for c in built.copies
                                       if after.get(c.where, ("d",))[0] == "f"]
    for index, agent_id in sorted(live.items()):
        kept = any(world.alive(agent_id, refresh) for data in holders
                   for refresh in refresh_tokens_of(data, agent_id))
        where = sorted(c.where for c in built.copies if c.spec.index == index)
        assert kept, (f"invariant 3: the identity {agent_id} (slot {index}, in {where}) is no "
                      "longer in config.json, a backup or where it was with a refresh token "
                      f"the {state.server} server accepts\n" + show(checked))

    # 4. no token in any output or in any file but config.json and the backups
    secrets = set(built.secrets)
    for snap in snapshots:
        for data in identity_files(snap):
            secrets |= tokens_in_config(data)
    for r in runs:
        leaked = sorted(s for s in secrets if s in r.out or s in r.err)
        assert not leaked, f"invariant 4: a token in the output of `{r.what}`\n{show(runs)}"
    for snap in snapshots:
        for rel, info in snap.items():
            if info[0] != "f" or rel == CONFIG or rel.startswith(
                    (BACKUPS + "/", IDENTITY_BACKUPS + "/")):
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
    if registered and not known(6, state, exempt):
        held = [(c.where, c.spec.index) for c in registered]
        assert grown == 0, (f"invariant 6: the host held an identity that authenticates here "
                            f"{held} and registered {grown} more agent(s)\n" + show(checked))

    # 7. machine binding: an identity this host cannot use (registered on another machine, or
    # this host's machine ID changed) ends as documented, never lost: recorded with another
    # machine ID, it is set aside and the host enrolls with its token, or `run` stops with 78
    # without one; recorded with none, the server's 403 stops `run` with 77
    if world.binds and not known(7, state, exempt):
        check_binding_outcome(state, world, built, host=host, after=after, checked=checked,
                              grown=grown)


def check_binding_outcome(state: HostState, world: World, built: Built, *, host: str,
                          after: dict[str, tuple[Any, ...]], checked: list[Ran],
                          grown: int) -> None:
    # only config.json holds an identity the agent could take (no other, not even a fake one)
    others = (state.legacy.identity, state.v0119.identity, state.v02.identity)
    if any(o is not None for o in others) or [c.where for c in built.sources] != [CONFIG]:
        return
    copy_ = built.sources[0]
    ident = world.slots[copy_.spec.index]
    if ident.machine_id == host and not recorded_elsewhere(copy_.recorded, host):
        return  # it authenticates here
    run = checked[1]
    final = after.get(CONFIG, ("f", 0, 0, b""))[3]
    in_config = bool(refresh_tokens_of(final, ident.agent_id))
    set_aside = any(refresh_tokens_of(info[3], ident.agent_id) for rel, info in after.items()
                    if rel.startswith(IDENTITY_BACKUPS + "/") and info[0] == "f")
    if recorded_elsewhere(copy_.recorded, host):
        if state.current.reg_token:
            note("binding: identity of another machine set aside, enrolling")
            assert set_aside and not in_config, (
                "invariant 7: an identity recorded with another machine ID and a token: "
                f"expected it set aside and the host enrolling\n{show(checked)}")
            if state.current.reg_token == "real":
                assert grown == 1, f"invariant 7: set aside but not enrolled\n{show(checked)}"
        else:
            note("binding: identity of another machine, no token: 78")
            assert run.rc == 78 and in_config and not set_aside, (
                "invariant 7: an identity recorded with another machine ID and no token: "
                f"expected exit 78 with config.json untouched\n{show(checked)}")
    else:
        note("binding: identity bound to another machine, none recorded: 77")
        assert run.rc == 77 and in_config and grown == 0, (
            "invariant 7: the server refuses an identity bound to another machine: expected "
            f"exit 77, config.json keeping it, nothing registered\n{show(checked)}")


def _real(index: int, access: str = "valid", refresh: str = "current") -> IdentitySpec:
    return IdentitySpec("real", index=index, access=access, refresh=refresh)


# Corners always run besides the generated states: two identities on one host, a migration
# killed between verifying and removing the legacy layout, legacy state only, a given-up
# phase, then the later upstream layouts and the binding servers.
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
    HostState(LegacySpec("none"), CurrentSpec("complete", identity=_real(2, "missing"),
                                              reg_token="fake"),
              MigrationStateSpec("failed", failed_phase="config", attempts=3), backups=4,
              stale_partial=True),
    # a 0.2 host upgraded in place from 0.1.19: both configs hold the same agent, the older
    # one with the refresh token 0.2 consumed on its last renewal; the seed's litter too
    HostState(LegacySpec("none"), CurrentSpec("token_only", reg_token="real"),
              MigrationStateSpec("none"), upstream_litter=2, server="0.2",
              v0119=UpstreamSpec(True, "ok", identity=_real(0, refresh="previous")),
              v02=UpstreamSpec(True, "ok", identity=_real(0, "stale"), backups=1)),
    # every layout at once, three different agents, the machine ID changed (0.1.23 binds)
    HostState(LegacySpec("config_dir", "no_version", identity=_real(1)),
              CurrentSpec("complete", identity=_real(0), reg_token="real", recorded="bound"),
              MigrationStateSpec("none"), machine_id="changed", server="0.1.23",
              v0119=UpstreamSpec(True, "ok", identity=_real(2, "missing")),
              v02=UpstreamSpec(True, "ok", identity=_real(0, "stale"), recorded="junk")),
    # the binding outcomes on a 0.2 server: a copied identity with and without a token
    HostState(LegacySpec("none"), CurrentSpec("complete", identity=_real(1, "stale"),
                                              reg_token="real", recorded="bound"),
              MigrationStateSpec("none"), server="0.2"),
    HostState(LegacySpec("none"), CurrentSpec("complete", identity=_real(0, "stale"),
                                              recorded="bound"),
              MigrationStateSpec("none"), machine_id="changed", server="0.2"),
)


def _corners(fn: Callable[..., None]) -> Callable[..., None]:
    for corner in CORNERS:
        fn = example(state=corner)(fn)
    return fn


@given(state=host_states)
@_corners
def test_invariants_hold_on_generated_host_states(state: HostState, fleet: Fleet,
                                                  zipapp: Path) -> None:
    start = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="redflag-prop-") as tmp:
            check_host(Path(tmp) / "root", fleet, zipapp, state)
    finally:
        STATS["examples"] += 1
        STATS["seconds"] += time.monotonic() - start
