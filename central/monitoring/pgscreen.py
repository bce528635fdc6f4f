"""The screening connection on PostgreSQL: what ``screening.Screener`` runs on when the centre's store is
PostgreSQL.

On SQLite a screening connection is an in-memory database with ``central.db`` attached read-only: the
``kb_*`` tables and ``cur_*`` TEMP tables are private to it, the history tables are the shared file's.
On PostgreSQL the same shape is one session of its own on the centre's database: every table the
screener or the rule library creates (``cur_visits``, ``cur_lines``, ``cur_peer_medians``, the scope
tables, ``kb_*``) is created ``TEMP`` (private to the session, gone when it closes, never in the centre's
schema), and the templates' unqualified ``hist_lines``/``hist_visits``/``deaths``/``hospitals`` are the
centre's tables. So the screener and the rule library keep their SQLite text:

- statements with ``?`` parameters (the screener's own) go through the store's translation
  (``central.storage.sql.translate``); statements with named parameters (the rules' compiled SQL) go
  through ``protocol.rules.dialect.transpile`` (its ``psycopg`` target), which carries SQLite's date
  idioms, the one place that knows them;
- first, the SQLite-only spellings of a private database are rewritten: the ``db.``/``main.``/``temp.``
  qualifiers are dropped, ``CREATE TABLE`` becomes ``CREATE TEMP TABLE``, ``WITHOUT ROWID`` goes and
  ``REAL`` is ``DOUBLE PRECISION`` (as the centre's schema maps it);
- ``BEGIN`` opens a ``REPEATABLE READ`` transaction, so a chunk's queries read one snapshot while
  ingest goes on, as SQLite's read transaction does; a ``SAVEPOINT`` outside a transaction opens one
  (SQLite's meaning) and its ``RELEASE`` commits it.

PostgreSQL never analyses a TEMP table by itself (autovacuum does not see them), so a chunk's ``cur_*``
tables would be planned as if empty — nested loops over a chunk of visits. The connection tracks the
TEMP tables this session wrote and runs ``ANALYZE`` on those a statement is about to read.

Each text is rewritten once per process (cached). Numbers come back as SQLite gives them: ``numeric``
as an integer when whole, else a float (``central.storage.postgres``).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
import sqlglot
from sqlglot import exp

from central.storage.postgres import PgCursor, adapt_connection, redact_dsn
from central.storage.sql import NotTranslatable, Tables, translate
from protocol.rules.dialect import transpile

__all__ = ["PgScreeningConnection", "is_dsn"]

_CREATE_TEMP = re.compile(
    r"\bCREATE\s+TEMP(?:ORARY)?\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)", re.IGNORECASE
)
_WRITE = re.compile(r"\s*(?:INSERT\s+INTO|DELETE\s+FROM|UPDATE)\s+(\w+)", re.IGNORECASE)
_CONTROL = re.compile(r"\s*(BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE)\b\s*(?:TO\s+)?(\w*)", re.IGNORECASE)
_NO_TABLES = Tables()
_CACHE: dict[tuple[str, bool], str] = {}
_LOCK = threading.Lock()


def is_dsn(source: object) -> bool:
    """Whether a screening source names a PostgreSQL database (a DSN) rather than a SQLite file."""
    text = str(source)
    if text.startswith(("postgresql://", "postgres://")):
        return True
    if "=" not in text or isinstance(source, Path):  # a path, even one with a socket directory's "/"
        return False
    try:
        return bool(psycopg.conninfo.conninfo_to_dict(text))
    except psycopg.ProgrammingError:
        return False


_INDEX_SCHEMA = re.compile(r"(CREATE\s+(?:UNIQUE\s+)?INDEX\s+(?:IF\s+NOT\s+EXISTS\s+)?)temp\.", re.IGNORECASE)
_WITHOUT_ROWID = re.compile(r"\)\s*WITHOUT\s+ROWID\s*$", re.IGNORECASE)


def _private(sql: str) -> str:
    """The SQLite text with a private database's spellings made PostgreSQL's (see the module docstring)."""
    sql = _WITHOUT_ROWID.sub(")", _INDEX_SCHEMA.sub(r"\1", sql.strip()))
    statements = sqlglot.parse(sql, read="sqlite")
    if len(statements) != 1 or statements[0] is None:
        raise NotTranslatable(f"one statement at a time on the screening connection: {sql[:200]!r}")
    tree = statements[0]
    for table in tree.find_all(exp.Table):
        if table.args.get("db") is not None and table.db.lower() in ("db", "main", "temp"):
            table.set("db", None)
    if isinstance(tree, exp.Create) and (tree.args.get("kind") or "").upper() == "TABLE":
        props = tree.args.get("properties")
        if props is None or not any(isinstance(p, exp.TemporaryProperty) for p in props.expressions):
            tree.set("properties", exp.Properties(expressions=[*(props.expressions if props else []),
                                                              exp.TemporaryProperty()]))  # fmt: skip
    return tree.sql(dialect="sqlite")


def _text(sql: str, named: bool) -> str:
    key = (sql, named)
    found = _CACHE.get(key)
    if found is not None:
        return found
    private = _private(sql)
    if named:
        text = transpile(private, "psycopg")
    else:
        text = translate(private, _NO_TABLES).sql
    with _LOCK:
        _CACHE[key] = text
    return text


class _Cursor:
    """``conn.cursor()`` as the rule library uses it: execute, description, fetchall."""

    def __init__(self, conn: PgScreeningConnection) -> None:
        self._conn = conn
        self._cur: PgCursor | None = None
        self.row_factory = None

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> _Cursor:
        self._cur = self._conn.execute(sql, params)
        return self

    @property
    def description(self) -> Any:
        return self._cur.description if self._cur else None

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._cur.fetchall() if self._cur else []

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._cur.fetchone() if self._cur else None


class PgScreeningConnection:
    """A session of its own on the centre's PostgreSQL database, spoken to in SQLite's text."""

    dialect = "postgres"

    def __init__(self, dsn: str) -> None:
        try:
            self.raw = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as exc:
            from central.storage.postgres import DatabaseUnavailable

            raise DatabaseUnavailable(
                f"the screen cannot connect to PostgreSQL at {redact_dsn(dsn)}: {str(exc).strip()}"
            ) from None
        adapt_connection(self.raw)
        self._implicit: str | None = None  # the savepoint that opened the transaction
        self._temp: set[str] = set()  # the TEMP tables this session created
        self._stale: set[str] = set()  # those written since their last ANALYZE

    @property
    def in_transaction(self) -> bool:
        return self.raw.info.transaction_status != psycopg.pq.TransactionStatus.IDLE

    def _control(self, verb: str, name: str) -> PgCursor:
        raw = self.raw
        if verb == "BEGIN":
            raw.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        elif verb == "COMMIT":
            if self.in_transaction:
                raw.execute("COMMIT")
            self._implicit = None
        elif verb == "ROLLBACK" and not name:
            if self.in_transaction:
                raw.execute("ROLLBACK")
            self._implicit = None
        elif verb == "SAVEPOINT":
            if not self.in_transaction:
                raw.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
                self._implicit = name
            raw.execute(f'SAVEPOINT "{name}"')
        elif verb == "ROLLBACK":
            raw.execute(f'ROLLBACK TO SAVEPOINT "{name}"')
        else:  # RELEASE
            raw.execute(f'RELEASE SAVEPOINT "{name}"')
            if self._implicit == name:
                raw.execute("COMMIT")
                self._implicit = None
        return PgCursor(raw.cursor())

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> PgCursor:
        control = _CONTROL.match(sql)
        if control is not None and len(sql.split()) <= 3:
            return self._control(control.group(1).upper(), control.group(2))
        named = isinstance(params, Mapping)
        text = _text(sql, named)
        cur = self.raw.cursor()
        target = self._analyse_read(text)
        if named:
            used = {k: v for k, v in params.items() if f"%({k})s" in text}
            cur.execute(text, used)
        else:
            cur.execute(text, tuple(params))
        created = _CREATE_TEMP.search(text)
        if created is not None:
            self._temp.add(created.group(1).lower())
        if target in self._temp:
            self._stale.add(target)
        return PgCursor(cur)

    def _analyse_read(self, text: str) -> str | None:
        """``ANALYZE`` the stale TEMP tables ``text`` reads; returns the table it writes, if any."""
        written = _WRITE.match(text)
        target = written.group(1).lower() if written else None
        if self._stale:
            lowered = text.lower()
            reads = sorted(t for t in self._stale if t != target and re.search(rf"\b{t}\b", lowered))
            if reads:
                self.raw.execute("ANALYZE " + ", ".join(reads))
                self._stale.difference_update(reads)
        return target

    def executemany(self, sql: str, seq: Any) -> PgCursor:
        rows = list(seq)
        cur = self.raw.cursor()
        if rows:
            text = _text(sql, isinstance(rows[0], Mapping))
            target = self._analyse_read(text)
            cur.executemany(text, rows)
            if target in self._temp:
                self._stale.add(target)
        return PgCursor(cur)

    def cursor(self) -> _Cursor:
        return _Cursor(self)

    def commit(self) -> None:
        self._control("COMMIT", "")

    def rollback(self) -> None:
        self._control("ROLLBACK", "")

    def close(self) -> None:
        self.raw.close()
