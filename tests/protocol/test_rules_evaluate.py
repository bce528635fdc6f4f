"""Which rules run (filters, moments, modes, knowledge readiness), what evaluate leaves behind, and the
history rows of a settlement record."""

from __future__ import annotations

import sqlite3
from datetime import date

import pytest

from protocol.records import FeeDetail, Person, Settlement, Visit
from protocol.rules import (
    CURRENT_COLUMNS,
    HIST_COLUMNS,
    Line,
    bill_from_settlement,
    create_current,
    evaluate,
    history_rows_from_settlement,
    join_diagnoses,
)

from .rules_kit import (
    AIRCON,
    AMLODIPINE,
    GENERAL_CONSULT,
    INSULIN,
    PROGESTERONE,
    SPECIALIST_CONSULT,
    TODAY,
    add_history,
    bill,
    check,
    connect,
    days_ago,
    line,
    one,
    rule_doc,
    ruleset,
)

GENDER_HIT = bill(line("1", PROGESTERONE))  # progesterone for a man: one hit per gender rule


@pytest.mark.parametrize(
    ("filters", "runs"),
    [
        ({}, True),
        ({"med_types": ["11", "14"]}, True),
        ({"med_types": ["21"]}, False),
        ({"insutypes": ["310"]}, True),
        ({"insutypes": ["390"]}, False),
        ({"hosp_lvs": ["2", "3"]}, True),
        ({"hosp_lvs": ["1"]}, False),
        ({"disease_prefixes": ["I10"]}, True),
        ({"disease_prefixes": ["I1"]}, True),
        ({"disease_prefixes": ["E11", "I10.x"]}, True),
        ({"disease_prefixes": ["E11"]}, False),
        ({"med_types": ["11"], "insutypes": ["390"]}, False),
    ],
)
def test_filters_select_the_bills_a_rule_checks(filters: dict, runs: bool) -> None:
    hits = check(connect(), one("gender_restricted", **filters), GENDER_HIT)
    assert len(hits) == runs


def test_a_secondary_diagnosis_matches_a_disease_filter() -> None:
    b = bill(line("1", PROGESTERONE), dise_codg=("I10.x00", "E11.900"))
    assert len(check(connect(), one("gender_restricted", disease_prefixes=["E11"]), b)) == 1
    as_text = bill(line("1", PROGESTERONE), dise_codg="I10.x00; E11.900")  # one text: split, stripped
    assert as_text.dise_codg == ("I10.x00", "E11.900")
    assert len(check(connect(), one("gender_restricted", disease_prefixes=["E11"]), as_text)) == 1


@pytest.mark.parametrize(
    ("moments", "moment", "runs"),
    [
        (["pre"], "pre", True),
        (["pre"], "in", False),
        (["in", "post"], "post", True),
        (["post"], "pre", False),
    ],
)
def test_moments(moments: list[str], moment: str, runs: bool) -> None:
    assert len(check(connect(), one("gender_restricted", moments=moments), GENDER_HIT, moment)) == runs


def test_modes_shadow_marked_off_skipped() -> None:
    rules = ruleset(
        rule_doc("gender_restricted", id="enforced", mode="enforce"),
        rule_doc("gender_restricted", id="tuning", mode="shadow", version=3),
        rule_doc("gender_restricted", id="retired", mode="off"),
    )
    enforced, tuning = check(connect(), rules, GENDER_HIT)
    assert (enforced.rule_id, enforced.mode, enforced.shadow) == ("enforced", "enforce", False)
    assert (tuning.rule_id, tuning.mode, tuning.shadow, tuning.rule_version) == ("tuning", "shadow", True, 3)


def test_unknown_moment_is_refused() -> None:
    with pytest.raises(ValueError, match="moment"):
        check(connect(), one("gender_restricted"), GENDER_HIT, "during")


def test_without_knowledge_only_the_rules_that_need_none_run() -> None:
    conn = connect(knowledge=None)  # empty kb_* tables: no catalogue bundle yet
    add_history(conn, "S1", "2026-11-10", [(AMLODIPINE, 1, 28)])
    rules = ruleset(
        rule_doc("not_in_catalogue"),
        rule_doc("duplicate_medication", params={"match": "code"}),
        rule_doc("gender_restricted"),
    )
    b = bill(line("1", AMLODIPINE, days=28), line("2", PROGESTERONE))
    (dup,) = check(conn, rules, b, kb_ready=False)
    assert dup.template == "duplicate_medication"
    assert dup.message.startswith(f"{AMLODIPINE} was dispensed")  # no catalogue names: the code
    # told the (empty) knowledge is ready, every line is "not in the catalogue"
    assert [h.template for h in check(conn, rules, b)].count("not_in_catalogue") == 2


