"""Single-instance lock: flock on the state directory itself, so no lock file is ever created."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Optional

from . import safefs


class LockHeld(Exception):
    pass


class InstanceLock:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._fd: Optional[int] = None
        # why the lock was not taken: the state dir is not a real directory
        self.refused: Optional[str] = None

    def acquire(self) -> None:
        """Lock the state directory, opened without following a symlink. When something else
        stands there (a symlink to a foreign directory, a file) no lock is taken and `refused`
        says why: every later write there is refused by safefs, and `migrate` reports it
        (exit 78) before touching anything."""
        try:
            fd = safefs.open_dir(self.directory)
        except safefs.UnsafePath as exc:
            self.refused = str(exc)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockHeld(f"another redflag-agent instance is running (it holds the lock on "
                           f"{self.directory}); stop it first, e.g. "
                           "`systemctl stop redflag-agent`") from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None
