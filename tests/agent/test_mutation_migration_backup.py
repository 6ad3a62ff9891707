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


# --- a manifest the agent user could have rewritten: every bad entry is named, with why ----

GOOD = {"path": "etc/redflag-agent/x.json", "type": "mode", "existed": True}
LONG = "etc/redflag-agent/" + "d" * 300


@pytest.mark.parametrize("entry, why", [
    ("just text", "is not an object with a 'path'"),
    ({"path": 5, "type": "dir", "existed": True}, "is not an object with a 'path'"),
    ({"path": GOOD["path"], "type": "mode"}, "has no known 'type' and 'existed'"),
    ({"path": GOOD["path"], "type": "fifo", "existed": True},
     "has no known 'type' and 'existed'"),
    ({"path": "srv/data", "type": "dir", "existed": True},
     "is outside the agent's directories (a path outside the agent's directories)"),
    ({**GOOD, "mode": -1}, "has a bad 'mode'"),
    ({**GOOD, "mode": True}, "has a bad 'mode'"),
    ({**GOOD, "uid": 2**32}, "has a bad 'uid'"),
    ({**GOOD, "gid": "0"}, "has a bad 'gid'"),
    ({"path": GOOD["path"], "type": "file", "existed": True, "sha256": "ab"},
     "has no valid 'stored' copy and 'sha256'"),
    ({"path": GOOD["path"], "type": "file", "existed": True,
      "stored": f"files/{GOOD['path']}"}, "has no valid 'stored' copy and 'sha256'"),
    ({"path": GOOD["path"], "type": "symlink", "existed": True},
     "has no symlink 'target'"),
    ({"path": LONG, "type": "file", "existed": True}, "has no valid 'stored' copy and 'sha256'"),
])
def test_a_bad_manifest_entry_is_named_with_why(tmp_root, entry, why):
    where = tmp_root.backups_dir / NAME
    with pytest.raises(MigrationError) as err:
        backup.restore(tmp_root, NAME, {"entries": [GOOD, entry]})
    assert str(err.value) == (f"backup {where}: manifest entry {str(entry)[:200]!r} {why}; "
                              "inspect the backup before migrating again")


def test_the_largest_ids_and_modes_a_manifest_may_hold_are_accepted(tmp_root):
    edge = {**GOOD, "mode": 2**32 - 1, "uid": 0, "gid": 2**32 - 1}
    backup._validate_entry(tmp_root, tmp_root.backups_dir, edge)  # no exception


def test_restore_puts_back_owner_group_and_mode_of_a_changed_file(tmp_root):
    tmp_root.config_dir.mkdir(parents=True)
    f = tmp_root.config_dir / "x.json"
    f.write_text("{}")
    os.chmod(f, 0o600)
    rel = "etc/redflag-agent/x.json"
    backup.restore(tmp_root, NAME, {"entries": [
        {"path": rel, "type": "mode", "existed": True, "mode": 0o4640, "uid": 0,
         "gid": 1234}]})
    st = os.lstat(f)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 0, 1234)  # no setuid
    # an entry without a mode changes only the group
    backup.restore(tmp_root, NAME, {"entries": [
        {"path": rel, "type": "mode", "existed": True, "uid": 0, "gid": 99}]})
    st = os.lstat(f)
    assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o640, 99)


def test_a_directory_without_a_recorded_mode_is_made_private(tmp_root):
    backup.restore(tmp_root, NAME, {"entries": [
        {"path": "var/lib/redflag-agent/sub", "type": "dir", "existed": True}]})
    assert _mode(tmp_root.state_dir / "sub") == 0o700


def test_a_large_legacy_file_is_backed_up_and_restored(tmp_root):
    make_legacy(tmp_root)
    big = tmp_root.legacy_state_dir / "big.db"
    big.write_bytes(os.urandom(2 * 1024 * 1024))  # above the 1 MiB limit of small files
    before = contents(tmp_root.root)
    moves = legacy_moves(tmp_root, tuple(sorted(os.listdir(tmp_root.legacy_config_dir))),
                         tuple(sorted(os.listdir(tmp_root.legacy_state_dir))), None)
    manifest = backup.create_backup(tmp_root, NAME, backup.collect_entries(tmp_root, moves))
    big.write_bytes(b"changed")
    backup.restore(tmp_root, NAME, backup.load_manifest(tmp_root, NAME))
    # (the state directory holds the backup: made by it)
    assert {k: v for k, v in contents(tmp_root.root).items()
            if k != "var/lib/redflag-agent"} == before
    # a restore of a host with the big file intact leaves it alone
    ino = os.lstat(big).st_ino
    backup.restore(tmp_root, NAME, manifest)
    assert os.lstat(big).st_ino == ino


