"""Carry out a plan: record intent, back up once, run phases, roll back on failure."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from .. import safefs
from ..config import ConfigError, config_lock, read_config
from ..paths import Paths
from .backup import (
    RestoreError,
    collect_entries,
    create_backup,
    load_manifest,
    new_backup_name,
    preflight,
    prune,
    restore,
)
from .decide import decide
from .faults import crash_point, write_point
from .merge import legacy_moves, takeover_moves
from .model import (
    DEFAULT_RETENTION,
    LAYOUT_0119,
    LAYOUT_02,
    MAX_ATTEMPTS,
    MAX_RESUMES,
    MigrationError,
    Plan,
    Report,
    Snapshot,
)
from .phases import RUNNERS, Context
from .snapshot import read_snapshot
from .state import (
    ORIGIN_PHASES,
    record_completed,
    record_failure,
    save_state,
    set_aside_corrupt,
    utc_now,
)


def config_usable(paths: Paths) -> bool:
    try:
        return read_config(paths.config_file) is not None
    except ConfigError:
        return False


def _unchanged_report(paths: Paths, plan: Plan, dry_run: bool) -> Report:
    usable = config_usable(paths)
    if plan.error or plan.blocked:
        return Report(ok=False, message=plan.describe(), config_usable=usable,
                      dry_run=dry_run, failed_phase=next(iter(plan.blocked), None))
    return Report(ok=True, message=plan.describe(), config_usable=usable, dry_run=dry_run,
                  phases_planned=list(plan.phases))


def _ensure_dirs(paths: Paths) -> None:
    for d in (paths.config_dir, paths.state_dir):
        safefs.make_dirs(d, 0o750)  # new levels 0750, owned by the agent user as root


def _moves(paths: Paths, snap: Snapshot, plan: Plan) -> list[tuple[Any, Any]]:
    moves = legacy_moves(paths, snap.legacy_config_names, snap.legacy_state_names,
                         snap.legacy_config)
    if "takeover" in plan.phases:
        moves += takeover_moves(paths, snap.upstream_names,
                                snap.upstream_configs.get(LAYOUT_0119),
                                snap.upstream_configs.get(LAYOUT_02))
    return moves


def _preflight(paths: Paths, snap: Snapshot, plan: Plan) -> None:
    """Check every path the run will touch before it writes anything (UnsafePath)."""
    preflight(paths, _moves(paths, snap, plan), "takeover" in plan.phases)


def _refused(paths: Paths, plan: Plan, exc: BaseException, log: logging.Logger) -> Report:
    """A planted object: nothing was changed, and the agent must not start on directories
    someone tampered with (config_usable false: `migrate` exits 78, `run` stops)."""
    message = f"migration refused, nothing was changed: {exc}"
    log.error(message)
    return Report(ok=False, message=message, config_usable=False,
                  phases_planned=list(plan.phases), failed_phase=next(iter(plan.phases), None))


def _unsafe(exc: BaseException) -> bool:
    return safefs.caused_by(exc) is not None


def execute(paths: Paths, log: logging.Logger, dry_run: bool = False, *,
            retry_failed: bool = False, retention: int = DEFAULT_RETENTION,
            environ: Optional[Mapping[str, str]] = None) -> Report:
    """Migrate if (and only if) needed. Writes nothing when there is nothing to do.

    retry_failed: also run phases given up after MAX_ATTEMPTS failures (operator's choice).
    """
    snap = read_snapshot(paths, environ)
    plan = decide(snap, retry_failed)
    for warning in plan.warnings:
        log.warning(warning)
    if dry_run or plan.error or not plan.phases:
        return _unchanged_report(paths, plan, dry_run)
    try:
        # before the first write: a planted object stops everything here
        _preflight(paths, snap, plan)
        _ensure_dirs(paths)
        with config_lock(paths):
            # another process may have migrated while we waited for the lock
            snap = read_snapshot(paths, environ)
            plan = decide(snap, retry_failed)
            if plan.error or not plan.phases:
                return _unchanged_report(paths, plan, False)
            _preflight(paths, snap, plan)
            return _Run(paths, log, environ, snap, plan, retention).run()
    except (safefs.UnsafePath, ConfigError) as exc:
        if not _unsafe(exc):
            raise
        return _refused(paths, plan, exc, log)
    except OSError as exc:
        # only reachable before the first change (later errors roll back inside the run)
        message = (f"cannot start the migration: {_reason(exc)}{_root_hint(exc)}; nothing was "
                   "changed")
        log.error(message)
        return Report(ok=False, message=message, config_usable=config_usable(paths),
                      phases_planned=list(plan.phases), failed_phase=plan.phases[0])


def _root_hint(exc: BaseException) -> str:
    if isinstance(exc, PermissionError) and os.geteuid() != 0:
        return (" (the migration needs root: the unit runs `redflag-agent migrate` as root "
                "before the agent starts; run that by hand)")
    return ""


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text if text else type(exc).__name__


@dataclass
class _Run:
    paths: Paths
    log: logging.Logger
    environ: Optional[Mapping[str, str]]
    snap: Snapshot
    plan: Plan
    retention: int
    state: dict[str, Any] = field(default_factory=dict)
    ip: dict[str, Any] = field(default_factory=dict)

    def _crash(self, point: str, when: str) -> None:
        crash_point(self.paths, point, when, self.environ)

    def _begin(self) -> None:
        """Record the intent (phases, backup name) before anything else is written."""
        state = self.snap.state
        if self.snap.state_error:
            moved = set_aside_corrupt(self.paths)
            if moved:
                self.log.warning("unusable migration state set aside as %s", moved)
        ip = state.get("in_progress")
        if ip and all(p in state["completed"] for p in ip.get("phases", [])):
            # finished but not closed (the last state write failed): never reuse its backup
            ip = None
        if ip:
            ip = {**ip, "resumes": int(ip.get("resumes", 0)) + 1}
            self.log.warning("resuming a migration interrupted earlier (backup %s)",
                             ip["backup"])
        else:
            ip = {"backup": new_backup_name(self.paths), "started_at": utc_now(), "resumes": 0,
                  "completed_before": list(state["completed"])}
            if self.plan.migrated_from:
                ip["migrated_from"] = self.plan.migrated_from
            if self.plan.upstream_layout:
                ip["upstream_layout"] = self.plan.upstream_layout
        ip["phases"] = list(self.plan.phases)
        self.ip = ip
        self.state = {**state, "in_progress": ip}
        save_state(self.paths, self.state)

    def _backup(self) -> dict[str, Any]:
        """The run's one backup: reused when a crashed run already completed it."""
        name = self.ip["backup"]
        self._crash("backup", "before")
        manifest = load_manifest(self.paths, name)
        if manifest is None:
            entries = collect_entries(self.paths, _moves(self.paths, self.snap, self.plan),
                                      "takeover" in self.plan.phases)
            write_point(self.paths, "backup", self.environ)
            manifest = create_backup(self.paths, name, entries,
                                     lambda when: self._crash("backup", when))
            self.log.info("backup taken in %s", self.paths.backups_dir / name)
        self._crash("backup", "after")
        try:
            for old in prune(self.paths, self.retention, {name}):
                self.log.info("old migration backup %s removed (keeping %d)", old,
                              self.retention)
        except (OSError, safefs.UnsafePath) as exc:
            # retention is housekeeping: it must not fail the migration
            self.log.warning("could not prune old migration backups in %s: %s",
                             self.paths.backups_dir, exc)
        return manifest

    def run(self) -> Report:
        self._begin()
        self.log.info("migrating: %s", ", ".join(self.plan.phases))
        first = next(p for p in self.plan.phases if p not in self.state["completed"])
        try:
            manifest = self._backup()
        except (OSError, MigrationError, safefs.UnsafePath) as exc:
            # nothing was changed yet: no rollback, only the record
            reason = (f"could not take the backup in {self.paths.backups_dir}: "
                      f"{_reason(exc)}{_root_hint(exc)}")
            return self._fail(first, reason, self.ip["completed_before"], backup=None,
                              unsafe=_unsafe(exc))

        ctx = Context(self.paths, self.log, self.environ)
        done: list[str] = []
        phase = first
        if first == "litter" and self.ip["resumes"] >= MAX_RESUMES:
            # only the litter was left: no reason to roll the finished migration back
            return self._litter_failed(MigrationError(
                f"the litter removal was interrupted {self.ip['resumes']} times (killed or out "
                "of memory?)"), done, ctx)
        try:
            if self.ip["resumes"] >= MAX_RESUMES:
                raise MigrationError(f"the migration was interrupted {self.ip['resumes']} "
                                     f"times (killed or out of memory?) during {phase!r}")
            for phase in self.plan.phases:
                if phase in self.state["completed"]:
                    continue
                if phase == "litter":
                    break  # after everything else is recorded: see below
                self._run_phase(ctx, phase)
                done.append(phase)
        except Exception as exc:  # noqa: BLE001 - any failure must roll back, and is reported
            return self._roll_back(phase, exc, manifest)
        if "litter" in self.plan.phases and "litter" not in self.state["completed"]:
            # litter is not in the backup, and the migration before it stands on its own:
            # a failure here is recorded (retried at the next start) but rolls nothing back
            try:
                self._run_phase(ctx, "litter")
                done.append("litter")
            except Exception as exc:  # noqa: BLE001 - reported, never a traceback
                return self._litter_failed(exc, done, ctx)
        return self._finish(done, ctx)

    def _run_phase(self, ctx: Context, phase: str) -> None:
        self._crash(phase, "before")
        RUNNERS[phase](ctx)
        self._crash(phase, "after")
        self.state = record_completed(self.state, phase)
        if phase in ("directory", "takeover") and self.ip.get("migrated_from"):
            self.state["migrated_from"] = self.ip["migrated_from"]
        if phase in ORIGIN_PHASES and self.ip.get("upstream_layout"):
            self.state["upstream_layout"] = self.ip["upstream_layout"]
        if phase == "litter":
            self.state["litter"] = {**ctx.results.get("litter", {}), "at": utc_now()}
        save_state(self.paths, self.state)

    def _litter_failed(self, exc: BaseException, done: list[str], ctx: Context) -> Report:
        reason = _reason(exc) + _root_hint(exc)
        new_state = record_failure(self.state, "litter", reason, self.state["completed"])
        try:
            save_state(self.paths, new_state)
        except (OSError, safefs.UnsafePath) as sexc:
            self.log.error("could not record the failure in %s: %s",
                           self.paths.migration_state_file, sexc)
        attempts = new_state["failures"]["litter"]["attempts"]
        retry = ("retried at the next start" if attempts < MAX_ATTEMPTS else
                 "given up: fix the cause, then run `redflag-agent migrate --retry-failed` "
                 "as root")
        message = (f"migrated: {', '.join(done) or '-'}; removing the upstream loop's litter "
                   f"failed: {reason} (attempt {attempts} of {MAX_ATTEMPTS}, {retry}); "
                   "nothing was rolled back, starting with the migrated config")
        self.log.error(message)
        return Report(ok=False, phases_done=done, backup=self.ip["backup"], message=message,
                      config_usable=config_usable(self.paths),
                      phases_planned=list(self.plan.phases), failed_phase="litter",
                      litter=ctx.results.get("litter"))

    def _finish(self, done: list[str], ctx: Context) -> Report:
        name = self.ip["backup"]
        final = {k: v for k, v in self.state.items() if k != "in_progress"}
        origin = ""
        before = self.ip.get("completed_before", [])
        if ("directory" not in before and "takeover" not in before
                and final.get("migrated_from")):
            origin = f" from {final['migrated_from']}"
        try:
            save_state(self.paths, final)
        except (OSError, safefs.UnsafePath) as exc:
            # every phase is recorded already; only the closing mark is missing
            self.log.warning("migration done, but closing %s failed: %s",
                             self.paths.migration_state_file, exc)
        message = f"migrated{origin}: {', '.join(self.plan.phases)} (backup {name})"
        figures = ctx.results.get("litter")
        if figures:
            message += (f"; litter: {figures['removed']} removed, {figures['bytes_freed']} "
                        f"bytes freed, {figures['kept']} kept")
        self.log.info(message)
        return Report(ok=True, phases_done=done, backup=name, message=message,
                      config_usable=config_usable(self.paths),
                      phases_planned=list(self.plan.phases), litter=figures)

    def _roll_back(self, phase: str, exc: BaseException, manifest: dict[str, Any]) -> Report:
        name = self.ip["backup"]
        reason = _reason(exc) + _root_hint(exc)
        self.log.error("migration phase %r failed (%s); restoring from %s", phase, reason,
                       self.paths.backups_dir / name)
        try:
            restore(self.paths, name, manifest)
        except (RestoreError, OSError, MigrationError, safefs.UnsafePath) as rexc:
            # keep the intent: the next start goes on forward with the same backup
            reason = f"{reason}; rollback incomplete: {_reason(rexc)}"
            return self._fail(phase, reason, self.state["completed"], backup=name,
                              keep_intent=True, unsafe=_unsafe(exc))
        self.log.info("restored everything from before the migration")
        return self._fail(phase, reason, self.ip["completed_before"], backup=name,
                          unsafe=_unsafe(exc))

    def _fail(self, phase: str, reason: str, completed: list[str], backup: Optional[str],
              *, keep_intent: bool = False, unsafe: bool = False) -> Report:
        new_state = record_failure(self.state, phase, reason, completed)
        if keep_intent:
            new_state["in_progress"] = self.ip
        try:
            save_state(self.paths, new_state)
        except (OSError, safefs.UnsafePath) as exc:
            self.log.error("could not record the migration failure in %s: %s",
                           self.paths.migration_state_file, exc)
        attempts = new_state["failures"][phase]["attempts"]
        # a planted object: the agent must not start on tampered directories (78)
        usable = config_usable(self.paths) and not unsafe
        if attempts >= MAX_ATTEMPTS:
            where = f"; the originals are in {self.paths.backups_dir / backup}" if backup else ""
            next_step = (f"gave up after {attempts} attempts; the agent will not retry it on "
                         "its own: fix the cause, then run `redflag-agent migrate "
                         f"--retry-failed` as root{where}")
        else:
            next_step = f"attempt {attempts} of {MAX_ATTEMPTS}; it is retried at the next start"
        then = ("starting with the current config" if usable else
                f"and there is no usable config in {self.paths.config_file}")
        message = f"migration phase {phase!r} failed: {reason}; {next_step}; {then}"
        self.log.error(message)
        return Report(ok=False, backup=backup, message=message, config_usable=usable,
                      phases_planned=list(self.plan.phases), failed_phase=phase)
