"""The review workflow's state machine on a real home: review → case → decision → effect, and its refusals."""

from __future__ import annotations

import sqlite3
from datetime import date, timedelta

import pytest

from central.errors import (
    AreaForbidden,
    CaseAreaMismatch,
    MonitorInputInvalid,
    NotFound,
    OperatorUnknown,
    RoleForbidden,
    WorkflowState,
)
from central.monitoring.review import (
    add_note,
    add_suspicions,
    assign_case,
    close_case,
    get_case,
    lift_ended_suspensions,
    list_cases,
    list_decisions,
    make_decision,
    open_case,
    publish_pending,
    review_suspicion,
    rule_quality,
    yuan_to_fen,
)
from central.monitoring.suspicions import get_suspicion
from central.policy.bundles import Policy
from central.storage.store import Store

from .monitor_helpers import AREA, HOSPITAL, OTHER, OTHER_HOSPITAL, finding, hit, operator, suspect


def _state(store: Store) -> tuple:
    """Everything the workflow writes, to prove a refusal changed nothing."""

    def read(c: sqlite3.Connection) -> tuple:
        return tuple(
            c.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
            for t in ("suspicions", "reviews", "cases", "case_notes", "decisions", "audit_log", "blacklist")
        )

    return store.read(read)


@pytest.fixture
def sup(store: Store):
    return operator(store, "sup", AREA, manage=(OTHER,))[0]


@pytest.fixture
def confirmed(store: Store, sup) -> list[int]:
    """Three confirmed suspicions of AREA, confirmed by a reviewer: ``sup`` is the second person who
    may decide a blacklist or suspension on them (``central.monitoring.review``'s two-person rule)."""
    ids = suspect(store, *(finding(hit(f"R{i}")) for i in range(3)))
    first = operator(store, "first", AREA, role="reviewer")[0]
    for i in ids:
        review_suspicion(store, first, i, "confirm", "the dispensing records agree")
    return ids


def test_yuan_to_fen_is_exact_and_strict() -> None:
    assert yuan_to_fen("12.3") == 1230
    assert yuan_to_fen("0.01") == 1
    assert yuan_to_fen("1234.50") == 123450
    assert yuan_to_fen(7) == 700
    for bad in ("12.345", "-1", "0", "0.00", "1e3", "", " ", "12,50", "NaN", True, 1.5):
        with pytest.raises(MonitorInputInvalid):
            yuan_to_fen(bad)  # type: ignore[arg-type]


def test_initial_review_once_with_a_reason(store: Store, sup) -> None:
    a, b = suspect(store, finding(hit("A")), finding(hit("B")))
    with pytest.raises(MonitorInputInvalid, match="reason"):
        review_suspicion(store, sup, a, "confirm", "  ")
    with pytest.raises(MonitorInputInvalid, match="confirm or dismiss"):
        review_suspicion(store, sup, a, "approve", "why")
    done = review_suspicion(store, sup, a, "confirm", "matches the pharmacy log")
    assert done["status"] == "confirmed" and done["review"]["operator"] == "sup"
    assert (
        review_suspicion(store, sup, b, "dismiss", "prescribed by two departments")["status"] == "dismissed"
    )
    before = _state(store)
    with pytest.raises(WorkflowState, match="already reviewed"):
        review_suspicion(store, sup, a, "dismiss", "changed my mind")
    with pytest.raises(WorkflowState):
        review_suspicion(store, sup, b, "confirm", "changed my mind")
    assert _state(store) == before
    sql = "SELECT operator, action, reason, area FROM audit_log WHERE action LIKE 'suspicion.%' ORDER BY id"
    audit = store.read(lambda c: c.execute(sql).fetchall())
    assert audit == [
        ("sup", "suspicion.confirm", "matches the pharmacy log", AREA),
        ("sup", "suspicion.dismiss", "prescribed by two departments", AREA),
    ]
    # a dismissed fact found again keeps its review
    suspect(store, finding(hit("B")))
    row = store.read(lambda c: get_suspicion(c, b))
    assert row is not None and row["status"] == "dismissed" and row["times_found"] == 2


