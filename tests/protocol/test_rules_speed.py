"""Speed at the edge: a 20-line bill against a person's ~90 days of history, among thousands of persons'
history and a catalogue of thousands of items, is checked in well under a millisecond per rule.

The bound asserted here is loose (a missing index or a plan that scans ``hist_lines`` takes tens of
milliseconds at this size); the measured times print with ``pytest -s``.
"""

from __future__ import annotations

import random
import statistics
import time
from datetime import timedelta

from protocol.rules import CURRENT_COLUMNS, HIST_COLUMNS, Line, create_current, load_knowledge, run_rule
from protocol.rules.evaluate import applicable

from .rules_kit import TODAY, bill, check, connect, sample_catalogue, sample_rules
from .rules_kit import ruleset as _ruleset

PERSONS = 3000


def _setup():
    rng = random.Random(11)
    doc = sample_catalogue()
    for i in range(4000):
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
    conn = connect(knowledge)
    codes = list(knowledge.items)
    drugs = [c for c, i in knowledge.items.items() if i.list_type == "101"]
    regular = rng.sample(drugs, 20)  # the checked person's usual drugs: the bill repeats some of them
    rows = []
    for p in range(PERSONS):
        psn = f"P{p:06d}"
        mine = psn == "P000042"
        for s in range(15 if mine else rng.randint(4, 10)):
            day = (TODAY - timedelta(days=rng.randint(1, 90))).isoformat()
            for sn in range(6 if mine else rng.randint(3, 8)):
                code = rng.choice((regular if mine else drugs) if sn < 3 else codes)
                days = rng.choice([7, 14, 28]) if code in drugs else None
                rows.append(
                    (
                        psn,
                        f"H{rng.randint(1, 40):03d}",
                        f"{psn}-{s}",
                        day,
                        day,
                        "11",
                        "I10.x00,E11.900",
                        None,
                        None,
                        "3",
                        str(sn),
                        code,
                        "101",
                        1.0,
                        500,
                        500,
                        days,
                        None,
                    )
                )
    marks = ", ".join("?" * len(HIST_COLUMNS))
    conn.executemany(f"INSERT INTO hist_lines VALUES ({marks})", rows)
    conn.commit()
    lines = [
        Line(feedetl_sn=str(i + 1), med_list_codg=code, cnt="2", pric="5", days=28 if code in drugs else None)
        for i, code in enumerate(rng.sample(regular, 6) + rng.sample(drugs, 6) + rng.sample(codes, 8))
    ]
    b = bill(*lines, psn_no="P000042", dise_codg=("I10.x00", "E11.900"), brdy="1960-01-01")
    return conn, b, len(rows)


def test_each_rule_in_well_under_a_millisecond() -> None:
    conn, b, history = _setup()
    rules = _ruleset(*sample_rules()["rules"])
    person = conn.execute("SELECT count(*) FROM hist_lines WHERE psn_no = ?", (b.psn_no,)).fetchone()[0]
    create_current(conn)
    conn.executemany(f"INSERT INTO cur_lines VALUES ({', '.join('?' * len(CURRENT_COLUMNS))})", b.rows(TODAY))
    conn.commit()
    items = conn.execute("SELECT count(*) FROM kb_items").fetchone()[0]
    print(f"\nhistory {history} lines ({person} of this person), catalogue {items} items")
    medians = {}
    for rule in rules.rules:
        if (
            not rule.spec.sql or rule.spec.centre
        ):  # the centre's templates: tests/protocol/test_rules_centre.py
            continue
        run_rule(conn, rule)
        times = []
        for _ in range(200):
            start = time.perf_counter()
            run_rule(conn, rule)
            times.append(time.perf_counter() - start)
        medians[rule.id] = statistics.median(times)
        print(f"  {rule.id:28s} median {medians[rule.id] * 1e6:7.1f} µs")
    assert max(medians.values()) < 1e-3, medians
    conn.execute("DELETE FROM cur_lines")
    conn.commit()
    for moment in ("pre", "in"):
        times = []
        for _ in range(100):
            start = time.perf_counter()
            check(conn, rules, b, moment)
            times.append(time.perf_counter() - start)
        count = len(applicable(rules, b, moment=moment))
        print(f"  evaluate at {moment!r} ({count} rules): median {statistics.median(times) * 1e3:.2f} ms")
        assert statistics.median(times) < count * 1e-3
