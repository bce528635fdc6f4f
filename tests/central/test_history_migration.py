"""Migration 5 on a database at schema 4: hist_lines and the split parts backfilled from held records.

The schema-4 database is real: made by migrations 1-4 only, holding the records and settlements
rows a schema-5 centre stored for the same chains (the columns schema 4 has). After the upgrade its
``hist_lines`` and split columns must equal what ingest wrote at schema 5.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

import central.storage.schema as schema
from central.cli import init_home
from central.config import CentralConfig
from central.intake.ingest import Ingestor
from central.storage.store import Store
from protocol.batch import BatchLimits
from protocol.rules import HIST_COLUMNS

from .conftest import enrol, reversal, settlement

OTHER = "H11010100002"
_V4_SETTLEMENT_COLUMNS = (
    "setl_id, agent_id, seq, kind, his_setl_no, fixmedins_code, psn_no, mdtrt_id, med_type, setl_time, "
    "setl_date, medfee_sumamt, fund_pay_sumamt, acct_pay, psn_cash_pay, orig_setl_id, mdtrt_cert_type, "
    "mdtrt_cert_no, card_sn"
)


def _held_at_schema_5(tmp_path: Path) -> Path:
    """A centre at schema 5 that ingested settlements, reversals, rejections and a lost marker."""
    cfg = CentralConfig(
        home=tmp_path / "v5", listen="127.0.0.1:0", batch_limits=BatchLimits(), insecure_dev=True
    )
    init_home(cfg)
    with Store(cfg.db_path) as store:
        ingestor = Ingestor(store)
        a, b = enrol(store), enrol(store, OTHER)
        s1, s2 = settlement("S1"), settlement("S2", psn_no="P0000000002")
        s1.hifp_pay, s1.hifmi_pay, s1.hifob_pay = 2000, 600, 400
        s2.mdtrt.dr_codg, s2.feedetl[1].days = "D9", 3
        a.append(s1)
        a.append(s2)
        a.append(settlement("S1"))  # setl_duplicate
        a.append_lost()
        a.append(settlement("S3", lines=(("3", "12.345", 3704),), split=None))
        a.append(reversal(s2, "R2"))
        b.append(settlement("B1", hospital=OTHER))
        forged = reversal(s1, "RX")
        forged.fixmedins_code = OTHER  # names S1 but comes from another hospital: S1 keeps its lines
        b.append(forged)
        assert [r.code for r in ingestor.ingest(a.batch(1, 6)).rejected] == ["setl_duplicate"]
        assert ingestor.ingest(b.batch(1, 2)).rejected == []
    return cfg.db_path


def _dump(path: Path) -> tuple[list, list]:
    conn = sqlite3.connect(path)
    try:
        lines = conn.execute(
            f"SELECT {', '.join(HIST_COLUMNS)} FROM hist_lines ORDER BY setl_id, feedetl_sn"
        ).fetchall()
        splits = conn.execute(
            "SELECT setl_id, hifp_pay, hifmi_pay, hifob_pay FROM settlements ORDER BY setl_id"
        )
        return lines, splits.fetchall()
    finally:
        conn.close()


def _at_schema_4(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """(the schema-4 copy, the schema-5 original) of the same held chains."""
    v5 = _held_at_schema_5(tmp_path)
    old = tmp_path / "v4" / "central.db"
    with monkeypatch.context() as m:
        m.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:4])
        m.setattr(schema, "SCHEMA_VERSION", 4)
        with Store(old, create=True) as store:
            assert store.applied_migrations[-1] == "_m004_policy"
    conn = sqlite3.connect(old)
    with conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 4
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'hist_lines'").fetchone()[0] == 0
        conn.execute("ATTACH DATABASE ? AS v5", (str(v5),))
        conn.execute("INSERT INTO agents SELECT * FROM v5.agents")
        conn.execute("INSERT INTO records SELECT * FROM v5.records")
        cols = _V4_SETTLEMENT_COLUMNS
        conn.execute(f"INSERT INTO settlements ({cols}) SELECT {cols} FROM v5.settlements")
    conn.execute("DETACH DATABASE v5")
    conn.close()
    return old, v5


def test_migration_5_backfills_what_ingest_would_have_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, v5 = _at_schema_4(tmp_path, monkeypatch)
    with Store(old) as store:
        assert store.applied_migrations[0] == "_m005_person_history"
    lines, splits = _dump(old)
    assert (lines, splits) == _dump(v5)
    assert {(r[2], r[10]) for r in lines} == {("S1", "S1-0"), ("S1", "S1-1"), ("S3", "S3-0"), ("B1", "B1-0"),
                                              ("B1", "B1-1")}  # fmt: skip
    assert ("S1", 2000, 600, 400) in splits
    conn = sqlite3.connect(old)
    try:
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {
            "hist_lines_psn_no_setl_date", "hist_lines_setl_id_feedetl_sn", "settlements_psn_no_setl_date",
            "settlements_orig_setl_id",
        } <= indexes  # fmt: skip
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"hospitals", "person_access_log"} <= tables
        columns = [r[1] for r in conn.execute("PRAGMA table_info(hist_lines)")]
        assert columns == list(HIST_COLUMNS)
    finally:
        conn.close()


def test_migration_5_on_an_empty_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "central.db"
    with monkeypatch.context() as m:
        m.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:4])
        m.setattr(schema, "SCHEMA_VERSION", 4)
        Store(path, create=True).close()
    with Store(path) as store:
        assert store.applied_migrations[0] == "_m005_person_history"
        assert store.read(lambda c: c.execute("SELECT count(*) FROM hist_lines").fetchone()[0]) == 0


def test_a_held_record_that_no_longer_decodes_is_skipped_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    old, _ = _at_schema_4(tmp_path, monkeypatch)
    conn = sqlite3.connect(old)
    with conn:
        conn.execute("UPDATE records SET raw = x'c0' WHERE seq = 5 AND agent_id LIKE 'H11010100001-%'")  # S3
    conn.close()
    with Store(old) as store:
        assert store.applied_migrations[0] == "_m005_person_history"
    lines, _ = _dump(old)
    assert {r[2] for r in lines} == {"S1", "B1"}
    assert "no longer decode" in caplog.text
