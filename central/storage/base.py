"""What every store backend offers, and the few places where the SQL must know which engine runs it.

Two backends keep one contract: ``SqliteStore`` (``central.storage.store``: one file, one writer, the
embedded default) and ``PgStore`` (``central.storage.postgres``: a PostgreSQL server, several collectors).
Code in ``central`` takes a ``BaseStore`` and writes SQLite-dialect SQL; the PostgreSQL connection
translates it. What differs in *meaning* between the engines is asked here, never by isinstance checks
scattered through the modules:

- ``for_update(conn)``: SQLite's ``BEGIN IMMEDIATE`` already serialises every writer; on PostgreSQL two
  collectors write at once, so a read that decides a write (the agent's chain head, an enrolment token)
  locks its row.
- ``notify(store, conn, channel, payload)``: tell the other collectors (LISTEN/NOTIFY); nothing to tell
  with one SQLite collector.
- ``require_sqlite(store, what)``: work that runs only on SQLite so far refuses PostgreSQL with a clear
  error instead of failing inside a query.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeVar

from central.errors import CentralError

try:
    import psycopg

    #: What a database call may raise on either backend.
    DB_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, psycopg.Error)
except ImportError:  # pragma: no cover - psycopg is a dependency of the package
    DB_ERRORS = (sqlite3.Error,)

__all__ = [
    "DB_ERRORS",
    "SETTLEMENTS_CHANNEL",
    "BaseStore",
    "NotOnPostgres",
    "committed_upto",
    "for_update",
    "is_postgres",
    "notify",
    "require_sqlite",
]

T = TypeVar("T")

#: Channel on which a collector announces stored settlements (payload ``agent_id:last_seq``).
SETTLEMENTS_CHANNEL = "yibao_settlements"


class NotOnPostgres(CentralError):
    """Work that runs on the SQLite backend only (so far)."""

    code = "not_on_postgres"
    http_status = 501


class BaseStore(Protocol):
    dialect: str
    applied_migrations: list[str]

    @property
    def where(self) -> str: ...

    def write(self, fn: Callable[[Any], T]) -> T: ...

    async def write_async(self, fn: Callable[[Any], T]) -> T: ...

    def read(self, fn: Callable[[Any], T]) -> T: ...

    async def read_async(self, fn: Callable[[Any], T]) -> T: ...

    async def run_async(self, fn: Callable[..., T], *args: Any) -> T: ...

    def exclusive(self, name: str) -> AbstractContextManager[bool]: ...

    def listen(self, channel: str, callback: Callable[[str], None]) -> None: ...

    def close(self) -> None: ...


def is_postgres(obj: Any) -> bool:
    """True for a ``PgStore`` or one of its connections."""
    return getattr(obj, "dialect", "sqlite") == "postgres"


def for_update(conn: Any) -> str:
    """`` FOR UPDATE`` on PostgreSQL (see the module's docstring), nothing on SQLite."""
    return " FOR UPDATE" if is_postgres(conn) else ""


def notify(conn: Any, channel: str, payload: str) -> None:
    """Announce ``payload`` on ``channel`` when ``conn``'s transaction commits (PostgreSQL only)."""
    if is_postgres(conn):
        conn.raw.execute("SELECT pg_notify(%s, %s)", (channel, payload))


def committed_upto(store: Any) -> int | None:
    """The ``settlements`` rowid up to which every row is committed, for the cursors that follow that table
    in rowid order (the incremental screen, the split audit); None on SQLite, where it is every row held.

    On SQLite one writer commits rows in rowid order, so a cursor never passes a row still to come. On
    PostgreSQL two collectors insert at once: a row numbered 100 can commit after row 101, and a cursor
    moved to 101 would never see it. ``LOCK TABLE … IN SHARE MODE`` waits for every transaction inserting
    into the table (they hold ROW EXCLUSIVE from before they draw a number) and keeps new ones out while
    the highest number is read; so every row at or below it is committed. The lock lasts one statement.
    """
    if not is_postgres(store):
        return None

    def bound(conn: Any) -> int:
        conn.raw.execute("LOCK TABLE settlements IN SHARE MODE")
        return int(conn.execute("SELECT coalesce(max(rowid), 0) FROM settlements").fetchone()[0])

    return int(store.write(bound))


def require_sqlite(store: Any, what: str) -> None:
    if is_postgres(store):
        raise NotOnPostgres(
            f"{what} runs on the SQLite backend only so far; run it on a collector whose `database` is "
            "sqlite (see docs/POSTGRES.md, 'What runs on PostgreSQL')"
        )
