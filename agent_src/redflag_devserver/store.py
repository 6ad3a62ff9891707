"""SQLite state: registration tokens, agents, commands, update reports.

Every write runs in BEGIN IMMEDIATE (one writer at a time across processes, so the server
and the admin CLI can share the file); WAL lets readers run alongside.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Optional

from redflag_devserver import rules

SCHEMA_VERSION = "2"  # 2: machine binding and a refresh-token table (rotation)
REFRESH_TTL = 90 * 86400
BUSY_TIMEOUT_S = 15.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS registration_tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    token_hash TEXT NOT NULL UNIQUE,
    note TEXT,
    max_seats INTEGER NOT NULL CHECK (max_seats > 0),
    seats_used INTEGER NOT NULL DEFAULT 0 CHECK (seats_used >= 0 AND seats_used <= max_seats),
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS agents (
    agent_id TEXT PRIMARY KEY,
    hostname TEXT NOT NULL,
    os_type TEXT NOT NULL,
    os_version TEXT,
    os_architecture TEXT,
    agent_version TEXT NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}',
    migrated_from TEXT,
    status TEXT NOT NULL DEFAULT 'active'
        CHECK (status IN ('active', 'deregistered', 'revoked')),
    registration_token_id INTEGER REFERENCES registration_tokens(id),
    machine_id TEXT,
    public_key_fingerprint TEXT,
    os_distro TEXT,
    available_scanners TEXT,
    registered_at REAL NOT NULL,
    last_seen REAL,
    last_metrics TEXT,
    checkins INTEGER NOT NULL DEFAULT 0,
    renewals INTEGER NOT NULL DEFAULT 0,
    last_renewed_at REAL,
    checkins_at_renewal INTEGER NOT NULL DEFAULT 0,
    grace_replays INTEGER NOT NULL DEFAULT 0,
    deregistered_at REAL,
    revoked_at REAL
);
-- One machine, one identity: a deregistered agent frees its machine ID, a revoked one does not.
CREATE UNIQUE INDEX IF NOT EXISTS agents_by_machine ON agents(machine_id)
    WHERE machine_id IS NOT NULL AND status != 'deregistered';
CREATE TABLE IF NOT EXISTS refresh_tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    agent_id TEXT NOT NULL REFERENCES agents(agent_id),
    family TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    consumed_at REAL,
    superseded_by INTEGER REFERENCES refresh_tokens(id),
    revoked_at REAL
);
CREATE INDEX IF NOT EXISTS refresh_tokens_by_family ON refresh_tokens(family);
CREATE TABLE IF NOT EXISTS commands (
    id TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL REFERENCES agents(agent_id),
    type TEXT NOT NULL,
    params TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL CHECK (status IN ('pending', 'sent', 'completed')),
    created_at REAL NOT NULL,
    sent_at REAL,
    completed_at REAL
);
CREATE INDEX IF NOT EXISTS commands_by_agent ON commands(agent_id, status, created_at);
CREATE TABLE IF NOT EXISTS update_reports (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    agent_id TEXT NOT NULL REFERENCES agents(agent_id),
    command_id TEXT,
    reported_at TEXT,
    received_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS update_items (
    report_id INTEGER NOT NULL REFERENCES update_reports(id),
    package_type TEXT NOT NULL,
    package_name TEXT NOT NULL,
    current_version TEXT,
    available_version TEXT NOT NULL,
    severity TEXT,
    repository_source TEXT,
    extra TEXT NOT NULL DEFAULT '{}'
);
"""


class StoreError(Exception):
    """The database cannot be used; the message says why and what to do."""


class AgentNotFound(Exception):
    pass


class TokenUnknown(Exception):
    pass


class TokenRefused(Exception):
    """A known registration token that cannot be consumed; str() is the reason."""


class SeatNotConsumed(TokenRefused):
    """The token looked usable but its seat could not be taken (upstream: 400)."""


class RefreshInvalid(Exception):
    pass


class MachineConflict(Exception):
    """The machine ID is bound to another agent; .existing describes that agent."""

    def __init__(self, existing: dict[str, Any]) -> None:
        super().__init__("machine ID already registered to another agent")
        self.existing = existing


