"""Incremental and full screens agree when settlements arrive late, and a fact keeps its identity.

Real ingest from signed chains, the rules in force published as bundles, suspicions read back from
``central.db``. The contract (docs/MONITORING.md, "Findings"; ``central.monitoring.suspicions``):

- one readmission is one suspicion, whatever older stays arrive later (its evidence grows);
- a late older settlement re-judges what it changes (template 17's peer medians of its group) so
  the incremental screens end where one full screen of the range ends;
- a fact that stops holding is retracted (``no_longer_holds``, audited) if nobody reviewed it, and
  only flagged (``holds = 0``) if a reviewer did.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from central.intake.hospitals import set_hospital
from central.monitoring.screening import screen, screen_new
from central.policy.bundles import Policy
from central.storage.store import Store
from protocol.records import Settlement

from .conftest import ACTOR, AREA, HOSPITAL, Chain, reversal, settlement
from .test_screening import ingest

RULES = {
    "area": AREA,
    "format": 1,
    "rules": [
        {"id": "readmit", "version": 1, "template": "readmission", "severity": "warn", "mode": "enforce",
         "action": "prompt", "moments": ["post"], "params": {"within_days": 15}},
        {"id": "cost", "version": 1, "template": "excessive_cost", "severity": "warn", "mode": "enforce",
         "action": "prompt", "moments": ["post"], "med_types": ["11"],
         "params": {"peer_ratio": "3", "min_peers": 3, "peer_days": 365}},
    ],
}  # fmt: skip


@pytest.fixture
def published(store: Store, policy: Policy, signers: list) -> None:
    set_hospital(store, ACTOR, HOSPITAL, "2")
    policy.publish_document(ACTOR, signers, "rules", RULES)


def stay(setl_id: str, begin: str, end: str, *, dise: str = "J18.900") -> Settlement:
    """An inpatient stay from ``begin`` to ``end`` (YYYY-MM-DD), settled at discharge."""
    s = settlement(setl_id, setl_time=f"{end}T16:00:00+08:00")
    s.mdtrt.med_type = "21"
    s.mdtrt.begntime, s.mdtrt.endtime = f"{begin}T09:00:00+08:00", f"{end}T15:00:00+08:00"
    s.mdtrt.dise_codg = dise
    return s


def visit(setl_id: str, day: str, fen: int, *, psn_no: str = "P0000000009") -> Settlement:
    """An outpatient visit (J06) of ``fen`` on ``day``: one line, split all cash."""
    s = settlement(setl_id, setl_time=f"{day}T10:00:00+08:00", lines=(("1", str(fen // 100), fen),),
                   split=(0, 0, fen), psn_no=psn_no)  # fmt: skip
    s.mdtrt.begntime = f"{day}T09:30:00+08:00"
    return s


def held(store: Store, rule_id: str | None = None) -> list[dict[str, Any]]:
    cols = ("id", "fact_key", "rule_id", "anchor", "setl_ids", "status", "holds", "times_found", "evidence")
    rows = store.read(lambda c: c.execute(f"SELECT {', '.join(cols)} FROM suspicions ORDER BY id").fetchall())
    out = [dict(zip(cols, r, strict=True)) for r in rows]
    for row in out:
        row["setl_ids"], row["evidence"] = json.loads(row["setl_ids"]), json.loads(row["evidence"])
    return [r for r in out if rule_id is None or r["rule_id"] == rule_id]


def audit(store: Store, action: str) -> list[dict[str, Any]]:
    rows = store.read(
        lambda c: c.execute("SELECT operator, detail FROM audit_log WHERE action = ? ORDER BY id", (action,))
    )
    return [{"operator": op, **json.loads(detail)} for op, detail in rows]


def test_one_readmission_is_one_suspicion_when_an_older_stay_arrives_late(
    store: Store, repo, chain: Chain, published
) -> None:
    ingest(store, chain, stay("A1", "2026-11-01", "2026-11-08"), stay("B", "2026-11-12", "2026-11-16"))
    screen_new(store, repo=repo)
    [first] = held(store, "readmit")
    assert first["anchor"] == "B" and sorted(first["setl_ids"]) == ["A1", "B"]
    # an older stay (overlapping A1: not a readmission itself), uploaded late by an agent that was
    # offline, also ended within 15 days of B
    ingest(store, chain, stay("A0", "2026-11-03", "2026-11-06"))
    summary = screen_new(store, repo=repo)
    assert summary["new_suspicions"] == 0
    [again] = held(store, "readmit")
    assert again["id"] == first["id"] and again["fact_key"] == first["fact_key"]
    assert sorted(again["setl_ids"]) == ["A0", "A1", "B"] and again["times_found"] == 2
    assert {e["setl_id"] for e in again["evidence"]} == {"A0", "A1"}  # the evidence grew, the fact did not
    full = screen(store, "2026-11-01", "2026-11-30", repo=repo, workers=1)
    assert full["new_suspicions"] == 0 and full["retracted"] == 0
    assert [r["id"] for r in held(store, "readmit")] == [first["id"]]


def test_a_reversed_earlier_stay_retracts_the_readmission_and_audits_it(
    store: Store, repo, chain: Chain, published
) -> None:
    earlier = stay("A1", "2026-11-01", "2026-11-05")
    ingest(store, chain, earlier, stay("B", "2026-11-12", "2026-11-16"))
    screen_new(store, repo=repo)
    ingest(store, chain, reversal(earlier, "A1-REV", setl_time="2026-11-20T09:00:00+08:00"))
    summary = screen_new(store, repo=repo)
    assert summary["retracted"] == 1
    [gone] = held(store, "readmit")
    assert (gone["status"], gone["holds"]) == ("no_longer_holds", 0)  # kept for the record, not deleted
    [row] = audit(store, "suspicion.retract")
    assert row["operator"] == "screening" and row["suspicions"] == [gone["id"]]
    # a full screen of the range agrees: nothing new, nothing more retracted
    full = screen(store, "2026-11-01", "2026-11-30", repo=repo, workers=1)
    assert (full["new_suspicions"], full["retracted"], full["flagged"]) == (0, 0, 0)


def test_a_reviewed_fact_that_stops_holding_is_flagged_not_retracted(
    store: Store, repo, chain: Chain, published
) -> None:
    earlier = stay("A1", "2026-11-01", "2026-11-05")
    ingest(store, chain, earlier, stay("B", "2026-11-12", "2026-11-16"))
    screen_new(store, repo=repo)
    [fact] = held(store, "readmit")
    store.write(lambda c: c.execute("UPDATE suspicions SET status = 'confirmed' WHERE id = ?", (fact["id"],)))
    ingest(store, chain, reversal(earlier, "A1-REV", setl_time="2026-11-20T09:00:00+08:00"))
    summary = screen_new(store, repo=repo)
    assert (summary["retracted"], summary["flagged"]) == (0, 1)
    [flagged] = held(store, "readmit")
    assert (flagged["status"], flagged["holds"]) == ("confirmed", 0)  # the reviewer's decision stands
    assert audit(store, "suspicion.no_longer_holds")[0]["suspicions"] == [fact["id"]]


def test_late_peers_rejudge_the_later_visits_and_incremental_agrees_with_full(
    store: Store, repo, chain: Chain, published
) -> None:
    # three cheap peer visits, then an expensive one judged against them (3 × median 100 yuan < 1000)
    peers = [visit(f"P{i}", f"2026-11-0{i + 1}", 10_000, psn_no=f"P000000010{i}") for i in range(3)]
    ingest(store, chain, *peers, visit("X", "2026-11-10", 100_000))
    screen_new(store, repo=repo)
    [cost] = held(store, "cost")
    assert (cost["anchor"], cost["status"], cost["holds"]) == ("X", "new", 1)
    # four more peers of the same group arrive late, all dated before X: the median before X moves to
    # 1000 yuan, so X is no longer three times it. The incremental screen re-judges X.
    late = [visit(f"L{i}", f"2026-11-0{i + 5}", 100_000, psn_no=f"P000000020{i}") for i in range(4)]
    ingest(store, chain, *late)
    summary = screen_new(store, repo=repo)
    assert summary["rejudged"] >= 1 and summary["retracted"] == 1
    incremental = {(r["fact_key"], r["status"], r["holds"]) for r in held(store)}
    [x] = [r for r in held(store, "cost") if r["anchor"] == "X"]
    assert (x["id"], x["status"], x["holds"]) == (cost["id"], "no_longer_holds", 0)
    full = screen(store, "2026-11-01", "2026-11-30", repo=repo, workers=1)
    assert (full["new_suspicions"], full["retracted"], full["flagged"]) == (0, 0, 0)
    assert {(r["fact_key"], r["status"], r["holds"]) for r in held(store)} == incremental


def test_a_retracted_fact_found_again_holds_again(store: Store, repo, chain: Chain, published) -> None:
    peers = [visit(f"P{i}", f"2026-11-0{i + 1}", 10_000, psn_no=f"P000000010{i}") for i in range(3)]
    ingest(store, chain, *peers, visit("X", "2026-11-10", 100_000))
    screen_new(store, repo=repo)
    late = [visit(f"L{i}", f"2026-11-0{i + 5}", 100_000, psn_no=f"P000000020{i}") for i in range(4)]
    ingest(store, chain, *late)
    screen_new(store, repo=repo)
    assert [r["status"] for r in held(store, "cost") if r["anchor"] == "X"] == ["no_longer_holds"]
    # the late peers are cancelled: X is three times its peers again, the same suspicion back in the queue
    ingest(
        store, chain, *(reversal(s, f"{s.setl_id}-REV", setl_time="2026-11-21T09:00:00+08:00") for s in late)
    )
    screen_new(store, repo=repo)
    [back] = [r for r in held(store, "cost") if r["anchor"] == "X"]
    assert (back["status"], back["holds"]) == ("new", 1)
    assert audit(store, "suspicion.holds_again")[0]["requeued"] == [back["id"]]
