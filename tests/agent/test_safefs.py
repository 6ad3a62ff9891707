"""safefs: nothing the agent user can plant in its directories is followed, read or changed.

Runs unprivileged too: the owner checks accept the current euid, and a hard link is refused
by its link count whoever owns it.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest

from redflag_agent import migration, safefs
from redflag_agent.migration import backup, phases
from redflag_agent.paths import Paths

from .migration_fixtures import make_current, make_legacy

DECOY = b"DECOY-NOT-THE-AGENTS-" + os.urandom(4).hex().encode()


@pytest.fixture
def world(tmp_path):
    """A REDFLAG_ROOT with the agent's directories, and a decoy file and dir outside it."""
    root = Paths(tmp_path / "root")
    root.config_dir.mkdir(parents=True)
    root.state_dir.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o700)
    secret = outside / "secret"
    secret.write_bytes(DECOY)
    os.chmod(secret, 0o600)
    (outside / "dir").mkdir(mode=0o700)
    return root, secret, outside / "dir"


def plant(kind: str, at: Path, secret: Path, decoy_dir: Path) -> None:
    if kind == "symlink-file":
        at.symlink_to(secret)
    elif kind == "symlink-dir":
        at.symlink_to(decoy_dir)
    elif kind == "hardlink":
        os.link(secret, at)
    elif kind == "fifo":
        os.mkfifo(at)
    elif kind == "dir":
        at.mkdir()
    elif kind == "file":
        at.write_bytes(b"x")
    else:  # pragma: no cover
        raise AssertionError(kind)


# --- split: where the trusted anchor ends ---------------------------------------------------
@pytest.mark.parametrize(("path", "anchor", "parts"), [
    ("/etc/redflag-agent/config.json", "/etc", ("redflag-agent", "config.json")),
    ("/etc/redflag-agent", "/etc", ("redflag-agent",)),
    ("/r/var/lib/redflag-agent/migration_backups/N/files/etc/aggregator/config.json",
     "/r/var/lib", ("redflag-agent", "migration_backups", "N", "files", "etc", "aggregator",
                    "config.json")),  # the shallowest agent directory wins
    ("/r/etc/aggregator/x", "/r/etc", ("aggregator", "x")),
    ("/r/var/lib/aggregator", "/r/var/lib", ("aggregator",)),
    ("/r/run/secrets/token", "/r/run", ("secrets", "token")),
    ("/tmp/elsewhere/f.json", "/tmp/elsewhere", ("f.json",)),  # not an agent path
])
def test_split_table(path, anchor, parts):
    assert safefs.split(path) == (anchor, parts)


@pytest.mark.parametrize(("path", "strict"), [
    ("/etc/redflag-agent/../shadow", False),
    ("/etc/redflag-agent/./x", False),
    ("/etc/shadow", True),
    ("/r/tmp/x", True),
])
def test_split_refuses(path, strict):
    with pytest.raises(safefs.UnsafePath):
        safefs.split(path, strict=strict)


# --- reads ------------------------------------------------------------------------------
READ_TABLE = [
    # kind planted at config.json, what read_bytes finds
    ("symlink-file", "a symbolic link"),
    ("symlink-dir", "a symbolic link"),
    ("hardlink", "a regular file with 2 hard links"),
    ("fifo", "a FIFO"),
    ("dir", "a directory"),
]


@pytest.mark.parametrize(("kind", "found"), READ_TABLE)
def test_read_refuses_planted_objects(world, kind, found):
    root, secret, decoy_dir = world
    plant(kind, root.config_file, secret, decoy_dir)
    with pytest.raises(safefs.UnsafePath) as err:
        safefs.read_bytes(root.config_file)
    assert str(root.config_file) in str(err.value) and found in str(err.value)
    assert DECOY not in str(err.value).encode()


@pytest.mark.parametrize("kind", ["symlink-dir", "symlink-file", "fifo", "file"])
def test_read_refuses_a_planted_parent_directory(world, kind):
    root, secret, decoy_dir = world
    (decoy_dir / "config.json").write_bytes(DECOY)
    os.rmdir(root.config_dir)
    plant(kind, root.config_dir, secret, decoy_dir)
    with pytest.raises(safefs.UnsafePath, match="where a directory belongs") as err:
        safefs.read_bytes(root.config_file)
    assert str(root.config_dir) in str(err.value)


def test_read_plain_missing_and_too_large(world):
    root, _secret, _ = world
    assert safefs.read_bytes(root.config_file) is None
    assert safefs.read_bytes(root.root / "etc" / "nope" / "x") is None
    root.config_file.write_bytes(b"{}")
    assert safefs.read_bytes(root.config_file) == b"{}"
    root.config_file.write_bytes(b"x" * 101)
    assert safefs.read_bytes(root.config_file, limit=101) == b"x" * 101
    with pytest.raises(safefs.UnsafePath, match="larger than 100 bytes"):
        safefs.read_bytes(root.config_file, limit=100)


