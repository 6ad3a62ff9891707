"""redflag_agent_state=image: the config module's forget_identity against the real zipapp.

The image keeps its settings, loses its identity, token and machine binding (a registered
template is unregistered first, and kept in identity_backups); check mode writes nothing
and a second run changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

from test_config_module_agent import SETTINGS, TOKEN, args, pyz, registered, root, run_module

__all__ = ["pyz", "root"]  # fixtures used below
GONE = ("agent_id", "token", "refresh_token", "registration_token", "machine_id",
        "enrolled_token_sha256")


def snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None
            for p in sorted(root.rglob("*"))}


def test_image_drops_identity_keeps_settings_and_a_backup(pyz, root):
    config = registered(root, machine_id="a" * 64, registration_token="left-over",
                        enrolled_token_sha256="f" * 12)
    before = snapshot(root)
    check = run_module(root, args(pyz, forget_identity=True), check=True)
    assert check["changed"] is True and set(GONE) <= set(check["changed_keys"])
    assert check["unregistered"] == {} and snapshot(root) == before, "check mode writes nothing"

    result = run_module(root, args(pyz, forget_identity=True))
    assert (result["changed"], result["enroll"], result["token_embedded"]) == (True, False, False)
    # port 9 does not answer: the unregister is a warning, the image is made anyway
    assert "forgetting it for the image anyway" in json.dumps(result.get("warnings", []))
    saved = json.loads(config.read_text())
    assert not set(GONE) & set(saved)
    assert saved["server_url"] == SETTINGS["server_url"] and saved["tags"] == ["t1"]
    backups = list((root / "var/lib/redflag-agent/identity_backups").glob("*-a-1.json"))
    assert backups and json.loads(backups[-1].read_text())["refresh_token"] == "r-1"

    again = run_module(root, args(pyz, forget_identity=True))
    assert (again["changed"], again["changed_keys"]) == (False, [])
    assert again["unregistered"] == {} and not again.get("warnings")


def test_image_on_a_host_without_agent_in_check_mode_enrolls_nothing(root):
    result = run_module(root, args(Path("/nonexistent/redflag-agent.pyz"), forget_identity=True),
                        check=True)
    assert (result["changed"], result["enroll"], result["token_embedded"]) == (True, False, False)


def test_image_with_a_token_is_refused(pyz, root):
    result = run_module(root, args(pyz, forget_identity=True, registration_token=TOKEN))
    assert result["failed"] is True and "enrolls nothing" in result["msg"]