@pytest.mark.parametrize("what", ["make_dirs", "write_bytes", "set_attrs"])
def test_a_restore_step_that_fails_is_named_and_the_rest_goes_on(tmp_root, monkeypatch, what):
    tmp_root.config_dir.mkdir(parents=True)
    base = tmp_root.backups_dir / NAME
    (base / "files" / "etc" / "redflag-agent").mkdir(parents=True)
    (base / "files" / "etc" / "redflag-agent" / "a.json").write_text("A")
    target = tmp_root.state_dir / "gone"
    entries = [
        {"path": "var/lib/redflag-agent/gone", "type": "dir", "existed": True, "mode": 0o750},
        {"path": "etc/redflag-agent/a.json", "type": "file", "existed": True, "mode": 0o600,
         "stored": "files/etc/redflag-agent/a.json", "sha256": backup._sha256(b"A")}]
    real = getattr(backup.safefs, what)
    victim = target if what != "write_bytes" else tmp_root.config_dir / "a.json"

    def failing(path, *a, **k):
        if os.fspath(path) == os.fspath(victim):
            raise OSError(28, "No space left on device")
        return real(path, *a, **k)

    monkeypatch.setattr(backup.safefs, what, failing)
    with pytest.raises(backup.RestoreError) as err:
        backup.restore(tmp_root, NAME, {"entries": entries})
    problem = f"{victim}: No space left on device"
    if what == "write_bytes":
        problem += f"; {victim}: not identical to the backup after restore"
    assert str(err.value) == (f"restore from {base} incomplete: {problem}. The originals are "
                              f"in {base}/files; copy them back by hand")
    if what != "write_bytes":
        assert (tmp_root.config_dir / "a.json").read_text() == "A"


def test_a_planted_object_met_by_a_restore_is_named(tmp_root, tmp_path):
    tmp_root.config_dir.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, tmp_root.config_dir / "sub")
    base = tmp_root.backups_dir / NAME
    with pytest.raises(backup.RestoreError) as err:
        backup.restore(tmp_root, NAME, {"entries": [
            {"path": "etc/redflag-agent/sub/x", "type": "symlink", "existed": True,
             "target": "y"}]})
    assert str(err.value).startswith(f"restore from {base} incomplete: "
                                     f"{tmp_root.config_dir / 'sub'}: found a symbolic link where "
                                     "a directory belongs; ")
    assert list(elsewhere.iterdir()) == []


def test_a_new_backup_name_skips_whole_and_partial_ones(tmp_root):
    from datetime import datetime, timezone
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    tmp_root.backups_dir.mkdir(parents=True)
    assert backup.new_backup_name(tmp_root, now) == NAME
    (tmp_root.backups_dir / NAME).mkdir()
    assert backup.new_backup_name(tmp_root, now) == f"{NAME}-2"
    (tmp_root.backups_dir / f".{NAME}-2.partial").mkdir()
    (tmp_root.backups_dir / f"{NAME}-3").mkdir()
    assert backup.new_backup_name(tmp_root, now) == f"{NAME}-4"


def test_a_backup_name_is_utc_whatever_the_local_zone(tmp_root, monkeypatch):
    import time
    from datetime import datetime, timezone
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        tmp_root.backups_dir.mkdir(parents=True)
        name = backup.new_backup_name(tmp_root)
        now = datetime.now(timezone.utc)
        assert abs((now - datetime.strptime(name, "%Y%m%dT%H%M%SZ").replace(
            tzinfo=timezone.utc)).total_seconds()) < 60
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_prune_without_a_usable_backups_directory_removes_nothing(tmp_root, tmp_path):
    assert backup.prune(tmp_root, 1, set()) == []  # missing
    tmp_root.state_dir.mkdir(parents=True)
    os.symlink(tmp_path, tmp_root.backups_dir)  # planted: never followed
    (tmp_path / f".{NAME}.partial").mkdir()
    assert backup.prune(tmp_root, 1, set()) == []
    assert (tmp_path / f".{NAME}.partial").is_dir()


