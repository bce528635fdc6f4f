"""The PostgreSQL schema, derived step by step from the SQLite migrations: one schema, two engines.

``central.storage.schema.MIGRATIONS`` stays the only description of the centre's tables. For
PostgreSQL each migration is replayed on an empty in-memory SQLite database and the schema before
and after is compared: new tables and indexes are created, added columns added, a table SQLite
rebuilt (a changed constraint) is rebuilt here with its rows copied, and what SQLite dropped is
dropped. So a PostgreSQL database passes through the same numbered versions as a SQLite one, records
them in the same ``_migrations`` table, and a database newer than the code is refused the same way.

A migration that rewrites *rows* (not only the schema) does that work in Python on a SQLite
connection; on PostgreSQL its rows would be left as they were. Such a migration must name its
PostgreSQL counterpart in ``DATA_STEPS`` (a function run on the PostgreSQL connection after the schema
diff) once PostgreSQL databases exist that hold data at its version; the migrations up to
``PG_BASELINE`` predate the PostgreSQL backend, so no PostgreSQL database ever held rows they rewrite.
A migration after the baseline that changes only the schema is named in ``SCHEMA_ONLY`` instead, so each
later migration says which it is: ``tests/pg/test_pg_store.py`` fails for one named in neither, and for
one named schema-only that writes rows on SQLite (it traces the statements the migration runs).

Type mapping: INTEGER → BIGINT (SQLite integers are 64-bit), an ``INTEGER PRIMARY KEY`` → an identity
column, BLOB → BYTEA, REAL → DOUBLE PRECISION; a table without an integer key gets a ``rowid`` identity
column so queries that order by insertion (``ORDER BY rowid``) mean the same on both engines.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import sqlglot
import sqlite_utils
from sqlglot import exp

from .schema import MIGRATIONS
from .sql import Tables

__all__ = ["DATA_STEPS", "PG_BASELINE", "SCHEMA_ONLY", "Step", "pg_steps", "pg_tables"]

#: Migrations up to this number existed before the PostgreSQL backend (their row rewrites need no
#: PostgreSQL counterpart: no PostgreSQL database held rows at those versions).
PG_BASELINE = 15
#: Migration name → the PostgreSQL form of its row rewrite (see the module's docstring).
DATA_STEPS: dict[str, Callable[[Any], None]] = {}
#: Migrations after ``PG_BASELINE`` that rewrite no rows: the schema diff is all PostgreSQL needs.
SCHEMA_ONLY: frozenset[str] = frozenset({"_m016_card_logs", "_m017_card_notices", "_m018_card_lookups"})

_TYPES = {"INTEGER": "BIGINT", "INT": "BIGINT", "BLOB": "BYTEA", "REAL": "DOUBLE PRECISION", "ANY": "TEXT"}


@dataclass(frozen=True)
class _Table:
    sql: str
    columns: tuple[tuple[str, str, int, Any, int], ...]  # name, type, notnull, default, pk position
    int_key: str | None


@dataclass(frozen=True)
class _Snapshot:
    tables: dict[str, _Table]
    indexes: dict[str, tuple[str, str]]  # name → (table, sql)


@dataclass(frozen=True)
class Step:
    """One migration's PostgreSQL form: its number, name and the statements to run in one transaction."""

    version: int
    name: str
    statements: tuple[str, ...]
    data_step: Callable[[Any], None] | None


def _snapshot(conn: sqlite3.Connection) -> _Snapshot:
    tables: dict[str, _Table] = {}
    indexes: dict[str, tuple[str, str]] = {}
    for kind, name, table, sql in conn.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_master "
        "WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%'"
    ):
        if kind == "table":
            cols = tuple(
                (r[1], (r[2] or "").upper(), r[3], r[4], r[5])
                for r in conn.execute(f'PRAGMA table_info("{name}")')
            )
            keys = [c for c in cols if c[4]]
            int_key = keys[0][0] if len(keys) == 1 and keys[0][1] == "INTEGER" else None
            tables[name] = _Table(sql, cols, int_key)
        elif kind == "index":
            indexes[name] = (table, sql)
    return _Snapshot(tables, indexes)


def _column_type(node: exp.DataType | None) -> exp.DataType:
    text = node.sql(dialect="sqlite").upper() if node is not None else "TEXT"
    return exp.DataType.build(_TYPES.get(text, text), dialect="postgres")


