"""Single-instance lock: flock on the state directory itself, so no lock file is ever created."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Optional


class LockHeld(Exception):
    pass


class InstanceLock:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._fd: Optional[int] = None

    def acquire(self) -> None:
        fd = os.open(os.fspath(self.directory), os.O_RDONLY | os.O_DIRECTORY)
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