def test_messages_use_the_his_name_when_the_catalogue_has_none() -> None:
    conn = connect(knowledge=None)
    add_history(conn, "S1", "2026-11-10", [(AMLODIPINE, 1, 28)])
    b = bill(Line(feedetl_sn="1", med_list_codg=AMLODIPINE, cnt="1", days=28, name="Norvasc 5 mg"))
    (hit,) = check(conn, one("duplicate_medication", params={"match": "code"}), b, kb_ready=False)
    assert hit.message.startswith("Norvasc 5 mg was dispensed")


def test_hits_come_in_rule_order_then_bill_order() -> None:
    rules = ruleset(rule_doc("not_in_catalogue", params={"class_c": True}), rule_doc("repeated_charge"))
    b = bill(
        line("9", "XZ0000000001"),
        line("3", SPECIALIST_CONSULT),
        line("5", AIRCON),
        line("1", GENERAL_CONSULT),
    )
    assert [(h.template, h.lines) for h in check(connect(), rules, b)] == [
        ("not_in_catalogue", ("9",)),
        ("not_in_catalogue", ("5",)),
        ("repeated_charge", ("1",)),
    ]


def test_evaluate_leaves_no_transaction_and_no_lines_behind() -> None:
    conn = connect()
    check(conn, one("gender_restricted"), GENDER_HIT)
    assert not conn.in_transaction
    assert conn.execute("SELECT count(*) FROM cur_lines").fetchone()[0] == 0


def test_evaluate_inside_the_callers_transaction_leaves_it_open() -> None:
    conn = connect()
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")  # opens the caller's transaction
    assert conn.in_transaction
    assert len(check(conn, one("gender_restricted"), GENDER_HIT)) == 1
    assert conn.in_transaction
    conn.rollback()
    assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 0


def test_autocommit_connections_and_row_factories_work() -> None:
    conn = connect()
    conn.isolation_level = None
    conn.row_factory = sqlite3.Row
    assert len(check(conn, one("gender_restricted"), GENDER_HIT)) == 1
    assert not conn.in_transaction


def test_a_bill_without_lines_finds_nothing() -> None:
    assert check(connect(), one("gender_restricted"), bill()) == []


def test_a_bill_refuses_repeated_line_numbers_and_bad_dates() -> None:
    with pytest.raises(ValueError, match="feedetl_sn"):
        bill(line("1", AMLODIPINE), line("1", INSULIN))
    with pytest.raises(ValueError):
        bill(brdy="1958-13-01")


def test_hit_to_dict_is_the_contract_shape() -> None:
    (hit,) = check(connect(), one("gender_restricted"), GENDER_HIT)
    assert hit.to_dict() == {
        "rule_id": "gender_restricted",
        "rule_version": 1,
        "template": "gender_restricted",
        "severity": "warn",
        "mode": "enforce",
        "action": "prompt",
        "overridable": False,
        "message": "Progesterone injection 1ml:20mg is for female patients only (catalogue restriction).",
        "lines": ["1"],
        "evidence": [{"med_list_codg": PROGESTERONE, "value": "1", "threshold": "2"}],
    }


# -- history rows from a settlement record -----------------------------------------------------


def _record() -> Settlement:
    return Settlement(
        setl_id="H37020200011-1795500000000-00c0ffee",
        his_setl_no="HIS-1",
        fixmedins_code="H37020200011",
        setl_time="2026-11-23T09:31:05+08:00",
        opter="C0007",
        medfee_sumamt=5120,
        psn=Person(
            psn_no="P1", gend="1", brdy="1958-04-02", insutype="310", psn_type="11", insuplc_admdvs="370211"
        ),
        mdtrt=Visit(
            mdtrt_id="M1",
            med_type="11",
            begntime="2026-11-23T09:12:00+08:00",
            dise_codg="I10.x00;E11.900",
            dr_codg="D1",
            dept_codg="A03.04",
        ),
        feedetl=[
            FeeDetail(
                feedetl_sn="1",
                list_type="101",
                med_list_codg=AMLODIPINE,
                medins_list_name="amlodipine",
                cnt="2",
                pric="19.6",
                det_item_fee_sumamt=3920,
                days=28,
            ),
            FeeDetail(
                feedetl_sn="2",
                list_type="201",
                med_list_codg=GENERAL_CONSULT,
                medins_list_name="consult",
                cnt="1",
                pric="12.005",
                det_item_fee_sumamt=1201,
            ),
        ],
    )


