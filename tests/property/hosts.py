"""Generated host states for the property suite: strategies, the tree builder, the processes.

A HostState is a plain value built from its parts (the server generation, every upstream
layout: 0.1.18, 0.1.19-0.1.23, 0.2, the current config, migration state, backups, the loop's
litter, machine ID). Identities are slots: `real` ones are agents registered with the stand-in
server for this example only (slot 0 on this host's machine, the others on other machines;
the same index twice is the same agent), `fake` ones carry their own recognisable values
(they never authenticate). The repr of a HostState is the exact counterexample hypothesis
prints.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[2]
AGENT_SRC = REPO / "agent_src"
PYTHON = os.environ.get("REDFLAG_TEST_PYTHON", sys.executable)

PHASES = ("directory", "config", "docker_secrets", "security")
MAX_ATTEMPTS = 3  # the agent's migration.model.MAX_ATTEMPTS (kept separate: a peer's view)
DOCUMENTED_EXITS = {0, 69, 75, 77, 78}
SLOTS = 3  # real identities per example: slot 0 registered on this host, the others elsewhere
GENERATIONS = ("0.1.18", "0.1.23", "0.2")  # the stand-in server's --generation
FAKE_REG_TOKEN = "regtok-FAKE-never-minted-7c1d"
# where a crashed earlier run stopped (REDFLAG_FAULT_INJECT points of the executor)
CRASH_POINTS = ("backup:before", "backup:mid", "backup:after", "directory:before",
                "directory:after", "directory:verified", "directory:removing",
                "config:before", "config:after", "security:before", "security:after")


# --- the state, as values --------------------------------------------------------------
@dataclass(frozen=True)
class IdentitySpec:
    kind: str  # "real" (registered with the stand-in server) or "fake"
    index: int = 0  # which pool agent (real)
    fake_id: str = ""  # agent_id (fake)
    access: str = "valid"  # the access token: valid | stale | missing
    # the refresh token: current, or the one before a renewal (a 0.2 server consumed it on
    # rotation; a copy left behind by an upgrade); the same token on older servers
    refresh: str = "current"


@dataclass(frozen=True)
class LegacySpec:
    layout: str  # none | config_dir | state_dir | both
    config: str = "absent"  # absent | no_version | numeric | string | unknown_keys | corrupt
    version: Any = None
    identity: Optional[IdentitySpec] = None
    reg_token: Optional[str] = None  # "real" | "fake" | None
    state_files: tuple[str, ...] = ()


@dataclass(frozen=True)
class CurrentSpec:
    kind: str  # absent | fresh | token_only | incomplete | complete | newer | corrupt
    identity: Optional[IdentitySpec] = None
    reg_token: Optional[str] = None  # "real" | "fake" | None
    config_dir: bool = True  # the role's directories exist even without a config
    state_dir: bool = True
    # machine_id recorded with the identity: none | bound (where the slot was registered:
    # this agent recorded it after a check-in) | junk (another agent's key of the same name)
    recorded: str = "none"


@dataclass(frozen=True)
class UpstreamSpec:
    """0.1.19-0.1.23 (/etc/redflag/config.json, state in ours) or 0.2 (/etc/redflag/agent,
    /etc/redflag/{agent_id,server}, /var/lib/redflag/agent, /var/log/redflag/agent)."""

    present: bool = False
    config: str = "absent"  # absent | ok | corrupt
    identity: Optional[IdentitySpec] = None
    reg_token: Optional[str] = None  # "real" | "fake" | None
    recorded: str = "none"  # as CurrentSpec.recorded
    extras: bool = True  # 0.1.19: ca.pem; 0.2: agent_id file, server key, state dirs, logs
    backups: int = 0  # 0.2 only: copies of its config in its own migration_backups


@dataclass(frozen=True)
class MigrationStateSpec:
    kind: str  # none | in_progress | completed | failed | corrupt
    completed: tuple[str, ...] = ()
    failed_phase: str = "directory"
    attempts: int = 0
    in_progress_phases: tuple[str, ...] = ()
    resumes: int = 0
    in_progress_backup: str = "absent"  # absent | partial
    corrupt_bytes: bytes = b""


@dataclass(frozen=True)
class HostState:
    legacy: LegacySpec
    current: CurrentSpec
    migration: MigrationStateSpec
    backups: int = 0  # complete backups of earlier migrations
    stale_partial: bool = False  # a `.NAME.partial` left by a killed backup
    upstream_litter: int = 0  # upstream's migration_backups_YYYY-MM-DD-HHMMSS siblings
    machine_id: str = "same"  # same | changed | absent (relative to where slot 0 registered)
    crash_at: Optional[str] = None  # an earlier migrate killed at this point (kill -9)
    server: str = "0.1.18"  # the stand-in server's generation (GENERATIONS)
    v0119: UpstreamSpec = UpstreamSpec()
    v02: UpstreamSpec = UpstreamSpec()
    litter_identity: Optional[IdentitySpec] = None  # a copy of a registered config in litter
    surplus_litter: bool = False  # an upstream-named directory inside our migration_backups


# --- strategies --------------------------------------------------------------------------
def identities(real_weight: bool = True) -> st.SearchStrategy[IdentitySpec]:
    access = st.sampled_from(("valid", "stale", "missing"))
    real = st.builds(IdentitySpec, kind=st.just("real"),
                     index=st.integers(0, SLOTS - 1), access=access,
                     refresh=st.sampled_from(("current", "current", "previous")))
    fake = st.builds(IdentitySpec, kind=st.just("fake"),
                     fake_id=st.uuids(version=4).map(str), access=access)
    return st.one_of(real, fake) if real_weight else fake


reg_tokens = st.sampled_from((None, "real", "fake"))


@st.composite
def legacy_specs(draw: st.DrawFn) -> LegacySpec:
    layout = draw(st.sampled_from(("none", "none", "config_dir", "state_dir", "both")))
    if layout == "none":
        return LegacySpec("none")
    config, version, identity, token = "absent", None, None, None
    if layout in ("config_dir", "both"):
        config = draw(st.sampled_from(("absent", "no_version", "numeric", "string",
                                       "unknown_keys", "corrupt")))
        if config == "numeric":
            version = draw(st.integers(0, 7))
        elif config == "string":
            version = draw(st.sampled_from(("0", "1", "4", "5", "6", "7")))
        if config != "absent":
            identity = draw(st.none() | identities())
            token = draw(reg_tokens)
    files: tuple[str, ...] = ()
    if layout in ("state_dir", "both"):
        names = ("pending_acks.json", "agent.key", "client.crt", "cache.db")
        files = tuple(sorted(draw(st.sets(st.sampled_from(names)))))
    return LegacySpec(layout, config, version, identity, token, files)


@st.composite
def current_specs(draw: st.DrawFn) -> CurrentSpec:
    # weighted towards configs the agent runs on: unusable ones all end in exit 78 early
    kind = draw(st.sampled_from(("absent", "fresh", "token_only", "token_only", "incomplete",
                                 "complete", "complete", "complete", "newer", "corrupt")))
    identity, token = None, None
    if kind in ("incomplete", "complete", "newer", "corrupt"):
        identity = draw(identities())
    if kind in ("token_only", "incomplete"):
        token = draw(st.sampled_from(("real", "fake")))
    elif kind in ("complete", "newer", "corrupt"):
        token = draw(reg_tokens)
    config_dir = True if kind != "absent" else draw(st.booleans())
    recorded = "none"
    if kind in ("complete", "newer") and identity is not None:
        recorded = draw(st.sampled_from(("none", "bound", "bound", "junk")))
    return CurrentSpec(kind, identity, token, config_dir, draw(st.booleans()), recorded)


def upstream_specs(v02: bool) -> st.SearchStrategy[UpstreamSpec]:
    @st.composite
    def spec(draw: st.DrawFn) -> UpstreamSpec:
        if not draw(st.sampled_from((False, False, True))):  # alone or with others, not always
            return UpstreamSpec()
        config = draw(st.sampled_from(("absent", "ok", "ok", "ok", "corrupt")))
        identity, token, recorded = None, None, "none"
        if config != "absent":
            identity = draw(st.none() | identities())
            token = draw(reg_tokens)
            if identity is not None:
                recorded = draw(st.sampled_from(("none", "bound", "junk")))
        extras = True if config == "absent" else draw(st.booleans())
        backups = draw(st.integers(0, 2)) if v02 and config != "absent" else 0
        return UpstreamSpec(True, config, identity, token, recorded, extras, backups)
    return spec()


def _ordered(phases: set[str]) -> tuple[str, ...]:
    return tuple(p for p in PHASES if p in phases)


phase_sets = st.sets(st.sampled_from(PHASES)).map(_ordered)
some_phases = st.sets(st.sampled_from(PHASES), min_size=1).map(_ordered)


@st.composite
def migration_specs(draw: st.DrawFn) -> MigrationStateSpec:
    kind = draw(st.sampled_from(("none", "in_progress", "completed", "failed", "corrupt")))
    if kind == "completed":
        return MigrationStateSpec(kind, completed=draw(some_phases))
    if kind == "failed":
        return MigrationStateSpec(kind, completed=draw(phase_sets),
                                  failed_phase=draw(st.sampled_from(PHASES)),
                                  attempts=draw(st.integers(1, MAX_ATTEMPTS + 1)))
    if kind == "in_progress":
        return MigrationStateSpec(kind, completed=draw(phase_sets),
                                  in_progress_phases=draw(some_phases),
                                  resumes=draw(st.integers(0, 3)),
                                  in_progress_backup=draw(st.sampled_from(("absent",
                                                                           "partial"))))
    if kind == "corrupt":
        raw = draw(st.sampled_from((b'{"completed": ["directory"', b"\x00\xff\xfe",
                                    b'{"completed": "all"}', b"[]",
                                    b'{"failures": {"config": {"attempts": "3"}}}', b"")))
        return MigrationStateSpec(kind, corrupt_bytes=raw)
    return MigrationStateSpec("none")


host_states = st.builds(
    HostState,
    legacy=legacy_specs(),
    current=current_specs(),
    migration=migration_specs(),
    backups=st.integers(0, 4),
    stale_partial=st.booleans(),
    upstream_litter=st.sampled_from((0, 0, 1, 2)),
    machine_id=st.sampled_from(("same", "changed", "absent")),
    crash_at=st.none() | st.sampled_from(CRASH_POINTS),
    server=st.sampled_from(GENERATIONS),
    v0119=upstream_specs(v02=False),
    v02=upstream_specs(v02=True),
    litter_identity=st.none() | identities(),
    surplus_litter=st.sampled_from((False, False, False, True)),
)


# --- resolving slots to values -----------------------------------------------------------
AGENT_VERSION = "0.2.0"  # what the slots register as (>= a binding server's minimum, 0.1.22)


def machine_id_of(raw: bytes) -> str:
    """The ID the agent computes from a machine-id file (CONTRACT 4b): sha256 of it, trimmed."""
    return hashlib.sha256(raw.strip()).hexdigest()


def fallback_machine_id() -> str:
    """The agent's ID on a host without any machine-id source."""
    return hashlib.sha256(f"{socket.gethostname()}-linux-fallback".encode()).hexdigest()


