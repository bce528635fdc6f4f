"""Templates 13-18 at the centre: each finds what docs/MONITORING.md says and nothing just inside its
threshold; the rule's filters apply to the checked visit; a batch of many persons in ``cur_visits``
gives each person's hits. Also: ``fee_date`` from ``fee_ocur_time`` end to end, and the visit tables
agree with the centre's."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import pytest

from agent import store as agent_store
from agent.intake import parse_settlement
from protocol.errors import ValidationFailed
from protocol.records import FeeDetail
from protocol.rules import (
    CURRENT_COLUMNS,
    HIST_COLUMNS,
    TEMPLATES,
    VISIT_COLUMNS,
    Hit,
    Line,
    Rule,
    applicable,
    create_current_visits,
    ensure_centre_tables,
    evaluate,
    history_rows_from_settlement,
    run_rule,
)

from .rules_kit import TODAY, bill, connect, one, rule_doc, ruleset

H_A, H_B, H_C, H_NOWHERE = "H37021100001", "H37021100002", "H37028300003", "H37020200009"
BED, NURSING = "001109000010000", "001201000010000"
CT_SCAN, INFUSION = "002101000010000", "001203000010000"


def centre() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    ensure_centre_tables(conn)
    create_current_visits(conn)
    conn.executemany(
        "INSERT INTO hospitals (fixmedins_code, hosp_lv, x_km, y_km) VALUES (?, ?, ?, ?)",
        [(H_A, "3", 0.0, 0.0), (H_B, "2", 30.0, 40.0), (H_C, "3", 30.0, 39.0), (H_NOWHERE, "1", None, None)],
    )
    return conn


def visit(setl_id: str, **fields: Any) -> dict[str, Any]:
    """A ``hist_visits`` row: an outpatient visit of P1 at H_A on TODAY unless ``fields`` say otherwise."""
    row: dict[str, Any] = {
        "setl_id": setl_id, "psn_no": "P1", "fixmedins_code": H_A, "area": "370200", "hosp_lv": "3",
        "setl_time": f"{TODAY.isoformat()}T10:00:00+08:00", "setl_date": TODAY.isoformat(),
        "begn_date": TODAY.isoformat(), "end_date": TODAY.isoformat(), "med_type": "11",
        "dise_codg": "I10.x00", "dise_main": None, "dr_codg": "D1", "dept_codg": "A03.04", "ipt_days": None,
        "medfee_sumamt": 10_000, "drug_fen": 0, "gend": "1", "brdy": "1958-04-02", "insutype": "310",
        "psn_type": "11",
    }  # fmt: skip
    row.update(fields)
    if "setl_date" not in fields and "setl_time" in fields:
        row["setl_date"] = fields["setl_time"][:10]
    if "dise_main" not in fields:
        row["dise_main"] = row["dise_codg"].split(",")[0]
    assert list(row) == list(VISIT_COLUMNS)
    return row


def add(conn: sqlite3.Connection, *visits: dict[str, Any], screened: bool = True) -> None:
    """Held visits (``hist_visits``); ``screened`` ones are in the batch (``cur_visits``) too."""
    marks = ", ".join("?" * len(VISIT_COLUMNS))
    for row in visits:
        conn.execute(f"INSERT INTO hist_visits VALUES ({marks})", list(row.values()))
        if screened:
            conn.execute(f"INSERT INTO cur_visits VALUES ({marks})", list(row.values()))


def stay(setl_id: str, begn: str, end: str, **fields: Any) -> dict[str, Any]:
    return visit(setl_id, begn_date=begn, end_date=end, setl_date=end, setl_time=f"{end}T16:00:00+08:00",
                 med_type="21", **fields)  # fmt: skip


def rule(template: str, params: dict[str, Any], **fields: Any) -> Rule:
    return one(template, params=params, **fields).rules[0]


def keys(hits: list[Hit]) -> list[tuple[str, str]]:
    return [(h.psn_no, h.setl_id) for h in hits]


def test_the_visit_columns_are_the_centres() -> None:
    from central.intake.visits import VISIT_COLUMNS as CENTRAL

    assert VISIT_COLUMNS == CENTRAL


def test_centre_templates_are_post_only_weighted_and_never_run_at_the_agent() -> None:
    assert {name for name, t in TEMPLATES.items() if t.centre} == {
        "readmission", "impersonation_distance", "care_after_death", "bed_hanging", "excessive_cost",
        "peer_outlier", "unreasonable_admission", "repeated_treatment",
    }  # fmt: skip
    rules = ruleset(
        rule_doc("care_after_death", moments=["post"]),
        rule_doc("frequent_visits", params={"max_visits": 1, "days": 7}, moments=["post"], severity="block",
                 action="refuse"),
    )  # fmt: skip
    assert [r.weight for r in rules.rules] == [60, 90]
    assert [r.id for r in applicable(rules, bill(Line(feedetl_sn="1", med_list_codg=BED, cnt="1")),
                                     moment="post")] == ["frequent_visits"]  # fmt: skip
    conn = connect()
    hits = evaluate(
        conn, rules, bill(Line(feedetl_sn="1", med_list_codg=BED, cnt="1")), moment="post", today=TODAY
    )
    assert [h.rule_id for h in hits] == []  # one visit is not more than one: and nothing from the centre rule


# -- 13 readmission ----------------------------------------------------------------------------


def test_readmission_within_days_and_not_a_day_later() -> None:
    r = rule("readmission", {"within_days": 15})
    conn = centre()
    add(conn, stay("S0", "2026-10-20", "2026-10-30", dise_codg="I63.900"), screened=False)
    add(conn, stay("S1", "2026-11-14", "2026-11-20", dise_codg="I63.400,E11.900"))  # 15 days after
    add(conn, stay("S9", "2026-11-15", "2026-11-20", psn_no="P9", dise_codg="I63.900"))
    add(conn, stay("S8", "2026-10-20", "2026-10-30", psn_no="P9", dise_codg="I63.900"), screened=False)
    (hit,) = run_rule(conn, r)
    assert keys([hit]) == [("P1", "S1")] and hit.lines == ()
    assert hit.evidence == (
        {"setl_id": "S0", "fixmedins_code": H_A, "begn_date": "2026-10-20", "end_date": "2026-10-30",
         "category": "I63", "value": 15, "threshold": 15},
    )  # fmt: skip
    assert hit.message == (
        f"Admitted to {H_A} on 2026-11-14, 15 days after a discharge from the same hospital on 2026-10-30 "
        "with a diagnosis of the same category; the rule looks for readmissions within 15 days."
    )
    assert "P1" not in hit.message and "I63" not in hit.message


def test_readmission_options_and_what_is_not_a_readmission() -> None:
    conn = centre()
    add(conn, stay("S0", "2026-11-01", "2026-11-10", fixmedins_code=H_B, dise_codg="I63.900"), screened=False)
    add(
        conn, visit("O1", setl_time="2026-11-12T09:00:00+08:00", dise_codg="I63.900"), screened=False
    )  # outpatient
    add(conn, stay("S1", "2026-11-12", "2026-11-18", dise_codg="E11.900"))
    within = {"within_days": 15}
    assert run_rule(conn, rule("readmission", within)) == []  # E11 is not I63's category
    assert keys(run_rule(conn, rule("readmission", within | {"related": "any"}))) == [("P1", "S1")]
    assert run_rule(conn, rule("readmission", within | {"related": "any", "same_hospital": True})) == []
    # the rule's filters apply to the checked visit
    assert run_rule(conn, rule("readmission", within | {"related": "any"}, insutypes=["390"])) == []
    assert run_rule(conn, rule("readmission", within | {"related": "any"}, hosp_lvs=["2"])) == []
    assert keys(
        run_rule(conn, rule("readmission", within | {"related": "any"}, disease_prefixes=["E11"]))
    ) == [("P1", "S1")]
    # an outpatient med_type list: the earlier outpatient visit counts, the inpatient one not
    assert run_rule(conn, rule("readmission", within | {"related": "any"}, med_types=["11"])) == []


def test_two_stays_discharged_and_admitted_the_same_day_make_one_hit() -> None:
    conn = centre()
    add(conn, stay("S1", "2026-11-01", "2026-11-10"), stay("S2", "2026-11-10", "2026-11-20"))
    assert keys(run_rule(conn, rule("readmission", {"within_days": 0}))) == [("P1", "S2")]


# -- 14 impersonation --------------------------------------------------------------------------


def test_one_card_at_two_distant_hospitals_within_minutes() -> None:
    r = rule("impersonation_distance", {"max_minutes": 30, "min_km": 50})
    conn = centre()
    add(conn, visit("A1", setl_time="2026-11-24T09:00:00+08:00"))
    add(conn, visit("B1", fixmedins_code=H_B, setl_time="2026-11-24T01:30:00Z"))  # 09:30 local, 50 km
    hits = run_rule(conn, r)
    assert keys(hits) == [("P1", "A1"), ("P1", "B1")]  # one fact, found from both visits
    first = hits[0]
    assert first.evidence == (
        {"setl_id": "B1", "fixmedins_code": H_B, "setl_time": "2026-11-24T01:30:00Z",
         "from_fixmedins_code": H_A, "minutes": 30.0, "max_minutes": 30, "value": 50.0, "threshold": 50},
    )  # fmt: skip
    assert first.message == (
        f"The same person settled at {H_A} (2026-11-24T09:00:00+08:00) and at {H_B} 30 minutes after, 50 km "
        "apart; the rule flags settlements at least 50 km apart within 30 minutes."
    )


@pytest.mark.parametrize(
    ("hospital", "setl_time", "found"),
    [
        (H_B, "2026-11-24T09:29:59+08:00", True),
        (H_B, "2026-11-24T09:30:01+08:00", False),  # 30 minutes and a second
        (H_B, "2026-11-24T08:30:00+08:00", True),  # before
        (H_C, "2026-11-24T09:10:00+08:00", False),  # 49.2 km
        (H_NOWHERE, "2026-11-24T09:10:00+08:00", False),  # no coordinates: not judged
        (H_A, "2026-11-24T09:10:00+08:00", False),  # the same hospital
        (H_B, "2026-11-25T09:10:00+08:00", False),  # the next day
        (H_B, "2026-11-23T23:50:00-02:00", True),  # 09:50 in Beijing, another day in its own offset
    ],
)
def test_impersonation_near_misses(hospital: str, setl_time: str, found: bool) -> None:
    conn = centre()
    add(conn, visit("A1", setl_time="2026-11-24T09:00:00+08:00", setl_date="2026-11-24"))
    add(conn, visit("X1", fixmedins_code=hospital, setl_time=setl_time), screened=False)
    hits = run_rule(conn, rule("impersonation_distance", {"max_minutes": 50 if "-02:00" in setl_time else 30,
                                                         "min_km": 50}))  # fmt: skip
    assert keys(hits) == ([("P1", "A1")] if found else [])


# -- 15 care after death -----------------------------------------------------------------------


def test_care_after_death_beyond_the_grace_days() -> None:
    conn = centre()
    conn.executemany(
        "INSERT INTO deaths VALUES (?, ?, ?, ?)",
        [("P1", "2026-11-01", "civil registry", "2026-11-20T10:00:00+08:00"),
         ("P2", "2026-11-20", "civil registry", "2026-11-21T10:00:00+08:00")],
    )  # fmt: skip
    add(
        conn,
        stay("S1", "2026-10-25", "2026-11-03"),  # admitted before death, settled after: not care after death
        visit("S2", begn_date="2026-11-01"),  # the day of death: inside grace 0
        visit("S3", begn_date="2026-11-04"),
        visit("S4", psn_no="P2", begn_date="2026-11-22"),
        visit("S5", psn_no="P3", begn_date="2026-11-22"),  # alive
        visit("S6", psn_no="P2", begn_date=None),  # unknown start: not judged
    )
    hits = run_rule(conn, rule("care_after_death", {}))
    assert keys(hits) == [("P1", "S3"), ("P2", "S4")]
    assert hits[0].evidence == (
        {"death_date": "2026-11-01", "source": "civil registry", "begn_date": "2026-11-04", "value": 3,
         "threshold": 0},
    )  # fmt: skip
    assert hits[0].message == (
        f"This visit at {H_A} began on 2026-11-04, 3 days after the date of death on record (2026-11-01, "
        "source: civil registry)."
    )
    assert keys(run_rule(conn, rule("care_after_death", {"grace_days": 2}))) == [("P1", "S3")]
    assert keys(run_rule(conn, rule("care_after_death", {"grace_days": 3}))) == []
    assert keys(run_rule(conn, rule("care_after_death", {}, insutypes=["390"]))) == []


# -- 16 bed-hanging ----------------------------------------------------------------------------


def _lines(
    conn: sqlite3.Connection, setl_id: str, items: list[tuple[str, str | None]], psn_no: str = "P1"
) -> None:
    held = conn.execute("SELECT * FROM cur_visits WHERE setl_id = ?", (setl_id,)).fetchone()
    v = dict(zip(VISIT_COLUMNS, held, strict=True))
    rows = []
    for sn, (code, fee_date) in enumerate(items, start=1):
        line = {
            "psn_no": psn_no, "fixmedins_code": v["fixmedins_code"], "setl_id": setl_id,
            "setl_date": v["setl_date"], "begn_date": v["begn_date"], "med_type": v["med_type"],
            "dise_codg": v["dise_codg"], "dr_codg": "D1", "dept_codg": "A03.04", "hosp_lv": v["hosp_lv"],
            "feedetl_sn": str(sn), "med_list_codg": code, "list_type": "201", "cnt": 1.0, "pric_fen": 100,
            "amount_fen": 100, "days": None, "fee_date": fee_date,
            "gend": "1", "brdy": "1958-04-02", "insutype": "310", "psn_type": "11",
        }  # fmt: skip
        assert list(line) == list(CURRENT_COLUMNS)
        rows.append(tuple(line.values()))
    conn.executemany(f"INSERT INTO cur_lines VALUES ({', '.join('?' * len(CURRENT_COLUMNS))})", rows)


def _days_of(start: int, count: int) -> list[str]:
    return [f"2026-11-{day:02d}" for day in range(start, start + count)]


@pytest.mark.parametrize(("treated", "found"), [(7, True), (8, False)])
def test_bed_hanging_counts_the_days_without_treatment(treated: int, found: bool) -> None:
    r = rule("bed_hanging", {"min_idle_days": 3, "idle_codes": [BED, NURSING]})
    conn = centre()
    add(conn, stay("S1", "2026-11-10", "2026-11-20"))  # 10 days
    items = [(BED, d) for d in _days_of(10, 10)] + [(NURSING, d) for d in _days_of(10, 10)]
    items += [(CT_SCAN, d) for d in _days_of(10, treated)] + [
        (INFUSION, "2026-11-10"),
        (INFUSION, "2026-11-25"),
    ]
    _lines(conn, "S1", items)
    hits = run_rule(conn, r)
    assert keys(hits) == ([("P1", "S1")] if found else [])
    if found:
        assert hits[0].evidence == (
            {"begn_date": "2026-11-10", "end_date": "2026-11-20", "stay_days": 10, "treatment_days": 7,
             "value": 3, "threshold": 3},
        )  # fmt: skip
        assert hits[0].message == (
            f"An inpatient stay at {H_A} from 2026-11-10 to 2026-11-20 (10 days) has treatment on 7 days "
            "only: 3 days with no more than bed, nursing or meals; the rule flags 3 days or more."
        )


def test_bed_hanging_needs_fee_dates_and_looks_at_inpatient_stays() -> None:
    r = rule("bed_hanging", {"min_idle_days": 3, "idle_codes": [BED]})
    conn = centre()
    add(conn, stay("S1", "2026-11-10", "2026-11-20"), stay("S2", "2026-11-10", "2026-11-20", psn_no="P2"))
    add(conn, visit("S3", psn_no="P3", begn_date="2026-11-10", end_date="2026-11-20"))  # outpatient med_type
    _lines(conn, "S1", [(BED, None), (CT_SCAN, None)])  # the HIS sent no fee_ocur_time: not judged
    _lines(conn, "S2", [(BED, "2026-11-10"), (CT_SCAN, "2026-11-12")], psn_no="P2")
    _lines(conn, "S3", [(BED, "2026-11-10"), (CT_SCAN, "2026-11-12")], psn_no="P3")
    assert keys(run_rule(conn, r)) == [("P2", "S2")]
    assert keys(run_rule(conn, rule("bed_hanging", {"min_idle_days": 3, "idle_codes": [BED]},
                                    med_types=["11"]))) == [("P3", "S3")]  # fmt: skip


# -- 17 excessive cost -------------------------------------------------------------------------


def _peers(conn: sqlite3.Connection, n: int, cost: int = 1000, **fields: Any) -> None:
    for i in range(n):
        day = f"2026-{10 + i // 28:02d}-{1 + i % 28:02d}"
        add(conn, visit(f"Q{i}", psn_no=f"Q{i}", setl_time=f"{day}T10:00:00+08:00", medfee_sumamt=cost,
                        dise_codg="I10.x05", **fields), screened=False)  # fmt: skip


@pytest.mark.parametrize(("cost", "peers", "found"), [(4001, 20, True), (4000, 20, False), (9000, 19, False)])
def test_excessive_cost_against_the_peer_median(cost: int, peers: int, found: bool) -> None:
    r = rule("excessive_cost", {"peer_ratio": "4"})
    conn = centre()
    _peers(conn, peers)
    add(conn, visit("S1", medfee_sumamt=cost))
    # not peers: another level, another medical type, another category, the same day, too long ago
    add(conn, visit("N1", psn_no="N1", hosp_lv="2", setl_time="2026-11-20T10:00:00+08:00", medfee_sumamt=1),
        visit("N2", psn_no="N2", med_type="14", setl_time="2026-11-20T10:00:00+08:00", medfee_sumamt=1),
        visit("N3", psn_no="N3", dise_codg="I20.000", setl_time="2026-11-20T10:00:00+08:00", medfee_sumamt=1),
        visit("N4", psn_no="N4", medfee_sumamt=1),
        visit("N5", psn_no="N5", setl_time="2025-11-23T10:00:00+08:00", medfee_sumamt=1),
        screened=False)  # fmt: skip
    hits = run_rule(conn, r)
    assert keys(hits) == ([("P1", "S1")] if found else [])
    if found:
        assert hits[0].evidence == (
            {"kind": "peer_ratio", "value": 4001, "threshold": 4000, "peer_median": 1000.0, "peers": 20,
             "peer_ratio": "4", "med_type": "11", "hosp_lv": "3"},
        )  # fmt: skip
        assert hits[0].message == (
            f"This visit at {H_A} on 2026-11-24 cost 40.01 yuan, 4 times the median of 20 similar visits in "
            "the 365 days before (same diagnosis category, medical type and hospital level: 10.00 yuan); the "
            "rule flags more than 4 times."
        )


def test_the_peer_median_of_an_even_count_and_the_fixed_limit() -> None:
    conn = centre()
    _peers(conn, 10, cost=1000)
    _peers_high = [visit(f"R{i}", psn_no=f"R{i}", setl_time="2026-11-01T10:00:00+08:00", medfee_sumamt=3000,
                         dise_codg="I10.x05") for i in range(10)]  # fmt: skip
    add(conn, *_peers_high, screened=False)
    add(conn, visit("S1", medfee_sumamt=4001), visit("S2", psn_no="P2", medfee_sumamt=5001))
    # 20 peers: ten of 10.00 and ten of 30.00 yuan, median 20.00 yuan
    hits = run_rule(conn, rule("excessive_cost", {"peer_ratio": "2.5", "min_peers": 20}))
    assert keys(hits) == [("P2", "S2")] and hits[0].evidence[0]["peer_median"] == 2000.0
    hits = run_rule(conn, rule("excessive_cost", {"max_fen": 5000}))
    assert keys(hits) == [("P2", "S2")]
    assert hits[0].evidence == ({"kind": "max_fen", "value": 5001, "threshold": 5000},)
    assert (
        hits[0].message
        == f"This visit at {H_A} on 2026-11-24 cost 50.01 yuan, above the limit of 50.00 yuan."
    )
    assert run_rule(conn, rule("excessive_cost", {"max_fen": 5001})) == []
    assert run_rule(conn, rule("excessive_cost", {"max_fen": 5000}, med_types=["21"])) == []


def test_peer_medians_computed_once_give_the_sqls_hits() -> None:
    """The screening engine's one-pass peer medians (``peer_medians`` into ``cur_peer_medians``) and the
    rule's own SQL find the same visits with the same evidence, over many groups, dates and costs."""
    import random
    from datetime import date, timedelta

    from protocol.rules.centre import PEER_MEDIANS_DDL, compile_excessive_given, peer_medians
    from protocol.rules.templates import hits_from_rows

    rnd = random.Random(3)
    conn = centre()
    conn.execute(PEER_MEDIANS_DDL)
    start = date(2026, 1, 1)
    for i in range(1500):
        day = (start + timedelta(days=rnd.randrange(120))).isoformat()
        v = visit(f"V{i}", psn_no=f"P{i}", setl_time=f"{day}T10:00:00+08:00", hosp_lv=rnd.choice("23"),
                  med_type=rnd.choice(("11", "14")), dise_codg=rnd.choice(("I10.x00", "E11.900", "J06.900")),
                  medfee_sumamt=int(rnd.lognormvariate(8, 1)))  # fmt: skip
        add(conn, v, screened=day >= "2026-03-01")
    for peer_days, min_peers in ((30, 5), (45, 20)):
        r = rule("excessive_cost", {"peer_ratio": "2.5", "peer_days": peer_days, "min_peers": min_peers})
        expected = run_rule(conn, r)
        rows = conn.execute(
            "SELECT substr(dise_main, 1, 3), hosp_lv, med_type, setl_date, medfee_sumamt FROM hist_visits "
            "ORDER BY 1, 2, 3, 4"
        ).fetchall()
        dates = [d for (d,) in conn.execute("SELECT DISTINCT setl_date FROM cur_visits")]
        conn.execute("DELETE FROM cur_peer_medians")
        conn.executemany(
            "INSERT INTO cur_peer_medians VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(peer_days, *m) for m in peer_medians(rows, dates, peer_days)],
        )
        compiled = compile_excessive_given(r)
        cur = conn.execute(compiled.sql, compiled.params)
        columns = [d[0] for d in cur.description]
        given = hits_from_rows(r, [dict(zip(columns, row, strict=True)) for row in cur.fetchall()])
        assert len(expected) > 10 and given == expected


