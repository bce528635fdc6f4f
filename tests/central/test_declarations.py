"""A hospital's monthly declaration checked against the centre: differences named, re-uploads asked.

Real SQLite; settlements arrive through the real ingest path (signed batches) and the bulk import.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

import central.storage.schema as schema
from central.cli import main
from central.errors import DeclarationInvalid
from central.intake.bulk_import import import_settlements
from central.intake.declarations import check_declaration, open_reupload_requests, store_declaration
from central.intake.hospitals import set_hospital
from central.storage.store import Store

from .conftest import ACTOR, HOSPITAL, Chain, enrol, reversal, settlement
from .test_screening import ingest

NOV = "2026-11-24T10:00:00+08:00"


def doc(**kw: Any) -> dict[str, Any]:
    base = {
        "fixmedins_code": HOSPITAL,
        "period": "2026-11",
        "declared_at": "2026-12-03T09:00:00+08:00",
        # S1 and S2 settled, S1 reversed: 2 settlements, 1 reversal, net one settlement's amounts.
        "totals": [{"insutype": "310", "settlements": 2, "reversals": 1, "medfee_sumamt": "51.20",
                    "fund_pay_sumamt": "30.00", "acct_pay": "10.00", "psn_cash_pay": "11.20"}],
        "batches": [{"batch_no": "B-1101", "records": 3, "medfee_sumamt": "51.20"}],
        "details": [
            {"setl_id": "S1", "insutype": "310", "batch_no": "B-1101", "medfee_sumamt": "51.20"},
            {"setl_id": "S2", "insutype": "310", "batch_no": "B-1101", "medfee_sumamt": "51.20",
             "fund_pay_sumamt": "30.00"},
            {"setl_id": "R1", "kind": "revs", "batch_no": "B-1101", "medfee_sumamt": "-51.20"},
        ],
    }  # fmt: skip
    return base | kw


def data(d: dict[str, Any]) -> bytes:
    return json.dumps(d, ensure_ascii=False).encode()


@pytest.fixture
def held(store: Store) -> Chain:
    set_hospital(store, ACTOR, HOSPITAL, "2")
    chain = enrol(store)
    s1 = settlement("S1", setl_time=NOV)
    ingest(store, chain, s1, settlement("S2", setl_time=NOV), reversal(s1, "R1"))
    ingest(store, chain, settlement("OCT", setl_time="2026-10-31T23:00:00+08:00"))  # another period
    return chain


def count(store: Store, table: str) -> int:
    return store.read(lambda c: c.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def test_a_declaration_that_matches_agrees_and_asks_for_nothing(store, held) -> None:
    result = store_declaration(store, ACTOR, data(doc()))
    assert result.agrees, result.to_json()
    assert result.reupload_open == 0 and open_reupload_requests(store) == []
    row = store.read(lambda c: c.execute("SELECT result, operator FROM declarations").fetchone())
    assert row == ("agrees", ACTOR.operator)


def test_differences_are_named_and_the_missing_settlement_is_asked_for_until_it_arrives(store, held) -> None:
    d = doc()
    d["totals"][0] |= {
        "settlements": 3, "medfee_sumamt": "102.40", "fund_pay_sumamt": "60.00", "acct_pay": "20.00",
        "psn_cash_pay": "22.40",
    }  # fmt: skip
    d["batches"][0] |= {"records": 4, "medfee_sumamt": "102.40"}
    d["details"].append({"setl_id": "S3", "insutype": "310", "batch_no": "B-1101", "medfee_sumamt": "51.20"})
    d["details"][1]["fund_pay_sumamt"] = "31.00"  # the hospital claims one yuan more from the fund for S2
    result = store_declaration(store, ACTOR, data(d))
    assert not result.agrees
    (totals,) = result.totals
    assert totals["insutype"] == "310"
    assert totals["differs_in"] == [
        "settlements",
        "medfee_sumamt",
        "fund_pay_sumamt",
        "acct_pay",
        "psn_cash_pay",
    ]
    assert totals["held"]["medfee_sumamt"] == "51.20" and totals["declared"]["medfee_sumamt"] == "102.40"
    (batch,) = result.batches
    assert (batch["declared_records"], batch["held_records"], batch["missing_at_centre"]) == (4, 3, ["S3"])
    assert result.missing_at_centre == ["S3"]
    assert result.amounts_differ == [{"setl_id": "S2", "fields": ["fund_pay_sumamt"]}]
    assert result.not_declared == []
    assert [r["setl_id"] for r in open_reupload_requests(store, HOSPITAL)] == ["S3"]
    # The agent uploads S3 (it had been waiting there); the request closes and the check agrees on it.
    ingest(store, held, settlement("S3", setl_time=NOV))
    assert open_reupload_requests(store) == []
    again = check_declaration(store, ACTOR, result.declaration_id)
    assert again.missing_at_centre == [] and again.batches == [] and again.totals == []
    assert again.amounts_differ == [{"setl_id": "S2", "fields": ["fund_pay_sumamt"]}]  # still the hospital's


def test_a_held_settlement_left_out_of_the_declaration_is_named(store, held) -> None:
    d = doc()
    d["details"] = [x for x in d["details"] if x["setl_id"] != "S2"]
    result = store_declaration(store, ACTOR, data(d))
    assert result.not_declared == ["S2"]


def test_an_undeclared_insurance_type_and_imported_settlements_count_as_held(
    store, held, tmp_path: Path
) -> None:
    resident = settlement("IMP-1", setl_time="2026-11-05T10:00:00+08:00")
    resident.psn.insutype = "390"
    path = tmp_path / "history.jsonl"
    path.write_text(json.dumps(msgspec.to_builtins(resident)) + "\n", encoding="utf-8")
    assert import_settlements(store, path).settlements == 1
    result = store_declaration(store, ACTOR, data(doc()))
    assert [(t["insutype"], t["differs_in"]) for t in result.totals] == [("390", ["not declared"])]
    assert result.not_declared == ["IMP-1"]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"period": "2026-13"}, "period"),
        ({"totals": []}, "totals"),
        (
            {"totals": [{"insutype": "310", "settlements": 1, "medfee_sumamt": "1.234"}]},
            "totals[0].medfee_sumamt",
        ),
        ({"fixmedins_code": "H37021100001"}, "not registered"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_a_bad_declaration_is_refused_with_the_field_named_and_nothing_stored(store, held, change, problem):
    with pytest.raises(DeclarationInvalid) as err:
        store_declaration(store, ACTOR, data(doc(**change)))
    assert problem in err.value.message
    assert count(store, "declarations") == 0 and count(store, "reupload_requests") == 0


def test_the_cli_submits_lists_and_exits_2_when_it_differs(
    store, held, config, tmp_path, capsys, act_as
) -> None:
    home = ["--home", str(config.home)]
    act_as("wang", "supervisor", area="110100")
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_bytes(data(doc()))
    d = doc()
    d["details"].append({"setl_id": "S9", "medfee_sumamt": "1.00"})
    bad.write_bytes(data(d))
    assert main([*home, "declarations", "submit", str(good)]) == 0
    assert "AGREES" in capsys.readouterr().out
    assert main([*home, "declarations", "submit", str(bad)]) == 2
    out = capsys.readouterr().out
    assert "DIFFERS" in out and "1 declared but not held: S9" in out and "declarations check" in out
    assert main([*home, "declarations", "list", "--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(r["result"], r["in_force"]) for r in rows] == [("differs", True), ("agrees", False)]
    assert main([*home, "declarations", "reupload", "--json"]) == 0
    assert [json.loads(x)["setl_id"] for x in capsys.readouterr().out.splitlines()] == ["S9"]
    bad.write_text("{", encoding="utf-8")
    assert main([*home, "declarations", "submit", str(bad)]) == 1
    assert "not JSON" in capsys.readouterr().err


def test_migration_14_gives_held_settlements_their_insurance_type(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "c" / "central.db"
    with monkeypatch.context() as m:
        m.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:13])
        m.setattr(schema, "SCHEMA_VERSION", 13)
        with Store(path, create=True) as old:
            set_hospital(old, ACTOR, HOSPITAL, "2")
            chain = enrol(old)
            # Written as schema 13's ingest did: without the insutype column.
            from central.intake.ingest import Ingestor

            m.setattr("central.intake.ingest._INSERT_SETTLEMENT", _schema13_insert())
            real = __import__("central.intake.ingest", fromlist=["_settlement_row"])._settlement_row
            m.setattr(
                "central.intake.ingest._settlement_row", lambda *a: (lambda r: (r[0][:-1], *r[1:]))(real(*a))
            )
            s = settlement("S1")
            chain.append(s)
            chain.append(reversal(s, "R1"))
            assert Ingestor(old).ingest(chain.batch(1, 2)).rejected == []
    with Store(path) as new:
        assert new.applied_migrations[0] == "_m014_declarations"
        rows = new.read(
            lambda c: c.execute("SELECT setl_id, insutype FROM settlements ORDER BY setl_id").fetchall()
        )
    assert rows == [("R1", None), ("S1", "310")]  # a reversal's is its original's, read by a join


def _schema13_insert() -> str:
    from central.intake import ingest

    return ingest._INSERT_SETTLEMENT.replace(", insutype)", ")").replace("?, ?) ON", "?) ON")
