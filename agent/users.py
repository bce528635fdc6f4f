"""The people who use the HIS API under their own name: cashiers and doctors, with their tokens.

Why per-user tokens at all: the HIS system token (``his.token``) says "the HIS integration", not who
sat at the desk. A doctor's override of a rule is a medical decision the centre reviews per doctor, so
it must carry the code of the doctor who made it, proved by the doctor's own token, not whatever code
the HIS wrote into the body. Cashiers get tokens too, so a settlement says whose desk it came from.

Why a database of its own (``HOME/users.db``) and not a table in ``agent.db``: the outbox has one
writer thread that owns ``agent.db``; ``yibao-agent users …`` writes while the agent runs, and must
never take the outbox's write lock or fall under its retention. (Like every file of the home it is in
``yibao-agent backup``, so a restored agent keeps its users.) Like ``policy.db`` and
``evoucher.db`` it carries its schema version in ``PRAGMA user_version``; migrations are numbered
steps, each in one transaction.

Tokens: ``ybu_`` and 32 random bytes (URL-safe base64), shown once when made; only their SHA-256 is
stored, so a copy of the database lets nobody in. The lookup is by that hash (an attacker learns
nothing about a token from how long a lookup of its hash takes) and the hash found is compared again
in constant time. A disabled user's token is refused with a message saying so; ``rotate`` replaces a
token (the old one stops at once, the agent reads the table on every request).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .config import AgentConfig
from .errors import ConfigError, StoreError, TokenDisabled, Unauthorized, UserInvalid

__all__ = [
    "HIS_SYSTEM",
    "ROLES",
    "TOKEN_PREFIX",
    "Principal",
    "User",
    "UserStore",
    "open_users",
    "users_db_path",
]

#: The roles a user may have; the HIS system token is the role ``his`` (never a row of the table).
ROLES = ("cashier", "doctor")
#: Every user token starts with this, so a token pasted into the wrong place is recognisable.
TOKEN_PREFIX = "ybu_"

_NAME = re.compile(r"^[\w.@-]{1,64}$")
_CODE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@dataclass(frozen=True)
class Principal:
    """Who a request comes from: the HIS integration as a whole (role ``his``) or one user."""

    role: str
    name: str
    dr_codg: str | None = None
    dept_codg: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """How a refusal names the caller: 'the HIS system token', "cashier li.na's token"."""
        return "the HIS system token" if self.role == "his" else f"{self.role} {self.name}'s token"


#: The caller behind ``his.token``.
HIS_SYSTEM = Principal(role="his", name="his")


@dataclass(frozen=True)
class User:
    """A row of the table, without its token hash (what ``users list`` shows)."""

    name: str
    role: str
    dr_codg: str | None
    dept_codg: str | None
    created_at: float
    rotated_at: float | None
    disabled_at: float | None

    @property
    def enabled(self) -> bool:
        return self.disabled_at is None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "enabled": self.enabled}


def _migration_1(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE users (
            name TEXT PRIMARY KEY,
            role TEXT NOT NULL CHECK (role IN ('cashier', 'doctor')),
            dr_codg TEXT,
            dept_codg TEXT,
            token_sha256 BLOB NOT NULL UNIQUE,
            created_at REAL NOT NULL,
            rotated_at REAL,
            disabled_at REAL,
            CHECK ((role = 'doctor') = (dr_codg IS NOT NULL))
        )"""
    )
    # One doctor code, one signing doctor: a second enabled account with the same code would let
    # either sign in the other's name.
    conn.execute(
        "CREATE UNIQUE INDEX users_doctor_code ON users (dr_codg) "
        "WHERE dr_codg IS NOT NULL AND disabled_at IS NULL"
    )


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_migration_1]
SCHEMA_VERSION = len(MIGRATIONS)

_COLUMNS = "name, role, dr_codg, dept_codg, created_at, rotated_at, disabled_at"


def users_db_path(config: AgentConfig) -> Path:
    """Where the users live: beside ``agent.db`` in the agent home."""
    return config.home / "users.db"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


