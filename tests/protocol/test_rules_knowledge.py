"""The knowledge base: catalogue documents validated field by field, installed into kb_* atomically."""

from __future__ import annotations

import dataclasses
import sqlite3
from typing import Any

import pytest

from protocol.errors import KnowledgeInvalid, RulesInvalid
from protocol.rules import install_knowledge, load_knowledge

from .rules_kit import AREA, KB, PROGESTERONE, connect, sample_catalogue


def _item(**fields: Any) -> dict[str, Any]:
    item = {
        "code": "XC08CAA077A001010100001",
        "name": "amlodipine 5mg x 28",
        "list_type": "101",
        "class": "A",
    }
    item.update(fields)
    return item


def _doc(*items: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"area": AREA, "items": list(items) or [_item()], **top}


def _problems(doc: Any) -> list[str]:
    with pytest.raises(KnowledgeInvalid) as err:
        load_knowledge(doc)
    assert err.value.code == "knowledge_invalid" and isinstance(err.value, RulesInvalid)
    return err.value.problems


SERVICE = {"code": "001102000010000", "name": "consultation", "list_type": "201", "class": "A"}
OMEPRAZOLE = _item(code="XA02BCA211A010010102134", name="omeprazole", drug_class="A02BC")


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        ("catalogue", "must be an object, found a string"),
        ({"area": AREA}, "items: is required"),
        (_doc(format=2), "format: must be 1 (or left out), found 2"),
        ({"area": AREA, "items": []}, "items: must hold at least one item"),
        (_doc(_item(), _item()), "items[1].code: 'XC08CAA077A001010100001' repeats items[0]"),
        (_doc(_item(code="X-1")), "items[0].code: 'X-1' must be 6-50 letters and digits"),
        (_doc(_item(colour="red")), "items[0].colour: is not a known field"),
        (_doc(_item(list_type="105")), "items[0].list_type: '105' is not one of"),
        (_doc(_item(**{"class": "D"})), "items[0].class: 'D' is not one of A, B, C"),
        (_doc(_item(price_ceiling={"4": 100})), "items[0].price_ceiling.4: hospital level must be one of"),
        (
            _doc(_item(price_ceiling={"3": 19.6})),
            "items[0].price_ceiling.3: 19.6 has a fraction; write an integer of fen",
        ),
        (_doc(_item(self_pay_ratio=0.1)), 'items[0].self_pay_ratio: ratios are decimal strings: write "0.1"'),
        (_doc(_item(restrictions={"sex": "1"})), "items[0].restrictions.sex: is not a known field"),
        (_doc(_item(restrictions={"gender": "F"})), "items[0].restrictions.gender: 'F' is not one of 1, 2"),
        (
            _doc(_item(restrictions={"age_min": 18, "age_max": 12})),
            "items[0].restrictions.age_max: 12 is below age_min 18",
        ),
        (
            _doc(_item(restrictions={"indications": ["type 2 diabetes"]})),
            "items[0].restrictions.indications[0]: 'type 2 diabetes' is not an ICD-10 diagnosis code "
            "prefix like E11",
        ),
        (
            _doc(_item(restrictions={"indications": ["E11", "E11"]})),
            "items[0].restrictions.indications[1]: 'E11' is listed twice",
        ),
        (_doc(_item(drug_class="C08 CA")), "items[0].drug_class: 'C08 CA' must be 1-32 of"),
        (
            _doc({**SERVICE, "drug_class": "X"}),
            "items[0].drug_class: is for drugs (list_type 101, 102, 103, 104), not list_type 201",
        ),
        (_doc({**SERVICE, "max_days_acute": 7}), "items[0].max_days_acute: is for drugs"),
        (_doc(_item(max_days_acute=0)), "items[0].max_days_acute: 0 is outside 1-366"),
        (_doc(_item(max_days_chronic="84")), "items[0].max_days_chronic: must be an integer, found a string"),
        (
            _doc(_item(max_cnt_per_day=0.5)),
            'items[0].max_cnt_per_day: quantities with a fraction are decimal strings: write "0.5"',
        ),
        (_doc(_item(max_cnt_per_day="0")), "items[0].max_cnt_per_day: 0 must be more than 0"),
        (
            _doc(_item(max_cnt_per_day="1.23456")),
            "items[0].max_cnt_per_day: must be a positive integer or a decimal string",
        ),
        (
            _doc({**SERVICE, "frequency": {"per": "week", "max": 1}}),
            "items[0].frequency.per: must be day, visit or period_days:N",
        ),
        (
            _doc({**SERVICE, "frequency": {"per": "period_days:0", "max": 1}}),
            "items[0].frequency.per: must be day, visit",
        ),
        (_doc({**SERVICE, "frequency": {"per": "day"}}), "items[0].frequency.max: is required"),
        (
            _doc({**SERVICE, "frequency": {"per": "day", "max": 0}}),
            "items[0].frequency.max: 0 is outside 1-10000",
        ),
        # pairs
        (
            _doc(exclusive_pairs=[["XC08CAA077A001010100001"]]),
            "exclusive_pairs[0]: must be a pair [main item code, included",
        ),
        (
            _doc(exclusive_pairs=[["XC08CAA077A001010100001", "001102000010000"]]),
            "exclusive_pairs[0][1]: '001102000010000' is not an item code of this catalogue",
        ),
        (
            _doc(exclusive_pairs=[["XC08CAA077A001010100001"] * 2]),
            "exclusive_pairs[0]: an item cannot include itself",
        ),
        (
            _doc(_item(), SERVICE, exclusive_pairs=[[SERVICE["code"], _item()["code"]]] * 2),
            "exclusive_pairs[1]: repeats exclusive_pairs[0]",
        ),
        (
            _doc(
                _item(),
                SERVICE,
                exclusive_pairs=[[SERVICE["code"], _item()["code"]], [_item()["code"], SERVICE["code"]]],
            ),
            "exclusive_pairs[1]: contradicts exclusive_pairs[0] (each includes the other)",
        ),
        # interactions
        (
            _doc(interactions=[{"a": "C08CA", "b": "A02BC", "severity": "major", "message": "m"}]),
            "interactions[0].a: 'C08CA' is neither an item code nor a drug_class of this catalogue",
        ),
        (
            _doc(
                _item(drug_class="C08CA"),
                OMEPRAZOLE,
                interactions=[{"a": "C08CA", "b": "A02BC", "severity": "severe", "message": "m"}],
            ),
            "interactions[0].severity: 'severe' is not one of minor, moderate",
        ),
        (
            _doc(
                _item(),
                interactions=[
                    {"a": _item()["code"], "b": _item()["code"], "severity": "major", "message": "m"}
                ],
            ),
            "interactions[0]: an item cannot interact with itself",
        ),
        (
            _doc(
                _item(drug_class="C08CA"),
                OMEPRAZOLE,
                interactions=[{"a": "C08CA", "b": "A02BC", "severity": "major"}],
            ),
            "interactions[0].message: is required",
        ),
        (
            _doc(
                _item(drug_class="C08CA"),
                OMEPRAZOLE,
                interactions=[
                    {"a": "C08CA", "b": "A02BC", "severity": "major", "message": "m"},
                    {"a": "A02BC", "b": "C08CA", "severity": "minor", "message": "m"},
                ],
            ),
            "interactions[1]: repeats interactions[0] (the pair, in either order)",
        ),
    ],
)
def test_a_bad_catalogue_is_refused_with_its_path(doc: Any, problem: str) -> None:
    problems = _problems(doc)
    assert any(p.startswith(problem) for p in problems), problems


