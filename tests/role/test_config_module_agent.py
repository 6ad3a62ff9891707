"""redflag_agent_config end to end: the module drives the real agent zipapp in a temp root."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import MODULES, REPO

MODULE = MODULES / "redflag_agent_config.py"
TOKEN = "tok-e2e-7f3a9c"  # a fake token: the test checks it never appears in output
SETTINGS = {
    "server_url": "http://127.0.0.1:9",
    "check_in_interval": 300,
    "tags": ["t1"],
    "logging": {"level": "info"},
}


@pytest.fixture(scope="module")
def pyz(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, str(REPO / "agent_src" / "build_zipapp.py"), "--out", str(out)],
        check=True, capture_output=True,
    )  # fmt: skip
    return next(out.glob("redflag-agent-*.pyz"))


def run_module(root: Path, args: dict, check: bool = False) -> dict:
    args_file = root.parent / "args.json"
    args_file.write_text(
        json.dumps({"ANSIBLE_MODULE_ARGS": {**args, "_ansible_check_mode": check}})
    )
    proc = subprocess.run(
        [sys.executable, str(MODULE), str(args_file)],
        capture_output=True, text=True, check=False,
        env={**os.environ, "REDFLAG_ROOT": str(root)},
    )  # fmt: skip
    assert TOKEN not in proc.stdout + proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture
def root(tmp_path) -> Path:
    r = tmp_path / "root"
    (r / "etc" / "redflag-agent").mkdir(parents=True)
    (r / "var" / "lib" / "redflag-agent").mkdir(parents=True)
    return r


def args(pyz: Path, **extra) -> dict:
    return {"python": sys.executable, "pyz": str(pyz), "settings": SETTINGS, **extra}


def test_create_then_unchanged(pyz, root):
    config = root / "etc" / "redflag-agent" / "config.json"
    first = run_module(root, args(pyz, registration_token=TOKEN))
    assert (first["changed"], first["created"]) == (True, True)
    assert "registration_token" in first["changed_keys"]
    saved = json.loads(config.read_text())
    assert saved["registration_token"] == TOKEN and saved["version"] == "6"
    assert config.stat().st_mode & 0o777 == 0o600
    # Registered host: the role sends no token; the agent's keys are kept.
    saved.update(agent_id="a-1", token="jwt", refresh_token="r-1", machine_id="keep")
    del saved["registration_token"]
    config.write_text(json.dumps(saved))
    mtime = config.stat().st_mtime_ns
    second = run_module(root, args(pyz))
    assert (second["changed"], second["changed_keys"]) == (False, [])
    assert config.stat().st_mtime_ns == mtime
    kept = json.loads(config.read_text())
    assert (kept["agent_id"], kept["machine_id"]) == ("a-1", "keep")
    assert "registration_token" not in kept


def test_check_mode_reports_without_writing(pyz, root):
    config = root / "etc" / "redflag-agent" / "config.json"
    result = run_module(root, args(pyz, registration_token=TOKEN), check=True)
    assert (result["changed"], result["created"]) == (True, True)
    assert not config.exists()


def test_check_mode_without_agent_would_create(root):
    result = run_module(root, args(root / "missing.pyz"), check=True)
    assert (result["changed"], result["created"]) == (True, True)
    assert "would be created" in result["msg"]


def test_missing_agent_outside_check_mode_fails_clearly(root):
    result = run_module(root, args(root / "missing.pyz"))
    assert result["failed"] is True and "does not exist" in result["msg"]


def test_invalid_setting_is_refused_with_the_agents_reason(pyz, root):
    bad = {**SETTINGS, "check_in_interval": "soon"}
    result = run_module(root, {**args(pyz), "settings": bad})
    assert result["failed"] is True
    assert "exited 78" in result["msg"] and "check_in_interval" in result["msg"]
    assert not (root / "etc" / "redflag-agent" / "config.json").exists()


def test_reregister_without_token_is_refused(pyz, root):
    result = run_module(root, args(pyz, force_reregister=True))
    assert result["failed"] is True and "needs a registration token" in result["msg"]


def registered(root: Path, **extra) -> Path:
    config = root / "etc" / "redflag-agent" / "config.json"
    config.write_text(
        json.dumps(
            {"version": "6", "server_url": "http://127.0.0.1:9", "agent_id": "a-1",
             "token": "jwt", "refresh_token": "r-1", **extra}
        )
    )  # fmt: skip
    config.chmod(0o600)
    return config


def test_registered_host_gets_no_token_even_when_one_is_given(pyz, root):
    config = registered(root)
    result = run_module(root, args(pyz, registration_token=TOKEN))
    assert (result["enroll"], result["token_embedded"]) == (False, False)
    assert result["status"]["registered"] is True and result["status"]["agent_id"] == "a-1"
    assert "registration_token" not in json.loads(config.read_text())


def test_force_reregister_embeds_the_token_and_drops_the_identity(pyz, root):
    config = registered(root)
    result = run_module(root, args(pyz, registration_token=TOKEN, force_reregister=True))
    assert (result["enroll"], result["token_embedded"], result["changed"]) == (True, True, True)
    saved = json.loads(config.read_text())
    assert saved["registration_token"] == TOKEN and not saved.get("agent_id")


def test_forced_reenrollment_is_one_shot(pyz, root):
    """Enrolled with this very token (the agent's recorded fingerprint): force_reregister
    left in the inventory changes nothing, and nothing is unregistered."""
    from redflag_agent.registration import token_fingerprint

    config = registered(root, enrolled_token_sha256=token_fingerprint(TOKEN))
    run_module(root, args(pyz, registration_token=TOKEN))  # the settings, as a first run
    before = config.read_bytes()
    result = run_module(root, args(pyz, registration_token=TOKEN, force_reregister=True))
    assert (result["enroll"], result["token_embedded"], result["changed"]) == (False, False, False)
    assert result["unregistered"] == {} and not result.get("warnings")
    assert config.read_bytes() == before


def test_forced_reenrollment_unregisters_and_keeps_a_backup(pyz, root):
    """Another token than the last enrollment's: the replaced identity is unregistered
    first; the server (port 9) cannot be reached, so that is a warning, and the identity is
    kept in the agent's backup."""
    from redflag_agent.registration import token_fingerprint

    config = registered(root, enrolled_token_sha256=token_fingerprint("an older token"))
    result = run_module(root, args(pyz, registration_token=TOKEN, force_reregister=True))
    assert (result["enroll"], result["token_embedded"], result["changed"]) == (True, True, True)
    warning = json.dumps(result.get("warnings", []))
    assert "could not unregister the replaced agent a-1" in warning, result
    assert "Delete agent a-1 on the server" in warning
    backups = list((root / "var/lib/redflag-agent/identity_backups").glob("*-a-1.json"))
    assert len(backups) == 1
    kept = json.loads(backups[0].read_text())
    assert (kept["agent_id"], kept["refresh_token"]) == ("a-1", "r-1")
    saved = json.loads(config.read_text())
    assert saved["registration_token"] == TOKEN and not saved.get("agent_id")


def test_unregistered_host_without_token_would_enroll_but_embeds_nothing(pyz, root):
    result = run_module(root, args(pyz))
    assert (result["enroll"], result["token_embedded"]) == (True, False)
    assert result["migrated"] == []


@pytest.fixture
def full_config_dir(root):
    """The config directory on a 64 KiB tmpfs, filled to the last block (root only)."""
    cdir = root / "etc" / "redflag-agent"
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(cdir)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if res.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs at {cdir} ({res.stderr.strip()}): run as root")
    try:
        registered(root)
        with open(cdir / "filler", "wb", buffering=0) as fh:
            try:
                for _ in range(64):
                    fh.write(b"\0" * 4096)
            except OSError:
                pass
        yield cdir
    finally:
        subprocess.run(["umount", str(cdir)], check=True)


def test_full_disk_fails_the_play_with_the_agents_reason(pyz, root, full_config_dir):
    config = full_config_dir / "config.json"
    before = config.read_bytes()
    bad = {**SETTINGS, "tags": ["t" * 4096]}
    result = run_module(root, {**args(pyz), "settings": bad})
    assert result["failed"] is True
    assert "exited 78" in result["msg"] and "No space left on device" in result["msg"]
    assert "nothing was changed" in result["msg"] and str(config) in result["msg"]
    assert "zipapp" not in result["msg"] and "Traceback" not in result["msg"]
    assert config.read_bytes() == before


PROXY_PASSWORD = "pw-proxy-4d1e"  # noqa: S105 - fake secrets the test looks for in output
URL_PASSWORD = "pw-url-93b2"  # noqa: S105


def test_check_diff_shows_the_change_and_no_secret(pyz, root):
    # --check --diff: the agent's diff is returned (secrets as ********), nothing is
    # written, and neither the token nor a proxy password appears anywhere in the result.
    config = root / "etc" / "redflag-agent" / "config.json"
    run_module(root, args(pyz, registration_token=TOKEN))
    before = config.read_bytes()
    settings = {
        **SETTINGS,
        "check_in_interval": 120,
        "proxy": {"enabled": True, "http": f"http://u:{URL_PASSWORD}@127.0.0.1:3128",
                  "password": PROXY_PASSWORD},
    }  # fmt: skip
    args_file = root.parent / "args.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {
        **args(pyz, registration_token=TOKEN), "settings": settings,
        "_ansible_check_mode": True, "_ansible_diff": True,
    }}))  # fmt: skip
    proc = subprocess.run(
        [sys.executable, str(MODULE), str(args_file)],
        capture_output=True, text=True, check=False,
        env={**os.environ, "REDFLAG_ROOT": str(root)},
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    for secret in (TOKEN, PROXY_PASSWORD, URL_PASSWORD):
        assert secret not in output
    result = json.loads(proc.stdout)
    assert config.read_bytes() == before
    assert result["changed"] is True
    assert result["changed_keys"] == ["check_in_interval", "proxy"]
    diff = result["diff"]["prepared"]
    assert '+  "check_in_interval": 120,' in diff
    assert '"password": "********"' in diff
    assert "http://u:********@127.0.0.1:3128" in diff
    assert result["invocation"]["module_args"]["settings"]["proxy"]["password"] != PROXY_PASSWORD
