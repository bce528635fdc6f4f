"""Ingest fills ``hist_lines`` exactly once, in the settlement's transaction; reversals remove lines."""

from __future__ import annotations

import pytest

from central.errors import InternalError
from central.intake.hospitals import set_hospital
from central.intake.ingest import Ingestor
from central.storage.store import Store
from protocol.records import Settlement
from protocol.rules import HIST_COLUMNS
from protocol.rules.tables import pric_fen

from .conftest import ACTOR, HOSPITAL, Chain, enrol, failing_trigger, reversal, rows, settlement

OTHER = "H11010100002"


def _lines(store: Store, where: str = "1", params: tuple = ()) -> list[dict]:
    rows = store.read(
        lambda c: c.execute(
            f"SELECT {', '.join(HIST_COLUMNS)} FROM hist_lines WHERE {where} ORDER BY rowid", params
        ).fetchall()
    )
    return [dict(zip(HIST_COLUMNS, r, strict=True)) for r in rows]


def _count(store: Store) -> int:
    return store.read(lambda c: c.execute("SELECT count(*) FROM hist_lines").fetchone()[0])


def _visit(setl_id: str, **kw) -> Settlement:
    s = settlement(setl_id, **kw)
    s.mdtrt.dr_codg, s.mdtrt.dept_codg = "D370211000123", "A03.01"
    s.feedetl[0].days = 7
    return s


def test_every_line_of_a_settlement_becomes_a_row_with_the_contract_columns(
    store: Store, chain: Chain
) -> None:
    # 3 × 12.345 yuan = 37.035 → 3704 fen (half-up); unit price 12.345 yuan → 1235 fen (1234.5 half-up).
    lines = (("3", "12.345", 3704), ("0.5", "0.004999", 0), ("1.25", "8", 1000))
    s = _visit("S1", lines=lines, split=None, setl_time="2026-11-24T23:30:00+08:00")
    chain.append(s)
    ack = Ingestor(store).ingest(chain.batch(1, 1))
    assert (ack.code, ack.rejected) == ("stored", [])
    expected = [(3.0, 1235, 3704, 7), (0.5, 0, 0, None), (1.25, 800, 1000, None)]
    assert _lines(store) == [
        {
            "psn_no": "P0000000001", "fixmedins_code": HOSPITAL, "setl_id": "S1", "setl_date": "2026-11-24",
            "begn_date": "2026-11-24", "med_type": "11", "dise_codg": "J06.900", "dr_codg": "D370211000123",
            "dept_codg": "A03.01", "hosp_lv": None, "feedetl_sn": f"S1-{i}", "med_list_codg": f"XA01AAA0{i}",
            "list_type": "101", "cnt": cnt, "pric_fen": pric, "amount_fen": amount, "days": days,
            "fee_date": None,
        }
        for i, (cnt, pric, amount, days) in enumerate(expected)
    ]  # fmt: skip
    types = store.read(
        lambda c: c.execute(
            "SELECT typeof(cnt), typeof(pric_fen), typeof(amount_fen) FROM hist_lines"
        ).fetchone()
    )
    assert types == ("real", "integer", "integer")


@pytest.mark.parametrize(
    ("pric", "fen"),
    [("0", 0), ("12.5", 1250), ("12.345", 1235), ("12.344999", 1234), ("0.005", 1), ("0.004999", 0),
     ("123456789012.999999", 12345678901300)],
)  # fmt: skip
def test_unit_price_in_fen_rounds_half_up(pric: str, fen: int) -> None:
    assert pric_fen(pric) == fen


def test_a_duplicate_batch_and_a_resend_after_a_lost_ack_add_no_line(store: Store, chain: Chain) -> None:
    ingestor = Ingestor(store)
    chain.extend(5)
    assert ingestor.ingest(chain.batch(1, 3)).code == "stored"
    assert _count(store) == 6
    assert ingestor.ingest(chain.batch(1, 3)).code == "duplicate"  # the same batch again
    assert _count(store) == 6
    ack = ingestor.ingest(chain.batch(2, 5))  # the ack of 1-3 was lost; the agent resends from 2
    assert (ack.code, ack.stored, ack.duplicates) == ("stored", 2, 2)
    assert _count(store) == 10
    per_setl = store.read(
        lambda c: c.execute("SELECT setl_id, count(*) FROM hist_lines GROUP BY setl_id").fetchall()
    )
    assert sorted(n for _, n in per_setl) == [2] * 5


