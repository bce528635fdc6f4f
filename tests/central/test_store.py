"""The database: durable settings, migrations recorded once, newer schemas refused."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from central.errors import HomeNotInitialised, SchemaTooNew
from central.storage.schema import MIGRATIONS, SCHEMA_VERSION
from central.storage.store import Store


def test_new_store_is_wal_with_every_migration_recorded(tmp_path: Path) -> None:
    path = tmp_path / "h" / "central.db"
    with Store(path, create=True) as store:
        assert store.applied_migrations == [m.__name__ for m in MIGRATIONS]
        assert store.read(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0]) == "wal"
        assert store.read(lambda c: c.execute("PRAGMA synchronous").fetchone()[0]) == 2  # FULL
        assert store.write(lambda c: c.execute("PRAGMA synchronous").fetchone()[0]) == 2
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("SELECT version, name FROM _migrations").fetchall() == [
        (i, m.__name__) for i, m in enumerate(MIGRATIONS, start=1)
    ]
    with Store(path) as again:
        assert again.applied_migrations == []


def test_missing_database_is_refused_without_create(tmp_path: Path) -> None:
    with pytest.raises(HomeNotInitialised):
        Store(tmp_path / "central.db")
    assert not (tmp_path / "central.db").exists()


def test_database_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "central.db"
    Store(path, create=True).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(SchemaTooNew):
        Store(path)


def test_reads_are_read_only(tmp_path: Path) -> None:
    with Store(tmp_path / "central.db", create=True) as store, pytest.raises(sqlite3.OperationalError):
        store.read(lambda c: c.execute("DELETE FROM agents"))


def test_money_columns_refuse_text(tmp_path: Path) -> None:
    with Store(tmp_path / "central.db", create=True) as store, pytest.raises(sqlite3.IntegrityError):
        store.write(
            lambda c: c.execute(
                "INSERT INTO settlements (setl_id, agent_id, seq, kind, fixmedins_code, setl_time, "
                "setl_date, medfee_sumamt) VALUES ('x', 'a', 1, 'setl', 'H', 't', 'd', '51.20')"
            )
        )


def test_central_never_imports_agent() -> None:
    code = "import sys, central, central.cli, central.api; print('agent' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_burst_of_security_events_from_one_source_folds_into_one_row(tmp_path: Path) -> None:
    from central.storage.store import record_security_event, security_events

    with Store(tmp_path / "central.db", create=True) as store:
        for _ in range(500):
            store.write(lambda c: record_security_event(c, "H1-01", "signature_invalid", "bad", "10.0.0.9"))
        store.write(lambda c: record_security_event(c, "H1-01", "signature_invalid", "bad", "10.0.0.7"))
        store.write(lambda c: record_security_event(c, "H1-01", "chain_broken", "bad", "10.0.0.9"))
        events = store.read(security_events)
    assert [(e["code"], e["remote"], e["repeats"]) for e in events] == [
        ("signature_invalid", "10.0.0.9", 499),
        ("signature_invalid", "10.0.0.7", 0),
        ("chain_broken", "10.0.0.9", 0),
    ]
