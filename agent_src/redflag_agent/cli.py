"""Command line: argument parsing, log setup, exit codes (docs/INTERFACES.md)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Optional

from . import config as cfgmod
from . import logs
from .exits import EX_CONFIG, EX_NOPERM, EX_OK, EX_TEMPFAIL, EX_UNAVAILABLE
from .lock import LockHeld
from .paths import Paths

if TYPE_CHECKING:
    from .migration import Plan

# Each command imports what it needs: `migrate` and `status` run at every unit start (or
# from the role) and must not pay for the HTTP client, ssl and the check-in loop.

TOKEN_ENV = "REDFLAG_REGISTRATION_TOKEN"  # noqa: S105 - the variable name, not a token


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


# --- run ---------------------------------------------------------------------------------
def cmd_run(paths: Paths, _args: argparse.Namespace) -> int:
    from .runner import Runner  # noqa: PLC0415
    from .signals import Terminator  # noqa: PLC0415

    term = Terminator()
    term.install()
    return Runner(paths, logs.get("runner"), term).run()


# --- migrate -----------------------------------------------------------------------------
def cmd_migrate(paths: Paths, args: argparse.Namespace) -> int:
    from . import migration  # noqa: PLC0415 - only this command and `run` need it
    from .lock import InstanceLock, LockHeld  # noqa: PLC0415

    log = logs.get("migration")
    plan = migration.plan(paths, retry_failed=args.retry_failed)
    if args.dry_run:
        if args.json:
            _print_json({"phases": list(plan.phases), "description": plan.describe()})
        else:
            print(plan.describe())
        return EX_OK
    if not plan.phases:
        return _report_unchanged(paths, plan, args, log)
    lock = InstanceLock(paths.state_dir)
    try:
        if paths.state_dir.is_dir():
            lock.acquire()
        report = migration.execute(paths, log, retry_failed=args.retry_failed)
    except LockHeld as exc:
        log.error("%s", exc)
        return EX_TEMPFAIL
    finally:
        lock.release()
    if args.json:
        _print_json(report.to_dict())
    else:
        print(report.message)
    if report.ok or report.config_usable:
        return EX_OK
    return EX_CONFIG


def unchanged_exit(plan: Plan, config_usable: bool) -> tuple[bool, int]:
    """(ok, exit code) when nothing is migrated: a blocked or impossible migration is not ok,
    but only an unusable config stops the agent (78); otherwise it runs on what it has."""
    ok = not (plan.error or plan.blocked)
    return ok, EX_OK if ok or config_usable else EX_CONFIG


def _report_unchanged(paths: Paths, plan: Plan, args: argparse.Namespace, log: Any) -> int:
    usable = _config_usable(paths)
    ok, code = unchanged_exit(plan, usable)
    message = plan.describe()
    if not ok:
        log.error("%s", message)
    if args.json:
        from .migration import Report  # noqa: PLC0415

        failed = next(iter(plan.blocked), None)
        _print_json(Report(ok=ok, message=message, config_usable=usable,
                           failed_phase=failed).to_dict())
    elif ok:
        print(message)
    return code


def _config_usable(paths: Paths) -> bool:
    try:
        return cfgmod.read_config(paths.config_file) is not None
    except cfgmod.ConfigError:
        return False


# --- status ------------------------------------------------------------------------------
def cmd_status(paths: Paths, args: argparse.Namespace) -> int:
    from . import status  # noqa: PLC0415

    rep = status.report(paths, logs.get("status"))
    if args.json:
        _print_json(rep)
    else:
        print(status.human(rep))
    return EX_OK


# --- register ----------------------------------------------------------------------------
def _read_token(args: argparse.Namespace, cfg: Optional[dict[str, Any]]) -> Optional[str]:
    if args.token_file:
        try:
            with open(args.token_file, encoding="utf-8") as fh:
                token = fh.read().strip()
        except OSError as exc:
            raise cfgmod.ConfigError(f"cannot read token file {args.token_file}: "
                                     f"{exc.strerror}") from None
        if not token:
            raise cfgmod.ConfigError(f"token file {args.token_file} is empty; put the "
                                     "registration token in it")
        return token
    if os.environ.get(TOKEN_ENV, "").strip():
        return os.environ[TOKEN_ENV].strip()
    if not sys.stdin.isatty():
        token = sys.stdin.read().strip()
        if token:
            return token
    if cfg and cfg.get("registration_token"):
        return str(cfg["registration_token"])
    return None


def cmd_register(paths: Paths, args: argparse.Namespace) -> int:

    log = logs.get("registration")
    try:
        cfg = cfgmod.read_config(paths.config_file)
        if cfgmod.is_registered(cfg):
            return _already_registered(cfg)  # type: ignore[arg-type]
        # `run` may be registering right now: never enroll this host twice
        lock = _lock_state_dir(paths)
    except cfgmod.ConfigError as exc:
        log.error("%s", exc)
        return EX_CONFIG
    except LockHeld:
        log.error("the agent service is running on this host (it holds the lock on %s) and "
                  "registers by itself with the token in %s; `redflag-agent register` would "
                  "enroll the host twice. Stop it first (`systemctl stop redflag-agent`), or "
                  "let it register", paths.state_dir, paths.config_file)
        return EX_TEMPFAIL
    except OSError as exc:
        log.error("cannot create or lock the state directory %s: %s", paths.state_dir,
                  exc.strerror or exc)
        return EX_CONFIG
    try:
        return _register_locked(paths, args, log)
    finally:
        lock.release()


def _already_registered(cfg: dict[str, Any]) -> int:
    print(f"already registered as agent {cfg['agent_id']}; nothing to do "
          "(to enroll again: `redflag-agent unregister` first)")
    return EX_OK


def _lock_state_dir(paths: Paths) -> Any:
    from .lock import InstanceLock  # noqa: PLC0415
    from .owner import chown_to_agent  # noqa: PLC0415

    if not paths.state_dir.is_dir():
        # (un)registering is real work: the state dir is created as `run` would
        paths.state_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        chown_to_agent(paths.state_dir)
    lock = InstanceLock(paths.state_dir)
    lock.acquire()
    return lock


def _register_locked(paths: Paths, args: argparse.Namespace, log: Any) -> int:
    from . import binding, registration  # noqa: PLC0415
    from .client import ClientError  # noqa: PLC0415
    from .runner import make_client, migrated_from_metadata  # noqa: PLC0415

    try:
        # re-read under the lock: an instance that just stopped may have registered
        cfg = cfgmod.read_config(paths.config_file)
        if cfgmod.is_registered(cfg):
            return _already_registered(cfg)  # type: ignore[arg-type]
        if args.server:
            with cfgmod.config_lock(paths):
                cfg = cfgmod.read_config(paths.config_file)
                new = cfgmod.merge_desired(cfg, {"server_url": args.server}, None, False)
                if new != cfg:
                    cfgmod.save_config(paths, new)
                cfg = new
        if cfg is None or not cfg.get("server_url"):
            log.error("no server_url in %s: pass --server URL", paths.config_file)
            return EX_CONFIG
        token = _read_token(args, cfg)
        if token is None:
            log.error("no registration token: give it with --token-file FILE, on stdin, or in "
                      "the environment variable %s (never on the command line)", TOKEN_ENV)
            return EX_CONFIG
        client = make_client(cfg, binding.host_machine_id(paths).value)
        new_cfg = registration.perform(client, paths, token, cfg, log,
                                       migrated_from=migrated_from_metadata(paths, log))
    except cfgmod.ConfigError as exc:
        log.error("%s", exc)
        return EX_CONFIG
    except ValueError as exc:
        log.error("%s: %s", paths.config_file, exc)
        return EX_CONFIG
    except registration.TokenRejected as exc:
        log.error("%s", exc)
        return EX_NOPERM
    except binding.Refused as exc:  # 409 machine ID taken, 426 (exit 78), 403 (77)
        log.error("%s", exc)
        return exc.exit_code
    except registration.RegistrationStopped as exc:  # no room (75), unfinished attempt (78)
        log.error("%s", exc)
        return exc.exit_code
    except ClientError as exc:
        log.error("registration failed: %s; check the server and try again", exc)
        return EX_UNAVAILABLE
    print(f"registered as agent {new_cfg['agent_id']}")
    return EX_OK


# --- unregister --------------------------------------------------------------------------
def service_holds_lock_message(paths: Paths, risk: str, then: str) -> str:
    """Pure: why a command that drops the identity refuses while another instance (the
    service) holds the lock: `risk` is what doing it under the service could do."""
    return (f"the agent service redflag-agent.service (or another `redflag-agent run`) is "
            f"running on this host and holds the lock on {paths.state_dir}: it renews and "
            f"saves the tokens in {paths.config_file}, so {risk}. Stop it first (`systemctl "
            f"stop redflag-agent`), then {then}; nothing was changed")


def unregister_locked_message(paths: Paths) -> str:
    return service_holds_lock_message(
        paths, "unregistering under it could bring the identity back or drop a fresh one",
        "unregister")


def _registered_config(paths: Paths, log: Any) -> Optional[dict[str, Any]]:
    """The config when it holds an identity; None (the reason logged) otherwise."""
    try:
        cfg = cfgmod.read_config(paths.config_file)
    except cfgmod.ConfigError as exc:
        log.error("%s", exc)
        return None
    if not cfgmod.is_registered(cfg):
        log.error("not registered: %s holds no agent_id/refresh_token; nothing to unregister",
                  paths.config_file)
        return None
    return cfg


def cmd_unregister(paths: Paths, args: argparse.Namespace) -> int:
    log = logs.get("unregister")
    if _registered_config(paths, log) is None:
        return EX_CONFIG
    try:
        # `run` renews and saves tokens in config.json: never drop the identity under it
        lock = _lock_state_dir(paths)
    except LockHeld:
        log.error("%s", unregister_locked_message(paths))
        return EX_TEMPFAIL
    except OSError as exc:
        log.error("cannot create or lock the state directory %s: %s", paths.state_dir,
                  exc.strerror or exc)
        return EX_CONFIG
    if lock.refused:
        log.error("not unregistering: the instance lock cannot be taken: %s; nothing was "
                  "changed", lock.refused)
        return EX_CONFIG
    try:
        return _unregister_locked(paths, args, log)
    finally:
        lock.release()


def _unregister_locked(paths: Paths, args: argparse.Namespace, log: Any) -> int:
    from . import binding, registration  # noqa: PLC0415
    from .checkin import Agent  # noqa: PLC0415
    from .client import ClientError, NotFound, Unauthorized  # noqa: PLC0415
    from .runner import make_client  # noqa: PLC0415
    from .signals import Terminator  # noqa: PLC0415
    from .status import StatusFile  # noqa: PLC0415

    # re-read under the lock: an instance that just stopped may have saved new tokens
    cfg = _registered_config(paths, log)
    if cfg is None:
        return EX_CONFIG
    try:
        client = make_client(cfg, binding.host_machine_id(paths).value)
    except ValueError as exc:
        log.error("%s: %s", paths.config_file, exc)
        return EX_CONFIG
    try:
        # kept before the server forgets it: a mistaken unregister can be undone by hand
        backup = binding.write_backup(paths, cfg, binding.host_machine_id(paths), "unregister")
    except (OSError, cfgmod.ConfigError) as exc:
        log.error("cannot keep a backup of the identity (%s); nothing was unregistered", exc)
        return EX_CONFIG
    agent = Agent(paths, cfg, client, log, terminator=Terminator(),
                  status=StatusFile(paths, log))
    agent_id = agent.agent_id
    server_knew = True
    try:
        agent.authed(lambda jwt: client.unregister(agent_id, jwt))
    except NotFound:
        server_knew = False
        log.warning("the server does not know agent %s; clearing the local identity", agent_id)
    except registration.TokenRejected as exc:
        log.error("%s", exc)
        return EX_NOPERM
    except binding.Refused as exc:
        log.error("unregister refused: %s", exc)
        return exc.exit_code
    except Unauthorized as exc:
        log.error("unregister refused: %s", exc)
        return EX_NOPERM
    except ClientError as exc:
        log.error("cannot unregister: %s; the local identity is kept, try again later", exc)
        return EX_UNAVAILABLE
    with cfgmod.config_lock(paths):
        on_disk = cfgmod.read_config(paths.config_file) or cfg
        for key in cfgmod.IDENTITY_KEYS:
            on_disk.pop(key, None)
        cfgmod.save_config(paths, on_disk)
    if args.json:
        _print_json({"unregistered": True, "agent_id": agent_id, "server_knew": server_knew,
                     "backup": str(backup)})
    else:
        print(f"unregistered agent {agent_id}")
    return EX_OK


# --- config apply ------------------------------------------------------------------------
APPLY_KEYS = {"settings", "registration_token", "reregister", "forget_identity"}


APPLY_SHAPE = ('{"settings": {...}, "registration_token": ..., "reregister": false, '
               '"forget_identity": false}')


def read_apply_input(stream: Any) -> str:
    """stdin of `config apply`, bounded and decoded; ConfigError when unusable."""
    data = stream.read(cfgmod.MAX_APPLY_INPUT + 1)
    if len(data) > cfgmod.MAX_APPLY_INPUT:
        raise cfgmod.ConfigError(f"config apply: stdin is larger than "
                                 f"{cfgmod.MAX_APPLY_INPUT // 1024} KiB; expected {APPLY_SHAPE}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise cfgmod.ConfigError(f"config apply: stdin is not UTF-8 (invalid byte at offset "
                                 f"{exc.start}); expected {APPLY_SHAPE}") from None


def parse_apply_input(data: str) -> tuple[dict[str, Any], Optional[str], bool, bool]:
    try:
        obj = cfgmod.loads_json(data, "config apply: stdin")
    except ValueError as exc:
        raise cfgmod.ConfigError(f"config apply: stdin is not valid JSON ({exc}); expected "
                                 f"{APPLY_SHAPE}") from None
    if not isinstance(obj, dict):
        raise cfgmod.ConfigError("config apply: stdin must be a JSON object with 'settings'")
    unknown = sorted(set(obj) - APPLY_KEYS)
    if unknown:
        raise cfgmod.ConfigError(f"config apply: unknown input keys {', '.join(unknown)}; "
                                 f"allowed: {', '.join(sorted(APPLY_KEYS))}")
    settings = obj.get("settings", {})
    if not isinstance(settings, dict):
        raise cfgmod.ConfigError("config apply: 'settings' must be a JSON object")
    token = obj.get("registration_token")
    reregister = obj.get("reregister", False)
    if not isinstance(reregister, bool):
        raise cfgmod.ConfigError("config apply: 'reregister' must be true or false")
    forget = obj.get("forget_identity", False)
    if not isinstance(forget, bool):
        raise cfgmod.ConfigError("config apply: 'forget_identity' must be true or false")
    return settings, token, reregister, forget


def config_diff(old: Optional[dict[str, Any]], new: dict[str, Any], path: str) -> str:
    import difflib  # noqa: PLC0415 - only `config apply` needs it

    a = cfgmod.serialize(cfgmod.redacted(old)).decode() if old is not None else ""
    b = cfgmod.serialize(cfgmod.redacted(new)).decode()
    return "".join(difflib.unified_diff(a.splitlines(True), b.splitlines(True),
                                        fromfile=path if old is not None else "/dev/null",
                                        tofile=path))


def write_failed_message(path: Any, exc: OSError, unchanged: bool, writing: bool = True) -> str:
    """Pure: what `config apply` says when the write (or the read/lock before it) fails:
    full disk, read-only filesystem, permissions, I/O errors."""
    import errno  # noqa: PLC0415

    reason = exc.strerror or str(exc)
    code = errno.errorcode.get(exc.errno or 0)
    where = exc.filename or path
    what = (f"nothing was changed: {path} still holds the previous settings" if unchanged
            else f"{path} may hold the new settings but the write did not complete")
    fix = {
        "ENOSPC": f"free space on the filesystem holding {os.path.dirname(os.fspath(path))}",
        "EDQUOT": "free space within the disk quota",
        "EROFS": "remount the filesystem read-write",
        "EACCES": "run it as root (the role does)",
        "EPERM": "run it as root (the role does)",
    }.get(code or "", "fix the cause named above")
    verb = "write" if writing else "read or lock"
    return (f"cannot {verb} {where}: {reason}" + (f" ({code})" if code else "")
            + f"; {what}. {fix[0].upper()}{fix[1:]} and apply again")


def cmd_config_apply(paths: Paths, args: argparse.Namespace) -> int:
    log = logs.get("config")
    current: Optional[dict[str, Any]] = None
    writing = False
    try:
        settings, token, reregister, forget = parse_apply_input(
            read_apply_input(sys.stdin.buffer))
        with cfgmod.config_lock(paths):
            current = cfgmod.read_config(paths.config_file)
            new = cfgmod.merge_desired(current, settings, token, reregister, forget)
            changed = current != new
            drops = drops_identity(current, reregister, forget) and changed
            if changed and not args.check:
                with _instance_lock_if(drops, paths):
                    if forget and drops:
                        _keep_identity(paths, current, log)
                    writing = True
                    cfgmod.save_config(paths, new)
        if (reregister or forget) and changed and not args.check:
            _forget_attempt(paths, log)
    except cfgmod.ConfigError as exc:
        log.error("%s", exc)
        return EX_CONFIG
    except LockHeld:
        log.error("%s", apply_locked_message(paths))
        return EX_TEMPFAIL
    except OSError as exc:
        unchanged = not writing or _still_holds(paths, current)
        log.error("%s", write_failed_message(paths.config_file, exc, unchanged, writing))
        return EX_CONFIG
    result = {
        "changed": changed,
        "created": current is None,
        "path": str(paths.config_file),
        "changed_keys": cfgmod.changed_keys(current, new) if changed else [],
        "diff": config_diff(current, new, str(paths.config_file)) if changed else "",
    }
    if args.json:
        _print_json(result)
    elif not changed:
        print(f"{paths.config_file}: unchanged")
    else:
        verb = "would " if args.check else ""
        print(f"{paths.config_file}: {verb}{'create' if current is None else 'change'} "
              f"({', '.join(result['changed_keys'])})\n{result['diff']}", end="")
    return EX_OK


def drops_identity(current: Optional[dict[str, Any]], reregister: bool, forget: bool) -> bool:
    """Pure: does this apply drop an identity the running service may be renewing?"""
    return (reregister or forget) and any((current or {}).get(k) for k in cfgmod.IDENTITY_KEYS)


def apply_locked_message(paths: Paths) -> str:
    return service_holds_lock_message(
        paths, "dropping the identity under it could bring it back", "apply again")


@contextlib.contextmanager
def _instance_lock_if(needed: bool, paths: Paths) -> Iterator[None]:
    """The instance lock while an identity is dropped (raises LockHeld when the service holds
    it). No state directory yet: no instance can be running."""
    if not needed or not paths.state_dir.is_dir():
        yield
        return
    from .lock import InstanceLock  # noqa: PLC0415

    lock = InstanceLock(paths.state_dir)
    lock.acquire()
    if lock.refused:  # a symlink or a file where the state dir belongs: as `unregister`
        raise cfgmod.ConfigError(f"not dropping the identity: the instance lock cannot be "
                                 f"taken: {lock.refused}; nothing was changed")
    try:
        yield
    finally:
        lock.release()


def _keep_identity(paths: Paths, cfg: Any, log: Any) -> None:
    """Before forget_identity drops it: the identity goes to a backup (raises OSError or
    ConfigError, and then nothing is dropped)."""
    from . import binding  # noqa: PLC0415

    target = binding.write_backup(paths, cfg, binding.host_machine_id(paths), "image")
    log.info("kept agent %s in %s before forgetting it", cfg.get("agent_id"), target)


def _forget_attempt(paths: Paths, log: Any) -> None:
    """After `reregister: true` was written: an earlier unfinished registration attempt is
    the operator's to forget now (the next start enrolls with the given token)."""
    from . import registration  # noqa: PLC0415

    try:
        if registration.clear_attempt(paths):
            log.info("removed the record of an unfinished registration (%s): re-enrolling",
                     registration.attempt_path(paths))
    except OSError as exc:
        # the config is written; only the record stays: the next start says what to do
        log.warning("cannot remove %s: %s", registration.attempt_path(paths),
                    exc.strerror or exc)


