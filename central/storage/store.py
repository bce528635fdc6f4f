"""``central.db``: connections, the one writer thread, and the queries.

Rules:

1. One writer per database: every write runs on the store's single writer thread, inside
   ``BEGIN IMMEDIATE … COMMIT``; a function passed to ``write`` is one transaction.
2. WAL with ``synchronous=FULL``: when ``write`` returns, the change is on disk, so an ack
   sent after it is a promise the centre can keep through a power cut.
3. Reads use their own connections (one per thread) and never block the writer.
4. Opening a store applies pending migrations (``central.storage.schema``); a home that was
   never initialised is refused unless ``create=True`` (``yibao-central init``).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from central.errors import ConfigInvalid, HomeNotInitialised

from .schema import migrate

if TYPE_CHECKING:
    from central.config import CentralConfig

    from .base import BaseStore

__all__ = [
    "AgentRow",
    "SqliteStore",
    "Store",
    "Where",
    "get_agent",
    "list_agents",
    "now_iso",
    "open_store",
    "record_security_event",
]

T = TypeVar("T")


class Where:
    """A ``WHERE`` clause from the listing filters that were given; a filter left None adds nothing.

    The operators' listings (suspicions, cases, decisions, rule quality) narrow by the operator's
    areas and optional equalities; ``any_of`` with an empty collection means nothing can match,
    which the caller answers with an empty list rather than a query.
    """

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.params: list[Any] = []

    def any_of(self, column: str, values: Collection[Any] | None) -> bool:
        """``column IN (values)`` (None: no filter); False when ``values`` is empty."""
        if values is None:
            return True
        chosen = sorted(set(values))
        if not chosen:
            return False
        self.parts.append(f"{column} IN ({','.join('?' * len(chosen))})")
        self.params += chosen
        return True

    def equal(self, *pairs: tuple[str, Any]) -> Where:
        """``column = value`` for each pair whose value is not None."""
        for column, value in pairs:
            if value is not None:
                self.parts.append(f"{column} = ?")
                self.params.append(value)
        return self

    def add(self, condition: str, *params: Any) -> Where:
        self.parts.append(condition)
        self.params += params
        return self

    @property
    def sql(self) -> str:
        """`` WHERE …`` (with its leading space), or nothing."""
        return " WHERE " + " AND ".join(self.parts) if self.parts else ""


BUSY_TIMEOUT_MS = 10_000


def now_iso() -> str:
    """UTC timestamp text, second precision: the one time format the database stores."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
    conn.execute("PRAGMA synchronous = FULL")
    return conn


