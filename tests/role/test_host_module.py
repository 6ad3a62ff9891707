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