def test_unknown_ids_are_not_found(store: Store, sup) -> None:
    with pytest.raises(NotFound):
        review_suspicion(store, sup, 999, "confirm", "x")
    with pytest.raises(NotFound):
        add_note(store, sup, 999, "x")


def test_shadow_suspicions_are_reviewed_for_precision_but_never_cased(store: Store, sup) -> None:
    (s,) = suspect(store, finding(hit("SH", mode="shadow")))
    assert review_suspicion(store, sup, s, "confirm", "a true hit")["status"] == "shadow"
    with pytest.raises(WorkflowState, match="already reviewed"):
        review_suspicion(store, sup, s, "dismiss", "again")
    with pytest.raises(WorkflowState, match="shadow-mode"):
        open_case(store, sup, [s], "shadow case")
    (q,) = rule_quality(store.read(lambda c: c))
    assert q["rule_id"] == "SH" and q["shadow"] == 1 and q["reviewed"] == 1 and q["precision"] == 1.0


def test_case_lifecycle(store: Store, sup, confirmed, policy: Policy, signers) -> None:
    rev = operator(store, "rev", AREA, role="reviewer")[0]
    a, b, c = confirmed
    with pytest.raises(WorkflowState, match="new"):  # not yet reviewed
        open_case(store, rev, suspect(store, finding(hit("FRESH"))), "too early")
    case = open_case(store, rev, [a, b], "duplicate dispensing at H1", assignee="rev")
    assert (case["status"], case["area"], case["assignee"], case["created_by"]) == (
        "open",
        AREA,
        "rev",
        "rev",
    )
    assert sorted(s["id"] for s in case["suspicions"]) == sorted([a, b])
    assert {s["status"] for s in case["suspicions"]} == {"in_case"}
    assert case["amount_fen"] == 2 * 5120
    with pytest.raises(WorkflowState, match="in_case"):
        open_case(store, rev, [a], "twice")
    case = add_suspicions(store, rev, case["id"], [c])
    assert len(case["suspicions"]) == 3
    with pytest.raises(AreaForbidden):  # the assignee must manage the case's area
        operator(store, "far", OTHER)
        assign_case(store, rev, case["id"], "far")
    with pytest.raises(OperatorUnknown):
        assign_case(store, rev, case["id"], "nobody")
    case = assign_case(store, rev, case["id"], "sup", "supervisor takes it")
    assert case["assignee"] == "sup"
    case = add_note(
        store, rev, case["id"], "pharmacy log attached", kind="evidence", detail={"file": "log.pdf"}
    )
    assert [n["kind"] for n in case["notes"]] == ["status", "evidence", "assign", "evidence"]
    assert case["notes"][-1]["detail"] == {"file": "log.pdf"}

    # decisions: supervisors only, amounts exact, nothing written on a refusal
    with pytest.raises(RoleForbidden):
        make_decision(store, rev, case["id"], kind="warning", target_type="hospital", target_id=HOSPITAL,
                      reason="first time")  # fmt: skip
    before = _state(store)
    with pytest.raises(MonitorInputInvalid, match="2 decimals"):
        make_decision(store, sup, case["id"], kind="deduction", target_type="hospital", target_id=HOSPITAL,
                      amount="12.345", reason="overcharged")  # fmt: skip
    with pytest.raises(MonitorInputInvalid, match="past"):
        make_decision(store, sup, case["id"], kind="suspension", target_type="doctor", target_id="D001",
                      until="2001-01-01", reason="r")  # fmt: skip
    with pytest.raises(MonitorInputInvalid, match="targets a hospital"):
        make_decision(store, sup, case["id"], kind="deduction", target_type="doctor", target_id="D001",
                      amount="1", reason="r")  # fmt: skip
    with pytest.raises(AreaForbidden, match="370200"):
        make_decision(store, sup, case["id"], kind="deduction", target_type="hospital",
                      target_id=OTHER_HOSPITAL, amount="1", reason="r")  # fmt: skip
    assert _state(store) == before

    d1 = make_decision(store, sup, case["id"], kind="deduction", target_type="hospital", target_id=HOSPITAL,
                       amount="12.3", reason="overcharged")  # fmt: skip
    assert (d1["amount_fen"], d1["status"]) == (1230, "effective")
    until = (date.today() + timedelta(days=90)).isoformat()
    d2 = make_decision(store, sup, case["id"], kind="suspension", target_type="doctor", target_id="D001",
                       until=until, reason="repeated")  # fmt: skip
    assert d2["until"] == until
    d3 = make_decision(
        store, sup, case["id"], kind="blacklist", target_type="person", target_id="P0000000001",
        reason="resold drugs", policy=policy, signers=signers,
    )  # fmt: skip
    assert d3["status"] == "effective" and d3["bundle_area"] == AREA and d3["bundle_seq"] >= 1
    assert [(e["list_type"], e["id"], e["area"]) for e in policy.blacklist_list(AREA)] == [
        ("person", "P0000000001", AREA)
    ]
    case = store.read(lambda conn: get_case(conn, sup, case["id"]))
    assert case["status"] == "decided" and {s["status"] for s in case["suspicions"]} == {"decided"}
    assert [d["kind"] for d in case["decisions"]] == ["deduction", "suspension", "blacklist"]
    by_hospital = store.read(lambda conn: list_decisions(conn, sup.scope, hospital=HOSPITAL))
    assert [d["id"] for d in by_hospital] == [d1["id"]]

    # close: supervisors only; then nothing more
    with pytest.raises(RoleForbidden):
        close_case(store, rev, case["id"], "done")
    closed = close_case(store, sup, case["id"], "decisions taken")
    assert closed["status"] == "closed"
    before = _state(store)
    with pytest.raises(WorkflowState, match="closed"):
        make_decision(store, sup, case["id"], kind="warning", target_type="doctor", target_id="D001",
                      reason="again")  # fmt: skip
    with pytest.raises(WorkflowState):
        add_note(store, sup, case["id"], "late note")
    with pytest.raises(WorkflowState):
        close_case(store, sup, case["id"], "again")
    assert _state(store) == before
    actions = store.read(
        lambda conn: [r[0] for r in conn.execute("SELECT action FROM audit_log ORDER BY id")]
    )
    assert actions[-7:] == [
        "case.evidence",
        "decision.make",
        "decision.make",
        "decision.make",
        "blacklist.add",
        "decision.publish",
        "case.close",
    ]


