"""The rewrites that carry the centre's SQLite text to PostgreSQL, one case each (central.storage.sql), and
the screening connection's own (central.monitoring.pgscreen, protocol.rules.dialect's psycopg target).

The PostgreSQL suites (tests/pg) run these statements on a real server; these cases pin what each rule
writes, so a SQLGlot upgrade that changes one fails here with the statement in view, not as a wrong
answer deep in a suite.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from central.monitoring.pgscreen import _text as screening_text
from central.monitoring.pgscreen import is_dsn
from central.storage.sql import NotTranslatable, Tables, translate
from protocol.rules.dialect import date_add, transpile

TABLES = Tables(primary_keys={"settings": ("key",)}, integer_keys={"screen_runs": "id"})


@pytest.mark.parametrize(
    ("sqlite", "postgres"),
    [
        ("SELECT a FROM t WHERE b = ? AND c = ?", "SELECT a FROM t WHERE b = %s AND c = %s"),
        ("INSERT OR IGNORE INTO t (a) VALUES (?)", "INSERT INTO t (a) VALUES (%s) ON CONFLICT DO NOTHING"),
        (
            "INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)",
            "INSERT INTO settings (key, value) VALUES (%s, %s) ON CONFLICT(key) DO UPDATE SET value = "
            "excluded.value",
        ),
        (
            "INSERT INTO screen_runs (id, kind) VALUES (NULL, ?)",
            "INSERT INTO screen_runs (id, kind) VALUES (DEFAULT, %s) RETURNING id",
        ),
        ("SELECT count(*) FROM t WHERE 1", "SELECT COUNT(*) FROM t WHERE TRUE"),
        ("SELECT sum(kind = 'setl') FROM s", "SELECT SUM(CASE WHEN kind = 'setl' THEN 1 ELSE 0 END) FROM s"),
        ("SELECT a FROM t WHERE d LIKE '2026-11%'", "SELECT a FROM t WHERE d ILIKE '2026-11%%'"),
        ("SELECT CAST(x AS INT) FROM t", "SELECT CAST(x AS BIGINT) FROM t"),
        (
            "SELECT h.a FROM v CROSS JOIN h ON h.id = v.id",
            "SELECT h.a FROM v JOIN h ON h.id = v.id",
        ),
        ("SELECT json_group_array(a) FROM t", "SELECT COALESCE(JSON_AGG(a), CAST('[]' AS JSON)) FROM t"),
        (
            "SELECT value FROM json_each(t.ids)",
            "SELECT value FROM JSON_ARRAY_ELEMENTS_TEXT(CAST(t.ids AS JSON)) AS json_each(value)",
        ),
    ],
)
def test_each_rewrite(sqlite: str, postgres: str) -> None:
    assert translate(sqlite, TABLES).sql == postgres


def test_an_insert_into_a_table_with_an_integer_key_returns_it() -> None:
    assert translate("INSERT INTO screen_runs (kind) VALUES (?)", TABLES).returns_id
    assert not translate("INSERT INTO t (a) VALUES (?)", TABLES).returns_id


@pytest.mark.parametrize(
    "sqlite",
    ["SELECT a FROM t WHERE x = ?1", "INSERT OR REPLACE INTO nokey (a) VALUES (?)", "SELECT FROM WHERE"],
)
def test_what_has_no_postgresql_meaning_is_refused_naming_the_statement(sqlite: str) -> None:
    with pytest.raises(NotTranslatable) as err:
        translate(sqlite, TABLES)
    assert sqlite in err.value.message


def test_the_psycopg_target_writes_pyformat_parameters_and_doubles_percent_in_literals_only() -> None:
    sql = f"SELECT a FROM t WHERE d >= {date_add(':day', ':n')} AND c LIKE 'A%' AND x = :x"
    text = transpile(sql, "psycopg")
    assert "%(day)s" in text and "%(n)s" in text and "%(x)s" in text and ":x" not in text
    assert "LIKE 'A%%'" in text
    assert "'YYYY-MM-DD'" in text  # the format SQLGlot writes itself is not a placeholder to escape


@pytest.mark.parametrize(
    ("sqlite", "postgres"),
    [
        (
            "CREATE TABLE IF NOT EXISTS kb_items (code TEXT PRIMARY KEY, n INTEGER, x REAL)",
            "CREATE TEMPORARY TABLE IF NOT EXISTS kb_items (code TEXT PRIMARY KEY, n BIGINT, "
            "x DOUBLE PRECISION)",
        ),
        (
            "CREATE TEMP TABLE IF NOT EXISTS scope_psn (psn_no TEXT PRIMARY KEY) WITHOUT ROWID",
            "CREATE TEMPORARY TABLE IF NOT EXISTS scope_psn (psn_no TEXT PRIMARY KEY)",
        ),
        (
            "CREATE INDEX IF NOT EXISTS temp.cur_x ON cur_lines (psn_no)",
            "CREATE INDEX IF NOT EXISTS cur_x ON cur_lines(psn_no NULLS FIRST)",
        ),
        ("SELECT a FROM db.hist_visits WHERE b = ?", "SELECT a FROM hist_visits WHERE b = %s"),
        ("DELETE FROM main.kb_price", "DELETE FROM kb_price"),
    ],
)
def test_the_screening_connection_keeps_its_tables_private_to_its_session(sqlite: str, postgres: str) -> None:
    assert screening_text(sqlite, False) == postgres


@pytest.mark.parametrize(
    ("source", "dsn"),
    [
        ("host=/run/postgresql dbname=yibao", True),  # a socket directory is a path inside a DSN
        ("postgresql://yibao@db.example/yibao", True),
        ("host=127.0.0.1 port=5432 dbname=t1", True),
        ("/var/lib/yibao-central/central.db", False),
        (Path("/srv/a=b/central.db"), False),
    ],
)
def test_a_screening_source_is_a_dsn_or_a_sqlite_file(source: object, dsn: bool) -> None:
    assert is_dsn(source) is dsn