class UserStore:
    """The users table: managed by the CLI, read by the HIS API on every request (one short lookup)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            if not self.path.exists():  # names and hashes only, but nobody else's business: owner-only
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
            self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA busy_timeout=30000")
            version = self._migrate()
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(
                f"cannot open the users database {self.path}: {exc}; check the agent's disk and permissions"
            ) from exc
        if version > SCHEMA_VERSION:
            self.close()
            raise ConfigError(
                f"the users database {self.path} was written by a newer agent (schema {version}); run that "
                "version of the agent"
            )

    def _migrate(self) -> int:
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        for number, step in enumerate(MIGRATIONS, start=1):
            if number <= version:
                continue
            with self._lock:
                self._conn.execute("BEGIN IMMEDIATE")
                try:  # another process may have migrated between the read and the lock
                    if self._conn.execute("PRAGMA user_version").fetchone()[0] < number:
                        step(self._conn)
                        self._conn.execute(f"PRAGMA user_version = {number}")
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
        return max(version, self._conn.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            conn = getattr(self, "_conn", None)
            if conn is not None:
                conn.close()
                self._conn = None  # type: ignore[assignment]

    def __enter__(self) -> UserStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- managing (the CLI) ------------------------------------------------------------------

    def add(self, name: str, role: str, *, dr_codg: str | None = None, dept_codg: str | None = None) -> str:
        """Create a user; return their token (shown once, never stored). ``UserInvalid`` changes nothing."""
        problems = []
        if not _NAME.match(name or ""):
            problems.append({"field": "name", "message": "1 to 64 letters, digits, '.', '_', '@' or '-'"})
        if role not in ROLES:
            problems.append({"field": "role", "message": "cashier or doctor"})
        elif role == "doctor" and not dr_codg:
            problems.append(
                {"field": "dr_codg", "message": "a doctor needs their national doctor code (--dr-codg)"}
            )
        elif role == "cashier" and dr_codg:
            problems.append({"field": "dr_codg", "message": "only a doctor has a doctor code"})
        for field, value in (("dr_codg", dr_codg), ("dept_codg", dept_codg)):
            if value is not None and not _CODE.match(value):
                problems.append({"field": field, "message": "1 to 64 letters, digits, '.', '_' or '-'"})
        if problems:
            raise UserInvalid(
                "the user was not added: " + "; ".join(f"{p['field']}: {p['message']}" for p in problems),
                details=problems,
            )
        token = new_token()
        with self._lock:
            if self._row(name) is not None:
                raise UserInvalid(
                    f"there is already a user {name}: choose another name, or 'users rotate --name {name}' "
                    "for a new token",
                    details=[{"field": "name", "message": "taken"}],
                )
            if dr_codg is not None:
                holder = self._conn.execute(
                    "SELECT name FROM users WHERE dr_codg = ? AND disabled_at IS NULL", (dr_codg,)
                ).fetchone()
                if holder is not None:
                    raise UserInvalid(
                        f"doctor code {dr_codg} belongs to the enabled user {holder[0]}: one doctor, one "
                        f"account; disable {holder[0]} first if this replaces it",
                        details=[{"field": "dr_codg", "message": "in use"}],
                    )
            self._conn.execute(
                "INSERT INTO users (name, role, dr_codg, dept_codg, token_sha256, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (name, role, dr_codg, dept_codg, _digest(token), time.time()),
            )
        return token

    def users(self) -> list[User]:
        with self._lock:
            rows = self._conn.execute(f"SELECT {_COLUMNS} FROM users ORDER BY name").fetchall()
        return [User(*row) for row in rows]

    def get(self, name: str) -> User:
        with self._lock:
            row = self._row(name)
        if row is None:
            raise self._unknown(name)
        return row

    def disable(self, name: str) -> User:
        """Stop the user's token at once (kept, so the name and its history stay; never deleted)."""
        with self._lock:
            self._conn.execute(
                "UPDATE users SET disabled_at = ? WHERE name = ? AND disabled_at IS NULL", (time.time(), name)
            )
            row = self._row(name)
        if row is None:
            raise self._unknown(name)
        return row

    def rotate(self, name: str) -> str:
        """A new token for an enabled user; the old one stops at once."""
        token = new_token()
        with self._lock:
            row = self._row(name)
            if row is None:
                raise self._unknown(name)
            if not row.enabled:
                raise UserInvalid(
                    f"user {name} is disabled: a disabled account gets no new token; add a new user instead",
                    details=[{"field": "name", "message": "disabled"}],
                )
            self._conn.execute(
                "UPDATE users SET token_sha256 = ?, rotated_at = ? WHERE name = ?",
                (_digest(token), time.time(), name),
            )
        return token

    def _row(self, name: str) -> User | None:
        row = self._conn.execute(f"SELECT {_COLUMNS} FROM users WHERE name = ?", (name,)).fetchone()
        return User(*row) if row is not None else None

    @staticmethod
    def _unknown(name: str) -> UserInvalid:
        return UserInvalid(
            f"there is no user {name}: 'yibao-agent users list' shows them",
            details=[{"field": "name", "message": "unknown"}],
        )

    # ---- the hot path (every HIS API request with a user token) ------------------------------

    def authenticate(self, token: str) -> Principal:
        """The enabled user whose token this is; ``Unauthorized`` / ``TokenDisabled`` otherwise."""
        digest = _digest(token)
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_COLUMNS}, token_sha256 FROM users WHERE token_sha256 = ?", (digest,)
            ).fetchone()
        if row is None or not hmac.compare_digest(row[-1], digest):
            hint = "" if token.startswith(TOKEN_PREFIX) else " (user tokens start with 'ybu_')"
            raise Unauthorized(
                f"the bearer token is neither the HIS token nor a user's token of this agent{hint}: send the "
                "token from the agent's his.token file, or the user's own token; a token replaced by 'users "
                "rotate' no longer works — ask the agent's administrator for the new one"
            )
        user = User(*row[:-1])
        if not user.enabled:
            raise TokenDisabled(
                f"the token of {user.role} {user.name} is disabled: sign in with your own current token, or "
                "ask the agent's administrator ('yibao-agent users add') for a new account"
            )
        return Principal(role=user.role, name=user.name, dr_codg=user.dr_codg, dept_codg=user.dept_codg)


def open_users(config: AgentConfig) -> UserStore:
    return UserStore(users_db_path(config))
