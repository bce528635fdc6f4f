"""The centre on a PostgreSQL server (psycopg 3): the same store, for a province's volume and two collectors.

``PgStore`` keeps ``SqliteStore``'s contract, so ingest, enrolment, policy, review and the rest run on it
unchanged (their SQL is translated, ``central.storage.sql``):

1. ``write(fn)``: ``fn(conn)`` is one transaction on this collector's writer thread; when it returns the
   commit is durable (``synchronous_commit`` stays ``on``). Other collectors write at the same time, so
   what must not race takes a row lock (``for_update``: the agent head in ingest, the enrolment token);
   a transaction that loses a deadlock, a serialisation conflict or a unique key to another collector's
   commit is run again, so ``fn`` must be repeatable — every write function in ``central`` only reads
   and writes the database.
2. ``read(fn)``: the calling thread's own autocommit connection; never blocks a writer.
3. ``exclusive(name)``: a session advisory lock, so work one collector should do at a time (re-signing
   TUF metadata, the split audit, lifting suspensions) is done by one; the other skips that round.
4. ``central.storage.base.notify(conn, channel, payload)`` inside a write: delivered to every
   ``listen``-er when the transaction commits (PostgreSQL LISTEN/NOTIFY), so the other collector
   learns of stored settlements without polling.
5. Opening applies pending migrations (``central.storage.pg_schema``) under an advisory lock, so two
   collectors starting at once migrate once; a database never initialised is refused unless ``create``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.adapt import Dumper, Loader
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_random_exponential

from central.errors import CentralError, HomeNotInitialised, SchemaTooNew

from .pg_schema import pg_steps, pg_tables
from .sql import Tables, translate

__all__ = ["DatabaseUnavailable", "PgConnection", "PgStore", "adapt_connection", "migrate", "redact_dsn"]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: How often a transaction that lost a deadlock, a serialisation conflict or a unique key is tried again.
RETRIES = 8
#: What a transaction loses to another session's commit; run again, it sees the winner's rows. A unique key
#: is among them: under READ COMMITTED a function that looked first (the next agent id of a hospital, an
#: operator's name) cannot see a row committed after its look, so two collectors enrolling two agents of
#: one hospital at once both pick ``…-01`` and the later insert fails. Run again, it picks ``…-02`` (or,
#: where the function checks for a duplicate, refuses it with its own error, as on SQLite). A unique key
#: the function itself violates fails the same way every time and is raised after the last try.
_LOST_RACE = (pg_errors.DeadlockDetected, pg_errors.SerializationFailure, pg_errors.UniqueViolation)
_MIGRATE_LOCK = "yibao-central:migrate"
#: Backoff of a LISTEN connection's reconnection: from this, doubling (full jitter) up to the cap. The cap
#: bounds how long after the database is back a collector starts hearing the others again.
LISTEN_BACKOFF_INITIAL_S = 0.2
LISTEN_BACKOFF_MAX_S = 10.0


class DatabaseUnavailable(CentralError):
    """The PostgreSQL server cannot be reached or refused the login."""

    code = "database_unavailable"
    http_status = 503


def redact_dsn(dsn: str) -> str:
    """The DSN without its password, fit for a log line or an error message."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparsable DSN>"
    info.pop("password", None)
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items()})


class _NumericLoader(Loader):
    """``numeric`` as SQLite would answer: an integer when written without a fraction (``sum`` of fen,
    integer arithmetic), else a float — ``avg``, ``x * 1.0``: SQLite's REAL, even when whole (``3.0``)."""

    def load(self, data: Any) -> int | float:
        text = bytes(data).decode()
        fraction = "." in text or "e" in text.lower() or "n" in text.lower()  # 3.0, 1e-7, NaN, Infinity
        return float(text) if fraction else int(Decimal(text))


class _BoolAsIntDumper(Dumper):
    """A Python bool as a ``bigint`` 0/1: SQLite keeps booleans as integers and every such column here is
    BIGINT, which refuses a boolean. Done by the driver, so no statement's parameters need converting."""

    oid = psycopg.adapters.types["int8"].oid

    def dump(self, obj: bool) -> bytes:
        return b"1" if obj else b"0"


def adapt_connection(conn: psycopg.Connection[Any]) -> None:
    """Numbers and booleans as the centre's SQLite code expects them, on any connection to its database."""
    conn.adapters.register_loader("numeric", _NumericLoader)
    conn.adapters.register_dumper(bool, _BoolAsIntDumper)


#: A single-row ``INSERT INTO t (cols) VALUES (%s, …)`` that ``executemany`` sends as one ``unnest``.
_ONE_ROW = re.compile(
    r"INSERT INTO (\w+) \(([\w, ]+)\) VALUES \(%s(?:, %s)*\)((?: ON CONFLICT DO NOTHING)?)"
)


