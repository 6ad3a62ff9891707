"""Filters for the playbooks: the rollout health gate, the role's failure record and the
fleet status table. Pure (values in, values out), table-tested in tests/role."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

OK_STATES = ("registered", "unverified", "absent", "image")
WAITING = "waiting-for-token"
NO_OUTCOME = "no outcome recorded (the host failed or was unreachable before the role finished)"

TABLE_COLUMNS = (
    ("host", "HOST"),
    ("registered", "REGISTERED"),
    ("agent_id", "AGENT_ID"),
    ("agent_version", "AGENT"),
    ("config_version", "CONFIG"),
    ("migrations", "MIGRATIONS"),
    ("service", "SERVICE"),
    ("last_checkin", "LAST CHECK-IN"),
    # Last: the longest cell, so it never pushes the other columns out of line.
    ("last_error", "LAST ERROR"),
)
# Ansible's own words when a task failed without saying why; the output is then the reason.
GENERIC_MSGS = ("non-zero return code", "unknown error", "module failure", "failed", "")
_STAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z\s+")
ERROR_CELL_MAX = 120
RERUN = "re-run the playbook with -l {host}"
# A reason that already says what to do (the service module's) carries it after this.
_OWN_NEXT = re.compile(r"(?:^|;\s*)next:\s*")
# The rescue's reason for a variable that fails meta/argument_specs.yml.
INVALID_VARS = "the role's variables do not match its argument spec (meta/argument_specs.yml)"
_ROLE_VAR = re.compile(r"\bredflag_agent_\w+")


def next_step(host: str, status: str, reason: str = "", failed_task: str = "") -> str:
    """What the operator does next about one host, by the state it ended in."""
    rerun = RERUN.format(host=host)
    if status == "rejected":
        return (
            f"mint a new registration token on the server, set redflag_agent_registration_token "
            f"(vault) and {rerun} (add -e redflag_agent_force_reregister=true when the server "
            "deleted a registered agent)"
        )
    if status == WAITING:
        return (
            f"set redflag_agent_registration_token for {host} (vault) and {rerun}, or let hosts "
            "without a token pass with -e redflag_rollout_allow_waiting=true"
        )
    if reason == NO_OUTCOME:
        return (
            f"check that {host} is reachable (ansible {host} -m ping) and read its failed task "
            f"above, then {rerun}"
        )
    if reason.startswith(INVALID_VARS):
        names = ", ".join(dict.fromkeys(_ROLE_VAR.findall(reason)))
        names = names or "the variables the reason names"
        return (
            f"correct {names} for {host} (host_vars, group_vars or -e; `ansible-doc -t role "
            f"redflag.agent.redflag_agent` gives each type), then {rerun}"
        )
    if failed_task:
        return f"fix what the task '{failed_task}' reported on {host}, then {rerun}"
    return (
        f"read `journalctl -u redflag-agent` and `redflag-agent status` on {host} (or run "
        f"playbooks/status.yml -l {host}), fix the cause named there, then {rerun}"
    )


def split_next(reason: Any) -> tuple[str, str]:
    """A reason and the advice it carries itself (after its first `; next:`), else ''."""
    text = str(reason or "")
    found = _OWN_NEXT.search(text)
    if not found:
        return text.strip(), ""
    return text[: found.start()].strip(), text[found.end():].strip()


def outcome_line(host: str, status: str, reason: Any, step: str = "") -> str:
    """`HOST: STATE: reason; next: advice`, the advice once: a reason that carries its own
    `next:` keeps it, else `step`, else the generic next step for the state."""
    what, own = split_next(reason)
    what = what.rstrip(". ") or "no reason recorded"
    advice = own or str(step or "").strip() or next_step(host, status, what)
    return f"{host}: {status}: {what}; next: {advice}"


def _tail(text: Any) -> str:
    """The last non-empty line of a command's output, whitespace collapsed."""
    lines = [" ".join(line.split()) for line in str(text or "").splitlines()]
    lines = [line for line in lines if line]
    return lines[-1] if lines else ""


