"""Crash-safe writes: temp file in the same directory, fsync, chmod, rename, fsync the directory.

A kill -9 at any point leaves either the old file or the new one, never a torn file. The
work is done by safefs relative to directory fds, so a symlink the agent user planted in
its own directories is never followed (see safefs).
"""

from __future__ import annotations

import json
import os
from typing import Any

from . import safefs


def fsync_dir(path: os.PathLike[str] | str) -> None:
    safefs.fsync_dir(path)


def atomic_write_bytes(path: os.PathLike[str] | str, data: bytes, mode: int = 0o600, *,
                       chown: bool = True) -> None:
    """Replace `path` atomically; as root the new file belongs to the agent user (set on the
    fd before the rename, so it is never briefly root's in the agent's directory)."""
    safefs.write_bytes(path, data, mode, chown=chown)


def dumps_json(obj: Any) -> bytes:
    """Stable serialization: identical content gives identical bytes (key order kept)."""
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def atomic_write_json(path: os.PathLike[str] | str, obj: Any, mode: int = 0o600) -> None:
    atomic_write_bytes(path, dumps_json(obj), mode)
