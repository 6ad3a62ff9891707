"""redflag_agent_host: the pure decisions (directories, user attributes)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest


def test_dir_fixes(host_module):
    want = host_module.Want("/etc/redflag-agent", "redflag-agent", "redflag-agent", 0o750)
    have, agent = host_module.Have, "redflag-agent"
    fixes = host_module.dir_fixes
    assert fixes(want, have(False, False, None, None, None)) == ["create", "owner", "mode"]
    assert fixes(want, have(True, True, agent, agent, 0o750)) == []
    assert fixes(want, have(True, True, "root", "root", 0o750)) == ["owner"]
    assert fixes(want, have(True, True, agent, agent, 0o755)) == ["mode"]
    assert fixes(want, have(True, False, "root", "root", 0o644)) == ["not-a-directory"]


def entry(gid=990, login="/usr/sbin/nologin", home="/var/lib/redflag-agent"):
    return SimpleNamespace(pw_gid=gid, pw_shell=login, pw_dir=home)


@pytest.mark.parametrize(
    ("user", "gid", "opts"),
    [
        (None, 990, []),
        (entry(), 990, []),
        (entry(gid=5), 990, ["-g", "990"]),
        (entry(login="/bin/bash"), 990, ["-s", "/usr/sbin/nologin"]),
        (entry(home="/home/x"), 990, ["-d", "/var/lib/redflag-agent"]),
        # Check mode before the group exists: the gid is unknown, so it is not compared.
        (entry(gid=5), None, []),
    ],
)
def test_user_fixes(host_module, user, gid, opts):
    assert host_module.user_fixes(user, gid, "/var/lib/redflag-agent") == opts


def test_pyz_intact(host_module):
    have, digest = host_module.Have, "ab" * 32
    good = have(True, False, "root", "root", 0o644)
    assert host_module.pyz_intact(good, digest, digest.upper()) is True
    assert host_module.pyz_intact(good, "cd" * 32, digest) is False
    assert host_module.pyz_intact(good, digest, "") is False  # no published checksum
    assert host_module.pyz_intact(have(True, False, "root", "root", 0o666), digest, digest) is False
    assert host_module.pyz_intact(have(False, False, None, None, None), None, digest) is False
    assert host_module.pyz_intact(have(True, True, "root", "root", 0o644), None, digest) is False


def test_installed_lists_versions_and_current(host_module, tmp_path):
    for name in ("0.1.0", "0.2.0", "notes", "0.3.0.tmp-1"):
        (tmp_path / name).mkdir()
    (tmp_path / "current").symlink_to("0.2.0")
    version_re = r"^[0-9]+(\.[0-9]+){1,3}$"
    assert host_module.installed(str(tmp_path), version_re) == ("0.2.0", ["0.1.0", "0.2.0"])
    assert host_module.installed(str(tmp_path / "missing"), version_re) == (None, [])


# write_atomically moved to module_utils: tests/role/test_module_utils.py