@dataclass(frozen=True, repr=False)
class Identity:
    agent_id: str
    token: str
    refresh_token: str
    previous_refresh: str  # the refresh token before one renewal (== refresh_token on 0.1.x)
    machine_id: str  # the machine ID it was registered (bound) with


class World:
    """One stand-in server of one generation, a real registration token, and the agents of the
    current example (registered per example: a 0.2 server consumes a refresh token on every
    renewal, so no identity can serve two examples; every agent an example made is
    deregistered after it, which also frees the machine IDs it bound).

    Not a dataclass: hypothesis prints it with every counterexample, tokens included."""

    def __init__(self, server_url: str, db: Path, generation: str,
                 real_reg_token: str) -> None:
        self.server_url = server_url
        self.db = db
        self.generation = generation
        self.binds = generation != "0.1.18"
        self.rotates = generation == "0.2"
        self.real_reg_token = real_reg_token
        self.slots: dict[int, Identity] = {}
        self.host_raw = b""

    def __repr__(self) -> str:
        return f"World({self.generation} at {self.server_url})"

    # one example
    def begin(self, state: HostState) -> None:
        """Register the real slots the state uses; slot 0 on this host's machine."""
        self.slots = {}
        self.host_raw = uuid.uuid4().hex.encode() + b"\n"
        for spec in real_slots(state):
            if spec.index not in self.slots:
                raw = self.host_raw if spec.index == 0 else uuid.uuid4().hex.encode()
                self.slots[spec.index] = self._register(machine_id_of(raw))
        for spec in real_slots(state):
            ident = self.slots[spec.index]
            if (self.rotates and spec.refresh == "previous"
                    and ident.previous_refresh == ident.refresh_token):
                self.slots[spec.index] = self._renew(ident)

    def agent_ids(self) -> set[str]:
        return {a["agent_id"] for a in http_json(f"{self.server_url}/admin/agents")["agents"]}

    def deregister(self, agent_ids: set[str]) -> None:
        for agent_id in sorted(agent_ids):
            try:
                http_json(f"{self.server_url}/admin/agents/{agent_id}/deregister", {})
            except urllib.error.HTTPError as exc:
                if exc.code != 404:  # already deregistered
                    raise

    def _register(self, machine_id: str) -> Identity:
        body = {"hostname": "prop-slot", "os_type": "linux", "agent_version": AGENT_VERSION,
                "machine_id": machine_id}
        got = http_json(f"{self.server_url}/api/v1/agents/register", body,
                        {"Authorization": f"Bearer {self.real_reg_token}"})
        return Identity(got["agent_id"], got["token"], got["refresh_token"],
                        got["refresh_token"], machine_id)

    def _renew(self, ident: Identity) -> Identity:
        body = {"agent_id": ident.agent_id, "refresh_token": ident.refresh_token,
                "agent_version": AGENT_VERSION}
        got = http_json(f"{self.server_url}/api/v1/agents/renew", body,
                        {"X-Machine-ID": ident.machine_id})
        return Identity(ident.agent_id, got["token"],
                        got.get("refresh_token", ident.refresh_token), ident.refresh_token,
                        ident.machine_id)

    # values
    def identity(self, spec: IdentitySpec) -> dict[str, str]:
        if spec.kind == "real":
            ident = self.slots[spec.index]
            agent_id, token = ident.agent_id, ident.token
            refresh = ident.previous_refresh if spec.refresh == "previous" else (
                ident.refresh_token)
        else:
            agent_id = spec.fake_id
            token = f"jwt-FAKE-{spec.fake_id[:8]}"
            refresh = f"refresh-FAKE-{spec.fake_id[:8]}"
        out = {"agent_id": agent_id, "refresh_token": refresh}
        if spec.access == "valid":
            out["token"] = token
        elif spec.access == "stale":
            out["token"] = f"jwt-STALE-{agent_id[:8]}"
        return out

    def recorded(self, spec: Optional[IdentitySpec], how: str) -> Optional[str]:
        """The machine_id value a config holds with the identity."""
        if how == "junk":
            return "m-0123456789"
        if how == "bound" and spec is not None:
            if spec.kind == "real":
                return self.slots[spec.index].machine_id
            return machine_id_of(spec.fake_id.encode())
        return None

    def secrets(self) -> set[str]:
        out = {self.real_reg_token}
        for ident in self.slots.values():
            out.update((ident.token, ident.refresh_token, ident.previous_refresh))
        return out

    def reg_token(self, which: Optional[str]) -> Optional[str]:
        return {"real": self.real_reg_token, "fake": FAKE_REG_TOKEN}.get(which or "")

    def alive(self, agent_id: str, refresh: Any) -> bool:
        """The server would renew with this refresh token now (active agent, token neither
        consumed by a rotation nor revoked): read from its database, changing nothing."""
        if not isinstance(refresh, str):
            return False
        digest = hashlib.sha256(refresh.encode()).hexdigest()
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        try:
            row = conn.execute(
                "SELECT a.status, r.consumed_at, r.revoked_at FROM refresh_tokens r "
                "JOIN agents a ON a.agent_id = r.agent_id "
                "WHERE r.token_hash = ? AND r.agent_id = ?", (digest, agent_id)).fetchone()
        finally:
            conn.close()
        return row is not None and row[0] == "active" and row[1] is None and row[2] is None


