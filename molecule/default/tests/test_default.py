"""Fresh host: registered once, running, schema "6", no migration, right modes."""

from __future__ import annotations

import json

import rfcheck

CONVERGE = "molecule/shared/converge.yml"


def test_service_active_and_enabled(host):
    svc = host.service("redflag-agent")
    assert svc.is_running
    assert svc.is_enabled


def test_exactly_one_agent_on_server_with_this_hostname(host):
    status = rfcheck.agent_status(host)
    agents = rfcheck.server_agents_named(host.check_output("hostname"))
    assert len(agents) == 1, f"server lists {len(agents)} agents for this host"
    assert agents[0]["agent_id"] == status["agent_id"]


def test_registered_and_checked_in(host):
    status = rfcheck.wait_for(
        lambda: rfcheck.checked_in_status(host),
        30,
        what="the first check-in",
    )
    assert status["registered"] is True
    assert status["identity_source"] == "current"
    assert status["last_error"] is None


def test_config_version_6_and_no_token_left(host):
    config = rfcheck.read_config(host)
    assert config["version"] == "6"
    assert not config.get("registration_token")
    assert config.get("agent_id")
    assert not rfcheck.file_contains(host, rfcheck.CONFIG, rfcheck.token_file_text()), (
        "the registration token is still in config.json"
    )


def test_token_never_logged(host):
    assert rfcheck.token_file_text() not in rfcheck.journal_text(host), (
        "the registration token appears in the journal"
    )


def test_no_migration_and_no_backups(host):
    status = rfcheck.agent_status(host)
    assert status["legacy_present"] is False
    assert status["migrations_completed"] == []
    assert status["migration_failures"] in ({}, None)
    assert status["backups"] == []
    assert rfcheck.backups(host) == []
    assert rfcheck.legacy_style_backups(host) == []


def test_user(host):
    user = host.user("redflag-agent")
    assert user.exists
    assert user.home == "/var/lib/redflag-agent"
    assert user.shell.endswith("nologin") or user.shell == "/bin/false"
    assert user.uid < 1000, "redflag-agent must be a system user"


def test_modes_and_owners(host):
    agent = "redflag-agent"
    rfcheck.assert_file(host, "/etc/redflag-agent", "directory", agent, 0o750)
    rfcheck.assert_file(host, rfcheck.CONFIG, "file", agent, 0o600)
    rfcheck.assert_file(host, rfcheck.STATE_DIR, "directory", agent, 0o750)
    version = rfcheck.agent_status(host)["agent_version"]
    rfcheck.assert_file(host, f"/opt/redflag-agent/{version}", "directory", "root", 0o755)
    rfcheck.assert_file(
        host, f"/opt/redflag-agent/{version}/redflag-agent.pyz", "file", "root", 0o644
    )
    for name in ("status.json", "migration_state.json"):
        path = f"{rfcheck.STATE_DIR}/{name}"
        if host.file(path).exists:
            rfcheck.assert_file(host, path, "file", agent, 0o600)


def test_current_symlink(host):
    current = host.file("/opt/redflag-agent/current")
    assert current.is_symlink
    version = rfcheck.agent_status(host)["agent_version"]
    assert current.linked_to == f"/opt/redflag-agent/{version}"


def test_server_sees_agent_version(host):
    status = rfcheck.agent_status(host)
    (agent,) = [a for a in rfcheck.server_agents() if a["agent_id"] == status["agent_id"]]
    assert agent["agent_version"] == status["agent_version"]
    assert agent["migrated_from"] is None


def test_migration_unit_installed_static_and_ran_first(host):
    rfcheck.assert_file(host, rfcheck.MIGRATE_UNIT_PATH, "file", "root", 0o644)
    migrate = rfcheck.unit_props(
        host, "LoadState", "UnitFileState", "Result", "ExecMainStatus",
        "ExecMainExitTimestampMonotonic", unit=rfcheck.MIGRATE_UNIT,
    )  # fmt: skip
    assert (migrate["LoadState"], migrate["UnitFileState"]) == ("loaded", "static")
    assert (migrate["Result"], migrate["ExecMainStatus"]) == ("success", "0")
    agent = rfcheck.unit_props(host, "ExecMainStartTimestampMonotonic", "Wants", "After")
    assert rfcheck.MIGRATE_UNIT in agent["Wants"].split()
    assert rfcheck.MIGRATE_UNIT in agent["After"].split()
    # The migration finished before the agent's main process started.
    exited = int(migrate["ExecMainExitTimestampMonotonic"])
    assert 0 < exited <= int(agent["ExecMainStartTimestampMonotonic"])


def test_the_test_host_enforces_unit_sandboxes(host):
    # systemd in a container without CAP_SYS_ADMIN skips ProtectSystem= silently; then no
    # scenario would test the units' sandboxes (shared/create.yml adds the capability).
    out = host.run("systemd-run --wait --pipe --quiet -p ProtectSystem=strict "
                   "/bin/sh -c 'touch /etc/rf-sandbox-check' 2>&1")
    assert out.rc != 0 and "Read-only file system" in out.stdout, out.stdout
    assert not host.file("/etc/rf-sandbox-check").exists


def test_redflag_agent_command_on_the_path(host):
    # The README's `redflag-agent status`: on root's PATH, root-owned, the agent's answer.
    f = host.file("/usr/local/sbin/redflag-agent")
    assert (f.user, f.group, f.mode) == ("root", "root", 0o755)
    assert rfcheck.run_ok(host, "command -v redflag-agent").strip() == (
        "/usr/local/sbin/redflag-agent"
    )
    via_path = json.loads(rfcheck.run_ok(host, "redflag-agent status --json"))
    assert via_path["agent_id"] == rfcheck.agent_status(host)["agent_id"]
    assert rfcheck.run_ok(host, "redflag-agent version").strip() == via_path["agent_version"]


def test_server_down_outcome_names_host_state_and_next_step(host):
    # Issue 16: the health gate with the server unreachable said `Action failed: Unknown
    # error.`. Now the task's message names the host, the state and what to check. Last in
    # this file: it points the agent at a closed port, then converges back.
    name = rfcheck.inventory_name(host)
    down = "http://127.0.0.1:9"
    rc, out, _recap = rfcheck.run_playbook(
        CONVERGE,
        {
            "redflag_agent_server_url": down,
            "redflag_agent_verify_checkin": True,
            "redflag_agent_verify_retries": 2,
            "redflag_agent_verify_delay": 2,
        },
    )
    assert rc != 0, "the health gate passed with the server down"
    assert "Unknown error" not in out
    assert f"{name}: failed: no final outcome after" in out
    assert f"next: check that {down} is up and reachable from the host" in out
    rc, _out, _recap = rfcheck.run_playbook(CONVERGE)
    assert rc == 0, "converging back to the stand-in server failed; see playbook-runs.log"
