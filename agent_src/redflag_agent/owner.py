"""Ownership of agent files: the `redflag-agent` user, only when we can and it exists."""

from __future__ import annotations

import grp
import os
import pwd
from typing import Optional

AGENT_USER = "redflag-agent"


def agent_ids() -> Optional[tuple[int, int]]:
    """(uid, gid) of the agent user, or None when it does not exist."""
    try:
        pw = pwd.getpwnam(AGENT_USER)
    except KeyError:
        return None
    try:
        gid = grp.getgrnam(AGENT_USER).gr_gid
    except KeyError:
        gid = pw.pw_gid
    return pw.pw_uid, gid


def chown_to_agent(path: os.PathLike[str] | str) -> bool:
    """Chown to redflag-agent when running as root and the user exists. Returns True if done."""
    if os.geteuid() != 0:
        return False
    ids = agent_ids()
    if ids is None:
        return False
    os.chown(os.fspath(path), ids[0], ids[1], follow_symlinks=False)
    return True
