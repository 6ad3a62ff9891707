"""redflag_agent_version's rollback: the older version must read what the newer one left
(rollback_blocker, pure), else nothing is switched; the module on a temp directory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import MODULES

MODULE = MODULES / "redflag_agent_version.py"
VERSION_RE = r"^[0-9]+(\.[0-9]+){1,3}([-+.~][0-9A-Za-z.]+)?$"
NEWER = (
    "/etc/redflag-agent/config.json: config schema 7 was written by a newer redflag-agent; "
    "this agent (0.4.0) knows config schema 6 and older"
)


def status(**over):
    base = {"config_present": True, "config_valid": True, "config_error": None,
            "config_path": "/etc/redflag-agent/config.json", "registered": True}  # fmt: skip
    return json.dumps({**base, **over})


@pytest.mark.parametrize(
    ("rc", "out", "err", "fragment"),
    [
        (0, status(), "", None),
        (0, status(config_present=False, config_valid=False), "", None),  # nothing to read
        (0, status(config_valid=False, config_error=NEWER), "", "config schema 7 was written"),
        (0, status(config_valid=None), "", "config_valid is not true"),
        (0, status(config_valid="yes"), "", "config_valid is not true"),
        (78, "", "Traceback...\nSyntaxError: bad", "exited 78: SyntaxError: bad"),
        (0, "not json", "", "cannot report its status"),
        (0, "[1, 2]", "", "cannot report its status"),
        (1, status(), "", "exited 1"),
    ],
)
def test_rollback_blocker(version_module, rc, out, err, fragment):
    why = version_module.rollback_blocker("0.4.0", rc, out, err)
    if fragment is None:
        assert why is None
    else:
        assert why is not None and fragment in why, why
        assert why.startswith("version 0.4.0 ")


def test_a_refusal_says_the_host_stays_on_the_newer_version(version_module):
    why = version_module.rollback_blocker("0.4.0", 0, status(config_valid=False,
                                                              config_error=NEWER), "")  # fmt: skip
    assert "/etc/redflag-agent/config.json" in why and "stays on the newer version" in why


def put(opt: Path, version: str, status_json: str) -> str:
    """An installed version whose zipapp answers `status --json` with `status_json`."""
    (opt / version).mkdir(parents=True, exist_ok=True)
    pyz = opt / version / "redflag-agent.pyz"
    pyz.write_text(f"import sys\nprint({status_json!r})\n")
    return version


def run(opt: Path, version: str, **params) -> dict:
    args = opt.parent / "args.json"
    args.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {
        "version": version, "keep_versions": 2, "version_re": VERSION_RE,
        "opt_dir": str(opt), "python": sys.executable, **params}}))  # fmt: skip
    proc = subprocess.run(
        [sys.executable, str(MODULE), str(args)], capture_output=True, text=True, check=False
    )
    return json.loads(proc.stdout)


def test_rollback_switches_back_when_the_old_version_reads_the_config(tmp_path):
    opt = tmp_path / "opt"
    run(opt, put(opt, "0.4.0", status()))
    run(opt, put(opt, "0.4.1", status()))
    result = run(opt, "0.4.0", rollback=True)
    assert (result["switched"], result["refused"], result["version"]) == (True, "", "0.4.0")
    assert (opt / "current").readlink() == Path("0.4.0")
    assert sorted(p.name for p in opt.iterdir()) == ["0.4.0", "0.4.1", "current"]


def test_rollback_is_refused_and_nothing_switched_when_the_config_is_too_new(tmp_path):
    opt = tmp_path / "opt"
    run(opt, put(opt, "0.4.0", status(config_valid=False, config_error=NEWER)))
    run(opt, put(opt, "0.4.1", status()))
    result = run(opt, "0.4.0", rollback=True)
    assert result.get("failed") is not True
    assert (result["changed"], result["switched"], result["version"]) == (False, False, "0.4.1")
    assert "config schema 7" in result["refused"]
    assert (opt / "current").readlink() == Path("0.4.1")


def test_rollback_to_a_pruned_version_fails_naming_keep_versions(tmp_path):
    opt = tmp_path / "opt"
    run(opt, put(opt, "0.4.1", status()))
    result = run(opt, "0.4.0", rollback=True)
    assert result["failed"] is True and "redflag_agent_keep_versions" in result["msg"]
    assert (opt / "current").readlink() == Path("0.4.1")


def test_an_ordinary_switch_reports_the_version(tmp_path):
    opt = tmp_path / "opt"
    result = run(opt, put(opt, "0.4.0", status()))
    assert (result["version"], result["refused"]) == ("0.4.0", "")