def test_history_rows_from_a_settlement() -> None:
    rows = history_rows_from_settlement(_record(), "3")
    assert [dict(zip(HIST_COLUMNS, r, strict=True)) for r in rows] == [
        {
            "psn_no": "P1",
            "fixmedins_code": "H37020200011",
            "setl_id": "H37020200011-1795500000000-00c0ffee",
            "setl_date": "2026-11-23",
            "begn_date": "2026-11-23",
            "med_type": "11",
            "dise_codg": "I10.x00,E11.900",
            "dr_codg": "D1",
            "dept_codg": "A03.04",
            "hosp_lv": "3",
            "feedetl_sn": "1",
            "med_list_codg": AMLODIPINE,
            "list_type": "101",
            "cnt": 2.0,
            "pric_fen": 1960,
            "amount_fen": 3920,
            "days": 28,
            "fee_date": None,
        },
        {
            "psn_no": "P1",
            "fixmedins_code": "H37020200011",
            "setl_id": "H37020200011-1795500000000-00c0ffee",
            "setl_date": "2026-11-23",
            "begn_date": "2026-11-23",
            "med_type": "11",
            "dise_codg": "I10.x00,E11.900",
            "dr_codg": "D1",
            "dept_codg": "A03.04",
            "hosp_lv": "3",
            "feedetl_sn": "2",
            "med_list_codg": GENERAL_CONSULT,
            "list_type": "201",
            "cnt": 1.0,
            "pric_fen": 1201,
            "amount_fen": 1201,
            "days": None,
            "fee_date": None,
        },
    ]


def test_history_rows_feed_the_next_check_and_a_reversal_removes_them() -> None:
    conn = connect()
    rows = history_rows_from_settlement(_record(), "3")
    insert = f"INSERT OR IGNORE INTO hist_lines VALUES ({', '.join('?' * len(HIST_COLUMNS))})"
    conn.executemany(insert, rows)
    conn.executemany(insert, rows)  # stored twice: ignored
    assert conn.execute("SELECT count(*) FROM hist_lines").fetchone()[0] == 2
    rules = one("duplicate_medication", params={"match": "code", "min_overlap_days": 27})
    (hit,) = check(conn, rules, bill(line("1", AMLODIPINE, days=28)), today=date(2026, 11, 24))
    assert hit.evidence[0]["supply_until"] == "2026-12-21"  # 2 packs of 28 were 28 days (days as given)
    conn.execute("DELETE FROM hist_lines WHERE setl_id = ?", (_record().setl_id,))
    assert check(conn, rules, bill(line("1", AMLODIPINE, days=28))) == []


def test_the_bill_of_a_settlement_is_checked_like_the_settlement() -> None:
    b = bill_from_settlement(_record(), "3")
    assert (
        b.dise_codg == ("I10.x00", "E11.900")
        and b.lines[1].pric == "12.005"
        and b.lines[0].name == "amlodipine"
    )
    conn = connect()
    create_current(conn)
    conn.executemany(f"INSERT INTO cur_lines VALUES ({', '.join('?' * len(CURRENT_COLUMNS))})", b.rows(TODAY))
    row = conn.execute(
        "SELECT setl_id, setl_date, pric_fen, amount_fen FROM cur_lines WHERE feedetl_sn = '2'"
    )
    assert row.fetchone() == ("CURRENT", TODAY.isoformat(), 1201, 1201)


@pytest.mark.parametrize(
    ("given", "joined"),
    [
        ("I10.x00", "I10.x00"),
        ("I10.x00, E11.900", "I10.x00,E11.900"),
        ("I10.x00|E11.900;I10.x00", "I10.x00,E11.900"),
        (["E11.900", " I10.x00 ", ""], "E11.900,I10.x00"),
    ],
)
def test_diagnoses_are_joined_with_commas(given, joined: str) -> None:
    assert join_diagnoses(given) == joined


def test_an_earlier_visit_in_the_same_day_is_history() -> None:
    conn = connect()
    add_history(conn, "S1", TODAY.isoformat(), [(AMLODIPINE, 1, 28)])
    add_history(conn, "S2", days_ago(-1), [(AMLODIPINE, 1, 28)])  # a later date is never history
    (hit,) = check(
        conn, one("duplicate_medication", params={"match": "code"}), bill(line("1", AMLODIPINE, days=28))
    )
    assert [e["setl_date"] for e in hit.evidence] == [TODAY.isoformat()]


def test_evaluate_signature() -> None:
    with pytest.raises(TypeError):
        evaluate(connect(), one("gender_restricted"), GENDER_HIT, "pre", TODAY)  # type: ignore[misc]