def redflag_failure_outcome(
    result: Mapping[str, Any], task: Any = "a task", host: str = "this host"
) -> dict[str, Any]:
    """The role's rescue: redflag_agent_outcome for a failed task, with host, state, reason
    and next step. The service module's own outcome is kept when it classified the failure;
    a bare 'non-zero return code' or 'Unknown error' gets the output's last line or the
    module's outcome reason, so the gate never says only that."""
    result = result if isinstance(result, Mapping) else {}
    task = str(task or "a task")
    outcome = result.get("outcome")
    outcome = outcome if isinstance(outcome, Mapping) else {}
    if outcome.get("status") in ("rejected", "failed"):
        status, reason = str(outcome["status"]), str(outcome.get("reason") or "no reason given")
        return _failure(host, status, reason, kept=outcome)
    errors = result.get("argument_errors")
    if isinstance(errors, list) and errors:  # validate_argument_spec: each error names its variable
        reason = f"{INVALID_VARS}: " + "; ".join(" ".join(str(e).split()) for e in errors)
        return _failure(host, "failed", reason)
    msg = " ".join(str(result.get("msg") or "").split())
    bare = msg.lower().rstrip(".")
    for prefix in ("task failed: ", "action failed: "):
        bare = bare[len(prefix):] if bare.startswith(prefix) else bare
    detail = ""
    if any(bare == g or bare.startswith(g + " ") for g in GENERIC_MSGS):
        detail = (
            str(outcome.get("reason") or "")
            or _tail(result.get("stderr"))
            or _tail(result.get("module_stderr"))
            or _tail(result.get("stdout"))
            or _tail(result.get("module_stdout"))
        )
        if result.get("rc") not in (None, 0):
            detail = f"exit {result['rc']}" + (f": {detail}" if detail else "")
    reason = f"{task}: {msg or 'failed'}" + (f" ({detail})" if detail else "")
    return _failure(host, "failed", reason, failed_task=task)


def _failure(
    host: str, status: str, reason: str, failed_task: str = "", kept: Any = None
) -> dict[str, Any]:
    """The rescue's record: the reason as it came, the advice once (its own, else the
    generic one) and the line the role fails the host with."""
    what, own = split_next(reason)
    step = own or next_step(host, status, what, failed_task=failed_task)
    return {
        **(kept or {}),
        "status": status,
        "reason": reason,
        "next": step,
        "text": outcome_line(host, status, reason, step),
    }


def redflag_unhealthy(
    batch_hosts: Sequence[str],
    hostvars: Mapping[str, Any],
    allow_waiting: bool = True,
    service_skipped: bool = False,
    reachable: Sequence[str] = (),
) -> list[dict[str, str]]:
    """Hosts of a batch whose redflag_agent_outcome is not healthy, with the reason.

    service_skipped: --tags/--skip-tags left out the role's service step, so a reachable
    host has no outcome to judge; it counts as unverified (as in check mode), not failed.
    """
    ok = set(OK_STATES) | ({WAITING} if allow_waiting else set())
    bad = []
    for host in batch_hosts:
        outcome = (hostvars.get(host) or {}).get("redflag_agent_outcome")
        if not isinstance(outcome, Mapping) and service_skipped and host in reachable:
            continue
        if not isinstance(outcome, Mapping):
            status, reason = "failed", NO_OUTCOME
        else:
            status = str(outcome.get("status", "failed"))
            reason = str(outcome.get("reason") or "no reason recorded")
        if status in ok:
            continue
        if status == WAITING:
            reason = "no registration token (redflag_rollout_allow_waiting is false)"
        what, own = split_next(reason)
        step = str(
            own
            or (isinstance(outcome, Mapping) and outcome.get("next"))
            or next_step(host, status, what)
        )
        bad.append(
            {
                "host": host,
                "status": status,
                "reason": what,
                "next": step,
                "text": outcome_line(host, status, reason, step),
            }
        )
    return bad


def redflag_systemd_props(text: str) -> dict[str, str]:
    """`systemctl show -p A -p B` output (Key=Value lines) as a dict."""
    props = {}
    for line in (text or "").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            props[key.strip()] = value.strip()
    return props


def _cell(value: Any) -> str:
    if value is None or value in ("", []):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return " ".join(str(value).split())