def cmd_version(_paths: Paths, _args: argparse.Namespace) -> int:
    from .version import AGENT_VERSION  # noqa: PLC0415

    print(AGENT_VERSION)
    return EX_OK


def _still_holds(paths: Paths, before: Optional[dict[str, Any]]) -> bool:
    """After a failed write: does config.json still hold what it held before?"""
    try:
        return cfgmod.read_config(paths.config_file) == before
    except (cfgmod.ConfigError, OSError):
        return False


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="redflag-agent",
                                description="RedFlag update-management agent")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    sub.add_parser("run", help="check in forever (the systemd entry point)").set_defaults(
        func=cmd_run)
    m = sub.add_parser("migrate", help="migrate a legacy install (or print the plan)")
    m.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    m.add_argument("--json", action="store_true")
    m.add_argument("--retry-failed", action="store_true",
                   help="also run phases given up after repeated failures (fix the cause first)")
    m.set_defaults(func=cmd_migrate)
    s = sub.add_parser("status", help="registration, migrations, last check-in; no tokens")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)
    r = sub.add_parser("register", help=f"register with the server (token from --token-file, "
                                        f"stdin or ${TOKEN_ENV})")
    r.add_argument("--server", metavar="URL", help="server URL to record in the config")
    r.add_argument("--token-file", metavar="FILE", help="file holding the registration token")
    r.set_defaults(func=cmd_register)
    u = sub.add_parser("unregister", help="remove this agent from the server and forget it")
    u.add_argument("--json", action="store_true")
    u.set_defaults(func=cmd_unregister)
    c = sub.add_parser("config", help="manage config.json")
    csub = c.add_subparsers(dest="config_command", metavar="ACTION")
    csub.required = True
    a = csub.add_parser("apply", help="merge desired settings (JSON on stdin) into the config")
    a.add_argument("--check", action="store_true", help="report only, write nothing")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_config_apply)
    sub.add_parser("version", help="print the agent version").set_defaults(func=cmd_version)
    return p