def test_a_case_gathers_one_area(store: Store, sup) -> None:
    mine, theirs, mine2 = suspect(store, finding(hit("A")), finding(hit("B"), area=OTHER), finding(hit("C")))
    for s in (mine, theirs, mine2):
        review_suspicion(store, sup, s, "confirm", "checked")
    before = _state(store)
    with pytest.raises(CaseAreaMismatch, match="370200"):
        open_case(store, sup, [mine, theirs], "mixed")
    assert _state(store) == before
    case = open_case(store, sup, [mine], "one area")
    with pytest.raises(CaseAreaMismatch):
        add_suspicions(store, sup, case["id"], [theirs])
    assert _state(store)[0] == store.read(
        lambda c: c.execute("SELECT * FROM suspicions ORDER BY 1").fetchall()
    )
    assert len(add_suspicions(store, sup, case["id"], [mine2])["suspicions"]) == 2
    other_case = open_case(store, sup, [theirs], "their area")
    assert other_case["area"] == OTHER
    listed = store.read(lambda c: list_cases(c, [AREA]))
    assert [r["id"] for r in listed] == [case["id"]] and listed[0]["suspicions"] == 2


def test_blacklist_without_keys_is_pending_until_published(
    store: Store, sup, confirmed, policy, signers
) -> None:
    case = open_case(store, sup, confirmed[:1], "card resale")
    d = make_decision(store, sup, case["id"], kind="blacklist", target_type="card", target_id="CARD0001",
                      reason="card resold", policy=policy, signers=[])  # fmt: skip
    assert d["status"] == "pending_publish" and "decisions publish" in d["publish_error"]
    assert policy.blacklist_list(AREA) == []
    rev = operator(store, "rev", AREA, role="reviewer")[0]
    with pytest.raises(RoleForbidden):
        publish_pending(store, rev, policy, signers)
    done = publish_pending(store, sup, policy, signers)
    assert [(x["id"], x["status"]) for x in done] == [(d["id"], "effective")]
    assert [e["id"] for e in policy.blacklist_list(AREA)] == ["CARD0001"]
    assert publish_pending(store, sup, policy, signers) == []
    with pytest.raises(MonitorInputInvalid):  # a blacklist id the bundle would refuse is refused up front
        make_decision(store, sup, case["id"], kind="blacklist", target_type="card", target_id="bad id!",
                      reason="r", policy=policy, signers=signers)  # fmt: skip


