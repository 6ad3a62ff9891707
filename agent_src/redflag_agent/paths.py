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
    migration_state_file: Path = field(init=False)
    status_file: Path = field(init=False)
    legacy_config_dir: Path = field(init=False)
    legacy_config_file: Path = field(init=False)
    legacy_state_dir: Path = field(init=False)
    secrets_dir: Path = field(init=False)
    opt_dir: Path = field(init=False)

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
        }
        values["config_file"] = values["config_dir"] / "config.json"
        values["backups_dir"] = values["state_dir"] / "migration_backups"
        values["migration_state_file"] = values["state_dir"] / "migration_state.json"
        values["status_file"] = values["state_dir"] / "status.json"
        values["legacy_config_file"] = values["legacy_config_dir"] / "config.json"
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