# -- 18 peer outlier ---------------------------------------------------------------------------


def _doctor(conn: sqlite3.Connection, dr: str, visits: int, patients: int, *, screened_last: bool = False,
            dept: str = "A03.04", lv: str = "3") -> None:  # fmt: skip
    rows = [
        visit(f"{dr}-{i:02d}", psn_no=f"{dr}-P{i % patients}", dr_codg=dr, dept_codg=dept, hosp_lv=lv,
              setl_time=f"2026-11-{1 + i % 20:02d}T10:00:00+08:00", medfee_sumamt=1000)
        for i in range(visits)
    ]  # fmt: skip
    add(conn, *rows[:-1], screened=False)
    add(conn, rows[-1], screened=screened_last)


@pytest.mark.parametrize(("patients", "visits", "found"), [(5, 10, True), (6, 10, False), (5, 9, False)])
def test_a_doctor_far_above_the_department_median(patients: int, visits: int, found: bool) -> None:
    conn = centre()
    for dr in ("D2", "D3", "D4"):
        _doctor(conn, dr, 10, 10, screened_last=True)  # 1 visit per patient
    _doctor(conn, "D5", 10, 2, dept="A04.01")  # another department: not a peer
    _doctor(conn, "D1", visits, patients, screened_last=True)  # 2.0 (found) or 1.67, or 9 visits (too few)
    r = rule(
        "peer_outlier", {"measure": "visits_per_patient", "ratio": "2", "min_visits": 10}, object="doctor"
    )
    hits = run_rule(conn, r)
    if not found:
        assert hits == []
        return
    (hit,) = hits
    assert hit.setl_id == "D1-09" and hit.psn_no == "D1-P4"  # its latest visit in the batch
    assert hit.evidence == (
        {"object_id": "D1", "measure": "visits_per_patient", "value": 2.0, "threshold": 2.0,
         "peer_median": 1.0, "peers": 3, "visits": 10, "dept_codg": "A03.04", "hosp_lv": "3",
         "window_from": "2026-08-13", "window_to": "2026-11-10", "ratio": "2"},
    )  # fmt: skip
    assert hit.message == (
        "Doctor D1: visits per patient 2 over 10 visits from 2026-08-13 to 2026-11-10, 2 times the median of "
        "3 peers (department A03.04 at level-3 hospitals: 1); the rule flags 2 times or more."
    )


