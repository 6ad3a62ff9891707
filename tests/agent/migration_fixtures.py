"""Host trees for the migration tests: legacy 0.1.18, fresh, half-migrated; tree snapshots."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path
from typing import Any, Optional

from redflag_agent.paths import Paths

AGENT_ID = "5b2c9a1e-7f3d-4e8a-9c61-2f0b8d4e7a10"
OTHER_ID = "0d6f1c2b-3a4e-4b5c-8d7e-9f0a1b2c3d4e"
# recognisable secret values: tests assert they never reach logs or output
REG_TOKEN = "regtok-SECRET-1f2e3d"
JWT = "jwt-SECRET-a9b8c7"
REFRESH = "refresh-SECRET-6d5e4f"
SECRETS = (REG_TOKEN, JWT, REFRESH)
SERVER = "http://127.0.0.1:8080"


def legacy_config(**overrides: Any) -> dict[str, Any]:
    """What agent 0.1.18 wrote: no version key, old field shapes, an unknown key."""
    cfg: dict[str, Any] = {
        "server_url": SERVER,
        "registration_token": REG_TOKEN,
        "agent_id": AGENT_ID,
        "token": JWT,
        "refresh_token": REFRESH,
        "check_in_interval": "300",
        "rapid_polling_enabled": False,
        "network": {"timeout": 20, "retry_count": 5},
        "proxy": {"enabled": False, "http": "", "https": ""},
        "tls": {"insecure_skip_verify": False, "ca_file": "/etc/aggregator/ca.pem"},
        "logging": {"level": "debug"},
        "tags": "web, prod",
        "metadata": {"rack": "a1"},
        "display_name": "web-1",
        "organization": "ops",
        "machine_id": "m-0123456789",
    }
    cfg.update(overrides)
    return {k: v for k, v in cfg.items() if v is not _DROP}


_DROP = object()
DROP: Any = _DROP


def write_json(path: Path, obj: Any, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))
    os.chmod(path, mode)


def make_legacy(paths: Paths, cfg: Optional[dict[str, Any]] = None, state_files: bool = True,
                config_file: bool = True) -> None:
    paths.legacy_config_dir.mkdir(parents=True, exist_ok=True)
    paths.legacy_state_dir.mkdir(parents=True, exist_ok=True)
    if config_file:
        write_json(paths.legacy_config_file, legacy_config() if cfg is None else cfg, 0o644)
        (paths.legacy_config_dir / "ca.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nCA\n")
    if state_files:
        (paths.legacy_state_dir / "pending_acks.json").write_text('[{"id": "c1"}]')
        key = paths.legacy_state_dir / "agent.key"
        key.write_bytes(b"PRIVATE KEY BYTES\x00\x01")
        os.chmod(key, 0o600)
        (paths.legacy_state_dir / "client.crt").write_bytes(b"CERT")
        (paths.legacy_state_dir / "cache.db").write_bytes(b"unknown legacy file")


def make_current(paths: Paths, cfg: dict[str, Any], mode: int = 0o600) -> None:
    paths.config_dir.mkdir(parents=True, exist_ok=True)
    write_json(paths.config_file, cfg, mode)


def fresh_config(registered: bool = False, **extra: Any) -> dict[str, Any]:
    """What the role writes on a fresh install (version "6")."""
    cfg: dict[str, Any] = {"version": "6", "server_url": SERVER, "check_in_interval": 300}
    if registered:
        cfg.update(agent_id=AGENT_ID, token=JWT, refresh_token=REFRESH)
    else:
        cfg["registration_token"] = REG_TOKEN
    cfg.update(extra)
    return cfg


def make_fresh_install(paths: Paths, registered: bool = False) -> None:
    paths.config_dir.mkdir(parents=True, exist_ok=True)
    paths.state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(paths.config_dir, 0o750)  # noqa: S103 - the role's mode
    os.chmod(paths.state_dir, 0o750)  # noqa: S103 - the role's mode
    make_current(paths, fresh_config(registered))


def tree(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every path under root with type, mode, mtime and content: any write shows up."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISREG(st.st_mode):
                out[rel] = ("f", stat.S_IMODE(st.st_mode), st.st_mtime_ns, p.read_bytes())
            elif stat.S_ISLNK(st.st_mode):
                out[rel] = ("l", os.readlink(p))
            else:
                out[rel] = ("d", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
    return out


def contents(root: Path, exclude_state: bool = True) -> dict[str, tuple[Any, ...]]:
    """Files and modes without mtimes, for 'restored byte-identical' comparisons.

    exclude_state drops the migration's own bookkeeping (state file, backups)."""
    out = {}
    for rel, info in tree(root).items():
        if exclude_state and ("migration_backups" in rel or rel.endswith("migration_state.json")):
            continue
        out[rel] = (info[0], info[1], info[3]) if info[0] == "f" else info[:2]
    return out


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def quiet_logger(name: str = "test.migration") -> logging.Logger:
    log = logging.getLogger(name)
    log.setLevel(logging.DEBUG)
    return log


