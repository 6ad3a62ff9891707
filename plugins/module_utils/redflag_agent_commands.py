"""System commands (systemctl, groupadd, useradd, ...) that must succeed, or fail the module
naming the command and its output. Shared by redflag_agent_host and redflag_agent_takeover.
"""

from __future__ import annotations

from typing import Any


def run_checked(module: Any, argv: list[str], **fail_extra: Any) -> tuple[str, str]:
    """(stdout, stderr) of argv; fail_json when it exits non-zero. fail_extra goes to
    fail_json (what was changed so far)."""
    rc, out, err = module.run_command(argv)
    if rc != 0:
        module.fail_json(
            msg=f"{' '.join(argv)} failed (exit {rc}): {(err or out).strip()}", **fail_extra
        )
    return out, err
