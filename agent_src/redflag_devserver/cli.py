"""Command line: `serve` plus admin commands that work directly on the database file."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any, Optional

from redflag_devserver import render, rules, server
from redflag_devserver.api import BindError, Settings
from redflag_devserver.ratelimit import RateLimiter
from redflag_devserver.store import (
    AgentNotFound,
    MachineConflict,
    Store,
    StoreError,
    TokenUnknown,
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
COMMANDS = (
    "serve",
    "mint-token",
    "revoke-token",
    "tokens",
    "agents",
    "queue-command",
    "updates",
    "commands",
    "rebind-agent",
    "deregister-agent",
)
RATE_LIMIT_OFF = (0, 0)


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def _duration(text: str) -> int:
    try:
        return rules.parse_duration(text)
    except rules.InvalidInput as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _rate_limit(text: str) -> tuple[int, int]:
    if text == "off":
        return RATE_LIMIT_OFF
    try:
        return rules.parse_rate_limit(text)
    except rules.InvalidInput as exc:
        raise argparse.ArgumentTypeError(f"{exc}, or off") from exc


def _generation(text: str) -> str:
    try:
        return rules.parse_generation(text).name
    except rules.InvalidInput as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _version(text: str) -> str:
    if rules.version_key(text) is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a version such as 0.1.22")
    return text


def _listen(text: str) -> tuple[str, int]:
    try:
        host, port = rules.parse_listen(text)
        return server.resolve_host(host), port
    except rules.InvalidInput as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="redflag-devserver",
        description="Development stand-in for the RedFlag aggregator server (not a "
        "replacement for the real one).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_db(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--db", required=True, help="SQLite database file")
        return p

    p = with_db("serve", "run the HTTP server")
    p.add_argument(
        "--listen",
        type=_listen,
        default=("127.0.0.1", 8080),
        help="HOST:PORT (default 127.0.0.1:8080; port 0 picks a free port)",
    )
    p.add_argument(
        "--jwt-ttl",
        type=_duration,
        default=86400,
        help="access token lifetime, seconds or 30s/10m/24h (default 86400)",
    )
    p.add_argument(
        "--rate-limit",
        type=_rate_limit,
        default=None,
        metavar="N/SECONDS|off",
        help="at most N registrations per client address per window; default: "
        "off for --generation 0.1.18, 5/60 (upstream's limit) for 0.1.23 and 0.2",
    )
    p.add_argument(
        "--generation",
        type=_generation,
        default=rules.DEFAULT_GENERATION,
        help="which upstream server to behave as: 0.1.18 (no machine binding, renew answers "
        "a token only), 0.1.23 (machine binding, 409/403/426), 0.2 (binding plus refresh-token "
        f"rotation) (default {rules.DEFAULT_GENERATION})",
    )
    p.add_argument(
        "--min-agent-version",
        type=_version,
        default=rules.DEFAULT_MIN_AGENT_VERSION,
        help="agents reporting an older version get 426 on agent routes (0.1.23 and 0.2 only; "
        f"default {rules.DEFAULT_MIN_AGENT_VERSION})",
    )
    p.add_argument(
        "--check-in-interval",
        type=_positive_int,
        default=300,
        help="check_in_interval handed to registering agents (default 300)",
    )
    p.add_argument(
        "--public-url",
        default=None,
        help="server_url handed to registering agents (default from Host header)",
    )
    p.add_argument(
        "--allow-remote", action="store_true", help="allow listening on a non-loopback address"
    )
    p.add_argument("--port-file", help="write the bound port here once listening")
    p.add_argument("--pid-file", help="write the server's pid here")

    p = with_db("mint-token", "create a registration token and print it (alone) on stdout")
    p.add_argument(
        "--seats",
        type=_positive_int,
        default=1,
        help="how many agents may register with it (default 1)",
    )
    p.add_argument(
        "--expires",
        type=_duration,
        default=86400,
        help="lifetime: 30s, 10m, 24h, 7d or seconds (default 24h)",
    )
    p.add_argument("--note", help="free text shown in `tokens`")

    p = with_db("revoke-token", "revoke a registration token")
    p.add_argument(
        "given",
        metavar="TOKEN",
        nargs="?",
        default="-",
        help="the token, or - (default) to read it from stdin so it stays off argv",
    )
    p.add_argument(
        "--id",
        type=_positive_int,
        dest="token_id",
        help="revoke by the id shown in `tokens` instead",
    )

    p = with_db("tokens", "list registration tokens (never their values)")
    p.add_argument("--json", action="store_true")

    p = with_db("agents", "list agents")
    p.add_argument("--json", action="store_true")

    p = with_db("queue-command", "queue a command for an agent's next check-in")
    p.add_argument("agent_id")
    p.add_argument("type", metavar="TYPE", help=", ".join(rules.COMMAND_TYPES))
    p.add_argument("--params", default="{}", help="JSON object (default {})")

    p = with_db("commands", "list an agent's commands and their state")
    p.add_argument("agent_id")
    p.add_argument("--json", action="store_true")

    p = with_db("updates", "show an agent's reported updates")
    p.add_argument("agent_id")
    p.add_argument("--json", action="store_true")

    p = with_db("rebind-agent", "bind an agent to a new machine ID (an admin action)")
    p.add_argument("agent_id")
    p.add_argument("machine_id", help="64 lowercase hex characters, as the agent reports it")

    p = with_db(
        "deregister-agent", "remove an agent on the server; its machine ID becomes free again"
    )
    p.add_argument("agent_id")
    return parser


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def _read_token_from_stdin() -> str:
    if sys.stdin.isatty():
        print("paste the registration token, then press Enter:", file=sys.stderr)
    token = sys.stdin.readline().strip()
    if not token:
        raise rules.InvalidInput("no token on stdin; pipe it in or use --id")
    return token


def _run(args: argparse.Namespace) -> int:
    now = time.time()
    if args.command == "serve":
        host, port = args.listen
        refusal = server.bind_refusal(host, args.allow_remote)
        if refusal:
            print(f"redflag-devserver: {refusal}", file=sys.stderr)
            return EXIT_USAGE
        rate_limit = args.rate_limit
        if rate_limit is None and rules.parse_generation(args.generation).binds_machines:
            rate_limit = rules.BINDING_RATE_LIMIT
        settings = Settings(
            jwt_ttl=args.jwt_ttl,
            check_in_interval=args.check_in_interval,
            public_url=args.public_url,
            rate_limiter=(
                RateLimiter(*rate_limit) if rate_limit and rate_limit != RATE_LIMIT_OFF else None
            ),
            generation=args.generation,
            min_agent_version=args.min_agent_version,
        )
        store = Store(args.db, create=True)
        try:
            return server.serve(
                host, port, store, settings, port_file=args.port_file, pid_file=args.pid_file
            )
        except BindError as exc:
            print(f"redflag-devserver: {exc}", file=sys.stderr)
            return EXIT_FAILED
        except OSError as exc:
            print(
                f"redflag-devserver: cannot write {exc.filename}: {exc.strerror}", file=sys.stderr
            )
            return EXIT_FAILED

    if args.command == "mint-token":
        store = Store(args.db, create=True)
        minted = store.mint_token(args.seats, args.expires, args.note, now)
        print(minted["token"])
        print(
            f"token id {minted['id']}: {args.seats} seat(s), expires {minted['expires_at']}",
            file=sys.stderr,
        )
        return EXIT_OK

    store = Store(args.db)
    if args.command == "revoke-token":
        try:
            if args.token_id is not None:
                token_id = store.revoke_token(now, token_id=args.token_id)
            else:
                given = _read_token_from_stdin() if args.given == "-" else args.given
                token_id = store.revoke_token(now, token=given)
        except TokenUnknown:
            print(
                "redflag-devserver: no such registration token; `tokens` lists them",
                file=sys.stderr,
            )
            return EXIT_FAILED
        print(f"revoked token id {token_id}", file=sys.stderr)
        return EXIT_OK
    if args.command == "tokens":
        tokens = store.list_tokens(now)
        _print_json(tokens) if args.json else print(render.tokens_table(tokens))
        return EXIT_OK
    if args.command == "agents":
        agents = store.list_agents()
        _print_json(agents) if args.json else print(render.agents_table(agents))
        return EXIT_OK
    try:
        if args.command == "rebind-agent":
            try:
                old = store.rebind(args.agent_id, args.machine_id, now)
            except MachineConflict as exc:
                print(
                    f"redflag-devserver: machine ID is bound to agent "
                    f"{exc.existing['existing_agent_id']} ({exc.existing['existing_hostname']}); "
                    "deregister-agent that one first",
                    file=sys.stderr,
                )
                return EXIT_FAILED
            print(
                f"agent {args.agent_id}: machine ID {old or '(none)'} -> {args.machine_id}",
                file=sys.stderr,
            )
            return EXIT_OK
        if args.command == "deregister-agent":
            store.deregister(args.agent_id, now)
            print(f"agent {args.agent_id} deregistered", file=sys.stderr)
            return EXIT_OK
        if args.command == "queue-command":
            try:
                params = json.loads(args.params)
            except json.JSONDecodeError as exc:
                raise rules.InvalidInput(f"--params is not valid JSON: {exc}") from exc
            command = store.queue_command(args.agent_id, args.type, params, now)
            print(command["id"])
            return EXIT_OK
        if args.command == "commands":
            commands = store.list_commands(args.agent_id)
            if args.json:
                _print_json(commands)
            else:
                print(
                    render.table(
                        ("ID", "TYPE", "STATUS", "CREATED_AT", "SENT_AT", "COMPLETED_AT"),
                        [
                            (
                                c["id"],
                                c["type"],
                                c["status"],
                                c["created_at"],
                                c["sent_at"],
                                c["completed_at"],
                            )
                            for c in commands
                        ],
                    )
                )
            return EXIT_OK
        reports = store.list_updates(args.agent_id)
        _print_json(reports) if args.json else print(render.updates_table(reports))
        return EXIT_OK
    except AgentNotFound:
        state = (
            "not found" if args.command in ("commands", "updates") else "not found or deregistered"
        )
        print(
            f"redflag-devserver: agent {args.agent_id} {state}; `agents` lists them",
            file=sys.stderr,
        )
        return EXIT_FAILED


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `redflag-devserver --listen ... --db ...` (no subcommand) means serve.
    if argv and argv[0] not in COMMANDS and argv[0] not in ("-h", "--help"):
        argv.insert(0, "serve")
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S%z",
    )
    try:
        return _run(args)
    except StoreError as exc:
        print(f"redflag-devserver: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except rules.InvalidInput as exc:
        print(f"redflag-devserver: {exc}", file=sys.stderr)
        return EXIT_USAGE
