"""One backup per migration: every file the migration may change or remove, plus a manifest.

Built in a hidden `.NAME.partial` directory and renamed into place when complete, so a
backup directory without the dot is always whole. Restore puts back bytes, modes, owners and
removed directories, and deletes what the migration created.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

from ..atomic import atomic_write_bytes, atomic_write_json, fsync_dir
from ..owner import chown_to_agent
from ..paths import Paths
from .model import MigrationError

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
NAME_RE = re.compile(r"^(\d{8}T\d{6}Z)(?:-(\d+))?$")


class RestoreError(Exception):
    """The rollback could not put everything back; the message names what and where."""


def name_key(name: str) -> tuple[str, int]:
    m = NAME_RE.match(name)
    if not m:
        return (name, 0)
    return (m.group(1), int(m.group(2) or 1))


def _partial(paths: Paths, name: str) -> Path:
    return paths.backups_dir / f".{name}.partial"


def list_backups(paths: Paths) -> list[str]:
    """Complete backups, oldest first. Reads only; a missing directory is an empty list."""
    try:
        names = os.listdir(paths.backups_dir)
    except OSError:
        return []
    done = [n for n in names if NAME_RE.match(n) and (paths.backups_dir / n / MANIFEST).is_file()]
    return sorted(done, key=name_key)


def new_backup_name(paths: Paths, now: Optional[datetime] = None) -> str:
    base = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    name, n = base, 1
    while (paths.backups_dir / name).exists() or _partial(paths, name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def _rel(paths: Paths, path: Path) -> str:
    return os.path.relpath(path, paths.root).replace(os.sep, "/")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _entry(paths: Paths, path: Path, kind_if_missing: str = "file") -> dict[str, Any]:
    """Describe one path as it is now (before any change)."""
    rel = _rel(paths, path)
    try:
        st = path.lstat()
    except FileNotFoundError:
        return {"path": rel, "type": kind_if_missing, "existed": False}
    common = {"path": rel, "existed": True, "mode": stat.S_IMODE(st.st_mode),
              "uid": st.st_uid, "gid": st.st_gid}
    if stat.S_ISLNK(st.st_mode):
        return {**common, "type": "symlink", "target": os.readlink(path)}
    if stat.S_ISDIR(st.st_mode):
        return {**common, "type": "dir"}
    if stat.S_ISREG(st.st_mode):
        return {**common, "type": "file"}
    raise MigrationError(f"{path} is a special file (not a regular file, directory or "
                         "symlink); move it out of the way and start the agent again")


def _tree(paths: Paths, top: Path) -> list[dict[str, Any]]:
    if not top.is_dir():
        return []
    out = [_entry(paths, top)]
    for dirpath, dirnames, filenames in os.walk(top):
        for name in sorted(dirnames) + sorted(filenames):
            out.append(_entry(paths, Path(dirpath) / name))
    return out


def collect_entries(paths: Paths, moves: list[tuple[Path, Path]]) -> list[dict[str, Any]]:
    """Everything any phase may change or remove, described before the first change."""
    entries: list[dict[str, Any]] = []
    seen: set[str] = set()

    def add(entry: dict[str, Any]) -> None:
        if entry["path"] not in seen:
            seen.add(entry["path"])
            entries.append(entry)

    for d in (paths.config_dir, paths.state_dir, paths.backups_dir):
        add(_entry(paths, d, kind_if_missing="dir"))
    for top in (paths.legacy_config_dir, paths.legacy_state_dir):
        for e in _tree(paths, top):
            add(e)
    add(_entry(paths, paths.config_file))
    for _src, dst in moves:
        add(_entry(paths, dst))
    # the security phase changes modes of the agent's own files
    for directory in (paths.state_dir, paths.config_dir):
        with contextlib.suppress(OSError):
            for name in sorted(os.listdir(directory)):
                p = directory / name
                if p == paths.migration_state_file or not p.is_file() or p.is_symlink():
                    continue
                e = _entry(paths, p)
                if e["path"] not in seen:
                    add({**e, "type": "mode"})
    return entries


def _mkdirs_private(top: Path, directory: Path) -> None:
    """mkdir -p below `top` with every level 0700 (mkdir's parents= ignores the mode)."""
    missing: list[Path] = []
    d = directory
    while d != top and not d.is_dir():
        missing.append(d)
        d = d.parent
    for d in reversed(missing):
        d.mkdir(mode=0o700)


def create_backup(paths: Paths, name: str, entries: list[dict[str, Any]],
                  hook: Callable[[str], None] = lambda _when: None) -> dict[str, Any]:
    tmp = _partial(paths, name)
    if tmp.exists():
        shutil.rmtree(tmp)
    paths.backups_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp.mkdir(mode=0o700)
    try:
        return _fill_backup(paths, name, tmp, entries, hook)
    except Exception:
        # a half-written copy helps nobody, and on a full disk it holds the space others need
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fill_backup(paths: Paths, name: str, tmp: Path, entries: list[dict[str, Any]],
                 hook: Callable[[str], None]) -> dict[str, Any]:
    stored: list[dict[str, Any]] = []
    for original in entries:
        e = dict(original)
        if e["type"] == "file" and e["existed"]:
            data = (paths.root / e["path"]).read_bytes()
            target = tmp / "files" / e["path"]
            _mkdirs_private(tmp, target.parent)
            atomic_write_bytes(target, data, 0o600)
            e["stored"] = f"files/{e['path']}"
            e["sha256"] = _sha256(data)
            e["size"] = len(data)
        stored.append(e)
    hook("mid")
    manifest = {"format": MANIFEST_FORMAT, "name": name,
                "created_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "entries": stored}
    atomic_write_json(tmp / MANIFEST, manifest, 0o600)
    # the agent user must be able to list and prune what a root `migrate` created
    chown_to_agent(paths.backups_dir)
    for dirpath, dirnames, filenames in os.walk(tmp):
        chown_to_agent(dirpath)
        for n in dirnames + filenames:
            chown_to_agent(os.path.join(dirpath, n))
    final = paths.backups_dir / name
    os.replace(tmp, final)
    fsync_dir(paths.backups_dir)
    return manifest


def load_manifest(paths: Paths, name: str) -> Optional[dict[str, Any]]:
    try:
        with open(paths.backups_dir / name / MANIFEST, "rb") as fh:
            manifest = json.loads(fh.read().decode("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise MigrationError(f"backup {paths.backups_dir / name} has an unreadable manifest "
                             f"({exc}); inspect it before migrating again") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("entries"), list):
        raise MigrationError(f"backup {paths.backups_dir / name}: manifest without entries; "
                             "inspect it before migrating again")
    return manifest


def _set_owner_mode(path: Path, e: dict[str, Any]) -> None:
    if "mode" in e:
        os.chmod(path, e["mode"])
    if os.geteuid() == 0 and "uid" in e:
        os.chown(path, e["uid"], e["gid"], follow_symlinks=False)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def restore(paths: Paths, name: str, manifest: dict[str, Any]) -> None:
    """Put every entry back as it was. Raises RestoreError listing what could not be."""
    base = paths.backups_dir / name
    entries = manifest["entries"]
    problems: list[str] = []
    dirs = sorted((e for e in entries if e["type"] == "dir" and e["existed"]),
                  key=lambda e: e["path"].count("/"))
    for e in dirs:
        p = paths.root / e["path"]
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            problems.append(f"{p}: {exc.strerror or exc}")
    for e in entries:
        p = paths.root / e["path"]
        try:
            if e["type"] == "file" and e["existed"]:
                data = (base / e["stored"]).read_bytes()
                if _sha256(data) != e["sha256"]:
                    problems.append(f"{p}: the backup copy {base / e['stored']} is damaged")
                    continue
                if p.is_symlink() or not p.is_file() or _sha256(p.read_bytes()) != e["sha256"]:
                    if p.is_symlink() or p.is_dir():
                        _remove(p)
                    atomic_write_bytes(p, data, e["mode"])
                _set_owner_mode(p, e)
            elif e["type"] == "symlink" and e["existed"]:
                if not (p.is_symlink() and os.readlink(p) == e["target"]):
                    if p.exists() or p.is_symlink():
                        _remove(p)
                    os.symlink(e["target"], p)
            elif e["type"] == "mode" and p.is_file():
                _set_owner_mode(p, e)
            elif not e["existed"] and e["type"] != "dir" and (p.exists() or p.is_symlink()):
                _remove(p)
        except OSError as exc:
            problems.append(f"{p}: {exc.strerror or exc}")
    # directory modes last: a read-only original must not block restoring its files
    for e in reversed(dirs):
        p = paths.root / e["path"]
        try:
            _set_owner_mode(p, e)
        except OSError as exc:
            problems.append(f"{p}: {exc.strerror or exc}")
    for e in entries:
        if e["type"] == "file" and e["existed"]:
            p = paths.root / e["path"]
            try:
                ok = p.is_file() and _sha256(p.read_bytes()) == e["sha256"]
            except OSError:
                ok = False
            if not ok:
                problems.append(f"{p}: not identical to the backup after restore")
    if problems:
        raise RestoreError(f"restore from {base} incomplete: " + "; ".join(sorted(set(problems)))
                           + f". The originals are in {base}/files; copy them back by hand")


def prune(paths: Paths, keep: int, protect: set[str]) -> list[str]:
    """Drop the oldest complete backups beyond `keep`, and stale partial ones."""
    removed: list[str] = []
    with contextlib.suppress(OSError):
        for n in os.listdir(paths.backups_dir):
            m = re.match(r"^\.(.+)\.partial$", n)
            if m and m.group(1) not in protect:
                shutil.rmtree(paths.backups_dir / n, ignore_errors=True)
    names = list_backups(paths)
    excess = len(names) - keep
    for n in names:
        if excess <= 0:
            break
        if n in protect:
            continue
        shutil.rmtree(paths.backups_dir / n)
        removed.append(n)
        excess -= 1
    if removed:
        fsync_dir(paths.backups_dir)
    return removed