class BindingRefused(Exception):
    """The renewal's X-Machine-ID does not prove the binding; .body is the 403 answer."""

    def __init__(self, body: dict[str, str]) -> None:
        super().__init__(body["error"])
        self.body = body


@dataclass(frozen=True)
class Renewed:
    """What a renewal did: 'accept', 'grace' or 'reuse'; refresh is the new one, if rotated."""

    verdict: str
    refresh: Optional[str] = None


@dataclass(frozen=True)
class Binding:
    machine_id: Optional[str]
    agent_version: str


def hash_secret(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def iso(ts: Optional[float]) -> Optional[str]:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Store:
    def __init__(self, path: str, create: bool = False) -> None:
        self.path = path
        self._write_lock = threading.Lock()
        if not os.path.exists(path):
            if not create:
                raise StoreError(
                    f"no database at {path}: start the server with --db {path} "
                    "or mint a token with it first"
                )
            # The file holds the JWT signing secret: create it private before SQLite opens it.
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            except FileExistsError:
                pass
            except OSError as exc:
                raise StoreError(f"cannot create database {path}: {exc.strerror}") from exc
        try:
            self._initialise()
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"{path} is not a usable stand-in server database ({exc}); "
                "point --db at another path or move this file away"
            ) from exc

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        conn = self._connect()
        try:
            yield conn
        finally:
            conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        # The in-process lock spares threads SQLite's busy back-off; BEGIN IMMEDIATE is what
        # serialises writers across processes (server and admin CLI).
        with self._write_lock:
            conn = self._connect()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            finally:
                conn.close()

    def _initialise(self) -> None:
        # Judge the version before changing anything (even the WAL switch rewrites the header):
        # a file from another version must stay untouched.
        with self._read() as conn:
            found = _schema_version(conn)
        if found is not None and found != SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {found}, this server knows "
                f"{SCHEMA_VERSION}; use the matching redflag-devserver or a new --db"
            )
        with self._read() as conn:
            conn.execute("PRAGMA journal_mode = WAL")
        with self._write() as conn:
            # executescript() would commit behind our back; run statements one by one.
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(
                "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,)
            )
            conn.execute(
                "INSERT OR IGNORE INTO meta VALUES ('jwt_secret', ?)", (secrets.token_hex(32),)
            )

    def jwt_secret(self) -> bytes:
        with self._read() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'jwt_secret'").fetchone()
        return bytes.fromhex(row["value"])

    # Registration tokens

    def mint_token(self, seats: int, ttl: int, note: Optional[str], now: float) -> dict[str, Any]:
        if seats <= 0:
            raise rules.InvalidInput("seats must be a positive integer")
        token = secrets.token_hex(32)
        with self._write() as conn:
            cur = conn.execute(
                "INSERT INTO registration_tokens (token_hash, note, max_seats, created_at,"
                " expires_at) VALUES (?, ?, ?, ?, ?)",
                (hash_secret(token), note, seats, now, now + ttl),
            )
            token_id = cur.lastrowid
        return {"token": token, "id": token_id, "seats": seats, "expires_at": iso(now + ttl)}

    def revoke_token(
        self, now: float, token: Optional[str] = None, token_id: Optional[int] = None
    ) -> int:
        """Revoke by value or id; returns the token's id. Revoking twice is harmless."""
        with self._write() as conn:
            if token is not None:
                row = conn.execute(
                    "SELECT id FROM registration_tokens WHERE token_hash = ?",
                    (hash_secret(token),),
                ).fetchone()
            else:
                row = conn.execute(
                    "SELECT id FROM registration_tokens WHERE id = ?", (token_id,)
                ).fetchone()
            if row is None:
                raise TokenUnknown
            conn.execute(
                "UPDATE registration_tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?",
                (now, row["id"]),
            )
            return int(row["id"])

    def list_tokens(self, now: float) -> list[dict[str, Any]]:
        with self._read() as conn:
            rows = conn.execute("SELECT * FROM registration_tokens ORDER BY id").fetchall()
        return [
            {
                "id": r["id"],
                "note": r["note"],
                "seats": r["max_seats"],
                "seats_used": r["seats_used"],
                "created_at": iso(r["created_at"]),
                "expires_at": iso(r["expires_at"]),
                "revoked_at": iso(r["revoked_at"]),
                "status": rules.token_status(_token_state(r), now),
            }
            for r in rows
        ]

    # Agents

    def register(self, token: str, reg: rules.Registration, now: float) -> tuple[str, str]:
        """Consume one seat and create the agent in one transaction -> (agent_id, refresh).

        A machine ID already bound to another agent refuses before any seat is spent.
        """
        with self._write() as conn:
            row = conn.execute(
                "SELECT * FROM registration_tokens WHERE token_hash = ?", (hash_secret(token),)
            ).fetchone()
            if row is None:
                raise TokenUnknown
            refusal = rules.token_refusal(_token_state(row), now)
            if refusal is not None:
                raise TokenRefused(refusal)
            if reg.machine_id is not None:
                holder = _machine_holder(conn, reg.machine_id)
                if holder is not None:
                    raise MachineConflict(_conflict_view(holder))
            cur = conn.execute(
                "UPDATE registration_tokens SET seats_used = seats_used + 1"
                " WHERE id = ? AND seats_used < max_seats",
                (row["id"],),
            )
            if cur.rowcount != 1:  # cannot happen under BEGIN IMMEDIATE; refuse, never overfill
                raise SeatNotConsumed("all seats used")
            agent_id = str(uuid.uuid4())
            conn.execute(
                "INSERT INTO agents (agent_id, hostname, os_type, os_version, os_architecture,"
                " agent_version, metadata, migrated_from, registration_token_id, machine_id,"
                " public_key_fingerprint, os_distro, available_scanners, registered_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    agent_id,
                    reg.hostname,
                    reg.os_type,
                    reg.os_version,
                    reg.os_architecture,
                    reg.agent_version,
                    json.dumps(reg.metadata, sort_keys=True),
                    reg.metadata.get("migrated_from") or None,
                    row["id"],
                    reg.machine_id,
                    reg.public_key_fingerprint,
                    reg.os_distro,
                    None if reg.available_scanners is None else json.dumps(reg.available_scanners),
                    now,
                ),
            )
            refresh = _mint_refresh(conn, agent_id, str(uuid.uuid4()), now)
        return agent_id, refresh

    def renew(
        self,
        agent_id: str,
        refresh_token: str,
        now: float,
        *,
        rotate: bool = False,
        machine_header: Optional[str] = None,
        check_binding: bool = False,
        agent_version: Optional[str] = None,
    ) -> Renewed:
        """Judge a refresh token and act on the verdict, all in one transaction.

        Order as upstream: the token must be known before the binding is judged (so the
        403s leak nothing to a stranger), and a replay from another machine revokes nothing.
        Without rotation the token's expiry slides to 90 days from now.
        """
        with self._write() as conn:
            agent = _active_agent(conn, agent_id)
            row = conn.execute(
                "SELECT * FROM refresh_tokens WHERE token_hash = ? AND agent_id = ?",
                (hash_secret(refresh_token), agent_id),
            ).fetchone()
            state = None if row is None else _refresh_state(conn, row)
            if state is None or state.revoked:
                raise RefreshInvalid
            if check_binding:
                refused = rules.binding_refusal(agent["machine_id"], machine_header)
                if refused is not None:
                    raise BindingRefused(refused)
            verdict = rules.refresh_verdict(state, now, rotate)
            if verdict in ("invalid", "expired"):
                raise RefreshInvalid
            if verdict == "reuse":
                conn.execute(
                    "UPDATE refresh_tokens SET revoked_at = COALESCE(revoked_at, ?)"
                    " WHERE family = ?",
                    (now, row["family"]),
                )
                conn.execute(
                    "UPDATE agents SET status = 'revoked', revoked_at = ? WHERE agent_id = ?",
                    (now, agent_id),
                )
                return Renewed("reuse")
            conn.execute(
                "UPDATE agents SET renewals = renewals + 1, last_renewed_at = ?,"
                " checkins_at_renewal = checkins, grace_replays = grace_replays + ?,"
                " agent_version = COALESCE(?, agent_version) WHERE agent_id = ?",
                (now, 1 if verdict == "grace" else 0, agent_version, agent_id),
            )
            if not rotate:
                conn.execute(
                    "UPDATE refresh_tokens SET expires_at = ? WHERE id = ?",
                    (now + REFRESH_TTL, row["id"]),
                )
                return Renewed(verdict)
            if verdict == "grace":
                # The successor was handed out but never presented: the agent lost it.
                conn.execute(
                    "UPDATE refresh_tokens SET revoked_at = ? WHERE id = ?",
                    (now, row["superseded_by"]),
                )
            fresh = _mint_refresh(conn, agent_id, row["family"], now)
            conn.execute(
                "UPDATE refresh_tokens SET consumed_at = COALESCE(consumed_at, ?),"
                " superseded_by = (SELECT id FROM refresh_tokens WHERE token_hash = ?)"
                " WHERE id = ?",
                (now, hash_secret(fresh), row["id"]),
            )
            return Renewed(verdict, fresh)

    def binding(self, agent_id: str) -> Binding:
        """What the binding checks need to know about a (not deregistered) agent."""
        with self._read() as conn:
            row = _active_agent(conn, agent_id)
        return Binding(machine_id=row["machine_id"], agent_version=row["agent_version"])

    def rebind(self, agent_id: str, machine_id: str, now: float) -> Optional[str]:
        """Admin: bind the agent to a new machine ID; returns the previous one."""
        if not rules.is_machine_id(machine_id):
            raise rules.InvalidInput(
                f"machine ID {machine_id!r} must be 64 lowercase hex characters "
                "(the SHA-256 the agent reports; `agents --json` shows them)"
            )
        with self._write() as conn:
            row = _active_agent(conn, agent_id)
            holder = _machine_holder(conn, machine_id)
            if holder is not None and holder["agent_id"] != agent_id:
                raise MachineConflict(_conflict_view(holder))
            conn.execute(
                "UPDATE agents SET machine_id = ? WHERE agent_id = ?", (machine_id, agent_id)
            )
            return row["machine_id"]

    def ensure_active(self, agent_id: str) -> None:
        with self._read() as conn:
            _active_agent(conn, agent_id)

    def check_in(self, agent_id: str, checkin: rules.CheckIn, now: float) -> list[dict[str, Any]]:
        """Record the check-in; hand out pending commands once (they become 'sent')."""
        with self._write() as conn:
            row = _active_agent(conn, agent_id)
            metadata = {**json.loads(row["metadata"]), **checkin.metadata}
            conn.execute(
                "UPDATE agents SET last_seen = ?, checkins = checkins + 1,"
                " agent_version = COALESCE(?, agent_version), metadata = ?,"
                " migrated_from = COALESCE(?, migrated_from),"
                " last_metrics = COALESCE(?, last_metrics) WHERE agent_id = ?",
                (
                    now,
                    checkin.version,
                    json.dumps(metadata, sort_keys=True),
                    checkin.metadata.get("migrated_from") or None,
                    json.dumps(checkin.metrics, sort_keys=True) if checkin.metrics else None,
                    agent_id,
                ),
            )
            pending = conn.execute(
                "SELECT id, type, params FROM commands WHERE agent_id = ? AND status = 'pending'"
                " ORDER BY created_at, rowid",
                (agent_id,),
            ).fetchall()
            conn.executemany(
                "UPDATE commands SET status = 'sent', sent_at = ? WHERE id = ?",
                [(now, c["id"]) for c in pending],
            )
        return [
            {"id": c["id"], "type": c["type"], "params": json.loads(c["params"])} for c in pending
        ]

    def store_updates(self, agent_id: str, report: rules.UpdateReport, now: float) -> int:
        with self._write() as conn:
            _active_agent(conn, agent_id)
            cur = conn.execute(
                "INSERT INTO update_reports (agent_id, command_id, reported_at, received_at)"
                " VALUES (?, ?, ?, ?)",
                (agent_id, report.command_id, report.timestamp, now),
            )
            report_id = int(cur.lastrowid)
            known = (
                "package_type",
                "package_name",
                "current_version",
                "available_version",
                "severity",
                "repository_source",
            )
            conn.executemany(
                "INSERT INTO update_items VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        report_id,
                        *(_text_or_none(item.get(k)) for k in known),
                        json.dumps(
                            {k: v for k, v in item.items() if k not in known}, sort_keys=True
                        ),
                    )
                    for item in report.updates
                ],
            )
            if report.command_id:
                conn.execute(
                    "UPDATE commands SET status = 'completed', completed_at = ?"
                    " WHERE id = ? AND agent_id = ? AND status != 'completed'",
                    (now, report.command_id, agent_id),
                )
        return report_id

    def deregister(self, agent_id: str, now: float) -> None:
        """Keep the row for history; drop the refresh token so it can never renew again."""
        with self._write() as conn:
            _active_agent(conn, agent_id)
            conn.execute(
                "UPDATE agents SET status = 'deregistered', deregistered_at = ? WHERE agent_id = ?",
                (now, agent_id),
            )
            conn.execute(
                "UPDATE refresh_tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE agent_id = ?",
                (now, agent_id),
            )

    def list_agents(self) -> list[dict[str, Any]]:
        with self._read() as conn:
            rows = conn.execute("SELECT * FROM agents ORDER BY registered_at, rowid").fetchall()
        return [_agent_view(r) for r in rows]

    # Commands and reports (admin)

    def queue_command(
        self, agent_id: str, command_type: str, params: dict[str, Any], now: float
    ) -> dict[str, Any]:
        command_type, params = rules.validate_command(command_type, params)
        command_id = str(uuid.uuid4())
        with self._write() as conn:
            _active_agent(conn, agent_id)
            conn.execute(
                "INSERT INTO commands (id, agent_id, type, params, status, created_at)"
                " VALUES (?, ?, ?, ?, 'pending', ?)",
                (command_id, agent_id, command_type, json.dumps(params, sort_keys=True), now),
            )
        return {
            "id": command_id,
            "agent_id": agent_id,
            "type": command_type,
            "params": params,
            "status": "pending",
            "created_at": iso(now),
        }

    def list_commands(self, agent_id: str) -> list[dict[str, Any]]:
        with self._read() as conn:
            _known_agent(conn, agent_id)
            rows = conn.execute(
                "SELECT * FROM commands WHERE agent_id = ? ORDER BY created_at, rowid",
                (agent_id,),
            ).fetchall()
        return [
            {
                "id": r["id"],
                "type": r["type"],
                "params": json.loads(r["params"]),
                "status": r["status"],
                "created_at": iso(r["created_at"]),
                "sent_at": iso(r["sent_at"]),
                "completed_at": iso(r["completed_at"]),
            }
            for r in rows
        ]

    def list_updates(self, agent_id: str) -> list[dict[str, Any]]:
        with self._read() as conn:
            _known_agent(conn, agent_id)
            reports = conn.execute(
                "SELECT * FROM update_reports WHERE agent_id = ? ORDER BY id", (agent_id,)
            ).fetchall()
            result = []
            for rep in reports:
                items = conn.execute(
                    "SELECT * FROM update_items WHERE report_id = ? ORDER BY rowid", (rep["id"],)
                ).fetchall()
                result.append(
                    {
                        "report_id": rep["id"],
                        "command_id": rep["command_id"],
                        "timestamp": rep["reported_at"],
                        "received_at": iso(rep["received_at"]),
                        "updates": [
                            {
                                **json.loads(i["extra"]),
                                "package_type": i["package_type"],
                                "package_name": i["package_name"],
                                "current_version": i["current_version"],
                                "available_version": i["available_version"],
                                "severity": i["severity"],
                                "repository_source": i["repository_source"],
                            }
                            for i in items
                        ],
                    }
                )
        return result


