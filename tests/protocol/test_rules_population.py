"""One SQL text, two places: the centre runs a rule over a batch of many persons' settlements and finds
exactly what the agent finds checking each of those bills alone against that person's history.

A seeded population (60 days, many persons, several hospitals and levels, every kind of violation
sprinkled in) goes into ``hist_lines``. The centre's way: ``cur_lines`` holds the last 20 days of
settlements of everyone, each rule runs once (``run_rule``). The agent's way: for each of those
settlements, a database holding only that person's other settlements, and ``evaluate`` of the bill.
The hits must be the same, rule by rule, person by person, settlement by settlement, to the message.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import date, timedelta
from typing import Any

from protocol.rules import (
    CURRENT_COLUMNS,
    HIST_COLUMNS,
    Bill,
    Hit,
    Line,
    RuleSet,
    create_current,
    evaluate,
    run_rule,
)

from .rules_kit import (
    AMLODIPINE,
    CELECOXIB,
    CLOPIDOGREL,
    GENERAL_CONSULT,
    HBA1C,
    IBUPROFEN,
    INSULIN,
    KB,
    NIFEDIPINE,
    OMEPRAZOLE,
    PAED_PARACETAMOL,
    PROGESTERONE,
    PSA,
    ROSUVASTATIN,
    SPECIALIST_CONSULT,
    TODAY,
    WARD_ROUND,
    connect,
    rule_doc,
    ruleset,
)

HOSPITALS = [("H37020200011", "3"), ("H37020300002", "2"), ("H37021100003", "1"), ("H37021200004", "3")]
DIAGNOSES = ["I10.x00", "E11.900", "E78.500", "J06.900", "M54.500", "K29.700", "I25.103", "M17.000"]
DRUGS = [c for c, i in KB.items.items() if i.list_type in ("101", "102") and not c.startswith("XG")]
SERVICES = [c for c, i in KB.items.items() if i.list_type == "201"]
INSERT = f"INSERT INTO hist_lines ({', '.join(HIST_COLUMNS)}) VALUES ({', '.join('?' * len(HIST_COLUMNS))})"
CURRENT = f"INSERT INTO cur_lines VALUES ({', '.join('?' * len(CURRENT_COLUMNS))})"
HIST = len(HIST_COLUMNS)


def _population(seed: int = 7, persons: int = 45) -> list[tuple]:
    """Rows of ``CURRENT_COLUMNS``: the history columns, then the person's attributes."""
    rng = random.Random(seed)
    rows: list[tuple] = []
    for p in range(persons):
        psn = f"P{p:04d}"
        gend = rng.choice("12")
        brdy = rng.choice(["1950-03-01", "1972-07-15", "1990-11-30", "2010-06-01", "2014-12-24"])
        insutype = rng.choice(["310", "390"])
        regular = rng.sample(DRUGS, 3)
        busy = rng.random() < 0.2  # many visits in a short time
        for s in range(rng.randint(6, 14) if busy else rng.randint(2, 7)):
            day = TODAY - timedelta(days=rng.randint(0, 12 if busy else 60))
            hosp, lv = rng.choice(HOSPITALS)
            med_type = rng.choice(["11", "11", "11", "14", "21", "41"])
            begn = day - timedelta(days=rng.randint(3, 12)) if med_type == "21" else day
            dise = ",".join(rng.sample(DIAGNOSES, rng.choice([1, 1, 2])))
            items: list[tuple[str, float, int | None, int | None]] = []  # code, cnt, days, pric_fen
            for code in rng.sample(regular, rng.randint(1, 3)):
                items.append((code, float(rng.choice([1, 2, 3])), rng.choice([7, 14, 28, 30, 56, 84]), None))
            if med_type != "41":
                items.append((rng.choice([GENERAL_CONSULT, SPECIALIST_CONSULT]), 1.0, None, None))
            extras = [
                (GENERAL_CONSULT, 1.0, None, None),
                (HBA1C, 1.0, None, None),
                (AMLODIPINE, 1.0, 28, None),
                (NIFEDIPINE, 4.0, 28, None),
                (CLOPIDOGREL, 4.0, 28, None),
                (OMEPRAZOLE, 2.0, 14, None),
                (CELECOXIB, 1.0, 6, None),
                (IBUPROFEN, 1.0, 10, None),
                (PROGESTERONE, 1.0, 1, None),
                (PSA, 1.0, None, None),
                (PAED_PARACETAMOL, 1.0, 7, None),
                (ROSUVASTATIN, 1.0, 28, None),
                (INSULIN, 1.0, 30, None),
                (HBA1C, 1.0, None, 4951),
                ("XZ0000000042", 1.0, None, None),
                (WARD_ROUND, float(rng.randint(1, 16)), None, None),
            ]
            items += rng.sample(extras, rng.randint(0, 3))
            for sn, (code, cnt, days, pric) in enumerate(items, start=1):
                if pric is None:
                    ceilings = KB.items[code].price_ceiling if code in KB.items else {}
                    pric = ceilings.get(lv, 500) - rng.choice([0, 0, 5])
                rows.append(
                    (
                        psn,
                        hosp,
                        f"{psn}-{s:02d}",
                        day.isoformat(),
                        begn.isoformat(),
                        med_type,
                        dise,
                        f"D{rng.randint(1, 9)}",
                        "A03.04",
                        lv,
                        str(sn),
                        code,
                        "101" if days else "201",
                        cnt,
                        pric,
                        round(cnt * pric),
                        days,
                        None,
                        gend,
                        brdy,
                        insutype,
                        "11",
                    )
                )
    return rows