def _lock_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class PgCursor:
    """The part of ``sqlite3.Cursor`` the centre uses, over a psycopg cursor."""

    def __init__(self, cur: psycopg.Cursor[Any], lastrowid: int | None = None) -> None:
        self._cur = cur
        self.lastrowid = lastrowid

    @property
    def rowcount(self) -> int:
        return self._cur.rowcount

    @property
    def description(self) -> Any:
        return self._cur.description

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._cur.fetchone() if self._cur.description is not None and self.lastrowid is None else None

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._cur.fetchall() if self._cur.description is not None and self.lastrowid is None else []

    def fetchmany(self, size: int = 1) -> list[tuple[Any, ...]]:
        return (
            self._cur.fetchmany(size) if self._cur.description is not None and self.lastrowid is None else []
        )

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        if self._cur.description is None or self.lastrowid is not None:
            return iter(())
        return iter(self._cur)


class PgConnection:
    """A psycopg connection that takes the centre's SQLite-dialect SQL (``?`` parameters)."""

    dialect = "postgres"

    def __init__(self, raw: psycopg.Connection[Any], tables: Tables) -> None:
        self.raw = raw
        self._tables = tables
        #: Rows inserted, updated or deleted through this connection, as ``sqlite3.Connection`` counts.
        self.total_changes = 0
        self._types: dict[str, dict[str, str]] = {}

    def _count(self, sql: str, cur: psycopg.Cursor[Any]) -> None:
        if sql[:6].upper() in ("INSERT", "UPDATE", "DELETE") and cur.rowcount > 0:
            self.total_changes += cur.rowcount

    def execute(self, sql: str, params: Sequence[Any] = ()) -> PgCursor:
        t = translate(sql, self._tables)
        cur = self.raw.cursor()
        cur.execute(t.sql, params)
        self._count(t.sql, cur)
        if t.returns_id:
            row = cur.fetchone()
            return PgCursor(cur, row[0] if row else None)
        return PgCursor(cur)

    def executemany(self, sql: str, seq: Any) -> PgCursor:
        """``sql`` once per parameter row; a plain single-row INSERT is sent as one ``INSERT … SELECT
        FROM unnest(column arrays)``.

        Ingest inserts thousands of rows per batch; row by row, the driver's per-statement work is most of
        the cost of a batch (``benchmarks/ingest_pg.py``). One statement with one array per column keeps
        its text (and its server-side prepared plan) the same whatever the number of rows. Only an INSERT
        without a conflict clause or with ``ON CONFLICT DO NOTHING`` is folded: it means the same row by
        row or at once (a row conflicting with one before it, in the table or in the same statement, is
        skipped or refused either way), rows are inserted in the given order, and the row count is the
        rows inserted.
        """
        t = translate(sql, self._tables)
        text = t.sql.rsplit(" RETURNING ", 1)[0] if t.returns_id else t.sql
        rows = seq if isinstance(seq, list) else list(seq)
        cur = self.raw.cursor()
        fold = _ONE_ROW.fullmatch(text) if len(rows) > 1 else None
        if fold is None:
            cur.executemany(text, rows)
            self._count(text, cur)
            return PgCursor(cur)
        table, columns, tail = fold.groups()
        names = [c.strip() for c in columns.split(",")]
        types = self._column_types(table)
        arrays = ", ".join(f"%b::{types[c]}[]" for c in names)  # binary: no text escaping of each value
        cur.execute(
            f"INSERT INTO {table} ({columns}) SELECT * FROM unnest({arrays}){tail}",
            [list(column) for column in zip(*rows, strict=True)],
        )
        self._count(text, cur)
        return PgCursor(cur)

    def _column_types(self, table: str) -> dict[str, str]:
        """Each column's type, for the casts of ``executemany``'s arrays (asked once per table)."""
        types = self._types.get(table)
        if types is None:
            types = dict(
                self.raw.execute(
                    "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                    "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
                    (table,),
                ).fetchall()
            )
            self._types[table] = types
        return types

    @property
    def in_transaction(self) -> bool:
        return self.raw.info.transaction_status != psycopg.pq.TransactionStatus.IDLE

    def commit(self) -> None:
        self.raw.commit()

    def __enter__(self) -> PgConnection:
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        if kind is None:
            self.raw.commit()
        else:
            self.raw.rollback()


