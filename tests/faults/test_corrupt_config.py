"""Corrupt config: the unit's start (`migrate`, then `run`) exits 78 naming the file and the
problem, `status` reports it, and nothing on disk changes, not even an mtime."""

from __future__ import annotations

import json

import pytest

from .conftest import tree, write_config

CORRUPT = [
    ("truncated JSON", b'{"version": "6", "server_url": "http://127.0.0.1:9", "agent_id": "',
     "truncated"),
    ("truncated mid-key", b'{"version": "6", "serv', "truncated"),
    ("empty file", b"", "empty"),
    ("whitespace only", b" \n\t\n", "empty"),
    ("binary junk", b"\x7fELF\x02\x01\x01\x00\x00\xff\xfe\x00\x13\x37", "not UTF-8"),
    ("UTF-8 BOM", b'\xef\xbb\xbf{"version": "6", "server_url": "http://127.0.0.1:9"}',
     "byte order mark"),
    ("wrong type: check_in_interval", b'{"version": "6", "server_url": "http://127.0.0.1:9", '
     b'"check_in_interval": "soon", "registration_token": "t"}', "check_in_interval"),
    ("wrong type: server_url", b'{"version": "6", "server_url": ["x"]}', "server_url"),
    ("wrong type: top level", b'["server_url", "http://127.0.0.1:9"]', "object"),
    ("wrong type: version", b'{"version": {"n": 6}, "server_url": "http://127.0.0.1:9"}',
     "version"),
]


@pytest.mark.parametrize(("kind", "raw", "fragment"), CORRUPT, ids=[c[0] for c in CORRUPT])
def test_corrupt_config_exits_78_names_file_and_problem_and_changes_nothing(agent, case, kind,
                                                                            raw, fragment):
    case("corrupt /etc/redflag-agent/config.json",
         "config.json replaced by: " + ", ".join(c[0] for c in CORRUPT) + "; two unit "
         "starts (`migrate` then `run`), then `status --json`",
         "`migrate` and `run` exit 78 every time, stderr names the file and the problem, no "
         "traceback; `status` exits 0 and reports config_valid false with the reason; every "
         "file under the root byte- and mtime-identical")
    path = write_config(agent, raw=raw)
    before = tree(agent.root)
    for _ in range(2):
        for command in ("migrate", "run"):
            res = agent.run(command)
            assert res.returncode == 78, (command, res.stderr)
            assert str(path) in res.stderr and fragment in res.stderr, (command, res.stderr)
            assert "Traceback" not in res.stderr
    st = agent.run("status", "--json")
    assert st.returncode == 0
    report = json.loads(st.stdout)
    assert report["config_valid"] is False and fragment in report["config_error"]
    assert tree(agent.root) == before
    assert path.read_bytes() == raw


@pytest.mark.parametrize(("kind", "raw", "fragment"), CORRUPT[:6], ids=[c[0] for c in CORRUPT[:6]])
def test_corrupt_legacy_config_is_left_alone(agent, case, kind, raw, fragment):
    case("corrupt legacy /etc/aggregator/config.json, no current config",
         "legacy config.json replaced by broken bytes (truncated, empty, junk, BOM); two "
         "unit starts",
         "exit 78; the message names the legacy file, the problem and the fix; no backup, "
         "no new directories, legacy file byte-identical")
    legacy = agent.root / "etc/aggregator/config.json"
    legacy.parent.mkdir(parents=True)
    legacy.write_bytes(raw)
    (agent.root / "var/lib/aggregator").mkdir(parents=True)
    (agent.root / "var/lib/aggregator/agent.key").write_bytes(b"KEY")
    before = tree(agent.root)
    for _ in range(2):
        mig = agent.run("migrate")
        assert mig.returncode == 78, mig.stderr
        assert str(legacy) in mig.stderr and fragment in mig.stderr
        assert "legacy config cannot be migrated" in mig.stderr
        res = agent.run("run")
        assert res.returncode == 78, res.stderr
        assert str(legacy) in res.stderr and "Traceback" not in res.stderr
    assert tree(agent.root) == before
