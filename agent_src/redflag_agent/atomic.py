"""Crash-safe writes: temp file in the same directory, fsync, chmod, rename, fsync the directory.

A kill -9 at any point leaves either the old file or the new one, never a torn file.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any


def fsync_dir(path: os.PathLike[str] | str) -> None:
    fd = os.open(os.fspath(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: os.PathLike[str] | str, data: bytes, mode: int = 0o600) -> None:
    target = Path(path)
    parent = target.parent
    # O_EXCL + a random name: what tempfile.mkstemp does, without its import cost at start-up
    tmp = os.fspath(parent / f".{target.name}.{os.getpid()}.{os.urandom(6).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            # chmod before the data lands so secrets are never readable by others
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(parent)


def dumps_json(obj: Any) -> bytes:
    """Stable serialization: identical content gives identical bytes (key order kept)."""
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def atomic_write_json(path: os.PathLike[str] | str, obj: Any, mode: int = 0o600) -> None:
    atomic_write_bytes(path, dumps_json(obj), mode)