def _rules() -> RuleSet:
    return ruleset(
        rule_doc(
            "duplicate_medication",
            id="dup_code",
            window_days=60,
            params={"match": "code", "min_overlap_days": 3},
        ),
        rule_doc(
            "duplicate_medication",
            id="dup_class",
            window_days=45,
            params={"match": "class"},
            med_types=["11", "14"],
        ),
        rule_doc("over_quantity", insutypes=["310"]),
        rule_doc("frequency_limit"),
        rule_doc("repeated_charge", hosp_lvs=["2", "3"]),
        rule_doc("gender_restricted"),
        rule_doc("age_restricted"),
        rule_doc("restricted_indication", med_types=["11", "14", "21"]),
        rule_doc("price_over_ceiling", severity="block", action="refuse"),
        rule_doc("not_in_catalogue", params={"class_c": True}),
        rule_doc("drug_interaction", window_days=30, disease_prefixes=["I", "M17"]),
        rule_doc("frequent_visits", id="visits_week", med_types=["11"], params={"max_visits": 3, "days": 7}),
        rule_doc("frequent_visits", id="visits_any", params={"max_visits": 4, "days": 10}, mode="shadow"),
        rule_doc("gender_restricted", id="retired", mode="off"),
    )


def _key(hit: Hit, setl_id: str) -> tuple:
    evidence = sorted(json.dumps(e, sort_keys=True) for e in hit.evidence)
    return (
        hit.rule_id,
        hit.mode,
        hit.psn_no,
        setl_id,
        tuple(sorted(hit.lines)),
        hit.message,
        tuple(evidence),
    )


def _bill(rows: list[dict[str, Any]]) -> Bill:
    first = rows[0]
    return Bill(
        psn_no=first["psn_no"],
        gend=first["gend"],
        brdy=first["brdy"],
        insutype=first["insutype"],
        psn_type=first["psn_type"],
        med_type=first["med_type"],
        dise_codg=tuple(first["dise_codg"].split(",")),
        begntime=first["begn_date"],
        fixmedins_code=first["fixmedins_code"],
        hosp_lv=first["hosp_lv"],
        dr_codg=first["dr_codg"],
        dept_codg=first["dept_codg"],
        lines=tuple(
            Line(
                feedetl_sn=r["feedetl_sn"],
                med_list_codg=r["med_list_codg"],
                cnt=repr(r["cnt"]),
                pric=f"{r['pric_fen'] / 100:.2f}",
                list_type=r["list_type"],
                days=r["days"],
                amount_fen=r["amount_fen"],
            )
            for r in rows
        ),
    )


