"""Removing the upstream restart loop's litter (the I/O around layouts.keep_reason).

Litter is not copied into the migration backup: it is copies of copies, and backing up a
day of the loop (2,880 directories) would take again the space the loop filled. An entry
that may hold the only copy of an identity is kept instead (layouts.keep_reason).

Everything runs as root in directories the agent user owns: entries are inspected and
removed through directory file descriptors (safefs), never following a symlink: a litter
entry that is a symlink is unlinked, its target left alone.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from .. import safefs
from ..paths import Paths
from .layouts import SIBLING, SURPLUS, V02_BACKUP, FoundConfig, keep_reason
from .merge import logical
from .snapshot import find_litter

CONFIG_NAME = "config.json"
MAX_ENTRIES_PER_ITEM = 10000  # an entry larger than this is kept, not inspected
MAX_KEPT_LISTED = 50  # kept entries listed by name in the report (all are counted)


@dataclass
class LitterResult:
    removed: int = 0
    bytes_freed: int = 0
    kept: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"removed": self.removed, "bytes_freed": self.bytes_freed,
                "kept": len(self.kept), "kept_entries": self.kept[:MAX_KEPT_LISTED]}


def parents(paths: Paths) -> dict[str, Path]:
    return {SIBLING: paths.state_dir, SURPLUS: paths.backups_dir,
            V02_BACKUP: paths.v02_backups_dir}


def _freed(st: os.stat_result) -> int:
    # a hard-linked file's blocks stay with its other name
    if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
        return 0
    return st.st_blocks * 512


def _read_config_at(dir_fd: int, path: str) -> FoundConfig:
    where = path
    try:
        data = safefs.read_at(dir_fd, CONFIG_NAME, path, safefs.MAX_SMALL_FILE)
    except safefs.UnsafePath as exc:
        return FoundConfig(where, None, exc.found)
    except OSError as exc:
        return FoundConfig(where, None, exc.strerror or str(exc))
    if data is None:
        return FoundConfig(where, {}, "")
    try:
        obj = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return FoundConfig(where, None, "not a JSON config")
    return FoundConfig(where, obj if isinstance(obj, dict) else {}, "")


@dataclass
class _Scan:
    found: list[FoundConfig] = field(default_factory=list)
    size: int = 0
    count: int = 0
    problem: Optional[str] = None


def _scan_dir(fd: int, path: str, scan: _Scan, depth: int) -> None:
    if depth > safefs.MAX_DEPTH:
        scan.problem = f"nested more than {safefs.MAX_DEPTH} levels"
        return
    for name in os.listdir(fd):
        st = safefs.lstat_at(fd, name)
        if st is None:
            continue
        scan.count += 1
        if scan.count > MAX_ENTRIES_PER_ITEM:
            scan.problem = f"more than {MAX_ENTRIES_PER_ITEM} entries"
            return
        scan.size += _freed(st)
        child = f"{path}/{name}"
        if stat.S_ISDIR(st.st_mode):
            sub = safefs.open_subdir(fd, name, child)
            try:
                _scan_dir(sub, child, scan, depth + 1)
            finally:
                os.close(sub)
            if scan.problem:
                return
        elif name == CONFIG_NAME and stat.S_ISREG(st.st_mode):
            # a symlink or FIFO named config.json is no config: not followed, not opened
            scan.found.append(_read_config_at(fd, child))


def inspect_at(parent_fd: int, name: str, path: str) -> _Scan:
    """What a litter entry holds: config.json files (parsed), bytes it frees, or why it
    could not be inspected. A symlink or file entry holds no config (never followed)."""
    scan = _Scan()
    st = safefs.lstat_at(parent_fd, name)
    if st is None:
        return scan
    scan.size = _freed(st)
    if not stat.S_ISDIR(st.st_mode):
        return scan
    try:
        fd = safefs.open_subdir(parent_fd, name, path)
    except (OSError, safefs.UnsafePath) as exc:
        scan.problem = str(exc)
        return scan
    try:
        _scan_dir(fd, path, scan, 0)
    except (OSError, safefs.UnsafePath) as exc:
        scan.problem = str(exc)
    finally:
        os.close(fd)
    return scan


def remove(paths: Paths, migrated: Optional[dict[str, Any]], log: logging.Logger,
           hook: Callable[[int, int], None] = lambda _done, _total: None) -> LitterResult:
    """Remove every litter entry keep_reason allows; hook(done, total) after each removal
    (the fault tests' kill point). Safe to run again after a crash: an entry half removed
    is still litter, and was judged removable before its first file went."""
    result = LitterResult()
    by_parent: dict[str, list[str]] = {}
    for group, name in find_litter(paths):
        by_parent.setdefault(group, []).append(name)
    total = sum(len(v) for v in by_parent.values())
    where: Mapping[str, Path] = parents(paths)
    done = 0
    for group, names in by_parent.items():
        parent = where[group]
        with safefs.directory(parent) as pfd:
            for name in names:
                path = f"{parent}/{name}"
                shown = logical(paths, Path(path))
                scan = inspect_at(pfd, name, path)
                reason = (f"cannot be inspected ({scan.problem})" if scan.problem
                          else keep_reason(scan.found, migrated))
                if reason is not None:
                    result.kept.append({"path": shown, "reason": reason})
                    log.warning("litter %s kept: %s", shown, reason)
                    continue
                try:
                    safefs.remove_at(pfd, name, path)
                except (OSError, safefs.UnsafePath) as exc:
                    why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                    result.kept.append({"path": shown, "reason": f"could not be removed: {why}"})
                    log.warning("litter %s could not be removed: %s", shown, why)
                    continue
                result.removed += 1
                result.bytes_freed += scan.size
                done += 1
                hook(done, total)
            os.fsync(pfd)
    _remove_empty_v02(paths)
    if result.removed or result.kept:
        log.info("removed %d litter entries of the upstream restart loop (%d bytes freed); "
                 "%d kept", result.removed, result.bytes_freed, len(result.kept))
    return result


# Inside redflag-agent-migrate.service's sandbox each legacy/upstream top directory is a
# bind mount in a read-only parent: rmdir gives EBUSY or EROFS. It stays, empty, and the
# role's next run removes it (redflag_agent_host's legacy_dirs).
_STAYS = (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT, errno.EBUSY, errno.EROFS)


def rmdir_if_empty(path: Path) -> bool:
    """rmdir without following; False when missing, not empty, not a directory, or a mount
    point the sandbox does not let go of."""
    try:
        if safefs.kind(path) != "dir":
            return False
        safefs.rmdir(path)
    except OSError as exc:
        if exc.errno in _STAYS:
            return False
        raise
    with contextlib.suppress(OSError, safefs.UnsafePath):
        safefs.fsync_parent(path)
    return True


def _remove_empty_v02(paths: Paths) -> None:
    """0.2's state directories go once its backups are gone (kept ones keep them)."""
    for d in (paths.v02_backups_dir, paths.v02_state_dir, paths.upstream_lib_dir):
        if not rmdir_if_empty(d) and safefs.kind(d) != "missing":
            return