class SqliteStore:
    """The collector's database, safe to share between the event loop and CLI code."""

    dialect = "sqlite"

    def __init__(self, path: Path | str, *, create: bool = False) -> None:
        self.path = Path(path)
        if not self.path.exists() and not create:
            raise HomeNotInitialised(
                f"no database at {self.path}; run `yibao-central --home {self.path.parent} init` first"
            )
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="central-writer")
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="central-reader")
        self._local = threading.local()
        self._read_conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._wconn: sqlite3.Connection | None = None
        self._closed = False
        self.applied_migrations: list[str] = self._writer.submit(self._open_writer).result()

    # -- connections -------------------------------------------------------------------

    def _open_writer(self) -> list[str]:
        conn = _connect(self.path)
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":  # pragma: no cover - only on filesystems without shared memory
            raise HomeNotInitialised(f"{self.path} cannot use WAL mode (journal mode is {mode})")
        self._wconn = conn
        return migrate(conn)

    def _read_conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path)
            conn.execute("PRAGMA query_only = ON")
            self._local.conn = conn
            with self._lock:
                self._read_conns.append(conn)
        return conn

    def close(self) -> None:
        """Finish queued writes, then close every connection; idempotent."""
        if self._closed:
            return
        self._closed = True

        def _close_writer() -> None:
            if self._wconn is not None:
                self._wconn.close()
                self._wconn = None

        self._writer.submit(_close_writer).result()
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        with self._lock:
            for conn in self._read_conns:
                conn.close()
            self._read_conns.clear()

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- running work ------------------------------------------------------------------

    def _transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._wconn
        assert conn is not None, "store is closed"
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` as one transaction on the writer thread and wait for it."""
        return self._writer.submit(self._transaction, fn).result()

    async def write_async(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.wrap_future(self._writer.submit(self._transaction, fn))

    def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` on this thread's read-only connection."""
        return fn(self._read_conn())

    async def read_async(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.wrap_future(self._readers.submit(self.read, fn))

    async def run_async(self, fn: Callable[..., T], *args: Any) -> T:
        """CPU work that also reads (decoding, verifying) off the event loop, on a reader thread."""
        return await asyncio.wrap_future(self._readers.submit(fn, *args))

    # -- the backend contract (``central.storage.base``) ---------------------------------

    @property
    def where(self) -> str:
        return str(self.path)

    @contextmanager
    def exclusive(self, name: str) -> Iterator[bool]:
        """Always held: one SQLite file has one collector (``reuse_port`` is refused with SQLite)."""
        yield True

    def listen(self, channel: str, callback: Callable[[str], None]) -> None:
        """Nothing to hear: no other collector writes this file."""


#: The name every module imports; the SQLite store is the embedded default.
Store = SqliteStore


def open_store(config: CentralConfig, *, create: bool = False) -> BaseStore:
    """The store ``config.database`` names: the home's SQLite file, or a PostgreSQL server."""
    if config.database == "sqlite":
        return SqliteStore(config.db_path, create=create)
    try:
        from .postgres import PgStore
    except ImportError as exc:  # pragma: no cover - psycopg is a dependency of the package
        raise ConfigInvalid(f"database is a PostgreSQL DSN but psycopg cannot be imported ({exc})") from None
    return PgStore(config.database, create=create)


# -- queries -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgentRow:
    agent_id: str
    fixmedins_code: str
    public_key: bytes
    acked_seq: int
    head_hash: bytes
    last_seen: str | None
    enrolled_at: str
    revoked_at: str | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


_AGENT_COLUMNS = (
    "agent_id, fixmedins_code, public_key, acked_seq, head_hash, last_seen, enrolled_at, revoked_at"
)


def get_agent(conn: sqlite3.Connection, agent_id: str) -> AgentRow | None:
    row = conn.execute(f"SELECT {_AGENT_COLUMNS} FROM agents WHERE agent_id = ?", (agent_id,)).fetchone()
    return AgentRow(*row) if row else None


def list_agents(conn: sqlite3.Connection, hospital: str | None = None) -> list[AgentRow]:
    sql = f"SELECT {_AGENT_COLUMNS} FROM agents"
    params: tuple[str, ...] = ()
    if hospital is not None:
        sql += " WHERE fixmedins_code = ?"
        params = (hospital,)
    return [AgentRow(*row) for row in conn.execute(sql + " ORDER BY agent_id", params)]


def agent_summary(agent: AgentRow) -> dict[str, Any]:
    """What ``GET /v1/agents`` and ``agents list`` show about one agent."""
    return {
        "agent_id": agent.agent_id,
        "fixmedins_code": agent.fixmedins_code,
        "last_seq": agent.acked_seq,
        "chain_head": agent.head_hash.hex(),
        "last_seen": agent.last_seen,
        "enrolled_at": agent.enrolled_at,
        "revoked": agent.revoked,
    }


SECURITY_EVENT_FOLD_S = 60


def record_security_event(
    conn: sqlite3.Connection, agent_id: str | None, code: str, message: str, remote: str | None
) -> None:
    """Record a refusal worth an operator's eye; a burst from one source folds into one row.

    Anyone who knows an agent id can send junk; counting repeats instead of adding a row
    each time keeps the table (and the reviewers' screen) bounded under such a flood.
    """
    now = now_iso()
    cutoff = (datetime.now(UTC) - timedelta(seconds=SECURITY_EVENT_FOLD_S)).isoformat(timespec="seconds")
    row = conn.execute(
        "SELECT id FROM security_events WHERE agent_id IS ? AND code = ? AND remote IS ? "
        "AND coalesce(last_time, time) >= ? ORDER BY id DESC LIMIT 1",
        (agent_id, code, remote, cutoff),
    ).fetchone()
    if row is not None:
        conn.execute(
            "UPDATE security_events SET repeats = repeats + 1, last_time = ? WHERE id = ?", (now, row[0])
        )
        return
    conn.execute(
        "INSERT INTO security_events (time, agent_id, code, message, remote) VALUES (?, ?, ?, ?, ?)",
        (now, agent_id, code, message, remote),
    )


def security_events(conn: sqlite3.Connection, agent_id: str | None = None) -> list[dict[str, Any]]:
    sql = "SELECT id, time, agent_id, code, message, remote, repeats, last_time FROM security_events"
    params: tuple[str, ...] = ()
    if agent_id is not None:
        sql += " WHERE agent_id = ?"
        params = (agent_id,)
    cols = ("id", "time", "agent_id", "code", "message", "remote", "repeats", "last_time")
    return [dict(zip(cols, row, strict=True)) for row in conn.execute(sql + " ORDER BY id", params)]


EXPORT_COLUMNS = (
    "setl_id",
    "agent_id",
    "seq",
    "kind",
    "his_setl_no",
    "fixmedins_code",
    "setl_time",
    "medfee_sumamt",
    "fund_pay_sumamt",
    "acct_pay",
    "psn_cash_pay",
    "orig_setl_id",
    "mdtrt_cert_type",  # how the person was identified; the card number / voucher nonce stays in
    "import_id",  # the bulk import that brought it (``yibao-central import status``); None: an agent's
)


def iter_settlements(conn: sqlite3.Connection, hospital: str | None = None) -> Iterator[dict[str, Any]]:
    """Settlement rows without personal data (no ``psn_no``), in upload order per agent."""
    sql = f"SELECT {', '.join(EXPORT_COLUMNS)} FROM settlements"
    params: tuple[str, ...] = ()
    if hospital is not None:
        sql += " WHERE fixmedins_code = ?"
        params = (hospital,)
    for row in conn.execute(sql + " ORDER BY agent_id, seq, rowid", params):
        yield dict(zip(EXPORT_COLUMNS, row, strict=True))