def migrate(
    raw: psycopg.Connection[Any], tables: Tables, *, where: str, create: bool, upto: int | None = None
) -> list[str]:
    """Apply the pending PostgreSQL steps (``central.storage.pg_schema``) in ``raw``'s open transaction.

    Returns the names applied. ``upto`` stops at that schema version: a database as an older release
    left it, which is how ``tests/pg/test_pg_store.py`` shows an upgrade keeps its rows. The caller holds
    the migration advisory lock, so two collectors starting at once migrate once.
    """
    exists = raw.execute("SELECT to_regclass('_migrations') IS NOT NULL").fetchone()[0]
    if not exists:
        if not create:
            raise HomeNotInitialised(
                f"the PostgreSQL database {where} holds no yibao-central schema; run "
                "`yibao-central --home HOME init` with `database` set to it first"
            )
        raw.execute(
            "CREATE TABLE _migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, "
            "applied_at TEXT NOT NULL)"
        )
    current = raw.execute("SELECT coalesce(max(version), 0) FROM _migrations").fetchone()[0]
    steps = pg_steps()
    if current > len(steps):
        raise SchemaTooNew(
            f"the PostgreSQL database {where} is at schema version {current} but this yibao-central knows "
            f"only {len(steps)}; upgrade yibao-central instead of opening the database with an older one"
        )
    applied = []
    for step in steps[current : len(steps) if upto is None else upto]:
        for statement in step.statements:
            raw.execute(statement)
        if step.data_step is not None:
            step.data_step(PgConnection(raw, tables))
        raw.execute(
            "INSERT INTO _migrations (version, name, applied_at) VALUES (%s, %s, %s)",
            (step.version, step.name, datetime.now(UTC).isoformat(timespec="seconds")),
        )
        applied.append(step.name)
    return applied