def test_the_anchor_must_be_ours(world):
    root, _, _ = world
    os.chmod(root.root / "etc", 0o777)  # noqa: S103 - the case under test
    with pytest.raises(safefs.UnsafePath, match="a directory only root can change"):
        safefs.read_bytes(root.config_file)


# --- writes -----------------------------------------------------------------------------
@pytest.mark.parametrize(("kind", "found"), READ_TABLE)
def test_write_never_replaces_a_planted_object(world, kind, found):
    root, secret, decoy_dir = world
    plant(kind, root.config_file, secret, decoy_dir)
    before = os.lstat(root.config_file)
    with pytest.raises(safefs.UnsafePath, match=found):
        safefs.write_bytes(root.config_file, b"new", 0o600)
    after = os.lstat(root.config_file)
    assert (before.st_ino, before.st_mode) == (after.st_ino, after.st_mode)
    assert secret.read_bytes() == DECOY and stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    assert os.listdir(decoy_dir) == []
    assert sorted(os.listdir(root.config_dir)) == ["config.json"]  # no temp file left


def test_write_creates_dirs_with_mode_and_replaces_atomically(world):
    root, _, _ = world
    target = root.backups_dir / "a" / "b" / "f"
    safefs.write_bytes(target, b"one", 0o640, create_dirs=True, dir_mode=0o700)
    safefs.write_bytes(target, b"two", 0o600)
    assert target.read_bytes() == b"two"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    for d in (root.backups_dir, target.parent.parent, target.parent):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    assert os.listdir(target.parent) == ["f"]


def test_write_through_a_planted_directory_symlink_is_refused(world):
    root, secret, decoy_dir = world
    plant("symlink-dir", root.backups_dir, secret, decoy_dir)
    with pytest.raises(safefs.UnsafePath, match="symbolic link"):
        safefs.write_bytes(root.backups_dir / "x" / "f", b"token", create_dirs=True)
    with pytest.raises(safefs.UnsafePath):
        safefs.make_dirs(root.backups_dir / "y")
    assert os.listdir(decoy_dir) == []


# --- chmod / chown / remove / walk --------------------------------------------------------
@pytest.mark.parametrize(("kind", "expect"), [
    ("symlink-file", "file"), ("hardlink", "file"), ("fifo", "file"), ("dir", "file"),
    ("symlink-dir", "dir"), ("file", "dir"), ("fifo", "dir"),
])
def test_set_attrs_refuses(world, kind, expect):
    root, secret, decoy_dir = world
    target = root.state_dir / "thing"
    plant(kind, target, secret, decoy_dir)
    with pytest.raises(safefs.UnsafePath):
        safefs.set_attrs(target, 0o644, expect=expect)
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(decoy_dir).st_mode) == 0o700


def test_set_attrs_on_plain_objects(world):
    root, _, _ = world
    f = root.state_dir / "f"
    f.write_bytes(b"")
    assert safefs.set_attrs(f, 0o640)
    assert safefs.set_attrs(root.state_dir, 0o700, expect="dir")
    assert not safefs.set_attrs(root.state_dir / "missing", 0o600)
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o640
    assert stat.S_IMODE(os.stat(root.state_dir).st_mode) == 0o700


def test_remove_tree_never_follows(world):
    root, secret, decoy_dir = world
    (decoy_dir / "keep").write_bytes(b"k")
    top = root.state_dir / "tree"
    (top / "a" / "b").mkdir(parents=True)
    (top / "a" / "b" / "f").write_bytes(b"f")
    (top / "link-dir").symlink_to(decoy_dir)
    (top / "a" / "link-file").symlink_to(secret)
    os.link(secret, top / "hard")
    os.mkfifo(top / "a" / "fifo")
    assert safefs.remove(top)
    assert not top.exists()
    assert (decoy_dir / "keep").read_bytes() == b"k" and secret.read_bytes() == DECOY
    assert not safefs.remove(top)


def test_remove_a_planted_symlink_to_a_directory_removes_only_the_link(world):
    root, secret, decoy_dir = world
    (decoy_dir / "keep").write_bytes(b"k")
    plant("symlink-dir", root.backups_dir, secret, decoy_dir)
    assert safefs.remove(root.backups_dir)
    assert not os.path.lexists(root.backups_dir) and (decoy_dir / "keep").exists()


