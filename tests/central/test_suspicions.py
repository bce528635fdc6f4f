"""Suspicions: the fact key dedupes, shadow hits stay out of the queue, score and traffic light."""

from __future__ import annotations

import dataclasses
from typing import Any

from central.monitoring.suspicions import (
    Finding,
    fact_key,
    get_suspicion,
    list_suspicions,
    record_findings,
    score,
    severity,
)
from central.storage.store import Store
from protocol.rules import Hit

from . import monitor_helpers as helpers
from .monitor_helpers import AREA, OTHER


def hit(**kw: Any) -> Hit:
    """The shared test hit (``monitor_helpers``) naming two lines."""
    return helpers.hit(**{"lines": ("1", "2"), **kw})


def finding(h: Hit | None = None, **kw: Any) -> Finding:
    """The shared test finding about two settlements of one hospital, whatever the area."""
    return helpers.finding(h or hit(), **{"setl_ids": ("S1", "S0"), "hospital": "H11010100001", **kw})


def test_fact_key_ignores_order_and_separates_what_differs() -> None:
    a = finding(hit(lines=("2", "1")), setl_ids=("S0", "S1"))
    b = finding(hit(lines=("1", "2")), setl_ids=("S1", "S0"))
    assert fact_key(a) == fact_key(b)
    assert len(fact_key(a)) == 64
    assert fact_key(finding(hit(lines=("1",)))) != fact_key(a)
    assert fact_key(finding(hit(version=2))) != fact_key(a)
    assert fact_key(finding(object_id="P2")) != fact_key(a)
    # the fact is about its anchor settlement: evidence that grows (more settlements) keeps the key
    assert fact_key(finding(setl_ids=("S1", "S0", "S9"))) == fact_key(a)
    assert fact_key(finding(hit(setl_id="S2"))) != fact_key(a)
    # a separator inside an id cannot make two facts one
    assert fact_key(finding(hit(lines=("1,2",)))) != fact_key(finding(hit(lines=("1", "2"))))


def test_same_findings_twice_make_one_suspicion(store: Store) -> None:
    fs = [finding(), finding(hit(rule_id="R-FREQ"))]
    first = store.write(lambda c: record_findings(c, fs, run_id=1, at="2026-11-24T10:00:00+00:00"))
    again = store.write(lambda c: record_findings(c, fs, run_id=2, at="2026-11-25T10:00:00+00:00"))
    assert first == {"new": 2, "again": 0}
    assert again == {"new": 0, "again": 2}
    rows = store.read(lambda c: list_suspicions(c, areas=None, status=None))
    assert len(rows) == 2
    for row in rows:
        assert row["times_found"] == 2 and row["status"] == "new"
        assert row["first_found"].startswith("2026-11-24") and row["last_found"].startswith("2026-11-25")
        assert row["run_id"] == 1  # the run that first found it
        assert row["setl_ids"] == ["S0", "S1"] and row["lines"] == ["1", "2"]


def test_the_same_fact_twice_in_one_batch_counts_once(store: Store) -> None:
    counts = store.write(lambda c: record_findings(c, [finding(), finding()], run_id=None, at="t"))
    assert counts == {"new": 1, "again": 0}
    assert store.read(lambda c: list_suspicions(c, areas=None))[0]["times_found"] == 1


def test_different_lines_make_two_suspicions(store: Store) -> None:
    fs = [finding(hit(lines=("1",))), finding(hit(lines=("2",)))]
    assert store.write(lambda c: record_findings(c, fs, run_id=None, at="t")) == {"new": 2, "again": 0}


def test_refound_fact_keeps_its_status_and_refreshes_evidence(store: Store) -> None:
    store.write(lambda c: record_findings(c, [finding()], run_id=1, at="t1"))
    store.write(lambda c: c.execute("UPDATE suspicions SET status = 'dismissed'"))
    fresher = finding(hit(evidence=({"value": 15, "threshold": 10, "note": "more"},)))
    assert fact_key(fresher) == fact_key(finding())
    store.write(lambda c: record_findings(c, [fresher], run_id=2, at="t2"))
    row = store.read(lambda c: get_suspicion(c, 1))
    assert row is not None
    assert row["status"] == "dismissed" and row["times_found"] == 2
    assert row["evidence"] == [{"value": 15, "threshold": 10, "note": "more"}]
    assert row["score"] == 90  # 60 × 1.5


