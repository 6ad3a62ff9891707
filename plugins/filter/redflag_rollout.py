"""Filters for site.yml's canary rollout: batch sizes, the rollback decision, the summary.

Every function here is pure (values in, values out) and table-tested in
tests/role/test_rollout_filters.py; site.yml only wires them to hostvars.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

try:  # a clear message in the play instead of a traceback
    from ansible.errors import AnsibleFilterError as _InputError
except ImportError:  # pragma: no cover - the tests run with ansible installed
    _InputError = ValueError  # type: ignore[assignment,misc]

ROLLBACK_SCOPES = ("batch", "failed", "none")
_PCT = re.compile(r"^([0-9]{1,3})%$")
_COUNT = re.compile(r"^[0-9]+$")

# The role's tasks/rollback.yml records each host's rollback in this host fact.
ROLLBACK_FACT = "redflag_agent_rollback_result"
# The role's service step (tasks/main.yml); the gate has something to judge only after it.
SERVICE_TAG = "redflag_agent_service"
# site.yml's batch counter, gate, rollback and summary are tagged `always`; these skip them.
GATE_SKIPPING_TAGS = ("always", "tagged")
# The role's tags before they carried its name; they would select nothing now.
OLD_TAGS = ("preflight", "install", "takeover", "configure", "service", "image", "remove")


def task_runs(task_tags: Sequence[str], run_tags: Sequence[str], skip_tags: Sequence[str]) -> bool:
    """Whether a task with these tags runs under --tags/--skip-tags: Ansible's rule
    (ansible.playbook.taggable.Taggable.evaluate_tags), for tags that are not templated."""
    tags = set(task_tags) or {"untagged"}
    only, skip = set(run_tags or ()), set(skip_tags or ())
    runs = True
    if only:
        runs = (
            "always" in tags
            or ("all" in only and "never" not in tags)
            or not tags.isdisjoint(only)
            or ("tagged" in only and tags != {"untagged"} and "never" not in tags)
        )
    if runs and skip:
        if "all" in skip:
            runs = "always" in tags and "always" not in skip
        elif not tags.isdisjoint(skip) or ("tagged" in skip and tags != {"untagged"}):
            runs = False
    return runs


def redflag_service_skipped(run_tags: Sequence[str], skip_tags: Sequence[str] = ()) -> bool:
    """--tags/--skip-tags leave out the role's service step: there is no outcome to judge."""
    return not task_runs([SERVICE_TAG], run_tags, skip_tags)


def check_gate_tags(skip_tags: Sequence[str], run_tags: Sequence[str] = ()) -> None:
    """Refuse --skip-tags that would skip site.yml's own gate (tagged always), and the
    role's old unprefixed tag names, which now select nothing."""
    hit = [t for t in GATE_SKIPPING_TAGS if t in set(skip_tags or ())]
    if hit:
        raise _InputError(
            f"--skip-tags {','.join(hit)} would skip site.yml's batch counter, health gate, "
            "rollback and summary (they are tagged always), so a failed host would pass; "
            "skip the role's steps by name instead (--skip-tags redflag_agent_install, "
            "redflag_agent_configure, redflag_agent_service, ...)"
        )
    old = [t for t in (*(run_tags or ()), *(skip_tags or ())) if t in OLD_TAGS]
    if old:
        raise _InputError(
            f"--tags/--skip-tags {','.join(old)}: the role's tags carry its name now; use "
            + ", ".join(f"redflag_agent_{t}" for t in old)
        )


def _batch_size(value: Any, name: str) -> Any:
    """A count (int >= 1) or a percentage string ('1%'..'100%'); anything else is an error."""
    text = str(value).strip() if not isinstance(value, bool) else ""
    pct = _PCT.match(text)
    if pct and 1 <= int(pct.group(1)) <= 100:
        return text
    if _COUNT.match(text) and int(text) >= 1:
        return int(text)
    raise _InputError(
        f"{name} is {value!r}; set it to a host count (1 or more, e.g. 1) or a percentage of "
        "the play's hosts (1% to 100%, e.g. 10%)"
    )


def redflag_serial(
    canary: Any, serial: Any, skip_tags: Sequence[str] = (), run_tags: Sequence[str] = ()
) -> list[Any]:
    """The play's `serial` list: the canary batch first (when set), then the usual batches.

    Ansible repeats the list's last value, so [canary, serial] is "canary, then serial".
    skip_tags, run_tags: ansible_skip_tags, ansible_run_tags; serial is templated before
    any task and under any tags, so tags that would skip the gate (or select nothing of the
    role) are refused here, before a host is touched.
    """
    check_gate_tags(skip_tags, run_tags)
    serials = list(serial) if isinstance(serial, (list, tuple)) else [serial]
    if not serials:
        raise _InputError("redflag_rollout_serial is empty; set a host count or a percentage")
    out = [_batch_size(v, "redflag_rollout_serial") for v in serials]
    if canary is None or (isinstance(canary, str) and not canary.strip()):
        return out
    return [_batch_size(canary, "redflag_rollout_canary"), *out]


