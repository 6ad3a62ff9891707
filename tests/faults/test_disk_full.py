"""Disk full during migration, for real: the host root is a small tmpfs, filled so that the
migration runs out of space at every stage in turn. Whatever stage it dies in: the originals
are intact (or the run says the rollback is incomplete and the next start goes on), the error
says "No space left on device", and once space is freed the next start completes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.migration_fixtures import AGENT_ID, JWT, REFRESH, contents, legacy_config, make_legacy
from redflag_agent.paths import Paths

from .conftest import Agent

STEP = 24 * 1024
PAD = 40 * 1024  # legacy data large enough that the stages need distinct amounts of space


@pytest.fixture
def tmpfs(tmp_path):
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(mnt)],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs at {mnt} ({res.stderr.strip()}): this case needs "
                    "root and mount(8); run the suite as root (CI does)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def lay_legacy(paths: Paths) -> None:
    make_legacy(paths, cfg=legacy_config(metadata={"rack": "a1", "pad": "x" * PAD}))
    (paths.legacy_state_dir / "pending_acks.json").write_text(
        json.dumps([{"id": f"c{i}", "pad": "y" * 64} for i in range(PAD // 80)]))
    (paths.legacy_state_dir / "server.pem").write_bytes(b"P" * PAD)
    # the role lays the new directories down before the agent migrates
    for d in (paths.config_dir, paths.state_dir):
        d.mkdir(mode=0o750, parents=True)


def fill_to(mnt: Path, target_free: int) -> Path:
    filler = mnt / "filler"
    size = free_bytes(mnt) - target_free
    with open(filler, "wb") as fh:
        if size > 0:
            fh.write(b"\0" * size)
    return filler


def test_disk_full_at_every_stage(tmpfs, zipapp, case):
    row = case("disk full during migration",
               "legacy 0.1.18 host (~170 KiB of legacy data) on a 2 MiB tmpfs; free space "
               f"set with a filler file from 0 upwards in {STEP // 1024} KiB steps until the "
               "migration fits; at each level one unit start (`migrate --json`), then the "
               "filler removed and a second start",
               "a failed start exits 0/78 with ok=false and 'No space left on device' in the "
               "message; the originals (legacy files, modes, no current config) are intact "
               "byte for byte, or the message says the rollback is incomplete; no partial "
               "backup or temp file is left; the start after freeing space completes with "
               "the same identity; stages hit: the backup and at least one phase after it")
    outcomes: list[str] = []
    level = 0
    while True:
        root = tmpfs / "root"
        if root.exists():
            shutil.rmtree(root)
        paths = Paths(root)
        lay_legacy(paths)
        before = contents(root)
        agent = Agent(root, zipapp)
        filler = fill_to(tmpfs, level)
        first = agent.run("migrate", "--json")
        filler.unlink()
        report = json.loads(first.stdout)
        if report["ok"]:
            assert first.returncode == 0
            outcomes.append(f"{level // 1024} KiB free: completed")
            final = first
        else:
            assert first.returncode in (0, 78), first.stderr
            assert "No space left on device" in report["message"], report
            message = report["message"]
            where = ("start" if "cannot start the migration" in message else
                     "backup" if "could not take the backup" in message else
                     report["failed_phase"])
            if "rollback incomplete" in report["message"]:
                outcomes.append(f"{level // 1024} KiB: {where}, rollback incomplete")
            else:
                assert contents(root) == before, f"originals changed at {level} bytes free"
                outcomes.append(f"{level // 1024} KiB: {where}, rolled back")
            leftovers = [p.name for p in root.rglob("*") if ".tmp" in p.name or
                         "partial" in p.name]
            assert leftovers == [], leftovers
            final = agent.run("migrate", "--json")
            assert final.returncode == 0, final.stderr
            assert json.loads(final.stdout)["ok"], final.stdout
        cfg = json.loads(paths.config_file.read_text())
        assert (cfg["agent_id"], cfg["token"], cfg["refresh_token"]) == (AGENT_ID, JWT, REFRESH)
        assert not paths.legacy_config_dir.exists() and not paths.legacy_state_dir.exists()
        assert (paths.state_dir / "server.pem").read_bytes() == b"P" * PAD
        if report["ok"]:
            break
        level += STEP
        assert level < 2 * 1024 * 1024, outcomes
    stages = {o.split(": ")[1].split(",")[0] for o in outcomes[:-1]}
    assert "backup" in stages, outcomes  # and "start" when even the intent record fails
    assert stages & {"directory", "config", "security"}, outcomes
    row.note("; ".join(outcomes))