def test_rule_quality_counts_and_precision(store: Store, sup) -> None:
    ids = suspect(
        store,
        *(finding(hit("Q", lines=(str(i),))) for i in range(4)),
        finding(hit("Q", version=2)),
        finding(hit("Z"), area=OTHER),
    )
    review_suspicion(store, sup, ids[0], "confirm", "yes")
    review_suspicion(store, sup, ids[1], "confirm", "yes")
    review_suspicion(store, sup, ids[2], "dismiss", "no")
    rows = store.read(lambda c: rule_quality(c))
    assert [(r["rule_id"], r["rule_version"]) for r in rows] == [("Q", 1), ("Q", 2), ("Z", 1)]
    q1 = rows[0]
    assert (q1["found"], q1["reviewed"], q1["confirmed"], q1["dismissed"], q1["pending"]) == (4, 3, 2, 1, 1)
    assert q1["precision"] == round(2 / 3, 4)
    assert rows[1]["precision"] is None
    assert [r["rule_id"] for r in store.read(lambda c: rule_quality(c, [OTHER]))] == ["Z"]
    assert store.read(lambda c: rule_quality(c, [])) == []


def test_a_suspension_is_published_enforced_by_list_type_and_lifted_after_its_day(
    store: Store, sup, confirmed, policy: Policy, signers
) -> None:
    """The suspension's effect travels like a blacklist entry (type doctor); it is removed after ``until``."""
    case = open_case(store, sup, confirmed[:1], "a doctor far above peers")
    until = (date.today() + timedelta(days=30)).isoformat()
    d = make_decision(store, sup, case["id"], kind="suspension", target_type="doctor", target_id="D370211001",
                      until=until, reason="prescriptions far above peers", policy=policy,
                      signers=signers)  # fmt: skip
    assert d["status"] == "effective" and d["bundle_seq"] >= 1
    [entry] = policy.blacklist_list(AREA)
    assert (entry["list_type"], entry["id"]) == ("doctor", "D370211001")
    assert entry["reason"].startswith(f"suspended until {until}: ")

    actor = sup.actor("the suspension ended")
    assert lift_ended_suspensions(store, actor, policy, signers, today=date.fromisoformat(until)) == []
    assert len(policy.blacklist_list(AREA)) == 1  # in force to the end of its until day
    after = date.fromisoformat(until) + timedelta(days=1)
    [lifted] = lift_ended_suspensions(store, actor, policy, signers, today=after)
    assert (lifted["id"], lifted["status"]) == (d["id"], "ended")
    assert policy.blacklist_list(AREA) == []
    status = store.read(
        lambda c: c.execute("SELECT status FROM decisions WHERE id = ?", (d["id"],)).fetchone()
    )
    assert status == ("ended",)
    assert lift_ended_suspensions(store, actor, policy, signers, today=after) == []  # once
    actions = store.read(lambda c: [r[0] for r in c.execute("SELECT action FROM audit_log ORDER BY id")])
    assert actions[-2:] == ["blacklist.remove", "decision.lift"]