def test_the_earlier_catalogue_format_still_loads() -> None:
    """What ``central/policy/documents.py`` accepted before (no format, no knowledge fields) still loads."""
    old = {
        "area": AREA,
        "items": [
            {
                "code": "XC08CAA077A001010100001",
                "name": "amlodipine besylate tablets 5mg x 28",
                "list_type": "101",
                "class": "A",
                "price_ceiling": {"1": 1960, "2": 1960, "3": 1960},
            },
            {
                "code": "XC10AAR124A001010100786",
                "name": "rosuvastatin",
                "list_type": "101",
                "class": "B",
                "self_pay_ratio": "0.10",
                "restrictions": {"age_min": 18},
            },
        ],
    }
    knowledge = load_knowledge(old)
    item = knowledge.items["XC10AAR124A001010100786"]
    assert str(item.self_pay_ratio) == "0.10" and item.age_min == 18 and item.drug_class is None
    assert knowledge.exclusive_pairs == () and knowledge.interactions == ()


def test_the_sample_loads_into_items_pairs_and_interactions() -> None:
    item = KB.items["XA10BFA022A001010102861"]
    assert (item.item_class, item.drug_class, item.max_days_acute, item.max_days_chronic) == (
        "B",
        "A10BF",
        30,
        84,
    )
    assert str(item.max_cnt_per_day) == "6" and dict(item.price_ceiling) == {
        "0": 46,
        "1": 46,
        "2": 46,
        "3": 46,
    }
    assert KB.items["002503030030000"].frequency == ("period_days:90", 1)
    assert KB.items[PROGESTERONE].gender == "2"
    assert ("001102000030000", "001102000010000") in KB.exclusive_pairs
    assert "M01A" in KB.drug_classes