class Fleet:
    """A stand-in server per generation, shared by the session."""

    def __init__(self, worlds: dict[str, World]) -> None:
        self.worlds = worlds

    def __repr__(self) -> str:
        return f"Fleet({', '.join(self.worlds)})"

    def world(self, generation: str) -> World:
        return self.worlds[generation]


def real_slots(state: HostState) -> list[IdentitySpec]:
    specs = [state.legacy.identity, state.current.identity, state.v0119.identity,
             state.v02.identity, state.litter_identity if state.upstream_litter else None]
    return [s for s in specs if s is not None and s.kind == "real"]


def host_machine_id(state: HostState, world: World) -> str:
    """The ID the agent computes on the built host."""
    if state.machine_id == "absent":
        return fallback_machine_id()
    if state.machine_id == "same":
        return machine_id_of(world.host_raw)
    return machine_id_of(CHANGED_RAW)


CHANGED_RAW = b"fedcba9876543210fedcba9876543210\n"  # never registered: no agent is bound to it


@dataclass(frozen=True)
class Copy:
    """A readable copy of a real identity the state put on the host."""

    where: str  # path below the root
    spec: IdentitySpec
    recorded: Optional[str]  # the machine_id the config holds with it


@dataclass
class Built:
    """What building a HostState put on disk, for the invariants."""

    secrets: set[str] = field(default_factory=set)
    copies: list[Copy] = field(default_factory=list)
    # where the agent takes an identity from: current config, 0.1.18, 0.1.19, 0.2 configs
    sources: list[Copy] = field(default_factory=list)


