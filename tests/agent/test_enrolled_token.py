"""The fingerprint of the token of the last enrollment: recorded with the identity by every
registration, reported by status (the role's evidence for one-shot re-enrollment), never
the token itself; and the identity backup unregister keeps."""

from __future__ import annotations

import json
import logging

import pytest

from redflag_agent import binding
from redflag_agent import config as c
from redflag_agent import registration as r
from redflag_agent.machine_id import MachineId
from redflag_agent.status import report

LOG = logging.getLogger("test")
ANSWER = {"agent_id": "a-2", "token": "jwt", "refresh_token": "R2"}


@pytest.mark.parametrize(("token", "expected"), [
    ("tok-secret", r.token_fingerprint("tok-secret")),
    (None, None),  # an identity saved without a token (e.g. adopted) records none
    ("", None),
])
def test_apply_registration_records_the_fingerprint(token, expected):
    out = r.apply_registration({"registration_token": "x"}, ANSWER, "m" * 64, token)
    assert out.get("enrolled_token_sha256") == expected
    assert "tok-secret" not in json.dumps(out)


def test_a_new_enrollment_replaces_the_old_fingerprint():
    old = {"enrolled_token_sha256": r.token_fingerprint("old")}
    out = r.apply_registration(old, ANSWER, None, "new")
    assert out["enrolled_token_sha256"] == r.token_fingerprint("new")


def test_saving_an_unsaved_identity_keeps_its_fingerprint():
    unsaved = r.apply_registration({}, ANSWER, None, "tok")
    assert r.with_identity({"server_url": "u"}, unsaved)["enrolled_token_sha256"] == \
        r.token_fingerprint("tok")


def test_settings_may_not_set_it():
    with pytest.raises(c.ConfigError, match="enrolled_token_sha256"):
        c.merge_desired({"version": "6"}, {"enrolled_token_sha256": "x"}, None, False)


@pytest.mark.parametrize(("registered", "expected"), [(True, "abcdef012345"), (False, None)])
def test_status_reports_it_only_with_an_identity(tmp_root, registered, expected):
    cfg = {"version": "6", "server_url": "u", "enrolled_token_sha256": "abcdef012345"}
    if registered:
        cfg.update(agent_id="a-1", refresh_token="R")
    c.save_config(tmp_root, cfg)
    assert report(tmp_root, LOG)["enrolled_token_sha256"] == expected


def test_write_backup_keeps_the_identity(tmp_root):
    cfg = {"server_url": "u", "agent_id": "a-1", "token": "jwt", "refresh_token": "R",
           "machine_id": "m" * 64}
    path = binding.write_backup(tmp_root, cfg, MachineId("h" * 64, "etc/machine-id"),
                                "unregister")
    kept = json.loads(path.read_text())
    assert (kept["agent_id"], kept["refresh_token"], kept["reason"]) == ("a-1", "R", "unregister")
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent == tmp_root.state_dir / "identity_backups" == tmp_root.identity_backups_dir