def test_hospitals_and_departments_by_cost_and_drug_share() -> None:
    conn = centre()
    for i, (hosp, drug) in enumerate([(H_A, 8000), (H_B, 1000), (H_C, 1000), (H_NOWHERE, 1500)]):
        rows = [
            visit(f"{hosp}-{j}", psn_no=f"P{i}{j}", fixmedins_code=hosp, drug_fen=drug, medfee_sumamt=10_000)
            for j in range(3)
        ]
        add(conn, *rows, screened=hosp == H_A)
    conn.execute("UPDATE hist_visits SET hosp_lv = '3'")
    conn.execute("UPDATE cur_visits SET hosp_lv = '3'")
    share = {"measure": "drug_share", "ratio": "5", "days": 30, "min_visits": 3}
    (hit,) = run_rule(conn, rule("peer_outlier", share, object="hospital"))
    assert hit.evidence[0]["object_id"] == H_A and hit.evidence[0]["peer_median"] == 0.1
    assert "drug share of the cost 80.0 % over 3 visits" in hit.message
    (hit,) = run_rule(conn, rule("peer_outlier", share, object="department"))
    assert hit.evidence[0]["object_id"] == f"{H_A}/A03.04"
    assert run_rule(conn, rule("peer_outlier", share | {"ratio": "8.1"}, object="hospital")) == []
    cost = {"measure": "cost_per_visit", "ratio": "1", "days": 30, "min_visits": 3}
    (hit,) = run_rule(conn, rule("peer_outlier", cost, object="hospital"))  # equal to the median: "or more"
    assert "cost per visit 100.00 yuan" in hit.message