class PgStore:
    """The collector's database on a PostgreSQL server; shared by the event loop and CLI code."""

    dialect = "postgres"

    def __init__(self, dsn: str, *, create: bool = False, readers: int = 2) -> None:
        self.dsn = dsn
        self.where = redact_dsn(dsn)
        self._tables = pg_tables()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="central-pg-writer")
        self._readers = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="central-pg-reader")
        self._local = threading.local()
        self._conns: list[psycopg.Connection[Any]] = []
        self._lock = threading.RLock()
        self._listeners: list[threading.Thread] = []
        self._closed = threading.Event()
        self._wconn: PgConnection | None = None
        self._advisory: psycopg.Connection[Any] | None = None
        self._held: set[int] = set()
        try:
            self.applied_migrations: list[str] = self._writer.submit(self._open_writer, create).result()
        except BaseException:
            # A refused open (not initialised, too new, unreachable) must not leave its connection behind.
            self._writer.shutdown(wait=True)
            self._readers.shutdown(wait=True)
            with self._lock:
                for conn in self._conns:
                    conn.close()
                self._conns.clear()
            raise

    # -- connections -------------------------------------------------------------------

    def _connect(self, *, autocommit: bool) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(self.dsn, autocommit=autocommit, connect_timeout=10)
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(
                f"cannot connect to PostgreSQL at {self.where}: {str(exc).strip()}; check that the "
                "server is up and the `database` setting in central.json"
            ) from None
        adapt_connection(conn)
        with self._lock:
            self._conns.append(conn)
        return conn

    def _open_writer(self, create: bool) -> list[str]:
        raw = self._connect(autocommit=False)
        self._wconn = PgConnection(raw, self._tables)
        with raw.transaction():
            raw.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(_MIGRATE_LOCK),))
            return migrate(raw, self._tables, where=self.where, create=create)

    def _read_conn(self) -> PgConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.raw.closed:
            conn = PgConnection(self._connect(autocommit=True), self._tables)
            self._local.conn = conn
        return conn

    def close(self) -> None:
        """Finish queued writes, stop listeners, close every connection; idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        for thread in self._listeners:
            thread.join(timeout=5)
        with self._lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()

    def __enter__(self) -> PgStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- running work ------------------------------------------------------------------

    def _transaction(self, fn: Callable[[PgConnection], T]) -> T:
        conn = self._wconn
        assert conn is not None, "store is closed"
        for attempt in range(1, RETRIES + 1):
            try:
                with conn.raw.transaction():
                    return fn(conn)
            except _LOST_RACE as exc:
                if attempt == RETRIES:
                    raise
                log.info("transaction lost a conflict (%s); trying again (%d)", type(exc).__name__, attempt)
                time.sleep(0.01 * attempt)
            except psycopg.OperationalError as exc:
                if conn.raw.closed or conn.raw.broken:
                    conn.raw = self._connect(autocommit=False)
                raise DatabaseUnavailable(
                    f"PostgreSQL at {self.where} failed mid-transaction: {exc}"
                ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def write(self, fn: Callable[[PgConnection], T]) -> T:
        """Run ``fn(conn)`` as one transaction on the writer thread and wait for it."""
        return self._writer.submit(self._transaction, fn).result()

    async def write_async(self, fn: Callable[[PgConnection], T]) -> T:
        return await asyncio.wrap_future(self._writer.submit(self._transaction, fn))

    def read(self, fn: Callable[[PgConnection], T]) -> T:
        """Run ``fn(conn)`` on this thread's autocommit connection."""
        return fn(self._read_conn())

    async def read_async(self, fn: Callable[[PgConnection], T]) -> T:
        return await asyncio.wrap_future(self._readers.submit(self.read, fn))

    async def run_async(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.wrap_future(self._readers.submit(fn, *args))

    # -- two collectors ------------------------------------------------------------------

    @contextmanager
    def exclusive(self, name: str) -> Iterator[bool]:
        """Hold the advisory lock ``name`` for the block if no other collector does; yields whether held.

        The lock is a session lock on one connection this store keeps for it. PostgreSQL grants a session
        a lock it already holds, so threads of this collector are kept apart here (``_held``): ``name`` is
        held by one block at a time, in this process as across collectors. A connection the server dropped
        is replaced; its locks went with it.
        """
        key = _lock_key(name)
        with self._lock:
            if key in self._held:
                got = False
            else:
                if self._advisory is None or self._advisory.closed or self._advisory.broken:
                    self._advisory = self._connect(autocommit=True)
                got = bool(self._advisory.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0])
                if got:
                    self._held.add(key)
            conn = self._advisory
        try:
            yield got
        finally:
            if got:
                with self._lock:
                    self._held.discard(key)
                    try:
                        conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
                    except psycopg.OperationalError:
                        pass  # the session is gone, and its lock with it

    def listen(self, channel: str, callback: Callable[[str], None]) -> None:
        """Call ``callback(payload)`` (on a listener thread) for every notification on ``channel``.

        The first ``LISTEN`` happens here, so a collector whose database is down at start says so at once
        (``DatabaseUnavailable``). After that the thread outlives outages: a lost connection is reopened
        with capped, jittered backoff until it listens again or the store closes (``_relisten``).
        Notifications sent while it was not listening are not replayed — PostgreSQL keeps none for a
        session that is gone — so what a listener counts is a signal, never a record of what is stored.
        """
        conn = self._connect(autocommit=True)
        conn.execute(f'LISTEN "{channel}"')
        thread = threading.Thread(
            target=self._listen_loop, args=(channel, callback, conn), name=f"central-pg-listen-{channel}",
            daemon=True,
        )  # fmt: skip
        thread.start()
        self._listeners.append(thread)

    def _listen_loop(
        self, channel: str, callback: Callable[[str], None], conn: psycopg.Connection[Any]
    ) -> None:
        while not self._closed.is_set():
            try:
                for note in conn.notifies(timeout=0.5):
                    try:
                        callback(note.payload)
                    except Exception:  # a callback's fault must not end the listener
                        log.exception("listener of %s failed", channel)
            except psycopg.OperationalError as exc:
                if self._closed.is_set():
                    return
                again = self._relisten(channel, conn, exc)
                if again is None:
                    return  # closed while the database was away
                conn = again

    def _relisten(
        self, channel: str, lost: psycopg.Connection[Any], cause: BaseException
    ) -> psycopg.Connection[Any] | None:
        """A new connection listening on ``channel`` after ``lost`` failed; None once the store closes.

        Tried with capped, jittered exponential backoff (tenacity) for as long as it takes: the database
        coming back after minutes must find the collector counting again, without a restart. Each outage
        is logged once when it starts and once when it ends (a warning a second would bury everything
        else); the attempts in between are debug lines. Waits on the store's closed event, so
        ``close()`` ends the thread within a moment even in the middle of an outage.
        """
        with self._lock:
            if lost in self._conns:
                self._conns.remove(lost)
        lost.close()
        started = time.monotonic()
        log.warning(
            "listening on %s: the connection to PostgreSQL at %s was lost (%s); reconnecting until it is "
            "back", channel, self.where, " ".join(str(cause).split()) or type(cause).__name__,
        )  # fmt: skip

        def attempt() -> psycopg.Connection[Any]:
            conn = self._connect(autocommit=True)
            try:
                conn.execute(f'LISTEN "{channel}"')
            except BaseException:
                with self._lock:
                    if conn in self._conns:
                        self._conns.remove(conn)
                conn.close()
                raise
            return conn

        def failed(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.debug("listening on %s: attempt %d failed: %s", channel, state.attempt_number, exc)

        retrying = Retrying(
            retry=retry_if_exception_type((DatabaseUnavailable, psycopg.OperationalError)),
            wait=wait_random_exponential(multiplier=LISTEN_BACKOFF_INITIAL_S, max=LISTEN_BACKOFF_MAX_S),
            stop=lambda _state: self._closed.is_set(),
            sleep=self._closed.wait,
            before_sleep=failed,
            retry_error_callback=lambda _state: None,
        )
        conn = retrying(attempt)
        if conn is None or self._closed.is_set():
            if conn is not None:
                conn.close()
            return None
        log.info(
            "listening on %s again after %.1f s without a connection to PostgreSQL at %s",
            channel, time.monotonic() - started, self.where,
        )  # fmt: skip
        return conn
