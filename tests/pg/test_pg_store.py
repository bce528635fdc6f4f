"""``PgStore`` on a real PostgreSQL server: the schema SQLite has, upgrades that keep rows, the two-collector
primitives (advisory locks, LISTEN/NOTIFY), failed writes that leave nothing, refusals that say what to do.

Nothing here is mocked: ``tests/pg/conftest.py`` runs a scratch cluster (``simulators.pgserver``) and gives
each test a fresh database copied from a migrated template.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
import sqlite_utils

from central.errors import HomeNotInitialised, InternalError, SchemaTooNew
from central.intake.ingest import Ingestor
from central.storage.base import DB_ERRORS, notify
from central.storage.pg_schema import DATA_STEPS, PG_BASELINE, SCHEMA_ONLY, pg_steps, pg_tables
from central.storage.postgres import DatabaseUnavailable, PgStore, _lock_key, migrate, redact_dsn
from central.storage.schema import MIGRATIONS, SCHEMA_VERSION
from central.storage.store import SqliteStore, iter_settlements
from protocol.batch import KeyPair
from simulators.pgserver import PgServer
from tests.central.conftest import HOSPITAL, Chain, settlement

BIN = Path(sys.executable).parent
#: SQLite declared type → the PostgreSQL type ``pg_schema`` must give the column.
PG_TYPE = {"INTEGER": "bigint", "TEXT": "text", "BLOB": "bytea", "REAL": "double precision", "": "text"}


def _sqlite_schema(path: Path) -> dict[str, list[tuple[str, str, int, int]]]:
    with SqliteStore(path, create=True):
        pass
    conn = sqlite3.connect(path)
    try:
        tables = [
            name
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        return {
            t: [(r[1], (r[2] or "").upper(), r[3], r[5]) for r in conn.execute(f'PRAGMA table_info("{t}")')]
            for t in tables
        }
    finally:
        conn.close()


def test_every_sqlite_table_and_column_exists_on_postgres_with_a_compatible_type(tmp_path, pg_dsn) -> None:
    lite = _sqlite_schema(tmp_path / "central.db")
    conn = sqlite3.connect(tmp_path / "central.db")
    lite_indexes = {
        name: table
        for name, table in conn.execute(
            "SELECT name, tbl_name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
        )
    }
    conn.close()
    with psycopg.connect(pg_dsn) as pg:
        cols: dict[str, dict[str, tuple[str, bool]]] = {}
        for table, column, kind, nullable in pg.execute(
            "SELECT table_name, column_name, data_type, is_nullable = 'YES' FROM information_schema.columns "
            "WHERE table_schema = 'public'"
        ):
            cols.setdefault(table, {})[column] = (kind, nullable)
        pks = {
            table: cols_
            for table, cols_ in pg.execute(
                "SELECT c.relname, array_agg(a.attname ORDER BY array_position(i.indkey, a.attnum)) "
                "FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid "
                "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey) "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE i.indisprimary AND n.nspname = 'public' GROUP BY c.relname"
            )
        }
        pg_indexes = dict(
            pg.execute("SELECT indexname, tablename FROM pg_indexes WHERE schemaname = 'public'")
        )
    assert set(lite) == set(cols), "tables differ between SQLite and PostgreSQL"
    for table, columns in lite.items():
        on_pg = cols[table]
        names = {c[0] for c in columns}
        assert set(on_pg) - names <= {"rowid"}, f"{table}: PostgreSQL has extra columns"
        for name, kind, notnull, _ in columns:
            assert name in on_pg, f"{table}.{name} is missing on PostgreSQL"
            pg_kind, pg_nullable = on_pg[name]
            assert pg_kind == PG_TYPE[kind], f"{table}.{name}: {kind} became {pg_kind}"
            if notnull:
                assert not pg_nullable, f"{table}.{name} is NOT NULL on SQLite but not on PostgreSQL"
        lite_pk = [c[0] for c in sorted((c for c in columns if c[3]), key=lambda c: c[3])]
        if lite_pk:
            assert pks.get(table) == lite_pk, f"{table}: primary key {lite_pk} became {pks.get(table)}"
        int_key = len(lite_pk) == 1 and next(c[1] for c in columns if c[0] == lite_pk[0]) == "INTEGER"
        # ``ORDER BY rowid`` needs a rowid: the integer key on SQLite's side, an identity column on PG's.
        assert ("rowid" in on_pg) != int_key, f"{table}: rowid column and integer key disagree"
    missing = {name for name in lite_indexes if name not in pg_indexes}
    assert not missing, f"indexes missing on PostgreSQL: {sorted(missing)}"
    assert all(pg_indexes[name] == table for name, table in lite_indexes.items())


def test_a_database_left_at_an_older_version_is_upgraded_with_its_rows_kept(pg_server) -> None:
    dsn = pg_server.create_database("upgrade_from_15")
    old = PG_BASELINE  # the last version before card logs
    assert old < SCHEMA_VERSION
    with psycopg.connect(dsn) as raw:
        with raw.transaction():
            applied = migrate(raw, pg_tables(), where=redact_dsn(dsn), create=True, upto=old)
        assert len(applied) == old
        assert raw.execute("SELECT to_regclass('card_logs')").fetchone()[0] is None
        # What the release at version 15 had stored: an agent, its first three records and settlements.
        key = KeyPair.generate()
        chain = Chain("A-UPGRADE-0001", key)
        for seq in range(1, 4):
            chain.append(settlement(f"UP-{seq}"))
        stamp = "2026-11-24T10:00:00+00:00"
        raw.execute(
            "INSERT INTO agents (agent_id, fixmedins_code, public_key, key_fingerprint, enrolled_at, "
            "acked_seq, head_hash, pooling_area) VALUES (%s, %s, %s, %s, %s, 3, %s, %s)",
            (chain.agent_id, HOSPITAL, key.public_bytes, "fp", stamp, chain.head, "110100"),
        )
        for seq, entry in enumerate(chain.entries, start=1):
            raw.execute(
                "INSERT INTO records (agent_id, seq, hash, kind, status, raw, received_at) "
                "VALUES (%s, %s, %s, 'setl', 'ok', %s, %s)",
                (chain.agent_id, seq, hashlib.sha256(entry).digest(), entry, stamp),
            )
            raw.execute(
                "INSERT INTO settlements (setl_id, agent_id, seq, kind, fixmedins_code, setl_time, "
                "setl_date, medfee_sumamt, insutype) "
                "VALUES (%s, %s, %s, 'setl', %s, %s, '2026-11-24', 5120, '310')",
                (f"UP-{seq}", chain.agent_id, seq, HOSPITAL, "2026-11-24T10:00:00+08:00"),
            )
        raw.commit()
        before = {
            t: raw.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()
            for t in ("agents", "records", "settlements")
        }

    with PgStore(dsn) as store:  # the current code opens it
        assert store.applied_migrations == [m.__name__ for m in MIGRATIONS[old:]]
        with psycopg.connect(dsn) as raw:
            for table, rows in before.items():
                assert raw.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall() == rows, table
            versions = [v for (v,) in raw.execute("SELECT version FROM _migrations ORDER BY version")]
            assert versions == list(range(1, SCHEMA_VERSION + 1))
            assert raw.execute("SELECT count(*) FROM card_logs").fetchone()[0] == 0
        # The upgraded database goes on where it stopped: the next batch links to the held head.
        chain.extend(2, "NEW")
        ack = Ingestor(store).ingest(chain.batch(4, 5))
        assert ack.code == "stored" and ack.acked_seq == 5
        held = store.read(lambda conn: [r["setl_id"] for r in iter_settlements(conn)])
        assert held[:3] == ["UP-1", "UP-2", "UP-3"] and len(held) == 5
    with PgStore(dsn) as again:
        assert again.applied_migrations == []  # opening twice migrates once


def test_every_migration_after_the_baseline_says_whether_postgres_needs_a_data_step() -> None:
    """A migration that rewrites rows in Python on SQLite would silently leave PostgreSQL's rows as they
    were; so each one after ``PG_BASELINE`` is named either in ``DATA_STEPS`` or in ``SCHEMA_ONLY``."""
    names = [m.__name__ for m in MIGRATIONS]
    assert set(DATA_STEPS) <= set(names) and SCHEMA_ONLY <= set(names), "a name that is no migration"
    assert not set(DATA_STEPS) & SCHEMA_ONLY
    later = names[PG_BASELINE:]
    unsaid = [n for n in later if n not in DATA_STEPS and n not in SCHEMA_ONLY]
    assert not unsaid, (
        f"{unsaid}: name each in central.storage.pg_schema.DATA_STEPS (with its PostgreSQL row rewrite) "
        "or in SCHEMA_ONLY"
    )
    assert not (set(DATA_STEPS) | SCHEMA_ONLY) & set(names[:PG_BASELINE])
    steps = pg_steps()
    for step in steps:
        assert step.data_step is DATA_STEPS.get(step.name)
    # A migration named schema-only really writes no rows: neither in its text nor when it runs.
    for index, migration in enumerate(MIGRATIONS[PG_BASELINE:], start=PG_BASELINE):
        if migration.__name__ in SCHEMA_ONLY:
            assert not _writes_rows_in_source(migration), f"{migration.__name__} writes rows: a data step"
            assert not _writes_rows_when_run(index), f"{migration.__name__} writes rows: a data step"
    # The checks above would catch a data migration: the one that backfilled insutype (14) is caught.
    assert _writes_rows_in_source(MIGRATIONS[13])


_DML = re.compile(
    r"\b(INSERT|UPDATE|DELETE|REPLACE)\b|\.(insert|insert_all|upsert|upsert_all|update|delete_where)\("
)


def _writes_rows_in_source(migration: object) -> bool:
    source = inspect.getsource(migration)  # type: ignore[arg-type]
    # Past the docstring, which may well say "update".
    body = source.split('"""', 2)[-1] if source.count('"""') >= 2 else source
    return bool(_DML.search(body))


def _writes_rows_when_run(index: int) -> bool:
    """Whether migration ``index`` inserts, updates or deletes rows of a table that existed before it."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    db = sqlite_utils.Database(conn, execute_plugins=False)
    for migration in MIGRATIONS[:index]:
        migration(db)
    existing = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    writes: list[str] = []

    def authorise(action: int, table: str | None, *_: object) -> int:
        dml = action in (sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE)
        if dml and table in existing and not table.startswith("sqlite_"):
            writes.append(table)
        return sqlite3.SQLITE_OK

    conn.set_authorizer(authorise)
    MIGRATIONS[index](db)
    conn.close()
    return bool(writes)