def _one_line(text: str, limit: int = 300) -> str:
    """An exception's text fit for one log line: control characters escaped, bounded."""
    shown = text[:limit].encode("unicode_escape").decode("ascii")
    return shown + ("..." if len(text) > limit else "")


def unexpected_error(command: str, exc: BaseException) -> str:
    """Pure: the one-line report of an exception no command handled.

    OSError is the host's doing (disk, permissions, mounts); anything else is a bug in
    the agent, reported with where it happened so it can be found without the traceback.
    """
    import traceback  # noqa: PLC0415 - only on this path

    frames = traceback.extract_tb(exc.__traceback__)
    at = (f" at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno} in "
          f"{frames[-1].name}") if frames else ""
    if isinstance(exc, OSError):
        where = f" on {exc.filename}" if exc.filename else ""
        return (f"{command} stopped: {_one_line(exc.strerror or str(exc))}{where} "
                f"({type(exc).__name__}{at}); fix that on the host and start again "
                f"(exit {EX_CONFIG}: no automatic restart)")
    return (f"{command} stopped on an unexpected {type(exc).__name__}: {_one_line(str(exc))}"
            f"{at}. This is a bug in redflag-agent: report it with the output of "
            f"`REDFLAG_LOG_LEVEL=debug redflag-agent {command}` (exit {EX_CONFIG}: no "
            "automatic restart, so a bug cannot become a restart loop)")


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(os.environ.get("REDFLAG_LOG_LEVEL", "info"))
    command = " ".join(filter(None, (args.command, getattr(args, "config_command", None))))
    try:
        return int(args.func(Paths.from_env(), args))
    except KeyboardInterrupt:
        return 130
    except cfgmod.ConfigError as exc:  # a command that let one through
        logs.get("agent").error("%s", exc)
        return EX_CONFIG
    except Exception as exc:
        # Safety net: exit 1 and a bare traceback would make systemd restart a broken agent
        # every 30 s. 78 stops the unit (RestartPreventExitStatus) and says why; the
        # traceback stays one REDFLAG_LOG_LEVEL=debug away.
        import traceback  # noqa: PLC0415

        log = logs.get("agent")
        log.error("%s", unexpected_error(command, exc))
        log.debug("traceback:\n%s", "".join(traceback.format_exception(
            type(exc), exc, exc.__traceback__)).rstrip())
        return EX_CONFIG