# --- the later upstream layouts (CONTRACT section 2) and the loop's litter ---------------
V02_ID = "7e1d2c3b-4a59-4687-9a0b-c1d2e3f4a5b6"
V02_REFRESH = "refresh-SECRET-v02-7a8b"
V02_JWT = "jwt-SECRET-v02-1c2d"


def v0119_config(**overrides: Any) -> dict[str, Any]:
    """What the seed's generation (0.1.19-0.1.23) wrote to /etc/redflag/config.json."""
    cfg = legacy_config(version="5", check_in_interval=300, tags=["web"],
                        tls={"insecure_skip_verify": False, "ca_file": "/etc/redflag/ca.pem"})
    cfg.update(overrides)
    return {k: v for k, v in cfg.items() if v is not _DROP}


def v02_config(**overrides: Any) -> dict[str, Any]:
    """What upstream 0.2.x wrote to /etc/redflag/agent/config.json: 0.1.x's keys plus its
    own (agent_version, migration_state, command_signing, polling), Go durations in ns."""
    cfg: dict[str, Any] = {
        "version": "7", "agent_version": "0.2.4",
        "server_url": SERVER, "agent_id": V02_ID, "token": V02_JWT,
        "refresh_token": V02_REFRESH, "check_in_interval": 300,
        "network": {"timeout": 30000000000, "retry_count": 3, "retry_delay": 5000000000,
                    "max_idle_conn": 10},
        "logging": {"level": "info", "max_size": 100, "max_backups": 3, "max_age": 28},
        "migration_state": {"last_completed": "0.2.0", "phases": ["config_v6"]},
        "command_signing": {"enabled": True, "enforcement_mode": "strict"},
        "polling": {"heartbeat_seconds": 10},
        "machine_id": "m-v02",
    }
    cfg.update(overrides)
    return {k: v for k, v in cfg.items() if v is not _DROP}


def make_v0119(paths: Paths, cfg: Optional[dict[str, Any]] = None, litter: int = 0) -> None:
    """A host of the seed's generation: /etc/redflag/config.json (+ its CA), the agent's
    state in /var/lib/redflag-agent, and `litter` directories of the restart loop."""
    write_json(paths.v0119_config_file, v0119_config() if cfg is None else cfg, 0o600)
    (paths.upstream_etc_dir / "ca.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nCA19\n")
    paths.state_dir.mkdir(parents=True, exist_ok=True)
    make_litter(paths, litter)


def make_litter(paths: Paths, count: int, cfg: Optional[dict[str, Any]] = None,
                start: int = 0) -> list[Path]:
    """`count` directories as the loop left them: a config.json copy (unregistered, as the
    loop's was) and a few small files each."""
    made = []
    body = json.dumps(cfg if cfg is not None else {"server_url": SERVER,
                                                   "registration_token": REG_TOKEN})
    for i in range(start, start + count):
        day, sec = divmod(i, 86400)
        d = paths.state_dir / (f"migration_backups_2025-01-{1 + day:02d}-"
                               f"{sec // 3600:02d}{sec // 60 % 60:02d}{sec % 60:02d}")
        d.mkdir(parents=True)
        (d / "config.json").write_text(body)
        (d / "pending_acks.json").write_text("[]")
        (d / "migration.log").write_text("migration required: 0.1.23.6 -> 6\n")
        made.append(d)
    return made


def make_v02(paths: Paths, cfg: Optional[dict[str, Any]] = None, agent_id_file: bool = True,
             backups: int = 0) -> None:
    """A 0.2.x host: config in /etc/redflag/agent, agent_id and server key under
    /etc/redflag, state in /var/lib/redflag/agent/{state,cache,migration_backups}, logs."""
    cfg = v02_config() if cfg is None else cfg
    write_json(paths.v02_config_file, cfg, 0o600)
    if agent_id_file and cfg.get("agent_id"):
        paths.v02_agent_id_file.write_text(cfg["agent_id"] + "\n")
    paths.v02_server_dir.mkdir(parents=True, exist_ok=True)
    (paths.v02_server_dir / "server_public_key").write_text("ed25519-PUBLIC-KEY\n")
    for sub in ("state", "cache", "migration_backups"):
        (paths.v02_state_dir / sub).mkdir(parents=True, exist_ok=True)
    (paths.v02_state_dir / "state" / "pending_acks.json").write_text('[{"id": "v02-ack"}]')
    (paths.v02_state_dir / "cache" / "updates.json").write_text('{"apt": []}')
    for i in range(backups):
        b = paths.v02_backups_dir / f"backup_{i}"
        b.mkdir()
        write_json(b / "config.json", cfg)
    paths.v02_log_dir.mkdir(parents=True, exist_ok=True)
    (paths.v02_log_dir / "agent.log").write_text("upstream log line\n")


def upstream_files(paths: Paths) -> dict[str, bytes]:
    """Every upstream file the takeover removes, by path below the root, with its bytes."""
    out = {}
    for top in (paths.upstream_etc_dir, paths.v02_state_dir):
        if not top.exists():
            continue
        for p in sorted(top.rglob("*")):
            if p.is_file() and paths.v02_backups_dir not in p.parents:
                out[str(p.relative_to(paths.root))] = p.read_bytes()
    return out