def test_exclusive_keeps_a_second_store_and_a_second_thread_out(pg_dsn, config) -> None:
    with PgStore(pg_dsn) as one, PgStore(pg_dsn) as two:
        with one.exclusive("yibao-central:split-audit") as held:
            assert held
            with two.exclusive("yibao-central:split-audit") as other:
                assert not other  # the other collector skips this round
            with two.exclusive("yibao-central:tuf-resign") as different:
                assert different  # another job is not kept out
            seen: list[bool] = []

            def same_store() -> None:
                with one.exclusive("yibao-central:split-audit") as again:
                    seen.append(again)

            t = threading.Thread(target=same_store)
            t.start()
            t.join(10)
            assert seen == [False]  # a second thread of the same collector is kept out too
            with psycopg.connect(pg_dsn, autocommit=True) as raw:  # and any other session
                key = _lock_key("yibao-central:split-audit")
                assert raw.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0] is False
        with two.exclusive("yibao-central:split-audit") as now:
            assert now  # released when the block ends
        # A collector killed while holding a lock loses it with its session.
        with psycopg.connect(pg_dsn, autocommit=True) as raw:
            raw.execute("SELECT pg_advisory_lock(%s)", (_lock_key("yibao-central:x"),))
            with one.exclusive("yibao-central:x") as blocked:
                assert not blocked
        # The server ends the closed session's backend (and its locks) a moment after the client goes.
        deadline = time.monotonic() + 10
        while True:
            with one.exclusive("yibao-central:x") as freed:
                if freed or time.monotonic() > deadline:
                    break
            time.sleep(0.05)
        assert freed


