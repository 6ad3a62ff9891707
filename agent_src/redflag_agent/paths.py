"""Every on-host path, derived from one root prefix (REDFLAG_ROOT) so tests run unprivileged."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

ROOT_ENV = "REDFLAG_ROOT"


@dataclass(frozen=True)
class Paths:
    root: Path
    config_dir: Path = field(init=False)
    config_file: Path = field(init=False)
    state_dir: Path = field(init=False)
    backups_dir: Path = field(init=False)
    identity_backups_dir: Path = field(init=False)
    migration_state_file: Path = field(init=False)
    status_file: Path = field(init=False)
    legacy_config_dir: Path = field(init=False)
    legacy_config_file: Path = field(init=False)
    legacy_state_dir: Path = field(init=False)
    secrets_dir: Path = field(init=False)
    opt_dir: Path = field(init=False)
    # upstream layouts after 0.1.18 (CONTRACT section 2); see migration/layouts.py
    upstream_etc_dir: Path = field(init=False)  # /etc/redflag
    v0119_config_file: Path = field(init=False)  # 0.1.19-0.1.23
    v02_config_dir: Path = field(init=False)
    v02_config_file: Path = field(init=False)
    v02_agent_id_file: Path = field(init=False)
    v02_server_dir: Path = field(init=False)
    upstream_lib_dir: Path = field(init=False)  # /var/lib/redflag
    v02_state_dir: Path = field(init=False)
    v02_backups_dir: Path = field(init=False)
    upstream_log_dir: Path = field(init=False)  # /var/log/redflag
    v02_log_dir: Path = field(init=False)

    def __init__(self, root: os.PathLike[str] | str = "/") -> None:
        r = Path(root)
        # frozen dataclass: assign through object.__setattr__
        values = {
            "root": r,
            "config_dir": r / "etc" / "redflag-agent",
            "state_dir": r / "var" / "lib" / "redflag-agent",
            "legacy_config_dir": r / "etc" / "aggregator",
            "legacy_state_dir": r / "var" / "lib" / "aggregator",
            "secrets_dir": r / "run" / "secrets",
            "opt_dir": r / "opt" / "redflag-agent",
            "upstream_etc_dir": r / "etc" / "redflag",
            "upstream_lib_dir": r / "var" / "lib" / "redflag",
            "upstream_log_dir": r / "var" / "log" / "redflag",
        }
        values["config_file"] = values["config_dir"] / "config.json"
        values["backups_dir"] = values["state_dir"] / "migration_backups"
        values["identity_backups_dir"] = values["state_dir"] / "identity_backups"
        values["migration_state_file"] = values["state_dir"] / "migration_state.json"
        values["status_file"] = values["state_dir"] / "status.json"
        values["legacy_config_file"] = values["legacy_config_dir"] / "config.json"
        etc = values["upstream_etc_dir"]
        values["v0119_config_file"] = etc / "config.json"
        values["v02_config_dir"] = etc / "agent"
        values["v02_config_file"] = etc / "agent" / "config.json"
        values["v02_agent_id_file"] = etc / "agent_id"
        values["v02_server_dir"] = etc / "server"
        values["v02_state_dir"] = values["upstream_lib_dir"] / "agent"
        values["v02_backups_dir"] = values["v02_state_dir"] / "migration_backups"
        values["v02_log_dir"] = values["upstream_log_dir"] / "agent"
        for name, value in values.items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Paths:
        env = os.environ if environ is None else environ
        root = env.get(ROOT_ENV) or "/"
        return cls(root)

    @property
    def is_production(self) -> bool:
        return self.root == Path("/")
