"""One backup per migration: every file the migration may change or remove, plus a manifest.

Built in a hidden `.NAME.partial` directory and renamed into place when complete, so a
backup directory without the dot is always whole. Restore puts back bytes, modes, owners and
removed directories, and deletes what the migration created.

Everything here runs as root inside directories the agent user owns, so every access goes
through safefs (no symlink followed, planted objects refused), and a manifest, which that
user could rewrite, is validated before restore acts on it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

from .. import safefs
from ..atomic import atomic_write_json
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
    """Complete backups, oldest first. Reads only; a missing (or refused) directory is an
    empty list; an entry that is not a real directory with a manifest is not a backup."""
    try:
        fd = safefs.open_dir(paths.backups_dir)
    except (OSError, safefs.UnsafePath):
        return []
    try:
        done = []
        for n in os.listdir(fd):
            if not NAME_RE.match(n):
                continue
            st = safefs.lstat_at(fd, n)
            if st is None or not stat.S_ISDIR(st.st_mode):
                continue
            try:
                sub = os.open(n, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                              dir_fd=fd)
            except OSError:
                continue
            try:
                mst = safefs.lstat_at(sub, MANIFEST)
            finally:
                os.close(sub)
            if mst is not None and stat.S_ISREG(mst.st_mode):
                done.append(n)
    finally:
        os.close(fd)
    return sorted(done, key=name_key)


def new_backup_name(paths: Paths, now: Optional[datetime] = None) -> str:
    base = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    taken = set(safefs.listdir(paths.backups_dir))
    name, n = base, 1
    while name in taken or f".{name}.partial" in taken:
        n += 1
        name = f"{base}-{n}"
    return name


def _rel(paths: Paths, path: Path) -> str:
    return os.path.relpath(path, paths.root).replace(os.sep, "/")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_EXPECTED = {"file": "a regular file", "dir": "a directory"}


def _describe_entry(paths: Paths, path: Path, st: Optional[os.stat_result],
                    kind_if_missing: str, expect: Optional[str]) -> dict[str, Any]:
    """One path as it is now (before any change). expect "file"/"dir": anything else there
    is refused (UnsafePath); regular files must be ones root may read (one link, owner)."""
    rel = _rel(paths, path)
    if st is None:
        return {"path": rel, "type": kind_if_missing, "existed": False}
    mode = st.st_mode
    if expect is not None and not (stat.S_ISDIR(mode) if expect == "dir"
                                   else stat.S_ISREG(mode)):
        raise safefs.UnsafePath(path, safefs.describe(st), _EXPECTED[expect])
    common = {"path": rel, "existed": True, "mode": stat.S_IMODE(mode),
              "uid": st.st_uid, "gid": st.st_gid}
    if stat.S_ISLNK(mode):
        return {**common, "type": "symlink", "target": safefs.readlink(path)}
    if stat.S_ISDIR(mode):
        return {**common, "type": "dir"}
    if stat.S_ISREG(mode):
        safefs.check_file(st, path)  # root copies it into the backup
        return {**common, "type": "file"}
    raise safefs.UnsafePath(path, safefs.describe(st), "a regular file, directory or symlink")


def _entry(paths: Paths, path: Path, kind_if_missing: str = "file",
           expect: Optional[str] = None) -> dict[str, Any]:
    return _describe_entry(paths, path, safefs.lstat(path), kind_if_missing, expect)


def _tree(paths: Paths, top: Path, files: set[Path]) -> list[dict[str, Any]]:
    """The legacy tree below `top`, never following a symlink; the paths in `files` (the
    legacy config, files the migration moves) must be regular files."""
    first = _entry(paths, top, kind_if_missing="dir", expect="dir")
    if not first["existed"]:
        return []
    out = [first]
    for child, st in safefs.tree(top):
        p = Path(child)
        out.append(_describe_entry(paths, p, st, "file", "file" if p in files else None))
    return out


def _upstream_entries(paths: Paths, must_be_files: set[Path]) -> list[dict[str, Any]]:
    """What the takeover removes from the later upstream layouts: /etc/redflag's config.json,
    agent/, agent_id, server/ and the files it moves; 0.2's state directory except its
    migration_backups (litter: not backed up, see litter.py). The parents are recorded so a
    restore recreates them."""
    out: list[dict[str, Any]] = []
    for top in (paths.upstream_etc_dir, paths.upstream_lib_dir):
        out.append(_entry(paths, top, kind_if_missing="dir", expect="dir"))
    for f in (paths.v0119_config_file, paths.v02_agent_id_file):
        out.append(_entry(paths, f, expect="file"))
    out += [_entry(paths, src, expect="file") for src in sorted(must_be_files)
            if src.parent == paths.upstream_etc_dir]
    for top in (paths.v02_config_dir, paths.v02_server_dir):
        out += _tree(paths, top, must_be_files | {paths.v02_config_file})
    state = _entry(paths, paths.v02_state_dir, kind_if_missing="dir", expect="dir")
    if state["existed"]:
        out.append(state)
        for name in safefs.listdir(paths.v02_state_dir):
            child = paths.v02_state_dir / name
            if child == paths.v02_backups_dir:
                out.append(_entry(paths, child, kind_if_missing="dir", expect="dir"))
                continue
            st = safefs.lstat(child)
            if st is not None and stat.S_ISDIR(st.st_mode):
                out += _tree(paths, child, must_be_files)
            else:
                out.append(_describe_entry(paths, child, st, "file",
                                           "file" if child in must_be_files else None))
    return out


def collect_entries(paths: Paths, moves: list[tuple[Path, Path]],
                    takeover: bool = False) -> list[dict[str, Any]]:
    """Everything any phase may change or remove, described before the first change.
    Refuses (UnsafePath) anything planted where root will read, write or chmod.
    takeover: the later upstream layouts are taken over in this run."""
    entries: list[dict[str, Any]] = []
    seen: set[str] = set()

    def add(entry: dict[str, Any]) -> None:
        if entry["path"] not in seen:
            seen.add(entry["path"])
            entries.append(entry)

    for d in (paths.config_dir, paths.state_dir, paths.backups_dir):
        add(_entry(paths, d, kind_if_missing="dir", expect="dir"))
    must_be_files = {paths.legacy_config_file} | {src for src, _dst in moves}
    for top in (paths.legacy_config_dir, paths.legacy_state_dir):
        for e in _tree(paths, top, must_be_files):
            add(e)
    if takeover:
        for e in _upstream_entries(paths, must_be_files):
            add(e)
    add(_entry(paths, paths.config_file, expect="file"))
    for _src, dst in moves:
        add(_entry(paths, dst, expect="file"))
    for f in (paths.migration_state_file, paths.status_file):
        _entry(paths, f, expect="file")  # rewritten or chmodded as root: checked, not saved
    # the security phase changes modes of the agent's own regular files
    for directory in (paths.state_dir, paths.config_dir):
        for name in safefs.listdir(directory):
            p = directory / name
            st = safefs.lstat(p)
            if p == paths.migration_state_file or st is None or not stat.S_ISREG(st.st_mode):
                continue  # other objects are left alone, never followed
            e = _describe_entry(paths, p, st, "file", "file")
            if e["path"] not in seen:
                add({**e, "type": "mode"})
    return entries


def check_backups_dir(paths: Paths) -> None:
    """Every backup (complete or partial) must be a real directory: prune and resume open
    them as root."""
    for name in safefs.listdir(paths.backups_dir):
        if NAME_RE.match(name) or re.match(r"^\.(.+)\.partial$", name):
            _entry(paths, paths.backups_dir / name, expect="dir")


def preflight(paths: Paths, moves: list[tuple[Path, Path]],
              takeover: bool = False) -> list[dict[str, Any]]:
    """Everything root is about to touch, checked before the first write (UnsafePath)."""
    entries = collect_entries(paths, moves, takeover)
    check_backups_dir(paths)
    return entries


def create_backup(paths: Paths, name: str, entries: list[dict[str, Any]],
                  hook: Callable[[str], None] = lambda _when: None) -> dict[str, Any]:
    tmp = _partial(paths, name)
    safefs.remove(tmp)  # a stale partial from a crash (fd walk, never follows)
    safefs.make_dirs(paths.backups_dir, 0o700)
    # the agent user must be able to list and prune what a root `migrate` created
    safefs.chown_agent(paths.backups_dir)
    with safefs.directory(paths.backups_dir) as bfd:
        os.mkdir(tmp.name, 0o700, dir_fd=bfd)
    safefs.set_attrs(tmp, 0o700, expect="dir")
    safefs.chown_agent(tmp)
    try:
        return _fill_backup(paths, name, tmp, entries, hook)
    except Exception:
        # a half-written copy helps nobody, and on a full disk it holds the space others need
        with contextlib.suppress(OSError, safefs.UnsafePath):
            safefs.remove(tmp)
        raise


def _fill_backup(paths: Paths, name: str, tmp: Path, entries: list[dict[str, Any]],
                 hook: Callable[[str], None]) -> dict[str, Any]:
    stored: list[dict[str, Any]] = []
    for original in entries:
        e = dict(original)
        if e["type"] == "file" and e["existed"]:
            data = safefs.read_bytes(paths.root / e["path"], safefs.MAX_FILE)
            if data is None:
                raise MigrationError(f"{paths.root / e['path']} vanished while the backup "
                                     "was taken")
            target = tmp / "files" / e["path"]
            safefs.make_dirs(target.parent, 0o700)
            safefs.write_bytes(target, data, 0o600)
            e["stored"] = f"files/{e['path']}"
            e["sha256"] = _sha256(data)
            e["size"] = len(data)
        stored.append(e)
    hook("mid")
    manifest = {"format": MANIFEST_FORMAT, "name": name,
                "created_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "entries": stored}
    atomic_write_json(tmp / MANIFEST, manifest, 0o600)
    safefs.rename(tmp, paths.backups_dir / name)
    return manifest


def load_manifest(paths: Paths, name: str) -> Optional[dict[str, Any]]:
    where = paths.backups_dir / name
    try:
        data = safefs.read_bytes(where / MANIFEST, safefs.MAX_FILE)
        if data is None:
            return None
        manifest = json.loads(data.decode("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as exc:
        raise MigrationError(f"backup {where} has an unreadable manifest "
                             f"({exc}); inspect it before migrating again") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("entries"), list):
        raise MigrationError(f"backup {where}: manifest without entries; "
                             "inspect it before migrating again")
    for e in manifest["entries"]:
        _validate_entry(paths, where, e)
    return manifest


_ENTRY_TYPES = ("file", "dir", "symlink", "mode")


def _validate_entry(paths: Paths, where: Path, e: Any) -> None:
    """A manifest lies in a directory the agent user owns: restore acts on an entry only
    when it names a path inside the agent's (or legacy) directories, with a sane type,
    owner and mode (restore keeps only the permission bits: no setuid, setgid, sticky)."""
    def bad(why: str) -> MigrationError:
        return MigrationError(f"backup {where}: manifest entry {str(e)[:200]!r} {why}; "
                              "inspect the backup before migrating again")

    if not isinstance(e, dict) or not isinstance(e.get("path"), str):
        raise bad("is not an object with a 'path'")
    if e.get("type") not in _ENTRY_TYPES or not isinstance(e.get("existed"), bool):
        raise bad("has no known 'type' and 'existed'")
    try:
        safefs.split(paths.root / e["path"], strict=True)
    except safefs.UnsafePath as exc:
        raise bad(f"is outside the agent's directories ({exc.found})") from None
    for key in ("mode", "uid", "gid"):
        if key in e and not (isinstance(e[key], int) and not isinstance(e[key], bool)
                             and 0 <= e[key] < 2**32):
            raise bad(f"has a bad {key!r}")
    if e["type"] == "file" and e["existed"] and (
            e.get("stored") != f"files/{e['path']}" or not isinstance(e.get("sha256"), str)):
        raise bad("has no valid 'stored' copy and 'sha256'")
    if e["type"] == "symlink" and e["existed"] and not isinstance(e.get("target"), str):
        raise bad("has no symlink 'target'")


def _set_owner_mode(path: Path, e: dict[str, Any], expect: str = "file") -> None:
    mode = e["mode"] & 0o777 if "mode" in e else None
    uid = e.get("uid") if os.geteuid() == 0 else None
    safefs.set_attrs(path, mode, uid, e.get("gid"), expect=expect)


def restore(paths: Paths, name: str, manifest: dict[str, Any]) -> None:
    """Put every entry back as it was. Raises RestoreError listing what could not be.
    Whatever stands at an entry's path now (a planted symlink, hard link or FIFO included)
    is removed without being followed, then the original is written back."""
    base = paths.backups_dir / name
    entries = manifest["entries"]
    for e in entries:
        _validate_entry(paths, base, e)
    problems: list[str] = []
    dirs = sorted((e for e in entries if e["type"] == "dir" and e["existed"]),
                  key=lambda e: e["path"].count("/"))
    for e in dirs:
        p = paths.root / e["path"]
        try:
            if safefs.kind(p) not in ("dir", "missing"):
                safefs.remove(p)
            safefs.make_dirs(p, e.get("mode", 0o700) & 0o777)
        except (OSError, safefs.UnsafePath) as exc:
            problems.append(_problem(p, exc))
    for e in entries:
        p = paths.root / e["path"]
        try:
            _restore_one(paths, base, p, e, problems)
        except (OSError, safefs.UnsafePath) as exc:
            problems.append(_problem(p, exc))
    # directory modes last: a read-only original must not block restoring its files
    for e in reversed(dirs):
        p = paths.root / e["path"]
        try:
            _set_owner_mode(p, e, expect="dir")
        except (OSError, safefs.UnsafePath) as exc:
            problems.append(_problem(p, exc))
    for e in entries:
        if e["type"] == "file" and e["existed"]:
            p = paths.root / e["path"]
            try:
                data = safefs.read_bytes(p, safefs.MAX_FILE)
                ok = data is not None and _sha256(data) == e["sha256"]
            except (OSError, safefs.UnsafePath):
                ok = False
            if not ok:
                problems.append(f"{p}: not identical to the backup after restore")
    if problems:
        raise RestoreError(f"restore from {base} incomplete: " + "; ".join(sorted(set(problems)))
                           + f". The originals are in {base}/files; copy them back by hand")


def _problem(path: Path, exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return f"{path}: {exc.strerror or exc}"
    return str(exc)


def _current_sha(p: Path) -> Optional[str]:
    """sha256 of the plain file at p; None when something else (or nothing) is there."""
    try:
        data = safefs.read_bytes(p, safefs.MAX_FILE)
    except safefs.UnsafePath:
        return None
    return _sha256(data) if data is not None else None


def _restore_one(paths: Paths, base: Path, p: Path, e: dict[str, Any],
                 problems: list[str]) -> None:
    now = safefs.kind(p)
    if e["type"] == "file" and e["existed"]:
        data = safefs.read_bytes(base / e["stored"], safefs.MAX_FILE)
        if data is None or _sha256(data) != e["sha256"]:
            problems.append(f"{p}: the backup copy {base / e['stored']} is damaged")
            return
        if now != "file" or _current_sha(p) != e["sha256"]:
            if now != "missing":
                safefs.remove(p)
            safefs.write_bytes(p, data, e["mode"] & 0o777)
        _set_owner_mode(p, e)
    elif e["type"] == "symlink" and e["existed"]:
        if not (now == "symlink" and safefs.readlink(p) == e["target"]):
            if now != "missing":
                safefs.remove(p)
            safefs.symlink(e["target"], p)
    elif e["type"] == "mode" and now == "file":
        _set_owner_mode(p, e)
    elif not e["existed"] and e["type"] != "dir" and now != "missing":
        safefs.remove(p)


def prune(paths: Paths, keep: int, protect: set[str]) -> list[str]:
    """Drop the oldest complete backups beyond `keep`, and stale partial ones (fd walks:
    whatever the agent user put inside is removed, never followed)."""
    removed: list[str] = []
    with contextlib.suppress(OSError, safefs.UnsafePath):
        for n in safefs.listdir(paths.backups_dir):
            m = re.match(r"^\.(.+)\.partial$", n)
            if m and m.group(1) not in protect:
                safefs.remove(paths.backups_dir / n)
    names = list_backups(paths)
    excess = len(names) - keep
    for n in names:
        if excess <= 0:
            break
        if n in protect:
            continue
        safefs.remove(paths.backups_dir / n)
        removed.append(n)
        excess -= 1
    if removed:
        safefs.fsync_dir(paths.backups_dir)
    return removed