def _size(value: Any, total: int) -> int:
    """Ansible's pct_to_int: a percentage of all play hosts, rounded down, at least 1."""
    if isinstance(value, str) and value.endswith("%"):
        return int(int(value[:-1]) / 100.0 * total) or 1
    return int(value)


def redflag_batches(hosts: Sequence[str], serial: Sequence[Any]) -> list[list[str]]:
    """The play's batches, cut as Ansible cuts them (playbook_executor's serialized batches)."""
    rest, total = list(hosts), len(hosts)
    serials = list(serial) or [-1]
    batches, item = [], 0
    while rest:
        size = _size(serials[item], total)
        if size <= 0:
            batches.append(rest)
            break
        batches.append(rest[:size])
        rest = rest[size:]
        item = min(item + 1, len(serials) - 1)
    return batches


def rollback_scope(value: Any) -> str:
    """redflag_rollout_rollback: batch (default), failed or none; booleans map to batch/none."""
    if isinstance(value, bool):
        return "batch" if value else "none"
    text = str(value).strip().lower()
    if text in ("true", "yes"):
        return "batch"
    if text in ("false", "no"):
        return "none"
    if text not in ROLLBACK_SCOPES:
        raise _InputError(
            f"redflag_rollout_rollback is {value!r}; set it to batch (roll back every host of a "
            "failed batch whose version the play changed), failed (only the hosts that failed "
            "the gate) or none (stop without rolling back)"
        )
    return text


def _registered(hostvars: Mapping[str, Any], host: str, name: str) -> Mapping[str, Any]:
    value = (hostvars.get(host) or {}).get(name)
    return value if isinstance(value, Mapping) else {}


def redflag_rollback_plan(
    batch_hosts: Sequence[str],
    hostvars: Mapping[str, Any],
    bad: Sequence[Mapping[str, Any]],
    reachable: Sequence[str],
    scope: Any = "batch",
) -> dict[str, list[dict[str, str]]]:
    """Which hosts of a failed batch go back to the version they ran before the play.

    A host goes back when the play switched its version (redflag_agent_version's
    `switched` with a `previous_version`), it is still reachable, and the scope takes it
    (batch: every such host of the batch; failed: only those that failed the gate).
    Returns {'rollback': [{host, from, to}], 'kept': [{host, reason}]}, where `kept`
    names each failed host that is not rolled back, and why.
    """
    scope = rollback_scope(scope)
    failed = [str(b.get("host")) for b in bad]
    plan: dict[str, list[dict[str, str]]] = {"rollback": [], "kept": []}
    if not failed:
        return plan
    for host in batch_hosts:
        versions = _registered(hostvars, host, "redflag_agent__versions")
        previous = versions.get("previous_version")
        new = versions.get("version")
        reason = ""
        if scope == "none":
            reason = "rollback is off (redflag_rollout_rollback=none)"
        elif scope == "failed" and host not in failed:
            continue
        elif not versions.get("switched"):
            reason = "this play did not change its agent version"
        elif not previous or previous == new:
            reason = "no earlier version on this host (first install)"
        elif host not in reachable:
            reason = "unreachable, so it cannot be switched back"
        if reason:
            if host in failed:
                plan["kept"].append({"host": host, "reason": reason})
            continue
        plan["rollback"].append({"host": host, "from": str(new), "to": str(previous)})
    return plan


def _rollback_results(
    plan: Mapping[str, Any], hostvars: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """The role's rollback result per planned host; a missing one says so."""
    out = []
    for item in plan.get("rollback") or []:
        result = _registered(hostvars, item["host"], ROLLBACK_FACT)
        if not result:
            result = {
                "status": "failed",
                "reason": "no rollback result (the host became unreachable during the rollback)",
            }
        out.append({**item, **result, "host": item["host"]})
    return out


def _host_changed(hostvars: Mapping[str, Any], host: str) -> bool:
    keys = (
        "redflag_agent__host",
        "redflag_agent__pyz_copy",
        "redflag_agent__versions",
        "redflag_agent__config",
        "redflag_agent__service",
    )
    return any(bool(_registered(hostvars, host, key).get("changed")) for key in keys)


def redflag_batch_row(  # noqa: PLR0913, PLR0917 - one row has this many facts
    number: int,
    total: int,
    batch_hosts: Sequence[str],
    hostvars: Mapping[str, Any],
    bad: Sequence[Mapping[str, Any]],
    plan: Mapping[str, Any],
    seconds: float,
) -> dict[str, Any]:
    """One summary row for a finished batch (after its gate and any rollback)."""
    failed = {str(b.get("host")) for b in bad}
    results = _rollback_results(plan, hostvars)
    notes = [
        f"{b.get('host')}: {b.get('status')}; next: {b.get('next') or 'see the gate message'}"
        for b in bad
    ]
    return {
        "batch": f"{number} of {total}",
        "hosts": list(batch_hosts),
        "changed": [h for h in batch_hosts if _host_changed(hostvars, h)],
        "healthy": [h for h in batch_hosts if h not in failed],
        "rolled_back": [{"host": r["host"], "status": r.get("status")} for r in results],
        "seconds": round(float(seconds), 1),
        "result": "STOPPED" if failed else "passed",
        "notes": notes,
    }


def redflag_pending_rows(batches: Sequence[Sequence[str]], done: int) -> list[dict[str, Any]]:
    """Rows for the batches a stopped rollout never started."""
    total = len(batches)
    return [
        {
            "batch": f"{i + 1} of {total}",
            "hosts": list(hosts),
            "changed": [],
            "healthy": [],
            "rolled_back": [],
            "seconds": None,
            "result": "not started",
        }
        for i, hosts in enumerate(batches)
        if i >= done
    ]


def _names(hosts: Sequence[str]) -> str:
    return ",".join(hosts) if hosts else "-"


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(line[i]) for line in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
        for line in rows
    ]