def short_error(text: Any, limit: int = ERROR_CELL_MAX) -> str:
    """An agent error for a table cell: no leading timestamp, no 'Fix:' advice (the agent's
    log and status have it), the first sentence, at most `limit` characters."""
    text = _STAMP.sub("", " ".join(str(text or "").split()))
    text = text.split(" Fix:")[0].strip()
    first = re.split(r"(?<=[a-z)])\. ", text, maxsplit=1)[0].rstrip(". ")
    return first if len(first) <= limit else first[: limit - 3].rstrip() + "..."


def _error_cell(status: Mapping[str, Any], service: str) -> str:
    """The agent's last error, led by its exit ('exit 77: token rejected') while the
    service is down; empty when there is none."""
    error = short_error(status.get("last_error") or status.get("config_error"))
    exit_reason = _STAMP.sub("", str(status.get("last_exit_reason") or "")).strip()
    if not exit_reason.startswith("exit ") or service.startswith("active"):
        exit_reason = ""
    return ": ".join(part for part in (exit_reason, error) if part)


def _service_cell(unit: Mapping[str, str]) -> str:
    text = unit.get("ActiveState") or "unknown"
    if unit.get("SubState"):
        text += "/" + unit["SubState"]
    if unit.get("ExecMainStatus", "0") not in ("", "0"):
        text += f" (exit {unit['ExecMainStatus']})"
    return text


def redflag_status_row(
    host: str, status_cmd: Mapping[str, Any], unit_cmd: Mapping[str, Any]
) -> dict[str, Any]:
    """One host's row for the fleet table from the registered results of the agent's
    `status --json` and `systemctl show`. A status command that failed says why in the
    last-error column (no python3 there, no agent, an unreadable config)."""
    status: dict[str, Any] = {}
    out = str(status_cmd.get("stdout") or "").strip()
    rc = status_cmd.get("rc")
    problem = ""
    if rc == 0:
        try:
            loaded = json.loads(out)
        except ValueError:
            loaded = None
        status = loaded if isinstance(loaded, dict) else {}
        if not status:
            problem = "status --json printed no JSON object"
    else:
        why = _tail(status_cmd.get("stderr")) or str(status_cmd.get("msg") or "") or _tail(out)
        # python's own words for a missing zipapp: the agent is simply not installed
        if str(status_cmd.get("msg") or "").startswith("Error executing command"):
            python = (str(status_cmd.get("cmd") or "python3").split() or ["python3"])[0]
            problem = (f"status --json failed: cannot run {python}; set redflag_agent_python "
                       "to the host's python3 3.9+ (empty: python3 on PATH)")
        elif not (rc == 2 and "can't open file" in why):
            problem = f"status --json failed (exit {rc}): {short_error(why)}"
    unit = redflag_systemd_props(str(unit_cmd.get("stdout") or ""))
    service = _service_cell(unit)
    installed = bool(status) or rc == 0 or bool(problem)
    return {
        "host": host,
        "registered": status.get("registered"),
        "agent_id": status.get("agent_id"),
        "agent_version": status.get("agent_version") or ("?" if installed else "not installed"),
        "config_version": status.get("config_version"),
        "migrations": status.get("migrations_completed") or [],
        "service": service,
        "last_checkin": status.get("last_checkin"),
        "last_error": problem or _error_cell(status, service),
    }


def _aligned(rows: Sequence[Sequence[str]], block: bool = True) -> Any:
    """Aligned columns (the first row is the header). block: one string with newlines (the
    YAML result format prints it as a literal block); else a list of lines, which every
    callback prints one per line (the JSON format turns a newline into '\\n')."""
    widths = [max(len(line[i]) for line in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
        for line in rows
    ]
    return "\n".join(lines) if block else lines


def redflag_fleet_table(rows: Sequence[Mapping[str, Any]], block: bool = True) -> Any:
    """An aligned text table, one line per host, sorted by host name."""
    header = [title for _key, title in TABLE_COLUMNS]
    body = [
        [_cell(row.get(key)) for key, _title in TABLE_COLUMNS]
        for row in sorted(rows, key=lambda r: str(r.get("host", "")))
    ]
    return _aligned([header, *body], block)


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "redflag_unhealthy": redflag_unhealthy,
            "redflag_fleet_table": redflag_fleet_table,
            "redflag_systemd_props": redflag_systemd_props,
            "redflag_status_row": redflag_status_row,
            "redflag_failure_outcome": redflag_failure_outcome,
        }
