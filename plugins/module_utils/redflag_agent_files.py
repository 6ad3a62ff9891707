"""Root-owned files written whole: temp file, fsync, rename (module.atomic_move), fsync dir.

Shared by redflag_agent_host (the unit files) and redflag_agent_takeover (the backup).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Any


def fsync_dir(path: str) -> None:
    """Make a rename or a new entry in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(module: Any, path: str, data: bytes, mode: int = 0o644) -> None:
    """root:root `mode`, fsynced, renamed over the old file; no temp file left on failure.

    The owner and mode are set on the temp file before the rename and
    atomic_move(keep_dest_attrs=False) keeps them (the default copies the replaced file's,
    which may be wrong: that is why it is rewritten). The umask is fixed while it runs so a
    new file is never created wider than `mode`. atomic_move also gives the file its SELinux
    default context where SELinux is on.
    """
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=".redflag-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.chown(tmp, 0, 0)
        umask = os.umask(0o777 & ~mode)
        try:
            module.atomic_move(tmp, path, keep_dest_attrs=False)
        finally:
            os.umask(umask)
        # atomic_move gives a file it creates 0666 & ~umask: 0644 where `mode` wants 0755
        os.chmod(path, mode)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)
