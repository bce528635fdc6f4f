"""``hist_visits``: one row per held, unreversed settlement, written at ingest in the same transaction.

Also migration 7's backfill from the raw chain entries, checked against what ingest writes.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

import central.storage.schema as schema
from central.cli import init_home
from central.config import CentralConfig
from central.errors import InternalError
from central.intake.hospitals import set_hospital
from central.intake.ingest import Ingestor
from central.intake.visits import VISIT_COLUMNS
from central.storage.store import Store
from protocol.batch import BatchLimits
from protocol.records import Settlement

from .conftest import ACTOR, AREA, HOSPITAL, Chain, enrol, failing_trigger, reversal, settlement

OTHER = "H11010100002"


def _visits(store: Store) -> dict[str, dict]:
    rows = store.read(
        lambda c: c.execute(f"SELECT {', '.join(VISIT_COLUMNS)} FROM hist_visits ORDER BY setl_id").fetchall()
    )
    return {r[0]: dict(zip(VISIT_COLUMNS, r, strict=True)) for r in rows}


def _inpatient(setl_id: str, **kw) -> Settlement:
    s = settlement(setl_id, **kw)
    md = s.mdtrt
    md.med_type, md.dise_codg, md.ipt_days = "21", "I63.900; E11.900 |I10.x00", 5
    md.begntime, md.endtime = "2026-11-19T08:00:00+08:00", "2026-11-24T09:00:00+08:00"
    md.dr_codg, md.dept_codg = "D1", "A03.01"
    s.feedetl[1].list_type = "201"  # a service: not counted in drug_fen
    return s


def test_a_settlement_becomes_one_visit_row_with_the_contract_columns(store: Store, chain: Chain) -> None:
    chain.append(_inpatient("S1", setl_time="2026-11-24T23:30:00+08:00"))
    assert Ingestor(store).ingest(chain.batch(1, 1)).rejected == []
    assert _visits(store) == {
        "S1": {
            "setl_id": "S1", "psn_no": "P0000000001", "fixmedins_code": HOSPITAL, "area": AREA,
            "hosp_lv": None, "setl_time": "2026-11-24T23:30:00+08:00", "setl_date": "2026-11-24",
            "begn_date": "2026-11-19", "end_date": "2026-11-24", "med_type": "21",
            "dise_codg": "I63.900,E11.900,I10.x00", "dise_main": "I63.900", "dr_codg": "D1",
            "dept_codg": "A03.01", "ipt_days": 5, "medfee_sumamt": 5120, "drug_fen": 2500, "gend": "1",
            "brdy": "1970-01-01", "insutype": "310", "psn_type": "11",
        }
    }  # fmt: skip


def test_the_grade_is_the_hospitals_and_follows_a_change(store: Store, chain: Chain) -> None:
    set_hospital(store, ACTOR, HOSPITAL, "2")
    chain.append(settlement("S1"))
    chain.append(settlement("S2"))
    ingestor = Ingestor(store)
    ingestor.ingest(chain.batch(1, 1))
    prepared = ingestor.prepare(chain.batch(2, 2))  # built with grade 2 …
    set_hospital(store, ACTOR, HOSPITAL, "3")  # … an operator changes it before the commit
    ingestor.commit(prepared)
    assert {k: v["hosp_lv"] for k, v in _visits(store).items()} == {"S1": "3", "S2": "3"}


def test_a_reversal_deletes_its_originals_visit_only_from_the_same_hospital(store: Store) -> None:
    a, b = enrol(store), enrol(store, OTHER)
    s1, s2 = settlement("S1"), settlement("S2", psn_no="P0000000002")
    a.append(s1)
    a.append(s2)
    a.append(reversal(s2, "R2"))
    forged = reversal(s1, "RX")
    forged.fixmedins_code = OTHER  # names S1 but comes from another hospital: S1 keeps its visit
    b.append(forged)
    ingestor = Ingestor(store)
    ingestor.ingest(a.batch(1, 3))
    ingestor.ingest(b.batch(1, 1))
    assert list(_visits(store)) == ["S1"]
    assert (
        store.read(lambda c: c.execute("SELECT count(*) FROM hist_lines WHERE setl_id = 'S2'").fetchone())[0]
        == 0
    )


def test_rejected_duplicate_and_lost_records_add_no_visit(store: Store, chain: Chain) -> None:
    chain.append(settlement("S1"))
    chain.append(settlement("S1"))  # setl_duplicate
    chain.append_lost()
    bad = settlement("S3")
    bad.setl_time = "yesterday"  # field_invalid at the centre
    chain.append(bad)
    ingestor = Ingestor(store)
    ack = ingestor.ingest(chain.batch(1, 4))
    assert [r.code for r in ack.rejected] == ["setl_duplicate", "field_invalid"]
    assert ingestor.ingest(chain.batch(1, 4)).code == "duplicate"
    assert list(_visits(store)) == ["S1"]


def test_a_batch_that_fails_to_store_leaves_no_visit(store: Store, chain: Chain) -> None:
    chain.append(settlement("S1"))
    with failing_trigger(store, "records", "INSERT"):
        with pytest.raises(InternalError, match="could not store the batch"):
            Ingestor(store).ingest(chain.batch(1, 1))
        assert _visits(store) == {}


# -- migration 7 -----------------------------------------------------------------------------------


def _held_at_schema_8(tmp_path: Path) -> Path:
    cfg = CentralConfig(
        home=tmp_path / "v8", listen="127.0.0.1:0", batch_limits=BatchLimits(), insecure_dev=True
    )
    init_home(cfg)
    with Store(cfg.db_path) as store:
        set_hospital(store, ACTOR, HOSPITAL, "2")
        ingestor = Ingestor(store)
        a, b = enrol(store), enrol(store, OTHER)
        s1, s2 = _inpatient("S1"), settlement("S2", psn_no="P0000000002")
        a.append(s1)
        a.append(s2)
        a.append(settlement("S1"))  # setl_duplicate
        a.append_lost()
        a.append(settlement("S3", split=None))
        a.append(reversal(s2, "R2"))
        b.append(settlement("B1", hospital=OTHER))
        forged = reversal(s1, "RX")
        forged.fixmedins_code = OTHER
        b.append(forged)
        assert [r.code for r in ingestor.ingest(a.batch(1, 6)).rejected] == ["setl_duplicate"]
        assert ingestor.ingest(b.batch(1, 2)).rejected == []
    return cfg.db_path


def test_migration_7_backfills_what_ingest_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    v8 = _held_at_schema_8(tmp_path)
    old = tmp_path / "v6" / "central.db"
    with monkeypatch.context() as m:
        m.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:6])
        m.setattr(schema, "SCHEMA_VERSION", 6)
        Store(old, create=True).close()
    conn = sqlite3.connect(old)
    with conn:
        conn.execute("ATTACH DATABASE ? AS v8", (str(v8),))
        for table in ("agents", "records", "settlements"):
            # The columns the table had at schema 6 (later migrations add more, e.g. import_id).
            cols = ", ".join(r[1] for r in conn.execute(f"PRAGMA main.table_info({table})"))
            conn.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM v8.{table}")
        conn.execute(
            "INSERT INTO hospitals (fixmedins_code, hosp_lv, name, admdvs, updated_at) "
            "SELECT fixmedins_code, hosp_lv, name, admdvs, updated_at FROM v8.hospitals"
        )
    conn.execute("DETACH DATABASE v8")
    conn.close()
    with Store(old) as upgraded, Store(v8) as original:
        assert upgraded.applied_migrations[0] == "_m007_screening_data"
        backfilled = _visits(upgraded)
        assert backfilled == _visits(original)
    assert sorted(backfilled) == ["B1", "S1", "S3"]
    assert backfilled["S1"]["hosp_lv"] == "2" and backfilled["S1"]["area"] == AREA
