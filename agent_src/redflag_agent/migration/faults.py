"""Fault injection for the crash-safety tests. Inert on a production root (REDFLAG_ROOT=/).

REDFLAG_FAULT_INJECT=<point>:<action>
  point:  a phase name, or "backup"
  action: before | after | mid | verified | removing  -> os._exit(137), as a kill -9 would
          enospc                                       -> OSError(ENOSPC) at the point's write
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from typing import Optional

from ..paths import Paths

FAULT_ENV = "REDFLAG_FAULT_INJECT"
KILLED_STATUS = 137


def _active(paths: Paths, environ: Optional[Mapping[str, str]]) -> str:
    if paths.is_production:
        return ""
    env = os.environ if environ is None else environ
    return env.get(FAULT_ENV, "").strip()


def crash_point(paths: Paths, point: str, when: str,
                environ: Optional[Mapping[str, str]] = None) -> None:
    if _active(paths, environ) == f"{point}:{when}":
        os._exit(KILLED_STATUS)


def write_point(paths: Paths, point: str, environ: Optional[Mapping[str, str]] = None) -> None:
    """Call right before a write; simulates a full disk there."""
    if _active(paths, environ) == f"{point}:enospc":
        raise OSError(errno.ENOSPC, f"No space left on device (injected at {point})")
