"""Ownership of agent files: the `redflag-agent` user, only when we can and it exists."""

from __future__ import annotations

import grp
import os
import pwd
import stat
from typing import Optional

AGENT_USER = "redflag-agent"
_cache: dict[str, Optional[tuple[int, int]]] = {}


def agent_ids() -> Optional[tuple[int, int]]:
    """(uid, gid) of the agent user, or None when it does not exist. Looked up once: every
    safe file operation asks (NSS may be slow)."""
    if AGENT_USER in _cache:
        return _cache[AGENT_USER]
    try:
        pw = pwd.getpwnam(AGENT_USER)
    except KeyError:
        ids = None
    else:
        try:
            gid = grp.getgrnam(AGENT_USER).gr_gid
        except KeyError:
            gid = pw.pw_gid
        ids = (pw.pw_uid, gid)
    _cache[AGENT_USER] = ids
    return ids


def chown_to_agent(path: os.PathLike[str] | str) -> bool:
    """Chown a directory or file to redflag-agent when running as root and the user exists,
    through an fd opened without following symlinks. Returns True if done."""
    from . import safefs  # noqa: PLC0415 - safefs imports this module

    if os.geteuid() != 0 or agent_ids() is None:
        return False
    st = safefs.lstat(path)
    if st is None:
        return False
    return safefs.chown_agent(path, expect="dir" if stat.S_ISDIR(st.st_mode) else "file")