def _identity_keys(world: World, spec: Optional[IdentitySpec], recorded: str
                   ) -> dict[str, Any]:
    if spec is None:
        return {}
    out: dict[str, Any] = dict(world.identity(spec))
    machine = world.recorded(spec, recorded)
    if machine is not None:
        out["machine_id"] = machine
    return out


def _legacy_config(world: World, spec: LegacySpec) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "server_url": world.server_url,
        "check_in_interval": "300",
        "network": {"timeout": 20, "retry_count": 5},
        "proxy": {"enabled": False, "http": "", "https": ""},
        "tls": {"insecure_skip_verify": False, "ca_file": "/etc/aggregator/ca.pem"},
        "logging": {"level": "info"},
        "tags": "web, prod",
        "metadata": {"rack": "a1"},
    }
    if spec.config in ("numeric", "string"):
        cfg["version"] = spec.version
    if spec.config == "unknown_keys":
        cfg["machine_id"] = "m-0123456789"
        cfg["x_future_section"] = {"nested": [1, 2, {"deep": True}]}
    if spec.identity is not None:
        cfg.update(world.identity(spec.identity))
    token = world.reg_token(spec.reg_token)
    if token:
        cfg["registration_token"] = token
    return cfg


def _current_config(world: World, spec: CurrentSpec) -> dict[str, Any]:
    cfg: dict[str, Any] = {"version": "6", "server_url": world.server_url,
                           "check_in_interval": 300}
    if spec.kind == "newer":
        cfg["version"] = "7"
    if spec.identity is not None:
        ident = _identity_keys(world, spec.identity, spec.recorded)
        if spec.kind == "incomplete":
            ident = {"agent_id": ident["agent_id"]}
        cfg.update(ident)
    token = world.reg_token(spec.reg_token)
    if token:
        cfg["registration_token"] = token
    return cfg


