"""Upstream agents taken over: the same identities on the server, our agent under the unit,
the seed's loop stopped, the upstream OS pieces in the takeover backup and gone from their
places; check mode (run in prepare) said what it would do."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import time
from pathlib import Path

import rfcheck

PYZ = "/opt/redflag-agent/current/redflag-agent.pyz"
BACKUP_ROOT = "/var/lib/redflag-agent-takeover"
UNIT_FILE = "/etc/systemd/system/redflag-agent.service"
AGENT_BIN = "/usr/local/bin/redflag-agent"
HELPER = "/usr/local/bin/redflag-helper"
SUDOERS = "/etc/sudoers.d/redflag-agent"
POLKIT = "/etc/polkit-1/rules.d/50-redflag-agent.rules"
PREFIX_DROPIN = "/etc/systemd/system/redflag-.service.d/50-limits.conf"
DROPIN = "/etc/systemd/system/redflag-agent.service.d/override.conf"
HELPER_STATE = "/var/lib/redflag/helper"
TRUSTED_KEYS = "/etc/redflag/trusted-keys"
MOVED = {
    "seed": [UNIT_FILE, AGENT_BIN, SUDOERS, PREFIX_DROPIN],
    "v02": [UNIT_FILE, AGENT_BIN, HELPER, SUDOERS, POLKIT, DROPIN, HELPER_STATE, TRUSTED_KEYS],
}
DIRS = (HELPER_STATE, TRUSTED_KEYS)
LAYOUT = {"seed": "0.1.19-0.1.23", "v02": "0.2"}
# What lies in each upstream file (prepare.yml), to recognise the copies in the backup.
MARKER = {
    AGENT_BIN: "Stand-in for upstream agent",
    HELPER: "Stand-in for upstream's root helper",
    SUDOERS: "redflag-agent ALL=(root) NOPASSWD:",
    POLKIT: "polkit.addRule",
    UNIT_FILE: "ExecStart=/usr/local/bin/redflag-agent",
    PREFIX_DROPIN: "MemoryMax=500M",
    DROPIN: "NoNewPrivileges=no",
}


def _prepared() -> dict:
    path = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "takeover_identity.json"
    return json.loads(path.read_text())


def _identity(host) -> dict:
    return _prepared()["hosts"][host.check_output("hostname")]


def _upstream_processes(host) -> list[str]:
    """Command lines of processes running an upstream binary (read from /proc)."""
    # The names are put together at run time, so this script's own command line never matches.
    script = (
        "import os\n"
        "names = ['/usr/local/bin/' + n for n in ('redflag-agent', 'redflag-helper')]\n"
        "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "    try:\n"
        "        cmd = open(f'/proc/{pid}/cmdline', 'rb').read().replace(bytes(1), b' ').decode()\n"
        "    except OSError:\n"
        "        continue\n"
        "    if any(n in cmd for n in names):\n"
        "        print(cmd)\n"
    )
    out = rfcheck.run_ok(host, "python3 -c " + shlex.quote(script))
    return [line for line in out.splitlines() if line.strip()]


def _backups(host) -> list[str]:
    out = rfcheck.run_ok(host, f"ls -1A {BACKUP_ROOT}")
    return [line for line in out.splitlines() if line]


def test_our_agent_runs_under_the_unit(host):
    rfcheck.wait_for(lambda: rfcheck.checked_in_status(host), 30, what="a check-in")
    props = rfcheck.unit_props(host, "ExecStart", "ActiveState", "MainPID", "UnitFileState")
    assert (props["ActiveState"], props["UnitFileState"]) == ("active", "enabled")
    assert PYZ in props["ExecStart"]
    cmdline = rfcheck.run_ok(host, f"tr '\\0' ' ' < /proc/{props['MainPID']}/cmdline")
    assert PYZ in cmdline, cmdline
    assert _upstream_processes(host) == []


def test_same_identity_and_no_new_registration(host):
    ident = _identity(host)
    status = rfcheck.agent_status(host)
    assert status["registered"] is True
    assert status["agent_id"] == ident["agent_id"]
    assert status["upstream_layout"] == LAYOUT[rfcheck.inventory_name(host)]
    config = rfcheck.read_config(host)
    digest = hashlib.sha256(config.get("refresh_token", "").encode()).hexdigest()
    agent = next(a for a in rfcheck.server_agents() if a["agent_id"] == ident["agent_id"])
    if not agent.get("renewals"):  # a rotating server may have renewed it: then it changed
        assert digest == ident["refresh_token_sha256"], "the refresh token changed"
    # Both hosts' agents, and no other: nobody registered again.
    before = sorted(a["agent_id"] for a in _prepared()["agents_before"])
    assert sorted(a["agent_id"] for a in rfcheck.server_agents()) == before
    assert len(before) == 2


def test_checked_in_with_its_identity(host):
    ident = _identity(host)
    status = rfcheck.wait_for(lambda: rfcheck.checked_in_status(host), 30, what="a check-in")
    assert status["last_error"] is None, status["last_error"]
    before = {a["agent_id"]: a for a in _prepared()["agents_before"]}[ident["agent_id"]]
    agent = next(a for a in rfcheck.server_agents() if a["agent_id"] == ident["agent_id"])
    assert agent["checkins"] > before["checkins"]
    assert (agent["last_seen"] or "") > (before["last_seen"] or "")


def test_the_loop_stopped_and_its_litter_is_gone(host):
    assert rfcheck.legacy_style_backups(host) == []
    time.sleep(4)  # the stand-in restarted every second: no new directory may appear
    assert rfcheck.legacy_style_backups(host) == []
    props = rfcheck.unit_props(host, "NRestarts", "ActiveState")
    assert props["ActiveState"] == "active"


def test_upstream_pieces_moved_into_one_root_only_backup(host):
    name = rfcheck.inventory_name(host)
    rfcheck.assert_file(host, BACKUP_ROOT, "directory", "root", 0o700)
    (stamp,) = _backups(host)
    backup = f"{BACKUP_ROOT}/{stamp}"
    rfcheck.assert_file(host, backup, "directory", "root", 0o700)
    manifest = json.loads(rfcheck.run_ok(host, f"cat {backup}/manifest.json"))
    assert sorted(f["path"] for f in manifest["files"]) == sorted(MOVED[name])
    assert manifest["unit"]["was_active"] is True and manifest["unit"]["was_enabled"] is True
    for path in MOVED[name]:
        if path != UNIT_FILE:  # ours took its place
            assert not host.file(path).exists, f"{path} still in place"
        kept = host.file(f"{backup}/files{path}")
        if path in DIRS:
            assert kept.is_directory, f"{path} not in the backup"
            continue
        assert kept.is_file, f"{path} not in the backup"
        assert MARKER[path] in kept.content_string, f"{backup}/files{path} is not upstream's"
    assert oct(host.file(f"{backup}/files{AGENT_BIN}").mode) == oct(0o755)
    assert oct(host.file(f"{backup}/files{SUDOERS}").mode) == oct(0o440)
    assert "/opt/redflag-agent" in host.file(UNIT_FILE).content_string


def test_sudoers_polkit_and_group_are_gone(host):
    name = rfcheck.inventory_name(host)
    assert not host.file(SUDOERS).exists
    assert not host.file(POLKIT).exists
    assert not host.group("redflag-local").exists
    groups = rfcheck.run_ok(host, "id -nG redflag-agent").split()
    assert groups == ["redflag-agent"], groups
    if name == "v02":
        manifest_dir = f"{BACKUP_ROOT}/{_backups(host)[0]}"
        manifest = json.loads(rfcheck.run_ok(host, f"cat {manifest_dir}/manifest.json"))
        assert manifest["group"]["name"] == "redflag-local"
        assert manifest["group"]["members"] == ["redflag-agent"]


def test_upstream_config_and_state_taken_over(host):
    name = rfcheck.inventory_name(host)
    gone = (
        ["/etc/redflag/config.json"]
        if name == "seed"
        else ["/etc/redflag/agent/config.json", "/etc/redflag/agent_id", "/var/lib/redflag/agent"]
    )
    for path in gone:
        assert not host.file(path).exists, f"{path} still exists"


def _check_log() -> str:
    path = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "takeover-check.log"
    # The YAML callback folds long lines: compare with whitespace collapsed.
    return re.sub(r"\s+", " ", path.read_text())


def test_check_mode_said_what_it_would_do(host):
    """prepare.yml ran the role with --check and then checked that nothing changed."""
    name = rfcheck.inventory_name(host)
    log = _check_log()
    head = f"{name}: would take over the upstream agent: "
    assert head in log, f"no takeover in {name}'s check-mode line"
    text = re.split(r"ok: \[|TASK \[|PLAY RECAP", log[log.index(head) :], maxsplit=1)[0]
    assert "would stop and disable the upstream redflag-agent.service" in text
    for path in MOVED[name]:
        assert path in text, f"{path} not named in check mode: {text}"
    assert ("would remove" in text) and (("group redflag-local" in text) is (name == "v02"))
    assert (
        "would remove redflag-agent from group docker "
        "(root-equivalent; this agent does not use docker)"
    ) in text


def test_the_agent_user_left_docker_recorded_in_the_manifest(host):
    """Both installers put the agent user in docker (root-equivalent); the takeover took it
    out with gpasswd and wrote it down; our running agent holds no docker gid."""
    docker = host.group("docker")
    assert docker.exists, "the takeover removes the membership, never the group"
    assert "docker" not in rfcheck.run_ok(host, "id -nG redflag-agent").split()
    (stamp,) = _backups(host)
    manifest = json.loads(rfcheck.run_ok(host, f"cat {BACKUP_ROOT}/{stamp}/manifest.json"))
    assert manifest["memberships"] == [
        {
            "user": "redflag-agent",
            "group": "docker",
            "gid": docker.gid,
            "why": "root-equivalent; this agent does not use docker",
        }
    ]
    assert "gpasswd -a" in manifest["restore"]
    pid = rfcheck.unit_props(host, "MainPID")["MainPID"]
    status = rfcheck.run_ok(host, f"cat /proc/{pid}/status")
    groups = next(line for line in status.splitlines() if line.startswith("Groups:"))
    assert str(docker.gid) not in groups.split()[1:], groups


def test_no_dropin_left_on_our_unit_and_no_privileged_copy(host):
    """The upstream-era drop-ins went into the backup: systemd applies none to our unit, the
    emptied drop-in directories are gone, and the kept agent binary has no capabilities."""
    name = rfcheck.inventory_name(host)
    assert rfcheck.unit_props(host, "DropInPaths")["DropInPaths"] == ""
    for path in (DROPIN, PREFIX_DROPIN):
        assert not host.file(os.path.dirname(path)).exists, f"{os.path.dirname(path)} stays"
    (stamp,) = _backups(host)
    kept = f"{BACKUP_ROOT}/{stamp}/files{AGENT_BIN}"
    xattrs = rfcheck.run_ok(host, f"python3 -c \"import os; print(os.listxattr('{kept}'))\"")
    assert "security.capability" not in xattrs
    manifest = json.loads(rfcheck.run_ok(host, f"cat {BACKUP_ROOT}/{stamp}/manifest.json"))
    agent = next(f for f in manifest["files"] if f["path"] == AGENT_BIN)
    assert agent.get("dropped") == ("file capabilities" if name == "v02" else None)
    if name == "v02":
        assert host.file(f"{BACKUP_ROOT}/{stamp}/files{HELPER_STATE}/consumed-tokens").is_file
        assert not host.file("/var/lib/redflag").exists, "the emptied /var/lib/redflag stays"


def test_the_report_names_the_dropins_never_their_values(host):
    name = rfcheck.inventory_name(host)
    log = _check_log()
    assert "dropin-secret-0c1d" not in log
    if name == "v02":
        assert f"drop-in {DROPIN} (sets NoNewPrivileges, Environment, ProtectSystem)" in log
        assert f"{AGENT_BIN} (file capabilities dropped on the kept copy)" in log
        # Moved whole, not "removed (copies in ...)".
        assert re.search(rf"would move [^;]*helper directory {HELPER_STATE}[^;]* to ", log)
    else:
        assert f"drop-in {PREFIX_DROPIN} (sets MemoryMax)" in log