def test_the_centre_over_a_batch_finds_what_the_agent_finds_bill_by_bill() -> None:
    rows = _population()
    rules = _rules()
    since = (TODAY - timedelta(days=20)).isoformat()

    # the centre: everything ingested is history (the contract's columns); the batch is the last 20
    # days of everyone's settlements, with each settlement's person attributes joined in
    centre = connect()
    centre.executemany(INSERT, [r[:HIST] for r in rows])
    centre.execute("CREATE TABLE setl_persons (setl_id TEXT PRIMARY KEY, gend, brdy, insutype, psn_type)")
    centre.executemany(
        "INSERT OR IGNORE INTO setl_persons VALUES (?, ?, ?, ?, ?)", [(r[2], *r[HIST:]) for r in rows]
    )
    create_current(centre)
    centre.execute(
        "INSERT INTO cur_lines SELECT h.*, p.gend, p.brdy, p.insutype, p.psn_type FROM hist_lines AS h"
        " JOIN setl_persons AS p ON p.setl_id = h.setl_id WHERE h.setl_date >= ?",
        (since,),
    )
    centre.commit()
    batch = centre.execute("SELECT count(DISTINCT setl_id), count(DISTINCT psn_no) FROM cur_lines").fetchone()
    assert batch[0] >= 100 and batch[1] >= 30
    population = {
        _key(hit, hit.setl_id) for rule in rules.rules if rule.mode != "off" for hit in run_rule(centre, rule)
    }

    # the agent: each bill alone, with that person's other settlements as history
    per_bill: set[tuple] = set()
    by_setl: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_setl.setdefault(row[2], []).append(dict(zip(CURRENT_COLUMNS, row, strict=True)))
    for setl_id, lines in sorted(by_setl.items()):
        if lines[0]["setl_date"] < since:
            continue
        edge = connect()
        edge.executemany(INSERT, [r[:HIST] for r in rows if r[0] == lines[0]["psn_no"] and r[2] != setl_id])
        edge.commit()
        day = date.fromisoformat(lines[0]["setl_date"])
        for hit in evaluate(edge, rules, _bill(lines), moment="post", today=day):
            assert hit.setl_id == "CURRENT"
            per_bill.add(_key(hit, setl_id))
        edge.close()

    assert population == per_bill
    found = Counter(RULE_TEMPLATES[k[0]] for k in population)
    assert set(found) == {r.template for r in rules.rules if r.mode != "off"}, (
        found
    )  # templates 1-11 all fire
    assert all(k[1] == "shadow" for k in population if k[0] == "visits_any")


RULE_TEMPLATES = {r.id: r.template for r in _rules().rules}


def test_filters_apply_per_settlement_inside_one_batch() -> None:
    """A batch mixes persons and settlements that a rule's filters treat differently."""
    conn = connect()
    base = (
        "H1",
        "S?",
        "2026-11-24",
        "2026-11-24",
        "11",
        "I10.x00",
        "D1",
        "A1",
        "3",
        "1",
        PROGESTERONE,
        "101",
        1.0,
        215,
        215,
        1,
        None,
        "1",
        "1960-01-01",
        "310",
        "11",
    )
    variants = {
        "A": {},
        "B": {"med_type": "21"},
        "C": {"insutype": "390"},
        "D": {"hosp_lv": "1"},
        "E": {"dise_codg": "E11.900,I10.x00"},
        "F": {"dise_codg": "E11.900"},
        "G": {"gend": "2"},
    }
    create_current(conn)
    for name, change in variants.items():
        values = (
            dict(zip(CURRENT_COLUMNS, ("P" + name, *base), strict=True)) | change | {"setl_id": "S" + name}
        )
        conn.execute(CURRENT, list(values.values()))
    rule = ruleset(
        rule_doc(
            "gender_restricted", med_types=["11"], insutypes=["310"], hosp_lvs=["3"], disease_prefixes=["I10"]
        )
    ).rules[0]
    assert sorted(h.setl_id for h in run_rule(conn, rule)) == ["SA", "SE"]


def test_hits_are_keyed_by_person_and_settlement() -> None:
    conn = connect()
    create_current(conn)
    for psn, setl in (("P1", "S1"), ("P1", "S2"), ("P2", "S3")):
        row = (
            psn,
            "H1",
            setl,
            "2026-11-24",
            "2026-11-24",
            "11",
            "I10.x00",
            None,
            None,
            "3",
            "1",
            GENERAL_CONSULT,
            "201",
            1.0,
            1200,
            1200,
            None,
            None,
            "1",
            "1960-01-01",
            "310",
            "11",
        )
        conn.execute(CURRENT, row)
        conn.execute(
            CURRENT,
            (*row[:10], "2", *row[11:]),
        )
    hits = run_rule(conn, ruleset(rule_doc("frequency_limit")).rules[0])
    assert sorted((h.psn_no, h.setl_id, h.lines) for h in hits) == [
        ("P1", "S1", ("1", "2")),
        ("P1", "S2", ("1", "2")),
        ("P2", "S3", ("1", "2")),
    ]