def test_a_notification_reaches_the_other_store_after_commit_and_never_after_rollback(pg_dsn) -> None:
    heard: list[str] = []
    got = threading.Event()
    with PgStore(pg_dsn) as writer, PgStore(pg_dsn) as other:

        def callback(payload: str) -> None:
            heard.append(payload)
            got.set()

        other.listen("yibao_test", callback)
        time.sleep(0.2)

        def rolled_back(conn) -> None:
            notify(conn, "yibao_test", "rolled-back")
            raise ValueError("changed my mind")

        with pytest.raises(ValueError):
            writer.write(rolled_back)
        writer.write(lambda conn: notify(conn, "yibao_test", "A-1:7"))
        assert got.wait(10)
        time.sleep(0.5)  # room for a wrongly delivered one to arrive
    assert heard == ["A-1:7"]


def test_a_write_that_fails_in_the_database_leaves_nothing_behind(store, chain: Chain, pg_dsn) -> None:
    """A PostgreSQL trigger makes the agent update fail after records and settlements were inserted."""
    with psycopg.connect(pg_dsn, autocommit=True) as raw:
        raw.execute(
            "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'disk full'; END $$"
        )
        raw.execute(
            "CREATE TRIGGER boom BEFORE UPDATE OF acked_seq ON agents FOR EACH ROW EXECUTE FUNCTION boom()"
        )
        chain.extend(3)
        ingestor = Ingestor(store)
        with pytest.raises(InternalError) as caught:
            ingestor.ingest(chain.batch(1, 3))
        assert "the agent will resend it" in caught.value.message
        assert raw.execute("SELECT count(*) FROM records").fetchone()[0] == 0
        assert raw.execute("SELECT count(*) FROM settlements").fetchone()[0] == 0
        assert raw.execute("SELECT count(*) FROM hist_lines").fetchone()[0] == 0
        assert raw.execute("SELECT acked_seq FROM agents").fetchone()[0] == 0

        def direct(conn) -> None:
            conn.execute("INSERT INTO settings (key, value) VALUES ('probe', 'x')")
            conn.execute("UPDATE agents SET acked_seq = 1")

        with pytest.raises(DB_ERRORS):
            store.write(direct)  # the store's own call raises a database error its callers catch
        assert raw.execute("SELECT count(*) FROM settings WHERE key = 'probe'").fetchone()[0] == 0
        raw.execute("DROP TRIGGER boom ON agents")
    # The writer's connection is usable again, not stuck in an aborted transaction.
    assert ingestor.ingest(chain.batch(1, 3)).acked_seq == 3