def _summary_notes(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Under the table: each failed host with its state and next step, then the outcome."""
    notes = [f"batch {row.get('batch')}: {n}" for row in rows for n in row.get("notes") or []]
    stopped = [row for row in rows if row.get("result") == "STOPPED"]
    untouched = [row for row in rows if row.get("result") == "not started"]
    waiting = [host for row in untouched for host in row.get("hosts") or []]
    if stopped:
        notes.append(  # not the gate's own words: tests find the gate message by them
            f"the rollout stops here (batch {stopped[-1].get('batch')} failed)"
            + (f"; not started: {', '.join(waiting)} (untouched)" if waiting else "")
            + "; fix the hosts named above and re-run the playbook"
        )
    elif rows:
        notes.append(
            f"all {len(rows)} batches passed; next: playbooks/status.yml shows each agent"
        )
    return notes


def redflag_summary_table(rows: Sequence[Mapping[str, Any]], block: bool = True) -> Any:
    """The per-batch summary: hosts, changed, healthy, rolled back (with result), seconds,
    then one line per failed host (state and next step) and the rollout's outcome.
    block: one string with newlines (YAML result format); else a list of lines (JSON)."""
    header = ["BATCH", "RESULT", "HOSTS", "CHANGED", "HEALTHY", "ROLLED BACK", "SECONDS"]
    body = []
    for row in rows:
        hosts = list(row.get("hosts") or [])
        started = row.get("result") != "not started"
        rolled = row.get("rolled_back") or []
        body.append(
            [
                str(row.get("batch")),
                str(row.get("result")),
                _names(hosts),
                f"{len(row.get('changed') or [])}/{len(hosts)}" if started else "-",
                f"{len(row.get('healthy') or [])}/{len(hosts)}" if started else "-",
                ",".join(f"{r['host']}({r.get('status')})" for r in rolled) or "-",
                f"{row['seconds']:.1f}" if row.get("seconds") is not None else "-",
            ]
        )
    lines = _table([header, *body]) + _summary_notes(rows)
    return "\n".join(lines) if block else lines


def redflag_gate_message(
    number: Any,
    batches: Sequence[Sequence[str]],
    bad: Sequence[Mapping[str, Any]],
    plan: Mapping[str, Any],
    hostvars: Mapping[str, Any],
) -> str:
    """Why the rollout stopped: failed hosts and why, rollbacks and their health, and the
    hosts of the later batches, which were not touched."""
    number, total = int(number), len(batches)
    later = [host for batch in batches[number:] for host in batch]
    parts = [
        f"rollout stopped at batch {number} of {total}: hosts "
        f"{', '.join(str(b.get('host')) for b in bad)} failed the health gate: "
        + "; ".join(str(b.get("text")).rstrip(". ") for b in bad)
        + "."
    ]
    results = _rollback_results(plan, hostvars)
    if results:
        lines = []
        for r in results:
            took = f", {r['seconds']} s" if r.get("seconds") is not None else ""
            line = (f"{r['host']} {r['from']} -> {r['to']}: {r.get('status')}{took} "
                    f"({r.get('reason')})")
            if r.get("status") != "healthy":
                line += (f"; next: {r['host']} runs {r.get('version') or r['from']}: fix the "
                         f"cause named here and re-run the playbook with -l {r['host']}")
            lines.append(line)
        parts.append("Rollback to the version each ran before: " + "; ".join(lines) + ".")
    else:
        parts.append("No host was rolled back.")
    kept = plan.get("kept") or []
    if kept:
        parts.append(
            "Not rolled back: " + "; ".join(f"{k['host']}: {k['reason']}" for k in kept) + "."
        )
    parts.append(
        ("Later batches were not touched (" + ", ".join(later) + ")" if later
         else "This was the last batch")
        + "; fix the cause named above and re-run."
    )
    return " ".join(parts)


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "redflag_serial": redflag_serial,
            "redflag_service_skipped": redflag_service_skipped,
            "redflag_batches": redflag_batches,
            "redflag_rollback_scope": rollback_scope,
            "redflag_rollback_plan": redflag_rollback_plan,
            "redflag_batch_row": redflag_batch_row,
            "redflag_pending_rows": redflag_pending_rows,
            "redflag_summary_table": redflag_summary_table,
            "redflag_gate_message": redflag_gate_message,
        }
