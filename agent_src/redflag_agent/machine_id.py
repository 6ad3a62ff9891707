"""The machine ID, computed exactly as upstream's agent does (CONTRACT 4b).

Sources in order, each trimmed, the first non-empty one wins: /var/lib/dbus/machine-id,
/etc/machine-id, /sys/class/dmi/id/product_uuid. The ID is the lowercase hex SHA-256 of the
raw trimmed bytes; with no usable source, SHA-256 of "<hostname>-linux-fallback".

`machine_id_from` is the pure rule; `read_machine_id` is the thin reader. Every path comes from
Paths.root, so tests (and REDFLAG_ROOT) can point it anywhere.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .paths import Paths

# Relative to Paths.root, in upstream's order.
SOURCES = (
    "var/lib/dbus/machine-id",
    "etc/machine-id",
    "sys/class/dmi/id/product_uuid",
)
FALLBACK = "hostname fallback"
# A machine-id is 33 bytes, a DMI UUID 37. Anything much larger is not one; never slurp it.
MAX_SOURCE_BYTES = 4096

# Go's strings.TrimSpace (upstream is Go): unicode.IsSpace, and nothing else. Python's own
# strip() would also drop \x1c-\x1f, which Go keeps, and change the hash.
_GO_SPACE = (
    "\t\n\v\f\r \x85\xa0\u1680"
    + "".join(chr(c) for c in range(0x2000, 0x200B))
    + "\u2028\u2029\u202f\u205f\u3000"
)
_MACHINE_ID = re.compile(r"[0-9a-f]{64}\Z")


def is_valid_machine_id(value: object) -> bool:
    """64 lowercase hex characters, as the agent sends it and the server stores it."""
    return isinstance(value, str) and _MACHINE_ID.match(value) is not None


def trim(raw: bytes) -> bytes:
    """Go's strings.TrimSpace on raw bytes; bytes that are not valid UTF-8 are kept as-is."""
    text = raw.decode("utf-8", "surrogateescape")
    return text.strip(_GO_SPACE).encode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class MachineId:
    value: str  # 64 lowercase hex
    source: str  # the source path relative to the root, or FALLBACK


def machine_id_from(contents: Iterable[Optional[bytes]], hostname: str) -> MachineId:
    """Pure: the sources' contents in SOURCES order (None: missing or unusable) -> the ID."""
    for name, raw in zip(SOURCES, contents):
        if raw is None:
            continue
        value = trim(raw)
        if value:
            return MachineId(hashlib.sha256(value).hexdigest(), name)
    fallback = f"{hostname}-linux-fallback".encode("utf-8", "surrogateescape")
    return MachineId(hashlib.sha256(fallback).hexdigest(), FALLBACK)


def source_paths(paths: Paths) -> tuple[Path, ...]:
    return tuple(Path(paths.root) / name for name in SOURCES)


def read_source(path: Path, limit: int = MAX_SOURCE_BYTES) -> Optional[bytes]:
    """A source's bytes, or None when it is missing, unreadable, not a regular file or larger
    than limit. Read-only, non-blocking open (a FIFO planted there cannot hang us).

    Symlinks are followed, as upstream's os.ReadFile does: Debian ships
    /var/lib/dbus/machine-id as a link to /etc/machine-id, and read-only-root systems link
    /etc/machine-id elsewhere; refusing them would compute another ID than upstream's agent on
    the same host and lock a taken-over identity out (403 mismatch). All three sources live
    in root-owned directories the agent user cannot write, and nothing is written or chowned.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None  # missing, EACCES (product_uuid is root-only), ENXIO (a socket)...: next
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        # sysfs reports st_size 4096 whatever the content: bound the read, not the stat.
        chunks = []
        remaining = limit + 1
        while remaining > 0:
            chunk = os.read(fd, remaining)
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
        return None if len(data) > limit else data
    except OSError:
        return None  # e.g. EIO from a sysfs attribute: as unusable as a missing file
    finally:
        os.close(fd)


def read_machine_id(paths: Paths, hostname: Optional[str] = None) -> MachineId:
    """The host's machine ID under paths.root. hostname defaults to this host's name."""
    # Lazy, as upstream: a later source is not even opened once an earlier one answered.
    contents = (read_source(p) for p in source_paths(paths))
    return machine_id_from(contents, socket.gethostname() if hostname is None else hostname)