def test_tree_lists_symlinks_without_following_and_is_bounded(world, monkeypatch):
    root, secret, decoy_dir = world
    (decoy_dir / "inner").write_bytes(b"i")
    (root.state_dir / "d").mkdir()
    (root.state_dir / "d" / "l").symlink_to(decoy_dir)
    names = [(p, stat.S_ISLNK(st.st_mode)) for p, st in safefs.tree(root.state_dir)]
    assert names == [(f"{root.state_dir}/d", False), (f"{root.state_dir}/d/l", True)]
    monkeypatch.setattr(safefs, "MAX_DEPTH", 1)
    (root.state_dir / "d" / "e" / "f").mkdir(parents=True)
    with pytest.raises(safefs.UnsafePath, match="nested more than 1"):
        safefs.tree(root.state_dir)


def test_open_dir_nearest_and_create(world):
    root, _, _ = world
    os.rmdir(root.config_dir)
    fd = safefs.open_dir(root.config_dir, nearest=True)
    try:
        assert os.fstat(fd).st_ino == os.stat(root.root / "etc").st_ino
    finally:
        os.close(fd)
    assert not root.config_dir.exists()
    safefs.make_dirs(root.config_dir, 0o750)
    assert stat.S_IMODE(os.stat(root.config_dir).st_mode) == 0o750


# --- the migration: refused before the backup, rolled back when planted mid-way ----------
LOG = logging.getLogger("test")


def tree_state(top: Path) -> dict[str, tuple]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st = os.lstat(p)
            body = (os.readlink(p) if stat.S_ISLNK(st.st_mode) else
                    p.read_bytes() if stat.S_ISREG(st.st_mode) else None)
            out[str(p)] = (st.st_mode, st.st_uid, st.st_nlink, body)
    return out


def test_a_planted_backups_dir_stops_the_migration_before_anything_is_written(world):
    root, secret, decoy_dir = world
    make_legacy(root)
    plant("symlink-dir", root.backups_dir, secret, decoy_dir)
    before = tree_state(root.root)
    report = migration.execute(root, LOG)
    assert not report.ok and not report.config_usable
    assert str(root.backups_dir) in report.message and "symbolic link" in report.message
    assert tree_state(root.root) == before
    assert os.listdir(decoy_dir) == []


def test_a_hard_link_planted_mid_way_is_rolled_back_without_touching_its_target(
        world, monkeypatch):
    """The config phase finds config.json replaced by a hard link to a foreign file: it
    refuses to rewrite (or chmod) it, the rollback removes the link (not the file it links
    to) and puts the original back."""
    root, secret, decoy_dir = world
    make_current(root, {"server_url": "http://127.0.0.1:9", "version": 5})
    original = root.config_file.read_bytes()
    real = phases.RUNNERS["config"]

    def planting(ctx):
        root.config_file.unlink()
        os.link(secret, root.config_file)
        return real(ctx)

    monkeypatch.setitem(phases.RUNNERS, "config", planting)
    report = migration.execute(root, LOG)
    assert not report.ok and not report.config_usable, report.message
    assert "2 hard links" in report.message and str(root.config_file) in report.message
    assert root.config_file.read_bytes() == original and os.stat(root.config_file).st_nlink == 1
    assert secret.read_bytes() == DECOY and stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    assert os.stat(secret).st_nlink == 1


@pytest.mark.parametrize(("entry", "why"), [
    ({"path": "etc/shadow", "type": "file", "existed": False}, "outside the agent"),
    ({"path": "etc/redflag-agent/../../etc/shadow", "type": "mode", "existed": True,
      "mode": 0o600}, "outside the agent"),
    ({"path": "etc/redflag-agent/config.json", "type": "file", "existed": True, "mode": 0o600,
      "stored": "files/../../../../etc/shadow", "sha256": "0"}, "stored"),
    ({"path": "etc/redflag-agent/x", "type": "mode", "existed": True, "uid": -1},
     "bad 'uid'"),
    ({"path": "etc/redflag-agent/x", "type": "device", "existed": True}, "type"),
])
def test_a_tampered_manifest_is_refused(world, entry, why):
    """The backup lies in the agent user's directory: restore acts only on entries inside
    the agent's directories, with sane fields."""
    root, _, _ = world
    name = "20260101T000000Z"
    (root.backups_dir / name).mkdir(parents=True)
    (root.backups_dir / name / "manifest.json").write_text(json.dumps(
        {"format": 1, "name": name, "entries": [entry]}))
    with pytest.raises(migration.MigrationError, match=why):
        backup.load_manifest(root, name)


def test_restore_clamps_setuid_bits(world):
    root, _, _ = world
    make_current(root, {"server_url": "http://127.0.0.1:9", "version": 5})
    entries = backup.collect_entries(root, [])
    manifest = backup.create_backup(root, "20260101T000000Z", entries)
    for e in manifest["entries"]:
        if e["path"].endswith("config.json"):
            e["mode"] = 0o4755
    root.config_file.write_text("{}")
    backup.restore(root, "20260101T000000Z", manifest)
    assert stat.S_IMODE(os.stat(root.config_file).st_mode) == 0o755
