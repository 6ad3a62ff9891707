"""Counterexamples the generated host states found, as ordinary table tests.

Each open one is marked xfail(strict=True): it fails while the bug is there and turns into a
failure (XPASS) once it is fixed; then drop the mark, and its entry in test_invariants.KNOWN.
Rows without the mark were fixed and stay as regression tests.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .hosts import (
    AGENT_SRC,
    PYTHON,
    CurrentSpec,
    Fleet,
    HostState,
    IdentitySpec,
    LegacySpec,
    MigrationStateSpec,
)
from .test_invariants import check_host

pytestmark = pytest.mark.property


def real(index: int, access: str = "valid") -> IdentitySpec:
    return IdentitySpec("real", index=index, access=access)


CASES = [
    pytest.param(
        # found by the property (invariant 6); issue 15
        HostState(legacy=LegacySpec("config_dir", "no_version", identity=real(0)),
                  current=CurrentSpec("incomplete", identity=real(1), reg_token="real",
                                      state_dir=False),
                  migration=MigrationStateSpec("none")),
        # on the branch's base the current agent_id without tokens beat the complete legacy
        # identity and the host registered again; main's choose_identity (3a04f2d) fixed it
        id="incomplete-current-agent-id-beats-complete-legacy-identity",
    ),
]


# Found by the property (invariant 6): a complete legacy identity that no migration takes over
# (migration_state says 'directory' is completed, or it was given up after 3 failures) was
# ignored by `run`, which registered the host again. `run` now stops with 78 and names it.
CASES += [
    pytest.param(
        # found by the property (invariant 6); issue 15
        HostState(legacy=LegacySpec("both", "numeric", version=0, identity=real(0)),
                  current=CurrentSpec("token_only", reg_token="real", state_dir=False),
                  migration=MigrationStateSpec("completed", completed=("directory",))),
        id="legacy-identity-ignored-when-state-says-directory-done"),
    pytest.param(
        HostState(legacy=LegacySpec("config_dir", "no_version", identity=real(2)),
                  current=CurrentSpec("token_only", reg_token="real"),
                  migration=MigrationStateSpec("failed", failed_phase="directory",
                                               attempts=3)),
        id="legacy-identity-ignored-when-migration-given-up"),
]


# Found by the property (invariant 6) once the generator drew the server generation and the
# later layouts: a legacy config that says schema "6" but keeps 0.1.18's string
# check_in_interval is refused by the migration ("fix that file, then start again"), and `run`
# then registered a second agent although the file holds a working identity. `run` now stops
# with 78 and names the file (decide.blocked_identity). (On a binding server the same host
# gets 409 instead: its machine ID is bound to that identity.)
CASES += [
    pytest.param(
        HostState(legacy=LegacySpec("both", "string", version="6", identity=real(0)),
                  current=CurrentSpec("token_only", reg_token="real", state_dir=False),
                  migration=MigrationStateSpec("none")),
        id="refused-legacy-config-with-identity-registers-again"),
]


@pytest.mark.parametrize("state", CASES)
def test_counterexample(state: HostState, fleet: Fleet, zipapp: Path, tmp_path: Path) -> None:
    check_host(tmp_path / "root", fleet, zipapp, state, exempt=False)


# Found by the property suite: the agent's SIGTERM handler called threading.Event.set(); when
# the signal landed while the main thread held the Event's (non-reentrant) lock on its way
# into wait() (the sleep after a check-in), set() waited for that lock forever and systemd had
# to SIGKILL the agent. A tight loop of zero-length sleeps spends most of its time in that
# window: on the old handler about half the runs below hung. The handler now takes no lock.
TIGHT_SLEEP_LOOP = """
import sys
sys.path.insert(0, sys.argv[1])
from redflag_agent.signals import Terminated, Terminator
term = Terminator()
term.install()
try:
    # inside the try: under load the SIGTERM can land before the loop starts
    print("ready", flush=True)
    while True:
        term.sleep(0)
except Terminated:
    print("stopped", flush=True)
"""


def test_sigterm_while_entering_sleep_stops_the_agent() -> None:
    import signal as signal_mod
    import time

    for _ in range(12):
        proc = subprocess.Popen([PYTHON, "-I", "-c", TIGHT_SLEEP_LOOP, str(AGENT_SRC)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "ready"
            time.sleep(0.03)
            proc.send_signal(signal_mod.SIGTERM)
            out, err = proc.communicate(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise AssertionError("the SIGTERM handler deadlocked: no stop within 3 s") from None
        assert proc.returncode == 0 and "stopped" in out, err