def _v0119_config(world: World, spec: UpstreamSpec) -> dict[str, Any]:
    """What the seed's generation (0.1.19-0.1.23) wrote to /etc/redflag/config.json."""
    cfg: dict[str, Any] = {
        "version": "5", "server_url": world.server_url, "check_in_interval": 300,
        "rapid_polling_enabled": False, "network": {"timeout": 20, "retry_count": 5},
        "tls": {"insecure_skip_verify": False, "ca_file": "/etc/redflag/ca.pem"},
        "logging": {"level": "info"}, "tags": ["web"], "display_name": "web-19",
    }
    cfg.update(_identity_keys(world, spec.identity, spec.recorded))
    token = world.reg_token(spec.reg_token)
    if token:
        cfg["registration_token"] = token
    return cfg


def _v02_config(world: World, spec: UpstreamSpec) -> dict[str, Any]:
    """What upstream 0.2.x wrote to /etc/redflag/agent/config.json (its own version numbers,
    Go durations in ns, its bookkeeping sections)."""
    cfg: dict[str, Any] = {
        "version": "7", "agent_version": "0.2.4", "server_url": world.server_url,
        "check_in_interval": 300,
        "network": {"timeout": 30000000000, "retry_count": 3, "retry_delay": 5000000000,
                    "max_idle_conn": 10},
        "logging": {"level": "info", "max_size": 100, "max_backups": 3, "max_age": 28},
        "migration_state": {"last_completed": "0.2.0", "phases": ["config_v6"]},
        "command_signing": {"enabled": True, "enforcement_mode": "strict"},
        "polling": {"heartbeat_seconds": 10},
    }
    cfg.update(_identity_keys(world, spec.identity, spec.recorded))
    token = world.reg_token(spec.reg_token)
    if token:
        cfg["registration_token"] = token
    return cfg


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)


def _json(obj: Any) -> bytes:
    return json.dumps(obj, indent=2).encode()