def create_table_sql(table: _Table) -> str:
    """The PostgreSQL ``CREATE TABLE`` of one SQLite table (see the module's type mapping)."""
    tree = sqlglot.parse_one(table.sql, read="sqlite")
    schema = tree.this
    for node in schema.expressions:
        if isinstance(node, exp.ColumnDef):
            node.set("kind", _column_type(node.args.get("kind")))
            if node.name == table.int_key:
                constraints = [
                    c for c in node.constraints if not isinstance(c.kind, exp.PrimaryKeyColumnConstraint)
                ]
                constraints.insert(
                    0, exp.ColumnConstraint(kind=exp.GeneratedAsIdentityColumnConstraint(this=False))
                )
                constraints.insert(1, exp.ColumnConstraint(kind=exp.PrimaryKeyColumnConstraint()))
                node.set("constraints", constraints)
    if table.int_key is None:
        schema.append(
            "expressions",
            exp.ColumnDef(
                this=exp.to_identifier("rowid"),
                kind=exp.DataType.build("BIGINT"),
                constraints=[exp.ColumnConstraint(kind=exp.GeneratedAsIdentityColumnConstraint(this=False))],
            ),
        )
    tree.set("properties", None)
    return tree.sql(dialect="postgres")


def _add_column_sql(table: str, column: tuple[str, str, int, Any, int]) -> str:
    name, kind, notnull, default, _ = column
    text = f'ALTER TABLE "{table}" ADD COLUMN "{name}" {_TYPES.get(kind, kind or "TEXT")}'
    if default is not None:
        text += f" DEFAULT {sqlglot.transpile(str(default), read='sqlite', write='postgres')[0]}"
    if notnull:
        text += " NOT NULL"
    return text


def _index_sql(sql: str) -> str:
    return sqlglot.transpile(sql, read="sqlite", write="postgres")[0]


def _diff(before: _Snapshot, after: _Snapshot) -> list[str]:
    out: list[str] = []
    rebuilt: set[str] = set()
    for name in before.tables:
        if name not in after.tables:
            out.append(f'DROP TABLE "{name}"')
    for name, new in after.tables.items():
        old = before.tables.get(name)
        if old is None:
            out.append(create_table_sql(new))
            continue
        if old.sql == new.sql:
            continue
        n = len(old.columns)
        if new.columns[:n] == old.columns and _constraints(old.sql) == _constraints(new.sql):
            out += [_add_column_sql(name, c) for c in new.columns[n:]]
            continue
        # SQLite rebuilt the table (sqlite-utils ``transform``): rebuild it here too, rows kept.
        rebuilt.add(name)
        common = [c[0] for c in new.columns if c[0] in {o[0] for o in old.columns}]
        cols = ", ".join(f'"{c}"' for c in common)
        out += [
            f'ALTER TABLE "{name}" RENAME TO "{name}__old"',
            *(f'DROP INDEX IF EXISTS "{i}"' for i, (t, _) in before.indexes.items() if t == name),
            create_table_sql(new),
            f'INSERT INTO "{name}" ({cols}) SELECT {cols} FROM "{name}__old"',
            f'DROP TABLE "{name}__old"',
        ]
    for name, (table, sql) in before.indexes.items():
        if table in rebuilt or table not in after.tables:
            continue
        if after.indexes.get(name) != (table, sql):
            out.append(f'DROP INDEX IF EXISTS "{name}"')
    for name, (table, sql) in after.indexes.items():
        if table in rebuilt or before.indexes.get(name) != (table, sql):
            out.append(_index_sql(sql))
    return out


def _constraints(sql: str) -> list[str]:
    """The table-level constraints of a ``CREATE TABLE`` (UNIQUE, PRIMARY KEY, CHECK, FOREIGN KEY)."""
    schema = sqlglot.parse_one(sql, read="sqlite").this
    return [n.sql() for n in schema.expressions if not isinstance(n, exp.ColumnDef)]


@cache
def pg_steps() -> tuple[Step, ...]:
    """Every migration's PostgreSQL statements, in order (computed once per process)."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    db = sqlite_utils.Database(conn, execute_plugins=False)
    steps = []
    before = _snapshot(conn)
    for version, migration in enumerate(MIGRATIONS, start=1):
        conn.execute("BEGIN")
        migration(db)
        conn.execute("COMMIT")
        after = _snapshot(conn)
        steps.append(
            Step(version, migration.__name__, tuple(_diff(before, after)), DATA_STEPS.get(migration.__name__))
        )
        before = after
    conn.close()
    return tuple(steps)


@cache
def pg_tables() -> Tables:
    """Primary keys of the final schema, for ``central.storage.sql``'s upsert and ``RETURNING`` rewrites."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    db = sqlite_utils.Database(conn, execute_plugins=False)
    for migration in MIGRATIONS:
        migration(db)
    snap = _snapshot(conn)
    conn.close()
    keys = {}
    for name, table in snap.tables.items():
        pk = tuple(c[0] for c in sorted((c for c in table.columns if c[4]), key=lambda c: c[4]))
        if pk:
            keys[name] = pk
    keys["_migrations"] = ("version",)
    return Tables(keys, {n: t.int_key for n, t in snap.tables.items() if t.int_key})