# --- what the takeover's backup records: planted objects refused, missing parents recorded

def _takeover_entries(paths, moves=()):
    return backup.collect_entries(paths, list(moves), takeover=True)


def test_a_takeover_records_missing_upstream_parents_as_directories(tmp_root):
    from .migration_fixtures import make_v0119
    make_v0119(tmp_root)
    by_path = {e["path"]: e for e in _takeover_entries(tmp_root)}
    lib = os.path.relpath(tmp_root.upstream_lib_dir, tmp_root.root)
    agent_id = os.path.relpath(tmp_root.v02_agent_id_file, tmp_root.root)
    assert by_path[lib] == {"path": lib, "type": "dir", "existed": False}
    assert by_path[agent_id] == {"path": agent_id, "type": "file", "existed": False}


@pytest.mark.parametrize("where, make", [
    ("upstream_etc_dir", "file"), ("v0119_config_file", "dir"), ("v02_agent_id_file", "dir"),
    ("v02_state_dir", "file"), ("v02_backups_dir", "file"), ("v02_config_file", "dir")])
def test_a_takeover_refuses_the_wrong_kind_of_object(tmp_root, where, make):
    from redflag_agent import safefs

    from .migration_fixtures import make_v02
    make_v02(tmp_root)
    p = getattr(tmp_root, where)
    if p.is_dir():
        import shutil
        shutil.rmtree(p)
    elif p.exists():
        p.unlink()
    p.parent.mkdir(parents=True, exist_ok=True)
    if make == "file":
        p.write_text("planted")
    else:
        p.mkdir()
    with pytest.raises(safefs.UnsafePath) as err:
        _takeover_entries(tmp_root)
    assert err.value.path == str(p)


def test_a_takeover_refuses_a_symlink_where_a_moved_file_is(tmp_root, tmp_path):
    from redflag_agent import safefs

    from .migration_fixtures import make_v02
    make_v02(tmp_root)
    src = tmp_root.v02_state_dir / "pending_acks.json"
    src.parent.mkdir(parents=True, exist_ok=True)
    if src.exists():
        src.unlink()
    os.symlink(tmp_path, src)
    # left alone (and recorded) when nothing moves it; refused when the takeover moves it
    entries = {e["path"]: e for e in _takeover_entries(tmp_root)}
    assert entries[os.path.relpath(src, tmp_root.root)]["type"] == "symlink"
    with pytest.raises(safefs.UnsafePath):
        _takeover_entries(tmp_root, [(src, tmp_root.state_dir / "pending_acks.json")])


@pytest.mark.parametrize("where, make", [
    ("config_dir", "file"), ("state_dir", "file"), ("backups_dir", "file"),
    ("config_file", "dir"), ("migration_state_file", "dir"), ("status_file", "dir"),
    ("legacy_config_dir", "file")])
def test_collecting_refuses_the_wrong_kind_of_object_in_our_directories(tmp_root, where, make):
    from redflag_agent import safefs
    make_legacy(tmp_root)
    p = getattr(tmp_root, where)
    if p.is_dir():
        import shutil
        shutil.rmtree(p)
    p.parent.mkdir(parents=True, exist_ok=True)
    if make == "file":
        p.write_text("planted")
    else:
        p.mkdir()
    with pytest.raises(safefs.UnsafePath) as err:
        backup.collect_entries(tmp_root, [])
    assert err.value.path == str(p)


def test_collecting_refuses_a_directory_where_a_moved_file_goes(tmp_root):
    from redflag_agent import safefs
    make_legacy(tmp_root)
    dst = tmp_root.state_dir / "agent.key"
    dst.mkdir(parents=True)
    with pytest.raises(safefs.UnsafePath) as err:
        backup.collect_entries(tmp_root, [(tmp_root.legacy_state_dir / "agent.key", dst)])
    assert err.value.path == str(dst)
