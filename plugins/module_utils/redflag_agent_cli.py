"""Running the agent's own CLI from a module, and the options every such module takes.

`python -I PYZ <command>` under the C.UTF-8 locale (the agent's JSON answers are UTF-8 and
its messages are matched in English). Shared by redflag_agent_config, redflag_agent_service
and redflag_agent_version; the options are documented once in the redflag.agent.agent_cli
doc fragment.
"""

from __future__ import annotations

import json
from typing import Any, Optional

AGENT_ENV = {"LC_ALL": "C.UTF-8"}

# The interpreter and the zipapp: python + pyz, documented by redflag.agent.agent_cli.
AGENT_CLI_ARGS: dict[str, dict[str, Any]] = {
    "python": {"type": "path", "required": True},
    "pyz": {"type": "path", "required": True},
}


def agent_argv(python: str, pyz: str, *args: str) -> list[str]:
    """`python -I pyz args...`: -I so nothing on the host's PYTHONPATH or cwd shadows it."""
    return [python, "-I", pyz, *args]


def run_agent(
    module: Any, python: str, pyz: str, *args: str, **kwargs: Any
) -> tuple[int, str, str]:
    """One agent command; kwargs go to run_command (data= for stdin, binary_data=...)."""
    return module.run_command(agent_argv(python, pyz, *args), environ_update=AGENT_ENV, **kwargs)


def status_answer(rc: int, out: str) -> Optional[dict[str, Any]]:
    """`status --json`'s object, or None when the agent exited non-zero or printed no object."""
    if rc != 0:
        return None
    try:
        loaded = json.loads(out)
    except ValueError:
        return None
    return loaded if isinstance(loaded, dict) else None
