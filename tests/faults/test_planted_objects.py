"""Root never follows what the redflag-agent user plants in its own directories.

As root (the unit's `migrate`, the role's `config apply` and `status`), with a real
`redflag-agent` system user owning the agent's and the legacy directories as in production,
a table of objects planted at every path root touches: a symlink to a root-only file, a
symlink to a root-only directory, a hard link to a root-only file, a FIFO, a directory where
a file belongs (a file where a directory belongs). After each command: nothing outside the
agent's directories changed (content, owner, mode), no foreign content reached a file or the
output, and the refusal names the path (exit 78; `status` exits 0 and says it in a field).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Agent

USER = "redflag-agent"
DECOY = "DECOY-ROOT-ONLY-" + os.urandom(6).hex()
AGENT_ID = "5b2c9a1e-7f3d-4e8a-9c61-2f0b8d4e7a10"
LITTER = "migration_backups_2025-01-01-000000"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the case is root "
                                "acting in directories another user owns (CI runs as root)")

# name -> (path below REDFLAG_ROOT, what belongs there)
LOCATIONS = {
    "config.json": ("etc/redflag-agent/config.json", "file"),
    "config dir": ("etc/redflag-agent", "dir"),
    "state dir": ("var/lib/redflag-agent", "dir"),
    "migration_state.json": ("var/lib/redflag-agent/migration_state.json", "file"),
    "status.json": ("var/lib/redflag-agent/status.json", "file"),
    "migration_backups": ("var/lib/redflag-agent/migration_backups", "dir"),
    "a backup": ("var/lib/redflag-agent/migration_backups/20260101T000000Z", "dir"),
    "legacy config.json": ("etc/aggregator/config.json", "file"),
    "legacy config dir": ("etc/aggregator", "dir"),
    "legacy state dir": ("var/lib/aggregator", "dir"),
    "legacy agent.key": ("var/lib/aggregator/agent.key", "file"),
    "moved agent.key": ("var/lib/redflag-agent/agent.key", "file"),
    "0.1.19-0.1.23 config.json": ("etc/redflag/config.json", "file"),
    "upstream config dir": ("etc/redflag", "dir"),
    "litter dir": (f"var/lib/redflag-agent/{LITTER}", "dir"),
}
# litter is removed, not read: what is planted there is unlinked, never followed (exit 0)
LITTER_LOCATIONS = ("litter dir",)
FILE_PLANTS = ("symlink-file", "symlink-dir", "hardlink", "fifo", "dir")
DIR_PLANTS = ("symlink-dir", "symlink-file", "fifo", "file")
CASES = [(loc, plant) for loc, (_, kind) in LOCATIONS.items()
         for plant in (FILE_PLANTS if kind == "file" else DIR_PLANTS)]
# where a planted object is on `config apply`'s path (elsewhere it must succeed untouched)
APPLY_PATHS = ("config.json", "config dir")


@pytest.fixture(scope="module")
def agent_user() -> Iterator[pwd.struct_passwd]:
    try:
        yield pwd.getpwnam(USER)
        return  # it existed: never deleted here
    except KeyError:
        pass
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                    "/usr/sbin/nologin", USER], check=True, capture_output=True, timeout=60)
    try:
        yield pwd.getpwnam(USER)
    finally:
        # the host as found (only the user this test created)
        subprocess.run(["userdel", USER], check=False, capture_output=True, timeout=60)


def _own(path: Path, pw: pwd.struct_passwd, mode: int) -> None:
    os.chown(path, pw.pw_uid, pw.pw_gid, follow_symlinks=False)
    os.chmod(path, mode)


def _json(path: Path, obj: object, pw: pwd.struct_passwd) -> None:
    path.write_text(json.dumps(obj))
    _own(path, pw, 0o600)


def make_host(base: Path, pw: pwd.struct_passwd) -> tuple[Path, Path]:
    """A root with a legacy layout and a current config without `version` (a migration is
    due), every agent and legacy directory owned by the agent user; decoys outside."""
    root = base / "root"
    for d, mode in (("etc/redflag-agent", 0o750), ("var/lib/redflag-agent", 0o750),
                    ("var/lib/redflag-agent/migration_backups", 0o700),
                    ("var/lib/redflag-agent/migration_backups/20260101T000000Z", 0o700),
                    ("etc/aggregator", 0o750), ("var/lib/aggregator", 0o750),
                    ("etc/redflag", 0o750), (f"var/lib/redflag-agent/{LITTER}", 0o700)):
        (root / d).mkdir(parents=True)
        _own(root / d, pw, mode)
    _json(root / "etc/redflag-agent/config.json",
          {"server_url": "http://127.0.0.1:9", "check_in_interval": 300}, pw)
    _json(root / "var/lib/redflag-agent/migration_state.json",
          {"format": 1, "completed": [], "failures": {}}, pw)
    _json(root / "var/lib/redflag-agent/status.json", {"last_checkin": None}, pw)
    _json(root / "var/lib/redflag-agent/migration_backups/20260101T000000Z/manifest.json",
          {"format": 1, "name": "20260101T000000Z", "entries": []}, pw)
    _json(root / "etc/aggregator/config.json",
          {"server_url": "http://127.0.0.1:9", "agent_id": AGENT_ID, "token": "jwt-x",
           "refresh_token": "refresh-x"}, pw)
    # the seed's generation too: /etc/redflag/config.json (same agent) and the loop's litter
    _json(root / "etc/redflag/config.json",
          {"server_url": "http://127.0.0.1:9", "agent_id": AGENT_ID, "token": "jwt-x",
           "refresh_token": "refresh-x", "version": "5"}, pw)
    _json(root / f"var/lib/redflag-agent/{LITTER}/config.json",
          {"server_url": "http://127.0.0.1:9", "registration_token": "loop-x"}, pw)
    (root / "var/lib/aggregator/agent.key").write_text("legacy key\n")
    _own(root / "var/lib/aggregator/agent.key", pw, 0o600)
    outside = base / "outside"
    outside.mkdir(mode=0o755)
    secret = outside / "secret"
    secret.write_text(DECOY)
    os.chmod(secret, 0o600)
    (outside / "dir").mkdir(mode=0o700)
    (outside / "dir" / "inner").write_text(DECOY)
    os.chmod(outside / "dir" / "inner", 0o600)
    # what a migration would write into a followed directory
    (outside / "dir" / "config.json").write_text(json.dumps({"from_outside": DECOY}))
    os.chmod(outside / "dir" / "config.json", 0o600)
    return root, outside


def plant(at: Path, kind: str, outside: Path, pw: pwd.struct_passwd) -> None:
    if at.is_dir() and not at.is_symlink():
        shutil.rmtree(at)
    elif os.path.lexists(at):
        at.unlink()
    if kind == "symlink-file":
        at.symlink_to(outside / "secret")
    elif kind == "symlink-dir":
        at.symlink_to(outside / "dir")
    elif kind == "hardlink":
        os.link(outside / "secret", at)
        return  # its owner is root's: the link shares the inode
    elif kind == "fifo":
        os.mkfifo(at, 0o600)
    elif kind == "dir":
        at.mkdir(mode=0o700)
    elif kind == "file":
        at.write_text("{}")
    os.chown(at, pw.pw_uid, pw.pw_gid, follow_symlinks=False)


def snapshot(top: Path) -> dict[str, tuple]:
    """Every object below `top`: type and mode, owner, link count, bytes or link target."""
    out = {".": (os.lstat(top).st_mode, os.lstat(top).st_uid)}
    for dirpath, dirnames, filenames in os.walk(top):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st = os.lstat(p)
            body = (os.readlink(p) if stat.S_ISLNK(st.st_mode) else
                    p.read_bytes() if stat.S_ISREG(st.st_mode) else None)
            out[str(p.relative_to(top))] = (st.st_mode, st.st_uid, st.st_gid, st.st_nlink,
                                            body)
    return out


def foreign_content(root: Path, planted: Path) -> list[str]:
    """Files under root holding the decoy, other than the planted hard link itself."""
    hits = []
    for dirpath, _dirs, files in os.walk(root):
        for n in files:
            p = Path(dirpath) / n
            if p == planted or not stat.S_ISREG(os.lstat(p).st_mode):
                continue
            if DECOY.encode() in p.read_bytes():
                hits.append(str(p))
    return hits


@pytest.fixture
def host(tmp_path, agent_user, zipapp):
    root, outside = make_host(tmp_path, agent_user)
    return root, outside, Agent(root, zipapp), agent_user


def _prepare(host, location, kind):
    root, outside, agent, pw = host
    at = root / LOCATIONS[location][0]
    plant(at, kind, outside, pw)
    return root, outside, agent, at


def _common_checks(root, outside, at, before_outside, res):
    assert snapshot(outside) == before_outside, "something outside the agent's dirs changed"
    assert DECOY not in res.stdout + res.stderr
    assert foreign_content(root, at) == []
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize(("location", "kind"),
                         [c for c in CASES if c[0] not in LITTER_LOCATIONS])
def test_migrate_refuses_before_touching_anything(host, location, kind):
    root, outside, agent, at = _prepare(host, location, kind)
    before_root, before_outside = snapshot(root), snapshot(outside)
    res = agent.run("migrate", "--json", timeout=30)
    _common_checks(root, outside, at, before_outside, res)
    assert res.returncode == 78, (res.stdout, res.stderr)
    assert str(at) in res.stdout + res.stderr
    assert snapshot(root) == before_root, "migrate changed the agent's directories"


@pytest.mark.parametrize(("location", "kind"), CASES)
def test_config_apply_refuses_or_stays_clear(host, location, kind):
    root, outside, agent, at = _prepare(host, location, kind)
    before_root, before_outside = snapshot(root), snapshot(outside)
    desired = json.dumps({"settings": {"server_url": "http://127.0.0.1:9",
                                       "check_in_interval": 120}})
    res = agent.run("config", "apply", "--json", stdin=desired, timeout=30)
    _common_checks(root, outside, at, before_outside, res)
    if location in APPLY_PATHS:
        assert res.returncode == 78, (res.stdout, res.stderr)
        assert str(at) in res.stderr
        assert snapshot(root) == before_root
    else:
        # not on its path: it applies, and the planted object is left exactly as it was
        assert res.returncode == 0, (res.stdout, res.stderr)
        after = snapshot(root)
        rel = str(at.relative_to(root))
        # rel itself and what is below it ("etc/redflag" is a prefix of "etc/redflag-agent")
        def below(k: str) -> bool:
            return k == rel or k.startswith(rel + "/")
        assert {k: v for k, v in after.items() if below(k)} == {
            k: v for k, v in before_root.items() if below(k)}
        cfg = root / "etc/redflag-agent/config.json"
        assert json.loads(cfg.read_text())["check_in_interval"] == 120
        st = os.lstat(cfg)
        assert (st.st_uid, stat.S_IMODE(st.st_mode), st.st_nlink) == (
            host[3].pw_uid, 0o600, 1)


@pytest.mark.parametrize(("location", "kind"), CASES)
def test_status_reads_nothing_planted(host, location, kind):
    root, outside, agent, at = _prepare(host, location, kind)
    before_root, before_outside = snapshot(root), snapshot(outside)
    res = agent.run("status", "--json", timeout=30)
    _common_checks(root, outside, at, before_outside, res)
    assert res.returncode == 0, (res.stdout, res.stderr)
    assert snapshot(root) == before_root
    rep = json.loads(res.stdout)
    if location in APPLY_PATHS:
        assert rep["config_valid"] is False and str(at) in rep["config_error"]
    if location == "status.json":
        assert str(at) in rep["last_error"]


@pytest.mark.parametrize(("location", "kind"), [c for c in CASES if c[0] in LITTER_LOCATIONS])
def test_migrate_unlinks_planted_litter_without_following(host, location, kind):
    """A litter entry that is a symlink (to a root-only file or directory), a FIFO or a file:
    unlinked like any litter, its target untouched, nothing read from it."""
    root, outside, agent, at = _prepare(host, location, kind)
    before_outside = snapshot(outside)
    res = agent.run("migrate", "--json", timeout=30)
    _common_checks(root, outside, at, before_outside, res)
    assert res.returncode == 0, (res.stdout, res.stderr)
    out = json.loads(res.stdout)
    assert out["ok"] and out["litter"]["removed"] == 1, out
    assert not os.path.lexists(at)
    assert not (root / "etc/redflag").exists() and not (root / "etc/aggregator").exists()
    cfg = json.loads((root / "etc/redflag-agent/config.json").read_text())
    assert cfg["agent_id"] == AGENT_ID and cfg["version"] == "6"
