"""Generated host states for the property suite: strategies, the tree builder, the processes.

A HostState is a plain value built from its parts (legacy layout, current config, migration
state, backups, machine ID). Identities are slots: `real` ones are resolved at build time to
agents registered once per session with the stand-in server (they authenticate), `fake` ones
carry their own recognisable values (they never do). The repr of a HostState is the exact
counterexample hypothesis prints.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.request
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
POOL_SIZE = 4
# /etc/machine-id of the host the pool agents were registered on
POOL_MACHINE_ID = b"0123456789abcdef0123456789abcdef\n"
OTHER_MACHINE_ID = b"fedcba9876543210fedcba9876543210\n"
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
    machine_id: str = "same"  # same | changed | absent (relative to the pool's host)
    crash_at: Optional[str] = None  # an earlier migrate killed at this point (kill -9)


# --- strategies --------------------------------------------------------------------------
def identities(real_weight: bool = True) -> st.SearchStrategy[IdentitySpec]:
    access = st.sampled_from(("valid", "stale", "missing"))
    real = st.builds(IdentitySpec, kind=st.just("real"),
                     index=st.integers(0, POOL_SIZE - 1), access=access)
    fake = st.builds(IdentitySpec, kind=st.just("fake"),
                     fake_id=st.uuids(version=4).map(str), access=access)
    return st.one_of(real, fake) if real_weight else fake


reg_tokens = st.sampled_from((None, "real", "fake"))


@st.composite
def legacy_specs(draw: st.DrawFn) -> LegacySpec:
    layout = draw(st.sampled_from(("none", "config_dir", "state_dir", "both")))
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
    return CurrentSpec(kind, identity, token, config_dir, draw(st.booleans()))


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
    upstream_litter=st.integers(0, 2),
    machine_id=st.sampled_from(("same", "changed", "absent")),
    crash_at=st.none() | st.sampled_from(CRASH_POINTS),
)


# --- resolving slots to values -----------------------------------------------------------
@dataclass(frozen=True, repr=False)
class Identity:
    agent_id: str
    token: str
    refresh_token: str


class World:
    """What a session shares: the server, the pool of registered agents, a real token.

    Not a dataclass: hypothesis prints it with every counterexample, tokens included."""

    def __init__(self, server_url: str, pool: list[Identity], real_reg_token: str) -> None:
        self.server_url = server_url
        self.pool = pool
        self.real_reg_token = real_reg_token

    def __repr__(self) -> str:
        return f"World({self.server_url}, {len(self.pool)} pool agents)"

    def identity(self, spec: IdentitySpec) -> dict[str, str]:
        if spec.kind == "real":
            ident = self.pool[spec.index]
            agent_id, token, refresh = ident.agent_id, ident.token, ident.refresh_token
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

    def reg_token(self, which: Optional[str]) -> Optional[str]:
        return {"real": self.real_reg_token, "fake": FAKE_REG_TOKEN}.get(which or "")


@dataclass
class Built:
    """What building a HostState put on disk, for the invariants."""

    secrets: set[str] = field(default_factory=set)
    # identities that authenticate, in a config the agent can read: (agent_id, refresh_token)
    live_identities: list[tuple[str, str, str]] = field(default_factory=list)
    # the host holds a complete, authenticating identity where the agent takes it from
    registered: bool = False


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
        ident = world.identity(spec.identity)
        if spec.kind == "incomplete":
            ident = {"agent_id": ident["agent_id"]}
        cfg.update(ident)
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


def build(root: Path, world: World, state: HostState) -> Built:
    """Lay the state down under root (the REDFLAG_ROOT of one example)."""
    built = Built()
    etc, var = root / "etc", root / "var" / "lib"
    cur = state.current
    legacy = state.legacy

    # machine ID: the pool agents were registered on a host with POOL_MACHINE_ID
    if state.machine_id != "absent":
        raw = POOL_MACHINE_ID if state.machine_id == "same" else OTHER_MACHINE_ID
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
            if usable and legacy.identity is not None and legacy.identity.kind == "real":
                ident = world.identity(legacy.identity)
                built.live_identities.append(("legacy", ident["agent_id"],
                                              ident["refresh_token"]))
    if legacy.layout in ("state_dir", "both"):
        lstate_dir.mkdir(parents=True, mode=0o755)
        contents = {"pending_acks.json": b'[{"id": "c1"}]', "agent.key": b"PRIVATE\x00\x01",
                    "client.crt": b"CERT", "cache.db": b"unknown legacy file"}
        for name in legacy.state_files:
            _write(lstate_dir / name, contents[name], 0o600 if name == "agent.key" else 0o644)

    # current layout, as the role lays it down (dirs 0750, config 0600)
    cdir, sdir = etc / "redflag-agent", var / "redflag-agent"
    needs_state_dir = (cur.state_dir or state.migration.kind != "none" or state.backups
                       or state.stale_partial or state.upstream_litter)
    if cur.config_dir or cur.kind != "absent":
        cdir.mkdir(parents=True, mode=0o750)
    if needs_state_dir:
        sdir.mkdir(parents=True, mode=0o750)
    if cur.kind != "absent":
        cfg = _current_config(world, cur)
        data = _corrupt(cfg) if cur.kind == "corrupt" else _json(cfg)
        _write(cdir / "config.json", data, 0o600)
        built.secrets.update(_secret_values(cfg))
        # incomplete (agent_id alone) cannot authenticate; newer/corrupt cannot be read
        if cur.kind == "complete" and cur.identity is not None and cur.identity.kind == "real":
            ident = world.identity(cur.identity)
            built.live_identities.append(("current", ident["agent_id"],
                                          ident["refresh_token"]))
            built.registered = True
    if any(where == "legacy" for where, _, _ in built.live_identities):
        built.registered = True

    _write_migration_state(sdir, state.migration)
    _write_backups(sdir, state, built)
    for i in range(state.upstream_litter):
        litter = sdir / f"migration_backups_2025-01-0{i + 1}-00000{i}"
        _write(litter / "config.json", _json({"server_url": world.server_url}), 0o600)
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
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        err += "\n(test: killed, it did not stop within 10 s of SIGTERM)"
    return Ran("run", proc.returncode, out, err)


def _checked_in(status: Path) -> bool:
    try:
        return bool(json.loads(status.read_bytes()).get("last_checkin"))
    except (OSError, ValueError, AttributeError):
        return False


def http_json(url: str, body: Optional[dict[str, Any]] = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback only
        return json.loads(resp.read())