# -- a population: many persons in one batch ---------------------------------------------------


def test_a_batch_of_many_persons_gives_each_persons_hits() -> None:
    conn = centre()
    conn.executemany(
        "INSERT INTO deaths VALUES (?, ?, 'civil registry', '2026-11-20T10:00:00+08:00')",
        [(f"P{i}", "2026-11-01") for i in range(0, 30, 3)],
    )
    expected_death, expected_readmission = [], []
    for i in range(30):
        psn = f"P{i}"
        add(conn, stay(f"{psn}-A", "2026-10-01", "2026-10-20", psn_no=psn), screened=False)
        gap = 10 if i % 2 else 20
        begn = f"2026-10-{20 + gap}" if gap == 10 else "2026-11-09"
        add(conn, stay(f"{psn}-B", begn, "2026-11-15", psn_no=psn))
        if i % 3 == 0 and begn > "2026-11-01":
            expected_death.append((psn, f"{psn}-B"))
        if i % 2:
            expected_readmission.append((psn, f"{psn}-B"))
    assert keys(run_rule(conn, rule("care_after_death", {}))) == sorted(expected_death)
    assert keys(run_rule(conn, rule("readmission", {"within_days": 15}))) == sorted(expected_readmission)


# -- fee_date: fee_ocur_time from the HIS to hist_lines --------------------------------------