def _corrupt(cfg: dict[str, Any]) -> bytes:
    """A half-written file: the first part of a real config (as a crash leaves it)."""
    data = _json(cfg)
    return data[: len(data) // 2]


def _copy(built: Built, where: str, spec: Optional[IdentitySpec], cfg: dict[str, Any],
          source: bool) -> None:
    if spec is None or spec.kind != "real":
        return
    c = Copy(where, spec, cfg.get("machine_id") if isinstance(cfg.get("machine_id"), str)
             else None)
    built.copies.append(c)
    if source:
        built.sources.append(c)


def build(root: Path, world: World, state: HostState) -> Built:
    """Lay the state down under root (the REDFLAG_ROOT of one example); world.begin(state)
    registered its slots."""
    built = Built()
    built.secrets.update(world.secrets())
    etc, var = root / "etc", root / "var" / "lib"
    cur = state.current
    legacy = state.legacy

    # machine ID: slot 0 was registered on world.host_raw
    if state.machine_id != "absent":
        raw = world.host_raw if state.machine_id == "same" else CHANGED_RAW
        _write(etc / "machine-id", raw, 0o444)

    # legacy layout, as 0.1.18 left it (config 0644)
    lcfg_dir, lstate_dir = etc / "aggregator", var / "aggregator"
    if legacy.layout in ("config_dir", "both"):
        lcfg_dir.mkdir(parents=True, mode=0o755)
        (lcfg_dir / "ca.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nCA\n")
        if legacy.config != "absent":
            cfg = _legacy_config(world, legacy)
            data = _corrupt(cfg) if legacy.config == "corrupt" else _json(cfg)
            _write(lcfg_dir / "config.json", data, 0o644)
            built.secrets.update(_secret_values(cfg))
            usable = legacy.config != "corrupt" and not (
                legacy.version is not None and int(legacy.version) > 6)
            if usable:
                _copy(built, "etc/aggregator/config.json", legacy.identity, cfg, True)
    if legacy.layout in ("state_dir", "both"):
        lstate_dir.mkdir(parents=True, mode=0o755)
        contents = {"pending_acks.json": b'[{"id": "c1"}]', "agent.key": b"PRIVATE\x00\x01",
                    "client.crt": b"CERT", "cache.db": b"unknown legacy file"}
        for name in legacy.state_files:
            _write(lstate_dir / name, contents[name], 0o600 if name == "agent.key" else 0o644)

    # 0.1.19-0.1.23: /etc/redflag/config.json, its state in /var/lib/redflag-agent (ours)
    v19 = state.v0119
    if v19.present:
        (etc / "redflag").mkdir(parents=True, mode=0o755, exist_ok=True)
        if v19.extras:
            _write(etc / "redflag" / "ca.pem", b"-----BEGIN CERTIFICATE-----\nCA19\n", 0o644)
        if v19.config != "absent":
            cfg = _v0119_config(world, v19)
            data = _corrupt(cfg) if v19.config == "corrupt" else _json(cfg)
            _write(etc / "redflag" / "config.json", data, 0o600)
            built.secrets.update(_secret_values(cfg))
            if v19.config == "ok":
                _copy(built, "etc/redflag/config.json", v19.identity, cfg, True)

    # 0.2: /etc/redflag/agent, /etc/redflag/{agent_id,server}, /var/lib/redflag/agent, logs
    v02 = state.v02
    if v02.present:
        v02_etc, v02_lib = etc / "redflag", var / "redflag" / "agent"
        (v02_etc / "agent").mkdir(parents=True, mode=0o755, exist_ok=True)
        cfg = _v02_config(world, v02)
        if v02.config != "absent":
            data = _corrupt(cfg) if v02.config == "corrupt" else _json(cfg)
            _write(v02_etc / "agent" / "config.json", data, 0o600)
            built.secrets.update(_secret_values(cfg))
            if v02.config == "ok":
                _copy(built, "etc/redflag/agent/config.json", v02.identity, cfg, True)
        if v02.extras:
            if v02.config != "absent" and cfg.get("agent_id"):
                _write(v02_etc / "agent_id", f"{cfg['agent_id']}\n".encode(), 0o644)
            _write(v02_etc / "server" / "server_public_key", b"ed25519-PUBLIC-KEY\n", 0o644)
            _write(v02_lib / "state" / "pending_acks.json", b'[{"id": "v02-ack"}]', 0o600)
            _write(v02_lib / "cache" / "updates.json", b'{"apt": []}', 0o600)
            (v02_lib / "migration_backups").mkdir(parents=True, exist_ok=True)
            _write(root / "var/log/redflag/agent/agent.log", b"upstream log line\n", 0o640)
        for i in range(v02.backups):
            where = f"var/lib/redflag/agent/migration_backups/backup_{i}/config.json"
            _write(root / where, _json(cfg), 0o600)
            if v02.config == "ok":
                _copy(built, where, v02.identity, cfg, False)

    # current layout, as the role lays it down (dirs 0750, config 0600)
    cdir, sdir = etc / "redflag-agent", var / "redflag-agent"
    needs_state_dir = (cur.state_dir or state.migration.kind != "none" or state.backups
                       or state.stale_partial or state.upstream_litter or v19.present
                       or state.surplus_litter)
    if cur.config_dir or cur.kind != "absent":
        cdir.mkdir(parents=True, mode=0o750)
    if needs_state_dir:
        sdir.mkdir(parents=True, mode=0o750, exist_ok=True)
    if cur.kind != "absent":
        cfg = _current_config(world, cur)
        data = _corrupt(cfg) if cur.kind == "corrupt" else _json(cfg)
        _write(cdir / "config.json", data, 0o600)
        built.secrets.update(_secret_values(cfg))
        # incomplete (agent_id alone) cannot authenticate; newer/corrupt cannot be read
        if cur.kind == "complete":
            _copy(built, CONFIG, cur.identity, cfg, True)

    _write_migration_state(sdir, state.migration)
    _write_backups(sdir, state, built)
    for i in range(state.upstream_litter):
        # the loop's copies: unregistered ones, or (litter_identity) of a registered config
        litter = sdir / f"migration_backups_2025-01-0{i + 1}-00000{i}"
        cfg = {"server_url": world.server_url}
        if i == 0 and state.litter_identity is not None:
            cfg.update(world.identity(state.litter_identity))
            built.secrets.update(_secret_values(cfg))
            _copy(built, str((litter / "config.json").relative_to(root)),
                  state.litter_identity, cfg, False)
        _write(litter / "config.json", _json(cfg), 0o600)
        _write(litter / "migration.log", b"migration required: 0.1.23.6 -> 6\n", 0o600)
    if state.surplus_litter:
        surplus = sdir / "migration_backups" / "2025-01-01-000030"
        _write(surplus / "config.json", _json({"server_url": world.server_url}), 0o600)
        os.chmod(sdir / "migration_backups", 0o700)
    return built


def _write_migration_state(sdir: Path, m: MigrationStateSpec) -> None:
    path = sdir / "migration_state.json"
    if m.kind == "none":
        return
    if m.kind == "corrupt":
        _write(path, m.corrupt_bytes, 0o600)
        return
    state: dict[str, Any] = {"format": 1, "completed": list(m.completed), "failures": {}}
    if "directory" in m.completed:
        state["migrated_from"] = "0.1.18"
    if m.kind == "failed":
        state["failures"][m.failed_phase] = {"attempts": m.attempts,
                                             "reason": "generated earlier failure",
                                             "last_at": "2025-01-01T00:00:00Z"}
    if m.kind == "in_progress":
        name = "20250101T000000Z"
        state["in_progress"] = {"backup": name, "phases": list(m.in_progress_phases),
                                "resumes": m.resumes, "started_at": "2025-01-01T00:00:00Z",
                                "completed_before": list(m.completed)}
        if m.in_progress_backup == "partial":
            part = sdir / "migration_backups" / f".{name}.partial"
            _write(part / "files" / "etc" / "aggregator" / "config.json", b'{"half', 0o600)
    _write(path, _json(state), 0o600)


def _write_backups(sdir: Path, state: HostState, built: Built) -> None:
    bdir = sdir / "migration_backups"
    for i in range(state.backups):
        name = f"2024010{i + 1}T000000Z"
        old = {"agent_id": f"00000000-0000-4000-8000-00000000000{i}",
               "refresh_token": f"refresh-OLDBACKUP-{i}"}
        built.secrets.add(old["refresh_token"])
        _write(bdir / name / "files" / "etc" / "aggregator" / "config.json", _json(old), 0o600)
        manifest = {"format": 1, "name": name, "created_at": "2024-01-01T00:00:00Z",
                    "entries": []}
        _write(bdir / name / "manifest.json", _json(manifest), 0o600)
    if state.stale_partial:
        _write(bdir / ".20231231T000000Z.partial" / "manifest.json", b"{", 0o600)
    if bdir.is_dir():
        os.chmod(bdir, 0o700)


def _secret_values(cfg: dict[str, Any]) -> set[str]:
    return {str(cfg[k]) for k in ("token", "refresh_token", "registration_token")
            if cfg.get(k)}


# --- reading the tree back ----------------------------------------------------------------
def tree(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry under root: kind, mode, mtime, bytes. Any write shows up."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            st_ = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISREG(st_.st_mode):
                out[rel] = ("f", stat.S_IMODE(st_.st_mode), st_.st_mtime_ns, p.read_bytes())
            elif stat.S_ISLNK(st_.st_mode):
                out[rel] = ("l", os.readlink(p))
            else:
                out[rel] = ("d", stat.S_IMODE(st_.st_mode), st_.st_mtime_ns)
    return out


def tree_diff(a: dict[str, tuple[Any, ...]], b: dict[str, tuple[Any, ...]]) -> list[str]:
    out = [f"+ {p}" for p in sorted(set(b) - set(a))]
    out += [f"- {p}" for p in sorted(set(a) - set(b))]
    for p in sorted(set(a) & set(b)):
        if a[p] != b[p]:
            what = [n for n, x, y in zip(("kind", "mode", "mtime", "bytes"), a[p], b[p])
                    if x != y]
            out.append(f"~ {p} ({', '.join(what)})")
    return out


BACKUPS = "var/lib/redflag-agent/migration_backups"
CONFIG = "etc/redflag-agent/config.json"
IDENTITY_BACKUPS = "var/lib/redflag-agent/identity_backups"  # identities set aside (binding)


def backup_names(t: dict[str, tuple[Any, ...]], complete_only: bool = True) -> set[str]:
    names = set()
    for rel in t:
        if rel.startswith(BACKUPS + "/"):
            name = rel[len(BACKUPS) + 1:].split("/", 1)[0]
            if not complete_only or f"{BACKUPS}/{name}/manifest.json" in t:
                names.add(name)
    return names


def tokens_in_config(data: bytes) -> set[str]:
    try:
        cfg = json.loads(data)
    except ValueError:
        return set()
    return _secret_values(cfg) if isinstance(cfg, dict) else set()


# --- the processes --------------------------------------------------------------------------
def clean_env(root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
           and not k.startswith(("REDFLAG_", "HYPOTHESIS_")) and k != "container"}
    env["REDFLAG_ROOT"] = str(root)
    env.update(extra)
    return env


@dataclass
class Ran:
    what: str
    rc: int
    out: str
    err: str
    signalled: bool = False  # the test sent SIGTERM (run_service)


def run_agent(pyz: Path, root: Path, *args: str, timeout: float = 30, **env: str) -> Ran:
    res = subprocess.run([PYTHON, "-I", str(pyz), *args], capture_output=True, text=True,
                         timeout=timeout, env=clean_env(root, **env), check=False,
                         stdin=subprocess.DEVNULL)
    return Ran(" ".join(args), res.returncode, res.stdout, res.stderr)


def run_service(pyz: Path, root: Path, deadline: float = 2.0) -> Ran:
    """`run` until it has checked in or exited, at most `deadline` s; then SIGTERM."""
    status = root / "var/lib/redflag-agent/status.json"
    proc = subprocess.Popen([PYTHON, "-I", str(pyz), "run"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                            env=clean_env(root, REDFLAG_BACKOFF_BASE="0.05",
                                          REDFLAG_BACKOFF_CAP="0.2"))
    end = time.monotonic() + deadline
    while proc.poll() is None and time.monotonic() < end:
        if _checked_in(status):
            # SIGTERM right away, as it enters its sleep: the moment that once deadlocked the
            # handler (test_counterexamples.py::test_sigterm_while_entering_sleep_stops_the_agent)
            break
        time.sleep(0.02)
    signalled = proc.poll() is None
    if signalled:
        proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        err += "\n(test: killed, it did not stop within 10 s of SIGTERM)"
    return Ran("run", proc.returncode, out, err, signalled)


def _checked_in(status: Path) -> bool:
    try:
        return bool(json.loads(status.read_bytes()).get("last_checkin"))
    except (OSError, ValueError, AttributeError):
        return False


def http_json(url: str, body: Optional[dict[str, Any]] = None,
              headers: Optional[dict[str, str]] = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback only
        return json.loads(resp.read())
