"""Risk per object: several rules beat one, no rule carries the score, tiny providers are shrunk."""

from __future__ import annotations

import dataclasses

from central.monitoring.risk import RULE_CAP, WEIGHTS, by_category, object_risk
from central.monitoring.suspicions import record_findings
from central.storage.store import Store

from . import monitor_helpers as helpers


def _visits(store: Store, hospital: str, n: int, fen: int, start: int = 0) -> None:
    rows = [(f"{hospital}-{i}", f"P{start + i:09d}", hospital, "110100", "2", "2026-11-24T10:00:00+08:00",
             "2026-11-24", "2026-11-24", "2026-11-24", "11", "J06.900", "J06.900", f"D-{hospital}", "A03.01",
             None, fen, 0, "1", "1970-01-01", "310", "11") for i in range(n)]  # fmt: skip
    store.write(lambda c: c.executemany(f"INSERT INTO hist_visits VALUES ({','.join('?' * 21)})", rows))


def _suspect(store: Store, hospital: str, rules: list[str], count: int) -> None:
    fs = []
    for rule in rules:
        for i in range(count):
            h = helpers.hit(rule, setl_id=f"{hospital}-{i}", psn_no=f"P{i:09d}")
            f = helpers.finding(h, hospital=hospital, object_id=f"P{i:09d}", setl_ids=(f"{hospital}-{i}",))
            fs.append(dataclasses.replace(f, anchor_date="2026-11-24", category=f"cat-{rule}"))
    store.write(lambda c: record_findings(c, fs, run_id=1, at="t"))


def test_several_rules_outrank_one_and_no_rule_carries_the_score(store: Store) -> None:
    for h in ("H1", "H2", "H3"):
        _visits(store, h, 100, 10_000, start={"H1": 0, "H2": 1000, "H3": 2000}[h])
    _suspect(store, "H1", ["R-A"], 40)  # one rule, many findings
    _suspect(store, "H2", ["R-A", "R-B", "R-C"], 10)  # three rules, fewer findings each
    rows = store.read(lambda c: object_risk(c, by="hospital", date_from="2026-11-01", date_to="2026-11-30"))
    order = [r.object_id for r in rows]
    assert order.index("H2") < order.index("H1") < order.index("H3")
    one = next(r for r in rows if r.object_id == "H1")
    assert one.parts["rules"] <= RULE_CAP and one.score <= 100 * (
        WEIGHTS["rules"] * RULE_CAP + WEIGHTS["money"]
    )
    three = next(r for r in rows if r.object_id == "H2")
    assert three.parts["combination_bonus"] > 0 and len(three.rules) == 3
    assert {r["rule_id"] for r in three.rules} == {"R-A", "R-B", "R-C"}  # explained: which rules, how many


def test_a_tiny_provider_is_shrunk_by_its_volume(store: Store) -> None:
    _visits(store, "BIG", 200, 10_000)
    _visits(store, "TINY", 3, 10_000, start=5000)
    _suspect(store, "BIG", ["R-A", "R-B"], 20)
    _suspect(store, "TINY", ["R-A", "R-B"], 3)
    rows = store.read(lambda c: object_risk(c, by="hospital", date_from="2026-11-01", date_to="2026-11-30"))
    assert rows[0].object_id == "BIG"
    tiny = next(r for r in rows if r.object_id == "TINY")
    assert tiny.parts["volume_shrink"] < 0.1


def test_findings_by_category(store: Store) -> None:
    _visits(store, "H1", 10, 10_000)
    _suspect(store, "H1", ["R-A", "R-B"], 2)
    cats = store.read(lambda c: by_category(c, date_from="2026-11-01", date_to="2026-11-30"))
    assert {c["category"]: c["holding"] for c in cats} == {"cat-R-A": 2, "cat-R-B": 2}
