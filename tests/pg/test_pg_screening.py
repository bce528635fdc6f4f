"""Screening a PostgreSQL centre: the rule library's SQL on the server itself, and DuckDB over its export.

The data is ``tests/central/test_engines.py``'s labelled traffic (a pattern per template and its honest
look-alikes): built once as a SQLite ``central.db``, copied row for row into a PostgreSQL database, which
then serves as the template of each test's own copy. Every SQL template of the library fires on it, so
agreement with SQLite is not vacuous: hit by hit per rule, and suspicion by suspicion for a full screen
(in this process and in worker processes) and for DuckDB reading a Parquet export of the PostgreSQL
database. The incremental screen on PostgreSQL runs in ``test_central_suites.py`` (the screening suite).
"""

from __future__ import annotations

import itertools
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from central.monitoring import engines as en
from central.monitoring.screening import screen
from central.storage.postgres import PgStore
from central.storage.store import Store
from protocol import rules as rl
from simulators.pgserver import PgServer
from tests.central import test_engines
from tests.central.test_engines import AREA, HI, LO, _sorted, rules_document

#: The labelled centre (a SQLite file) and its rules, as test_engines builds them: module fixtures here too.
centre = test_engines.centre
areas = test_engines.areas
_names = itertools.count(1)
SUSPICION_COLUMNS = (
    "fact_key", "rule_id", "rule_version", "object_type", "object_id", "area", "fixmedins_code", "psn_no",
    "setl_ids", "lines", "amount_fen", "score", "mode", "status", "message", "evidence", "anchor",
    "anchor_date", "period", "category", "holds",
)  # fmt: skip


@pytest.fixture(scope="module")
def filled(pg_server: PgServer, centre: Path) -> str:
    """The name of a PostgreSQL database holding what ``centre`` holds (the tables the templates read)."""
    name = f"screen_filled_{next(_names)}"
    src = sqlite3.connect(centre)
    with PgStore(pg_server.create_database(name), create=True) as store:
        for table in en.HISTORY_TABLES:
            cols = [r[1] for r in src.execute(f"PRAGMA table_info({table})")]
            rows = src.execute(f"SELECT {', '.join(cols)} FROM {table} ORDER BY rowid").fetchall()
            insert = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
            store.write(lambda c, insert=insert, rows=rows: c.executemany(insert, rows))
    src.close()
    return name


@pytest.fixture
def pg_copy(pg_server: PgServer, filled: str) -> Iterator[PgStore]:
    """A fresh copy of ``filled`` (so each test's screen starts with no suspicions)."""
    name = f"screen_{next(_names)}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{filled}"')
    with PgStore(pg_server.dsn(name)) as store:
        yield store


def _suspicions(store: Store | PgStore) -> list[tuple]:
    sql = f"SELECT {', '.join(SUSPICION_COLUMNS)} FROM suspicions ORDER BY fact_key"
    return [tuple(r) for r in store.read(lambda c: c.execute(sql).fetchall())]


def _lite_copy(centre: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "sqlite" / "central.db"
    dst.parent.mkdir(parents=True)
    src = sqlite3.connect(centre)
    out = sqlite3.connect(dst)
    src.backup(out)
    src.close()
    out.close()
    return dst


@pytest.fixture(scope="module")
def hits(centre: Path, pg_server: PgServer, filled: str, areas) -> dict[str, dict[str, list[rl.Hit]]]:
    rules = areas[AREA]
    out: dict[str, dict[str, list[rl.Hit]]] = {}
    for name, source in (("sqlite", centre), ("postgres", pg_server.dsn(filled))):
        with en.SqliteEngine(source) as engine:
            engine.install(rules)
            assert engine.scope(AREA, LO, HI) == (899, 6868), name
            out[name] = {r.id: _sorted(engine.run(r)) for r in rules.rules}
    return out


@pytest.mark.parametrize("rule_id", [r["id"] for r in rules_document()["rules"]])
def test_postgres_finds_what_sqlite_finds(hits, rule_id: str) -> None:
    """Hit by hit: the same person, settlement, lines, message and evidence, for every template."""
    base = hits["sqlite"][rule_id]
    assert base, f"{rule_id} does not fire on the test data: the agreement would say nothing"
    assert hits["postgres"][rule_id] == base


def test_a_full_screen_on_postgres_writes_the_suspicions_sqlite_writes(
    centre, areas, pg_copy, tmp_path
) -> None:
    with Store(_lite_copy(centre, tmp_path)) as store:
        expected = screen(store, LO, HI, areas=areas, workers=1, chunk_days=7)
        want = _suspicions(store)
    assert expected["new_suspicions"] > 0
    got = screen(pg_copy, LO, HI, areas=areas, workers=1, chunk_days=7)
    assert (got["per_rule"], got["settlements"], got["new_suspicions"]) == (
        expected["per_rule"], 899, expected["new_suspicions"],
    )  # fmt: skip
    assert _suspicions(pg_copy) == want
    # again, in two worker processes (each its own session on the server): every fact found again
    again = screen(pg_copy, LO, HI, areas=areas, workers=2)
    assert (again["new_suspicions"], again["retracted"]) == (0, 0)
    assert again["again"] == got["new_suspicions"] + got["again"]
    assert _suspicions(pg_copy) == want


def test_duckdb_over_a_postgres_export_writes_the_same_suspicions(centre, areas, pg_copy, tmp_path) -> None:
    with Store(_lite_copy(centre, tmp_path)) as store:
        screen(store, LO, HI, areas=areas, workers=1)
        want = _suspicions(store)
    got = en.screen_on(pg_copy, LO, HI, engine="duckdb", export_dir=tmp_path / "pq", areas=areas)
    assert got["new_suspicions"] > 0 and got["export"]["rows"]["hist_lines"] == 6868
    assert _suspicions(pg_copy) == want
    manifest = json.loads((tmp_path / "pq" / "manifest.json").read_text())
    assert "password" not in manifest["database"] and manifest["rows"]["hist_visits"] == 899


def test_the_screening_session_leaves_nothing_in_the_centres_schema(pg_copy, areas) -> None:
    """Every table the screener creates is TEMP: the centre's schema is what its migrations made."""

    def tables(conn) -> set[str]:
        return {
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
            )
        }

    before = pg_copy.read(tables)
    screen(pg_copy, LO, HI, areas=areas, workers=1)
    assert pg_copy.read(tables) == before
    assert not {t for t in before if t.startswith(("cur_", "kb_", "scope_"))}