def _schema_version(conn: sqlite3.Connection) -> Optional[str]:
    if not conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
    ).fetchone():
        return None
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return None if row is None else row["value"]


def _text_or_none(value: Any) -> Optional[str]:
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value)


def _token_state(row: sqlite3.Row) -> rules.TokenState:
    return rules.TokenState(
        max_seats=row["max_seats"],
        seats_used=row["seats_used"],
        expires_at=row["expires_at"],
        revoked=row["revoked_at"] is not None,
    )


def _known_agent(conn: sqlite3.Connection, agent_id: str) -> sqlite3.Row:
    row = conn.execute("SELECT * FROM agents WHERE agent_id = ?", (agent_id,)).fetchone()
    if row is None:
        raise AgentNotFound
    return row


def _active_agent(conn: sqlite3.Connection, agent_id: str) -> sqlite3.Row:
    """Not deregistered. A revoked agent keeps its access token until it expires, as upstream
    (only the refresh family is revoked), and may still deregister itself."""
    row = _known_agent(conn, agent_id)
    if row["status"] == "deregistered":
        raise AgentNotFound
    return row


def _machine_holder(conn: sqlite3.Connection, machine_id: str) -> Optional[sqlite3.Row]:
    return conn.execute(
        "SELECT * FROM agents WHERE machine_id = ? AND status != 'deregistered'", (machine_id,)
    ).fetchone()