def test_rejected_records_add_no_line(store: Store, chain: Chain) -> None:
    """A body for another hospital, a setl_id already held, a replayed e-voucher and a lost marker."""
    other = enrol(store, OTHER)
    ingestor = Ingestor(store)
    voucher = settlement("V1", hospital=OTHER)
    voucher.mdtrt_cert_type, voucher.mdtrt_cert_no = "01", "nonce-1"
    other.append(voucher)
    assert ingestor.ingest(other.batch(1, 1)).code == "stored"
    chain.append(settlement("S1"))
    chain.append(settlement("S2", hospital=OTHER))  # hospital_mismatch
    chain.append(settlement("S1"))  # setl_duplicate
    replay = settlement("V2")
    replay.mdtrt_cert_type, replay.mdtrt_cert_no = "01", "nonce-1"  # evoucher_replayed
    chain.append(replay)
    chain.append_lost()
    ack = ingestor.ingest(chain.batch(1, 5))
    assert sorted(r.code for r in ack.rejected) == [
        "evoucher_replayed",
        "hospital_mismatch",
        "setl_duplicate",
    ]
    held = store.read(
        lambda c: c.execute("SELECT setl_id, count(*) FROM hist_lines GROUP BY setl_id").fetchall()
    )
    assert held == [("S1", 2), ("V1", 2)]


def test_a_reversal_removes_its_settlements_lines_only(store: Store, chain: Chain) -> None:
    ingestor = Ingestor(store)
    s1, s2 = settlement("S1"), settlement("S2")
    chain.append(s1)
    chain.append(s2)
    ingestor.ingest(chain.batch(1, 2))
    chain.append(reversal(s1, "R1"))
    assert ingestor.ingest(chain.batch(3, 3)).rejected == []
    assert {r["setl_id"] for r in _lines(store)} == {"S2"}
    # In the same batch as its settlement, and a second reversal of the same settlement.
    s3 = settlement("S3")
    chain.append(s3)
    chain.append(reversal(s3, "R3"))
    chain.append(reversal(s3, "R3b"))
    ingestor.ingest(chain.batch(4, 6))
    assert {r["setl_id"] for r in _lines(store)} == {"S2"}
    assert _count(store) == 2


def test_a_reversal_from_another_hospital_does_not_remove_lines(store: Store, chain: Chain) -> None:
    other = enrol(store, OTHER)
    ingestor = Ingestor(store)
    s1 = settlement("S1")
    chain.append(s1)
    ingestor.ingest(chain.batch(1, 1))
    forged = reversal(s1, "RX")
    forged.fixmedins_code = OTHER
    other.append(forged)
    assert ingestor.ingest(other.batch(1, 1)).rejected == []  # the centre holds it, as before
    assert _count(store) == 2


def test_a_failed_write_leaves_no_line(store: Store, chain: Chain) -> None:
    chain.extend(3)
    ingestor = Ingestor(store)
    with failing_trigger(store, "agents", "UPDATE OF acked_seq"):
        with pytest.raises(InternalError):
            ingestor.ingest(chain.batch(1, 3))
        assert rows(store, "SELECT count(*) FROM hist_lines") == [(0,)]
    assert ingestor.ingest(chain.batch(1, 3)).acked_seq == 3
    assert _count(store) == 6


def test_lines_carry_the_hospital_grade_when_known(store: Store, chain: Chain) -> None:
    ingestor = Ingestor(store)
    chain.extend(1)
    ingestor.ingest(chain.batch(1, 1))
    assert {r["hosp_lv"] for r in _lines(store)} == {None}
    held = set_hospital(store, ACTOR, HOSPITAL, "3", name="City hospital")
    assert held["lines_updated"] == 2
    assert {r["hosp_lv"] for r in _lines(store)} == {"3"}  # lines already held take the grade
    chain.extend(1)
    ingestor.ingest(chain.batch(2, 2))
    assert [r["hosp_lv"] for r in _lines(store)] == ["3"] * 4
    # The grade changes between the read-only phase and the write: the write uses the new one.
    chain.extend(1)
    prepared = ingestor.prepare(chain.batch(3, 3))
    assert prepared.hosp_lv == "3"
    set_hospital(store, ACTOR, HOSPITAL, "2")
    ingestor.commit(prepared)
    assert [r["hosp_lv"] for r in _lines(store)] == ["2"] * 6


def test_split_parts_are_kept_for_the_year_to_date(store: Store, chain: Chain) -> None:
    s = settlement("S1")
    s.hifp_pay, s.hifmi_pay, s.hifob_pay = 2000, 700, 300
    chain.append(s)
    chain.append(reversal(s, "R1"))
    Ingestor(store).ingest(chain.batch(1, 2))
    rows = store.read(
        lambda c: c.execute(
            "SELECT setl_id, hifp_pay, hifmi_pay, hifob_pay FROM settlements ORDER BY seq"
        ).fetchall()
    )
    assert rows == [("S1", 2000, 700, 300), ("R1", None, None, None)]
