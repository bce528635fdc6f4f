"""Shared helpers for the rule-library tests (no tests here): the sample knowledge base in a real
in-memory SQLite database, bills, history rows and one-rule rule sets built through the loader."""

from __future__ import annotations

import copy
import json
import sqlite3
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from protocol.rules import (
    HIST_COLUMNS,
    Bill,
    Hit,
    Knowledge,
    Line,
    RuleSet,
    ensure_tables,
    evaluate,
    install_knowledge,
    load_knowledge,
    load_ruleset,
)
from protocol.rules.definitions import TEMPLATES

SAMPLES = Path(__file__).resolve().parents[2] / "docs" / "samples"
TODAY = date(2026, 11, 24)
AREA = "370200"
HOSP = "H37020200011"

_CATALOGUE = json.loads((SAMPLES / "catalogue.json").read_text(encoding="utf-8"))
_RULES = json.loads((SAMPLES / "rules.json").read_text(encoding="utf-8"))
KB = load_knowledge(_CATALOGUE)

# codes of the sample catalogue the tests use
AMLODIPINE = "XC08CAA077A001010100001"  # C08CA, acute 30 / chronic 84 days
NIFEDIPINE = "XC08CAN062A012010100455"  # C08CA
CLOPIDOGREL = "XB01ACL057A001010101245"  # interacts with omeprazole (by code), major
OMEPRAZOLE = "XA02BCA211A010010102134"  # A02BC
PANTOPRAZOLE_INJ = "XA02BCP072B001010101540"  # A02BC, not in the clopidogrel interaction
ASPIRIN = "XB01ACA056A012010102653"  # B01AC06: with an NSAID (M01A), moderate
CELECOXIB = "XM01AHS004E001010105527"  # M01A, age >= 18, indications M05 M06 M15 M16 M17 M19
IBUPROFEN = "XM01AEB034A001010101067"  # M01A
AMOXICILLIN = "XJ01CAA040E001010101689"  # acute 7 / chronic 14 days
ACARBOSE = "XA10BFA022A001010102861"  # per tablet, at most 6 a day
INSULIN = "XA10AEG067B002010183412"  # indications E10, E11
ROSUVASTATIN = "XC10AAR124A001010100786"  # age >= 18
PAED_PARACETAMOL = "XN02BEA004L001010101902"  # age <= 12
PROGESTERONE = "XG03DAP078B002010100156"  # female only
PSA = "002503080020000"  # male only
GENERAL_CONSULT = "001102000010000"  # 1 per visit; included in the specialist consultation
SPECIALIST_CONSULT = "001102000030000"  # 1 per visit
WARD_ROUND = "001103000010000"  # 1 a day
HBA1C = "002503030030000"  # 1 per 90 days; ceiling 45.00 / 47.25 / 49.50 yuan at levels 1 / 2 / 3
AIRCON = "009900000010000"  # class C
CEFTRIAXONE = "XJ01DDT013B002010100208"
CALCIUM_GLUCONATE = "XA12AAG004B002010100431"  # with ceftriaxone: contraindicated


def sample_catalogue() -> dict[str, Any]:
    return copy.deepcopy(_CATALOGUE)


def sample_rules() -> dict[str, Any]:
    return copy.deepcopy(_RULES)


def connect(knowledge: Knowledge | None = KB) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    ensure_tables(conn)
    if knowledge is not None:
        install_knowledge(conn, knowledge)
    conn.commit()
    return conn


def rule_doc(template: str, **fields: Any) -> dict[str, Any]:
    """A valid rule of ``template`` (id = template) with ``fields`` replacing the defaults."""
    doc: dict[str, Any] = {
        "id": template,
        "version": 1,
        "template": template,
        "severity": "warn",
        "mode": "enforce",
        "action": "prompt",
        "moments": ["post"] if TEMPLATES[template].centre else ["pre", "in", "post"],
    }
    if TEMPLATES[template].window:
        doc["window_days"] = 90
    doc.update(fields)
    return doc


def ruleset(*rules: dict[str, Any]) -> RuleSet:
    return load_ruleset({"area": AREA, "format": 1, "rules": list(rules)})


def one(template: str, **fields: Any) -> RuleSet:
    return ruleset(rule_doc(template, **fields))


def line(sn: str, code: str, cnt: str = "1", pric: str = "1", days: int | None = None) -> Line:
    return Line(feedetl_sn=sn, med_list_codg=code, cnt=cnt, pric=pric, days=days)


def bill(*lines: Line, **fields: Any) -> Bill:
    values: dict[str, Any] = {
        "psn_no": "P1",
        "gend": "1",
        "brdy": "1958-04-02",
        "insutype": "310",
        "psn_type": "11",
        "med_type": "11",
        "dise_codg": ("I10.x00",),
        "begntime": f"{TODAY.isoformat()}T09:12:00+08:00",
        "fixmedins_code": HOSP,
        "hosp_lv": "3",
        "dr_codg": "D001",
        "dept_codg": "A03.04",
    }
    values.update(fields)
    return Bill(lines=tuple(lines), **values)


def days_ago(n: int) -> str:
    return (TODAY - timedelta(days=n)).isoformat()


def add_history(
    conn: sqlite3.Connection,
    setl_id: str,
    on: str,
    items: list[tuple[str, float, int | None]],
    *,
    psn_no: str = "P1",
    hosp: str = HOSP,
    med_type: str = "11",
    dise: str = "I10.x00",
    begn: str | None = None,
    hosp_lv: str = "3",
) -> None:
    """One past settlement: ``items`` as (code, cnt, days)."""
    rows = [
        (
            psn_no,
            hosp,
            setl_id,
            on,
            begn or on,
            med_type,
            dise,
            "D001",
            "A03.04",
            hosp_lv,
            str(i + 1),
            code,
            "101" if days else "201",
            float(cnt),
            100,
            round(cnt * 100),
            days,
            None,
        )
        for i, (code, cnt, days) in enumerate(items)
    ]
    marks = ", ".join("?" * len(HIST_COLUMNS))
    conn.executemany(f"INSERT INTO hist_lines ({', '.join(HIST_COLUMNS)}) VALUES ({marks})", rows)
    conn.commit()


def check(conn: sqlite3.Connection, rules: RuleSet, b: Bill, moment: str = "pre", **kw: Any) -> list[Hit]:
    return evaluate(conn, rules, b, moment=moment, today=kw.pop("today", TODAY), **kw)