def _conflict_view(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "existing_agent_id": row["agent_id"],
        "existing_hostname": row["hostname"],
        # Upstream sets last_seen at registration, so it is never empty there.
        "existing_last_seen": iso(row["last_seen"] or row["registered_at"]),
    }


def _mint_refresh(conn: sqlite3.Connection, agent_id: str, family: str, now: float) -> str:
    refresh = secrets.token_hex(32)
    conn.execute(
        "INSERT INTO refresh_tokens (agent_id, family, token_hash, created_at, expires_at)"
        " VALUES (?, ?, ?, ?, ?)",
        (agent_id, family, hash_secret(refresh), now, now + REFRESH_TTL),
    )
    return refresh


def _refresh_state(conn: sqlite3.Connection, row: sqlite3.Row) -> rules.RefreshState:
    successor = None
    if row["superseded_by"] is not None:
        nxt = conn.execute(
            "SELECT consumed_at, revoked_at FROM refresh_tokens WHERE id = ?",
            (row["superseded_by"],),
        ).fetchone()
        if nxt is None or nxt["revoked_at"] is not None:
            successor = "revoked"
        elif nxt["consumed_at"] is not None:
            successor = "consumed"
        else:
            successor = "live"
    return rules.RefreshState(
        revoked=row["revoked_at"] is not None,
        expires_at=row["expires_at"],
        consumed=row["consumed_at"] is not None,
        successor=successor,
    )


def _agent_view(r: sqlite3.Row) -> dict[str, Any]:
    return {
        "hostname": r["hostname"],
        "agent_id": r["agent_id"],
        "agent_version": r["agent_version"],
        "status": r["status"],
        "last_seen": iso(r["last_seen"]),
        "migrated_from": r["migrated_from"],
        "registered_at": iso(r["registered_at"]),
        "os_type": r["os_type"],
        "os_version": r["os_version"],
        "os_architecture": r["os_architecture"],
        "metadata": json.loads(r["metadata"]),
        "registration_token_id": r["registration_token_id"],
        "checkins": r["checkins"],
        "renewals": r["renewals"],
        "last_renewed_at": iso(r["last_renewed_at"]),
        "checkins_since_renewal": (
            r["checkins"] - r["checkins_at_renewal"] if r["renewals"] else None
        ),
        "deregistered_at": iso(r["deregistered_at"]),
        "machine_id": r["machine_id"],
        "public_key_fingerprint": r["public_key_fingerprint"],
        "os_distro": r["os_distro"],
        "available_scanners": (
            None if r["available_scanners"] is None else json.loads(r["available_scanners"])
        ),
        "grace_replays": r["grace_replays"],
        "revoked_at": iso(r["revoked_at"]),
    }
