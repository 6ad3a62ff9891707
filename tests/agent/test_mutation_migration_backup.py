"""Rollback puts the host back exactly: contents, modes, owners, symlinks, files that did not
exist removed, and a damaged backup reported with where the originals are. Written to kill
the mutants that survived `make mutate` on migration/backup.py (docs/MUTATION.md)."""

from __future__ import annotations

import os
import stat

import pytest

from redflag_agent.migration import backup
from redflag_agent.migration.merge import legacy_moves
from redflag_agent.migration.model import MigrationError

from .migration_fixtures import contents, fresh_config, make_current, make_legacy, tree

NAME = "20260101T000000Z"


def _host(paths):
    """A half-migrated host: legacy dirs, a current config, a symlink and an agent file."""
    make_legacy(paths)
    make_current(paths, fresh_config(version=5), mode=0o640)
    paths.state_dir.mkdir(parents=True, exist_ok=True)
    os.symlink("ca.pem", paths.legacy_config_dir / "ca-link")
    own = paths.state_dir / "status.cache"
    own.write_text("agent's own file")
    os.chmod(own, 0o644)
    os.chmod(paths.legacy_config_dir, 0o755)  # noqa: S103 - the legacy default
    moves = legacy_moves(paths, tuple(sorted(os.listdir(paths.legacy_config_dir))),
                         tuple(sorted(os.listdir(paths.legacy_state_dir))), None)
    entries = backup.collect_entries(paths, moves)
    return backup.create_backup(paths, NAME, entries)


def _mode(p):
    return stat.S_IMODE(os.lstat(p).st_mode)


def test_restore_undoes_every_kind_of_change(tmp_root):
    manifest = _host(tmp_root)
    before = contents(tmp_root.root)
    cfg, key = tmp_root.config_file, tmp_root.legacy_state_dir / "agent.key"
    cfg.write_text("{}")                                     # content changed
    os.chmod(cfg, 0o600)
    os.chmod(tmp_root.legacy_config_dir, 0o700)              # a directory's mode
    key.unlink()                                             # a file removed
    (tmp_root.legacy_state_dir / "client.crt").unlink()
    os.symlink("/etc/shadow", tmp_root.legacy_state_dir / "client.crt")  # replaced by a link
    (tmp_root.state_dir / "agent.key").write_bytes(b"moved copy")   # did not exist before
    (tmp_root.legacy_config_dir / "ca-link").unlink()
    os.symlink("elsewhere", tmp_root.legacy_config_dir / "ca-link")  # a link retargeted
    os.chmod(tmp_root.state_dir / "status.cache", 0o600)    # the security phase's chmod

    backup.restore(tmp_root, NAME, manifest)

    assert contents(tmp_root.root) == before
    assert _mode(cfg) == 0o640 and _mode(tmp_root.legacy_config_dir) == 0o755
    assert os.readlink(tmp_root.legacy_config_dir / "ca-link") == "ca.pem"
    assert not (tmp_root.state_dir / "agent.key").exists()


def test_restore_of_an_untouched_host_changes_nothing(tmp_root):
    manifest = _host(tmp_root)
    before = tree(tmp_root.root)
    backup.restore(tmp_root, NAME, manifest)
    assert tree(tmp_root.root) == before  # mtimes included: identical files are not rewritten


def test_restore_removes_a_directory_standing_where_a_file_was(tmp_root):
    manifest = _host(tmp_root)
    tmp_root.config_file.unlink()
    tmp_root.config_file.mkdir()
    (tmp_root.config_file / "x").write_text("planted")
    backup.restore(tmp_root, NAME, manifest)
    assert tmp_root.config_file.is_file() and _mode(tmp_root.config_file) == 0o640


@pytest.mark.skipif(os.geteuid() != 0, reason="only root restores owners")
def test_restore_gives_files_back_their_owner(tmp_root):
    manifest = _host(tmp_root)
    os.chown(tmp_root.config_file, 4321, 4321)
    os.chown(tmp_root.legacy_config_dir, 4321, 4321)
    backup.restore(tmp_root, NAME, manifest)
    assert (os.stat(tmp_root.config_file).st_uid, os.stat(tmp_root.config_file).st_gid) == (
        os.getuid(), os.getgid())
    assert os.stat(tmp_root.legacy_config_dir).st_uid == os.getuid()


