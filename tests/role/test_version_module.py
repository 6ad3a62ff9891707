"""redflag_agent_version: pruning order (pure) and the module on a temp directory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import MODULES

MODULE = MODULES / "redflag_agent_version.py"
VERSION_RE = r"^[0-9]+(\.[0-9]+){1,3}([-+.~][0-9A-Za-z.]+)?$"


@pytest.mark.parametrize(
    ("installed", "this", "previous", "keep", "doomed"),
    [
        ([("0.2.0", 3), ("0.1.0", 1), ("0.1.5", 2)], "0.2.0", "0.1.0", 2, ["0.1.5"]),
        ([("0.2.0", 3), ("0.1.0", 1), ("0.1.5", 2)], "0.2.0", "0.1.5", 2, ["0.1.0"]),
        ([("0.2.0", 3), ("0.1.0", 1), ("0.1.5", 2)], "0.2.0", None, 2, ["0.1.0"]),
        ([("0.2.0", 3), ("0.1.0", 1), ("0.1.5", 2)], "0.2.0", "0.1.0", 1, ["0.1.0", "0.1.5"]),
        ([("0.2.0", 3)], "0.2.0", "0.2.0", 1, []),
        # Downgrade: the newer one just left is the previous and is kept.
        ([("0.2.0", 3), ("0.1.0", 1)], "0.1.0", "0.2.0", 2, []),
    ],
)
def test_versions_to_prune(version_module, installed, this, previous, keep, doomed):  # noqa: PLR0917
    assert version_module.versions_to_prune(installed, this, previous, keep) == doomed


def put(opt: Path, version: str) -> str:
    """A copied version directory with its zipapp; returns the version."""
    (opt / version).mkdir(parents=True, exist_ok=True)
    (opt / version / "redflag-agent.pyz").write_bytes(version.encode())
    return version


def run(opt: Path, version: str, keep: int = 2, check: bool = False) -> dict:
    args = opt.parent / "args.json"
    args.write_text(
        json.dumps(
            {
                "ANSIBLE_MODULE_ARGS": {
                    "version": version, "keep_versions": keep, "version_re": VERSION_RE,
                    "opt_dir": str(opt), "_ansible_check_mode": check,
                }
            }
        )
    )  # fmt: skip
    proc = subprocess.run(
        [sys.executable, str(MODULE), str(args)], capture_output=True, text=True, check=False
    )
    return json.loads(proc.stdout)


def test_activate_then_unchanged_then_upgrade_prunes(tmp_path):
    opt = tmp_path / "opt"
    first = run(opt, put(opt, "0.1.0"))
    assert first["changed"] is True and (opt / "current").readlink() == Path("0.1.0")
    assert first["switched"] is True
    again = run(opt, put(opt, "0.1.0"))
    assert (again["changed"], again["changes"], again["switched"]) == (False, [], False)
    run(opt, put(opt, "0.1.5"))
    third = run(opt, put(opt, "0.2.0"))
    assert third["previous_version"] == "0.1.5" and third["pruned"] == ["0.1.0"]
    assert sorted(p.name for p in opt.iterdir()) == ["0.1.5", "0.2.0", "current"]


def test_check_mode_reports_and_changes_nothing(tmp_path):
    opt = tmp_path / "opt"
    run(opt, put(opt, "0.1.0"))
    result = run(opt, put(opt, "0.2.0"), check=True)
    assert result["changed"] is True and "current -> 0.2.0 (was 0.1.0)" in result["changes"]
    assert (opt / "current").readlink() == Path("0.1.0")


def test_check_mode_before_the_copy_reports_the_switch(tmp_path):
    opt = tmp_path / "opt"
    run(opt, put(opt, "0.1.0"))
    result = run(opt, "0.2.0", check=True)  # the copy would create 0.2.0
    assert result.get("failed") is not True and result["switched"] is True


def test_missing_zipapp_is_refused_and_current_is_kept(tmp_path):
    opt = tmp_path / "opt"
    run(opt, put(opt, "0.1.0"))
    (opt / "0.2.0").mkdir()
    result = run(opt, "0.2.0")
    assert result["failed"] is True and "is missing after the copy step" in result["msg"]
    assert (opt / "current").readlink() == Path("0.1.0")


def test_pruning_alone_is_not_a_switch(tmp_path):
    opt = tmp_path / "opt"
    for version in ("0.1.0", "0.1.5"):
        run(opt, put(opt, version))
    result = run(opt, put(opt, "0.1.5"), keep=1)
    assert (result["changed"], result["switched"], result["pruned"]) == (True, False, ["0.1.0"])