def test_shadow_hits_are_recorded_but_never_queued(store: Store) -> None:
    store.write(
        lambda c: record_findings(
            c, [finding(hit(rule_id="R-SHADOW", mode="shadow")), finding()], run_id=None, at="t"
        )
    )
    queue = store.read(lambda c: list_suspicions(c, areas=[AREA]))
    assert [r["mode"] for r in queue] == ["enforce"]
    shadow = store.read(lambda c: list_suspicions(c, areas=[AREA], status="shadow"))
    assert [(r["status"], r["mode"]) for r in shadow] == [("shadow", "shadow")]


def test_score_and_traffic_light() -> None:
    assert score(finding(weight=60)) == 60  # value at the threshold: no raise
    assert score(finding(hit(evidence=({"value": 12, "threshold": 10},)), weight=60)) == 72  # 20 % over
    assert score(finding(hit(evidence=({"value": 100, "threshold": 10},)), weight=60)) == 90  # capped ×1.5
    assert score(finding(hit(evidence=({"value": 100, "threshold": 10},)), weight=90)) == 100  # capped 100
    assert score(finding(hit(evidence=({"value": "1.25", "threshold": "1"},)), weight=40)) == 50  # text
    # booleans, non-numbers, zero thresholds and missing keys do not raise it; the worst item counts
    odd = ({"value": True, "threshold": 0}, {"value": "major"}, {"value": 5, "threshold": 0},
           {"value": 11, "threshold": 10}, {"threshold": 3})  # fmt: skip
    assert score(finding(hit(evidence=odd), weight=30)) == 33
    assert score(finding(hit(evidence=()), weight=30)) == 30
    assert [severity(s) for s in (100, 70, 69, 40, 39, 0)] == [
        "red",
        "red",
        "yellow",
        "yellow",
        "green",
        "green",
    ]


def test_listing_is_scoped_filtered_and_sorted(store: Store) -> None:
    fs = [
        finding(hit(rule_id="A"), amount_fen=100, weight=90),
        finding(hit(rule_id="B"), amount_fen=900, weight=90),
        finding(hit(rule_id="C"), amount_fen=5000, weight=30),
        finding(hit(rule_id="D"), area=OTHER, hospital="H37021100001", weight=99),
    ]
    store.write(lambda c: record_findings(c, fs, run_id=None, at="t"))
    mine = store.read(lambda c: list_suspicions(c, areas=[AREA]))
    assert [r["rule_id"] for r in mine] == ["B", "A", "C"]  # score, then amount
    assert store.read(lambda c: list_suspicions(c, areas=[])) == []
    assert [r["rule_id"] for r in store.read(lambda c: list_suspicions(c, areas=None, min_score=90))] == [
        "D",
        "B",
        "A",
    ]
    assert [r["rule_id"] for r in store.read(lambda c: list_suspicions(c, areas=None, severity="green"))] == [
        "C"
    ]
    by_hosp = store.read(lambda c: list_suspicions(c, areas=None, hospital="H37021100001"))
    assert [r["rule_id"] for r in by_hosp] == ["D"]
    assert [r["rule_id"] for r in store.read(lambda c: list_suspicions(c, areas=None, rule_id="C"))] == ["C"]


def test_a_screens_worth_of_findings_is_recorded_once_then_found_again(store: Store) -> None:
    """20,000 findings in one call (many chunks of ``CHUNK``): each a suspicion once, each found again
    by the second run. How long it takes is measured by ``benchmarks/suspicions.py``."""
    base = finding()
    fs = [dataclasses.replace(base, hit=hit(setl_id=f"S{i}"), setl_ids=(f"S{i}",)) for i in range(20_000)]
    assert store.write(lambda c: record_findings(c, fs, run_id=1, at="t")) == {"new": 20_000, "again": 0}
    assert store.write(lambda c: record_findings(c, fs, run_id=2, at="t2")) == {"new": 0, "again": 20_000}
    held = store.read(
        lambda c: c.execute(
            "SELECT count(*), count(DISTINCT fact_key), min(times_found), max(times_found), min(run_id),"
            " max(run_id), min(last_found), max(last_found) FROM suspicions"
        ).fetchone()
    )
    assert tuple(held) == (20_000, 20_000, 2, 2, 1, 1, "t2", "t2")