def test_fee_ocur_time_becomes_the_lines_fee_date(settlement: dict) -> None:
    settlement["feedetl"][0]["fee_ocur_time"] = "2026-11-23T23:30:00+08:00"
    record, _ = parse_settlement(json.dumps(settlement).encode())
    assert record.feedetl[0].fee_ocur_time == "2026-11-23T23:30:00+08:00"
    rows = history_rows_from_settlement(record, "3")
    assert HIST_COLUMNS[-1] == "fee_date" and [r[-1] for r in rows][:1] == ["2026-11-23"]
    assert all(r[-1] is None for r in rows[1:])
    assert "fee_ocur_time" in FeeDetail.__struct_fields__
    settlement["feedetl"][0]["fee_ocur_time"] = "yesterday"
    with pytest.raises(ValidationFailed) as err:
        parse_settlement(json.dumps(settlement).encode())
    assert "feedetl[0].fee_ocur_time" in json.dumps(err.value.details)
    line = Line(feedetl_sn="1", med_list_codg=BED, cnt="1", fee_ocur_time="2026-11-24T08:00:00+08:00")
    assert bill(line).rows(TODAY)[0][CURRENT_COLUMNS.index("fee_date")] == "2026-11-24"


def test_the_agent_store_migration_adds_fee_date_to_an_older_hist_lines(tmp_path: Any) -> None:
    conn = agent_store.connect(tmp_path / "agent.db")
    try:
        db_migrations = agent_store.MIGRATIONS
        agent_store.MIGRATIONS = db_migrations[:2]  # an agent of schema 2
        try:
            agent_store.migrate(conn)
        finally:
            agent_store.MIGRATIONS = db_migrations
        conn.execute("ALTER TABLE hist_lines DROP COLUMN fee_date")  # as migration 2 made it before fee_date
        assert agent_store.migrate(conn) == 3
        assert [r[1] for r in conn.execute("PRAGMA table_info(hist_lines)")] == list(HIST_COLUMNS)
        assert agent_store.migrate(conn) == 3  # again: nothing to do
    finally:
        conn.close()
