"""The options of the modules that run the agent's own CLI (module_utils/redflag_agent_cli)."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  python:
    description: Interpreter that runs the agent (C(python -I PYZ ...)).
    type: path
    required: true
  pyz:
    description: The agent zipapp.
    type: path
    required: true
"""