def _count(conn: sqlite3.Connection, table: str) -> int:
    return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_install_creates_the_contract_tables() -> None:
    conn = connect()
    items = KB.items.values()
    assert _count(conn, "kb_items") == len(KB.items)
    assert _count(conn, "kb_price") == sum(len(i.price_ceiling) for i in items)
    assert _count(conn, "kb_indications") == sum(len(i.indications) for i in items)
    assert _count(conn, "kb_frequency") == sum(1 for i in items if i.frequency)
    assert _count(conn, "kb_exclusive") == len(KB.exclusive_pairs)
    assert _count(conn, "kb_interactions") == len(KB.interactions)
    columns = [r[1] for r in conn.execute("PRAGMA table_info(kb_items)")]
    assert columns == [
        "code",
        "name",
        "list_type",
        "class",
        "drug_class",
        "gender",
        "age_min",
        "age_max",
        "max_days_acute",
        "max_days_chronic",
        "max_cnt_per_day",
    ]
    row = conn.execute(
        "SELECT class, drug_class, max_cnt_per_day FROM kb_items WHERE code = 'XA10BFA022A001010102861'"
    ).fetchone()
    assert row == ("B", "A10BF", 6.0)
    assert conn.execute(
        "SELECT per, max_count FROM kb_frequency WHERE code = '002503030030000'"
    ).fetchone() == (
        "period_days:90",
        1,
    )


def test_install_replaces_the_previous_knowledge() -> None:
    conn = connect()
    small = load_knowledge(_doc(_item(price_ceiling={"3": 1960})))
    install_knowledge(conn, small)
    conn.commit()
    assert (
        _count(conn, "kb_items") == 1
        and _count(conn, "kb_price") == 1
        and _count(conn, "kb_interactions") == 0
    )


def test_a_failed_install_keeps_the_previous_knowledge() -> None:
    conn = connect()
    broken = dataclasses.replace(
        KB, exclusive_pairs=KB.exclusive_pairs + KB.exclusive_pairs[:1]
    )  # a repeated key
    with pytest.raises(sqlite3.IntegrityError):
        install_knowledge(conn, broken)
    conn.commit()
    assert _count(conn, "kb_items") == len(KB.items) and _count(conn, "kb_exclusive") == len(
        KB.exclusive_pairs
    )


def test_install_inside_the_callers_transaction_is_the_callers_to_commit() -> None:
    conn = connect(knowledge=None)
    conn.execute(
        "INSERT INTO hist_lines (psn_no, fixmedins_code, setl_id, setl_date, begn_date, med_type, dise_codg,"
        " hosp_lv, feedetl_sn, med_list_codg, list_type, cnt, pric_fen, amount_fen) VALUES"
        " ('P', 'H', 'S', '2026-01-01', '2026-01-01', '11', 'I10', '3', '1', 'X', '101', 1, 1, 1)"
    )
    assert conn.in_transaction
    install_knowledge(conn, KB)
    assert conn.in_transaction
    conn.rollback()
    assert _count(conn, "kb_items") == 0 and _count(conn, "hist_lines") == 0


def test_sample_document_is_not_changed_by_loading() -> None:
    doc = sample_catalogue()
    load_knowledge(doc)
    assert doc == sample_catalogue()