def test_a_damaged_backup_copy_is_reported_with_where_the_originals_are(tmp_root):
    manifest = _host(tmp_root)
    base = tmp_root.backups_dir / NAME
    stored = base / "files" / tmp_root.config_file.relative_to(tmp_root.root)
    stored.write_text("bit rot")
    tmp_root.config_file.write_text("{}")
    with pytest.raises(backup.RestoreError) as err:
        backup.restore(tmp_root, NAME, manifest)
    assert str(err.value) == (
        f"restore from {base} incomplete: {tmp_root.config_file}: not identical to the "
        f"backup after restore; {tmp_root.config_file}: the backup copy {stored} is damaged. "
        f"The originals are in {base}/files; copy them back by hand")
    # everything else was still put back
    assert (tmp_root.legacy_state_dir / "agent.key").exists()


def test_a_restore_that_cannot_write_says_which_path(tmp_root, monkeypatch):
    manifest = _host(tmp_root)
    tmp_root.config_file.write_text("{}")
    real = backup.safefs.write_bytes

    def full(path, data, mode):
        if path == tmp_root.config_file:
            raise OSError(28, "No space left on device")
        return real(path, data, mode)

    monkeypatch.setattr(backup.safefs, "write_bytes", full)
    with pytest.raises(backup.RestoreError) as err:
        backup.restore(tmp_root, NAME, manifest)
    assert f"{tmp_root.config_file}: No space left on device" in str(err.value)


def test_backup_names_sort_by_time_then_sequence(tmp_root):
    names = ["20260102T000000Z", "20260101T000000Z-2", "20260101T000000Z-10",
             "20260101T000000Z"]
    assert sorted(names, key=backup.name_key) == [
        "20260101T000000Z", "20260101T000000Z-2", "20260101T000000Z-10", "20260102T000000Z"]


def test_prune_keeps_the_newest_and_the_protected(tmp_root):
    tmp_root.backups_dir.mkdir(parents=True)
    for n in ("20260101T000000Z", "20260102T000000Z", "20260103T000000Z",
              "20260104T000000Z"):
        (tmp_root.backups_dir / n).mkdir()
        (tmp_root.backups_dir / n / "manifest.json").write_text('{"entries": []}')
    (tmp_root.backups_dir / ".20260105T000000Z.partial").mkdir()
    (tmp_root.backups_dir / ".20260106T000000Z.partial").mkdir()
    # two kept in all: the protected one counts, the oldest others go; a stale partial goes
    removed = backup.prune(tmp_root, 2, {"20260101T000000Z", "20260106T000000Z"})
    assert removed == ["20260102T000000Z", "20260103T000000Z"]
    assert sorted(os.listdir(tmp_root.backups_dir)) == [
        ".20260106T000000Z.partial", "20260101T000000Z", "20260104T000000Z"]
    assert backup.prune(tmp_root, 5, set()) == []


def test_an_unreadable_manifest_says_to_inspect_it(tmp_root):
    (tmp_root.backups_dir / NAME).mkdir(parents=True)
    where = tmp_root.backups_dir / NAME
    assert backup.load_manifest(tmp_root, NAME) is None
    (where / "manifest.json").write_text("{not json")
    with pytest.raises(MigrationError, match=r"has an unreadable manifest .*; inspect it "
                                             r"before migrating again$"):
        backup.load_manifest(tmp_root, NAME)
    (where / "manifest.json").write_text('{"entries": "none"}')
    with pytest.raises(MigrationError) as err:
        backup.load_manifest(tmp_root, NAME)
    assert str(err.value) == (f"backup {where}: manifest without entries; inspect it before "
                              "migrating again")


def test_a_failed_takeover_puts_every_upstream_object_back(tmp_root):
    from redflag_agent import migration
    from redflag_agent.migration.faults import FAULT_ENV

    from .migration_fixtures import make_v0119, make_v02, quiet_logger

    make_v0119(tmp_root)
    make_v02(tmp_root, backups=1)
    os.symlink("state/pending_acks.json", tmp_root.v02_state_dir / "acks-link")
    (tmp_root.v02_state_dir / "loose.txt").write_text("a file beside the state dirs")
    os.chmod(tmp_root.v02_server_dir, 0o711)  # noqa: S103 - a mode to restore
    os.chmod(tmp_root.upstream_etc_dir, 0o751)  # noqa: S103 - a mode to restore
    ours = {"etc/redflag-agent", "var/lib/redflag-agent"}  # made before the backup

    def upstream():
        return {k: v for k, v in contents(tmp_root.root).items() if k not in ours}

    before = upstream()
    report = migration.execute(tmp_root, quiet_logger(), environ={FAULT_ENV: "security:enospc"})
    assert (report.ok, report.failed_phase) == (False, "security")
    assert upstream() == before