def _sessions(pg_server: PgServer, dbname: str) -> int:
    with psycopg.connect(pg_server.dsn(), autocommit=True) as raw:
        sql = "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
        return raw.execute(sql, (dbname,)).fetchone()[0]


def test_an_empty_database_is_refused_until_init_and_nothing_is_created(pg_server) -> None:
    dsn = pg_server.create_database("never_initialised")
    with pytest.raises(HomeNotInitialised) as caught:
        PgStore(dsn)
    assert "yibao-central --home HOME init" in caught.value.message
    with psycopg.connect(dsn) as raw:
        assert raw.execute("SELECT to_regclass('_migrations')").fetchone()[0] is None
    assert _sessions(pg_server, "never_initialised") == 0  # the refused open closed its connection


def test_a_database_newer_than_the_code_is_refused(pg_dsn, pg_server) -> None:
    with psycopg.connect(pg_dsn) as raw:
        raw.execute("INSERT INTO _migrations VALUES (%s, 'from the future', 'now')", (SCHEMA_VERSION + 1,))
    with pytest.raises(SchemaTooNew) as caught:
        PgStore(pg_dsn)
    assert f"schema version {SCHEMA_VERSION + 1}" in caught.value.message
    assert "upgrade yibao-central" in caught.value.message
    with psycopg.connect(pg_dsn) as raw:  # refused, not touched
        assert raw.execute("SELECT max(version) FROM _migrations").fetchone()[0] == SCHEMA_VERSION + 1


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://yibao:S3cretPw@127.0.0.1:{port}/central",
        "host=127.0.0.1 port={port} user=yibao password=S3cretPw dbname=central",
    ],
    ids=["uri", "keywords"],
)
def test_an_unreachable_server_is_database_unavailable_without_the_password(dsn, tmp_path) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dsn = dsn.format(port=port)
    with pytest.raises(DatabaseUnavailable) as caught:
        PgStore(dsn)
    message = caught.value.message
    assert "S3cretPw" not in message and "password" not in message
    assert f"port={port}" in message and "user=yibao" in message and "`database` setting" in message
    assert caught.value.http_status == 503
    # The operator sees the same through the CLI: a clear error, exit 1, no password anywhere.
    home = tmp_path / "central"
    home.mkdir()
    (home / "central.json").write_text(json.dumps({"database": dsn}))
    out = subprocess.run(
        [str(BIN / "yibao-central"), "--home", str(home), "agents", "list"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 1
    assert "cannot connect to PostgreSQL" in out.stderr and "S3cretPw" not in out.stderr + out.stdout


def test_a_missing_database_on_a_live_server_is_database_unavailable(pg_server) -> None:
    with pytest.raises(DatabaseUnavailable) as caught:
        PgStore(pg_server.dsn("no_such_db"))
    assert "no_such_db" in caught.value.message and "does not exist" in caught.value.message
