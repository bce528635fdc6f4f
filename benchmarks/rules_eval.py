"""Rule evaluation at the edge: each sample rule over a 20-line bill, and ``evaluate`` per moment.

The setting of the test this replaces (``tests/protocol/test_rules_speed.py`` asserted it): a person
with ~90 days of history (15 visits, 6 lines each, the bill repeating some of the drugs) among
thousands of persons' history lines, and the sample catalogue grown by thousands of synthetic items;
the sample rules (``docs/samples/rules.json``) through ``protocol.rules.load_ruleset``. The database
is an SQLite file holding ``hist_lines`` and the ``kb_*`` tables as the agent's does.

Per rule: ``run_rule`` over ``cur_lines`` holding the bill (every edge template with SQL; the
centre's templates are measured by ``benchmarks/screen.py``), timed each run. Per moment:
``evaluate`` at ``pre`` and ``in`` (filling ``cur_lines`` included). Limit (the test's bound): 1 ms
per rule, so ``evaluate`` within 1 ms times the rules that apply.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

from _common import ROOT, Failed, emit, median, parse_args

from protocol.rules import (
    CURRENT_COLUMNS,
    HIST_COLUMNS,
    Bill,
    Line,
    applicable,
    create_current,
    ensure_tables,
    evaluate,
    install_knowledge,
    load_knowledge,
    load_ruleset,
    run_rule,
)

LIMIT_PER_RULE_S = 1e-3
SAMPLES = ROOT / "docs" / "samples"
TODAY = date(2026, 11, 24)
PSN = "P000042"


def _p(times: list[float], q: float) -> float:
    ordered = sorted(times)
    return ordered[int(q * (len(ordered) - 1))]


def build(path: Path, persons: int, items: int) -> tuple[sqlite3.Connection, Bill, int, int]:
    """The knowledge base, everyone's history and the checked person's bill; (conn, bill, lines, mine)."""
    rng = random.Random(11)
    doc = json.loads((SAMPLES / "catalogue.json").read_text(encoding="utf-8"))
    for i in range(items):
        list_type = rng.choice(["101", "201", "301"])
        item = {
            "code": f"XZ{i:08d}SYN",
            "name": f"synthetic item {i}",
            "list_type": list_type,
            "class": "A",
            "price_ceiling": {"1": 1000, "2": 1100, "3": 1200},
        }
        if list_type == "101":
            item |= {"drug_class": f"Z{i % 300:03d}", "max_days_acute": 7, "max_days_chronic": 30}
        if i % 10 == 0:
            item["restrictions"] = {"indications": ["E11", "I10"], "age_min": 18}
        doc["items"].append(item)
    knowledge = load_knowledge(doc)
    conn = sqlite3.connect(path)
    ensure_tables(conn)
    install_knowledge(conn, knowledge)
    conn.commit()
    codes = list(knowledge.items)
    drugs = [c for c, i in knowledge.items.items() if i.list_type == "101"]
    regular = rng.sample(drugs, 20)  # the checked person's usual drugs: the bill repeats some of them
    marks = ", ".join("?" * len(HIST_COLUMNS))
    insert = f"INSERT INTO hist_lines ({', '.join(HIST_COLUMNS)}) VALUES ({marks})"
    total = mine = 0
    conn.execute("BEGIN")
    for p in range(persons):
        psn = PSN if p == 42 else f"P{p:06d}"
        is_me = psn == PSN
        rows = []
        for s in range(15 if is_me else rng.randint(4, 10)):
            day = (TODAY - timedelta(days=rng.randint(1, 90))).isoformat()
            for sn in range(6 if is_me else rng.randint(3, 8)):
                code = rng.choice((regular if is_me else drugs) if sn < 3 else codes)
                line = {
                    "psn_no": psn,
                    "fixmedins_code": f"H{rng.randint(1, 40):03d}",
                    "setl_id": f"{psn}-{s}",
                    "setl_date": day,
                    "begn_date": day,
                    "med_type": "11",
                    "dise_codg": "I10.x00,E11.900",
                    "dr_codg": None,
                    "dept_codg": None,
                    "hosp_lv": "3",
                    "feedetl_sn": str(sn),
                    "med_list_codg": code,
                    "list_type": "101",
                    "cnt": 1.0,
                    "pric_fen": 500,
                    "amount_fen": 500,
                    "days": rng.choice([7, 14, 28]) if code in drugs else None,
                    "fee_date": None,
                }
                rows.append(tuple(line[c] for c in HIST_COLUMNS))  # by name: a new column shifts nothing
        conn.executemany(insert, rows)
        total += len(rows)
        mine += len(rows) if is_me else 0
    conn.execute("COMMIT")
    lines = [
        Line(feedetl_sn=str(i + 1), med_list_codg=code, cnt="2", pric="5", days=28 if code in drugs else None)
        for i, code in enumerate(rng.sample(regular, 6) + rng.sample(drugs, 6) + rng.sample(codes, 8))
    ]
    bill = Bill(
        lines=tuple(lines), psn_no=PSN, gend="1", brdy="1960-01-01", insutype="310", psn_type="11",
        med_type="11", dise_codg=("I10.x00", "E11.900"), begntime=f"{TODAY.isoformat()}T09:12:00+08:00",
        fixmedins_code="H37020200011", hosp_lv="3", dr_codg="D001", dept_codg="A03.04",
    )  # fmt: skip
    return conn, bill, total, mine


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--persons", type=int, default=20_000, help="persons in hist_lines (~38 lines each)")
    ap.add_argument("--items", type=int, default=4_000, help="synthetic catalogue items beside the sample's")
    ap.add_argument("--runs", type=int, default=1_000, help="timed runs of each rule")
    ap.add_argument("--evals", type=int, default=500, help="timed evaluate calls per moment")
    args = parse_args(ap, persons=300, items=300, runs=30, evals=20)
    rules = load_ruleset(json.loads((SAMPLES / "rules.json").read_text(encoding="utf-8")))
    with tempfile.TemporaryDirectory(prefix="bench-rules-") as d:
        t = time.perf_counter()
        conn, bill, history, mine = build(Path(d) / "agent.db", args.persons, args.items)
        setup_s = time.perf_counter() - t
        items = conn.execute("SELECT count(*) FROM kb_items").fetchone()[0]

        create_current(conn)
        marks = ", ".join("?" * len(CURRENT_COLUMNS))
        conn.executemany(f"INSERT INTO cur_lines VALUES ({marks})", bill.rows(TODAY))
        conn.commit()
        per_rule: dict[str, tuple[float, float]] = {}
        templates: dict[str, str] = {}
        for rule in rules.rules:
            if not rule.spec.sql or rule.spec.centre:
                continue
            run_rule(conn, rule)  # warm: the statement cache, the pages
            times = []
            for _ in range(args.runs):
                start = time.perf_counter()
                run_rule(conn, rule)
                times.append(time.perf_counter() - start)
            per_rule[rule.id] = (median(times), _p(times, 0.99))
            templates[rule.id] = rule.template
        conn.execute("DELETE FROM cur_lines")
        conn.commit()

        moments = {}
        for moment in ("pre", "in"):
            hits = evaluate(conn, rules, bill, moment=moment, today=TODAY)
            times = []
            for _ in range(args.evals):
                start = time.perf_counter()
                evaluate(conn, rules, bill, moment=moment, today=TODAY)
                times.append(time.perf_counter() - start)
            count = len(applicable(rules, bill, moment=moment))
            moments[moment] = (median(times), _p(times, 0.99), count, len(hits))
        conn.close()
    if not moments["pre"][3]:
        raise Failed("the bill repeats the person's drugs, yet evaluate at 'pre' found nothing")

    slowest = max(per_rule, key=lambda r: per_rule[r][0])
    worst_median = per_rule[slowest][0] * 1e6
    emit(
        "rules_eval_rule_median_max_us",
        worst_median,
        "us",
        ratio=worst_median / (LIMIT_PER_RULE_S * 1e6),
        ratio_to="test_bound_1_ms_per_rule",
        rule=slowest,
        rules=len(per_rule),
        runs=args.runs,
        history_lines=history,
        person_lines=mine,
        kb_items=items,
        bill_lines=len(bill.lines),
        note="the slowest edge rule's median run_rule over the bill",
    )
    worst_p99 = max(p99 for _, p99 in per_rule.values()) * 1e6
    emit("rules_eval_rule_p99_max_us", worst_p99, "us", ratio=worst_p99 / (LIMIT_PER_RULE_S * 1e6),
         ratio_to="test_bound_1_ms_per_rule")  # fmt: skip
    for moment, (med, p99, count, hits) in moments.items():
        limit_ms = count * LIMIT_PER_RULE_S * 1e3
        bound = f"test_bound_{count}_rules_x_1_ms"
        emit(f"rules_eval_evaluate_{moment}_median_ms", med * 1e3, "ms", ratio=med * 1e3 / limit_ms,
             ratio_to=bound, rules=count, hits=hits, calls=args.evals)  # fmt: skip
        emit(f"rules_eval_evaluate_{moment}_p99_ms", p99 * 1e3, "ms", ratio=p99 * 1e3 / limit_ms,
             ratio_to=bound)  # fmt: skip
    for rule_id, (med, p99) in per_rule.items():
        emit(f"rules_eval_rule_{rule_id}_median_us", med * 1e6, "us", ratio=med / LIMIT_PER_RULE_S,
             template=templates[rule_id], p99_us=round(p99 * 1e6, 1))  # fmt: skip
    emit("rules_eval_setup_s", setup_s, "s", note="building the catalogue and history; not the measure")
    return 0


if __name__ == "__main__":
    sys.exit(main())
